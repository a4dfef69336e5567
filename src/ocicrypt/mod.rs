//! ocicrypt layer encryption (ocicrypt.md), written from the specification because
//! `ocicrypt-rs` is not published: the annotations, the public and private options, choosing
//! a key for a layer, and the descriptor changes encryption makes.
//!
//! Submodules: `cipher` (AES-256-CTR + HMAC-SHA256 streams), `jwe` (JWE key wrapping),
//! `provider` (the Confidential Containers AnnotationPacket under a KEK).

pub mod cipher;
pub mod jwe;
pub mod provider;

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::digest::Digest;
use crate::keys::{PrivateKey, PublicKey};
use crate::manifest::Descriptor;
use cipher::{CipherError, LayerKey, CIPHER_ID, HMAC_LEN};
use jwe::JweError;
use provider::{AnnotationPacket, Kek, ProviderError, ResourceUri, PROVIDER_NAME};

pub const ANNOTATION_PREFIX: &str = "org.opencontainers.image.enc";
pub const ANNOTATION_PUBOPTS: &str = "org.opencontainers.image.enc.pubopts";
pub const ANNOTATION_KEYS_PREFIX: &str = "org.opencontainers.image.enc.keys.";
pub const ANNOTATION_JWE: &str = "org.opencontainers.image.enc.keys.jwe";
pub const ENCRYPTED_SUFFIX: &str = "+encrypted";

/// The provider annotation Confidential Containers guests look for.
pub fn provider_annotation() -> String {
    format!("{ANNOTATION_KEYS_PREFIX}provider.{PROVIDER_NAME}")
}

