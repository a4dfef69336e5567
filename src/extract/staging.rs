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

use super::MARKER;
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
        for stale in [&dir, &parent.join(format!(".{name}.modelcrypt-old"))] {
            if fs::symlink_metadata(stale).is_ok() {
                tracing::info!(path = %stale.display(), "removing the leftovers of an interrupted pull");
                fs::remove_dir_all(stale).map_err(io_err(stale))?;
            }
        }
        // Private while it is being filled; opened up at commit.
        fs::create_dir(&dir).map_err(io_err(&dir))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io_err(&dir))?;
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

    /// The marker of a previous complete pull at the destination, if any.
    pub fn existing_marker(&self) -> Option<Marker> {
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
        let marker_path = self.dir.join(MARKER);
        // INVARIANT: the marker holds strings and numbers only.
        let bytes = serde_json::to_vec_pretty(marker).expect("marker serializes");
        fs::write(&marker_path, bytes).map_err(io_err(&marker_path))?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o755))
            .map_err(io_err(&self.dir))?;
        if fs::symlink_metadata(&self.dest).is_ok() {
            // Swap atomically with the old pull, then delete it from its staging name.
            nix::fcntl::renameat2(
                nix::fcntl::AT_FDCWD,
                &self.dir,
                nix::fcntl::AT_FDCWD,
                &self.dest,
                nix::fcntl::RenameFlags::RENAME_EXCHANGE,
            )
            .map_err(|e| io_err(&self.dest)(io::Error::from(e)))?;
            self.committed = true;
            fs::remove_dir_all(&self.dir).map_err(io_err(&self.dir))?;
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
            if let Err(e) = fs::remove_dir_all(&self.dir) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::error!(path = %self.dir.display(), error = %e, "cannot remove the staging directory");
                }
            }
        }
    }
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
