//! Hostile inputs to `modelcrypt pull`: crafted tar entries, unsafe raw-layer file paths and
//! blobs that lie about their digest or size (style.md, "What to imitate" 8).
//!
//! Every case builds its own OCI layout by hand (never with modelcrypt's writer) and pulls it
//! with `modelcrypt pull oci:LAYOUT:TAG --to PARENT/model --no-progress`. A refusal must
//! exit non-zero with an `error:` message naming the problem, leave no `PARENT/model` and no
//! staging directory behind, and change nothing else in the test's tempdir: the whole tempdir
//! is snapshotted before and after. Two positive controls at the end show that the same
//! scaffolding pulls benign layers, so the refusals fail for the right reason.
//!
//! Also here: layers that contradict each other (a symlink one layer makes and another writes
//! through, two layers claiming one path), decompression bombs (into a real tmpfs), manifests
//! over the 4 MiB limit (in a layout and from a hostile registry), descriptors that lie about
//! sizes in a real registry, malformed ocicrypt annotations (pubopts, private options, JWE,
//! AnnotationPacket) and malformed key broker replies (the test KBS's fault injection).
//!
//! Does not cover: transport faults (faults.rs) and well-formed encrypted pulls (encrypted.rs).

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::Value;

use crate::common::{
    annotation, assert_failure_contains, assert_snapshots_equal, assert_success, dir_names, gzip,
    layout_manifest, media, pseudo_random_bytes, require_peer, sha256_digest, sha256_hex,
    tree_snapshot, write_layout_manifest, zstd_compress, Cmd, FileKind, OciLayoutBuilder,
    RunOutput, Snapshot, TarBuilder, TestRegistry, COMPLETE_MARKER,
};

const TAG: &str = "v1";

/// One test's world, all inside its own tempdir:
///
/// ```text
/// <tmp>/layout/                        the OCI layout under test
/// <tmp>/cwd/                           modelcrypt's working directory
/// <tmp>/outer/inner/outside/secret.txt bait that escaping links point at
/// <tmp>/outer/inner/parent/            PARENT, empty; the destination is PARENT/model
/// ```
///
/// Staging is `PARENT/.model.modelcrypt-staging`, so from the staging root `..` is PARENT, `../..`
/// is `inner` and `../../..` is `outer`: every relative escape lands inside <tmp>, where the
/// before/after snapshot sees it.
struct Scene {
    tmp: tempfile::TempDir,
    layout: OciLayoutBuilder,
    cwd: PathBuf,
    parent: PathBuf,
    dest: PathBuf,
}

impl Scene {
    fn new() -> Scene {
        Scene::with_layout(OciLayoutBuilder::new)
    }

    /// Legacy `vnd.cnai` media types and `org.cnai` annotations.
    fn legacy() -> Scene {
        Scene::with_layout(|dir| OciLayoutBuilder::new(dir).legacy())
    }

    fn with_layout(builder: impl FnOnce(PathBuf) -> OciLayoutBuilder) -> Scene {
        let tmp = tempfile::tempdir().expect("create test tempdir");
        let root = tmp.path();
        let cwd = root.join("cwd");
        let parent = root.join("outer/inner/parent");
        let bait = root.join("outer/inner/outside/secret.txt");
        fs::create_dir_all(&cwd).expect("mkdir cwd");
        fs::create_dir_all(&parent).expect("mkdir parent");
        fs::create_dir_all(bait.parent().expect("bait has a parent")).expect("mkdir outside");
        fs::write(&bait, b"do not touch\n").expect("write bait");
        let layout = builder(root.join("layout"));
        let dest = parent.join("model");
        Scene {
            tmp,
            layout,
            cwd,
            parent,
            dest,
        }
    }

    fn root(&self) -> &Path {
        self.tmp.path()
    }

    /// An absolute path under this test's tempdir, for absolute-path attacks.
    fn absolute(&self, name: &str) -> String {
        self.root().join(name).display().to_string()
    }

    /// Writes the manifest for [`TAG`], snapshots the tempdir, then pulls.
    fn pull(&mut self) -> (String, Snapshot, RunOutput) {
        let manifest_digest = self.layout.write(TAG);
        let reference = self.layout.reference(TAG);
        let (before, out) = self.pull_ref(&reference, &[]);
        (manifest_digest, before, out)
    }

    /// Snapshots the tempdir, then runs `pull REFERENCE --to DEST --no-progress EXTRA…`.
    fn pull_ref(&self, reference: &str, extra: &[&str]) -> (Snapshot, RunOutput) {
        let before = tree_snapshot(self.root(), false);
        let out = Cmd::modelcrypt()
            .current_dir(&self.cwd)
            .arg("pull")
            .arg(reference)
            .arg("--to")
            .arg(&self.dest)
            .arg("--no-progress")
            .args(extra)
            .run();
        (before, out)
    }

    /// Writes the manifest, pulls and asserts a clean refusal whose message contains every
    /// fragment.
    #[track_caller]
    fn pull_is_refused(&mut self, fragments: &[&str]) {
        self.layout.write(TAG);
        let reference = self.layout.reference(TAG);
        let out = self.pull_ref_is_refused(&reference, &[], fragments);
        assert!(
            out.stderr.starts_with("error:"),
            "stderr must start with `error:`\n{out}"
        );
    }

    /// Pulls `reference` (with `extra` flags) and asserts a clean refusal whose message
    /// contains every fragment: nothing at the destination or beside it, nothing changed in
    /// the test's tempdir.
    #[track_caller]
    fn pull_ref_is_refused(
        &self,
        reference: &str,
        extra: &[&str],
        fragments: &[&str],
    ) -> RunOutput {
        let (before, out) = self.pull_ref(reference, extra);
        // Shown with --nocapture, or with the failure.
        println!("{out}");
        assert_failure_contains(&out, fragments);
        assert!(
            fs::symlink_metadata(&self.dest).is_err(),
            "`{}` must not exist after a refused pull\n{out}",
            self.dest.display()
        );
        assert_eq!(
            dir_names(&self.parent),
            Vec::<String>::new(),
            "the destination's parent must hold no destination and no staging leftovers\n{out}"
        );
        assert_snapshots_equal(
            &before,
            &tree_snapshot(self.root(), false),
            "the test's tempdir",
        );
        out
    }
}

fn tar_of(build: impl FnOnce(&mut TarBuilder)) -> Vec<u8> {
    let mut tar = TarBuilder::new();
    build(&mut tar);
    tar.finish()
}

fn backticked(path: &str) -> String {
    format!("`{path}`")
}

// ------------------------------------------------------------------------------------------------
// Tar entry paths
// ------------------------------------------------------------------------------------------------

#[test]
fn tar_entry_with_parent_traversal_is_refused() {
    let mut scene = Scene::new();
    let tar = tar_of(|t| {
        t.file("../evil", 0o644, b"pwned\n");
    });
    scene.layout.add_layer(media::WEIGHT_TAR, &tar, &[]);
    scene.pull_is_refused(&[&backticked("../evil"), "unsafe"]);
}

#[test]
fn tar_entry_with_absolute_path_is_refused() {
    let mut scene = Scene::new();
    let target = scene.absolute("abs-evil");
    let tar = tar_of(|t| {
        t.file(&target, 0o644, b"pwned\n");
    });
    scene.layout.add_layer(media::WEIGHT_TAR, &tar, &[]);
    scene.pull_is_refused(&[&backticked(&target), "unsafe"]);
    assert!(!Path::new(&target).exists(), "`{target}` was written");
}

