//! The deployment side: every Kubernetes manifest under `deploy/` passes
//! `kubernetes-validate --strict`, the CoCo pod's initdata annotation is the gzip+base64 of
//! `deploy/coco/initdata.toml`, `make help` lists every target, and `make -n` of each target
//! prints commands that use modelcrypt, never skopeo, modctl or jq.

use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::common::{assert_success, require_peer, Cmd};

/// Every target of the Makefile (the seed's, plus the two helpers), in `make help` order.
const TARGETS: &[&str] = &[
    "help",
    "modelcrypt",
    "fetch",
    "oci",
    "push",
    "gen-keys",
    "encrypt",
    "decrypt",
    "pull",
    "kind",
    "image-context",
    "init-container",
    "run",
    "clean",
    "configure-machine",
];

/// Targets whose commands must run modelcrypt (build, pack, push, keys, crypto, pull, image, pod).
const MODELCRYPT_TARGETS: &[&str] = &[
    "modelcrypt",
    "oci",
    "push",
    "gen-keys",
    "encrypt",
    "decrypt",
    "pull",
    "image-context",
    "init-container",
    "run",
];

/// The tools modelcrypt replaces: no target may call them.
const FORBIDDEN_TOOLS: &[&str] = &["skopeo", "modctl", "jq"];

/// Kubernetes schema versions the manifests must pass: the oldest minor that current kind node
/// images ship, and the newest one `kubernetes-validate` 1.37 knows.
const KUBERNETES_VERSIONS: &[&str] = &["1.33.0", "1.37.0"];

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
}

/// The Kubernetes manifests under `deploy/`, relative to the repository root.
///
/// `deploy/kind/cluster.yaml` is left out: it is kind's own configuration
/// (`kind.x-k8s.io/v1alpha4` `Cluster`), read by `kind create cluster` and never sent to an API
/// server, so there is no Kubernetes schema to validate it against (`kubernetes-validate` would
/// only warn that it has none).
fn kubernetes_manifests() -> Vec<String> {
    let root = repo_root();
    let mut files = Vec::new();
    yaml_files(&root.join("deploy"), &mut files);
    files
        .iter()
        .map(|p| {
            p.strip_prefix(&root)
                .expect("under the repository")
                .to_string_lossy()
                .into_owned()
        })
        .filter(|p| p != "deploy/kind/cluster.yaml")
        .collect()
}

#[test]
fn every_manifest_under_deploy_passes_kubernetes_validate_strict() {
    let manifests = kubernetes_manifests();
    for expected in [
        "deploy/namespace.yaml",
        "deploy/kbs/kbs.yaml",
        "deploy/model/qwen3.yaml",
        "deploy/coco/qwen3-coco.yaml",
        "deploy/kind/local-registry-hosting.yaml",
    ] {
        assert!(
            manifests.iter().any(|m| m == expected),
            "{expected} missing from {manifests:?}"
        );
    }
    assert!(
        repo_root().join("deploy/kind/cluster.yaml").is_file(),
        "kind's cluster config is gone"
    );
    if !require_peer("kubernetes-validate") {
        return;
    }
    for version in KUBERNETES_VERSIONS {
        let out = Cmd::new("kubernetes-validate")
            .args(["--strict", "--kubernetes-version", version])
            .args(&manifests)
            .current_dir(repo_root())
            .run();
        assert_success(&out);
        let said = format!("{}{}", out.stdout, out.stderr);
        // A resource with no schema (a typo in apiVersion or kind) only warns: refuse that too.
        assert!(
            !said.contains("Couldn't find schema") && !said.contains("ERROR"),
            "kubernetes-validate {version} did not validate everything\n{out}"
        );
        for manifest in &manifests {
            assert!(
                said.lines()
                    .any(|l| l.contains(manifest.as_str()) && l.contains("passed")),
                "no resource of {manifest} passed against {version}\n{out}"
            );
        }
    }
}

