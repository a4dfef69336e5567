//! A layer's bytes in flight, in three stages that run at once:
//!
//! ```text
//! fetch (async) ──chunks──▶ consumer thread: [decrypt] ─▶ unpack ─▶ staging
//!   │ resumes with Range         │ fans each chunk out, without copying, to
//!   │ after a dropped connection ├─▶ digest thread (SHA-256 of the blob)
//!                                └─▶ HMAC thread (ocicrypt, encrypted layers)
//! ```
//!
//! One core hashes about as fast as a loopback registry sends, so the two hashes of an
//! encrypted layer get a core each. Queues are short and chunks are shared (`Bytes`), so a layer
//! holds a few MiB whatever its size.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use zeroize::Zeroizing;

use crate::manifest::Descriptor;
use crate::ocicrypt::cipher::CtrDecryptor;
use crate::registry::{error_chain, RegistryError};
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

/// Bytes per range request when a large blob comes over several connections: the size object
/// stores recommend for parallel range GETs (8-16 MiB), few requests per GB.
pub const SEGMENT: u64 = 8 << 20;
/// Bytes a pull may hold in segments fetched ahead of the one being delivered, across all its
/// layers: the memory that buys the extra connections.
pub const AHEAD_BUDGET: u64 = 24 << 20;

/// Hand-offs in a row that must find the consumer waiting before a segment is fetched ahead.
const STARVED: u32 = 4;

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

/// Streams `desc`'s blob into `tx` in order, in [`CHUNK`]s. A large blob from a registry comes
/// in [`SEGMENT`]s over up to `ranges.streams` connections (see [`Transfer::segmented`]). When
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
) -> Result<FetchStats, LayerError> {
    let t = Transfer {
        store,
        desc,
        tx: &tx,
        progress,
        cancelled,
        // Only a network transfer is worth resuming or splitting: a local file that ends early
        // or fails to read will do the same again.
        remote: matches!(store, Store::Registry(_)),
        resumes: AtomicU32::new(0),
        segments: AtomicU32::new(0),
        ahead: AtomicU32::new(0),
    };
    if t.remote && ranges.streams > 1 && desc.size >= 2 * SEGMENT {
        if t.segmented(ranges).await?.is_some() {
            return Ok(t.stats());
        }
        tracing::debug!(digest = %desc.digest, "the registry ignores Range; one request instead");
    }
    t.range(0..desc.size, &Sink::Consumer(&tx)).await?;
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
    remote: bool,
    resumes: AtomicU32,
    segments: AtomicU32,
    ahead: AtomicU32,
}

/// How a transfer ended without error.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Flow {
    /// Every byte asked for arrived and was handed on.
    Complete,
    /// The consumer hung up (it reports why), or the blob ran past its size (the digest stage
    /// reports that).
    Stopped,
}

/// Where a range's bytes go: straight to the consumer, or held until the segment's turn.
enum Sink<'a> {
    Consumer(&'a mpsc::Sender<Bytes>),
    Segment(mpsc::UnboundedSender<Bytes>),
}

impl Sink<'_> {
    /// False if the receiving end hung up.
    async fn put(&self, chunk: Bytes) -> bool {
        match self {
            Sink::Consumer(tx) => tx.send(chunk).await.is_ok(),
            Sink::Segment(tx) => tx.send(chunk).is_ok(),
        }
    }

    /// Hands on the gathered bytes, if any.
    async fn flush(&self, pending: &mut BytesMut) -> bool {
        pending.is_empty() || self.put(std::mem::take(pending).freeze()).await
    }
}

/// A segment in the delivery line.
struct Segment {
    len: u64,
    delivered: u64,
    rx: mpsc::UnboundedReceiver<Bytes>,
    /// A segment fetched ahead holds a share of [`AHEAD_BUDGET`] until delivered.
    _ahead: Option<OwnedSemaphorePermit>,
}

