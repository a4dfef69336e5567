//! Shared integration-test harness for the `it` test binary.
//!
//! Owns: running the `modelcrypt` binary ([`Cmd`], [`modelcrypt`]), real peers ([`TestRegistry`]
//! on top of Debian's `docker-registry`, [`require_peer`] for skopeo and friends), fixtures
//! ([`make_model_dir`], [`OciLayoutBuilder`], [`TarBuilder`]) and filesystem observation
//! ([`tree_snapshot`]). Everything here is written independently of `src/` so that a bug in
//! modelcrypt's own writers cannot hide a bug in its readers.
//!
//! Does not own: assertions about modelcrypt's behaviour (those live in the test modules) or
//! `TestKbs` (added next to the KBS tests).
//!
//! Peers: a test that needs a real peer calls `require_peer("skopeo")` and returns early when it
//! is missing. CI installs every peer and sets `MODELCRYPT_REQUIRE_PEERS=1`, which turns such a
//! skip into a failure (style.md, "What to imitate" 13).
#![allow(dead_code)]
#![forbid(unsafe_code)]

#[path = "../kbs/mod.rs"]
pub mod kbs;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use aws_lc_rs::digest::{digest, SHA256};
use serde_json::{json, Value};

// ------------------------------------------------------------------------------------------------
// Hashing
// ------------------------------------------------------------------------------------------------

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(digest(&SHA256, bytes).as_ref())
}

/// OCI digest string `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// The hex part of a `sha256:<hex>` digest. Panics on any other algorithm.
pub fn digest_hex(digest: &str) -> &str {
    digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("test digests are sha256, got `{digest}`"))
}

/// `len` deterministic pseudo-random bytes: SHA-256 in counter mode over `seed`.
///
/// Fast enough for multi-MiB fixtures and stable across runs and platforms.
pub fn pseudo_random_bytes(seed: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut block = Vec::with_capacity(seed.len() + 8);
    let mut counter: u64 = 0;
    while out.len() < len {
        block.clear();
        block.extend_from_slice(seed);
        block.extend_from_slice(&counter.to_le_bytes());
        out.extend_from_slice(digest(&SHA256, &block).as_ref());
        counter += 1;
    }
    out.truncate(len);
    out
}

// ------------------------------------------------------------------------------------------------
// Peers
// ------------------------------------------------------------------------------------------------

/// Set to `1` (CI does) to turn "peer not installed" skips into failures.
pub const REQUIRE_PEERS_ENV: &str = "MODELCRYPT_REQUIRE_PEERS";

/// Returns true when the peer program `name` is installed.
///
/// When it is missing, prints `SKIPPED: <name> not installed` and returns false so the test can
/// return early, unless `MODELCRYPT_REQUIRE_PEERS=1`, in which case it panics.
#[track_caller]
pub fn require_peer(name: &str) -> bool {
    if find_program(name).is_some() {
        return true;
    }
    if std::env::var(REQUIRE_PEERS_ENV).as_deref() == Ok("1") {
        panic!("{name} not installed, and {REQUIRE_PEERS_ENV}=1 forbids skipping");
    }
    println!("SKIPPED: {name} not installed");
    false
}

/// Looks `name` up in `PATH`, then in `/usr/bin` and `/usr/sbin` (Debian installs
/// `docker-registry` in `/usr/bin`, which a minimal CI `PATH` may still lack).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| {
            fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

// ------------------------------------------------------------------------------------------------
// Running programs
// ------------------------------------------------------------------------------------------------

/// Path of the `modelcrypt` binary under test.
pub fn modelcrypt_bin() -> &'static str {
    env!("CARGO_BIN_EXE_modelcrypt")
}

/// How long any spawned program may run before the harness kills it and fails the test.
/// Generous because CI machines have 2 cores and debug builds.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs modelcrypt with `args` (see [`Cmd::modelcrypt`] for the environment) and waits for it.
pub fn modelcrypt<I, S>(args: I) -> RunOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Cmd::modelcrypt().args(args).run()
}

/// Runs skopeo with `args`. Callers check `require_peer("skopeo")` first.
pub fn skopeo<I, S>(args: I) -> RunOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Cmd::new("skopeo").args(args).run()
}

