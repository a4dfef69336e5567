//! A pull survives a broken transfer without starting the blob over: a TCP proxy between the
//! pull and a real `docker-registry` cuts the connection in the middle of a large encrypted
//! layer (several times, or while the registry is killed and restarted) and counts every byte
//! it forwarded; and a registry that stays down fails the pull after bounded retries, leaving
//! nothing behind. The same proxy shows a large blob coming in parallel range requests, each
//! of which resumes on its own, and a registry that ignores Range served in one request.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{
    assert_failure_contains, assert_success, dir_names, model_files, modelcrypt,
    pseudo_random_bytes, require_peer, write_file, Cmd, RunOutput, TestRegistry,
};

/// The large layer: big enough to be cut several times between the pull's 1 MiB chunks.
const WEIGHTS_LEN: usize = 24 << 20;
/// Response bytes a connection may carry (over all its keep-alive requests) before the proxy
/// cuts it.
const CUT_AFTER: u64 = 7 << 20;

/// What the proxy does when a connection's response passes [`CUT_AFTER`] bytes.
#[derive(Clone, Copy)]
enum Cut {
    /// Forward everything.
    Never,
    /// Cut the first `n` such connections, then forward everything.
    Times(u32),
    /// Cut the first such connection, but only after the test answered the proxy's event
    /// (the test kills and restarts the registry meanwhile).
    OnceAfterHandshake,
}

/// How the proxy treats the traffic besides cutting it.
#[derive(Clone, Copy)]
struct Link {
    cut: Cut,
    /// Stop a connection that carries a segment request (a Range that does not start at 0)
    /// after [`GATE_AFTER`] bytes until this many such requests have arrived: a pull that asked
    /// for one segment at a time would wait forever, so it proves that they are in flight at
    /// once.
    gate: u32,
    /// Bytes per second per connection: a slow link, which the pull waits for.
    rate: Option<u64>,
    /// Remove `Range` headers, as a registry or cache that ignores them would.
    strip_range: bool,
}

impl Link {
    fn cut(cut: Cut) -> Link {
        Link {
            cut,
            gate: 0,
            rate: None,
            strip_range: false,
        }
    }
}

/// Bytes a gated connection carries (over all its requests) before it waits (see
/// [`Link::gate`]).
/// Less than a segment, so no segment completes before the gate opens.
const GATE_AFTER: u64 = 2 << 20;

/// How long a response waits at the gate before the proxy gives up on it.
const GATE_WAIT: Duration = Duration::from_secs(60);

/// Segment requests seen, and whether the gate ever gave up waiting.
#[derive(Default)]
struct Gate {
    seen: Mutex<(u32, bool)>,
    changed: std::sync::Condvar,
}

impl Gate {
    fn arrived(&self) {
        self.seen.lock().unwrap().0 += 1;
        self.changed.notify_all();
    }

    /// Waits until `n` segment requests arrived; records a timeout.
    fn wait_for(&self, n: u32) {
        let seen = self.seen.lock().unwrap();
        let (mut seen, timeout) = self
            .changed
            .wait_timeout_while(seen, GATE_WAIT, |(count, _)| *count < n)
            .unwrap();
        if timeout.timed_out() {
            seen.1 = true;
        }
    }

    fn timed_out(&self) -> bool {
        self.seen.lock().unwrap().1
    }
}

struct CuttingProxy {
    port: u16,
    /// Bytes forwarded from the registry to the pull, over every connection.
    served: Arc<AtomicU64>,
    cuts: Arc<AtomicU32>,
    /// The `Range` header of every request, as sent.
    ranges: Arc<Mutex<Vec<String>>>,
    gate: Arc<Gate>,
    /// With [`Cut::OnceAfterHandshake`]: "a connection reached the cut" events, and the reply.
    events: Option<(Receiver<()>, Sender<()>)>,
}

