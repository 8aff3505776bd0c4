//! Workers die mid-run: score-batch still answers every row exactly once.
//! (The broker restart lives in its own test binary, `broker_restart.rs`, because it
//! disturbs every connection on the broker.)

use std::time::{Duration, Instant};

use surge_tests::*;

/// Slow workers down so that a run lasts long enough to hurt it mid-way:
/// 50-row batches with a 25 ms pause each.
const SLOW: &[&str] = &[
    "--max-batch-rows",
    "50",
    "--prefetch",
    "20",
    "--batch-delay-ms",
    "25",
];

fn wait_for_jobs(w: &WorkerProc, n: f64, within: Duration) {
    let start = Instant::now();
    while w.metric_sum("surge_jobs_total") < n {
        assert!(
            start.elapsed() < within,
            "worker answered fewer than {n} jobs in {within:?}; log:\n{}",
            w.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_a_worker_mid_run_loses_nothing() {
    let _conn = require_broker().await;
    let prefix = unique_prefix("kill");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("rows.csv");
    let output = dir.path().join("scores.csv");
    let rows = write_rows_csv(&input, 6_000);
    let mut a = WorkerProc::spawn(&prefix, "w-kill-a", dir.path(), SLOW);
    let mut b = WorkerProc::spawn(&prefix, "w-kill-b", dir.path(), SLOW);
    a.wait_ready(Duration::from_secs(30));
    b.wait_ready(Duration::from_secs(30));
    let sb = spawn_score_batch(&prefix, &input, &output, &["--rows-per-job", "10"]);
    wait_for_jobs(&a, 30.0, Duration::from_secs(60));
    let done_before = a.metric_sum("surge_jobs_total");
    a.signal("KILL");
    let status = a.wait_exit(Duration::from_secs(10));
    assert!(
        !status.success(),
        "SIGKILL should not look like a clean exit"
    );
    let out = sb.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "score-batch failed after a worker was killed: {stderr}"
    );
    println!(
        "killed worker A after {done_before} jobs; {}",
        stderr.lines().find(|l| l.contains("rows in")).unwrap_or("")
    );
    assert!(
        done_before < 600.0,
        "the run finished before the kill; the test proved nothing"
    );
    assert_exactly_once_and_correct(&read_output(&output), &reference_scores(&rows));
    b.signal("TERM");
    assert!(b.wait_exit(Duration::from_secs(30)).success());
    cleanup(&prefix, &["breast-cancer"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_drains_gracefully() {
    let _conn = require_broker().await;
    let prefix = unique_prefix("term");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("rows.csv");
    let output = dir.path().join("scores.csv");
    let rows = write_rows_csv(&input, 6_000);
    let mut a = WorkerProc::spawn(&prefix, "w-term-a", dir.path(), SLOW);
    let mut b = WorkerProc::spawn(&prefix, "w-term-b", dir.path(), SLOW);
    a.wait_ready(Duration::from_secs(30));
    b.wait_ready(Duration::from_secs(30));
    let sb = spawn_score_batch(&prefix, &input, &output, &["--rows-per-job", "10"]);
    wait_for_jobs(&a, 30.0, Duration::from_secs(60));
    a.signal("TERM");
    let t0 = Instant::now();
    let status = a.wait_exit(Duration::from_secs(30));
    let log = a.log_text();
    assert!(
        status.success(),
        "a SIGTERMed worker must exit 0 after draining; log:\n{log}"
    );
    assert!(log.contains("drained"), "no drain in the log:\n{log}");
    println!("worker A drained and exited in {:?}", t0.elapsed());
    let out = sb.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(" 0 failed"), "{stderr}");
    assert_exactly_once_and_correct(&read_output(&output), &reference_scores(&rows));
    b.signal("TERM");
    assert!(b.wait_exit(Duration::from_secs(30)).success());
    cleanup(&prefix, &["breast-cancer"]).await;
}
