//! Safe untar of a stream (tar, after any decompression) into an [`Extractor`].

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use tar::EntryType;

use super::{ExtractError, Extractor, FileAttrs, SafeRelPath, Written};

/// Extracts every entry of `reader`. Stops at the end-of-archive marker; the caller drains and
/// verifies whatever follows it.
pub fn untar(
    ex: &Extractor,
    reader: &mut dyn Read,
    buf: &mut Vec<u8>,
) -> Result<Written, ExtractError> {
    let used = Rc::new(Cell::new(0u64));
    let mut archive = tar::Archive::new(Budget {
        inner: reader,
        used: used.clone(),
    });
    let mut written = Written::default();
    let mut entries = archive.entries().map_err(ExtractError::Tar)?;
    loop {
        // Only what lies between two entries counts: headers, long names, PAX records.
        used.set(0);
        let Some(entry) = entries.next() else { break };
        let mut entry =
            entry.map_err(
                |e| match e.get_ref().is_some_and(|i| i.is::<HeadersTooLarge>()) {
                    true => ExtractError::HeadersTooLarge {
                        limit: HEADER_BUDGET,
                    },
                    false => ExtractError::Tar(e),
                },
            )?;
        // The entry's own data may be any size: no budget until the next header.
        used.set(UNLIMITED);
        let kind = entry.header().entry_type();
        // Pax global headers carry no file.
        if kind == EntryType::XGlobalHeader {
            continue;
        }
        let raw_path = entry.path_bytes().into_owned();
        // `./` and the like name the root itself: nothing to create.
        if kind == EntryType::Directory && is_root(&raw_path) {
            continue;
        }
        let rel = SafeRelPath::from_bytes(&raw_path)?;
        if rel
            .as_path()
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(".wh."))
        {
            return Err(ExtractError::Whiteout {
                path: rel.to_string(),
            });
        }
        let header = entry.header();
        let mode = header.mode().map_err(ExtractError::Tar)?;
        // Base-256 mtimes reach 2^63 seconds: out of range is no time, not a panic.
        let mtime = header
            .mtime()
            .ok()
            .and_then(|s| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(s)));
        match kind {
            EntryType::Regular | EntryType::Continuous => {
                let attrs = FileAttrs { mode, mtime };
                written.bytes += ex.write_file(&rel, attrs, &mut entry, buf)?;
                written.files += 1;
            }
            EntryType::Directory => ex.make_dir(&rel, mode)?,
            EntryType::Symlink | EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let target =
                    std::str::from_utf8(&target).map_err(|_| ExtractError::LinkEscapes {
                        path: rel.to_string(),
                        target: super::shown(&String::from_utf8_lossy(&target)),
                    })?;
                if kind == EntryType::Symlink {
                    ex.symlink(&rel, target)?;
                } else {
                    ex.hardlink(&rel, target)?;
                }
            }
            EntryType::Char => return Err(special(&rel, "character device")),
            EntryType::Block => return Err(special(&rel, "block device")),
            EntryType::Fifo => return Err(special(&rel, "FIFO")),
            _ => return Err(special(&rel, "tar entry of an unsupported type")),
        }
    }
    Ok(written)
}

fn special(rel: &SafeRelPath, kind: &'static str) -> ExtractError {
    ExtractError::SpecialFile {
        path: rel.to_string(),
        kind,
    }
}

fn is_root(raw: &[u8]) -> bool {
    raw.split(|b| *b == b'/').all(|c| c.is_empty() || c == b".")
}

/// The tar crate reads GNU long names and PAX records into memory whole; this bounds how many
/// bytes may pass between two entries, so a hostile archive cannot make it allocate gigabytes.
const HEADER_BUDGET: u64 = 1 << 20;

/// The budget's state while an entry's data is being read.
const UNLIMITED: u64 = u64::MAX;

#[derive(Debug, thiserror::Error)]
#[error("tar headers between two entries exceed {HEADER_BUDGET} bytes")]
struct HeadersTooLarge;

struct Budget<'a> {
    inner: &'a mut dyn Read,
    used: Rc<Cell<u64>>,
}

impl Read for Budget<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let before = self.used.get();
        if before == UNLIMITED {
            return Ok(n);
        }
        let used = before.saturating_add(n as u64);
        self.used.set(used);
        if used > HEADER_BUDGET {
            return Err(io::Error::other(HeadersTooLarge));
        }
        Ok(n)
    }
}