impl CuttingProxy {
    fn start(upstream_port: u16, link: Link) -> CuttingProxy {
        let cut = link.cut;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = Arc::new(AtomicU64::new(0));
        let cuts = Arc::new(AtomicU32::new(0));
        let ranges = Arc::new(Mutex::new(Vec::new()));
        let (event_tx, event_rx) = channel();
        let (go_tx, go_rx) = channel::<()>();
        let go_rx = Arc::new(Mutex::new(go_rx));
        let gate = Arc::new(Gate::default());
        let budget = Arc::new(AtomicU32::new(match cut {
            Cut::Never => 0,
            Cut::Times(n) => n,
            Cut::OnceAfterHandshake => 1,
        }));
        let handshake = matches!(cut, Cut::OnceAfterHandshake);
        {
            let (served, cuts, ranges, gate) =
                (served.clone(), cuts.clone(), ranges.clone(), gate.clone());
            // Leaked on purpose: it blocks in accept() until the test process exits.
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { continue };
                    let conn = Conn {
                        served: served.clone(),
                        cuts: cuts.clone(),
                        ranges: ranges.clone(),
                        budget: budget.clone(),
                        handshake: handshake.then(|| (event_tx.clone(), go_rx.clone())),
                        gate: gate.clone(),
                        link,
                    };
                    std::thread::spawn(move || conn.relay(client, upstream_port));
                }
            });
        }
        CuttingProxy {
            port,
            served,
            cuts,
            ranges,
            gate,
            events: handshake.then_some((event_rx, go_tx)),
        }
    }

    fn reference(&self, repo_tag: &str) -> String {
        format!("docker://127.0.0.1:{}/{repo_tag}", self.port)
    }

    /// Range starts the pull asked for after the first request of each blob.
    fn resumed_offsets(&self) -> Vec<u64> {
        self.parsed_ranges()
            .into_iter()
            .map(|(start, _)| start)
            .filter(|&start| start > 0)
            .collect()
    }

    /// Every Range as (first byte, last byte if bounded), in the order they arrived.
    fn parsed_ranges(&self) -> Vec<(u64, Option<u64>)> {
        self.ranges
            .lock()
            .unwrap()
            .iter()
            .map(|r| parse_range(r).unwrap_or_else(|| panic!("unexpected Range `{r}`")))
            .collect()
    }
}

fn parse_range(header: &str) -> Option<(u64, Option<u64>)> {
    let (start, end) = header.strip_prefix("bytes=")?.split_once('-')?;
    let end = match end {
        "" => None,
        end => Some(end.parse().ok()?),
    };
    Some((start.parse().ok()?, end))
}

/// True for a request head that asks for a segment: a range that does not start at 0.
fn asks_segment(head: &str) -> bool {
    head.lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("range")
                && parse_range(value.trim()).is_some_and(|(start, _)| start > 0)
        })
    })
}

/// The proxy's side of [`Cut::OnceAfterHandshake`]: announce the cut, wait for the go-ahead.
type Handshake = (Sender<()>, Arc<Mutex<Receiver<()>>>);

struct Conn {
    served: Arc<AtomicU64>,
    cuts: Arc<AtomicU32>,
    ranges: Arc<Mutex<Vec<String>>>,
    budget: Arc<AtomicU32>,
    handshake: Option<Handshake>,
    gate: Arc<Gate>,
    link: Link,
}

