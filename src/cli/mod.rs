//! The command line: parse, set up logging, dispatch, and render errors with their causes and
//! hints. The only module that writes to the terminal.

pub mod args;
mod cmd;
mod reporter;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;

use crate::error::Error;
use crate::registry::RegistryOptions;
use args::{Args, Command, GlobalArgs};

/// Entry point of the binary.
pub fn run() -> ExitCode {
    no_core_dumps();
    let args = Args::parse();
    let json = args.global.json();
    init_logging(&args.global, json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        tokio::select! {
            r = dispatch(args) => r,
            s = shutdown_signal() => Err(Error::Signal(s)),
        }
    });
    let code = match &result {
        Ok(()) => 0,
        Err(e) => {
            if json {
                log_error(e);
            } else {
                render_error(e);
            }
            e.exit_code()
        }
    };
    // A failed or interrupted run has already cleaned up (the staging directory goes with
    // the dropped future). Exit without tearing the runtime down: a blocking worker still in
    // a network read would otherwise hold the exit or panic on the dying runtime.
    std::process::exit(code.into())
}

/// Keys live only in this process's memory (architecture.md, trust model): a crash must not
/// write them to disk as a core file, and other processes of the same user may not read our
/// memory through ptrace or /proc.
fn no_core_dumps() {
    use nix::sys::resource::{setrlimit, Resource};
    if let Err(e) = setrlimit(Resource::RLIMIT_CORE, 0, 0) {
        tracing::warn!(error = %e, "cannot disable core dumps");
    }
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "cannot mark the process undumpable");
    }
}

async fn dispatch(args: Args) -> Result<(), Error> {
    let g = &args.global;
    let ctx = Context {
        registry: RegistryOptions {
            plain_http: g.plain_http,
            authfile: g.authfile.clone(),
        },
        progress: !g.no_progress && !g.json() && std::io::stderr().is_terminal(),
        json: g.json(),
    };
    match args.command {
        Command::Pack(a) => cmd::pack::run(&ctx, a).await,
        Command::Copy(a) => cmd::copy::run(&ctx, a).await,
        Command::Pull(a) => cmd::pull::run(&ctx, a).await,
        Command::Inspect(a) => cmd::inspect::run(&ctx, a).await,
        Command::Encrypt(a) => cmd::crypt::encrypt(&ctx, a).await,
        Command::Decrypt(a) => cmd::crypt::decrypt(&ctx, a).await,
        Command::Keygen(a) => cmd::keygen::run(&ctx, a),
    }
}

/// What every command needs from the global flags.
pub(crate) struct Context {
    pub registry: RegistryOptions,
    pub progress: bool,
    pub json: bool,
}

impl Context {
    /// A one-line result for humans on stderr, or an `info` event in JSON mode.
    pub fn summary(&self, line: &str) {
        if self.json {
            tracing::info!(summary = line);
        } else {
            eprintln!("{line}");
        }
    }
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

fn init_logging(g: &GlobalArgs, json: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if json { "info" } else { "warn" };
    let filter = EnvFilter::try_new(g.log.as_deref().unwrap_or(default))
        .unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    } else {
        builder.with_target(false).without_time().init();
    }
}

/// `error: …`, one `caused by: …` per source, then hints.
fn render_error(e: &Error) {
    let mut out = std::io::stderr().lock();
    let _ = writeln!(out, "error: {e}");
    for cause in causes(e) {
        let _ = writeln!(out, "  caused by: {cause}");
    }
    for hint in e.hints() {
        let _ = writeln!(out, "\nhint: {hint}");
    }
}

/// The same facts as one JSON line, so a log collector keeps the cause with the error. Written
/// directly, not through the log filter: `MODELCRYPT_LOG=off` must not make a failure silent.
fn log_error(e: &Error) {
    let causes = causes(e);
    let hints = e.hints();
    let mut line = serde_json::json!({
        "timestamp": crate::now_rfc3339(),
        "level": "ERROR",
        "message": e.to_string(),
        "exit_code": e.exit_code(),
        "target": "modelcrypt",
    });
    if !causes.is_empty() {
        line["causes"] = causes.join("; ").into();
    }
    if !hints.is_empty() {
        line["hints"] = hints.join(" ").into();
    }
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The messages of `e`'s sources, each once.
fn causes(e: &Error) -> Vec<String> {
    crate::error::messages(e).split_off(1)
}

/// Bytes in decimal units (kB, MB, GB: powers of 10, as the benchmarks quote them).
pub(crate) fn mb(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1_000 => format!("{bytes} B"),
        1_000..1_000_000 => format!("{:.1} kB", b / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", b / 1e6),
        _ => format!("{:.2} GB", b / 1e9),
    }
}
