//! `surge autoscale` end to end on the real broker: from zero workers, a burst of
//! 20,000 rows → at least two workers serve it, every row is answered exactly once,
//! and the pool returns to zero after the cooldown. During the burst the status page
//! is rendered in headless Chromium: its figures must be those of `/api/status` for
//! the same snapshot, and a screenshot goes to `out/status-page.png`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::process::Command;

use surge_testkit::*;

struct Autoscaler {
    proc: Proc,
    port: u16,
}

impl Autoscaler {
    fn log_text(&self) -> String {
        self.proc.log_text()
    }

    /// Waits until `ok(port)` holds, panicking if the autoscaler exits first.
    async fn wait_for<F: std::future::Future<Output = bool>>(
        &mut self,
        what: &str,
        within: Duration,
        ok: impl Fn(u16) -> F,
    ) {
        let start = Instant::now();
        while !ok(self.port).await {
            self.proc.assert_running();
            assert!(
                start.elapsed() < within,
                "{what}: not within {within:?}; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn replicas(&self) -> f64 {
        replicas_at(self.port).await
    }
}

/// `surge_autoscale_replicas` of the autoscaler on `port` (-1 when it does not answer).
async fn replicas_at(port: u16) -> f64 {
    metric_at(port, "surge_autoscale_replicas")
        .await
        .unwrap_or(-1.0)
}

/// Every `/api/status` snapshot seen, by `seq`, collected in the background.
struct StatusPoller {
    seen: Arc<Mutex<HashMap<u64, serde_json::Value>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl StatusPoller {
    fn start(port: u16) -> Self {
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !st.load(Ordering::Relaxed) {
                if let Some((200, body)) = http_get(port, "/api/status").await {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
                        if let Some(seq) = v["seq"].as_u64() {
                            s.lock().expect("poller lock").insert(seq, v);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        });
        Self { seen, stop, task }
    }
}

impl Drop for StatusPoller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.abort();
    }
}

/// The text of the first element carrying `data-field="<field>"` after `from`.
fn dom_field<'a>(dom: &'a str, from: usize, field: &str) -> &'a str {
    let tag = format!("data-field=\"{field}\">");
    let at = dom[from..]
        .find(&tag)
        .unwrap_or_else(|| panic!("no {field} in the page's DOM:\n{dom}"))
        + from
        + tag.len();
    let end = dom[at..].find('<').expect("an element's end") + at;
    &dom[at..end]
}

/// What the page's script prints for a figure (`fmt` in status.html).
fn shown(v: &serde_json::Value, decimals: usize) -> String {
    match v {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::Number(n) if n.is_u64() || n.is_i64() => n.to_string(),
        serde_json::Value::Number(n) => {
            let f = n.as_f64().expect("a number");
            if f.fract() == 0.0 {
                format!("{f}")
            } else {
                format!("{f:.decimals$}")
            }
        }
        other => other.to_string(),
    }
}

