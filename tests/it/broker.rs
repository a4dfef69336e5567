//! Keys from a key broker: `pull --kbs URL --tee sample` against the test KBS (tests/kbs,
//! trustee's server half as kbs.md documents it) and a real docker-registry, and the CDH route
//! against a stand-in for api-server-rest. Every failure leaves nothing at the destination.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use crate::common::kbs::{Endpoint, Fault, KbsConfig, TestKbs};
use crate::common::{
    assert_failure_contains, assert_success, dir_names, make_model_dir, model_files, modelcrypt,
    require_peer, TestRegistry,
};

const KID: &str = "kbs:///default/key/1";

struct World {
    _reg: TestRegistry,
    tmp: tempfile::TempDir,
    model: PathBuf,
    kek: Vec<u8>,
    /// The model, encrypted for `KID`, in the registry.
    reference: String,
}

fn world() -> Option<World> {
    if !require_peer("docker-registry") {
        return None;
    }
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let model = make_model_dir(tmp.path());
    let kek_path = tmp.path().join("kek.bin");
    assert_success(&modelcrypt([
        "keygen",
        "--type",
        "kek",
        "--out",
        kek_path.to_str().unwrap(),
    ]));
    let plain = format!("oci:{}:v1", tmp.path().join("plain").display());
    assert_success(&modelcrypt(["pack", model.to_str().unwrap(), &plain]));
    let reference = reg.reference("models/broker:v1");
    let out = modelcrypt([
        "--plain-http",
        "encrypt",
        &plain,
        &reference,
        "--recipient",
        KID,
        "--kek",
        kek_path.to_str().unwrap(),
    ]);
    assert_success(&out);
    let kek = fs::read(&kek_path).unwrap();
    fs::remove_file(&kek_path).unwrap();
    Some(World {
        _reg: reg,
        tmp,
        model,
        kek,
        reference,
    })
}

fn pull(w: &World, name: &str, extra: &[&str]) -> (PathBuf, crate::common::RunOutput) {
    let parent = w.tmp.path().join(format!("out-{name}"));
    fs::create_dir_all(&parent).unwrap();
    let dest = parent.join("model");
    let mut args = vec![
        "--plain-http",
        "pull",
        &w.reference,
        "--to",
        dest.to_str().unwrap(),
        "--no-progress",
    ];
    args.extend_from_slice(extra);
    let out = modelcrypt(&args);
    (dest, out)
}

fn assert_nothing_left(dest: &Path) {
    let parent = dest.parent().unwrap();
    assert!(
        dir_names(parent).is_empty(),
        "left behind: {:?}",
        dir_names(parent)
    );
}

#[test]
fn a_kek_held_by_the_broker_pulls_byte_identical_files() {
    let Some(w) = world() else { return };
    let kbs = TestKbs::start(KbsConfig::default().resource("default/key/1", w.kek.clone()));
    let (dest, out) = pull(&w, "kek", &["--kbs", &kbs.url(), "--tee", "sample"]);
    assert_success(&out);
    assert_eq!(model_files(&dest), model_files(&w.model));
    assert!(
        out.stderr.contains("proves nothing"),
        "the sample TEE warns: {out}"
    );
    assert_eq!(
        kbs.summary(),
        vec![
            "POST /kbs/v0/auth 200",
            "POST /kbs/v0/attest 200",
            "GET /kbs/v0/resource/default/key/1 200"
        ],
        "one attestation, one fetch for all layers sharing the kid"
    );
}

#[test]
fn a_jwe_private_key_held_by_the_broker_pulls_byte_identical_files() {
    let Some(w) = world() else { return };
    let private = w.tmp.path().join("rsa.pem");
    assert_success(&modelcrypt([
        "keygen",
        "--type",
        "ec",
        "--out",
        private.to_str().unwrap(),
    ]));
    let plain = format!("oci:{}:v1", w.tmp.path().join("plain").display());
    let jwe_ref = w
        .reference
        .replace("models/broker:v1", "models/broker-jwe:v1");
    let recipient = format!("jwe:{}.pub", private.display());
    assert_success(&modelcrypt([
        "--plain-http",
        "encrypt",
        &plain,
        &jwe_ref,
        "--recipient",
        &recipient,
    ]));
    let kbs = TestKbs::start(
        KbsConfig::default().resource("default/key/model-priv", fs::read(&private).unwrap()),
    );
    fs::remove_file(&private).unwrap();
    let dest = w.tmp.path().join("out-jwe/model");
    let out = modelcrypt([
        "--plain-http",
        "pull",
        &jwe_ref,
        "--to",
        dest.to_str().unwrap(),
        "--kbs",
        &kbs.url(),
        "--tee",
        "sample",
        "--decryption-key",
        "kbs:///default/key/model-priv",
    ]);
    assert_success(&out);
    assert_eq!(model_files(&dest), model_files(&w.model));
}