impl Conn {
    fn relay(self, mut client: TcpStream, upstream_port: u16) {
        let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
            return; // the registry is down: the pull sees its connection closed
        };
        let (mut c, mut u) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
        let (ranges, gate, link) = (self.ranges.clone(), self.gate.clone(), self.link);
        // Segment requests on this connection, for the gate on the response side.
        let (held_tx, held_rx) = channel::<()>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            while let Ok(n) = c.read(&mut buf) {
                if n == 0 {
                    break;
                }
                // A request head arrives in one piece: hyper writes it in one call.
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                for line in head.lines() {
                    if let Some((name, value)) = line.split_once(':') {
                        if name.eq_ignore_ascii_case("range") {
                            ranges.lock().unwrap().push(value.trim().to_string());
                        }
                    }
                }
                if link.gate > 0 && asks_segment(&head) {
                    gate.arrived();
                    let _ = held_tx.send(());
                }
                let sent = match link.strip_range {
                    false => u.write_all(&buf[..n]),
                    true => u.write_all(
                        head.split_inclusive('\n')
                            .filter(|l| !l.to_ascii_lowercase().starts_with("range:"))
                            .collect::<String>()
                            .as_bytes(),
                    ),
                };
                if sent.is_err() {
                    break;
                }
            }
            let _ = u.shutdown(Shutdown::Write);
        });
        let mut buf = vec![0u8; 64 * 1024];
        let mut carried: u64 = 0;
        let started = std::time::Instant::now();
        let (mut bounded, mut gated) = (false, false);
        loop {
            let n = match upstream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            bounded |= held_rx.try_recv().is_ok();
            if self.link.gate > 0 && bounded && !gated && carried >= GATE_AFTER {
                self.gate.wait_for(self.link.gate);
                gated = true;
            }
            if let Some(rate) = self.link.rate {
                // Pacing models the link; nothing waits on it to synchronise.
                let due = started + Duration::from_secs_f64(carried as f64 / rate as f64);
                std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
            }
            let cut_here = carried + n as u64 > CUT_AFTER
                && self
                    .budget
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
                    .is_ok();
            let forward = if cut_here {
                (CUT_AFTER - carried) as usize
            } else {
                n
            };
            if client.write_all(&buf[..forward]).is_err() {
                break;
            }
            carried += forward as u64;
            self.served.fetch_add(forward as u64, Ordering::SeqCst);
            if cut_here {
                if let Some((event, go)) = &self.handshake {
                    event.send(()).unwrap();
                    go.lock().unwrap().recv().unwrap();
                }
                self.cuts.fetch_add(1, Ordering::SeqCst);
                // A clean FIN mid-body: the pull keeps every byte forwarded so far.
                break;
            }
        }
        let _ = client.shutdown(Shutdown::Write);
        let _ = upstream.shutdown(Shutdown::Both);
    }
}

/// A model with one large weights file, encrypted for a KEK and pushed to `reg` directly (not
/// through the proxy). Returns the model dir and the KEK file.
fn encrypted_model(reg: &TestRegistry, tmp: &Path) -> (PathBuf, PathBuf) {
    let model = tmp.join("model");
    write_file(
        &model.join("config.json"),
        br#"{"model_type":"qwen3"}"#,
        0o644,
    );
    write_file(
        &model.join("model.safetensors"),
        &pseudo_random_bytes(b"resume", WEIGHTS_LEN),
        0o644,
    );
    let kek = tmp.join("kek.bin");
    assert_success(&modelcrypt([
        "keygen",
        "--type",
        "kek",
        "--out",
        kek.to_str().unwrap(),
    ]));
    let plain = format!("oci:{}:v1", tmp.join("plain").display());
    assert_success(&modelcrypt(["pack", model.to_str().unwrap(), &plain]));
    assert_success(&modelcrypt([
        "--plain-http",
        "encrypt",
        &plain,
        &reg.reference("models/big:v1"),
        "--recipient",
        "kbs:///default/key/1",
        "--kek",
        kek.to_str().unwrap(),
    ]));
    (model, kek)
}

/// A pull through the proxy, with `ranges` range requests per large blob (default: none given).
fn pull_through(proxy: &CuttingProxy, kek: &Path, dest: &Path, ranges: Option<u32>) -> Cmd {
    let cmd = Cmd::modelcrypt()
        .args(["--plain-http", "pull", &proxy.reference("models/big:v1")])
        .arg("--kek")
        .arg(kek)
        .arg("--to")
        .arg(dest);
    match ranges {
        Some(n) => cmd.args(["--parallel-ranges", &n.to_string()]),
        None => cmd,
    }
}

/// A registry holding the encrypted model, and where a test pulls it to.
struct Setup {
    reg: TestRegistry,
    model: PathBuf,
    kek: PathBuf,
    dest: PathBuf,
    tmp: tempfile::TempDir,
}

