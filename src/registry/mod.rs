//! OCI distribution registries, through `oci-client`: resolve a manifest, stream blobs in and out
//! without holding them in memory, push manifests byte for byte.

pub mod auth;

use std::ops::Range;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::io::StreamReader;

use crate::digest::Digest;
use crate::manifest::{
    Descriptor, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST,
};

/// A registry's error body, bounded and escaped, for a message.
async fn bounded_text(resp: reqwest::Response) -> String {
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(piece)) = stream.next().await {
        let room = ERROR_BODY_LIMIT - body.len();
        body.extend_from_slice(&piece[..piece.len().min(room)]);
        if body.len() == ERROR_BODY_LIMIT {
            break;
        }
    }
    crate::extract::shown(&error_body_text(&String::from_utf8_lossy(&body)))
}

/// The distribution spec's error body (`{"errors":[{"code","message","detail"}]}`) as
/// `CODE: message (detail)`, so the part that explains (a full disk, say) fits in a message;
/// any other body as it is.
fn error_body_text(body: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Body {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
        #[serde(default)]
        detail: serde_json::Value,
    }
    let Ok(parsed) = serde_json::from_str::<Body>(body) else {
        return body.to_string();
    };
    if parsed.errors.is_empty() {
        return body.to_string();
    }
    let entries: Vec<String> = parsed
        .errors
        .iter()
        .map(|e| {
            let detail = match &e.detail {
                serde_json::Value::Null => String::new(),
                serde_json::Value::String(s) => format!(" ({s})"),
                other => format!(" ({other})"),
            };
            match e.code.is_empty() {
                true => format!("{}{detail}", e.message),
                false => format!("{}: {}{detail}", e.code, e.message),
            }
        })
        .collect();
    entries.join("; ")
}

/// Body pieces of a streamed upload: the stream has no chunk boundaries to respect, so small
/// pieces keep memory low.
const STREAM_PIECE: usize = 1 << 20;

/// How much of a registry's error body is quoted in a message.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// An error and its causes on one line (reqwest's outer message alone hides the reason).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    crate::error::messages(e).join(": ")
}

/// Upload chunk: big enough to keep round trips few, small enough to bound memory and stay
/// under the per-request limits of registries such as Cloudflare's (500 MB).
const PUSH_CHUNK: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read registry credentials from `{path}`")]
    AuthFile {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("bad entry for `{registry}` in `{path}`: {reason}")]
    AuthEntry {
        path: PathBuf,
        registry: String,
        reason: String,
    },
    #[error("credential helper `{program}` failed: {reason}")]
    CredentialHelper { program: String, reason: String },
    #[error("cannot fetch the manifest of `{reference}`: {reason}")]
    ManifestFetch { reference: String, reason: String },
    #[error("the manifest of `{reference}` is over the {limit}-byte limit")]
    ManifestTooLarge { reference: String, limit: usize },
    #[error("cannot set up an HTTP client for `{reference}`: {reason}")]
    Http { reference: String, reason: String },
    #[error("cannot fetch blob `{digest}` from `{reference}`: {reason}")]
    Pull {
        reference: String,
        digest: Digest,
        /// The HTTP status, if the registry answered.
        status: Option<u16>,
        reason: String,
    },
    #[error(
        "blob `{digest}` in `{reference}` is not the {size} bytes its descriptor says: from byte \
         {offset} the registry sends {actual}"
    )]
    BlobLength {
        reference: String,
        digest: Digest,
        size: u64,
        offset: u64,
        actual: u64,
    },
    #[error("`{reference}` does not serve byte ranges of blob `{digest}` (it answered {status})")]
    RangeUnsupported {
        reference: String,
        digest: Digest,
        status: u16,
    },
    #[error("cannot upload blob `{digest}` to `{reference}`")]
    Push {
        reference: String,
        digest: Digest,
        #[source]
        source: OciDistributionError,
    },
    #[error("cannot upload a blob to `{reference}`: {reason}")]
    Upload { reference: String, reason: String },
    #[error("cannot push the manifest to `{reference}`")]
    PushManifest {
        reference: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("cannot query blob `{digest}` in `{reference}`")]
    Exists {
        reference: String,
        digest: Digest,
        #[source]
        source: OciDistributionError,
    },
}