/// A command line to run without a TTY: stdin is `/dev/null`, stdout and stderr are captured,
/// `NO_COLOR=1` is set, and the run is killed after [`DEFAULT_TIMEOUT`].
pub struct Cmd {
    command: Command,
    shown: String,
    timeout: Duration,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Cmd {
        let program = program.as_ref();
        let mut command = Command::new(program);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1");
        Cmd {
            command,
            shown: program.to_string_lossy().into_owned(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The binary under test, with every `MODELCRYPT_*` variable and `RUST_LOG` of the developer's
    /// shell removed so that only what a test sets explicitly can influence the run, and text
    /// logs.
    pub fn modelcrypt() -> Cmd {
        let mut cmd = Cmd::new(modelcrypt_bin());
        cmd.shown = "modelcrypt".to_owned();
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("MODELCRYPT_") {
                cmd.command.env_remove(&key);
            }
        }
        cmd.command.env_remove("RUST_LOG");
        // Output is piped, so the default would be JSON logs; tests read the human form unless
        // they ask for JSON.
        cmd.command.env("MODELCRYPT_LOG_FORMAT", "text");
        // Most tests check that a pull reproduces the artifact's files, modes included; the
        // default (readable by all) has its own test.
        cmd.command.env("MODELCRYPT_PRESERVE_MODES", "1");
        cmd
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Cmd {
        self.shown.push(' ');
        self.shown.push_str(&arg.as_ref().to_string_lossy());
        self.command.arg(arg);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for arg in args {
            self = self.arg(arg);
        }
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Cmd {
        self.command.env(key, value);
        self
    }

    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Cmd {
        self.command.env_remove(key);
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Cmd {
        self.command.current_dir(dir);
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Cmd {
        self.timeout = timeout;
        self
    }

    /// Runs to completion. Panics if the program cannot be spawned or outlives the timeout.
    #[track_caller]
    pub fn run(self) -> RunOutput {
        match self.try_run() {
            Ok(out) => out,
            Err(message) => panic!("{message}"),
        }
    }

    /// Like [`Cmd::run`], but a timeout (after killing the program) or a spawn failure is an
    /// `Err` with a printable explanation.
    pub fn try_run(mut self) -> Result<RunOutput, String> {
        let shown = self.shown;
        let mut child = self
            .command
            .spawn()
            .map_err(|e| format!("cannot spawn `{shown}`: {e}"))?;
        // Read both pipes on threads so neither can fill up and block the child; the channel
        // doubles as the timeout clock (no polling).
        let (tx, rx) = mpsc::channel::<(bool, Vec<u8>)>();
        spawn_reader(child.stdout.take(), true, tx.clone());
        spawn_reader(child.stderr.take(), false, tx);
        let deadline = Instant::now() + self.timeout;
        let (mut stdout, mut stderr) = (None, None);
        while stdout.is_none() || stderr.is_none() {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((true, bytes)) => stdout = Some(bytes),
                Ok((false, bytes)) => stderr = Some(bytes),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    // The pipes close with the process; collect what it said for the report.
                    while let Ok((is_out, bytes)) = rx.recv_timeout(Duration::from_secs(2)) {
                        if is_out {
                            stdout = Some(bytes);
                        } else {
                            stderr = Some(bytes);
                        }
                    }
                    return Err(format!(
                        "`{shown}` did not finish within {:?} and was killed\n--- stdout ---\n{}\n\
                         --- stderr ---\n{}",
                        self.timeout,
                        String::from_utf8_lossy(&stdout.unwrap_or_default()),
                        String::from_utf8_lossy(&stderr.unwrap_or_default()),
                    ));
                }
            }
        }
        let status = child
            .wait()
            .map_err(|e| format!("waiting for `{shown}`: {e}"))?;
        let stdout_bytes = stdout.unwrap_or_default();
        let stderr_bytes = stderr.unwrap_or_default();
        Ok(RunOutput {
            command: shown,
            status,
            stdout: String::from_utf8_lossy(&stdout_bytes).into_owned(),
            stderr: String::from_utf8_lossy(&stderr_bytes).into_owned(),
            stdout_bytes,
        })
    }
}

fn spawn_reader<R: Read + Send + 'static>(
    pipe: Option<R>,
    is_stdout: bool,
    tx: mpsc::Sender<(bool, Vec<u8>)>,
) {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        let _ = tx.send((is_stdout, bytes));
    });
}

/// What a finished program did. `Display` prints everything, for assertion messages.
pub struct RunOutput {
    /// The command line as typed (for messages only).
    pub command: String,
    pub status: ExitStatus,
    /// Lossy UTF-8 of `stdout_bytes`.
    pub stdout: String,
    pub stdout_bytes: Vec<u8>,
    pub stderr: String,
}

impl RunOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl fmt::Display for RunOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command, self.status, self.stdout, self.stderr
        )
    }
}

impl fmt::Debug for RunOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Panics (printing stdout and stderr) unless the program exited 0.
#[track_caller]
pub fn assert_success(out: &RunOutput) {
    assert!(out.success(), "expected success\n{out}");
}

/// Panics unless the program failed the way modelcrypt reports errors: a non-zero exit code (not
/// a signal, not a panic), an `error:` line on stderr, and every fragment somewhere on stderr.
#[track_caller]
pub fn assert_failure_contains(out: &RunOutput, fragments: &[&str]) {
    assert!(!out.success(), "expected failure\n{out}");
    assert!(
        out.code().is_some(),
        "expected an exit code, not death by signal\n{out}"
    );
    assert!(
        !out.stderr.contains("panicked at"),
        "expected a reported error, not a panic\n{out}"
    );
    assert!(
        out.stderr.lines().any(|line| line.starts_with("error:")),
        "expected an `error:` line on stderr\n{out}"
    );
    for fragment in fragments {
        assert!(
            out.stderr.contains(fragment),
            "expected stderr to contain {fragment:?}\n{out}"
        );
    }
}

// ------------------------------------------------------------------------------------------------
// Filesystem observation
// ------------------------------------------------------------------------------------------------

/// Name of the completion marker modelcrypt writes into a pulled directory.
pub const COMPLETE_MARKER: &str = ".modelcrypt-complete";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    /// Devices, FIFOs, sockets: never expected in a pulled model.
    Other,
}

/// What a snapshot records per path. Directory sizes are recorded as 0 because they depend on
/// the filesystem; times are not recorded at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileFact {
    pub kind: FileKind,
    pub size: u64,
    /// Hex SHA-256 of a regular file's contents.
    pub sha256: Option<String>,
    /// `st_mode & 0o7777` (permission, setuid, setgid and sticky bits).
    pub mode: u32,
    pub link_target: Option<String>,
}

pub type Snapshot = BTreeMap<String, FileFact>;

/// Every path under `dir` (not `dir` itself), relative with `/` separators, without following
/// symlinks. With `skip_marker`, a top-level [`COMPLETE_MARKER`] is left out.
pub fn tree_snapshot(dir: &Path, skip_marker: bool) -> Snapshot {
    let mut facts = Snapshot::new();
    walk(dir, "", skip_marker, &mut facts);
    facts
}

