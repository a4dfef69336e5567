//! Artifacts on disk: the OCI image layout (`oci:DIR[:TAG]`) and skopeo's `dir:` format.
//!
//! Both write blobs through a temporary file that is renamed into place only after its digest
//! and size matched, so a crash or a bad source never leaves a wrong blob under a digest name.

pub mod dir;

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::digest::{Digest, Hasher, Mismatch};
use crate::manifest::{Descriptor, MEDIA_TYPE_INDEX};

pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
const LAYOUT_FILE: &str = "oci-layout";

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("cannot access `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{path}` is not a valid `{what}`")]
    Json {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("`{dir}` is not an OCI image layout (no `oci-layout` file)")]
    NotALayout { dir: PathBuf },
    #[error("no manifest tagged `{tag}` in `{dir}`; tags present: {present}")]
    TagNotFound {
        dir: PathBuf,
        tag: String,
        present: String,
    },
    #[error("`{dir}` holds {count} manifests; name one with `oci:{dir}:TAG` (tags: {present})")]
    Ambiguous {
        dir: PathBuf,
        count: usize,
        present: String,
    },
    #[error("`{dir}` holds no manifest")]
    Empty { dir: PathBuf },
    #[error("blob `{digest}` is missing from `{dir}`")]
    MissingBlob { dir: PathBuf, digest: Digest },
    #[error("the manifest `{digest}` in `{dir}` is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        dir: PathBuf,
        digest: Digest,
        size: u64,
        limit: u64,
    },
    #[error("blob `{digest}` in `{dir}` does not match its descriptor: {mismatch}")]
    Mismatch {
        dir: PathBuf,
        digest: Digest,
        mismatch: Mismatch,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
    #[serde(flatten)]
    extra: std::collections::BTreeMap<String, serde_json::Value>,
}

/// An OCI image layout directory and the tag that selects a manifest in it.
#[derive(Clone, Debug)]
pub struct Layout {
    dir: PathBuf,
    tag: Option<String>,
}

impl Layout {
    pub fn new(dir: PathBuf, tag: Option<String>) -> Layout {
        Layout { dir, tag }
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join("blobs")
            .join(digest.algorithm().name())
            .join(digest.hex())
    }

    fn read_index(&self) -> Result<Index, LayoutError> {
        if !self.dir.join(LAYOUT_FILE).is_file() {
            return Err(LayoutError::NotALayout {
                dir: self.dir.clone(),
            });
        }
        let path = self.dir.join("index.json");
        let raw = std::fs::read(&path).map_err(io_err(&path))?;
        serde_json::from_slice(&raw).map_err(|source| LayoutError::Json {
            path,
            what: "index.json",
            source,
        })
    }

    /// Finds the manifest the tag names and returns its raw bytes and digest.
    pub async fn manifest(&self) -> Result<(Vec<u8>, Digest), LayoutError> {
        let index = self.read_index()?;
        let tags = || {
            let t: Vec<_> = index
                .manifests
                .iter()
                .filter_map(|m| m.annotations.get(REF_NAME))
                .map(|t| format!("`{t}`"))
                .collect();
            if t.is_empty() {
                "none".to_string()
            } else {
                t.join(", ")
            }
        };
        let entry = match &self.tag {
            Some(tag) => index
                .manifests
                .iter()
                .rev()
                .find(|m| m.annotations.get(REF_NAME) == Some(tag))
                .ok_or_else(|| LayoutError::TagNotFound {
                    dir: self.dir.clone(),
                    tag: tag.clone(),
                    present: tags(),
                })?,
            None => match index.manifests.as_slice() {
                [] => {
                    return Err(LayoutError::Empty {
                        dir: self.dir.clone(),
                    })
                }
                [one] => one,
                many => {
                    return Err(LayoutError::Ambiguous {
                        dir: self.dir.clone(),
                        count: many.len(),
                        present: tags(),
                    })
                }
            },
        };
        let raw = self
            .read_small_blob(&entry.digest, crate::manifest::MAX_MANIFEST_BYTES as u64)
            .await?;
        Ok((raw, entry.digest.clone()))
    }

