//! The test KBS's cryptography, written from kbs.md alone: RFC 8785 (JCS) canonical JSON and the
//! runtime-data digest (kbs.md §2.2), the resource JWE that trustee emits (kbs.md §2.3 and the
//! appendix §4) and the ES256 EAR token (kbs.md §1.5, appendix §3).
//!
//! Independent of modelcrypt's own JOSE code on purpose: the server and the client under test must
//! not be able to share a bug. Built on aws-lc-rs only.

use std::fmt::Write as _;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, ECDH_P256, ECDH_P521};
use aws_lc_rs::digest::{self, SHA256, SHA384, SHA512};
use aws_lc_rs::key_wrap::{AesKek, KeyWrap, AES_256};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::{
    KeySize, OaepPublicEncryptingKey, Pkcs1PublicEncryptingKey, PrivateDecryptingKey,
    PublicEncryptingKey, OAEP_SHA256_MGF1SHA256,
};
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use kbs_types::TeePubKey;
use serde::Serialize;
use serde_json::Value;

use super::{HashAlg, Tamper};

// ------------------------------------------------------------------------------------------------
// JCS (RFC 8785) and the runtime-data digest
// ------------------------------------------------------------------------------------------------

/// RFC 8785 canonical form of `value`: object members sorted by their UTF-16 code units, no
/// whitespace, strings with the minimal escaping of RFC 8785 §3.2.2.2 (which is exactly what
/// serde_json emits for a string: `\"`, `\\`, `\b \f \n \r \t`, other controls as lowercase
/// `\u00xx`, everything else verbatim).
///
/// Numbers: integers are printed as integers, which is what RFC 8785 (ECMAScript number
/// serialization) gives for every integer up to 2^53. The runtime data hashed by the server
/// contains strings only (kbs.md §2.2), so non-integer numbers never reach this function from the
/// server; they are printed the ECMAScript way only for the simple cases (`1.5`), not for exponent
/// forms.
pub fn jcs(value: &Value) -> String {
    let mut out = String::new();
    write_jcs(value, &mut out);
    out
}

fn write_jcs(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                let _ = write!(out, "{i}");
            } else if let Some(u) = n.as_u64() {
                let _ = write!(out, "{u}");
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.fract() == 0.0 && f.abs() < 1e21 {
                    let _ = write!(out, "{f:.0}");
                } else {
                    let _ = write!(out, "{f}");
                }
            }
        }
        Value::String(s) => write_jcs_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_jcs(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_jcs_string(key, out);
                out.push(':');
                write_jcs(&map[key.as_str()], out);
            }
            out.push('}');
        }
    }
}

fn write_jcs_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The JWK object exactly as trustee re-serializes it from kbs-types' `TeePubKey` before hashing:
/// only the members kbs-types knows (kbs.md §1.4, §2.2), whatever else the client sent.
pub fn tee_pubkey_json(key: &TeePubKey) -> Value {
    match key {
        TeePubKey::EC { crv, alg, x, y } => {
            serde_json::json!({"kty": "EC", "crv": crv, "alg": alg, "x": x, "y": y})
        }
        TeePubKey::RSA { alg, k_mod, k_exp } => {
            serde_json::json!({"kty": "RSA", "alg": alg, "n": k_mod, "e": k_exp})
        }
        TeePubKey::AKP { alg, public_key } => {
            serde_json::json!({"kty": "AKP", "alg": alg, "pub": public_key})
        }
    }
}

/// The primary runtime data of kbs.md §2.2:
/// `{"additional-evidence": <string>, "nonce": N, "tee-pubkey": JWK}`.
pub fn primary_runtime_data(nonce: &str, key: &TeePubKey, additional_evidence: &str) -> Value {
    serde_json::json!({
        "additional-evidence": additional_evidence,
        "nonce": nonce,
        "tee-pubkey": tee_pubkey_json(key),
    })
}