fn setup() -> Setup {
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let (model, kek) = encrypted_model(&reg, tmp.path());
    let dest = tmp.path().join("out/m");
    Setup {
        reg,
        model,
        kek,
        dest,
        tmp,
    }
}

impl Setup {
    /// Pulls through a new proxy with `link` (and `ranges`, see [`pull_through`]).
    fn pull(&self, link: Link, ranges: Option<u32>) -> (CuttingProxy, RunOutput) {
        let proxy = CuttingProxy::start(self.reg.port(), link);
        let out = pull_through(&proxy, &self.kek, &self.dest, ranges).run();
        (proxy, out)
    }

    /// The model arrived whole, and nothing but the destination sits beside it.
    #[track_caller]
    fn assert_delivered(&self, out: &RunOutput) {
        assert_success(out);
        assert_eq!(model_files(&self.dest), model_files(&self.model));
        assert_eq!(
            dir_names(self.dest.parent().unwrap()),
            vec!["m".to_string()]
        );
    }

    /// Nothing at the destination, no staging beside it.
    #[track_caller]
    fn assert_nothing_left(&self) {
        assert!(!self.dest.exists(), "nothing at the destination");
        let out = self.tmp.path().join("out");
        let left = if out.exists() {
            dir_names(&out)
        } else {
            Vec::new()
        };
        assert_eq!(left, Vec::<String>::new(), "no staging left");
    }
}

/// Bytes the pull may legitimately need besides the big blob: headers, manifest, config,
/// the small layer, one response head per request, and what was in flight past the point
/// where a first request was cut (a paced piece or two). Far less than a segment (4 MiB).
const SLACK: u64 = 512 * 1024;

/// The proxy served the big blob once: starting it, or a segment, over after a cut would cost
/// at least a segment more.
#[track_caller]
fn assert_each_byte_once(proxy: &CuttingProxy) {
    let served = proxy.served.load(Ordering::SeqCst);
    assert!(
        served < WEIGHTS_LEN as u64 + SLACK,
        "the proxy served {served} bytes for a {WEIGHTS_LEN}-byte blob: some of it twice"
    );
}

#[test]
fn a_transfer_cut_three_times_resumes_from_the_last_byte_and_verifies() {
    if !require_peer("docker-registry") {
        return;
    }
    let s = setup();
    let (proxy, out) = s.pull(Link::cut(Cut::Times(3)), Some(1));
    s.assert_delivered(&out);
    assert_eq!(proxy.cuts.load(Ordering::SeqCst), 3, "{out}");
    assert_each_byte_once(&proxy);
    let offsets = proxy.resumed_offsets();
    assert_eq!(offsets.len(), 3, "one Range request per cut: {offsets:?}");
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "each resume starts further in: {offsets:?}"
    );
    assert!(
        out.stderr.contains("resuming"),
        "the pull says it resumed: {out}"
    );
}

/// Pulls the encrypted model (with `ranges`, see [`pull_through`]) through a proxy that stops
/// 7 MiB into the big layer, does `to_registry` to the registry meanwhile, then cuts the
/// connection. Returns the setup, the proxy and the pull's output.
fn pull_cut_once(
    ranges: u32,
    to_registry: impl FnOnce(&mut TestRegistry),
) -> (Setup, CuttingProxy, RunOutput) {
    let mut s = setup();
    // With ranges, a link slow enough that the pull goes to segments before the cut.
    let link = Link {
        rate: (ranges > 1).then_some(SLOW),
        ..Link::cut(Cut::OnceAfterHandshake)
    };
    let mut proxy = CuttingProxy::start(s.reg.port(), link);
    let cmd = pull_through(&proxy, &s.kek, &s.dest, Some(ranges));
    let pull = std::thread::spawn(move || cmd.run());

    let (events, go) = proxy.events.take().unwrap();
    events
        .recv_timeout(Duration::from_secs(120))
        .expect("the pull never reached the middle of the layer");
    to_registry(&mut s.reg);
    go.send(()).unwrap();
    let out = pull.join().unwrap();
    (s, proxy, out)
}

