//! Interoperability with the real skopeo for JWE-encrypted layers, both directions
//! (ocicrypt.md §5.1, §7): skopeo encrypts, we pull; we encrypt, skopeo decrypts. Keys come
//! from the `openssl` CLI, so nothing here depends on our own key generation.

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::Value;

use crate::common::{
    assert_failure_contains, assert_success, dir_names, make_model_dir, model_files, modelcrypt,
    require_peer, sha256_digest, skopeo, Cmd, TestRegistry,
};

const TLS: [&str; 2] = ["--src-tls-verify=false", "--dest-tls-verify=false"];

fn openssl(args: &[&str]) {
    assert_success(&Cmd::new("openssl").args(args).run());
}

/// An RSA pair from openssl: (PKCS#8 private PEM, SPKI public PEM).
fn rsa_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        private.to_str().unwrap(),
    ]);
    openssl(&[
        "pkey",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (private, public)
}

/// An EC P-256 pair: (SEC1 `EC PRIVATE KEY` PEM, which skopeo ignores, SPKI public PEM).
fn ec_pair(dir: &Path) -> (PathBuf, PathBuf) {
    let private = dir.join("ec.pem");
    let public = dir.join("ec.pub.pem");
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        private.to_str().unwrap(),
    ]);
    openssl(&[
        "ec",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (private, public)
}

struct World {
    reg: TestRegistry,
    tmp: tempfile::TempDir,
    model: PathBuf,
    plain: String,
}

/// A registry holding the fixture model packed with OCI image layer types (what skopeo's
/// encryptor accepts) at `models/plain:v1`.
fn world() -> Option<World> {
    if !require_peer("docker-registry") || !require_peer("skopeo") || !require_peer("openssl") {
        return None;
    }
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let model = make_model_dir(tmp.path());
    let plain = reg.reference("models/plain:v1");
    assert_success(&modelcrypt([
        "--plain-http",
        "pack",
        model.to_str().unwrap(),
        &plain,
        "--oci-media-types",
    ]));
    Some(World {
        reg,
        tmp,
        model,
        plain,
    })
}

fn skopeo_encrypt(w: &World, dest: &str, keys: &[&Path]) {
    let mut args: Vec<String> = vec!["copy".into()];
    args.extend(TLS.iter().map(|s| s.to_string()));
    for k in keys {
        args.push("--encryption-key".into());
        args.push(format!("jwe:{}", k.display()));
    }
    args.push(w.plain.clone());
    args.push(dest.to_string());
    assert_success(&skopeo(&args));
}

fn our_pull(w: &World, src: &str, keys: &[&Path]) -> PathBuf {
    let dest = w
        .tmp
        .path()
        .join(format!("pulled-{}", dir_names(w.tmp.path()).len()));
    let mut args = vec![
        "--plain-http".to_string(),
        "pull".into(),
        src.into(),
        "--to".into(),
        dest.display().to_string(),
    ];
    for k in keys {
        args.push("--decryption-key".into());
        args.push(k.display().to_string());
    }
    assert_success(&modelcrypt(&args));
    dest
}

fn assert_every_layer_encrypted(w: &World, reference: &str) {
    let out = modelcrypt(["--plain-http", "inspect", reference, "--json"]);
    assert_success(&out);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    for l in v["layers"].as_array().unwrap() {
        assert_eq!(l["encrypted"], true, "{l}");
        assert!(
            l["recipients"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == "jwe"),
            "{l}"
        );
    }
    let _ = w;
}

#[test]
fn skopeo_encrypts_for_an_rsa_key_and_we_pull_identical_files() {
    let Some(w) = world() else { return };
    let (private, public) = rsa_pair(w.tmp.path(), "rsa");
    let enc = w.reg.reference("models/enc-rsa:v1");
    skopeo_encrypt(&w, &enc, &[&public]);
    assert_every_layer_encrypted(&w, &enc);
    let dest = our_pull(&w, &enc, &[&private]);
    assert_eq!(model_files(&dest), model_files(&w.model));
}

#[test]
fn skopeo_encrypts_for_two_rsa_keys_and_either_one_pulls() {
    let Some(w) = world() else { return };
    let (private1, public1) = rsa_pair(w.tmp.path(), "one");
    let (private2, public2) = rsa_pair(w.tmp.path(), "two");
    let enc = w.reg.reference("models/enc-two:v1");
    skopeo_encrypt(&w, &enc, &[&public1, &public2]);
    for key in [&private1, &private2] {
        let dest = our_pull(&w, &enc, &[key.as_path()]);
        assert_eq!(model_files(&dest), model_files(&w.model));
    }
}

#[test]
fn skopeo_encrypts_for_an_ec_p256_key_and_we_pull_with_its_sec1_private_key() {
    let Some(w) = world() else { return };
    let (private, public) = ec_pair(w.tmp.path());
    let enc = w.reg.reference("models/enc-ec:v1");
    skopeo_encrypt(&w, &enc, &[&public]);
    let dest = our_pull(&w, &enc, &[&private]);
    assert_eq!(model_files(&dest), model_files(&w.model));
}

#[test]
fn skopeo_decrypts_our_jwe_encrypted_modelpack_artifact_to_the_plaintext_blobs() {
    let Some(w) = world() else { return };
    let (private, public) = rsa_pair(w.tmp.path(), "rsa");
    let model_layout = format!("oci:{}:v1", w.tmp.path().join("mp").display());
    assert_success(&modelcrypt([
        "pack",
        w.model.to_str().unwrap(),
        &model_layout,
    ]));
    let enc = w.reg.reference("models/ours:v1");
    let public_spec = format!("jwe:{}", public.display());
    assert_success(&modelcrypt([
        "--plain-http",
        "encrypt",
        &model_layout,
        &enc,
        "--recipient",
        &public_spec,
    ]));

    let out_dir = w.tmp.path().join("skopeo-out");
    let mut args: Vec<String> = vec!["copy".into()];
    args.extend(TLS.iter().map(|s| s.to_string()));
    args.extend([
        "--decryption-key".into(),
        private.display().to_string(),
        enc,
        format!("dir:{}", out_dir.display()),
    ]);
    assert_success(&skopeo(&args));

    // Every plaintext layer blob is back, byte for byte, under its own digest.
    let manifest: Value =
        serde_json::from_slice(&fs::read(out_dir.join("manifest.json")).unwrap()).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 10);
    for l in layers {
        let mt = l["mediaType"].as_str().unwrap();
        assert!(
            mt.starts_with("application/vnd.cncf.model.") && !mt.ends_with("+encrypted"),
            "{mt}"
        );
        let digest = l["digest"].as_str().unwrap();
        let blob = fs::read(out_dir.join(&digest[7..])).unwrap();
        assert_eq!(sha256_digest(&blob), digest);
        let path = l["annotations"]["org.cncf.model.filepath"]
            .as_str()
            .unwrap();
        assert_eq!(blob, fs::read(w.model.join(path)).unwrap(), "{path}");
    }
}