/// Annotation values larger than this are refused before decoding.
const MAX_ANNOTATION: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum OcicryptError {
    #[error("the layer has no `{ANNOTATION_PUBOPTS}` annotation, so its HMAC is unknown")]
    MissingPubOpts,
    #[error("the `{ANNOTATION_PUBOPTS}` annotation is malformed: {0}")]
    PubOpts(String),
    #[error("unsupported cipher `{0}`; only `{CIPHER_ID}` exists")]
    UnsupportedCipher(String),
    #[error("the public options carry a nonce, which the HMAC does not cover; refusing")]
    PublicNonce,
    #[error("the unwrapped private options are malformed: {0}")]
    PrivateOpts(String),
    #[error(transparent)]
    Cipher(#[from] CipherError),
    #[error("no key fits: the layer is encrypted for {present}; tried {tried}{}", failures_suffix(.failures))]
    NoKeyFits {
        present: String,
        tried: String,
        failures: Vec<String>,
    },
    #[error("the layer is encrypted but has no `{ANNOTATION_KEYS_PREFIX}*` annotation")]
    NoRecipientsPresent,
    #[error("nothing to encrypt for: give at least one `--recipient`")]
    NoRecipients,
    #[error(
        "`kbs://` recipient `{0}` has no KEK; give one `--kek FILE`, or one per `kbs://` recipient"
    )]
    MissingKek(String),
    #[error("cannot read the key file `{path}`")]
    KeyRead {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot use the key file `{path}`")]
    KeyFile {
        path: String,
        #[source]
        source: crate::keys::KeyError,
    },
    #[error("the password variable named for `{0}` is not set (`KEY:env=VAR`)")]
    PasswordSpec(String),
    #[error(transparent)]
    Jwe(#[from] JweError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
}

fn failures_suffix(failures: &[String]) -> String {
    if failures.is_empty() {
        String::new()
    } else {
        format!(" ({})", failures.join("; "))
    }
}

/// PublicLayerBlockCipherOptions (ocicrypt.md §3.1).
#[derive(Debug, Serialize, Deserialize)]
struct PubOptsJson {
    cipher: String,
    hmac: String,
    #[serde(default)]
    cipheroptions: Option<BTreeMap<String, String>>,
}

/// PrivateLayerBlockCipherOptions (ocicrypt.md §3.2) as read. Its `digest` is advisory and
/// unverified everywhere (§3.2), so it is not even parsed; unknown fields are ignored.
#[derive(Deserialize)]
struct PrivateOptsJson {
    /// The layer key in base64: as secret as the key, so wiped too.
    symkey: Zeroizing<String>,
    #[serde(default)]
    cipheroptions: Option<BTreeMap<String, String>>,
}

/// Reads the expected HMAC from a layer's pubopts, refusing anything but our one cipher and a
/// public nonce (ocicrypt.md §3.3).
pub fn pubopts_hmac(desc: &Descriptor) -> Result<[u8; HMAC_LEN], OcicryptError> {
    let raw = desc
        .annotations
        .get(ANNOTATION_PUBOPTS)
        .ok_or(OcicryptError::MissingPubOpts)?;
    if raw.len() > MAX_ANNOTATION {
        return Err(OcicryptError::PubOpts("over 1 MiB".into()));
    }
    let json = B64
        .decode(raw.trim())
        .map_err(|_| OcicryptError::PubOpts("not base64".into()))?;
    let p: PubOptsJson =
        serde_json::from_slice(&json).map_err(|e| OcicryptError::PubOpts(e.to_string()))?;
    if p.cipher != CIPHER_ID {
        return Err(OcicryptError::UnsupportedCipher(p.cipher));
    }
    if p.cipheroptions
        .as_ref()
        .is_some_and(|o| o.contains_key("nonce"))
    {
        return Err(OcicryptError::PublicNonce);
    }
    let hmac = B64
        .decode(&p.hmac)
        .map_err(|_| OcicryptError::PubOpts("`hmac` is not base64".into()))?;
    hmac.as_slice()
        .try_into()
        .map_err(|_| CipherError::HmacLength(hmac.len()).into())
}

/// The pubopts annotation value, byte for byte as Go writes it.
pub fn pubopts_annotation(hmac: &[u8; HMAC_LEN]) -> String {
    let json = format!(
        r#"{{"cipher":"{CIPHER_ID}","hmac":"{}","cipheroptions":{{}}}}"#,
        B64.encode(hmac)
    );
    B64.encode(json)
}

/// Parses unwrapped private options leniently (missing `digest` or `cipheroptions` are fine).
pub fn parse_private_opts(json: &[u8]) -> Result<LayerKey, OcicryptError> {
    let p: PrivateOptsJson =
        serde_json::from_slice(json).map_err(|e| OcicryptError::PrivateOpts(e.to_string()))?;
    let key = Zeroizing::new(
        B64.decode(&p.symkey)
            .map_err(|_| OcicryptError::PrivateOpts("`symkey` is not base64".into()))?,
    );
    let nonce = p
        .cipheroptions
        .as_ref()
        .and_then(|o| o.get("nonce"))
        .ok_or_else(|| OcicryptError::PrivateOpts("no `cipheroptions.nonce`".into()))?;
    let nonce = B64
        .decode(nonce)
        .map_err(|_| OcicryptError::PrivateOpts("the nonce is not base64".into()))?;
    Ok(LayerKey::new(&key, &nonce)?)
}

/// The private options JSON, byte for byte as Go writes it (`digest` of the plaintext blob).
pub fn private_opts_json(key: &LayerKey, plain_digest: &Digest) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(
        format!(
            r#"{{"symkey":"{}","digest":"{plain_digest}","cipheroptions":{{"nonce":"{}"}}}}"#,
            Zeroizing::new(B64.encode(key.key_bytes())).as_str(),
            B64.encode(key.nonce())
        )
        .into_bytes(),
    )
}

/// Everything `pull` and `decrypt` may use to open layers.
#[derive(Debug, Default)]
pub struct Keyring {
    pub private_keys: Vec<PrivateKey>,
    pub keks: Vec<Kek>,
}

