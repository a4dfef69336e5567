//! The Confidential Containers keyprovider annotation
//! (`org.opencontainers.image.enc.keys.provider.attestation-agent`, ocicrypt.md §6): the
//! private options wrapped with AES-256-GCM under a 32-byte key-encryption key (KEK) that the
//! key broker holds at the resource named by `kid` (`kbs:///REPO/TYPE/TAG`).

use std::fmt;
use std::path::Path;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub const PROVIDER_NAME: &str = "attestation-agent";
pub const WRAP_TYPE: &str = "A256GCM";
const KEK_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("cannot read the KEK file `{path}`")]
    KekFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the KEK in `{path}` is not 32 bytes (raw, 64 hex digits or base64 of 32 bytes)")]
    KekLength { path: String },
    #[error("the AnnotationPacket is not valid JSON: {0}")]
    Json(String),
    #[error("the AnnotationPacket has version `{0}`; only `0.1.0` is understood")]
    Version(String),
    #[error("the AnnotationPacket's provider is `{0}`; only `kbs` is supported")]
    Provider(String),
    #[error("the AnnotationPacket's wrap_type is `{0}`; only `A256GCM` is supported")]
    WrapType(String),
    #[error("the AnnotationPacket's `{field}` is not valid base64")]
    Base64 { field: &'static str },
    #[error("the AnnotationPacket's iv is {0} bytes, not 12")]
    IvLength(usize),
    #[error("`{0}` is not a key broker resource URI (`kbs:///REPO/TYPE/TAG`)")]
    Kid(String),
    #[error(
        "the KEK does not open the AnnotationPacket for `{kid}` (wrong KEK or tampered packet)"
    )]
    Unwrap { kid: String },
    #[error("the system random number generator failed")]
    Random,
}

/// A 32-byte key-encryption key. Zeroized; `Debug` shows nothing secret.
#[derive(Clone)]
pub struct Kek(Zeroizing<[u8; KEK_LEN]>);

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek(<redacted>)")
    }
}

impl Kek {
    pub fn from_bytes(bytes: &[u8]) -> Option<Kek> {
        let arr: [u8; KEK_LEN] = bytes.try_into().ok()?;
        Some(Kek(Zeroizing::new(arr)))
    }

    /// Reads a KEK file: the raw 32 bytes that coco_keyprovider and the key broker use, or the
    /// same as 64 hex digits or base64 text.
    pub fn from_file(path: &Path) -> Result<Kek, ProviderError> {
        let shown = path.display().to_string();
        let raw = Zeroizing::new(
            std::fs::read(path).map_err(|source| ProviderError::KekFile {
                path: shown.clone(),
                source,
            })?,
        );
        if let Some(k) = Kek::from_bytes(&raw) {
            return Ok(k);
        }
        let text = std::str::from_utf8(&raw).unwrap_or("").trim();
        if let Some(bytes) = crate::digest::unhex(text).map(Zeroizing::new) {
            if let Some(k) = Kek::from_bytes(&bytes) {
                return Ok(k);
            }
        }
        if let Ok(bytes) = B64.decode(text).map(Zeroizing::new) {
            if let Some(k) = Kek::from_bytes(&bytes) {
                return Ok(k);
            }
        }
        Err(ProviderError::KekLength { path: shown })
    }

    /// A fresh random KEK (`modelcrypt keygen --kek`).
    pub fn generate() -> Result<Kek, ProviderError> {
        let mut k = Zeroizing::new([0u8; KEK_LEN]);
        aws_lc_rs::rand::fill(k.as_mut()).map_err(|_| ProviderError::Random)?;
        Ok(Kek(k))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_ref()
    }

    fn aead(&self) -> LessSafeKey {
        // INVARIANT: the key is exactly 32 bytes, which AES-256-GCM takes.
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, self.0.as_ref()).expect("32-byte key"))
    }
}

/// A key broker resource URI: `kbs://[HOST]/REPO/TYPE/TAG` (ocicrypt.md §6.2). The host part is
/// ignored by the guest, as it is here: the broker comes from configuration.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResourceUri {
    pub repository: String,
    pub kind: String,
    pub tag: String,
}