#[test]
fn tar_entry_with_traversal_after_a_normal_component_is_refused() {
    let mut scene = Scene::new();
    let tar = tar_of(|t| {
        t.file("a/../../evil", 0o644, b"pwned\n");
    });
    scene.layout.add_layer(media::WEIGHT_TAR, &tar, &[]);
    scene.pull_is_refused(&[&backticked("a/../../evil"), "unsafe"]);
}

#[test]
fn gzip_tar_layer_with_parent_traversal_is_refused() {
    let mut scene = Scene::new();
    let tar = tar_of(|t| {
        t.file("../evil", 0o644, b"pwned\n");
    });
    scene
        .layout
        .add_layer(media::WEIGHT_TAR_GZIP, &gzip(&tar), &[]);
    scene.pull_is_refused(&[&backticked("../evil"), "unsafe"]);
}

#[test]
fn zstd_tar_layer_with_parent_traversal_is_refused() {
    let mut scene = Scene::new();
    let tar = tar_of(|t| {
        t.file("../evil", 0o644, b"pwned\n");
    });
    scene
        .layout
        .add_layer(media::WEIGHT_TAR_ZSTD, &zstd_compress(&tar), &[]);
    scene.pull_is_refused(&[&backticked("../evil"), "unsafe"]);
}

// ------------------------------------------------------------------------------------------------
// Links
// ------------------------------------------------------------------------------------------------

#[test]
fn tar_symlink_pointing_outside_the_destination_is_refused() {
    let mut scene = Scene::new();
    // From the staging root, ../../outside is <tmp>/outer/inner/outside, which exists.
    let tar = tar_of(|t| {
        t.symlink("link", "../../outside");
    });
    scene.layout.add_layer(media::WEIGHT_TAR, &tar, &[]);
    scene.pull_is_refused(&[&backticked("link"), "escapes"]);
}

#[test]
fn tar_symlink_with_absolute_target_is_refused() {
    let mut scene = Scene::new();
    let tar = tar_of(|t| {
        t.symlink("link", "/etc");
    });
    scene.layout.add_layer(media::WEIGHT_TAR, &tar, &[]);
    scene.pull_is_refused(&[&backticked("link"), "escapes"]);
}

#[test]
fn tar_symlink_followed_by_an_entry_written_through_it_is_refused() {
    let mut scene = Scene::new();
    // A naive extractor creates d -> .. and then writes d/evil as PARENT/evil.
    let tar = tar_of(|t| {
        t.symlink("d", "..").file("d/evil", 0o644, b"pwned\n");
    });
    scene.layout.add_layer(media::WEIGHT_TAR, &tar, &[]);
    scene.pull_is_refused(&[&backticked("d"), "escapes"]);
}

#[test]
fn tar_symlink_chained_through_an_in_tree_symlink_is_refused() {
    let mut scene = Scene::new();
    // sub/d -> .. stays inside (it is the root). Lexically sub/d/e -> .. is sub, but on disk
    // sub/d/e is the root's e, so it points at PARENT; then sub/d/e/evil is PARENT/evil. Only an
    // extractor that resolves links physically (or never writes through them) refuses this; the
    // exact message is left to the implementation.
    let tar = tar_of(|t| {
        t.dir("sub/", 0o755)
            .symlink("sub/d", "..")
            .symlink("sub/d/e", "..")
            .file("sub/d/e/evil", 0o644, b"pwned\n");
    });
    scene.layout.add_layer(media::WEIGHT_TAR, &tar, &[]);
    // Refused where it first goes wrong: `sub/d/e` would be created through the link `sub/d`.
    scene.pull_is_refused(&[
        &backticked("sub/d/e"),
        "would be written through",
        &backticked("sub/d"),
    ]);
}

#[test]
fn tar_entry_written_through_an_in_tree_symlink_is_refused() {
    let mut scene = Scene::new();
    // `d -> sub` stays inside, so the link itself is fine; writing `d/x` through it is not.
    let tar = tar_of(|t| {
        t.dir("sub/", 0o755)
            .symlink("d", "sub")
            .file("d/x", 0o644, b"through a link\n");
    });
    scene.layout.add_layer(media::WEIGHT_TAR, &tar, &[]);
    scene.pull_is_refused(&[
        &backticked("d/x"),
        "would be written through",
        &backticked("d"),
    ]);
}

#[test]
fn tar_hardlink_to_an_in_tree_symlink_is_refused() {
    let mut scene = Scene::new();
    let tar = tar_of(|t| {
        t.symlink("s", "x").hardlink("hl", "s");
    });
    scene.layout.add_layer(media::WEIGHT_TAR, &tar, &[]);
    scene.pull_is_refused(&[&backticked("hl"), "not a regular file"]);
}

#[test]
fn a_huge_gnu_long_name_is_refused_without_reading_it_whole() {
    let mut scene = Scene::new();
    // A 4 MiB long-name record compresses to a few kB; the tar crate would buffer it whole.
    let mut long = vec![b'a'; 4 << 20];
    long.push(0);
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::GNULongName);
    header.set_size(long.len() as u64);
    header.set_mode(0o644);
    header.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
    header.set_cksum();
    let mut tar = header.as_bytes().to_vec();
    tar.extend_from_slice(&long);
    tar.resize(tar.len().div_ceil(512) * 512, 0);
    tar.extend_from_slice(&tar_of(|t| {
        t.file("x", 0o644, b"x");
    }));
    scene
        .layout
        .add_layer(media::WEIGHT_TAR_GZIP, &gzip(&tar), &[]);
    scene.pull_is_refused(&["tar headers", "exceed"]);
}

#[test]
fn a_raw_layer_filepath_with_a_newline_is_refused() {
    let mut scene = Scene::new();
    scene
        .layout
        .add_raw_file(media::WEIGHT_RAW, "ok\n{\"level\":\"INFO\"}", 0o644, b"x");
    scene.pull_is_refused(&["unsafe path", "control characters"]);
}

#[test]
fn a_tar_mtime_beyond_the_representable_range_is_ignored_not_a_panic() {
    let mut scene = Scene::new();
    let mut header = tar::Header::new_gnu();
    header.set_path("late.bin").unwrap();
    header.set_size(3);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    // GNU base-256: high bit set, then 2^63 in the remaining bytes.
    let mtime = &mut header.as_gnu_mut().unwrap().mtime;
    mtime.fill(0);
    mtime[0] = 0x80;
    mtime[4] = 0x80;
    header.set_cksum();
    let mut tar = header.as_bytes().to_vec();
    tar.extend_from_slice(b"abc");
    tar.resize(512 * 2, 0);
    tar.extend_from_slice(&[0u8; 1024]);
    scene.layout.add_layer(media::WEIGHT_TAR, &tar, &[]);
    let (_, _, out) = scene.pull();
    assert_success(&out);
    assert!(!out.stderr.contains("panicked"), "{out}");
    assert_eq!(fs::read(scene.dest.join("late.bin")).unwrap(), b"abc");
}

#[test]
fn tar_hardlink_to_a_file_outside_the_destination_is_refused() {
    let mut scene = Scene::new();
    // Hardlink targets are relative to the archive root: this is the bait file.
    let tar = tar_of(|t| {
        t.hardlink("hl", "../../outside/secret.txt");
    });
    scene.layout.add_layer(media::WEIGHT_TAR, &tar, &[]);
    scene.pull_is_refused(&[&backticked("hl"), "escapes"]);
}

// ------------------------------------------------------------------------------------------------
// Special files and permission bits
// ------------------------------------------------------------------------------------------------

