//! Safe extraction into a staging directory: every path is checked before it touches the file
//! system (`SafeRelPath`), nothing is ever written through a symlink, nothing existing is ever
//! replaced, and special files, setuid bits and ownership changes are refused.
//!
//! This module owns what lands on disk; it does not verify blobs (see `digest`) or decide when
//! to commit (see `staging`).

pub mod staging;
pub mod tar;

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// Name of the completion marker written at the top of a committed destination.
pub const MARKER: &str = ".modelcrypt-complete";
/// Marks a staging directory as ours, so a leftover is only deleted if a pull made it.
pub const OWNER_MARKER: &str = ".modelcrypt-staging-owner";

/// Directories always keep their owner's rwx: otherwise the next pull could not replace
/// (delete) the tree this one leaves.
const OWNER_RWX: u32 = 0o700;

/// Longer paths are refused (Linux's PATH_MAX).
const MAX_PATH: usize = 4096;

/// A path as messages show it: control characters escaped, at most 200 characters.
pub(crate) fn shown(raw: &str) -> String {
    let escaped: String = raw.escape_debug().collect();
    match escaped.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &escaped[..i]),
        None => escaped,
    }
}

/// Write buffer: large writes are what tmpfs likes.
const WRITE_BUF: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("unsafe path `{path}`: {reason}")]
    UnsafePath { path: String, reason: &'static str },
    #[error("link `{path}` escapes the destination (target `{target}`)")]
    LinkEscapes { path: String, target: String },
    #[error("`{path}` would be written through `{through}`, which is not a directory")]
    ThroughNonDirectory { path: String, through: String },
    #[error("`{path}` is claimed twice (by two layers or two entries)")]
    AlreadyExists { path: String },
    #[error("`{path}` is a {kind}; only files, directories and links are extracted")]
    SpecialFile { path: String, kind: &'static str },
    #[error("`{path}` has setuid or setgid bits (mode {mode:o}); refusing")]
    SetId { path: String, mode: u32 },
    #[error(
        "hardlink `{path}` points at `{target}`, which is not a regular file extracted so far"
    )]
    BadHardlink { path: String, target: String },
    #[error("`{path}` is an overlay whiteout, which model artifacts do not use")]
    Whiteout { path: String },
    #[error("`{path}` is {actual} bytes, but its metadata says {expected}")]
    SizeDisagrees {
        path: String,
        expected: u64,
        actual: u64,
    },
    #[error("cannot write `{path}`")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the layer stream")]
    Read(#[source] io::Error),
    #[error("cannot read the tar stream")]
    Tar(#[source] io::Error),
    #[error("the tar headers before one entry exceed {limit} bytes (long names or PAX records); refusing")]
    HeadersTooLarge { limit: u64 },
}

impl ExtractError {
    /// Errors that come from the byte stream (not from what it contains) may really be a
    /// truncated or tampered blob: the caller checks the digest before reporting them.
    pub fn is_stream_error(&self) -> bool {
        matches!(self, ExtractError::Read(_) | ExtractError::Tar(_))
    }

    /// The disk is full: worth a specific hint.
    pub fn is_no_space(&self) -> bool {
        matches!(self, ExtractError::Write { source, .. } if source.raw_os_error() == Some(nix::libc::ENOSPC))
    }
}

/// A relative path with no `..`, no root, no NUL and at least one component. Built only by
/// [`SafeRelPath::new`], so holding one proves the checks ran.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SafeRelPath(PathBuf);

impl SafeRelPath {
    pub fn new(raw: &str) -> Result<SafeRelPath, ExtractError> {
        let unsafe_path = |reason| ExtractError::UnsafePath {
            path: shown(raw),
            reason,
        };
        if raw.len() > MAX_PATH {
            return Err(unsafe_path("it is longer than 4096 bytes"));
        }
        if raw.chars().any(|c| c != '\0' && c.is_control()) {
            return Err(unsafe_path("it contains control characters"));
        }
        if raw.contains('\0') {
            return Err(unsafe_path("it contains a NUL byte"));
        }
        if raw.starts_with('/') {
            return Err(unsafe_path("it is absolute"));
        }
        let mut clean = PathBuf::new();
        for c in Path::new(raw).components() {
            match c {
                Component::Normal(part) => clean.push(part),
                Component::CurDir => {}
                Component::ParentDir => return Err(unsafe_path("it contains `..`")),
                Component::RootDir | Component::Prefix(_) => {
                    return Err(unsafe_path("it is absolute"))
                }
            }
        }
        if clean.as_os_str().is_empty() {
            return Err(unsafe_path("it names no file"));
        }
        if clean == Path::new(MARKER) || clean == Path::new(OWNER_MARKER) {
            return Err(unsafe_path("it would forge a modelcrypt marker"));
        }
        Ok(SafeRelPath(clean))
    }

    pub fn from_bytes(raw: &[u8]) -> Result<SafeRelPath, ExtractError> {
        let s = std::str::from_utf8(raw).map_err(|_| ExtractError::UnsafePath {
            path: shown(&String::from_utf8_lossy(raw)),
            reason: "it is not UTF-8",
        })?;
        SafeRelPath::new(s)
    }

    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

impl fmt::Display for SafeRelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.display().fmt(f)
    }
}