impl ResourceUri {
    pub fn parse(s: &str) -> Result<ResourceUri, ProviderError> {
        let bad = || ProviderError::Kid(crate::extract::shown(s));
        let rest = s.strip_prefix("kbs://").ok_or_else(bad)?;
        let (_, path) = rest.split_once('/').ok_or_else(bad)?;
        let path = path.split('?').next().unwrap_or(path);
        let parts: Vec<&str> = path.split('/').collect();
        // Trustee's own rule for resource paths (kbs.md §1.1): nothing that a URL parser
        // could read as a separator, an escape or `..`.
        let ok = |p: &str| {
            let mut bytes = p.bytes();
            let first_ok = bytes
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            first_ok && bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        };
        match parts.as_slice() {
            [r, t, g] if ok(r) && ok(t) && ok(g) => Ok(ResourceUri {
                repository: r.to_string(),
                kind: t.to_string(),
                tag: g.to_string(),
            }),
            _ => Err(bad()),
        }
    }

    /// The `REPO/TYPE/TAG` path of the resource.
    pub fn path(&self) -> String {
        format!("{}/{}/{}", self.repository, self.kind, self.tag)
    }
}

impl fmt::Display for ResourceUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kbs:///{}", self.path())
    }
}

/// AnnotationPacket v1/v2 (ocicrypt.md §6.3). Written in coco_keyprovider's v1 shape.
#[derive(Debug, Serialize, Deserialize)]
pub struct AnnotationPacket {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub kid: String,
    pub wrapped_data: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrap_type: Option<String>,
}

impl AnnotationPacket {
    /// Parses and checks a packet; `kid` must be a key broker URI.
    pub fn parse(raw: &[u8]) -> Result<AnnotationPacket, ProviderError> {
        let p: AnnotationPacket =
            serde_json::from_slice(raw).map_err(|e| ProviderError::Json(e.to_string()))?;
        if let Some(v) = p.version.as_deref() {
            if v != "0.1.0" {
                return Err(ProviderError::Version(crate::extract::shown(v)));
            }
        }
        if let Some(provider) = p.provider.as_deref() {
            if provider != "kbs" {
                return Err(ProviderError::Provider(crate::extract::shown(provider)));
            }
        }
        match p.wrap_type.as_deref() {
            Some(WRAP_TYPE) => {}
            other => {
                return Err(ProviderError::WrapType(crate::extract::shown(
                    other.unwrap_or("(missing)"),
                )))
            }
        }
        ResourceUri::parse(&p.kid)?;
        Ok(p)
    }

    pub fn resource(&self) -> Result<ResourceUri, ProviderError> {
        ResourceUri::parse(&self.kid)
    }