/// The files of a model directory as `pull` must reproduce them: regular files only (sizes,
/// SHA-256, modes), hidden paths left out because `pack` skips them.
pub fn model_files(dir: &Path) -> Snapshot {
    tree_snapshot(dir, true)
        .into_iter()
        .filter(|(path, fact)| {
            fact.kind == FileKind::File && !path.split('/').any(|c| c.starts_with('.'))
        })
        .collect()
}

fn walk(dir: &Path, prefix: &str, skip_marker: bool, facts: &mut Snapshot) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("reading `{}`: {e}", dir.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("reading `{}`: {e}", dir.display()));
        let name = entry.file_name().to_string_lossy().into_owned();
        if skip_marker && prefix.is_empty() && name == COMPLETE_MARKER {
            continue;
        }
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let path = entry.path();
        let meta = fs::symlink_metadata(&path)
            .unwrap_or_else(|e| panic!("lstat `{}`: {e}", path.display()));
        let mode = meta.mode() & 0o7777;
        let fact = if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).expect("readlink of a symlink");
            FileFact {
                kind: FileKind::Symlink,
                size: meta.len(),
                sha256: None,
                mode,
                link_target: Some(target.to_string_lossy().into_owned()),
            }
        } else if meta.is_dir() {
            walk(&path, &rel, skip_marker, facts);
            FileFact {
                kind: FileKind::Dir,
                size: 0,
                sha256: None,
                mode,
                link_target: None,
            }
        } else if meta.is_file() {
            let bytes =
                fs::read(&path).unwrap_or_else(|e| panic!("read `{}`: {e}", path.display()));
            FileFact {
                kind: FileKind::File,
                size: meta.len(),
                sha256: Some(sha256_hex(&bytes)),
                mode,
                link_target: None,
            }
        } else {
            FileFact {
                kind: FileKind::Other,
                size: 0,
                sha256: None,
                mode,
                link_target: None,
            }
        };
        facts.insert(rel, fact);
    }
}

/// Human-readable differences between two snapshots (empty when equal).
pub fn snapshot_diff(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut diff = Vec::new();
    for (path, fact) in after {
        match before.get(path) {
            None => diff.push(format!("added   {path}: {fact:?}")),
            Some(old) if old != fact => diff.push(format!("changed {path}: {old:?} -> {fact:?}")),
            Some(_) => {}
        }
    }
    for path in before.keys().filter(|p| !after.contains_key(*p)) {
        diff.push(format!("removed {path}"));
    }
    diff
}

#[track_caller]
pub fn assert_snapshots_equal(before: &Snapshot, after: &Snapshot, what: &str) {
    let diff = snapshot_diff(before, after);
    assert!(diff.is_empty(), "{what} changed:\n  {}", diff.join("\n  "));
}

/// Sorted names directly inside `dir` (hidden ones included).
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading `{}`: {e}", dir.display()))
        .map(|e| {
            e.expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Writes `bytes` to `path` (creating parents) and sets its permission bits to `mode`.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir `{}`: {e}", parent.display()));
    }
    fs::write(path, bytes).unwrap_or_else(|e| panic!("write `{}`: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod `{}`: {e}", path.display()));
}

// ------------------------------------------------------------------------------------------------
// Model directory fixture
// ------------------------------------------------------------------------------------------------

/// Directory name [`make_model_dir`] creates; pack may use it as the model name.
pub const MODEL_DIR_NAME: &str = "tiny-qwen3";

/// Size of the tensor data in `model.safetensors` (the file is slightly larger: header).
pub const MODEL_TENSOR_BYTES: usize = 3 * 1024 * 1024;

/// Files [`make_model_dir`] writes that pack must include, with their modes, in lexicographic
/// order. Hidden files (`.gitattributes`, `.cache/…`) are written too but are not listed: pack
/// must skip them.
pub const MODEL_FILES: &[(&str, u32)] = &[
    ("LICENSE", 0o600),
    ("README.md", 0o644),
    ("config.json", 0o644),
    ("generation_config.json", 0o644),
    ("merges.txt", 0o600),
    ("model.safetensors", 0o644),
    ("scripts/convert.py", 0o755),
    ("tokenizer.json", 0o644),
    ("tokenizer_config.json", 0o644),
    ("vocab.json", 0o600),
];

/// Hidden paths [`make_model_dir`] writes that pack must skip.
pub const MODEL_HIDDEN_FILES: &[&str] = &[".gitattributes", ".cache/huggingface/x"];

/// Writes a small synthetic Hugging Face style model to `root/tiny-qwen3` and returns its path.
/// Contents are deterministic (same bytes on every call).
pub fn make_model_dir(root: &Path) -> PathBuf {
    let dir = root.join(MODEL_DIR_NAME);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir `{}`: {e}", dir.display()));
    for (name, mode) in MODEL_FILES {
        write_file(&dir.join(name), &model_file_contents(name), *mode);
    }
    fs::set_permissions(dir.join("scripts"), fs::Permissions::from_mode(0o755))
        .expect("chmod scripts");
    write_file(
        &dir.join(".gitattributes"),
        b"*.safetensors filter=lfs diff=lfs merge=lfs\n",
        0o644,
    );
    write_file(
        &dir.join(".cache/huggingface/x"),
        b"hf download cache; must not be packed\n",
        0o644,
    );
    dir
}