    /// Reads a small blob whole (manifests, configs), bounded by `limit`.
    pub async fn read_small_blob(
        &self,
        digest: &Digest,
        limit: u64,
    ) -> Result<Vec<u8>, LayoutError> {
        read_small(&self.dir, &self.blob_path(digest), digest, limit).await
    }

    pub async fn blob(
        &self,
        desc: &Descriptor,
        offset: u64,
    ) -> Result<crate::registry::BlobReader, LayoutError> {
        open_blob(
            &self.dir,
            &self.blob_path(&desc.digest),
            &desc.digest,
            offset,
        )
        .await
    }

    pub async fn has_blob(&self, digest: &Digest) -> Result<bool, LayoutError> {
        Ok(self.blob_path(digest).is_file())
    }

    pub async fn put_blob(
        &self,
        desc: &Descriptor,
        reader: crate::registry::BlobReader,
    ) -> Result<(), LayoutError> {
        self.init()?;
        let tmp_dir = self.dir.join("blobs/sha256");
        write_blob(
            &self.dir,
            &tmp_dir,
            Some(desc),
            |d| self.blob_path(d),
            reader,
        )
        .await?;
        Ok(())
    }

    /// Stores a blob whose digest is only known once it was read.
    pub async fn put_blob_streamed(
        &self,
        reader: crate::registry::BlobReader,
    ) -> Result<(Digest, u64), LayoutError> {
        self.init()?;
        let tmp_dir = self.dir.join("blobs/sha256");
        write_blob(&self.dir, &tmp_dir, None, |d| self.blob_path(d), reader).await
    }

    /// Stores the manifest blob and points the tag at it in `index.json`.
    pub async fn put_manifest(&self, raw: &[u8], media_type: &str) -> Result<Digest, LayoutError> {
        self.init()?;
        let digest = Digest::sha256(raw);
        let mut desc = Descriptor::new(media_type, digest.clone(), raw.len() as u64);
        self.put_blob(&desc, Box::pin(io::Cursor::new(raw.to_vec())))
            .await?;
        let mut index = self.read_index()?;
        match &self.tag {
            Some(tag) => {
                index
                    .manifests
                    .retain(|m| m.annotations.get(REF_NAME) != Some(tag));
                desc.annotations.insert(REF_NAME.into(), tag.clone());
            }
            None => index
                .manifests
                .retain(|m| m.digest != digest || m.annotations.contains_key(REF_NAME)),
        }
        index.manifests.push(desc);
        index
            .media_type
            .get_or_insert_with(|| MEDIA_TYPE_INDEX.into());
        let path = self.dir.join("index.json");
        // INVARIANT: the index holds only strings, numbers and maps.
        let bytes = serde_json::to_vec(&index).expect("index serializes");
        write_atomic(&path, &bytes)?;
        Ok(digest)
    }