/// How to reach registries; shared by every command.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Talk plain HTTP instead of HTTPS (loopback test registries).
    pub plain_http: bool,
    /// Auth file given on the command line (`--authfile`).
    pub authfile: Option<PathBuf>,
}

/// One repository in one registry, authenticated.
#[derive(Clone)]
pub struct Registry {
    client: Client,
    reference: Reference,
    /// Manifests are fetched with our own bounded GET (oci-client reads bodies whole).
    http: reqwest::Client,
    plain_http: bool,
    /// How [`Registry::login`] authenticated: the bearer token it got, or the basic credentials.
    auth: std::sync::Arc<std::sync::Mutex<RegistryAuth>>,
}

pub type BlobReader = Pin<Box<dyn AsyncRead + Send>>;

/// How a registry answered a blob request with a Range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Served {
    /// 206: the range asked for; this registry serves byte ranges.
    Range,
    /// 200: the whole blob, the Range ignored.
    Whole,
}

/// A blob as a stream of byte pieces (`Bytes` are shared, never copied).
pub type BlobStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

impl Registry {
    pub fn new(reference: Reference, opts: &RegistryOptions) -> Result<Registry, RegistryError> {
        let config = ClientConfig {
            protocol: if opts.plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            connect_timeout: Some(Duration::from_secs(30)),
            // A stalled stream fails instead of hanging the init container forever.
            read_timeout: Some(Duration::from_secs(120)),
            user_agent: concat!("modelcrypt/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        };
        let http = reqwest::Client::builder()
            .user_agent(concat!("modelcrypt/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(120))
            // A redirect must not take a TLS registry's manifest or blob to plain HTTP.
            .https_only(!opts.plain_http)
            // Parallel range requests need connections of their own: over HTTP/2 they would
            // share one, and its window or a per-connection cap with it.
            .http1_only()
            .build()
            .map_err(|e| RegistryError::Http {
                reference: format!("docker://{}", reference.whole()),
                reason: e.to_string(),
            })?;
        Ok(Registry {
            client: Client::new(config),
            reference,
            http,
            plain_http: opts.plain_http,
            auth: std::sync::Arc::new(std::sync::Mutex::new(RegistryAuth::Anonymous)),
        })
    }

    /// Authenticates for `op` with credentials from the auth files (anonymous when none).
    pub async fn login(
        &self,
        opts: &RegistryOptions,
        op: RegistryOperation,
    ) -> Result<(), RegistryError> {
        let host = self.reference.resolve_registry().to_string();
        let files = auth::auth_files(opts.authfile.as_deref());
        let auth = match auth::lookup(&files, &host)? {
            Some(c) => RegistryAuth::Basic(c.username, c.password.to_string()),
            None => RegistryAuth::Anonymous,
        };
        // Anonymous auth failures surface on the first real request with a clearer status.
        let token = match self.client.auth(&self.reference, &auth, op).await {
            Ok(token) => token,
            Err(e) => {
                tracing::debug!(error = %e, "registry token request failed");
                None
            }
        };
        *self.auth.lock().unwrap_or_else(|p| p.into_inner()) = match token {
            Some(token) => RegistryAuth::Bearer(token),
            None => auth.clone(),
        };
        self.client
            .store_auth_if_needed(self.reference.resolve_registry(), &auth)
            .await;
        Ok(())
    }

    fn name(&self) -> String {
        format!("docker://{}", self.reference.whole())
    }

    /// The manifest's raw bytes; the caller hashes them (the registry's word is not trusted).
    /// Read through a bound: a hostile registry cannot make us buffer an endless body.
    pub async fn manifest(&self) -> Result<Vec<u8>, RegistryError> {
        let accepted = [
            MEDIA_TYPE_MANIFEST,
            MEDIA_TYPE_DOCKER_MANIFEST,
            MEDIA_TYPE_INDEX,
        ];
        let r = &self.reference;
        let target = r.digest().or(r.tag()).unwrap_or("latest");
        let url = format!(
            "{}/v2/{}/manifests/{target}",
            self.base_url(),
            r.repository()
        );
        let request = self
            .authed(self.http.get(&url))
            .header(reqwest::header::ACCEPT, accepted.join(", "));
        let err = |reason: String| RegistryError::ManifestFetch {
            reference: self.name(),
            reason,
        };
        let response = request.send().await.map_err(|e| err(error_chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            let text = bounded_text(response).await;
            return Err(err(format!(
                "{url} answered {status}{}",
                if text.is_empty() {
                    String::new()
                } else {
                    format!(": {text}")
                }
            )));
        }
        let limit = crate::manifest::MAX_MANIFEST_BYTES;
        let too_large = || RegistryError::ManifestTooLarge {
            reference: self.name(),
            limit,
        };
        if response.content_length().unwrap_or(0) > limit as u64 {
            return Err(too_large());
        }
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(piece) = stream.next().await {
            let piece = piece.map_err(|e| err(error_chain(&e)))?;
            if body.len() + piece.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&piece);
        }
        Ok(body)
    }

    /// Streams a blob from `offset`. The stream is not verified here: the pull pipeline hashes
    /// every byte itself, once, instead of twice.
    pub async fn blob(&self, desc: &Descriptor, offset: u64) -> Result<BlobReader, RegistryError> {
        Ok(Box::pin(StreamReader::new(
            self.blob_chunks(desc, offset..desc.size).await?.0,
        )))
    }

    /// Bytes `range` of a blob as the pieces the HTTP client received, without copying them.
    /// Our own GET (oci-client reads error bodies whole): an error body is quoted bounded and
    /// escaped, and a redirect to a CDN gets no credentials (reqwest drops them across hosts).
    pub async fn blob_chunks(
        &self,
        desc: &Descriptor,
        range: Range<u64>,
    ) -> Result<(BlobStream, Served), RegistryError> {
        // `Range: bytes=0-` on an empty blob is unsatisfiable (416); there is nothing to fetch,
        // and the caller's verifier still checks that the digest is the empty one.
        if range.is_empty() {
            return Ok((Box::pin(futures_util::stream::empty()), Served::Range));
        }
        let err = |status: Option<u16>, reason: String| RegistryError::Pull {
            reference: self.name(),
            digest: desc.digest.clone(),
            status,
            reason,
        };
        let url = format!(
            "{}/v2/{}/blobs/{}",
            self.base_url(),
            self.reference.repository(),
            desc.digest
        );
        // To the end of the blob, open-ended: a blob longer than its descriptor still shows as
        // such (the verifier reports it) instead of being cut to size.
        let whole_tail = range.end >= desc.size;
        let header = match whole_tail {
            true => format!("bytes={}-", range.start),
            false => format!("bytes={}-{}", range.start, range.end - 1),
        };
        let resp = self
            .authed(self.http.get(&url))
            .header(reqwest::header::RANGE, header)
            .send()
            .await
            .map_err(|e| err(None, error_chain(&e)))?;
        let status = resp.status();
        let unsupported = |status: u16| RegistryError::RangeUnsupported {
            reference: self.name(),
            digest: desc.digest.clone(),
            status,
        };
        match status.as_u16() {
            206 => {}
            // A registry that ignores Range sends the whole blob; only usable from the start.
            200 if range.start == 0 && whole_tail => {}
            200 => return Err(unsupported(200)),
            // Servers that know only `bytes=N-` refuse a bounded range in these ways.
            code @ (400 | 416 | 501) if !whole_tail => return Err(unsupported(code)),
            code => {
                let text = bounded_text(resp).await;
                return Err(err(Some(code), format!("{status}: {text}")));
            }
        }
        // A length that disagrees with the descriptor will not get better by asking again.
        let expected = range.end.min(desc.size) - range.start.min(desc.size);
        if let Some(actual) = resp.content_length().filter(|&n| n != expected) {
            return Err(RegistryError::BlobLength {
                reference: self.name(),
                digest: desc.digest.clone(),
                size: desc.size,
                offset: range.start,
                actual,
            });
        }
        let served = match status.as_u16() {
            206 => Served::Range,
            _ => Served::Whole,
        };
        Ok((
            Box::pin(resp.bytes_stream().map_err(std::io::Error::other)),
            served,
        ))
    }

    pub async fn has_blob(&self, digest: &Digest) -> Result<bool, RegistryError> {
        self.client
            .blob_exists(&self.reference, &digest.to_string())
            .await
            .map_err(|source| RegistryError::Exists {
                reference: self.name(),
                digest: digest.clone(),
                source,
            })
    }

    /// Uploads a blob in bounded chunks; the registry checks the digest when the upload ends.
    pub async fn put_blob(
        &self,
        desc: &Descriptor,
        reader: BlobReader,
    ) -> Result<(), RegistryError> {
        let digest = desc.digest.clone();
        let source_digest = digest.clone();
        let chunks = chunk_stream(reader, PUSH_CHUNK).map_err(move |e| {
            OciDistributionError::GenericError(Some(format!(
                "reading the source of `{source_digest}`: {e}"
            )))
        });
        self.client
            .push_blob_stream(
                &self.reference,
                chunks,
                &digest.to_string(),
                Some(desc.size),
            )
            .await
            .map_err(|source| RegistryError::Push {
                reference: self.name(),
                digest,
                source,
            })?;
        Ok(())
    }

    /// Uploads a blob whose digest is only known at the end, hashing it as it goes: one
    /// `POST`, one streamed `PATCH` with the whole body, one `PUT ?digest=` (the Docker
    /// distribution "stream upload" that docker and containerd use). Fewer round trips than
    /// fixed-size chunks, and the producer never waits for a chunk's acknowledgement.
    pub async fn put_blob_streamed(
        &self,
        reader: BlobReader,
    ) -> Result<(Digest, u64), RegistryError> {
        let err = |reason: String| RegistryError::Upload {
            reference: self.name(),
            reason,
        };
        let start = format!(
            "{}/v2/{}/blobs/uploads/",
            self.base_url(),
            self.reference.repository()
        );
        let resp = self
            .authed(self.http.post(&start))
            .header(reqwest::header::CONTENT_LENGTH, "0")
            .send()
            .await
            .map_err(|e| err(error_chain(&e)))?;
        let location = self.upload_location(resp, &start).await.map_err(err)?;

        let hashed = std::sync::Arc::new(std::sync::Mutex::new((
            crate::digest::Hasher::sha256(),
            0u64,
        )));
        let tap = hashed.clone();
        let body = chunk_stream(reader, STREAM_PIECE).map_ok(move |piece| {
            let mut state = tap.lock().unwrap_or_else(|p| p.into_inner());
            state.0.update(&piece);
            state.1 += piece.len() as u64;
            piece
        });
        let resp = self
            .authed(self.http.patch(&location))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .map_err(|e| err(error_chain(&e)))?;
        let location = self.upload_location(resp, &location).await.map_err(err)?;

        let (hasher, size) = std::mem::replace(
            &mut *hashed.lock().unwrap_or_else(|p| p.into_inner()),
            (crate::digest::Hasher::sha256(), 0),
        );
        let digest = hasher.finish();
        let sep = if location.contains('?') { '&' } else { '?' };
        let resp = self
            .authed(self.http.put(format!("{location}{sep}digest={digest}")))
            .header(reqwest::header::CONTENT_LENGTH, "0")
            .send()
            .await
            .map_err(|e| err(error_chain(&e)))?;
        if resp.status() != reqwest::StatusCode::CREATED {
            let status = resp.status();
            return Err(err(format!(
                "closing the upload: {status}: {}",
                bounded_text(resp).await
            )));
        }
        Ok((digest, size))
    }

    fn base_url(&self) -> String {
        format!(
            "{}://{}",
            if self.plain_http { "http" } else { "https" },
            self.reference.resolve_registry()
        )
    }

    /// `request` with the credentials [`Registry::login`] settled on.
    fn authed(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &*self.auth.lock().unwrap_or_else(|p| p.into_inner()) {
            RegistryAuth::Bearer(token) => request.bearer_auth(token),
            RegistryAuth::Basic(user, password) => request.basic_auth(user, Some(password)),
            RegistryAuth::Anonymous => request,
        }
    }

    /// The absolute `Location` of an upload session from a 202 answer. It must stay on this
    /// registry: our credentials go with the next request.
    async fn upload_location(&self, resp: reqwest::Response, url: &str) -> Result<String, String> {
        let status = resp.status();
        // Without the query: an upload session's `_state` token says nothing to a reader.
        let shown = url.split('?').next().unwrap_or(url);
        if status != reqwest::StatusCode::ACCEPTED {
            return Err(format!(
                "{shown} answered {status}: {}",
                bounded_text(resp).await
            ));
        }
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| format!("{shown} gave no upload location"))?;
        let base = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
        let joined = base
            .join(location)
            .map_err(|e| format!("bad upload location: {e}"))?;
        if joined.host_str() != base.host_str()
            || joined.port_or_known_default() != base.port_or_known_default()
        {
            return Err(format!(
                "the upload location `{}` is on another host",
                crate::extract::shown(location)
            ));
        }
        Ok(joined.to_string())
    }

    pub async fn put_manifest(&self, raw: &[u8], media_type: &str) -> Result<(), RegistryError> {
        let content_type =
            http::HeaderValue::from_str(media_type).map_err(|e| RegistryError::PushManifest {
                reference: self.name(),
                source: OciDistributionError::GenericError(Some(e.to_string())),
            })?;
        self.client
            .push_manifest_raw(&self.reference, raw.to_vec(), content_type)
            .await
            .map_err(|source| RegistryError::PushManifest {
                reference: self.name(),
                source,
            })?;
        Ok(())
    }

    pub fn reference(&self) -> &Reference {
        &self.reference
    }
}

/// Turns a reader into a stream of `PUSH_CHUNK`-sized buffers (the last one shorter).
fn chunk_stream(
    reader: BlobReader,
    size: usize,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures_util::stream::try_unfold(reader, move |mut reader| async move {
        let mut buf = BytesMut::with_capacity(size);
        while buf.len() < size {
            if reader.read_buf(&mut buf).await? == 0 {
                break;
            }
        }
        if buf.is_empty() {
            Ok(None)
        } else {
            Ok(Some((buf.freeze(), reader)))
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::error_body_text;

    #[test]
    fn distribution_error_bodies_are_shown_by_code_message_and_detail() {
        let body = r#"{"errors":[{"code":"UNKNOWN","message":"unknown error","detail":"write /x/data: no space left on device"}]}"#;
        assert_eq!(
            error_body_text(body),
            "UNKNOWN: unknown error (write /x/data: no space left on device)"
        );
        let two = r#"{"errors":[{"code":"DENIED","message":"no"},{"code":"X","message":"y","detail":{"a":1}}]}"#;
        assert_eq!(error_body_text(two), r#"DENIED: no; X: y ({"a":1})"#);
        let no_code = r#"{"errors":[{"message":"blob unknown"}]}"#;
        assert_eq!(error_body_text(no_code), "blob unknown");
        for other in ["not json", r#"{"errors":[]}"#, r#"{"message":"x"}"#, ""] {
            assert_eq!(error_body_text(other), other);
        }
    }
}