/// The exact bytes [`make_model_dir`] writes for `name` (a path from [`MODEL_FILES`]).
pub fn model_file_contents(name: &str) -> Vec<u8> {
    let text: &str = match name {
        "config.json" => concat!(
            r#"{"model_type":"qwen3","torch_dtype":"bfloat16","#,
            r#""transformers_version":"4.51.0","architectures":["Qwen3ForCausalLM"]}"#,
        ),
        "generation_config.json" => concat!(
            r#"{"bos_token_id":151643,"eos_token_id":151645,"do_sample":true,"#,
            r#""temperature":0.6,"top_p":0.95,"transformers_version":"4.51.0"}"#,
        ),
        "model.safetensors" => return safetensors_fixture(),
        "tokenizer.json" => concat!(
            r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"#,
            r#""model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":["a b"]}}"#,
        ),
        "tokenizer_config.json" => concat!(
            r#"{"add_bos_token":false,"model_max_length":131072,"#,
            r#""tokenizer_class":"Qwen2Tokenizer"}"#,
        ),
        "vocab.json" => r#"{"a":0,"b":1,"ab":2}"#,
        "merges.txt" => "#version: 0.2\na b\n",
        "README.md" => "# tiny-qwen3\n\nA synthetic model for modelcrypt's integration tests.\n",
        "LICENSE" => "Apache License\nVersion 2.0, January 2004\n",
        "scripts/convert.py" => "#!/usr/bin/env python3\nprint('convert')\n",
        other => panic!("`{other}` is not a model fixture file"),
    };
    text.as_bytes().to_vec()
}

/// A structurally valid safetensors file: little-endian u64 header length, a JSON header padded
/// with spaces to a multiple of 8, then [`MODEL_TENSOR_BYTES`] of pseudo-random BF16 data.
fn safetensors_fixture() -> Vec<u8> {
    let mut header = format!(
        concat!(
            r#"{{"__metadata__":{{"format":"pt"}},"model.embed_tokens.weight":"#,
            r#"{{"dtype":"BF16","shape":[1536,1024],"data_offsets":[0,{}]}}}}"#,
        ),
        MODEL_TENSOR_BYTES
    )
    .into_bytes();
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut file = Vec::with_capacity(8 + header.len() + MODEL_TENSOR_BYTES);
    file.extend_from_slice(&(header.len() as u64).to_le_bytes());
    file.extend_from_slice(&header);
    file.extend_from_slice(&pseudo_random_bytes(
        b"tiny-qwen3 weights",
        MODEL_TENSOR_BYTES,
    ));
    file
}

// ------------------------------------------------------------------------------------------------
// ModelPack vocabulary (modelpack.md 1.1-1.3), spelled out here rather than imported from src/
// ------------------------------------------------------------------------------------------------

pub mod media {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

    pub const ARTIFACT: &str = "application/vnd.cncf.model.manifest.v1+json";
    pub const CONFIG: &str = "application/vnd.cncf.model.config.v1+json";

    pub const WEIGHT_RAW: &str = "application/vnd.cncf.model.weight.v1.raw";
    pub const WEIGHT_TAR: &str = "application/vnd.cncf.model.weight.v1.tar";
    pub const WEIGHT_TAR_GZIP: &str = "application/vnd.cncf.model.weight.v1.tar+gzip";
    pub const WEIGHT_TAR_ZSTD: &str = "application/vnd.cncf.model.weight.v1.tar+zstd";
    pub const WEIGHT_CONFIG_RAW: &str = "application/vnd.cncf.model.weight.config.v1.raw";
    pub const WEIGHT_CONFIG_TAR: &str = "application/vnd.cncf.model.weight.config.v1.tar";
    pub const DOC_RAW: &str = "application/vnd.cncf.model.doc.v1.raw";
    pub const DOC_TAR: &str = "application/vnd.cncf.model.doc.v1.tar";
    pub const CODE_RAW: &str = "application/vnd.cncf.model.code.v1.raw";
    pub const CODE_TAR: &str = "application/vnd.cncf.model.code.v1.tar";

    /// Pre-2025-06-30 `vnd.cnai` spellings (modelpack.md 1.1); readers accept both.
    pub const LEGACY_ARTIFACT: &str = "application/vnd.cnai.model.manifest.v1+json";
    pub const LEGACY_CONFIG: &str = "application/vnd.cnai.model.config.v1+json";
    pub const LEGACY_WEIGHT_RAW: &str = "application/vnd.cnai.model.weight.v1.raw";
    pub const LEGACY_WEIGHT_TAR: &str = "application/vnd.cnai.model.weight.v1.tar";
}

pub mod annotation {
    pub const FILEPATH: &str = "org.cncf.model.filepath";
    pub const FILE_METADATA: &str = "org.cncf.model.file.metadata+json";
    pub const MEDIATYPE_UNTESTED: &str = "org.cncf.model.file.mediatype.untested";
    pub const LEGACY_FILEPATH: &str = "org.cnai.model.filepath";
    pub const LEGACY_FILE_METADATA: &str = "org.cnai.model.file.metadata+json";
    pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
}

/// Fixed mtime for fixtures: 2025-01-01T00:00:00Z.
pub const FIXTURE_MTIME: u64 = 1_735_689_600;
pub const FIXTURE_MTIME_RFC3339: &str = "2025-01-01T00:00:00Z";

/// The `org.cncf.model.file.metadata+json` value for a regular file (modelpack.md 1.3). `name` is
/// the base name, as modctl writes it.
pub fn file_metadata_json(filepath: &str, mode: u32, size: u64) -> String {
    let name = filepath.rsplit('/').next().unwrap_or(filepath);
    // Spelled out to keep modctl's field order (serde_json's map would sort the keys).
    format!(
        r#"{{"name":{},"mode":{mode},"uid":0,"gid":0,"size":{size},"mtime":"{}","typeflag":0}}"#,
        Value::from(name),
        FIXTURE_MTIME_RFC3339,
    )
}