#[test]
fn tar_character_device_is_refused() {
    let mut scene = Scene::new();
    let tar = tar_of(|t| {
        t.char_device("dev/zero", 1, 5);
    });
    scene.layout.add_layer(media::WEIGHT_TAR, &tar, &[]);
    scene.pull_is_refused(&[&backticked("dev/zero"), "character device"]);
}

#[test]
fn tar_setuid_regular_file_is_refused() {
    let mut scene = Scene::new();
    let tar = tar_of(|t| {
        t.file("bin/tool", 0o4755, b"#!/bin/sh\nid\n");
    });
    scene.layout.add_layer(media::WEIGHT_TAR, &tar, &[]);
    scene.pull_is_refused(&[&backticked("bin/tool"), "setuid"]);
}

// ------------------------------------------------------------------------------------------------
// Raw-layer file paths
// ------------------------------------------------------------------------------------------------

#[test]
fn raw_layer_filepath_with_parent_traversal_is_refused() {
    let mut scene = Scene::new();
    scene
        .layout
        .add_raw_file(media::WEIGHT_RAW, "../x", 0o644, b"pwned\n");
    scene.pull_is_refused(&[&backticked("../x"), "unsafe"]);
}

#[test]
fn raw_layer_with_absolute_filepath_is_refused() {
    let mut scene = Scene::new();
    let target = scene.absolute("abs-x");
    scene
        .layout
        .add_raw_file(media::WEIGHT_RAW, &target, 0o644, b"pwned\n");
    scene.pull_is_refused(&[&backticked(&target), "unsafe"]);
    assert!(!Path::new(&target).exists(), "`{target}` was written");
}

#[test]
fn legacy_cnai_raw_layer_filepath_with_parent_traversal_is_refused() {
    let mut scene = Scene::legacy();
    scene
        .layout
        .add_raw_file(media::LEGACY_WEIGHT_RAW, "../x", 0o644, b"pwned\n");
    scene.pull_is_refused(&[&backticked("../x"), "unsafe"]);
}

// ------------------------------------------------------------------------------------------------
// Blobs that lie
// ------------------------------------------------------------------------------------------------

#[test]
fn tar_layer_whose_bytes_do_not_match_its_digest_is_refused() {
    let mut scene = Scene::new();
    let tar = tar_of(|t| {
        t.file("weights.bin", 0o644, &pseudo_random_bytes(b"digest", 4096));
    });
    let layer = scene.layout.add_layer(media::WEIGHT_TAR, &tar, &[]);
    // Flip one byte of file data (after the 512-byte header): still a well-formed tar with the
    // same size, so only the digest check can catch it.
    let mut tampered = tar.clone();
    tampered[512 + 100] ^= 0xff;
    let digest = scene.layout.layer(layer).digest.clone();
    scene.layout.replace_blob(&digest, &tampered);
    scene.pull_is_refused(&["digest mismatch", &digest]);
}

#[test]
fn raw_layer_whose_bytes_do_not_match_its_digest_is_refused() {
    let mut scene = Scene::new();
    let bytes = pseudo_random_bytes(b"raw digest", 64 * 1024);
    let layer = scene
        .layout
        .add_raw_file(media::WEIGHT_RAW, "x.bin", 0o644, &bytes);
    let mut tampered = bytes.clone();
    tampered[1000] ^= 0xff;
    let digest = scene.layout.layer(layer).digest.clone();
    scene.layout.replace_blob(&digest, &tampered);
    scene.pull_is_refused(&["digest mismatch", &digest]);
}

#[test]
fn blob_shorter_than_its_descriptor_size_is_refused() {
    let mut scene = Scene::new();
    let bytes = pseudo_random_bytes(b"truncated", 64 * 1024);
    let layer = scene
        .layout
        .add_raw_file(media::WEIGHT_RAW, "x.bin", 0o644, &bytes);
    let digest = scene.layout.layer(layer).digest.clone();
    scene.layout.replace_blob(&digest, &bytes[..32 * 1024]);
    scene.pull_is_refused(&["size mismatch", &digest]);
}

#[test]
fn blob_longer_than_its_descriptor_size_is_refused() {
    let mut scene = Scene::new();
    let bytes = pseudo_random_bytes(b"overlong", 64 * 1024);
    let layer = scene
        .layout
        .add_raw_file(media::WEIGHT_RAW, "x.bin", 0o644, &bytes);
    let digest = scene.layout.layer(layer).digest.clone();
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0u8; 1024]);
    scene.layout.replace_blob(&digest, &longer);
    scene.pull_is_refused(&["size mismatch", &digest]);
}

// ------------------------------------------------------------------------------------------------
// Positive controls: the same scaffolding succeeds on benign input
// ------------------------------------------------------------------------------------------------

#[track_caller]
fn assert_pulled(scene: &Scene, manifest_digest: &str, out: &RunOutput) {
    assert_success(out);
    assert_eq!(
        dir_names(&scene.parent),
        vec!["model".to_owned()],
        "only the destination may remain next to it (no staging leftovers)\n{out}"
    );
    let marker = fs::read_to_string(scene.dest.join(COMPLETE_MARKER))
        .unwrap_or_else(|e| panic!("completion marker missing: {e}\n{out}"));
    serde_json::from_str::<serde_json::Value>(&marker)
        .unwrap_or_else(|e| panic!("completion marker is not JSON ({e}): {marker}"));
    assert!(
        marker.contains(manifest_digest),
        "completion marker does not name manifest {manifest_digest}: {marker}"
    );
}

#[test]
fn benign_tar_layer_is_pulled_with_its_bytes_and_header_modes() {
    let mut scene = Scene::new();
    let shard = pseudo_random_bytes(b"benign shard", 256 * 1024);
    let tokenizer = br#"{"version":"1.0"}"#;
    let tar = tar_of(|t| {
        t.dir("weights/", 0o755)
            .file("weights/shard-00001.bin", 0o640, &shard)
            .file("tokenizer.json", 0o600, tokenizer);
    });
    scene.layout.add_layer(media::WEIGHT_TAR, &tar, &[]);
    let (manifest_digest, _, out) = scene.pull();
    assert_pulled(&scene, &manifest_digest, &out);

    let tree = tree_snapshot(&scene.dest, true);
    assert_eq!(
        tree.keys().collect::<Vec<_>>(),
        ["tokenizer.json", "weights", "weights/shard-00001.bin"],
        "{tree:#?}"
    );
    assert_eq!(tree["weights"].kind, FileKind::Dir);
    let shard_fact = &tree["weights/shard-00001.bin"];
    assert_eq!(shard_fact.kind, FileKind::File);
    assert_eq!(
        shard_fact.sha256.as_deref(),
        Some(sha256_hex(&shard).as_str())
    );
    assert_eq!(shard_fact.mode, 0o640, "mode comes from the tar header");
    let tokenizer_fact = &tree["tokenizer.json"];
    assert_eq!(
        tokenizer_fact.sha256.as_deref(),
        Some(sha256_hex(tokenizer).as_str())
    );
    assert_eq!(tokenizer_fact.mode, 0o600, "mode comes from the tar header");
}