#[test]
fn a_corrupted_jwe_fails_clearly_and_leaves_nothing() {
    let Some(w) = world() else { return };
    let (private, public) = rsa_pair(w.tmp.path(), "rsa");
    let layout_dir = w.tmp.path().join("enc");
    let enc = format!("oci:{}:v1", layout_dir.display());
    let public_spec = format!("jwe:{}", public.display());
    assert_success(&modelcrypt([
        "--plain-http",
        "encrypt",
        &w.plain,
        &enc,
        "--recipient",
        &public_spec,
    ]));

    // Flip a byte inside the JWE's ciphertext member of every layer's annotation.
    let index: Value =
        serde_json::from_slice(&fs::read(layout_dir.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    let mut m: Value = serde_json::from_slice(
        &fs::read(layout_dir.join("blobs/sha256").join(&digest[7..])).unwrap(),
    )
    .unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    for l in m["layers"].as_array_mut().unwrap() {
        let key = "org.opencontainers.image.enc.keys.jwe";
        let mut jwe: Value =
            serde_json::from_slice(&b64.decode(l["annotations"][key].as_str().unwrap()).unwrap())
                .unwrap();
        let ct = jwe["ciphertext"].as_str().unwrap().to_string();
        let flipped: String = ct
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i == 3 {
                    if c == 'A' {
                        'B'
                    } else {
                        'A'
                    }
                } else {
                    c
                }
            })
            .collect();
        jwe["ciphertext"] = Value::String(flipped);
        l["annotations"][key] = Value::String(b64.encode(serde_json::to_vec(&jwe).unwrap()));
    }
    crate::common::write_layout_manifest(&layout_dir, &m);

    let parent = w.tmp.path().join("out");
    fs::create_dir(&parent).unwrap();
    let dest = parent.join("model");
    let out = modelcrypt([
        "pull",
        &enc,
        "--to",
        dest.to_str().unwrap(),
        "--decryption-key",
        private.to_str().unwrap(),
    ]);
    assert_failure_contains(&out, &["no key fits", "JWE"]);
    assert!(dir_names(&parent).is_empty());
}
