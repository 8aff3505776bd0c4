//! The harness of Surge's end-to-end tests (`tests/`): a real RabbitMQ, real `surge`
//! and `score-batch` processes, and names unique to each test so tests run in parallel
//! without seeing each other's messages.
//!
//! When the broker is unreachable the tests fail loudly (never skip): start it with
//! `rabbitmq-server -detached` or run them through `make test`.
//!
//! Fault drills add [`node`] (a private RabbitMQ node a test may stop, restart or give
//! a TLS listener), [`proxy`] (a TCP proxy a test can freeze) and [`figures`] (the
//! counts every fault run prints and asserts).

pub mod figures;
pub mod node;
pub mod proxy;

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use surge_broker::{AmqpUrl, Timeouts};
use surge_protocol::Topology;

/// The broker URL: `AMQP_URL`, else the local default.
pub fn amqp_url() -> AmqpUrl {
    AmqpUrl::from_env().expect("AMQP_URL is unusable")
}

/// Connects to the broker or panics with instructions: tests never skip silently.
pub async fn require_broker() -> lapin::Connection {
    match surge_broker::connect(&amqp_url(), "surge-tests", &Timeouts { connect: Duration::from_secs(5), operation: Duration::from_secs(10) }).await {
        Ok(c) => c,
        Err(e) => panic!(
            "\n\n*** RabbitMQ is not reachable at {} ({e}).\n*** Integration tests need it: run `rabbitmq-server -detached` or `make test`.\n\n",
            amqp_url()
        ),
    }
}

