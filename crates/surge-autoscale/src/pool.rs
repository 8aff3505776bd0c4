//! One model's pool of `surge worker` processes: spawn, scrape, drain, restart.
//!
//! The pool turns the policy's desired count into processes. Scale-down picks idle
//! workers first (nothing in flight, then the newest) and always drains: SIGTERM, and
//! SIGKILL only after the grace period. A worker that exits without being asked is
//! restarted with backoff.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tracing::{info, warn};

use crate::scrape::{http_get, parse_worker_metrics, WorkerSample};

/// How a pool starts its workers.
#[derive(Debug, Clone)]
pub struct WorkerLaunch {
    /// The `surge` binary.
    pub program: PathBuf,
    /// Arguments after `worker --model <name> --metrics-addr <addr> --worker-id <id>`.
    pub extra_args: Vec<String>,
    /// SIGTERM → SIGKILL after this long.
    pub grace: Duration,
}

/// One supervised worker process.
#[derive(Debug)]
struct Worker {
    id: String,
    child: Child,
    metrics: SocketAddr,
    started: Instant,
    draining_since: Option<Instant>,
    /// The last sample read, and the one before (for deltas).
    last: Option<WorkerSample>,
    prev_jobs: f64,
    connected: bool,
}

/// What a scrape of the whole pool found.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PoolSample {
    /// Jobs in flight, all workers (draining ones included).
    pub in_flight: u64,
    /// Jobs answered since the previous scrape, all workers.
    pub answered: u64,
    /// Rows answered since the previous scrape, all workers.
    pub rows: u64,
    /// Running (not draining) workers that had jobs in flight or answered some.
    pub busy: u32,
    /// Running workers connected to the broker.
    pub connected: u32,
}

/// A model's workers.
#[derive(Debug)]
pub struct Pool {
    model: String,
    launch: WorkerLaunch,
    workers: Vec<Worker>,
    seq: u64,
    /// Restart backoff after unexpected exits.
    backoff: surge_broker::Backoff,
    not_before: Option<Instant>,
    prev_rows: f64,
    /// Restarts after unexpected exits, for the metric.
    pub crashes: u64,
}

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

fn free_local_addr() -> std::io::Result<SocketAddr> {
    // Bind port 0 to have the OS pick a free port, then hand it to the worker. Another
    // process could take it in between; the worker then exits and is restarted.
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

fn signal(child: &Child, sig: libc::c_int) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on a pid we spawned and have not reaped yet (tokio reaps only
        // through `try_wait`/`wait`, which we call), so it cannot name another process.
        unsafe {
            libc::kill(pid as libc::pid_t, sig);
        }
    }
}

impl Pool {
    /// An empty pool for `model`.
    pub fn new(model: impl Into<String>, launch: WorkerLaunch) -> Self {
        Self {
            model: model.into(),
            launch,
            workers: Vec::new(),
            seq: 0,
            backoff: surge_broker::Backoff::new(BACKOFF_MIN, BACKOFF_MAX),
            not_before: None,
            prev_rows: 0.0,
            crashes: 0,
        }
    }

    /// The model this pool serves.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Workers running and not draining.
    pub fn running(&self) -> u32 {
        self.workers
            .iter()
            .filter(|w| w.draining_since.is_none())
            .count() as u32
    }

    /// Workers asked to stop and not gone yet.
    pub fn draining(&self) -> u32 {
        self.workers.len() as u32 - self.running()
    }