// ------------------------------------------------------------------------------------------------
// OCI image layout writer
// ------------------------------------------------------------------------------------------------

/// One layer descriptor as it will appear in the manifest. Public so tests can lie in it.
#[derive(Clone, Debug)]
pub struct LayerSpec {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    pub annotations: BTreeMap<String, String>,
    /// Digest of the uncompressed layer, for the config's `modelfs.diffIds`.
    pub diff_id: String,
}

/// Writes an OCI image layout (image-spec `image-layout.md`) holding one ModelPack manifest per
/// tag, by hand: `oci-layout`, `blobs/sha256/<hex>`, `index.json` with a
/// `org.opencontainers.image.ref.name` annotation per tag.
///
/// Blobs are written when added, so [`OciLayoutBuilder::replace_blob`] can tamper with them at
/// any time, and descriptors can be edited through [`OciLayoutBuilder::layer_mut`] before
/// [`OciLayoutBuilder::write`].
pub struct OciLayoutBuilder {
    dir: PathBuf,
    layers: Vec<LayerSpec>,
    legacy: bool,
    config_bytes: Option<Vec<u8>>,
    manifest_annotations: BTreeMap<String, String>,
    manifest: Option<(String, Vec<u8>)>,
}

impl OciLayoutBuilder {
    /// Creates `dir` (if needed) with `oci-layout` and `blobs/sha256/`.
    pub fn new(dir: impl Into<PathBuf>) -> OciLayoutBuilder {
        let dir = dir.into();
        fs::create_dir_all(dir.join("blobs/sha256"))
            .unwrap_or_else(|e| panic!("mkdir `{}`: {e}", dir.display()));
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
            .expect("write oci-layout");
        OciLayoutBuilder {
            dir,
            layers: Vec::new(),
            legacy: false,
            config_bytes: None,
            manifest_annotations: BTreeMap::new(),
            manifest: None,
        }
    }

    /// Use the legacy `vnd.cnai` artifact and config media types and `org.cnai` annotations for
    /// everything written from now on.
    pub fn legacy(mut self) -> OciLayoutBuilder {
        self.legacy = true;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `oci:<dir>:<tag>`, the reference modelcrypt and skopeo take.
    pub fn reference(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.dir.display())
    }

    /// Stores `bytes` as a blob and appends a layer descriptor for it. Returns the layer index.
    /// `diff_id` is the digest of the decompressed bytes for `+gzip`/`+zstd` media types (or of
    /// the bytes themselves when they do not decompress).
    pub fn add_layer(
        &mut self,
        media_type: &str,
        bytes: &[u8],
        annotations: &[(&str, &str)],
    ) -> usize {
        let (digest, size) = self.write_blob(bytes);
        let diff_id = uncompressed(media_type, bytes)
            .map(|plain| sha256_digest(&plain))
            .unwrap_or_else(|| digest.clone());
        self.layers.push(LayerSpec {
            media_type: media_type.to_owned(),
            digest,
            size,
            annotations: annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            diff_id,
        });
        self.layers.len() - 1
    }

    /// A raw layer the way modctl writes it: the bare file bytes, annotated with the file path and
    /// the `file.metadata+json` carrying `mode` (legacy keys when [`OciLayoutBuilder::legacy`]).
    pub fn add_raw_file(
        &mut self,
        media_type: &str,
        filepath: &str,
        mode: u32,
        bytes: &[u8],
    ) -> usize {
        let metadata = file_metadata_json(filepath, mode, bytes.len() as u64);
        let (path_key, metadata_key) = if self.legacy {
            (
                annotation::LEGACY_FILEPATH,
                annotation::LEGACY_FILE_METADATA,
            )
        } else {
            (annotation::FILEPATH, annotation::FILE_METADATA)
        };
        self.add_layer(
            media_type,
            bytes,
            &[(path_key, filepath), (metadata_key, &metadata)],
        )
    }

    pub fn layer(&self, index: usize) -> &LayerSpec {
        &self.layers[index]
    }

    /// Edit a descriptor before [`OciLayoutBuilder::write`], e.g. to claim a wrong size.
    pub fn layer_mut(&mut self, index: usize) -> &mut LayerSpec {
        &mut self.layers[index]
    }

    /// Stores a blob without referencing it; returns `(digest, size)`.
    pub fn write_blob(&self, bytes: &[u8]) -> (String, u64) {
        let digest = sha256_digest(bytes);
        fs::write(self.blob_path(&digest), bytes).expect("write blob");
        (digest, bytes.len() as u64)
    }

