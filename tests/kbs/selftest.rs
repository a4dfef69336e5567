//! Tests of the test KBS itself, against kbs.md's test vector and captured wire messages.
//!
//! The client here is deliberately separate from the server's code: it writes the canonical
//! runtime data as literal JSON text instead of calling `jcs`, and decrypts the JWE with its own
//! ECDH / Concat KDF / AES-KW / RSA-OAEP / AES-GCM steps (kbs.md §2.3), so a bug in `jose.rs` shows
//! up as a failure here rather than being mirrored.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, ECDH_P256, ECDH_P521};
use aws_lc_rs::digest::{digest, SHA256, SHA384, SHA512};
use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::key_wrap::{AesKek, KeyWrap as _, AES_256};
use aws_lc_rs::rsa::{
    KeyPair as RsaKeyPair, KeySize, OaepPrivateDecryptingKey, Pkcs1PrivateDecryptingKey,
    PrivateDecryptingKey, OAEP_SHA256_MGF1SHA256,
};
use aws_lc_rs::signature::KeyPair as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};

use super::{jcs, Endpoint, Fault, HashAlg, KbsConfig, Tamper, TestKbs, ERROR_TYPE_PREFIX};

const RESOURCE: &str = "default/key/1";
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

// ------------------------------------------------------------------------------------------------
// An independent minimal client
// ------------------------------------------------------------------------------------------------

enum KeyKind {
    Ec {
        key: PrivateKey,
        curve: &'static agreement::Algorithm,
        len: usize,
        crv: &'static str,
    },
    Rsa {
        key: PrivateDecryptingKey,
        alg: &'static str,
    },
}

/// The client's ephemeral TEE key (kbs.md §2.1).
struct TeeKey {
    kind: KeyKind,
    /// The JWK as sent, possibly with extra members.
    jwk: Value,
    /// The JWK as trustee re-serializes it, JCS form, written out by hand.
    canonical: String,
}

impl TeeKey {
    fn ec(curve: &'static agreement::Algorithm) -> TeeKey {
        let (len, crv) = if curve == &ECDH_P256 {
            (32, "P-256")
        } else {
            (66, "P-521")
        };
        let key = PrivateKey::generate(curve).unwrap();
        let public = key.compute_public_key().unwrap();
        let public = public.as_ref();
        assert_eq!(public.len(), 1 + 2 * len);
        let x = URL_SAFE_NO_PAD.encode(&public[1..1 + len]);
        let y = URL_SAFE_NO_PAD.encode(&public[1 + len..]);
        let jwk = json!({"kty": "EC", "crv": crv, "alg": "ECDH-ES+A256KW", "x": x, "y": y});
        let canonical =
            format!(r#"{{"alg":"ECDH-ES+A256KW","crv":"{crv}","kty":"EC","x":"{x}","y":"{y}"}}"#);
        TeeKey {
            kind: KeyKind::Ec {
                key,
                curve,
                len,
                crv,
            },
            jwk,
            canonical,
        }
    }

    fn p256() -> TeeKey {
        TeeKey::ec(&ECDH_P256)
    }

    fn rsa(alg: &'static str) -> TeeKey {
        let key = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
        let pkcs8 = key.as_der().unwrap();
        let pair = RsaKeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let n = URL_SAFE_NO_PAD.encode(
            pair.public_key()
                .modulus()
                .big_endian_without_leading_zero(),
        );
        let e = URL_SAFE_NO_PAD.encode(
            pair.public_key()
                .exponent()
                .big_endian_without_leading_zero(),
        );
        let jwk = json!({"kty": "RSA", "alg": alg, "n": n, "e": e});
        let canonical = format!(r#"{{"alg":"{alg}","e":"{e}","kty":"RSA","n":"{n}"}}"#);
        TeeKey {
            kind: KeyKind::Rsa { key, alg },
            jwk,
            canonical,
        }
    }

    /// The canonical primary runtime data of kbs.md §2.2, written out literally.
    fn runtime_data(&self, nonce: &str, additional_evidence: &str) -> String {
        format!(
            r#"{{"additional-evidence":{},"nonce":"{nonce}","tee-pubkey":{}}}"#,
            Value::from(additional_evidence),
            self.canonical
        )
    }

    /// Decrypts a resource answer (kbs.md §2.3), strictly.
    fn decrypt(&self, body: &[u8]) -> Result<Vec<u8>, String> {
        let v: Value = serde_json::from_slice(body).map_err(|e| format!("body: {e}"))?;
        let member = |name: &str| -> Result<Vec<u8>, String> {
            let s = v[name].as_str().ok_or(format!("missing {name}"))?;
            URL_SAFE_NO_PAD
                .decode(s)
                .map_err(|e| format!("{name}: {e}"))
        };
        let protected = v["protected"].as_str().ok_or("missing protected")?;
        let header: Value =
            serde_json::from_slice(&member("protected")?).map_err(|e| format!("header: {e}"))?;
        if header["enc"] != "A256GCM" {
            return Err(format!("unsupported enc {}", header["enc"]));
        }
        let encrypted_key = member("encrypted_key")?;
        let mut cek = [0u8; 32];
        match &self.kind {
            KeyKind::Ec {
                key,
                curve,
                len,
                crv,
            } => {
                if header["alg"] != "ECDH-ES+A256KW" {
                    return Err(format!("unexpected alg {}", header["alg"]));
                }
                let epk = &header["epk"];
                if epk["kty"] != "EC" || epk["crv"] != *crv {
                    return Err(format!("epk {epk} does not match {crv}"));
                }
                let coordinate = |name: &str| -> Result<Vec<u8>, String> {
                    let c = URL_SAFE_NO_PAD
                        .decode(epk[name].as_str().unwrap_or_default())
                        .map_err(|e| format!("epk.{name}: {e}"))?;
                    (c.len() == *len)
                        .then_some(c)
                        .ok_or(format!("epk.{name} length"))
                };
                let point = [vec![4u8], coordinate("x")?, coordinate("y")?].concat();
                let kek =
                    agreement::agree(key, UnparsedPublicKey::new(curve, &point), "ecdh", |z| {
                        let mut otherinfo = vec![0, 0, 0, 1];
                        otherinfo.extend_from_slice(z);
                        otherinfo.extend_from_slice(&[0, 0, 0, 14]);
                        otherinfo.extend_from_slice(b"ECDH-ES+A256KW");
                        otherinfo.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
                        Ok(digest(&SHA256, &otherinfo).as_ref().to_vec())
                    })?;
                let unwrapped = AesKek::new(&AES_256, &kek)
                    .and_then(|k| k.unwrap(&encrypted_key, &mut cek).map(|c| c.len()))
                    .map_err(|_| "AES-KW unwrap failed")?;
                if unwrapped != 32 {
                    return Err("CEK is not 32 bytes".into());
                }
            }
            KeyKind::Rsa { key, alg } => {
                if header["alg"] != *alg {
                    return Err(format!("unexpected alg {}", header["alg"]));
                }
                let mut out = vec![0u8; key.key_size_bytes()];
                let n = if *alg == "RSA-OAEP-256" {
                    OaepPrivateDecryptingKey::new(key.clone())
                        .and_then(|k| {
                            k.decrypt(&OAEP_SHA256_MGF1SHA256, &encrypted_key, &mut out, None)
                                .map(|p| p.len())
                        })
                        .map_err(|_| "RSA-OAEP decrypt failed")?
                } else {
                    Pkcs1PrivateDecryptingKey::new(key.clone())
                        .and_then(|k| k.decrypt(&encrypted_key, &mut out).map(|p| p.len()))
                        .map_err(|_| "RSA1_5 decrypt failed")?
                };
                if n != 32 {
                    return Err("CEK is not 32 bytes".into());
                }
                cek.copy_from_slice(&out[..32]);
            }
        }
        let iv: [u8; 12] = member("iv")?.try_into().map_err(|_| "iv is not 12 bytes")?;
        let mut in_out = [member("ciphertext")?, member("tag")?].concat();
        let opening = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &cek).unwrap());
        let plain = opening
            .open_in_place(
                Nonce::assume_unique_for_key(iv),
                Aad::from(protected.as_bytes()),
                &mut in_out,
            )
            .map_err(|_| "A256GCM open failed")?;
        Ok(plain.to_vec())
    }
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }

    /// Asserts a trustee error answer: status, exact body, no Content-Type.
    fn assert_error(&self, status: u16, kind: &str, detail: &str) {
        let expected = format!(r#"{{"type":"{ERROR_TYPE_PREFIX}{kind}","detail":"{detail}"}}"#);
        assert_eq!((self.status, self.text()), (status, expected));
        assert_eq!(
            self.header("content-type"),
            None,
            "error bodies have no Content-Type"
        );
    }
}

