use std::sync::Arc;

use crate::cli::args::PullArgs;
use crate::cli::reporter::Bars;
use crate::cli::{mb, Context};
use crate::error::Error;
use crate::ocicrypt::Keyring;
use crate::pull::{self, NoopReporter, PullOptions, Reporter};

pub async fn run(ctx: &Context, a: PullArgs) -> Result<(), Error> {
    let (src, store) = super::open(ctx, &a.src, false).await?;
    let keys = Keyring::load(&a.keys.decryption_keys, &a.keys.keks)?;
    let opts = PullOptions {
        keys,
        allow_plain_layers: a.allow_plain_layers,
        concurrency: a.concurrency.into(),
    };
    let bars = ctx.progress.then(|| Arc::new(Bars::new(0)));
    let reporter: Arc<dyn Reporter> = match &bars {
        Some(b) => b.clone(),
        None => Arc::new(NoopReporter),
    };
    let result = pull::pull(&src, &store, &a.to, &opts, reporter).await;
    if let Some(b) = &bars {
        b.finish();
    }
    let s = result?;
    if s.up_to_date {
        ctx.summary(&format!(
            "{} already holds {} ({} files); nothing to do",
            s.destination.display(),
            s.manifest_digest,
            s.files
        ));
        return Ok(());
    }
    let secs = s.elapsed.as_secs_f64().max(1e-6);
    let rate = s.blob_bytes as f64 / 1e6 / secs;
    if ctx.json {
        // Structured, so a log pipeline can chart it.
        tracing::info!(
            files = s.files,
            bytes = s.bytes,
            seconds = secs,
            mb_per_s = rate,
            digest = %s.manifest_digest,
            to = %s.destination.display(),
            "pulled"
        );
        return Ok(());
    }
    ctx.summary(&format!(
        "pulled {} files, {} in {:.2} s ({:.0} MB/s) into {} ({})",
        s.files,
        mb(s.bytes),
        secs,
        rate,
        s.destination.display(),
        s.manifest_digest
    ));
    Ok(())
}
