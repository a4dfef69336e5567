//! `encrypt` and `decrypt`: rewrite an artifact's layers with ocicrypt, streaming.
//!
//! A layer's output digest must be known before the registry accepts the upload, so each
//! layer is streamed twice: once to hash the output, once to upload it. The cipher is
//! deterministic for a given key and nonce, and the destination re-checks the digest, so a
//! source that changed in between fails instead of publishing something else.

use std::io::{self, Read, Write};
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use tokio_util::io::SyncIoBridge;

use crate::digest::{Digest, Hasher, Mismatch, VerifyingReader};
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
    let layers = resolved.manifest.layers.clone();
    let results: Vec<(Descriptor, bool)> =
        futures_util::stream::iter(layers.into_iter().enumerate())
            .map(|(i, desc)| {
                let recipients = recipients.clone();
                let pick = chosen[i] && !ocicrypt::is_encrypted(&desc);
                async move {
                    if !pick {
                        copy_blob(src, dest, &desc)
                            .await
                            .map_err(|source| CryptError::Layer {
                                label: modelpack::layer_label(i, &desc),
                                source: LayerCryptError::Store(source),
                            })?;
                        return Ok((desc, false));
                    }
                    let out =
                        encrypt_layer(src, dest, &desc, recipients)
                            .await
                            .map_err(|source| CryptError::Layer {
                                label: modelpack::layer_label(i, &desc),
                                source,
                            })?;
                    Ok::<_, CryptError>((out, true))
                }
            })
            .buffered(2)
            .try_collect()
            .await?;
    finish_manifest(src, dest, resolved.manifest, results).await
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
    let plans = resolved
        .manifest
        .layers
        .iter()
        .enumerate()
        .map(|(i, d)| {
            if !ocicrypt::is_encrypted(d) {
                return Ok(None);
            }
            ocicrypt::layer_decryption(d, keys)
                .map(|k| Some(Arc::new(k)))
                .map_err(|e| CryptError::Layer {
                    label: modelpack::layer_label(i, d),
                    source: e.into(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let layers = resolved.manifest.layers.clone();
    let results: Vec<(Descriptor, bool)> =
        futures_util::stream::iter(layers.into_iter().zip(plans).enumerate())
            .map(|(i, (desc, plan))| async move {
                let Some(plan) = plan else {
                    copy_blob(src, dest, &desc)
                        .await
                        .map_err(|source| CryptError::Layer {
                            label: modelpack::layer_label(i, &desc),
                            source: LayerCryptError::Store(source),
                        })?;
                    return Ok((desc, false));
                };
                let out = decrypt_layer(src, dest, &desc, plan)
                    .await
                    .map_err(|source| CryptError::Layer {
                        label: modelpack::layer_label(i, &desc),
                        source,
                    })?;
                Ok::<_, CryptError>((out, true))
            })
            .buffered(2)
            .try_collect()
            .await?;
    finish_manifest(src, dest, resolved.manifest, results).await
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
    Encrypt(LayerKey),
    Decrypt(Arc<ocicrypt::LayerDecryption>),
}

/// What a full pass over a layer learned.
struct PassResult {
    digest: Digest,
    size: u64,
    hmac: Option<[u8; HMAC_LEN]>,
}

/// Streams `desc` from `src` through the source digest check and `dir`, writing the output to
/// `out`. Runs on a blocking thread.
fn pass(
    source: BlobReader,
    desc: &Descriptor,
    dir: &Direction,
    out: &mut dyn Write,
) -> Result<PassResult, LayerCryptError> {
    let mut verifier =
        VerifyingReader::new(SyncIoBridge::new(source), desc.digest.clone(), desc.size);
    let mut hasher = Hasher::sha256();
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
            hasher.update(&buf[..n]);
            size += n as u64;
            out.write_all(&buf[..n]).map_err(LayerCryptError::Io)?;
        }
    };
    let hmac = match dir {
        Direction::Encrypt(key) => {
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
    verifier
        .finish()
        .map_err(LayerCryptError::Io)?
        .map_err(LayerCryptError::Source)?;
    Ok(PassResult {
        digest: hasher.finish(),
        size,
        hmac,
    })
}

/// Pass 1: learn the output digest (and HMAC) without storing anything.
async fn measure(
    src: &Store,
    desc: &Descriptor,
    dir: &Direction,
) -> Result<PassResult, LayerCryptError> {
    let source = src.blob(desc, 0).await.map_err(LayerCryptError::Store)?;
    let (desc, dir) = (desc.clone(), dir.clone());
    tokio::task::spawn_blocking(move || pass(source, &desc, &dir, &mut io::sink()))
        .await
        .map_err(|e| LayerCryptError::Io(io::Error::other(e)))?
}

/// Pass 2: the same transform again, piped into the destination's upload.
async fn upload(
    src: &Store,
    dest: &Store,
    desc: &Descriptor,
    dir: &Direction,
    out: &Descriptor,
) -> Result<(), LayerCryptError> {
    if dest
        .has_blob(&out.digest)
        .await
        .map_err(LayerCryptError::Store)?
    {
        return Ok(());
    }
    let source = src.blob(desc, 0).await.map_err(LayerCryptError::Store)?;
    let (reader, writer) = tokio::io::duplex(4 << 20);
    let (desc2, dir2) = (desc.clone(), dir.clone());
    let producer = tokio::task::spawn_blocking(move || {
        let mut w = SyncIoBridge::new(writer);
        let r = pass(source, &desc2, &dir2, &mut w);
        let _ = w.shutdown();
        r
    });
    let uploaded = dest.put_blob(out, Box::pin(reader)).await;
    let produced = producer
        .await
        .map_err(|e| LayerCryptError::Io(io::Error::other(e)))?;
    // The producer's error explains an upload that ended early.
    produced?;
    uploaded.map_err(LayerCryptError::Store)
}

async fn encrypt_layer(
    src: &Store,
    dest: &Store,
    desc: &Descriptor,
    recipients: Arc<Recipients>,
) -> Result<Descriptor, LayerCryptError> {
    let key = LayerKey::generate().map_err(OcicryptError::from)?;
    let dir = Direction::Encrypt(key.clone());
    let measured = measure(src, desc, &dir).await?;
    // INVARIANT: an encrypting pass that read to the end always yields its HMAC.
    let hmac = measured.hmac.expect("an encrypting pass yields an HMAC");
    let out = ocicrypt::encrypted_descriptor(desc, measured.digest, &key, &hmac, &recipients)?;
    upload(src, dest, desc, &dir, &out).await?;
    Ok(out)
}

async fn decrypt_layer(
    src: &Store,
    dest: &Store,
    desc: &Descriptor,
    plan: Arc<ocicrypt::LayerDecryption>,
) -> Result<Descriptor, LayerCryptError> {
    let dir = Direction::Decrypt(plan);
    let measured = measure(src, desc, &dir).await?;
    let mut out = ocicrypt::decrypted_descriptor(desc, measured.digest);
    out.size = measured.size;
    upload(src, dest, desc, &dir, &out).await?;
    Ok(out)
}
