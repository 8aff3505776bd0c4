//! `surge autoscale` end to end on the real broker: from zero workers, a burst of
//! 20,000 rows → at least two workers serve it, every row is answered exactly once,
//! and the pool returns to zero after the cooldown.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use surge_tests::*;

struct Autoscaler {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Autoscaler {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for(&mut self, what: &str, within: Duration, mut ok: impl FnMut(&Self) -> bool) {
        let start = Instant::now();
        while !ok(self) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("autoscaler exited with {status}; log:\n{}", self.log_text());
            }
            assert!(
                start.elapsed() < within,
                "{what}: not within {within:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn replicas(&self) -> f64 {
        metric_at(self.port, "surge_autoscale_replicas").unwrap_or(-1.0)
    }
}

impl Drop for Autoscaler {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_zero_to_several_workers_and_back_to_zero() {
    let _conn = require_broker().await;
    let prefix = unique_prefix("autoscale");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("rows.csv");
    let output = dir.path().join("scores.csv");
    let rows = write_rows_csv(&input, 20_000);
    let port = free_port();
    let log = dir.path().join("autoscale.log");
    let child = Command::new(bin("surge"))
        .arg("autoscale")
        .args(["--prefix", &prefix, "--models-dir"])
        .arg(models_dir())
        .args(["--model", "breast-cancer", "--min", "0", "--max", "3"])
        .args(["--interval-ms", "200", "--target-drain-s", "2"])
        .args(["--scale-down-window-s", "3", "--cooldown-s", "3"])
        .args(["--initial-rate", "50", "--grace-s", "20"])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        // Slow workers (50-row batches, 20 ms pause each: about 8 s for one worker
        // alone) so that the burst outlasts a worker's start and the pool must grow.
        .args(["--", "--max-batch-rows", "50", "--prefetch", "50"])
        .args(["--batch-delay-ms", "20"])
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .expect("starting surge autoscale");
    let mut auto = Autoscaler { child, port, log };

    auto.wait_for(
        "autoscaler ready at zero workers",
        Duration::from_secs(30),
        |a| matches!(http_get(a.port, "/readyz"), Some((200, _))) && a.replicas() == 0.0,
    );
    // Idle at zero: still zero a second later.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(auto.replicas(), 0.0, "log:\n{}", auto.log_text());

    let burst = Instant::now();
    // The whole burst at once: every job in flight (score-batch bounds it otherwise).
    let mut sb = spawn_score_batch(
        &prefix,
        &input,
        &output,
        &["--rows-per-job", "10", "--max-in-flight", "100000"],
    );
    let (mut max_replicas, mut max_connected) = (0.0f64, 0.0f64);
    let mut first_worker_at = None;
    let status = loop {
        if let Some(s) = sb.try_wait().unwrap() {
            break s;
        }
        let r = auto.replicas();
        let c = metric_at(port, "surge_autoscale_connected_replicas").unwrap_or(0.0);
        if r > 0.0 && first_worker_at.is_none() {
            first_worker_at = Some(burst.elapsed());
        }
        max_replicas = max_replicas.max(r);
        max_connected = max_connected.max(c);
        assert!(
            burst.elapsed() < Duration::from_secs(180),
            "score-batch did not finish; autoscaler log:\n{}",
            auto.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = burst.elapsed();
    let out = sb.wait_with_output().unwrap();
    assert!(
        status.success(),
        "score-batch failed: {}\nautoscaler log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        auto.log_text()
    );
    assert_exactly_once_and_correct(&read_output(&output), &reference_scores(&rows));
    println!(
        "autoscale: 20,000 rows in {took:?}; first worker started after {first_worker_at:?}; \
         at most {max_replicas} workers, {max_connected} connected at once"
    );
    assert!(
        max_connected >= 2.0,
        "the burst should have been served by at least 2 workers (saw {max_connected}); log:\n{}",
        auto.log_text()
    );

    // Back to zero once idle for the window and the cooldown, every worker drained.
    auto.wait_for("back to zero workers", Duration::from_secs(60), |a| {
        a.replicas() == 0.0 && metric_at(a.port, "surge_autoscale_draining_replicas") == Some(0.0)
    });
    let log_text = auto.log_text();
    assert!(log_text.contains("scaling decision"), "{log_text}");
    assert!(
        log_text.contains("idle for the whole cooldown"),
        "{log_text}"
    );
    assert!(
        !log_text.contains("exited unexpectedly"),
        "no worker should have crashed:\n{log_text}"
    );
    let billed = metric_at(port, "surge_autoscale_worker_seconds").unwrap_or(0.0);
    println!("autoscale: {billed:.1} worker-seconds for the burst");
    assert!(billed > 0.0);

    // SIGTERM stops the autoscaler cleanly.
    let pid = auto.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let start = Instant::now();
    let exit = loop {
        if let Some(s) = auto.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "autoscaler did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        exit.success(),
        "autoscaler exit {exit}; log:\n{}",
        auto.log_text()
    );
    cleanup(&prefix, &["breast-cancer"]).await;
}
