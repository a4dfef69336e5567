//! Encrypted artifacts (ocicrypt) end to end: KEK recipients (the Confidential Containers
//! keyprovider annotation) through a real registry, and every way an encrypted layer can be
//! wrong: a flipped byte, a wrong key, a missing pubopts annotation, trailing bytes a tar
//! reader never asks for. Each failure must leave nothing at the destination.

use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::common::{
    assert_failure_contains, assert_success, dir_names, layout_manifest as manifest_of,
    make_model_dir, model_files, modelcrypt, require_peer, sha256_digest,
    write_layout_manifest as write_manifest, OciLayoutBuilder, TarBuilder, TestRegistry,
};

fn run_ok(args: &[&str]) -> String {
    let out = modelcrypt(args);
    assert_success(&out);
    out.stdout.trim().to_string()
}

fn keygen_kek(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    run_ok(&["keygen", "--type", "kek", "--out", path.to_str().unwrap()]);
    path.display().to_string()
}

/// Encrypts `src` into `dest` for `kbs:///default/key/1` under `kek`; returns the digest.
fn encrypt_for_kek(src: &str, dest: &str, kek: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "encrypt",
        src,
        dest,
        "--recipient",
        "kbs:///default/key/1",
        "--kek",
        kek,
    ];
    args.extend_from_slice(extra);
    run_ok(&args)
}

fn pull_with_kek(reference: &str, dest: &Path, kek: &str) -> crate::common::RunOutput {
    modelcrypt([
        "pull",
        reference,
        "--to",
        dest.to_str().unwrap(),
        "--kek",
        kek,
    ])
}

/// Edits the blob of layer `index` in a layout, stores it under its new digest and points
/// the manifest at it, as an attacker who controls the registry and the tag would.
fn rewrite_layer_blob(layout: &Path, index: usize, edit: impl FnOnce(&mut Vec<u8>)) -> String {
    let (_, mut m) = manifest_of(layout);
    let digest = m["layers"][index]["digest"].as_str().unwrap().to_string();
    let mut bytes = fs::read(layout.join("blobs/sha256").join(&digest[7..])).unwrap();
    edit(&mut bytes);
    let new = sha256_digest(&bytes);
    fs::write(layout.join("blobs/sha256").join(&new[7..]), &bytes).unwrap();
    m["layers"][index]["digest"] = Value::String(new);
    write_manifest(layout, &m);
    digest
}

/// Packs the fixture model and encrypts it for `kbs:///default/key/1` into `oci:<tmp>/enc:v1`.
fn encrypted_layout(tmp: &Path, kek: &str, pack_flags: &[&str]) -> String {
    let model = make_model_dir(tmp);
    let plain = format!("oci:{}:v1", tmp.join("plain").display());
    let mut args = vec!["pack", model.to_str().unwrap(), &plain];
    args.extend_from_slice(pack_flags);
    run_ok(&args);
    let enc = format!("oci:{}:v1", tmp.join("enc").display());
    run_ok(&[
        "encrypt",
        &plain,
        &enc,
        "--recipient",
        "kbs:///default/key/1",
        "--kek",
        kek,
    ]);
    enc
}

#[test]
fn keygen_writes_a_kek_readable_only_by_its_owner() {
    let tmp = tempfile::tempdir().unwrap();
    let kek = keygen_kek(tmp.path(), "k.bin");
    let meta = fs::metadata(&kek).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 32);
    let again = modelcrypt(["keygen", "--type", "kek", "--out", &kek]);
    assert_failure_contains(&again, &["k.bin"]);
    assert_ne!(fs::read(&kek).unwrap(), vec![0u8; 32]);
}