impl fmt::Debug for SafeRelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{self}`")
    }
}

/// File attributes to apply after writing.
#[derive(Clone, Copy, Debug)]
pub struct FileAttrs {
    /// Permission bits; setuid/setgid are refused, sticky is dropped.
    pub mode: u32,
    pub mtime: Option<SystemTime>,
}

/// How the artifact's permission bits become the destination's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Modes {
    /// Everything readable by every user in the pod, writable by none but the owner: vLLM
    /// usually runs as another user than the init container, and an `fsGroup` only helps if
    /// the group bits allow reading. Owner bits are kept; execute bits are kept for all.
    #[default]
    Readable,
    /// The artifact's bits as they are (setuid and setgid are refused either way; directories
    /// keep the owner's rwx, so a read-only directory cannot stop the extraction).
    Preserve,
}

impl Modes {
    pub fn file(self, mode: u32) -> u32 {
        let mode = mode & 0o777;
        match self {
            Modes::Preserve => mode,
            Modes::Readable => {
                let x = if mode & 0o111 != 0 { 0o111 } else { 0 };
                (mode & 0o700) | 0o444 | x
            }
        }
    }

    pub fn dir(self, mode: u32) -> u32 {
        match self {
            Modes::Preserve => (mode & 0o777) | OWNER_RWX,
            Modes::Readable => 0o755,
        }
    }
}

/// Writes entries under one root. Shared by the layers of one pull, which may run at once: it
/// never replaces or deletes anything, so a check that passed stays true.
pub struct Extractor {
    root: PathBuf,
    modes: Modes,
    /// Directory modes are applied at the end, so a read-only directory from one entry cannot
    /// block the entries that follow it. Keyed by path: an archive may repeat a directory.
    dir_modes: Mutex<std::collections::HashMap<PathBuf, u32>>,
}

/// What one layer put on disk.
#[derive(Clone, Copy, Debug, Default)]
pub struct Written {
    pub files: u64,
    pub bytes: u64,
}

impl Written {
    pub fn add(&mut self, other: Written) {
        self.files += other.files;
        self.bytes += other.bytes;
    }
}

impl Extractor {
    pub fn new(root: PathBuf, modes: Modes) -> Extractor {
        Extractor {
            root,
            modes,
            dir_modes: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Creates the parent directories of `rel`, refusing to pass through anything but real
    /// directories, and returns the absolute path of `rel`.
    fn prepare_parents(&self, rel: &SafeRelPath) -> Result<PathBuf, ExtractError> {
        let mut at = self.root.clone();
        let mut walked = PathBuf::new();
        let parent = rel.0.parent().unwrap_or(Path::new(""));
        for part in parent.components() {
            at.push(part);
            walked.push(part);
            match fs::symlink_metadata(&at) {
                Ok(m) if m.is_dir() => continue,
                Ok(_) => {
                    return Err(ExtractError::ThroughNonDirectory {
                        path: rel.to_string(),
                        through: walked.display().to_string(),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(ExtractError::Write {
                        path: walked.display().to_string(),
                        source,
                    })
                }
            }
            // Owner-only until the commit, whatever the umask; the final mode is applied with
            // the others in `finish`.
            match fs::DirBuilder::new().mode(0o700).create(&at) {
                Ok(()) => {
                    self.dir_modes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(at.clone())
                        .or_insert(self.modes.dir(0o755));
                }
                // Another layer created it in between: fine if it is a real directory.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if !fs::symlink_metadata(&at)
                        .map(|m| m.is_dir())
                        .unwrap_or(false)
                    {
                        return Err(ExtractError::ThroughNonDirectory {
                            path: rel.to_string(),
                            through: walked.display().to_string(),
                        });
                    }
                }
                Err(source) => {
                    return Err(ExtractError::Write {
                        path: walked.display().to_string(),
                        source,
                    })
                }
            }
        }
        Ok(self.root.join(&rel.0))
    }

    /// Streams exactly what `reader` yields into a new file. `O_EXCL` (with `O_NOFOLLOW`
    /// semantics) means an existing file or symlink at the path is never opened.
    pub fn write_file(
        &self,
        rel: &SafeRelPath,
        attrs: FileAttrs,
        reader: &mut dyn Read,
        buf: &mut Vec<u8>,
    ) -> Result<u64, ExtractError> {
        check_mode(rel, attrs.mode)?;
        let path = self.prepare_parents(rel)?;
        let werr = |source| ExtractError::Write {
            path: rel.to_string(),
            source,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => ExtractError::AlreadyExists {
                    path: rel.to_string(),
                },
                _ => werr(e),
            })?;
        if buf.len() < WRITE_BUF {
            buf.resize(WRITE_BUF, 0);
        }
        let mut total = 0u64;
        loop {
            // Fill the buffer before writing: the network hands out small chunks.
            let mut filled = 0;
            while filled < buf.len() {
                match reader.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(ExtractError::Read(e)),
                }
            }
            if filled == 0 {
                break;
            }
            file.write_all(&buf[..filled]).map_err(werr)?;
            total += filled as u64;
        }
        finish_file(&file, attrs, self.modes).map_err(werr)?;
        Ok(total)
    }

    pub fn make_dir(&self, rel: &SafeRelPath, mode: u32) -> Result<(), ExtractError> {
        check_mode(rel, mode)?;
        let path = self.prepare_parents(rel)?;
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if !fs::symlink_metadata(&path)
                    .map(|m| m.is_dir())
                    .unwrap_or(false)
                {
                    return Err(ExtractError::AlreadyExists {
                        path: rel.to_string(),
                    });
                }
            }
            Err(source) => {
                return Err(ExtractError::Write {
                    path: rel.to_string(),
                    source,
                })
            }
        }
        // INVARIANT: only poisoned if another thread panicked while pushing; the data is a Vec.
        self.dir_modes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path, self.modes.dir(mode));
        Ok(())
    }

    /// Creates a symlink whose target stays inside the root however it is resolved: any `..`
    /// must lead the target and climb no higher than the link's own directory.
    pub fn symlink(&self, rel: &SafeRelPath, target: &str) -> Result<(), ExtractError> {
        check_link_target(rel, target)?;
        let path = self.prepare_parents(rel)?;
        std::os::unix::fs::symlink(target, &path).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => ExtractError::AlreadyExists {
                path: rel.to_string(),
            },
            _ => ExtractError::Write {
                path: rel.to_string(),
                source: e,
            },
        })
    }

    /// Hard-links `rel` to an already extracted regular file `target` (relative to the root).
    pub fn hardlink(&self, rel: &SafeRelPath, target: &str) -> Result<(), ExtractError> {
        let escapes = || ExtractError::LinkEscapes {
            path: rel.to_string(),
            target: shown(target),
        };
        let target_rel = SafeRelPath::new(target).map_err(|_| escapes())?;
        // The target's parents must be real directories too, or the link could reach outside.
        let target_path = self.prepare_parents(&target_rel)?;
        let ok = fs::symlink_metadata(&target_path)
            .map(|m| m.is_file())
            .unwrap_or(false);
        if !ok {
            return Err(ExtractError::BadHardlink {
                path: rel.to_string(),
                target: shown(target),
            });
        }
        let path = self.prepare_parents(rel)?;
        fs::hard_link(&target_path, &path).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => ExtractError::AlreadyExists {
                path: rel.to_string(),
            },
            _ => ExtractError::Write {
                path: rel.to_string(),
                source: e,
            },
        })
    }

    /// Applies the deferred directory modes, deepest first.
    pub fn finish(&self) -> Result<(), ExtractError> {
        let mut modes: Vec<(PathBuf, u32)> =
            std::mem::take(&mut *self.dir_modes.lock().unwrap_or_else(|p| p.into_inner()))
                .into_iter()
                .collect();
        modes.sort_by_key(|m| std::cmp::Reverse(m.0.components().count()));
        for (path, mode) in modes {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(|source| {
                ExtractError::Write {
                    path: path.display().to_string(),
                    source,
                }
            })?;
        }
        Ok(())
    }
}

fn check_mode(rel: &SafeRelPath, mode: u32) -> Result<(), ExtractError> {
    if mode & 0o6000 != 0 {
        return Err(ExtractError::SetId {
            path: rel.to_string(),
            mode,
        });
    }
    Ok(())
}

fn finish_file(file: &File, attrs: FileAttrs, modes: Modes) -> io::Result<()> {
    file.set_permissions(fs::Permissions::from_mode(modes.file(attrs.mode)))?;
    if let Some(t) = attrs.mtime {
        file.set_modified(t)?;
    }
    Ok(())
}

fn check_link_target(rel: &SafeRelPath, target: &str) -> Result<(), ExtractError> {
    let escapes = || ExtractError::LinkEscapes {
        path: rel.to_string(),
        target: shown(target),
    };
    if target.is_empty() || target.contains('\0') || target.starts_with('/') {
        return Err(escapes());
    }
    let depth = rel.0.components().count() - 1;
    let mut climbing = true;
    let mut ups = 0;
    for c in Path::new(target).components() {
        match c {
            Component::ParentDir if climbing => ups += 1,
            // A `..` after a name could climb out through another symlink.
            Component::ParentDir => return Err(escapes()),
            Component::CurDir => {}
            Component::Normal(_) => climbing = false,
            _ => return Err(escapes()),
        }
    }
    if ups > depth {
        return Err(escapes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_paths_are_normalized_and_hostile_ones_refused() {
        assert_eq!(SafeRelPath::new("./a//b/./c").unwrap().to_string(), "a/b/c");
        for bad in [
            "",
            ".",
            "./",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/..",
            "a\0b",
            MARKER,
        ] {
            assert!(SafeRelPath::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn symlink_targets_may_not_climb_out_or_through_links() {
        let rel = SafeRelPath::new("a/b/link").unwrap();
        for ok in ["x", "../x", "../../x", "./x/y"] {
            assert!(check_link_target(&rel, ok).is_ok(), "{ok}");
        }
        for bad in ["../../../x", "/etc", "x/../..", "y/..", "", "a\0"] {
            assert!(check_link_target(&rel, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn files_are_never_written_through_symlinks_or_over_existing_paths() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let ex = Extractor::new(dir.path().to_path_buf(), Modes::Preserve);
        std::os::unix::fs::symlink(outside.path(), dir.path().join("d")).unwrap();
        let attrs = FileAttrs {
            mode: 0o644,
            mtime: None,
        };
        let mut buf = Vec::new();
        let err = ex.write_file(
            &SafeRelPath::new("d/evil").unwrap(),
            attrs,
            &mut &b"x"[..],
            &mut buf,
        );
        assert!(
            matches!(err, Err(ExtractError::ThroughNonDirectory { .. })),
            "{err:?}"
        );
        let err = ex.write_file(
            &SafeRelPath::new("d").unwrap(),
            attrs,
            &mut &b"x"[..],
            &mut buf,
        );
        assert!(
            matches!(err, Err(ExtractError::AlreadyExists { .. })),
            "{err:?}"
        );
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);

        let n = ex
            .write_file(
                &SafeRelPath::new("ok/f").unwrap(),
                attrs,
                &mut &b"hello"[..],
                &mut buf,
            )
            .unwrap();
        assert_eq!(n, 5);
        assert_eq!(fs::read(dir.path().join("ok/f")).unwrap(), b"hello");
        let setuid = FileAttrs {
            mode: 0o4755,
            mtime: None,
        };
        assert!(ex
            .write_file(
                &SafeRelPath::new("s").unwrap(),
                setuid,
                &mut &b""[..],
                &mut buf
            )
            .is_err());
    }
}