    /// Overwrites the stored bytes of blob `digest` (tamper: the name no longer matches).
    pub fn replace_blob(&self, digest: &str, bytes: &[u8]) {
        let path = self.blob_path(digest);
        assert!(path.exists(), "no blob `{digest}` to replace");
        fs::write(path, bytes).expect("replace blob");
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest_hex(digest))
    }

    /// Use exactly these config bytes instead of the generated config.
    pub fn set_config_bytes(&mut self, bytes: Vec<u8>) {
        self.config_bytes = Some(bytes);
    }

    pub fn annotate_manifest(&mut self, key: &str, value: &str) {
        self.manifest_annotations
            .insert(key.to_owned(), value.to_owned());
    }

    /// A valid ModelPack config (modelpack.md 1.4) with one diffId per layer, in layer order.
    pub fn config_json(&self) -> Vec<u8> {
        let diff_ids: Vec<&str> = self.layers.iter().map(|l| l.diff_id.as_str()).collect();
        serde_json::to_vec(&json!({
            "descriptor": {
                "createdAt": FIXTURE_MTIME_RFC3339,
                "name": MODEL_DIR_NAME,
                "family": "qwen3",
            },
            "config": {
                "architecture": "transformer",
                "format": "safetensors",
                "precision": "bfloat16",
            },
            "modelfs": { "type": "layers", "diffIds": diff_ids },
        }))
        .expect("config serializes")
    }

    /// Writes config and manifest blobs and points `tag` at the manifest in `index.json` (other
    /// tags already in the index are kept). Returns the manifest digest.
    pub fn write(&mut self, tag: &str) -> String {
        let config = self
            .config_bytes
            .clone()
            .unwrap_or_else(|| self.config_json());
        let (config_digest, config_size) = self.write_blob(&config);
        let (artifact_type, config_type) = if self.legacy {
            (media::LEGACY_ARTIFACT, media::LEGACY_CONFIG)
        } else {
            (media::ARTIFACT, media::CONFIG)
        };
        let layers: Vec<Value> = self
            .layers
            .iter()
            .map(|l| {
                let mut d =
                    json!({ "mediaType": l.media_type, "digest": l.digest, "size": l.size });
                if !l.annotations.is_empty() {
                    d["annotations"] = json!(l.annotations);
                }
                d
            })
            .collect();
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": { "mediaType": config_type, "digest": config_digest, "size": config_size },
            "layers": layers,
        });
        if !self.manifest_annotations.is_empty() {
            manifest["annotations"] = json!(self.manifest_annotations);
        }
        let manifest = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
        let (manifest_digest, manifest_size) = self.write_blob(&manifest);

        let index_path = self.dir.join("index.json");
        let mut entries: Vec<Value> = match fs::read(&index_path) {
            Ok(bytes) => serde_json::from_slice::<Value>(&bytes).expect("index.json is JSON")
                ["manifests"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        entries.retain(|e| e["annotations"][annotation::REF_NAME] != tag);
        entries.push(json!({
            "mediaType": media::OCI_MANIFEST,
            "artifactType": artifact_type,
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": { (annotation::REF_NAME): tag },
        }));
        let index =
            json!({ "schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": entries });
        fs::write(
            index_path,
            serde_json::to_vec_pretty(&index).expect("index serializes"),
        )
        .expect("write index.json");
        self.manifest = Some((manifest_digest.clone(), manifest));
        manifest_digest
    }

    /// Digest and bytes of the manifest the last [`OciLayoutBuilder::write`] produced.
    pub fn manifest(&self) -> Option<(&str, &[u8])> {
        self.manifest
            .as_ref()
            .map(|(d, b)| (d.as_str(), b.as_slice()))
    }
}

fn uncompressed(media_type: &str, bytes: &[u8]) -> Option<Vec<u8>> {
    let mut plain = Vec::new();
    if media_type.ends_with("+gzip") {
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut plain)
            .ok()?;
    } else if media_type.ends_with("+zstd") {
        plain = zstd::decode_all(bytes).ok()?;
    } else {
        return None;
    }
    Some(plain)
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).expect("gzip into memory");
    enc.finish().expect("gzip into memory")
}

pub fn zstd_compress(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).expect("zstd into memory")
}

// ------------------------------------------------------------------------------------------------
// Tar writer for hostile archives
// ------------------------------------------------------------------------------------------------

/// Builds tar archives entry by entry with raw header bytes, so names the tar crate's checked
/// setters refuse (`../evil`, `/abs/evil`, escaping link targets) can be written. Names longer
/// than the 100-byte header field get a GNU `././@LongLink` record, as GNU tar writes them.
///
/// Every entry has uid/gid 0 and mtime [`FIXTURE_MTIME`] unless an `edit` closure says otherwise.
pub struct TarBuilder {
    inner: tar::Builder<Vec<u8>>,
}

impl Default for TarBuilder {
    fn default() -> Self {
        TarBuilder::new()
    }
}

