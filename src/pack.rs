//! `pack`: a model directory becomes a ModelPack artifact, one layer per file, as modctl builds
//! it (modelpack.md §1.5): raw layers by default, single-file tar layers on request.
//!
//! Each file is read twice, once to hash and once to upload, so no layer is ever held in
//! memory or copied to a temporary file.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use futures_util::{StreamExt, TryStreamExt};
use time::OffsetDateTime;
use tokio::io::AsyncReadExt;

use crate::digest::{Digest, Hasher};
use crate::manifest::{Descriptor, Manifest, MEDIA_TYPE_MANIFEST};
use crate::modelpack::{self, FileMetadata, Kind, ModelConfig};
use crate::registry::BlobReader;
use crate::store::{Store, StoreError};

/// Files bigger than this with an unknown extension are weights (modctl's rule).
const UNKNOWN_WEIGHT_THRESHOLD: u64 = 128 * 1024 * 1024;

const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("cannot read the model directory `{path}`")]
    Walk {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{0}` contains no files to pack")]
    Empty(PathBuf),
    #[error("cannot read `{path}`")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{path}` changed while it was being packed (size {expected} became {actual})")]
    Changed {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("`{path}` is not valid UTF-8, which ModelPack annotations require")]
    NotUtf8 { path: PathBuf },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot build the tar header for `{path}`")]
    TarHeader {
        path: String,
        #[source]
        source: io::Error,
    },
}

#[derive(Clone, Debug, Default)]
pub struct PackOptions {
    /// Single-file tar layers instead of raw ones.
    pub tar: bool,
    /// Fixed timestamps and ownership: the same directory always gives the same digest.
    pub reproducible: bool,
    /// `descriptor.name`; default: the directory's name.
    pub name: Option<String>,
    /// Layers uploaded at once. Default 3.
    pub concurrency: usize,
    /// OCI image layer media types (`…image.layer.v1.tar`) instead of ModelPack ones, for
    /// tools that know only those (skopeo's encryptor, CoCo's image-rs). Requires `tar`.
    pub oci_media_types: bool,
}

/// One file to pack.
#[derive(Clone, Debug)]
pub struct PackFile {
    pub rel: String,
    pub path: PathBuf,
    pub kind: Kind,
    /// The kind was guessed from the size, not from a known name.
    pub untested: bool,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
}

/// What `pack` pushed.
#[derive(Clone, Debug)]
pub struct PackSummary {
    pub manifest_digest: Digest,
    pub layers: usize,
    pub bytes: u64,
    pub uploaded: usize,
}

/// Lists the files modctl would pack, in modctl's layer order (config, weights, code, docs;
/// sorted by path within each). Hidden files and directories, `Modelfile`, `__pycache__` and
/// compiled Python are skipped.
pub fn scan(root: &Path, reproducible: bool) -> Result<Vec<PackFile>, PackError> {
    let mut files = Vec::new();
    walk(root, root, reproducible, &mut files)?;
    if files.is_empty() {
        return Err(PackError::Empty(root.into()));
    }
    files.sort_by(|a, b| (a.kind, &a.rel).cmp(&(b.kind, &b.rel)));
    Ok(files)
}

fn walk(
    root: &Path,
    dir: &Path,
    reproducible: bool,
    out: &mut Vec<PackFile>,
) -> Result<(), PackError> {
    let werr = |source| PackError::Walk {
        path: dir.into(),
        source,
    };
    let mut entries = std::fs::read_dir(dir)
        .map_err(werr)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(werr)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name = name
            .to_str()
            .ok_or_else(|| PackError::NotUtf8 { path: entry.path() })?;
        if name.starts_with('.') || name == "Modelfile" || name == "__pycache__" {
            continue;
        }
        if [".pyc", ".pyo", ".pyd"].iter().any(|e| name.ends_with(e)) {
            continue;
        }
        let path = entry.path();
        // Follow symlinks: a Hugging Face cache snapshot is made of them.
        let meta = std::fs::metadata(&path).map_err(|source| PackError::Read {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            if entry.file_type().map(|t| t.is_symlink()).unwrap_or(false) {
                tracing::warn!(path = %path.display(), "skipping a symlinked directory");
                continue;
            }
            walk(root, &path, reproducible, out)?;
            continue;
        }
        if !meta.is_file() {
            tracing::warn!(path = %path.display(), "skipping a special file");
            continue;
        }
        // INVARIANT: `path` was built by joining entries below `root`.
        let rel = path
            .strip_prefix(root)
            .expect("below root")
            .to_str()
            .ok_or_else(|| PackError::NotUtf8 { path: path.clone() })?
            .to_string();
        let (kind, untested) = match modelpack::classify(name) {
            Some(k) => (k, false),
            None if meta.len() > UNKNOWN_WEIGHT_THRESHOLD => (Kind::Weight, true),
            None => (Kind::Code, true),
        };
        out.push(PackFile {
            rel,
            path,
            kind,
            untested,
            size: meta.len(),
            mode: meta.mode() & 0o777,
            uid: if reproducible { 0 } else { meta.uid() },
            gid: if reproducible { 0 } else { meta.gid() },
            mtime: if reproducible {
                SystemTime::UNIX_EPOCH
            } else {
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)
            },
        });
    }
    Ok(())
}