#[test]
fn a_kek_encrypted_artifact_round_trips_through_the_registry() {
    if !require_peer("docker-registry") {
        return;
    }
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let kek = keygen_kek(tmp.path(), "kek.bin");
    let model = make_model_dir(tmp.path());
    let plain = format!("oci:{}:v1", tmp.path().join("plain").display());
    run_ok(&["pack", model.to_str().unwrap(), &plain]);
    let remote = reg.reference("models/enc:v1");
    run_ok(&[
        "--plain-http",
        "encrypt",
        &plain,
        &remote,
        "--recipient",
        "kbs:///default/key/1",
        "--kek",
        &kek,
    ]);

    let out = modelcrypt(["--plain-http", "inspect", &remote, "--json"]);
    assert_success(&out);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    for layer in v["manifest"]["layers"].as_array().unwrap() {
        let mt = layer["mediaType"].as_str().unwrap();
        assert!(
            mt.starts_with("application/vnd.cncf.model.") && mt.ends_with("+encrypted"),
            "{mt}"
        );
        let a = &layer["annotations"];
        assert!(a["org.opencontainers.image.enc.pubopts"].is_string());
        assert!(a["org.opencontainers.image.enc.keys.provider.attestation-agent"].is_string());
        assert!(
            a["org.cncf.model.filepath"].is_string(),
            "other annotations are kept"
        );
    }
    // The stored weights are not the plaintext.
    let weights = fs::read(model.join("model.safetensors")).unwrap();
    assert!(
        !reg_holds_blob(&reg, &sha256_digest(&weights)),
        "the plaintext weights were uploaded"
    );

    let dest = tmp.path().join("out/model");
    let out = modelcrypt([
        "--plain-http",
        "pull",
        &remote,
        "--to",
        dest.to_str().unwrap(),
        "--kek",
        &kek,
    ]);
    assert_success(&out);
    assert_eq!(model_files(&dest), model_files(&model));
}

fn reg_holds_blob(reg: &TestRegistry, digest: &str) -> bool {
    reg.blob_data_path(digest).exists()
}

#[test]
fn decrypt_restores_the_original_manifest_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let kek = keygen_kek(tmp.path(), "kek.bin");
    let model = make_model_dir(tmp.path());
    let plain = format!("oci:{}:v1", tmp.path().join("plain").display());
    let plain_digest = run_ok(&["pack", model.to_str().unwrap(), &plain]);
    let enc = format!("oci:{}:v1", tmp.path().join("enc").display());
    let enc_digest = encrypt_for_kek(&plain, &enc, &kek, &[]);
    assert_ne!(enc_digest, plain_digest);
    let dec = format!("dir:{}", tmp.path().join("dec").display());
    let dec_digest = run_ok(&["decrypt", &enc, &dec, "--kek", &kek]);
    assert_eq!(dec_digest, plain_digest);
}

#[test]
fn only_the_selected_layers_are_encrypted() {
    let tmp = tempfile::tempdir().unwrap();
    let kek = keygen_kek(tmp.path(), "kek.bin");
    let model = make_model_dir(tmp.path());
    let plain = format!("oci:{}:v1", tmp.path().join("plain").display());
    run_ok(&["pack", model.to_str().unwrap(), &plain]);
    let enc = format!("oci:{}:v1", tmp.path().join("enc").display());
    run_ok(&[
        "encrypt",
        &plain,
        &enc,
        "--recipient",
        "kbs:///default/key/1",
        "--kek",
        &kek,
        "--encrypt-layer",
        "model.safetensors",
        "--encrypt-layer",
        "-1",
    ]);
    let out = modelcrypt(["inspect", &enc, "--json"]);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    let encrypted: Vec<&str> = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["encrypted"] == true)
        .map(|l| l["filepath"].as_str().unwrap())
        .collect();
    assert_eq!(encrypted, vec!["model.safetensors", "README.md"]);
    // With keys, plain layers are refused unless asked for: they would be delivered unchecked.
    assert_pull_fails_cleanly(
        tmp.path(),
        &enc,
        &["--kek", &kek],
        &["not encrypted", "--allow-plain-layers"],
    );
    let dest = tmp.path().join("m");
    let args = [
        "pull",
        &enc,
        "--to",
        dest.to_str().unwrap(),
        "--kek",
        &kek,
        "--allow-plain-layers",
    ];
    assert_success(&modelcrypt(args));
    assert_eq!(model_files(&dest), model_files(&model));
}

fn weights_index(manifest: &Value) -> usize {
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .position(|l| l["annotations"]["org.cncf.model.filepath"] == "model.safetensors")
        .unwrap()
}