impl TarBuilder {
    pub fn new() -> TarBuilder {
        TarBuilder {
            inner: tar::Builder::new(Vec::new()),
        }
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut TarBuilder {
        self.entry(path.as_bytes(), tar::EntryType::Regular, mode, None, data)
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> &mut TarBuilder {
        self.entry(path.as_bytes(), tar::EntryType::Directory, mode, None, &[])
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut TarBuilder {
        self.entry(
            path.as_bytes(),
            tar::EntryType::Symlink,
            0o777,
            Some(target.as_bytes()),
            &[],
        )
    }

    /// A hard link; `target` is, per tar convention, relative to the archive root.
    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut TarBuilder {
        self.entry(
            path.as_bytes(),
            tar::EntryType::Link,
            0o644,
            Some(target.as_bytes()),
            &[],
        )
    }

    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) -> &mut TarBuilder {
        self.raw(path.as_bytes(), None, &[], |h| {
            h.set_entry_type(tar::EntryType::Char);
            h.set_mode(0o666);
            h.set_device_major(major)
                .expect("gnu header has device fields");
            h.set_device_minor(minor)
                .expect("gnu header has device fields");
        })
    }

    pub fn fifo(&mut self, path: &str) -> &mut TarBuilder {
        self.entry(path.as_bytes(), tar::EntryType::Fifo, 0o644, None, &[])
    }

    pub fn entry(
        &mut self,
        path: &[u8],
        kind: tar::EntryType,
        mode: u32,
        link: Option<&[u8]>,
        data: &[u8],
    ) -> &mut TarBuilder {
        self.raw(path, link, data, |h| {
            h.set_entry_type(kind);
            h.set_mode(mode);
        })
    }

    /// Appends one entry: `path` and `link` are copied verbatim into the header, `data` follows.
    /// `edit` runs last, before the checksum, and may change anything (type, mode, uid, size).
    pub fn raw(
        &mut self,
        path: &[u8],
        link: Option<&[u8]>,
        data: &[u8],
        edit: impl FnOnce(&mut tar::Header),
    ) -> &mut TarBuilder {
        if path.len() > 100 {
            self.long_name_record(tar::EntryType::GNULongName, path);
        }
        if let Some(link) = link.filter(|l| l.len() > 100) {
            self.long_name_record(tar::EntryType::GNULongLink, link);
        }
        let mut header = tar::Header::new_gnu();
        copy_field(&mut header.as_old_mut().name, path);
        if let Some(link) = link {
            copy_field(&mut header.as_old_mut().linkname, link);
        }
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(FIXTURE_MTIME);
        header.set_size(data.len() as u64);
        edit(&mut header);
        header.set_cksum();
        self.inner
            .append(&header, data)
            .expect("append to an in-memory tar");
        self
    }

    fn long_name_record(&mut self, kind: tar::EntryType, name: &[u8]) {
        let mut data = name.to_vec();
        data.push(0);
        let mut header = tar::Header::new_gnu();
        copy_field(&mut header.as_old_mut().name, b"././@LongLink");
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(data.len() as u64);
        header.set_cksum();
        self.inner
            .append(&header, data.as_slice())
            .expect("append to an in-memory tar");
    }

    /// The archive bytes, with the two terminating zero blocks.
    pub fn finish(self) -> Vec<u8> {
        self.inner.into_inner().expect("finish an in-memory tar")
    }
}

/// Copies up to `field.len()` bytes of `value` into a NUL-padded header field.
fn copy_field(field: &mut [u8], value: &[u8]) {
    field.fill(0);
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

// ------------------------------------------------------------------------------------------------
// Minimal HTTP/1.1 client (std only) for talking to the test registry
// ------------------------------------------------------------------------------------------------

pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl fmt::Debug for HttpResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "HTTP {} {:?} {}",
            self.status,
            self.headers,
            String::from_utf8_lossy(&self.body)
        )
    }
}