#[test]
fn the_registry_killed_mid_layer_and_restarted_does_not_fail_the_pull() {
    if !require_peer("docker-registry") {
        return;
    }
    let (s, proxy, out) = pull_cut_once(1, TestRegistry::restart);
    s.assert_delivered(&out);
    assert_eq!(proxy.cuts.load(Ordering::SeqCst), 1);
    assert_each_byte_once(&proxy);
    assert_eq!(proxy.resumed_offsets().len(), 1, "{:?}", proxy.ranges);
}

#[test]
fn a_registry_that_stays_down_fails_the_pull_after_bounded_retries_and_leaves_nothing() {
    if !require_peer("docker-registry") {
        return;
    }
    let (s, _, out) = pull_cut_once(1, TestRegistry::stop);
    assert_failure_contains(&out, &["transfer stopped at", "after 6 attempts"]);
    s.assert_nothing_left();
}

#[test]
fn a_registry_that_stays_down_fails_a_pull_in_parallel_ranges_and_leaves_nothing() {
    if !require_peer("docker-registry") {
        return;
    }
    let (s, proxy, out) = pull_cut_once(4, TestRegistry::stop);
    assert_failure_contains(&out, &["transfer stopped at", "attempts"]);
    s.assert_nothing_left();
    assert!(
        blob_ranges(&proxy).iter().any(|(_, end)| end.is_some()),
        "the blob was asked for in segments: {:?}",
        proxy.ranges
    );
}

/// Segment size of a blob fetched in parallel ranges (the pull's `SEGMENT`, 4 MiB).
const SEGMENT: u64 = 4 << 20;

/// The ranges a [`WEIGHTS_LEN`] blob is split into: 4 MiB segments, the last one open-ended.
fn segments() -> Vec<(u64, Option<u64>)> {
    let len = WEIGHTS_LEN as u64;
    (0..len)
        .step_by(SEGMENT as usize)
        .map(|start| (start, (start + SEGMENT < len).then(|| start + SEGMENT - 1)))
        .collect()
}

/// The Ranges of the big blob's requests (the small layers ask for `bytes=0-`).
fn blob_ranges(proxy: &CuttingProxy) -> Vec<(u64, Option<u64>)> {
    let mut ranges: Vec<_> = proxy
        .parsed_ranges()
        .into_iter()
        .filter(|r| *r != (0, None))
        .collect();
    ranges.sort();
    ranges
}

/// Bytes per second per connection of a slow link: the consumer starves on it.
const SLOW: u64 = 16 << 20;

/// A slow link the pull waits for, where no connection gets past 2 MiB of its first segment
/// before three segments are asked for: once the first request is cut, the pull asks for the
/// next segment anyway, more only while it waits for the network, so one or two at a time
/// would never finish.
fn slow_gated_link() -> Link {
    Link {
        gate: 3,
        ..slow_link()
    }
}

/// A link of [`SLOW`] bytes per second per connection, nothing cut.
fn slow_link() -> Link {
    Link {
        rate: Some(SLOW),
        ..Link::cut(Cut::Never)
    }
}

/// The segment requests after the first, open-ended one: they tile the blob from the point
/// where it was cut, a segment boundary at least one segment in.
#[track_caller]
fn assert_cut_and_tiled(proxy: &CuttingProxy) {
    let ranges = blob_ranges(proxy);
    let cut = ranges.first().map_or(0, |r| r.0);
    assert!(
        cut >= SEGMENT && cut % SEGMENT == 0,
        "cut at a boundary: {ranges:?}"
    );
    let tiles: Vec<_> = segments().into_iter().filter(|r| r.0 >= cut).collect();
    assert_eq!(ranges, tiles, "{:?}", proxy.ranges);
}

#[test]
fn a_large_blob_comes_in_parallel_range_requests_each_byte_once() {
    if !require_peer("docker-registry") {
        return;
    }
    let s = setup();
    let (proxy, out) = s.pull(slow_gated_link(), Some(4));
    assert!(
        !proxy.gate.timed_out(),
        "segments were asked for one or two at a time: {out}"
    );
    s.assert_delivered(&out);
    assert_cut_and_tiled(&proxy);
    assert_each_byte_once(&proxy);
}

