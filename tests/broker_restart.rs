//! The broker restarts mid-run (`rabbitmqctl stop_app` / `start_app`): workers and
//! score-batch reconnect and the run completes with every row exactly once.
//! Alone in its test binary: it drops every connection on the broker.

use std::process::Command;
use std::time::{Duration, Instant};

use surge_tests::*;

fn rabbitmqctl(arg: &str) {
    let out = Command::new("rabbitmqctl")
        .arg(arg)
        .output()
        .unwrap_or_else(|e| panic!("rabbitmqctl {arg}: {e}"));
    assert!(
        out.status.success(),
        "rabbitmqctl {arg}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_run_completes() {
    let _conn = require_broker().await;
    let prefix = unique_prefix("restart");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("rows.csv");
    let output = dir.path().join("scores.csv");
    let rows = write_rows_csv(&input, 4_000);
    let mut w = WorkerProc::spawn(
        &prefix,
        "w-restart",
        dir.path(),
        &[
            "--max-batch-rows",
            "50",
            "--prefetch",
            "20",
            "--batch-delay-ms",
            "25",
        ],
    );
    w.wait_ready(Duration::from_secs(30));
    let sb = spawn_score_batch(
        &prefix,
        &input,
        &output,
        &["--rows-per-job", "10", "--job-timeout", "20"],
    );
    let start = Instant::now();
    while w.metric_sum("surge_jobs_total") < 20.0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no progress before the restart"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    rabbitmqctl("stop_app");
    std::thread::sleep(Duration::from_secs(2));
    rabbitmqctl("start_app");
    let out = sb.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "score-batch did not survive the broker restart: {stderr}\nworker log:\n{}",
        w.log_text()
    );
    println!(
        "{}",
        stderr.lines().find(|l| l.contains("rows in")).unwrap_or("")
    );
    assert_exactly_once_and_correct(&read_output(&output), &reference_scores(&rows));
    assert!(
        w.log_text().contains("reconnecting"),
        "the worker never noticed the restart"
    );
    w.signal("TERM");
    assert!(
        w.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        w.log_text()
    );
    cleanup(&prefix, &["breast-cancer"]).await;
}