#[test]
fn benign_raw_layer_is_pulled_with_the_mode_from_its_metadata_annotation() {
    let mut scene = Scene::new();
    let bytes = pseudo_random_bytes(b"benign raw", 100 * 1024);
    // file.metadata+json says mode 384 = 0o600.
    scene
        .layout
        .add_raw_file(media::WEIGHT_RAW, "x.bin", 0o600, &bytes);
    let (manifest_digest, _, out) = scene.pull();
    assert_pulled(&scene, &manifest_digest, &out);

    let tree = tree_snapshot(&scene.dest, true);
    assert_eq!(tree.keys().collect::<Vec<_>>(), ["x.bin"], "{tree:#?}");
    let fact = &tree["x.bin"];
    assert_eq!(fact.kind, FileKind::File);
    assert_eq!(fact.size, bytes.len() as u64);
    assert_eq!(fact.sha256.as_deref(), Some(sha256_hex(&bytes).as_str()));
    assert_eq!(
        fact.mode, 0o600,
        "mode comes from org.cncf.model.file.metadata+json"
    );
}

// ------------------------------------------------------------------------------------------------
// Layers that contradict each other
// ------------------------------------------------------------------------------------------------

#[test]
fn a_symlink_from_one_layer_written_through_by_a_later_tar_layer_is_refused() {
    let mut scene = Scene::new();
    // Layers run biggest first; with one at a time the link's layer lands first.
    let link_layer = tar_of(|t| {
        t.dir("sub/", 0o755)
            .symlink("d", "sub")
            .file("padding.bin", 0o644, &[0u8; 8192]);
    });
    let write_layer = tar_of(|t| {
        t.file("d/x", 0o644, b"through a link from another layer\n");
    });
    scene.layout.add_layer(media::WEIGHT_TAR, &link_layer, &[]);
    scene.layout.add_layer(media::WEIGHT_TAR, &write_layer, &[]);
    scene.layout.write(TAG);
    let reference = scene.layout.reference(TAG);
    scene.pull_ref_is_refused(
        &reference,
        &["--concurrency", "1"],
        &[
            &backticked("d/x"),
            "would be written through",
            &backticked("d"),
        ],
    );
}

#[test]
fn a_symlink_from_one_layer_written_through_by_a_later_raw_layer_is_refused() {
    let mut scene = Scene::new();
    // `sub/up -> ..` is the root itself, so the link is fine; `sub/up/evil` through it is not.
    let link_layer = tar_of(|t| {
        t.dir("sub/", 0o755)
            .symlink("sub/up", "..")
            .file("padding.bin", 0o644, &[0u8; 8192]);
    });
    scene.layout.add_layer(media::WEIGHT_TAR, &link_layer, &[]);
    scene
        .layout
        .add_raw_file(media::WEIGHT_RAW, "sub/up/evil", 0o644, b"pwned\n");
    scene.layout.write(TAG);
    let reference = scene.layout.reference(TAG);
    scene.pull_ref_is_refused(
        &reference,
        &["--concurrency", "1"],
        &[
            &backticked("sub/up/evil"),
            "would be written through",
            &backticked("sub/up"),
        ],
    );
}

#[test]
fn a_symlink_and_a_write_through_it_in_concurrent_layers_are_refused_in_either_order() {
    let mut scene = Scene::new();
    // Same sizes, default concurrency: whichever layer lands first, the other must fail.
    scene.layout.add_layer(
        media::WEIGHT_TAR,
        &tar_of(|t| {
            t.dir("sub/", 0o755).symlink("d", "sub");
        }),
        &[],
    );
    scene.layout.add_layer(
        media::WEIGHT_TAR,
        &tar_of(|t| {
            t.file("d/x", 0o644, b"x\n");
        }),
        &[],
    );
    scene.pull_is_refused(&[&backticked("d")]);
}

#[test]
fn two_raw_layers_claiming_the_same_file_are_refused() {
    let mut scene = Scene::new();
    scene.layout.add_raw_file(
        media::WEIGHT_RAW,
        "model.safetensors",
        0o644,
        b"version one\n",
    );
    scene.layout.add_raw_file(
        media::WEIGHT_RAW,
        "model.safetensors",
        0o644,
        b"version two!\n",
    );
    scene.pull_is_refused(&[&backticked("model.safetensors"), "claimed twice"]);
}

#[test]
fn a_tar_layer_and_a_raw_layer_claiming_the_same_file_are_refused() {
    let mut scene = Scene::new();
    scene.layout.add_layer(
        media::WEIGHT_TAR,
        &tar_of(|t| {
            t.file("config.json", 0o644, b"{\"from\":\"tar\"}");
        }),
        &[],
    );
    scene.layout.add_raw_file(
        media::WEIGHT_CONFIG_RAW,
        "config.json",
        0o644,
        b"{\"from\":\"raw\"}",
    );
    scene.pull_is_refused(&[&backticked("config.json"), "claimed twice"]);
}

#[test]
fn two_tar_layers_claiming_the_same_file_are_refused() {
    let mut scene = Scene::new();
    for content in [&b"one"[..], &b"two, longer"[..]] {
        scene.layout.add_layer(
            media::WEIGHT_TAR,
            &tar_of(|t| {
                t.dir("w/", 0o755).file("w/shard.bin", 0o644, content);
            }),
            &[],
        );
    }
    scene.pull_is_refused(&[&backticked("w/shard.bin"), "claimed twice"]);
}

#[test]
fn one_tar_layer_with_the_same_file_twice_is_refused() {
    let mut scene = Scene::new();
    let tar = tar_of(|t| {
        t.file("x.bin", 0o644, b"first")
            .file("x.bin", 0o644, b"second");
    });
    scene.layout.add_layer(media::WEIGHT_TAR, &tar, &[]);
    scene.pull_is_refused(&[&backticked("x.bin"), "claimed twice"]);
}

#[test]
fn a_raw_file_and_a_tar_directory_of_the_same_name_are_refused() {
    let mut scene = Scene::new();
    scene
        .layout
        .add_raw_file(media::WEIGHT_RAW, "weights", 0o644, b"a file\n");
    scene.layout.add_layer(
        media::WEIGHT_TAR,
        &tar_of(|t| {
            t.dir("weights/", 0o755).file("weights/a.bin", 0o644, b"a");
        }),
        &[],
    );
    scene.pull_is_refused(&[&backticked("weights")]);
}

/// Control for the duplicate refusals: a directory shared by two layers is not a conflict.
#[test]
fn two_layers_sharing_a_directory_with_distinct_files_pull() {
    let mut scene = Scene::new();
    for (name, content) in [("w/a.bin", &b"aaaa"[..]), ("w/b.bin", &b"bbbbbbbb"[..])] {
        scene.layout.add_layer(
            media::WEIGHT_TAR,
            &tar_of(|t| {
                t.dir("w/", 0o755).file(name, 0o644, content);
            }),
            &[],
        );
    }
    let (digest, _, out) = scene.pull();
    assert_pulled(&scene, &digest, &out);
    assert_eq!(fs::read(scene.dest.join("w/a.bin")).unwrap(), b"aaaa");
    assert_eq!(fs::read(scene.dest.join("w/b.bin")).unwrap(), b"bbbbbbbb");
}

// ------------------------------------------------------------------------------------------------
// More raw-layer file paths
// ------------------------------------------------------------------------------------------------

#[test]
fn raw_layer_filepath_with_a_nul_byte_is_refused() {
    let mut scene = Scene::new();
    scene
        .layout
        .add_raw_file(media::WEIGHT_RAW, "model\0.safetensors", 0o644, b"x");
    scene.pull_is_refused(&["unsafe path", "NUL"]);
}

#[test]
fn raw_layer_filepath_that_names_no_file_is_refused() {
    for path in ["", ".", "./"] {
        let mut scene = Scene::new();
        scene
            .layout
            .add_raw_file(media::WEIGHT_RAW, path, 0o644, b"x");
        scene.pull_is_refused(&["unsafe path", "names no file"]);
    }
}

