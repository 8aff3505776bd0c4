//! Faults that need a broker of their own: a private RabbitMQ node (see
//! `surge_testkit::node`), never the shared one.
//!
//! * The broker node is stopped (its Erlang VM exits) and started again mid-run:
//!   workers and score-batch reconnect, the quorum queues come back from disk, and
//!   every row is answered exactly once.
//! * A worker holds a batch past the node's `consumer_timeout` (5 s here): the broker
//!   takes the jobs back, another worker answers them, and each row is in the output
//!   once.

use std::time::{Duration, Instant};

use surge_protocol::Topology;
use surge_testkit::figures::{self, parse_summary};
use surge_testkit::node::{NodeOptions, PrivateNode};
use surge_testkit::*;

/// Dead letters of the run, printed by reason.
async fn dead_count(url: &str, prefix: &str) -> u32 {
    let url = surge_broker::AmqpUrl::new(url).unwrap();
    let conn = surge_broker::connect(&url, "surge-tests", &surge_broker::Timeouts::default())
        .await
        .unwrap();
    let queue = Topology::new(prefix).dead_queue();
    let n = figures::queue_len(&conn, &queue).await;
    if n > 0 {
        let by = figures::dead_reasons(&conn, &queue, n as usize).await;
        println!("  dead letters by reason: {by:?}");
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_stopped_and_started_mid_run_loses_nothing() {
    let mut node = PrivateNode::start("stop", NodeOptions::default()).await;
    let url = node.url("heartbeat=5");
    let env = [("AMQP_URL", url.as_str())];
    let prefix = "surge";
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("rows.csv");
    let output = dir.path().join("scores.csv");
    let n_rows = figures::size(20_000, 4_000);
    let rows = write_rows_csv(&input, n_rows);
    // Slow enough that the run is still going when `rabbitmqctl stop` returns (it
    // takes seconds): at least 10 s for the reduced run.
    let slow = [
        "--max-batch-rows",
        "20",
        "--prefetch",
        "20",
        "--batch-delay-ms",
        "100",
        "--broker-timeout-s",
        "5",
    ];
    let mut w = WorkerProc::spawn_with_env(prefix, "w-stop", dir.path(), &slow, &env);
    w.wait_ready(Duration::from_secs(30)).await;
    let mut sb = spawn_score_batch_with_env(
        prefix,
        &input,
        &output,
        &["--rows-per-job", "10", "--job-timeout", "120"],
        &env,
    );
    w.wait_for_jobs(20.0, Duration::from_secs(60)).await;
    let t0 = Instant::now();
    node.stop_node().await;
    assert!(
        sb.try_wait().unwrap().is_none(),
        "the run ended before the stop"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    node.launch().await;
    let down = t0.elapsed();
    let out = sb.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "score-batch did not survive the broker stop: {stderr}\nworker log:\n{}",
        w.log_text()
    );
    println!(
        "broker down for {:.1}s (stop, 2 s, start)",
        down.as_secs_f64()
    );
    let s = parse_summary(&stderr).unwrap();
    let got = read_output(&output);
    let dead = dead_count(&url, prefix).await;
    figures::report("broker stop/start", &s, &got, dead, &output);
    assert_exactly_once_and_correct(&got, &reference_scores(&rows));
    assert!(s.reconnects >= 1, "score-batch never reconnected: {stderr}");
    assert!(
        w.log_text().contains("reconnecting"),
        "the worker never noticed the stop"
    );
    w.stop(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_held_past_consumer_timeout_is_redelivered_and_answered_once() {
    let node = PrivateNode::start(
        "ctimeout",
        NodeOptions {
            consumer_timeout_ms: Some(5_000),
            ..NodeOptions::default()
        },
    )
    .await;
    let url = node.url("heartbeat=5");
    let env = [("AMQP_URL", url.as_str())];
    let prefix = "surge";
    let dir = tempfile::tempdir().unwrap();
    let (input, output, rows) = rows_csv_in(dir.path(), 2_000);
    // A stuck worker: it takes 5 jobs and holds every batch for 8 s, past the 5 s
    // consumer_timeout. A healthy worker starts once the stuck one holds its jobs.
    let mut stuck = WorkerProc::spawn_with_env(
        prefix,
        "w-stuck",
        dir.path(),
        &["--prefetch", "5", "--batch-delay-ms", "8000"],
        &env,
    );
    stuck.wait_ready(Duration::from_secs(30)).await;
    let t0 = Instant::now();
    let sb = spawn_score_batch_with_env(
        prefix,
        &input,
        &output,
        &["--rows-per-job", "20", "--job-timeout", "60"],
        &env,
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut healthy = WorkerProc::spawn_with_env(prefix, "w-healthy", dir.path(), &[], &env);
    healthy.wait_ready(Duration::from_secs(30)).await;
    let out = sb.wait_with_output().await.unwrap();
    let took = t0.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{stderr}\nstuck worker:\n{}",
        stuck.log_text()
    );
    let s = parse_summary(&stderr).unwrap();
    let got = read_output(&output);
    let dead = dead_count(&url, prefix).await;
    figures::report("consumer_timeout", &s, &got, dead, &output);
    assert_exactly_once_and_correct(&got, &reference_scores(&rows));
    println!(
        "run took {:.1}s with a batch held 8 s against a 5 s consumer_timeout",
        took.as_secs_f64()
    );
    // The broker, not the stuck worker's eventual answer, returned the held jobs.
    let node_log = node.log_text();
    assert!(
        node_log.contains("timed out") || stuck.log_text().contains("timed out"),
        "no consumer timeout in the node log:\n{node_log}"
    );
    assert!(
        stuck.log_text().contains("reconnecting"),
        "{}",
        stuck.log_text()
    );
    assert!(
        took >= Duration::from_secs(5),
        "the held jobs came back early"
    );
    assert_eq!(
        healthy.get("/healthz").await.map(|(s, _)| s),
        Some(200),
        "healthy worker died"
    );
    for w in [&mut stuck, &mut healthy] {
        w.signal("KILL").await;
        w.wait_exit(Duration::from_secs(10)).await;
    }
}
