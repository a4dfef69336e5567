//! Key material for JWE key wrapping: the recipients' public keys (ocicrypt.md 5.1), the private
//! keys that unwrap layer keys, the TEE key that opens KBS replies (kbs.md 2.3), and
//! `modelcrypt keygen`.
//!
//! This module owns every key-file format we read and parses them defensively: PEM, DER and JWK;
//! PKCS#8, PKCS#1, SEC1 and SubjectPublicKeyInfo; legacy OpenSSL-encrypted PEM. Each private key
//! is normalised to PKCS#8 (or a raw EC scalar) held in `Zeroizing` buffers and handed to
//! aws-lc-rs, which keeps it from then on. A small DER reader and writer at the bottom covers the
//! few ASN.1 structures involved. What the keys are used for lives in `ocicrypt::jwe`.
//!
//! Deliberate differences from skopeo (ocicrypt.md 5.1 and 8 item 10):
//! * PEM `EC PRIVATE KEY` and PKCS#1 `RSA PUBLIC KEY` are accepted; skopeo ignores the first and
//!   refuses the second.
//! * A file we cannot use is an error naming the reason; skopeo silently skips it and only later
//!   fails with "missing private key".
//! * An EC JWK without `alg` wraps with `ECDH-ES+A256KW`; go-jose would assume `RSA-OAEP` and
//!   fail.
//! * Encrypted PKCS#8 (`ENCRYPTED PRIVATE KEY`) and DES-EDE3-CBC legacy PEM are refused with a
//!   hint: aws-lc-rs offers neither PBES2 nor (without its `legacy-des` feature) triple DES.

use std::fmt;

use aws_lc_rs::agreement;
use aws_lc_rs::cipher::{DecryptingKey, DecryptionContext, UnboundCipherKey};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::rsa;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use md5::{Digest as _, Md5};
use serde::Deserialize;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Largest key file we read. Real key files are a few KiB; the limit only bounds the work an
/// arbitrary file can cause.
pub const MAX_KEY_FILE_LEN: usize = 1024 * 1024;

/// Everything that can go wrong reading or generating a key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("key file is empty")]
    Empty,
    #[error("key file is `{len}` bytes; the limit is `{max}`")]
    TooLarge { len: usize, max: usize },
    #[error("not a {what}: expected PEM, DER or a JWK")]
    NotAKey { what: &'static str },
    #[error("malformed PEM: {reason}")]
    Pem { reason: String },
    #[error("PEM block `{label}` is not a {what}")]
    UnsupportedPem { label: String, what: &'static str },
    #[error("PEM holds `{count}` key blocks; give one key per file")]
    SeveralKeys { count: usize },
    #[error("malformed {structure}: {reason}")]
    Der {
        structure: &'static str,
        reason: &'static str,
    },
    #[error("unsupported key algorithm `{name}`; expected RSA or EC (P-256, P-384, P-521)")]
    UnsupportedAlgorithm { name: String },
    #[error("unsupported elliptic curve `{curve}`; expected P-256, P-384 or P-521")]
    UnsupportedCurve { curve: String },
    #[error("unsupported RSA key size `{bits}` bits; expected 2048 to 8192")]
    UnsupportedRsaSize { bits: usize },
    #[error("the key is encrypted and no password was given")]
    PasswordRequired,
    #[error("wrong password for the encrypted key, or the encrypted key is corrupt")]
    WrongPassword,
    #[error(
        "PEM encryption `{cipher}` is not supported; expected AES-128-CBC, AES-192-CBC or \
         AES-256-CBC (re-encrypt with `openssl rsa -aes256` or `openssl ec -aes256`)"
    )]
    UnsupportedPemCipher { cipher: String },
    #[error(
        "encrypted PKCS#8 (`ENCRYPTED PRIVATE KEY`) is not supported; decrypt it with \
         `openssl pkcs8 -in KEY -out PLAIN.pem` or convert it with `openssl rsa -aes256`"
    )]
    EncryptedPkcs8,
    #[error(
        "an X.509 certificate is not accepted as a public key; extract the key with \
         `openssl x509 -in CERT -pubkey -noout`"
    )]
    Certificate,
    #[error(
        "expected a public key but found a private key ({format}); derive the public key with \
         `openssl pkey -in KEY -pubout`"
    )]
    PrivateKeyGiven { format: &'static str },
    #[error("expected a private key but found a public key ({format})")]
    PublicKeyGiven { format: &'static str },
    #[error("invalid JWK: {reason}")]
    Jwk { reason: String },
    #[error("JWK `alg` `{alg}` cannot wrap keys with a `{kty}` key; expected {expected}")]
    UnsupportedJwkAlg {
        alg: String,
        kty: &'static str,
        expected: &'static str,
    },
    #[error("{what}: the public key does not belong to the private key")]
    Inconsistent { what: &'static str },
    #[error("{what} rejected by aws-lc: `{reason}`")]
    Rejected {
        what: &'static str,
        reason: &'static str,
    },
    #[error("key generation failed in aws-lc")]
    Generate,
}

/// The elliptic curves JWE key agreement supports here (RFC 7518 6.2.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    /// The JWK `crv` name, e.g. `P-256`.
    pub fn name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
            Curve::P521 => "P-521",
        }
    }

    /// Parses a JWK `crv` name.
    pub fn from_jwk_name(name: &str) -> Option<Curve> {
        match name {
            "P-256" => Some(Curve::P256),
            "P-384" => Some(Curve::P384),
            "P-521" => Some(Curve::P521),
            _ => None,
        }
    }

    /// Length of a field element, and so of a JWK `x`, `y` or `d` (RFC 7518 6.2.1.2).
    pub fn field_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }

    pub(crate) fn agreement(self) -> &'static agreement::Algorithm {
        match self {
            Curve::P256 => &agreement::ECDH_P256,
            Curve::P384 => &agreement::ECDH_P384,
            Curve::P521 => &agreement::ECDH_P521,
        }
    }

    fn oid(self) -> &'static [u8] {
        match self {
            Curve::P256 => oid::P256,
            Curve::P384 => oid::P384,
            Curve::P521 => oid::P521,
        }
    }

    fn from_oid(content: &[u8]) -> Result<Curve, KeyError> {
        match content {
            oid::P256 => Ok(Curve::P256),
            oid::P384 => Ok(Curve::P384),
            oid::P521 => Ok(Curve::P521),
            other => Err(KeyError::UnsupportedCurve {
                curve: oid::name(other),
            }),
        }
    }
}

/// A key-management algorithm a JWK public key can pin with its `alg` (ocicrypt.md 5.1: the set
/// go-jose accepts for a JWK recipient).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WrapAlg {
    RsaOaep,
    RsaOaep256,
    EcdhEsA128Kw,
    EcdhEsA192Kw,
    EcdhEsA256Kw,
}

impl WrapAlg {
    /// The JOSE name, e.g. `ECDH-ES+A256KW`.
    pub fn as_str(self) -> &'static str {
        match self {
            WrapAlg::RsaOaep => "RSA-OAEP",
            WrapAlg::RsaOaep256 => "RSA-OAEP-256",
            WrapAlg::EcdhEsA128Kw => "ECDH-ES+A128KW",
            WrapAlg::EcdhEsA192Kw => "ECDH-ES+A192KW",
            WrapAlg::EcdhEsA256Kw => "ECDH-ES+A256KW",
        }
    }
}

/// A private key that can unwrap a JWE content key.
pub enum PrivateKey {
    Rsa(RsaPrivateKey),
    Ec(EcPrivateKey),
}

/// An RSA private key (2048 to 8192 bits, the range aws-lc-rs accepts).
pub struct RsaPrivateKey {
    key: rsa::PrivateDecryptingKey,
    bits: usize,
}

/// An EC private key on P-256, P-384 or P-521.
pub struct EcPrivateKey {
    curve: Curve,
    key: agreement::PrivateKey,
    /// Uncompressed SEC1 point, computed from the scalar.
    public_point: Vec<u8>,
}

/// A public key that a JWE content key can be wrapped for.
#[derive(Clone)]
pub enum PublicKey {
    Rsa(RsaPublicKey),
    Ec(EcPublicKey),
}

/// An RSA public key, with what its JWK said, if it came from one.
#[derive(Clone)]
pub struct RsaPublicKey {
    key: rsa::PublicEncryptingKey,
    bits: usize,
    jwk: JwkMeta,
}

/// An EC public key (a validated point), with what its JWK said, if it came from one.
#[derive(Clone)]
pub struct EcPublicKey {
    curve: Curve,
    /// SEC1 point as given (uncompressed or compressed), already checked to be on the curve.
    point: Vec<u8>,
    jwk: JwkMeta,
}

#[derive(Clone, Default)]
struct JwkMeta {
    alg: Option<WrapAlg>,
    kid: Option<String>,
}

impl PrivateKey {
    /// Parses a private key file.
    ///
    /// Accepted: PEM or DER PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`) and SEC1
    /// (`EC PRIVATE KEY`); legacy OpenSSL-encrypted PEM (`Proc-Type: 4,ENCRYPTED` with
    /// `DEK-Info: AES-{128,192,256}-CBC,<iv>`), which needs `password`; a JWK private key (RSA
    /// with `n,e,d,p,q,dp,dq,qi`, EC with `crv,x,y,d`). `EC PARAMETERS` blocks are skipped (their
    /// curve is used only if the key names none). `password` is ignored for unencrypted keys.
    /// Anything else is an error, never silently skipped: several keys in one file, encrypted
    /// PKCS#8, certificates, public keys, DES-encrypted PEM, curves other than P-256/384/521.
    pub fn from_bytes(bytes: &[u8], password: Option<&[u8]>) -> Result<PrivateKey, KeyError> {
        match sniff(bytes, "private key")? {
            Format::Der => private_from_der(bytes),
            Format::Jwk => private_from_jwk(bytes),
            Format::Pem(text) => private_from_pem(text, password),
        }
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        match self {
            PrivateKey::Rsa(rsa) => PublicKey::Rsa(RsaPublicKey {
                key: rsa.key.public_key(),
                bits: rsa.bits,
                jwk: JwkMeta::default(),
            }),
            PrivateKey::Ec(ec) => PublicKey::Ec(EcPublicKey {
                curve: ec.curve,
                point: ec.public_point.clone(),
                jwk: JwkMeta::default(),
            }),
        }
    }

    /// A short description for messages: `RSA-4096`, `EC P-256`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            PrivateKey::Rsa(rsa) => rsa_kind(rsa.bits),
            PrivateKey::Ec(ec) => ec_kind(ec.curve),
        }
    }
}

