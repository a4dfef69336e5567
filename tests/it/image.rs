//! The init-container image: `make image-context` + `podman build -f Containerfile` make an
//! image whose file system holds only the static binary, CA certificates and the user entries,
//! that runs as uid 65532, and whose binary pulls the encrypted demo inside `podman run`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::{assert_success, model_files, require_peer, Cmd};

use super::static_binary::static_binary;

const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Removes the test's image even when the test fails.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::process::Command::new("podman")
            .args(["rmi", "--force", &self.0])
            .output();
    }
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `podman` with the flags these machines need to run containers (runc, bounded ulimits).
fn podman() -> Cmd {
    Cmd::new("podman")
}

/// Every regular file of every layer of an OCI layout's only image, with its bytes, and the
/// image config.
fn image_files(layout: &Path) -> (BTreeMap<String, Vec<u8>>, Value) {
    let read_json = |digest: &str| -> Value {
        let hex = digest.trim_start_matches("sha256:");
        serde_json::from_slice(&fs::read(layout.join("blobs/sha256").join(hex)).unwrap()).unwrap()
    };
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest = read_json(index["manifests"][0]["digest"].as_str().unwrap());
    let config = read_json(manifest["config"]["digest"].as_str().unwrap());
    let mut files = BTreeMap::new();
    for layer in manifest["layers"].as_array().unwrap() {
        let hex = layer["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:");
        let raw = fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
        let tar_bytes = if raw.starts_with(&[0x1f, 0x8b]) {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&raw[..])
                .read_to_end(&mut out)
                .unwrap();
            out
        } else {
            raw
        };
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            let path = path
                .trim_start_matches("./")
                .trim_start_matches('/')
                .to_string();
            match entry.header().entry_type() {
                tar::EntryType::Directory => {}
                tar::EntryType::Regular => {
                    let mut bytes = Vec::new();
                    entry.read_to_end(&mut bytes).unwrap();
                    files.insert(path, bytes);
                }
                other => panic!("unexpected {other:?} entry `{path}` in the image"),
            }
        }
    }
    (files, config)
}

#[test]
fn podman_builds_the_image_from_the_containerfile_and_it_pulls_the_demo() {
    let Some(binary) = static_binary() else {
        return;
    };
    if !require_peer("podman") || !require_peer("make") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();

    // The Makefile's recipe fills the build context; CARGO=true skips the (done) build.
    let context = tmp.path().join("context");
    let out = Cmd::new("make")
        .current_dir(repo())
        .arg("image-context")
        .arg("CARGO=true")
        .arg(format!("IMAGE_CONTEXT={}", context.display()))
        .arg(format!("STATIC_BIN={}", binary.display()))
        .run();
    assert_success(&out);

    let tag = format!("localhost/modelcrypt-init-test:{}", std::process::id());
    let image = Image(tag.clone());
    let out = podman()
        .args(["build", "-q", "-f"])
        .arg(repo().join("Containerfile"))
        .args(["-t", &image.0])
        .arg(&context)
        .run();
    assert_success(&out);

    // The image's file system: the binary, the certificates and the user entries, nothing else.
    let saved = tmp.path().join("saved");
    let out = podman()
        .args(["save", "--format", "oci-dir", "-o"])
        .arg(&saved)
        .arg(&tag)
        .run();
    assert_success(&out);
    let (files, config) = image_files(&saved);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "etc/group",
            "etc/passwd",
            "etc/ssl/certs/ca-certificates.crt",
            "modelcrypt"
        ]
    );
    assert!(
        files["modelcrypt"] == fs::read(&binary).unwrap(),
        "the binary differs"
    );
    assert!(files["etc/ssl/certs/ca-certificates.crt"] == fs::read(CA_BUNDLE).unwrap());
    let passwd = String::from_utf8(files["etc/passwd"].clone()).unwrap();
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("nonroot:x:65532:65532:")),
        "{passwd}"
    );
    assert_eq!(config["config"]["User"], "65532:65532");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/modelcrypt"])
    );

    // The image runs as its non-root user, with no network, and pulls the encrypted demo.
    let demo = tmp.path().join("demo");
    let out_dir = tmp.path().join("out");
    for (dir, what) in [(&demo, "demo"), (&out_dir, "out")] {
        fs::create_dir(dir).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    copy_tree(
        &repo().join("demo/tiny-model-encrypted.oci"),
        &demo.join("layout"),
    );
    fs::copy(repo().join("demo/keys/demo.pem"), demo.join("demo.pem")).unwrap();
    chown_tree(&demo);
    chown_tree(&out_dir);
    let out = podman()
        .args([
            "--runtime",
            "runc",
            "run",
            "--rm",
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "-v",
        ])
        .arg(format!("{}:/demo:ro", demo.display()))
        .arg("-v")
        .arg(format!("{}:/models", out_dir.display()))
        .arg(&tag)
        .args([
            "pull",
            "oci:/demo/layout:v1",
            "--decryption-key",
            "/demo/demo.pem",
            "--to",
            "/models/tiny",
        ])
        .run();
    assert_success(&out);
    // Not a terminal: the summary is a JSON event.
    assert!(
        out.stderr
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|v| v["message"] == "pulled" && v["files"] == 7),
        "{out}"
    );
    let pulled = model_files(&out_dir.join("tiny"));
    let expected = model_files(&repo().join("demo/tiny-model"));
    assert_eq!(pulled.len(), expected.len());
    for (path, fact) in &expected {
        assert_eq!(pulled[path].sha256, fact.sha256, "{path}");
        let mode = fs::metadata(out_dir.join("tiny").join(path))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o444, 0o444, "{path} is readable by vLLM's user");
    }
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target: PathBuf = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The container's user (65532) must read the inputs and write the output.
fn chown_tree(dir: &Path) {
    let status = std::process::Command::new("chown")
        .args(["-R", "65532:65532"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success());
}