/// A prefix no other test uses, for every exchange and queue name of one test.
pub fn unique_prefix(test: &str) -> String {
    format!(
        "t-{test}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// The workspace root (two folders above this crate's).
pub fn workspace() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .and_then(Path::parent)
        .map_or_else(|| here.to_path_buf(), Path::to_path_buf)
}

/// The shipped models folder.
pub fn models_dir() -> PathBuf {
    workspace().join("models")
}

/// Path of a workspace binary, built by `cargo build --workspace --bins` (which
/// `make test` runs first); panics with that advice when it is missing.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test-exe> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` (make test does)",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A `surge worker` child process, killed when dropped (a failing test leaves no
/// worker behind).
pub struct WorkerProc {
    child: Child,
    pid: u32,
    /// Port of its `/metrics`.
    pub metrics_port: u16,
    /// Its log file (stderr).
    pub log: PathBuf,
}

impl WorkerProc {
    /// Starts `surge worker --prefix <prefix> --model breast-cancer <extra...>`, logging
    /// to `dir/<name>.log`.
    pub fn spawn(prefix: &str, name: &str, dir: &Path, extra: &[&str]) -> Self {
        Self::spawn_with_env(prefix, name, dir, extra, &[])
    }

    /// [`WorkerProc::spawn`] with extra environment variables (e.g. `AMQP_URL` of a
    /// private node or a proxy).
    pub fn spawn_with_env(
        prefix: &str,
        name: &str,
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::launch(prefix, name, dir, &models_dir(), extra, env)
    }

    /// [`WorkerProc::spawn`] serving the model folders of `models` instead of the
    /// shipped ones.
    pub fn spawn_in(prefix: &str, name: &str, dir: &Path, models: &Path, extra: &[&str]) -> Self {
        Self::launch(prefix, name, dir, models, extra, &[])
    }

    fn launch(
        prefix: &str,
        name: &str,
        dir: &Path,
        models: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let metrics_port = free_port();
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)
            .unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let child = Command::new(bin("surge"))
            .arg("worker")
            .args(["--prefix", prefix, "--models-dir"])
            .arg(models)
            .args([
                "--metrics-addr",
                &format!("127.0.0.1:{metrics_port}"),
                "--worker-id",
                name,
            ])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .expect("starting surge worker");
        let pid = child.id().unwrap_or_default();
        Self {
            child,
            pid,
            metrics_port,
            log,
        }
    }

    /// OS process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// GET `path` on the worker's metrics server: `(status, body)`.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.metrics_port, path).await
    }

    /// Waits until `/readyz` answers 200 (connected and consuming).
    pub async fn wait_ready(&mut self, within: Duration) {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Some((200, _)) = self.get("/readyz").await {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "worker exited early with {status}; log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "worker not ready within {within:?}; log:\n{}",
            self.log_text()
        );
    }

    /// Sum of a counter over all its label sets in `/metrics`.
    pub async fn metric_sum(&self, name: &str) -> f64 {
        metric_at(self.metrics_port, name).await.unwrap_or(0.0)
    }

    /// Sends a signal (`TERM`, `KILL`, `STOP`, `CONT`).
    pub async fn signal(&self, sig: &str) {
        signal(self.pid, sig).await;
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => panic!("waiting for the worker: {e}"),
            Err(_) => {
                let _ = self.child.start_kill();
                panic!(
                    "worker did not exit within {within:?}; log:\n{}",
                    self.log_text()
                );
            }
        }
    }

    /// The worker's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the worker gracefully (SIGTERM: drain, then exit) and asserts that it
    /// exits successfully within `within`.
    pub async fn stop(&mut self, within: Duration) {
        self.signal("TERM").await;
        let status = self.wait_exit(within).await;
        assert!(
            status.success(),
            "worker exit {status}; log:\n{}",
            self.log_text()
        );
    }

    /// Waits until the worker has answered at least `n` jobs (`surge_jobs_total`).
    pub async fn wait_for_jobs(&self, n: f64, within: Duration) {
        let start = Instant::now();
        while self.metric_sum("surge_jobs_total").await < n {
            assert!(
                start.elapsed() < within,
                "worker answered fewer than {n} jobs in {within:?}; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A long-running child (an autoscaler, Prometheus) whose stderr goes to a log file.
/// Dropped while running (a failed test), it gets SIGTERM first, so an autoscaler stops
/// the workers it started (SIGKILL would orphan them), then SIGKILL after 15 s.
pub struct Proc {
    child: Child,
    pid: u32,
    log: PathBuf,
    what: &'static str,
}

impl Proc {
    /// Starts `cmd` as `what` (for messages), its stderr to `log`.
    pub fn spawn(what: &'static str, cmd: &mut Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("creating the log file");
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let pid = child.id().unwrap_or_default();
        Self {
            child,
            pid,
            log,
            what,
        }
    }

    /// The process's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics, with the log, when the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited with {status}; log:\n{}",
                self.what,
                self.log_text()
            );
        }
    }

    /// SIGTERM, then waits for a clean exit (the autoscaler drains its own workers).
    pub async fn stop(&mut self, within: Duration) {
        signal(self.pid, "TERM").await;
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(
                    status.success(),
                    "{} exit {status}; log:\n{}",
                    self.what,
                    self.log_text()
                );
                return;
            }
            assert!(
                start.elapsed() < within,
                "{} did not stop within {within:?}; log:\n{}",
                self.what,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proc {
    /// On a failed test: SIGTERM first (the autoscaler then stops the worker it started;
    /// SIGKILL would orphan it), SIGKILL after 15 s.
    // Drop cannot await: plain blocking waits, bounded by the 15 s deadline.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &self.pid.to_string()])
                .status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(15) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.start_kill();
        }
    }
}

/// Sends signal `sig` (`TERM`, `KILL`, `STOP`, `CONT`) to process `pid`, asserting
/// that `kill` succeeds.
pub async fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .await
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{sig} {pid} failed");
}

/// Sum of a metric over all its label sets on the `/metrics` of 127.0.0.1:`port`;
/// `None` when that does not answer 200.
pub async fn metric_at(port: u16, name: &str) -> Option<f64> {
    let (200, body) = http_get(port, "/metrics").await? else {
        return None;
    };
    Some(surge_ops::scrape::sum_metric(&body, name))
}

/// HTTP GET on 127.0.0.1:`port`: `(status, body)`, `None` when nothing answers within
/// 3 s.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    surge_ops::scrape::http_get_status(addr, path, Duration::from_secs(3)).await
}

