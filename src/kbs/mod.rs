//! Key broker client: Trustee's KBS protocol 0.4.0 (kbs.md §0-§2) and the Confidential Data
//! Hub route of a Confidential Containers pod (kbs.md §5).
//!
//! The RCAR handshake is a chain of consuming states: [`ExpectChallenge`] sends the request and
//! takes the challenge, [`ExpectAttestResult`] sends the evidence bound to an ephemeral key and
//! takes the token, and [`Authenticated`] fetches resources, each a JWE encrypted to that key.
//! Trustee answers 401 for almost everything (§1.7), so errors are sorted by the `type` of its
//! error body, not by status.

pub mod attester;
pub mod cdh;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use kbs_types::{
    Attestation, Challenge, CompositeEvidence, ErrorInformation, Request, RuntimeData, TeePubKey,
};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::keys::{KeyError, PrivateKey, PublicKey};
use crate::ocicrypt::jwe::{self, JweError};
use crate::ocicrypt::provider::ResourceUri;
use attester::Attester;

pub const PROTOCOL_VERSION: &str = "0.4.0";
/// Per request unless `--kbs-timeout` says otherwise. A request that timed out is not sent
/// again: a broker that took it and went silent will not answer a second one sooner.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Connecting is quick or not at all; a refused or unreachable broker is retried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Resource bodies larger than this are refused (KEKs and key files are tiny).
const MAX_RESPONSE: usize = 1 << 20;
const COOKIE: &str = "kbs-session-id";
const AUTH_PATH: &str = "/kbs/v0/auth";
const ATTEST_PATH: &str = "/kbs/v0/attest";

