//! Operations you can see, against a real Prometheus (Debian's `prometheus` package;
//! `make prometheus-tools` installs it, `make observe` runs this test alone):
//!
//! 1. `promtool check rules` and `promtool test rules` on deploy/prometheus/rules.yml;
//! 2. two `surge worker`s on one prefix and `surge autoscale` on another (`--min 1
//!    --max 1`: it starts one worker of its own, so it has made a scaling decision),
//!    scraped every second by a Prometheus on a free port that also loads rules.yml;
//! 3. `score-batch` sends models/breast-cancer/sample.csv through the two workers, and
//!    one job without a `message_id` is dead-lettered;
//! 4. Prometheus's HTTP API must then show every row scored, the batch-size histogram,
//!    the time to drain, `up == 1` for the three targets, and the four alerts of
//!    rules.yml in `/api/v1/rules`;
//! 5. scripts/check-dashboard.py checks every metric of deploy/grafana/surge.json
//!    against the live /metrics texts,
//!    and every PromQL expression of the dashboard runs in that Prometheus;
//! 6. a worker stopped, SurgeWorkerDown goes pending for it in `/api/v1/alerts`.
//!
//! Missing tools fail the test loudly: it never skips.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::process::Command;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::BasicProperties;
use serde_json::Value;
use surge_protocol::Topology;
use surge_testkit::*;

/// The four alerts rules.yml must define.
const ALERTS: [&str; 4] = [
    "SurgeWorkerDown",
    "SurgeDeadLettersRising",
    "SurgeTimeToDrainAboveTarget",
    "SurgeErrorRatioHigh",
];

fn rules_dir() -> PathBuf {
    workspace().join("deploy").join("prometheus")
}

/// A tool from Debian's `prometheus` package, or a panic saying how to install it.
fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "\n\n*** {name} is not installed. It comes with Debian's prometheus package:\n\
             *** run `make prometheus-tools` (or `apt-get install prometheus`).\n\n"
        )
    })
}

/// Runs a command to completion; panics with its output unless it succeeds.
async fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .await
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{text}",
        out.status
    );
    text
}

/// Percent-encodes a PromQL query for a URL.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET a Prometheus API path; the parsed JSON when it answers 200 with status success.
async fn api(port: u16, path: &str) -> Option<Value> {
    let (200, body) = http_get(port, path).await? else {
        return None;
    };
    let v: Value = serde_json::from_str(&body).ok()?;
    (v["status"] == "success").then_some(v)
}

