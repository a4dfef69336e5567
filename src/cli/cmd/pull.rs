use std::sync::Arc;

use crate::cli::args::{BrokerArgs, PullArgs};
use crate::cli::reporter::Bars;
use crate::cli::{mb, Context};
use crate::error::Error;
use crate::error::KeyFetch;
use crate::extract::Modes;
use std::path::Path;

use crate::kbs::attester::{detect, Attester, Sample, Snp, Tdx, Tsm, TSM_ROOT};
use crate::kbs::{is_loopback, Broker, KbsConfig, KbsError, TeeKeyKind};
use crate::keys::PrivateKey;
use crate::ocicrypt::provider::ResourceUri;
use crate::ocicrypt::Keyring;
use crate::pull::{self, NoopReporter, PullOptions, Reporter};

pub async fn run(ctx: &Context, a: PullArgs) -> Result<(), Error> {
    let (src, store) = super::open(ctx, &a.src, false).await?;
    let broker = broker(&a.broker)?;
    // `kbs:///R/T/G` decryption keys are broker resources; the rest are files.
    let (remote, files): (Vec<String>, Vec<String>) = a
        .keys
        .decryption_keys
        .iter()
        .cloned()
        .partition(|k| k.starts_with("kbs://"));
    let mut keys = Keyring::load(&files, &a.keys.keks)?;
    for spec in remote {
        let b = broker.as_ref().ok_or_else(|| {
            Error::Usage(format!(
                "`--decryption-key {spec}` needs `--kbs URL` or `--cdh`"
            ))
        })?;
        keys.private_keys.push(remote_key(b, &spec).await?);
    }
    let opts = PullOptions {
        keys,
        broker,
        allow_plain_layers: a.allow_plain_layers,
        modes: if a.preserve_modes {
            Modes::Preserve
        } else {
            Modes::Readable
        },
        concurrency: a.concurrency.into(),
        parallel_ranges: a.parallel_ranges.into(),
    };
    let bars = ctx.progress.then(|| Arc::new(Bars::new(0)));
    let reporter: Arc<dyn Reporter> = match &bars {
        Some(b) => b.clone(),
        None => Arc::new(NoopReporter),
    };
    let result = pull::pull(&src, &store, &a.to, opts, reporter).await;
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

fn broker(a: &BrokerArgs) -> Result<Option<Arc<Broker>>, Error> {
    if let Some(url) = &a.cdh {
        if !is_loopback(url) {
            return Err(Error::Usage(format!(
                "`--cdh {url}` is not on this machine; the CDH answers with keys in the clear"
            )));
        }
        return Ok(Some(Arc::new(Broker::cdh(url).map_err(KeyFetch::from)?)));
    }
    let Some(url) = &a.kbs else { return Ok(None) };
    if url.starts_with("http://") && !is_loopback(url) {
        if !a.dangerous_kbs_plain_http {
            return Err(Error::Usage(format!(
                "`--kbs {url}` is plain HTTP: nothing would authenticate the key broker. Use \
                 https:// (with `--kbs-cert` for a private CA), or `--dangerous-kbs-plain-http` \
                 for a demo on a private network"
            )));
        }
        tracing::warn!(url = %url, "plain-HTTP key broker: anyone on the path can answer in its place");
    }
    let attester: Box<dyn Attester> = match a.tee.as_str() {
        "sample" => {
            tracing::warn!(
                "attesting with the `sample` TEE: this proves nothing and is for tests only"
            );
            Box::new(Sample)
        }
        "auto" => detect(Path::new(TSM_ROOT)).map_err(|e| KeyFetch::from(KbsError::Evidence(e)))?,
        "tdx" => Box::new(Tdx::new(Tsm::new(TSM_ROOT))),
        "snp" => Box::new(Snp::new(Tsm::new(TSM_ROOT))),
        other => {
            return Err(Error::Usage(format!(
                "unknown TEE `{other}`: use `auto` or `sample`"
            )))
        }
    };
    let ca_pem = match &a.kbs_cert {
        Some(p) => Some(std::fs::read(p).map_err(|source| Error::Output {
            path: p.display().to_string(),
            source,
        })?),
        None => None,
    };
    let tee_key = match a.tee_key.as_str() {
        "rsa" => TeeKeyKind::Rsa2048,
        _ => TeeKeyKind::EcP256,
    };
    Ok(Some(Arc::new(Broker::kbs(
        KbsConfig {
            url: url.clone(),
            tee_key,
            ca_pem,
            timeout: std::time::Duration::from_secs(a.kbs_timeout),
        },
        attester,
    ))))
}

/// A private key held by the broker (`--decryption-key kbs:///R/T/G`).
async fn remote_key(broker: &Broker, spec: &str) -> Result<PrivateKey, Error> {
    let uri = ResourceUri::parse(spec).map_err(crate::ocicrypt::OcicryptError::from)?;
    let bytes = broker.resource(&uri).await.map_err(KeyFetch::from)?;
    PrivateKey::from_bytes(&bytes, None).map_err(|source| {
        crate::ocicrypt::OcicryptError::KeyFile {
            path: spec.to_string(),
            source,
        }
        .into()
    })
}
