//! A layer's bytes in flight, in three stages that run at once:
//!
//! ```text
//! fetch (async) ──chunks──▶ consumer thread: [decrypt] ─▶ unpack ─▶ staging
//!   │ resumes with Range         │ fans each chunk out, without copying, to
//!   │ after a dropped connection ├─▶ digest thread (SHA-256 of the blob)
//!   │ a large blob the network   └─▶ HMAC thread (ocicrypt, encrypted layers)
//!   │ holds back: cut into 4 MiB segments over several connections, delivered in order
//! ```
//!
//! One core hashes about as fast as a loopback registry sends, so the two hashes of an
//! encrypted layer get a core each. Queues are short and chunks are shared (`Bytes`), so a layer
//! holds a few MiB whatever its size: its queues, the segment being delivered (up to
//! [`SEGMENT`]) and its share of the pull's [`AHEAD_BUDGET`].

use std::collections::VecDeque;
use std::io::{self, Read};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use zeroize::Zeroizing;

use crate::manifest::Descriptor;
use crate::ocicrypt::cipher::CtrDecryptor;
use crate::registry::{error_chain, RegistryError, Served};
use crate::store::{Store, StoreError};

use super::layer::Cancelled;
use super::LayerError;

/// Bytes per chunk: large writes and few channel hand-offs, small enough to bound memory.
pub const CHUNK: usize = 1 << 20;
/// Received pieces at least this large are passed on without being gathered (copied).
const PASS_THROUGH: usize = 256 * 1024;
/// Chunks a stage may run ahead of the next one.
pub const QUEUE: usize = 5;
/// The memory a pull may spend on queues: large layers in flight at once share it.
pub const QUEUE_BUDGET: usize = 5;

/// Queue depth per stage when `large` large layers run at once: deep enough to keep the
/// threads from waking for every piece (5 deep was 20% faster than 3 for one layer), shallow
/// enough that peak memory stays under 64 MiB with two (3 deep each peaked at 64.3 MiB).
pub fn queue_depth(large: usize) -> usize {
    (QUEUE_BUDGET / large.max(1)).clamp(2, QUEUE)
}
/// Attempts in a row that may fail without receiving a byte before a layer gives up.
pub const MAX_FAILURES: u32 = 5;
/// Resumes per layer in all, so a registry that sends a few bytes per connection ends too.
pub const MAX_RESUMES: u32 = 50;

/// Bytes per range request when a large blob comes over several connections. Object stores
/// suggest 8-16 MB parts; smaller ones put more connections to work within [`AHEAD_BUDGET`]
/// (measured through a link of 80 MB/s per connection and 20 ms round trips: 8 MiB segments
/// in a 24 MiB budget reached 172 MB/s), at one round trip per 4 MiB.
pub const SEGMENT: u64 = 4 << 20;
/// Pieces a segment's channel holds: a whole segment (pieces are at least [`PASS_THROUGH`]
/// or gathered to [`CHUNK`]), so a segment fetched ahead never waits for its turn to read.
const SEGMENT_QUEUE: usize = (SEGMENT as usize).div_ceil(PASS_THROUGH) + 4;
/// Pieces the first request's channel holds: it streams to the consumer, at its pace.
const FIRST_QUEUE: usize = 4;
/// Bytes a pull may hold in segments fetched ahead of the one being delivered, across all its
/// layers: the memory that buys the extra connections.
pub const AHEAD_BUDGET: u64 = 16 << 20;
/// Blobs from this size on may be cut into segments.
pub const SEGMENTED_FROM: u64 = 16 << 20;

/// How the layers of one pull may use parallel range requests.
#[derive(Clone, Debug)]
pub struct Ranges {
    /// Range requests in flight per layer at most; 1 fetches every blob in one request.
    streams: usize,
    /// Segments held ahead of delivery, shared by the pull's layers ([`AHEAD_BUDGET`]).
    ahead: Arc<Semaphore>,
}

impl Ranges {
    pub fn new(streams: usize) -> Ranges {
        Ranges {
            streams: streams.max(1),
            ahead: Arc::new(Semaphore::new((AHEAD_BUDGET / SEGMENT) as usize)),
        }
    }
}