/// The device runtime data of kbs.md §2.2 (used for additional evidence): `{"nonce", "tee-pubkey"}`.
pub fn device_runtime_data(nonce: &str, key: &TeePubKey) -> Value {
    serde_json::json!({"nonce": nonce, "tee-pubkey": tee_pubkey_json(key)})
}

/// H(JCS(runtime_data)), the bytes that must appear in the evidence's report data.
pub fn runtime_digest(alg: HashAlg, runtime_data: &Value) -> Vec<u8> {
    hash(alg, jcs(runtime_data).as_bytes())
}

pub fn hash(alg: HashAlg, bytes: &[u8]) -> Vec<u8> {
    match alg {
        HashAlg::Sha256 => digest::digest(&SHA256, bytes).as_ref().to_vec(),
        HashAlg::Sha384 => digest::digest(&SHA384, bytes).as_ref().to_vec(),
        HashAlg::Sha512 => digest::digest(&SHA512, bytes).as_ref().to_vec(),
    }
}

// ------------------------------------------------------------------------------------------------
// Randomness and encodings
// ------------------------------------------------------------------------------------------------

pub fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // INVARIANT: the system RNG does not fail on Linux once the process is running.
    SystemRandom::new().fill(&mut bytes).expect("system RNG");
    bytes
}

