//! Faults around `modelcrypt pull`, with real peers: the destination's file system fills up (a
//! real tmpfs), two pulls race for one destination, the key broker refuses connections, drops
//! them, is slow or never answers, the registry is down or serves a tampered manifest. And key
//! hygiene: no key (the JWE private key, the KEK, a layer key) reaches stderr, even at trace
//! level, or any file a pull writes.
//!
//! Every failure must exit non-zero with an `error:` message naming the problem, leave nothing
//! at the destination and nothing beside it (no `.NAME.modelcrypt-staging`, no temporary file),
//! as in hostile.rs. Synchronisation is by observable state only: a FIFO blob holds a pull in
//! the middle of a layer, log lines announce what a process is doing, and polls have deadlines.
//!
//! Does not cover: hostile artifacts (hostile.rs), resuming an interrupted download (resume.rs).

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::Value;

use crate::common::kbs::{Endpoint, Fault, KbsConfig, TestKbs};
use crate::common::{
    assert_failure_contains, assert_snapshots_equal, assert_success, dir_names, layout_manifest,
    make_model_dir, media, model_file_contents, model_files, modelcrypt, modelcrypt_bin,
    pseudo_random_bytes, require_peer, sha256_hex, tree_snapshot, Cmd, OciLayoutBuilder, RunOutput,
    TestRegistry, COMPLETE_MARKER, REQUIRE_PEERS_ENV,
};

const KID: &str = "kbs:///default/key/1";
const FILEPATH: &str = "org.cncf.model.filepath";
const PROVIDER_ANNOTATION: &str = "org.opencontainers.image.enc.keys.provider.attestation-agent";

/// How long a test waits for an observable state before it gives up (2 shared cores, debug
/// builds).
const DEADLINE: Duration = Duration::from_secs(60);

// ------------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------------

fn run_ok(args: &[&str]) -> String {
    let out = modelcrypt(args);
    assert_success(&out);
    out.stdout.trim().to_string()
}

/// What a pull must reproduce: path → (size, SHA-256) of every regular, non-hidden file.
/// Modes are left out on purpose: they follow the pull's mode policy, not the artifact.
fn contents(dir: &Path) -> BTreeMap<String, (u64, String)> {
    model_files(dir)
        .into_iter()
        .map(|(path, fact)| (path, (fact.size, fact.sha256.expect("a regular file"))))
        .collect()
}

fn contents_of(files: &[(&str, &[u8])]) -> BTreeMap<String, (u64, String)> {
    files
        .iter()
        .map(|(p, b)| (p.to_string(), (b.len() as u64, sha256_hex(b))))
        .collect()
}

/// The invariant of every failed pull: nothing at `dest`, and `dest`'s parent holds exactly
/// what it held before (no staging directory, no temporary file).
#[track_caller]
fn assert_nothing_left(dest: &Path, parent_before: &[String], out: &RunOutput) {
    assert!(
        fs::symlink_metadata(dest).is_err(),
        "`{}` must not exist after a failed pull\n{out}",
        dest.display()
    );
    let parent = dest.parent().expect("dest has a parent");
    assert_eq!(
        dir_names(parent),
        parent_before,
        "nothing may be left beside the destination\n{out}"
    );
}

fn keygen_kek(dir: &Path) -> (PathBuf, Vec<u8>) {
    fs::create_dir_all(dir).unwrap();
    let path = dir.join("kek.bin");
    run_ok(&["keygen", "--type", "kek", "--out", path.to_str().unwrap()]);
    let bytes = fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 32, "keygen writes a raw 32-byte KEK");
    (path, bytes)
}

/// A small plain layout (config + 256 KiB of weights, raw layers) encrypted for [`KID`] under a
/// fresh KEK into `oci:<root>/enc:v1`. Returns the encrypted reference, the KEK and the files
/// a pull must produce.
struct KekArtifact {
    reference: String,
    kek: Vec<u8>,
    files: BTreeMap<String, (u64, String)>,
}

fn kek_artifact(root: &Path) -> KekArtifact {
    let weights = pseudo_random_bytes(b"faults kek artifact", 256 * 1024);
    let config = br#"{"model_type":"qwen3"}"#;
    let mut plain = OciLayoutBuilder::new(root.join("plain"));
    plain.add_raw_file(media::WEIGHT_CONFIG_RAW, "config.json", 0o644, config);
    plain.add_raw_file(media::WEIGHT_RAW, "model.safetensors", 0o644, &weights);
    plain.write("v1");
    let (kek_path, kek) = keygen_kek(&root.join("keys"));
    let reference = format!("oci:{}:v1", root.join("enc").display());
    run_ok(&[
        "encrypt",
        &plain.reference("v1"),
        &reference,
        "--recipient",
        KID,
        "--kek",
        kek_path.to_str().unwrap(),
    ]);
    fs::remove_file(&kek_path).unwrap();
    KekArtifact {
        reference,
        kek,
        files: contents_of(&[("config.json", config), ("model.safetensors", &weights)]),
    }
}

/// Runs `pull REFERENCE --to DEST --no-progress EXTRA…` and returns the output and how long it
/// took. `timeout` is only a safety net against a hang; tests assert their own bounds.
fn timed_pull(
    reference: &str,
    dest: &Path,
    extra: &[&str],
    timeout: Duration,
) -> (RunOutput, Duration) {
    let started = Instant::now();
    let out = Cmd::modelcrypt()
        .args(["pull", reference, "--to"])
        .arg(dest)
        .arg("--no-progress")
        .args(extra)
        .timeout(timeout)
        .run();
    (out, started.elapsed())
}

