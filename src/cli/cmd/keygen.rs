use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::cli::args::{KeyKind, KeygenArgs};
use crate::cli::Context;
use crate::error::Error;
use crate::keys;
use crate::ocicrypt::provider::Kek;
use crate::ocicrypt::OcicryptError;

pub fn run(ctx: &Context, a: KeygenArgs) -> Result<(), Error> {
    let public_path = a.out.with_file_name(format!(
        "{}.pub",
        a.out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    match a.kind {
        KeyKind::Kek => {
            let kek = Kek::generate().map_err(OcicryptError::from)?;
            write(&a.out, kek.as_bytes(), 0o600, a.force)?;
            ctx.summary(&format!("wrote a 32-byte KEK to {}", a.out.display()));
        }
        KeyKind::Rsa | KeyKind::Ec => {
            let (private, public) = match a.kind {
                KeyKind::Rsa => keys::generate_rsa4096(),
                _ => keys::generate_ec_p256(),
            }
            .map_err(|source| OcicryptError::KeyFile {
                path: a.out.display().to_string(),
                source,
            })?;
            write(&a.out, private.as_bytes(), 0o600, a.force)?;
            write(&public_path, public.as_bytes(), 0o644, a.force)?;
            ctx.summary(&format!(
                "wrote the private key to {} (mode 0600) and the public key to {}",
                a.out.display(),
                public_path.display()
            ));
        }
    }
    Ok(())
}

/// Creates the file with its final mode from the start, so a secret is never readable by others.
fn write(path: &Path, bytes: &[u8], mode: u32, force: bool) -> Result<(), Error> {
    let err = |source| Error::Output {
        path: path.display().to_string(),
        source,
    };
    if force {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)
}