pub fn b64url(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A uuid v4 in its "simple" form (32 lowercase hex digits), as trustee's session ids
/// (kbs.md §1.3).
pub fn session_id() -> String {
    let mut b = random::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    hex(&b)
}

// ------------------------------------------------------------------------------------------------
// Resource JWE (kbs.md §2.3, appendix §4)
// ------------------------------------------------------------------------------------------------

/// The flattened JWE JSON serialization in trustee's member order. There is never an `aad`
/// member.
#[derive(Serialize, Debug, Clone)]
pub struct Jwe {
    pub protected: String,
    pub encrypted_key: String,
    pub iv: String,
    pub ciphertext: String,
    pub tag: String,
}

/// Why a JWE could not be built; trustee answers all of these with 401 `JweError`.
#[derive(Debug)]
pub struct JweFailure(pub String);

const ECDH_ES_A256KW: &str = "ECDH-ES+A256KW";
const RSA_OAEP_256: &str = "RSA-OAEP-256";
const RSA1_5: &str = "RSA1_5";

/// Encrypts `plaintext` to `key` the way trustee's `jwe()` does: a fresh 32-byte CEK and 12-byte
/// IV per call, A256GCM with the `protected` string as AAD, and the CEK wrapped with
/// ECDH-ES+A256KW (P-256, P-521) or RSA-OAEP-256 / RSA1_5. Anything else fails like trustee
/// (`JweError` at resource time, kbs.md §2.1). `tamper` damages the result (see [`Tamper`]).
pub fn encrypt(
    key: &TeePubKey,
    plaintext: &[u8],
    tamper: Option<&Tamper>,
) -> Result<Jwe, JweFailure> {
    let wrong_recipient = matches!(tamper, Some(Tamper::WrongRecipient));
    let cek = random::<32>();
    let (header, encrypted_key) = match key {
        TeePubKey::EC { crv, alg, x, y } => {
            let (curve, len, crv_name) = match (crv.as_str(), alg.as_str()) {
                ("P-256", ECDH_ES_A256KW) => (&ECDH_P256, 32, "P-256"),
                ("P-521", ECDH_ES_A256KW) => (&ECDH_P521, 66, "P-521"),
                (crv, alg) => {
                    return Err(JweFailure(format!(
                        "curve {crv} and algorithm {alg} is not supported"
                    )))
                }
            };
            let x = decode_fixed(x, len, "X")?;
            let y = decode_fixed(y, len, "Y")?;
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            if wrong_recipient {
                point = fresh_ec_public(curve);
            }
            let ephemeral = PrivateKey::generate(curve)
                .map_err(|_| JweFailure("generate ephemeral EC key".into()))?;
            let epk = ephemeral
                .compute_public_key()
                .map_err(|_| JweFailure("compute ephemeral public key".into()))?;
            let epk = epk.as_ref();
            let (epk_x, epk_y) = (&epk[1..1 + len], &epk[1 + len..]);
            let kek = agreement::agree(
                &ephemeral,
                UnparsedPublicKey::new(curve, &point),
                JweFailure("invalid TEE public key".into()),
                |z| Ok(concat_kdf_a256kw(z)),
            )?;
            let mut wrapped = [0u8; 40];
            AesKek::new(&AES_256, &kek)
                .and_then(|kek| kek.wrap(&cek, &mut wrapped).map(|_| ()))
                .map_err(|_| JweFailure("failed to do AES wrapping".into()))?;
            let epk_crv = match tamper {
                Some(Tamper::EpkCurve) => "P-384",
                _ => crv_name,
            };
            let header = format!(
                "{{\"alg\":\"{ECDH_ES_A256KW}\",\"enc\":\"{enc}\",\"epk\":{{\"crv\":\"{epk_crv}\",\
                 \"kty\":\"EC\",\"x\":\"{x}\",\"y\":\"{y}\"}}}}",
                enc = enc_name(tamper),
                x = b64url(epk_x),
                y = b64url(epk_y),
            );
            (header, wrapped.to_vec())
        }
        TeePubKey::RSA { alg, k_mod, k_exp } => {
            if alg != RSA_OAEP_256 && alg != RSA1_5 {
                return Err(JweFailure(format!("algorithm {alg} is not supported")));
            }
            let n = URL_SAFE_NO_PAD
                .decode(k_mod)
                .map_err(|_| JweFailure("base64 decode k_mod failed".into()))?;
            let e = URL_SAFE_NO_PAD
                .decode(k_exp)
                .map_err(|_| JweFailure("base64 decode k_exp failed".into()))?;
            let public = if wrong_recipient {
                fresh_rsa_public(n.len())?
            } else {
                PublicEncryptingKey::from_der(&rsa_spki_der(&n, &e)).map_err(|e| {
                    JweFailure(format!(
                        "Building RSA key from modulus and exponent failed: {e}"
                    ))
                })?
            };
            let mut out = vec![0u8; public.key_size_bytes()];
            let len = if alg == RSA_OAEP_256 {
                OaepPublicEncryptingKey::new(public)
                    .and_then(|k| {
                        k.encrypt(&OAEP_SHA256_MGF1SHA256, &cek, &mut out, None)
                            .map(|c| c.len())
                    })
                    .map_err(|_| JweFailure("RSA encrypt sym key failed".into()))?
            } else {
                Pkcs1PublicEncryptingKey::new(public)
                    .and_then(|k| k.encrypt(&cek, &mut out).map(|c| c.len()))
                    .map_err(|_| JweFailure("RSA encrypt sym key failed".into()))?
            };
            out.truncate(len);
            let header = format!("{{\"alg\":\"{alg}\",\"enc\":\"{}\"}}", enc_name(tamper));
            (header, out)
        }
        TeePubKey::AKP { alg, .. } => {
            return Err(JweFailure(format!(
                "pqc-experimental feature not enabled or algorithm {alg} is not supported"
            )))
        }
    };

    let protected = b64url(&header);
    let iv = random::<12>();
    let mut ciphertext = plaintext.to_vec();
    let sealing = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, &cek).map_err(|_| JweFailure("AES key".into()))?,
    );
    let tag = sealing
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(iv),
            Aad::from(protected.as_bytes()),
            &mut ciphertext,
        )
        .map_err(|_| JweFailure("AES encrypt Resource payload failed".into()))?;
    let mut jwe = Jwe {
        protected,
        encrypted_key: b64url(&encrypted_key),
        iv: b64url(iv),
        ciphertext: b64url(&ciphertext),
        tag: b64url(tag.as_ref()),
    };
    match tamper {
        Some(Tamper::Ciphertext) => {
            if ciphertext.is_empty() {
                ciphertext.push(0);
            } else {
                ciphertext[0] ^= 0x01;
            }
            jwe.ciphertext = b64url(&ciphertext);
        }
        Some(Tamper::Tag) => jwe.tag = b64url(flip_first(tag.as_ref())),
        Some(Tamper::Iv) => jwe.iv = b64url(flip_first(&iv)),
        Some(Tamper::EncryptedKey) => jwe.encrypted_key = b64url(flip_first(&encrypted_key)),
        Some(Tamper::ProtectedHeader) => {
            // The same members, authenticated in trustee's order but sent reordered: only a client
            // that uses the received `protected` string as AAD notices (kbs.md §2.3 "AAD").
            let mut parsed: serde_json::Map<String, Value> =
                serde_json::from_str(&header).map_err(|e| JweFailure(e.to_string()))?;
            let alg = parsed.remove("alg").unwrap_or(Value::Null);
            let mut reordered = String::from("{");
            for (k, v) in parsed.iter() {
                let _ = write!(reordered, "{}:{},", Value::from(k.as_str()), v);
            }
            let _ = write!(reordered, "\"alg\":{alg}}}");
            jwe.protected = b64url(reordered);
        }
        _ => {}
    }
    Ok(jwe)
}

