//! `pull`: the init container's job. Resolve the manifest, plan and check every layer, stream
//! the layers concurrently through verification into a staging directory, and commit only
//! when every one of them verified (architecture.md, "The hot path").

pub mod layer;
pub mod stream;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tracing::Instrument;

use crate::digest::{Digest, Mismatch};
use crate::extract::staging::{AllVerified, Marker, Staging, StagingError};
use crate::extract::{ExtractError, Extractor, Written};
use crate::modelpack::{BadMetadata, UnknownMediaType};
use crate::ocicrypt::Keyring;
use crate::reference::ImageRef;
use crate::store::{Store, StoreError};

pub use layer::{LayerPlan, LayerProof};

/// What went wrong with one layer.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error(transparent)]
    MediaType(UnknownMediaType),
    #[error("the layer is encrypted and no decryption key or KEK was given")]
    Encrypted,
    #[error("the layer is not encrypted, but keys were given, so every layer must be")]
    NotEncrypted,
    #[error("cannot find the layer's key")]
    Key(#[source] crate::ocicrypt::OcicryptError),
    #[error("the ciphertext failed its HMAC check: tampered, or not what was encrypted")]
    Hmac,
    #[error("the layer points at foreign URLs, which are not fetched")]
    ForeignUrls,
    #[error("the raw layer has no `org.cncf.model.filepath` annotation, so its file has no name")]
    NoFilepath,
    #[error(transparent)]
    Metadata(BadMetadata),
    #[error(transparent)]
    Extract(#[from] ExtractError),
    #[error("the blob failed verification: {0}")]
    Mismatch(Mismatch),
    #[error("cannot read the blob")]
    Source(#[source] std::io::Error),
    #[error(transparent)]
    Fetch(StoreError),
    #[error(
        "the transfer stopped at byte {received} of {size} after {attempts} attempts; \
         last error: {last}"
    )]
    Interrupted {
        received: u64,
        size: u64,
        attempts: u32,
        last: String,
    },
    #[error("the registry sent more than the bytes {start}-{} asked for", end - 1)]
    RangeOverrun { start: u64, end: u64 },
    #[error("the layer's worker thread panicked")]
    Panicked,
    #[error("cancelled because another layer failed")]
    Cancelled,
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Staging(#[from] StagingError),
    #[error("layer {label} of `{reference}`")]
    Layer {
        reference: String,
        label: String,
        #[source]
        source: LayerError,
    },
    #[error("cannot finish the extracted tree")]
    Finish(#[source] ExtractError),
    #[error("cannot get the KEK `{kid}` from the key broker")]
    Broker {
        kid: String,
        #[source]
        source: crate::kbs::KbsError,
    },
    #[error("the key broker's resource `{kid}` is {len} bytes; a KEK is 32")]
    KekLength { kid: String, len: usize },
    #[error(
        "`{dir}` has {} free, and the model needs at least {} ({needed} bytes)",
        crate::cli::mb(*available),
        crate::cli::mb(*needed)
    )]
    NoSpace {
        dir: PathBuf,
        needed: u64,
        available: u64,
    },
    #[error("internal error: not every one of the {layers} layers ({encrypted} encrypted) has its proofs")]
    Unverified { layers: usize, encrypted: usize },
}