/// Time a layer's consumer spent waiting for chunks, the wait under way included: how the
/// fetch tells whether the network or the CPU holds the pull back (a consumer that waits on
/// the hash threads is not idle).
#[derive(Clone, Debug)]
pub struct Starved(Arc<StarvedInner>);

#[derive(Debug)]
struct StarvedInner {
    /// Instants are kept as nanoseconds since this one.
    epoch: Instant,
    /// Waits that ended, in all.
    waited: AtomicU64,
    /// When the wait under way began, plus one (0: not waiting).
    since: AtomicU64,
}

impl Default for Starved {
    fn default() -> Starved {
        Starved(Arc::new(StarvedInner {
            epoch: Instant::now(),
            waited: AtomicU64::new(0),
            since: AtomicU64::new(0),
        }))
    }
}

impl Starved {
    fn nanos(&self) -> u64 {
        u64::try_from(self.0.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn begin(&self) {
        self.0
            .since
            .store(self.nanos().saturating_add(1), Ordering::Relaxed);
    }

    fn end(&self) {
        let since = self.0.since.swap(0, Ordering::Relaxed);
        if since > 0 {
            let waited = self.nanos().saturating_sub(since - 1);
            self.0.waited.fetch_add(waited, Ordering::Relaxed);
        }
    }

    /// Read in this order, a wait that ends meanwhile is left out rather than counted twice:
    /// the fetch then widens a little later, never wrongly.
    fn total(&self) -> Duration {
        let waited = self.0.waited.load(Ordering::Relaxed);
        let ongoing = match self.0.since.load(Ordering::Relaxed) {
            0 => 0,
            since => self.nanos().saturating_sub(since - 1),
        };
        Duration::from_nanos(waited.saturating_add(ongoing))
    }
}

/// The shortest stretch over which the consumer's idle time is judged before another segment
/// is requested, and how often it is judged while no bytes arrive.
const JUDGED_OVER: Duration = Duration::from_millis(20);
/// The shortest stretch of starving before the first request is cut into segments: a fast
/// connection also leaves the consumer waiting now and then (measured: judged over 20 ms, a
/// link without a cap was cut in 2 runs of 3 and took twice as long).
const CUT_AFTER: Duration = Duration::from_millis(250);

/// How a blob's transfer went.
#[derive(Clone, Copy, Debug, Default)]
pub struct FetchStats {
    /// Times the transfer continued from the last byte received after a failure.
    pub resumes: u32,
    /// Range requests made for segments of the blob (0: fetched in one request).
    pub segments: u32,
    /// Of those, the ones fetched ahead of delivery, on a connection of their own.
    pub ahead: u32,
}

/// Streams `desc`'s blob into `tx` in order, in [`CHUNK`]s. With `ranges.streams` above 1, a
/// large blob from a registry that the network holds back goes on in [`SEGMENT`]s over up to
/// that many connections (see [`Transfer::segmented`]). When
/// a connection drops or a body ends early, asks again from the last byte received (the hashes
/// downstream carry on), backing off, and gives up after [`MAX_FAILURES`] attempts in a row
/// without progress. Returns early and without error if the consumer hung up: it reports why.
pub async fn fetch(
    store: &Store,
    desc: &Descriptor,
    tx: mpsc::Sender<Bytes>,
    progress: &(dyn Fn(u64) + Send + Sync),
    cancelled: &AtomicBool,
    ranges: &Ranges,
    starved: &Starved,
) -> Result<FetchStats, LayerError> {
    let t = Transfer {
        store,
        desc,
        tx: &tx,
        progress,
        cancelled,
        starved,
        // Only a network transfer is worth resuming or splitting: a local file that ends early
        // or fails to read will do the same again.
        remote: matches!(store, Store::Registry(_)),
        resumes: AtomicU32::new(0),
        segments: AtomicU32::new(0),
        ahead: AtomicU32::new(0),
    };
    let mut start = 0;
    if t.remote && ranges.streams > 1 && desc.size >= SEGMENTED_FROM {
        match t.segmented(ranges).await? {
            None => return Ok(t.stats()),
            Some(delivered) => {
                tracing::debug!(
                    digest = %desc.digest,
                    delivered,
                    "the registry does not serve byte ranges; the rest in one request"
                );
                start = delivered;
            }
        }
    }
    t.range(&Bounds::new(start..desc.size), &tx).await?;
    Ok(t.stats())
}

/// One blob's transfer, shared by its range requests.
struct Transfer<'a> {
    store: &'a Store,
    desc: &'a Descriptor,
    /// The consumer: segments are delivered to it in order; its hanging up ends the transfer.
    tx: &'a mpsc::Sender<Bytes>,
    progress: &'a (dyn Fn(u64) + Send + Sync),
    cancelled: &'a AtomicBool,
    starved: &'a Starved,
    remote: bool,
    resumes: AtomicU32,
    segments: AtomicU32,
    ahead: AtomicU32,
}

/// Hands the gathered bytes to `sink` (the consumer, or a segment's channel), if any; false if
/// the receiving end hung up.
async fn flush(sink: &mpsc::Sender<Bytes>, pending: &mut BytesMut) -> bool {
    pending.is_empty() || sink.send(std::mem::take(pending).freeze()).await.is_ok()
}

/// The bytes one range covers: its end may be moved closer while it runs (the first request of
/// a segmented transfer is cut when the rest goes to segments), and how far it got is public.
struct Bounds {
    start: u64,
    end: AtomicU64,
    reached: AtomicU64,
    /// The registry answered with the whole blob: it cannot be cut.
    ranges_ignored: AtomicBool,
}

impl Bounds {
    fn new(range: Range<u64>) -> Bounds {
        Bounds {
            start: range.start,
            end: AtomicU64::new(range.end),
            reached: AtomicU64::new(range.start),
            ranges_ignored: AtomicBool::new(false),
        }
    }

