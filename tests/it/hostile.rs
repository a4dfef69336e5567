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
//! Does not cover: registry transport failures and encrypted layers (their own modules).

use std::fs;
use std::path::{Path, PathBuf};

use crate::common::{
    assert_failure_contains, assert_snapshots_equal, assert_success, dir_names, gzip, media,
    pseudo_random_bytes, sha256_hex, tree_snapshot, zstd_compress, Cmd, FileKind, OciLayoutBuilder,
    RunOutput, Snapshot, TarBuilder, COMPLETE_MARKER,
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
        let before = tree_snapshot(self.root(), false);
        let out = Cmd::modelcrypt()
            .current_dir(&self.cwd)
            .arg("pull")
            .arg(self.layout.reference(TAG))
            .arg("--to")
            .arg(&self.dest)
            .arg("--no-progress")
            .run();
        (manifest_digest, before, out)
    }

    /// Pulls and asserts a clean refusal whose message contains every fragment.
    #[track_caller]
    fn pull_is_refused(&mut self, fragments: &[&str]) {
        let (_, before, out) = self.pull();
        // Shown with --nocapture, or with the failure.
        println!("{out}");
        assert_failure_contains(&out, fragments);
        assert!(
            out.stderr.starts_with("error:"),
            "stderr must start with `error:`\n{out}"
        );
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