impl PullError {
    /// The layer failure inside, if this is one.
    pub fn layer_error(&self) -> Option<&LayerError> {
        match self {
            PullError::Layer { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Progress callbacks. The CLI draws bars; the library never writes to the terminal.
pub trait Reporter: Send + Sync {
    /// The whole pull: how many layers and bytes will be fetched.
    fn on_pull_start(&self, _layers: usize, _bytes: u64) {}
    fn on_layer_start(&self, name: &str, size: u64) -> usize;
    fn on_layer_progress(&self, id: usize, bytes: u64);
    fn on_layer_done(&self, id: usize);
}

pub struct NoopReporter;

impl Reporter for NoopReporter {
    fn on_layer_start(&self, _: &str, _: u64) -> usize {
        0
    }
    fn on_layer_progress(&self, _: usize, _: u64) {}
    fn on_layer_done(&self, _: usize) {}
}

#[derive(Debug)]
pub struct PullOptions {
    /// Layers fetched at once, split between large and small ones (see `lanes`). Default:
    /// [`DEFAULT_CONCURRENCY`].
    pub concurrency: usize,
    /// Keys for encrypted layers.
    pub keys: Keyring,
    /// With keys, accept layers that are not encrypted. Default: refuse them.
    pub allow_plain_layers: bool,
    /// Fetches the KEK of every `kbs://` recipient (key broker or CDH).
    pub broker: Option<Arc<crate::kbs::Broker>>,
    /// Permission bits at the destination. Default: readable by every user in the pod.
    pub modes: crate::extract::Modes,
    /// Range requests in flight per large blob from a registry (see [`stream::Ranges`]); 1
    /// fetches each blob in one request. Default: [`DEFAULT_PARALLEL_RANGES`].
    pub parallel_ranges: usize,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            concurrency: DEFAULT_CONCURRENCY,
            keys: Keyring::default(),
            allow_plain_layers: false,
            broker: None,
            modes: crate::extract::Modes::default(),
            parallel_ranges: DEFAULT_PARALLEL_RANGES,
        }
    }
}

/// What a pull did.
#[derive(Clone, Debug)]
pub struct PullSummary {
    pub manifest_digest: Digest,
    pub destination: PathBuf,
    pub files: u64,
    /// Bytes written to files.
    pub bytes: u64,
    /// Bytes fetched and verified.
    pub blob_bytes: u64,
    pub elapsed: Duration,
    /// The destination already held this manifest's content; nothing was fetched.
    pub up_to_date: bool,
}

/// Pulls `src` into `dest`. On error nothing is left at `dest` (or what was there before
/// stays untouched) and the staging directory is removed.
#[tracing::instrument(skip_all, fields(reference = %src, to = %dest.display()))]
pub async fn pull(
    src: &ImageRef,
    store: &Store,
    dest: &Path,
    mut opts: PullOptions,
    reporter: Arc<dyn Reporter>,
) -> Result<PullSummary, PullError> {
    let started = Instant::now();
    let resolved = store.resolve(src).await?;
    let manifest = &resolved.manifest;
    tracing::info!(digest = %resolved.digest, layers = manifest.layers.len(), "resolved manifest");

    let dest_owned = dest.to_path_buf();
    let staging = tokio::task::spawn_blocking(move || Staging::prepare(&dest_owned))
        .await
        .map_err(|_| PullError::Staging(StagingError::BadDestination(dest.into())))??;
    if let Some(marker) = staging.existing_marker() {
        if marker.manifest_digest == resolved.digest {
            tracing::info!("destination already holds this manifest; nothing to do");
            return Ok(PullSummary {
                manifest_digest: resolved.digest,
                destination: dest.into(),
                files: marker.files,
                bytes: marker.bytes,
                blob_bytes: 0,
                elapsed: started.elapsed(),
                up_to_date: true,
            });
        }
    }
    if let Some(broker) = &opts.broker {
        let keks = fetch_keks(manifest, broker).await?;
        opts.keys.keks.extend(keks);
    }
    // Every layer is checked (media type, file path, metadata, key) before a byte is fetched.
    let keyed = !opts.keys.is_empty() || opts.broker.is_some();
    let require_encrypted = keyed && !opts.allow_plain_layers;
    if keyed && src.pinned_digest().is_none() {
        // ocicrypt authenticates each layer's bytes, not the manifest that names and lists them.
        tracing::warn!(
            reference = %src,
            "the reference is not pinned by digest: file names and the layer list are not authenticated"
        );
    }
    let plans = manifest
        .layers
        .iter()
        .enumerate()
        .map(|(i, d)| {
            LayerPlan::new(i, d, &opts.keys, require_encrypted).map_err(|source| PullError::Layer {
                reference: src.to_string(),
                label: crate::modelpack::layer_label(i, d),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;

    staging.check_destination()?;
    check_space(staging.root(), &plans)?;

    let extractor = Arc::new(Extractor::new(staging.root().to_path_buf(), opts.modes));
    // The manifest parser refused sizes that overflow this sum.
    let blob_bytes: u64 = manifest.layers.iter().map(|l| l.size).sum();
    reporter.on_pull_start(manifest.layers.len(), blob_bytes);
    let (written, proofs) = fetch_all(src, store, plans, &extractor, &opts, reporter).await?;
    let ex = extractor.clone();
    tokio::task::spawn_blocking(move || ex.finish())
        .await
        .map_err(|_| PullError::Finish(ExtractError::Read(std::io::Error::other("panicked"))))?
        .map_err(PullError::Finish)?;

    let layers = manifest.layers.len();
    let encrypted = manifest
        .layers
        .iter()
        .filter(|l| crate::ocicrypt::is_encrypted(l))
        .count();
    let proof = AllVerified::collect(proofs, layers, encrypted)
        .ok_or(PullError::Unverified { layers, encrypted })?;
    let marker = Marker {
        manifest_digest: resolved.digest.clone(),
        reference: src.to_string(),
        files: written.files,
        bytes: written.bytes,
        completed_at: crate::now_rfc3339(),
    };
    tokio::task::spawn_blocking(move || staging.commit(&marker, proof))
        .await
        .map_err(|_| PullError::Staging(StagingError::BadDestination(dest.into())))??;
    Ok(PullSummary {
        manifest_digest: resolved.digest,
        destination: dest.into(),
        files: written.files,
        bytes: written.bytes,
        blob_bytes,
        elapsed: started.elapsed(),
        up_to_date: false,
    })
}

/// Refuses, before fetching anything, a model that cannot fit: a full tmpfs found halfway
/// through costs the whole transfer. Raw and uncompressed tar layers unpack to about their
/// size; a compressed layer to at least its size.
fn check_space(staging: &Path, plans: &[LayerPlan]) -> Result<(), PullError> {
    // Tar headers and padding: a few KiB per layer that do not land on disk.
    const TAR_OVERHEAD: u64 = 8 * 1024;
    let needed: u64 = plans
        .iter()
        .map(|p| match p.target {
            layer::Target::Raw(..) => p.desc.size,
            layer::Target::Tar(_) => p.desc.size.saturating_sub(TAR_OVERHEAD),
        })
        .sum();
    let Ok(fs) = rustix::fs::statvfs(staging) else {
        return Ok(()); // not knowing is no reason to refuse; a real ENOSPC is still caught
    };
    let available = fs.f_bavail.saturating_mul(fs.f_frsize);
    if needed > available {
        return Err(PullError::NoSpace {
            dir: staging.parent().unwrap_or(staging).to_path_buf(),
            needed,
            available,
        });
    }
    Ok(())
}

/// Asks the broker for the KEK of every `kbs://` recipient in the manifest, once per kid.
async fn fetch_keks(
    manifest: &crate::manifest::Manifest,
    broker: &crate::kbs::Broker,
) -> Result<Vec<crate::ocicrypt::provider::Kek>, PullError> {
    use crate::ocicrypt::provider::Kek;
    let mut kids = Vec::new();
    for layer in &manifest.layers {
        for uri in crate::ocicrypt::provider_kids(layer) {
            if !kids.contains(&uri) {
                kids.push(uri);
            }
        }
    }
    let mut keks = Vec::new();
    for kid in kids {
        let bytes = broker
            .resource(&kid)
            .await
            .map_err(|source| PullError::Broker {
                kid: kid.to_string(),
                source,
            })?;
        let kek = Kek::from_bytes(&bytes).ok_or(PullError::KekLength {
            kid: kid.to_string(),
            len: bytes.len(),
        })?;
        keks.push(kek);
    }
    Ok(keks)
}

/// Layers of at least this size take a large-layer slot.
const LARGE_LAYER: u64 = 64 << 20;

/// Layers fetched at once by default.
pub const DEFAULT_CONCURRENCY: usize = 4;

/// Range requests per large blob by default. Each blob starts as one request and goes to
/// segments only when the consumer starves on it (see [`stream::Ranges`]), so the default
/// costs nothing where one connection keeps up: measured on an encrypted 1.5 GB pull, through
/// 80 MB/s per connection and 20 ms per request 8.7 s against 19.0 s with 1; through 20 ms
/// without a cap 3.0-3.2 s against 2.9-3.3 s (never cut); on loopback 2.0 s either way.
pub const DEFAULT_PARALLEL_RANGES: usize = 4;

/// How `concurrency` slots are split: large layers get one per core, at least 1 and at most
/// all but one (measured on 2 cores: four encrypted 2 GB shards took 23 s one at a time and
/// 13-16 s two at a time; shallower queues keep two within the memory budget), and small
/// layers the rest, so they never wait behind a large one. One slot means one layer at a
/// time, in order, biggest first.
fn lanes(concurrency: usize) -> (usize, usize) {
    if concurrency <= 1 {
        return (1, 0);
    }
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let large = cores.clamp(1, concurrency - 1);
    (large, concurrency - large)
}

/// Runs the layers, large ones (biggest first) and small ones in slots of their own (see
/// [`lanes`]), so a small layer never waits behind a large one. After the first
/// failure no new layer starts and the running ones are cancelled, and every one is awaited
/// before returning, so no worker is still writing when the staging directory is removed.
async fn fetch_all(
    src: &ImageRef,
    store: &Store,
    mut plans: Vec<LayerPlan>,
    ex: &Arc<Extractor>,
    opts: &PullOptions,
    reporter: Arc<dyn Reporter>,
) -> Result<(Written, Vec<LayerProof>), PullError> {
    plans.sort_by_key(|p| std::cmp::Reverse(p.desc.size));
    let (large_slots, small_slots) = lanes(opts.concurrency);
    let (large, small): (Vec<_>, Vec<_>) = plans
        .into_iter()
        .partition(|p| small_slots == 0 || p.desc.size >= LARGE_LAYER);
    let queue = stream::queue_depth(large_slots.min(large.len()));
    let cancelled = Arc::new(AtomicBool::new(false));
    let ranges = stream::Ranges::new(opts.parallel_ranges);
    let lane = |plans: Vec<LayerPlan>, width: usize| {
        let (ex, reporter, cancelled) = (ex.clone(), reporter.clone(), cancelled.clone());
        let ranges = ranges.clone();
        futures_util::stream::iter(plans)
            .map(move |plan| {
                fetch_one(
                    store,
                    plan,
                    ex.clone(),
                    reporter.clone(),
                    cancelled.clone(),
                    queue,
                    ranges.clone(),
                )
            })
            .buffer_unordered(width.max(1))
    };
    let mut running =
        futures_util::stream::select(lane(large, large_slots), lane(small, small_slots));
    let mut total = Written::default();
    let mut proofs = Vec::new();
    let mut first_error: Option<(String, LayerError)> = None;
    while let Some((label, result)) = running.next().await {
        match result {
            Ok((w, v)) => {
                total.add(w);
                proofs.push(v);
            }
            Err(e) => {
                cancelled.store(true, Ordering::Relaxed);
                // Keep the root cause, not the cancellations it triggered.
                if first_error.as_ref().is_none_or(|(_, f)| is_cancellation(f)) {
                    first_error = Some((label, e));
                }
            }
        }
    }
    if let Some((label, source)) = first_error {
        return Err(PullError::Layer {
            reference: src.to_string(),
            label,
            source,
        });
    }
    Ok((total, proofs))
}

/// Fetches one layer (async, resuming) while a blocking thread verifies and unpacks it.
async fn fetch_one(
    store: &Store,
    plan: LayerPlan,
    ex: Arc<Extractor>,
    reporter: Arc<dyn Reporter>,
    cancelled: Arc<AtomicBool>,
    queue: usize,
    ranges: stream::Ranges,
) -> (String, Result<(Written, LayerProof), LayerError>) {
    let label = plan.label();
    if cancelled.load(Ordering::Relaxed) {
        return (label, Err(LayerError::Cancelled));
    }
    let span = tracing::info_span!("layer", digest = %plan.desc.digest);
    let result = async {
        let size = plan.desc.size;
        let desc = plan.desc.clone();
        let id = reporter.on_layer_start(&plan.name(), size);
        let (tx, rx) = tokio::sync::mpsc::channel(queue);
        let consumer_cancel = cancelled.clone();
        let starved = stream::Starved::default();
        let consumer_starved = starved.clone();
        let consumer = tokio::task::spawn_blocking(move || {
            layer::run(&plan, rx, &ex, consumer_cancel, queue, consumer_starved)
        });
        let progress = |n: u64| reporter.on_layer_progress(id, n);
        let fetched =
            stream::fetch(store, &desc, tx, &progress, &cancelled, &ranges, &starved).await;
        let consumed = consumer.await.unwrap_or(Err(LayerError::Panicked));
        // A transfer that gave up explains the short stream the consumer saw, unless the
        // consumer refused what it had already received.
        let (result, stats) = match (fetched, consumed) {
            (Err(_), Err(LayerError::Extract(e))) if !e.is_stream_error() => {
                return Err(LayerError::Extract(e))
            }
            (Err(e), _) => return Err(e),
            (Ok(stats), consumed) => (consumed?, stats),
        };
        reporter.on_layer_done(id);
        tracing::debug!(
            bytes = size,
            resumes = stats.resumes,
            range_requests = stats.segments,
            ahead = stats.ahead,
            "layer verified"
        );
        Ok(result)
    }
    .instrument(span)
    .await;
    (label, result)
}

fn is_cancellation(e: &LayerError) -> bool {
    let io = match e {
        LayerError::Cancelled => return true,
        LayerError::Extract(ExtractError::Read(io) | ExtractError::Tar(io))
        | LayerError::Source(io) => io,
        _ => return false,
    };
    io.get_ref().is_some_and(|e| e.is::<layer::Cancelled>())
}