/// The instant vector of `query`: (labels, value) per series.
async fn query(port: u16, q: &str) -> Vec<(Value, f64)> {
    let Some(v) = api(port, &format!("/api/v1/query?query={}", encode(q))).await else {
        return Vec::new();
    };
    v["data"]["result"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .filter_map(|r| {
                    let x = r["value"][1].as_str()?.parse::<f64>().ok()?;
                    Some((r["metric"].clone(), x))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A condition on an instant vector: (labels, value) per series.
type Check = Box<dyn Fn(&[(Value, f64)]) -> bool>;

/// Rows of a CSV file with a header.
fn data_rows(path: &Path) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_workers_and_autoscaler_and_loads_the_rules() {
    let conn = require_broker().await;
    let promtool = tool("promtool");
    let prometheus = tool("prometheus");

    // 1. The rules are valid and their unit tests pass.
    let checked = run_ok(
        Command::new(&promtool)
            .args(["check", "rules", "rules.yml"])
            .current_dir(rules_dir()),
    )
    .await;
    println!("observe: {}", checked.trim().replace('\n', " "));
    let tested = run_ok(
        Command::new(&promtool)
            .args(["test", "rules", "rules_test.yml"])
            .current_dir(rules_dir()),
    )
    .await;
    assert!(tested.contains("SUCCESS"), "promtool test rules:\n{tested}");
    println!("observe: promtool test rules: SUCCESS");

    // 2. Two workers, an autoscaler, and Prometheus scraping the three.
    let prefix = unique_prefix("observe");
    let auto_prefix = unique_prefix("observe-auto");
    // Declared first, so dropped after every process.
    let _cleanup = [
        Cleanup::new(&prefix, &["breast-cancer"]),
        Cleanup::new(&auto_prefix, &["breast-cancer"]),
    ];
    let dir = tempfile::tempdir().unwrap();
    let worker_args = [
        "--model",
        "breast-cancer",
        "--threads",
        "1",
        "--prefetch",
        "16",
        "--max-batch-rows",
        "16",
    ];
    let mut w1 = WorkerProc::spawn(&prefix, "observe-w1", dir.path(), &worker_args);
    let mut w2 = WorkerProc::spawn(&prefix, "observe-w2", dir.path(), &worker_args);

    let auto_port = free_port();
    let mut auto = Proc::spawn(
        "surge autoscale",
        Command::new(bin("surge"))
            .arg("autoscale")
            .args(["--prefix", &auto_prefix, "--models-dir"])
            .arg(models_dir())
            .args(["--model", "breast-cancer", "--min", "1", "--max", "1"])
            .args(["--interval-ms", "250", "--grace-s", "10"])
            .args(["--metrics-addr", &format!("127.0.0.1:{auto_port}")])
            .args(["--", "--threads", "1"]),
        dir.path().join("autoscale.log"),
    );

    let prom_port = free_port();
    let config = dir.path().join("prometheus.yml");
    let rules = rules_dir().join("rules.yml");
    std::fs::write(
        &config,
        format!(
            "# Generated by tests/observe.rs\n\
             global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n\
             \x20 - job_name: surge\n    static_configs:\n      - targets: ['127.0.0.1:{p1}', '127.0.0.1:{p2}']\n\
             \x20 - job_name: surge-autoscale\n    static_configs:\n      - targets: ['127.0.0.1:{pa}']\n",
            rules = rules.display(),
            p1 = w1.metrics_port,
            p2 = w2.metrics_port,
            pa = auto_port,
        ),
    )
    .unwrap();
    run_ok(
        Command::new(&promtool)
            .arg("check")
            .arg("config")
            .arg(&config),
    )
    .await;
    let mut prom = Proc::spawn(
        "prometheus",
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .arg("--storage.tsdb.retention.time=1h"),
        dir.path().join("prometheus.log"),
    );

    w1.wait_ready(Duration::from_secs(60)).await;
    w2.wait_ready(Duration::from_secs(60)).await;

    // 3. Score the sample through the two workers, and dead-letter one job (no
    //    message_id) so that surge_dead_lettered_total exists.
    let input = models_dir().join("breast-cancer").join("sample.csv");
    let rows = data_rows(&input);
    let output = dir.path().join("scores.csv");
    let sb = spawn_score_batch(&prefix, &input, &output, &["--rows-per-job", "4"]);
    let out = sb.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "score-batch failed: {}{}\nworker 1 log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        w1.log_text()
    );
    assert_eq!(
        data_rows(&output),
        rows,
        "every row of {} answered",
        input.display()
    );

    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = ch
        .basic_publish(
            Topology::new(&prefix).jobs_exchange().as_str().into(),
            "breast-cancer".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            br#"{"v":1,"model":"breast-cancer","inputs":[]}"#,
            BasicProperties::default().with_content_type("application/json".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(
        confirm.is_ack(),
        "the broker refused the job to dead-letter"
    );
    let start = Instant::now();
    while w1.metric_sum("surge_dead_lettered_total").await
        + w2.metric_sum("surge_dead_lettered_total").await
        < 1.0
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no worker dead-lettered the job without message_id"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 4. What Prometheus sees.
    let checks: Vec<(&str, String, Check)> = vec![
        (
            "every row scored",
            "sum(surge_rows_total)".into(),
            Box::new(move |r| r.len() == 1 && r[0].1 == rows as f64),
        ),
        (
            "the batch-size histogram",
            "sum(surge_batch_rows_count)".into(),
            Box::new(|r| r.len() == 1 && r[0].1 > 0.0),
        ),
        (
            "batch-size buckets",
            r#"sum(surge_batch_rows_bucket{le="+Inf"})"#.into(),
            Box::new(|r| r.len() == 1 && r[0].1 > 0.0),
        ),
        (
            "the time to drain (workers and autoscaler)",
            "count by (job) (surge_time_to_drain_seconds)".into(),
            Box::new(|r| r.len() == 2),
        ),
        (
            "up == 1 for the two workers and the autoscaler",
            r#"up{job=~"surge|surge-autoscale"} == 1"#.into(),
            Box::new(|r| r.len() == 3),
        ),
        (
            "the autoscaler's decision",
            "sum(surge_autoscale_decisions_total)".into(),
            Box::new(|r| r.len() == 1 && r[0].1 >= 1.0),
        ),
        (
            "the dead letter",
            "sum(surge_dead_lettered_total)".into(),
            Box::new(|r| r.len() == 1 && r[0].1 == 1.0),
        ),
    ];
    let start = Instant::now();
    for (what, q, ok) in &checks {
        loop {
            prom.assert_running();
            auto.assert_running();
            let r = query(prom_port, q).await;
            if ok(&r) {
                println!(
                    "observe: Prometheus sees {what}: {q} → {:?}",
                    r.iter().map(|x| x.1).collect::<Vec<_>>()
                );
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "Prometheus does not show {what}: {q} gave {r:?}\nprometheus log:\n{}\nautoscaler log:\n{}",
                prom.log_text(),
                auto.log_text()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    // The rules are loaded and name the four alerts.
    let rules_api = api(prom_port, "/api/v1/rules?type=alert")
        .await
        .expect("/api/v1/rules answers");
    let loaded: Vec<String> = rules_api["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter(|r| r["health"] == "ok" || r["health"] == "unknown")
        .filter_map(|r| r["name"].as_str().map(String::from))
        .collect();
    for alert in ALERTS {
        assert!(
            loaded.iter().any(|a| a == alert),
            "alert {alert} not loaded; /api/v1/rules: {rules_api}"
        );
    }
    println!("observe: Prometheus loaded the alerts {loaded:?}");

    // 5. Every metric of the Grafana dashboard exists in the live /metrics texts.
    let mut sources = Vec::new();
    for (name, port) in [
        ("worker-1", w1.metrics_port),
        ("worker-2", w2.metrics_port),
        ("autoscaler", auto_port),
    ] {
        let (200, body) = http_get(port, "/metrics")
            .await
            .unwrap_or_else(|| panic!("{name} /metrics"))
        else {
            panic!("{name} /metrics did not answer 200");
        };
        let path = dir.path().join(format!("{name}.metrics.txt"));
        std::fs::write(&path, body).unwrap();
        sources.push(path);
    }
    let checked = run_ok(
        Command::new("python3")
            .arg(workspace().join("scripts").join("check-dashboard.py"))
            .args(&sources),
    )
    .await;
    println!("observe: {}", checked.trim());

    // Every PromQL expression of the dashboard parses and runs in this Prometheus
    // (Grafana's variables replaced as Grafana would: $__rate_interval, $model = All).
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(workspace().join("deploy/grafana/surge.json")).unwrap(),
    )
    .expect("deploy/grafana/surge.json is JSON");
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(String::from))
        .collect();
    assert!(
        exprs.len() >= 12,
        "the dashboard has {} expressions",
        exprs.len()
    );
    for e in &exprs {
        let q = e.replace("$__rate_interval", "1m").replace("$model", ".*");
        let path = format!("/api/v1/query?query={}", encode(&q));
        let (status, body) = http_get(prom_port, &path)
            .await
            .expect("Prometheus answers");
        assert!(
            status == 200 && body.contains(r#""status":"success""#),
            "dashboard expression {e:?} fails in Prometheus ({status}): {body}"
        );
    }
    println!(
        "observe: the dashboard's {} expressions run in Prometheus",
        exprs.len()
    );

    // 6. A rule at work: stop worker 2, and SurgeWorkerDown goes pending for its
    //    instance (firing would take the rule's whole minute).
    w2.stop(Duration::from_secs(30)).await;
    let down = format!("127.0.0.1:{}", w2.metrics_port);
    let start = Instant::now();
    loop {
        prom.assert_running();
        let alerts = api(prom_port, "/api/v1/alerts").await.unwrap_or_default();
        let pending = alerts["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| {
                a["labels"]["alertname"] == "SurgeWorkerDown"
                    && a["labels"]["instance"] == down.as_str()
                    && (a["state"] == "pending" || a["state"] == "firing")
            });
        if pending {
            println!("observe: SurgeWorkerDown is pending for the stopped worker {down}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "SurgeWorkerDown not pending for {down} within 30 s; /api/v1/alerts: {alerts}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Clean up: the autoscaler drains its own worker; then the rest.
    auto.stop(Duration::from_secs(30)).await;
    w1.stop(Duration::from_secs(30)).await;
    prom.stop(Duration::from_secs(30)).await;
    let _ = conn.close(200, "done".into()).await;
    // _topologies deletes both prefixes' queues and exchanges.
}
