//! Image references: where an artifact lives. The same syntax as skopeo, so scripts can switch
//! between the two tools: `docker://HOST/REPO[:TAG|@DIGEST]` (or the bare `HOST/REPO:TAG`),
//! `oci:DIR[:TAG]` for an OCI image layout and `dir:DIR` for skopeo's directory format.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::digest::Digest;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    /// A repository in an OCI distribution registry.
    Registry(oci_client::Reference),
    /// An OCI image layout directory; `tag` selects an `index.json` entry by its
    /// `org.opencontainers.image.ref.name` annotation.
    Layout { dir: PathBuf, tag: Option<String> },
    /// skopeo's `dir:` transport: `manifest.json`, `version` and blobs named by hex digest.
    Dir { dir: PathBuf },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("empty image reference")]
    Empty,
    #[error("invalid registry reference `{input}`: {reason}")]
    Registry { input: String, reason: String },
    #[error("invalid `{transport}:` reference `{input}`: the path is empty")]
    EmptyPath {
        transport: &'static str,
        input: String,
    },
    #[error("unsupported transport `{0}:`")]
    UnsupportedTransport(String),
}

impl ImageRef {
    /// The manifest digest the reference pins, if it pins one.
    pub fn pinned_digest(&self) -> Option<Digest> {
        match self {
            ImageRef::Registry(r) => r.digest().and_then(|d| d.parse().ok()),
            _ => None,
        }
    }

    pub fn transport(&self) -> &'static str {
        match self {
            ImageRef::Registry(_) => "docker",
            ImageRef::Layout { .. } => "oci",
            ImageRef::Dir { .. } => "dir",
        }
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if let Some(rest) = input.strip_prefix("docker://") {
            return parse_registry(input, rest);
        }
        if let Some(rest) = input.strip_prefix("oci:") {
            // skopeo splits at the first colon too, so a path may not contain one.
            let (dir, tag) = match rest.split_once(':') {
                Some((dir, tag)) if !tag.is_empty() => (dir, Some(tag.to_string())),
                Some((dir, _)) => (dir, None),
                None => (rest, None),
            };
            if dir.is_empty() {
                return Err(ReferenceError::EmptyPath {
                    transport: "oci",
                    input: input.into(),
                });
            }
            return Ok(ImageRef::Layout {
                dir: dir.into(),
                tag,
            });
        }
        if let Some(rest) = input.strip_prefix("dir:") {
            if rest.is_empty() {
                return Err(ReferenceError::EmptyPath {
                    transport: "dir",
                    input: input.into(),
                });
            }
            return Ok(ImageRef::Dir { dir: rest.into() });
        }
        for other in [
            "docker-archive:",
            "oci-archive:",
            "containers-storage:",
            "docker-daemon:",
        ] {
            if input.starts_with(other) {
                return Err(ReferenceError::UnsupportedTransport(
                    other.trim_end_matches(':').into(),
                ));
            }
        }
        parse_registry(input, input)
    }
}

fn parse_registry(input: &str, rest: &str) -> Result<ImageRef, ReferenceError> {
    let reference =
        oci_client::Reference::from_str(rest).map_err(|e| ReferenceError::Registry {
            input: input.into(),
            reason: e.to_string(),
        })?;
    if let Some(d) = reference.digest() {
        d.parse::<Digest>().map_err(|e| ReferenceError::Registry {
            input: input.into(),
            reason: e.to_string(),
        })?;
    }
    Ok(ImageRef::Registry(reference))
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Registry(r) => write!(f, "docker://{}", r.whole()),
            ImageRef::Layout {
                dir,
                tag: Some(tag),
            } => write!(f, "oci:{}:{tag}", dir.display()),
            ImageRef::Layout { dir, tag: None } => write!(f, "oci:{}", dir.display()),
            ImageRef::Dir { dir } => write!(f, "dir:{}", dir.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_transport_parses_and_prints_back() {
        for s in [
            "docker://127.0.0.1:5000/models/qwen:v1",
            "oci:/tmp/layout:qwen",
            "oci:/tmp/layout",
            "dir:/tmp/d",
        ] {
            assert_eq!(s.parse::<ImageRef>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn bare_references_mean_a_registry() {
        let r: ImageRef = "localhost:5000/m:t".parse().unwrap();
        assert_eq!(r.to_string(), "docker://localhost:5000/m:t");
    }

    #[test]
    fn a_pinned_digest_is_exposed() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let r: ImageRef = format!("docker://reg.example/m@{d}").parse().unwrap();
        assert_eq!(r.pinned_digest().unwrap().to_string(), d);
    }

    #[test]
    fn bad_references_are_refused_with_the_reason() {
        assert_eq!("".parse::<ImageRef>(), Err(ReferenceError::Empty));
        assert!(matches!(
            "oci:".parse::<ImageRef>(),
            Err(ReferenceError::EmptyPath { .. })
        ));
        assert!(matches!(
            "docker-archive:/x.tar".parse::<ImageRef>(),
            Err(ReferenceError::UnsupportedTransport(_))
        ));
        assert!("docker://Bad Ref".parse::<ImageRef>().is_err());
    }
}
