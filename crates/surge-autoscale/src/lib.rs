//! Surge's autoscaler for one machine: supervises `surge worker` processes and sizes
//! each model's pool to its backlog, down to zero.
//!
//! A tour:
//!
//! * [`policy`]: how many workers a queue needs (pure; tested against traces).
//! * [`scrape`]: reading a worker's `/metrics` (in-flight jobs, answered jobs).
//! * [`pool`]: one model's worker processes: spawn, drain (SIGTERM, then SIGKILL after
//!   the grace period), restart after a crash with backoff.
//! * [`status`]: the live status page (`/`, self-contained HTML) and `/api/status`:
//!   per model, backlog, in flight, workers, rate, time to drain, the last decisions
//!   and ten minutes of history.
//! * [`run`]: every `interval`, per model: backlog and consumers by a passive queue
//!   declare, in-flight and answered jobs from the workers, a learned service rate,
//!   a decision, and the pool made to match it. Its own `/metrics` say what it saw and
//!   decided, including the estimated time to drain.

pub mod policy;
pub mod pool;
pub mod scrape;
pub mod status;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::{Channel, Connection};
use surge_broker::{timed, topology, AmqpUrl, Backoff, BrokerError, Timeouts};
pub use surge_ops::shutdown::{Shutdown, ShutdownTrigger};
use surge_protocol::Topology;
use thiserror::Error;
use tracing::{debug, error, info, warn};

pub use policy::{Decision, Observation, PolicyConfig, PolicyState, RateEstimator, Reason};
pub use pool::{Pool, WorkerLaunch};

// The metric names live in surge-ops, shared with the bench and dashboards.
pub use surge_ops::names::autoscale::*;

/// Everything the autoscaler needs.
#[derive(Debug, Clone)]
pub struct AutoscaleConfig {
    /// Broker URL (password redacted in `Debug`); workers inherit the environment.
    pub url: AmqpUrl,
    /// Exchange and queue names.
    pub topology: Topology,
    /// The models whose queues are scaled; one pool each.
    pub models: Vec<String>,
    /// When set, new model folders appearing here (sub-folders with a `model.toml`)
    /// get a pool of their own while the autoscaler runs.
    pub watch_models_dir: Option<std::path::PathBuf>,
    /// The scaling policy.
    pub policy: PolicyConfig,
    /// How often to look.
    pub interval: Duration,
    /// How workers are started and stopped.
    pub launch: WorkerLaunch,
    /// Bounds on every broker await.
    pub timeouts: Timeouts,
    /// Where to serve `/metrics`, `/healthz`, `/readyz`.
    pub metrics_addr: Option<SocketAddr>,
}

/// Why the autoscaler could not start.
#[derive(Debug, Error)]
pub enum AutoscaleError {
    /// Nothing to scale.
    #[error("no model to scale: pass --model or put model folders in --models-dir")]
    NoModels,
    /// The metrics address could not be bound.
    #[error("serving metrics on {addr}: {source}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The broker refused the topology in a way retrying cannot fix.
    #[error("{0}")]
    Broker(#[from] BrokerError),
}

fn install_recorder() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    surge_ops::install_recorder(surge_ops::PrometheusBuilder::new())
}

/// The broker side: one connection, one channel, reopened after any error.
struct BrokerView {
    url: AmqpUrl,
    topology: Topology,
    models: Vec<String>,
    timeouts: Timeouts,
    conn: Option<(Connection, Channel)>,
    next_try: Instant,
    backoff: Backoff,
}

impl BrokerView {
    async fn channel(&mut self) -> Result<&Channel, BrokerError> {
        let usable = self
            .conn
            .as_ref()
            .is_some_and(|(c, ch)| c.status().connected() && ch.status().connected());
        if !usable {
            self.conn = None;
            let t = &self.timeouts;
            let conn = surge_broker::connect(&self.url, "surge-autoscale", t).await?;
            let ch = timed("channel.open", t.operation, conn.create_channel()).await?;
            // Declaring the topology here means a job published before any worker
            // exists waits in its queue instead of bouncing as unroutable.
            topology::declare_base(&ch, &self.topology, t).await?;
            for m in &self.models {
                topology::declare_model(&ch, &self.topology, m, t).await?;
            }
            info!(url = %self.url, "autoscaler connected; topology declared");
            self.conn = Some((conn, ch));
        }
        match &self.conn {
            Some((_, ch)) => Ok(ch),
            None => Err(BrokerError::Timeout {
                what: "channel.open",
                after: self.timeouts.operation,
            }),
        }
    }

