//! Processes a test starts: `surge worker` ([`WorkerProc`]), `score-batch`, and any
//! long-running child with a log ([`Proc`]); each is stopped when dropped, and every wait
//! on them is async. Also the HTTP probes of their `/metrics` and health endpoints.

use super::*;

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