/// A port on loopback that nothing listens on: bound, read, closed.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `done` every 20 ms until it is true; panics with `what` after [`DEADLINE`].
#[track_caller]
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

// ------------------------------------------------------------------------------------------------
// A real tmpfs
// ------------------------------------------------------------------------------------------------

/// A tmpfs of a fixed size mounted on a fresh temporary directory, unmounted on drop. Needs
/// root (CAP_SYS_ADMIN); where mounting is impossible the test is skipped, unless
/// `MODELCRYPT_REQUIRE_PEERS=1` turns the skip into a failure, as for a missing peer.
pub(crate) struct Tmpfs {
    path: PathBuf,
    /// The mount point, when it is ours (see [`Tmpfs::mount`]).
    _dir: Option<tempfile::TempDir>,
}

impl Tmpfs {
    /// `size` as mount(8) takes it, e.g. `2m`. `None`: skipped (the reason is printed).
    #[track_caller]
    pub(crate) fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::Builder::new()
            .prefix("modelcrypt-tmpfs-")
            .tempdir()
            .expect("create a mount point");
        let mut tmpfs = Tmpfs::mount_on(dir.path(), size)?;
        tmpfs._dir = Some(dir);
        Some(tmpfs)
    }

    /// A tmpfs over the existing directory `path` (hiding what it holds until unmounted).
    #[track_caller]
    pub(crate) fn mount_on(path: &Path, size: &str) -> Option<Tmpfs> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755")])
            .arg("modelcrypt-test")
            .arg(path)
            .output();
        let reason = match out {
            Ok(o) if o.status.success() => {
                return Some(Tmpfs {
                    path: path.to_path_buf(),
                    _dir: None,
                })
            }
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
            Err(e) => format!("cannot run mount: {e}"),
        };
        if std::env::var(REQUIRE_PEERS_ENV).as_deref() == Ok("1") {
            panic!("cannot mount a tmpfs ({reason}), and {REQUIRE_PEERS_ENV}=1 forbids skipping");
        }
        println!("SKIPPED: cannot mount a tmpfs: {reason}");
        None
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes in use on the file system (what `df` shows as used).
    pub(crate) fn used_bytes(&self) -> u64 {
        let s = nix::sys::statvfs::statvfs(self.path()).expect("statvfs on the tmpfs");
        (s.blocks() - s.blocks_free()) * s.fragment_size()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Busy (a test failed with a process still inside): detach it, so the temporary
            // directory can go and nothing stays mounted.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

// ------------------------------------------------------------------------------------------------
// The destination's file system is full
// ------------------------------------------------------------------------------------------------

/// 6 MiB of weights as one raw layer in `oci:<dir>:v1` (one layer, so the layer that meets the
/// full device, and the message, are deterministic). Returns the layout and the weights.
fn six_mib_layout(dir: &Path) -> (PathBuf, Vec<u8>) {
    let weights = pseudo_random_bytes(b"bigger than the tmpfs", 6 * 1024 * 1024);
    let mut layout = OciLayoutBuilder::new(dir);
    layout.add_raw_file(media::WEIGHT_CONFIG_RAW, "config.json", 0o644, b"{}");
    layout.add_raw_file(media::WEIGHT_RAW, "model.safetensors", 0o644, &weights);
    layout.write("v1");
    (dir.to_path_buf(), weights)
}

#[test]
fn a_model_larger_than_its_tmpfs_is_refused_naming_the_space_it_needs() {
    let Some(fs) = Tmpfs::mount("2m") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (layout, weights) = six_mib_layout(&tmp.path().join("layout"));
    let needed = (weights.len() + 2) as u64;
    let parent = fs.path().join("models");
    fs::create_dir(&parent).unwrap();
    let dest = parent.join("tiny");
    let before = tree_snapshot(fs.path(), false);
    let used_before = fs.used_bytes();
    let reference = format!("oci:{}:v1", layout.display());
    let (out, _) = timed_pull(&reference, &dest, &[], Duration::from_secs(120));
    println!("{out}");
    assert_failure_contains(&out, &[]);
    let n = needed as f64;
    let spellings = [
        needed.to_string(),
        format!("{:.1} MB", n / 1e6),
        format!("{:.1} MiB", n / 1048576.0),
    ];
    assert!(
        spellings.iter().any(|s| out.stderr.contains(s.as_str())),
        "the error must say how much space the pull needs (one of {spellings:?})\n{out}"
    );
    assert_nothing_left(&dest, &[], &out);
    assert_snapshots_equal(&before, &tree_snapshot(fs.path(), false), "the tmpfs");
    assert_eq!(fs.used_bytes(), used_before, "every byte was freed\n{out}");
}

/// The model fits when the pull starts; then something else fills the file system while the
/// weights layer is in flight (held by a FIFO until the tmpfs is full).
#[test]
fn a_tmpfs_that_fills_up_during_the_pull_fails_as_device_full_and_frees_every_byte() {
    let Some(fs) = Tmpfs::mount("8m") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (layout, _) = six_mib_layout(&tmp.path().join("layout"));
    let (fifo, bytes) = fifo_layer(&layout, "model.safetensors");
    let parent = fs.path().join("models");
    fs::create_dir(&parent).unwrap();
    let dest = parent.join("tiny");
    let before = tree_snapshot(fs.path(), false);
    let used_before = fs.used_bytes();

    let pull = Background::spawn(&format!("oci:{}:v1", layout.display()), &dest, &[]);
    let staging = parent.join(".tiny.modelcrypt-staging");
    // Written, not just created: its 2 bytes must not be what meets the full device.
    wait_until("the pull to stage config.json", || {
        fs::metadata(staging.join("config.json")).is_ok_and(|m| m.len() == 2)
    });
    // Fill the tmpfs to the last byte.
    let filler = fs.path().join("filler");
    let mut f = fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let full = loop {
        if let Err(e) = f.write_all(&chunk) {
            break e;
        }
    };
    assert_eq!(full.raw_os_error(), Some(nix::libc::ENOSPC), "{full}");
    drop(f);
    let writer = feed(fifo, bytes);
    let (ok, stderr) = pull.finish();
    writer.join().unwrap();
    println!("{stderr}");
    assert!(!ok, "the pull must fail\n{stderr}");
    for fragment in [
        "error:",
        "model.safetensors",
        "No space left on device",
        "file system is full",
    ] {
        assert!(stderr.contains(fragment), "expected {fragment:?}\n{stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(fs::symlink_metadata(&dest).is_err(), "{stderr}");
    assert_eq!(dir_names(&parent), Vec::<String>::new(), "{stderr}");
    fs::remove_file(&filler).unwrap();
    assert_snapshots_equal(&before, &tree_snapshot(fs.path(), false), "the tmpfs");
    assert_eq!(
        fs.used_bytes(),
        used_before,
        "every byte was freed\n{stderr}"
    );
}

// ------------------------------------------------------------------------------------------------
// Two pulls into one destination
// ------------------------------------------------------------------------------------------------

/// A `modelcrypt pull` running in the background, its stderr forwarded line by line. Killed on
/// drop if still running.
struct Background {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Background {
    fn spawn(reference: &str, dest: &Path, extra: &[&str]) -> Background {
        let mut command = Command::new(modelcrypt_bin());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("MODELCRYPT_") {
                command.env_remove(&key);
            }
        }
        let mut child = command
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .env("MODELCRYPT_LOG_FORMAT", "text")
            .args(["pull", reference, "--to"])
            .arg(dest)
            .arg("--no-progress")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn modelcrypt");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Background {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (up to [`DEADLINE`]) for a stderr line containing `needle`.
    #[track_caller]
    fn wait_for_line(&mut self, needle: &str) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => panic!(
                    "no stderr line containing {needle:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the exit (polling, up to [`DEADLINE`]) and returns success and all of stderr.
    #[track_caller]
    fn finish(mut self) -> (bool, String) {
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the pull did not finish; stderr so far:\n{}",
                self.seen.join("\n")
            );
            thread::sleep(Duration::from_millis(20));
        };
        // The pipe closes with the process: collect the rest.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            self.seen.push(line);
        }
        (status.success(), self.seen.join("\n"))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Replaces the blob of the layer for `filepath` in a layout by a FIFO, so a pull blocks in the
/// middle of that layer, holding the destination's lock, until the test writes the bytes.
/// Returns the FIFO's path and the real bytes.
fn fifo_layer(layout: &Path, filepath: &str) -> (PathBuf, Vec<u8>) {
    let (_, manifest) = layout_manifest(layout);
    let digest = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["annotations"][FILEPATH] == filepath)
        .and_then(|l| l["digest"].as_str())
        .unwrap_or_else(|| panic!("no layer for `{filepath}`"))
        .to_string();
    let blob = layout.join("blobs/sha256").join(&digest[7..]);
    let bytes = fs::read(&blob).unwrap();
    fs::remove_file(&blob).unwrap();
    nix::unistd::mkfifo(&blob, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    (blob, bytes)
}

/// Feeds a FIFO blob its bytes from a thread (the blocked pull is its reader). A reader that
/// fails and stops reading ends the feed (EPIPE), which is not an error here.
fn feed(fifo: PathBuf, bytes: Vec<u8>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut f = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        let _ = f.write_all(&bytes);
    })
}

/// Two layouts of the same model name: `a` as [`make_model_dir`] writes it (its weights blob a
/// FIFO), and `b` with other weights, one file fewer and one more, so a mix of the two shows.
struct Race {
    _tmp: tempfile::TempDir,
    a_ref: String,
    a_files: BTreeMap<String, (u64, String)>,
    b_ref: String,
    b_files: BTreeMap<String, (u64, String)>,
    b_digest: String,
    fifo: PathBuf,
    fifo_bytes: Vec<u8>,
    parent: PathBuf,
    dest: PathBuf,
}

fn race() -> Race {
    let tmp = tempfile::tempdir().unwrap();
    let a_model = make_model_dir(&tmp.path().join("a"));
    let b_model = make_model_dir(&tmp.path().join("b"));
    let mut weights = model_file_contents("model.safetensors");
    let last = weights.len() - 1;
    weights[last] ^= 0xff;
    fs::write(b_model.join("model.safetensors"), &weights).unwrap();
    fs::remove_file(b_model.join("merges.txt")).unwrap();
    fs::write(b_model.join("only-in-b.txt"), b"version b\n").unwrap();
    let a_ref = format!("oci:{}:v1", tmp.path().join("layout-a").display());
    let b_ref = format!("oci:{}:v1", tmp.path().join("layout-b").display());
    run_ok(&["pack", a_model.to_str().unwrap(), &a_ref]);
    let b_digest = run_ok(&["pack", b_model.to_str().unwrap(), &b_ref]);
    let (fifo, fifo_bytes) = fifo_layer(&tmp.path().join("layout-a"), "model.safetensors");
    let parent = tmp.path().join("out");
    let dest = parent.join("tiny");
    Race {
        a_files: contents(&a_model),
        b_files: contents(&b_model),
        _tmp: tmp,
        a_ref,
        b_ref,
        b_digest,
        fifo,
        fifo_bytes,
        parent,
        dest,
    }
}

/// Starts pull A, which blocks in the weights layer (its FIFO) while holding the lock, then
/// pull B of `b_ref` into the same destination, and waits until B says it waits for A.
fn overlap(r: &Race, b_ref: &str) -> (Background, Background) {
    let staging = r.parent.join(".tiny.modelcrypt-staging");
    let a = Background::spawn(&r.a_ref, &r.dest, &["--concurrency", "4"]);
    // config.json is a small layer that lands while the weights layer waits on its FIFO.
    wait_until("pull A to stage config.json", || {
        staging.join("config.json").exists()
    });
    let mut b = Background::spawn(b_ref, &r.dest, &["--log", "info"]);
    b.wait_for_line("another pull is writing here");
    assert!(b.is_running(), "pull B must wait for the lock, not give up");
    assert!(
        !r.dest.exists(),
        "nothing is published while pull A is blocked"
    );
    (a, b)
}

#[test]
fn two_pulls_of_different_versions_into_one_destination_take_turns_and_never_mix() {
    let r = race();
    let (a, b) = overlap(&r, &r.b_ref);
    let writer = feed(r.fifo.clone(), r.fifo_bytes.clone());
    let (a_ok, a_err) = a.finish();
    // Checked before joining: a pull A that died never opened the FIFO, so the writer waits.
    assert!(a_ok, "pull A must succeed:\n{a_err}");
    writer.join().unwrap();
    let (b_ok, b_err) = b.finish();
    assert!(b_ok, "pull B must succeed after A:\n{b_err}");

    // B came last, so B's model is at the destination: all of it and nothing of A.
    assert_ne!(r.a_files, r.b_files);
    assert_eq!(
        contents(&r.dest),
        r.b_files,
        "the destination is exactly model B"
    );
    let marker: Value =
        serde_json::from_slice(&fs::read(r.dest.join(COMPLETE_MARKER)).unwrap()).unwrap();
    assert_eq!(marker["manifestDigest"], r.b_digest.as_str());
    assert_eq!(
        dir_names(&r.parent),
        vec!["tiny".to_string()],
        "no staging directory and no old tree left"
    );
}

#[test]
fn two_pulls_of_the_same_model_into_one_destination_take_turns_and_the_second_does_nothing() {
    let r = race();
    let (a, b) = overlap(&r, &r.a_ref);
    let writer = feed(r.fifo.clone(), r.fifo_bytes.clone());
    let (a_ok, a_err) = a.finish();
    // Checked before joining: a pull A that died never opened the FIFO, so the writer waits.
    assert!(a_ok, "pull A must succeed:\n{a_err}");
    writer.join().unwrap();
    // B reads nothing: the FIFO has no writer any more, so a B that fetched the weights again
    // would block and fail the deadline.
    let (b_ok, b_err) = b.finish();
    assert!(b_ok, "pull B must succeed after A:\n{b_err}");
    assert!(b_err.contains("nothing to do"), "{b_err}");
    assert_eq!(
        contents(&r.dest),
        r.a_files,
        "the destination is exactly model A"
    );
    assert_eq!(dir_names(&r.parent), vec!["tiny".to_string()]);
}

// ------------------------------------------------------------------------------------------------
// The key broker is down, drops connections, is slow, or never answers
// ------------------------------------------------------------------------------------------------

/// Backoff between the 3 attempts is 1 s then 2 s; anything far beyond means a hang.
const BROKER_FAILURE_BOUND: Duration = Duration::from_secs(20);

#[test]
fn a_broker_that_refuses_connections_fails_after_two_retries_within_a_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let art = kek_artifact(tmp.path());
    let url = format!("http://127.0.0.1:{}", closed_port());
    let dest = tmp.path().join("out/model");
    fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let (out, took) = timed_pull(
        &art.reference,
        &dest,
        &["--kbs", &url, "--tee", "sample"],
        Duration::from_secs(120),
    );
    assert_failure_contains(&out, &["cannot reach the key broker", &url, KID]);
    assert_eq!(out.stderr.matches("retrying").count(), 2, "{out}");
    assert!(took < BROKER_FAILURE_BOUND, "took {took:?}\n{out}");
    assert_nothing_left(&dest, &[], &out);
}

#[test]
fn a_broker_that_drops_every_connection_fails_after_bounded_retries() {
    let tmp = tempfile::tempdir().unwrap();
    let art = kek_artifact(tmp.path());
    let kbs = TestKbs::start(KbsConfig {
        refuse_connections_after: Some(0),
        ..KbsConfig::default().resource("default/key/1", art.kek.clone())
    });
    let dest = tmp.path().join("out/model");
    fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let (out, took) = timed_pull(
        &art.reference,
        &dest,
        &["--kbs", &kbs.url(), "--tee", "sample"],
        Duration::from_secs(120),
    );
    assert_failure_contains(&out, &["cannot reach the key broker", &kbs.url(), KID]);
    assert_eq!(out.stderr.matches("retrying").count(), 2, "{out}");
    assert!(took < BROKER_FAILURE_BOUND, "took {took:?}\n{out}");
    assert_nothing_left(&dest, &[], &out);
}

#[test]
fn a_broker_that_drops_one_connection_is_retried_and_the_pull_succeeds() {
    let tmp = tempfile::tempdir().unwrap();
    let art = kek_artifact(tmp.path());
    let kbs = TestKbs::start(KbsConfig::default().resource("default/key/1", art.kek.clone()));
    kbs.inject(Endpoint::Resource, Fault::Close);
    let dest = tmp.path().join("out/model");
    let (out, _) = timed_pull(
        &art.reference,
        &dest,
        &["--kbs", &kbs.url(), "--tee", "sample"],
        Duration::from_secs(120),
    );
    assert_success(&out);
    assert_eq!(contents(&dest), art.files);
    let summary = kbs.summary();
    let dropped = summary
        .iter()
        .position(|l| l == "GET /kbs/v0/resource/default/key/1 closed")
        .unwrap_or_else(|| panic!("the injected drop happened: {summary:?}"));
    assert!(
        summary[dropped..]
            .iter()
            .any(|l| l == "GET /kbs/v0/resource/default/key/1 200"),
        "the resource was fetched again after the drop: {summary:?}"
    );
}

#[test]
fn a_slow_broker_within_the_timeout_still_delivers() {
    let tmp = tempfile::tempdir().unwrap();
    let art = kek_artifact(tmp.path());
    let kbs = TestKbs::start(KbsConfig::default().resource("default/key/1", art.kek.clone()));
    kbs.inject(Endpoint::Resource, Fault::Delay(Duration::from_secs(2)));
    let dest = tmp.path().join("out/model");
    let (out, took) = timed_pull(
        &art.reference,
        &dest,
        &["--kbs", &kbs.url(), "--tee", "sample"],
        Duration::from_secs(120),
    );
    assert_success(&out);
    assert!(
        took >= Duration::from_secs(2),
        "the delay was served: {took:?}"
    );
    assert_eq!(contents(&dest), art.files);
}

/// A TCP listener that accepts every connection and never reads or answers. Counts the
/// connections; stops (and closes them) on drop.
struct BlackHole {
    port: u16,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl BlackHole {
    fn start() -> BlackHole {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopping) = (accepted.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(stream) = stream {
                    count.fetch_add(1, Ordering::SeqCst);
                    held.push(stream);
                }
            }
        });
        BlackHole {
            port,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_broker_that_never_answers_times_out_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let art = kek_artifact(tmp.path());
    let hole = BlackHole::start();
    let dest = tmp.path().join("out/model");
    fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let (out, took) = timed_pull(
        &art.reference,
        &dest,
        &[
            "--kbs",
            &hole.url(),
            "--tee",
            "sample",
            "--kbs-timeout",
            "5",
        ],
        Duration::from_secs(400),
    );
    assert!(
        hole.accepted.load(Ordering::SeqCst) >= 1,
        "the client connected"
    );
    assert_failure_contains(&out, &["did not answer within 5 s", &hole.url(), KID]);
    assert_nothing_left(&dest, &[], &out);
    // One request timeout plus slack: a broker that took the request and went silent is not
    // worth more full timeouts of an init container's start.
    assert!(took < Duration::from_secs(30), "took {took:?}\n{out}");
}

#[test]
fn an_encrypt_into_a_registry_whose_disk_fills_up_reports_the_registry_answer() {
    if !require_peer("docker-registry") {
        return;
    }
    let reg = TestRegistry::start();
    let Some(_full) = Tmpfs::mount_on(&reg.storage_root(), "2m") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (layout, _) = six_mib_layout(&tmp.path().join("layout"));
    let (kek, _) = keygen_kek(tmp.path());
    let out = modelcrypt([
        "--plain-http",
        "encrypt",
        &format!("oci:{}:v1", layout.display()),
        &reg.reference("models/full:v1"),
        "--recipient",
        "kbs:///default/key/1",
        "--kek",
        kek.to_str().unwrap(),
    ]);
    // The registry's refusal, in its words (which layer meets the full disk first, and so
    // whether the detail is a message or the driver's errno 28, varies), not our side of the
    // broken upload ("the upload stopped").
    assert_failure_contains(
        &out,
        &["500 Internal Server Error", "UNKNOWN: unknown error"],
    );
    assert!(
        out.stderr.contains("no space left on device") || out.stderr.contains(r#"\"Err\":28"#),
        "the registry's detail names the full disk: {out}"
    );
    assert!(!out.stderr.contains("upload stopped"), "{out}");
}

// ------------------------------------------------------------------------------------------------
// The registry is down or serves a tampered manifest
// ------------------------------------------------------------------------------------------------

#[test]
fn a_registry_that_is_down_fails_clearly_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let host = format!("127.0.0.1:{}", closed_port());
    let reference = format!("docker://{host}/models/tiny:v1");
    let dest = tmp.path().join("out/model");
    fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let (out, took) = timed_pull(
        &reference,
        &dest,
        &["--plain-http"],
        Duration::from_secs(120),
    );
    assert_failure_contains(&out, &["cannot fetch the manifest", &host]);
    assert!(took < Duration::from_secs(30), "took {took:?}\n{out}");
    assert_nothing_left(&dest, &[], &out);
}

#[test]
fn a_manifest_tampered_in_registry_storage_is_refused_when_pulled_by_digest() {
    if !require_peer("docker-registry") {
        return;
    }
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let mut layout = OciLayoutBuilder::new(tmp.path().join("layout"));
    layout.add_raw_file(media::WEIGHT_RAW, "x.bin", 0o644, b"weights\n");
    layout.write("v1");
    let digest = reg.push_layout(layout.dir(), "v1", "models/pinned:v1");
    // Same length, still valid JSON, another file name: only the digest can tell.
    let stored = reg.blob_data_path(&digest);
    let original = fs::read(&stored).unwrap();
    let tampered = String::from_utf8(original.clone())
        .unwrap()
        .replace("\"x.bin\"", "\"y.bin\"");
    assert_ne!(tampered.as_bytes(), original.as_slice());
    let served = crate::common::sha256_digest(tampered.as_bytes());
    fs::write(&stored, tampered).unwrap();

    let reference = reg.reference(&format!("models/pinned@{digest}"));
    let dest = tmp.path().join("out/model");
    fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let (out, _) = timed_pull(
        &reference,
        &dest,
        &["--plain-http"],
        Duration::from_secs(120),
    );
    println!("{out}");
    // Both digests: the one asked for and the one the registry's bytes have.
    assert_failure_contains(&out, &[&digest, &served]);
    assert!(
        !out.stderr.contains("pulled"),
        "a tampered manifest must not be pulled\n{out}"
    );
    assert_nothing_left(&dest, &[], &out);
}

// ------------------------------------------------------------------------------------------------
// Key hygiene: no key in logs or files
// ------------------------------------------------------------------------------------------------

/// Every way a secret could be printed: hex (both cases), standard and URL-safe base64 with and
/// without padding, base64 at the two other alignments inside a longer base64 text, the halves
/// of all of these (a partial dump), and Rust's `Debug` of the bytes.
fn spellings(secret: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let halves = [&secret[..secret.len() / 2], &secret[secret.len() / 2..]];
    for part in std::iter::once(secret).chain(halves) {
        let hex: String = part.iter().map(|b| format!("{b:02x}")).collect();
        out.push(hex.to_uppercase());
        out.push(hex);
        for engine in [&STANDARD, &URL_SAFE] {
            out.push(engine.encode(part));
        }
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            for shift in 0..3usize {
                let mut shifted = vec![0u8; shift];
                shifted.extend_from_slice(part);
                let text = engine.encode(&shifted);
                // Drop the characters that mix in the neighbours' bits.
                let skip = [0, 2, 3][shift];
                out.push(text[skip..text.len() - 2].to_string());
            }
        }
    }
    let debug = format!("{:?}", &secret[..secret.len().min(16)]);
    out.push(
        debug
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    );
    out
}