    fn end(&self) -> u64 {
        self.end.load(Ordering::Relaxed)
    }
}

/// A segment in the delivery line.
struct Segment {
    len: u64,
    delivered: u64,
    rx: mpsc::Receiver<Bytes>,
    /// A segment behind the first holds a share of [`AHEAD_BUDGET`]; it gives it back when its
    /// turn comes, since from then on the consumer takes its bytes as they arrive.
    ahead: Option<OwnedSemaphorePermit>,
}

impl Transfer<'_> {
    fn stats(&self) -> FetchStats {
        FetchStats {
            resumes: self.resumes.load(Ordering::Relaxed),
            segments: self.segments.load(Ordering::Relaxed),
            ahead: self.ahead.load(Ordering::Relaxed),
        }
    }

    /// The consumer waited for chunks at least half the time since `since` (an instant and
    /// its idle total then), judged over `over` at least: the network holds it back.
    fn consumer_starves(&self, since: (Instant, Duration), over: Duration) -> bool {
        let elapsed = since.0.elapsed();
        elapsed >= over && self.starved.total().saturating_sub(since.1) * 2 >= elapsed
    }

    /// Fetches the blob as one open-ended request, like a transfer without ranges, until the
    /// consumer spends at least half its time waiting for bytes (over [`CUT_AFTER`]); then
    /// that request is cut at a
    /// segment boundary at least a [`SEGMENT`] ahead and the rest comes in [`SEGMENT`]s,
    /// delivered in order. The segment after the one being delivered is always requested (its
    /// round trip overlaps the transfer); more, up to `streams`, only while the consumer still
    /// starves. Segments behind the first share the pull's [`AHEAD_BUDGET`] and are held until
    /// their turn. So a pull that the CPU holds back, or one fast connection, stays one
    /// request; one that the network holds back (a per-connection cap, a small window over a
    /// long round trip) gets up to `streams` connections.
    /// `Some(offset)`: the registry does not serve byte ranges (any more); the bytes from
    /// `offset` on, all delivered before it, are to come in one request.
    async fn segmented(&self, ranges: &Ranges) -> Result<Option<u64>, LayerError> {
        let size = self.desc.size;
        let first = Bounds::new(0..size);
        let mut line: VecDeque<Segment> = VecDeque::new();
        let mut running: FuturesUnordered<BoxFuture<'_, Result<(), LayerError>>> =
            FuturesUnordered::new();
        // Short: the first request may be the whole blob, and must wait for the consumer.
        let (tx, rx) = mpsc::channel(FIRST_QUEUE);
        line.push_back(Segment {
            len: size,
            delivered: 0,
            rx,
            ahead: None,
        });
        // The future owns the sender: the channel closes when the request ends.
        let first_bounds = &first;
        running.push(Box::pin(async move { self.range(first_bounds, &tx).await }));
        // The first byte of the next segment, once the first request was cut.
        let mut next: Option<u64> = None;
        let mut delivered: u64 = 0;
        // Since when the consumer's idle time is judged: the first byte arrived, the line last
        // grew past two, or a second went by without it starving (so an old stretch does not
        // mask a new one).
        let mut since = (Instant::now(), self.starved.total());
        loop {
            if since.0.elapsed() > Duration::from_secs(1)
                && !self.consumer_starves(since, JUDGED_OVER)
            {
                since = (Instant::now(), self.starved.total());
            }
            if next.is_none()
                && delivered > 0
                && !first.ranges_ignored.load(Ordering::Relaxed)
                && self.consumer_starves(since, CUT_AFTER)
            {
                // The first request goes on to a boundary at least a segment ahead, so the
                // segments' round trips overlap its last bytes. It runs in this task, so it is
                // not between reading a piece and counting it.
                let cut = (first.reached.load(Ordering::Relaxed) / SEGMENT + 2) * SEGMENT;
                if cut < size {
                    first.end.store(cut, Ordering::Relaxed);
                    // Until the cut, the line holds the first request alone.
                    if let Some(head) = line.front_mut() {
                        head.len = cut;
                    }
                    next = Some(cut);
                    since = (Instant::now(), self.starved.total());
                }
            }
            while let Some(start) = next.filter(|&start| start < size) {
                if line.len() >= ranges.streams {
                    break;
                }
                let ahead = match line.len() {
                    0 => None,
                    n if n > 1 && !self.consumer_starves(since, JUDGED_OVER) => break,
                    _ => match ranges.ahead.clone().try_acquire_owned() {
                        Ok(permit) => Some(permit),
                        Err(_) => break,
                    },
                };
                let range = start..(start + SEGMENT).min(size);
                next = Some(range.end);
                let (tx, rx) = mpsc::channel(SEGMENT_QUEUE);
                if ahead.is_some() {
                    self.ahead.fetch_add(1, Ordering::Relaxed);
                }
                line.push_back(Segment {
                    len: range.end - range.start,
                    delivered: 0,
                    rx,
                    ahead,
                });
                self.segments.fetch_add(1, Ordering::Relaxed);
                running.push(Box::pin(async move {
                    self.range(&Bounds::new(range), &tx).await
                }));
                if line.len() > 2 {
                    since = (Instant::now(), self.starved.total());
                }
            }
            let Some(head) = line.front_mut() else {
                return Ok(None);
            };
            tokio::select! {
                // Outcomes first: a failed segment's error, before its closed channel.
                biased;
                Some(outcome) = running.next() => match outcome {
                    Ok(_) if self.tx.is_closed() => return Ok(None),
                    // Complete, or the open-ended last segment ran past the blob's size: its
                    // bytes are delivered in turn, and the digest stage reports the excess.
                    Ok(_) => {}
                    Err(LayerError::Fetch(StoreError::Registry(
                        RegistryError::RangeUnsupported { .. },
                    ))) => return Ok(Some(delivered)),
                    Err(e) => return Err(e),
                },
                chunk = head.rx.recv() => match chunk {
                    Some(chunk) => {
                        if delivered == 0 {
                            // The wait for the first byte says nothing about the link's rate.
                            since = (Instant::now(), self.starved.total());
                        }
                        head.delivered += chunk.len() as u64;
                        delivered += chunk.len() as u64;
                        if self.tx.send(chunk).await.is_err() {
                            return Ok(None);
                        }
                    }
                    // Its request completed, so every byte of it is delivered.
                    None if head.delivered >= head.len => {
                        line.pop_front();
                        if let Some(next) = line.front_mut() {
                            next.ahead = None;
                        }
                    }
                    None => {
                        return Err(LayerError::Source(io::Error::other(format!(
                            "internal error: a segment of blob {} ended after {} of {} bytes",
                            self.desc.digest, head.delivered, head.len
                        ))))
                    }
                },
                // Nothing arrived for a while: judge again whether to cut or widen.
                () = tokio::time::sleep(JUDGED_OVER) => {}
            }
        }
    }

