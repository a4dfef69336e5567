//! The plain path end to end against real peers: `pack` → real `docker-registry` → `pull`
//! gives the same files; skopeo moves our artifacts and we pull what it wrote; an artifact
//! shaped like modctl's output pulls; tampering in the registry's storage is caught; a pull
//! killed midway is finished by a re-run; the bundled demo is what `pack` makes.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    assert_failure_contains, assert_success, dir_names, make_model_dir, media, model_files,
    modelcrypt, modelcrypt_bin, require_peer, skopeo, OciLayoutBuilder, TarBuilder, TestRegistry,
    COMPLETE_MARKER, MODEL_FILES, MODEL_HIDDEN_FILES,
};

fn pack(model: &Path, dest: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "pack".to_string(),
        model.display().to_string(),
        dest.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = modelcrypt(&args);
    assert_success(&out);
    out.stdout.trim().to_string()
}

fn pull(reference: &str, to: &Path, extra: &[&str]) -> crate::common::RunOutput {
    let mut args = vec!["pull".to_string(), reference.to_string(), "--to".into()];
    args.push(to.display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    modelcrypt(&args)
}

fn marker_digest(dest: &Path) -> String {
    let raw = fs::read(dest.join(COMPLETE_MARKER)).expect("completion marker");
    let v: serde_json::Value = serde_json::from_slice(&raw).expect("marker is JSON");
    v["manifestDigest"]
        .as_str()
        .expect("manifestDigest")
        .to_string()
}

fn round_trip_through_a_registry(extra_pack_flags: &[&str]) {
    if !require_peer("docker-registry") {
        return;
    }
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let model = make_model_dir(tmp.path());
    let reference = reg.reference("models/tiny:v1");
    let digest = pack(
        &model,
        &reference,
        &[&["--plain-http"], extra_pack_flags].concat(),
    );

    let dest = tmp.path().join("out/tiny");
    let out = pull(
        &reference,
        &dest,
        &["--plain-http", "--no-progress", "--preserve-modes"],
    );
    assert_success(&out);

    let expected = model_files(&model);
    assert_eq!(
        expected.len(),
        MODEL_FILES.len(),
        "the fixture has the files it claims"
    );
    assert_eq!(model_files(&dest), expected);
    for (path, mode) in MODEL_FILES {
        assert_eq!(expected[*path].mode, *mode, "{path} keeps its mode");
    }
    for hidden in MODEL_HIDDEN_FILES {
        assert!(!dest.join(hidden).exists(), "{hidden} must not be packed");
    }
    assert_eq!(marker_digest(&dest), digest);
    assert_eq!(
        dir_names(&tmp.path().join("out")),
        vec!["tiny".to_string()],
        "no staging left"
    );

    // A second pull of the same manifest is a no-op that says so.
    let again = pull(&reference, &dest, &["--plain-http", "--no-progress"]);
    assert_success(&again);
    assert!(again.stderr.contains("nothing to do"), "{again}");

    // By default every user in the pod can read the model and only the owner can change it.
    let readable = tmp.path().join("out/readable");
    let out = crate::common::Cmd::modelcrypt()
        .env_remove("MODELCRYPT_PRESERVE_MODES")
        .args(["pull", &reference, "--plain-http", "--to"])
        .arg(&readable)
        .run();
    assert_success(&out);
    let got = model_files(&readable);
    for (path, mode) in MODEL_FILES {
        let want = match mode {
            0o600 => 0o644,
            0o644 => 0o644,
            0o755 => 0o755,
            other => panic!("the fixture grew a mode this test does not cover: {other:o}"),
        };
        assert_eq!(got[*path].mode, want, "{path} (artifact mode {mode:o})");
        assert_eq!(got[*path].sha256, expected[*path].sha256, "{path}");
    }
    for dir in [&readable, &readable.join("scripts")] {
        let mode = fs::metadata(dir).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755, "{}", dir.display());
    }
}

#[test]
fn pack_push_pull_through_a_registry_gives_identical_files_with_raw_layers() {
    round_trip_through_a_registry(&[]);
}

