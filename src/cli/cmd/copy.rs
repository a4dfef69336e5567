use crate::cli::args::CopyArgs;
use crate::cli::{mb, Context};
use crate::copy;
use crate::error::Error;

pub async fn run(ctx: &Context, a: CopyArgs) -> Result<(), Error> {
    let (src_ref, src) = super::open(ctx, &a.src, false).await?;
    let (dest_ref, dest) = super::open(ctx, &a.dest, true).await?;
    let s = copy::copy(&src_ref, &src, &dest).await?;
    ctx.summary(&format!(
        "copied {src_ref} to {dest_ref}: {} of {} blobs ({}) transferred ({})",
        s.copied,
        s.blobs,
        mb(s.bytes),
        s.manifest_digest
    ));
    println!("{}", s.manifest_digest);
    Ok(())
}