    /// Creates the layout skeleton if the directory is new.
    fn init(&self) -> Result<(), LayoutError> {
        let blobs = self.dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
        let marker = self.dir.join(LAYOUT_FILE);
        if !marker.exists() {
            write_atomic(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let index = self.dir.join("index.json");
        if !index.exists() {
            let empty =
                format!(r#"{{"schemaVersion":2,"mediaType":"{MEDIA_TYPE_INDEX}","manifests":[]}}"#);
            write_atomic(&index, empty.as_bytes())?;
        }
        Ok(())
    }
}

/// Opens a blob file; a missing file is a missing blob, not an I/O error.
async fn open_existing(
    dir: &Path,
    path: &Path,
    digest: &Digest,
) -> Result<tokio::fs::File, LayoutError> {
    match tokio::fs::File::open(path).await {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(LayoutError::MissingBlob {
            dir: dir.to_path_buf(),
            digest: digest.clone(),
        }),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Reads a manifest blob whole, bounded by `limit`, and checks its digest.
pub(crate) async fn read_small(
    dir: &Path,
    path: &Path,
    digest: &Digest,
    limit: u64,
) -> Result<Vec<u8>, LayoutError> {
    use tokio::io::AsyncReadExt;
    let file = open_existing(dir, path, digest).await?;
    // Checked on the open file, and read through a bound: a symlink to /dev/zero or a file
    // that grows must not be read whole.
    let meta = file.metadata().await.map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(io_err(path)(io::Error::other("not a regular file")));
    }
    let mut raw = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut raw)
        .await
        .map_err(io_err(path))?;
    if raw.len() as u64 > limit {
        return Err(LayoutError::TooLarge {
            dir: dir.to_path_buf(),
            digest: digest.clone(),
            size: meta.len(),
            limit,
        });
    }
    let mut hasher = digest.hasher();
    hasher.update(&raw);
    let actual = hasher.finish();
    if &actual != digest {
        return Err(LayoutError::Mismatch {
            dir: dir.to_path_buf(),
            digest: digest.clone(),
            mismatch: Mismatch::Digest {
                expected: digest.clone(),
                actual,
            },
        });
    }
    Ok(raw)
}

pub(crate) async fn open_blob(
    dir: &Path,
    path: &Path,
    digest: &Digest,
    offset: u64,
) -> Result<crate::registry::BlobReader, LayoutError> {
    use tokio::io::AsyncSeekExt;
    let mut f = open_existing(dir, path, digest).await?;
    if offset > 0 {
        f.seek(io::SeekFrom::Start(offset))
            .await
            .map_err(io_err(path))?;
    }
    Ok(Box::pin(tokio::io::BufReader::with_capacity(1 << 20, f)))
}

/// Copies `reader` into a temporary file next to the blobs, hashing it, and renames it to
/// `path_for(digest)`. With `expected`, a size or digest that differs fails before the rename;
/// without it (a blob whose digest is only known at the end) the digest is the one computed.
pub(crate) async fn write_blob(
    dir: &Path,
    tmp_dir: &Path,
    expected: Option<&Descriptor>,
    path_for: impl Fn(&Digest) -> PathBuf,
    mut reader: crate::registry::BlobReader,
) -> Result<(Digest, u64), LayoutError> {
    use tokio::io::AsyncReadExt;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = tmp_dir.join(format!(".tmp-{}-{n}", std::process::id()));
    // Removes the temporary file however this ends, including when the future is dropped
    // because a sibling layer failed.
    let guard = TempFile(tmp.clone());
    let limit = expected.map(|d| d.size);
    let result = async {
        let mut file = tokio::fs::File::create(&tmp).await.map_err(io_err(&tmp))?;
        let algorithm = expected
            .map(|d| d.digest.algorithm())
            .unwrap_or(crate::digest::Algorithm::Sha256);
        let mut hasher = Hasher::new(algorithm);
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = reader
                .read(&mut buf)
                .await
                .map_err(|source| LayoutError::Io {
                    path: tmp.clone(),
                    source,
                })?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if limit.is_some_and(|l| total > l) {
                break;
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).await.map_err(io_err(&tmp))?;
        }
        file.flush().await.map_err(io_err(&tmp))?;
        let actual = hasher.finish();
        if let Some(desc) = expected {
            let mismatch = if total != desc.size {
                Some(Mismatch::Size {
                    expected: desc.size,
                    actual: total,
                })
            } else {
                (actual != desc.digest).then(|| Mismatch::Digest {
                    expected: desc.digest.clone(),
                    actual: actual.clone(),
                })
            };
            if let Some(mismatch) = mismatch {
                return Err(LayoutError::Mismatch {
                    dir: dir.to_path_buf(),
                    digest: desc.digest.clone(),
                    mismatch,
                });
            }
        }
        let dest = path_for(&actual);
        tokio::fs::rename(&tmp, &dest)
            .await
            .map_err(io_err(&dest))?;
        Ok((actual, total))
    }
    .await;
    drop(guard);
    result
}

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        // After a successful rename there is nothing left to remove.
        let _ = std::fs::remove_file(&self.0);
    }
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}