    /// Fetches the bytes of `bounds` into `sink`, resuming after failures.
    /// Returns early, without error, when the consumer hung up (it reports why) or the blob
    /// ran past its size (the digest stage reports that).
    async fn range(&self, bounds: &Bounds, sink: &mpsc::Sender<Bytes>) -> Result<(), LayerError> {
        let size = self.desc.size;
        let mut pos = bounds.start;
        let mut failures: u32 = 0;
        loop {
            // A range short of the blob's end is bounded by its Range header; one to the end is
            // open-ended, so a blob longer than its descriptor still shows as longer downstream.
            let asked = bounds.end();
            let failure = match self.store.blob_chunks(self.desc, pos..asked, CHUNK).await {
                Err(e) if !self.remote || !retryable(&e) => return Err(LayerError::Fetch(e)),
                Err(e) => error_chain(&e),
                Ok((mut pieces, served)) => {
                    if served == Served::Whole {
                        bounds.ranges_ignored.store(true, Ordering::Relaxed);
                    }
                    // Pieces as the HTTP client received them go on as they are; small ones are
                    // gathered first, so the stages downstream hand off few, large chunks.
                    let mut pending = BytesMut::new();
                    let failure = loop {
                        if self.cancelled.load(Ordering::Relaxed) {
                            return Err(LayerError::Cancelled);
                        }
                        // A consumer that stopped (hostile content, say) ends the transfer now,
                        // not when the next piece arrives.
                        let next = tokio::select! {
                            next = pieces.next() => next,
                            () = self.tx.closed() => return Ok(()),
                        };
                        let piece = match next {
                            Some(Ok(piece)) => piece,
                            Some(Err(e)) if !self.remote => return Err(LayerError::Source(e)),
                            Some(Err(e)) => break error_chain(&e),
                            // A short local blob is the digest stage's to report.
                            None if pos >= bounds.end() || !self.remote => {
                                flush(sink, &mut pending).await;
                                return Ok(());
                            }
                            None => {
                                break format!(
                                    "the connection closed at byte {pos} of {} (blob size {size})",
                                    bounds.end()
                                )
                            }
                        };
                        // The range was cut short after this request went out: what lies past
                        // the cut comes in segments of its own.
                        let cut = bounds.end();
                        let piece = match pos + piece.len() as u64 > cut && cut < asked {
                            true => piece.slice(..(cut.saturating_sub(pos)) as usize),
                            false => piece,
                        };
                        if piece.is_empty() {
                            if pos >= cut {
                                flush(sink, &mut pending).await;
                                return Ok(());
                            }
                            continue;
                        }
                        failures = 0;
                        pos += piece.len() as u64;
                        bounds.reached.store(pos, Ordering::Relaxed);
                        (self.progress)(piece.len() as u64);
                        if asked < size && pos > asked {
                            return Err(LayerError::RangeOverrun {
                                start: bounds.start,
                                end: asked,
                            });
                        }
                        let sent = if pending.is_empty() && piece.len() >= PASS_THROUGH {
                            sink.send(piece).await.is_ok()
                        } else {
                            if pending.is_empty() {
                                pending.reserve(CHUNK);
                            }
                            pending.extend_from_slice(&piece);
                            pending.len() < CHUNK || flush(sink, &mut pending).await
                        };
                        // The consumer hung up (it reports why), the blob ran past its size
                        // (the digest stage reports that), or the range was cut here.
                        if !sent || pos > size || (pos >= cut && cut < asked) {
                            flush(sink, &mut pending).await;
                            return Ok(());
                        }
                    };
                    // What arrived before the failure is kept; the next request starts after it.
                    flush(sink, &mut pending).await;
                    failure
                }
            };
            if self.tx.is_closed() {
                return Ok(());
            }
            // Everything arrived before the connection failed: the stages downstream judge it.
            if pos >= bounds.end() {
                return Ok(());
            }
            if self.cancelled.load(Ordering::Relaxed) {
                return Err(LayerError::Cancelled);
            }
            failures += 1;
            let resumes = self.resumes.load(Ordering::Relaxed);
            if failures > MAX_FAILURES || resumes >= MAX_RESUMES {
                return Err(LayerError::Interrupted {
                    received: pos,
                    size,
                    attempts: resumes + 1,
                    last: failure,
                });
            }
            let attempt = self.resumes.fetch_add(1, Ordering::Relaxed) + 1;
            let backoff = Duration::from_millis(100 << failures.min(5));
            tracing::warn!(
                digest = %self.desc.digest,
                received = pos,
                size,
                attempt,
                error = %failure,
                "blob transfer interrupted; resuming from the last byte received"
            );
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.tx.closed() => return Ok(()),
            }
        }
    }
}