/// Carries the session cookie by hand (kbs.md §9.1).
struct Client {
    http: reqwest::Client,
    base: String,
    session: Option<String>,
}

impl Client {
    fn new(kbs: &TestKbs) -> Client {
        Client {
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            base: kbs.url(),
            session: None,
        }
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> Answer {
        let req = match &self.session {
            Some(id) => req.header("cookie", format!("kbs-session-id={id}")),
            None => req,
        };
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        if let Some(cookie) = headers.get("set-cookie") {
            let cookie = cookie.to_str().unwrap();
            let id = cookie
                .strip_prefix("kbs-session-id=")
                .unwrap()
                .split(';')
                .next()
                .unwrap();
            self.session = Some(id.to_string());
        }
        let body = resp.bytes().await.unwrap().to_vec();
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn post(&mut self, path: &str, body: impl Into<String>) -> Answer {
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.into());
        self.send(req).await
    }

    async fn get(&mut self, path: &str) -> Answer {
        let req = self.http.get(format!("{}{path}", self.base));
        self.send(req).await
    }

    async fn get_bearer(&mut self, path: &str, token: &str) -> Answer {
        let req = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token);
        self.send(req).await
    }

    /// POST /auth for the sample TEE; returns the challenge nonce.
    async fn auth(&mut self) -> String {
        let a = self.post("/kbs/v0/auth", r#"{"version":"0.4.0","tee":"sample","extra-params":{"supported-hash-algorithms":["sha256","sha384","sha512","sm3"]}}"#).await;
        assert_eq!(a.status, 200, "{}", a.text());
        a.json()["nonce"].as_str().unwrap().to_string()
    }

    async fn attest_with(&mut self, key: &TeeKey, nonce: &str, report_data: &[u8]) -> Answer {
        let body = attestation(nonce, &key.jwk, &STANDARD.encode(report_data), "");
        self.post("/kbs/v0/attest", body).await
    }

    /// auth + attest with correct sample evidence; returns the token.
    async fn rcar(&mut self, key: &TeeKey) -> String {
        let nonce = self.auth().await;
        let digest = digest(&SHA384, key.runtime_data(&nonce, "").as_bytes());
        let a = self.attest_with(key, &nonce, digest.as_ref()).await;
        assert_eq!(a.status, 200, "{}", a.text());
        a.json()["token"].as_str().unwrap().to_string()
    }
}

fn attestation(nonce: &str, jwk: &Value, report_data: &str, additional: &str) -> String {
    json!({
        "init-data": null,
        "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
        "tee-evidence": {
            "primary_evidence": {"report_data": report_data, "svn": "1"},
            "additional_evidence": additional
        }
    })
    .to_string()
}

fn resource_path() -> String {
    format!("/kbs/v0/resource/{RESOURCE}")
}

fn kbs() -> TestKbs {
    TestKbs::start(KbsConfig::default().resource(RESOURCE, SECRET))
}

fn b64url_json(s: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(s).unwrap()).unwrap()
}