#[test]
fn a_policy_refusal_fails_at_once_and_leaves_nothing() {
    let Some(w) = world() else { return };
    let kbs = TestKbs::start(KbsConfig {
        deny_all: true,
        ..KbsConfig::default().resource("default/key/1", w.kek.clone())
    });
    let (dest, out) = pull(&w, "deny", &["--kbs", &kbs.url(), "--tee", "sample"]);
    assert_failure_contains(&out, &["PolicyDeny", KID, "401"]);
    assert_nothing_left(&dest);
    // A refusal is final: no retries, no re-attestation.
    assert_eq!(
        kbs.summary()
            .iter()
            .filter(|l| l.starts_with("GET"))
            .count(),
        1,
        "{:?}",
        kbs.summary()
    );
}

#[test]
fn a_missing_resource_fails_at_once_and_leaves_nothing() {
    let Some(w) = world() else { return };
    let kbs = TestKbs::start(KbsConfig::default());
    let (dest, out) = pull(&w, "missing", &["--kbs", &kbs.url(), "--tee", "sample"]);
    assert_failure_contains(&out, &["PluginInternalError", KID]);
    assert_nothing_left(&dest);
    assert_eq!(
        kbs.summary()
            .iter()
            .filter(|l| l.starts_with("POST /kbs/v0/auth"))
            .count(),
        1
    );
}

#[test]
fn an_expired_session_is_renewed_by_attesting_again() {
    let Some(w) = world() else { return };
    let kbs = TestKbs::start(KbsConfig::default().resource("default/key/1", w.kek.clone()));
    kbs.inject(
        Endpoint::Resource,
        Fault::trustee("TokenNotFound", "Attestation Token not found"),
    );
    let (dest, out) = pull(&w, "renew", &["--kbs", &kbs.url(), "--tee", "sample"]);
    assert_success(&out);
    assert_eq!(model_files(&dest), model_files(&w.model));
    let auths = kbs
        .summary()
        .iter()
        .filter(|l| l.starts_with("POST /kbs/v0/auth"))
        .count();
    assert_eq!(auths, 2, "{:?}", kbs.summary());
}

#[test]
fn a_broker_that_is_down_is_retried_a_bounded_number_of_times_then_named() {
    let Some(w) = world() else { return };
    // A port nothing listens on: bind, learn the port, close.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let (dest, out) = pull(&w, "down", &["--kbs", &url, "--tee", "sample"]);
    assert_failure_contains(&out, &["cannot reach the key broker", &url]);
    assert_eq!(out.stderr.matches("retrying").count(), 2, "{out}");
    assert_nothing_left(&dest);
}

#[test]
fn a_wrong_protocol_version_on_the_broker_is_reported() {
    let Some(w) = world() else { return };
    let kbs = TestKbs::start(KbsConfig {
        protocol_version: "0.3.0".into(),
        ..KbsConfig::default().resource("default/key/1", w.kek.clone())
    });
    let (dest, out) = pull(&w, "version", &["--kbs", &kbs.url(), "--tee", "sample"]);
    assert_failure_contains(&out, &["AttestationError", "Version Mismatch"]);
    assert_nothing_left(&dest);
}

#[test]
fn a_tampered_broker_reply_is_refused() {
    let Some(w) = world() else { return };
    let kbs = TestKbs::start(KbsConfig::default().resource("default/key/1", w.kek.clone()));
    kbs.set_tamper(Some(crate::common::kbs::Tamper::Ciphertext));
    let (dest, out) = pull(&w, "tamper", &["--kbs", &kbs.url(), "--tee", "sample"]);
    assert_failure_contains(&out, &["cannot decrypt the key broker's reply", KID]);
    assert_nothing_left(&dest);
}

