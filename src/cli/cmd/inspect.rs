use std::io::Write;

use crate::cli::args::InspectArgs;
use crate::cli::{mb, Context};
use crate::error::Error;
use crate::inspect;

pub async fn run(ctx: &Context, a: InspectArgs) -> Result<(), Error> {
    let (r, store) = super::open(ctx, &a.reference, false).await?;
    let i = inspect::inspect(&r, &store).await?;
    let mut out = std::io::stdout().lock();
    let werr = |source| Error::Output {
        path: "stdout".into(),
        source,
    };
    if a.json {
        // INVARIANT: the inspection is plain data.
        let text = serde_json::to_string_pretty(&i).expect("inspection serializes");
        return writeln!(out, "{text}").map_err(werr);
    }
    writeln!(out, "reference:     {}", i.reference).map_err(werr)?;
    writeln!(out, "digest:        {}", i.digest).map_err(werr)?;
    writeln!(out, "media type:    {}", i.media_type).map_err(werr)?;
    writeln!(
        out,
        "artifact type: {}",
        i.artifact_type.as_deref().unwrap_or("-")
    )
    .map_err(werr)?;
    if let Some(c) = &i.config {
        let d = &c.descriptor;
        writeln!(
            out,
            "model:         {} (family {}, {} {})",
            d.name.as_deref().unwrap_or("-"),
            d.family.as_deref().unwrap_or("-"),
            c.config.format.as_deref().unwrap_or("-"),
            c.config.precision.as_deref().unwrap_or("-")
        )
        .map_err(werr)?;
    }
    writeln!(
        out,
        "layers:        {} ({})",
        i.layers.len(),
        mb(i.total_size)
    )
    .map_err(werr)?;
    for l in &i.layers {
        let enc = if l.encrypted {
            format!(" encrypted for [{}]", l.recipients.join(", "))
        } else {
            String::new()
        };
        writeln!(
            out,
            "  {:>12}  {}  {}{}\n                {}",
            mb(l.size),
            l.filepath.as_deref().unwrap_or("-"),
            l.media_type,
            enc,
            l.digest
        )
        .map_err(werr)?;
    }
    let _ = ctx;
    Ok(())
}
