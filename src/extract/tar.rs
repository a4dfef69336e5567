//! Safe untar of a stream (tar, after any decompression) into an [`Extractor`].

use std::io::Read;
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
    let mut archive = tar::Archive::new(reader);
    let mut written = Written::default();
    for entry in archive.entries().map_err(ExtractError::Tar)? {
        let mut entry = entry.map_err(ExtractError::Tar)?;
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
        let mtime = header
            .mtime()
            .ok()
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s));
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
                        target: String::from_utf8_lossy(&target).into_owned(),
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