#[test]
fn raw_layer_filepath_that_would_forge_a_modelcrypt_marker_is_refused() {
    for path in [
        COMPLETE_MARKER,
        ".modelcrypt-staging-owner",
        "./.modelcrypt-complete",
    ] {
        let mut scene = Scene::new();
        scene.layout.add_raw_file(
            media::WEIGHT_RAW,
            path,
            0o644,
            br#"{"manifestDigest":"sha256:0000000000000000000000000000000000000000000000000000000000000000"}"#,
        );
        scene.pull_is_refused(&["unsafe path", "forge a modelcrypt marker"]);
    }
}

#[test]
fn raw_layer_with_traversal_after_a_normal_component_is_refused() {
    let mut scene = Scene::new();
    scene
        .layout
        .add_raw_file(media::WEIGHT_RAW, "a/../../evil", 0o644, b"pwned\n");
    scene.pull_is_refused(&[&backticked("a/../../evil"), "unsafe"]);
}

#[test]
fn raw_layer_whose_metadata_size_disagrees_with_its_blob_is_refused() {
    for claimed in [99u64, 101] {
        let mut scene = Scene::new();
        let bytes = pseudo_random_bytes(b"metadata size", 100);
        let metadata = crate::common::file_metadata_json("x.bin", 0o644, claimed);
        scene.layout.add_layer(
            media::WEIGHT_RAW,
            &bytes,
            &[
                (annotation::FILEPATH, "x.bin"),
                (annotation::FILE_METADATA, &metadata),
            ],
        );
        scene.pull_is_refused(&["x.bin", "100 bytes", &format!("says {claimed}")]);
    }
}

// ------------------------------------------------------------------------------------------------
// Decompression bombs
// ------------------------------------------------------------------------------------------------

/// A few kB of gzip or zstd that expand to 64 MiB of zeros, pulled into a 4 MiB tmpfs. Nothing
/// bounds decompression by itself: the pull must fail when the device fills, clean up, and
/// leave the tmpfs exactly as it was.
#[test]
fn a_decompression_bomb_fills_its_tmpfs_fails_and_frees_every_byte() {
    let Some(fs_) = crate::faults::Tmpfs::mount("4m") else {
        return;
    };
    let expanded = 64 << 20;
    let tar = tar_of(|t| {
        t.file("weights.bin", 0o644, &vec![0u8; expanded]);
    });
    for (media_type, blob) in [
        (media::WEIGHT_TAR_GZIP, gzip(&tar)),
        (media::WEIGHT_TAR_ZSTD, zstd_compress(&tar)),
    ] {
        assert!(
            blob.len() * 200 < expanded,
            "{media_type}: a bomb is small ({} bytes)",
            blob.len()
        );
        let tmp = tempfile::tempdir().unwrap();
        let mut layout = OciLayoutBuilder::new(tmp.path().join("layout"));
        layout.add_layer(media_type, &blob, &[]);
        layout.write(TAG);
        let parent = fs_.path().join("models");
        fs::create_dir(&parent).unwrap();
        let dest = parent.join("bomb");
        let before = tree_snapshot(fs_.path(), false);
        let used = fs_.used_bytes();
        let out = Cmd::modelcrypt()
            .args(["pull", &layout.reference(TAG), "--to"])
            .arg(&dest)
            .arg("--no-progress")
            .run();
        println!("{out}");
        assert_failure_contains(&out, &["weights.bin", "No space left on device"]);
        assert!(fs::symlink_metadata(&dest).is_err(), "{out}");
        assert_eq!(dir_names(&parent), Vec::<String>::new(), "{out}");
        assert_snapshots_equal(&before, &tree_snapshot(fs_.path(), false), "the tmpfs");
        assert_eq!(fs_.used_bytes(), used, "every byte was freed\n{out}");
        fs::remove_dir(&parent).unwrap();
    }
}

// ------------------------------------------------------------------------------------------------
// Descriptors that lie about sizes, in a real registry
// ------------------------------------------------------------------------------------------------

#[test]
fn a_descriptor_size_that_disagrees_with_the_registrys_blob_is_refused() {
    if !require_peer("docker-registry") {
        return;
    }
    let reg = TestRegistry::start();
    for (i, delta) in [-1i64, 1, -4096, 4096].into_iter().enumerate() {
        let mut scene = Scene::new();
        let bytes = pseudo_random_bytes(b"descriptor size", 64 * 1024);
        let layer = scene
            .layout
            .add_raw_file(media::WEIGHT_RAW, "x.bin", 0o644, &bytes);
        let claimed = (bytes.len() as i64 + delta) as u64;
        scene.layout.layer_mut(layer).size = claimed;
        // The raw file's metadata agrees with the lie, so only the bytes can contradict it.
        scene.layout.layer_mut(layer).annotations.insert(
            annotation::FILE_METADATA.into(),
            crate::common::file_metadata_json("x.bin", 0o644, claimed),
        );
        scene.layout.write(TAG);
        let repo_tag = format!("hostile/size{i}:v1");
        reg.push_layout(scene.layout.dir(), TAG, &repo_tag);
        let digest = scene.layout.layer(layer).digest.clone();
        // A clear error names the blob, the size claimed and the size found.
        scene.pull_ref_is_refused(
            &reg.reference(&repo_tag),
            &["--plain-http"],
            &[&digest, &claimed.to_string(), &bytes.len().to_string()],
        );
    }
}

// ------------------------------------------------------------------------------------------------
// Manifests over the 4 MiB limit
// ------------------------------------------------------------------------------------------------

const MANIFEST_LIMIT: usize = 4 * 1024 * 1024;

/// A valid OCI manifest of exactly `len` bytes, padded with an annotation.
fn padded_manifest(len: usize) -> Vec<u8> {
    let head = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{}","size":2}},"layers":[],"annotations":{{"pad":""#,
        media::OCI_MANIFEST,
        media::CONFIG,
        sha256_digest(b"{}"),
    );
    let tail = r#""}}"#;
    let mut m = head.into_bytes();
    m.resize(len - tail.len(), b'x');
    m.extend_from_slice(tail.as_bytes());
    serde_json::from_slice::<Value>(&m).expect("the padded manifest is JSON");
    m
}

/// A layout whose index points at a valid manifest of 4 MiB + 1 byte; returns its digest.
fn oversized_manifest_layout(scene: &Scene) -> String {
    let manifest = padded_manifest(MANIFEST_LIMIT + 1);
    scene.layout.write_blob(b"{}");
    let (digest, size) = scene.layout.write_blob(&manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": [{
            "mediaType": media::OCI_MANIFEST,
            "digest": digest,
            "size": size,
            "annotations": { (annotation::REF_NAME): TAG },
        }],
    });
    fs::write(
        scene.layout.dir().join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    digest
}

#[test]
fn a_manifest_over_4_mib_in_a_layout_is_refused() {
    let scene = Scene::new();
    let digest = oversized_manifest_layout(&scene);
    let reference = scene.layout.reference(TAG);
    scene.pull_ref_is_refused(&reference, &[], &[&digest, "4194304"]);
}

#[test]
fn a_manifest_over_4_mib_in_a_layout_is_refused_as_too_large() {
    let scene = Scene::new();
    oversized_manifest_layout(&scene);
    let reference = scene.layout.reference(TAG);
    let out = scene.pull_ref_is_refused(&reference, &[], &["manifest", "limit"]);
    assert!(!out.stderr.contains("written to"), "{out}");
}

