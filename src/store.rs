//! One interface over the three transports, so `pull`, `copy` and `pack` never care where an
//! artifact lives.

use oci_client::RegistryOperation;

use crate::digest::Digest;
use crate::layout::dir::DirLayout;
use crate::layout::{Layout, LayoutError};
use crate::manifest::{Descriptor, Manifest, ManifestError};
use crate::reference::ImageRef;
use crate::registry::{BlobReader, Registry, RegistryError, RegistryOptions};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("invalid manifest in `{reference}`")]
    Manifest {
        reference: String,
        #[source]
        source: ManifestError,
    },
    #[error(
        "manifest of `{reference}` has digest `{actual}`, but the reference pins `{expected}`"
    )]
    PinnedDigest {
        reference: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("blob `{digest}` in `{reference}` is larger than the {limit}-byte limit for its kind")]
    TooLarge {
        reference: String,
        digest: Digest,
        limit: u64,
    },
}

/// A resolved manifest: its bytes exactly as stored (so copies keep the digest), the digest
/// of those bytes, and the parsed form.
#[derive(Clone, Debug)]
pub struct ResolvedManifest {
    pub raw: Vec<u8>,
    pub digest: Digest,
    pub manifest: Manifest,
}

pub enum Store {
    Registry(Registry),
    Layout(Layout),
    Dir(DirLayout),
}

impl Store {
    /// Opens a store for reading (`push == false`) or writing.
    pub async fn open(
        r: &ImageRef,
        opts: &RegistryOptions,
        push: bool,
    ) -> Result<Store, StoreError> {
        Ok(match r {
            ImageRef::Registry(reference) => {
                let reg = Registry::new(reference.clone(), opts)?;
                let op = if push {
                    RegistryOperation::Push
                } else {
                    RegistryOperation::Pull
                };
                reg.login(opts, op).await?;
                Store::Registry(reg)
            }
            ImageRef::Layout { dir, tag } => Store::Layout(Layout::new(dir.clone(), tag.clone())),
            ImageRef::Dir { dir } => Store::Dir(DirLayout::new(dir.clone())),
        })
    }

    /// Fetches, hashes and parses the manifest; a digest pinned by the reference must match.
    pub async fn resolve(&self, r: &ImageRef) -> Result<ResolvedManifest, StoreError> {
        let (raw, digest) = match self {
            Store::Registry(reg) => {
                let raw = reg.manifest().await?;
                let digest = Digest::sha256(&raw);
                (raw, digest)
            }
            Store::Layout(l) => l.manifest().await?,
            Store::Dir(d) => d.manifest().await?,
        };
        if let Some(expected) = r.pinned_digest() {
            if expected != digest {
                return Err(StoreError::PinnedDigest {
                    reference: r.to_string(),
                    expected,
                    actual: digest,
                });
            }
        }
        let manifest = Manifest::parse(&raw).map_err(|source| StoreError::Manifest {
            reference: r.to_string(),
            source,
        })?;
        Ok(ResolvedManifest {
            raw,
            digest,
            manifest,
        })
    }

    /// Streams a blob from `offset`; the caller verifies it.
    pub async fn blob(&self, desc: &Descriptor, offset: u64) -> Result<BlobReader, StoreError> {
        Ok(match self {
            Store::Registry(r) => r.blob(desc, offset).await?,
            Store::Layout(l) => l.blob(desc, offset).await?,
            Store::Dir(d) => d.blob(desc, offset).await?,
        })
    }

    /// Bytes `range` of a blob as a stream of pieces: a registry's as received, a file's in
    /// `chunk`-byte reads. A range that runs to the blob's end is open-ended, so a blob longer
    /// than its descriptor still shows as longer (the caller's verifier reports it). Local
    /// blobs are only read to their end (nothing splits them), so `range.end` is theirs. Says
    /// whether the registry served the range or ignored it.
    pub async fn blob_chunks(
        &self,
        desc: &Descriptor,
        range: std::ops::Range<u64>,
        chunk: usize,
    ) -> Result<(crate::registry::BlobStream, crate::registry::Served), StoreError> {
        Ok(match self {
            Store::Registry(r) => r.blob_chunks(desc, range).await?,
            Store::Layout(_) | Store::Dir(_) => (
                Box::pin(tokio_util::io::ReaderStream::with_capacity(
                    self.blob(desc, range.start).await?,
                    chunk,
                )),
                crate::registry::Served::Range,
            ),
        })
    }

    /// Reads a small blob (a config) whole, verified, refusing anything over `limit` bytes.
    pub async fn small_blob(
        &self,
        r: &ImageRef,
        desc: &Descriptor,
        limit: u64,
    ) -> Result<Vec<u8>, StoreError> {
        if desc.size > limit {
            return Err(StoreError::TooLarge {
                reference: r.to_string(),
                digest: desc.digest.clone(),
                limit,
            });
        }
        use tokio::io::AsyncReadExt;
        let mut reader = self.blob(desc, 0).await?;
        let mut raw = Vec::with_capacity(desc.size as usize);
        (&mut reader)
            .take(limit + 1)
            .read_to_end(&mut raw)
            .await
            .map_err(|source| LayoutError::Io {
                path: r.to_string().into(),
                source,
            })?;
        let actual = Digest::sha256(&raw);
        if raw.len() as u64 != desc.size || actual != desc.digest {
            return Err(LayoutError::Mismatch {
                dir: r.to_string().into(),
                digest: desc.digest.clone(),
                mismatch: if raw.len() as u64 != desc.size {
                    crate::digest::Mismatch::Size {
                        expected: desc.size,
                        actual: raw.len() as u64,
                    }
                } else {
                    crate::digest::Mismatch::Digest {
                        expected: desc.digest.clone(),
                        actual,
                    }
                },
            }
            .into());
        }
        Ok(raw)
    }

    pub async fn has_blob(&self, digest: &Digest) -> Result<bool, StoreError> {
        Ok(match self {
            Store::Registry(r) => r.has_blob(digest).await?,
            Store::Layout(l) => l.has_blob(digest).await?,
            Store::Dir(d) => d.has_blob(digest).await?,
        })
    }

    /// Writes a blob; every transport verifies size and digest before the blob becomes visible.
    pub async fn put_blob(&self, desc: &Descriptor, reader: BlobReader) -> Result<(), StoreError> {
        match self {
            Store::Registry(r) => r.put_blob(desc, reader).await?,
            Store::Layout(l) => l.put_blob(desc, reader).await?,
            Store::Dir(d) => d.put_blob(desc, reader).await?,
        }
        Ok(())
    }

    /// Writes a blob whose digest is only known once all of it was read, in one pass.
    pub async fn put_blob_streamed(&self, reader: BlobReader) -> Result<(Digest, u64), StoreError> {
        Ok(match self {
            Store::Registry(r) => r.put_blob_streamed(reader).await?,
            Store::Layout(l) => l.put_blob_streamed(reader).await?,
            Store::Dir(d) => d.put_blob_streamed(reader).await?,
        })
    }

    /// Stores the manifest bytes unchanged and returns their digest.
    pub async fn put_manifest(&self, raw: &[u8], media_type: &str) -> Result<Digest, StoreError> {
        Ok(match self {
            Store::Registry(r) => {
                r.put_manifest(raw, media_type).await?;
                Digest::sha256(raw)
            }
            Store::Layout(l) => l.put_manifest(raw, media_type).await?,
            Store::Dir(d) => d.put_manifest(raw, media_type).await?,
        })
    }
}
