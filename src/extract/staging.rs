//! Staging and atomic commit (architecture.md, non-negotiable 2).
//!
//! `--to /models/qwen` stages in `/models/.qwen.modelcrypt-staging`, a sibling on the same file
//! system, while holding an exclusive lock on `/models`. The commit writes the completion marker
//! into the staging directory and renames it into place (or swaps it with an older pull), so
//! the destination appears complete, with its marker, in one step. Anything left by a crashed
//! run is removed before a new one starts.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::{MARKER, OWNER_MARKER};
use crate::digest::Digest;

#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    #[error("`{0}` has no parent directory or file name; name a directory such as `/models/qwen`")]
    BadDestination(PathBuf),
    #[error("cannot prepare `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{path}` is a mount point, so it cannot be replaced atomically")]
    MountPoint { path: PathBuf },
    #[error("`{path}` exists, is not empty and was not written by modelcrypt")]
    Foreign { path: PathBuf },
    #[error("`{path}` is not a directory (a symlink or a file); refusing to replace it")]
    NotADirectory { path: PathBuf },
    #[error("`{path}` was not left by a pull (no owner file); refusing to delete it")]
    NotOurs { path: PathBuf },
    #[error("cannot lock `{path}`")]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// The completion marker's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Marker {
    pub manifest_digest: Digest,
    pub reference: String,
    pub files: u64,
    pub bytes: u64,
    pub completed_at: String,
}

/// An exclusive staging area for one destination. Dropping it without committing removes it.
pub struct Staging {
    dest: PathBuf,
    dir: PathBuf,
    committed: bool,
    // Held for the life of the pull: a second pull into the same parent waits.
    _lock: Flock<File>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StagingError + '_ {
    move |source| StagingError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Staging {
    /// Locks the destination's parent (waiting for another pull to finish), clears leftovers
    /// of a crashed run and creates an empty staging directory. Blocks: call off the runtime.
    pub fn prepare(dest: &Path) -> Result<Staging, StagingError> {
        let name = dest
            .file_name()
            .ok_or_else(|| StagingError::BadDestination(dest.into()))?;
        let parent = match dest.parent() {
            Some(p) if p.as_os_str().is_empty() => Path::new("."),
            Some(p) => p,
            None => return Err(StagingError::BadDestination(dest.into())),
        };
        fs::create_dir_all(parent).map_err(io_err(parent))?;
        let handle = File::open(parent).map_err(io_err(parent))?;
        let lock = match Flock::lock(handle, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((handle, nix::Error::EWOULDBLOCK)) => {
                tracing::info!(dir = %parent.display(), "another pull is writing here; waiting for it");
                Flock::lock(handle, FlockArg::LockExclusive).map_err(|(_, source)| {
                    StagingError::Lock {
                        path: parent.into(),
                        source,
                    }
                })?
            }
            Err((_, source)) => {
                return Err(StagingError::Lock {
                    path: parent.into(),
                    source,
                })
            }
        };
        let name = name.to_string_lossy();
        let dir = parent.join(format!(".{name}.modelcrypt-staging"));
        if let Ok(meta) = fs::symlink_metadata(&dir) {
            // Only ever delete what a pull left: a tree carrying our owner file or a marker.
            let ours =
                meta.is_dir() && (dir.join(OWNER_MARKER).is_file() || dir.join(MARKER).is_file());
            if !ours {
                return Err(StagingError::NotOurs { path: dir });
            }
            tracing::warn!(path = %dir.display(), "removing the leftovers of an interrupted pull");
            remove_tree(&dir).map_err(io_err(&dir))?;
        }
        // Private while it is being filled; opened up at commit.
        fs::create_dir(&dir).map_err(io_err(&dir))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io_err(&dir))?;
        let owner = dir.join(OWNER_MARKER);
        fs::write(&owner, b"").map_err(io_err(&owner))?;
        Ok(Staging {
            dest: dest.to_path_buf(),
            dir,
            committed: false,
            _lock: lock,
        })
    }

    pub fn root(&self) -> &Path {
        &self.dir
    }