/// A hostile registry on loopback: `/v2/` answers as distribution does, and every manifest GET
/// gets `manifest` (or, with `endless`, a chunked manifest that never ends, up to `endless`
/// bytes). The real registry refuses to store or serve a manifest over 4 MiB, so only a
/// hostile one sends it. Counts the manifest bytes the client accepted.
struct HostileRegistry {
    port: u16,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HostileRegistry {
    fn start(manifest: Vec<u8>, endless: Option<u64>) -> HostileRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (counter, stopping) = (sent.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let _ = serve_one(stream, &manifest, endless, &counter);
            }
        });
        HostileRegistry {
            port,
            sent,
            stop,
            thread: Some(thread),
        }
    }

    fn reference(&self) -> String {
        format!("docker://127.0.0.1:{}/hostile/model:v1", self.port)
    }
}

impl Drop for HostileRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers one request on `stream` and closes it.
fn serve_one(
    mut stream: TcpStream,
    manifest: &[u8],
    endless: Option<u64>,
    sent: &AtomicU64,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut header = String::new();
    while reader.read_line(&mut header)? > 2 {
        header.clear();
    }
    let path = request_line.split(' ').nth(1).unwrap_or("");
    if path == "/v2/" {
        let body = b"{}";
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nDocker-Distribution-Api-Version: registry/2.0\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        return stream.write_all(body);
    }
    if !path.contains("/manifests/") {
        return stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    }
    let Some(limit) = endless else {
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nDocker-Distribution-Api-Version: registry/2.0\r\n\
             Content-Type: {}\r\nDocker-Content-Digest: {}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            media::OCI_MANIFEST,
            sha256_digest(manifest),
            manifest.len()
        )?;
        for chunk in manifest.chunks(64 * 1024) {
            stream.write_all(chunk)?;
            sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        }
        return Ok(());
    };
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nDocker-Distribution-Api-Version: registry/2.0\r\n\
         Content-Type: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        media::OCI_MANIFEST
    )?;
    let chunk = vec![b'x'; 64 * 1024];
    let head = br#"{"schemaVersion":2,"annotations":{"pad":""#;
    write!(stream, "{:x}\r\n", head.len())?;
    stream.write_all(head)?;
    stream.write_all(b"\r\n")?;
    // Stops when the client hangs up (a write fails) or at `limit`.
    while sent.load(Ordering::SeqCst) < limit {
        write!(stream, "{:x}\r\n", chunk.len())?;
        stream.write_all(&chunk)?;
        stream.write_all(b"\r\n")?;
        sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
    }
    stream.write_all(b"4\r\n\"}}\n\r\n0\r\n\r\n")
}

#[test]
fn a_manifest_over_4_mib_from_a_hostile_registry_is_refused() {
    let scene = Scene::new();
    let registry = HostileRegistry::start(padded_manifest(MANIFEST_LIMIT + 1024), None);
    scene.pull_ref_is_refused(
        &registry.reference(),
        &["--plain-http"],
        &["manifest", "4194304"],
    );
}

#[test]
fn an_endless_manifest_from_a_hostile_registry_is_cut_off_near_4_mib() {
    let scene = Scene::new();
    let registry = HostileRegistry::start(Vec::new(), Some(256 << 20));
    scene.pull_ref_is_refused(&registry.reference(), &["--plain-http"], &["manifest"]);
    let sent = registry.sent.load(Ordering::SeqCst);
    // Loopback socket buffers hold a few MiB the client never read.
    assert!(
        sent <= (16 << 20),
        "the client accepted {sent} bytes of a manifest limited to 4 MiB"
    );
}

// ------------------------------------------------------------------------------------------------
// Malformed ocicrypt annotations on encrypted layers
// ------------------------------------------------------------------------------------------------

const KID: &str = "kbs:///default/key/1";
const PUBOPTS: &str = "org.opencontainers.image.enc.pubopts";
const JWE: &str = "org.opencontainers.image.enc.keys.jwe";
const PROVIDER: &str = "org.opencontainers.image.enc.keys.provider.attestation-agent";
const CIPHER: &str = "AES_256_CTR_HMAC_SHA256";

/// A Scene whose artifact is encrypted: a plain layout (config + 64 KiB of weights, raw
/// layers) encrypted by `modelcrypt encrypt` for an EC JWE recipient and for [`KID`] under a
/// KEK, into `<tmp>/enc`. The keys are in `<tmp>/keys`. Tests rewrite the weights layer's
/// annotations in the encrypted manifest, then pull it.
struct Encrypted {
    scene: Scene,
    dir: PathBuf,
    reference: String,
    kek: PathBuf,
    kek_bytes: Vec<u8>,
    private_key: PathBuf,
    manifest: Value,
    weights: usize,
}

fn run_ok(args: &[&str]) -> String {
    let out = Cmd::modelcrypt().args(args).run();
    assert_success(&out);
    out.stdout.trim().to_string()
}

impl Encrypted {
    fn new() -> Encrypted {
        let mut scene = Scene::new();
        let weights = pseudo_random_bytes(b"encrypted hostile", 64 * 1024);
        scene
            .layout
            .add_raw_file(media::WEIGHT_CONFIG_RAW, "config.json", 0o644, b"{}");
        scene
            .layout
            .add_raw_file(media::WEIGHT_RAW, "model.safetensors", 0o644, &weights);
        scene.layout.write(TAG);
        let keys = scene.root().join("keys");
        fs::create_dir(&keys).unwrap();
        let kek = keys.join("kek.bin");
        let private_key = keys.join("ec.pem");
        run_ok(&["keygen", "--type", "kek", "--out", kek.to_str().unwrap()]);
        run_ok(&[
            "keygen",
            "--type",
            "ec",
            "--out",
            private_key.to_str().unwrap(),
        ]);
        let dir = scene.root().join("enc");
        let reference = format!("oci:{}:{TAG}", dir.display());
        run_ok(&[
            "encrypt",
            &scene.layout.reference(TAG),
            &reference,
            "--recipient",
            &format!("jwe:{}.pub", private_key.display()),
            "--recipient",
            KID,
            "--kek",
            kek.to_str().unwrap(),
        ]);
        let (_, manifest) = layout_manifest(&dir);
        let weights = manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .position(|l| l["annotations"][annotation::FILEPATH] == "model.safetensors")
            .expect("a weights layer");
        Encrypted {
            kek_bytes: fs::read(&kek).unwrap(),
            scene,
            dir,
            reference,
            kek,
            private_key,
            manifest,
            weights,
        }
    }

    /// The weights layer's annotation `key` as encrypt wrote it.
    fn annotation(&self, key: &str) -> &str {
        self.manifest["layers"][self.weights]["annotations"][key]
            .as_str()
            .unwrap_or_else(|| panic!("no `{key}` annotation"))
    }

    /// Writes the manifest with the weights layer's annotation `key` set to `value` (removed
    /// when `None`), then pulls with `keys` and asserts a clean refusal.
    #[track_caller]
    fn refused_with(&self, key: &str, value: Option<String>, keys: &[&str], fragments: &[&str]) {
        let mut m = self.manifest.clone();
        let annotations = m["layers"][self.weights]["annotations"]
            .as_object_mut()
            .unwrap();
        match value {
            Some(v) => annotations.insert(key.into(), Value::String(v)),
            None => annotations.remove(key),
        };
        write_layout_manifest(&self.dir, &m);
        self.scene
            .pull_ref_is_refused(&self.reference, keys, fragments);
    }

    fn with_kek(&self) -> [&str; 2] {
        ["--kek", self.kek.to_str().unwrap()]
    }

    fn with_private_key(&self) -> [&str; 2] {
        ["--decryption-key", self.private_key.to_str().unwrap()]
    }

