use crate::cli::args::PackArgs;
use crate::cli::{mb, Context};
use crate::error::Error;
use crate::pack::{self, PackOptions};

pub async fn run(ctx: &Context, a: PackArgs) -> Result<(), Error> {
    let (dest_ref, dest) = super::open(ctx, &a.dest, true).await?;
    let opts = PackOptions {
        tar: a.tar || a.oci_media_types,
        oci_media_types: a.oci_media_types,
        reproducible: a.reproducible,
        name: a.name,
        concurrency: a.concurrency.into(),
    };
    let s = pack::pack(&a.model_dir, &dest, &opts).await?;
    ctx.summary(&format!(
        "packed {} layers ({}, {} uploaded) into {dest_ref} ({})",
        s.layers,
        mb(s.bytes),
        s.uploaded,
        s.manifest_digest
    ));
    println!("{}", s.manifest_digest);
    Ok(())
}