/// Failures worth another request: the network, a timeout, a registry restarting or busy.
/// Not: a missing blob, refused credentials, a local file that is not there.
fn retryable(e: &StoreError) -> bool {
    match e {
        StoreError::Registry(RegistryError::Pull { status, .. }) => match status {
            None => true,
            Some(code) => *code >= 500 || *code == 429,
        },
        _ => false,
    }
}

/// The consumer's end: reads the layer's bytes in order, decrypted when the layer is
/// encrypted, after handing each ciphertext chunk to the hash threads.
pub struct ChunkReader {
    rx: mpsc::Receiver<Bytes>,
    hashers: Vec<SyncSender<Bytes>>,
    decrypt: Option<Decrypt>,
    cancelled: std::sync::Arc<AtomicBool>,
    starved: Starved,
    /// The chunk being read, as received (plain layers).
    current: Bytes,
    pos: usize,
    len: usize,
}

struct Decrypt {
    cipher: CtrDecryptor,
    plain: Zeroizing<Vec<u8>>,
}

impl ChunkReader {
    pub fn new(
        rx: mpsc::Receiver<Bytes>,
        hashers: Vec<SyncSender<Bytes>>,
        decrypt: Option<CtrDecryptor>,
        cancelled: std::sync::Arc<AtomicBool>,
        starved: Starved,
    ) -> ChunkReader {
        ChunkReader {
            rx,
            hashers,
            decrypt: decrypt.map(|cipher| Decrypt {
                cipher,
                plain: Zeroizing::new(Vec::new()),
            }),
            cancelled,
            starved,
            current: Bytes::new(),
            pos: 0,
            len: 0,
        }
    }

