//! `extract::tar::untar` on an arbitrary byte stream into `TMP/root`, then `finish`. Never
//! panics, and whatever the archive says, nothing is created outside the root: `TMP` holds only
//! `root`, every symlink under it resolves inside it (following the symlinks on the way, as
//! the kernel would), no regular file has links outside it, and there are no special files
//! or setuid/setgid bits.
//!
//! Each input is extracted twice, into two fresh directories: as it is, and with the checksum
//! of every header it appears to contain recomputed (`fix_checksums`). The tar reader refuses
//! a header whose checksum is wrong, and a mutated header almost never has the right one, so
//! without the second pass the fuzzer would hardly get past the first header it changes.
#![no_main]

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use modelcrypt::extract::tar::untar;
use modelcrypt::extract::{Extractor, Modes};

/// Where the temporary directories go: $FUZZ_TMPDIR, else /dev/shm, else the usual temporary
/// directory. A tmpfs matters: on a busy ext4 disk each run waits ~10 ms in mkdir and unlink.
static SCRATCH: LazyLock<PathBuf> = LazyLock::new(|| match std::env::var_os("FUZZ_TMPDIR") {
    Some(d) => PathBuf::from(d),
    None if Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
    None => std::env::temp_dir(),
});

thread_local! {
    // untar grows it to its 1 MiB write buffer; reuse it across runs.
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Where `target`, read from a symlink in directory `dir` (relative to `root`), leads: resolved
/// component by component the way the kernel does, following symlinks met on the way. `None`
/// if it leaves the root at any point.
fn resolve(root: &Path, dir: &[OsString], target: &Path, depth: u32) -> Option<Vec<OsString>> {
    let mut at = dir.to_vec();
    for c in target.components() {
        match c {
            Component::Normal(name) => {
                at.push(name.to_owned());
                let here: PathBuf = at.iter().collect();
                let is_link = fs::symlink_metadata(root.join(&here))
                    .map(|m| m.file_type().is_symlink())
                    .unwrap_or(false);
                // Past 40 links the kernel gives up (ELOOP): nothing is reached.
                if is_link && depth < 40 {
                    let next = fs::read_link(root.join(&here)).expect("readlink");
                    at.pop();
                    at = resolve(root, &at, &next, depth + 1)?;
                }
            }
            Component::CurDir => {}
            Component::ParentDir => {
                at.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(at)
}

fn walk(root: &Path, rel: &Path, inodes: &mut HashMap<(u64, u64), (u64, u64)>) {
    let dir = root.join(rel);
    for entry in fs::read_dir(&dir).expect("read_dir under the root") {
        let entry = entry.expect("dir entry");
        let rel = rel.join(entry.file_name());
        let meta = fs::symlink_metadata(root.join(&rel)).expect("lstat");
        let ft = meta.file_type();
        assert_eq!(meta.mode() & 0o6000, 0, "{rel:?} has setuid/setgid bits");
        if ft.is_symlink() {
            let target = fs::read_link(root.join(&rel)).expect("readlink");
            let dir: Vec<OsString> = rel
                .parent()
                .unwrap_or(Path::new(""))
                .iter()
                .map(|c| c.to_owned())
                .collect();
            assert!(
                resolve(root, &dir, &target, 0).is_some(),
                "symlink {rel:?} -> {target:?} leaves the root"
            );
        } else if ft.is_dir() {
            walk(root, &rel, inodes);
        } else if ft.is_file() {
            let seen = inodes
                .entry((meta.dev(), meta.ino()))
                .or_insert((0, meta.nlink()));
            seen.0 += 1;
        } else {
            panic!("{rel:?} is a special file ({ft:?})");
        }
    }
}

/// Recomputes the checksum of each 512-byte header found by walking `data` as a plain tar:
/// header, data rounded up to 512 bytes, next header. PAX size overrides and GNU sparse
/// extensions are not followed; the walk just stops making sense there, which is fine.
fn fix_checksums(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    let mut at = 0usize;
    while let Some(h) = out.get_mut(at..at + 512) {
        at += 512;
        if h.iter().all(|b| *b == 0) {
            continue;
        }
        let sum: u32 = h[..148]
            .iter()
            .chain(&h[156..])
            .map(|b| u32::from(*b))
            .sum::<u32>()
            + 8 * u32::from(b' ');
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let Some(size) = entry_size(&h[124..136]) else {
            break;
        };
        let Some(next) = size
            .checked_next_multiple_of(512)
            .and_then(|s| usize::try_from(s).ok())
            .and_then(|s| at.checked_add(s))
        else {
            break;
        };
        at = next;
    }
    out
}

/// The size field: octal text, or base-256 when the top bit of the first byte is set.
fn entry_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        return field[1..].iter().try_fold(0u64, |acc, b| {
            acc.checked_mul(256)?.checked_add(u64::from(*b))
        });
    }
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c| c == ' ' || c == '\0');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

fn extract_and_check(data: &[u8]) {
    let tmp = tempfile::tempdir_in(&*SCRATCH).expect("tempdir");
    let root = tmp.path().join("root");
    fs::create_dir(&root).expect("mkdir root");
    // Preserve: the archive's own bits, so directory modes are deferred to `finish`.
    let ex = Extractor::new(root.clone(), Modes::Preserve);
    let mut reader = data;
    let result = BUF.with_borrow_mut(|buf| untar(&ex, &mut reader, buf));
    let finished = ex.finish();
    if let Err(e) = &result {
        let _ = e.to_string();
    }
    let _ = finished;

    let names: Vec<_> = fs::read_dir(tmp.path())
        .expect("read tmp")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["root"], "something was created next to the root");
    let mut inodes = HashMap::new();
    walk(&root, Path::new(""), &mut inodes);
    for ((_, ino), (names, nlink)) in inodes {
        assert_eq!(
            names, nlink,
            "inode {ino} has {nlink} links but only {names} names under the root"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    extract_and_check(data);
    let fixed = fix_checksums(data);
    if fixed != data {
        extract_and_check(&fixed);
    }
});