/// How one file becomes a blob: raw bytes, or a tar prefix + bytes + padding + trailer.
#[derive(Clone, Debug)]
struct LayerBytes {
    file: PackFile,
    prefix: Vec<u8>,
    suffix: Vec<u8>,
}

impl LayerBytes {
    fn new(file: &PackFile, tar: bool) -> Result<LayerBytes, PackError> {
        if !tar {
            return Ok(LayerBytes {
                file: file.clone(),
                prefix: Vec::new(),
                suffix: Vec::new(),
            });
        }
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(file.size);
        header.set_mode(file.mode);
        header.set_uid(file.uid.into());
        header.set_gid(file.gid.into());
        header.set_mtime(
            file.mtime
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
        );
        // The builder writes the header (and a GNU long-name entry when needed) and, given
        // no data, nothing else: that is exactly the prefix of the archive.
        let mut builder = tar::Builder::new(Vec::new());
        builder
            .append_data(&mut header, &file.rel, io::empty())
            .map_err(|source| PackError::TarHeader {
                path: file.rel.clone(),
                source,
            })?;
        let mut prefix = builder
            .into_inner()
            .map_err(|source| PackError::TarHeader {
                path: file.rel.clone(),
                source,
            })?;
        // `into_inner` also wrote the end-of-archive blocks; they belong after the data.
        prefix.truncate(prefix.len().saturating_sub(1024));
        let pad = (512 - (file.size % 512) as usize) % 512;
        // Two zero blocks end the archive.
        let suffix = vec![0u8; pad + 1024];
        Ok(LayerBytes {
            file: file.clone(),
            prefix,
            suffix,
        })
    }

    fn size(&self) -> u64 {
        self.prefix.len() as u64 + self.file.size + self.suffix.len() as u64
    }

    fn sync_reader(&self) -> Result<impl Read, PackError> {
        let f = std::fs::File::open(&self.file.path).map_err(|source| PackError::Read {
            path: self.file.path.clone(),
            source,
        })?;
        let (prefix, suffix) = (
            io::Cursor::new(self.prefix.clone()),
            io::Cursor::new(self.suffix.clone()),
        );
        Ok(Read::chain(
            Read::chain(prefix, Read::take(f, self.file.size)),
            suffix,
        ))
    }

    async fn async_reader(&self) -> Result<BlobReader, PackError> {
        let f = tokio::fs::File::open(&self.file.path)
            .await
            .map_err(|source| PackError::Read {
                path: self.file.path.clone(),
                source,
            })?;
        let f = tokio::io::BufReader::with_capacity(1 << 20, f);
        let (prefix, suffix) = (
            io::Cursor::new(self.prefix.clone()),
            io::Cursor::new(self.suffix.clone()),
        );
        Ok(Box::pin(AsyncReadExt::chain(
            AsyncReadExt::chain(prefix, AsyncReadExt::take(f, self.file.size)),
            suffix,
        )))
    }

    /// Hashes the blob; a file that changed size since it was listed is an error.
    fn digest(&self) -> Result<Digest, PackError> {
        let mut r = self.sync_reader()?;
        let mut hasher = Hasher::sha256();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = r.read(&mut buf).map_err(|source| PackError::Read {
                path: self.file.path.clone(),
                source,
            })?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            total += n as u64;
        }
        if total != self.size() {
            let actual = total - self.prefix.len() as u64 - self.suffix.len() as u64;
            return Err(PackError::Changed {
                path: self.file.path.clone(),
                expected: self.file.size,
                actual,
            });
        }
        Ok(hasher.finish())
    }
}