impl Keyring {
    /// Loads `--decryption-key` values (`FILE`, or skopeo's `FILE:pass=…` / `FILE:file=…`, plus
    /// `FILE:env=VAR`) and `--kek` files. A file that is not a key is an error, never skipped.
    pub fn load(
        decryption_keys: &[String],
        keks: &[std::path::PathBuf],
    ) -> Result<Keyring, OcicryptError> {
        let mut ring = Keyring::default();
        for spec in decryption_keys {
            let (path, password) = split_password_spec(spec)?;
            let bytes =
                Zeroizing::new(
                    std::fs::read(path).map_err(|source| OcicryptError::KeyRead {
                        path: path.into(),
                        source,
                    })?,
                );
            let key = PrivateKey::from_bytes(&bytes, password.as_ref().map(|p| p.as_slice()))
                .map_err(|source| OcicryptError::KeyFile {
                    path: path.into(),
                    source,
                })?;
            ring.private_keys.push(key);
        }
        for path in keks {
            ring.keks.push(Kek::from_file(path)?);
        }
        Ok(ring)
    }

    pub fn is_empty(&self) -> bool {
        self.private_keys.is_empty() && self.keks.is_empty()
    }

    fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .private_keys
            .iter()
            .map(|k| format!("private key ({})", k.kind()))
            .collect();
        if !self.keks.is_empty() {
            parts.push(format!("{} KEK(s)", self.keks.len()));
        }
        if parts.is_empty() {
            "no keys (give `--decryption-key` or `--kek`)".into()
        } else {
            parts.join(", ")
        }
    }
}

/// A key file's password, wiped after use.
type Password = Zeroizing<Vec<u8>>;

/// `FILE[:pass=P|:file=F|:env=V]` → path and password. Split at the first password marker,
/// because a password may itself contain colons; errors never echo the spec.
fn split_password_spec(spec: &str) -> Result<(&str, Option<Password>), OcicryptError> {
    let found = [":pass=", ":file=", ":env="]
        .iter()
        .filter_map(|m| spec.find(m).map(|i| (i, *m)))
        .min_by_key(|(i, _)| *i);
    let Some((i, marker)) = found else {
        return Ok((spec, None));
    };
    let (path, value) = (&spec[..i], &spec[i + marker.len()..]);
    let password = match marker {
        ":pass=" => value.as_bytes().to_vec(),
        ":file=" => {
            let raw =
                Zeroizing::new(
                    std::fs::read(value).map_err(|source| OcicryptError::KeyRead {
                        path: value.into(),
                        source,
                    })?,
                );
            let end = raw
                .iter()
                .rposition(|b| *b != b'\n' && *b != b'\r')
                .map_or(0, |p| p + 1);
            raw[..end].to_vec()
        }
        _ => std::env::var(value)
            .map_err(|_| OcicryptError::PasswordSpec(path.to_string()))?
            .into_bytes(),
    };
    Ok((path, Some(Zeroizing::new(password))))
}

/// What decrypting one layer needs.
#[derive(Debug)]
pub struct LayerDecryption {
    pub key: LayerKey,
    pub hmac: [u8; HMAC_LEN],
}