impl RsaPrivateKey {
    /// Modulus size in bits.
    pub fn bits(&self) -> usize {
        self.bits
    }

    pub(crate) fn decrypting_key(&self) -> &rsa::PrivateDecryptingKey {
        &self.key
    }
}

impl EcPrivateKey {
    pub fn curve(&self) -> Curve {
        self.curve
    }

    pub(crate) fn agreement_key(&self) -> &agreement::PrivateKey {
        &self.key
    }
}

impl PublicKey {
    /// Parses a public key file: PEM or DER SubjectPublicKeyInfo (`PUBLIC KEY`), PKCS#1
    /// `RSA PUBLIC KEY`, or a JWK public key (`kty` `RSA` or `EC`). A JWK `alg`, if present, must
    /// be one of RSA-OAEP, RSA-OAEP-256 (RSA) or ECDH-ES+A128KW/A192KW/A256KW (EC), and is then
    /// what `ocicrypt::jwe::wrap` uses; a JWK `kid` is carried into the JWE header. Certificates
    /// and private keys are refused with a hint on how to get the public key.
    pub fn from_bytes(bytes: &[u8]) -> Result<PublicKey, KeyError> {
        match sniff(bytes, "public key")? {
            Format::Der => public_from_der(bytes),
            Format::Jwk => public_from_jwk(bytes),
            Format::Pem(text) => public_from_pem(text),
        }
    }

    /// A short description for messages: `RSA-2048`, `EC P-384`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            PublicKey::Rsa(rsa) => rsa_kind(rsa.bits),
            PublicKey::Ec(ec) => ec_kind(ec.curve),
        }
    }

    /// The `alg` of the JWK this key came from, if it had one.
    pub fn alg(&self) -> Option<WrapAlg> {
        self.jwk().alg
    }

    /// The `kid` of the JWK this key came from, if it had one.
    pub fn kid(&self) -> Option<&str> {
        self.jwk().kid.as_deref()
    }

    /// DER SubjectPublicKeyInfo, as `openssl pkey -pubout -outform DER` writes it.
    pub fn to_spki_der(&self) -> Result<Vec<u8>, KeyError> {
        match self {
            PublicKey::Rsa(rsa) => {
                rsa.key
                    .as_der()
                    .map(|der| der.as_ref().to_vec())
                    .map_err(|_| KeyError::Rejected {
                        what: "RSA public key",
                        reason: "encoding",
                    })
            }
            PublicKey::Ec(ec) => Ok(ec_spki(ec.curve, &ec.point)),
        }
    }

    fn jwk(&self) -> &JwkMeta {
        match self {
            PublicKey::Rsa(rsa) => &rsa.jwk,
            PublicKey::Ec(ec) => &ec.jwk,
        }
    }
}

impl RsaPublicKey {
    /// The modulus and public exponent, big-endian without leading zeros (a JWK's `n`, `e`).
    pub fn components(&self) -> Result<(Vec<u8>, Vec<u8>), KeyError> {
        let spki = self.key.as_der().map_err(|_| KeyError::Rejected {
            what: "RSA public key",
            reason: "encoding",
        })?;
        let parse = || -> Result<(Vec<u8>, Vec<u8>), der::Error> {
            let mut outer = der::Reader::new(spki.as_ref()).sequence()?;
            outer.sequence()?;
            let bits = outer.bit_string()?;
            let mut key = der::Reader::new(bits).sequence()?;
            let strip = |i: &[u8]| {
                i.iter()
                    .skip_while(|b| **b == 0)
                    .copied()
                    .collect::<Vec<u8>>()
            };
            let n = strip(key.read(der::INTEGER)?);
            let e = strip(key.read(der::INTEGER)?);
            key.finish()?;
            Ok((n, e))
        };
        parse().map_err(|e| e.within("RSA SubjectPublicKeyInfo"))
    }

    /// Modulus size in bits.
    pub fn bits(&self) -> usize {
        self.bits
    }

    pub(crate) fn encrypting_key(&self) -> &rsa::PublicEncryptingKey {
        &self.key
    }
}

impl EcPublicKey {
    pub fn curve(&self) -> Curve {
        self.curve
    }

    /// The SEC1 point, validated at parse time.
    pub(crate) fn point(&self) -> &[u8] {
        &self.point
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({} <redacted>)", self.kind())
    }
}

impl fmt::Debug for RsaPrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RsaPrivateKey({} <redacted>)", rsa_kind(self.bits))
    }
}

impl fmt::Debug for EcPrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EcPrivateKey({} <redacted>)", ec_kind(self.curve))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublicKey::Rsa(rsa) => rsa.fmt(f),
            PublicKey::Ec(ec) => ec.fmt(f),
        }
    }
}

impl fmt::Debug for RsaPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RsaPublicKey")
            .field("kind", &rsa_kind(self.bits))
            .field("alg", &self.jwk.alg.map(WrapAlg::as_str))
            .field("kid", &self.jwk.kid)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for EcPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EcPublicKey")
            .field("kind", &ec_kind(self.curve))
            .field("alg", &self.jwk.alg.map(WrapAlg::as_str))
            .field("kid", &self.jwk.kid)
            .finish_non_exhaustive()
    }
}

/// An RSA-2048 key for the key broker's `RSA-OAEP-256` replies (kbs.md §2.1), PKCS#8 DER.
pub fn generate_rsa2048_pkcs8() -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let key = rsa::PrivateDecryptingKey::generate(rsa::KeySize::Rsa2048)
        .map_err(|_| KeyError::Generate)?;
    let pkcs8 = key.as_der().map_err(|_| KeyError::Generate)?;
    Ok(Zeroizing::new(pkcs8.as_ref().to_vec()))
}

/// `modelcrypt keygen --rsa`: a fresh RSA-4096 key as PEM PKCS#8 `PRIVATE KEY` and PEM SPKI
/// `PUBLIC KEY`, the pair skopeo reads (`--decryption-key`, `--encryption-key jwe:`).
pub fn generate_rsa4096() -> Result<(Zeroizing<String>, String), KeyError> {
    let key = rsa::PrivateDecryptingKey::generate(rsa::KeySize::Rsa4096)
        .map_err(|_| KeyError::Generate)?;
    let pkcs8 = key.as_der().map_err(|_| KeyError::Generate)?;
    let spki = key.public_key().as_der().map_err(|_| KeyError::Generate)?;
    Ok((
        pem_secret("PRIVATE KEY", pkcs8.as_ref()),
        pem_public("PUBLIC KEY", spki.as_ref()),
    ))
}

/// `modelcrypt keygen --ec`: a fresh P-256 key as PEM PKCS#8 `PRIVATE KEY` and PEM SPKI
/// `PUBLIC KEY`. PKCS#8 rather than SEC1 because skopeo ignores PEM `EC PRIVATE KEY`.
pub fn generate_ec_p256() -> Result<(Zeroizing<String>, String), KeyError> {
    let key =
        agreement::PrivateKey::generate(&agreement::ECDH_P256).map_err(|_| KeyError::Generate)?;
    let pkcs8: aws_lc_rs::encoding::Pkcs8V1Der<'static> =
        key.as_der().map_err(|_| KeyError::Generate)?;
    let public = key.compute_public_key().map_err(|_| KeyError::Generate)?;
    let spki = ec_spki(Curve::P256, public.as_ref());
    Ok((
        pem_secret("PRIVATE KEY", pkcs8.as_ref()),
        pem_public("PUBLIC KEY", &spki),
    ))
}

// ---------------------------------------------------------------------------------------------
// Format detection and PEM

enum Format<'a> {
    Der,
    Jwk,
    Pem(&'a str),
}

fn sniff<'a>(bytes: &'a [u8], what: &'static str) -> Result<Format<'a>, KeyError> {
    if bytes.len() > MAX_KEY_FILE_LEN {
        return Err(KeyError::TooLarge {
            len: bytes.len(),
            max: MAX_KEY_FILE_LEN,
        });
    }
    let trimmed = bytes.trim_ascii();
    if trimmed.is_empty() {
        return Err(KeyError::Empty);
    }
    // DER starts with a SEQUENCE tag and is never surrounded by whitespace.
    if bytes[0] == der::SEQUENCE {
        return Ok(Format::Der);
    }
    if trimmed[0] == b'{' {
        return Ok(Format::Jwk);
    }
    // PEM may carry explanatory text around its blocks (RFC 7468 5.2), so look for the marker
    // anywhere rather than at the start.
    match std::str::from_utf8(bytes) {
        Ok(text) if text.contains("-----BEGIN ") => Ok(Format::Pem(text)),
        _ => Err(KeyError::NotAKey { what }),
    }
}

struct PemBlock {
    label: String,
    headers: Vec<(String, String)>,
    der: Zeroizing<Vec<u8>>,
}

impl PemBlock {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn parse_pem(text: &str) -> Result<Vec<PemBlock>, KeyError> {
    let pem_err = |reason: String| KeyError::Pem { reason };
    let mut blocks = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let line = line.trim();
        if !line.starts_with("-----BEGIN ") {
            continue; // explanatory text between blocks
        }
        let label = line
            .strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
            .ok_or_else(|| pem_err(format!("malformed BEGIN line `{line}`")))?
            .to_owned();
        let end_line = format!("-----END {label}-----");
        let mut headers = Vec::new();
        // Sized up front so pushing never reallocates and leaves unzeroized copies behind.
        let mut body = Zeroizing::new(String::with_capacity(text.len()));
        let mut ended = false;
        for line in lines.by_ref() {
            let line = line.trim();
            if line == end_line {
                ended = true;
                break;
            }
            if line.starts_with("-----") {
                return Err(pem_err(format!("`{line}` inside the `{label}` block")));
            }
            // RFC 1421 headers (`Proc-Type`, `DEK-Info`) come before the base64 body; base64
            // never contains a colon.
            if let Some((name, value)) = line.split_once(':') {
                if !body.is_empty() {
                    return Err(pem_err(format!("header line inside the `{label}` body")));
                }
                headers.push((name.trim().to_owned(), value.trim().to_owned()));
                continue;
            }
            body.push_str(line);
        }
        if !ended {
            return Err(pem_err(format!(
                "`-----BEGIN {label}-----` has no END line (truncated?)"
            )));
        }
        let der = Zeroizing::new(
            STANDARD
                .decode(body.as_bytes())
                .map_err(|_| pem_err(format!("the `{label}` body is not valid base64")))?,
        );
        if der.is_empty() {
            return Err(pem_err(format!("the `{label}` block is empty")));
        }
        blocks.push(PemBlock {
            label,
            headers,
            der,
        });
    }
    if blocks.is_empty() {
        return Err(pem_err("no complete PEM block".to_owned()));
    }
    Ok(blocks)
}

