//! Shared glue of the `surge` and `score-batch` binaries: logging setup and signals.
//! The binaries themselves only parse arguments and call the library crates.

pub mod models;

use std::io::IsTerminal;

use anyhow::Result;
use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Sets up `tracing` on stderr; `RUST_LOG` overrides the default level (`info`).
pub fn init_logging(format: LogFormat) {
    let mut filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,lapin=warn,amq_protocol=warn"));
    // lapin logs a returned message whole (megabytes of bytes for an embedding
    // batch); Surge logs each one itself, by job id and size.
    if let Ok(quiet) = "lapin::returned_messages=error".parse() {
        filter = filter.add_directive(quiet);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: log files and collectors get plain text.
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}

/// Triggers `trigger` on the first SIGTERM or SIGINT and exits the process at once on
/// the second (Kubernetes sends SIGTERM, then SIGKILL after the grace period; a person
/// at a terminal presses Ctrl-C twice).
pub fn spawn_signal_handler(trigger: surge_ops::shutdown::ShutdownTrigger) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!(
            "shutdown requested: finishing in-flight batches (signal again to exit at once)"
        );
        trigger.trigger();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::warn!("second signal: exiting now; unacked jobs return to their queues");
        std::process::exit(130);
    });
    Ok(())
}