    /// `(ready messages, consumers)` of a model's queue, or `None` while the broker is
    /// unreachable (retried with backoff; the pools are left as they are meanwhile).
    async fn depth(&mut self, model: &str) -> Option<(u64, u32)> {
        if Instant::now() < self.next_try {
            return None;
        }
        let topo = self.topology.clone();
        let t = self.timeouts;
        let result = async {
            let ch = self.channel().await?;
            let (d, _) = topology::model_depth(ch, &topo, model, &t).await?;
            Ok::<_, BrokerError>((u64::from(d.ready), d.consumers))
        }
        .await;
        match result {
            Ok(d) => {
                self.backoff.reset();
                Some(d)
            }
            Err(e) => {
                let delay = self.backoff.next_delay();
                warn!(error = %e, retry_in = ?delay, "cannot read queue depth; leaving the pools as they are");
                self.conn = None;
                self.next_try = Instant::now() + delay;
                None
            }
        }
    }
}

/// Per-model state of the control loop.
struct Scaled {
    pool: Pool,
    state: PolicyState,
    rate: RateEstimator,
    last_desired: Option<u32>,
    last_backlog: u64,
    last_tick: Instant,
    crashes_reported: u64,
}

impl Scaled {
    /// A model's queue with an empty pool and nothing learned yet.
    fn new(model: String, launch: WorkerLaunch) -> Self {
        Self {
            pool: Pool::new(model, launch),
            state: PolicyState::default(),
            rate: RateEstimator::default(),
            last_desired: None,
            last_backlog: 0,
            last_tick: Instant::now(),
            crashes_reported: 0,
        }
    }
}

/// How long a model folder found while running must go unmodified before the
/// autoscaler scales its queue: the quiet period of the workers' own hot discovery, so
/// a folder still being copied never starts a worker.
pub const NEW_FOLDER_QUIET: Duration = Duration::from_secs(2);

/// What [`model_folders`] found.
#[derive(Debug, Default)]
pub struct ModelFolders {
    /// Model folders to scale, sorted.
    pub models: Vec<String>,
    /// Folders refused as a whole (a mixed layout: see `surge_model::layout`), sorted,
    /// with why; workers would refuse them too, so they get no pool.
    pub refused: Vec<(String, surge_model::ModelError)>,
}

