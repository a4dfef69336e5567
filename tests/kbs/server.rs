//! The protocol: routing, RCAR (`/auth`, `/attest`), resource GETs and trustee's error answers,
//! following kbs.md §1 (handshake, §1.7 status codes), §2 (binding), §3 (sample verifier) and the
//! Appendix (exact wire shapes). Root causes that trustee only logs are kept in
//! `RecordedRequest::reason`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use kbs_types::{Attestation, Challenge, Tee, TeePubKey};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::jose::{self, TokenSigner};
use super::{
    lock, Endpoint, Fault, HashAlg, KbsConfig, RecordedRequest, Tamper, ERROR_TYPE_PREFIX,
    SESSION_COOKIE,
};

/// Where trustee finds the TEE key in an EAR token (kbs.md §1.5, appendix §3).
const TEE_PUBKEY_POINTER: &str =
    "/submods/cpu0/ear.veraison.annotated-evidence/runtime_data_claims/tee-pubkey";

// ------------------------------------------------------------------------------------------------
// State
// ------------------------------------------------------------------------------------------------

pub struct Shared {
    config: KbsConfig,
    signer: TokenSigner,
    state: Mutex<State>,
}

pub struct State {
    pub resources: std::collections::BTreeMap<String, Vec<u8>>,
    pub deny_all: bool,
    pub sessions: HashMap<String, Session>,
    pub clock_offset: Duration,
    pub tamper: Option<Tamper>,
    pub delay: Option<Duration>,
    pub faults: VecDeque<(Endpoint, Fault)>,
    pub requests: Vec<RecordedRequest>,
}

/// trustee's `SessionStatus`: `Authed` while `token` is `None`, `Attested` after.
pub struct Session {
    pub tee: Tee,
    pub nonce: String,
    pub expires: SystemTime,
    pub token: Option<String>,
}

impl Shared {
    /// Panics on a `protocol_version` that is not a semver version: a broken test setup.
    pub fn new(config: KbsConfig) -> Shared {
        assert!(
            Semver::parse(&config.protocol_version).is_some(),
            "KbsConfig::protocol_version `{}` is not a semver version",
            config.protocol_version
        );
        let state = State {
            resources: config.resources.clone(),
            deny_all: config.deny_all,
            sessions: HashMap::new(),
            clock_offset: Duration::ZERO,
            tamper: config.tamper_response.clone(),
            delay: config.delay,
            faults: VecDeque::new(),
            requests: Vec::new(),
        };
        Shared {
            config,
            signer: TokenSigner::generate(),
            state: Mutex::new(state),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The server's clock: real time plus whatever `advance_clock` added.
    pub fn now(&self) -> SystemTime {
        SystemTime::now() + self.state().clock_offset
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

// ------------------------------------------------------------------------------------------------
// Connections
// ------------------------------------------------------------------------------------------------

/// Accepts connections until the task is dropped.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut accepted = 0usize;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // EMFILE and friends: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        accepted += 1;
        if shared
            .config
            .refuse_connections_after
            .is_some_and(|limit| accepted > limit)
        {
            drop(stream);
            continue;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(shared.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Returned to hyper to make it close the connection without an answer.
#[derive(Debug)]
struct CloseConnection;

impl std::fmt::Display for CloseConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fault: close connection")
    }
}

impl std::error::Error for CloseConnection {}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, CloseConnection> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Err(CloseConnection),
    };
    let path = parts.uri.path().to_string();
    let endpoint = classify(&parts.method, &path);

    let (fault, delay) = {
        let mut state = shared.state();
        let position = state
            .faults
            .iter()
            .position(|(e, _)| *e == Endpoint::Any || *e == endpoint);
        let fault = position
            .and_then(|i| state.faults.remove(i))
            .map(|(_, f)| f);
        (fault, state.delay)
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let reply = match fault {
        Some(Fault::Close) => None,
        Some(Fault::Error {
            status,
            kind,
            detail,
        }) => Some(Reply::error(
            status,
            &kind,
            detail,
            Some("injected fault".into()),
        )),
        Some(Fault::Raw {
            status,
            content_type,
            body,
        }) => Some(Reply {
            status,
            content_type,
            set_cookie: None,
            body,
            error_type: None,
            reason: Some("injected fault".into()),
        }),
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(d).await;
            Some(route(&shared, &parts.method, &path, &parts.headers, &body))
        }
        None => Some(route(&shared, &parts.method, &path, &parts.headers, &body)),
    };

    let recorded = RecordedRequest {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or(path.clone(), |pq| pq.to_string()),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into(),
                )
            })
            .collect(),
        body: body.to_vec(),
        status: reply.as_ref().map(|r| r.status),
        error_type: reply.as_ref().and_then(|r| r.error_type.clone()),
        reason: reply.as_ref().and_then(|r| r.reason.clone()),
    };
    shared.state().requests.push(recorded);

    match reply {
        Some(reply) => Ok(reply.into_response()),
        None => Err(CloseConnection),
    }
}