const PRIVATE_LABELS: [&str; 4] = [
    "PRIVATE KEY",
    "RSA PRIVATE KEY",
    "EC PRIVATE KEY",
    "ENCRYPTED PRIVATE KEY",
];
const PUBLIC_LABELS: [&str; 2] = ["PUBLIC KEY", "RSA PUBLIC KEY"];
const CERTIFICATE_LABELS: [&str; 3] = ["CERTIFICATE", "TRUSTED CERTIFICATE", "X509 CERTIFICATE"];

fn private_from_pem(text: &str, password: Option<&[u8]>) -> Result<PrivateKey, KeyError> {
    let mut params_curve = None;
    let mut keys = Vec::new();
    for block in parse_pem(text)? {
        let label = block.label.as_str();
        if label == "EC PARAMETERS" {
            // `openssl ecparam -genkey` writes these before the key; the key names its curve
            // too, so an unsupported curve here only matters if the key lacks one.
            params_curve = Curve::from_oid(&read_named_curve(&block.der, "EC PARAMETERS")?).ok();
        } else if PRIVATE_LABELS.contains(&label) {
            keys.push(block);
        } else if PUBLIC_LABELS.contains(&label) {
            return Err(KeyError::PublicKeyGiven { format: "PEM" });
        } else {
            return Err(KeyError::UnsupportedPem {
                label: block.label,
                what: "private key",
            });
        }
    }
    let block = match keys.len() {
        0 => {
            return Err(KeyError::Pem {
                reason: "no private key block".to_owned(),
            })
        }
        1 => keys.remove(0),
        count => return Err(KeyError::SeveralKeys { count }),
    };
    if block.label == "ENCRYPTED PRIVATE KEY" {
        return Err(KeyError::EncryptedPkcs8);
    }
    let parse = |der: &[u8]| match block.label.as_str() {
        "PRIVATE KEY" => private_from_pkcs8(der),
        "RSA PRIVATE KEY" => private_from_pkcs1(der),
        _ => private_from_sec1(der, None, params_curve),
    };
    match block.header("Proc-Type") {
        None => parse(&block.der),
        Some(proc_type) => {
            if proc_type != "4,ENCRYPTED" {
                return Err(KeyError::Pem {
                    reason: format!("unknown `Proc-Type` `{proc_type}`"),
                });
            }
            let dek_info = block.header("DEK-Info").ok_or_else(|| KeyError::Pem {
                reason: "`Proc-Type: 4,ENCRYPTED` without `DEK-Info`".to_owned(),
            })?;
            let plain = decrypt_legacy_pem(dek_info, &block.der, password)?;
            // A wrong password passes the padding check about once in 256 tries and then yields
            // garbage, so a structure error after decryption means the same thing.
            parse(&plain).map_err(|err| match err {
                KeyError::Der { .. } => KeyError::WrongPassword,
                other => other,
            })
        }
    }
}

fn public_from_pem(text: &str) -> Result<PublicKey, KeyError> {
    let mut keys = Vec::new();
    for block in parse_pem(text)? {
        let label = block.label.as_str();
        if label == "EC PARAMETERS" {
            continue;
        } else if PUBLIC_LABELS.contains(&label) {
            keys.push(block);
        } else if CERTIFICATE_LABELS.contains(&label) {
            return Err(KeyError::Certificate);
        } else if PRIVATE_LABELS.contains(&label) {
            return Err(KeyError::PrivateKeyGiven { format: "PEM" });
        } else {
            return Err(KeyError::UnsupportedPem {
                label: block.label,
                what: "public key",
            });
        }
    }
    let block = match keys.len() {
        0 => {
            return Err(KeyError::Pem {
                reason: "no public key block".to_owned(),
            })
        }
        1 => keys.remove(0),
        count => return Err(KeyError::SeveralKeys { count }),
    };
    if block.label == "PUBLIC KEY" {
        public_from_spki(&block.der)
    } else {
        public_from_pkcs1(&block.der, JwkMeta::default())
    }
}

/// Decrypts the body of a legacy OpenSSL-encrypted PEM (`PEM_read_bio_PrivateKey`): key =
/// EVP_BytesToKey(MD5, password, salt = first 8 IV bytes, 1 round), AES-CBC, PKCS#7 padding.
fn decrypt_legacy_pem(
    dek_info: &str,
    body: &[u8],
    password: Option<&[u8]>,
) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let (cipher, iv_hex) = dek_info.split_once(',').ok_or_else(|| KeyError::Pem {
        reason: format!("malformed `DEK-Info` `{dek_info}`"),
    })?;
    let (algorithm, key_len) = match cipher.trim() {
        "AES-128-CBC" => (&aws_lc_rs::cipher::AES_128, 16),
        "AES-192-CBC" => (&aws_lc_rs::cipher::AES_192, 24),
        "AES-256-CBC" => (&aws_lc_rs::cipher::AES_256, 32),
        other => {
            return Err(KeyError::UnsupportedPemCipher {
                cipher: other.to_owned(),
            })
        }
    };
    let iv: [u8; 16] = decode_hex(iv_hex.trim())
        .and_then(|iv| iv.try_into().ok())
        .ok_or_else(|| KeyError::Pem {
            reason: format!("malformed `DEK-Info` IV `{iv_hex}`"),
        })?;
    let password = password.ok_or(KeyError::PasswordRequired)?;
    if body.is_empty() || body.len() % 16 != 0 {
        return Err(KeyError::Pem {
            reason: format!(
                "encrypted body of `{}` bytes is not whole AES blocks",
                body.len()
            ),
        });
    }
    let key = evp_bytes_to_key(password, &iv[..8], key_len);
    let decrypting = UnboundCipherKey::new(algorithm, &key)
        .and_then(DecryptingKey::cbc)
        .map_err(|_| KeyError::Rejected {
            what: "PEM decryption key",
            reason: "AES-CBC",
        })?;
    let mut plain = Zeroizing::new(body.to_vec());
    decrypting
        .decrypt(&mut plain, DecryptionContext::Iv128(FixedLength::from(iv)))
        .map_err(|_| KeyError::WrongPassword)?;
    let pad = usize::from(plain[plain.len() - 1]);
    if pad == 0
        || pad > 16
        || plain[plain.len() - pad..]
            .iter()
            .any(|&b| usize::from(b) != pad)
    {
        return Err(KeyError::WrongPassword);
    }
    let len = plain.len() - pad;
    plain.truncate(len);
    Ok(plain)
}

