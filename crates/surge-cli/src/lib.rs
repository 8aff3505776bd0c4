//! Shared glue of the `surge` and `score-batch` binaries: logging and trace setup, and
//! signals.
//! The binaries themselves only parse arguments and call the library crates.

pub mod models;

use std::io::IsTerminal;

use anyhow::Result;
use surge_ops::telemetry::{self, Telemetry};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// The queue names every binary must agree on: the prefix and the shard count.
#[derive(Debug, Clone, clap::Args)]
pub struct TopologyArgs {
    /// Prefix of every exchange and queue name.
    #[arg(long, env = "SURGE_PREFIX", default_value = "surge")]
    pub prefix: String,
    /// Spread each model's jobs over N quorum queues, `<prefix>.jobs.<model>:<k>`
    /// (k = FNV-1a of the job id mod N; see docs/PROTOCOL.md), each with its own leader
    /// node, so that one queue's leader does not cap a model on a cluster. Producers
    /// and workers must use the same N; workers also consume the unsharded queue, so
    /// producers that do not shard keep working. 1 = one queue per model.
    #[arg(long, env = "SURGE_SHARDS", default_value_t = 1)]
    pub shards: u64,
}

impl TopologyArgs {
    /// The topology these flags name, or a clear error for a bad shard count.
    pub fn topology(&self) -> Result<surge_protocol::Topology> {
        Ok(surge_protocol::Topology::new(self.prefix.clone()).with_shards(self.shards)?)
    }

    /// The same flags, to pass on to a worker's command line.
    pub fn to_args(&self) -> Vec<String> {
        vec![
            "--prefix".to_string(),
            self.prefix.clone(),
            "--shards".to_string(),
            self.shards.to_string(),
        ]
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Sets up `tracing` on stderr; `RUST_LOG` overrides the default level (`info`). With
/// `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans are also exported over OTLP/HTTP as
/// `service` (unless `OTEL_SERVICE_NAME` names it): keep the returned [`Telemetry`] and
/// call its `shutdown` before the process exits, or the last spans are lost. A trace
/// configuration the exporter refuses is reported, and the process runs without traces.
pub fn init_logging(format: LogFormat, service: &str) -> Option<Telemetry> {
    let mut filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,lapin=warn,amq_protocol=warn"));
    // lapin logs a returned message whole (megabytes of bytes for an embedding
    // batch); Surge logs each one itself, by job id and size. Per-message trace spans
    // are for the exporter only.
    for directive in ["lapin::returned_messages=error", telemetry::LOG_DIRECTIVE] {
        if let Ok(d) = directive.parse() {
            filter = filter.add_directive(d);
        }
    }
    let (telemetry, refused) = match Telemetry::from_env(service) {
        Ok(t) => (t, None),
        Err(e) => (None, Some(e)),
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colours only on a terminal: log files and collectors get plain text.
        .with_ansi(std::io::stderr().is_terminal());
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Human => fmt.boxed(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(telemetry.as_ref().map(|t| t.layer()))
        .init();
    if let Some(e) = refused {
        tracing::warn!("{e}");
    }
    telemetry
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