/// A named secret and its spellings.
struct Secret {
    name: String,
    bytes: Vec<u8>,
    spelled: Vec<String>,
}

/// Finds any of many needles (each at least 4 bytes) in one pass: candidates are looked up by
/// their first 4 bytes, so megabytes of logs or model files are scanned quickly.
struct Needles<'a> {
    by_prefix: std::collections::HashMap<[u8; 4], Vec<(&'a str, &'a [u8])>>,
}

impl<'a> Needles<'a> {
    fn new(secrets: &'a [Secret]) -> Needles<'a> {
        let mut by_prefix: std::collections::HashMap<[u8; 4], Vec<(&str, &[u8])>> =
            Default::default();
        for s in secrets {
            let all =
                std::iter::once(s.bytes.as_slice()).chain(s.spelled.iter().map(|x| x.as_bytes()));
            for needle in all {
                assert!(needle.len() >= 4, "needle too short to be meaningful");
                let prefix: [u8; 4] = needle[..4].try_into().unwrap();
                by_prefix.entry(prefix).or_default().push((&s.name, needle));
            }
        }
        Needles { by_prefix }
    }

    /// The first (secret name, needle) found in `haystack`.
    fn find(&self, haystack: &[u8]) -> Option<(&'a str, &'a [u8])> {
        haystack.windows(4).enumerate().find_map(|(i, w)| {
            let prefix: [u8; 4] = w.try_into().unwrap();
            self.by_prefix
                .get(&prefix)?
                .iter()
                .copied()
                .find(|(_, n)| haystack[i..].starts_with(n))
        })
    }
}

impl Secret {
    fn new(name: impl Into<String>, bytes: &[u8]) -> Secret {
        assert!(bytes.len() >= 16, "secrets are at least 16 bytes");
        Secret {
            name: name.into(),
            bytes: bytes.to_vec(),
            spelled: spellings(bytes),
        }
    }