/// Model folders in `dir`: sub-folders with a valid model name laid out flat
/// (`<name>/model.toml`) or versioned (`<name>/<version>/model.toml`) by
/// `surge_model::layout`, the rule workers use, and in which nothing has changed for
/// `quiet`. Workers validate the rest: a broken folder's workers fail to start and are
/// retried with backoff, and only while jobs wait for it.
pub fn model_folders(dir: &std::path::Path, quiet: Duration) -> ModelFolders {
    let mut found = ModelFolders::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    let now = std::time::SystemTime::now();
    for entry in entries.filter_map(|e| e.ok()) {
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if surge_protocol::validate_model_name(&name).is_err() {
            continue;
        }
        let path = entry.path();
        let layout = match surge_model::layout(&path) {
            Ok(_) => Ok(()),
            Err(e @ surge_model::ModelError::MixedLayout { .. }) => Err(e),
            Err(_) => continue,
        };
        if !newest_change(&path).is_some_and(|t| surge_model::is_quiet(t, now, quiet)) {
            continue;
        }
        match layout {
            Ok(()) => found.models.push(name),
            Err(e) => found.refused.push((name, e)),
        }
    }
    found.models.sort();
    found.refused.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// The newest modification time in a model folder: its files and its sub-folders'
/// files (version folders, golden rows).
fn newest_change(folder: &std::path::Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(folder).ok()?.filter_map(|e| e.ok()) {
        let Ok(meta) = entry.metadata() else { continue };
        newest = newest.max(meta.modified().ok());
        if meta.is_dir() {
            for inner in std::fs::read_dir(entry.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                newest = newest.max(inner.metadata().and_then(|m| m.modified()).ok());
            }
        }
    }
    newest
}

/// Runs the autoscaler until `shutdown` fires, then drains every worker.
pub async fn run(cfg: AutoscaleConfig, shutdown: Shutdown) -> Result<(), AutoscaleError> {
    if cfg.models.is_empty() && cfg.watch_models_dir.is_none() {
        return Err(AutoscaleError::NoModels);
    }
    let ready = Arc::new(AtomicBool::new(false));
    let board = status::Board::default();
    if let Some(addr) = cfg.metrics_addr {
        let bound = surge_ops::serve_with(
            addr,
            install_recorder(),
            ready.clone(),
            "not connected to the broker\n",
            shutdown.clone().fired(),
            status::routes(board.clone()),
        )
        .await
        .map_err(|source| AutoscaleError::Metrics { addr, source })?;
        info!(addr = %bound, "serving / (status page), /api/status, /metrics, /healthz, /readyz");
    }
    let mut broker = BrokerView {
        url: cfg.url.clone(),
        topology: cfg.topology.clone(),
        models: cfg.models.clone(),
        timeouts: cfg.timeouts,
        conn: None,
        next_try: Instant::now(),
        backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
    };
    let started = Instant::now();
    let mut scaled: Vec<Scaled> = cfg
        .models
        .iter()
        .map(|m| Scaled::new(m.clone(), cfg.launch.clone()))
        .collect();
    info!(models = ?cfg.models, policy = ?cfg.policy, interval = ?cfg.interval, "autoscaler starting");
    let scrape_timeout = cfg
        .interval
        .clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut last_scan = Instant::now();
    // Refused folders already reported, with the message, so each is said once.
    let mut refused: std::collections::HashMap<String, String> = Default::default();
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait() => break,
        }
        if let Some(dir) = &cfg.watch_models_dir {
            if last_scan.elapsed() >= Duration::from_secs(1) {
                last_scan = Instant::now();
                let found = model_folders(dir, NEW_FOLDER_QUIET);
                refused.retain(|name, _| found.refused.iter().any(|(n, _)| n == name));
                for (name, e) in &found.refused {
                    let message = e.to_string();
                    if refused.get(name) != Some(&message) {
                        error!(model = %name, reason = e.reason(), error = %message,
                            "model folder refused; not scaling its queue (workers would refuse it too)");
                        metrics::counter!(MODEL_FOLDERS_REFUSED, "model" => name.clone(), "reason" => e.reason())
                            .increment(1);
                        refused.insert(name.clone(), message);
                    }
                }
                for name in found.models {
                    if scaled.iter().any(|s| s.pool.model() == name) {
                        continue;
                    }
                    info!(model = %name, "new model folder; scaling its queue too");
                    broker.models.push(name.clone());
                    // Reconnecting declares every queue, the new one included.
                    broker.conn = None;
                    scaled.push(Scaled::new(name, cfg.launch.clone()));
                }
            }
        }
        let mut all_connected = true;
        for s in &mut scaled {
            let model = s.pool.model().to_string();
            s.pool.reap();
            let now = Instant::now();
            let dt = now.duration_since(s.last_tick);
            s.last_tick = now;
            let workers = f64::from(s.pool.running() + s.pool.draining());
            metrics::gauge!(WORKER_SECONDS, "model" => model.clone())
                .increment(workers * dt.as_secs_f64());
            let sample = s.pool.scrape(scrape_timeout).await;
            let Some((backlog, consumers)) = broker.depth(&model).await else {
                all_connected = false;
                s.pool.enforce_grace();
                continue;
            };
            let saturated = backlog > 0 && s.last_backlog > 0;
            s.last_backlog = backlog;
            s.rate.observe(sample.answered, dt, sample.busy, saturated);
            let obs = Observation {
                at: now.duration_since(started),
                backlog,
                in_flight: sample.in_flight,
                running: s.pool.running(),
                rate_per_worker: s.rate.rate(),
            };
            let d = cfg.policy.decide(&mut s.state, &obs);
            let (up, down) = s.pool.apply(d.desired);
            if up > 0 || down > 0 || s.last_desired != Some(d.desired) {
                info!(
                    model = %model, desired = d.desired, running = obs.running, started = up,
                    draining = down, backlog, in_flight = obs.in_flight, consumers,
                    rate = ?s.rate.rate().map(|r| (r * 10.0).round() / 10.0),
                    reason = %d.reason, "scaling decision"
                );
                if up > 0 {
                    metrics::counter!(DECISIONS, "model" => model.clone(), "direction" => "up")
                        .increment(1);
                }
                if down > 0 {
                    metrics::counter!(DECISIONS, "model" => model.clone(), "direction" => "down")
                        .increment(1);
                }
            } else {
                debug!(model = %model, desired = d.desired, backlog, in_flight = obs.in_flight, reason = %d.reason, "steady");
            }
            s.last_desired = Some(d.desired);
            s.pool.enforce_grace();
            if let Ok(mut b) = board.write() {
                b.record(
                    &model,
                    &status::Tick {
                        at_ms: surge_protocol::now_ms(),
                        backlog,
                        in_flight: sample.in_flight as u64,
                        running: s.pool.running(),
                        was_running: obs.running,
                        draining: s.pool.draining(),
                        desired: d.desired,
                        rate_per_worker: s.rate.rate(),
                        time_to_drain_s: d.time_to_drain,
                        reason: d.reason.to_string(),
                    },
                );
            }
            let rate = s.rate.rate().unwrap_or(cfg.policy.initial_rate);
            metrics::gauge!(DESIRED, "model" => model.clone()).set(f64::from(d.desired));
            metrics::gauge!(RUNNING, "model" => model.clone()).set(f64::from(s.pool.running()));
            metrics::gauge!(DRAINING, "model" => model.clone()).set(f64::from(s.pool.draining()));
            metrics::gauge!(CONNECTED, "model" => model.clone()).set(f64::from(sample.connected));
            metrics::gauge!(BACKLOG, "model" => model.clone()).set(backlog as f64);
            metrics::gauge!(IN_FLIGHT, "model" => model.clone()).set(sample.in_flight as f64);
            metrics::gauge!(RATE, "model" => model.clone()).set(rate);
            metrics::gauge!(TIME_TO_DRAIN, "model" => model.clone())
                .set(d.time_to_drain.unwrap_or(0.0));
            metrics::counter!(CRASHES, "model" => model.clone())
                .increment(s.pool.crashes - s.crashes_reported);
            s.crashes_reported = s.pool.crashes;
        }
        ready.store(all_connected, Ordering::Relaxed);
    }
    info!("autoscaler stopping: draining every worker");
    ready.store(false, Ordering::Relaxed);
    for s in &mut scaled {
        s.pool.shutdown().await;
    }
    info!("autoscaler stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    /// A temporary folder holding these files, `(path, text)`, their folders made.
    fn folder_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = tmp.path().join(path);
            std::fs::create_dir_all(path.parent().expect("a file inside the folder")).unwrap();
            std::fs::write(path, text).unwrap();
        }
        tmp
    }

    /// Backdates every file of a folder tree (one level of version folders) by `age`.
    fn age(dir: &std::path::Path, age: Duration) {
        let when = SystemTime::now() - age;
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            if entry.path().is_dir() {
                self::age(&entry.path(), age);
            }
            let f = std::fs::File::options()
                .read(true)
                .open(entry.path())
                .unwrap();
            f.set_modified(when).unwrap();
        }
    }

    #[test]
    fn model_folders_wait_until_a_folder_is_quiet_and_see_versions() {
        let tmp = folder_with(&[
            ("flat/model.toml", "x"),
            ("versioned/1.0.0/model.toml", "x"),
            ("not-a-model/data/readme", "x"),
            (".staging/model.toml", "x"),
        ]);
        let dir = tmp.path();
        // Just written: not quiet yet, unless no quiet period is asked for.
        assert!(model_folders(dir, NEW_FOLDER_QUIET).models.is_empty());
        assert_eq!(
            model_folders(dir, Duration::ZERO).models,
            ["flat", "versioned"]
        );
        age(dir, Duration::from_secs(10));
        assert_eq!(
            model_folders(dir, NEW_FOLDER_QUIET).models,
            ["flat", "versioned"]
        );
        // A file still arriving in a version folder makes its model wait again.
        std::fs::write(dir.join("versioned/1.0.0/model.safetensors"), "xx").unwrap();
        assert_eq!(model_folders(dir, NEW_FOLDER_QUIET).models, ["flat"]);
    }

    #[test]
    fn a_folder_mixing_layouts_is_refused_with_why_not_scaled() {
        let tmp = folder_with(&[
            ("mixed/model.toml", "version = \"1.0.0\"\n"),
            ("mixed/1.1.0/model.toml", "x"),
            ("flat/model.toml", "x"),
        ]);
        let dir = tmp.path();
        // Still being written: neither scaled nor refused yet.
        let found = model_folders(dir, NEW_FOLDER_QUIET);
        assert!(found.models.is_empty() && found.refused.is_empty());
        age(dir, Duration::from_secs(10));
        let found = model_folders(dir, NEW_FOLDER_QUIET);
        assert_eq!(found.models, ["flat"]);
        let [(name, e)] = &found.refused[..] else {
            panic!("{:?}", found.refused);
        };
        assert_eq!(name, "mixed");
        assert_eq!(e.reason(), "mixed_layout");
        let text = e.to_string();
        assert!(
            text.contains("mixes two layouts") && text.contains("mixed/1.0.0/"),
            "{text}"
        );
    }
}