/// Renders the status page in headless Chromium (Debian's `chromium`, installed by
/// `make test`) and checks its figures against `/api/status` for the same snapshot.
async fn check_status_page(port: u16, poller: &StatusPoller) {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("Debian's chromium is needed for the status-page check: `make chromium` (make test installs it)");
    let url = format!("http://127.0.0.1:{port}/");
    let headless = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--virtual-time-budget=2500",
        "--window-size=1200,1400",
    ];
    let out = Command::new(chromium)
        .args(headless)
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .await
        .expect("running chromium");
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        dom.contains("data-model=\"breast-cancer\""),
        "the page shows no model; chromium said:\n{}\nDOM:\n{dom}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seq: u64 = dom_field(&dom, 0, "seq")
        .parse()
        .unwrap_or_else(|_| panic!("no snapshot number in the page:\n{dom}"));
    let start = Instant::now();
    let snapshot = loop {
        if let Some(v) = poller.seen.lock().expect("poller lock").get(&seq) {
            break v.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "/api/status never served snapshot {seq}, which the page shows"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let model = snapshot["models"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["model"] == "breast-cancer"))
        .expect("breast-cancer in /api/status");
    let section = dom
        .find("data-model=\"breast-cancer\"")
        .expect("its section");
    let mut compared = Vec::new();
    for (field, decimals) in [
        ("backlog", 0),
        ("in_flight", 0),
        ("running", 0),
        ("draining", 0),
        ("desired", 0),
        ("rate_per_worker", 1),
        ("time_to_drain_s", 1),
    ] {
        let on_page = dom_field(&dom, section, field);
        let api = &model[field];
        // The page rounds to `decimals` (JavaScript's toFixed, whose ties may round
        // the other way than Rust's): compare the numbers, to half a unit.
        let agree = match (on_page.parse::<f64>(), api.as_f64()) {
            (Ok(p), Some(a)) => (p - a).abs() <= 0.5 * 10f64.powi(-(decimals as i32)) + 1e-9,
            _ => on_page == shown(api, decimals),
        };
        assert!(
            agree,
            "{field}: the page shows {on_page}, /api/status {api} for snapshot {seq}"
        );
        compared.push(format!("{field} {on_page}"));
    }
    let history = model["history"].as_array().map_or(0, Vec::len);
    assert!(
        dom.contains("<polyline class=\"backlog\""),
        "no chart drawn"
    );
    println!(
        "status page, snapshot {seq}: {}; {history} chart points",
        compared.join(", ")
    );
    std::fs::create_dir_all("out").expect("out/");
    let png = std::path::Path::new("out/status-page.png");
    let shot = Command::new(chromium)
        .args(headless)
        .arg(format!("--screenshot={}", png.display()))
        .arg(&url)
        .output()
        .await
        .expect("running chromium");
    assert!(
        png.is_file(),
        "no screenshot: {}",
        String::from_utf8_lossy(&shot.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_zero_to_several_workers_and_back_to_zero() {
    let bed = Bed::new("autoscale", &["breast-cancer"]).await;
    let (prefix, dir) = (bed.prefix.clone(), &bed.dir);
    let (input, output, rows) = bed.rows_csv(20_000);
    let port = free_port();
    let log = dir.path().join("autoscale.log");
    let mut cmd = Command::new(bin("surge"));
    cmd.arg("autoscale")
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
        .args(["--batch-delay-ms", "20"]);
    let mut auto = Autoscaler {
        proc: Proc::spawn("surge autoscale", &mut cmd, log),
        port,
    };

    auto.wait_for(
        "autoscaler ready at zero workers",
        Duration::from_secs(30),
        |port| async move {
            matches!(http_get(port, "/readyz").await, Some((200, _)))
                && replicas_at(port).await == 0.0
        },
    )
    .await;
    // Idle at zero: still zero a second later.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(auto.replicas().await, 0.0, "log:\n{}", auto.log_text());

    let poller = StatusPoller::start(port);
    let burst = Instant::now();
    // The whole burst at once: every job in flight (score-batch bounds it otherwise).
    let mut sb = spawn_score_batch(
        &prefix,
        &input,
        &output,
        &["--rows-per-job", "10", "--max-in-flight", "100000"],
    );
    // Replicas are sampled by a task of their own, every 50 ms: the page check below
    // takes seconds of Chromium, and a short burst can end inside it (a sampler in
    // this loop then saw one worker where three had run).
    // (most replicas, most connected, when the first worker started)
    let seen = Arc::new(Mutex::new((0.0f64, 0.0f64, None::<Duration>)));
    let sampler = {
        let seen = seen.clone();
        tokio::spawn(async move {
            loop {
                let r = replicas_at(port).await;
                let c = metric_at(port, "surge_autoscale_connected_replicas")
                    .await
                    .unwrap_or(0.0);
                {
                    let mut s = seen.lock().expect("sampler lock");
                    if r > 0.0 && s.2.is_none() {
                        s.2 = Some(burst.elapsed());
                    }
                    s.0 = s.0.max(r);
                    s.1 = s.1.max(c);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let mut page_checked = false;
    let status = loop {
        let done = sb.try_wait().unwrap();
        let r = auto.replicas().await;
        // Mid-burst, with workers running: the page must tell the truth.
        if !page_checked && r >= 1.0 {
            page_checked = true;
            check_status_page(port, &poller).await;
        }
        if let Some(s) = done {
            break s;
        }
        assert!(
            burst.elapsed() < Duration::from_secs(180),
            "score-batch did not finish; autoscaler log:\n{}",
            auto.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = burst.elapsed();
    drop(poller);
    // Give the sampler a last look if it has not seen two workers connected yet.
    let waited = Instant::now();
    while seen.lock().expect("sampler lock").1 < 2.0 && waited.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sampler.abort();
    let (max_replicas, max_connected, first_worker_at) = *seen.lock().expect("sampler lock");
    assert!(
        page_checked,
        "the burst ended before the status page was checked"
    );
    let out = sb.wait_with_output().await.unwrap();
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
    auto.wait_for(
        "back to zero workers",
        Duration::from_secs(60),
        |port| async move {
            replicas_at(port).await == 0.0
                && metric_at(port, "surge_autoscale_draining_replicas").await == Some(0.0)
        },
    )
    .await;
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
    let billed = metric_at(port, "surge_autoscale_worker_seconds")
        .await
        .unwrap_or(0.0);
    println!("autoscale: {billed:.1} worker-seconds for the burst");
    assert!(billed > 0.0);

    // SIGTERM stops the autoscaler cleanly.
    auto.proc.stop(Duration::from_secs(30)).await;
}
