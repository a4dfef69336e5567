//! OCI image manifests and descriptors, parsed defensively: a manifest comes from an untrusted
//! registry, so sizes, digests and counts are checked before anything acts on them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_TYPE_DOCKER_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";

/// Larger manifests are refused before parsing (containerd uses the same bound).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// More layers than this is not a model; modctl itself stops at 2048 files.
pub const MAX_LAYERS: usize = 10_000;

/// An OCI content descriptor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Fields we do not model, kept so a rewritten manifest loses nothing.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Descriptor {
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            urls: None,
            annotations: BTreeMap::new(),
            artifact_type: None,
            extra: BTreeMap::new(),
        }
    }
}

/// An OCI image manifest (also accepts Docker schema 2, which has the same shape).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is {0} bytes, more than the {MAX_MANIFEST_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("manifest is not valid JSON for an OCI image manifest")]
    Json(#[source] serde_json::Error),
    #[error("unsupported manifest schemaVersion {0} (expected 2)")]
    SchemaVersion(u32),
    #[error(
        "`{0}` is an image index, not a manifest; \
         reference the model's manifest by its digest instead"
    )]
    Index(String),
    #[error("unsupported manifest media type `{0}`")]
    MediaType(String),
    #[error("manifest has {0} layers, more than the limit of {MAX_LAYERS}")]
    TooManyLayers(usize),
    #[error("manifest has no layers")]
    NoLayers,
    #[error("the layer sizes in the manifest add up to more than 2^64 bytes")]
    SizeOverflow,
}

impl Manifest {
    /// Parses and checks a manifest's raw bytes.
    pub fn parse(raw: &[u8]) -> Result<Manifest, ManifestError> {
        if raw.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge(raw.len()));
        }
        // Look at the media type first so an index gets a helpful error, not a parse error.
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Peek {
            media_type: Option<String>,
            manifests: Option<serde_json::Value>,
        }
        let peek: Peek = serde_json::from_slice(raw).map_err(ManifestError::Json)?;
        match peek.media_type.as_deref() {
            Some(t @ (MEDIA_TYPE_INDEX | MEDIA_TYPE_DOCKER_LIST)) => {
                return Err(ManifestError::Index(t.into()))
            }
            None if peek.manifests.is_some() => {
                return Err(ManifestError::Index(MEDIA_TYPE_INDEX.into()))
            }
            None | Some(MEDIA_TYPE_MANIFEST | MEDIA_TYPE_DOCKER_MANIFEST) => {}
            Some(other) => return Err(ManifestError::MediaType(other.into())),
        }
        let m: Manifest = serde_json::from_slice(raw).map_err(ManifestError::Json)?;
        if m.schema_version != 2 {
            return Err(ManifestError::SchemaVersion(m.schema_version));
        }
        if m.layers.len() > MAX_LAYERS {
            return Err(ManifestError::TooManyLayers(m.layers.len()));
        }
        if m.layers.is_empty() {
            return Err(ManifestError::NoLayers);
        }
        // Later code adds sizes up; an overflow here would wrap or panic there.
        m.layers
            .iter()
            .try_fold(m.config.size, |acc, l| acc.checked_add(l.size))
            .ok_or(ManifestError::SizeOverflow)?;
        Ok(m)
    }

    /// The media type to send in `Content-Type` when pushing this manifest.
    pub fn content_type(&self) -> &str {
        self.media_type.as_deref().unwrap_or(MEDIA_TYPE_MANIFEST)
    }

    /// Canonical bytes for a manifest we built (two-space indentation is not needed; compact).
    pub fn to_bytes(&self) -> Vec<u8> {
        // INVARIANT: every field is a plain string, number or map; serialization cannot fail.
        serde_json::to_vec(self).expect("manifest serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn manifest_json(layers: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{MEDIA_TYPE_MANIFEST}",
            "config":{{"mediaType":"application/vnd.cncf.model.config.v1+json","digest":"{D}","size":0}},
            "layers":[{layers}],"unknownField":{{"kept":true}}}}"#
        )
    }

    #[test]
    fn a_manifest_round_trips_with_unknown_fields_kept() {
        let layer =
            format!(r#"{{"mediaType":"x","digest":"{D}","size":5,"annotations":{{"a":"b"}}}}"#);
        let m = Manifest::parse(manifest_json(&layer).as_bytes()).unwrap();
        assert_eq!(m.layers[0].annotations["a"], "b");
        let again = Manifest::parse(&m.to_bytes()).unwrap();
        assert_eq!(again, m);
        assert!(again.extra.contains_key("unknownField"));
    }

    #[test]
    fn hostile_manifests_are_refused() {
        let neg = format!(r#"{{"mediaType":"x","digest":"{D}","size":-1}}"#);
        assert!(matches!(
            Manifest::parse(manifest_json(&neg).as_bytes()),
            Err(ManifestError::Json(_))
        ));
        let bad_digest = r#"{"mediaType":"x","digest":"sha256:../../x","size":1}"#;
        assert!(Manifest::parse(manifest_json(bad_digest).as_bytes()).is_err());
        assert!(matches!(
            Manifest::parse(manifest_json("").as_bytes()),
            Err(ManifestError::NoLayers)
        ));
        let index =
            format!(r#"{{"schemaVersion":2,"mediaType":"{MEDIA_TYPE_INDEX}","manifests":[]}}"#);
        assert!(matches!(
            Manifest::parse(index.as_bytes()),
            Err(ManifestError::Index(_))
        ));
        let huge = vec![b' '; MAX_MANIFEST_BYTES + 1];
        assert!(matches!(
            Manifest::parse(&huge),
            Err(ManifestError::TooLarge(_))
        ));
    }
}
