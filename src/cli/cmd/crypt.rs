use std::sync::Arc;

use crate::cli::args::{DecryptArgs, EncryptArgs};
use crate::cli::{mb, Context};
use crate::crypt::{self, CryptSummary, LayerSelection};
use crate::error::Error;
use crate::keys::PublicKey;
use crate::ocicrypt::provider::{Kek, ResourceUri};
use crate::ocicrypt::{Keyring, OcicryptError, Recipients};
use crate::reference::ImageRef;

pub async fn encrypt(ctx: &Context, a: EncryptArgs) -> Result<(), Error> {
    let recipients = Arc::new(recipients(&a)?);
    let (src_ref, src) = super::open(ctx, &a.src, false).await?;
    let (dest_ref, dest) = super::open(ctx, &a.dest, true).await?;
    let selection = LayerSelection { layers: a.layers };
    let s = crypt::encrypt(&src_ref, &src, &dest, recipients, &selection).await?;
    report(ctx, "encrypted", &s, &dest_ref);
    Ok(())
}

pub async fn decrypt(ctx: &Context, a: DecryptArgs) -> Result<(), Error> {
    let keys = Keyring::load(&a.keys.decryption_keys, &a.keys.keks)?;
    let (src_ref, src) = super::open(ctx, &a.src, false).await?;
    let (dest_ref, dest) = super::open(ctx, &a.dest, true).await?;
    let s = crypt::decrypt(&src_ref, &src, &dest, &keys).await?;
    report(ctx, "decrypted", &s, &dest_ref);
    Ok(())
}

/// The summary on stderr, the new manifest digest on stdout (for scripts).
fn report(ctx: &Context, verb: &str, s: &CryptSummary, dest: &ImageRef) {
    ctx.summary(&format!(
        "{verb} {} of {} layers ({}) into {dest} ({})",
        s.changed,
        s.layers,
        mb(s.bytes),
        s.manifest_digest
    ));
    println!("{}", s.manifest_digest);
}

/// `jwe:FILE` and `kbs:///R/T/G` recipients; KEKs pair with `kbs://` recipients in order, or
/// one KEK serves them all.
fn recipients(a: &EncryptArgs) -> Result<Recipients, Error> {
    let mut r = Recipients::default();
    let keks = a
        .keks
        .iter()
        .map(|p| Kek::from_file(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(OcicryptError::from)?;
    let mut kbs = 0;
    for spec in &a.recipients {
        if let Some(path) = spec.strip_prefix("jwe:") {
            let bytes = std::fs::read(path).map_err(|source| OcicryptError::KeyRead {
                path: path.into(),
                source,
            })?;
            let key = PublicKey::from_bytes(&bytes).map_err(|source| OcicryptError::KeyFile {
                path: path.into(),
                source,
            })?;
            r.jwe.push(key);
        } else if spec.starts_with("kbs://") {
            let kid = ResourceUri::parse(spec).map_err(OcicryptError::from)?;
            let kek = match keks.len() {
                1 => keks[0].clone(),
                _ => keks
                    .get(kbs)
                    .cloned()
                    .ok_or_else(|| OcicryptError::MissingKek(spec.clone()))?,
            };
            kbs += 1;
            r.kbs.push((kid, kek));
        } else {
            return Err(Error::Usage(format!(
                "unknown recipient `{spec}`: use `jwe:PUBLIC_KEY_FILE` or `kbs:///REPO/TYPE/TAG`"
            )));
        }
    }
    if keks.len() > 1 && keks.len() != kbs {
        return Err(Error::Usage(format!(
            "{} `--kek` files for {kbs} `kbs://` recipients",
            keks.len()
        )));
    }
    Ok(r)
}