fn enc_name(tamper: Option<&Tamper>) -> &'static str {
    match tamper {
        Some(Tamper::UnsupportedEnc) => "A128GCM",
        _ => "A256GCM",
    }
}

fn flip_first(bytes: &[u8]) -> Vec<u8> {
    let mut v = bytes.to_vec();
    if let Some(b) = v.first_mut() {
        *b ^= 0x01;
    }
    v
}

fn decode_fixed(coordinate: &str, len: usize, name: &str) -> Result<Vec<u8>, JweFailure> {
    let bytes = URL_SAFE_NO_PAD
        .decode(coordinate)
        .map_err(|_| JweFailure(format!("base64 decode {} failed", name.to_lowercase())))?;
    if bytes.len() != len {
        return Err(JweFailure(format!(
            "invalid bytes length of coordinates {name}"
        )));
    }
    Ok(bytes)
}

/// Concat KDF (NIST SP 800-56A, RFC 7518 §4.6.2) for `ECDH-ES+A256KW`: one SHA-256 round,
/// empty PartyUInfo/PartyVInfo, keydatalen 256 (kbs.md §2.3 step 3).
pub fn concat_kdf_a256kw(z: &[u8]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&SHA256);
    ctx.update(&1u32.to_be_bytes());
    ctx.update(z);
    ctx.update(&(ECDH_ES_A256KW.len() as u32).to_be_bytes());
    ctx.update(ECDH_ES_A256KW.as_bytes());
    ctx.update(&0u32.to_be_bytes());
    ctx.update(&0u32.to_be_bytes());
    ctx.update(&256u32.to_be_bytes());
    let mut kek = [0u8; 32];
    kek.copy_from_slice(ctx.finish().as_ref());
    kek
}

fn fresh_ec_public(curve: &'static agreement::Algorithm) -> Vec<u8> {
    // INVARIANT: generating a key on a supported curve only fails if the RNG fails.
    let key = PrivateKey::generate(curve).expect("generate EC key");
    key.compute_public_key()
        .expect("EC public key")
        .as_ref()
        .to_vec()
}

fn fresh_rsa_public(modulus_len: usize) -> Result<PublicEncryptingKey, JweFailure> {
    let size = match modulus_len {
        0..=256 => KeySize::Rsa2048,
        257..=384 => KeySize::Rsa3072,
        385..=512 => KeySize::Rsa4096,
        _ => KeySize::Rsa8192,
    };
    PrivateDecryptingKey::generate(size)
        .map(|k| k.public_key())
        .map_err(|_| JweFailure("generate RSA key".into()))
}