    /// Reaps exited workers; an exit nobody asked for is logged and delays the next
    /// start (backoff doubling from 0.5 s to 30 s, reset after a minute of uptime).
    pub fn reap(&mut self) {
        let now = Instant::now();
        let model = self.model.clone();
        let mut crashed = Vec::new();
        self.workers.retain_mut(|w| match w.child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                if w.draining_since.is_some() {
                    info!(model = %model, worker = %w.id, %status, "worker drained and stopped");
                } else {
                    crashed.push((w.id.clone(), Some(status), w.started.elapsed()));
                }
                false
            }
            Err(e) => {
                warn!(model = %model, worker = %w.id, error = %e, "cannot wait for worker; forgetting it");
                crashed.push((w.id.clone(), None, w.started.elapsed()));
                false
            }
        });
        for (id, status, uptime) in crashed {
            self.crashes += 1;
            if uptime > Duration::from_secs(60) {
                self.backoff.reset();
            }
            let status = status
                .map(|s: ExitStatus| s.to_string())
                .unwrap_or_default();
            let delay = self.backoff.next_delay();
            warn!(model = %self.model, worker = %id, %status, restart_in = ?delay,
                "worker exited unexpectedly; a replacement will start after the backoff");
            self.not_before = Some(now + delay);
        }
    }

    /// Reads every worker's `/metrics` (concurrently, bounded by `timeout`).
    pub async fn scrape(&mut self, timeout: Duration) -> PoolSample {
        let reads = self
            .workers
            .iter()
            .map(|w| http_get(w.metrics, "/metrics", timeout));
        let texts = futures_util::future::join_all(reads).await;
        let mut out = PoolSample::default();
        let mut rows_now = 0.0;
        for (w, text) in self.workers.iter_mut().zip(texts) {
            let Some(text) = text else {
                // Not up yet, or too slow to answer: keep its last sample.
                if let Some(s) = w.last {
                    rows_now += s.rows;
                }
                continue;
            };
            let s = parse_worker_metrics(&text);
            w.connected =
                crate::scrape::sum_metric(&text, surge_ops::names::worker::CONNECTED) > 0.0;
            let answered = (s.jobs - w.prev_jobs).max(0.0);
            w.prev_jobs = s.jobs;
            w.last = Some(s);
            out.in_flight += s.in_flight as u64;
            out.answered += answered as u64;
            rows_now += s.rows;
            if w.draining_since.is_none() {
                if s.in_flight > 0.0 || answered > 0.0 {
                    out.busy += 1;
                }
                if w.connected {
                    out.connected += 1;
                }
            }
        }
        out.rows = (rows_now - self.prev_rows).max(0.0) as u64;
        self.prev_rows = rows_now;
        out
    }

    /// Starts or drains workers until `desired` run. Returns how many were started and
    /// how many asked to drain.
    pub fn apply(&mut self, desired: u32) -> (u32, u32) {
        let running = self.running();
        let mut started = 0;
        let mut drained = 0;
        if desired > running {
            if self.not_before.is_some_and(|t| Instant::now() < t) {
                return (0, 0);
            }
            self.not_before = None;
            for _ in running..desired {
                match self.spawn() {
                    Ok(()) => started += 1,
                    Err(e) => {
                        warn!(model = %self.model, error = %e, program = %self.launch.program.display(),
                            "cannot start a worker; retrying after the backoff");
                        self.not_before = Some(Instant::now() + self.backoff.next_delay());
                        break;
                    }
                }
            }
        } else if desired < running {
            // Idle first (nothing in flight), then the newest: the oldest workers
            // have warm caches and measured rates.
            let mut order: Vec<usize> = (0..self.workers.len())
                .filter(|&i| self.workers[i].draining_since.is_none())
                .collect();
            order.sort_by(|&a, &b| {
                let (wa, wb) = (&self.workers[a], &self.workers[b]);
                let busy = |w: &Worker| w.last.map(|s| s.in_flight > 0.0).unwrap_or(false);
                busy(wa).cmp(&busy(wb)).then(wb.started.cmp(&wa.started))
            });
            for &i in order.iter().take((running - desired) as usize) {
                let w = &mut self.workers[i];
                info!(model = %self.model, worker = %w.id,
                    in_flight = w.last.map(|s| s.in_flight).unwrap_or(0.0),
                    "draining worker (SIGTERM)");
                signal(&w.child, libc::SIGTERM);
                w.draining_since = Some(Instant::now());
                drained += 1;
            }
        }
        (started, drained)
    }

    /// SIGKILLs workers still draining after the grace period.
    pub fn enforce_grace(&mut self) {
        let grace = self.launch.grace;
        for w in &mut self.workers {
            if w.draining_since.is_some_and(|t| t.elapsed() > grace) {
                warn!(model = %self.model, worker = %w.id, ?grace,
                    "worker did not drain within the grace period; killing it (its unacked jobs return to the queue)");
                let _ = w.child.start_kill();
            }
        }
    }

    /// Drains every worker and waits for them (up to the grace period, then kills).
    pub async fn shutdown(&mut self) {
        for w in &mut self.workers {
            if w.draining_since.is_none() {
                signal(&w.child, libc::SIGTERM);
                w.draining_since = Some(Instant::now());
            }
        }
        let deadline = Instant::now() + self.launch.grace;
        for w in &mut self.workers {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, w.child.wait()).await {
                Ok(_) => info!(model = %self.model, worker = %w.id, "worker stopped"),
                Err(_) => {
                    warn!(model = %self.model, worker = %w.id, "worker did not drain in time; killing it");
                    let _ = w.child.kill().await;
                }
            }
        }
        self.workers.clear();
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        self.seq += 1;
        let id = format!(
            "autoscale-{}-{}-{}",
            std::process::id(),
            self.model,
            self.seq
        );
        let metrics = free_local_addr()?;
        let child = Command::new(&self.launch.program)
            .arg("worker")
            .args(["--model", &self.model])
            .args(["--metrics-addr", &metrics.to_string()])
            .args(["--worker-id", &id])
            .args(&self.launch.extra_args)
            .stdin(Stdio::null())
            // Workers log to the autoscaler's stderr; their lines name their worker id.
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        info!(model = %self.model, worker = %id, pid = child.id().unwrap_or(0), "worker started");
        self.workers.push(Worker {
            id,
            child,
            metrics,
            started: Instant::now(),
            draining_since: None,
            last: None,
            prev_jobs: 0.0,
            connected: false,
        });
        Ok(())
    }
}
