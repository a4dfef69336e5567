//! `copy`: move an artifact between transports unchanged. The manifest is copied byte for byte,
//! so its digest, and any signature over it, survives.

use futures_util::{StreamExt, TryStreamExt};

use crate::digest::Digest;
use crate::reference::ImageRef;
use crate::store::{Store, StoreError};

#[derive(Clone, Debug)]
pub struct CopySummary {
    pub manifest_digest: Digest,
    pub blobs: usize,
    pub copied: usize,
    pub bytes: u64,
}

/// Copies every blob the destination lacks, then the manifest. Every destination verifies
/// each blob's size and digest before it becomes visible.
#[tracing::instrument(skip_all, fields(from = %src_ref))]
pub async fn copy(
    src_ref: &ImageRef,
    src: &Store,
    dest: &Store,
) -> Result<CopySummary, StoreError> {
    let resolved = src.resolve(src_ref).await?;
    let m = &resolved.manifest;
    let blobs: Vec<_> = std::iter::once(&m.config)
        .chain(m.layers.iter())
        .cloned()
        .collect();
    let copied: Vec<u64> = futures_util::stream::iter(blobs.iter())
        .map(|desc| async move {
            if dest.has_blob(&desc.digest).await? {
                return Ok::<_, StoreError>(None);
            }
            tracing::info!(digest = %desc.digest, size = desc.size, "copying blob");
            let reader = src.blob(desc, 0).await?;
            dest.put_blob(desc, reader).await?;
            Ok(Some(desc.size))
        })
        .buffer_unordered(3)
        .try_filter_map(|x| async move { Ok(x) })
        .try_collect()
        .await?;
    dest.put_manifest(&resolved.raw, m.content_type()).await?;
    Ok(CopySummary {
        manifest_digest: resolved.digest,
        blobs: blobs.len(),
        copied: copied.len(),
        bytes: copied.iter().sum(),
    })
}