fn classify(method: &Method, path: &str) -> Endpoint {
    match path {
        "/kbs/v0/auth" if method == Method::POST => Endpoint::Auth,
        "/kbs/v0/attest" if method == Method::POST => Endpoint::Attest,
        p if p.starts_with("/kbs/v0/resource/") => Endpoint::Resource,
        _ => Endpoint::Any,
    }
}

// ------------------------------------------------------------------------------------------------
// Answers
// ------------------------------------------------------------------------------------------------

struct Reply {
    status: u16,
    content_type: Option<String>,
    set_cookie: Option<String>,
    body: Vec<u8>,
    error_type: Option<String>,
    reason: Option<String>,
}

impl Reply {
    fn json(body: String, set_cookie: Option<String>) -> Reply {
        Reply {
            status: 200,
            content_type: Some("application/json".into()),
            set_cookie,
            body: body.into_bytes(),
            error_type: None,
            reason: None,
        }
    }

    fn empty(status: u16) -> Reply {
        Reply {
            status,
            content_type: None,
            set_cookie: None,
            body: Vec::new(),
            error_type: None,
            reason: None,
        }
    }

    /// trustee's `ErrorInformation` answer: `{"type": ..., "detail": ...}` and no Content-Type
    /// header (appendix, "Protocol facts").
    fn error(status: u16, kind: &str, detail: String, reason: Option<String>) -> Reply {
        // Member order as kbs-types' ErrorInformation serializes it: `type`, then `detail`.
        let body = format!(
            "{{\"type\":{},\"detail\":{}}}",
            Value::from(format!("{ERROR_TYPE_PREFIX}{kind}")),
            Value::from(detail)
        );
        Reply {
            status,
            content_type: None,
            set_cookie: None,
            body: body.into_bytes(),
            error_type: Some(kind.to_string()),
            reason,
        }
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut builder = Response::builder()
            .status(StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
        if let Some(content_type) = &self.content_type {
            builder = builder.header(http::header::CONTENT_TYPE, content_type.as_str());
        }
        if let Some(cookie) = &self.set_cookie {
            builder = builder.header(http::header::SET_COOKIE, cookie.as_str());
        }
        // INVARIANT: the status is valid and every header value was built from printable ASCII.
        builder
            .body(Full::new(Bytes::from(self.body)))
            .expect("valid response")
    }
}

/// The errors of kbs.md §1.7 with their trustee `Display` texts.
enum KbsError {
    /// `AttestationError` from `/auth`: "RCAR handshake Auth failed: {cause}", with an optional
    /// longer cause for the log.
    Auth(String, Option<String>),
    /// `AttestationError` from `/attest`: the cause is only logged.
    Attest(String),
    TokenNotFound(String),
    TokenVerifier(String),
    PolicyDeny,
    PluginInternal(String),
    Jwe(String),
    PluginNotFound(String),
    AdminAuth,
}

impl KbsError {
    fn reply(self, config: &KbsConfig) -> Reply {
        match self {
            KbsError::Auth(cause, logged) => Reply::error(
                401,
                "AttestationError",
                format!("Attestation error: RCAR handshake Auth failed: {cause}"),
                Some(logged.unwrap_or(cause)),
            ),
            KbsError::Attest(cause) => Reply::error(
                401,
                "AttestationError",
                "Attestation error: RCAR handshake Attest failed".into(),
                Some(cause),
            ),
            KbsError::TokenNotFound(cause) => Reply::error(
                401,
                "TokenNotFound",
                "Attestation Token not found".into(),
                Some(cause),
            ),
            KbsError::TokenVerifier(cause) => Reply::error(
                401,
                "TokenVerifierError",
                "Token Verifier error".into(),
                Some(cause),
            ),
            KbsError::PolicyDeny => Reply::error(
                config.policy_deny_status,
                "PolicyDeny",
                "Access denied by policy".into(),
                Some("resource policy: deny".into()),
            ),
            KbsError::PluginInternal(cause) => Reply::error(
                401,
                "PluginInternalError",
                "Plugin internal error".into(),
                Some(cause),
            ),
            KbsError::Jwe(cause) => Reply::error(401, "JweError", "JWE failed".into(), Some(cause)),
            KbsError::PluginNotFound(name) => Reply::error(
                404,
                "PluginNotFound",
                format!("Plugin {name} not found"),
                None,
            ),
            // Appendix §5: the captured KBS refused admin calls without a Bearer this way. This
            // server has no admin API at all and always answers so.
            KbsError::AdminAuth => Reply::error(
                401,
                "AdminAuthInitialization",
                "failed to initialize [admin] configuration: Failed to parse HTTP Auth Bearer \
                 header"
                    .into(),
                Some("the test KBS has no admin API; use TestKbs::put_resource".into()),
            ),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Routing (kbs.md §1.1)
// ------------------------------------------------------------------------------------------------

fn route(shared: &Shared, method: &Method, path: &str, headers: &HeaderMap, body: &[u8]) -> Reply {
    if path == "/healthz" && method == Method::GET {
        return Reply::empty(200);
    }
    let Some(rest) = path.strip_prefix("/kbs/v0/") else {
        return Reply::empty(404);
    };
    if ![Method::GET, Method::POST, Method::PUT, Method::DELETE].contains(method) {
        return Reply::empty(405);
    }
    if body.len() > shared.config.payload_limit {
        // actix's PayloadConfig overflow (kbs.md §1.1, §1.7): not an ErrorInformation body.
        return Reply {
            status: 413,
            content_type: Some("text/plain; charset=utf-8".into()),
            set_cookie: None,
            body: b"A payload reached size limit.".to_vec(),
            error_type: None,
            reason: Some(format!("body of {} bytes", body.len())),
        };
    }
    let mut segments = rest.split('/');
    let plugin = segments.next().unwrap_or_default();
    let resource_path: Vec<&str> = segments.collect();
    let result = match (plugin, method) {
        ("auth", &Method::POST) => auth(shared, body),
        ("attest", &Method::POST) => attest(shared, headers, body),
        ("resource-policy", &Method::POST | &Method::GET)
        | ("attestation-policy", &Method::POST)
        | ("reference-value", &Method::GET | &Method::POST) => Err(KbsError::AdminAuth),
        ("resource", m) if shared.config.resource_plugin => {
            if m == Method::GET {
                resource(shared, headers, &resource_path)
            } else {
                // Resource POST/PUT/DELETE are admin calls (kbs.md §1.1).
                Err(KbsError::AdminAuth)
            }
        }
        (other, _) => Err(KbsError::PluginNotFound(other.to_string())),
    };
    result.unwrap_or_else(|e| e.reply(&shared.config))
}

// ------------------------------------------------------------------------------------------------
// POST /kbs/v0/auth (kbs.md §1.2, §1.3, appendix §2)
// ------------------------------------------------------------------------------------------------

fn auth(shared: &Shared, body: &[u8]) -> Result<Reply, KbsError> {
    // The detail shows only the outermost anyhow context; serde's message is logged.
    let request: kbs_types::Request = serde_json::from_slice(body).map_err(|e| {
        KbsError::Auth(
            "deserialize Request".into(),
            Some(format!("deserialize Request: {e}")),
        )
    })?;
    // INVARIANT: checked by Shared::new.
    let wanted = Semver::parse(&shared.config.protocol_version).expect("semver");
    let version = Semver::parse(&request.version)
        .ok_or_else(|| KbsError::Auth("failed to parse KBS version".into(), None))?;
    if !version.matches_exactly(&wanted) {
        return Err(KbsError::Auth(
            format!(
                "KBS Client Protocol Version Mismatch: expect ={} while the request is {}",
                shared.config.protocol_version, request.version
            ),
            None,
        ));
    }

    let extra_params = match shared.config.selected_hash_algorithm {
        None => Value::String(String::new()),
        Some(alg) => json!({"selected-hash-algorithm": alg.name()}),
    };
    let challenge = Challenge {
        nonce: STANDARD.encode(jose::random::<32>()),
        extra_params,
    };
    let id = jose::session_id();
    let expires = shared.now() + shared.config.session_ttl;
    let cookie = session_cookie(shared, &id, expires);
    shared.state().sessions.insert(
        id,
        Session {
            tee: request.tee,
            nonce: challenge.nonce.clone(),
            expires,
            token: None,
        },
    );
    // INVARIANT: a Challenge is two JSON values and always serializes.
    let body = serde_json::to_string(&challenge).expect("serialize Challenge");
    Ok(Reply::json(body, cookie))
}

/// `Set-Cookie: kbs-session-id=<id>; Expires=<IMF-fixdate>`, no Path/HttpOnly/Secure
/// (kbs.md §1.3).
fn session_cookie(shared: &Shared, id: &str, expires: SystemTime) -> Option<String> {
    shared.config.set_cookie.then(|| {
        format!(
            "{SESSION_COOKIE}={id}; Expires={}",
            jose::http_date(unix(expires))
        )
    })
}

/// The part of semver that trustee's `=MAJOR.MINOR.PATCH` requirement looks at.
struct Semver {
    core: (u64, u64, u64),
    prerelease: bool,
}

impl Semver {
    /// Strict SemVer 2.0: three numeric parts without leading zeros, optional `-pre` and `+build`.
    fn parse(s: &str) -> Option<Semver> {
        let (rest, build) = match s.split_once('+') {
            Some((rest, build)) => (rest, Some(build)),
            None => (s, None),
        };
        let (core, pre) = match rest.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (rest, None),
        };
        let identifiers_ok = |ids: &str, numeric_leading_zero_ok: bool| {
            ids.split('.').all(|id| {
                !id.is_empty()
                    && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && (numeric_leading_zero_ok
                        || !(id.len() > 1
                            && id.starts_with('0')
                            && id.bytes().all(|b| b.is_ascii_digit())))
            })
        };
        if pre.is_some_and(|p| !identifiers_ok(p, false))
            || build.is_some_and(|b| !identifiers_ok(b, true))
        {
            return None;
        }
        let mut numbers = core.split('.').map(|n| {
            let ok = !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
                && !(n.len() > 1 && n.starts_with('0'));
            if ok {
                n.parse::<u64>().ok()
            } else {
                None
            }
        });
        let parsed = (numbers.next()??, numbers.next()??, numbers.next()??);
        if numbers.next().is_some() {
            return None;
        }
        Some(Semver {
            core: parsed,
            prerelease: pre.is_some(),
        })
    }

    /// semver's `=X.Y.Z` comparator: same numbers, no pre-release (build metadata is ignored).
    fn matches_exactly(&self, wanted: &Semver) -> bool {
        self.core == wanted.core && !self.prerelease
    }
}

// ------------------------------------------------------------------------------------------------
// POST /kbs/v0/attest (kbs.md §1.4, §2.2, §3, appendix §3)
// ------------------------------------------------------------------------------------------------

fn attest(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Result<Reply, KbsError> {
    // Checks in trustee's order (kbs.md §1.4); every failure is the same bare 401.
    let id = cookie(headers, SESSION_COOKIE)
        .ok_or_else(|| KbsError::Attest("cookie not found".into()))?;
    let attestation: Attestation = serde_json::from_slice(body)
        .map_err(|e| KbsError::Attest(format!("deserialize Attestation: {e}")))?;
    let now = shared.now();
    let alg = shared
        .config
        .selected_hash_algorithm
        .unwrap_or(HashAlg::Sha384);
    let mut state = shared.state();
    let session = state
        .sessions
        .get_mut(&id)
        .ok_or_else(|| KbsError::Attest("session not found".into()))?;
    if session.expires < now {
        return Err(KbsError::Attest("session expired.".into()));
    }
    if let Some(token) = &session.token {
        // Already attested: the stored token, no verification (kbs.md §1.4 step 4).
        let body = json!({"token": token}).to_string();
        let expires = session.expires;
        drop(state);
        let mut reply = Reply::json(body, session_cookie(shared, &id, expires));
        reply.reason = Some("session already attested: stored token returned".into());
        return Ok(reply);
    }
    if session.nonce != attestation.runtime_data.nonce {
        return Err(KbsError::Attest(
            "the nonce in the handshake session is different from the client side in KBS \
             protocol's Attestation message"
                .into(),
        ));
    }
    let claims = verify_evidence(
        session.tee,
        &session.nonce,
        &attestation,
        alg,
        now,
        &shared.config,
    )
    .map_err(|e| KbsError::Attest(format!("verify TEE evidence failed: {e}")))?;
    let token = shared.signer.sign(&claims);
    session.token = Some(token.clone());
    let expires = session.expires;
    drop(state);
    Ok(Reply::json(
        json!({"token": token}).to_string(),
        session_cookie(shared, &id, expires),
    ))
}

/// The `sample` evidence of kbs.md §3: `{"svn": "1", "report_data": "<std base64>"}`.
#[derive(Deserialize)]
struct SampleQuote {
    svn: String,
    #[serde(default)]
    report_data: String,
}

/// The built-in CoCo AS with the sample verifier: checks the binding of every evidence and
/// returns the EAR claims of appendix §3.
fn verify_evidence(
    tee: Tee,
    nonce: &str,
    attestation: &Attestation,
    alg: HashAlg,
    now: SystemTime,
    config: &KbsConfig,
) -> Result<Value, String> {
    if let Some(init_data) = &attestation.init_data {
        if init_data.format != "toml" {
            return Err("Unsupported initdata format".into());
        }
    }
    let key = &attestation.runtime_data.tee_pubkey;
    let additional = &attestation.tee_evidence.additional_evidence;
    let runtime_data = jose::primary_runtime_data(nonce, key, additional);
    let expected = jose::runtime_digest(alg, &runtime_data);
    let primary = verify_sample(tee, &attestation.tee_evidence.primary_evidence, &expected)?;

    let mut annotated = serde_json::Map::new();
    if !additional.is_empty() {
        let devices: HashMap<Tee, Value> = serde_json::from_str(additional)
            .map_err(|e| format!("parse additional evidence: {e}"))?;
        let device_expected = jose::runtime_digest(alg, &jose::device_runtime_data(nonce, key));
        for (device, evidence) in &devices {
            let claims = verify_sample(*device, evidence, &device_expected)?;
            annotated.insert(tee_name(*device), claims);
        }
    }
    annotated.insert(
        "report_data".into(),
        Value::String(STANDARD.encode(&expected)),
    );
    annotated.insert("runtime_data_claims".into(), runtime_data);
    annotated.insert(tee_name(tee), primary);

    let iat = unix(now);
    Ok(json!({
        "eat_profile": "tag:github.com,2024:confidential-containers/Trustee",
        "iat": iat,
        "ear.verifier-id": {
            "developer": "https://confidentialcontainers.org",
            "build": "attestation-service 0.1.0"
        },
        "submods": {
            "cpu0": {
                // The default AS policy has no reference values for `sample` (kbs.md §3).
                "ear.status": "contraindicated",
                "ear.trustworthiness-vector": {
                    "instance-identity": 0, "configuration": 2, "executables": 33,
                    "file-system": 0, "hardware": 97, "runtime-opaque": 0,
                    "storage-opaque": 0, "sourced-data": 0
                },
                "ear.appraisal-policy-id": "default",
                "ear.veraison.annotated-evidence": Value::Object(annotated),
                "ear.trustee.identifiers": {"validated": {}}
            }
        },
        "exp": iat + config.token_ttl.as_secs(),
        "iss": "CoCo-Attestation-Service"
    }))
}

/// trustee's sample verifier: exact byte equality of `report_data` with the digest, no padding
/// (kbs.md §3). Returns its claims.
fn verify_sample(tee: Tee, evidence: &Value, expected: &[u8]) -> Result<Value, String> {
    if !matches!(tee, Tee::Sample | Tee::SampleDevice) {
        return Err(format!(
            "the test KBS has no verifier for TEE `{}`",
            tee_name(tee)
        ));
    }
    let quote: SampleQuote = serde_json::from_value(evidence.clone())
        .map_err(|e| format!("deserialize Sample Quote: {e}"))?;
    let report_data = STANDARD
        .decode(&quote.report_data)
        .map_err(|e| format!("base64 decode report_data: {e}"))?;
    if report_data != expected {
        return Err(format!(
            "REPORT_DATA is different from that in Sample Quote: expected {} got {}",
            jose::hex(expected),
            jose::hex(&report_data)
        ));
    }
    Ok(json!({
        "debug": false,
        "launch_digest": "abcde",
        "platform_version": {"major": 1, "minor": 4},
        "svn": quote.svn
    }))
}

fn tee_name(tee: Tee) -> String {
    serde_json::to_value(tee)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

// ------------------------------------------------------------------------------------------------
// GET /kbs/v0/resource/<repo>/<type>/<tag> (kbs.md §1.5, §1.6, appendix §4)
// ------------------------------------------------------------------------------------------------

fn resource(shared: &Shared, headers: &HeaderMap, path: &[&str]) -> Result<Reply, KbsError> {
    let now = shared.now();
    // Token: from the cookie's attested session first, then from Bearer (kbs.md §1.5).
    let token = session_token(shared, headers, now)
        .or_else(|session_problem| {
            bearer(headers).ok_or_else(|| format!("{session_problem}; no Bearer token"))
        })
        .map_err(KbsError::TokenNotFound)?;
    // Verified on every request, cookie path included (kbs.md §1.5, §8.4).
    let claims = shared
        .signer
        .verify(&token, unix(now), shared.config.token_leeway.as_secs())
        .map_err(KbsError::TokenVerifier)?;

    let (deny, stored, tamper) = {
        let state = shared.state();
        let joined = path.join("/");
        (
            state.deny_all,
            state.resources.get(&joined).cloned(),
            state.tamper.clone(),
        )
    };
    if deny {
        return Err(KbsError::PolicyDeny);
    }
    if !valid_resource_path(path) {
        return Err(KbsError::PluginInternal(format!(
            "invalid resource path `{}`",
            path.join("/")
        )));
    }
    let plaintext = stored.ok_or_else(|| {
        KbsError::PluginInternal(format!("resource not found: `{}`", path.join("/")))
    })?;

    let key: TeePubKey = claims
        .pointer(TEE_PUBKEY_POINTER)
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok())
        .ok_or_else(|| {
            KbsError::TokenVerifier("Failed to extract Tee public key from claims".into())
        })?;
    let jwe = jose::encrypt(&key, &plaintext, tamper.as_ref()).map_err(|e| KbsError::Jwe(e.0))?;
    // INVARIANT: five strings always serialize.
    let body = serde_json::to_string(&jwe).expect("serialize JWE");
    let mut reply = Reply::json(body, None);
    reply.reason = tamper.map(|t| format!("tampered: {t:?}"));
    Ok(reply)
}

fn session_token(shared: &Shared, headers: &HeaderMap, now: SystemTime) -> Result<String, String> {
    let id = cookie(headers, SESSION_COOKIE).ok_or("KBS session cookie not found")?;
    let state = shared.state();
    let session = state.sessions.get(&id).ok_or("session not found")?;
    if session.expires < now {
        return Err("The session is expired".into());
    }
    session
        .token
        .clone()
        .ok_or_else(|| "The session is not authorized".into())
}

/// trustee's resource path check (kbs.md §1.1): exactly repo/type/tag, each
/// `[A-Za-z0-9_-][A-Za-z0-9_.-]*`.
fn valid_resource_path(path: &[&str]) -> bool {
    path.len() == 3
        && path.iter().all(|segment| {
            let mut bytes = segment.bytes();
            bytes
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        })
}

// ------------------------------------------------------------------------------------------------
// Header parsing
// ------------------------------------------------------------------------------------------------

/// The first cookie called `name` across all `Cookie` headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// `Authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ")?.trim();
    (!token.is_empty()).then(|| token.to_string())
}