#[test]
fn a_cut_segment_resumes_within_its_own_range() {
    if !require_peer("docker-registry") {
        return;
    }
    let s = setup();
    let link = Link {
        rate: Some(SLOW),
        ..Link::cut(Cut::Times(2))
    };
    let (proxy, out) = s.pull(link, Some(4));
    s.assert_delivered(&out);
    assert_eq!(proxy.cuts.load(Ordering::SeqCst), 2, "{out}");
    assert_each_byte_once(&proxy);
    // Each resume asks for the rest of what it resumes only: the first request up to where it
    // was cut, or its segment.
    let segments = segments();
    let ranges = blob_ranges(&proxy);
    let cut = ranges
        .iter()
        .map(|r| r.0)
        .find(|start| start % SEGMENT == 0)
        .expect("the first request was cut into segments");
    let resumed: Vec<_> = ranges.into_iter().filter(|r| r.0 % SEGMENT != 0).collect();
    assert_eq!(resumed.len(), 2, "one resume per cut: {resumed:?}");
    for (start, end) in resumed {
        let expected = match start < cut {
            true => Some(cut - 1),
            false => {
                segments
                    .iter()
                    .find(|(s, e)| *s < start && e.is_none_or(|e| start <= e))
                    .unwrap_or_else(|| panic!("resume at {start} is in no segment"))
                    .1
            }
        };
        assert_eq!(end, expected, "the resume at {start} asks for its rest");
    }
}

#[test]
fn a_registry_that_ignores_range_serves_the_blob_in_one_request() {
    if !require_peer("docker-registry") {
        return;
    }
    let s = setup();
    // Slow enough that the pull would go to segments, were the first answer a 206.
    let link = Link {
        strip_range: true,
        ..slow_link()
    };
    let (proxy, out) = s.pull(link, Some(4));
    s.assert_delivered(&out);
    // The first request got the whole blob (200), so it was never cut into segments.
    assert_eq!(blob_ranges(&proxy), vec![], "{:?}", proxy.ranges);
    assert_each_byte_once(&proxy);
}

#[test]
fn by_default_a_slow_link_gets_segments() {
    if !require_peer("docker-registry") {
        return;
    }
    let s = setup();
    let (proxy, out) = s.pull(slow_link(), None);
    s.assert_delivered(&out);
    assert_cut_and_tiled(&proxy);
    assert_each_byte_once(&proxy);
}

#[test]
fn with_one_range_a_blob_comes_in_one_request_even_over_a_slow_link() {
    if !require_peer("docker-registry") {
        return;
    }
    let s = setup();
    let (proxy, out) = s.pull(slow_link(), Some(1));
    s.assert_delivered(&out);
    assert_eq!(
        blob_ranges(&proxy),
        vec![],
        "only `bytes=0-`: {:?}",
        proxy.ranges
    );
}

#[test]
fn a_byte_changed_in_a_later_segment_fails_a_parallel_pull_and_leaves_nothing() {
    if !require_peer("docker-registry") {
        return;
    }
    let s = setup();
    // The big layer's blob is the largest file in the registry's storage.
    let stored = walk_files(&s.reg.storage_root())
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&stored).unwrap();
    assert_eq!(bytes.len(), WEIGHTS_LEN);
    // In the last segment: the first request is cut well before it.
    bytes[(5 * SEGMENT + 12345) as usize] ^= 0x01;
    std::fs::write(&stored, bytes).unwrap();

    let (proxy, out) = s.pull(slow_gated_link(), Some(4));
    assert!(!proxy.gate.timed_out(), "segments one at a time: {out}");
    assert_failure_contains(&out, &["digest mismatch"]);
    s.assert_nothing_left();
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        match path.is_dir() {
            true => files.extend(walk_files(&path)),
            false => files.push(path),
        }
    }
    files
}
