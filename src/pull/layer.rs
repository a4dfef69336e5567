//! One layer's plan (checked before any byte is fetched) and its consumer stack, run on a
//! blocking thread (see [`super::stream`] for the stages around it):
//!
//! ```text
//! chunks ─▶ [decrypt] ─▶ [gunzip|unzstd] ─▶ raw file | untar ─▶ staging
//!    └─▶ digest thread, HMAC thread
//! ```
//!
//! The stream is drained to the end after extraction, so trailing bytes a tar reader or
//! decompressor never asked for are still hashed.

use std::io::{self, Read};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::stream::ChunkReader;
use crate::digest::{BlobVerifier, Verified};
use crate::extract::{self, ExtractError, Extractor, FileAttrs, SafeRelPath, Written};
use crate::manifest::Descriptor;
use crate::modelpack::{Compression, FileMetadata, LayerFormat, Packing};
use crate::ocicrypt::cipher::{CtrDecryptor, HmacVerified, HmacVerifier};
use crate::ocicrypt::{self, Keyring, LayerDecryption};

use super::LayerError;

/// What to do with one layer, decided (and checked) before any byte is fetched.
#[derive(Clone, Debug)]
pub struct LayerPlan {
    pub index: usize,
    pub desc: Descriptor,
    pub target: Target,
    /// For encrypted layers: the key and expected HMAC, found before any byte is fetched.
    pub decrypt: Option<Arc<LayerDecryption>>,
}

/// How the layer's (decrypted) bytes become files.
#[derive(Clone, Debug)]
pub enum Target {
    /// One file at a checked path, with its attributes.
    Raw(SafeRelPath, FileAttrs),
    /// A tar archive, possibly compressed.
    Tar(Compression),
}

impl LayerPlan {
    /// `require_encrypted`: refuse a plain layer. A pull that was given keys expects an
    /// encrypted model; a plain layer slipped into its manifest would be delivered unchecked
    /// by any key (the HMAC authenticates a layer's bytes, not its presence or its name).
    pub fn new(
        index: usize,
        desc: &Descriptor,
        keys: &Keyring,
        require_encrypted: bool,
    ) -> Result<LayerPlan, LayerError> {
        let format = LayerFormat::of(&desc.media_type).map_err(LayerError::MediaType)?;
        let decrypt = match format.encrypted {
            false if require_encrypted => return Err(LayerError::NotEncrypted),
            false => None,
            true if keys.is_empty() => return Err(LayerError::Encrypted),
            true => Some(Arc::new(
                ocicrypt::layer_decryption(desc, keys).map_err(LayerError::Key)?,
            )),
        };
        if let Some(urls) = &desc.urls {
            if !urls.is_empty() {
                return Err(LayerError::ForeignUrls);
            }
        }
        let target = match format.packing {
            Packing::Tar(c) => Target::Tar(c),
            Packing::Raw => {
                let path = crate::modelpack::filepath(desc).ok_or(LayerError::NoFilepath)?;
                let rel = SafeRelPath::new(path)?;
                let meta = crate::modelpack::metadata(desc).map_err(LayerError::Metadata)?;
                Target::Raw(rel, raw_attrs(meta.as_ref(), desc.size)?)
            }
        };
        Ok(LayerPlan {
            index,
            desc: desc.clone(),
            target,
            decrypt,
        })
    }

    /// What a progress bar calls the layer: its file path, or its digest.
    pub fn name(&self) -> String {
        match crate::modelpack::filepath(&self.desc) {
            // Shown on a terminal: the artifact's text is escaped and bounded.
            Some(p) => crate::extract::shown(p),
            None => self.desc.digest.to_string(),
        }
    }

    /// How messages name the layer.
    pub fn label(&self) -> String {
        crate::modelpack::layer_label(self.index, &self.desc)
    }
}

fn raw_attrs(meta: Option<&FileMetadata>, blob_size: u64) -> Result<FileAttrs, LayerError> {
    let Some(m) = meta else {
        return Ok(FileAttrs {
            mode: 0o644,
            mtime: None,
        });
    };
    if m.size >= 0 && m.size as u64 != blob_size {
        return Err(LayerError::Extract(ExtractError::SizeDisagrees {
            path: m.name.clone(),
            expected: m.size as u64,
            actual: blob_size,
        }));
    }
    let secs = m.mtime.unix_timestamp();
    let mtime = (secs >= 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64));
    Ok(FileAttrs {
        mode: m.mode & 0o7777,
        mtime,
    })
}

/// The error a layer's reader returns once the pull was cancelled.
#[derive(Debug, thiserror::Error)]
#[error("cancelled because another layer failed")]
pub struct Cancelled;

