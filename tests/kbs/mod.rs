//! `TestKbs`: an in-process stand-in for trustee's Key Broker Service, for integration tests only.
//!
//! Owns: the server half of the KBS protocol exactly as /work/shared/docs/kbs.md documents it
//! (RCAR handshake §1, TEE-key binding and response JWE §2, the `sample` TEE §3, the behaviour
//! list of §6 and the captured wire messages of its Appendix), plus knobs that shorten lifetimes,
//! flip the resource policy and inject faults. Where kbs.md and trustee's own protocol document
//! disagree (403/404 for a denied or missing resource), this server follows kbs.md: 401.
//!
//! Does not own: any client logic (the client under test lives in `src/`), and no code is shared
//! with it: the JCS, the JWE and the token here are written from kbs.md with aws-lc-rs, so a bug
//! in modelcrypt's JOSE code cannot be mirrored here. It is only ever compiled into test
//! binaries, never into the shipped `modelcrypt`.
//!
//! Model: one server per `TestKbs`, bound to `127.0.0.1:0`, running on its own thread with its own
//! single-threaded tokio runtime, so it works from plain `#[test]`s and from `#[tokio::test]`s
//! alike. Dropping the `TestKbs` stops the server and closes its connections. Behaviour is that of
//! a trustee KBS with the built-in CoCo AS (sample verifier, ephemeral ES256 token signer),
//! `insecure_http`, the `resource` plugin enabled and an allow-all resource policy, unless the
//! config says otherwise.
//!
//! Dev-dependencies this module needs (the repo's `[dependencies]` already provide aws-lc-rs 1,
//! base64 0.22, http 1, serde 1 with `derive`, serde_json 1 and, for `selftest.rs` only,
//! reqwest 0.13 with its default features off):
//!
//! ```toml
//! [dev-dependencies]
//! tokio = { version = "1", features = ["rt", "net", "time", "sync", "macros"] }
//! hyper = { version = "1", features = ["server", "http1"] }
//! hyper-util = { version = "0.1", features = ["tokio"] }
//! http-body-util = "0.1"
//! kbs-types = { version = "0.18", default-features = false, features = ["alloc"] }
//! ```
//!
//! (kbs-types with no features at all does not compile: it then has neither `std` nor `alloc`
//! `String`s. `alloc` gives every message type, `Request`, `Challenge`, `Attestation`,
//! `TeePubKey`, `Response`, `ErrorInformation`, without the `ear`/OpenSSL tree of `std`.)

mod jose;
#[cfg(test)]
mod selftest;
mod server;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

pub use jose::jcs;

/// The `type` prefix of every trustee error body (kbs.md §1.7).
pub const ERROR_TYPE_PREFIX: &str = "https://github.com/confidential-containers/kbs/errors/";

/// Name of trustee's session cookie (kbs.md §1.3).
pub const SESSION_COOKIE: &str = "kbs-session-id";