/// What an end-to-end test starts from: the broker (checked, so the test fails loudly
/// when it is down), a prefix no other test uses, a scratch folder, and the [`Cleanup`]
/// guard that deletes the prefix's queues and exchanges for `models` when the test ends.
///
/// `let bed = Bed::new("e2e", &["breast-cancer"]).await;`
pub struct Bed {
    /// A connection to the shared broker.
    pub conn: lapin::Connection,
    /// The test's unique prefix ([`unique_prefix`]).
    pub prefix: String,
    /// A scratch folder, removed with the bed.
    pub dir: tempfile::TempDir,
    /// Deletes the test's broker objects on drop.
    pub cleanup: Cleanup,
}

impl Bed {
    /// Checks the broker, makes the prefix from `test`, the folder and the guard.
    pub async fn new(test: &str, models: &[&str]) -> Self {
        let conn = require_broker().await;
        let prefix = unique_prefix(test);
        let cleanup = Cleanup::new(&prefix, models);
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        Self {
            conn,
            prefix,
            dir,
            cleanup,
        }
    }

    /// Writes `n` breast-cancer rows ([`write_rows_csv`]) to `rows.csv` in the bed's
    /// folder: `(that input, scores.csv beside it for the output, the rows written)`.
    pub fn rows_csv(&self, n: usize) -> (PathBuf, PathBuf, Vec<Vec<f32>>) {
        rows_csv_in(self.dir.path(), n)
    }
}

/// [`Bed::rows_csv`] in any folder.
pub fn rows_csv_in(dir: &Path, n: usize) -> (PathBuf, PathBuf, Vec<Vec<f32>>) {
    let input = dir.join("rows.csv");
    let rows = write_rows_csv(&input, n);
    (input, dir.join("scores.csv"), rows)
}

/// A drop guard for a test's broker objects: when it goes out of scope, however the
/// test ends (a failed assertion too), every queue and exchange of its topology is
/// deleted (score-batch deletes its own reply queues).
///
/// Create it right after the prefix: `let _cleanup = Cleanup::new(&prefix, &["breast-cancer"]);`
pub struct Cleanup {
    topo: Topology,
    models: Vec<String>,
}

impl Cleanup {
    /// Guards the unsharded topology of `prefix` for `models`.
    pub fn new(prefix: &str, models: &[&str]) -> Self {
        Self::topology(Topology::new(prefix), models)
    }