// ------------------------------------------------------------------------------------------------
// kbs.md §2.2 test vector and JCS
// ------------------------------------------------------------------------------------------------

#[test]
fn report_data_test_vector_from_kbs_md() {
    let key = kbs_types::TeePubKey::EC {
        crv: "P-256".into(),
        alg: "ECDH-ES+A256KW".into(),
        x: "XXXX".into(),
        y: "YYYY".into(),
    };
    let runtime_data = super::jose::primary_runtime_data("bm9uY2U=", &key, "");
    assert_eq!(
        jcs(&runtime_data),
        r#"{"additional-evidence":"","nonce":"bm9uY2U=","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"XXXX","y":"YYYY"}}"#
    );
    let digest = HashAlg::Sha384.runtime_digest(&runtime_data);
    assert_eq!(
        super::jose::hex(&digest),
        "6be3a9463afee37cc97c511f3697eefe9fcd9dbaab431c081b134e5374a173ccb4ca98aaaf0b9d0d5d3831021237da4c"
    );
    assert_eq!(
        STANDARD.encode(&digest),
        "a+OpRjr+43zJfFEfNpfu/p/NnbqrQxwIGxNOU3Shc8y0ypiqrwudDV04MQISN9pM"
    );
}

#[test]
fn jcs_sorts_members_by_utf16_code_units_and_escapes_minimally() {
    // RFC 8785 §3.2.3's sorting example: U+1F600 (surrogates D83D DE00) sorts before U+FB33.
    let value: Value = serde_json::from_str(
        r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#,
    )
    .unwrap();
    assert_eq!(
        jcs(&value),
        "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\
         \"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\
         \"\u{1f600}\":\"Emoji: Grinning Face\",\
         \"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}"
    );
    assert_eq!(
        jcs(&json!({"b": [1, true, null, "a\"\\\u{1}\u{1f}\n/é"], "a": {}})),
        r#"{"a":{},"b":[1,true,null,"a\"\\\u0001\u001f\n/é"]}"#
    );
}

// ------------------------------------------------------------------------------------------------
// The happy paths, checked against the appendix's captured shapes
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn p256_cookie_flow_matches_the_captured_messages() {
    let kbs = kbs();
    let key = TeeKey::p256();
    let mut c = Client::new(&kbs);

    // Appendix §2.
    let a = c
        .post(
            "/kbs/v0/auth",
            r#"{"version":"0.4.0","tee":"sample","extra-params":{}}"#,
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.header("content-type").as_deref(),
        Some("application/json")
    );
    let challenge = a.json();
    let nonce = challenge["nonce"].as_str().unwrap().to_string();
    assert_eq!(
        a.text(),
        format!(r#"{{"nonce":"{nonce}","extra-params":""}}"#)
    );
    assert_eq!(nonce.len(), 44);
    assert_eq!(STANDARD.decode(&nonce).unwrap().len(), 32);
    let cookie = a.header("set-cookie").unwrap();
    let (id, expires) = cookie.split_once("; Expires=").expect(&cookie);
    let id = id.strip_prefix("kbs-session-id=").unwrap();
    assert!(
        id.len() == 32
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    assert!(
        expires.ends_with(" GMT") && expires.len() == 29,
        "{expires}"
    );

    // Appendix §3.
    let digest = digest(&SHA384, key.runtime_data(&nonce, "").as_bytes());
    let a = c.attest_with(&key, &nonce, digest.as_ref()).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        a.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        a.header("set-cookie").as_deref(),
        Some(cookie.as_str()),
        "same cookie, same expiry"
    );
    let token = a.json()["token"].as_str().unwrap().to_string();
    assert_eq!(a.text(), format!(r#"{{"token":"{token}"}}"#));
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header = b64url_json(parts[0]);
    assert_eq!(
        (&header["typ"], &header["alg"]),
        (&json!("JWT"), &json!("ES256"))
    );
    assert_eq!(header["jwk"]["kty"], "EC");
    assert_eq!(header["jwk"]["crv"], "P-256");
    assert_eq!(URL_SAFE_NO_PAD.decode(parts[2]).unwrap().len(), 64);
    // The signature verifies with the key in the header.
    let jwk_point = [
        vec![4u8],
        URL_SAFE_NO_PAD
            .decode(header["jwk"]["x"].as_str().unwrap())
            .unwrap(),
        URL_SAFE_NO_PAD
            .decode(header["jwk"]["y"].as_str().unwrap())
            .unwrap(),
    ]
    .concat();
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
        &jwk_point,
    )
    .verify(
        format!("{}.{}", parts[0], parts[1]).as_bytes(),
        &URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
    )
    .expect("ES256 signature");
    let claims = b64url_json(parts[1]);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        300
    );
    assert_eq!(claims["iss"], "CoCo-Attestation-Service");
    assert_eq!(
        claims["eat_profile"],
        "tag:github.com,2024:confidential-containers/Trustee"
    );
    let cpu0 = &claims["submods"]["cpu0"];
    assert_eq!(cpu0["ear.status"], "contraindicated");
    let annotated = &cpu0["ear.veraison.annotated-evidence"];
    assert_eq!(annotated["report_data"], STANDARD.encode(digest.as_ref()));
    assert_eq!(annotated["runtime_data_claims"]["nonce"], nonce);
    assert_eq!(annotated["runtime_data_claims"]["additional-evidence"], "");
    assert_eq!(annotated["runtime_data_claims"]["tee-pubkey"], key.jwk);
    assert_eq!(
        annotated["sample"],
        json!({"debug": false, "launch_digest": "abcde",
               "platform_version": {"major": 1, "minor": 4}, "svn": "1"})
    );

    // Appendix §4.
    let a = c.get(&resource_path()).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        a.header("content-type").as_deref(),
        Some("application/json")
    );
    let text = a.text();
    let order: Vec<usize> = [
        "\"protected\"",
        "\"encrypted_key\"",
        "\"iv\"",
        "\"ciphertext\"",
        "\"tag\"",
    ]
    .iter()
    .map(|m| {
        text.find(m)
            .unwrap_or_else(|| panic!("{m} missing in {text}"))
    })
    .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "member order: {text}"
    );
    let jwe = a.json();
    assert_eq!(jwe.as_object().unwrap().len(), 5, "no aad member: {text}");
    let protected = jwe["protected"].as_str().unwrap();
    assert_eq!(protected.len(), 231);
    let decoded = String::from_utf8(URL_SAFE_NO_PAD.decode(protected).unwrap()).unwrap();
    let epk = &b64url_json(protected)["epk"];
    assert_eq!(
        decoded,
        format!(
            r#"{{"alg":"ECDH-ES+A256KW","enc":"A256GCM","epk":{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}}}"#,
            epk["x"].as_str().unwrap(),
            epk["y"].as_str().unwrap()
        )
    );
    let len = |m: &str| {
        URL_SAFE_NO_PAD
            .decode(jwe[m].as_str().unwrap())
            .unwrap()
            .len()
    };
    assert_eq!(
        (
            len("encrypted_key"),
            len("iv"),
            len("ciphertext"),
            len("tag")
        ),
        (40, 12, SECRET.len(), 16)
    );
    assert_eq!(key.decrypt(&a.body).unwrap(), SECRET);

    // A second GET: a fresh JWE, no re-attestation.
    let again = c.get(&resource_path()).await;
    assert_eq!(key.decrypt(&again.body).unwrap(), SECRET);
    assert_ne!(again.json()["protected"], jwe["protected"]);
    assert_eq!(
        kbs.summary(),
        [
            "POST /kbs/v0/auth 200",
            "POST /kbs/v0/attest 200",
            "GET /kbs/v0/resource/default/key/1 200",
            "GET /kbs/v0/resource/default/key/1 200"
        ]
    );
}

