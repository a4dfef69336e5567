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

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use crate::manifest::Descriptor;
use crate::ocicrypt::cipher::CtrDecryptor;
use crate::registry::error_chain;
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

/// How a blob's transfer went.
#[derive(Clone, Copy, Debug, Default)]
pub struct FetchStats {
    /// Times the transfer continued from the last byte received after a failure.
    pub resumes: u32,
}

/// Streams `desc`'s blob into `tx` in [`CHUNK`]s. When the connection drops or the body ends
/// early, asks again from the last byte received (the hashes downstream carry on), backing
/// off, and gives up after [`MAX_FAILURES`] attempts in a row without progress. Returns early
/// and without error if the consumer hung up: it reports why.
pub async fn fetch(
    store: &Store,
    desc: &Descriptor,
    tx: mpsc::Sender<Bytes>,
    progress: &(dyn Fn(u64) + Send + Sync),
    cancelled: &AtomicBool,
) -> Result<FetchStats, LayerError> {
    let size = desc.size;
    let mut received: u64 = 0;
    let mut failures: u32 = 0;
    let mut stats = FetchStats::default();
    // Only a network transfer is worth resuming: a local file that ends early or fails to read
    // will do the same again.
    let remote = matches!(store, Store::Registry(_));
    loop {
        let failure = match store.blob_chunks(desc, received, CHUNK).await {
            Err(e) if !remote || !retryable(&e) => return Err(LayerError::Fetch(e)),
            Err(e) => error_chain(&e),
            Ok(mut pieces) => {
                // Pieces as the HTTP client received them go on as they are; small ones are
                // gathered first, so the stages downstream hand off few, large chunks.
                let mut pending = BytesMut::new();
                let failure = loop {
                    if cancelled.load(Ordering::Relaxed) {
                        return Err(LayerError::Cancelled);
                    }
                    // A consumer that stopped (hostile content, say) ends the transfer now,
                    // not when the next piece arrives.
                    let next = tokio::select! {
                        next = pieces.next() => next,
                        () = tx.closed() => return Ok(stats),
                    };
                    let piece = match next {
                        Some(Ok(piece)) => piece,
                        Some(Err(e)) if !remote => return Err(LayerError::Source(e)),
                        Some(Err(e)) => break error_chain(&e),
                        None if received >= size || !remote => {
                            // A short local blob is the digest stage's to report.
                            send(&tx, &mut pending).await;
                            return Ok(stats);
                        }
                        None => {
                            break format!("the connection closed after {received} of {size} bytes")
                        }
                    };
                    if piece.is_empty() {
                        continue;
                    }
                    failures = 0;
                    received += piece.len() as u64;
                    progress(piece.len() as u64);
                    let sent = if pending.is_empty() && piece.len() >= PASS_THROUGH {
                        tx.send(piece).await.is_ok()
                    } else {
                        pending.extend_from_slice(&piece);
                        pending.len() < CHUNK || send(&tx, &mut pending).await
                    };
                    // The consumer hung up (it reports why), or the blob ran past its size (the
                    // digest stage reports that).
                    if !sent || received > size {
                        send(&tx, &mut pending).await;
                        return Ok(stats);
                    }
                };
                // What arrived before the failure is kept; the next request starts after it.
                send(&tx, &mut pending).await;
                failure
            }
        };
        // Everything arrived before the connection failed: the stages downstream judge it.
        if received >= size || tx.is_closed() {
            return Ok(stats);
        }
        if cancelled.load(Ordering::Relaxed) {
            return Err(LayerError::Cancelled);
        }
        failures += 1;
        if failures > MAX_FAILURES || stats.resumes >= MAX_RESUMES {
            return Err(LayerError::Interrupted {
                received,
                size,
                attempts: stats.resumes + 1,
                last: failure,
            });
        }
        stats.resumes += 1;
        let backoff = Duration::from_millis(100 << failures.min(5));
        tracing::warn!(
            digest = %desc.digest,
            received,
            size,
            attempt = stats.resumes,
            error = %failure,
            "blob transfer interrupted; resuming from the last byte received"
        );
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = tx.closed() => return Ok(stats),
        }
    }
}

/// Sends the gathered bytes, if any; false if the consumer hung up.
async fn send(tx: &mpsc::Sender<Bytes>, pending: &mut BytesMut) -> bool {
    if pending.is_empty() {
        return true;
    }
    tx.send(std::mem::take(pending).freeze()).await.is_ok()
}

/// Failures worth another request: the network, a timeout, a registry restarting or busy.
/// Not: a missing blob, refused credentials, a local file that is not there.
fn retryable(e: &StoreError) -> bool {
    use crate::registry::RegistryError;
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
