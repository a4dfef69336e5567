//! `encrypt` and `decrypt`: rewrite an artifact's layers with ocicrypt, streaming.
//!
//! Each layer is read once: a blocking thread verifies the source digest and runs the cipher,
//! and hands the output through a bounded channel to an upload whose digest is computed as it
//! goes (a chunked registry upload, or a temporary file renamed at the end). A failure on
//! either side aborts the upload instead of storing a truncated blob.

use std::io::{self, Read, Write};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use tokio_util::io::SyncIoBridge;

use crate::digest::{Digest, Mismatch, VerifyingReader};
use crate::manifest::{Descriptor, Manifest, MEDIA_TYPE_MANIFEST};
use crate::modelpack;
use crate::ocicrypt::cipher::{DecryptingReader, EncryptingReader, LayerKey, HMAC_LEN};
use crate::ocicrypt::{self, Keyring, OcicryptError, Recipients};
use crate::reference::ImageRef;
use crate::registry::BlobReader;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("layer {label}")]
    Layer {
        label: String,
        #[source]
        source: LayerCryptError,
    },
    #[error("no layer matches `--encrypt-layer {0}`")]
    NoSuchLayer(String),
    #[error("the artifact has no encrypted layers; nothing to decrypt")]
    NothingToDecrypt,
}

