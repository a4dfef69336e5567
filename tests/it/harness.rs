//! Tests of the test harness itself (tests/common/mod.rs), against real peers where one exists,
//! so that a failing modelcrypt test can be trusted to blame modelcrypt: the registry starts,
//! restarts and serves what was pushed (and what was tampered with on disk), the hand-written
//! OCI layouts are read by real skopeo, the hostile tar builder writes exactly the bytes it was
//! told to, and the fixtures are deterministic.
//!
//! Does not run modelcrypt.

use std::fs;
use std::os::unix::fs::symlink;
use std::time::Duration;

use crate::common::{
    annotation, assert_failure_contains, assert_success, gzip, http_request, make_model_dir, media,
    model_file_contents, pseudo_random_bytes, require_peer, sha256_digest, sha256_hex, skopeo,
    tree_snapshot, Cmd, FileKind, OciLayoutBuilder, TarBuilder, TestRegistry, COMPLETE_MARKER,
    MODEL_FILES, MODEL_HIDDEN_FILES, MODEL_TENSOR_BYTES,
};

// ------------------------------------------------------------------------------------------------
// TestRegistry
// ------------------------------------------------------------------------------------------------

#[test]
fn test_registry_answers_the_v2_endpoint_on_loopback() {
    if !require_peer("docker-registry") {
        return;
    }
    let registry = TestRegistry::start();
    assert!(
        registry.host().starts_with("127.0.0.1:"),
        "{}",
        registry.host()
    );
    assert_eq!(
        registry.reference("models/tiny:v1"),
        format!("docker://{}/models/tiny:v1", registry.host())
    );
    let resp = http_request("GET", &registry.url("/v2/"), &[], &[]).expect("GET /v2/");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        resp.header("Docker-Distribution-Api-Version"),
        Some("registry/2.0")
    );
}

#[test]
fn test_registry_restart_keeps_its_port_and_storage() {
    if !require_peer("docker-registry") {
        return;
    }
    let mut registry = TestRegistry::start();
    let bytes = pseudo_random_bytes(b"restart", 10_000);
    let digest = registry.push_blob("harness/restart", &bytes);
    assert_eq!(
        fs::read(registry.blob_data_path(&digest)).expect("stored blob"),
        bytes
    );
    let host = registry.host();

    registry.stop();
    assert!(!registry.is_running());
    assert!(
        http_request("GET", &registry.url("/v2/"), &[], &[]).is_err(),
        "still answering"
    );

    registry.restart();
    assert_eq!(registry.host(), host);
    let blob_url = registry.url(&format!("/v2/harness/restart/blobs/{digest}"));
    let head = http_request("HEAD", &blob_url, &[], &[]).expect("HEAD blob");
    assert_eq!(head.status, 200, "{head:?}\n{}", registry.log());
    assert_eq!(
        head.header("Content-Length"),
        Some(bytes.len().to_string().as_str())
    );
    let get = http_request("GET", &blob_url, &[], &[]).expect("GET blob");
    assert_eq!(get.status, 200);
    assert_eq!(get.body, bytes);
}

#[test]
fn layout_pushed_to_the_test_registry_is_served_back_and_tampering_on_disk_shows() {
    if !require_peer("docker-registry") {
        return;
    }
    let registry = TestRegistry::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let weights = pseudo_random_bytes(b"push", 50_000);
    let mut layout = OciLayoutBuilder::new(tmp.path().join("layout"));
    let layer = layout.add_raw_file(media::WEIGHT_RAW, "model.safetensors", 0o644, &weights);
    let manifest_digest = layout.write("v1");
    let (_, manifest_bytes) = layout.manifest().expect("written");
    let manifest_bytes = manifest_bytes.to_vec();

    let pushed = registry.push_layout(layout.dir(), "v1", "harness/push:v1");
    assert_eq!(pushed, manifest_digest);
    let get = http_request(
        "GET",
        &registry.url("/v2/harness/push/manifests/v1"),
        &[("Accept", media::OCI_MANIFEST)],
        &[],
    )
    .expect("GET manifest");
    assert_eq!(get.status, 200, "{get:?}");
    assert_eq!(
        get.header("Docker-Content-Digest"),
        Some(manifest_digest.as_str())
    );
    assert_eq!(
        get.body, manifest_bytes,
        "the registry must serve the manifest byte for byte"
    );

    if require_peer("skopeo") {
        let out = skopeo([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &registry.reference("harness/push:v1"),
        ]);
        assert_success(&out);
        assert_eq!(out.stdout_bytes, manifest_bytes);
    }

    // Tamper through the storage root: same length, different bytes. The registry serves the
    // file as it is, which is what registry tamper tests rely on.
    let digest = layout.layer(layer).digest.clone();
    let mut tampered = weights.clone();
    tampered[0] ^= 0xff;
    fs::write(registry.blob_data_path(&digest), &tampered).expect("tamper stored blob");
    let blob = http_request(
        "GET",
        &registry.url(&format!("/v2/harness/push/blobs/{digest}")),
        &[],
        &[],
    )
    .expect("GET blob");
    assert_eq!(blob.status, 200, "{blob:?}");
    assert_eq!(blob.body, tampered);
}

