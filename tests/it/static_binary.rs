//! The shipped binary is static and needs nothing from its root file system but CA
//! certificates: run it in an empty root (chroot) holding only itself, the certificates and a
//! tmpfs, and pull an encrypted artifact from a loopback registry into that tmpfs.

use std::fs;
use std::path::{Path, PathBuf};

use crate::common::{
    assert_success, make_model_dir, model_files, modelcrypt, require_peer, Cmd, TestRegistry,
};

/// Where `cargo build --release --target x86_64-unknown-linux-musl` puts the binary.
pub(crate) fn static_binary() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/x86_64-unknown-linux-musl/release/modelcrypt");
    if path.is_file() {
        return Some(path);
    }
    if std::env::var("MODELCRYPT_REQUIRE_PEERS").as_deref() == Ok("1") {
        panic!(
            "{} is missing: CI builds it before the tests",
            path.display()
        );
    }
    println!("SKIPPED: no static binary at {}", path.display());
    None
}

/// Unmounts the tmpfs even when the test fails.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn the_static_binary_pulls_an_encrypted_artifact_inside_an_empty_root() {
    let Some(binary) = static_binary() else {
        return;
    };
    if !rustix::process::geteuid().is_root() {
        println!("SKIPPED: chroot and mount need root");
        return;
    }
    if !require_peer("docker-registry") {
        return;
    }
    // `file`-free check that it is static: no ELF interpreter.
    let elf = fs::read(&binary).unwrap();
    assert!(
        !elf.windows(b"/lib64/ld-linux".len())
            .any(|w| w == b"/lib64/ld-linux"),
        "dynamically linked"
    );

    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let model = make_model_dir(tmp.path());
    let kek = tmp.path().join("kek.bin");
    assert_success(&modelcrypt([
        "keygen",
        "--type",
        "kek",
        "--out",
        kek.to_str().unwrap(),
    ]));
    let plain = format!("oci:{}:v1", tmp.path().join("plain").display());
    assert_success(&modelcrypt(["pack", model.to_str().unwrap(), &plain]));
    let reference = reg.reference("models/static:v1");
    assert_success(&modelcrypt([
        "--plain-http",
        "encrypt",
        &plain,
        &reference,
        "--recipient",
        "kbs:///default/key/1",
        "--kek",
        kek.to_str().unwrap(),
    ]));

    // The root: the binary, CA certificates, the KEK (a mounted secret in a pod), a tmpfs.
    let root = tmp.path().join("root");
    fs::create_dir_all(root.join("etc/ssl/certs")).unwrap();
    fs::create_dir_all(root.join("models")).unwrap();
    fs::create_dir_all(root.join("secrets")).unwrap();
    fs::copy(&binary, root.join("modelcrypt")).unwrap();
    if let Ok(ca) = fs::read("/etc/ssl/certs/ca-certificates.crt") {
        fs::write(root.join("etc/ssl/certs/ca-certificates.crt"), ca).unwrap();
    }
    fs::copy(&kek, root.join("secrets/kek.bin")).unwrap();
    let models = root.join("models");
    assert_success(
        &Cmd::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
            .arg(&models)
            .run(),
    );
    let _mount = Mount(models);

    let out = Cmd::new("chroot")
        .arg(&root)
        .args([
            "/modelcrypt",
            "--plain-http",
            "pull",
            &reference,
            "--to",
            "/models/tiny",
            "--kek",
            "/secrets/kek.bin",
            "--preserve-modes",
        ])
        .run();
    assert_success(&out);
    assert_eq!(model_files(&root.join("models/tiny")), model_files(&model));
    let entries: Vec<String> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut entries = entries;
    entries.sort();
    assert_eq!(
        entries,
        ["etc", "modelcrypt", "models", "secrets"],
        "the root holds nothing else"
    );
}