    /// The next chunk, already handed to the hash threads; `None` at the end of the stream.
    fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        if self.cancelled.load(Ordering::Relaxed) {
            // Not `Interrupted`: readers retry that kind forever.
            return Err(io::Error::other(Cancelled));
        }
        self.starved.begin();
        let chunk = self.rx.blocking_recv();
        self.starved.end();
        let Some(chunk) = chunk else {
            return Ok(None);
        };
        for h in &self.hashers {
            // A hash thread that stopped has its verdict ready; nothing to send it.
            let _ = h.send(chunk.clone());
        }
        Ok(Some(chunk))
    }

    /// Hashes whatever the consumer left unread (bytes after a tar's end, a gzip trailer), so
    /// the verdicts cover the whole blob.
    pub fn drain(&mut self) -> io::Result<()> {
        while self.next_chunk()?.is_some() {}
        self.pos = self.len;
        Ok(())
    }
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.pos == self.len {
            let Some(chunk) = self.next_chunk()? else {
                return Ok(0);
            };
            self.pos = 0;
            self.len = chunk.len();
            match &mut self.decrypt {
                None => self.current = chunk,
                Some(d) => {
                    if d.plain.len() < chunk.len() + 16 {
                        d.plain.resize(chunk.len() + 16, 0);
                    }
                    d.cipher.apply(&chunk, &mut d.plain)?;
                }
            }
        }
        let src = match &self.decrypt {
            None => &self.current[self.pos..self.len],
            Some(d) => &d.plain[self.pos..self.len],
        };
        let n = out.len().min(src.len());
        out[..n].copy_from_slice(&src[..n]);
        self.pos += n;
        Ok(n)
    }
}
