//! One layer's adaptor stack, run on a blocking thread:
//!
//! ```text
//! network ─▶ cancel/progress ─▶ VerifyingReader (size, digest) ─▶ [decrypt] ─▶ [gunzip|unzstd]
//!         ─▶ raw file | untar ─▶ staging
//! ```
//!
//! The verifier is drained to the end after extraction, so trailing bytes a tar reader or
//! decompressor never asked for are still hashed.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::digest::{Verified, VerifyingReader};
use crate::extract::{self, ExtractError, Extractor, FileAttrs, SafeRelPath, Written};
use crate::manifest::Descriptor;
use crate::modelpack::{Compression, FileMetadata, LayerFormat, Packing};
use crate::ocicrypt::cipher::{DecryptingReader, HmacVerified};
use crate::ocicrypt::{self, Keyring, LayerDecryption};

use super::{LayerError, Reporter};

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
            Some(p) => p.to_string(),
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

/// The error a [`Tap`] returns once the pull was cancelled.
#[derive(Debug, thiserror::Error)]
#[error("cancelled because another layer failed")]
pub struct Cancelled;

/// Counts bytes for the progress display and stops promptly when another layer failed.
pub struct Tap<R> {
    pub inner: R,
    pub reporter: Arc<dyn Reporter>,
    pub id: usize,
    pub cancelled: Arc<AtomicBool>,
}

impl<R: Read> Read for Tap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancelled.load(Ordering::Relaxed) {
            // Not `Interrupted`: readers retry that kind forever.
            return Err(io::Error::other(Cancelled));
        }
        let n = self.inner.read(buf)?;
        self.reporter.on_layer_progress(self.id, n as u64);
        Ok(n)
    }
}

/// What a layer proved: its digest, and its HMAC if it was encrypted.
#[derive(Debug)]
pub struct LayerProof {
    pub digest: Verified,
    pub hmac: Option<HmacVerified>,
}

/// Runs the whole stack for one layer. On success the blob verified (digest, and HMAC when
/// encrypted) and its files are in the staging directory.
pub fn run<R: Read>(
    plan: &LayerPlan,
    source: R,
    ex: &Extractor,
) -> Result<(Written, LayerProof), LayerError> {
    let mut verifier = VerifyingReader::new(source, plan.desc.digest.clone(), plan.desc.size);
    let mut buf = Vec::new();
    let (extracted, hmac) = match &plan.decrypt {
        None => (unpack(plan, &mut verifier, ex, &mut buf), None),
        Some(d) => {
            let mut plain = DecryptingReader::new(&mut verifier, &d.key, &d.hmac)
                .map_err(LayerError::Source)?;
            let extracted = unpack(plan, &mut plain, ex, &mut buf);
            // Always drain and check: tampered ciphertext decrypts to garbage the extractor
            // may refuse first, and the HMAC failure is the truthful error.
            (extracted, Some(plain.finish()))
        }
    };
    let extracted = match extracted {
        Err(e) if !e.is_stream_error() && hmac.is_none() => return Err(LayerError::Extract(e)),
        other => other,
    };
    // Precedence: a wrong blob (digest), then a wrong ciphertext (HMAC), then the stream.
    let digest = verifier
        .finish()
        .map_err(LayerError::Source)?
        .map_err(LayerError::Mismatch)?;
    let hmac = match hmac {
        None => None,
        Some(r) => Some(
            r.map_err(LayerError::Source)?
                .map_err(|_| LayerError::Hmac)?,
        ),
    };
    let written = extracted.map_err(LayerError::Extract)?;
    Ok((written, LayerProof { digest, hmac }))
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