/// X.509 SubjectPublicKeyInfo DER for the RSA key (n, e), the only public-key input
/// aws-lc-rs's encrypting keys take. n and e are unsigned big-endian magnitudes, as in a JWK.
pub fn rsa_spki_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn integer(magnitude: &[u8]) -> Vec<u8> {
        let start = magnitude
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(magnitude.len());
        let mut body = magnitude[start..].to_vec();
        if body.first().is_none_or(|b| b & 0x80 != 0) {
            body.insert(0, 0);
        }
        tlv(0x02, &body)
    }
    const RSA_ENCRYPTION_ALG_ID: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let rsa_public_key = tlv(0x30, &[integer(n), integer(e)].concat());
    let bit_string = tlv(0x03, &[&[0u8][..], &rsa_public_key].concat());
    tlv(0x30, &[RSA_ENCRYPTION_ALG_ID, &bit_string].concat())
}

fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = body.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(bytes.len() - 1);
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(body);
    out
}

// ------------------------------------------------------------------------------------------------
// EAR token (ES256 JWT with the signer's key in the header, kbs.md §1.5, appendix §3)
// ------------------------------------------------------------------------------------------------

/// The attestation-service signer: an ephemeral P-256 key, as trustee's AS makes when no signer is
/// configured.
pub struct TokenSigner {
    key: EcdsaKeyPair,
    header: String,
}

impl TokenSigner {
    pub fn generate() -> TokenSigner {
        // INVARIANT: key generation on P-256 only fails if the RNG fails.
        let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("ES256 key");
        let public = key.public_key().as_ref();
        let (x, y) = (b64url(&public[1..33]), b64url(&public[33..65]));
        let header = format!(
            "{{\"typ\":\"JWT\",\"alg\":\"ES256\",\"jwk\":{{\"alg\":\"ES256\",\"kty\":\"EC\",\
             \"crv\":\"P-256\",\"x\":\"{x}\",\"y\":\"{y}\"}}}}"
        );
        TokenSigner { key, header }
    }

    pub fn sign(&self, claims: &Value) -> String {
        let signing_input = format!("{}.{}", b64url(&self.header), b64url(claims.to_string()));
        // INVARIANT: ECDSA signing with a valid key only fails if the RNG fails.
        let sig = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .expect("ES256 sign");
        format!("{signing_input}.{}", b64url(sig.as_ref()))
    }

    /// Verifies a token the way trustee's KBS does on every resource request (kbs.md §1.5):
    /// signature (against this signer's key, i.e. trustee with `trusted_jwk_sets`), `exp` required
    /// and checked with `leeway_secs` of slack. Returns the claims.
    pub fn verify(&self, token: &str, now: u64, leeway_secs: u64) -> Result<Value, String> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a compact JWS".into());
        };
        let header: Value = URL_SAFE_NO_PAD
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("bad JWT header")?;
        if header["alg"] != "ES256" {
            return Err(format!("unexpected alg {}", header["alg"]));
        }
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| "bad signature encoding")?;
        signature::UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref())
            .verify(format!("{h}.{p}").as_bytes(), &sig)
            .map_err(|_| "InvalidSignature")?;
        let claims: Value = URL_SAFE_NO_PAD
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("bad JWT claims")?;
        let exp = claims["exp"].as_u64().ok_or("missing required claim exp")?;
        if exp.saturating_add(leeway_secs) < now {
            return Err("ExpiredSignature".into());
        }
        Ok(claims)
    }
}

// ------------------------------------------------------------------------------------------------
// HTTP date for the cookie's Expires attribute (IMF-fixdate, as actix's cookie crate writes it)
// ------------------------------------------------------------------------------------------------

pub fn http_date(unix_secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}
