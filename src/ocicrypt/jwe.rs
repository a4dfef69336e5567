//! JWE key wrapping: the `org.opencontainers.image.enc.keys.jwe` annotation (ocicrypt.md 5.1)
//! and the KBS resource reply (kbs.md 2.3).
//!
//! This module owns the JWE serializations (writing go-jose's JSON form; reading flattened,
//! general and compact), the key-management algorithms (RSA-OAEP, RSA-OAEP-256, ECDH-ES and
//! ECDH-ES+A128KW/A192KW/A256KW with the RFC 7518 4.6.2 Concat KDF) and content encryption
//! (A256GCM when writing; A128GCM, A192GCM, A256GCM, A128CBC-HS256, A192CBC-HS384 and
//! A256CBC-HS512 when reading). Key files are `crate::keys`' business; what the payload means
//! (the PLBCO JSON, a KBS secret) is the caller's.
//!
//! Reading is defensive: the text is capped at `MAX_JWE_LEN`, base64url must be unpadded and
//! canonical, headers must be JSON objects without duplicate or repeated parameters, `zip` and
//! `crit` are refused, `epk` must be a valid point on a supported curve, and `iv`, `tag` and
//! `encrypted_key` lengths are checked before any key is touched. No attacker input can panic.

use std::fmt;

use aws_lc_rs::cipher::{DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey};
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::key_wrap::{self, KeyWrap as _};
use aws_lc_rs::{aead, agreement, constant_time, digest, hmac, rand, rsa};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::keys::{
    Curve, EcPrivateKey, EcPublicKey, PrivateKey, PublicKey, RsaPrivateKey, WrapAlg,
};

/// Largest JWE text `unwrap` reads. An ocicrypt JWE is about 1 KiB per recipient and a KBS
/// reply is the secret plus a few hundred bytes.
pub const MAX_JWE_LEN: usize = 1024 * 1024;

/// Most recipient entries `unwrap` accepts, bounding the RSA and ECDH work one JWE can cause.
pub const MAX_RECIPIENTS: usize = 64;

/// Everything that can go wrong wrapping or unwrapping.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JweError {
    #[error("JWE is `{len}` bytes; the limit is `{max}`")]
    TooLarge { len: usize, max: usize },
    #[error("malformed JWE: {reason}")]
    Malformed { reason: String },
    #[error("malformed JWE: `{member}` is not base64url without padding")]
    Base64 { member: String },
    #[error("unsupported key management algorithm `{alg}`")]
    UnsupportedAlg { alg: String },
    #[error("unsupported content encryption `{enc}`")]
    UnsupportedEnc { enc: String },
    #[error("compressed JWE (`zip` `{zip}`) is not supported")]
    Compressed { zip: String },
    #[error("JWE marks header parameters critical (`crit` {names}); none are supported")]
    Critical { names: String },
    #[error("invalid `epk` in recipient entry `{index}`: {reason}")]
    InvalidEpk { index: usize, reason: String },
    #[error("JWE has `{count}` recipient entries; the limit is `{max}`")]
    TooManyRecipients { count: usize, max: usize },
    #[error(
        "no recipient entry could be unwrapped: `{recipients}` recipient entries, `{keys}` keys \
         tried ({detail})"
    )]
    NoRecipientMatched {
        recipients: usize,
        keys: usize,
        detail: String,
    },
    #[error("content decryption failed: the ciphertext, tag, iv or protected header was altered")]
    Decrypt,
    #[error("no recipients to wrap the key for")]
    NoRecipients,
    #[error("{operation} failed in aws-lc")]
    Crypto { operation: &'static str },
}

/// Wraps `payload` (the ocicrypt PLBCO JSON) for every recipient, as containers/ocicrypt with
/// go-jose does (ocicrypt.md 5.1).
///
/// A fresh 32-byte CEK encrypts `payload` with `A256GCM` (12-byte IV, AAD = the ASCII of the
/// base64url protected header). Each recipient gets the CEK wrapped with its JWK `alg` if it
/// came from a JWK that had one, else `RSA-OAEP` (SHA-1, as go-jose) for RSA keys and
/// `ECDH-ES+A256KW` for EC keys (an ephemeral key on the recipient's curve, `epk` in the
/// header, empty apu/apv). A JWK `kid` becomes a `kid` header.
///
/// The output is go-jose's `FullSerialize` text: flattened JSON for one recipient (recipient
/// header merged into `protected`), general JSON for more, with go-jose's extra top-level
/// `encrypted_key` equal to the first recipient's.
pub fn wrap(payload: &[u8], recipients: &[PublicKey]) -> Result<Vec<u8>, JweError> {
    if recipients.is_empty() {
        return Err(JweError::NoRecipients);
    }
    let mut cek = Zeroizing::new([0u8; 32]);
    rand::fill(cek.as_mut_slice()).map_err(|_| JweError::Crypto {
        operation: "random CEK",
    })?;
    let wrapped = recipients
        .iter()
        .map(|key| wrap_cek(&cek[..], key))
        .collect::<Result<Vec<_>, _>>()?;

    let protected_json = match wrapped.as_slice() {
        [only] => serde_json::to_string(&FlattenedProtected {
            alg: only.header.alg,
            enc: WRAP_ENC.name(),
            epk: only.header.epk.as_ref(),
            kid: only.header.kid.as_deref(),
        }),
        _ => serde_json::to_string(&GeneralProtected {
            enc: WRAP_ENC.name(),
        }),
    }
    // INVARIANT: structs of strings always serialize.
    .expect("JWE header serializes");
    let protected = URL_SAFE_NO_PAD.encode(protected_json);

    let mut iv = [0u8; 12];
    rand::fill(&mut iv).map_err(|_| JweError::Crypto {
        operation: "random IV",
    })?;
    // Zeroizing: until sealing succeeds this holds the plaintext.
    let mut ciphertext = Zeroizing::new(payload.to_vec());
    let key =
        aead::UnboundKey::new(&aead::AES_256_GCM, &cek[..]).map_err(|_| JweError::Crypto {
            operation: "AES-256-GCM key setup",
        })?;
    // A fresh random key per call, so the random nonce can never repeat under it.
    let tag = aead::LessSafeKey::new(key)
        .seal_in_place_separate_tag(
            aead::Nonce::assume_unique_for_key(iv),
            aead::Aad::from(protected.as_bytes()),
            ciphertext.as_mut_slice(),
        )
        .map_err(|_| JweError::Crypto {
            operation: "AES-256-GCM encryption",
        })?;

    let iv = URL_SAFE_NO_PAD.encode(iv);
    let ciphertext = URL_SAFE_NO_PAD.encode(ciphertext.as_slice());
    let tag = URL_SAFE_NO_PAD.encode(tag.as_ref());
    // `wrapped` has one entry per recipient, and there is at least one.
    let first_key = URL_SAFE_NO_PAD.encode(&wrapped[0].encrypted_key);
    let out = if wrapped.len() == 1 {
        serde_json::to_vec(&FlattenedOut {
            protected,
            encrypted_key: first_key,
            iv,
            ciphertext,
            tag,
        })
    } else {
        let recipients = wrapped
            .into_iter()
            .map(|w| RecipientOut {
                header: w.header,
                encrypted_key: URL_SAFE_NO_PAD.encode(&w.encrypted_key),
            })
            .collect();
        serde_json::to_vec(&GeneralOut {
            protected,
            recipients,
            encrypted_key: first_key,
            iv,
            ciphertext,
            tag,
        })
    };
    // INVARIANT: structs of strings always serialize.
    Ok(out.expect("JWE serializes"))
}

/// Unwraps a JWE with the first key that opens any recipient entry, and returns the payload.
///
/// Reads flattened and general JSON (including go-jose's extra top-level `encrypted_key`, which
/// must then equal the first recipient's) and compact serialization. Every recipient entry is
/// tried with every key of a fitting kind (an RSA key for RSA-OAEP, an EC key on the `epk` curve
/// for ECDH-ES); the first success wins. A malformed entry is skipped when another entry is
/// usable, and reported when none is. When a key unwraps a CEK through an integrity-checked
/// wrap (RSA-OAEP, AES-KW) but the content does not decrypt, the result is `Decrypt`: the
/// ciphertext was altered, and no other key can fix that.
pub fn unwrap(jwe: &[u8], keys: &[PrivateKey]) -> Result<Zeroizing<Vec<u8>>, JweError> {
    let jwe = Jwe::parse(jwe)?;
    let mut prepared = Vec::with_capacity(jwe.recipients.len());
    let mut first_error = None;
    let mut notes = Vec::new();
    for (index, recipient) in jwe.recipients.iter().enumerate() {
        match Prepared::new(index, &jwe.shared, recipient, jwe.enc) {
            Ok(entry) => prepared.push(entry),
            Err(err) => {
                notes.push(format!("entry {index}: {err}"));
                first_error.get_or_insert(err);
            }
        }
    }
    if prepared.is_empty() {
        if let Some(err) = first_error {
            return Err(err);
        }
    }

    let aad = jwe.aad();
    let mut content_failed = false;
    for entry in &prepared {
        let mut fitting = 0;
        let mut failed = 0;
        for key in keys {
            let cek = match entry.unwrap_cek(key, jwe.enc) {
                Attempt::NotApplicable => continue,
                Attempt::Failed => {
                    fitting += 1;
                    failed += 1;
                    continue;
                }
                Attempt::Cek(cek) => cek,
            };
            fitting += 1;
            match decrypt_content(jwe.enc, &cek, &jwe.iv, &jwe.ciphertext, &jwe.tag, &aad) {
                Some(plaintext) => return Ok(plaintext),
                // Direct ECDH-ES has no key check of its own: a wrong key shows up only here.
                None if entry.alg == KeyMgmt::EcdhEs => failed += 1,
                None => content_failed = true,
            }
        }
        notes.push(entry.describe(fitting, failed));
    }
    if content_failed {
        return Err(JweError::Decrypt);
    }
    if keys.is_empty() {
        notes.push("no keys given".to_owned());
    }
    Err(JweError::NoRecipientMatched {
        recipients: jwe.recipients.len(),
        keys: keys.len(),
        detail: notes.join("; "),
    })
}