// ------------------------------------------------------------------------------------------------
// OciLayoutBuilder against real skopeo
// ------------------------------------------------------------------------------------------------

fn three_layer_layout(dir: &std::path::Path) -> (OciLayoutBuilder, Vec<u8>) {
    let mut layout = OciLayoutBuilder::new(dir);
    layout.add_raw_file(
        media::WEIGHT_CONFIG_RAW,
        "config.json",
        0o644,
        &model_file_contents("config.json"),
    );
    let mut tar = TarBuilder::new();
    tar.file(
        "scripts/convert.py",
        0o755,
        &model_file_contents("scripts/convert.py"),
    );
    layout.add_layer(media::CODE_TAR, &tar.finish(), &[]);
    let mut tar = TarBuilder::new();
    tar.file("README.md", 0o644, &model_file_contents("README.md"));
    let plain = tar.finish();
    layout.add_layer(media::WEIGHT_TAR_GZIP, &gzip(&plain), &[]);
    (layout, plain)
}

#[test]
fn oci_layout_builder_writes_a_layout_that_real_skopeo_reads() {
    if !require_peer("skopeo") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut layout, plain_tar) = three_layer_layout(&tmp.path().join("layout"));
    let manifest_digest = layout.write("v1");
    let (_, manifest_bytes) = layout.manifest().expect("written");
    assert_eq!(sha256_digest(manifest_bytes), manifest_digest);

    let raw = skopeo(["inspect", "--raw", &layout.reference("v1")]);
    assert_success(&raw);
    assert_eq!(
        raw.stdout_bytes, manifest_bytes,
        "skopeo must find the manifest by tag"
    );
    let manifest: serde_json::Value = serde_json::from_slice(&raw.stdout_bytes).expect("JSON");
    assert_eq!(manifest["artifactType"], media::ARTIFACT);
    assert_eq!(manifest["config"]["mediaType"], media::CONFIG);
    assert_eq!(
        manifest["layers"][0]["annotations"][annotation::FILEPATH],
        "config.json"
    );
    let metadata: serde_json::Value = serde_json::from_str(
        manifest["layers"][0]["annotations"][annotation::FILE_METADATA]
            .as_str()
            .expect("string"),
    )
    .expect("file metadata is JSON");
    assert_eq!(metadata["mode"], 0o644);
    assert_eq!(metadata["name"], "config.json");

    let config = skopeo(["inspect", "--raw", "--config", &layout.reference("v1")]);
    assert_success(&config);
    let config: serde_json::Value = serde_json::from_slice(&config.stdout_bytes).expect("JSON");
    assert_eq!(config["modelfs"]["type"], "layers");
    let diff_ids = config["modelfs"]["diffIds"].as_array().expect("diffIds");
    assert_eq!(diff_ids.len(), 3);
    assert_eq!(
        diff_ids[2],
        sha256_digest(&plain_tar),
        "diffIds hold uncompressed digests"
    );

    // A copy to skopeo's dir: format reads and verifies every blob.
    let copied = tmp.path().join("copied");
    let copy = skopeo([
        "copy",
        &layout.reference("v1"),
        &format!("dir:{}", copied.display()),
    ]);
    assert_success(&copy);
    assert_eq!(
        fs::read(copied.join("manifest.json")).expect("dir: manifest"),
        manifest_bytes
    );
}