    /// Guards `topo` (with its shards) for `models`, and for every shipped model too: a
    /// worker that serves every folder declares a queue for each.
    pub fn topology(topo: Topology, models: &[&str]) -> Self {
        let mut all: Vec<String> = models.iter().map(|m| m.to_string()).collect();
        if let Ok(entries) = std::fs::read_dir(models_dir()) {
            for e in entries.flatten() {
                if e.path().is_dir() {
                    all.push(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
        all.sort();
        all.dedup();
        Self { topo, models: all }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Drop cannot await, and the test's own runtime may be the one dropping us: the
        // deletion runs on a thread of its own, with its own runtime, bounded in time.
        let topo = self.topo.clone();
        let models = std::mem::take(&mut self.models);
        let worker = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            let models: Vec<&str> = models.iter().map(String::as_str).collect();
            // The timeout is made inside the runtime: its timer needs one.
            rt.block_on(async {
                let _ =
                    tokio::time::timeout(Duration::from_secs(20), delete_topology(&topo, &models))
                        .await;
            });
        });
        let _ = worker.join();
    }
}

/// Deletes every queue (shards too) and exchange of `topo` for `models`.
async fn delete_topology(topo: &Topology, models: &[&str]) {
    let Ok(conn) = surge_broker::connect(
        &amqp_url(),
        "surge-tests-cleanup",
        &Timeouts {
            connect: Duration::from_secs(5),
            operation: Duration::from_secs(10),
        },
    )
    .await
    else {
        return;
    };
    let Ok(ch) = conn.create_channel().await else {
        return;
    };
    let mut queues: Vec<String> = models
        .iter()
        .flat_map(|m| topo.job_queues(m))
        .map(|(q, _)| q)
        .collect();
    queues.push(topo.dead_queue());
    queues.push(topo.results_queue());
    for q in queues {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for e in [topo.jobs_exchange(), topo.dead_exchange()] {
        let _ = ch
            .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "cleanup".into()).await;
}

/// The breast-cancer model's feature names.
pub fn feature_names() -> Vec<String> {
    let dev = candle_free_device();
    let m =
        surge_model::load_model(&models_dir(), "breast-cancer", &dev).expect("loading the model");
    match &m.info().input {
        surge_model::InputSpec::Tabular { features } => features.clone(),
        other => panic!("unexpected input {other:?}"),
    }
}

fn candle_free_device() -> surge_model::Device {
    surge_model::select_device(surge_model::DeviceSpec::Cpu).expect("selecting the CPU device")
}

/// Writes `n` rows (a `row_id` column, then the 30 features) made from the shipped
/// dataset with a deterministic jitter, and returns the feature rows.
pub fn write_rows_csv(path: &Path, n: usize) -> Vec<Vec<f32>> {
    let data = workspace().join("data/breast-cancer-wisconsin/data.csv");
    let mut rdr =
        csv::Reader::from_path(&data).unwrap_or_else(|e| panic!("{}: {e}", data.display()));
    let base: Vec<Vec<f32>> = rdr
        .records()
        .map(|r| {
            let r = r.expect("reading a CSV record");
            r.iter()
                .take(30)
                .map(|c| c.parse::<f32>().expect("parsing a feature value"))
                .collect()
        })
        .collect();
    let mut w = csv::Writer::from_path(path).expect("opening the CSV file");
    let mut header = vec!["row_id".to_string()];
    header.extend(feature_names());
    w.write_record(&header).expect("writing a CSV record");
    let mut rows = Vec::with_capacity(n);
    for i in 0..n {
        let b = &base[i % base.len()];
        let jitter = 1.0 + ((i * 7919) % 101) as f32 / 1000.0 - 0.05;
        let row: Vec<f32> = b.iter().map(|x| x * jitter).collect();
        let mut rec = vec![i.to_string()];
        rec.extend(row.iter().map(|x| x.to_string()));
        w.write_record(&rec).expect("writing a CSV record");
        rows.push(row);
    }
    w.flush().expect("flushing the writer");
    rows
}

/// In-process scores of `rows` with the shipped model: the reference outputs.
pub fn reference_scores(rows: &[Vec<f32>]) -> Vec<f32> {
    let m = surge_model::load_model(&models_dir(), "breast-cancer", &candle_free_device())
        .expect("loading the model");
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let scores = m
        .score(&surge_model::Batch::Rows {
            values: &flat,
            dim: 30,
        })
        .expect("scoring the sample rows");
    scores.values
}

/// One row of a score-batch output CSV.
#[derive(Debug, Clone, PartialEq)]
pub struct OutRow {
    /// The `row_id` column.
    pub row_id: String,
    /// `malignant_probability`, when scored.
    pub score: Option<f32>,
    /// The `error` column.
    pub error: String,
}

/// Reads a score-batch output CSV.
pub fn read_output(path: &Path) -> Vec<OutRow> {
    let mut rdr =
        csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let h = rdr.headers().expect("reading the CSV header").clone();
    let col = |n: &str| {
        h.iter()
            .position(|c| c == n)
            .unwrap_or_else(|| panic!("no column {n} in {h:?}"))
    };
    let (id, score, err) = (col("row_id"), col("malignant_probability"), col("error"));
    rdr.records()
        .map(|r| {
            let r = r.expect("reading a CSV record");
            OutRow {
                row_id: r[id].to_string(),
                score: r[score].parse().ok(),
                error: r[err].to_string(),
            }
        })
        .collect()
}

/// Asserts that `out` answers rows `0..expected.len()` exactly once, in order, with
/// scores equal to the in-process reference (within 1e-6).
pub fn assert_exactly_once_and_correct(out: &[OutRow], expected: &[f32]) {
    assert_eq!(out.len(), expected.len(), "row count");
    for (i, (row, want)) in out.iter().zip(expected).enumerate() {
        assert_eq!(
            row.row_id,
            i.to_string(),
            "row {i} out of order or duplicated"
        );
        assert!(row.error.is_empty(), "row {i} failed: {}", row.error);
        let got = row.score.unwrap_or_else(|| panic!("row {i} has no score"));
        assert!(
            (got - want).abs() <= 1e-6,
            "row {i}: {got} vs in-process {want}"
        );
    }
}

/// Starts `score-batch` for the breast-cancer features of `input`, writing `output`;
/// killed if dropped before it ends. Await `wait_with_output()` for its result.
pub fn spawn_score_batch(prefix: &str, input: &Path, output: &Path, extra: &[&str]) -> Child {
    spawn_score_batch_with_env(prefix, input, output, extra, &[])
}

/// [`spawn_score_batch`] with extra environment variables.
pub fn spawn_score_batch_with_env(
    prefix: &str,
    input: &Path,
    output: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Child {
    spawn_score_batch_for("breast-cancer", prefix, input, output, extra, env)
}

/// [`spawn_score_batch_with_env`] for `model` (`name` or `name@version`; a copy of the
/// breast-cancer network under another name, say).
pub fn spawn_score_batch_for(
    model: &str,
    prefix: &str,
    input: &Path,
    output: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Child {
    let columns = feature_names().join(",");
    Command::new(bin("score-batch"))
        .args([
            "--model",
            model,
            "--prefix",
            prefix,
            "--columns",
            &columns,
            "--timeout",
            "240",
        ])
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting score-batch")
}

/// Consumes `queue` on `ch` under consumer tag `tag`, with default options.
pub async fn consume(ch: &lapin::Channel, queue: &str, tag: &str) -> lapin::Consumer {
    ch.basic_consume(
        queue.into(),
        tag.into(),
        lapin::options::BasicConsumeOptions::default(),
        lapin::types::FieldTable::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("consuming {queue}: {e}"))
}

/// `rabbitmqctl` on the shared broker (only for objects the calling test owns); panics
/// with its output when it fails.
pub async fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("rabbitmqctl {args:?}: {e}"));
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A vhost (and users) a test made on the shared broker, deleted however the test
/// ends.
pub struct OwnedVhost {
    /// The vhost's name.
    pub vhost: String,
    /// Users to delete with it.
    pub users: Vec<String>,
}

impl OwnedVhost {
    /// A vhost named after `test` ([`unique_prefix`]), guest allowed in, and its URL on
    /// the shared broker; deleted with everything in it when dropped.
    pub async fn for_guest(test: &str) -> (Self, String) {
        let owned = Self {
            vhost: unique_prefix(test),
            users: Vec::new(),
        };
        rabbitmqctl(&["add_vhost", &owned.vhost]).await;
        rabbitmqctl(&[
            "set_permissions",
            "-p",
            &owned.vhost,
            "guest",
            ".*",
            ".*",
            ".*",
        ])
        .await;
        let url = format!("amqp://guest:guest@127.0.0.1:5672/{}", owned.vhost);
        (owned, url)
    }
}

// Drop cannot await: plain blocking `rabbitmqctl` calls, each a second or two.
impl Drop for OwnedVhost {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.vhost])
            .output();
        for u in &self.users {
            let _ = std::process::Command::new("rabbitmqctl")
                .args(["delete_user", u])
                .output();
        }
    }
}

/// Declares an auto-delete queue `name` for a test's replies (gone when its last
/// consumer is).
pub async fn declare_reply_queue(ch: &lapin::Channel, name: &str) {
    ch.queue_declare(
        name.into(),
        lapin::options::QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        lapin::types::FieldTable::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("declaring reply queue {name}: {e}"));
}