// ---------------------------------------------------------------------------------------------
// Algorithms

/// Content encryption used when wrapping (ocicrypt.md 5.1).
const WRAP_ENC: ContentAlg = ContentAlg::A256Gcm;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyMgmt {
    RsaOaep,
    RsaOaep256,
    EcdhEs,
    /// ECDH-ES followed by AES key wrap with a KEK of this many bytes.
    EcdhEsKw(usize),
}

impl KeyMgmt {
    fn parse(alg: &str) -> Option<KeyMgmt> {
        match alg {
            "RSA-OAEP" => Some(KeyMgmt::RsaOaep),
            "RSA-OAEP-256" => Some(KeyMgmt::RsaOaep256),
            "ECDH-ES" => Some(KeyMgmt::EcdhEs),
            "ECDH-ES+A128KW" => Some(KeyMgmt::EcdhEsKw(16)),
            "ECDH-ES+A192KW" => Some(KeyMgmt::EcdhEsKw(24)),
            "ECDH-ES+A256KW" => Some(KeyMgmt::EcdhEsKw(32)),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            KeyMgmt::RsaOaep => "RSA-OAEP",
            KeyMgmt::RsaOaep256 => "RSA-OAEP-256",
            KeyMgmt::EcdhEs => "ECDH-ES",
            KeyMgmt::EcdhEsKw(16) => "ECDH-ES+A128KW",
            KeyMgmt::EcdhEsKw(24) => "ECDH-ES+A192KW",
            KeyMgmt::EcdhEsKw(_) => "ECDH-ES+A256KW",
        }
    }

    fn from_wrap(alg: WrapAlg) -> KeyMgmt {
        match alg {
            WrapAlg::RsaOaep => KeyMgmt::RsaOaep,
            WrapAlg::RsaOaep256 => KeyMgmt::RsaOaep256,
            WrapAlg::EcdhEsA128Kw => KeyMgmt::EcdhEsKw(16),
            WrapAlg::EcdhEsA192Kw => KeyMgmt::EcdhEsKw(24),
            WrapAlg::EcdhEsA256Kw => KeyMgmt::EcdhEsKw(32),
        }
    }

