//! The top-level error: one `#[from]` per module, the hints shown under it, and the exit code.

use crate::extract::staging::StagingError;
use crate::extract::ExtractError;
use crate::pack::PackError;
use crate::pull::{LayerError, PullError};
use crate::reference::ReferenceError;
use crate::registry::RegistryError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error(transparent)]
    Pack(#[from] PackError),
    #[error(transparent)]
    Crypt(#[from] crate::crypt::CryptError),
    #[error(transparent)]
    Ocicrypt(#[from] crate::ocicrypt::OcicryptError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Broker(#[from] KeyFetch),
    #[error("cannot write `{path}`")]
    Output {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("interrupted by {0}")]
    Signal(&'static str),
}

impl Error {
    /// Exit status: 2 for bad input on the command line, 1 for everything else. 0 is only
    /// ever returned when every layer verified.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Reference(_) | Error::Usage(_) => 2,
            Error::Signal(_) => 130,
            _ => 1,
        }
    }

    /// What the user can do about it.
    pub fn hints(&self) -> Vec<String> {
        let mut hints = Vec::new();
        let text = chain_text(self);
        if text.contains("http: server gave HTTP response to HTTPS client")
            || text.contains("InvalidContentType")
            || text.contains("invalid HTTP version")
            || (text.contains("https://127.") || text.contains("https://localhost"))
        {
            hints.push(
                "for a registry without TLS, such as a local test registry, add `--plain-http`"
                    .into(),
            );
        }
        if text.contains("code: 401")
            || text.contains("Unauthorized")
            || text.contains("UNAUTHORIZED")
        {
            hints.push(
                "log in with `skopeo login` or `docker login`, or point `--authfile` / `REGISTRY_AUTH_FILE` at an auth.json".into(),
            );
        }
        match self {
            Error::Pull(PullError::Layer { source, .. }) => match source {
                LayerError::Encrypted => hints.push(
                    "this artifact is encrypted (ocicrypt): pass `--decryption-key KEY` for JWE recipients or \
                     `--kek FILE` for `kbs://` recipients; `modelcrypt inspect` lists each layer's recipients"
                        .into(),
                ),
                LayerError::NotEncrypted => hints.push(
                    "if the artifact was encrypted only in part on purpose, add `--allow-plain-layers`".into(),
                ),
                LayerError::Key(_) => hints.push(
                    "none of the given keys is a recipient of this layer; `modelcrypt inspect` lists its recipients".into(),
                ),
                LayerError::Hmac => hints.push(
                    "the encrypted bytes were changed after encryption, or the key is not the one used to encrypt; \
                     nothing was written to the destination"
                        .into(),
                ),
                LayerError::Mismatch(_) => hints.push(
                    "the bytes received are not the bytes the manifest pins; nothing was written to the destination. \
                     Retry; if it persists, the stored blob is corrupt or was tampered with"
                        .into(),
                ),
                LayerError::Extract(e) if e.is_no_space() => hints.push(
                    "the destination file system is full; give the volume at least the model's size \
                     (`modelcrypt inspect` shows it) plus some headroom"
                        .into(),
                ),
                LayerError::Extract(
                    ExtractError::UnsafePath { .. }
                    | ExtractError::LinkEscapes { .. }
                    | ExtractError::ThroughNonDirectory { .. }
                    | ExtractError::SpecialFile { .. }
                    | ExtractError::SetId { .. }
                    | ExtractError::BadHardlink { .. },
                ) => hints.push(
                    "the artifact is malformed or hostile and was refused; nothing was written to the destination".into(),
                ),
                LayerError::MediaType(_) => {
                    hints.push("`modelcrypt inspect` lists every layer and its media type".into())
                }
                _ => {}
            },
            Error::Pull(PullError::Broker {
                source: crate::kbs::KbsError::Timeout { .. },
                ..
            }) => hints.push(
                "the broker accepted the connection but did not answer: check its logs and its attestation \
                 service, or allow more time with `--kbs-timeout`"
                    .into(),
            ),
            Error::Pull(PullError::Broker { source, .. }) => match source.kind() {
                Some("PolicyDeny") => hints.push(
                    "the broker's resource policy refused this TEE; with the `sample` TEE the default \
                     policy always does (install an allow-all policy for demos)"
                        .into(),
                ),
                Some("PluginInternalError") => hints.push(
                    "Trustee says this for a resource that does not exist: check the `kbs:///` path \
                     and that the KEK was uploaded to the broker"
                        .into(),
                ),
                _ => {}
            },
            Error::Pull(PullError::Staging(StagingError::MountPoint { .. })) => hints.push(
                "point `--to` at a directory inside the volume, such as `/models/qwen`, not at the mount point itself".into(),
            ),
            Error::Pull(PullError::NoSpace { .. }) => hints.push(
                "raise the volume's size (an `emptyDir` with `medium: Memory` takes `sizeLimit`, and the \
                 pod's memory limit must cover it too), or remove what else is on it; nothing was fetched"
                    .into(),
            ),
            Error::Pull(PullError::Staging(StagingError::Foreign { .. })) => {
                hints.push("remove it, or choose another `--to` directory".into())
            }
            Error::Store(StoreError::Registry(RegistryError::AuthFile { .. })) => {
                hints.push("fix or remove the file; it must be a Docker config.json or containers auth.json".into())
            }
            _ => {}
        }
        hints
    }
}

fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    messages(e).join("\n")
}

/// The messages of `e` and its sources, in order, each once: `#[error(transparent)]` layers
/// repeat their inner message.
pub(crate) fn messages(e: &dyn std::error::Error) -> Vec<String> {
    let mut out = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if out.last() != Some(&text) {
            out.push(text);
        }
        cur = s.source();
    }
    out
}

/// A key-broker failure outside a pull's layers (fetching a `kbs://` private key, setup).
#[derive(Debug, thiserror::Error)]
#[error("key broker")]
pub struct KeyFetch(#[from] pub crate::kbs::KbsError);
