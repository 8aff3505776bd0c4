//! The main job, end to end on the real broker: a file of rows through score-batch and
//! two worker processes, every row answered exactly once with the in-process score.

use std::time::Duration;

use surge_testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_rows_through_two_workers_exactly_once() {
    let bed = Bed::new("e2e", &["breast-cancer"]).await;
    let (prefix, dir) = (bed.prefix.clone(), &bed.dir);
    let (input, output, rows) = bed.rows_csv(10_000);
    let expected = reference_scores(&rows);

    let mut a = WorkerProc::spawn(&prefix, "w-a", dir.path(), &["--model", "breast-cancer"]);
    let mut b = WorkerProc::spawn(&prefix, "w-b", dir.path(), &["--model", "breast-cancer"]);
    a.wait_ready(Duration::from_secs(30)).await;
    b.wait_ready(Duration::from_secs(30)).await;

    let sb = spawn_score_batch(&prefix, &input, &output, &["--rows-per-job", "50"]);
    let out = sb.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "score-batch failed: {stderr}");
    println!(
        "{}",
        stderr.lines().find(|l| l.contains("rows in")).unwrap_or("")
    );

    let got = read_output(&output);
    assert_exactly_once_and_correct(&got, &expected);
    // Both workers took part.
    let (ja, jb) = (
        a.metric_sum("surge_jobs_total").await,
        b.metric_sum("surge_jobs_total").await,
    );
    assert!(ja > 0.0 && jb > 0.0, "jobs per worker: {ja} and {jb}");
    assert!(
        ja + jb >= 200.0,
        "200 jobs were published; workers answered {}",
        ja + jb
    );

    a.signal("TERM").await;
    b.signal("TERM").await;
    assert!(
        a.wait_exit(Duration::from_secs(20)).await.success(),
        "{}",
        a.log_text()
    );
    assert!(
        b.wait_exit(Duration::from_secs(20)).await.success(),
        "{}",
        b.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn score_batch_waits_for_workers_that_start_later() {
    let bed = Bed::new("late", &["breast-cancer"]).await;
    let (prefix, dir) = (bed.prefix.clone(), &bed.dir);
    let (input, output, rows) = bed.rows_csv(500);
    let sb = spawn_score_batch(&prefix, &input, &output, &["--rows-per-job", "20"]);
    // Jobs are published to a queue score-batch declared; nobody consumes yet.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut w = WorkerProc::spawn(&prefix, "w-late", dir.path(), &[]);
    w.wait_ready(Duration::from_secs(30)).await;
    let out = sb.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_exactly_once_and_correct(&read_output(&output), &reference_scores(&rows));
    w.stop(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_in_and_out() {
    let bed = Bed::new("jsonl", &["breast-cancer"]).await;
    let (prefix, dir) = (bed.prefix.clone(), &bed.dir);
    let input = dir.path().join("rows.jsonl");
    let output = dir.path().join("scores.jsonl");
    let names = feature_names();
    let csv_in = dir.path().join("rows.csv");
    let rows = write_rows_csv(&csv_in, 40);
    let mut text = String::new();
    for (i, r) in rows.iter().enumerate() {
        let mut obj = serde_json::Map::new();
        obj.insert("row_id".into(), serde_json::json!(i.to_string()));
        for (n, x) in names.iter().zip(r) {
            obj.insert(n.clone(), serde_json::json!(x));
        }
        text.push_str(&serde_json::Value::Object(obj).to_string());
        text.push('\n');
    }
    std::fs::write(&input, text).unwrap();
    let mut w = WorkerProc::spawn(&prefix, "w-json", dir.path(), &[]);
    w.wait_ready(Duration::from_secs(30)).await;
    let out = spawn_score_batch(
        &prefix,
        &input,
        &output,
        &["--rows-per-job", "7", "--encoding", "json"],
    )
    .wait_with_output()
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = reference_scores(&rows);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 40);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["row_id"], serde_json::json!(i.to_string()));
        let p = l["malignant_probability"].as_f64().unwrap() as f32;
        assert!((p - expected[i]).abs() <= 1e-6);
    }
    w.stop(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_pika_clients_get_results_packed_and_listed() {
    let bed = Bed::new("py", &["breast-cancer"]).await;
    let (prefix, dir) = (bed.prefix.clone(), &bed.dir);
    let mut w = WorkerProc::spawn(&prefix, "w-py", dir.path(), &[]);
    w.wait_ready(Duration::from_secs(30)).await;
    let python = std::env::var("SURGE_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = tokio::process::Command::new(&python)
        .arg(workspace().join("examples/python/score_one.py"))
        .args(["--prefix", &prefix])
        .output()
        .await
        .unwrap_or_else(|e| panic!("running {python}: {e} (make test sets up .venv with pika)"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python example failed (needs pika: `make pyenv`):\n{stdout}\n{stderr}"
    );
    let result: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(result["status"], "ok", "{result}");
    assert_eq!(
        result["output_names"],
        serde_json::json!(["malignant_probability"])
    );
    assert_eq!(result["outputs"].as_array().map(Vec::len), Some(2));

    // The same rows packed (rows_f32 + cols, columns reversed and named) and as an
    // `inputs` list, both MessagePack: the script checks the outputs are equal.
    let out = tokio::process::Command::new(&python)
        .arg(workspace().join("examples/python/score_packed.py"))
        .args(["--prefix", &prefix, "--rows", "8", "--sample"])
        .arg(models_dir().join("breast-cancer/sample.csv"))
        .output()
        .await
        .unwrap_or_else(|e| panic!("running {python}: {e} (make test sets up .venv)"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "packed python example failed (needs pika and msgpack: `make pyenv`):\n{stdout}\n{stderr}"
    );
    let both: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(both["equal"], true, "{both}");
    assert_eq!(both["outputs"].as_array().map(Vec::len), Some(8));
    w.stop(Duration::from_secs(20)).await;
}

/// Whether `queue` exists (a passive declare succeeds).
async fn queue_exists(conn: &lapin::Connection, queue: &str) -> bool {
    let ch = conn.create_channel().await.expect("opening a channel");
    let opts = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), opts, lapin::types::FieldTable::default())
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_beds_guard_deletes_the_tests_queues_when_dropped() {
    let conn = require_broker().await;
    let bed = Bed::new("guard", &["breast-cancer"]).await;
    let topo = surge_protocol::Topology::new(&bed.prefix);
    let t = surge_broker::Timeouts::default();
    let ch = bed.conn.create_channel().await.expect("opening a channel");
    surge_broker::topology::declare_base(&ch, &topo, &t)
        .await
        .expect("declaring the base topology");
    surge_broker::topology::declare_model(&ch, &topo, "breast-cancer", &t)
        .await
        .expect("declaring the model's queue");
    let queues = [
        topo.job_queue("breast-cancer"),
        topo.dead_queue(),
        topo.results_queue(),
    ];
    for q in &queues {
        assert!(queue_exists(&conn, q).await, "{q} was not declared");
    }
    drop(bed);
    for q in &queues {
        assert!(
            !queue_exists(&conn, q).await,
            "{q} outlived the test's guard"
        );
    }
}