#[derive(Debug, thiserror::Error)]
pub enum KbsError {
    #[error("cannot reach the key broker at `{url}`")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the key broker answered `{path}` with HTTP {status}: {kind}: {detail}")]
    Refused {
        path: String,
        status: u16,
        kind: String,
        detail: String,
    },
    #[error("the key broker at `{url}` did not answer within {seconds} s")]
    Timeout { url: String, seconds: u64 },
    #[error("the key broker's reply to `{path}` is malformed: {reason}")]
    Malformed { path: String, reason: String },
    #[error("the key broker sent no `{COOKIE}` cookie with its challenge")]
    NoSession,
    #[error("cannot make the ephemeral TEE key")]
    TeeKey(#[source] KeyError),
    #[error("cannot collect TEE evidence")]
    Evidence(#[source] attester::AttesterError),
    #[error("cannot decrypt the key broker's reply for `{resource}`")]
    Decrypt {
        resource: String,
        #[source]
        source: JweError,
    },
    #[error("unsupported hash algorithm `{0}` selected by the key broker")]
    HashAlgorithm(String),
}

impl KbsError {
    /// Trustee's error kind (`PolicyDeny`, `TokenNotFound`, …), when it sent one.
    pub fn kind(&self) -> Option<&str> {
        match self {
            KbsError::Refused { kind, .. } => Some(kind),
            _ => None,
        }
    }

    /// Whether attesting again could help: expired session or token (kbs.md §1.7).
    pub fn is_session_problem(&self) -> bool {
        matches!(
            self.kind(),
            Some("TokenNotFound" | "TokenVerifierError" | "AttestationError")
        )
    }
}

/// The hash of the runtime data; SHA-384 unless the broker selects another (kbs.md §2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashAlgorithm {
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlgorithm {
    /// The hash the broker selected in the challenge's `extra-params`.
    pub fn from_challenge(extra: &Value) -> Result<HashAlgorithm, KbsError> {
        let Some(name) = extra.get("selected-hash-algorithm").and_then(Value::as_str) else {
            return Ok(HashAlgorithm::Sha384);
        };
        match name.to_ascii_lowercase().as_str() {
            "sha256" => Ok(HashAlgorithm::Sha256),
            "sha384" => Ok(HashAlgorithm::Sha384),
            "sha512" => Ok(HashAlgorithm::Sha512),
            // The name comes from the broker: escaped, as everything it sends is shown.
            other => Err(KbsError::HashAlgorithm(crate::extract::shown(other))),
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        use aws_lc_rs::digest::{digest, SHA256, SHA384, SHA512};
        let alg = match self {
            HashAlgorithm::Sha256 => &SHA256,
            HashAlgorithm::Sha384 => &SHA384,
            HashAlgorithm::Sha512 => &SHA512,
        };
        digest(alg, data).as_ref().to_vec()
    }
}

/// The ephemeral key the broker encrypts replies to. Lives only in memory.
pub struct TeeKey {
    private: PrivateKey,
    jwk: TeePubKey,
}

/// Which ephemeral key to bind (kbs.md §2.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TeeKeyKind {
    /// EC P-256 with `ECDH-ES+A256KW`, Trustee's default.
    #[default]
    EcP256,
    /// RSA 2048 with `RSA-OAEP-256`.
    Rsa2048,
}

impl TeeKey {
    pub fn generate_kind(kind: TeeKeyKind) -> Result<TeeKey, KbsError> {
        match kind {
            TeeKeyKind::EcP256 => TeeKey::generate(),
            TeeKeyKind::Rsa2048 => TeeKey::generate_rsa(),
        }
    }

    /// A fresh RSA-2048 key, `RSA-OAEP-256`.
    pub fn generate_rsa() -> Result<TeeKey, KbsError> {
        let der = crate::keys::generate_rsa2048_pkcs8().map_err(KbsError::TeeKey)?;
        let private = PrivateKey::from_bytes(&der, None).map_err(KbsError::TeeKey)?;
        let PublicKey::Rsa(public) = private.public_key() else {
            return Err(KbsError::TeeKey(KeyError::Generate));
        };
        let (n, e) = public.components().map_err(KbsError::TeeKey)?;
        let jwk = TeePubKey::RSA {
            alg: "RSA-OAEP-256".into(),
            k_mod: B64URL.encode(n),
            k_exp: B64URL.encode(e),
        };
        Ok(TeeKey { private, jwk })
    }

    /// A fresh EC P-256 key, `ECDH-ES+A256KW` (Trustee's default, kbs.md §2.1).
    pub fn generate() -> Result<TeeKey, KbsError> {
        let (pem, _) = crate::keys::generate_ec_p256().map_err(KbsError::TeeKey)?;
        let private = PrivateKey::from_bytes(pem.as_bytes(), None).map_err(KbsError::TeeKey)?;
        let PublicKey::Ec(public) = private.public_key() else {
            return Err(KbsError::TeeKey(KeyError::Generate));
        };
        let point = public.point();
        // Uncompressed SEC1: 0x04 ‖ x ‖ y, fixed-length coordinates (kbs.md §2.1).
        if point.len() != 65 || point[0] != 4 {
            return Err(KbsError::TeeKey(KeyError::Generate));
        }
        let jwk = TeePubKey::EC {
            crv: "P-256".into(),
            alg: "ECDH-ES+A256KW".into(),
            x: B64URL.encode(&point[1..33]),
            y: B64URL.encode(&point[33..65]),
        };
        Ok(TeeKey { private, jwk })
    }

    pub fn jwk(&self) -> &TeePubKey {
        &self.jwk
    }
}

/// The bytes the TEE evidence binds: H(JCS({"additional-evidence", "nonce", "tee-pubkey"}))
/// (kbs.md §2.2). The member set of the key is fixed by kbs-types, so JCS here is sorting a
/// known set of keys and serde_json's minimal string escaping.
pub fn runtime_data_digest(
    nonce: &str,
    key: &TeePubKey,
    additional_evidence: &str,
    hash: HashAlgorithm,
) -> Vec<u8> {
    let s = |v: &str| Value::String(v.to_string()).to_string();
    let jwk = match key {
        TeePubKey::EC { crv, alg, x, y } => format!(
            r#"{{"alg":{},"crv":{},"kty":"EC","x":{},"y":{}}}"#,
            s(alg),
            s(crv),
            s(x),
            s(y)
        ),
        TeePubKey::RSA { alg, k_mod, k_exp } => {
            format!(
                r#"{{"alg":{},"e":{},"kty":"RSA","n":{}}}"#,
                s(alg),
                s(k_exp),
                s(k_mod)
            )
        }
        TeePubKey::AKP { alg, public_key } => format!(
            r#"{{"alg":{},"kty":"AKP","pub":{}}}"#,
            s(alg),
            s(public_key)
        ),
    };
    let canonical = format!(
        r#"{{"additional-evidence":{},"nonce":{},"tee-pubkey":{jwk}}}"#,
        s(additional_evidence),
        s(nonce)
    );
    hash.digest(canonical.as_bytes())
}

/// Where the broker is and how to reach it.
#[derive(Clone, Debug)]
pub struct KbsConfig {
    /// `http(s)://host:port`, without `/kbs/v0`.
    pub url: String,
    /// The ephemeral key's kind. Default: EC P-256.
    pub tee_key: TeeKeyKind,
    /// Extra CA certificate (PEM) for an HTTPS broker.
    pub ca_pem: Option<Vec<u8>>,
    /// How long one request may take. Default: [`DEFAULT_TIMEOUT`].
    pub timeout: Duration,
}

/// Whether a URL's host is this machine: such traffic must never go through `HTTP_PROXY`.
pub fn is_loopback(url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else {
        return false;
    };
    let Some(host) = u.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn http_client(config: &KbsConfig) -> Result<reqwest::Client, KbsError> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT.min(config.timeout))
        .timeout(config.timeout)
        .user_agent(concat!("modelcrypt/", env!("CARGO_PKG_VERSION")));
    if is_loopback(&config.url) {
        b = b.no_proxy();
    }
    if let Some(pem) = &config.ca_pem {
        let cert = reqwest::Certificate::from_pem(pem).map_err(|e| KbsError::Malformed {
            path: "--kbs-cert".into(),
            reason: e.to_string(),
        })?;
        b = b.add_root_certificate(cert);
    }
    b.build().map_err(|source| KbsError::Unreachable {
        url: config.url.clone(),
        source,
    })
}

/// The broker as every state talks to it.
struct Peer {
    http: reqwest::Client,
    /// `http(s)://host:port`, without a trailing slash.
    base: String,
    timeout: Duration,
}

impl Peer {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, KbsError> {
        request.send().await.map_err(|e| self.request_error(e))
    }