#[test]
fn coco_initdata_annotation_is_the_gzip_base64_of_initdata_toml() {
    let root = repo_root();
    let toml = std::fs::read(root.join("deploy/coco/initdata.toml")).expect("initdata.toml");
    let manifest =
        std::fs::read_to_string(root.join("deploy/coco/qwen3-coco.yaml")).expect("coco manifest");
    let key = "io.katacontainers.config.hypervisor.cc_init_data:";
    let line = manifest
        .lines()
        .find(|l| l.trim_start().starts_with(key))
        .expect("the cc_init_data annotation");
    let value = line.trim_start()[key.len()..].trim().trim_matches('"');
    let gz = base64::engine::general_purpose::STANDARD
        .decode(value)
        .expect("the annotation is standard base64");
    let mut decoded = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut decoded)
        .expect("the annotation is gzip inside");
    assert!(
        decoded == toml,
        "the annotation is stale: regenerate it with `gzip -9 -n -c deploy/coco/initdata.toml | base64 -w0`"
    );
    let text = String::from_utf8(decoded).expect("UTF-8");
    for needle in [
        "\"aa.toml\"",
        "\"cdh.toml\"",
        "cc_kbc",
        "kbs.modelcrypt.svc",
    ] {
        assert!(text.contains(needle), "initdata lacks {needle}");
    }
}

fn make(args: &[&str]) -> crate::common::RunOutput {
    let mut cmd = Cmd::new("make")
        .args(["--no-print-directory"])
        .args(args)
        .current_dir(repo_root());
    // Defaults only: a developer's MODEL=... or REGISTRY=... must not change what is tested.
    for var in [
        "MAKEFLAGS",
        "MAKELEVEL",
        "MODEL",
        "MODEL_NAME",
        "MODEL_DIR",
        "REGISTRY",
        "REPO",
        "TAG",
        "MODELCRYPT",
        "KEK",
        "CONTAINER_ENGINE",
    ] {
        cmd = cmd.env_remove(var);
    }
    cmd.run()
}

#[test]
fn make_help_is_the_default_and_lists_every_target() {
    if !require_peer("make") {
        return;
    }
    for args in [&[][..], &["help"][..]] {
        let out = make(args);
        assert_success(&out);
        for target in TARGETS {
            assert!(
                out.stdout.lines().any(|l| {
                    let mut words = l.split_whitespace();
                    words.next() == Some(target) && words.next().is_some()
                }),
                "`make {}` does not list `{target}` with a description\n{out}",
                args.join(" ")
            );
        }
    }
}

fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .filter(|w| !w.is_empty())
}

#[test]
fn make_dry_run_of_every_target_uses_modelcrypt_and_never_the_old_tools() {
    if !require_peer("make") {
        return;
    }
    // Directories only the Makefile's real runs create (`build/` is shared with other tests).
    let created_by_make = ["keys", "models"];
    let existed: Vec<bool> = created_by_make
        .iter()
        .map(|d| repo_root().join(d).exists())
        .collect();
    for target in TARGETS {
        let out = make(&["-n", target]);
        assert_success(&out);
        assert!(
            !out.stdout.trim().is_empty(),
            "`make -n {target}` prints nothing\n{out}"
        );
        for tool in FORBIDDEN_TOOLS {
            assert!(
                !words(&out.stdout).any(|w| w == *tool),
                "`make -n {target}` calls {tool}\n{out}"
            );
        }
        if MODELCRYPT_TARGETS.contains(target) {
            assert!(
                out.stdout.contains("modelcrypt"),
                "`make -n {target}` does not use modelcrypt\n{out}"
            );
        }
    }
    // The pipeline targets run the binary itself with the right subcommand.
    for (target, subcommand) in [
        ("oci", "pack"),
        ("push", "copy"),
        ("gen-keys", "keygen"),
        ("encrypt", "encrypt"),
        ("decrypt", "decrypt"),
        ("pull", "pull"),
    ] {
        let out = make(&["-n", target]);
        assert!(
            out.stdout
                .lines()
                .any(|l| l.contains("modelcrypt ") && words(l).any(|w| w == subcommand)),
            "`make -n {target}` does not run `modelcrypt … {subcommand}`\n{out}"
        );
    }
    let out = make(&["-n", "fetch"]);
    assert!(
        out.stdout
            .contains("hf download Qwen/Qwen3-0.6B --local-dir"),
        "{out}"
    );
    let out = make(&["-n", "clean"]);
    assert!(out.stdout.contains("kind delete cluster"), "{out}");
    // Dry runs have no side effects.
    for (dir, existed) in created_by_make.iter().zip(existed) {
        assert!(
            existed || !repo_root().join(dir).exists(),
            "`make -n` created {dir}/"
        );
    }
}
