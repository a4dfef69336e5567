//! A pull survives a broken transfer without starting the blob over: a TCP proxy between the
//! pull and a real `docker-registry` cuts the connection in the middle of a large encrypted
//! layer (several times, or while the registry is killed and restarted) and counts every byte
//! it forwarded; and a registry that stays down fails the pull after bounded retries, leaving
//! nothing behind.

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
/// Response bytes a connection may carry before the proxy cuts it.
const CUT_AFTER: u64 = 7 << 20;

/// What the proxy does when a connection's response passes [`CUT_AFTER`] bytes.
#[derive(Clone, Copy)]
enum Cut {
    /// Cut the first `n` such connections, then forward everything.
    Times(u32),
    /// Cut the first such connection, but only after the test answered the proxy's event
    /// (the test kills and restarts the registry meanwhile).
    OnceAfterHandshake,
}

struct CuttingProxy {
    port: u16,
    /// Bytes forwarded from the registry to the pull, over every connection.
    served: Arc<AtomicU64>,
    cuts: Arc<AtomicU32>,
    /// The `Range` header of every request, as sent.
    ranges: Arc<Mutex<Vec<String>>>,
    /// With [`Cut::OnceAfterHandshake`]: "a connection reached the cut" events, and the reply.
    events: Option<(Receiver<()>, Sender<()>)>,
}

impl CuttingProxy {
    fn start(upstream_port: u16, cut: Cut) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = Arc::new(AtomicU64::new(0));
        let cuts = Arc::new(AtomicU32::new(0));
        let ranges = Arc::new(Mutex::new(Vec::new()));
        let (event_tx, event_rx) = channel();
        let (go_tx, go_rx) = channel::<()>();
        let go_rx = Arc::new(Mutex::new(go_rx));
        let budget = Arc::new(AtomicU32::new(match cut {
            Cut::Times(n) => n,
            Cut::OnceAfterHandshake => 1,
        }));
        let handshake = matches!(cut, Cut::OnceAfterHandshake);
        {
            let (served, cuts, ranges) = (served.clone(), cuts.clone(), ranges.clone());
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
            events: handshake.then_some((event_rx, go_tx)),
        }
    }

    fn reference(&self, repo_tag: &str) -> String {
        format!("docker://127.0.0.1:{}/{repo_tag}", self.port)
    }

    /// Range starts the pull asked for after the first request of each blob.
    fn resumed_offsets(&self) -> Vec<u64> {
        self.ranges
            .lock()
            .unwrap()
            .iter()
            .filter_map(|r| r.strip_prefix("bytes=")?.split('-').next()?.parse().ok())
            .filter(|&start: &u64| start > 0)
            .collect()
    }
}

/// The proxy's side of [`Cut::OnceAfterHandshake`]: announce the cut, wait for the go-ahead.
type Handshake = (Sender<()>, Arc<Mutex<Receiver<()>>>);

struct Conn {
    served: Arc<AtomicU64>,
    cuts: Arc<AtomicU32>,
    ranges: Arc<Mutex<Vec<String>>>,
    budget: Arc<AtomicU32>,
    handshake: Option<Handshake>,
}