/// What the server does. Build it with struct-update syntax over [`KbsConfig::default`] or with
/// [`KbsConfig::resource`]; the defaults are trustee's defaults (kbs.md) with an allow-all
/// resource policy.
#[derive(Clone)]
pub struct KbsConfig {
    /// Resources by `"repo/type/tag"`. Default: none. Paths that fail trustee's segment check
    /// (`[A-Za-z0-9_-][A-Za-z0-9_.-]*`, exactly three) can be stored but never served.
    pub resources: BTreeMap<String, Vec<u8>>,
    /// The resource policy says no to every resource GET (401 `PolicyDeny`, kbs.md §1.7).
    /// Default: false, i.e. trustee's `allow_all.rego`. Trustee's own *default* policy denies the
    /// `sample` TEE (kbs.md §3), which is what `true` reproduces.
    pub deny_all: bool,
    /// Session lifetime, counted from `/auth` and never extended (kbs.md §1.3, §8.2). Default: 5
    /// minutes. The cookie's `Expires` is written with one-second resolution.
    pub session_ttl: Duration,
    /// Attestation token lifetime (`exp - iat`, kbs.md §1.5). Default: 5 minutes.
    pub token_ttl: Duration,
    /// Slack granted to an expired token's `exp`, as jsonwebtoken's default validation does
    /// (kbs.md §1.5). Default: 60 s; set to zero to make a short `token_ttl` bite at once.
    pub token_leeway: Duration,
    /// The protocol version this server demands (semver `=` match, kbs.md §1.2). Default:
    /// `"0.4.0"`. Setting another value emulates a KBS of another release, which answers the real
    /// client's `0.4.0` with 401 "KBS Client Protocol Version Mismatch".
    pub protocol_version: String,
    /// `None` (default): the CoCo AS behaviour, challenge `extra-params` is `""` and the binding is
    /// checked with SHA-384. `Some(alg)`: the challenge carries
    /// `{"selected-hash-algorithm": "<alg>"}` (as trustee sends for `se` or with an Intel TA
    /// backend, kbs.md §1.3) and the binding is checked with that algorithm.
    pub selected_hash_algorithm: Option<HashAlg>,
    /// The `resource` plugin is configured. Default: true. When false every
    /// `/kbs/v0/resource/...` answers 404 `PluginNotFound` (kbs.md §1.1, §1.7).
    pub resource_plugin: bool,
    /// Status of a `PolicyDeny` answer. Default: 401, as kbs.md §1.7 says the code does; some
    /// trustee revisions answer 403 here, which this knob can emulate.
    pub policy_deny_status: u16,
    /// Largest accepted request body in bytes; larger ones get 413 (kbs.md §1.1, actix's
    /// `PayloadConfig`). Default: 2 MiB.
    pub payload_limit: usize,
    /// Send `Set-Cookie` on `/auth` and `/attest`. Default: true. False emulates a proxy that
    /// strips the cookie: `/attest` then fails with "cookie not found".
    pub set_cookie: bool,
    /// Sleep this long before answering every request. Default: none. Settable later with
    /// [`TestKbs::set_delay`].
    pub delay: Option<Duration>,
    /// Accept this many TCP connections, then close every further one at once without reading
    /// it. Default: none (accept all). Note that HTTP clients keep connections alive, so this
    /// counts connections, not requests; use [`TestKbs::inject`] with [`Fault::Close`] to drop
    /// one particular request.
    pub refuse_connections_after: Option<usize>,
    /// Damage every resource JWE this way. Default: none. Settable later with
    /// [`TestKbs::set_tamper`].
    pub tamper_response: Option<Tamper>,
}

impl Default for KbsConfig {
    fn default() -> KbsConfig {
        KbsConfig {
            resources: BTreeMap::new(),
            deny_all: false,
            session_ttl: Duration::from_secs(300),
            token_ttl: Duration::from_secs(300),
            token_leeway: Duration::from_secs(60),
            protocol_version: "0.4.0".to_string(),
            selected_hash_algorithm: None,
            resource_plugin: true,
            policy_deny_status: 401,
            payload_limit: 2 * 1024 * 1024,
            set_cookie: true,
            delay: None,
            refuse_connections_after: None,
            tamper_response: None,
        }
    }
}

impl KbsConfig {
    /// Adds (or replaces) the resource at `path` (`"repo/type/tag"`).
    pub fn resource(mut self, path: &str, bytes: impl Into<Vec<u8>>) -> KbsConfig {
        self.resources.insert(path.to_string(), bytes.into());
        self
    }
}