fn rfc3339(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

fn descriptor_for(lb: &LayerBytes, digest: Digest, opts: &PackOptions) -> Descriptor {
    let f = &lb.file;
    let media_type = match opts.oci_media_types {
        true => OCI_LAYER_TAR.to_string(),
        false => f.kind.media_type(opts.tar),
    };
    let mut d = Descriptor::new(media_type, digest, lb.size());
    let meta = FileMetadata {
        name: Path::new(&f.rel)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        mode: f.mode,
        uid: f.uid,
        gid: f.gid,
        size: f.size as i64,
        mtime: rfc3339(f.mtime),
        typeflag: 0,
    };
    d.annotations
        .insert(modelpack::ANNOTATION_FILEPATH.into(), f.rel.clone());
    // INVARIANT: FileMetadata is strings and numbers.
    d.annotations.insert(
        modelpack::ANNOTATION_METADATA.into(),
        serde_json::to_string(&meta).expect("metadata serializes"),
    );
    d.annotations.insert(
        modelpack::ANNOTATION_UNTESTED.into(),
        f.untested.to_string(),
    );
    d
}

/// Reads the fields modctl takes from `config.json` / `generation_config.json`.
fn model_config(
    root: &Path,
    files: &[PackFile],
    opts: &PackOptions,
    diff_ids: Vec<Digest>,
) -> ModelConfig {
    let read = |name: &str| -> serde_json::Value {
        std::fs::read(root.join(name))
            .ok()
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .unwrap_or_default()
    };
    let cfg = read("config.json");
    let gen = read("generation_config.json");
    let text =
        |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let mut c = ModelConfig::default();
    c.descriptor.name = opts.name.clone().or_else(|| {
        std::fs::canonicalize(root)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
    });
    c.descriptor.family = text(&cfg, "model_type");
    if !opts.reproducible {
        c.descriptor.created_at = Some(OffsetDateTime::now_utc());
    }
    c.config.precision = text(&cfg, "torch_dtype").or_else(|| text(&cfg, "dtype"));
    if cfg.get("transformers_version").is_some() || gen.get("transformers_version").is_some() {
        c.config.architecture = Some("transformer".into());
    }
    let formats = ["safetensors", "gguf", "onnx", "pt", "bin"];
    c.config.format = formats
        .iter()
        .find(|ext| {
            files
                .iter()
                .any(|f| f.kind == Kind::Weight && f.rel.ends_with(&format!(".{ext}")))
        })
        .map(|s| s.to_string());
    c.modelfs.diff_ids = diff_ids;
    c
}

/// Packs `root` and pushes it to `dest`.
#[tracing::instrument(skip_all, fields(model = %root.display()))]
pub async fn pack(root: &Path, dest: &Store, opts: &PackOptions) -> Result<PackSummary, PackError> {
    let (root_owned, reproducible) = (root.to_path_buf(), opts.reproducible);
    let files = tokio::task::spawn_blocking(move || scan(&root_owned, reproducible))
        .await
        .map_err(|e| PackError::Walk {
            path: root.into(),
            source: io::Error::other(e),
        })??;
    let concurrency = opts.concurrency.max(1);
    let tar = opts.tar || opts.oci_media_types;
    let results: Vec<(Descriptor, bool)> = futures_util::stream::iter(files.iter().cloned())
        .map(|file| async move {
            let lb = LayerBytes::new(&file, tar)?;
            let lb2 = lb.clone();
            let digest = tokio::task::spawn_blocking(move || lb2.digest())
                .await
                .map_err(|e| PackError::Read {
                    path: file.path.clone(),
                    source: io::Error::other(e),
                })??;
            let desc = descriptor_for(&lb, digest, opts);
            let present = dest.has_blob(&desc.digest).await?;
            if !present {
                tracing::info!(file = %file.rel, size = desc.size, "uploading");
                dest.put_blob(&desc, lb.async_reader().await?).await?;
            }
            Ok::<_, PackError>((desc, !present))
        })
        .buffered(concurrency)
        .try_collect()
        .await?;
    let uploaded = results.iter().filter(|(_, up)| *up).count();
    let layers: Vec<Descriptor> = results.into_iter().map(|(d, _)| d).collect();

    // modctl copies the layer digests: valid because its layers are never compressed.
    let diff_ids = layers.iter().map(|l| l.digest.clone()).collect();
    let config = model_config(root, &files, opts, diff_ids);
    // INVARIANT: the config is plain data.
    let config_raw = serde_json::to_vec(&config).expect("config serializes");
    let config_desc = Descriptor::new(
        modelpack::CONFIG_MEDIA_TYPE,
        Digest::sha256(&config_raw),
        config_raw.len() as u64,
    );
    if !dest.has_blob(&config_desc.digest).await? {
        dest.put_blob(&config_desc, Box::pin(io::Cursor::new(config_raw)))
            .await?;
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_TYPE_MANIFEST.into()),
        artifact_type: Some(modelpack::ARTIFACT_TYPE.into()),
        config: config_desc,
        layers,
        subject: None,
        annotations: BTreeMap::new(),
        extra: BTreeMap::new(),
    };
    let raw = manifest.to_bytes();
    let manifest_digest = dest.put_manifest(&raw, MEDIA_TYPE_MANIFEST).await?;
    Ok(PackSummary {
        manifest_digest,
        layers: manifest.layers.len(),
        bytes: manifest.layers.iter().map(|l| l.size).sum(),
        uploaded,
    })
}