impl Conn {
    fn relay(self, mut client: TcpStream, upstream_port: u16) {
        let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
            return; // the registry is down: the pull sees its connection closed
        };
        let (mut c, mut u) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
        let ranges = self.ranges.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            while let Ok(n) = c.read(&mut buf) {
                if n == 0 || u.write_all(&buf[..n]).is_err() {
                    break;
                }
                for line in String::from_utf8_lossy(&buf[..n]).lines() {
                    if let Some((name, value)) = line.split_once(':') {
                        if name.eq_ignore_ascii_case("range") {
                            ranges.lock().unwrap().push(value.trim().to_string());
                        }
                    }
                }
            }
            let _ = u.shutdown(Shutdown::Write);
        });
        let mut buf = vec![0u8; 64 * 1024];
        let mut carried: u64 = 0;
        loop {
            let n = match upstream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
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

fn pull_through(proxy: &CuttingProxy, kek: &Path, dest: &Path) -> Cmd {
    Cmd::modelcrypt()
        .args(["--plain-http", "pull", &proxy.reference("models/big:v1")])
        .arg("--kek")
        .arg(kek)
        .arg("--to")
        .arg(dest)
}

/// Nothing but what the test made sits beside the destination.
fn assert_delivered(out: &RunOutput, model: &Path, dest: &Path) {
    assert_success(out);
    assert_eq!(model_files(dest), model_files(model));
    assert_eq!(dir_names(dest.parent().unwrap()), vec!["m".to_string()]);
}

/// Bytes the pull may legitimately need besides the big blob: headers, manifest, config,
/// the small layer, one response head per request.
const SLACK: u64 = 256 * 1024;

#[test]
fn a_transfer_cut_three_times_resumes_from_the_last_byte_and_verifies() {
    if !require_peer("docker-registry") {
        return;
    }
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let (model, kek) = encrypted_model(&reg, tmp.path());
    let proxy = CuttingProxy::start(reg.port(), Cut::Times(3));
    let dest = tmp.path().join("out/m");
    let out = pull_through(&proxy, &kek, &dest).run();
    assert_delivered(&out, &model, &dest);

    assert_eq!(proxy.cuts.load(Ordering::SeqCst), 3, "{out}");
    let served = proxy.served.load(Ordering::SeqCst);
    // Starting the blob over after any cut would cost at least CUT_AFTER more bytes.
    assert!(
        served < WEIGHTS_LEN as u64 + SLACK,
        "the proxy served {served} bytes for a {WEIGHTS_LEN}-byte blob: refetched"
    );
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

/// What a pull through a [`Cut::OnceAfterHandshake`] proxy left: its output, the proxy, the
/// model it pulled and where it pulled to (under `tmp`).
struct CutOnce {
    out: RunOutput,
    proxy: CuttingProxy,
    model: PathBuf,
    dest: PathBuf,
    tmp: tempfile::TempDir,
}

/// Pulls the encrypted model through a proxy that stops 7 MiB into the big layer, does
/// `to_registry` to the registry meanwhile, then cuts the connection.
fn pull_cut_once(to_registry: impl FnOnce(&mut TestRegistry)) -> CutOnce {
    let mut reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let (model, kek) = encrypted_model(&reg, tmp.path());
    let mut proxy = CuttingProxy::start(reg.port(), Cut::OnceAfterHandshake);
    let dest = tmp.path().join("out/m");
    let cmd = pull_through(&proxy, &kek, &dest);
    let pull = std::thread::spawn(move || cmd.run());

    let (events, go) = proxy.events.take().unwrap();
    events
        .recv_timeout(Duration::from_secs(120))
        .expect("the pull never reached the middle of the layer");
    to_registry(&mut reg);
    go.send(()).unwrap();
    CutOnce {
        out: pull.join().unwrap(),
        proxy,
        model,
        dest,
        tmp,
    }
}

#[test]
fn the_registry_killed_mid_layer_and_restarted_does_not_fail_the_pull() {
    if !require_peer("docker-registry") {
        return;
    }
    let CutOnce {
        out,
        proxy,
        model,
        dest,
        tmp: _tmp,
    } = pull_cut_once(TestRegistry::restart);
    assert_delivered(&out, &model, &dest);
    assert_eq!(proxy.cuts.load(Ordering::SeqCst), 1);
    let served = proxy.served.load(Ordering::SeqCst);
    assert!(
        served < WEIGHTS_LEN as u64 + SLACK,
        "served {served} bytes: refetched"
    );
    assert_eq!(proxy.resumed_offsets().len(), 1, "{:?}", proxy.ranges);
}

#[test]
fn a_registry_that_stays_down_fails_the_pull_after_bounded_retries_and_leaves_nothing() {
    if !require_peer("docker-registry") {
        return;
    }
    let CutOnce { out, dest, tmp, .. } = pull_cut_once(TestRegistry::stop);
    assert_failure_contains(&out, &["transfer stopped at", "after 6 attempts"]);
    assert!(!dest.exists(), "nothing at the destination");
    assert_eq!(
        dir_names(&tmp.path().join("out")),
        Vec::<String>::new(),
        "no staging left"
    );
}