/// Flips one byte of the weights ciphertext; with `fix_digest` the descriptor is updated too,
/// as an attacker who controls the registry and the tag would do.
fn flip_weights_byte(layout: &Path, fix_digest: bool) -> String {
    let (_, m) = manifest_of(layout);
    let i = weights_index(&m);
    if fix_digest {
        return rewrite_layer_blob(layout, i, |b| b[4321] ^= 0x80);
    }
    let digest = m["layers"][i]["digest"].as_str().unwrap().to_string();
    let path = layout.join("blobs/sha256").join(&digest[7..]);
    let mut bytes = fs::read(&path).unwrap();
    bytes[4321] ^= 0x80;
    fs::write(&path, &bytes).unwrap();
    digest
}

fn assert_pull_fails_cleanly(tmp: &Path, reference: &str, extra: &[&str], fragments: &[&str]) {
    let parent = tmp.join("out");
    fs::create_dir_all(&parent).unwrap();
    let dest = parent.join("model");
    let mut args = vec![
        "pull",
        reference,
        "--to",
        dest.to_str().unwrap(),
        "--no-progress",
    ];
    args.extend_from_slice(extra);
    let out = modelcrypt(&args);
    assert_failure_contains(&out, fragments);
    assert!(
        dir_names(&parent).is_empty(),
        "left behind: {:?}",
        dir_names(&parent)
    );
}

#[test]
fn a_flipped_ciphertext_byte_fails_the_digest_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let kek = keygen_kek(tmp.path(), "kek.bin");
    let enc = encrypted_layout(tmp.path(), &kek, &[]);
    let digest = flip_weights_byte(&tmp.path().join("enc"), false);
    assert_pull_fails_cleanly(
        tmp.path(),
        &enc,
        &["--kek", &kek],
        &["digest mismatch", &digest],
    );
}

#[test]
fn a_flipped_ciphertext_byte_under_a_rewritten_digest_fails_the_hmac_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let kek = keygen_kek(tmp.path(), "kek.bin");
    let enc = encrypted_layout(tmp.path(), &kek, &[]);
    flip_weights_byte(&tmp.path().join("enc"), true);
    assert_pull_fails_cleanly(
        tmp.path(),
        &enc,
        &["--kek", &kek],
        &["HMAC", "model.safetensors"],
    );
}

#[test]
fn a_wrong_kek_is_refused_before_anything_is_fetched() {
    let tmp = tempfile::tempdir().unwrap();
    let kek = keygen_kek(tmp.path(), "kek.bin");
    let wrong = keygen_kek(tmp.path(), "wrong.bin");
    let enc = encrypted_layout(tmp.path(), &kek, &[]);
    assert_pull_fails_cleanly(
        tmp.path(),
        &enc,
        &["--kek", &wrong],
        &["no key fits", "kbs:///default/key/1"],
    );
    assert_pull_fails_cleanly(tmp.path(), &enc, &[], &["encrypted", "--decryption-key"]);
}

#[test]
fn a_missing_pubopts_annotation_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let kek = keygen_kek(tmp.path(), "kek.bin");
    let enc = encrypted_layout(tmp.path(), &kek, &[]);
    let layout = tmp.path().join("enc");
    let (_, mut m) = manifest_of(&layout);
    let i = weights_index(&m);
    m["layers"][i]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove("org.opencontainers.image.enc.pubopts");
    write_manifest(&layout, &m);
    assert_pull_fails_cleanly(
        tmp.path(),
        &enc,
        &["--kek", &kek],
        &["org.opencontainers.image.enc.pubopts"],
    );
}