    /// Whether any spelling of this secret (raw bytes included) is in `haystack`.
    fn found_in(&self, haystack: &[u8]) -> bool {
        Needles::new(std::slice::from_ref(self))
            .find(haystack)
            .is_some()
    }
}

#[track_caller]
fn assert_no_secret(needles: &Needles, haystack: &[u8], where_: &str) {
    if let Some((name, needle)) = needles.find(haystack) {
        let text = String::from_utf8_lossy(haystack);
        let shown: String = text.chars().take(20_000).collect();
        panic!(
            "{name} appears in {where_} as {:?}\n{shown}",
            String::from_utf8_lossy(needle)
        );
    }
}

/// The 32-byte private scalar of a P-256 PKCS#8 key, and the whole DER.
fn ec_private_key_secrets(pem_path: &Path) -> Vec<Secret> {
    let pem = fs::read_to_string(pem_path).unwrap();
    assert!(pem.contains("-----BEGIN PRIVATE KEY-----"), "{pem}");
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = STANDARD.decode(body).unwrap();
    // ECPrivateKey ::= SEQUENCE { version 1, privateKey OCTET STRING (32 bytes), … }
    let at = der
        .windows(5)
        .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
        .expect("an ECPrivateKey inside the PKCS#8");
    let scalar = &der[at + 5..at + 5 + 32];
    let mut secrets = vec![
        Secret::new("the EC private scalar", scalar),
        Secret::new("the private key's DER", &der),
    ];
    for (i, line) in pem.lines().enumerate().filter(|(_, l)| l.len() >= 32) {
        if !line.starts_with("-----") {
            secrets.push(Secret {
                name: format!("line {i} of the private key's PEM"),
                bytes: line.as_bytes().to_vec(),
                spelled: vec![line.to_string()],
            });
        }
    }
    secrets
}

/// The layer keys (and nonces) of every layer of an encrypted manifest, recovered independently
/// of the pull: each layer's AnnotationPacket unwrapped with the KEK through the library, then
/// the private options' `symkey` and `cipheroptions.nonce`.
fn layer_key_secrets(manifest: &Value, kek: &[u8]) -> Vec<Secret> {
    use modelcrypt::ocicrypt::provider::{AnnotationPacket, Kek};
    let kek = Kek::from_bytes(kek).expect("a 32-byte KEK");
    let mut secrets = Vec::new();
    for (i, layer) in manifest["layers"].as_array().unwrap().iter().enumerate() {
        let value = layer["annotations"][PROVIDER_ANNOTATION]
            .as_str()
            .unwrap_or_else(|| panic!("layer {i} has a KEK recipient"));
        let packet = AnnotationPacket::parse(&STANDARD.decode(value).unwrap()).unwrap();
        let opts: Value = serde_json::from_slice(&packet.unwrap(&kek).unwrap()).unwrap();
        let key = STANDARD.decode(opts["symkey"].as_str().unwrap()).unwrap();
        assert_eq!(key.len(), 32, "an AES-256 layer key");
        secrets.push(Secret::new(format!("the key of layer {i}"), &key));
        let nonce = STANDARD
            .decode(opts["cipheroptions"]["nonce"].as_str().unwrap())
            .unwrap();
        secrets.push(Secret::new(format!("the nonce of layer {i}"), &nonce));
    }
    assert!(!secrets.is_empty());
    secrets
}

/// The fixture model in a registry, encrypted for an EC JWE recipient and for [`KID`] under a
/// KEK; the keys live in `<tmp>/keys`, outside everything a pull may write.
struct KeyWorld {
    reg: TestRegistry,
    tmp: tempfile::TempDir,
    model: BTreeMap<String, (u64, String)>,
    reference: String,
    private_key: PathBuf,
    kek_path: PathBuf,
    kek: Vec<u8>,
    secrets: Vec<Secret>,
}

fn key_world() -> Option<KeyWorld> {
    if !require_peer("docker-registry") {
        return None;
    }
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let model = make_model_dir(&tmp.path().join("src"));
    let keys = tmp.path().join("keys");
    let (kek_path, kek) = keygen_kek(&keys);
    let private_key = keys.join("ec.pem");
    run_ok(&[
        "keygen",
        "--type",
        "ec",
        "--out",
        private_key.to_str().unwrap(),
    ]);
    let plain = format!("oci:{}:v1", tmp.path().join("plain").display());
    run_ok(&["pack", model.to_str().unwrap(), &plain]);
    let reference = reg.reference("models/secret:v1");
    run_ok(&[
        "--plain-http",
        "encrypt",
        &plain,
        &reference,
        "--recipient",
        &format!("jwe:{}.pub", private_key.display()),
        "--recipient",
        KID,
        "--kek",
        kek_path.to_str().unwrap(),
    ]);
    let inspect = modelcrypt(["--plain-http", "inspect", &reference, "--json"]);
    assert_success(&inspect);
    let manifest = serde_json::from_str::<Value>(&inspect.stdout).unwrap()["manifest"].clone();
    let mut secrets = layer_key_secrets(&manifest, &kek);
    secrets.push(Secret::new("the KEK", &kek));
    secrets.extend(ec_private_key_secrets(&private_key));
    Some(KeyWorld {
        reg,
        tmp,
        model: contents(&model),
        reference,
        private_key,
        kek_path,
        kek,
        secrets,
    })
}

/// A pull at trace level; `extra` picks the keys and the log format.
fn trace_pull(w: &KeyWorld, name: &str, extra: &[&str]) -> RunOutput {
    let dest = w.tmp.path().join("out").join(name);
    let out = Cmd::modelcrypt()
        .env("MODELCRYPT_LOG", "trace")
        .env("RUST_LOG", "trace")
        .args(["--plain-http", "pull", &w.reference, "--to"])
        .arg(&dest)
        .arg("--no-progress")
        .args(extra)
        .run();
    assert_success(&out);
    assert_eq!(contents(&dest), w.model, "{name}: the keys were used");
    out
}

#[track_caller]
fn assert_trace_logged(out: &RunOutput) {
    // Not vacuous: the logs really are at debug/trace level.
    let verbose = out
        .stderr
        .lines()
        .filter(|l| l.contains("TRACE") || l.contains("DEBUG"))
        .count();
    assert!(verbose >= 3, "expected trace-level logs\n{out}");
}

#[test]
fn the_secret_spellings_catch_a_key_in_any_of_its_encodings() {
    // Control for the checks below: every encoding of a key, inside other text, is caught.
    let key = pseudo_random_bytes(b"spelled key", 32);
    let s = Secret::new("key", &key);
    let mut prefix = b"xx".to_vec();
    prefix.extend_from_slice(&key);
    for text in [
        format!(
            "k={}",
            key.iter().map(|b| format!("{b:02X}")).collect::<String>()
        ),
        format!("k=\"{}\"", STANDARD.encode(&key)),
        format!("k={}.", URL_SAFE_NO_PAD.encode(&key)),
        // The key inside a longer base64 text, at an offset that is not a multiple of 3.
        STANDARD.encode(&prefix),
        format!("{:?}", key.as_slice()),
    ] {
        assert!(s.found_in(text.as_bytes()), "missed in {text}");
    }
    assert!(!s.found_in(b"nothing secret here"));
}

#[test]
fn trace_logs_of_encrypted_pulls_never_show_a_key() {
    let Some(w) = key_world() else { return };
    let needles = Needles::new(&w.secrets);
    let key = w.private_key.to_str().unwrap();
    let kek = w.kek_path.to_str().unwrap();
    for (name, extra) in [
        ("jwe-text", vec!["--decryption-key", key]),
        ("jwe-json", vec!["--decryption-key", key, "--json-logs"]),
        ("kek-text", vec!["--kek", kek]),
        ("kek-json", vec!["--kek", kek, "--json-logs"]),
    ] {
        let out = trace_pull(&w, name, &extra);
        assert_trace_logged(&out);
        assert_no_secret(&needles, out.stderr.as_bytes(), &format!("{name}: stderr"));
        assert_no_secret(&needles, &out.stdout_bytes, &format!("{name}: stdout"));
    }
    drop(w.reg);
}

#[test]
fn trace_logs_of_a_broker_backed_pull_never_show_the_kek_or_a_layer_key() {
    let Some(w) = key_world() else { return };
    let needles = Needles::new(&w.secrets);
    let kbs = TestKbs::start(KbsConfig::default().resource("default/key/1", w.kek.clone()));
    let url = kbs.url();
    let broker = ["--kbs", url.as_str(), "--tee", "sample"];
    for (name, json) in [("kbs-text", None), ("kbs-json", Some("--json-logs"))] {
        let extra: Vec<&str> = broker.iter().copied().chain(json).collect();
        let out = trace_pull(&w, name, &extra);
        assert_trace_logged(&out);
        assert!(
            kbs.summary()
                .iter()
                .any(|l| l == "GET /kbs/v0/resource/default/key/1 200"),
            "the KEK came from the broker: {:?}",
            kbs.summary()
        );
        assert_no_secret(&needles, out.stderr.as_bytes(), &format!("{name}: stderr"));
    }
}

/// Every regular file under `root`, with its bytes.
fn files_under(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for (rel, fact) in tree_snapshot(root, false) {
        if fact.kind == crate::common::FileKind::File {
            let path = root.join(&rel);
            out.push((path.clone(), fs::read(&path).unwrap()));
        }
    }
    out
}

#[test]
fn no_file_a_pull_writes_holds_a_key() {
    let Some(w) = key_world() else { return };
    let kbs = TestKbs::start(KbsConfig::default().resource("default/key/1", w.kek.clone()));
    let root = w.tmp.path();
    let (tmpdir, home, run, cwd) = (
        root.join("tmpdir"),
        root.join("home"),
        root.join("run"),
        root.join("cwd"),
    );
    for d in [&tmpdir, &home, &run, &cwd] {
        fs::create_dir_all(d).unwrap();
    }
    let keys_before = tree_snapshot(&root.join("keys"), false);
    let key = w.private_key.to_str().unwrap();
    let kek = w.kek_path.to_str().unwrap();
    let url = kbs.url();
    for (name, extra) in [
        ("jwe", vec!["--decryption-key", key]),
        ("kek", vec!["--kek", kek]),
        ("kbs", vec!["--kbs", &url, "--tee", "sample"]),
    ] {
        let dest = root.join("out").join(name);
        let out = Cmd::modelcrypt()
            .env("TMPDIR", &tmpdir)
            .env("HOME", &home)
            .env("XDG_RUNTIME_DIR", &run)
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("MODELCRYPT_LOG", "debug")
            .current_dir(&cwd)
            .args(["--plain-http", "pull", &w.reference, "--to"])
            .arg(&dest)
            .arg("--no-progress")
            .args(&extra)
            .run();
        assert_success(&out);
        assert_eq!(contents(&dest), w.model, "{name}");
    }
    assert_snapshots_equal(
        &keys_before,
        &tree_snapshot(&root.join("keys"), false),
        "the key directory",
    );
    // Control: the scan finds a key where one is.
    let kek_secret = w.secrets.iter().find(|s| s.name == "the KEK").unwrap();
    assert!(kek_secret.found_in(&fs::read(&w.kek_path).unwrap()));

    let needles = Needles::new(&w.secrets);
    let mut scanned = 0;
    for dir in [&tmpdir, &home, &run, &cwd, &root.join("out")] {
        for (path, bytes) in files_under(dir) {
            assert_no_secret(&needles, &bytes, &path.display().to_string());
            scanned += 1;
        }
    }
    // Three pulls of the fixture's files, each with its marker.
    assert!(
        scanned >= 3 * (w.model.len() + 1),
        "scanned {scanned} files"
    );
}