/// api-server-rest inside a CoCo pod answers `GET /cdh/resource/R/T/G` with the raw bytes.
fn fake_cdh(path: &'static str, body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut line = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            reader.read_line(&mut line).unwrap();
            // Drain the headers.
            let mut h = String::new();
            while reader.read_line(&mut h).unwrap() > 2 {
                h.clear();
            }
            let ok = line.starts_with(&format!("GET {path} "));
            let (status, payload) = if ok {
                ("200 OK", body.clone())
            } else {
                ("404 Not Found", b"no".to_vec())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                payload.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&payload);
        }
    });
    url
}

#[test]
fn the_cdh_route_pulls_the_same_artifact() {
    let Some(w) = world() else { return };
    let url = fake_cdh("/cdh/resource/default/key/1", w.kek.clone());
    let (dest, out) = pull(&w, "cdh", &["--cdh", &url]);
    assert_success(&out);
    assert_eq!(model_files(&dest), model_files(&w.model));
}

/// Without TDX or SEV-SNP, `--tee auto` refuses instead of falling back to `sample`.
#[test]
fn auto_tee_detection_never_falls_back_to_sample() {
    if std::path::Path::new("/sys/kernel/config/tsm/report").exists() {
        println!("SKIPPED: this machine has configfs-tsm");
        return;
    }
    let Some(w) = world() else { return };
    let kbs = TestKbs::start(KbsConfig::default().resource("default/key/1", w.kek.clone()));
    let (dest, out) = pull(&w, "auto", &["--kbs", &kbs.url()]);
    assert_failure_contains(&out, &["no TEE found", "--tee sample"]);
    assert_nothing_left(&dest);
    assert!(
        kbs.summary().is_empty(),
        "nothing was sent to the broker: {:?}",
        kbs.summary()
    );
}

#[test]
fn an_rsa_tee_key_gets_an_rsa_oaep_256_reply_that_opens() {
    let Some(w) = world() else { return };
    let kbs = TestKbs::start(KbsConfig::default().resource("default/key/1", w.kek.clone()));
    let (dest, out) = pull(
        &w,
        "rsa",
        &["--kbs", &kbs.url(), "--tee", "sample", "--tee-key", "rsa"],
    );
    assert_success(&out);
    assert_eq!(model_files(&dest), model_files(&w.model));
    let attest = kbs
        .requests()
        .into_iter()
        .find(|r| r.path == "/kbs/v0/attest")
        .expect("an attest request");
    let body: serde_json::Value = serde_json::from_slice(&attest.body).unwrap();
    assert_eq!(body["runtime-data"]["tee-pubkey"]["alg"], "RSA-OAEP-256");
}

#[test]
fn a_plain_http_broker_off_this_machine_and_a_remote_cdh_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("m");
    let base = [
        "pull",
        "oci:demo/tiny-model-encrypted.oci:v1",
        "--to",
        dest.to_str().unwrap(),
    ];
    let out = modelcrypt(
        [
            &base[..],
            &["--kbs", "http://kbs.example:8080", "--tee", "sample"],
        ]
        .concat(),
    );
    assert_failure_contains(&out, &["plain HTTP", "--dangerous-kbs-plain-http"]);
    let out = modelcrypt([&base[..], &["--cdh", "http://10.0.0.1:8006"]].concat());
    assert_failure_contains(&out, &["not on this machine"]);
    assert!(dir_names(tmp.path()).is_empty());
}

#[test]
fn broker_requests_to_this_machine_never_go_through_a_proxy() {
    let Some(w) = world() else { return };
    // A "proxy" that answers every request with a bogus 32-byte key.
    let proxy = fake_cdh("/never", vec![0u8; 32]);
    let url = fake_cdh("/cdh/resource/default/key/1", w.kek.clone());
    // From a layout: registry traffic may use a proxy (it is verified by digest); keys may not.
    let layout = format!("oci:{}:v1", w.tmp.path().join("enc-layout").display());
    assert_success(&modelcrypt(["--plain-http", "copy", &w.reference, &layout]));
    let parent = w.tmp.path().join("out-proxy");
    let dest = parent.join("model");
    let out = crate::common::Cmd::modelcrypt()
        .env("HTTP_PROXY", &proxy)
        .env("http_proxy", &proxy)
        .env("ALL_PROXY", &proxy)
        .args([
            "pull",
            &layout,
            "--to",
            dest.to_str().unwrap(),
            "--cdh",
            &url,
        ])
        .run();
    assert_success(&out);
    assert_eq!(model_files(&dest), model_files(&w.model));
}