/// A tar reader stops at the end-of-archive blocks; bytes after them are still ciphertext the
/// HMAC covers, so the pull must read them and fail when one of them was changed.
#[test]
fn the_hmac_covers_bytes_after_the_end_of_the_tar_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let kek = keygen_kek(tmp.path(), "kek.bin");
    let mut tar = TarBuilder::new();
    tar.file("weights.bin", 0o644, &vec![7u8; 10_000]);
    let mut tar = tar.finish();
    let archive_len = tar.len();
    tar.extend_from_slice(&vec![0u8; 8192]);
    let mut b = OciLayoutBuilder::new(tmp.path().join("plain"));
    b.add_layer("application/vnd.cncf.model.weight.v1.tar", &tar, &[]);
    b.write("v1");
    let plain = b.reference("v1");
    let enc = format!("oci:{}:v1", tmp.path().join("enc").display());
    encrypt_for_kek(&plain, &enc, &kek, &[]);

    // Untouched, it pulls.
    let ok = tmp.path().join("ok");
    assert_success(&pull_with_kek(&enc, &ok, &kek));
    assert_eq!(fs::read(ok.join("weights.bin")).unwrap(), vec![7u8; 10_000]);

    // Flip a byte in the trailing zeros (still a valid-looking tail) and fix the digest.
    rewrite_layer_blob(&tmp.path().join("enc"), 0, |b| b[archive_len + 4000] ^= 1);
    assert_pull_fails_cleanly(tmp.path(), &enc, &["--kek", &kek], &["HMAC"]);
}

#[test]
fn keygen_pairs_encrypt_and_pull_end_to_end_for_rsa_and_ec() {
    let tmp = tempfile::tempdir().unwrap();
    let model = make_model_dir(tmp.path());
    let plain = format!("oci:{}:v1", tmp.path().join("plain").display());
    run_ok(&["pack", model.to_str().unwrap(), &plain]);
    for kind in ["rsa", "ec"] {
        let private = tmp.path().join(format!("{kind}.pem"));
        run_ok(&["keygen", "--type", kind, "--out", private.to_str().unwrap()]);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&private).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{kind} private key mode");
        let public = format!("jwe:{}.pub", private.display());
        let enc = format!(
            "oci:{}:v1",
            tmp.path().join(format!("enc-{kind}")).display()
        );
        run_ok(&["encrypt", &plain, &enc, "--recipient", &public]);
        let dest = tmp.path().join(format!("out-{kind}"));
        run_ok(&[
            "pull",
            &enc,
            "--to",
            dest.to_str().unwrap(),
            "--decryption-key",
            private.to_str().unwrap(),
        ]);
        assert_eq!(model_files(&dest), model_files(&model));
    }
}

#[test]
fn encrypting_a_corrupt_source_fails_and_stores_no_blob() {
    let tmp = tempfile::tempdir().unwrap();
    let kek = keygen_kek(tmp.path(), "kek.bin");
    let model = make_model_dir(tmp.path());
    let layout = tmp.path().join("plain");
    let plain = format!("oci:{}:v1", layout.display());
    run_ok(&["pack", model.to_str().unwrap(), &plain]);
    let (_, m) = manifest_of(&layout);
    let i = weights_index(&m);
    let digest = m["layers"][i]["digest"].as_str().unwrap().to_string();
    let path = layout.join("blobs/sha256").join(&digest[7..]);
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&path, bytes).unwrap();

    let dest = tmp.path().join("enc");
    let out = modelcrypt([
        "encrypt",
        &plain,
        &format!("oci:{}:v1", dest.display()),
        "--recipient",
        "kbs:///default/key/1",
        "--kek",
        &kek,
    ]);
    assert_failure_contains(&out, &["digest mismatch", &digest]);
    // Other layers may have been stored; the weights' ciphertext must not be, and no
    // temporary file may remain. Every blob left is named by its own digest.
    if dest.join("blobs/sha256").exists() {
        for entry in fs::read_dir(dest.join("blobs/sha256")).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            assert!(!name.starts_with(".tmp"), "temporary file left: {name}");
            assert_eq!(
                sha256_digest(&fs::read(entry.path()).unwrap()),
                format!("sha256:{name}")
            );
            assert_ne!(
                fs::metadata(entry.path()).unwrap().len(),
                fs::metadata(model.join("model.safetensors")).unwrap().len()
            );
        }
    }
    assert!(
        !dest.join("index.json").exists() || manifest_count(&dest) == 0,
        "no manifest may point at a partial result"
    );
}

fn manifest_count(layout: &Path) -> usize {
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"].as_array().map_or(0, |m| m.len())
}

