//! The Surge worker: pulls jobs from RabbitMQ, batches them across jobs, scores them on
//! a model thread, publishes confirmed results and only then acks.
//!
//! A tour:
//!
//! * [`WorkerConfig`] and [`start`]/[`run`]: what the `surge worker` binary calls, and
//!   what tests start in-process.
//! * [`prepare`]: per delivery, score / answer with an error / dead-letter (pure).
//! * [`batcher`]: when a batch closes (pure).
//! * [`engine`]: the model thread.
//! * `session`: one connected session (consume → batch → score → publish → ack); the
//!   reconnect loop in [`run`] starts a new one after any broker error; `answer`
//!   publishes a batch's results (or dead letters) and acks.
//! * [`http`] and [`metrics`]: `/metrics`, `/healthz`, `/readyz`; [`drain`]: backlog
//!   and estimated time to drain, for scalers.
//! * [`discovery`]: new model folders served without a restart.
//! * [`shutdown`]: the signal every task watches.
//! * `trace`: a job's trace (W3C `traceparent` in, a span per batch and per job, the
//!   job span's `traceparent` on the result).

mod answer;
pub mod batcher;
pub mod discovery;
pub mod drain;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod prepare;
mod session;
pub mod shutdown;
mod trace;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use surge_broker::{AmqpUrl, Timeouts};
use surge_model::{DeviceSpec, ModelError};
use surge_protocol::{Limits, Topology};
use thiserror::Error;
use tracing::{error, info, warn};

pub use batcher::BatchPolicy;
pub use shutdown::{Shutdown, ShutdownTrigger};
/// The crates below the worker, re-exported so the binaries depend on one crate.
pub use {surge_broker as broker, surge_model as model, surge_protocol as protocol};

/// Everything a worker needs to know.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Broker URL (password redacted in `Debug`).
    pub url: AmqpUrl,
    /// Exchange and queue names.
    pub topology: Topology,
    /// Folder holding one sub-folder per model.
    pub models_dir: PathBuf,
    /// Models to serve; empty means every valid model in `models_dir`.
    pub models: Vec<String>,
    /// Where models run.
    pub device: DeviceSpec,
    /// When batches close.
    pub policy: BatchPolicy,
    /// Unacked deliveries per model queue; defaults to [`BatchPolicy::default_prefetch`].
    pub prefetch: Option<u16>,
    /// Limits on incoming messages.
    pub limits: Limits,
    /// Bounds on every broker await.
    pub timeouts: Timeouts,
    /// Where to serve `/metrics`, `/healthz`, `/readyz`; `None` to not serve them.
    pub metrics_addr: Option<SocketAddr>,
    /// Identity reported in results; defaults to `hostname-pid`.
    pub worker_id: Option<String>,
    /// Sleep before each batch: a deliberate slow-down for fault drills (zero in
    /// production).
    pub batch_delay: Duration,
    /// When serving every model (`models` empty): how often to look for new model
    /// folders; `None` to not look.
    pub watch_models: Option<Duration>,
}

impl WorkerConfig {
    /// A configuration with the defaults for everything but the URL and models folder.
    pub fn new(url: AmqpUrl, models_dir: impl Into<PathBuf>) -> Self {
        Self {
            url,
            topology: Topology::default(),
            models_dir: models_dir.into(),
            models: Vec::new(),
            device: DeviceSpec::Cpu,
            policy: BatchPolicy::default(),
            prefetch: None,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            metrics_addr: None,
            worker_id: None,
            batch_delay: Duration::ZERO,
            watch_models: Some(Duration::from_secs(1)),
        }
    }
}