/// OpenSSL's EVP_BytesToKey with MD5 and one iteration: D_i = MD5(D_{i-1} || password || salt).
fn evp_bytes_to_key(password: &[u8], salt: &[u8], key_len: usize) -> Zeroizing<Vec<u8>> {
    let mut key = Zeroizing::new(Vec::with_capacity(key_len + 16));
    let mut previous = Zeroizing::new([0u8; 16]);
    let mut first = true;
    while key.len() < key_len {
        let mut md5 = Md5::new();
        if !first {
            md5.update(previous.as_slice());
        }
        md5.update(password);
        md5.update(salt);
        previous.copy_from_slice(&md5.finalize());
        key.extend_from_slice(previous.as_slice());
        first = false;
    }
    key.truncate(key_len);
    key
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 || !hex.is_ascii() {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// DER structures

/// The shape of a DER key structure, told apart by its first members.
enum DerShape {
    Pkcs8,
    Pkcs1Private,
    Pkcs1Public,
    Sec1,
    Spki,
    Certificate,
    /// EncryptedPrivateKeyInfo (RFC 5958 3).
    EncryptedPkcs8,
}

fn der_shape(bytes: &[u8]) -> Result<DerShape, KeyError> {
    let unknown = || KeyError::Der {
        structure: "DER key",
        reason: "not a known key structure",
    };
    let mut outer = der::Reader::new(bytes);
    let mut seq = outer.sequence().map_err(|e| e.within("DER key"))?;
    outer.finish().map_err(|e| e.within("DER key"))?;
    let mut tags = Vec::new();
    while !seq.is_empty() && tags.len() < 4 {
        tags.push(seq.any().map_err(|e| e.within("DER key"))?.0);
    }
    use der::{BIT_STRING, INTEGER, OCTET_STRING, SEQUENCE};
    match tags.as_slice() {
        [INTEGER, SEQUENCE, OCTET_STRING, ..] => Ok(DerShape::Pkcs8),
        [INTEGER, OCTET_STRING, ..] => Ok(DerShape::Sec1),
        [INTEGER, INTEGER] => Ok(DerShape::Pkcs1Public),
        [INTEGER, INTEGER, INTEGER, ..] => Ok(DerShape::Pkcs1Private),
        [SEQUENCE, BIT_STRING] => Ok(DerShape::Spki),
        [SEQUENCE, SEQUENCE, BIT_STRING] => Ok(DerShape::Certificate),
        [SEQUENCE, OCTET_STRING] => Ok(DerShape::EncryptedPkcs8),
        _ => Err(unknown()),
    }
}

fn private_from_der(bytes: &[u8]) -> Result<PrivateKey, KeyError> {
    match der_shape(bytes)? {
        DerShape::Pkcs8 => private_from_pkcs8(bytes),
        DerShape::Pkcs1Private => private_from_pkcs1(bytes),
        DerShape::Sec1 => private_from_sec1(bytes, None, None),
        DerShape::Spki | DerShape::Pkcs1Public => Err(KeyError::PublicKeyGiven { format: "DER" }),
        DerShape::Certificate => Err(KeyError::UnsupportedPem {
            label: "CERTIFICATE".to_owned(),
            what: "private key",
        }),
        DerShape::EncryptedPkcs8 => Err(KeyError::EncryptedPkcs8),
    }
}

fn public_from_der(bytes: &[u8]) -> Result<PublicKey, KeyError> {
    match der_shape(bytes)? {
        DerShape::Spki => public_from_spki(bytes),
        DerShape::Pkcs1Public => public_from_pkcs1(bytes, JwkMeta::default()),
        DerShape::Certificate => Err(KeyError::Certificate),
        DerShape::Pkcs8 | DerShape::Pkcs1Private | DerShape::Sec1 | DerShape::EncryptedPkcs8 => {
            Err(KeyError::PrivateKeyGiven { format: "DER" })
        }
    }
}

/// The algorithm of a PKCS#8 or SPKI `AlgorithmIdentifier`.
enum KeyAlgorithm {
    Rsa,
    Ec(Curve),
}

fn read_algorithm(
    alg: &mut der::Reader<'_>,
    structure: &'static str,
) -> Result<KeyAlgorithm, KeyError> {
    let oid = alg.read(der::OID).map_err(|e| e.within(structure))?;
    match oid {
        oid::RSA => {
            // Parameters must be NULL (RFC 8017 A.1), tolerated absent.
            if !alg.is_empty() {
                alg.read(der::NULL).map_err(|e| e.within(structure))?;
            }
            alg.finish().map_err(|e| e.within(structure))?;
            Ok(KeyAlgorithm::Rsa)
        }
        oid::EC => {
            let curve = alg.read(der::OID).map_err(|_| KeyError::Der {
                structure,
                reason: "EC parameters are not a named curve",
            })?;
            alg.finish().map_err(|e| e.within(structure))?;
            Ok(KeyAlgorithm::Ec(Curve::from_oid(curve)?))
        }
        other => Err(KeyError::UnsupportedAlgorithm {
            name: oid::name(other),
        }),
    }
}

fn read_named_curve(bytes: &[u8], structure: &'static str) -> Result<Vec<u8>, KeyError> {
    let mut reader = der::Reader::new(bytes);
    let oid = reader.read(der::OID).map_err(|_| KeyError::Der {
        structure,
        reason: "EC parameters are not a named curve",
    })?;
    reader.finish().map_err(|e| e.within(structure))?;
    Ok(oid.to_vec())
}

fn private_from_pkcs8(bytes: &[u8]) -> Result<PrivateKey, KeyError> {
    const S: &str = "PKCS#8 private key";
    let mut outer = der::Reader::new(bytes);
    let mut seq = outer.sequence().map_err(|e| e.within(S))?;
    outer.finish().map_err(|e| e.within(S))?;
    // Version 0 (RFC 5208) or 1 (RFC 5958, may add a public key after the attributes).
    if seq.small_uint().map_err(|e| e.within(S))? > 1 {
        return Err(KeyError::Der {
            structure: S,
            reason: "unknown version",
        });
    }
    let mut alg = seq.sequence().map_err(|e| e.within(S))?;
    let algorithm = read_algorithm(&mut alg, S)?;
    let inner = seq.read(der::OCTET_STRING).map_err(|e| e.within(S))?;
    // Attributes [0] and the RFC 5958 public key [1] carry nothing we need; the inner key is
    // re-wrapped below, which drops them.
    match algorithm {
        KeyAlgorithm::Rsa => private_from_pkcs1(inner),
        KeyAlgorithm::Ec(curve) => private_from_sec1(inner, Some(curve), None),
    }
}

/// RSAPrivateKey (RFC 8017 A.1.2): checks the structure, then re-wraps it as PKCS#8 v1 for
/// aws-lc-rs, which also checks that the numbers form a consistent key (RSA_check_key).
fn private_from_pkcs1(bytes: &[u8]) -> Result<PrivateKey, KeyError> {
    const S: &str = "PKCS#1 RSA private key";
    let mut outer = der::Reader::new(bytes);
    let mut seq = outer.sequence().map_err(|e| e.within(S))?;
    outer.finish().map_err(|e| e.within(S))?;
    match seq.small_uint().map_err(|e| e.within(S))? {
        0 => {}
        1 => {
            return Err(KeyError::Der {
                structure: S,
                reason: "multi-prime keys are not supported",
            })
        }
        _ => {
            return Err(KeyError::Der {
                structure: S,
                reason: "unknown version",
            })
        }
    }
    let n = seq.unsigned().map_err(|e| e.within(S))?;
    for _ in 0..7 {
        seq.unsigned().map_err(|e| e.within(S))?; // e, d, p, q, dp, dq, qi
    }
    seq.finish().map_err(|e| e.within(S))?;
    let bits = bit_len(n);
    check_rsa_bits(bits)?;
    let pkcs8 = der::pkcs8(&rsa_algorithm_identifier(), bytes);
    let key = rsa::PrivateDecryptingKey::from_pkcs8(&pkcs8).map_err(|e| KeyError::Rejected {
        what: "RSA private key",
        reason: e.description_(),
    })?;
    Ok(PrivateKey::Rsa(RsaPrivateKey { key, bits }))
}

/// ECPrivateKey (RFC 5915). The curve comes from the key's own parameters, else from the
/// PKCS#8 wrapper (`outer_curve`), else from a preceding `EC PARAMETERS` block.
fn private_from_sec1(
    bytes: &[u8],
    outer_curve: Option<Curve>,
    params_curve: Option<Curve>,
) -> Result<PrivateKey, KeyError> {
    const S: &str = "SEC1 EC private key";
    let mut outer = der::Reader::new(bytes);
    let mut seq = outer.sequence().map_err(|e| e.within(S))?;
    outer.finish().map_err(|e| e.within(S))?;
    if seq.small_uint().map_err(|e| e.within(S))? != 1 {
        return Err(KeyError::Der {
            structure: S,
            reason: "unknown version",
        });
    }
    let scalar = seq.read(der::OCTET_STRING).map_err(|e| e.within(S))?;
    let own_curve = match seq.optional(der::CONTEXT_0).map_err(|e| e.within(S))? {
        Some(params) => Some(Curve::from_oid(&read_named_curve(params, S)?)?),
        None => None,
    };
    let embedded_public = match seq.optional(der::CONTEXT_1).map_err(|e| e.within(S))? {
        Some(explicit) => {
            let mut reader = der::Reader::new(explicit);
            let point = reader.bit_string().map_err(|e| e.within(S))?;
            reader.finish().map_err(|e| e.within(S))?;
            Some(point)
        }
        None => None,
    };
    seq.finish().map_err(|e| e.within(S))?;
    let curve = match (own_curve, outer_curve) {
        (Some(own), Some(outer)) if own != outer => {
            return Err(KeyError::Der {
                structure: S,
                reason: "curve differs from the PKCS#8 one",
            })
        }
        (Some(curve), _) | (None, Some(curve)) => curve,
        (None, None) => params_curve.ok_or(KeyError::Der {
            structure: S,
            reason: "the key names no curve",
        })?,
    };
    let key = ec_private(curve, scalar)?;
    if let Some(embedded) = embedded_public {
        if !same_point(curve, embedded, &key.public_point) {
            return Err(KeyError::Inconsistent { what: S });
        }
    }
    Ok(PrivateKey::Ec(key))
}

/// Builds an EC private key from a big-endian scalar, left-padding it to the field length
/// (RFC 5915 asks for the full length, but some writers strip leading zeros).
fn ec_private(curve: Curve, scalar: &[u8]) -> Result<EcPrivateKey, KeyError> {
    let len = curve.field_len();
    if scalar.is_empty() || scalar.len() > len {
        return Err(KeyError::Der {
            structure: "EC private key",
            reason: "scalar has the wrong length",
        });
    }
    let mut padded = Zeroizing::new(vec![0u8; len]);
    padded[len - scalar.len()..].copy_from_slice(scalar);
    let key = agreement::PrivateKey::from_private_key(curve.agreement(), &padded).map_err(|e| {
        KeyError::Rejected {
            what: "EC private key",
            reason: e.description_(),
        }
    })?;
    let public = key.compute_public_key().map_err(|_| KeyError::Rejected {
        what: "EC private key",
        reason: "public key",
    })?;
    let public_point = public.as_ref().to_vec();
    Ok(EcPrivateKey {
        curve,
        key,
        public_point,
    })
}

/// Compares an embedded SEC1 point (uncompressed or compressed) with our uncompressed one.
fn same_point(curve: Curve, embedded: &[u8], uncompressed: &[u8]) -> bool {
    let len = curve.field_len();
    match embedded.first() {
        Some(0x04) => embedded == uncompressed,
        Some(&prefix @ (0x02 | 0x03)) => {
            let y_is_odd = uncompressed.last().is_some_and(|b| b & 1 == 1);
            embedded.len() == 1 + len
                && embedded[1..] == uncompressed[1..1 + len]
                && (prefix == 0x03) == y_is_odd
        }
        _ => false,
    }
}

fn public_from_spki(bytes: &[u8]) -> Result<PublicKey, KeyError> {
    const S: &str = "SubjectPublicKeyInfo";
    let mut outer = der::Reader::new(bytes);
    let mut seq = outer.sequence().map_err(|e| e.within(S))?;
    outer.finish().map_err(|e| e.within(S))?;
    let mut alg = seq.sequence().map_err(|e| e.within(S))?;
    let algorithm = read_algorithm(&mut alg, S)?;
    let key = seq.bit_string().map_err(|e| e.within(S))?;
    seq.finish().map_err(|e| e.within(S))?;
    match algorithm {
        KeyAlgorithm::Rsa => public_from_pkcs1(key, JwkMeta::default()),
        KeyAlgorithm::Ec(curve) => ec_public(curve, key.to_vec(), JwkMeta::default()),
    }
}

/// RSAPublicKey (RFC 8017 A.1.1), re-wrapped as SPKI for aws-lc-rs.
fn public_from_pkcs1(bytes: &[u8], jwk: JwkMeta) -> Result<PublicKey, KeyError> {
    const S: &str = "PKCS#1 RSA public key";
    let mut outer = der::Reader::new(bytes);
    let mut seq = outer.sequence().map_err(|e| e.within(S))?;
    outer.finish().map_err(|e| e.within(S))?;
    let n = seq.unsigned().map_err(|e| e.within(S))?;
    seq.unsigned().map_err(|e| e.within(S))?;
    seq.finish().map_err(|e| e.within(S))?;
    let bits = bit_len(n);
    check_rsa_bits(bits)?;
    let spki = der::spki(&rsa_algorithm_identifier(), bytes);
    let key = rsa::PublicEncryptingKey::from_der(&spki).map_err(|e| KeyError::Rejected {
        what: "RSA public key",
        reason: e.description_(),
    })?;
    Ok(PublicKey::Rsa(RsaPublicKey { key, bits, jwk }))
}

fn ec_public(curve: Curve, point: Vec<u8>, jwk: JwkMeta) -> Result<PublicKey, KeyError> {
    let len = curve.field_len();
    let well_formed = match point.first() {
        Some(0x04) => point.len() == 1 + 2 * len,
        Some(0x02 | 0x03) => point.len() == 1 + len,
        _ => false,
    };
    if !well_formed {
        return Err(KeyError::Der {
            structure: "EC public key",
            reason: "not a SEC1 point",
        });
    }
    // aws-lc checks that the point is on the curve and not the point at infinity.
    agreement::ParsedPublicKey::try_from(&agreement::UnparsedPublicKey::new(
        curve.agreement(),
        &point,
    ))
    .map_err(|e| KeyError::Rejected {
        what: "EC public key",
        reason: e.description_(),
    })?;
    Ok(PublicKey::Ec(EcPublicKey { curve, point, jwk }))
}

fn check_rsa_bits(bits: usize) -> Result<(), KeyError> {
    if (2048..=8192).contains(&bits) {
        Ok(())
    } else {
        Err(KeyError::UnsupportedRsaSize { bits })
    }
}

fn bit_len(magnitude: &[u8]) -> usize {
    match magnitude.first() {
        Some(&top) => magnitude.len() * 8 - top.leading_zeros() as usize,
        None => 0,
    }
}

fn rsa_algorithm_identifier() -> Vec<u8> {
    let mut content = Vec::new();
    der::write(&mut content, der::OID, oid::RSA);
    der::write(&mut content, der::NULL, &[]);
    let mut out = Vec::new();
    der::write(&mut out, der::SEQUENCE, &content);
    out
}

fn ec_spki(curve: Curve, point: &[u8]) -> Vec<u8> {
    let mut content = Vec::new();
    der::write(&mut content, der::OID, oid::EC);
    der::write(&mut content, der::OID, curve.oid());
    let mut algorithm = Vec::new();
    der::write(&mut algorithm, der::SEQUENCE, &content);
    der::spki(&algorithm, point)
}

fn rsa_kind(bits: usize) -> &'static str {
    match bits {
        2048 => "RSA-2048",
        3072 => "RSA-3072",
        4096 => "RSA-4096",
        6144 => "RSA-6144",
        7680 => "RSA-7680",
        8192 => "RSA-8192",
        _ => "RSA",
    }
}

fn ec_kind(curve: Curve) -> &'static str {
    match curve {
        Curve::P256 => "EC P-256",
        Curve::P384 => "EC P-384",
        Curve::P521 => "EC P-521",
    }
}