#[test]
fn an_empty_file_encrypts_and_pulls_back_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let kek = keygen_kek(tmp.path(), "kek.bin");
    let model = tmp.path().join("m");
    fs::create_dir(&model).unwrap();
    fs::write(model.join("config.json"), b"{}").unwrap();
    fs::write(model.join("empty.py"), b"").unwrap();
    let plain = format!("oci:{}:v1", tmp.path().join("plain").display());
    run_ok(&["pack", model.to_str().unwrap(), &plain]);
    let enc = format!("oci:{}:v1", tmp.path().join("enc").display());
    encrypt_for_kek(&plain, &enc, &kek, &[]);
    let dest = tmp.path().join("out");
    run_ok(&["pull", &enc, "--to", dest.to_str().unwrap(), "--kek", &kek]);
    assert_eq!(fs::read(dest.join("empty.py")).unwrap(), b"");
    assert_eq!(fs::read(dest.join("config.json")).unwrap(), b"{}");
}

/// A registry answers `Range: bytes=0-` on an empty blob with 416; empty files must still
/// pull, plain and encrypted.
#[test]
fn an_empty_file_round_trips_through_the_registry_plain_and_encrypted() {
    if !require_peer("docker-registry") {
        return;
    }
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let kek = keygen_kek(tmp.path(), "kek.bin");
    let model = tmp.path().join("m");
    fs::create_dir(&model).unwrap();
    fs::write(model.join("config.json"), b"{}").unwrap();
    fs::write(model.join("__init__.py"), b"").unwrap();
    let plain = reg.reference("models/empty:plain");
    run_ok(&["--plain-http", "pack", model.to_str().unwrap(), &plain]);
    let enc = reg.reference("models/empty:enc");
    run_ok(&[
        "--plain-http",
        "encrypt",
        &plain,
        &enc,
        "--recipient",
        "kbs:///default/key/1",
        "--kek",
        &kek,
    ]);
    let plain_keys: Vec<&str> = vec![];
    for (reference, name, keys) in [
        (&plain, "p", plain_keys),
        (&enc, "e", vec!["--kek", kek.as_str()]),
    ] {
        let dest = tmp.path().join(name);
        let mut args = vec![
            "--plain-http",
            "pull",
            reference,
            "--to",
            dest.to_str().unwrap(),
        ];
        args.extend(keys);
        run_ok(&args);
        assert_eq!(fs::read(dest.join("__init__.py")).unwrap(), b"");
    }
}

/// The known ocicrypt-rs pitfall: a tar reader inside a gzip stream stops at the archive's
/// end, before the gzip trailer; the trailer is still ciphertext under the HMAC.
#[test]
fn the_hmac_covers_a_gzip_trailer_the_tar_reader_never_asks_for() {
    let tmp = tempfile::tempdir().unwrap();
    let kek = keygen_kek(tmp.path(), "kek.bin");
    let mut tar = TarBuilder::new();
    tar.file("weights.bin", 0o644, &vec![9u8; 50_000]);
    let mut tar = tar.finish();
    tar.extend_from_slice(&vec![0u8; 64 * 1024]);
    let mut b = OciLayoutBuilder::new(tmp.path().join("plain"));
    b.add_layer(
        "application/vnd.cncf.model.weight.v1.tar+gzip",
        &crate::common::gzip(&tar),
        &[],
    );
    b.write("v1");
    let enc = format!("oci:{}:v1", tmp.path().join("enc").display());
    encrypt_for_kek(&b.reference("v1"), &enc, &kek, &[]);

    let ok = tmp.path().join("ok");
    assert_success(&pull_with_kek(&enc, &ok, &kek));
    assert_eq!(fs::read(ok.join("weights.bin")).unwrap(), vec![9u8; 50_000]);

    // Flip the last byte: the gzip ISIZE trailer.
    rewrite_layer_blob(&tmp.path().join("enc"), 0, |b| {
        let last = b.len() - 1;
        b[last] ^= 1;
    });
    assert_pull_fails_cleanly(tmp.path(), &enc, &["--kek", &kek], &["HMAC"]);
}