/// Why a worker could not start or had to stop.
#[derive(Debug, Error)]
pub enum WorkerError {
    /// A model failed to load.
    #[error("{0}")]
    Model(#[from] ModelError),
    /// No model to serve.
    #[error("no valid model found in {0}; add a model folder (see `surge models check`) or pass --models-dir")]
    NoModels(PathBuf),
    /// The broker refused the topology in a way retrying cannot fix (a queue declared
    /// with other arguments).
    #[error("{0}")]
    Broker(#[from] surge_broker::BrokerError),
    /// The metrics address could not be bound, or the model thread not started.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// State shared by every task of a worker.
pub(crate) struct Shared {
    pub(crate) config: WorkerConfig,
    pub(crate) engine: engine::Engine,
    pub(crate) ready: Arc<AtomicBool>,
    pub(crate) worker_id: String,
}

/// A started worker.
pub struct RunningWorker {
    /// Where `/metrics` is served, when it is.
    pub metrics_addr: Option<SocketAddr>,
    /// Identity reported in results.
    pub worker_id: String,
    /// Resolves when the worker has stopped: after shutdown (`Ok`), or on a broker
    /// refusal that retrying cannot fix (`Err`).
    pub task: tokio::task::JoinHandle<Result<(), WorkerError>>,
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "worker".to_string());
    format!("{host}-{}", std::process::id())
}

/// One version's load outcome.
type Loaded = Result<Box<dyn surge_model::Model>, ModelError>;

/// Every version of model `name`: each folder of the versioned layout, or the one flat
/// folder; an error for a folder that mixes both (the rule is `surge_model::layout`).
fn load_all_versions(
    models_dir: &std::path::Path,
    name: &str,
    device: &surge_model::Device,
) -> Result<Vec<Loaded>, ModelError> {
    surge_protocol::validate_model_name(name)?;
    Ok(match surge_model::layout(&models_dir.join(name))? {
        surge_model::Layout::Flat => vec![surge_model::load_model(models_dir, name, device)],
        surge_model::Layout::Versioned(versions) => versions
            .iter()
            .map(|v| surge_model::load_version(models_dir, name, v, device))
            .collect(),
    })
}

/// Logs and counts a model folder this worker will not serve.
pub(crate) fn refused(name: &str, error: &ModelError) {
    let reason = error.reason();
    error!(model = %name, reason, error = %error, "model folder refused; not serving it");
    ::metrics::counter!(metrics::MODEL_FOLDERS_REFUSED, "model" => name.to_string(), "reason" => reason)
        .increment(1);
}

/// Warns about a served tabular model whose folder proves nothing (no golden rows, no
/// preprocessing): see `surge_model::Proof`.
pub(crate) fn warn_if_unproven(info: &surge_model::ModelInfo) {
    let proof = surge_model::spec::read_spec(&info.dir)
        .map(|s| surge_model::Proof::of(&s))
        .ok();
    if let Some(surge_model::Proof::Nothing) = proof {
        if let Some(w) = surge_model::Proof::Nothing.warning() {
            warn!(model = %info.name, version = %info.version, "{w}");
        }
    }
}

fn load_models(cfg: &WorkerConfig) -> Result<Vec<Box<dyn surge_model::Model>>, WorkerError> {
    let device = surge_model::select_device(cfg.device)?;
    let mut models = Vec::new();
    if cfg.models.is_empty() {
        for name in surge_model::discover(&cfg.models_dir)? {
            let loaded = match load_all_versions(&cfg.models_dir, &name, &device) {
                Ok(l) => l,
                Err(e) => vec![Err(e)],
            };
            for loaded in loaded {
                match loaded {
                    Ok(m) => models.push(m),
                    // One broken folder must not stop the others from being served.
                    Err(e) => refused(&name, &e),
                }
            }
        }
    } else {
        for name in &cfg.models {
            // A model named on the command line must load, or the worker does not start.
            for loaded in load_all_versions(&cfg.models_dir, name, &device)? {
                models.push(loaded?);
            }
        }
    }
    if models.is_empty() {
        return Err(WorkerError::NoModels(cfg.models_dir.clone()));
    }
    for m in &models {
        let i = m.info();
        info!(model = %i.name, version = %i.version, architecture = %i.architecture, device = %cfg.device, "model loaded");
        warn_if_unproven(i);
    }
    Ok(models)
}

/// Loads the models, starts the model thread and the metrics server, and spawns the
/// consume/reconnect loop. Returns once the worker is started; it stops after
/// `shutdown` fires, having drained its in-flight batches.
pub async fn start(config: WorkerConfig, shutdown: Shutdown) -> Result<RunningWorker, WorkerError> {
    let worker_id = config.worker_id.clone().unwrap_or_else(default_worker_id);
    // The recorder goes in before the models load, so that folders refused at start
    // are counted.
    let recorder = config.metrics_addr.and_then(|_| metrics::install());
    metrics::zero_counters();
    let models = load_models(&config)?;
    let engine = engine::Engine::start(models).map_err(|source| WorkerError::Io {
        what: "starting the model thread".into(),
        source,
    })?;
    let ready = Arc::new(AtomicBool::new(false));
    let metrics_addr = match config.metrics_addr {
        None => None,
        Some(addr) => Some(
            http::serve(addr, recorder, ready.clone(), shutdown.clone())
                .await
                .map_err(|source| WorkerError::Io {
                    what: format!("serving metrics on {addr}"),
                    source,
                })?,
        ),
    };
    if let Some(a) = metrics_addr {
        info!(addr = %a, "serving /metrics, /healthz, /readyz");
    }
    let shared = Arc::new(Shared {
        config,
        engine,
        ready,
        worker_id: worker_id.clone(),
    });
    if let (true, Some(every)) = (shared.config.models.is_empty(), shared.config.watch_models) {
        // A folder must have been still for 2 s (or two looks) before it is loaded.
        let quiet = (every * 2).max(Duration::from_secs(2));
        tokio::spawn(discovery::watch(
            shared.clone(),
            shutdown.clone(),
            every,
            quiet,
        ));
        info!(dir = %shared.config.models_dir.display(), ?every, "watching for new model folders");
    }
    let task = tokio::spawn(reconnect_loop(shared, shutdown));
    Ok(RunningWorker {
        metrics_addr,
        worker_id,
        task,
    })
}

/// [`start`], then wait until the worker has stopped.
pub async fn run(config: WorkerConfig, shutdown: Shutdown) -> Result<(), WorkerError> {
    let running = start(config, shutdown).await?;
    match running.task.await {
        Ok(result) => result,
        Err(e) => Err(WorkerError::Io {
            what: "worker task".into(),
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

/// Runs sessions until shutdown; after a broker error, waits (exponential backoff,
/// 100 ms to 5 s) and starts a new one.
async fn reconnect_loop(shared: Arc<Shared>, shutdown: Shutdown) -> Result<(), WorkerError> {
    let mut backoff =
        surge_broker::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    info!(url = %shared.config.url, worker = %shared.worker_id, "worker starting");
    loop {
        if shutdown.is_triggered() {
            break;
        }
        let started = std::time::Instant::now();
        match session::run_session(shared.clone(), shutdown.clone()).await {
            Ok(()) => break,
            Err(session::SessionError::Broker(e @ surge_broker::BrokerError::Mismatch { .. })) => {
                error!(error = %e, "cannot serve: the broker holds a conflicting queue");
                return Err(e.into());
            }
            Err(e) => {
                if shutdown.is_triggered() {
                    break;
                }
                if started.elapsed() > Duration::from_secs(30) {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                warn!(error = %e, retry_in = ?delay, "broker connection lost; reconnecting");
                ::metrics::counter!(metrics::RECONNECTS).increment(1);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait() => break,
                }
            }
        }
    }
    info!("worker stopped");
    Ok(())
}