#[test]
fn oci_layout_builder_keeps_other_tags_and_writes_legacy_media_types() {
    if !require_peer("skopeo") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("layout");
    let mut current = OciLayoutBuilder::new(&dir);
    current.add_raw_file(media::WEIGHT_RAW, "a.bin", 0o644, b"a");
    let current_digest = current.write("current");
    let mut legacy = OciLayoutBuilder::new(&dir).legacy();
    legacy.add_raw_file(media::LEGACY_WEIGHT_RAW, "b.bin", 0o644, b"b");
    let legacy_digest = legacy.write("legacy");

    let out = skopeo([
        "inspect",
        "--raw",
        &format!("oci:{}:current", dir.display()),
    ]);
    assert_success(&out);
    assert_eq!(sha256_digest(&out.stdout_bytes), current_digest);
    let out = skopeo(["inspect", "--raw", &format!("oci:{}:legacy", dir.display())]);
    assert_success(&out);
    assert_eq!(sha256_digest(&out.stdout_bytes), legacy_digest);
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout_bytes).expect("JSON");
    assert_eq!(manifest["artifactType"], media::LEGACY_ARTIFACT);
    assert_eq!(manifest["config"]["mediaType"], media::LEGACY_CONFIG);
    assert_eq!(
        manifest["layers"][0]["annotations"][annotation::LEGACY_FILEPATH],
        "b.bin"
    );
}

#[test]
fn tampered_layout_blob_is_rejected_by_real_skopeo() {
    if !require_peer("skopeo") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut layout = OciLayoutBuilder::new(tmp.path().join("layout"));
    let bytes = pseudo_random_bytes(b"tamper", 4096);
    let layer = layout.add_raw_file(media::WEIGHT_RAW, "x.bin", 0o644, &bytes);
    layout.write("v1");
    let digest = layout.layer(layer).digest.clone();
    let mut tampered = bytes;
    tampered[0] ^= 0xff;
    layout.replace_blob(&digest, &tampered);

    let dest = format!("dir:{}", tmp.path().join("copied").display());
    let out = skopeo(["copy", &layout.reference("v1"), &dest]);
    assert!(!out.success(), "skopeo accepted a tampered blob\n{out}");
    assert!(out.stderr.contains("Digest did not match"), "{out}");
    assert!(out.stderr.contains(&digest), "{out}");
}

// ------------------------------------------------------------------------------------------------
// TarBuilder
// ------------------------------------------------------------------------------------------------

#[test]
fn tar_builder_writes_names_the_checked_tar_api_refuses() {
    // The reason TarBuilder exists: the tar crate's checked setters refuse these.
    assert!(tar::Header::new_gnu().set_path("../evil").is_err());
    assert!(tar::Header::new_gnu().set_path("/abs/evil").is_err());

    let long_name = format!("{}/evil", "d".repeat(150));
    let long_target = format!("../{}", "t".repeat(150));
    let mut builder = TarBuilder::new();
    builder
        .file("../evil", 0o644, b"1")
        .file("/abs/evil", 0o644, b"2")
        .file("a/../../evil", 0o644, b"3")
        .symlink("link", "../../outside")
        .symlink("abs", "/etc")
        .symlink("d", "..")
        .file("d/evil", 0o644, b"4")
        .hardlink("hl", "../outside")
        .char_device("dev/zero", 1, 5)
        .file("bin/tool", 0o4755, b"5")
        .file(&long_name, 0o600, b"6")
        .symlink("long-link", &long_target);
    let bytes = builder.finish();

    type Seen = (String, tar::EntryType, Option<String>, u32, Vec<u8>);
    let mut archive = tar::Archive::new(bytes.as_slice());
    let mut seen: Vec<Seen> = Vec::new();
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let path = String::from_utf8(entry.path_bytes().into_owned()).expect("utf-8");
        let link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8(l.into_owned()).expect("utf-8"));
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().expect("mode");
        if kind == tar::EntryType::Char {
            assert_eq!(entry.header().device_major().expect("major"), Some(1));
            assert_eq!(entry.header().device_minor().expect("minor"), Some(5));
        }
        assert_eq!(entry.header().uid().expect("uid"), 0);
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).expect("data");
        seen.push((path, kind, link, mode, data));
    }
    use tar::EntryType::{Char, Link, Regular, Symlink};
    let s = |v: &str| v.to_owned();
    let expected: Vec<Seen> = vec![
        (s("../evil"), Regular, None, 0o644, b"1".to_vec()),
        (s("/abs/evil"), Regular, None, 0o644, b"2".to_vec()),
        (s("a/../../evil"), Regular, None, 0o644, b"3".to_vec()),
        (s("link"), Symlink, Some(s("../../outside")), 0o777, vec![]),
        (s("abs"), Symlink, Some(s("/etc")), 0o777, vec![]),
        (s("d"), Symlink, Some(s("..")), 0o777, vec![]),
        (s("d/evil"), Regular, None, 0o644, b"4".to_vec()),
        (s("hl"), Link, Some(s("../outside")), 0o644, vec![]),
        (s("dev/zero"), Char, None, 0o666, vec![]),
        (s("bin/tool"), Regular, None, 0o4755, b"5".to_vec()),
        (long_name.clone(), Regular, None, 0o600, b"6".to_vec()),
        (
            s("long-link"),
            Symlink,
            Some(long_target.clone()),
            0o777,
            vec![],
        ),
    ];
    assert_eq!(seen, expected);
}