    /// A timeout after connecting is the broker's silence, not its absence: not retried.
    fn request_error(&self, source: reqwest::Error) -> KbsError {
        if source.is_timeout() && !source.is_connect() {
            return KbsError::Timeout {
                url: self.base.clone(),
                seconds: self.timeout.as_secs(),
            };
        }
        KbsError::Unreachable {
            url: self.base.clone(),
            source,
        }
    }
}

/// First state: nothing sent yet.
pub struct ExpectChallenge {
    tee_key: TeeKeyKind,
    peer: Peer,
}

/// Second state: the challenge arrived and the session cookie is set.
pub struct ExpectAttestResult {
    tee_key: TeeKeyKind,
    peer: Peer,
    session: String,
    challenge: Challenge,
}

/// Attested: resources can be fetched with the session cookie and the token.
pub struct Authenticated {
    peer: Peer,
    session: String,
    token: String,
    key: TeeKey,
}

impl ExpectChallenge {
    pub fn new(config: &KbsConfig) -> Result<ExpectChallenge, KbsError> {
        Ok(ExpectChallenge {
            tee_key: config.tee_key,
            peer: Peer {
                http: http_client(config)?,
                base: config.url.trim_end_matches('/').to_string(),
                timeout: config.timeout,
            },
        })
    }