impl fmt::Debug for KbsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Resource bytes are secrets in spirit; print only their paths and sizes.
        let resources: BTreeMap<&str, usize> = self
            .resources
            .iter()
            .map(|(k, v)| (k.as_str(), v.len()))
            .collect();
        f.debug_struct("KbsConfig")
            .field("resources", &resources)
            .field("deny_all", &self.deny_all)
            .field("session_ttl", &self.session_ttl)
            .field("token_ttl", &self.token_ttl)
            .field("token_leeway", &self.token_leeway)
            .field("protocol_version", &self.protocol_version)
            .field("selected_hash_algorithm", &self.selected_hash_algorithm)
            .field("resource_plugin", &self.resource_plugin)
            .field("policy_deny_status", &self.policy_deny_status)
            .field("payload_limit", &self.payload_limit)
            .field("set_cookie", &self.set_cookie)
            .field("delay", &self.delay)
            .field("refuse_connections_after", &self.refuse_connections_after)
            .field("tamper_response", &self.tamper_response)
            .finish()
    }
}

/// Hash algorithms a challenge can select (kbs.md §1.3). `sm3` is left out: aws-lc-rs has none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashAlg {
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlg {
    /// The lower-case name used on the wire (`sha384`).
    pub fn name(self) -> &'static str {
        match self {
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha384 => "sha384",
            HashAlg::Sha512 => "sha512",
        }
    }

    /// H(JCS(runtime_data)) — what the client must put into the sample evidence's `report_data`
    /// (kbs.md §2.2). Public so that tests can compute expected values.
    pub fn runtime_digest(self, runtime_data: &serde_json::Value) -> Vec<u8> {
        jose::runtime_digest(self, runtime_data)
    }
}

/// Ways to damage a resource JWE. Every one must make a correct client refuse the response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tamper {
    /// One bit of the ciphertext flipped (a byte appended to an empty ciphertext): GCM fails.
    Ciphertext,
    /// One bit of the GCM tag flipped.
    Tag,
    /// One bit of the IV flipped.
    Iv,
    /// One bit of `encrypted_key` flipped: AES-KW unwrap or RSA-OAEP decryption fails.
    EncryptedKey,
    /// The CEK wrapped to a fresh key of the same kind instead of the client's tee-pubkey.
    WrongRecipient,
    /// The header members sent in another order than the one authenticated: the AAD is the
    /// original `protected` string, the sent `protected` decodes to the same members. Only a
    /// client that uses the received string as AAD (kbs.md §2.3) refuses it.
    ProtectedHeader,
    /// `enc` says `A128GCM` (consistently authenticated, content still A256GCM).
    UnsupportedEnc,
    /// `epk.crv` says `P-384` (consistently authenticated): kbs.md §2.3 step 1 must catch it.
    /// EC keys only; an RSA answer has no `epk` and is left intact.
    EpkCurve,
}

/// Which endpoint an injected [`Fault`] waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /kbs/v0/auth`.
    Auth,
    /// `POST /kbs/v0/attest`.
    Attest,
    /// Any request under `/kbs/v0/resource/`.
    Resource,
    /// The next request, whatever it is.
    Any,
}

/// A one-shot misbehaviour for the next request to an [`Endpoint`] (see [`TestKbs::inject`]).
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with trustee's error shape: `status`, body
    /// `{"type": ERROR_TYPE_PREFIX + kind, "detail": detail}`, no Content-Type.
    Error {
        status: u16,
        kind: String,
        detail: String,
    },
    /// Answer with exactly these bytes (e.g. malformed JSON).
    Raw {
        status: u16,
        content_type: Option<String>,
        body: Vec<u8>,
    },
    /// Close the connection without answering.
    Close,
    /// Wait this long, then handle the request normally.
    Delay(Duration),
}

impl Fault {
    /// A 401 in trustee's error shape.
    pub fn trustee(kind: &str, detail: &str) -> Fault {
        Fault::Error {
            status: 401,
            kind: kind.to_string(),
            detail: detail.to_string(),
        }
    }
}