/// Finds the layer key among the layer's recipients: every `keys.*` annotation, every
/// comma-separated item, every key we hold; the first that opens wins (ocicrypt.md §2.2).
pub fn layer_decryption(
    desc: &Descriptor,
    keys: &Keyring,
) -> Result<LayerDecryption, OcicryptError> {
    let hmac = pubopts_hmac(desc)?;
    let mut present = Vec::new();
    let mut failures = Vec::new();
    for (name, value) in &desc.annotations {
        let Some(scheme) = name.strip_prefix(ANNOTATION_KEYS_PREFIX) else {
            continue;
        };
        if value.len() > MAX_ANNOTATION {
            failures.push(format!("`{scheme}` annotation over 1 MiB"));
            continue;
        }
        for item in value.split(',').filter(|i| !i.is_empty()) {
            let Ok(raw) = B64.decode(item.trim()).map(Zeroizing::new) else {
                failures.push(format!("a `{scheme}` item is not base64"));
                continue;
            };
            match scheme {
                "jwe" => {
                    present.push("JWE".to_string());
                    if keys.private_keys.is_empty() {
                        continue;
                    }
                    match jwe::unwrap(&raw, &keys.private_keys) {
                        Ok(opts) => return finish(&opts, hmac),
                        Err(e) => failures.push(format!("JWE: {e}")),
                    }
                }
                s if s.starts_with("provider.") => match AnnotationPacket::parse(&raw) {
                    Ok(packet) => {
                        present.push(format!("`{}` (KEK)", packet.kid));
                        let mut refused = 0;
                        for kek in &keys.keks {
                            match packet.unwrap(kek) {
                                Ok(opts) => return finish(&opts, hmac),
                                Err(ProviderError::Unwrap { .. }) => refused += 1,
                                Err(e) => failures.push(e.to_string()),
                            }
                        }
                        // Said once per packet, not once per KEK: with the recipient's kid
                        // right there, "no key fits" alone reads as "wrong recipient".
                        if refused > 0 {
                            failures.push(format!(
                                "{refused} KEK(s) tried on the AnnotationPacket for `{}`; none \
                                 opens it (a wrong KEK, or a tampered packet)",
                                packet.kid
                            ));
                        }
                    }
                    Err(e) => {
                        present.push(format!("`{s}`"));
                        failures.push(e.to_string());
                    }
                },
                other => present.push(format!("`{other}` (not supported)")),
            }
        }
    }
    if present.is_empty() {
        return Err(OcicryptError::NoRecipientsPresent);
    }
    Err(OcicryptError::NoKeyFits {
        present: present.join(", "),
        tried: keys.describe(),
        failures,
    })
}

fn finish(opts: &[u8], hmac: [u8; HMAC_LEN]) -> Result<LayerDecryption, OcicryptError> {
    Ok(LayerDecryption {
        key: parse_private_opts(opts)?,
        hmac,
    })
}

/// Who an encrypted layer is for.
#[derive(Debug, Default)]
pub struct Recipients {
    pub jwe: Vec<PublicKey>,
    pub kbs: Vec<(ResourceUri, Kek)>,
}

impl Recipients {
    pub fn is_empty(&self) -> bool {
        self.jwe.is_empty() && self.kbs.is_empty()
    }
}