// ------------------------------------------------------------------------------------------------
// Fixtures and observation helpers
// ------------------------------------------------------------------------------------------------

#[test]
fn model_dir_fixture_is_deterministic_and_has_the_documented_modes() {
    let a = tempfile::tempdir().expect("tempdir");
    let b = tempfile::tempdir().expect("tempdir");
    let dir_a = make_model_dir(a.path());
    let dir_b = make_model_dir(b.path());
    let tree = tree_snapshot(&dir_a, false);
    assert_eq!(
        tree,
        tree_snapshot(&dir_b, false),
        "two fixtures must be identical"
    );

    for (name, mode) in MODEL_FILES {
        let fact = &tree[*name];
        assert_eq!(fact.kind, FileKind::File, "{name}");
        assert_eq!(fact.mode, *mode, "{name}");
        assert_eq!(
            fact.sha256.as_deref(),
            Some(sha256_hex(&model_file_contents(name)).as_str())
        );
    }
    for hidden in MODEL_HIDDEN_FILES {
        assert_eq!(tree[*hidden].kind, FileKind::File, "{hidden}");
    }
    assert_eq!(tree["scripts"].mode, 0o755);

    let weights = fs::read(dir_a.join("model.safetensors")).expect("weights");
    let header_len = u64::from_le_bytes(weights[..8].try_into().expect("8 bytes")) as usize;
    assert_eq!(header_len % 8, 0);
    let header: serde_json::Value =
        serde_json::from_slice(&weights[8..8 + header_len]).expect("safetensors header is JSON");
    assert_eq!(header["model.embed_tokens.weight"]["dtype"], "BF16");
    assert_eq!(weights.len(), 8 + header_len + MODEL_TENSOR_BYTES);
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(dir_a.join("config.json")).expect("config"))
            .expect("JSON");
    assert_eq!(config["model_type"], "qwen3");
}

#[test]
fn tree_snapshot_records_kind_mode_hash_and_link_target() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    crate::common::write_file(&root.join("sub/file"), b"hello", 0o640);
    symlink("sub/file", root.join("link")).expect("symlink");
    fs::write(root.join(COMPLETE_MARKER), b"{}").expect("marker");

    let all = tree_snapshot(root, false);
    assert_eq!(
        all.keys().collect::<Vec<_>>(),
        [COMPLETE_MARKER, "link", "sub", "sub/file"]
    );
    assert_eq!(all["sub"].kind, FileKind::Dir);
    assert_eq!(all["sub/file"].kind, FileKind::File);
    assert_eq!(all["sub/file"].size, 5);
    assert_eq!(all["sub/file"].mode, 0o640);
    assert_eq!(
        all["sub/file"].sha256.as_deref(),
        Some(sha256_hex(b"hello").as_str())
    );
    assert_eq!(all["link"].kind, FileKind::Symlink);
    assert_eq!(all["link"].link_target.as_deref(), Some("sub/file"));

    let without_marker = tree_snapshot(root, true);
    assert!(!without_marker.contains_key(COMPLETE_MARKER));
    assert_eq!(without_marker.len(), 3);
}

#[test]
fn cmd_captures_output_and_exit_code_without_a_tty() {
    let out = Cmd::new("sh")
        .arg("-c")
        .arg(concat!(
            "echo out; test -t 0 || echo no-tty; echo \"$NO_COLOR\"; ",
            "echo 'error: boom `x`' >&2; exit 3",
        ))
        .run();
    assert_eq!(out.code(), Some(3));
    assert_eq!(out.stdout, "out\nno-tty\n1\n");
    assert_failure_contains(&out, &["boom", "`x`"]);
}

#[test]
fn cmd_kills_a_program_that_outlives_its_timeout() {
    let result = Cmd::new("sh")
        .args(["-c", "echo started; exec tail -f /dev/null"])
        .timeout(Duration::from_millis(300))
        .try_run();
    let Err(message) = result else {
        panic!("the run must time out")
    };
    assert!(message.contains("did not finish"), "{message}");
    assert!(
        message.contains("started"),
        "partial output is reported: {message}"
    );
}

#[test]
fn require_peer_finds_an_installed_program() {
    assert!(require_peer("sh"));
}