// ---------------------------------------------------------------------------------------------
// JWK (RFC 7517, RFC 7518 6)

/// The JWK members we read. Unknown members (`use`, `key_ops`, `x5c`, ...) are ignored, as RFC
/// 7517 4 asks; duplicate members are refused by serde. Secret members are wiped on drop.
#[derive(Deserialize, Zeroize, ZeroizeOnDrop)]
struct RawJwk {
    kty: Option<String>,
    crv: Option<String>,
    alg: Option<String>,
    kid: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
    d: Option<String>,
    p: Option<String>,
    q: Option<String>,
    dp: Option<String>,
    dq: Option<String>,
    qi: Option<String>,
    k: Option<String>,
    #[zeroize(skip)]
    oth: Option<serde_json::Value>,
    #[zeroize(skip)]
    keys: Option<serde_json::Value>,
}

impl RawJwk {
    fn parse(bytes: &[u8]) -> Result<RawJwk, KeyError> {
        let jwk: RawJwk = serde_json::from_slice(bytes).map_err(|e| KeyError::Jwk {
            reason: format!("not a JWK object: {e}"),
        })?;
        if jwk.keys.is_some() {
            return Err(jwk_err(
                "a JWK set (`keys`) is not supported; give a single key",
            ));
        }
        Ok(jwk)
    }

    fn kty(&self) -> Result<&str, KeyError> {
        match self.kty.as_deref() {
            Some(kty @ ("RSA" | "EC")) => Ok(kty),
            Some("oct") | None if self.k.is_some() => {
                Err(jwk_err("a symmetric (`oct`) key cannot be used here"))
            }
            Some(other) => Err(KeyError::UnsupportedAlgorithm {
                name: format!("JWK kty {other}"),
            }),
            None => Err(jwk_err("missing `kty`")),
        }
    }

    fn curve(&self) -> Result<Curve, KeyError> {
        let crv = self
            .crv
            .as_deref()
            .ok_or_else(|| jwk_err("missing `crv`"))?;
        Curve::from_jwk_name(crv).ok_or_else(|| KeyError::UnsupportedCurve {
            curve: crv.to_owned(),
        })
    }

    /// A required base64url member, decoded.
    fn member(&self, name: &'static str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let value = match name {
            "n" => &self.n,
            "e" => &self.e,
            "x" => &self.x,
            "y" => &self.y,
            "d" => &self.d,
            "p" => &self.p,
            "q" => &self.q,
            "dp" => &self.dp,
            "dq" => &self.dq,
            "qi" => &self.qi,
            _ => &None,
        };
        let value = value.as_deref().ok_or_else(|| KeyError::Jwk {
            reason: format!("missing `{name}`"),
        })?;
        let bytes = Zeroizing::new(URL_SAFE_NO_PAD.decode(value).map_err(|_| KeyError::Jwk {
            reason: format!("`{name}` is not base64url without padding"),
        })?);
        if bytes.is_empty() {
            return Err(KeyError::Jwk {
                reason: format!("`{name}` is empty"),
            });
        }
        Ok(bytes)
    }

    /// An EC coordinate or scalar, which must be exactly the field length (RFC 7518 6.2.1.2).
    fn field_member(
        &self,
        name: &'static str,
        curve: Curve,
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let bytes = self.member(name)?;
        if bytes.len() != curve.field_len() {
            return Err(KeyError::Jwk {
                reason: format!(
                    "`{name}` is `{}` bytes; `{}` needs exactly `{}`",
                    bytes.len(),
                    curve.name(),
                    curve.field_len()
                ),
            });
        }
        Ok(bytes)
    }

    fn ec_point(&self, curve: Curve) -> Result<Vec<u8>, KeyError> {
        let x = self.field_member("x", curve)?;
        let y = self.field_member("y", curve)?;
        let mut point = Vec::with_capacity(1 + 2 * curve.field_len());
        point.push(0x04);
        point.extend_from_slice(&x);
        point.extend_from_slice(&y);
        Ok(point)
    }
}

fn jwk_err(reason: &str) -> KeyError {
    KeyError::Jwk {
        reason: reason.to_owned(),
    }
}

fn private_from_jwk(bytes: &[u8]) -> Result<PrivateKey, KeyError> {
    let jwk = RawJwk::parse(bytes)?;
    let kty = jwk.kty()?;
    if jwk.d.is_none() {
        return Err(KeyError::PublicKeyGiven { format: "JWK" });
    }
    if kty == "EC" {
        let curve = jwk.curve()?;
        let point = jwk.ec_point(curve)?;
        let d = jwk.field_member("d", curve)?;
        let key = ec_private(curve, &d)?;
        if key.public_point != point {
            return Err(KeyError::Inconsistent { what: "EC JWK" });
        }
        return Ok(PrivateKey::Ec(key));
    }
    if jwk.oth.is_some() {
        return Err(jwk_err("multi-prime RSA keys (`oth`) are not supported"));
    }
    // RFC 7518 6.3.2 lets a private JWK omit the CRT members, but PKCS#1 and aws-lc need them.
    let names = ["n", "e", "d", "p", "q", "dp", "dq", "qi"];
    let members = names
        .iter()
        .map(|name| jwk.member(name))
        .collect::<Result<Vec<_>, _>>()?;
    let ints: Vec<&[u8]> = std::iter::once(&[0u8][..])
        .chain(members.iter().map(|m| m.as_slice()))
        .collect();
    private_from_pkcs1(&der::sequence_of_unsigned(&ints))
}

fn public_from_jwk(bytes: &[u8]) -> Result<PublicKey, KeyError> {
    let jwk = RawJwk::parse(bytes)?;
    let kty = jwk.kty()?;
    if jwk.d.is_some() {
        return Err(KeyError::PrivateKeyGiven { format: "JWK" });
    }
    let alg = jwk.alg.as_deref();
    let kid = jwk.kid.clone();
    if kty == "EC" {
        let alg = match alg {
            None => None,
            Some("ECDH-ES+A128KW") => Some(WrapAlg::EcdhEsA128Kw),
            Some("ECDH-ES+A192KW") => Some(WrapAlg::EcdhEsA192Kw),
            Some("ECDH-ES+A256KW") => Some(WrapAlg::EcdhEsA256Kw),
            Some(other) => {
                return Err(KeyError::UnsupportedJwkAlg {
                    alg: other.to_owned(),
                    kty: "EC",
                    expected: "`ECDH-ES+A128KW`, `ECDH-ES+A192KW` or `ECDH-ES+A256KW`",
                })
            }
        };
        let curve = jwk.curve()?;
        return ec_public(curve, jwk.ec_point(curve)?, JwkMeta { alg, kid });
    }
    let alg = match alg {
        None => None,
        Some("RSA-OAEP") => Some(WrapAlg::RsaOaep),
        Some("RSA-OAEP-256") => Some(WrapAlg::RsaOaep256),
        Some(other) => {
            return Err(KeyError::UnsupportedJwkAlg {
                alg: other.to_owned(),
                kty: "RSA",
                expected: "`RSA-OAEP` or `RSA-OAEP-256`",
            })
        }
    };
    let n = jwk.member("n")?;
    let e = jwk.member("e")?;
    public_from_pkcs1(&der::sequence_of_unsigned(&[&n, &e]), JwkMeta { alg, kid })
}

// ---------------------------------------------------------------------------------------------
// PEM output

fn pem_len(label: &str, der_len: usize) -> usize {
    let b64 = der_len.div_ceil(3) * 4;
    2 * (label.len() + 16) + b64 + b64.div_ceil(64)
}

fn pem_into(out: &mut String, label: &str, der: &[u8]) {
    let b64 = Zeroizing::new(STANDARD.encode(der));
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    // Base64 text is ASCII, so 64-byte chunks are valid UTF-8 on their own.
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
}

fn pem_secret(label: &str, der: &[u8]) -> Zeroizing<String> {
    // Sized up front so writing never reallocates and leaves unzeroized copies behind.
    let mut out = Zeroizing::new(String::with_capacity(pem_len(label, der.len())));
    pem_into(&mut out, label, der);
    out
}

fn pem_public(label: &str, der: &[u8]) -> String {
    let mut out = String::with_capacity(pem_len(label, der.len()));
    pem_into(&mut out, label, der);
    out
}

// ---------------------------------------------------------------------------------------------
// Object identifiers (DER content bytes)