#[tokio::test]
async fn rsa_oaep_256_flow_matches_the_captured_messages() {
    let kbs = kbs();
    let key = TeeKey::rsa("RSA-OAEP-256");
    let mut c = Client::new(&kbs);
    c.rcar(&key).await;
    let a = c.get(&resource_path()).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let jwe = a.json();
    let protected = jwe["protected"].as_str().unwrap();
    assert_eq!(
        URL_SAFE_NO_PAD.decode(protected).unwrap(),
        br#"{"alg":"RSA-OAEP-256","enc":"A256GCM"}"#
    );
    assert_eq!(
        URL_SAFE_NO_PAD
            .decode(jwe["encrypted_key"].as_str().unwrap())
            .unwrap()
            .len(),
        256
    );
    assert_eq!(key.decrypt(&a.body).unwrap(), SECRET);
}

#[tokio::test]
async fn rsa1_5_and_p521_keys_are_served_too() {
    let kbs = kbs();
    for key in [TeeKey::rsa("RSA1_5"), TeeKey::ec(&ECDH_P521)] {
        let mut c = Client::new(&kbs);
        c.rcar(&key).await;
        let a = c.get(&resource_path()).await;
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(key.decrypt(&a.body).unwrap(), SECRET);
    }
}

#[tokio::test]
async fn bearer_token_alone_fetches_the_resource() {
    let kbs = kbs();
    let key = TeeKey::p256();
    let token = Client::new(&kbs).rcar(&key).await;
    let mut passport = Client::new(&kbs);
    let a = passport.get_bearer(&resource_path(), &token).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(key.decrypt(&a.body).unwrap(), SECRET);
    assert_eq!(kbs.requests().last().unwrap().header("cookie"), None);
}

#[tokio::test]
async fn attest_on_an_attested_session_returns_the_stored_token() {
    let kbs = kbs();
    let key = TeeKey::p256();
    let mut c = Client::new(&kbs);
    let token = c.rcar(&key).await;
    // Garbage evidence is not even looked at once the session is attested (kbs.md §1.4 step 4).
    let a = c.attest_with(&key, "other nonce", b"junk").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["token"], token);
}

#[tokio::test]
async fn selected_hash_algorithm_is_announced_and_enforced() {
    let kbs = TestKbs::start(KbsConfig {
        selected_hash_algorithm: Some(HashAlg::Sha512),
        ..KbsConfig::default().resource(RESOURCE, SECRET)
    });
    let key = TeeKey::p256();
    let mut c = Client::new(&kbs);
    let a = c
        .post(
            "/kbs/v0/auth",
            r#"{"version":"0.4.0","tee":"sample","extra-params":{}}"#,
        )
        .await;
    assert_eq!(
        a.json()["extra-params"],
        json!({"selected-hash-algorithm": "sha512"})
    );
    let nonce = a.json()["nonce"].as_str().unwrap().to_string();
    // SHA-384 is refused now ...
    let sha384 = digest(&SHA384, key.runtime_data(&nonce, "").as_bytes());
    let a = c.attest_with(&key, &nonce, sha384.as_ref()).await;
    a.assert_error(
        401,
        "AttestationError",
        "Attestation error: RCAR handshake Attest failed",
    );
    // ... and SHA-512 (64 bytes, no padding question for sample) accepted.
    let sha512 = digest(&SHA512, key.runtime_data(&nonce, "").as_bytes());
    let a = c.attest_with(&key, &nonce, sha512.as_ref()).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let a = c.get(&resource_path()).await;
    assert_eq!(key.decrypt(&a.body).unwrap(), SECRET);
}