    /// `json` as private options, wrapped under the real KEK for [`KID`] (what an attacker who
    /// holds the KEK, or a buggy encryptor, could write).
    fn wrapped(&self, json: &[u8]) -> String {
        use modelcrypt::ocicrypt::provider::{AnnotationPacket, Kek, ResourceUri};
        let kek = Kek::from_bytes(&self.kek_bytes).unwrap();
        let packet = AnnotationPacket::wrap(&ResourceUri::parse(KID).unwrap(), &kek, json).unwrap();
        B64.encode(packet.to_json())
    }

    /// The weights layer's real AnnotationPacket as JSON, to edit.
    fn packet(&self) -> Value {
        serde_json::from_slice(&B64.decode(self.annotation(PROVIDER)).unwrap()).unwrap()
    }
}

/// Control: the unedited encrypted artifact pulls with either key.
#[test]
fn the_encrypted_fixture_pulls_with_the_kek_and_with_the_private_key() {
    let e = Encrypted::new();
    for keys in [e.with_kek(), e.with_private_key()] {
        let (_, out) = e.scene.pull_ref(&e.reference, &keys);
        assert_success(&out);
        assert_eq!(fs::read(e.scene.dest.join("config.json")).unwrap(), b"{}");
        fs::remove_dir_all(&e.scene.dest).unwrap();
    }
}

#[test]
fn malformed_pubopts_are_refused() {
    let e = Encrypted::new();
    let keys = e.with_kek();
    let pubopts = |cipher: &str, hmac: &str, options: &str| {
        B64.encode(format!(
            r#"{{"cipher":"{cipher}","hmac":"{hmac}","cipheroptions":{options}}}"#
        ))
    };
    let hmac32 = B64.encode([0u8; 32]);
    let cases: Vec<(&str, Option<String>, Vec<&str>)> = vec![
        ("missing", None, vec![PUBOPTS]),
        (
            "not base64",
            Some("%%% not base64 %%%".into()),
            vec![PUBOPTS, "not base64"],
        ),
        (
            "not JSON",
            Some(B64.encode("{not json")),
            vec![PUBOPTS, "malformed"],
        ),
        (
            "another cipher",
            Some(pubopts("AES_128_CTR_HMAC_SHA256", &hmac32, "{}")),
            vec!["unsupported cipher", "AES_128_CTR_HMAC_SHA256"],
        ),
        (
            "a public nonce",
            Some(pubopts(
                CIPHER,
                &hmac32,
                &format!(r#"{{"nonce":"{}"}}"#, B64.encode([1u8; 16])),
            )),
            vec!["nonce"],
        ),
        (
            "a short HMAC",
            Some(pubopts(CIPHER, &B64.encode([0u8; 16]), "{}")),
            vec!["HMAC", "16 bytes"],
        ),
        (
            "an HMAC that is not base64",
            Some(pubopts(CIPHER, "%%%", "{}")),
            vec!["`hmac` is not base64"],
        ),
        (
            "over 1 MiB",
            Some("A".repeat((1 << 20) + 4)),
            vec![PUBOPTS, "1 MiB"],
        ),
        // Well-formed but not the ciphertext's: only the streamed HMAC check can catch it.
        (
            "a wrong HMAC",
            Some(pubopts(CIPHER, &hmac32, "{}")),
            vec!["HMAC", "model.safetensors"],
        ),
    ];
    for (what, value, fragments) in cases {
        println!("--- pubopts: {what}");
        e.refused_with(PUBOPTS, value, &keys, &fragments);
    }
}

#[test]
fn malformed_private_options_under_the_right_kek_are_refused() {
    let e = Encrypted::new();
    let keys = e.with_kek();
    let key32 = B64.encode(pseudo_random_bytes(b"not the layer key", 32));
    let nonce16 = B64.encode([7u8; 16]);
    let opts = |symkey: &str, options: &str| {
        format!(r#"{{"symkey":"{symkey}","digest":"sha256:00","cipheroptions":{options}}}"#)
    };
    let nonce_opt = format!(r#"{{"nonce":"{nonce16}"}}"#);
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "not JSON",
            "{not json".into(),
            vec!["private options are malformed"],
        ),
        (
            "no symkey",
            format!(r#"{{"cipheroptions":{nonce_opt}}}"#),
            vec!["private options are malformed", "symkey"],
        ),
        (
            "a symkey that is not base64",
            opts("%%%", &nonce_opt),
            vec!["`symkey` is not base64"],
        ),
        ("no nonce", opts(&key32, "{}"), vec!["cipheroptions.nonce"]),
        (
            "a short key",
            opts(&B64.encode([1u8; 16]), &nonce_opt),
            vec!["layer key is 16 bytes"],
        ),
        (
            "a short nonce",
            opts(
                &key32,
                &format!(r#"{{"nonce":"{}"}}"#, B64.encode([1u8; 8])),
            ),
            vec!["nonce is 8 bytes"],
        ),
        // Well-formed, wrong key: decrypts to garbage, which the HMAC must catch.
        (
            "a wrong key",
            opts(&key32, &nonce_opt),
            vec!["HMAC", "model.safetensors"],
        ),
    ];
    for (what, json, fragments) in cases {
        println!("--- private options: {what}");
        e.refused_with(
            PROVIDER,
            Some(e.wrapped(json.as_bytes())),
            &keys,
            &fragments,
        );
    }
}

#[test]
fn malformed_jwe_recipients_are_refused() {
    let e = Encrypted::new();
    let keys = e.with_private_key();
    let real: Value = serde_json::from_slice(&B64.decode(e.annotation(JWE)).unwrap()).unwrap();
    let real_text = serde_json::to_string(&real).unwrap();
    let mut other_alg = real.clone();
    other_alg["protected"] = Value::String(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"alg":"dir","enc":"A256GCM"}"#),
    );
    let mut no_tag = real.clone();
    no_tag.as_object_mut().unwrap().remove("tag");
    // A JWE for a key we do not hold, written by the same encryptor.
    let other = e.scene.root().join("keys/other.pem");
    run_ok(&["keygen", "--type", "ec", "--out", other.to_str().unwrap()]);
    let other_ref = format!("oci:{}:{TAG}", e.scene.root().join("enc-other").display());
    run_ok(&[
        "encrypt",
        &e.scene.layout.reference(TAG),
        &other_ref,
        "--recipient",
        &format!("jwe:{}.pub", other.display()),
    ]);
    let (_, other_manifest) = layout_manifest(&e.scene.root().join("enc-other"));
    let foreign = other_manifest["layers"][e.weights]["annotations"][JWE]
        .as_str()
        .unwrap()
        .to_string();
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "not base64",
            "%%% not base64".into(),
            vec!["no key fits", "not base64"],
        ),
        (
            "not JSON",
            B64.encode("{not json"),
            vec!["no key fits", "malformed JWE"],
        ),
        (
            "an empty object",
            B64.encode("{}"),
            vec!["no key fits", "JWE"],
        ),
        (
            "truncated",
            B64.encode(&real_text[..real_text.len() / 2]),
            vec!["no key fits", "malformed JWE"],
        ),
        (
            "without its tag",
            B64.encode(no_tag.to_string()),
            vec!["no key fits", "JWE"],
        ),
        (
            "another algorithm",
            B64.encode(other_alg.to_string()),
            vec!["no key fits", "dir"],
        ),
        (
            "over 1 MiB",
            "A".repeat((1 << 20) + 4),
            vec!["no key fits", "1 MiB"],
        ),
        ("for another key", foreign, vec!["no key fits", "JWE"]),
    ];
    for (what, value, fragments) in cases {
        println!("--- JWE: {what}");
        e.refused_with(JWE, Some(value), &keys, &fragments);
    }
}