/// What a layer proved: its digest, and its HMAC if it was encrypted.
#[derive(Debug)]
pub struct LayerProof {
    pub digest: Verified,
    pub hmac: Option<HmacVerified>,
}

/// Runs the whole stack for one layer on the calling (blocking) thread, with the hashes on
/// threads of their own. On success the blob verified (digest, and HMAC when encrypted) and its
/// files are in the staging directory.
pub fn run(
    plan: &LayerPlan,
    chunks: mpsc::Receiver<Bytes>,
    ex: &Extractor,
    cancelled: Arc<AtomicBool>,
    queue: usize,
    starved: super::stream::Starved,
) -> Result<(Written, LayerProof), LayerError> {
    let mut verifier = BlobVerifier::new(plan.desc.digest.clone(), plan.desc.size);
    let (mac, cipher) = match &plan.decrypt {
        None => (None, None),
        Some(d) => (
            Some(
                HmacVerifier::new(&d.key, &d.hmac)
                    .map_err(|e| LayerError::Source(io::Error::other(e)))?,
            ),
            Some(CtrDecryptor::new(&d.key).map_err(LayerError::Source)?),
        ),
    };
    std::thread::scope(|s| {
        let (digest_tx, digest_rx) = sync_channel::<Bytes>(queue);
        // Named threads, so profiles and `top -H` show which stage is busy.
        let digest = std::thread::Builder::new()
            .name("mc-digest".into())
            .spawn_scoped(s, move || {
                for chunk in digest_rx {
                    verifier.update(&chunk)?;
                }
                verifier.finish()
            })
            .map_err(LayerError::Source)?;
        let mut hashers = vec![digest_tx];
        let hmac = mac.map(|mut mac| {
            let (tx, rx) = sync_channel::<Bytes>(queue);
            hashers.push(tx);
            std::thread::Builder::new()
                .name("mc-hmac".into())
                .spawn_scoped(s, move || {
                    for chunk in rx {
                        mac.update(&chunk);
                    }
                    mac.finish()
                })
        });
        let hmac = hmac.transpose().map_err(LayerError::Source)?;
        let encrypted = hmac.is_some();
        let mut source = ChunkReader::new(chunks, hashers, cipher, cancelled, starved);
        let mut buf = Vec::new();
        let extracted = unpack(plan, &mut source, ex, &mut buf);
        let extracted = match extracted {
            // A plain layer's hostile content is the error, whatever its digest.
            Err(e) if !e.is_stream_error() && !encrypted => Err(e),
            // Always drain and check: tampered ciphertext decrypts to garbage the extractor may
            // refuse first, and the HMAC failure is the truthful error.
            other => match source.drain() {
                Ok(()) => other,
                Err(e) => Err(ExtractError::Read(e)),
            },
        };
        drop(source);
        let digest = digest.join().map_err(|_| LayerError::Panicked)?;
        let hmac = hmac
            .map(|t| t.join().map_err(|_| LayerError::Panicked))
            .transpose()?;
        if let Err(e) = extracted.as_ref() {
            if !e.is_stream_error() && !encrypted {
                return Err(LayerError::Extract(extracted.unwrap_err()));
            }
            if is_cancelled(e) {
                return Err(LayerError::Cancelled);
            }
        }
        // Precedence: a wrong blob (digest), then a wrong ciphertext (HMAC), then the stream.
        let digest = digest.map_err(LayerError::Mismatch)?;
        let hmac = hmac.map(|r| r.map_err(|_| LayerError::Hmac)).transpose()?;
        let written = extracted.map_err(LayerError::Extract)?;
        Ok((written, LayerProof { digest, hmac }))
    })
}

fn is_cancelled(e: &ExtractError) -> bool {
    match e {
        ExtractError::Read(io) | ExtractError::Tar(io) => {
            io.get_ref().is_some_and(|e| e.is::<Cancelled>())
        }
        _ => false,
    }
}

fn unpack(
    plan: &LayerPlan,
    source: &mut dyn Read,
    ex: &Extractor,
    buf: &mut Vec<u8>,
) -> Result<Written, ExtractError> {
    match &plan.target {
        Target::Raw(rel, attrs) => {
            let bytes = ex.write_file(rel, *attrs, source, buf)?;
            Ok(Written { files: 1, bytes })
        }
        Target::Tar(Compression::None) => extract::tar::untar(ex, source, buf),
        Target::Tar(Compression::Gzip) => {
            let mut d =
                flate2::read::MultiGzDecoder::new(io::BufReader::with_capacity(1 << 16, source));
            extract::tar::untar(ex, &mut d, buf)
        }
        Target::Tar(Compression::Zstd) => {
            let mut d = zstd::stream::read::Decoder::new(source).map_err(ExtractError::Read)?;
            extract::tar::untar(ex, &mut d, buf)
        }
    }
}
