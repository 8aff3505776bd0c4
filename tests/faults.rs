//! Fault drills on the shared broker, each with its expected outcome asserted and its
//! figures printed (`FIGURES ...` lines: rows published, answered, duplicates dropped,
//! dead-lettered, lost, duplicated in the output):
//!
//! * workers SIGKILLed ten times (and restarted) during a `score-batch` run;
//! * a worker SIGTERMed mid-run drains;
//! * the network between a worker and the broker frozen for four heartbeats;
//! * a job that always fails reaches `surge.dead` after the delivery limit while the
//!   other jobs flow;
//! * jobs whose TTL runs out in the queue, and a queue full with `reject-publish`.
//!
//! `make test` runs them at a reduced size; `make test-faults` (`SURGE_FAULTS=full`)
//! at full size (100,000 rows). The broker stopped and started, and a batch held past
//! `consumer_timeout`, need a node of their own: `tests/broker_faults.rs`.

use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use surge_protocol::codec::encode;
use surge_protocol::{Encoding, Inputs, Job, Topology};
use surge_testkit::figures::{self, parse_summary, queue_len, take, x_death_reason};
use surge_testkit::proxy::FreezeProxy;
use surge_testkit::*;

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

/// Waits for score-batch, asserts it succeeded, prints and asserts the figures.
async fn finish_run(
    test: &str,
    sb: tokio::process::Child,
    output: &std::path::Path,
    expected: &[f32],
    prefix: &str,
    workers: &[&WorkerProc],
) -> figures::Summary {
    let out = sb.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logs: String = workers.iter().map(|w| w.log_text()).collect();
    assert!(
        out.status.success(),
        "{test}: score-batch failed: {stderr}\nworker logs:\n{logs}"
    );
    let summary = parse_summary(&stderr).unwrap_or_else(|| panic!("no summary in {stderr}"));
    let conn = require_broker().await;
    let dead = queue_len(&conn, &Topology::new(prefix).dead_queue()).await;
    let got = read_output(output);
    figures::report(test, &summary, &got, dead, output);
    assert_exactly_once_and_correct(&got, expected);
    summary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_workers_ten_times_mid_run_loses_nothing() {
    let bed = Bed::new("kill10", &["breast-cancer"]).await;
    let (prefix, dir) = (bed.prefix.clone(), &bed.dir);
    let input = dir.path().join("rows.csv");
    let output = dir.path().join("scores.csv");
    // Full: 100,000 rows in 1,000 jobs. Reduced: 20,000 rows in 1,000 jobs.
    let full = figures::full_suite();
    let n_rows = figures::size(100_000, 20_000);
    let rows = write_rows_csv(&input, n_rows);
    let per_job = (n_rows / 1_000).to_string();
    // Slowed down (each worker at most 1,670 rows/s, 625 reduced) so that the run
    // outlasts ten kill-and-restart cycles.
    let opts: &[&str] = if full {
        &[
            "--max-batch-rows",
            "200",
            "--prefetch",
            "8",
            "--batch-delay-ms",
            "120",
        ]
    } else {
        &[
            "--max-batch-rows",
            "50",
            "--prefetch",
            "20",
            "--batch-delay-ms",
            "80",
        ]
    };
    let mut workers: Vec<WorkerProc> = (0..2)
        .map(|i| WorkerProc::spawn(&prefix, &format!("w-k{i}-0"), dir.path(), opts))
        .collect();
    for w in &mut workers {
        w.wait_ready(Duration::from_secs(30)).await;
    }
    let mut sb = spawn_score_batch(
        &prefix,
        &input,
        &output,
        &["--rows-per-job", &per_job, "--job-timeout", "30"],
    );
    let started = Instant::now();
    workers[0].wait_for_jobs(5.0, Duration::from_secs(60)).await;
    let mut kills = 0;
    for k in 1..=10 {
        let i = k % 2;
        let victim = &mut workers[i];
        victim.signal("KILL").await;
        assert!(!victim.wait_exit(Duration::from_secs(10)).await.success());
        kills += 1;
        assert!(
            sb.try_wait().unwrap().is_none(),
            "the run finished before kill {k}: the test proved nothing"
        );
        let mut fresh = WorkerProc::spawn(&prefix, &format!("w-k{i}-{k}"), dir.path(), opts);
        fresh.wait_ready(Duration::from_secs(30)).await;
        *victim = fresh;
        // Let the fresh worker take jobs before it (or its peer) is killed.
        tokio::time::sleep(Duration::from_millis(if full { 800 } else { 300 })).await;
    }
    println!(
        "{kills} SIGKILLs (and restarts) in {:.1}s of the run",
        started.elapsed().as_secs_f64()
    );
    let refs: Vec<&WorkerProc> = workers.iter().collect();
    let s = finish_run(
        "sigkill x10",
        sb,
        &output,
        &reference_scores(&rows),
        &prefix,
        &refs,
    )
    .await;
    assert_eq!(s.failed, 0, "no row may fail");
    for mut w in workers {
        w.stop(Duration::from_secs(30)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_drains_gracefully() {
    let bed = Bed::new("term", &["breast-cancer"]).await;
    let (prefix, dir) = (bed.prefix.clone(), &bed.dir);
    let (input, output, rows) = bed.rows_csv(6_000);
    let mut a = WorkerProc::spawn(&prefix, "w-term-a", dir.path(), SLOW);
    let mut b = WorkerProc::spawn(&prefix, "w-term-b", dir.path(), SLOW);
    a.wait_ready(Duration::from_secs(30)).await;
    b.wait_ready(Duration::from_secs(30)).await;
    let sb = spawn_score_batch(&prefix, &input, &output, &["--rows-per-job", "10"]);
    a.wait_for_jobs(30.0, Duration::from_secs(60)).await;
    a.signal("TERM").await;
    let t0 = Instant::now();
    let status = a.wait_exit(Duration::from_secs(30)).await;
    let log = a.log_text();
    assert!(
        status.success(),
        "a SIGTERMed worker must exit 0 after draining; log:\n{log}"
    );
    assert!(log.contains("drained"), "no drain in the log:\n{log}");
    println!("worker A drained and exited in {:?}", t0.elapsed());
    let s = finish_run(
        "sigterm drain",
        sb,
        &output,
        &reference_scores(&rows),
        &prefix,
        &[&b],
    )
    .await;
    assert_eq!(s.failed, 0);
    b.stop(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_network_is_noticed_and_the_worker_recovers() {
    let bed = Bed::new("freeze", &["breast-cancer"]).await;
    let (prefix, dir) = (bed.prefix.clone(), &bed.dir);
    let (input, output, rows) = bed.rows_csv(4_000);
    // The worker reaches the broker only through the proxy, with 2 s heartbeats and
    // 3 s broker timeouts.
    let proxy = FreezeProxy::start(5672);
    let url = format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f?heartbeat=2",
        proxy.port
    );
    let mut extra = SLOW.to_vec();
    extra.extend(["--broker-timeout-s", "3"]);
    let mut w = WorkerProc::spawn_with_env(
        &prefix,
        "w-freeze",
        dir.path(),
        &extra,
        &[("AMQP_URL", &url)],
    );
    w.wait_ready(Duration::from_secs(30)).await;
    let pid = w.pid();
    let mut sb = spawn_score_batch(
        &prefix,
        &input,
        &output,
        &["--rows-per-job", "10", "--job-timeout", "60"],
    );
    w.wait_for_jobs(20.0, Duration::from_secs(60)).await;

    // Freeze for 8 s: four heartbeat intervals, twice lapin's detection window.
    proxy.freeze();
    let frozen_at = Instant::now();
    let mut noticed_after = None;
    while frozen_at.elapsed() < Duration::from_secs(8) {
        if noticed_after.is_none() && w.get("/readyz").await.map(|(s, _)| s) != Some(200) {
            noticed_after = Some(frozen_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let noticed_after = noticed_after.unwrap_or_else(|| {
        panic!(
            "the worker still said ready after 8 s of frozen network; log:\n{}",
            w.log_text()
        )
    });
    assert!(
        sb.try_wait().unwrap().is_none(),
        "the run finished while its only worker was cut off"
    );
    proxy.thaw();
    let thawed = Instant::now();
    w.wait_ready(Duration::from_secs(30)).await;
    let recovered_in = thawed.elapsed();
    let log = w.log_text();
    println!(
        "frozen 8 s: worker noticed after {:.1}s, ready again {:.1}s after the thaw",
        noticed_after.as_secs_f64(),
        recovered_in.as_secs_f64()
    );
    assert!(
        noticed_after <= Duration::from_secs(7),
        "noticed too late: {noticed_after:?}"
    );
    assert!(log.contains("reconnecting"), "{log}");
    let s = finish_run(
        "network freeze",
        sb,
        &output,
        &reference_scores(&rows),
        &prefix,
        &[&w],
    )
    .await;
    assert_eq!(s.failed, 0);
    assert_eq!(w.pid(), pid, "same process throughout");
    assert_eq!(w.get("/healthz").await.map(|(s, _)| s), Some(200));
    w.stop(Duration::from_secs(30)).await;
}

fn job_body(x: f32) -> Vec<u8> {
    encode(
        &Job::new("breast-cancer", Inputs::rows(&[vec![x; 30]])),
        Encoding::Msgpack,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_always_fails_reaches_the_dead_letters_and_others_flow() {
    let bed = Bed::new("poison", &["breast-cancer"]).await;
    let (conn, prefix, dir) = (&bed.conn, bed.prefix.clone(), &bed.dir);
    let (input, output, rows) = bed.rows_csv(3_000);
    let mut w = WorkerProc::spawn(&prefix, "w-poison", dir.path(), &[]);
    w.wait_ready(Duration::from_secs(30)).await;

    // The poison job answers to a queue that refuses every message (max length 0,
    // reject-publish): the broker nacks each result, the worker returns the job, and
    // it comes back, again and again.
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let full = format!("{prefix}.full-replies");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    // Nobody consumes it, so auto-delete never fires: it expires 10 min after the
    // test instead.
    args.insert("x-expires".into(), AMQPValue::LongLongInt(600_000));
    ch.queue_declare(
        full.as_str().into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    let topo = Topology::new(&prefix);
    let confirm = ch
        .basic_publish(
            topo.jobs_exchange().as_str().into(),
            "breast-cancer".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &job_body(1.0),
            BasicProperties::default()
                .with_message_id("poison-1".into())
                .with_reply_to(full.as_str().into())
                .with_content_type("application/msgpack".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    // Meanwhile an ordinary run goes through the same queue and the same worker.
    let sb = spawn_score_batch(&prefix, &input, &output, &["--rows-per-job", "10"]);
    let dead = take(conn, &topo.dead_queue(), 1, Duration::from_secs(60)).await;
    let d = &dead[0];
    assert_eq!(
        d.properties.message_id().as_ref().map(|s| s.as_str()),
        Some("poison-1")
    );
    let reason = x_death_reason(d).unwrap_or_else(|| panic!("no x-death: {:?}", d.properties));
    assert_eq!(reason, "delivery_limit");
    println!("poison job dead-lettered by the broker, x-death reason {reason}");
    let s = finish_run(
        "poison job",
        sb,
        &output,
        &reference_scores(&rows),
        &prefix,
        &[&w],
    )
    .await;
    assert_eq!(s.failed, 0);
    assert_eq!(queue_len(conn, &topo.job_queue("breast-cancer")).await, 0);
    assert_eq!(w.get("/healthz").await.map(|(s, _)| s), Some(200));
    w.stop(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_whose_ttl_runs_out_in_the_queue_are_dead_lettered_as_expired() {
    let bed = Bed::new("ttl", &["breast-cancer"]).await;
    let (conn, prefix) = (&bed.conn, bed.prefix.clone());
    let topo = Topology::new(&prefix);
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let t = surge_broker::Timeouts::default();
    surge_broker::topology::declare_base(&ch, &topo, &t)
        .await
        .unwrap();
    surge_broker::topology::declare_model(&ch, &topo, "breast-cancer", &t)
        .await
        .unwrap();
    let replies = format!("{prefix}.replies");
    declare_reply_queue(&ch, &replies).await;
    // No worker yet: 100 jobs with a 300 ms TTL and 100 without, interleaved.
    let n: usize = 100;
    for i in 0..2 * n {
        let mut props = BasicProperties::default()
            .with_message_id(format!("ttl-{i}").as_str().into())
            .with_reply_to(replies.as_str().into())
            .with_content_type("application/msgpack".into());
        if i.is_multiple_of(2) {
            props = props.with_expiration("300".into());
        }
        let c = ch
            .basic_publish(
                topo.jobs_exchange().as_str().into(),
                "breast-cancer".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &job_body(i as f32),
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(c.is_ack());
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut w = WorkerProc::spawn(&prefix, "w-ttl", dir.path(), &[]);
    w.wait_ready(Duration::from_secs(30)).await;
    let answered = take(conn, &replies, n, Duration::from_secs(30)).await;
    let dead = take(conn, &topo.dead_queue(), n, Duration::from_secs(30)).await;
    for d in &answered {
        let id = d.properties.message_id().as_ref().unwrap().to_string();
        let i: usize = id.trim_start_matches("ttl-").parse().unwrap();
        assert_eq!(i % 2, 1, "{id} had a TTL and must not be answered");
    }
    for d in &dead {
        let id = d.properties.message_id().as_ref().unwrap().to_string();
        let i: usize = id.trim_start_matches("ttl-").parse().unwrap();
        assert_eq!(i % 2, 0, "{id} had no TTL");
        assert_eq!(x_death_reason(d).as_deref(), Some("expired"), "{id}");
    }
    // Nothing else: no extra answer, no extra dead letter.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let extra = queue_len(conn, &replies).await;
    if extra > 0 {
        let more = take(conn, &replies, extra as usize, Duration::from_secs(5)).await;
        let ids: Vec<_> = more
            .iter()
            .map(|d| d.properties.message_id().clone())
            .collect();
        panic!("{extra} extra results: {ids:?}");
    }
    let extra = queue_len(conn, &topo.dead_queue()).await;
    if extra > 0 {
        let more = take(
            conn,
            &topo.dead_queue(),
            extra as usize,
            Duration::from_secs(5),
        )
        .await;
        let ids: Vec<_> = more
            .iter()
            .map(|d| (d.properties.message_id().clone(), x_death_reason(d)))
            .collect();
        panic!("{extra} extra dead letters: {ids:?}");
    }
    println!(
        "FIGURES ttl: jobs published {}, answered {}, dead-lettered expired {}, lost 0",
        2 * n,
        answered.len(),
        dead.len()
    );
    w.stop(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_jobs_and_the_producer_retries_them() {
    let _conn = require_broker().await;
    // A vhost of the test's own, so its policy cannot touch anyone else's queues.
    let (owned, url) = OwnedVhost::for_guest("maxlen").await;
    rabbitmqctl(&[
        "set_policy",
        "-p",
        &owned.vhost,
        "--apply-to",
        "queues",
        "surge-maxlen",
        "^surge\\.jobs\\.",
        r#"{"max-length":50,"overflow":"reject-publish"}"#,
    ])
    .await;
    let env = [("AMQP_URL", url.as_str())];
    let dir = tempfile::tempdir().unwrap();
    let (input, output, rows) = rows_csv_in(dir.path(), 3_000);
    // 300 jobs, no worker: 50 fit, the broker nacks the rest, score-batch retries.
    // One job in flight at a time: a quorum queue's length limit is soft, and a burst
    // published in one go may all get in before the queue starts refusing.
    let sb = spawn_score_batch_with_env(
        "surge",
        &input,
        &output,
        &["--rows-per-job", "10", "--publish-window", "1"],
        &env,
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut w = WorkerProc::spawn_with_env("surge", "w-maxlen", dir.path(), &[], &env);
    w.wait_ready(Duration::from_secs(30)).await;
    let out = sb.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let refused = stderr
        .lines()
        .filter(|l| l.contains("refused a job"))
        .count();
    assert!(
        refused >= 250,
        "the producer was told of {refused} refusals only:\n{stderr}"
    );
    let summary = parse_summary(&stderr).unwrap();
    let got = read_output(&output);
    figures::report("queue full (reject-publish)", &summary, &got, 0, &output);
    println!(
        "  the broker refused {refused} publishes; score-batch republished each until it fitted"
    );
    assert_exactly_once_and_correct(&got, &reference_scores(&rows));
    w.stop(Duration::from_secs(30)).await;
}