#[derive(Debug, thiserror::Error)]
pub enum LayerCryptError {
    #[error(transparent)]
    Ocicrypt(#[from] OcicryptError),
    #[error("the source blob failed verification: {0}")]
    Source(Mismatch),
    #[error("the ciphertext failed its HMAC check: tampered, or not what was encrypted")]
    Hmac,
    #[error("reading or transforming the blob failed")]
    Io(#[source] io::Error),
    #[error(transparent)]
    Store(StoreError),
}

/// Which layers `encrypt` touches.
#[derive(Clone, Debug, Default)]
pub struct LayerSelection {
    /// skopeo-style indexes (negative counts from the end) or `org.cncf.model.filepath` values;
    /// empty means every layer.
    pub layers: Vec<String>,
}

impl LayerSelection {
    fn resolve(&self, m: &Manifest) -> Result<Vec<bool>, CryptError> {
        let n = m.layers.len();
        if self.layers.is_empty() {
            return Ok(vec![true; n]);
        }
        let mut chosen = vec![false; n];
        for sel in &self.layers {
            let index = match sel.parse::<i64>() {
                Ok(i) if i >= 0 && (i as usize) < n => Some(i as usize),
                Ok(i) if i < 0 && i.unsigned_abs() as usize <= n => {
                    Some(n - i.unsigned_abs() as usize)
                }
                Ok(_) => None,
                Err(_) => m
                    .layers
                    .iter()
                    .position(|l| modelpack::filepath(l) == Some(sel.as_str())),
            };
            let i = index.ok_or_else(|| CryptError::NoSuchLayer(sel.clone()))?;
            chosen[i] = true;
        }
        Ok(chosen)
    }
}

#[derive(Clone, Debug)]
pub struct CryptSummary {
    pub manifest_digest: Digest,
    pub layers: usize,
    pub changed: usize,
    pub bytes: u64,
}

/// Encrypts the selected layers of `src` for `recipients` and writes the artifact to `dest`.
/// Layers already encrypted are copied unchanged, as skopeo does.
#[tracing::instrument(skip_all, fields(from = %src_ref))]
pub async fn encrypt(
    src_ref: &ImageRef,
    src: &Store,
    dest: &Store,
    recipients: Arc<Recipients>,
    selection: &LayerSelection,
) -> Result<CryptSummary, CryptError> {
    let resolved = src.resolve(src_ref).await?;
    let chosen = selection.resolve(&resolved.manifest)?;
    let plan = resolved
        .manifest
        .layers
        .iter()
        .enumerate()
        .map(|(i, desc)| {
            if !chosen[i] || ocicrypt::is_encrypted(desc) {
                return Ok(None);
            }
            let key = LayerKey::generate().map_err(|e| CryptError::Layer {
                label: modelpack::layer_label(i, desc),
                source: OcicryptError::from(e).into(),
            })?;
            Ok(Some(Direction::Encrypt {
                key,
                recipients: recipients.clone(),
            }))
        })
        .collect::<Result<Vec<_>, CryptError>>()?;
    rewrite(src, dest, resolved.manifest, plan).await
}

/// Decrypts every encrypted layer of `src` with `keys` and writes the plain artifact to `dest`.
#[tracing::instrument(skip_all, fields(from = %src_ref))]
pub async fn decrypt(
    src_ref: &ImageRef,
    src: &Store,
    dest: &Store,
    keys: &Keyring,
) -> Result<CryptSummary, CryptError> {
    let resolved = src.resolve(src_ref).await?;
    if !resolved.manifest.layers.iter().any(ocicrypt::is_encrypted) {
        return Err(CryptError::NothingToDecrypt);
    }
    // Find every key first: a missing key fails before any byte moves.
    let plan = resolved
        .manifest
        .layers
        .iter()
        .enumerate()
        .map(|(i, d)| {
            if !ocicrypt::is_encrypted(d) {
                return Ok(None);
            }
            ocicrypt::layer_decryption(d, keys)
                .map(|k| Some(Direction::Decrypt(Arc::new(k))))
                .map_err(|e| CryptError::Layer {
                    label: modelpack::layer_label(i, d),
                    source: e.into(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    rewrite(src, dest, resolved.manifest, plan).await
}

/// Transforms the layers that have a direction (two at a time), copies the others and the
/// config unchanged, and writes the new manifest.
async fn rewrite(
    src: &Store,
    dest: &Store,
    manifest: Manifest,
    plan: Vec<Option<Direction>>,
) -> Result<CryptSummary, CryptError> {
    let layers = manifest.layers.clone();
    let results: Vec<(Descriptor, bool)> =
        futures_util::stream::iter(layers.into_iter().zip(plan).enumerate())
            .map(|(i, (desc, dir))| async move {
                let label = || modelpack::layer_label(i, &desc);
                let Some(dir) = dir else {
                    copy_blob(src, dest, &desc)
                        .await
                        .map_err(|source| CryptError::Layer {
                            label: label(),
                            source: LayerCryptError::Store(source),
                        })?;
                    return Ok((desc, false));
                };
                let out = rewrite_layer(src, dest, &desc, dir)
                    .await
                    .map_err(|source| CryptError::Layer {
                        label: label(),
                        source,
                    })?;
                Ok::<_, CryptError>((out, true))
            })
            .buffered(2)
            .try_collect()
            .await?;
    finish_manifest(src, dest, manifest, results).await
}

/// One layer through its transform; returns its new descriptor.
async fn rewrite_layer(
    src: &Store,
    dest: &Store,
    desc: &Descriptor,
    dir: Direction,
) -> Result<Descriptor, LayerCryptError> {
    let (digest, size, hmac) = transform(src, dest, desc, dir.clone()).await?;
    match dir {
        Direction::Encrypt { key, recipients } => {
            // INVARIANT: an encrypting pass that read to the end always yields its HMAC.
            let hmac = hmac.expect("an encrypting pass yields an HMAC");
            Ok(ocicrypt::encrypted_descriptor(
                desc,
                digest,
                &key,
                &hmac,
                &recipients,
            )?)
        }
        Direction::Decrypt(_) => {
            let mut out = ocicrypt::decrypted_descriptor(desc, digest);
            out.size = size;
            Ok(out)
        }
    }
}

async fn copy_blob(src: &Store, dest: &Store, desc: &Descriptor) -> Result<(), StoreError> {
    if !dest.has_blob(&desc.digest).await? {
        dest.put_blob(desc, src.blob(desc, 0).await?).await?;
    }
    Ok(())
}

async fn finish_manifest(
    src: &Store,
    dest: &Store,
    mut manifest: Manifest,
    results: Vec<(Descriptor, bool)>,
) -> Result<CryptSummary, CryptError> {
    // The config is never encrypted (ocicrypt.md §2.3).
    copy_blob(src, dest, &manifest.config).await?;
    let changed = results.iter().filter(|(_, c)| *c).count();
    let bytes = results
        .iter()
        .filter(|(_, c)| *c)
        .map(|(d, _)| d.size)
        .sum();
    manifest.layers = results.into_iter().map(|(d, _)| d).collect();
    // Encryption needs an OCI manifest; Docker schema 2 cannot carry it.
    manifest.media_type = Some(MEDIA_TYPE_MANIFEST.into());
    let raw = manifest.to_bytes();
    let manifest_digest = dest.put_manifest(&raw, MEDIA_TYPE_MANIFEST).await?;
    Ok(CryptSummary {
        manifest_digest,
        layers: manifest.layers.len(),
        changed,
        bytes,
    })
}

/// One direction of the layer transform.
#[derive(Clone)]
enum Direction {
    Encrypt {
        key: LayerKey,
        recipients: Arc<Recipients>,
    },
    Decrypt(Arc<ocicrypt::LayerDecryption>),
}

/// Output chunks handed to the upload, [`CHANNEL_DEPTH`] in flight: the streamed upload has no
/// chunk boundaries to fill, so small chunks only bound memory (4 MiB ones, two deep, took two
/// layers at once to 70 MiB).
const CHANNEL_CHUNK: usize = 1 << 20;
const CHANNEL_DEPTH: usize = 3;

/// A `Write` that sends full chunks to the uploading task.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

/// The producer's error when the upload hung up: the upload's own error is the one to report.
#[derive(Debug, thiserror::Error)]
#[error("the upload stopped")]
struct UploadStopped;

impl ChannelWriter {
    fn send(&mut self, item: io::Result<Bytes>) -> io::Result<()> {
        self.tx
            .blocking_send(item)
            .map_err(|_| io::Error::other(UploadStopped))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHANNEL_CHUNK {
            let full = Bytes::from(std::mem::replace(
                &mut self.buf,
                Vec::with_capacity(CHANNEL_CHUNK),
            ));
            self.send(Ok(full))?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let rest = Bytes::from(std::mem::take(&mut self.buf));
            self.send(Ok(rest))?;
        }
        Ok(())
    }
}

/// Streams `desc` from its source through the digest check and `dir` into `out`; returns the
/// output size and, when encrypting, the HMAC. Runs on a blocking thread.
fn pass(
    source: BlobReader,
    desc: &Descriptor,
    dir: &Direction,
    out: &mut dyn Write,
) -> Result<(u64, Option<[u8; HMAC_LEN]>), LayerCryptError> {
    let mut verifier =
        VerifyingReader::new(SyncIoBridge::new(source), desc.digest.clone(), desc.size);
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    let mut pump = |r: &mut dyn Read| -> Result<(), LayerCryptError> {
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(LayerCryptError::Io(e)),
            };
            size += n as u64;
            out.write_all(&buf[..n]).map_err(LayerCryptError::Io)?;
        }
    };
    let hmac = match dir {
        Direction::Encrypt { key, .. } => {
            let mut enc = EncryptingReader::new(&mut verifier, key).map_err(LayerCryptError::Io)?;
            pump(&mut enc)?;
            enc.hmac()
        }
        Direction::Decrypt(d) => {
            let mut dec = DecryptingReader::new(&mut verifier, &d.key, &d.hmac)
                .map_err(LayerCryptError::Io)?;
            pump(&mut dec)?;
            dec.finish()
                .map_err(LayerCryptError::Io)?
                .map_err(|_| LayerCryptError::Hmac)?;
            None
        }
    };
    // Everything is checked before the last chunk goes out, so a bad source never completes
    // an upload.
    verifier
        .finish()
        .map_err(LayerCryptError::Io)?
        .map_err(LayerCryptError::Source)?;
    out.flush().map_err(LayerCryptError::Io)?;
    Ok((size, hmac))
}

/// Transforms one layer in a single read of its source; returns the stored output's digest
/// and size, and the HMAC when encrypting.
async fn transform(
    src: &Store,
    dest: &Store,
    desc: &Descriptor,
    dir: Direction,
) -> Result<(Digest, u64, Option<[u8; HMAC_LEN]>), LayerCryptError> {
    let source = src.blob(desc, 0).await.map_err(LayerCryptError::Store)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(CHANNEL_DEPTH);
    let desc2 = desc.clone();
    let producer = tokio::task::spawn_blocking(move || {
        let mut w = ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHANNEL_CHUNK),
        };
        let result = pass(source, &desc2, &dir, &mut w);
        if let Err(e) = &result {
            // Fail the upload rather than let it end early and store a truncated blob.
            let _ = w.send(Err(io::Error::other(e.to_string())));
        }
        result
    });
    let reader = tokio_util::io::StreamReader::new(tokio_stream_from(rx));
    let stored = if desc.size == 0 {
        // Registries refuse empty chunked uploads; an empty input gives an empty output.
        let empty = Descriptor::new(&desc.media_type, Digest::sha256(b""), 0);
        dest.put_blob(&empty, Box::pin(reader))
            .await
            .map(|()| (empty.digest, 0))
    } else {
        dest.put_blob_streamed(Box::pin(reader)).await
    };
    let produced = producer
        .await
        .map_err(|e| LayerCryptError::Io(io::Error::other(e)))?;
    // Whichever side stopped first explains the failure: the producer's error (a bad source
    // blob, say) ended the upload, or the registry refused the upload (a full disk, say) and
    // the producer only saw it hang up.
    let (size, hmac, (digest, stored_size)) = match (produced, stored) {
        (Err(LayerCryptError::Io(e)), Err(refused))
            if e.get_ref().is_some_and(|e| e.is::<UploadStopped>()) =>
        {
            return Err(LayerCryptError::Store(refused))
        }
        (produced, stored) => {
            let (size, hmac) = produced?;
            (size, hmac, stored.map_err(LayerCryptError::Store)?)
        }
    };
    if stored_size != size {
        return Err(LayerCryptError::Io(io::Error::other(format!(
            "stored {stored_size} bytes, produced {size}"
        ))));
    }
    Ok((digest, size, hmac))
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
) -> impl futures_util::Stream<Item = io::Result<Bytes>> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