    fn oaep(self) -> &'static rsa::OaepAlgorithm {
        match self {
            KeyMgmt::RsaOaep256 => &rsa::OAEP_SHA256_MGF1SHA256,
            _ => &rsa::OAEP_SHA1_MGF1SHA1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ContentAlg {
    A128Gcm,
    A192Gcm,
    A256Gcm,
    A128CbcHs256,
    A192CbcHs384,
    A256CbcHs512,
}

impl ContentAlg {
    fn parse(enc: &str) -> Option<ContentAlg> {
        match enc {
            "A128GCM" => Some(ContentAlg::A128Gcm),
            "A192GCM" => Some(ContentAlg::A192Gcm),
            "A256GCM" => Some(ContentAlg::A256Gcm),
            "A128CBC-HS256" => Some(ContentAlg::A128CbcHs256),
            "A192CBC-HS384" => Some(ContentAlg::A192CbcHs384),
            "A256CBC-HS512" => Some(ContentAlg::A256CbcHs512),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ContentAlg::A128Gcm => "A128GCM",
            ContentAlg::A192Gcm => "A192GCM",
            ContentAlg::A256Gcm => "A256GCM",
            ContentAlg::A128CbcHs256 => "A128CBC-HS256",
            ContentAlg::A192CbcHs384 => "A192CBC-HS384",
            ContentAlg::A256CbcHs512 => "A256CBC-HS512",
        }
    }

    /// CEK length; for CBC-HS the MAC key and the AES key together (RFC 7518 5.2).
    fn key_len(self) -> usize {
        match self {
            ContentAlg::A128Gcm => 16,
            ContentAlg::A192Gcm => 24,
            ContentAlg::A256Gcm | ContentAlg::A128CbcHs256 => 32,
            ContentAlg::A192CbcHs384 => 48,
            ContentAlg::A256CbcHs512 => 64,
        }
    }

    fn iv_len(self) -> usize {
        if self.is_gcm() {
            12
        } else {
            16
        }
    }

    fn tag_len(self) -> usize {
        if self.is_gcm() {
            16
        } else {
            self.key_len() / 2
        }
    }

    fn is_gcm(self) -> bool {
        matches!(
            self,
            ContentAlg::A128Gcm | ContentAlg::A192Gcm | ContentAlg::A256Gcm
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Wrapping

/// One recipient's header and wrapped key, before serialization.
struct Wrapped {
    header: RecipientHeader,
    encrypted_key: Vec<u8>,
}

/// `epk` as go-jose writes it: its `JSONWebKey` marshals members in struct order
/// (`kty`, `crv`, `x`, `y`), not sorted.
#[derive(Serialize)]
struct Epk {
    kty: &'static str,
    crv: &'static str,
    x: String,
    y: String,
}

/// A per-recipient header. go-jose keeps headers in a Go map, which `encoding/json` writes with
/// sorted keys; the fields here are declared in that order.
#[derive(Serialize)]
struct RecipientHeader {
    alg: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    epk: Option<Epk>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
}

/// One recipient: its header merged into the protected header, keys sorted.
#[derive(Serialize)]
struct FlattenedProtected<'a> {
    alg: &'static str,
    enc: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    epk: Option<&'a Epk>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<&'a str>,
}

#[derive(Serialize)]
struct GeneralProtected {
    enc: &'static str,
}

/// go-jose `rawJSONWebEncryption` member order, empty members omitted.
#[derive(Serialize)]
struct FlattenedOut {
    protected: String,
    encrypted_key: String,
    iv: String,
    ciphertext: String,
    tag: String,
}

#[derive(Serialize)]
struct GeneralOut {
    protected: String,
    recipients: Vec<RecipientOut>,
    encrypted_key: String,
    iv: String,
    ciphertext: String,
    tag: String,
}

#[derive(Serialize)]
struct RecipientOut {
    header: RecipientHeader,
    encrypted_key: String,
}

fn wrap_cek(cek: &[u8], recipient: &PublicKey) -> Result<Wrapped, JweError> {
    let kid = recipient.kid().map(str::to_owned);
    match recipient {
        PublicKey::Rsa(rsa_key) => {
            let alg = match recipient.alg() {
                None | Some(WrapAlg::RsaOaep) => KeyMgmt::RsaOaep,
                Some(WrapAlg::RsaOaep256) => KeyMgmt::RsaOaep256,
                // keys::PublicKey only lets an RSA JWK pin an RSA-OAEP algorithm.
                Some(other) => {
                    return Err(JweError::UnsupportedAlg {
                        alg: other.as_str().to_owned(),
                    })
                }
            };
            let oaep = rsa::OaepPublicEncryptingKey::new(rsa_key.encrypting_key().clone())
                .map_err(|_| JweError::Crypto {
                    operation: "RSA-OAEP key setup",
                })?;
            let mut out = vec![0u8; oaep.ciphertext_size()];
            let len = oaep
                .encrypt(alg.oaep(), cek, &mut out, None)
                .map_err(|_| JweError::Crypto {
                    operation: "RSA-OAEP encryption",
                })?
                .len();
            out.truncate(len);
            Ok(Wrapped {
                header: RecipientHeader {
                    alg: alg.name(),
                    epk: None,
                    kid,
                },
                encrypted_key: out,
            })
        }
        PublicKey::Ec(ec_key) => {
            let alg = recipient
                .alg()
                .map_or(KeyMgmt::EcdhEsKw(32), KeyMgmt::from_wrap);
            let KeyMgmt::EcdhEsKw(kek_len) = alg else {
                // keys::PublicKey only lets an EC JWK pin an ECDH-ES+AxxxKW algorithm.
                return Err(JweError::UnsupportedAlg {
                    alg: alg.name().to_owned(),
                });
            };
            let (epk, kek) = ecdh_ephemeral(ec_key, alg.name(), kek_len)?;
            let encrypted_key = aes_kw_wrap(&kek, cek)?;
            Ok(Wrapped {
                header: RecipientHeader {
                    alg: alg.name(),
                    epk: Some(epk),
                    kid,
                },
                encrypted_key,
            })
        }
    }
}

/// ECDH-ES on the sender side: a fresh ephemeral key on the recipient's curve, and the KEK
/// from the Concat KDF with `alg` as AlgorithmID and empty apu/apv, as go-jose derives it.
fn ecdh_ephemeral(
    recipient: &EcPublicKey,
    alg: &str,
    kek_len: usize,
) -> Result<(Epk, Zeroizing<Vec<u8>>), JweError> {
    let curve = recipient.curve();
    let crypto = |operation| JweError::Crypto { operation };
    let ephemeral =
        agreement::EphemeralPrivateKey::generate(curve.agreement(), &rand::SystemRandom::new())
            .map_err(|_| crypto("ephemeral key generation"))?;
    let public = ephemeral
        .compute_public_key()
        .map_err(|_| crypto("ephemeral public key"))?;
    let point = public.as_ref();
    let len = curve.field_len();
    if point.len() != 1 + 2 * len {
        return Err(crypto("ephemeral public key"));
    }
    let epk = Epk {
        kty: "EC",
        crv: curve.name(),
        x: URL_SAFE_NO_PAD.encode(&point[1..1 + len]),
        y: URL_SAFE_NO_PAD.encode(&point[1 + len..]),
    };
    let peer = agreement::UnparsedPublicKey::new(curve.agreement(), recipient.point());
    let kek = agreement::agree_ephemeral(ephemeral, peer, crypto("ECDH"), |z| {
        concat_kdf(z, alg, &[], &[], kek_len).ok_or(crypto("Concat KDF"))
    })?;
    Ok((epk, kek))
}

// ---------------------------------------------------------------------------------------------
// Parsing

/// A JWE header object; unlike `serde_json::Map` it refuses duplicate names, which different
/// parsers would resolve differently.
#[derive(Default)]
struct Header(Map<String, Value>);

impl<'de> Deserialize<'de> for Header {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HeaderVisitor;
        impl<'de> Visitor<'de> for HeaderVisitor {
            type Value = Header;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Header, A::Error> {
                let mut map = Map::new();
                while let Some(name) = access.next_key::<String>()? {
                    if map.contains_key(&name) {
                        return Err(de::Error::custom(format_args!(
                            "duplicate header parameter `{name}`"
                        )));
                    }
                    let value: Value = access.next_value()?;
                    map.insert(name, value);
                }
                Ok(Header(map))
            }
        }
        deserializer.deserialize_map(HeaderVisitor)
    }
}

/// The JSON serialization, flattened or general (RFC 7516 7.2). Unknown members are ignored as
/// 7.2.1 asks; duplicate members are refused by serde.
#[derive(Deserialize)]
struct JsonJwe {
    protected: Option<String>,
    unprotected: Option<Header>,
    header: Option<Header>,
    recipients: Option<Vec<JsonRecipient>>,
    encrypted_key: Option<String>,
    aad: Option<String>,
    iv: Option<String>,
    ciphertext: Option<String>,
    tag: Option<String>,
}

#[derive(Deserialize)]
struct JsonRecipient {
    header: Option<Header>,
    encrypted_key: Option<String>,
}

struct Recipient {
    /// The per-recipient unprotected header (empty for compact).
    header: Map<String, Value>,
    encrypted_key: Vec<u8>,
}

/// A parsed JWE whose shared parts are already checked.
struct Jwe {
    /// `protected` as received: the AAD is computed over these exact bytes.
    protected_b64: String,
    aad_b64: Option<String>,
    /// Protected and shared unprotected header parameters together.
    shared: Map<String, Value>,
    recipients: Vec<Recipient>,
    enc: ContentAlg,
    iv: Vec<u8>,
    ciphertext: Vec<u8>,
    tag: Vec<u8>,
}

impl Jwe {
    fn parse(text: &[u8]) -> Result<Jwe, JweError> {
        if text.len() > MAX_JWE_LEN {
            return Err(JweError::TooLarge {
                len: text.len(),
                max: MAX_JWE_LEN,
            });
        }
        let text = text.trim_ascii();
        match text.first() {
            None => Err(malformed("empty input")),
            Some(b'{') => Jwe::parse_json(text),
            Some(_) => Jwe::parse_compact(text),
        }
    }

    fn parse_compact(text: &[u8]) -> Result<Jwe, JweError> {
        let text = std::str::from_utf8(text).map_err(|_| malformed("not UTF-8 text"))?;
        let parts: Vec<&str> = text.split('.').collect();
        let [protected, encrypted_key, iv, ciphertext, tag] = parts[..] else {
            return Err(malformed(format!(
                "compact serialization has `{}` parts; expected `5`",
                parts.len()
            )));
        };
        let recipient = Recipient {
            header: Map::new(),
            encrypted_key: b64("encrypted_key", encrypted_key)?,
        };
        Jwe::assemble(protected, None, None, vec![recipient], iv, ciphertext, tag)
    }

    fn parse_json(text: &[u8]) -> Result<Jwe, JweError> {
        let raw: JsonJwe = serde_json::from_slice(text)
            .map_err(|e| malformed(format!("not a JWE JSON object: {e}")))?;
        let recipients = match raw.recipients {
            Some(list) => {
                if raw.header.is_some() {
                    return Err(malformed("both `recipients` and a top-level `header`"));
                }
                if list.is_empty() {
                    return Err(malformed("`recipients` is empty"));
                }
                if list.len() > MAX_RECIPIENTS {
                    return Err(JweError::TooManyRecipients {
                        count: list.len(),
                        max: MAX_RECIPIENTS,
                    });
                }
                let recipients = list
                    .into_iter()
                    .enumerate()
                    .map(|(i, r)| {
                        Ok(Recipient {
                            header: r.header.unwrap_or_default().0,
                            encrypted_key: optional_b64(
                                &format!("recipients[{i}].encrypted_key"),
                                r.encrypted_key.as_deref(),
                            )?,
                        })
                    })
                    .collect::<Result<Vec<_>, JweError>>()?;
                // go-jose's FullSerialize repeats the first recipient's key at top level
                // (ocicrypt.md 5.1). Accept exactly that; anything else is ambiguous.
                if let Some(top) = raw.encrypted_key.as_deref() {
                    if b64("encrypted_key", top)? != recipients[0].encrypted_key {
                        return Err(malformed(
                            "top-level `encrypted_key` differs from the first recipient's",
                        ));
                    }
                }
                recipients
            }
            None => vec![Recipient {
                header: raw.header.unwrap_or_default().0,
                encrypted_key: optional_b64("encrypted_key", raw.encrypted_key.as_deref())?,
            }],
        };
        let required = |name: &str, value: Option<String>| {
            value.ok_or_else(|| malformed(format!("missing `{name}`")))
        };
        Jwe::assemble(
            &required("protected", raw.protected)?,
            raw.unprotected.map(|h| h.0),
            raw.aad,
            recipients,
            &required("iv", raw.iv)?,
            &required("ciphertext", raw.ciphertext)?,
            &required("tag", raw.tag)?,
        )
    }

    fn assemble(
        protected_b64: &str,
        unprotected: Option<Map<String, Value>>,
        aad_b64: Option<String>,
        recipients: Vec<Recipient>,
        iv: &str,
        ciphertext: &str,
        tag: &str,
    ) -> Result<Jwe, JweError> {
        // Every producer we interoperate with protects `alg`/`enc`; go-jose refuses a JWE
        // without a protected header too.
        if protected_b64.is_empty() {
            return Err(malformed("missing `protected` header"));
        }
        let protected_json = b64("protected", protected_b64)?;
        let Header(mut shared) = serde_json::from_slice(&protected_json)
            .map_err(|e| malformed(format!("protected header is not a JSON object: {e}")))?;
        for (name, value) in unprotected.unwrap_or_default() {
            if shared.contains_key(&name) {
                return Err(repeated(&name));
            }
            shared.insert(name, value);
        }
        // RFC 7516 7.2.1: the protected, shared and per-recipient headers must be disjoint. A
        // repeat is a malformed JWE as a whole, not a problem of one recipient entry.
        for recipient in &recipients {
            if let Some(name) = recipient
                .header
                .keys()
                .find(|name| shared.contains_key(*name))
            {
                return Err(repeated(name));
            }
        }
        for header in std::iter::once(&shared).chain(recipients.iter().map(|r| &r.header)) {
            refuse_extensions(header)?;
        }
        let enc = match shared.get("enc") {
            Some(Value::String(enc)) => {
                ContentAlg::parse(enc).ok_or_else(|| JweError::UnsupportedEnc {
                    enc: crate::extract::shown(enc),
                })?
            }
            Some(_) => return Err(malformed("`enc` is not a string")),
            None => return Err(malformed("missing `enc` in the protected or shared header")),
        };
        if let Some(aad) = aad_b64.as_deref() {
            b64("aad", aad)?;
        }
        let iv = b64("iv", iv)?;
        let ciphertext = b64("ciphertext", ciphertext)?;
        let tag = b64("tag", tag)?;
        if iv.len() != enc.iv_len() {
            return Err(malformed(format!(
                "`iv` is `{}` bytes; `{}` needs `{}`",
                iv.len(),
                enc.name(),
                enc.iv_len()
            )));
        }
        if tag.len() != enc.tag_len() {
            return Err(malformed(format!(
                "`tag` is `{}` bytes; `{}` needs `{}`",
                tag.len(),
                enc.name(),
                enc.tag_len()
            )));
        }
        Ok(Jwe {
            protected_b64: protected_b64.to_owned(),
            aad_b64,
            shared,
            recipients,
            enc,
            iv,
            ciphertext,
            tag,
        })
    }

    /// The AAD (RFC 7516 5.1 step 14): the protected header as received, plus `.aad` if any.
    fn aad(&self) -> Vec<u8> {
        let mut aad = self.protected_b64.as_bytes().to_vec();
        if let Some(extra) = &self.aad_b64 {
            aad.push(b'.');
            aad.extend_from_slice(extra.as_bytes());
        }
        aad
    }
}

/// `zip` and `crit` change how a JWE must be processed; we support neither, so refuse rather
/// than silently misread (ocicrypt never sets them).
fn refuse_extensions(header: &Map<String, Value>) -> Result<(), JweError> {
    if let Some(zip) = header.get("zip") {
        let zip = zip.as_str().map_or_else(|| zip.to_string(), str::to_owned);
        return Err(JweError::Compressed {
            zip: crate::extract::shown(&zip),
        });
    }
    if let Some(crit) = header.get("crit") {
        return Err(JweError::Critical {
            names: crit.to_string(),
        });
    }
    Ok(())
}

fn malformed(reason: impl Into<String>) -> JweError {
    JweError::Malformed {
        reason: reason.into(),
    }
}

fn repeated(name: &str) -> JweError {
    malformed(format!(
        "header parameter `{name}` appears in more than one header"
    ))
}

/// Strict base64url: URL alphabet, no padding, no stray bits (RFC 7515 2).
fn b64(member: &str, value: &str) -> Result<Vec<u8>, JweError> {
    URL_SAFE_NO_PAD.decode(value).map_err(|_| JweError::Base64 {
        member: member.to_owned(),
    })
}

fn optional_b64(member: &str, value: Option<&str>) -> Result<Vec<u8>, JweError> {
    value.map_or(Ok(Vec::new()), |value| b64(member, value))
}

// ---------------------------------------------------------------------------------------------
// Unwrapping one recipient entry

/// A recipient entry whose header has been merged and checked, ready for keys.
struct Prepared<'a> {
    index: usize,
    alg: KeyMgmt,
    /// For ECDH-ES: the sender's ephemeral key, already validated, and the KDF party info.
    ecdh: Option<Ecdh>,
    encrypted_key: &'a [u8],
}

struct Ecdh {
    curve: Curve,
    epk: Vec<u8>,
    apu: Vec<u8>,
    apv: Vec<u8>,
}

enum Attempt {
    /// The key cannot serve this entry (wrong kind or curve).
    NotApplicable,
    /// The key fits but did not unwrap the CEK.
    Failed,
    Cek(Zeroizing<Vec<u8>>),
}

impl<'a> Prepared<'a> {
    fn new(
        index: usize,
        shared: &Map<String, Value>,
        recipient: &'a Recipient,
        enc: ContentAlg,
    ) -> Result<Prepared<'a>, JweError> {
        // Jwe::assemble made sure the two headers are disjoint.
        let get = |name: &str| shared.get(name).or_else(|| recipient.header.get(name));
        let alg = match get("alg") {
            Some(Value::String(alg)) => {
                KeyMgmt::parse(alg).ok_or_else(|| JweError::UnsupportedAlg {
                    alg: crate::extract::shown(alg),
                })?
            }
            Some(_) => return Err(malformed(format!("entry {index}: `alg` is not a string"))),
            None => return Err(malformed(format!("entry {index}: missing `alg`"))),
        };
        let encrypted_key = recipient.encrypted_key.as_slice();
        let ecdh = match alg {
            KeyMgmt::RsaOaep | KeyMgmt::RsaOaep256 => {
                if encrypted_key.is_empty() {
                    return Err(malformed(format!("entry {index}: empty `encrypted_key`")));
                }
                None
            }
            KeyMgmt::EcdhEs | KeyMgmt::EcdhEsKw(_) => {
                let expected = match alg {
                    KeyMgmt::EcdhEs => 0,
                    // RFC 3394: one 8-byte integrity block in front of the wrapped key.
                    _ => enc.key_len() + 8,
                };
                if encrypted_key.len() != expected {
                    return Err(malformed(format!(
                        "entry {index}: `encrypted_key` is `{}` bytes; `{}` with `{}` needs `{}`",
                        encrypted_key.len(),
                        alg.name(),
                        enc.name(),
                        expected
                    )));
                }
                let (curve, epk) = parse_epk(index, get("epk"))?;
                let party = |name: &str| match get(name) {
                    None => Ok(Vec::new()),
                    Some(Value::String(value)) => b64(name, value),
                    Some(_) => Err(malformed(format!(
                        "entry {index}: `{name}` is not a string"
                    ))),
                };
                Some(Ecdh {
                    curve,
                    epk,
                    apu: party("apu")?,
                    apv: party("apv")?,
                })
            }
        };
        Ok(Prepared {
            index,
            alg,
            ecdh,
            encrypted_key,
        })
    }

    fn unwrap_cek(&self, key: &PrivateKey, enc: ContentAlg) -> Attempt {
        match (key, &self.ecdh) {
            (PrivateKey::Rsa(rsa_key), None) => self.rsa_unwrap(rsa_key, enc),
            (PrivateKey::Ec(ec_key), Some(ecdh)) if ec_key.curve() == ecdh.curve => {
                self.ecdh_unwrap(ec_key, ecdh, enc)
            }
            _ => Attempt::NotApplicable,
        }
    }

    fn rsa_unwrap(&self, key: &RsaPrivateKey, enc: ContentAlg) -> Attempt {
        let decrypting = key.decrypting_key();
        if self.encrypted_key.len() != decrypting.key_size_bytes() {
            return Attempt::Failed;
        }
        let Ok(oaep) = rsa::OaepPrivateDecryptingKey::new(decrypting.clone()) else {
            return Attempt::Failed;
        };
        let mut cek = Zeroizing::new(vec![0u8; oaep.min_output_size()]);
        let Ok(plain) = oaep.decrypt(self.alg.oaep(), self.encrypted_key, &mut cek, None) else {
            return Attempt::Failed;
        };
        let len = plain.len();
        cek.truncate(len);
        if len == enc.key_len() {
            Attempt::Cek(cek)
        } else {
            Attempt::Failed
        }
    }

    fn ecdh_unwrap(&self, key: &EcPrivateKey, ecdh: &Ecdh, enc: ContentAlg) -> Attempt {
        // RFC 7518 4.6.2: direct ECDH-ES derives the CEK with `enc` as AlgorithmID; the key
        // wrap variants derive a KEK with `alg` as AlgorithmID.
        let (algorithm_id, len) = match self.alg {
            KeyMgmt::EcdhEsKw(kek_len) => (self.alg.name(), kek_len),
            _ => (enc.name(), enc.key_len()),
        };
        let peer = agreement::UnparsedPublicKey::new(ecdh.curve.agreement(), &ecdh.epk);
        let derived = agreement::agree(key.agreement_key(), peer, (), |z| {
            concat_kdf(z, algorithm_id, &ecdh.apu, &ecdh.apv, len).ok_or(())
        });
        match (derived, self.alg) {
            (Err(()), _) => Attempt::Failed,
            (Ok(cek), KeyMgmt::EcdhEs) => Attempt::Cek(cek),
            (Ok(kek), _) => {
                aes_kw_unwrap(&kek, self.encrypted_key).map_or(Attempt::Failed, Attempt::Cek)
            }
        }
    }

    fn describe(&self, fitting: usize, failed: usize) -> String {
        let entry = match &self.ecdh {
            Some(ecdh) => {
                format!(
                    "entry {} `{}` on `{}`",
                    self.index,
                    self.alg.name(),
                    ecdh.curve.name()
                )
            }
            None => format!("entry {} `{}`", self.index, self.alg.name()),
        };
        match (&self.ecdh, fitting) {
            (Some(ecdh), 0) => format!("{entry}: no key on `{}`", ecdh.curve.name()),
            (None, 0) => format!("{entry}: no RSA key"),
            _ => format!("{entry}: `{failed}` fitting keys failed"),
        }
    }
}

/// Validates an `epk` (RFC 7518 4.6.1.1): an EC public JWK on a supported curve with
/// full-length coordinates, whose point aws-lc accepts (on the curve, not infinity).
fn parse_epk(index: usize, epk: Option<&Value>) -> Result<(Curve, Vec<u8>), JweError> {
    let invalid = |reason: String| JweError::InvalidEpk { index, reason };
    let epk = epk.ok_or_else(|| invalid("missing `epk`".to_owned()))?;
    let epk = epk
        .as_object()
        .ok_or_else(|| invalid("not a JSON object".to_owned()))?;
    let text = |name: &str| epk.get(name).and_then(Value::as_str);
    match text("kty") {
        Some("EC") => {}
        Some(other) => return Err(invalid(format!("unsupported `kty` `{other}`"))),
        None => return Err(invalid("missing `kty`".to_owned())),
    }
    if epk.contains_key("d") {
        return Err(invalid("it carries a private key (`d`)".to_owned()));
    }
    let crv = text("crv").ok_or_else(|| invalid("missing `crv`".to_owned()))?;
    let curve =
        Curve::from_jwk_name(crv).ok_or_else(|| invalid(format!("unsupported curve `{crv}`")))?;
    let mut point = Vec::with_capacity(1 + 2 * curve.field_len());
    point.push(0x04);
    for name in ["x", "y"] {
        let value = text(name).ok_or_else(|| invalid(format!("missing `{name}`")))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(value)
            .map_err(|_| invalid(format!("`{name}` is not base64url without padding")))?;
        if bytes.len() != curve.field_len() {
            return Err(invalid(format!(
                "`{name}` is `{}` bytes; `{crv}` needs `{}`",
                bytes.len(),
                curve.field_len()
            )));
        }
        point.extend_from_slice(&bytes);
    }
    agreement::ParsedPublicKey::try_from(&agreement::UnparsedPublicKey::new(
        curve.agreement(),
        &point,
    ))
    .map_err(|_| invalid(format!("the point is not on `{crv}`")))?;
    Ok((curve, point))
}

// ---------------------------------------------------------------------------------------------
// Primitives

/// Concat KDF (NIST SP 800-56A, RFC 7518 4.6.2) with SHA-256: rounds of
/// SHA-256(counter || Z || len(AlgorithmID) || AlgorithmID || len(apu) || apu || len(apv) ||
/// apv || keydatalen in bits), all lengths 32-bit big-endian. `None` only if a length does not
/// fit in 32 bits, which the input size limit rules out.
fn concat_kdf(
    z: &[u8],
    algorithm_id: &str,
    apu: &[u8],
    apv: &[u8],
    len: usize,
) -> Option<Zeroizing<Vec<u8>>> {
    let be32 = |n: usize| u32::try_from(n).ok().map(u32::to_be_bytes);
    let (alg_len, apu_len, apv_len) = (
        be32(algorithm_id.len())?,
        be32(apu.len())?,
        be32(apv.len())?,
    );
    let bits = be32(len.checked_mul(8)?)?;
    let mut out = Zeroizing::new(Vec::with_capacity(len + 32));
    let mut counter: u32 = 1;
    while out.len() < len {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(&counter.to_be_bytes());
        ctx.update(z);
        ctx.update(&alg_len);
        ctx.update(algorithm_id.as_bytes());
        ctx.update(&apu_len);
        ctx.update(apu);
        ctx.update(&apv_len);
        ctx.update(apv);
        ctx.update(&bits);
        out.extend_from_slice(ctx.finish().as_ref());
        counter = counter.checked_add(1)?;
    }
    out.truncate(len);
    Some(out)
}

/// AES key wrap (RFC 3394). aws-lc-rs has AES-128 and AES-256 KW; AES-192 KW is built from
/// the AES-192 block cipher below.
fn aes_kw_wrap(kek: &[u8], cek: &[u8]) -> Result<Vec<u8>, JweError> {
    let failed = |_| JweError::Crypto {
        operation: "AES key wrap",
    };
    let mut out = vec![0u8; cek.len() + 8];
    let len = match kek.len() {
        16 => key_wrap::KeyEncryptionKey::new(&key_wrap::AES_128, kek)
            .and_then(|k| k.wrap(cek, &mut out).map(|o| o.len()))
            .map_err(failed)?,
        32 => key_wrap::KeyEncryptionKey::new(&key_wrap::AES_256, kek)
            .and_then(|k| k.wrap(cek, &mut out).map(|o| o.len()))
            .map_err(failed)?,
        _ => return kw192::wrap(kek, cek).map_err(failed),
    };
    out.truncate(len);
    Ok(out)
}

fn aes_kw_unwrap(kek: &[u8], wrapped: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let mut out = Zeroizing::new(vec![0u8; wrapped.len()]);
    let len = match kek.len() {
        16 => key_wrap::KeyEncryptionKey::new(&key_wrap::AES_128, kek)
            .and_then(|k| k.unwrap(wrapped, &mut out).map(|o| o.len()))
            .ok()?,
        32 => key_wrap::KeyEncryptionKey::new(&key_wrap::AES_256, kek)
            .and_then(|k| k.unwrap(wrapped, &mut out).map(|o| o.len()))
            .ok()?,
        _ => return kw192::unwrap(kek, wrapped).ok(),
    };
    out.truncate(len);
    Some(out)
}

/// Decrypts and authenticates the content; `None` on any failure, without saying which part
/// failed.
fn decrypt_content(
    enc: ContentAlg,
    cek: &[u8],
    iv: &[u8],
    ciphertext: &[u8],
    tag: &[u8],
    aad: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    if cek.len() != enc.key_len() {
        return None;
    }
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    let len = if enc.is_gcm() {
        let algorithm = match enc {
            ContentAlg::A128Gcm => &aead::AES_128_GCM,
            ContentAlg::A192Gcm => &aead::AES_192_GCM,
            _ => &aead::AES_256_GCM,
        };
        let key = aead::LessSafeKey::new(aead::UnboundKey::new(algorithm, cek).ok()?);
        let nonce = aead::Nonce::try_assume_unique_for_key(iv).ok()?;
        // aws-lc compares the tag in constant time.
        key.open_in_place_separate_tag(nonce, aead::Aad::from(aad), tag, &mut buf)
            .ok()?
            .len()
    } else {
        // RFC 7518 5.2.2.2: MAC key first, then the AES key; MAC over AAD || IV || ciphertext
        // || AAD length in bits (64-bit big-endian), truncated to half its size.
        let (mac_key, enc_key) = cek.split_at(cek.len() / 2);
        let (mac_alg, aes) = match enc {
            ContentAlg::A128CbcHs256 => (hmac::HMAC_SHA256, &aws_lc_rs::cipher::AES_128),
            ContentAlg::A192CbcHs384 => (hmac::HMAC_SHA384, &aws_lc_rs::cipher::AES_192),
            _ => (hmac::HMAC_SHA512, &aws_lc_rs::cipher::AES_256),
        };
        let aad_bits = u64::try_from(aad.len()).ok()?.checked_mul(8)?;
        let mut mac = hmac::Context::with_key(&hmac::Key::new(mac_alg, mac_key));
        mac.update(aad);
        mac.update(iv);
        mac.update(ciphertext);
        mac.update(&aad_bits.to_be_bytes());
        let mac = mac.sign();
        constant_time::verify_slices_are_equal(&mac.as_ref()[..tag.len()], tag).ok()?;
        let iv: [u8; 16] = iv.try_into().ok()?;
        let key =
            PaddedBlockDecryptingKey::cbc_pkcs7(UnboundCipherKey::new(aes, enc_key).ok()?).ok()?;
        key.decrypt(&mut buf, DecryptionContext::Iv128(FixedLength::from(iv)))
            .ok()?
            .len()
    };
    buf.truncate(len);
    Some(buf)
}

/// RFC 3394 key wrap with AES-192 (for ECDH-ES+A192KW), on aws-lc's AES-192 block cipher in
/// ECB mode, one block at a time.
mod kw192 {
    use aws_lc_rs::cipher::{
        DecryptingKey, DecryptionContext, EncryptingKey, UnboundCipherKey, AES_192,
    };
    use aws_lc_rs::constant_time;
    use aws_lc_rs::error::Unspecified;
    use zeroize::Zeroizing;