    /// The marker of a previous complete pull at the destination, if any. A destination that
    /// is a symlink has none: it is never followed.
    pub fn existing_marker(&self) -> Option<Marker> {
        if !fs::symlink_metadata(&self.dest).is_ok_and(|m| m.is_dir()) {
            return None;
        }
        let raw = fs::read(self.dest.join(MARKER)).ok()?;
        serde_json::from_slice(&raw).ok()
    }

    /// Checks that the destination can be replaced, before any byte is downloaded.
    pub fn check_destination(&self) -> Result<(), StagingError> {
        let meta = match fs::symlink_metadata(&self.dest) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&self.dest)(e)),
        };
        if !meta.is_dir() {
            return Err(StagingError::NotADirectory {
                path: self.dest.clone(),
            });
        }
        let parent_dev = fs::metadata(self.dir.parent().unwrap_or(Path::new(".")))
            .map_err(io_err(&self.dir))?
            .dev();
        if meta.is_dir() && meta.dev() != parent_dev {
            return Err(StagingError::MountPoint {
                path: self.dest.clone(),
            });
        }
        let empty = meta.is_dir()
            && fs::read_dir(&self.dest)
                .map_err(io_err(&self.dest))?
                .next()
                .is_none();
        if !empty && self.existing_marker().is_none() {
            return Err(StagingError::Foreign {
                path: self.dest.clone(),
            });
        }
        Ok(())
    }

    /// Publishes the staging directory as the destination, marker included, in one rename.
    /// `_proof` can only be built once every layer verified.
    pub fn commit(mut self, marker: &Marker, _proof: AllVerified) -> Result<(), StagingError> {
        self.check_destination()?;
        let owner = self.dir.join(OWNER_MARKER);
        fs::remove_file(&owner).map_err(io_err(&owner))?;
        let marker_path = self.dir.join(MARKER);
        // INVARIANT: the marker holds strings and numbers only.
        let bytes = serde_json::to_vec_pretty(marker).expect("marker serializes");
        fs::write(&marker_path, bytes).map_err(io_err(&marker_path))?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o755))
            .map_err(io_err(&self.dir))?;
        if fs::symlink_metadata(&self.dest).is_ok() {
            // Swap atomically with the old pull, then delete it from its staging name. rustix,
            // because nix offers renameat2 only on glibc and the shipped binary is musl.
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                &self.dir,
                rustix::fs::CWD,
                &self.dest,
                rustix::fs::RenameFlags::EXCHANGE,
            )
            .map_err(|e| io_err(&self.dest)(io::Error::from(e)))?;
            self.committed = true;
            // The new tree is in place: failing to delete the old one is not a failed pull.
            // It keeps its marker, so the next pull recognises and removes it.
            if let Err(e) = remove_tree(&self.dir) {
                tracing::warn!(path = %self.dir.display(), error = %e, "cannot remove the previous pull");
            }
        } else {
            fs::rename(&self.dir, &self.dest).map_err(io_err(&self.dest))?;
            self.committed = true;
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(e) = remove_tree(&self.dir) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::error!(path = %self.dir.display(), error = %e, "cannot remove the staging directory");
                }
            }
        }
    }
}

/// Removes a tree, first giving its owner write access to directories an artifact made
/// read-only.
fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            grant_owner(path)?;
            fs::remove_dir_all(path)
        }
        other => other,
    }
}

fn grant_owner(path: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        fs::set_permissions(
            path,
            fs::Permissions::from_mode((meta.mode() & 0o7777) | 0o700),
        )?;
        for entry in fs::read_dir(path)? {
            grant_owner(&entry?.path())?;
        }
    }
    Ok(())
}

/// Proof that every layer's digest (and, for encrypted layers, HMAC) matched.
#[derive(Debug)]
pub struct AllVerified(());

impl AllVerified {
    /// One digest proof per layer, and one HMAC proof per encrypted layer.
    pub fn collect(
        proofs: Vec<crate::pull::LayerProof>,
        layers: usize,
        encrypted: usize,
    ) -> Option<AllVerified> {
        let hmacs = proofs.iter().filter(|p| p.hmac.is_some()).count();
        (proofs.len() == layers && hmacs == encrypted).then_some(AllVerified(()))
    }
}