mod oid {
    pub(super) const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    pub(super) const EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    pub(super) const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    pub(super) const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
    pub(super) const P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];

    /// A readable name for messages: a well-known name, else the dotted form.
    pub(super) fn name(content: &[u8]) -> String {
        let dotted = dotted(content);
        let known = match dotted.as_str() {
            "1.2.840.113549.1.1.10" => "RSASSA-PSS",
            "1.2.840.10040.4.1" => "DSA",
            "1.3.101.110" => "X25519",
            "1.3.101.111" => "X448",
            "1.3.101.112" => "Ed25519",
            "1.3.101.113" => "Ed448",
            "1.3.132.0.10" => "secp256k1",
            "1.2.840.10045.3.1.1" => "P-192",
            "1.3.132.0.33" => "P-224",
            "1.3.36.3.3.2.8.1.1.7" => "brainpoolP256r1",
            _ => return dotted,
        };
        format!("{known} ({dotted})")
    }

    fn dotted(content: &[u8]) -> String {
        let mut arcs: Vec<u64> = Vec::new();
        let mut value: u64 = 0;
        for &byte in content {
            if value > u64::MAX >> 7 {
                return "<invalid OID>".to_owned();
            }
            value = (value << 7) | u64::from(byte & 0x7f);
            if byte & 0x80 == 0 {
                if arcs.is_empty() {
                    let first = (value / 40).min(2);
                    arcs.push(first);
                    arcs.push(value - first * 40);
                } else {
                    arcs.push(value);
                }
                value = 0;
            }
        }
        if arcs.is_empty() || content.last().is_some_and(|b| b & 0x80 != 0) {
            return "<invalid OID>".to_owned();
        }
        arcs.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(".")
    }
}

// ---------------------------------------------------------------------------------------------
// A minimal DER reader and writer: definite lengths, low tag numbers, nothing else.

mod der {
    use zeroize::Zeroizing;

    use super::KeyError;

    pub(super) const INTEGER: u8 = 0x02;
    pub(super) const BIT_STRING: u8 = 0x03;
    pub(super) const OCTET_STRING: u8 = 0x04;
    pub(super) const NULL: u8 = 0x05;
    pub(super) const OID: u8 = 0x06;
    pub(super) const SEQUENCE: u8 = 0x30;
    pub(super) const CONTEXT_0: u8 = 0xa0;
    pub(super) const CONTEXT_1: u8 = 0xa1;

    /// A DER problem, before we know which structure it was in.
    #[derive(Debug)]
    pub(super) struct Error(&'static str);

    impl Error {
        pub(super) fn within(self, structure: &'static str) -> KeyError {
            KeyError::Der {
                structure,
                reason: self.0,
            }
        }
    }

    pub(super) struct Reader<'a> {
        data: &'a [u8],
    }

    impl<'a> Reader<'a> {
        pub(super) fn new(data: &'a [u8]) -> Self {
            Reader { data }
        }

        pub(super) fn is_empty(&self) -> bool {
            self.data.is_empty()
        }

        pub(super) fn finish(&self) -> Result<(), Error> {
            if self.data.is_empty() {
                Ok(())
            } else {
                Err(Error("trailing data"))
            }
        }

        /// Reads one element of any tag.
        pub(super) fn any(&mut self) -> Result<(u8, &'a [u8]), Error> {
            let (&tag, rest) = self.data.split_first().ok_or(Error("truncated"))?;
            if tag & 0x1f == 0x1f {
                return Err(Error("high tag numbers are not supported"));
            }
            let (&first, rest) = rest.split_first().ok_or(Error("truncated"))?;
            let (len, rest) = if first < 0x80 {
                (usize::from(first), rest)
            } else {
                let count = usize::from(first & 0x7f);
                if count == 0 {
                    return Err(Error("indefinite length is not DER"));
                }
                if count > 4 {
                    return Err(Error("length too large"));
                }
                if rest.len() < count {
                    return Err(Error("truncated"));
                }
                let (len_bytes, rest) = rest.split_at(count);
                if len_bytes[0] == 0 {
                    return Err(Error("non-minimal length"));
                }
                let len = len_bytes
                    .iter()
                    .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
                if len < 0x80 {
                    return Err(Error("non-minimal length"));
                }
                (len, rest)
            };
            if rest.len() < len {
                return Err(Error("truncated"));
            }
            let (content, rest) = rest.split_at(len);
            self.data = rest;
            Ok((tag, content))
        }

        pub(super) fn read(&mut self, tag: u8) -> Result<&'a [u8], Error> {
            match self.any()? {
                (found, content) if found == tag => Ok(content),
                _ => Err(Error("unexpected element")),
            }
        }