#[test]
fn pack_push_pull_through_a_registry_gives_identical_files_with_tar_layers() {
    round_trip_through_a_registry(&["--tar", "--reproducible"]);
}

#[test]
fn pack_writes_modelpack_media_types_annotations_and_config() {
    let tmp = tempfile::tempdir().unwrap();
    let model = make_model_dir(tmp.path());
    let layout = format!("oci:{}:v1", tmp.path().join("layout").display());
    pack(&model, &layout, &["--reproducible"]);
    let out = modelcrypt(["inspect", &layout, "--json"]);
    assert_success(&out);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("inspect --json is JSON");
    assert_eq!(v["artifactType"], media::ARTIFACT);
    assert_eq!(v["manifest"]["config"]["mediaType"], media::CONFIG);
    let layers = v["manifest"]["layers"].as_array().unwrap();
    let kinds: Vec<(&str, &str)> = layers
        .iter()
        .map(|l| {
            let a = &l["annotations"];
            (
                a["org.cncf.model.filepath"].as_str().unwrap(),
                l["mediaType"].as_str().unwrap(),
            )
        })
        .collect();
    // modctl's order: config files, weights, code, docs; sorted by path within each.
    assert_eq!(
        kinds,
        vec![
            ("config.json", media::WEIGHT_CONFIG_RAW),
            ("generation_config.json", media::WEIGHT_CONFIG_RAW),
            ("merges.txt", media::WEIGHT_CONFIG_RAW),
            ("tokenizer.json", media::WEIGHT_CONFIG_RAW),
            ("tokenizer_config.json", media::WEIGHT_CONFIG_RAW),
            ("vocab.json", media::WEIGHT_CONFIG_RAW),
            ("model.safetensors", media::WEIGHT_RAW),
            ("scripts/convert.py", media::CODE_RAW),
            ("LICENSE", media::DOC_RAW),
            ("README.md", media::DOC_RAW),
        ]
    );
    let meta: serde_json::Value = serde_json::from_str(
        layers[7]["annotations"]["org.cncf.model.file.metadata+json"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(meta["mode"], 0o755);
    assert_eq!(meta["name"], "convert.py");
    assert_eq!(meta["typeflag"], 0);
    let config = &v["config"];
    assert_eq!(config["descriptor"]["family"], "qwen3");
    assert_eq!(config["config"]["precision"], "bfloat16");
    assert_eq!(config["config"]["format"], "safetensors");
    let diff_ids: Vec<&serde_json::Value> = config["modelfs"]["diffIds"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    let digests: Vec<&serde_json::Value> = layers.iter().map(|l| &l["digest"]).collect();
    assert_eq!(diff_ids, digests);
    assert!(
        config["descriptor"].get("createdAt").is_none(),
        "--reproducible has no time"
    );
}

#[test]
fn skopeo_moves_our_artifact_through_dir_to_another_repository_and_it_still_pulls() {
    if !require_peer("docker-registry") || !require_peer("skopeo") {
        return;
    }
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let model = make_model_dir(tmp.path());
    let digest = pack(
        &model,
        &reg.reference("models/a:v1"),
        &["--plain-http", "--tar"],
    );
    let dir = tmp.path().join("skopeo-dir");
    let dir_ref = format!("dir:{}", dir.display());
    let tls = ["--src-tls-verify=false", "--dest-tls-verify=false"];
    assert_success(&skopeo(
        [
            &["copy"][..],
            &tls,
            &[&reg.reference("models/a:v1"), &dir_ref],
        ]
        .concat(),
    ));
    assert_success(&skopeo(
        [
            &["copy"][..],
            &tls,
            &[&dir_ref, &reg.reference("models/b:copied")],
        ]
        .concat(),
    ));

    for (source, name) in [
        (reg.reference("models/b:copied"), "from-b"),
        (dir_ref.clone(), "from-dir"),
    ] {
        let dest = tmp.path().join(name);
        assert_success(&pull(&source, &dest, &["--plain-http", "--no-progress"]));
        assert_eq!(model_files(&dest), model_files(&model), "{source}");
        assert_eq!(
            marker_digest(&dest),
            digest,
            "skopeo kept the manifest byte for byte"
        );
    }
}

#[test]
fn our_copy_writes_layouts_and_dirs_that_skopeo_reads() {
    if !require_peer("skopeo") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = make_model_dir(tmp.path());
    let layout = format!("oci:{}:v1", tmp.path().join("layout").display());
    let digest = pack(&model, &layout, &[]);
    let dir_ref = format!("dir:{}", tmp.path().join("ours-dir").display());
    assert_success(&modelcrypt(["copy", &layout, &dir_ref]));
    // skopeo verifies every blob's digest while copying.
    let back = format!("oci:{}:again", tmp.path().join("skopeo-layout").display());
    assert_success(&skopeo(["copy", &dir_ref, &back]));
    let dest = tmp.path().join("pulled");
    assert_success(&pull(&back, &dest, &["--no-progress"]));
    assert_eq!(model_files(&dest), model_files(&model));
    assert_eq!(marker_digest(&dest), digest);
}

#[test]
fn an_artifact_shaped_like_modctl_output_pulls_from_a_registry() {
    if !require_peer("docker-registry") {
        return;
    }
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let weights = crate::common::pseudo_random_bytes(b"modctl", 300_000);
    let mut b = OciLayoutBuilder::new(tmp.path().join("layout"));
    b.add_raw_file(
        media::WEIGHT_CONFIG_RAW,
        "config.json",
        0o644,
        br#"{"model_type":"qwen3"}"#,
    );
    b.add_raw_file(media::WEIGHT_RAW, "model.safetensors", 0o640, &weights);
    let mut tar = TarBuilder::new();
    tar.file("docs/README.md", 0o600, b"# readme\n");
    let tar = tar.finish();
    b.add_layer(
        media::DOC_TAR,
        &tar,
        &[("org.cncf.model.filepath", "docs/README.md")],
    );
    b.write("v1");
    let mut legacy = OciLayoutBuilder::new(tmp.path().join("legacy")).legacy();
    legacy.add_raw_file(
        media::LEGACY_WEIGHT_RAW,
        "shard-1.bin",
        0o644,
        &weights[..1000],
    );
    let mut tar = TarBuilder::new();
    tar.file("sub/shard-2.bin", 0o644, &weights[1000..3000]);
    let tar = tar.finish();
    legacy.add_layer(media::LEGACY_WEIGHT_TAR, &tar, &[]);
    legacy.write("v1");
    reg.push_layout(&tmp.path().join("layout"), "v1", "models/modctl:v1");
    reg.push_layout(&tmp.path().join("legacy"), "v1", "models/legacy:v1");

    let dest = tmp.path().join("m");
    assert_success(&pull(
        &reg.reference("models/modctl:v1"),
        &dest,
        &["--plain-http"],
    ));
    assert_eq!(fs::read(dest.join("model.safetensors")).unwrap(), weights);
    let mode = |p: &str| fs::metadata(dest.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(
        (
            mode("model.safetensors"),
            mode("config.json"),
            mode("docs/README.md")
        ),
        (0o640, 0o644, 0o600)
    );

    let dest = tmp.path().join("l");
    assert_success(&pull(
        &reg.reference("models/legacy:v1"),
        &dest,
        &["--plain-http"],
    ));
    assert_eq!(
        fs::read(dest.join("shard-1.bin")).unwrap(),
        &weights[..1000]
    );
    assert_eq!(
        fs::read(dest.join("sub/shard-2.bin")).unwrap(),
        &weights[1000..3000]
    );
}

#[test]
fn a_blob_tampered_in_registry_storage_is_refused_and_nothing_is_left() {
    if !require_peer("docker-registry") {
        return;
    }
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let model = make_model_dir(tmp.path());
    let reference = reg.reference("models/tampered:v1");
    pack(&model, &reference, &["--plain-http"]);
    let layout = tmp.path().join("layout");
    pack(&model, &format!("oci:{}:v1", layout.display()), &[]);
    let weights = weights_digest(&layout);

    let stored = reg.blob_data_path(&weights);
    let mut bytes = fs::read(&stored).unwrap();
    bytes[1234] ^= 0x01;
    fs::write(&stored, bytes).unwrap();

    let parent = tmp.path().join("out");
    fs::create_dir(&parent).unwrap();
    let out = pull(
        &reference,
        &parent.join("tiny"),
        &["--plain-http", "--no-progress"],
    );
    assert_failure_contains(&out, &["digest mismatch", &weights, "model.safetensors"]);
    assert!(
        dir_names(&parent).is_empty(),
        "nothing at the destination, no staging: {:?}",
        dir_names(&parent)
    );
}

/// The digest of `model.safetensors`'s layer in a layout written by `pack`.
fn weights_digest(layout: &Path) -> String {
    let out = modelcrypt(["inspect", &format!("oci:{}:v1", layout.display()), "--json"]);
    assert_success(&out);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["filepath"] == "model.safetensors")
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .expect("a weights layer")
}

/// Replaces the weights blob of `layout` with a FIFO, so a pull blocks on that layer while
/// the others finish, with no timing involved. Returns the blob's path and real bytes.
fn block_weights_layer(layout: &Path) -> (PathBuf, Vec<u8>) {
    let digest = weights_digest(layout);
    let blob = layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    let bytes = fs::read(&blob).unwrap();
    fs::remove_file(&blob).unwrap();
    nix::unistd::mkfifo(&blob, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    (blob, bytes)
}

/// Starts a pull that will block on the FIFO layer, and waits until the other layers have
/// landed in the staging directory.
fn start_blocked_pull(layout: &Path, dest: &Path) -> std::process::Child {
    let child = Command::new(modelcrypt_bin())
        .env("MODELCRYPT_LOG_FORMAT", "text")
        .env("MODELCRYPT_PRESERVE_MODES", "1")
        .args(["pull", &format!("oci:{}:v1", layout.display()), "--to"])
        .arg(dest)
        .args(["--no-progress", "--concurrency", "4"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let staging = dest.parent().unwrap().join(".tiny.modelcrypt-staging");
    let deadline = Instant::now() + Duration::from_secs(60);
    // Poll for an observable state, bounded: config.json is a small layer that completes while
    // the weights layer waits on its FIFO.
    while !staging.join("config.json").exists() {
        assert!(
            Instant::now() < deadline,
            "the pull never staged config.json"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[test]
fn a_pull_killed_midway_is_finished_by_a_rerun_without_leftovers() {
    let tmp = tempfile::tempdir().unwrap();
    let model = make_model_dir(tmp.path());
    let layout = tmp.path().join("layout");
    pack(&model, &format!("oci:{}:v1", layout.display()), &[]);
    let (blob, bytes) = block_weights_layer(&layout);
    let parent = tmp.path().join("out");
    let dest = parent.join("tiny");

    let mut child = start_blocked_pull(&layout, &dest);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!dest.exists(), "a killed pull publishes nothing");
    assert_eq!(
        dir_names(&parent),
        vec![".tiny.modelcrypt-staging".to_string()],
        "the crash leaves its staging dir"
    );

    fs::remove_file(&blob).unwrap();
    fs::write(&blob, bytes).unwrap();
    let out = pull(
        &format!("oci:{}:v1", layout.display()),
        &dest,
        &["--no-progress"],
    );
    assert_success(&out);
    assert_eq!(model_files(&dest), model_files(&model));
    assert_eq!(
        dir_names(&parent),
        vec!["tiny".to_string()],
        "the re-run removed the stale staging dir"
    );
}

#[test]
fn sigterm_during_a_pull_removes_the_staging_directory_and_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let model = make_model_dir(tmp.path());
    let layout = tmp.path().join("layout");
    pack(&model, &format!("oci:{}:v1", layout.display()), &[]);
    let (_blob, _bytes) = block_weights_layer(&layout);
    let parent = tmp.path().join("out");
    let child = start_blocked_pull(&layout, &parent.join("tiny"));
    // The process that holds keys writes no core file.
    let limits = fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(
        core.split_whitespace().collect::<Vec<_>>()[4..6],
        ["0", "0"],
        "{core}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(dir_names(&parent).is_empty(), "{:?}", dir_names(&parent));
}

#[test]
fn a_destination_not_written_by_modelcrypt_is_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("precious");
    fs::create_dir(&dest).unwrap();
    fs::write(dest.join("keep.txt"), b"mine").unwrap();
    let out = pull("oci:demo/tiny-model.oci:v1", &dest, &["--no-progress"]);
    assert_failure_contains(&out, &["not written by modelcrypt", "precious"]);
    assert_eq!(fs::read(dest.join("keep.txt")).unwrap(), b"mine");
    assert_eq!(dir_names(tmp.path()), vec!["precious".to_string()]);
}

/// The bundled demo layout must be exactly what `pack --reproducible` makes of the bundled
/// model, so the README's first command exercises the current format.
#[test]
fn the_demo_layout_is_what_pack_makes_of_the_demo_model() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny-model");
    fs::create_dir(&model).unwrap();
    // Copy with fixed modes: a checkout's modes depend on the umask.
    for entry in fs::read_dir("demo/tiny-model").unwrap() {
        let entry = entry.unwrap();
        let to = model.join(entry.file_name());
        fs::copy(entry.path(), &to).unwrap();
        fs::set_permissions(&to, fs::Permissions::from_mode(0o644)).unwrap();
    }
    let layout = format!("oci:{}:v1", tmp.path().join("layout").display());
    let digest = pack(&model, &layout, &["--reproducible", "--name", "tiny-model"]);
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read("demo/tiny-model.oci/index.json").unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], digest.as_str());
}

/// Runs the README's first command (its arguments after `--`), with `--to` moved into a
/// temporary directory.
#[test]
fn the_readme_quickstart_pulls_the_demo_model() {
    let readme = fs::read_to_string("README.md").unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("cargo run --release -- pull "))
        .expect("the README has a `cargo run --release -- pull` command");
    let mut args: Vec<String> = line
        .split_whitespace()
        .skip(4)
        .map(str::to_string)
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("tiny-model");
    let to = args
        .iter()
        .position(|a| a == "--to")
        .expect("the command has --to")
        + 1;
    args[to] = dest.display().to_string();
    let out = modelcrypt(&args);
    assert_success(&out);
    for entry in fs::read_dir("demo/tiny-model").unwrap() {
        let entry = entry.unwrap();
        assert_eq!(
            fs::read(dest.join(entry.file_name())).unwrap(),
            fs::read(entry.path()).unwrap()
        );
    }
}

/// A second pull of a different manifest swaps the new tree in atomically and removes the
/// old one, even when the old one has a read-only directory.
#[test]
fn a_pull_of_a_new_version_replaces_the_old_one_without_leftovers() {
    let tmp = tempfile::tempdir().unwrap();
    let mut v1 = OciLayoutBuilder::new(tmp.path().join("v1"));
    let mut tar = TarBuilder::new();
    tar.dir("ro/", 0o555).file("ro/old.txt", 0o444, b"old\n");
    v1.add_layer(media::WEIGHT_TAR, &tar.finish(), &[]);
    v1.write("v1");
    let mut v2 = OciLayoutBuilder::new(tmp.path().join("v2"));
    v2.add_raw_file(media::WEIGHT_RAW, "new.txt", 0o644, b"new\n");
    v2.write("v2");

    let parent = tmp.path().join("out");
    let dest = parent.join("model");
    assert_success(&pull(&v1.reference("v1"), &dest, &["--no-progress"]));
    assert_eq!(fs::read(dest.join("ro/old.txt")).unwrap(), b"old\n");
    assert_success(&pull(&v2.reference("v2"), &dest, &["--no-progress"]));
    assert_eq!(fs::read(dest.join("new.txt")).unwrap(), b"new\n");
    assert!(!dest.join("ro").exists(), "the old tree is gone");
    assert_eq!(dir_names(&parent), vec!["model".to_string()]);
}

#[test]
fn a_destination_that_is_a_symlink_is_refused_and_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    // A forged marker behind the link must not make the pull a "no-op" either.
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read("demo/tiny-model.oci/index.json").unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    fs::write(elsewhere.join(COMPLETE_MARKER), format!(r#"{{"manifestDigest":"{digest}","reference":"x","files":0,"bytes":0,"completedAt":"x"}}"#)).unwrap();
    let dest = tmp.path().join("model");
    std::os::unix::fs::symlink(&elsewhere, &dest).unwrap();
    let out = pull("oci:demo/tiny-model.oci:v1", &dest, &["--no-progress"]);
    assert_failure_contains(&out, &["is not a directory", "model"]);
    assert_eq!(dir_names(&elsewhere), vec![COMPLETE_MARKER.to_string()]);
}

#[test]
fn a_directory_named_like_staging_but_not_made_by_a_pull_is_not_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let squatter = tmp.path().join(".model.modelcrypt-staging");
    fs::create_dir(&squatter).unwrap();
    fs::write(squatter.join("important.txt"), b"keep me").unwrap();
    let out = pull(
        "oci:demo/tiny-model.oci:v1",
        &tmp.path().join("model"),
        &["--no-progress"],
    );
    assert_failure_contains(&out, &["not left by a pull", "refusing to delete"]);
    assert_eq!(
        fs::read(squatter.join("important.txt")).unwrap(),
        b"keep me"
    );
}

/// Without a terminal (as in a pod), logs and errors are JSON lines by default.
#[test]
fn logs_and_errors_are_json_lines_when_stdout_is_not_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("m");
    let missing = format!("oci:{}:v1", tmp.path().join("no-such-layout").display());
    let out = crate::common::Cmd::modelcrypt()
        .env_remove("MODELCRYPT_LOG_FORMAT")
        .args(["pull", &missing, "--to"])
        .arg(&dest)
        .run();
    assert!(!out.success(), "{out}");
    let lines: Vec<serde_json::Value> = out
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let last = lines.last().expect("an error event");
    assert_eq!(last["level"], "ERROR", "{out}");
    assert!(
        last["message"].as_str().unwrap().contains("no-such-layout"),
        "{out}"
    );
    assert_eq!(last["exit_code"].as_u64(), out.code().map(|c| c as u64));
    assert!(!dest.exists());
    // Silencing the logs does not silence the failure.
    let quiet = crate::common::Cmd::modelcrypt()
        .env_remove("MODELCRYPT_LOG_FORMAT")
        .env("MODELCRYPT_LOG", "off")
        .args(["pull", &missing, "--to"])
        .arg(&dest)
        .run();
    let line: serde_json::Value = serde_json::from_str(quiet.stderr.trim()).expect("one JSON line");
    assert_eq!(line["level"], "ERROR", "{quiet}");

    // The summary is an event too; `--log-format text` brings the human form back.
    let demo = format!("oci:{}/demo/tiny-model.oci:v1", env!("CARGO_MANIFEST_DIR"));
    let ok = crate::common::Cmd::modelcrypt()
        .env_remove("MODELCRYPT_LOG_FORMAT")
        .args(["pull", &demo, "--to"])
        .arg(&dest)
        .run();
    assert_success(&ok);
    let summary = ok
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "pulled")
        .unwrap_or_else(|| panic!("no summary event: {ok}"));
    assert_eq!(summary["level"], "INFO");
    assert_eq!(summary["files"], 7, "{ok}");
    let text = crate::common::Cmd::modelcrypt()
        .args(["--log-format", "text", "pull", &demo, "--to"])
        .arg(&dest)
        .run();
    assert_success(&text);
    assert!(text.stderr.contains("nothing to do"), "{text}");
    assert!(!text.stderr.trim_start().starts_with('{'), "{text}");
}

/// A volume too small for the model is refused before anything is fetched, with the size
/// needed in the message.
#[test]
fn a_volume_too_small_is_refused_up_front_with_the_size_needed() {
    if !rustix::process::geteuid().is_root() {
        println!("SKIPPED: mounting a tmpfs needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let volume = tmp.path().join("volume");
    fs::create_dir(&volume).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=40k", "tmpfs"])
        .arg(&volume)
        .status()
        .unwrap();
    assert!(status.success());
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(volume.clone());

    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo");
    let needed: u64 = model_files(&demo.join("tiny-model"))
        .values()
        .map(|f| f.size)
        .sum();
    let out = pull(
        &format!("oci:{}:v1", demo.join("tiny-model.oci").display()),
        &volume.join("m"),
        &[],
    );
    assert_failure_contains(
        &out,
        &["the model needs at least", &format!("({needed} bytes)")],
    );
    assert!(out.stderr.contains("nothing was fetched"), "{out}");
    assert_eq!(dir_names(&volume), Vec::<String>::new(), "nothing left");
}

/// With two slots (one for large layers, one for small), the small layers are not queued
/// behind the large one: they land while it is still in transfer (blocked on a FIFO forever).
#[test]
fn small_layers_never_wait_behind_a_large_one() {
    let tmp = tempfile::tempdir().unwrap();
    let mut layout = OciLayoutBuilder::new(tmp.path().join("layout"));
    let big = layout.add_raw_file(
        media::WEIGHT_RAW,
        "model.safetensors",
        0o644,
        &vec![0u8; 64 << 20],
    );
    for name in ["config.json", "tokenizer.json", "vocab.json"] {
        layout.add_raw_file(media::WEIGHT_CONFIG_RAW, name, 0o644, b"{}");
    }
    layout.write("v1");
    let reference = layout.reference("v1");
    let blob = layout.blob_path(&layout.layer(big).digest.clone());
    fs::remove_file(&blob).unwrap();
    nix::unistd::mkfifo(&blob, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();

    let dest = tmp.path().join("out/m");
    let mut child = Command::new(modelcrypt_bin())
        .env("MODELCRYPT_LOG_FORMAT", "text")
        .args([
            "pull",
            &reference,
            "--no-progress",
            "--concurrency",
            "2",
            "--to",
        ])
        .arg(&dest)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let staging = tmp.path().join("out/.m.modelcrypt-staging");
    let deadline = Instant::now() + Duration::from_secs(60);
    let landed = || {
        ["config.json", "tokenizer.json", "vocab.json"]
            .iter()
            .all(|f| staging.join(f).exists())
    };
    while !landed() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the small layers waited behind the blocked large one");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "still blocked on the large layer"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Directories the artifact never lists (a raw layer's `sub/` parent) get the same readable,
/// owner-only-writable mode as listed ones, whatever the umask of the init container.
#[test]
fn implied_directories_are_not_group_writable_under_a_permissive_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let mut layout = OciLayoutBuilder::new(tmp.path().join("layout"));
    layout.add_raw_file(media::WEIGHT_RAW, "sub/deeper/w.safetensors", 0o644, b"w");
    layout.write("v1");
    let dest = tmp.path().join("out/m");
    let out = crate::common::Cmd::new("sh")
        .env("MODELCRYPT_LOG_FORMAT", "text")
        .args(["-c", "umask 000 && exec \"$0\" \"$@\"", modelcrypt_bin()])
        .args(["pull", &layout.reference("v1"), "--to"])
        .arg(&dest)
        .run();
    assert_success(&out);
    for dir in [dest.clone(), dest.join("sub"), dest.join("sub/deeper")] {
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755, "{}", dir.display());
    }
    let file = fs::metadata(dest.join("sub/deeper/w.safetensors")).unwrap();
    assert_eq!(file.permissions().mode() & 0o7777, 0o644);
}