/// One request over a fresh connection (`Connection: close`). Only `http://` URLs.
pub fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<HttpResponse> {
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| invalid(format!("not http: {url}")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| invalid(format!("no address for {authority}")))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_write_timeout(Some(Duration::from_secs(60)))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    for (key, value) in headers {
        request.push_str(&format!("{key}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw, method == "HEAD")
}

fn parse_response(raw: &[u8], head: bool) -> io::Result<HttpResponse> {
    let bad = |msg: &str| io::Error::new(io::ErrorKind::InvalidData, msg.to_owned());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of HTTP headers"))?;
    let head_text = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head_text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad HTTP status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked && !head {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

// ------------------------------------------------------------------------------------------------
// Test registry: the real CNCF distribution (Debian `docker-registry`) on loopback
// ------------------------------------------------------------------------------------------------

/// How long a starting registry may take to answer `/v2/`.
const REGISTRY_READY_DEADLINE: Duration = Duration::from_secs(30);
/// Poll interval while waiting for readiness (bounded by the deadline above).
const REGISTRY_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// A `docker-registry serve` process on `127.0.0.1:<free port>` with filesystem storage (delete
/// enabled) in its own temporary directory. Killed on drop. Plain HTTP: pass `--plain-http` to
/// modelcrypt and `--tls-verify=false` to skopeo.
pub struct TestRegistry {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

enum LaunchError {
    PortTaken(String),
    Failed(String),
}

impl TestRegistry {
    /// Starts a registry and waits until `GET /v2/` answers. Callers check
    /// `require_peer("docker-registry")` first; this panics if it is missing or does not start.
    #[track_caller]
    pub fn start() -> TestRegistry {
        let dir = tempfile::Builder::new()
            .prefix("modelcrypt-registry-")
            .tempdir()
            .expect("create registry tempdir");
        fs::create_dir_all(dir.path().join("storage")).expect("create registry storage");
        let mut registry = TestRegistry {
            dir,
            port: 0,
            child: None,
        };
        let mut last = String::new();
        // The port is free when we probe it but another process may take it before the registry
        // binds; retry with a new port in that case.
        for _ in 0..5 {
            registry.port = free_loopback_port();
            registry.write_config();
            match registry.launch() {
                Ok(()) => return registry,
                Err(LaunchError::PortTaken(log)) => last = log,
                Err(LaunchError::Failed(log)) => panic!("docker-registry did not start:\n{log}"),
            }
        }
        panic!("docker-registry found no free port in 5 attempts; last log:\n{last}");
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `docker://127.0.0.1:PORT/<repo_tag>`, e.g. `reference("models/tiny:v1")`.
    pub fn reference(&self, repo_tag: &str) -> String {
        format!("docker://{}/{repo_tag}", self.host())
    }

    /// `http://127.0.0.1:PORT<path>`; `path` starts with `/`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.host())
    }

    /// Root of the filesystem storage driver. Blobs live under
    /// `docker/registry/v2/blobs/sha256/<2 hex>/<hex>/data` (see [`TestRegistry::blob_data_path`]).
    pub fn storage_root(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry stores the bytes of blob `digest`; overwrite it to tamper.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest_hex(digest);
        self.storage_root()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The registry's own log (stdout and stderr of every start), for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Kills the registry (SIGKILL; storage is left as it was). Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops, then starts again on the same port with the same storage.
    #[track_caller]
    pub fn restart(&mut self) {
        self.stop();
        match self.launch() {
            Ok(()) => {}
            Err(LaunchError::PortTaken(log)) | Err(LaunchError::Failed(log)) => {
                panic!(
                    "docker-registry did not restart on port {}:\n{log}",
                    self.port
                )
            }
        }
    }

    /// Uploads blob `bytes` to `repo` (POST then monolithic PUT); returns its digest.
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256_digest(bytes);
        let start = http_request(
            "POST",
            &self.url(&format!("/v2/{repo}/blobs/uploads/")),
            &[],
            &[],
        )
        .expect("start blob upload");
        assert_eq!(start.status, 202, "start upload of {digest}: {start:?}");
        let location = start.header("Location").expect("upload Location header");
        let location = if location.starts_with("http://") {
            location.to_owned()
        } else {
            self.url(location)
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let put = http_request(
            "PUT",
            &format!("{location}{separator}digest={digest}"),
            &[("Content-Type", "application/octet-stream")],
            bytes,
        )
        .expect("finish blob upload");
        assert_eq!(put.status, 201, "finish upload of {digest}: {put:?}");
        digest
    }

    /// Pushes the manifest tagged `tag` in the OCI layout `layout`, with its config and layers,
    /// to `repo_tag` (`repo:tag`) through the distribution API, independently of modelcrypt and
    /// skopeo. The registry verifies blob digests, so tamper afterwards via
    /// [`TestRegistry::blob_data_path`]. Returns the manifest digest.
    pub fn push_layout(&self, layout: &Path, tag: &str, repo_tag: &str) -> String {
        let (repo, dest_tag) = repo_tag.rsplit_once(':').expect("repo_tag is `repo:tag`");
        let index: Value =
            serde_json::from_slice(&fs::read(layout.join("index.json")).expect("read index.json"))
                .expect("index.json is JSON");
        let entry = index["manifests"]
            .as_array()
            .and_then(|m| {
                m.iter()
                    .find(|e| e["annotations"][annotation::REF_NAME] == tag)
            })
            .unwrap_or_else(|| panic!("no tag `{tag}` in {}", layout.display()));
        let manifest_digest = entry["digest"]
            .as_str()
            .expect("manifest digest")
            .to_owned();
        let blob = |d: &str| {
            fs::read(layout.join("blobs/sha256").join(digest_hex(d)))
                .unwrap_or_else(|e| panic!("read blob {d}: {e}"))
        };
        let manifest_bytes = blob(&manifest_digest);
        let manifest: Value = serde_json::from_slice(&manifest_bytes).expect("manifest is JSON");
        let descriptors = std::iter::once(&manifest["config"])
            .chain(manifest["layers"].as_array().into_iter().flatten());
        for descriptor in descriptors {
            let digest = descriptor["digest"].as_str().expect("descriptor digest");
            let pushed = self.push_blob(repo, &blob(digest));
            assert_eq!(
                pushed, digest,
                "layout blob {digest} does not match its name"
            );
        }
        let media_type = manifest["mediaType"]
            .as_str()
            .unwrap_or(media::OCI_MANIFEST);
        let put = http_request(
            "PUT",
            &self.url(&format!("/v2/{repo}/manifests/{dest_tag}")),
            &[("Content-Type", media_type)],
            &manifest_bytes,
        )
        .expect("put manifest");
        assert_eq!(
            put.status,
            201,
            "put manifest {repo_tag}: {put:?}\n{}",
            self.log()
        );
        manifest_digest
    }

    fn write_config(&self) {
        let config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: modelcrypt-integration-tests\n",
            root = self.storage_root().display(),
            port = self.port,
        );
        fs::write(self.dir.path().join("config.yml"), config).expect("write registry config");
    }

    fn launch(&mut self) -> Result<(), LaunchError> {
        let program = find_program("docker-registry")
            .ok_or_else(|| LaunchError::Failed("docker-registry not installed".to_owned()))?;
        let log_path = self.dir.path().join("registry.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open registry log");
        let mut command = Command::new(program);
        command
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        // REGISTRY_* variables override the config file; keep the developer's out.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("REGISTRY_") {
                command.env_remove(&key);
            }
        }
        let mut child = command
            .spawn()
            .map_err(|e| LaunchError::Failed(format!("cannot spawn docker-registry: {e}")))?;
        let deadline = Instant::now() + REGISTRY_READY_DEADLINE;
        let v2 = self.url("/v2/");
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = fs::read_to_string(&log_path).unwrap_or_default();
                let log = format!("exited with {status}\n{log}");
                return Err(if log.contains("address already in use") {
                    LaunchError::PortTaken(log)
                } else {
                    LaunchError::Failed(log)
                });
            }
            if let Ok(resp) = http_request("GET", &v2, &[], &[]) {
                if resp.status == 200
                    && resp.header("Docker-Distribution-Api-Version") == Some("registry/2.0")
                {
                    self.child = Some(child);
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let log = fs::read_to_string(&log_path).unwrap_or_default();
                return Err(LaunchError::Failed(format!(
                    "no answer on {v2} within {REGISTRY_READY_DEADLINE:?}\n{log}"
                )));
            }
            thread::sleep(REGISTRY_POLL_INTERVAL);
        }
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_loopback_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Reads the manifest a layout's tag points at.
pub fn layout_manifest(layout: &Path) -> (String, Value) {
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let raw = fs::read(layout.join("blobs/sha256").join(&digest[7..])).unwrap();
    (digest, serde_json::from_slice(&raw).unwrap())
}

/// Rewrites a layout's manifest (and points the index at the new one).
pub fn write_layout_manifest(layout: &Path, manifest: &Value) {
    let raw = serde_json::to_vec(manifest).unwrap();
    let digest = sha256_digest(&raw);
    fs::write(layout.join("blobs/sha256").join(&digest[7..]), &raw).unwrap();
    let mut index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"] = Value::String(digest);
    index["manifests"][0]["size"] = Value::from(raw.len());
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}