    /// `POST /kbs/v0/auth`.
    pub async fn handle(self, tee: kbs_types::Tee) -> Result<ExpectAttestResult, KbsError> {
        let request = Request {
            version: PROTOCOL_VERSION.into(),
            tee,
            extra_params: serde_json::json!({"supported-hash-algorithms": ["sha256", "sha384", "sha512"]}),
        };
        let path = AUTH_PATH;
        let peer = self.peer;
        let resp = peer
            .send(peer.http.post(peer.url(path)).json(&request))
            .await?;
        // The status first: an error reply carries no cookie, and its body says why.
        let session = session_cookie(&resp);
        let body = read_body(&peer, resp, path).await?;
        let session = session.ok_or(KbsError::NoSession)?;
        let challenge = parse_challenge(&body)?;
        Ok(ExpectAttestResult {
            tee_key: self.tee_key,
            peer,
            session,
            challenge,
        })
    }
}

impl ExpectAttestResult {
    /// `POST /kbs/v0/attest` with evidence binding a fresh key to the challenge.
    pub async fn handle(self, attester: &dyn Attester) -> Result<Authenticated, KbsError> {
        let key = TeeKey::generate_kind(self.tee_key)?;
        let hash = HashAlgorithm::from_challenge(&self.challenge.extra_params)?;
        let report_data = runtime_data_digest(&self.challenge.nonce, key.jwk(), "", hash);
        let evidence = attester
            .evidence(&report_data)
            .map_err(KbsError::Evidence)?;
        let attestation = Attestation {
            init_data: None,
            runtime_data: RuntimeData {
                nonce: self.challenge.nonce.clone(),
                tee_pubkey: key.jwk().clone(),
            },
            tee_evidence: CompositeEvidence {
                primary_evidence: evidence,
                additional_evidence: String::new(),
            },
        };
        let path = ATTEST_PATH;
        let request = self
            .peer
            .http
            .post(self.peer.url(path))
            .header(
                reqwest::header::COOKIE,
                format!("{COOKIE}={}", self.session),
            )
            .json(&attestation);
        let resp = self.peer.send(request).await?;
        let body = read_body(&self.peer, resp, path).await?;
        let token = parse_attest_reply(&body)?;
        Ok(Authenticated {
            peer: self.peer,
            session: self.session,
            token,
            key,
        })
    }
}

impl Authenticated {
    /// `GET /kbs/v0/resource/R/T/G`, decrypted with the ephemeral key.
    pub async fn resource(&self, uri: &ResourceUri) -> Result<Zeroizing<Vec<u8>>, KbsError> {
        let path = format!("/kbs/v0/resource/{}", uri.path());
        let request = self
            .peer
            .http
            .get(self.peer.url(&path))
            .header(
                reqwest::header::COOKIE,
                format!("{COOKIE}={}", self.session),
            )
            .bearer_auth(&self.token);
        let resp = self.peer.send(request).await?;
        let body = read_body(&self.peer, resp, &path).await?;
        jwe::unwrap(&body, std::slice::from_ref(&self.key.private)).map_err(|source| {
            KbsError::Decrypt {
                resource: uri.to_string(),
                source,
            }
        })
    }
}

/// The body of a 2xx reply (bounded), or Trustee's error body as a typed error.
async fn read_body(peer: &Peer, resp: reqwest::Response, path: &str) -> Result<Vec<u8>, KbsError> {
    let status = resp.status();
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    use futures_util::StreamExt;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| match e.is_timeout() {
            true => peer.request_error(e),
            false => malformed(path, e.to_string()),
        })?;
        if body.len() + chunk.len() > MAX_RESPONSE {
            return Err(malformed(path, format!("reply over {MAX_RESPONSE} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    if status.is_success() {
        return Ok(body);
    }
    Err(parse_error_reply(path, status.as_u16(), &body))
}

/// The challenge in a 2xx reply to `POST /kbs/v0/auth` (kbs.md §1.3).
pub fn parse_challenge(body: &[u8]) -> Result<Challenge, KbsError> {
    serde_json::from_slice(body).map_err(|e| malformed(AUTH_PATH, e.to_string()))
}

/// The attestation token in a 2xx reply to `POST /kbs/v0/attest`: `{"token": "..."}`
/// (kbs.md §1.5).
pub fn parse_attest_reply(body: &[u8]) -> Result<String, KbsError> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("token").and_then(Value::as_str).map(str::to_string))
        .ok_or_else(|| malformed(ATTEST_PATH, "no `token`".into()))
}

/// A non-2xx reply to `path` as a typed error: Trustee's `ErrorInformation` body (kbs.md §1.7)
/// when it sent one, the body itself otherwise. Both parts are escaped and bounded: the broker
/// must not be able to write control sequences to the terminal or the logs.
pub fn parse_error_reply(path: &str, status: u16, body: &[u8]) -> KbsError {
    let (kind, detail) = match serde_json::from_slice::<ErrorInformation>(body) {
        Ok(e) => (
            crate::extract::shown(e.error_type.rsplit('/').next().unwrap_or(&e.error_type)),
            crate::extract::shown(&e.detail),
        ),
        Err(_) => (
            "(no error body)".into(),
            crate::extract::shown(&String::from_utf8_lossy(body)),
        ),
    };
    KbsError::Refused {
        path: path.into(),
        status,
        kind,
        detail,
    }
}

fn malformed(path: &str, reason: String) -> KbsError {
    KbsError::Malformed {
        path: path.into(),
        reason,
    }
}

fn session_cookie(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .find_map(|v| parse_session_cookie(v.as_bytes()))
}

/// The session id in one `Set-Cookie` header value, if it is the broker's `kbs-session-id`
/// cookie with a plausible id (1 to 128 ASCII letters, digits or `-`; kbs.md §1.3).
pub fn parse_session_cookie(set_cookie: &[u8]) -> Option<String> {
    // What `HeaderValue::to_str` accepts: visible ASCII and tabs.
    if !set_cookie
        .iter()
        .all(|&b| b == b'\t' || (32..127).contains(&b))
    {
        return None;
    }
    let v = std::str::from_utf8(set_cookie).ok()?;
    let (name, rest) = v.split_once('=')?;
    if name.trim() != COOKIE {
        return None;
    }
    let value = rest.split(';').next()?.trim();
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    ok.then(|| value.to_string())
}

/// Where keys come from: a key broker we attest to ourselves, or the pod's Confidential Data
/// Hub. Resources are fetched on demand; a broker session is reused across resources and
/// renewed when it expired.
pub struct Broker {
    route: Route,
    session: tokio::sync::Mutex<Option<Authenticated>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.route {
            Route::Kbs { config, .. } => write!(f, "Broker(kbs {})", config.url),
            Route::Cdh(_) => f.write_str("Broker(cdh)"),
        }
    }
}