/// The descriptor of an encrypted layer: media type `+encrypted`, the ciphertext's digest and
/// size, pubopts and one key annotation per scheme; other annotations are kept.
pub fn encrypted_descriptor(
    plain: &Descriptor,
    cipher_digest: Digest,
    key: &LayerKey,
    hmac: &[u8; HMAC_LEN],
    recipients: &Recipients,
) -> Result<Descriptor, OcicryptError> {
    if recipients.is_empty() {
        return Err(OcicryptError::NoRecipients);
    }
    let opts = private_opts_json(key, &plain.digest);
    let mut d = plain.clone();
    d.media_type = format!("{}{ENCRYPTED_SUFFIX}", plain.media_type);
    d.digest = cipher_digest;
    if !recipients.jwe.is_empty() {
        let jwe = jwe::wrap(&opts, &recipients.jwe)?;
        d.annotations.insert(ANNOTATION_JWE.into(), B64.encode(jwe));
    }
    if !recipients.kbs.is_empty() {
        let items = recipients
            .kbs
            .iter()
            .map(|(kid, kek)| {
                AnnotationPacket::wrap(kid, kek, &opts).map(|p| B64.encode(p.to_json()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        d.annotations.insert(provider_annotation(), items.join(","));
    }
    d.annotations
        .insert(ANNOTATION_PUBOPTS.into(), pubopts_annotation(hmac));
    Ok(d)
}

/// The descriptor after decryption: `+encrypted` and every `org.opencontainers.image.enc*`
/// annotation removed, the plaintext's digest (same size: CTR adds nothing).
pub fn decrypted_descriptor(enc: &Descriptor, plain_digest: Digest) -> Descriptor {
    let mut d = enc.clone();
    if let Some(base) = enc.media_type.strip_suffix(ENCRYPTED_SUFFIX) {
        d.media_type = base.to_string();
    }
    d.digest = plain_digest;
    d.annotations
        .retain(|k, _| !k.starts_with(ANNOTATION_PREFIX));
    d
}

/// The key broker resources (`kid`s) of a layer's provider annotations, in order; items that
/// do not parse are skipped here and reported when the layer's key is looked for.
pub fn provider_kids(desc: &Descriptor) -> Vec<ResourceUri> {
    desc.annotations
        .iter()
        .filter(|(name, _)| name.starts_with(&format!("{ANNOTATION_KEYS_PREFIX}provider.")))
        .flat_map(|(_, value)| value.split(','))
        .filter_map(|item| B64.decode(item.trim()).ok())
        .filter_map(|raw| AnnotationPacket::parse(&raw).ok())
        .filter_map(|p| p.resource().ok())
        .collect()
}

pub fn is_encrypted(desc: &Descriptor) -> bool {
    desc.media_type.ends_with(ENCRYPTED_SUFFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc_with(annotations: &[(&str, String)]) -> Descriptor {
        let mut d = Descriptor::new(
            "application/vnd.cncf.model.weight.v1.raw+encrypted",
            Digest::sha256(b"x"),
            1,
        );
        for (k, v) in annotations {
            d.annotations.insert(k.to_string(), v.clone());
        }
        d
    }

    #[test]
    fn the_spec_pubopts_annotation_is_reproduced_byte_for_byte() {
        let hmac: [u8; 32] = B64
            .decode("KIN6XvWyMmtMGbWmDChk2yFlqlrHuqfL8uRgXl1iqP8=")
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(
            pubopts_annotation(&hmac),
            "eyJjaXBoZXIiOiJBRVNfMjU2X0NUUl9ITUFDX1NIQTI1NiIsImhtYWMiOiJLSU42WHZXeU1tdE1HYldtRENoazJ5RmxxbHJIdXFmTDh1UmdYbDFpcVA4PSIsImNpcGhlcm9wdGlvbnMiOnt9fQ=="
        );
        let d = desc_with(&[(ANNOTATION_PUBOPTS, pubopts_annotation(&hmac))]);
        assert_eq!(pubopts_hmac(&d).unwrap(), hmac);
    }

    #[test]
    fn the_spec_private_options_are_reproduced_byte_for_byte() {
        let key = LayerKey::new(
            &(0u8..32).collect::<Vec<_>>(),
            &[0xff; 15].iter().copied().chain([0xfe]).collect::<Vec<_>>(),
        )
        .unwrap();
        let digest: Digest =
            "sha256:fdeab9acf3710362bd2658cdc9a29e8f9c757fcf9811603a8c447cd1d9151108"
                .parse()
                .unwrap();
        let json = private_opts_json(&key, &digest);
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"symkey":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","digest":"sha256:fdeab9acf3710362bd2658cdc9a29e8f9c757fcf9811603a8c447cd1d9151108","cipheroptions":{"nonce":"/////////////////////g=="}}"#
        );
        assert_eq!(json.len(), 193);
        let back = parse_private_opts(&json).unwrap();
        assert_eq!(back.key_bytes(), key.key_bytes());
    }

    #[test]
    fn lenient_private_options_parse_and_bad_ones_do_not() {
        let ok = br#"{"symkey":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","cipheroptions":{"nonce":"AAAAAAAAAAAAAAAAAAAAAA=="},"extra":1}"#;
        assert!(parse_private_opts(ok).is_ok());
        for bad in [
            &br#"{"symkey":"AAEC","cipheroptions":{"nonce":"AAAAAAAAAAAAAAAAAAAAAA=="}}"#[..],
            br#"{"symkey":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}"#,
            br#"{"symkey":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","cipheroptions":{"nonce":"AAAA"}}"#,
            b"[]",
        ] {
            assert!(parse_private_opts(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn hostile_pubopts_are_refused() {
        let enc = |json: &str| desc_with(&[(ANNOTATION_PUBOPTS, B64.encode(json))]);
        assert!(matches!(
            pubopts_hmac(&desc_with(&[])),
            Err(OcicryptError::MissingPubOpts)
        ));
        assert!(matches!(
            pubopts_hmac(&enc(
                r#"{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":"KIN6XvWyMmtMGbWmDChk2yFlqlrHuqfL8uRgXl1iqP8=","cipheroptions":{"nonce":"AAAAAAAAAAAAAAAAAAAAAA=="}}"#
            )),
            Err(OcicryptError::PublicNonce)
        ));
        assert!(matches!(
            pubopts_hmac(&enc(
                r#"{"cipher":"AES_128_GCM","hmac":"","cipheroptions":{}}"#
            )),
            Err(OcicryptError::UnsupportedCipher(_))
        ));
        assert!(pubopts_hmac(&enc(
            r#"{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":"AAAA","cipheroptions":{}}"#
        ))
        .is_err());
        assert!(pubopts_hmac(&desc_with(&[(ANNOTATION_PUBOPTS, "%%%".into())])).is_err());
    }

    #[test]
    fn password_specs_split_at_the_first_marker_and_keep_colons() {
        let (path, pw) = split_password_spec("/k/key.pem:pass=a:b:pass=c").unwrap();
        assert_eq!(path, "/k/key.pem");
        assert_eq!(pw.unwrap().as_slice(), b"a:b:pass=c");
        let (path, pw) = split_password_spec("/k/plain.pem").unwrap();
        assert_eq!((path, pw.is_none()), ("/k/plain.pem", true));
        let err = split_password_spec("/k/key.pem:env=MODELCRYPT_TEST_SURELY_UNSET").unwrap_err();
        assert!(
            !err.to_string().contains("MODELCRYPT_TEST_SURELY_UNSET=")
                && err.to_string().contains("/k/key.pem")
        );
    }

    #[test]
    fn a_kek_recipient_round_trips_and_the_error_lists_what_was_tried() {
        let kek = Kek::generate().unwrap();
        let key = LayerKey::generate().unwrap();
        let plain = Descriptor::new(
            "application/vnd.cncf.model.weight.v1.raw",
            Digest::sha256(b"p"),
            1,
        );
        let kid = ResourceUri::parse("kbs:///default/key/1").unwrap();
        let recipients = Recipients {
            jwe: vec![],
            kbs: vec![(kid, kek.clone())],
        };
        let enc = encrypted_descriptor(&plain, Digest::sha256(b"c"), &key, &[9; 32], &recipients)
            .unwrap();
        assert_eq!(
            enc.media_type,
            "application/vnd.cncf.model.weight.v1.raw+encrypted"
        );
        let ring = Keyring {
            private_keys: vec![],
            keks: vec![kek],
        };
        let dec = layer_decryption(&enc, &ring).unwrap();
        assert_eq!(dec.key.key_bytes(), key.key_bytes());
        assert_eq!(dec.hmac, [9; 32]);

        let wrong = Keyring {
            private_keys: vec![],
            keks: vec![Kek::generate().unwrap()],
        };
        let err = layer_decryption(&enc, &wrong).unwrap_err().to_string();
        assert!(
            err.contains("kbs:///default/key/1") && err.contains("1 KEK"),
            "{err}"
        );
        // A KEK that does not open the packet is named as such, once per packet.
        assert!(
            err.contains("none opens it (a wrong KEK, or a tampered packet)"),
            "{err}"
        );
        let two_wrong = Keyring {
            private_keys: vec![],
            keks: vec![Kek::generate().unwrap(), Kek::generate().unwrap()],
        };
        let err = layer_decryption(&enc, &two_wrong).unwrap_err().to_string();
        assert_eq!(err.matches("none opens it").count(), 1, "{err}");
        assert!(err.contains("2 KEK(s) tried"), "{err}");
        // Without any KEK there is nothing to report about the packet.
        let none = Keyring::default();
        let err = layer_decryption(&enc, &none).unwrap_err().to_string();
        assert!(!err.contains("none opens it"), "{err}");

        let back = decrypted_descriptor(&enc, plain.digest.clone());
        assert_eq!(back, plain);
    }
}
