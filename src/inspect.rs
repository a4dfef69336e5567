//! `inspect`: what an artifact holds, without fetching its layers.

use serde::Serialize;

use crate::digest::Digest;
use crate::manifest::Manifest;
use crate::modelpack::{self, LayerFormat, ModelConfig};
use crate::reference::ImageRef;
use crate::store::{Store, StoreError};

/// Configs larger than this are not model configs.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Inspection {
    pub reference: String,
    pub digest: Digest,
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub config: Option<ModelConfig>,
    pub layers: Vec<LayerInfo>,
    pub total_size: u64,
    pub manifest: Manifest,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerInfo {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub filepath: Option<String>,
    pub encrypted: bool,
    /// Annotation keys naming key recipients (`org.opencontainers.image.enc.keys.*`).
    pub recipients: Vec<String>,
}

pub async fn inspect(r: &ImageRef, store: &Store) -> Result<Inspection, StoreError> {
    let resolved = store.resolve(r).await?;
    let m = resolved.manifest;
    let is_model = [
        modelpack::CONFIG_MEDIA_TYPE,
        modelpack::LEGACY_CONFIG_MEDIA_TYPE,
    ]
    .contains(&m.config.media_type.as_str());
    let config = if is_model {
        let raw = store.small_blob(r, &m.config, MAX_CONFIG_BYTES).await?;
        serde_json::from_slice(&raw).ok()
    } else {
        None
    };
    let layers = m
        .layers
        .iter()
        .map(|l| LayerInfo {
            digest: l.digest.clone(),
            size: l.size,
            media_type: l.media_type.clone(),
            filepath: modelpack::filepath(l).map(str::to_string),
            encrypted: LayerFormat::of(&l.media_type)
                .map(|f| f.encrypted)
                .unwrap_or(false),
            recipients: l
                .annotations
                .keys()
                .filter_map(|k| k.strip_prefix("org.opencontainers.image.enc.keys."))
                .map(str::to_string)
                .collect(),
        })
        .collect::<Vec<_>>();
    Ok(Inspection {
        reference: r.to_string(),
        digest: resolved.digest,
        media_type: m.content_type().to_string(),
        artifact_type: m.artifact_type.clone(),
        config,
        total_size: layers.iter().map(|l| l.size).sum(),
        layers,
        manifest: m,
    })
}