enum Route {
    Kbs {
        config: KbsConfig,
        attester: Box<dyn Attester>,
    },
    Cdh(cdh::Cdh),
}

/// Attempts per resource, and the pause before the second and third (guest-components
/// retries 3 times too, kbs.md §1.8).
const ATTEMPTS: u32 = 3;
const BACKOFF: Duration = Duration::from_secs(1);

impl Broker {
    pub fn kbs(config: KbsConfig, attester: Box<dyn Attester>) -> Broker {
        Broker {
            route: Route::Kbs { config, attester },
            session: tokio::sync::Mutex::new(None),
        }
    }

    pub fn cdh(url: &str) -> Result<Broker, KbsError> {
        Ok(Broker {
            route: Route::Cdh(cdh::Cdh::new(url)?),
            session: tokio::sync::Mutex::new(None),
        })
    }

    /// Fetches one resource. Transient failures (unreachable, expired session or token) are
    /// retried a bounded number of times; a refusal (policy, missing resource) is final.
    #[tracing::instrument(skip_all, fields(resource = %uri))]
    pub async fn resource(&self, uri: &ResourceUri) -> Result<Zeroizing<Vec<u8>>, KbsError> {
        let mut attempt = 1;
        loop {
            let result = match &self.route {
                Route::Cdh(cdh) => cdh.resource(uri).await,
                Route::Kbs { config, attester } => {
                    let mut session = self.session.lock().await;
                    let fetched = match session.as_ref() {
                        Some(s) => s.resource(uri).await,
                        None => match attest(config, attester.as_ref()).await {
                            Ok(s) => {
                                let r = s.resource(uri).await;
                                *session = Some(s);
                                r
                            }
                            Err(e) => Err(e),
                        },
                    };
                    if fetched.as_ref().is_err_and(KbsError::is_session_problem) {
                        // Attest again on the next attempt.
                        *session = None;
                    }
                    fetched
                }
            };
            match result {
                Ok(bytes) => return Ok(bytes),
                Err(e)
                    if attempt < ATTEMPTS
                        && (e.is_session_problem()
                            || matches!(e, KbsError::Unreachable { .. })) =>
                {
                    tracing::warn!(attempt, error = %e, "key broker request failed; retrying");
                    tokio::time::sleep(BACKOFF * attempt).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

async fn attest(config: &KbsConfig, attester: &dyn Attester) -> Result<Authenticated, KbsError> {
    tracing::info!(url = %config.url, tee = ?attester.tee(), "attesting to the key broker");
    ExpectChallenge::new(config)?
        .handle(attester.tee())
        .await?
        .handle(attester)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kbs.md §2.2: the test vector verified with serde_json_canonicalizer and Python.
    #[test]
    fn the_runtime_data_digest_matches_the_spec_vector() {
        let key = TeePubKey::EC {
            crv: "P-256".into(),
            alg: "ECDH-ES+A256KW".into(),
            x: "XXXX".into(),
            y: "YYYY".into(),
        };
        let d = runtime_data_digest("bm9uY2U=", &key, "", HashAlgorithm::Sha384);
        assert_eq!(
            crate::digest::hex(&d),
            "6be3a9463afee37cc97c511f3697eefe9fcd9dbaab431c081b134e5374a173ccb4ca98aaaf0b9d0d5d3831021237da4c"
        );
        let sample = attester::Sample.evidence(&d).unwrap();
        assert_eq!(
            sample["report_data"],
            "a+OpRjr+43zJfFEfNpfu/p/NnbqrQxwIGxNOU3Shc8y0ypiqrwudDV04MQISN9pM"
        );
    }

    #[test]
    fn the_rsa_tee_key_is_an_rsa_oaep_256_jwk_whose_private_half_opens_replies() {
        let k = TeeKey::generate_rsa().unwrap();
        let TeePubKey::RSA { alg, k_mod, k_exp } = k.jwk() else {
            panic!("RSA key expected")
        };
        assert_eq!(alg, "RSA-OAEP-256");
        assert_eq!(B64URL.decode(k_mod).unwrap().len(), 256);
        assert_eq!(k_exp, "AQAB");
        // An independent RSA-OAEP-256 JWE would need the public key: build it from n and e.
        let jwk = serde_json::json!({"kty": "RSA", "alg": "RSA-OAEP-256", "n": k_mod, "e": k_exp});
        let public = PublicKey::from_bytes(jwk.to_string().as_bytes()).unwrap();
        let sealed = jwe::wrap(b"kek", &[public]).unwrap();
        let protected = serde_json::from_slice::<Value>(&sealed).unwrap()["protected"]
            .as_str()
            .unwrap()
            .to_string();
        let header: Value = serde_json::from_slice(&B64URL.decode(protected).unwrap()).unwrap();
        assert_eq!(header["alg"], "RSA-OAEP-256");
        assert_eq!(
            jwe::unwrap(&sealed, std::slice::from_ref(&k.private))
                .unwrap()
                .as_slice(),
            b"kek"
        );
    }

    #[test]
    fn the_broker_may_select_the_hash_and_unknown_ones_are_refused() {
        assert_eq!(
            HashAlgorithm::from_challenge(&Value::String(String::new())).unwrap(),
            HashAlgorithm::Sha384
        );
        let sel = serde_json::json!({"selected-hash-algorithm": "SHA512"});
        assert_eq!(
            HashAlgorithm::from_challenge(&sel).unwrap(),
            HashAlgorithm::Sha512
        );
        assert!(HashAlgorithm::from_challenge(
            &serde_json::json!({"selected-hash-algorithm": "md5"})
        )
        .is_err());
    }

    #[test]
    fn a_trustee_error_body_gives_its_kind_and_detail() {
        let body = br#"{"type":"https://github.com/confidential-containers/kbs/errors/TokenNotFound","detail":"Attestation Token not found"}"#;
        let e = parse_error_reply("/kbs/v0/resource/a/b/c", 401, body);
        assert!(e.is_session_problem());
        assert_eq!(
            e.to_string(),
            "the key broker answered `/kbs/v0/resource/a/b/c` with HTTP 401: TokenNotFound: \
             Attestation Token not found"
        );
        let e = parse_error_reply("/kbs/v0/auth", 502, b"<html>bad gateway</html>");
        assert_eq!(e.kind(), Some("(no error body)"));
        assert!(e
            .to_string()
            .ends_with("HTTP 502: (no error body): <html>bad gateway</html>"));
    }

    /// Found by fuzz/fuzz_targets/broker_reply.rs: the error `type` reached the terminal raw.
    #[test]
    fn broker_error_kinds_and_hash_names_are_shown_escaped() {
        let e = parse_error_reply("/kbs/v0/auth", 401, b"{\"type\":\"\x7f\",\"detail\":\"\"}");
        assert_eq!(e.kind(), Some("\\u{7f}"));
        let body = br#"{"type":"x/\u001b[2J\u001b]0;owned\u0007","detail":"\u001b[31m"}"#;
        let text = parse_error_reply("/kbs/v0/auth", 401, body).to_string();
        assert!(!text.chars().any(char::is_control), "{text:?}");
        let sel = serde_json::json!({"selected-hash-algorithm": "sha\u{1b}[31m"});
        let text = HashAlgorithm::from_challenge(&sel).unwrap_err().to_string();
        assert!(!text.chars().any(char::is_control), "{text:?}");
    }

    #[test]
    fn challenge_and_token_replies_parse() {
        let c = parse_challenge(br#"{"nonce":"bm9uY2U=","extra-params":""}"#).unwrap();
        assert_eq!(c.nonce, "bm9uY2U=");
        assert!(matches!(
            parse_challenge(b"{}"),
            Err(KbsError::Malformed { path, .. }) if path == "/kbs/v0/auth"
        ));
        assert_eq!(
            parse_attest_reply(br#"{"token":"a.b.c"}"#).unwrap(),
            "a.b.c"
        );
        assert!(parse_attest_reply(br#"{"token":1}"#).is_err());
        assert!(parse_attest_reply(b"not json").is_err());
    }

    #[test]
    fn only_a_well_formed_session_cookie_is_taken() {
        let id = "0123456789abcdef0123456789abcdef";
        let ok = |v: &str| parse_session_cookie(v.as_bytes());
        assert_eq!(
            ok(&format!(
                "kbs-session-id={id}; Expires=Sat, 28 Nov 2026 00:05:00 GMT"
            ))
            .as_deref(),
            Some(id)
        );
        assert_eq!(ok(&format!(" kbs-session-id = {id} ")).as_deref(), Some(id));
        assert_eq!(ok(&format!("other={id}")), None);
        assert_eq!(ok("kbs-session-id=; Path=/"), None);
        assert_eq!(ok("kbs-session-id=a_b"), None);
        assert_eq!(ok(&format!("kbs-session-id={}", "a".repeat(129))), None);
        assert_eq!(
            parse_session_cookie(format!("kbs-session-id={id}; x=\u{e9}").as_bytes()),
            None
        );
    }

    #[test]
    fn the_tee_key_is_a_p256_jwk_with_fixed_length_coordinates() {
        let k = TeeKey::generate().unwrap();
        let TeePubKey::EC { crv, alg, x, y } = k.jwk() else {
            panic!("EC key expected")
        };
        assert_eq!((crv.as_str(), alg.as_str()), ("P-256", "ECDH-ES+A256KW"));
        assert_eq!(B64URL.decode(x).unwrap().len(), 32);
        assert_eq!(B64URL.decode(y).unwrap().len(), 32);
        // What the broker does with it: a JWE to this key opens with the private half.
        let public = k.private.public_key();
        let sealed = jwe::wrap(b"kek bytes", &[public]).unwrap();
        assert_eq!(
            jwe::unwrap(&sealed, std::slice::from_ref(&k.private))
                .unwrap()
                .as_slice(),
            b"kek bytes"
        );
    }
}