impl Transfer<'_> {
    fn stats(&self) -> FetchStats {
        FetchStats {
            resumes: self.resumes.load(Ordering::Relaxed),
            segments: self.segments.load(Ordering::Relaxed),
            ahead: self.ahead.load(Ordering::Relaxed),
        }
    }

    /// The consumer has taken every chunk handed to it: it is waiting for the network.
    fn consumer_waits(&self) -> bool {
        self.tx.capacity() == self.tx.max_capacity()
    }

    /// Fetches the blob in [`SEGMENT`]s and delivers them in order. The first segment in line
    /// streams to the consumer as it arrives; segments behind it are requested only while the
    /// consumer waits for bytes, within the pull's [`AHEAD_BUDGET`], and held until their
    /// turn. So a pull that the CPU holds back (a loopback registry) stays on one connection
    /// at a time and holds nothing ahead, and one that the network holds back (one connection's
    /// window over a long round trip) gets up to `streams` connections.
    /// `None`: the registry ignores Range and nothing was delivered; fetch in one request.
    async fn segmented(&self, ranges: &Ranges) -> Result<Option<Flow>, LayerError> {
        let size = self.desc.size;
        let mut starts = (0..size).step_by(SEGMENT as usize);
        let mut line: VecDeque<Segment> = VecDeque::new();
        let mut running = FuturesUnordered::new();
        let mut delivered: u64 = 0;
        // Hand-offs in a row that found the consumer waiting: a pull held back by the CPU (the
        // hashes, or a registry on the same cores) sometimes drains its queue, but not for long.
        let mut starved: u32 = 0;
        loop {
            while line.len() < ranges.streams {
                let ahead = match line.is_empty() {
                    true => None,
                    false if starved < STARVED => break,
                    false => match ranges.ahead.clone().try_acquire_owned() {
                        Ok(permit) => Some(permit),
                        Err(_) => break,
                    },
                };
                let Some(start) = starts.next() else { break };
                let range = start..(start + SEGMENT).min(size);
                let (tx, rx) = mpsc::unbounded_channel();
                if ahead.is_some() {
                    self.ahead.fetch_add(1, Ordering::Relaxed);
                }
                line.push_back(Segment {
                    len: range.end - range.start,
                    delivered: 0,
                    rx,
                    _ahead: ahead,
                });
                self.segments.fetch_add(1, Ordering::Relaxed);
                running.push(async move { self.range(range, &Sink::Segment(tx)).await });
            }
            let Some(head) = line.front_mut() else {
                return Ok(Some(Flow::Complete));
            };
            tokio::select! {
                // Outcomes first: a failed segment's error, before its closed channel.
                biased;
                Some(outcome) = running.next() => match outcome {
                    Ok(_) if self.tx.is_closed() => return Ok(Some(Flow::Stopped)),
                    // Complete, or the open-ended last segment ran past the blob's size: its
                    // bytes are delivered in turn, and the digest stage reports the excess.
                    Ok(_) => {}
                    Err(LayerError::Fetch(StoreError::Registry(RegistryError::RangeIgnored {
                        ..
                    }))) if delivered == 0 => return Ok(None),
                    Err(e) => return Err(e),
                },
                chunk = head.rx.recv() => match chunk {
                    Some(chunk) => {
                        starved = match self.consumer_waits() {
                            true => starved.saturating_add(1),
                            false => 0,
                        };
                        head.delivered += chunk.len() as u64;
                        delivered += chunk.len() as u64;
                        if self.tx.send(chunk).await.is_err() {
                            return Ok(Some(Flow::Stopped));
                        }
                    }
                    // Its request completed, so every byte of it is delivered.
                    None if head.delivered >= head.len => {
                        line.pop_front();
                    }
                    None => {
                        return Err(LayerError::Source(io::Error::other(format!(
                            "internal error: a segment of blob {} ended after {} of {} bytes",
                            self.desc.digest, head.delivered, head.len
                        ))))
                    }
                },
            }
        }
    }

    /// Fetches bytes `range` into `sink`, resuming after failures.
    async fn range(&self, range: Range<u64>, sink: &Sink<'_>) -> Result<Flow, LayerError> {
        let size = self.desc.size;
        // A range short of the blob's end is bounded by its Range header; one to the end is
        // open-ended, so a blob longer than its descriptor still shows as longer downstream.
        let bounded = range.end < size;
        let mut pos = range.start;
        let mut failures: u32 = 0;
        loop {
            let failure = match self
                .store
                .blob_chunks(self.desc, pos..range.end, CHUNK)
                .await
            {
                Err(e) if !self.remote || !retryable(&e) => return Err(LayerError::Fetch(e)),
                Err(e) => error_chain(&e),
                Ok(mut pieces) => {
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
                            () = self.tx.closed() => return Ok(Flow::Stopped),
                        };
                        let piece = match next {
                            Some(Ok(piece)) => piece,
                            Some(Err(e)) if !self.remote => return Err(LayerError::Source(e)),
                            Some(Err(e)) => break error_chain(&e),
                            // A short local blob is the digest stage's to report.
                            None if pos >= range.end || !self.remote => {
                                return Ok(match sink.flush(&mut pending).await {
                                    true => Flow::Complete,
                                    false => Flow::Stopped,
                                });
                            }
                            None => {
                                break format!(
                                    "the connection closed at byte {pos} of {} (blob size {size})",
                                    range.end
                                )
                            }
                        };
                        if piece.is_empty() {
                            continue;
                        }
                        failures = 0;
                        pos += piece.len() as u64;
                        (self.progress)(piece.len() as u64);
                        if bounded && pos > range.end {
                            return Err(LayerError::RangeOverrun {
                                start: range.start,
                                end: range.end,
                            });
                        }
                        let sent = if pending.is_empty() && piece.len() >= PASS_THROUGH {
                            sink.put(piece).await
                        } else {
                            if pending.is_empty() {
                                pending.reserve(CHUNK);
                            }
                            pending.extend_from_slice(&piece);
                            pending.len() < CHUNK || sink.flush(&mut pending).await
                        };
                        // The consumer hung up (it reports why), or the blob ran past its size
                        // (the digest stage reports that).
                        if !sent || pos > size {
                            sink.flush(&mut pending).await;
                            return Ok(Flow::Stopped);
                        }
                    };
                    // What arrived before the failure is kept; the next request starts after it.
                    sink.flush(&mut pending).await;
                    failure
                }
            };
            if self.tx.is_closed() {
                return Ok(Flow::Stopped);
            }
            // Everything arrived before the connection failed: the stages downstream judge it.
            if pos >= range.end {
                return Ok(Flow::Complete);
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
                () = self.tx.closed() => return Ok(Flow::Stopped),
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
    ) -> ChunkReader {
        ChunkReader {
            rx,
            hashers,
            decrypt: decrypt.map(|cipher| Decrypt {
                cipher,
                plain: Zeroizing::new(Vec::new()),
            }),
            cancelled,
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
        let Some(chunk) = self.rx.blocking_recv() else {
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