    const IV: [u8; 8] = [0xa6; 8];

    pub(super) fn wrap(kek: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, Unspecified> {
        if plaintext.len() % 8 != 0 || plaintext.len() < 16 {
            return Err(Unspecified);
        }
        let key = EncryptingKey::ecb(UnboundCipherKey::new(&AES_192, kek)?)?;
        let n = plaintext.len() / 8;
        let mut a = IV;
        let mut r = Zeroizing::new(plaintext.to_vec());
        let mut block = Zeroizing::new([0u8; 16]);
        for j in 0..6 {
            for i in 0..n {
                block[..8].copy_from_slice(&a);
                block[8..].copy_from_slice(&r[8 * i..8 * i + 8]);
                key.encrypt(block.as_mut_slice())?;
                a.copy_from_slice(&block[..8]);
                xor_counter(&mut a, n * j + i + 1);
                r[8 * i..8 * i + 8].copy_from_slice(&block[8..]);
            }
        }
        let mut out = a.to_vec();
        out.extend_from_slice(&r);
        Ok(out)
    }

    pub(super) fn unwrap(kek: &[u8], wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, Unspecified> {
        if wrapped.len() % 8 != 0 || wrapped.len() < 24 {
            return Err(Unspecified);
        }
        let key = DecryptingKey::ecb(UnboundCipherKey::new(&AES_192, kek)?)?;
        let n = wrapped.len() / 8 - 1;
        let mut a = [0u8; 8];
        a.copy_from_slice(&wrapped[..8]);
        let mut r = Zeroizing::new(wrapped[8..].to_vec());
        let mut block = Zeroizing::new([0u8; 16]);
        for j in (0..6).rev() {
            for i in (0..n).rev() {
                xor_counter(&mut a, n * j + i + 1);
                block[..8].copy_from_slice(&a);
                block[8..].copy_from_slice(&r[8 * i..8 * i + 8]);
                key.decrypt(block.as_mut_slice(), DecryptionContext::None)?;
                a.copy_from_slice(&block[..8]);
                r[8 * i..8 * i + 8].copy_from_slice(&block[8..]);
            }
        }
        constant_time::verify_slices_are_equal(&a, &IV)?;
        Ok(r)
    }

    fn xor_counter(a: &mut [u8; 8], t: usize) {
        for (byte, t_byte) in a.iter_mut().zip((t as u64).to_be_bytes()) {
            *byte ^= t_byte;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Keys from the `openssl` CLI and JWEs from go-jose, Python jwcrypto or pyca/cryptography
    /// (tests/fixtures/keys/make_fixtures.py); none of them comes from this module.
    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");

    fn fixture(name: &str) -> Vec<u8> {
        let path = Path::new(FIXTURES).join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    fn private(name: &str) -> PrivateKey {
        let password = name.contains(".enc-").then_some(&b"pass1234"[..]);
        PrivateKey::from_bytes(&fixture(name), password)
            .unwrap_or_else(|e| panic!("parsing {name}: {e}"))
    }

    fn public(name: &str) -> PublicKey {
        PublicKey::from_bytes(&fixture(name)).unwrap_or_else(|e| panic!("parsing {name}: {e}"))
    }

    fn payload() -> Vec<u8> {
        fixture("payload.json")
    }

    fn unwrap_err(jwe: &[u8], keys: &[PrivateKey]) -> JweError {
        match unwrap(jwe, keys) {
            Ok(plain) => panic!(
                "expected an error, got {:?}",
                String::from_utf8_lossy(&plain)
            ),
            Err(err) => err,
        }
    }

    fn json(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    /// Edits a JWE JSON fixture and returns the new text.
    fn edit(name: &str, change: impl FnOnce(&mut Map<String, Value>)) -> Vec<u8> {
        let mut value = json(&fixture(name));
        change(value.as_object_mut().unwrap());
        serde_json::to_vec(&value).unwrap()
    }

    /// Applies `change` to the decoded bytes of a base64url member.
    fn flip(object: &mut Map<String, Value>, member: &str, change: impl FnOnce(&mut Vec<u8>)) {
        let mut bytes = URL_SAFE_NO_PAD
            .decode(object[member].as_str().unwrap())
            .unwrap();
        change(&mut bytes);
        object.insert(member.to_owned(), URL_SAFE_NO_PAD.encode(bytes).into());
    }

    /// Rewrites the protected header through `change`.
    fn edit_protected(
        object: &mut Map<String, Value>,
        change: impl FnOnce(&mut Map<String, Value>),
    ) {
        let mut header = json(
            &URL_SAFE_NO_PAD
                .decode(object["protected"].as_str().unwrap())
                .unwrap(),
        );
        change(header.as_object_mut().unwrap());
        let text = serde_json::to_vec(&header).unwrap();
        object.insert("protected".to_owned(), URL_SAFE_NO_PAD.encode(text).into());
    }

    /// Top-level member names of a JSON object, in document order.
    fn member_order(text: &[u8]) -> Vec<String> {
        struct Names(Vec<String>);
        impl<'de> Deserialize<'de> for Names {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = Names;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("an object")
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Names, A::Error> {
                        let mut names = Vec::new();
                        while let Some(name) = a.next_key::<String>()? {
                            a.next_value::<de::IgnoredAny>()?;
                            names.push(name);
                        }
                        Ok(Names(names))
                    }
                }
                d.deserialize_map(V)
            }
        }
        serde_json::from_slice::<Names>(text).unwrap().0
    }

    /// Member names of the JSON object that `text` starts with; anything after it is ignored.
    fn member_order_at(text: &[u8]) -> Vec<String> {
        let mut stream = serde_json::Deserializer::from_slice(text).into_iter::<Value>();
        assert!(stream.next().unwrap().unwrap().is_object());
        member_order(&text[..stream.byte_offset()])
    }

    fn decode(value: &Value) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(value.as_str().unwrap()).unwrap()
    }

    #[test]
    fn jwes_from_go_jose_jwcrypto_and_trustee_shaped_ones_unwrap_to_the_payload() {
        let cases = [
            ("jwe-rsa-oaep-a256gcm.json", "rsa2048.pkcs8.pem"),
            ("jwe-rsa-oaep-256-a256gcm.json", "rsa2048.pkcs1.pem"),
            ("jwe-rsa-oaep-a128gcm.json", "rsa2048.pkcs8.der"),
            ("jwe-rsa-oaep-a192gcm.json", "rsa2048.pkcs1.der"),
            ("jwe-rsa-oaep-a128cbc-hs256.json", "rsa2048.priv.jwk.json"),
            ("jwe-rsa-oaep-a192cbc-hs384.json", "rsa2048.pkcs8.pem"),
            ("jwe-rsa-oaep-a256cbc-hs512.json", "rsa2048.pkcs8.pem"),
            ("jwe-ecdh-es-a256kw-p256.json", "ec-p256.sec1.pem"),
            ("jwe-ecdh-es-a256kw-p384.json", "ec-p384.pkcs8.pem"),
            ("jwe-ecdh-es-a256kw-p521.json", "ec-p521.priv.jwk.json"),
            ("jwe-ecdh-es-a128kw-p256.json", "ec-p256.pkcs8.der"),
            ("jwe-ecdh-es-a192kw-p384.json", "ec-p384.sec1.pem"),
            (
                "jwe-ecdh-es-direct-a256gcm-p256.json",
                "ec-p256.priv.jwk.json",
            ),
            (
                "jwe-ecdh-es-direct-a256cbc-hs512-p521.json",
                "ec-p521.pkcs8.pem",
            ),
            ("jwe-ecdh-es-a256kw-apu-apv-p256.json", "ec-p256.pkcs8.pem"),
            ("jwe-general-rsa-ec.json", "rsa2048.pkcs8.pem"),
            ("jwe-general-rsa-ec.json", "ec-p256.pkcs8.pem"),
            ("jwe-general-rsa-ec-go-quirk.json", "rsa2048.pkcs8.pem"),
            ("jwe-general-rsa-ec-go-quirk.json", "ec-p256.sec1.der"),
            ("jwe-compact-rsa-oaep.txt", "rsa2048.enc-aes256.pem"),
            ("jwe-compact-ecdh-es-a256kw-p384.txt", "ec-p384.pkcs8.pem"),
            ("jwe-trustee-ecdh-es-a256kw-p256.json", "ec-p256.pkcs8.pem"),
            ("jwe-trustee-rsa-oaep-256.json", "rsa2048.pkcs8.pem"),
            ("gojose-rsa-oaep.json", "rsa2048.pkcs1.pem"),
            ("gojose-jwk-rsa-oaep-256.json", "rsa2048.pkcs8.pem"),
            ("gojose-ecdh-es-a256kw-p256.json", "ec-p256.sec1.pem"),
            ("gojose-ecdh-es-a256kw-p384.json", "ec-p384.pkcs8.pem"),
            ("gojose-ecdh-es-a256kw-p521.json", "ec-p521.sec1.pem"),
            ("gojose-general-rsa-ec.json", "rsa2048.pkcs8.pem"),
            ("gojose-general-rsa-ec.json", "ec-p256.pkcs8.pem"),
        ];
        for (jwe, key) in cases {
            let plain = unwrap(&fixture(jwe), &[private(key)])
                .unwrap_or_else(|e| panic!("{jwe} with {key}: {e}"));
            assert_eq!(*plain, payload(), "{jwe} with {key}");
        }
    }

    #[test]
    fn the_right_key_is_found_among_several() {
        let keys = [
            private("rsa2048-other.pkcs8.pem"),
            private("ec-p384.pkcs8.pem"),
            private("ec-p256-other.params-sec1.pem"),
            private("ec-p256.pkcs8.pem"),
        ];
        for jwe in [
            "jwe-general-rsa-ec-go-quirk.json",
            "jwe-ecdh-es-a256kw-p256.json",
        ] {
            assert_eq!(*unwrap(&fixture(jwe), &keys).unwrap(), payload(), "{jwe}");
        }
    }

    #[test]
    fn wrong_keys_report_how_many_entries_and_keys_there_were() {
        let err = unwrap_err(
            &fixture("jwe-rsa-oaep-a256gcm.json"),
            &[private("rsa2048-other.pkcs8.pem")],
        );
        assert!(
            matches!(
                err,
                JweError::NoRecipientMatched {
                    recipients: 1,
                    keys: 1,
                    ..
                }
            ),
            "{err}"
        );

        let keys = [
            private("rsa2048-other.pkcs8.pem"),
            private("ec-p384.pkcs8.pem"),
        ];
        let err = unwrap_err(&fixture("jwe-general-rsa-ec.json"), &keys);
        let JweError::NoRecipientMatched {
            recipients: 2,
            keys: 2,
            detail,
        } = &err
        else {
            panic!("{err}");
        };
        assert!(detail.contains("no key on `P-256`"), "{detail}");

        let err = unwrap_err(&fixture("jwe-general-rsa-ec.json"), &[]);
        assert!(
            matches!(
                err,
                JweError::NoRecipientMatched {
                    recipients: 2,
                    keys: 0,
                    ..
                }
            ),
            "{err}"
        );

        // Direct ECDH-ES has no key check: a wrong key on the right curve fails only at the
        // content, and that must still read as "no key matched".
        let err = unwrap_err(
            &fixture("jwe-ecdh-es-direct-a256gcm-p256.json"),
            &[private("ec-p256-other.params-sec1.pem")],
        );
        assert!(matches!(err, JweError::NoRecipientMatched { .. }), "{err}");
    }

    #[test]
    fn altered_ciphertext_tag_iv_or_protected_header_fail_as_decrypt() {
        let cases = [
            ("jwe-rsa-oaep-a256gcm.json", "rsa2048.pkcs8.pem"),
            ("jwe-ecdh-es-a256kw-p256.json", "ec-p256.pkcs8.pem"),
            ("jwe-rsa-oaep-a256cbc-hs512.json", "rsa2048.pkcs8.pem"),
        ];
        for (name, key) in cases {
            let key = [private(key)];
            for member in ["ciphertext", "tag", "iv"] {
                let jwe = edit(name, |o| flip(o, member, |b| b[0] ^= 1));
                let err = unwrap_err(&jwe, &key);
                assert!(matches!(err, JweError::Decrypt), "{name} {member}: {err}");
            }
            // Same header, different bytes: the AAD is the protected text as sent.
            let jwe = edit(name, |o| {
                let header = decode(&o["protected"]);
                let mut spaced = b" ".to_vec();
                spaced.extend_from_slice(&header);
                o.insert("protected".into(), URL_SAFE_NO_PAD.encode(spaced).into());
            });
            let err = unwrap_err(&jwe, &key);
            assert!(matches!(err, JweError::Decrypt), "{name} protected: {err}");
        }
    }

    #[test]
    fn an_altered_encrypted_key_matches_no_recipient() {
        for (name, key) in [
            ("jwe-rsa-oaep-a256gcm.json", "rsa2048.pkcs8.pem"),
            ("jwe-ecdh-es-a256kw-p256.json", "ec-p256.pkcs8.pem"),
            ("jwe-ecdh-es-a192kw-p384.json", "ec-p384.pkcs8.pem"),
        ] {
            let jwe = edit(name, |o| flip(o, "encrypted_key", |b| b[5] ^= 0x40));
            let err = unwrap_err(&jwe, &[private(key)]);
            assert!(
                matches!(err, JweError::NoRecipientMatched { .. }),
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn an_epk_on_the_wrong_curve_or_off_the_curve_is_refused() {
        let key = [private("ec-p256.pkcs8.pem")];
        let name = "jwe-ecdh-es-a256kw-p256.json"; // jwcrypto puts `epk` in `header`
        let relabelled = edit(name, |o| {
            o.get_mut("header").unwrap()["epk"]["crv"] = "P-384".into();
        });
        let err = unwrap_err(&relabelled, &key);
        assert!(
            matches!(&err, JweError::InvalidEpk { reason, .. } if reason.contains("`x`")),
            "{err}"
        );

        let off_curve = edit(name, |o| {
            let epk = &mut o.get_mut("header").unwrap()["epk"];
            let mut y = decode(&epk["y"]);
            y[31] ^= 1;
            epk["y"] = URL_SAFE_NO_PAD.encode(y).into();
        });
        let err = unwrap_err(&off_curve, &key);
        assert!(
            matches!(&err, JweError::InvalidEpk { reason, .. } if reason.contains("not on")),
            "{err}"
        );

        let okp = edit(name, |o| {
            o.get_mut("header").unwrap()["epk"]["kty"] = "OKP".into();
        });
        assert!(matches!(
            unwrap_err(&okp, &key),
            JweError::InvalidEpk { .. }
        ));

        // A valid P-384 epk in a P-256 JWE: no P-256 key can use it.
        let p384 = json(&fixture("jwe-ecdh-es-a256kw-p384.json"));
        let swapped = edit(name, |o| {
            o.get_mut("header").unwrap()["epk"] = p384["header"]["epk"].clone();
        });
        let err = unwrap_err(&swapped, &key);
        let JweError::NoRecipientMatched { detail, .. } = &err else {
            panic!("{err}")
        };
        assert!(detail.contains("no key on `P-384`"), "{detail}");
    }

    #[test]
    fn unknown_alg_or_enc_is_refused_by_name() {
        let name = "jwe-rsa-oaep-a256gcm.json";
        let key = [private("rsa2048.pkcs8.pem")];
        for alg in ["RSA1_5", "A256KW", "dir", "PBES2-HS256+A128KW", "none"] {
            let jwe = edit(name, |o| {
                edit_protected(o, |h| {
                    h.insert("alg".into(), alg.into());
                })
            });
            let err = unwrap_err(&jwe, &key);
            assert!(
                matches!(&err, JweError::UnsupportedAlg { alg: a } if a == alg),
                "{alg}: {err}"
            );
        }
        let jwe = edit(name, |o| {
            edit_protected(o, |h| {
                h.insert("enc".into(), "A256CTR".into());
            })
        });
        let err = unwrap_err(&jwe, &key);
        assert!(
            matches!(&err, JweError::UnsupportedEnc { enc } if enc == "A256CTR"),
            "{err}"
        );
    }

    #[test]
    fn zip_and_crit_are_refused() {
        let key = [private("rsa2048.pkcs8.pem")];
        let err = unwrap_err(&fixture("jwe-zip-def.json"), &key);
        assert!(
            matches!(&err, JweError::Compressed { zip } if zip == "DEF"),
            "{err}"
        );
        let jwe = edit("jwe-rsa-oaep-a256gcm.json", |o| {
            edit_protected(o, |h| {
                h.insert("crit".into(), serde_json::json!(["exp"]));
                h.insert("exp".into(), 1.into());
            })
        });
        assert!(matches!(unwrap_err(&jwe, &key), JweError::Critical { .. }));
        let in_recipient = edit("jwe-general-rsa-ec.json", |o| {
            o["recipients"][1]["header"]["zip"] = "DEF".into();
        });
        assert!(matches!(
            unwrap_err(&in_recipient, &key),
            JweError::Compressed { .. }
        ));
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let mut big = fixture("jwe-rsa-oaep-a256gcm.json");
        big.resize(MAX_JWE_LEN + 1, b' ');
        let err = unwrap_err(&big, &[private("rsa2048.pkcs8.pem")]);
        assert!(matches!(err, JweError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn sloppy_base64url_is_refused() {
        let key = [private("rsa2048.pkcs8.pem")];
        let name = "jwe-rsa-oaep-a256gcm.json";
        let padded = edit(name, |o| {
            let iv = o["iv"].as_str().unwrap().to_owned();
            o.insert("iv".into(), format!("{iv}=").into());
        });
        assert!(matches!(unwrap_err(&padded, &key), JweError::Base64 { member } if member == "iv"));
        let standard = edit(name, |o| {
            let tag = o["tag"].as_str().unwrap().replace(['-', '_'], "+");
            o.insert("tag".into(), format!("{tag}+").into());
        });
        assert!(matches!(
            unwrap_err(&standard, &key),
            JweError::Base64 { .. }
        ));
    }

    #[test]
    fn malformed_structures_are_refused_as_malformed() {
        let key = [private("rsa2048.pkcs8.pem"), private("ec-p256.pkcs8.pem")];
        let malformed = |jwe: &[u8], what: &str| {
            let err = unwrap_err(jwe, &key);
            assert!(matches!(err, JweError::Malformed { .. }), "{what}: {err}");
        };
        let flat = "jwe-rsa-oaep-a256gcm.json";
        let general = "jwe-general-rsa-ec.json";
        malformed(b"", "empty");
        malformed(b"[1,2]", "array");
        malformed(b"a.b.c.d", "compact with four parts");
        malformed(b"\xff\xfe.a.b.c.d", "not UTF-8");
        let text = fixture(flat);
        malformed(&text[..text.len() / 2], "truncated JSON");
        let compact = fixture("jwe-compact-rsa-oaep.txt");
        let cut = compact.iter().rposition(|&b| b == b'.').unwrap();
        malformed(&compact[..cut], "compact missing the tag");
        malformed(
            &edit(flat, |o| {
                o.remove("protected");
            }),
            "no protected header",
        );
        malformed(
            &edit(flat, |o| {
                o.remove("iv");
            }),
            "no iv",
        );
        malformed(
            &edit(flat, |o| {
                let dup = br#"{"alg":"RSA-OAEP","alg":"RSA-OAEP","enc":"A256GCM"}"#;
                o.insert("protected".into(), URL_SAFE_NO_PAD.encode(dup).into());
            }),
            "duplicate protected parameter",
        );
        malformed(
            &edit(flat, |o| {
                o.insert("header".into(), serde_json::json!({"alg": "RSA-OAEP"}));
            }),
            "alg in protected and unprotected header",
        );
        malformed(
            &edit(flat, |o| flip(o, "iv", |b| b.push(0))),
            "13-byte GCM iv",
        );
        malformed(
            &edit(flat, |o| {
                flip(o, "tag", |b| {
                    b.pop();
                })
            }),
            "15-byte GCM tag",
        );
        malformed(
            &edit("jwe-ecdh-es-a256kw-p256.json", |o| {
                flip(o, "encrypted_key", |b| {
                    b.pop();
                })
            }),
            "39-byte AES-KW key",
        );
        malformed(
            &edit("jwe-ecdh-es-direct-a256gcm-p256.json", |o| {
                o.insert("encrypted_key".into(), "AAAA".into());
            }),
            "direct ECDH-ES with an encrypted_key",
        );
        malformed(
            &edit(general, |o| {
                let other = o["recipients"][1]["encrypted_key"].clone();
                o.insert("encrypted_key".into(), other);
            }),
            "top-level encrypted_key differing from the first recipient's",
        );
        malformed(
            &edit(general, |o| {
                o["recipients"][0]["header"]["enc"] = "A256GCM".into();
            }),
            "enc repeated in a recipient header",
        );
        malformed(
            &edit(general, |o| {
                o.insert("recipients".into(), serde_json::json!([]));
            }),
            "empty recipients",
        );
        let mut duplicated = fixture(flat);
        duplicated.pop();
        duplicated.extend_from_slice(br#","iv":"AAAAAAAAAAAAAAAA"}"#);
        malformed(&duplicated, "duplicate top-level member");
    }

    #[test]
    fn too_many_recipient_entries_are_refused() {
        let jwe = edit("jwe-general-rsa-ec.json", |o| {
            let one = o["recipients"][0].clone();
            o.insert(
                "recipients".into(),
                Value::Array(vec![one; MAX_RECIPIENTS + 1]),
            );
        });
        let err = unwrap_err(&jwe, &[private("rsa2048.pkcs8.pem")]);
        assert!(matches!(err, JweError::TooManyRecipients { .. }), "{err}");
    }

    #[test]
    fn a_bad_entry_is_skipped_when_another_entry_opens() {
        let jwe = edit("jwe-general-rsa-ec.json", |o| {
            o["recipients"][0]["header"]["alg"] = "RSA1_5".into();
        });
        let plain = unwrap(&jwe, &[private("ec-p256.pkcs8.pem")]).unwrap();
        assert_eq!(*plain, payload());
    }

    #[test]
    fn wrapped_keys_unwrap_for_every_key_type() {
        let cases = [
            ("rsa2048.pub.pem", "rsa2048.pkcs1.pem"),
            ("rsa2048.rsapub.pem", "rsa2048.pkcs8.der"),
            ("rsa2048.pub.alg-oaep256.jwk.json", "rsa2048.priv.jwk.json"),
            ("ec-p256.pub.pem", "ec-p256.sec1.pem"),
            ("ec-p256.pub.alg-a256kw.jwk.json", "ec-p256.pkcs8.pem"),
            ("ec-p384.pub.pem", "ec-p384.pkcs8.pem"),
            ("ec-p384.pub.alg-a192kw.jwk.json", "ec-p384.sec1.pem"),
            ("ec-p521.pub.pem", "ec-p521.priv.jwk.json"),
        ];
        for (public_file, private_file) in cases {
            let jwe = wrap(&payload(), &[public(public_file)]).unwrap();
            let plain = unwrap(&jwe, &[private(private_file)])
                .unwrap_or_else(|e| panic!("{public_file}: {e}"));
            assert_eq!(*plain, payload(), "{public_file}");
            let err = unwrap_err(&jwe, &[private("rsa2048-other.pkcs8.pem")]);
            assert!(
                matches!(err, JweError::NoRecipientMatched { .. }),
                "{public_file}: {err}"
            );
        }
    }

    #[test]
    fn a_multi_recipient_jwe_opens_with_each_recipients_key_alone() {
        let recipients = [
            public("rsa2048.pub.pem"),
            public("ec-p256.pub.der"),
            public("ec-p384.pub.alg-a192kw.jwk.json"),
            public("ec-p521.pub.pem"),
        ];
        let jwe = wrap(&payload(), &recipients).unwrap();
        for key in [
            "rsa2048.pkcs8.pem",
            "ec-p256.pkcs8.pem",
            "ec-p384.pkcs8.pem",
            "ec-p521.pkcs8.pem",
        ] {
            assert_eq!(*unwrap(&jwe, &[private(key)]).unwrap(), payload(), "{key}");
        }
        let err = unwrap_err(&jwe, &[private("ec-p256-other.params-sec1.pem")]);
        assert!(
            matches!(
                err,
                JweError::NoRecipientMatched {
                    recipients: 4,
                    keys: 1,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn one_rsa_recipient_gives_go_jose_flattened_json() {
        let jwe = wrap(&payload(), &[public("rsa2048.pub.pem")]).unwrap();
        assert_eq!(
            member_order(&jwe),
            ["protected", "encrypted_key", "iv", "ciphertext", "tag"]
        );
        let value = json(&jwe);
        // ocicrypt.md 5.1: exactly this protected header, keys sorted, nothing else.
        assert_eq!(
            decode(&value["protected"]),
            br#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#
        );
        assert_eq!(decode(&value["encrypted_key"]).len(), 256);
        assert_eq!(decode(&value["iv"]).len(), 12);
        assert_eq!(decode(&value["tag"]).len(), 16);
        assert_eq!(decode(&value["ciphertext"]).len(), payload().len());
        assert!(
            !String::from_utf8(jwe).unwrap().contains('='),
            "base64url must be unpadded"
        );
    }

    #[test]
    fn one_ec_recipient_gives_an_epk_in_the_protected_header() {
        let jwe = wrap(&payload(), &[public("ec-p384.pub.pem")]).unwrap();
        assert_eq!(
            member_order(&jwe),
            ["protected", "encrypted_key", "iv", "ciphertext", "tag"]
        );
        let value = json(&jwe);
        let protected = decode(&value["protected"]);
        assert_eq!(member_order(&protected), ["alg", "enc", "epk"]);
        let header = json(&protected);
        assert_eq!(header["alg"], "ECDH-ES+A256KW");
        assert_eq!(header["enc"], "A256GCM");
        // go-jose marshals its JSONWebKey in struct order: kty, crv, x, y.
        let epk_at = protected.windows(6).position(|w| w == b"\"epk\":").unwrap() + 6;
        assert_eq!(
            member_order_at(&protected[epk_at..]),
            ["kty", "crv", "x", "y"]
        );
        assert_eq!(header["epk"]["crv"], "P-384");
        assert_eq!(decode(&header["epk"]["x"]).len(), 48);
        assert_eq!(decode(&header["epk"]["y"]).len(), 48);
        assert_eq!(decode(&value["encrypted_key"]).len(), 40);
    }

    #[test]
    fn several_recipients_give_go_jose_general_json_with_the_top_level_key_quirk() {
        let recipients = [
            public("rsa2048.pub.alg-oaep256.jwk.json"),
            public("ec-p256.pub.pem"),
        ];
        let jwe = wrap(&payload(), &recipients).unwrap();
        assert_eq!(
            member_order(&jwe),
            [
                "protected",
                "recipients",
                "encrypted_key",
                "iv",
                "ciphertext",
                "tag"
            ]
        );
        let value = json(&jwe);
        assert_eq!(decode(&value["protected"]), br#"{"enc":"A256GCM"}"#);
        assert_eq!(
            value["encrypted_key"],
            value["recipients"][0]["encrypted_key"]
        );
        let start = jwe
            .windows(14)
            .position(|w| w == b"\"recipients\":[")
            .unwrap()
            + 14;
        assert_eq!(member_order_at(&jwe[start..]), ["header", "encrypted_key"]);
        assert_eq!(
            value["recipients"][0]["header"],
            serde_json::json!({"alg": "RSA-OAEP-256", "kid": "rsa-test-kid"})
        );
        let second = &value["recipients"][1]["header"];
        assert_eq!(second["alg"], "ECDH-ES+A256KW");
        assert_eq!(second["epk"]["kty"], "EC");
        assert_eq!(second["epk"]["crv"], "P-256");
        assert_eq!(decode(&value["recipients"][1]["encrypted_key"]).len(), 40);
    }

    /// A JSON value with members in document order.
    #[derive(Debug, PartialEq)]
    enum Ordered {
        Object(Vec<(String, Ordered)>),
        Array(Vec<Ordered>),
        Text(String),
        Other(String),
    }

    impl<'de> Deserialize<'de> for Ordered {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Ordered;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("JSON")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Ordered, A::Error> {
                    let mut members = Vec::new();
                    while let Some(name) = a.next_key::<String>()? {
                        members.push((name, a.next_value()?));
                    }
                    Ok(Ordered::Object(members))
                }
                fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Ordered, A::Error> {
                    let mut items = Vec::new();
                    while let Some(item) = a.next_element()? {
                        items.push(item);
                    }
                    Ok(Ordered::Array(items))
                }
                fn visit_str<E>(self, v: &str) -> Result<Ordered, E> {
                    Ok(Ordered::Text(v.to_owned()))
                }
                fn visit_u64<E>(self, v: u64) -> Result<Ordered, E> {
                    Ok(Ordered::Other(v.to_string()))
                }
                fn visit_bool<E>(self, v: bool) -> Result<Ordered, E> {
                    Ok(Ordered::Other(v.to_string()))
                }
            }
            d.deserialize_any(V)
        }
    }

    /// The layout of a JWE with its random parts reduced to their lengths: member order,
    /// header contents and order (the protected header decoded in place), and the size of
    /// every binary member. Two JWEs of the same payload for the same kinds of key by the same
    /// writer have equal skeletons.
    fn skeleton(text: &[u8]) -> Ordered {
        fn walk(value: Ordered) -> Ordered {
            match value {
                Ordered::Object(members) => Ordered::Object(
                    members
                        .into_iter()
                        .map(|(name, value)| {
                            let value = match (name.as_str(), value) {
                                ("protected", Ordered::Text(b64)) => {
                                    skeleton(&URL_SAFE_NO_PAD.decode(b64).unwrap())
                                }
                                (
                                    "encrypted_key" | "iv" | "ciphertext" | "tag" | "x" | "y",
                                    Ordered::Text(b64),
                                ) => {
                                    let len = URL_SAFE_NO_PAD.decode(b64).unwrap().len();
                                    Ordered::Other(format!("<{len} bytes>"))
                                }
                                (_, other) => walk(other),
                            };
                            (name, value)
                        })
                        .collect(),
                ),
                Ordered::Array(items) => Ordered::Array(items.into_iter().map(walk).collect()),
                other => other,
            }
        }
        walk(serde_json::from_slice(text).unwrap())
    }

    #[test]
    fn wrap_writes_the_same_layout_as_go_jose_for_the_same_recipients() {
        let cases: [(&str, &[&str]); 6] = [
            ("gojose-rsa-oaep.json", &["rsa2048.pub.pem"]),
            ("gojose-ecdh-es-a256kw-p256.json", &["ec-p256.pub.pem"]),
            ("gojose-ecdh-es-a256kw-p384.json", &["ec-p384.pub.pem"]),
            ("gojose-ecdh-es-a256kw-p521.json", &["ec-p521.pub.pem"]),
            (
                "gojose-jwk-rsa-oaep-256.json",
                &["rsa2048.pub.alg-oaep256.jwk.json"],
            ),
            (
                "gojose-general-rsa-ec.json",
                &["rsa2048.pub.pem", "ec-p256.pub.pem"],
            ),
        ];
        for (go_file, recipients) in cases {
            let recipients: Vec<PublicKey> = recipients.iter().map(|f| public(f)).collect();
            let ours = wrap(&payload(), &recipients).unwrap();
            assert_eq!(skeleton(&ours), skeleton(&fixture(go_file)), "{go_file}");
        }
    }

    #[test]
    fn errors_can_cross_threads() {
        fn send_sync<T: Send + Sync + std::error::Error + 'static>() {}
        send_sync::<JweError>();
    }

    #[test]
    fn wrapping_for_nobody_is_an_error() {
        assert!(matches!(wrap(b"x", &[]), Err(JweError::NoRecipients)));
    }

    #[test]
    fn generated_keys_wrap_and_unwrap() {
        for (private_pem, public_pem) in [
            crate::keys::generate_ec_p256().unwrap(),
            crate::keys::generate_rsa4096().unwrap(),
        ] {
            let key = PrivateKey::from_bytes(private_pem.as_bytes(), None).unwrap();
            let recipient = PublicKey::from_bytes(public_pem.as_bytes()).unwrap();
            let jwe = wrap(&payload(), &[recipient]).unwrap();
            assert_eq!(*unwrap(&jwe, &[key]).unwrap(), payload());
        }
    }

    #[test]
    fn aes_192_key_wrap_matches_rfc_3394_vectors() {
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        let kek = hex("000102030405060708090A0B0C0D0E0F1011121314151617");
        // RFC 3394 4.2 (128-bit key data) and 4.5 (192-bit key data) under a 192-bit KEK.
        let vectors = [
            (
                "00112233445566778899AABBCCDDEEFF",
                "96778B25AE6CA435F92B5B97C050AED2468AB8A17AD84E5D",
            ),
            (
                "00112233445566778899AABBCCDDEEFF0001020304050607",
                "031D33264E15D33268F24EC260743EDCE1C6C7DDEE725A936BA814915C6762D2",
            ),
        ];
        for (plain, wrapped) in vectors {
            assert_eq!(aes_kw_wrap(&kek, &hex(plain)).unwrap(), hex(wrapped));
            assert_eq!(*aes_kw_unwrap(&kek, &hex(wrapped)).unwrap(), hex(plain));
            let mut altered = hex(wrapped);
            altered[3] ^= 1;
            assert!(aes_kw_unwrap(&kek, &altered).is_none());
        }
    }

    #[test]
    fn ecdh_and_concat_kdf_match_rfc_7518_appendix_c() {
        // Bob's key and Alice's ephemeral key from RFC 7518 Appendix C.
        let bob = br#"{"kty":"EC","crv":"P-256",
            "x":"weNJy2HscCSM6AEDTDg04biOvhFhyyWvOHQfeF_PxMQ",
            "y":"e8lnCO-AlStT-NJVX-crhB7QRYhiix03illJOVAOyck",
            "d":"VEmDZpDXXK8p8N0Cndsxs924q6nS1RXFASRl6BfUqdw"}"#;
        let PrivateKey::Ec(bob) = PrivateKey::from_bytes(bob, None).unwrap() else {
            panic!()
        };
        let epk = serde_json::json!({"kty": "EC", "crv": "P-256",
            "x": "gI0GAILBdu7T53akrFmMyGcsF3n5dO7MmwNBHKW5SV0",
            "y": "SLW_xSffzlPWrHEVI30DHM_4egVwt3NQqeUD7nMFpps"});
        let (curve, point) = parse_epk(0, Some(&epk)).unwrap();
        let peer = agreement::UnparsedPublicKey::new(curve.agreement(), &point);
        let z = agreement::agree(bob.agreement_key(), peer, (), |z| Ok(z.to_vec())).unwrap();
        let expected_z = [
            158, 86, 217, 29, 129, 113, 53, 211, 114, 131, 66, 131, 191, 132, 38, 156, 251, 49,
            110, 163, 218, 128, 106, 72, 246, 218, 167, 121, 140, 254, 144, 196,
        ];
        assert_eq!(z, expected_z);
        let key = concat_kdf(&z, "A128GCM", b"Alice", b"Bob", 16).unwrap();
        assert_eq!(URL_SAFE_NO_PAD.encode(&*key), "VqqN6vgjbSBcIijNcacQGg");
    }

    /// Writes JWEs made by `wrap` for tests/fixtures/keys/check_interop.py, which decrypts them
    /// with jwcrypto and go-jose. Run through that script, not on its own.
    #[test]
    #[ignore = "writes files for the interop script; run via check_interop.py"]
    fn writes_wrapped_jwes_for_the_interop_check() {
        let out = std::env::var("MODELCRYPT_INTEROP_OUT")
            .expect("MODELCRYPT_INTEROP_OUT names the output directory");
        let cases: [(&str, &[&str]); 7] = [
            ("ours-rsa-oaep.json", &["rsa2048.pub.pem"]),
            (
                "ours-rsa-oaep-256-jwk.json",
                &["rsa2048.pub.alg-oaep256.jwk.json"],
            ),
            ("ours-ecdh-es-a256kw-p256.json", &["ec-p256.pub.pem"]),
            ("ours-ecdh-es-a256kw-p384.json", &["ec-p384.pub.pem"]),
            ("ours-ecdh-es-a256kw-p521.json", &["ec-p521.pub.pem"]),
            (
                "ours-ecdh-es-a192kw-p384-jwk.json",
                &["ec-p384.pub.alg-a192kw.jwk.json"],
            ),
            (
                "ours-general-rsa-p256-p384.json",
                &["rsa2048.pub.pem", "ec-p256.pub.pem", "ec-p384.pub.pem"],
            ),
        ];
        for (name, recipients) in cases {
            let recipients: Vec<PublicKey> = recipients.iter().map(|f| public(f)).collect();
            let jwe = wrap(&payload(), &recipients).unwrap();
            std::fs::write(Path::new(&out).join(name), jwe).unwrap();
        }
    }
}