    /// Wraps the private options for `kid` under `kek`, with a fresh 12-byte IV and no AAD.
    pub fn wrap(
        kid: &ResourceUri,
        kek: &Kek,
        plaintext: &[u8],
    ) -> Result<AnnotationPacket, ProviderError> {
        let mut iv = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut iv).map_err(|_| ProviderError::Random)?;
        let mut data = plaintext.to_vec();
        kek.aead()
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(iv), Aad::empty(), &mut data)
            .map_err(|_| ProviderError::Random)?;
        Ok(AnnotationPacket {
            version: None,
            kid: kid.to_string(),
            wrapped_data: B64.encode(&data),
            provider: None,
            iv: Some(B64.encode(iv)),
            wrap_type: Some(WRAP_TYPE.into()),
        })
    }

    /// Opens the wrapped private options with `kek`.
    pub fn unwrap(&self, kek: &Kek) -> Result<Zeroizing<Vec<u8>>, ProviderError> {
        let iv = B64
            .decode(self.iv.as_deref().unwrap_or(""))
            .map_err(|_| ProviderError::Base64 { field: "iv" })?;
        let iv: [u8; NONCE_LEN] = iv
            .as_slice()
            .try_into()
            .map_err(|_| ProviderError::IvLength(iv.len()))?;
        let mut data =
            Zeroizing::new(
                B64.decode(&self.wrapped_data)
                    .map_err(|_| ProviderError::Base64 {
                        field: "wrapped_data",
                    })?,
            );
        let plain = kek
            .aead()
            .open_in_place(
                Nonce::assume_unique_for_key(iv),
                Aad::empty(),
                data.as_mut_slice(),
            )
            .map_err(|_| ProviderError::Unwrap {
                kid: self.kid.clone(),
            })?;
        Ok(Zeroizing::new(plain.to_vec()))
    }

    pub fn to_json(&self) -> Vec<u8> {
        // INVARIANT: the packet is strings only.
        serde_json::to_vec(self).expect("packet serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        crate::digest::unhex(s).unwrap()
    }

    /// ocicrypt.md §6.5: guest-components' `sample_kbc_annotation.json`, wrapped by Go tooling
    /// under the sample KBC's hard-coded key; it holds the Go-shaped PLBCO of §3.2.
    #[test]
    fn the_sample_kbc_fixture_unwraps_to_the_documented_private_options() {
        let packet = br#"{"kid":"kbs:///default/key/1","wrapped_data":"KxAFgXwa0y72Xdygub9lF00RVMtSRbYzvakIEASgi3Gvt1wGLkhKPXf0S033Jdi6vAN6zBM7d0xZSDo2JCeew0FeKwTYgdJfdcPhuEpZOpjhwIsidyeiunzp0J/crvI1tSPZJw4DPHZN2eQtg71rDzIbuDM5ATheiDM9/YJv+k+n6Nv6/pRb8qynNzbWFz7Q8wEo1ZZlL6UftOBJ6j9GuEOTM2k/B+5sMA2VhGHSzDsKA1mn0qzcn2HJg4GcmxwDpJwzm5n7B4iIJ3A0umrQAjQ=","iv":"3PQMqtjbR4hxCr83","wrap_type":"A256GCM"}"#;
        let kek = Kek::from_bytes(&unhex(
            "d99b7705b0ba7a168295b3a3367270b0dd9b371bf514ca8b9ba7f0a33711daea",
        ))
        .unwrap();
        let p = AnnotationPacket::parse(packet).unwrap();
        assert_eq!(p.resource().unwrap().path(), "default/key/1");
        let plbco = p.unwrap(&kek).unwrap();
        assert_eq!(
            std::str::from_utf8(&plbco).unwrap(),
            r#"{"symkey":"1jL2jJV0Oyz2nmPkLtqulW6cKcpIUN5FpILcVnP5Uqs=","digest":"sha256:18be1897f9402f27c8c0eba7c86e0c00f5656db62961b5949d55f9565c42c6e7","cipheroptions":{"nonce":"r10F9oaCu+nWFXfod3l83g=="}}"#
        );
        let wrong = Kek::from_bytes(&[0x42; 32]).unwrap();
        assert!(matches!(
            p.unwrap(&wrong),
            Err(ProviderError::Unwrap { .. })
        ));
    }

    /// ocicrypt.md §6.5, the synthetic vector: KEK 32 × 0x42 wraps the §4.5 PLBCO.
    #[test]
    fn the_synthetic_annotation_vector_unwraps_to_the_v1_private_options() {
        let annotation = "eyJraWQiOiJrYnM6Ly8vZGVmYXVsdC9rZXkvMSIsIndyYXBwZWRfZGF0YSI6ImZ2emlwTnhIbDNLL1BHWlNrSmdZZWtYTWlDakhLcXVxUXZac1k5c2s4cnNzK3R2bkdYMTN2N2dzWGxSTjZyUXJFWmx3UXRMeENXMUg1dCtvOXp6YTlQZFJoSEEyKzJWZ2JCbkhzL3pYODZyNWxrR2ZjVC9BRm5mU0lWcTUwQU5WSExSTmx5d1ZmdExqQ3piRlM1eW1weEpJdDEvdWJTU0hvWFY1NXlOUGdQTDJ4bmxibDRNNlhscVkrWldTRW8yVkxNUy9EZXdLUk51cEluWVB0TGtKWVExZUUxR09JYlJCd3ZBdmZVU3lmN1dsU2s2SzZsRlBoSTRDQ2RXcU9tQnRrZFZGZlEvZlVZaEtNdHhXMWdtd0dKcz0iLCJpdiI6IkFBRUNBd1FGQmdjSUNRb0wiLCJ3cmFwX3R5cGUiOiJBMjU2R0NNIn0=";
        let p = AnnotationPacket::parse(&B64.decode(annotation).unwrap()).unwrap();
        let plbco = p.unwrap(&Kek::from_bytes(&[0x42; 32]).unwrap()).unwrap();
        assert_eq!(
            std::str::from_utf8(&plbco).unwrap(),
            r#"{"symkey":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","digest":"sha256:fdeab9acf3710362bd2658cdc9a29e8f9c757fcf9811603a8c447cd1d9151108","cipheroptions":{"nonce":"/////////////////////g=="}}"#
        );
    }

    #[test]
    fn wrap_then_unwrap_round_trips_and_tampering_is_caught() {
        let kek = Kek::generate().unwrap();
        let kid = ResourceUri::parse("kbs:///default/key/1").unwrap();
        let p = AnnotationPacket::wrap(&kid, &kek, b"secret options").unwrap();
        let json = p.to_json();
        assert!(std::str::from_utf8(&json)
            .unwrap()
            .starts_with(r#"{"kid":"kbs:///default/key/1","wrapped_data":"#));
        let back = AnnotationPacket::parse(&json).unwrap();
        assert_eq!(back.unwrap(&kek).unwrap().as_slice(), b"secret options");
        let mut tampered = back;
        let mut data = B64.decode(&tampered.wrapped_data).unwrap();
        data[0] ^= 1;
        tampered.wrapped_data = B64.encode(data);
        assert!(tampered.unwrap(&kek).is_err());
    }

    #[test]
    fn kek_files_may_be_raw_hex_or_base64_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let raw = [0x5au8; 32];
        let forms: [(&str, Vec<u8>); 3] = [
            ("raw", raw.to_vec()),
            (
                "hex",
                format!("{}\n", crate::digest::hex(&raw)).into_bytes(),
            ),
            ("b64", format!("{}\n", B64.encode(raw)).into_bytes()),
        ];
        for (name, bytes) in forms {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            assert_eq!(Kek::from_file(&path).unwrap().as_bytes(), &raw, "{name}");
        }
        let short = dir.path().join("short");
        std::fs::write(&short, [1u8; 31]).unwrap();
        assert!(matches!(
            Kek::from_file(&short),
            Err(ProviderError::KekLength { .. })
        ));
    }

    #[test]
    fn malformed_packets_and_kids_are_refused() {
        for bad in [
            &br#"{"kid":"kbs:///a/b/c","wrapped_data":"","iv":"","wrap_type":"A256CTR"}"#[..],
            br#"{"kid":"kbs:///a/b/c","wrapped_data":""}"#,
            br#"{"kid":"/default/image-kek/x","wrapped_data":"","wrap_type":"A256GCM"}"#,
            br#"{"kid":"kbs:///a/b/c","wrapped_data":"","wrap_type":"A256GCM","provider":"aliyun"}"#,
            br#"{"kid":"kbs:///a/b/c","wrapped_data":"","wrap_type":"A256GCM","version":"0.2.0"}"#,
            b"not json",
        ] {
            assert!(AnnotationPacket::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        for bad in [
            "kbs:///a/b",
            "kbs:///a/b/c/d",
            "kbs:///a/../c",
            "http:///a/b/c",
            "kbs:///a//c",
        ] {
            assert!(ResourceUri::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            ResourceUri::parse("kbs://kbs.example:8080/r/t/g")
                .unwrap()
                .to_string(),
            "kbs:///r/t/g"
        );
        assert_eq!(
            format!("{:?}", Kek::from_bytes(&[7; 32]).unwrap()),
            "Kek(<redacted>)"
        );
    }
}
