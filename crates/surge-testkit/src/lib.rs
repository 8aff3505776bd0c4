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

mod bed;
pub mod figures;
pub mod node;
mod process;
pub mod proxy;

pub use bed::{rows_csv_in, Bed, Cleanup, OwnedVhost};
pub use process::{
    http_get, metric_at, signal, spawn_score_batch, spawn_score_batch_for,
    spawn_score_batch_with_env, Proc, WorkerProc,
};

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

/// A free TCP port on 127.0.0.1, for a process started next to listen on (metrics,
/// status pages). Picked below Linux's ephemeral range (32768+) and away from the
/// private nodes' ports and RabbitMQ's own: a port the kernel handed out for
/// `127.0.0.1:0` was once taken by an outgoing connection before the worker bound it
/// ("Address already in use", shards test, CI on 7ef728d).
pub fn free_port() -> u16 {
    node::quiet_port(10_000..20_000, &[15_672, 15_692])
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