#[tokio::test]
async fn sampledevice_additional_evidence_is_bound_to_nonce_and_key() {
    let kbs = kbs();
    let key = TeeKey::p256();
    let mut c = Client::new(&kbs);
    let nonce = c.auth().await;
    let device_data = format!(r#"{{"nonce":"{nonce}","tee-pubkey":{}}}"#, key.canonical);
    let device_digest = STANDARD.encode(digest(&SHA384, device_data.as_bytes()));
    let additional =
        json!({"sampledevice": {"svn": "2", "report_data": device_digest}}).to_string();
    let primary = digest(&SHA384, key.runtime_data(&nonce, &additional).as_bytes());
    let body = attestation(&nonce, &key.jwk, &STANDARD.encode(primary), &additional);
    let a = c.post("/kbs/v0/attest", body).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let claims = b64url_json(
        a.json()["token"]
            .as_str()
            .unwrap()
            .split('.')
            .nth(1)
            .unwrap(),
    );
    let annotated = &claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"];
    assert_eq!(annotated["sampledevice"]["svn"], "2");
}

// ------------------------------------------------------------------------------------------------
// Errors: appendix §1, §6 and kbs.md §1.7
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn resource_get_without_session_is_token_not_found() {
    let kbs = kbs();
    let mut c = Client::new(&kbs);
    c.get(&resource_path())
        .await
        .assert_error(401, "TokenNotFound", "Attestation Token not found");
    // An unknown cookie, and a session that was only authed, are no better.
    c.session = Some("0123456789abcdef0123456789abcdef".into());
    c.get(&resource_path())
        .await
        .assert_error(401, "TokenNotFound", "Attestation Token not found");
    c.session = None;
    c.auth().await;
    c.get(&resource_path())
        .await
        .assert_error(401, "TokenNotFound", "Attestation Token not found");
    assert_eq!(
        kbs.requests().last().unwrap().error_type.as_deref(),
        Some("TokenNotFound")
    );
}

#[tokio::test]
async fn wrong_protocol_versions_are_rejected_like_trustee() {
    let kbs = kbs();
    let mut c = Client::new(&kbs);
    let auth = |v: &str| format!(r#"{{"version":"{v}","tee":"sample","extra-params":{{}}}}"#);
    c.post("/kbs/v0/auth", auth("0.1.1")).await.assert_error(
        401,
        "AttestationError",
        "Attestation error: RCAR handshake Auth failed: KBS Client Protocol Version Mismatch: \
         expect =0.4.0 while the request is 0.1.1",
    );
    for v in ["0.4.1", "0.4.0-rc.1", "1.0.0"] {
        let a = c.post("/kbs/v0/auth", auth(v)).await;
        a.assert_error(
            401,
            "AttestationError",
            &format!(
                "Attestation error: RCAR handshake Auth failed: KBS Client Protocol Version \
                 Mismatch: expect =0.4.0 while the request is {v}"
            ),
        );
    }
    assert_eq!(
        c.post("/kbs/v0/auth", auth("0.4.0+build.7")).await.status,
        200
    );
    c.post("/kbs/v0/auth", auth("0.4")).await.assert_error(
        401,
        "AttestationError",
        "Attestation error: RCAR handshake Auth failed: failed to parse KBS version",
    );
    // extra-params is required; an unknown TEE is a serde error too.
    for body in [
        r#"{"version":"0.4.0","tee":"sample"}"#,
        r#"{"version":"0.4.0","tee":"nope","extra-params":{}}"#,
    ] {
        c.post("/kbs/v0/auth", body).await.assert_error(
            401,
            "AttestationError",
            "Attestation error: RCAR handshake Auth failed: deserialize Request",
        );
    }
    // A server of another release refuses today's client.
    let old = TestKbs::start(KbsConfig {
        protocol_version: "0.3.0".into(),
        ..Default::default()
    });
    let mut c = Client::new(&old);
    c.post("/kbs/v0/auth", auth("0.4.0")).await.assert_error(
        401,
        "AttestationError",
        "Attestation error: RCAR handshake Auth failed: KBS Client Protocol Version Mismatch: \
         expect =0.3.0 while the request is 0.4.0",
    );
}

#[tokio::test]
async fn attest_failures_are_one_bare_401_with_the_cause_only_logged() {
    let kbs = kbs();
    let key = TeeKey::p256();
    let bare = |a: Answer| {
        a.assert_error(
            401,
            "AttestationError",
            "Attestation error: RCAR handshake Attest failed",
        )
    };
    let reason = |kbs: &TestKbs| kbs.requests().last().unwrap().reason.clone().unwrap();

    // No cookie (appendix §6).
    let mut c = Client::new(&kbs);
    bare(c.attest_with(&key, "n", b"x").await);
    assert_eq!(reason(&kbs), "cookie not found");

    // Wrong report_data (appendix §6).
    let nonce = c.auth().await;
    bare(c.attest_with(&key, &nonce, &[0u8; 48]).await);
    assert!(
        reason(&kbs).starts_with("verify TEE evidence failed: REPORT_DATA"),
        "{}",
        reason(&kbs)
    );

    // report_data padded to 64 bytes, as TDX/SNP would need, is wrong for sample (kbs.md §3).
    let mut padded = digest(&SHA384, key.runtime_data(&nonce, "").as_bytes())
        .as_ref()
        .to_vec();
    padded.resize(64, 0);
    bare(c.attest_with(&key, &nonce, &padded).await);

    // Extra JWK members change the server-side hash (kbs.md §1.4, §8.7).
    let mut with_kid = TeeKey::p256();
    with_kid.jwk["kid"] = json!("k1");
    let sent = format!(
        r#"{{"additional-evidence":"","nonce":"{nonce}","tee-pubkey":{}}}"#,
        jcs(&with_kid.jwk)
    );
    let body = attestation(
        &nonce,
        &with_kid.jwk,
        &STANDARD.encode(digest(&SHA384, sent.as_bytes())),
        "",
    );
    bare(c.post("/kbs/v0/attest", body).await);

    // Nonce mismatch.
    let digest_other = digest(&SHA384, key.runtime_data("b3RoZXI=", "").as_bytes());
    bare(c.attest_with(&key, "b3RoZXI=", digest_other.as_ref()).await);
    assert!(
        reason(&kbs).starts_with("the nonce in the handshake session"),
        "{}",
        reason(&kbs)
    );

    // Malformed Attestation: additional_evidence missing.
    let body = json!({"runtime-data": {"nonce": nonce, "tee-pubkey": key.jwk},
                      "tee-evidence": {"primary_evidence": {"svn": "1"}}});
    bare(c.post("/kbs/v0/attest", body.to_string()).await);
    assert!(
        reason(&kbs).starts_with("deserialize Attestation"),
        "{}",
        reason(&kbs)
    );

    // init-data in another format than toml.
    let good = STANDARD.encode(digest(&SHA384, key.runtime_data(&nonce, "").as_bytes()));
    let mut body: Value = serde_json::from_str(&attestation(&nonce, &key.jwk, &good, "")).unwrap();
    body["init-data"] = json!({"format": "json", "body": "{}"});
    bare(c.post("/kbs/v0/attest", body.to_string()).await);
    assert!(reason(&kbs).contains("Unsupported initdata format"));

    // A TEE the test KBS cannot verify.
    let mut t = Client::new(&kbs);
    let a = t
        .post(
            "/kbs/v0/auth",
            r#"{"version":"0.4.0","tee":"tdx","extra-params":{}}"#,
        )
        .await;
    let tdx_nonce = a.json()["nonce"].as_str().unwrap().to_string();
    let d = digest(&SHA384, key.runtime_data(&tdx_nonce, "").as_bytes());
    bare(t.attest_with(&key, &tdx_nonce, d.as_ref()).await);

    // The session survives failed attempts: the right evidence still works.
    bare(c.attest_with(&key, &nonce, &[1u8; 48]).await);
    let a = c
        .attest_with(&key, &nonce, &STANDARD.decode(good).unwrap())
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
}

#[tokio::test]
async fn missing_or_malformed_resources_are_401_plugin_internal_error() {
    let kbs = kbs();
    let key = TeeKey::p256();
    let mut c = Client::new(&kbs);
    c.rcar(&key).await;
    for path in [
        "default/key/2",
        "default/key",
        "default/key/1/2",
        "default/.key/1",
        "a//b",
    ] {
        c.get(&format!("/kbs/v0/resource/{path}"))
            .await
            .assert_error(401, "PluginInternalError", "Plugin internal error");
    }
    kbs.put_resource("default/key/2", b"two".to_vec());
    let a = c.get("/kbs/v0/resource/default/key/2").await;
    assert_eq!(key.decrypt(&a.body).unwrap(), b"two");
    kbs.remove_resource("default/key/2");
    c.get("/kbs/v0/resource/default/key/2").await.assert_error(
        401,
        "PluginInternalError",
        "Plugin internal error",
    );
}

#[tokio::test]
async fn policy_deny_is_401_and_can_be_toggled() {
    let kbs = TestKbs::start(KbsConfig {
        deny_all: true,
        ..kbs_config()
    });
    let key = TeeKey::p256();
    let mut c = Client::new(&kbs);
    c.rcar(&key).await;
    c.get(&resource_path())
        .await
        .assert_error(401, "PolicyDeny", "Access denied by policy");
    // The policy is checked before the resource exists (kbs.md §1.6).
    c.get("/kbs/v0/resource/no/such/thing").await.assert_error(
        401,
        "PolicyDeny",
        "Access denied by policy",
    );
    kbs.set_deny(false);
    assert_eq!(
        key.decrypt(&c.get(&resource_path()).await.body).unwrap(),
        SECRET
    );
    kbs.set_deny(true);
    c.get(&resource_path())
        .await
        .assert_error(401, "PolicyDeny", "Access denied by policy");

    let strict = TestKbs::start(KbsConfig {
        deny_all: true,
        policy_deny_status: 403,
        ..kbs_config()
    });
    let mut c = Client::new(&strict);
    c.rcar(&key).await;
    c.get(&resource_path())
        .await
        .assert_error(403, "PolicyDeny", "Access denied by policy");
}

fn kbs_config() -> KbsConfig {
    KbsConfig::default().resource(RESOURCE, SECRET)
}

#[tokio::test]
async fn an_expired_session_means_token_not_found_and_attest_fails() {
    let kbs = TestKbs::start(KbsConfig {
        session_ttl: Duration::from_secs(2),
        ..kbs_config()
    });
    let key = TeeKey::p256();
    let mut c = Client::new(&kbs);
    let token = c.rcar(&key).await;
    assert_eq!(c.get(&resource_path()).await.status, 200);
    // The server's clock moves, not the test's: no sleeping.
    kbs.advance_clock(Duration::from_secs(3));
    c.get(&resource_path())
        .await
        .assert_error(401, "TokenNotFound", "Attestation Token not found");
    // Re-posting /attest on the expired session fails (kbs.md §8.2) ...
    let a = c.attest_with(&key, "n", b"x").await;
    a.assert_error(
        401,
        "AttestationError",
        "Attestation error: RCAR handshake Attest failed",
    );
    assert_eq!(
        kbs.requests().last().unwrap().reason.as_deref(),
        Some("session expired.")
    );
    // ... while the token (5 min) still works as a Bearer.
    assert_eq!(c.get_bearer(&resource_path(), &token).await.status, 200);

    // expire_sessions() does the same without waiting.
    let mut c = Client::new(&kbs);
    c.rcar(&key).await;
    kbs.expire_sessions();
    c.get(&resource_path())
        .await
        .assert_error(401, "TokenNotFound", "Attestation Token not found");
}

#[tokio::test]
async fn an_expired_token_is_a_token_verifier_error_after_the_leeway() {
    let kbs = TestKbs::start(KbsConfig {
        token_ttl: Duration::from_secs(10),
        ..kbs_config()
    });
    let key = TeeKey::p256();
    let mut c = Client::new(&kbs);
    let token = c.rcar(&key).await;
    kbs.advance_clock(Duration::from_secs(10 + 50));
    assert_eq!(
        c.get_bearer(&resource_path(), &token).await.status,
        200,
        "inside the 60 s leeway"
    );
    kbs.advance_clock(Duration::from_secs(20));
    let mut passport = Client::new(&kbs);
    passport
        .get_bearer(&resource_path(), &token)
        .await
        .assert_error(401, "TokenVerifierError", "Token Verifier error");
    // A forged signature too.
    let mut forged = token.clone();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    passport
        .get_bearer(&resource_path(), &forged)
        .await
        .assert_error(401, "TokenVerifierError", "Token Verifier error");
    // The session (5 min) outlived the clock jump? No: 80 s < 300 s, so the cookie path still
    // carries the expired token and fails the same way (the token is verified on every GET).
    c.get(&resource_path())
        .await
        .assert_error(401, "TokenVerifierError", "Token Verifier error");
}

#[tokio::test]
async fn unknown_plugins_and_get_on_auth_are_404_plugin_not_found() {
    let kbs = TestKbs::start(KbsConfig {
        resource_plugin: false,
        ..Default::default()
    });
    let mut c = Client::new(&kbs);
    c.get("/kbs/v0/auth")
        .await
        .assert_error(404, "PluginNotFound", "Plugin auth not found");
    c.get("/kbs/v0/nope/x")
        .await
        .assert_error(404, "PluginNotFound", "Plugin nope not found");
    c.get(&resource_path())
        .await
        .assert_error(404, "PluginNotFound", "Plugin resource not found");
    let a = c.get("/elsewhere").await;
    assert_eq!((a.status, a.body.len()), (404, 0));
    assert_eq!(c.get("/healthz").await.status, 200);
    let a = c
        .send(c.http.patch(format!("{}/kbs/v0/auth", kbs.url())))
        .await;
    assert_eq!(a.status, 405);
}

#[tokio::test]
async fn admin_calls_are_refused_as_in_the_capture() {
    let kbs = kbs();
    let mut c = Client::new(&kbs);
    let a = c.post(&resource_path(), "raw bytes").await;
    a.assert_error(
        401,
        "AdminAuthInitialization",
        "failed to initialize [admin] configuration: Failed to parse HTTP Auth Bearer header",
    );
    assert_eq!(c.post("/kbs/v0/resource-policy", "{}").await.status, 401);
}

#[tokio::test]
async fn unsupported_tee_keys_fail_at_resource_time_with_jwe_error() {
    let kbs = kbs();
    let mut c = Client::new(&kbs);
    let jwk =
        json!({"kty": "EC", "crv": "P-384", "alg": "ECDH-ES+A256KW", "x": "AAAA", "y": "AAAA"});
    let nonce = c.auth().await;
    let canonical = format!(
        r#"{{"additional-evidence":"","nonce":"{nonce}","tee-pubkey":{{"alg":"ECDH-ES+A256KW","crv":"P-384","kty":"EC","x":"AAAA","y":"AAAA"}}}}"#
    );
    let body = attestation(
        &nonce,
        &jwk,
        &STANDARD.encode(digest(&SHA384, canonical.as_bytes())),
        "",
    );
    assert_eq!(
        c.post("/kbs/v0/attest", body).await.status,
        200,
        "attest does not look at the key"
    );
    c.get(&resource_path())
        .await
        .assert_error(401, "JweError", "JWE failed");
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let kbs = TestKbs::start(KbsConfig {
        payload_limit: 1024,
        ..kbs_config()
    });
    let mut c = Client::new(&kbs);
    let a = c.post("/kbs/v0/attest", "x".repeat(1025)).await;
    assert_eq!(a.status, 413);
}

// ------------------------------------------------------------------------------------------------
// Fault knobs
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_tamper_makes_the_independent_decrypt_fail() {
    let kbs = kbs();
    for key in [TeeKey::p256(), TeeKey::rsa("RSA-OAEP-256")] {
        let mut c = Client::new(&kbs);
        c.rcar(&key).await;
        for tamper in [
            Tamper::Ciphertext,
            Tamper::Tag,
            Tamper::Iv,
            Tamper::EncryptedKey,
            Tamper::WrongRecipient,
            Tamper::ProtectedHeader,
            Tamper::UnsupportedEnc,
            Tamper::EpkCurve,
        ] {
            kbs.set_tamper(Some(tamper.clone()));
            let a = c.get(&resource_path()).await;
            assert_eq!(a.status, 200);
            let decrypted = key.decrypt(&a.body);
            let rsa_ignores_epk =
                tamper == Tamper::EpkCurve && matches!(key.kind, KeyKind::Rsa { .. });
            if rsa_ignores_epk {
                // An RSA header has no epk; the knob leaves it alone.
                assert_eq!(decrypted.unwrap(), SECRET);
            } else {
                assert!(decrypted.is_err(), "{tamper:?} was not detected");
            }
        }
        kbs.set_tamper(None);
        assert_eq!(
            key.decrypt(&c.get(&resource_path()).await.body).unwrap(),
            SECRET
        );
    }
}

#[tokio::test]
async fn injected_faults_hit_the_next_matching_request_once() {
    let kbs = kbs();
    let key = TeeKey::p256();
    let mut c = Client::new(&kbs);
    kbs.inject(
        Endpoint::Resource,
        Fault::trustee("TokenVerifierError", "Token Verifier error"),
    );
    kbs.inject(
        Endpoint::Auth,
        Fault::Raw {
            status: 500,
            content_type: None,
            body: b"{".to_vec(),
        },
    );
    let a = c
        .post(
            "/kbs/v0/auth",
            r#"{"version":"0.4.0","tee":"sample","extra-params":{}}"#,
        )
        .await;
    assert_eq!((a.status, a.text()), (500, "{".to_string()));
    c.rcar(&key).await;
    c.get(&resource_path())
        .await
        .assert_error(401, "TokenVerifierError", "Token Verifier error");
    assert_eq!(c.get(&resource_path()).await.status, 200);

    kbs.inject(Endpoint::Any, Fault::Close);
    let err = c
        .http
        .get(format!("{}{}", kbs.url(), resource_path()))
        .send()
        .await;
    assert!(err.is_err(), "closed connection expected, got {err:?}");
    assert_eq!(kbs.requests().last().unwrap().status, None);
    assert_eq!(
        kbs.summary().last().unwrap(),
        "GET /kbs/v0/resource/default/key/1 closed"
    );

    kbs.inject(Endpoint::Resource, Fault::Delay(Duration::from_millis(300)));
    let started = std::time::Instant::now();
    assert_eq!(c.get(&resource_path()).await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let slow = TestKbs::start(KbsConfig {
        delay: Some(Duration::from_millis(500)),
        ..kbs_config()
    });
    let quick = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let err = quick
        .get(format!("{}/healthz", slow.url()))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    slow.set_delay(None);
    assert_eq!(
        quick
            .get(format!("{}/healthz", slow.url()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn connections_past_the_limit_are_closed_unanswered() {
    let kbs = TestKbs::start(KbsConfig {
        refuse_connections_after: Some(1),
        ..kbs_config()
    });
    let request = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    assert!(raw_http(kbs.addr(), request).starts_with("HTTP/1.1 200 OK\r\n"));
    // The kernel still completes the handshake; the server closes without a byte.
    let mut second = std::net::TcpStream::connect(kbs.addr()).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = second.write_all(request.as_bytes());
    let mut answer = Vec::new();
    let read = second.read_to_end(&mut answer);
    assert!(read.is_err() || answer.is_empty(), "got {answer:?}");
    assert_eq!(kbs.requests().len(), 1);
}

#[tokio::test]
async fn a_missing_set_cookie_breaks_attest_with_cookie_not_found() {
    let kbs = TestKbs::start(KbsConfig {
        set_cookie: false,
        ..kbs_config()
    });
    let key = TeeKey::p256();
    let mut c = Client::new(&kbs);
    let nonce = c.auth().await;
    assert!(c.session.is_none());
    let d = digest(&SHA384, key.runtime_data(&nonce, "").as_bytes());
    c.attest_with(&key, &nonce, d.as_ref()).await.assert_error(
        401,
        "AttestationError",
        "Attestation error: RCAR handshake Attest failed",
    );
    assert_eq!(
        kbs.requests().last().unwrap().reason.as_deref(),
        Some("cookie not found")
    );
}

// ------------------------------------------------------------------------------------------------
// Lifecycle, from a plain synchronous test with raw HTTP
// ------------------------------------------------------------------------------------------------

fn raw_http(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn works_from_a_sync_test_and_stops_on_drop() {
    let kbs = kbs();
    let addr = kbs.addr();
    let answer = raw_http(
        addr,
        "GET /kbs/v0/resource/default/key/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("content-type"),
        "{head}"
    );
    assert_eq!(
        body,
        r#"{"type":"https://github.com/confidential-containers/kbs/errors/TokenNotFound","detail":"Attestation Token not found"}"#
    );
    let body = r#"{"version":"0.4.0","tee":"sample","extra-params":{}}"#;
    let answer = raw_http(
        addr,
        &format!(
            "POST /kbs/v0/auth HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    let set_cookie = answer
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap();
    let value = set_cookie.split_once(": ").unwrap().1;
    let (pair, attrs) = value.split_once("; ").unwrap();
    assert!(
        pair.starts_with("kbs-session-id=") && pair.len() == 15 + 32,
        "{value}"
    );
    assert!(
        attrs.starts_with("Expires=") && !attrs.contains(';'),
        "only Expires: {value}"
    );
    assert_eq!(kbs.requests().len(), 2);
    assert_eq!(
        kbs.requests()[1].header("content-type"),
        Some("application/json")
    );

    drop(kbs);
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "server still listening after drop"
    );
}

#[test]
fn cookie_expiry_is_an_imf_fixdate() {
    assert_eq!(super::jose::http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    // The appendix's cookie said `Expires=Sat, 28 Nov 2026 03:21:17 GMT`; its token had
    // iat 1795835777, exp = iat + 300 = 1795836077, the same second.
    assert_eq!(
        super::jose::http_date(1_795_836_077),
        "Sat, 28 Nov 2026 03:21:17 GMT"
    );
    assert_eq!(
        super::jose::http_date(951_782_400),
        "Tue, 29 Feb 2000 00:00:00 GMT"
    );
}