        pub(super) fn optional(&mut self, tag: u8) -> Result<Option<&'a [u8]>, Error> {
            if self.data.first() == Some(&tag) {
                self.read(tag).map(Some)
            } else {
                Ok(None)
            }
        }

        pub(super) fn sequence(&mut self) -> Result<Reader<'a>, Error> {
            self.read(SEQUENCE).map(Reader::new)
        }

        /// A BIT STRING holding whole bytes.
        pub(super) fn bit_string(&mut self) -> Result<&'a [u8], Error> {
            match self.read(BIT_STRING)?.split_first() {
                Some((0, bytes)) => Ok(bytes),
                _ => Err(Error("bit string with unused bits")),
            }
        }

        /// A non-negative INTEGER, as its big-endian magnitude without leading zeros.
        pub(super) fn unsigned(&mut self) -> Result<&'a [u8], Error> {
            let content = self.read(INTEGER)?;
            match content {
                [] => Err(Error("empty integer")),
                [first, ..] if first & 0x80 != 0 => Err(Error("negative integer")),
                [0, second, ..] if second & 0x80 == 0 => Err(Error("non-minimal integer")),
                [0, rest @ ..] => Ok(rest),
                _ => Ok(content),
            }
        }

        /// A small non-negative INTEGER such as a version number.
        pub(super) fn small_uint(&mut self) -> Result<u32, Error> {
            let magnitude = self.unsigned()?;
            if magnitude.len() > 4 {
                return Err(Error("integer too large"));
            }
            Ok(magnitude
                .iter()
                .fold(0u32, |acc, &b| (acc << 8) | u32::from(b)))
        }
    }

    fn len_len(len: usize) -> usize {
        match len {
            0..=0x7f => 1,
            0x80..=0xff => 2,
            0x100..=0xffff => 3,
            0x1_0000..=0xff_ffff => 4,
            _ => 5,
        }
    }

    fn element_len(content_len: usize) -> usize {
        1 + len_len(content_len) + content_len
    }

    /// Appends tag, length and content.
    pub(super) fn write(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
        out.push(tag);
        push_len(out, content.len());
        out.extend_from_slice(content);
    }

    fn unsigned_content_len(magnitude: &[u8]) -> (usize, &[u8]) {
        let start = magnitude
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(magnitude.len());
        let trimmed = &magnitude[start..];
        let pad = usize::from(trimmed.first().is_none_or(|b| b & 0x80 != 0));
        (pad + trimmed.len(), trimmed)
    }

    fn write_unsigned(out: &mut Vec<u8>, magnitude: &[u8]) {
        let (len, trimmed) = unsigned_content_len(magnitude);
        out.push(INTEGER);
        push_len(out, len);
        if len > trimmed.len() {
            out.push(0); // keeps the sign bit clear
        }
        out.extend_from_slice(trimmed);
    }

    /// SEQUENCE of non-negative INTEGERs given as big-endian magnitudes (PKCS#1 keys). The
    /// buffer is sized exactly so the secret never gets copied by a reallocation.
    pub(super) fn sequence_of_unsigned(ints: &[&[u8]]) -> Zeroizing<Vec<u8>> {
        let content_len: usize = ints
            .iter()
            .map(|int| element_len(unsigned_content_len(int).0))
            .sum();
        let mut out = Zeroizing::new(Vec::with_capacity(element_len(content_len)));
        out.push(SEQUENCE);
        push_len(&mut out, content_len);
        for int in ints {
            write_unsigned(&mut out, int);
        }
        out
    }

    fn push_len(out: &mut Vec<u8>, len: usize) {
        let count = len_len(len) - 1;
        // Both casts are lossless: len < 0x80 in the short form, and count <= 4.
        if count == 0 {
            out.push(len as u8);
        } else {
            out.push(0x80 | count as u8);
            out.extend_from_slice(&len.to_be_bytes()[std::mem::size_of::<usize>() - count..]);
        }
    }

    /// PKCS#8 v1 PrivateKeyInfo around an inner private key, sized exactly (see above).
    pub(super) fn pkcs8(algorithm_identifier: &[u8], inner: &[u8]) -> Zeroizing<Vec<u8>> {
        let content_len = 3 + algorithm_identifier.len() + element_len(inner.len());
        let mut out = Zeroizing::new(Vec::with_capacity(element_len(content_len)));
        out.push(SEQUENCE);
        push_len(&mut out, content_len);
        out.extend_from_slice(&[INTEGER, 1, 0]);
        out.extend_from_slice(algorithm_identifier);
        out.push(OCTET_STRING);
        push_len(&mut out, inner.len());
        out.extend_from_slice(inner);
        out
    }

    /// SubjectPublicKeyInfo around a public key.
    pub(super) fn spki(algorithm_identifier: &[u8], key: &[u8]) -> Vec<u8> {
        let mut bits = Vec::with_capacity(key.len() + 1);
        bits.push(0);
        bits.extend_from_slice(key);
        let mut content = algorithm_identifier.to_vec();
        write(&mut content, BIT_STRING, &bits);
        let mut out = Vec::new();
        write(&mut out, SEQUENCE, &content);
        out
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Key files made by the `openssl` CLI and JWKs made by Python jwcrypto
    /// (tests/fixtures/keys/make_fixtures.py); none of them comes from this module.
    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");

    fn fixture(name: &str) -> Vec<u8> {
        let path = Path::new(FIXTURES).join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    fn private(name: &str) -> PrivateKey {
        PrivateKey::from_bytes(&fixture(name), None)
            .unwrap_or_else(|e| panic!("parsing {name}: {e}"))
    }

    fn public(name: &str) -> PublicKey {
        PublicKey::from_bytes(&fixture(name)).unwrap_or_else(|e| panic!("parsing {name}: {e}"))
    }

    fn private_err(bytes: &[u8], password: Option<&[u8]>) -> KeyError {
        match PrivateKey::from_bytes(bytes, password) {
            Ok(key) => panic!("expected an error, parsed {key:?}"),
            Err(err) => err,
        }
    }

    fn public_err(bytes: &[u8]) -> KeyError {
        match PublicKey::from_bytes(bytes) {
            Ok(key) => panic!("expected an error, parsed {key:?}"),
            Err(err) => err,
        }
    }

    fn jwk_with(
        name: &str,
        edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
    ) -> Vec<u8> {
        let mut value: serde_json::Value = serde_json::from_slice(&fixture(name)).unwrap();
        edit(value.as_object_mut().unwrap());
        serde_json::to_vec(&value).unwrap()
    }

    #[test]
    fn every_private_key_format_parses_to_the_public_key_openssl_derived() {
        let cases = [
            ("rsa2048.pkcs8.pem", "RSA-2048", "rsa2048.pub.der"),
            ("rsa2048.pkcs1.pem", "RSA-2048", "rsa2048.pub.der"),
            ("rsa2048.pkcs8.der", "RSA-2048", "rsa2048.pub.der"),
            ("rsa2048.pkcs1.der", "RSA-2048", "rsa2048.pub.der"),
            ("rsa2048.priv.jwk.json", "RSA-2048", "rsa2048.pub.der"),
            ("ec-p256.pkcs8.pem", "EC P-256", "ec-p256.pub.der"),
            ("ec-p256.sec1.pem", "EC P-256", "ec-p256.pub.der"),
            ("ec-p256.pkcs8.der", "EC P-256", "ec-p256.pub.der"),
            ("ec-p256.sec1.der", "EC P-256", "ec-p256.pub.der"),
            ("ec-p256.priv.jwk.json", "EC P-256", "ec-p256.pub.der"),
            (
                "ec-p256-other.params-sec1.pem",
                "EC P-256",
                "ec-p256-other.pub.der",
            ),
            (
                "ec-p256-other.priv.jwk.json",
                "EC P-256",
                "ec-p256-other.pub.der",
            ),
            ("ec-p384.pkcs8.pem", "EC P-384", "ec-p384.pub.der"),
            ("ec-p384.sec1.pem", "EC P-384", "ec-p384.pub.der"),
            ("ec-p521.pkcs8.pem", "EC P-521", "ec-p521.pub.der"),
            ("ec-p521.sec1.pem", "EC P-521", "ec-p521.pub.der"),
            ("ec-p521.priv.jwk.json", "EC P-521", "ec-p521.pub.der"),
        ];
        for (file, kind, public_der) in cases {
            let key = private(file);
            assert_eq!(key.kind(), kind, "{file}");
            assert_eq!(key.public_key().kind(), kind, "{file}");
            assert_eq!(
                key.public_key().to_spki_der().unwrap(),
                fixture(public_der),
                "{file}"
            );
        }
    }

    #[test]
    fn every_public_key_format_parses_to_the_same_spki_as_openssl_wrote() {
        let cases = [
            ("rsa2048.pub.pem", "RSA-2048", "rsa2048.pub.der"),
            ("rsa2048.pub.der", "RSA-2048", "rsa2048.pub.der"),
            ("rsa2048.rsapub.pem", "RSA-2048", "rsa2048.pub.der"),
            ("rsa2048.pub.jwk.json", "RSA-2048", "rsa2048.pub.der"),
            (
                "rsa2048.pub.alg-oaep256.jwk.json",
                "RSA-2048",
                "rsa2048.pub.der",
            ),
            ("ec-p256.pub.pem", "EC P-256", "ec-p256.pub.der"),
            ("ec-p256.pub.der", "EC P-256", "ec-p256.pub.der"),
            ("ec-p256.pub.jwk.json", "EC P-256", "ec-p256.pub.der"),
            (
                "ec-p256.pub.alg-a256kw.jwk.json",
                "EC P-256",
                "ec-p256.pub.der",
            ),
            ("ec-p384.pub.pem", "EC P-384", "ec-p384.pub.der"),
            (
                "ec-p384.pub.alg-a192kw.jwk.json",
                "EC P-384",
                "ec-p384.pub.der",
            ),
            ("ec-p521.pub.pem", "EC P-521", "ec-p521.pub.der"),
        ];
        for (file, kind, spki) in cases {
            let key = public(file);
            assert_eq!(key.kind(), kind, "{file}");
            assert_eq!(key.to_spki_der().unwrap(), fixture(spki), "{file}");
        }
    }

    #[test]
    fn a_jwk_public_key_keeps_its_alg_and_kid() {
        let rsa = public("rsa2048.pub.alg-oaep256.jwk.json");
        assert_eq!(rsa.alg(), Some(WrapAlg::RsaOaep256));
        assert_eq!(rsa.kid(), Some("rsa-test-kid"));
        let ec = public("ec-p384.pub.alg-a192kw.jwk.json");
        assert_eq!(ec.alg(), Some(WrapAlg::EcdhEsA192Kw));
        let plain = public("ec-p256.pub.jwk.json");
        assert_eq!(plain.alg(), None);
        assert!(public("ec-p256.pub.pem").kid().is_none());
    }

    #[test]
    fn legacy_encrypted_pem_opens_with_the_right_password() {
        let spki = fixture("rsa2048.pub.der");
        for file in [
            "rsa2048.enc-aes128.pem",
            "rsa2048.enc-aes192.pem",
            "rsa2048.enc-aes256.pem",
        ] {
            let key = PrivateKey::from_bytes(&fixture(file), Some(b"pass1234")).unwrap();
            assert_eq!(key.public_key().to_spki_der().unwrap(), spki, "{file}");
        }
        let ec =
            PrivateKey::from_bytes(&fixture("ec-p256.enc-aes256.pem"), Some(b"pass1234")).unwrap();
        assert_eq!(
            ec.public_key().to_spki_der().unwrap(),
            fixture("ec-p256.pub.der")
        );
    }

    #[test]
    fn legacy_encrypted_pem_with_a_wrong_password_is_wrong_password() {
        for file in [
            "rsa2048.enc-aes128.pem",
            "rsa2048.enc-aes192.pem",
            "rsa2048.enc-aes256.pem",
            "ec-p256.enc-aes256.pem",
        ] {
            for password in [&b"pass1235"[..], b"", b"PASS1234"] {
                let err = private_err(&fixture(file), Some(password));
                assert!(matches!(err, KeyError::WrongPassword), "{file}: {err}");
            }
        }
    }

    #[test]
    fn legacy_encrypted_pem_without_a_password_is_password_required() {
        let err = private_err(&fixture("rsa2048.enc-aes256.pem"), None);
        assert!(matches!(err, KeyError::PasswordRequired), "{err}");
    }

    #[test]
    fn des3_encrypted_pem_is_refused_as_an_unsupported_cipher() {
        let err = private_err(&fixture("rsa2048.enc-des3.pem"), Some(b"pass1234"));
        assert!(
            matches!(&err, KeyError::UnsupportedPemCipher { cipher } if cipher == "DES-EDE3-CBC"),
            "{err}"
        );
    }

    #[test]
    fn encrypted_pkcs8_is_refused_with_a_hint() {
        let pem = fixture("rsa2048.pkcs8-encrypted.pem");
        let err = private_err(&pem, Some(b"pass1234"));
        assert!(matches!(err, KeyError::EncryptedPkcs8), "{err}");
        assert!(err.to_string().contains("openssl pkcs8"));
        let der = &parse_pem(std::str::from_utf8(&pem).unwrap()).unwrap()[0].der;
        assert!(matches!(
            private_err(der, Some(b"pass1234")),
            KeyError::EncryptedPkcs8
        ));
    }

    #[test]
    fn keys_can_be_shared_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<PrivateKey>();
        send_sync::<PublicKey>();
        send_sync::<KeyError>();
    }

    #[test]
    fn a_certificate_is_not_a_key() {
        let err = public_err(&fixture("rsa2048.cert.pem"));
        assert!(matches!(err, KeyError::Certificate), "{err}");
        let err = private_err(&fixture("rsa2048.cert.pem"), None);
        assert!(
            matches!(&err, KeyError::UnsupportedPem { label, .. } if label == "CERTIFICATE"),
            "{err}"
        );
    }

    #[test]
    fn a_public_key_is_refused_where_a_private_key_is_expected_and_back() {
        for file in [
            "rsa2048.pub.pem",
            "rsa2048.rsapub.pem",
            "ec-p256.pub.der",
            "ec-p256.pub.jwk.json",
        ] {
            let err = private_err(&fixture(file), None);
            assert!(
                matches!(err, KeyError::PublicKeyGiven { .. }),
                "{file}: {err}"
            );
        }
        for file in [
            "rsa2048.pkcs8.pem",
            "rsa2048.pkcs1.der",
            "ec-p256.sec1.pem",
            "ec-p256.priv.jwk.json",
        ] {
            let err = public_err(&fixture(file));
            assert!(
                matches!(err, KeyError::PrivateKeyGiven { .. }),
                "{file}: {err}"
            );
        }
    }

    #[test]
    fn unsupported_curves_algorithms_and_sizes_are_named() {
        let err = private_err(&fixture("ec-secp256k1.pkcs8.pem"), None);
        assert!(
            matches!(&err, KeyError::UnsupportedCurve { curve } if curve.contains("secp256k1")),
            "{err}"
        );
        let err = private_err(&fixture("ed25519.pkcs8.pem"), None);
        assert!(
            matches!(&err, KeyError::UnsupportedAlgorithm { name } if name.contains("Ed25519")),
            "{err}"
        );
        let err = private_err(&fixture("rsa1024.pkcs8.pem"), None);
        assert!(
            matches!(err, KeyError::UnsupportedRsaSize { bits: 1024 }),
            "{err}"
        );
        let jwk = jwk_with("ec-p256.pub.jwk.json", |m| {
            m.insert("crv".into(), "P-192".into());
        });
        let err = public_err(&jwk);
        assert!(
            matches!(&err, KeyError::UnsupportedCurve { curve } if curve == "P-192"),
            "{err}"
        );
    }

    #[test]
    fn garbage_empty_and_oversized_input_are_refused() {
        assert!(matches!(
            private_err(b"hello, world", None),
            KeyError::NotAKey { .. }
        ));
        assert!(matches!(
            public_err(b"\x01\x02\x03"),
            KeyError::NotAKey { .. }
        ));
        assert!(matches!(private_err(b"", None), KeyError::Empty));
        assert!(matches!(public_err(b" \n\t"), KeyError::Empty));
        assert!(matches!(
            private_err(b"\x30\x82\xff\xff\x00", None),
            KeyError::Der { .. }
        ));
        let huge = vec![b'A'; MAX_KEY_FILE_LEN + 1];
        assert!(matches!(
            private_err(&huge, None),
            KeyError::TooLarge { .. }
        ));
    }

    #[test]
    fn a_truncated_or_corrupt_pem_is_malformed() {
        let pem = fixture("rsa2048.pkcs8.pem");
        let err = private_err(&pem[..pem.len() / 2], None);
        assert!(
            matches!(&err, KeyError::Pem { reason } if reason.contains("no END")),
            "{err}"
        );

        let text = String::from_utf8(pem.clone()).unwrap();
        let mismatched = text.replace("-----END PRIVATE KEY-----", "-----END PUBLIC KEY-----");
        assert!(matches!(
            private_err(mismatched.as_bytes(), None),
            KeyError::Pem { .. }
        ));

        let mut lines: Vec<&str> = text.lines().collect();
        lines[2] = "****not base64****";
        let corrupt = lines.join("\n");
        assert!(matches!(
            private_err(corrupt.as_bytes(), None),
            KeyError::Pem { .. }
        ));

        // A body that is valid base64 but cut short inside the DER.
        let mut lines: Vec<&str> = text.lines().collect();
        lines.drain(3..lines.len() - 1);
        let short = lines.join("\n");
        assert!(matches!(
            private_err(short.as_bytes(), None),
            KeyError::Der { .. }
        ));
    }

    #[test]
    fn a_truncated_or_padded_der_is_malformed() {
        let der = fixture("rsa2048.pkcs8.der");
        let err = private_err(&der[..der.len() - 10], None);
        assert!(matches!(err, KeyError::Der { .. }), "{err}");
        let mut padded = der.clone();
        padded.push(0);
        assert!(matches!(private_err(&padded, None), KeyError::Der { .. }));
        let spki = fixture("ec-p256.pub.der");
        assert!(matches!(
            public_err(&spki[..spki.len() - 1]),
            KeyError::Der { .. }
        ));
    }

    #[test]
    fn a_pem_with_two_keys_is_refused() {
        let mut both = fixture("rsa2048.pkcs8.pem");
        both.extend_from_slice(&fixture("ec-p256.pkcs8.pem"));
        let err = private_err(&both, None);
        assert!(matches!(err, KeyError::SeveralKeys { count: 2 }), "{err}");
    }

    #[test]
    fn an_unknown_pem_block_is_an_error_not_skipped() {
        let mut text =
            b"-----BEGIN DH PARAMETERS-----\nMAYCAQACAQI=\n-----END DH PARAMETERS-----\n".to_vec();
        text.extend_from_slice(&fixture("ec-p256.pkcs8.pem"));
        let err = private_err(&text, None);
        assert!(
            matches!(&err, KeyError::UnsupportedPem { label, .. } if label == "DH PARAMETERS"),
            "{err}"
        );
    }

    #[test]
    fn jwk_problems_are_reported_precisely() {
        let missing_p = jwk_with("rsa2048.priv.jwk.json", |m| {
            m.remove("p");
        });
        let err = private_err(&missing_p, None);
        assert!(
            matches!(&err, KeyError::Jwk { reason } if reason.contains("`p`")),
            "{err}"
        );

        let short_x = jwk_with("ec-p256.pub.jwk.json", |m| {
            m.insert("x".into(), "AAAA".into());
        });
        assert!(matches!(public_err(&short_x), KeyError::Jwk { reason } if reason.contains("`x`")));

        let padded = jwk_with("ec-p256.pub.jwk.json", |m| {
            let x = m["x"].as_str().unwrap().to_owned();
            m.insert("x".into(), format!("{x}=").into());
        });
        assert!(matches!(public_err(&padded), KeyError::Jwk { .. }));

        let set = format!(
            r#"{{"keys":[{}]}}"#,
            String::from_utf8(fixture("ec-p256.pub.jwk.json")).unwrap()
        );
        assert!(matches!(public_err(set.as_bytes()), KeyError::Jwk { .. }));
        assert!(matches!(
            public_err(br#"{"kty":"oct","k":"AAAA"}"#),
            KeyError::Jwk { .. }
        ));
        assert!(matches!(
            public_err(br#"{"kty":"EC","kty":"EC"}"#),
            KeyError::Jwk { .. }
        ));
        assert!(matches!(public_err(b"{not json"), KeyError::Jwk { .. }));

        let signing = jwk_with("rsa2048.pub.jwk.json", |m| {
            m.insert("alg".into(), "RS256".into());
        });
        let err = public_err(&signing);
        assert!(
            matches!(&err, KeyError::UnsupportedJwkAlg { alg, .. } if alg == "RS256"),
            "{err}"
        );
        let rsa_alg_on_ec = jwk_with("ec-p256.pub.jwk.json", |m| {
            m.insert("alg".into(), "RSA-OAEP".into());
        });
        assert!(matches!(
            public_err(&rsa_alg_on_ec),
            KeyError::UnsupportedJwkAlg { .. }
        ));
    }

    #[test]
    fn an_ec_jwk_whose_d_does_not_match_x_and_y_is_inconsistent() {
        let other: serde_json::Value =
            serde_json::from_slice(&fixture("ec-p256-other.priv.jwk.json")).unwrap();
        let mixed = jwk_with("ec-p256.priv.jwk.json", |m| {
            m.insert("d".into(), other["d"].clone());
        });
        let err = private_err(&mixed, None);
        assert!(matches!(err, KeyError::Inconsistent { .. }), "{err}");
    }

    #[test]
    fn an_ec_jwk_with_a_zero_scalar_is_rejected() {
        let zero = jwk_with("ec-p256.priv.jwk.json", |m| {
            m.insert("d".into(), URL_SAFE_NO_PAD.encode([0u8; 32]).into());
        });
        let err = private_err(&zero, None);
        assert!(matches!(err, KeyError::Rejected { .. }), "{err}");
    }

    #[test]
    fn an_rsa_jwk_with_a_wrong_crt_member_is_rejected() {
        let edited = jwk_with("rsa2048.priv.jwk.json", |m| {
            let mut dq = URL_SAFE_NO_PAD.decode(m["dq"].as_str().unwrap()).unwrap();
            let last = dq.len() - 1;
            dq[last] ^= 1;
            m.insert("dq".into(), URL_SAFE_NO_PAD.encode(dq).into());
        });
        let err = private_err(&edited, None);
        assert!(matches!(err, KeyError::Rejected { .. }), "{err}");
    }

    #[test]
    fn an_ec_public_point_off_the_curve_is_rejected() {
        let off = jwk_with("ec-p256.pub.jwk.json", |m| {
            let mut y = URL_SAFE_NO_PAD.decode(m["y"].as_str().unwrap()).unwrap();
            y[31] ^= 1;
            m.insert("y".into(), URL_SAFE_NO_PAD.encode(y).into());
        });
        assert!(matches!(public_err(&off), KeyError::Rejected { .. }));
    }

    #[test]
    fn debug_output_never_contains_key_material() {
        let jwk: serde_json::Value =
            serde_json::from_slice(&fixture("ec-p256.priv.jwk.json")).unwrap();
        let d = URL_SAFE_NO_PAD.decode(jwk["d"].as_str().unwrap()).unwrap();
        let d_hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
        let keys = [
            private("ec-p256.priv.jwk.json"),
            private("rsa2048.pkcs8.pem"),
        ];
        for key in &keys {
            let debug = format!("{key:?}");
            assert!(debug.contains("<redacted>"), "{debug}");
            assert!(debug.contains(key.kind()), "{debug}");
            assert!(debug.len() < 64, "{debug}");
            assert!(!debug.contains(jwk["d"].as_str().unwrap()) && !debug.contains(&d_hex));
            if let PrivateKey::Ec(inner) = key {
                assert!(format!("{inner:?}").contains("<redacted>"));
            }
        }
        assert_eq!(format!("{:?}", keys[0]), "PrivateKey(EC P-256 <redacted>)");
    }

    #[test]
    fn generated_ec_keys_are_pkcs8_and_spki_that_parse_back_as_a_pair() {
        let (private_pem, public_pem) = generate_ec_p256().unwrap();
        assert!(private_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(public_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        let key = PrivateKey::from_bytes(private_pem.as_bytes(), None).unwrap();
        let public = PublicKey::from_bytes(public_pem.as_bytes()).unwrap();
        assert_eq!(key.kind(), "EC P-256");
        assert_eq!(
            key.public_key().to_spki_der().unwrap(),
            public.to_spki_der().unwrap()
        );
        let (again, _) = generate_ec_p256().unwrap();
        assert_ne!(*again, *private_pem, "two generated keys are equal");
    }

    #[test]
    fn generated_rsa_keys_are_4096_bit_pkcs8_and_spki_that_parse_back_as_a_pair() {
        let (private_pem, public_pem) = generate_rsa4096().unwrap();
        assert!(private_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(public_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        let key = PrivateKey::from_bytes(private_pem.as_bytes(), None).unwrap();
        let public = PublicKey::from_bytes(public_pem.as_bytes()).unwrap();
        assert_eq!(key.kind(), "RSA-4096");
        assert_eq!(public.kind(), "RSA-4096");
        assert_eq!(
            key.public_key().to_spki_der().unwrap(),
            public.to_spki_der().unwrap()
        );
    }

    #[test]
    fn der_integers_are_written_minimally_and_read_back() {
        // 0x00 0x80 needs its zero kept (sign bit); leading zeros otherwise go.
        let der = der::sequence_of_unsigned(&[&[0, 0, 0x80], &[0, 1], &[]]);
        assert_eq!(
            der.as_slice(),
            &[0x30, 0x0a, 0x02, 0x02, 0x00, 0x80, 0x02, 0x01, 0x01, 0x02, 0x01, 0x00]
        );
        let mut outer = der::Reader::new(&der);
        let mut seq = outer.sequence().unwrap();
        assert_eq!(seq.unsigned().unwrap(), &[0x80]);
        assert_eq!(seq.unsigned().unwrap(), &[0x01]);
        assert_eq!(seq.unsigned().unwrap(), &[] as &[u8]);
        assert!(seq.finish().is_ok());
        // Non-minimal and negative integers and lengths are refused.
        assert!(der::Reader::new(&[0x02, 0x02, 0x00, 0x01])
            .unsigned()
            .is_err());
        assert!(der::Reader::new(&[0x02, 0x01, 0x80]).unsigned().is_err());
        assert!(der::Reader::new(&[0x04, 0x81, 0x01, 0x00])
            .read(der::OCTET_STRING)
            .is_err());
        assert!(der::Reader::new(&[0x04, 0x80, 0x00, 0x00])
            .read(der::OCTET_STRING)
            .is_err());
    }
}