/// One request as the server saw it and what it answered, for assertions.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Path and query as sent (`/kbs/v0/resource/default/key/1`).
    pub path: String,
    /// Headers with lower-case names, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status answered; `None` when the connection was closed instead ([`Fault::Close`]).
    pub status: Option<u16>,
    /// For error answers, the `type` suffix (`TokenNotFound`, `AttestationError`, ...).
    pub error_type: Option<String>,
    /// The root cause that the real KBS only writes to its log (for example "cookie not found"
    /// behind a bare "RCAR handshake Attest failed"). For debugging failing tests.
    pub reason: Option<String>,
}

impl RecordedRequest {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A running test KBS. Dropping it stops the server.
pub struct TestKbs {
    addr: SocketAddr,
    shared: Arc<server::Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestKbs {
    /// Binds `127.0.0.1:0` and starts serving on a thread of its own. Usable from synchronous and
    /// asynchronous tests alike (it blocks only for the bind).
    pub fn start(config: KbsConfig) -> TestKbs {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("listener address");
        let shared = Arc::new(server::Shared::new(config));
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let serving = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("test-kbs-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("test KBS runtime");
                runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    tokio::select! {
                        _ = stop => {}
                        _ = server::serve(listener, serving) => {}
                    }
                });
                // Dropping the runtime here cancels every connection task.
            })
            .expect("spawn test KBS thread");
        TestKbs {
            addr,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches the resource policy between deny-all (`true`) and allow-all.
    pub fn set_deny(&self, deny: bool) {
        self.state().deny_all = deny;
    }

    /// Adds or replaces the resource at `path` (`"repo/type/tag"`), like
    /// `kbs-client config set-resource`.
    pub fn put_resource(&self, path: &str, bytes: impl Into<Vec<u8>>) {
        self.state()
            .resources
            .insert(path.to_string(), bytes.into());
    }

    /// Removes the resource at `path`; later GETs answer 401 `PluginInternalError`.
    pub fn remove_resource(&self, path: &str) {
        self.state().resources.remove(path);
    }

    /// Makes every existing session expired, as if `session_ttl` had passed. Tokens already handed
    /// out stay valid for Bearer use (they carry their own `exp`).
    pub fn expire_sessions(&self) {
        let now = self.shared.now();
        for session in self.state().sessions.values_mut() {
            session.expires = now - Duration::from_secs(1);
        }
    }

    /// Moves the server's clock forward: sessions and tokens expire as if `by` had passed.
    pub fn advance_clock(&self, by: Duration) {
        self.state().clock_offset += by;
    }

    /// Damages every following resource JWE (`None` stops it).
    pub fn set_tamper(&self, tamper: Option<Tamper>) {
        self.state().tamper = tamper;
    }

    /// Sleeps this long before every following answer (`None` stops it).
    pub fn set_delay(&self, delay: Option<Duration>) {
        self.state().delay = delay;
    }

    /// Queues `fault` for the next request to `endpoint`. Faults are used once each, in order.
    pub fn inject(&self, endpoint: Endpoint, fault: Fault) {
        self.state().faults.push_back((endpoint, fault));
    }

    /// Every request answered (or dropped) so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state().requests.clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.state().requests.clear();
    }

    /// Paths of the recorded requests with their status, e.g.
    /// `["POST /kbs/v0/auth 200", "POST /kbs/v0/attest 200", "GET /kbs/v0/resource/a/b/c 200"]`
    /// (a dropped request shows `closed`). Handy for one-line assertions on a client's sequence.
    pub fn summary(&self) -> Vec<String> {
        self.state()
            .requests
            .iter()
            .map(|r| {
                let status = r.status.map_or("closed".to_string(), |s| s.to_string());
                format!("{} {} {}", r.method, r.path, status)
            })
            .collect()
    }

    fn state(&self) -> MutexGuard<'_, server::State> {
        self.shared.state()
    }
}

impl Drop for TestKbs {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl fmt::Debug for TestKbs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestKbs")
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

/// Holds a lock for the server's state; a panic in a test thread must not wedge the server.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