#[test]
fn malformed_annotation_packets_are_refused() {
    let e = Encrypted::new();
    let keys = e.with_kek();
    let edited = |field: &str, value: Value| {
        let mut p = e.packet();
        p[field] = value;
        B64.encode(p.to_string())
    };
    let mut flipped = B64
        .decode(e.packet()["wrapped_data"].as_str().unwrap())
        .unwrap();
    flipped[0] ^= 1;
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "not base64",
            "%%% not base64".into(),
            vec!["no key fits", "not base64"],
        ),
        (
            "not JSON",
            B64.encode("{not json"),
            vec!["no key fits", "AnnotationPacket is not valid JSON"],
        ),
        (
            "no kid",
            B64.encode(r#"{"wrapped_data":"","wrap_type":"A256GCM"}"#),
            vec!["no key fits", "not valid JSON"],
        ),
        (
            "another wrap type",
            edited("wrap_type", "AES-KW".into()),
            vec!["no key fits", "wrap_type is `AES-KW`"],
        ),
        (
            "no wrap type",
            edited("wrap_type", Value::Null),
            vec!["no key fits", "wrap_type"],
        ),
        (
            "another version",
            edited("version", "0.2.0".into()),
            vec!["no key fits", "version `0.2.0`"],
        ),
        (
            "another provider",
            edited("provider", "vault".into()),
            vec!["no key fits", "provider is `vault`"],
        ),
        (
            "a kid that is not kbs://",
            edited("kid", "https://evil.example/key".into()),
            vec!["no key fits", "https://evil.example/key"],
        ),
        (
            "a short iv",
            edited("iv", B64.encode([0u8; 8]).into()),
            vec!["no key fits", "iv is 8 bytes"],
        ),
        (
            "an iv that is not base64",
            edited("iv", "%%%".into()),
            vec!["no key fits", "iv"],
        ),
        (
            "wrapped data that is not base64",
            edited("wrapped_data", "%%%".into()),
            vec!["no key fits", "wrapped_data"],
        ),
        // Authentic-looking but tampered: AES-GCM refuses it, so no key fits.
        (
            "tampered wrapped data",
            edited("wrapped_data", B64.encode(&flipped).into()),
            vec!["no key fits", KID, "none opens it"],
        ),
        (
            "over 1 MiB",
            "A".repeat((1 << 20) + 4),
            vec!["no key fits", "1 MiB"],
        ),
    ];
    for (what, value, fragments) in cases {
        println!("--- AnnotationPacket: {what}");
        e.refused_with(PROVIDER, Some(value), &keys, &fragments);
    }
}

// ------------------------------------------------------------------------------------------------
// Malformed key broker replies (the test KBS, trustee's server half)
// ------------------------------------------------------------------------------------------------

#[test]
fn malformed_or_tampered_broker_replies_are_refused() {
    use crate::common::kbs::{Endpoint, Fault, KbsConfig, Tamper, TestKbs};
    let e = Encrypted::new();
    // Only the KEK recipient: the private key is not offered.
    let resource = |bytes: Vec<u8>| KbsConfig::default().resource("default/key/1", bytes);
    let raw = |status: u16, body: &[u8]| Fault::Raw {
        status,
        content_type: Some("application/json".into()),
        body: body.to_vec(),
    };
    let kek = e.kek_bytes.clone();
    // What the broker does, what it answers once, and what the error must say.
    type Case = (
        String,
        KbsConfig,
        Option<(Endpoint, Fault)>,
        Vec<&'static str>,
    );
    let mut cases: Vec<Case> = vec![
        (
            "a challenge that is not JSON".into(),
            resource(kek.clone()),
            Some((Endpoint::Auth, raw(200, b"{not json"))),
            // The injected reply has no session cookie either, and that is what is reported.
            vec!["cannot get the KEK", KID],
        ),
        (
            "an attestation reply without a token".into(),
            resource(kek.clone()),
            Some((Endpoint::Attest, raw(200, b"{}"))),
            vec!["key broker", "no `token`"],
        ),
        (
            "a resource reply that is not a JWE".into(),
            resource(kek.clone()),
            Some((Endpoint::Resource, raw(200, b"{\"not\":\"a jwe\"}"))),
            vec!["key broker", KID],
        ),
        (
            "an HTML error page".into(),
            resource(kek.clone()),
            Some((
                Endpoint::Resource,
                Fault::Raw {
                    status: 500,
                    content_type: Some("text/html".into()),
                    body: b"<html>oops</html>".to_vec(),
                },
            )),
            vec!["key broker", "500"],
        ),
        (
            "no session cookie".into(),
            KbsConfig {
                set_cookie: false,
                ..resource(kek.clone())
            },
            None,
            vec!["key broker", "cookie"],
        ),
        (
            "a 31-byte KEK".into(),
            resource(kek[..31].to_vec()),
            None,
            vec![KID, "31 bytes", "32"],
        ),
        (
            "a resource over 1 MiB".into(),
            resource(vec![7u8; 2 << 20]),
            None,
            vec!["key broker", KID],
        ),
        (
            "another KEK".into(),
            resource(pseudo_random_bytes(b"not the kek", 32)),
            None,
            vec!["no key fits", KID, "none opens it"],
        ),
    ];
    for tamper in [
        Tamper::Ciphertext,
        Tamper::Tag,
        Tamper::Iv,
        Tamper::EncryptedKey,
        Tamper::WrongRecipient,
        Tamper::ProtectedHeader,
        Tamper::UnsupportedEnc,
        Tamper::EpkCurve,
    ] {
        cases.push((
            format!("a reply tampered with ({tamper:?})"),
            KbsConfig {
                tamper_response: Some(tamper),
                ..resource(kek.clone())
            },
            None,
            vec!["cannot decrypt the key broker's reply", KID],
        ));
    }
    for (what, config, fault, fragments) in cases {
        println!("--- broker: {what}");
        let kbs = TestKbs::start(config);
        if let Some((endpoint, fault)) = fault {
            kbs.inject(endpoint, fault);
        }
        let url = kbs.url();
        e.scene.pull_ref_is_refused(
            &e.reference,
            &["--kbs", &url, "--tee", "sample"],
            &fragments,
        );
    }
}

// ------------------------------------------------------------------------------------------------
// Hostile text in messages
// ------------------------------------------------------------------------------------------------

#[test]
fn a_hostile_filepath_cannot_forge_lines_or_escapes_in_the_error_output() {
    let forged = "{\"level\":\"INFO\",\"summary\":\"pulled 7 files\"}";
    for path in [
        format!("ok\n{forged}"),
        "ok\u{1b}[2J\u{1b}[H".to_string(),
        format!("../{}", "a".repeat(100_000)),
    ] {
        let mut scene = Scene::new();
        scene
            .layout
            .add_raw_file(media::WEIGHT_RAW, &path, 0o644, b"x");
        scene.layout.write(TAG);
        let out = scene.pull_ref_is_refused(&scene.layout.reference(TAG), &[], &["unsafe path"]);
        assert!(
            !out.stderr.lines().any(|l| l.starts_with('{')),
            "a forged line\n{out}"
        );
        assert!(!out.stderr.contains('\u{1b}'), "a terminal escape\n{out}");
        assert!(
            out.stderr.len() < 4096,
            "{} bytes of stderr for one refused path",
            out.stderr.len()
        );
    }
}
