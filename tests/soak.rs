//! Soak: one worker at about half of its measured capacity for 10 minutes (a bench,
//! not a CI test: `#[ignore]`, run by `make soak`). Asserts no error result, every job
//! answered, and worker RSS flat within ±10 % after warm-up. Writes the figures to
//! `out/soak/section.md`, which `scripts/soak.sh` puts into BENCHMARKS.md.
//!
//! `SURGE_SOAK_SECS` sets the duration (default 600), `SURGE_SOAK_WARMUP_SECS` the
//! warm-up (default 60).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::BasicProperties;
use surge_protocol::codec::{decode_result, encode};
use surge_protocol::{now_ms, Encoding, Inputs, Job, Limits, Status, Topology};
use surge_testkit::figures::{parse_summary, rss_kib};
use surge_testkit::*;

fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const ROWS_PER_JOB: usize = 100;

#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    duplicates: u64,
    latencies_ms: Vec<f64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a 10-minute bench: run with `make soak`"]
async fn soak_at_half_capacity() {
    let conn = require_broker().await;
    let secs = env_secs("SURGE_SOAK_SECS", 600);
    let warmup = env_secs("SURGE_SOAK_WARMUP_SECS", 60).min(secs / 2);
    let prefix = unique_prefix("soak");
    let _cleanup = Cleanup::new(&prefix, &["breast-cancer"]);
    let topo = Topology::new(&prefix);
    let dir = tempfile::tempdir().unwrap();
    let mut w = WorkerProc::spawn(&prefix, "w-soak", dir.path(), &[]);
    w.wait_ready(Duration::from_secs(30)).await;
    let pid = w.pid();

    // 1. Capacity: a score-batch run of 40,000 rows through this one worker.
    let (input, output, rows) = rows_csv_in(dir.path(), 40_000);
    let sb = spawn_score_batch(
        &prefix,
        &input,
        &output,
        &["--rows-per-job", &ROWS_PER_JOB.to_string()],
    );
    let out = sb.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let cap = parse_summary(&stderr).unwrap();
    let line = stderr.lines().find(|l| l.contains(" rows/s")).unwrap_or("");
    let capacity: f64 = line
        .split(" rows/s")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no rows/s in {line}"));
    assert_eq!(cap.scored, 40_000);
    let rate_rows = capacity / 2.0;
    let jobs_per_s = rate_rows / ROWS_PER_JOB as f64;
    println!(
        "capacity {capacity:.0} rows/s; soaking at {rate_rows:.0} rows/s ({jobs_per_s:.1} jobs/s) for {secs}s"
    );

    // 2. The soak: publish at a steady rate, collect results, sample RSS.
    let bodies: Vec<Vec<u8>> = rows
        .chunks(ROWS_PER_JOB)
        .take(100)
        .map(|c| {
            encode(
                &Job::new("breast-cancer", Inputs::rows(c)),
                Encoding::Msgpack,
            )
            .unwrap()
        })
        .collect();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let reply = format!("{prefix}.soak-replies");
    declare_reply_queue(&ch, &reply).await;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let tally: Arc<Mutex<Tally>> = Arc::default();
    let rch = conn.create_channel().await.unwrap();
    let mut results = consume(&rch, &reply, "soak").await;
    let (s2, t2) = (sent.clone(), tally.clone());
    let collector = tokio::spawn(async move {
        while let Some(Ok(d)) = results.next().await {
            let r = decode_result(&d.data, Encoding::Msgpack, &Limits::default()).unwrap();
            {
                let started = s2.lock().unwrap().remove(&r.job_id);
                let mut t = t2.lock().unwrap();
                match started {
                    None => t.duplicates += 1,
                    Some(at) => {
                        t.latencies_ms.push(at.elapsed().as_secs_f64() * 1e3);
                        if r.status == Status::Ok {
                            t.ok += 1;
                        } else {
                            t.errors += 1;
                        }
                    }
                }
            }
            let _ = d.acker.ack(BasicAckOptions::default()).await;
        }
    });

    let start = Instant::now();
    let mut published = 0u64;
    // Warm-up starts with a burst of 2,048 jobs: more than the worker's prefetch
    // window (1,024 by default), so the worker's buffers reach the size the first
    // backlog would otherwise give them later, mid-soak.
    let burst = 2_048u64;
    let mut samples: Vec<(f64, u64)> = Vec::new();
    let mut next_sample = Duration::ZERO;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while start.elapsed() < Duration::from_secs(secs) {
        tick.tick().await;
        let due = burst + (start.elapsed().as_secs_f64() * jobs_per_s) as u64;
        let mut pending = Vec::new();
        while published < due {
            let id = format!("soak-{published}");
            let props = BasicProperties::default()
                .with_message_id(id.as_str().into())
                .with_reply_to(reply.as_str().into())
                .with_content_type("application/msgpack".into())
                .with_timestamp(now_ms() / 1000);
            sent.lock().unwrap().insert(id, Instant::now());
            pending.push(
                ch.basic_publish(
                    topo.jobs_exchange().as_str().into(),
                    "breast-cancer".into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &bodies[published as usize % bodies.len()],
                    props,
                )
                .await
                .unwrap(),
            );
            published += 1;
        }
        for p in pending {
            assert!(p.await.unwrap().is_ack());
        }
        if start.elapsed() >= next_sample {
            let rss = rss_kib(pid).unwrap_or_else(|| panic!("worker {pid} is gone"));
            samples.push((start.elapsed().as_secs_f64(), rss));
            next_sample += Duration::from_secs(5);
        }
    }
    // Drain: every job answered.
    let drain = Instant::now();
    while !sent.lock().unwrap().is_empty() {
        assert!(
            drain.elapsed() < Duration::from_secs(60),
            "{} jobs unanswered after the soak",
            sent.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    collector.abort();
    let t = {
        let t = tally.lock().unwrap();
        Tally {
            ok: t.ok,
            errors: t.errors,
            duplicates: t.duplicates,
            latencies_ms: t.latencies_ms.clone(),
        }
    };
    let mut lat = t.latencies_ms.clone();
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    let after: Vec<&(f64, u64)> = samples
        .iter()
        .filter(|(at, _)| *at >= warmup as f64)
        .collect();
    let base = after.first().map(|s| s.1).unwrap_or(0);
    let (lo, hi) = after
        .iter()
        .fold((u64::MAX, 0), |(lo, hi), s| (lo.min(s.1), hi.max(s.1)));
    let dev = |v: u64| (v as f64 - base as f64) / base as f64 * 100.0;
    let summary = format!(
        "FIGURES soak: {secs}s at {rate_rows:.0} rows/s ({jobs_per_s:.1} jobs/s of {ROWS_PER_JOB} rows; capacity {capacity:.0} rows/s); \
         jobs published {published}, ok {}, error results {}, duplicates {}, latency p50 {:.1} ms p99 {:.1} ms; \
         worker RSS after {warmup}s warm-up {} KiB, then min {} ({:+.1} %) max {} ({:+.1} %)",
        t.ok, t.errors, t.duplicates, pct(0.5), pct(0.99), base, lo, dev(lo), hi, dev(hi)
    );
    println!("{summary}");
    let section = format!(
        "<!-- soak:start -->\n## Soak: 10 minutes at half capacity\n\n\
         One `surge worker` (`--threads 1`, default batching) on the breast-cancer model. Its capacity was measured first \
         with `score-batch` (40,000 rows, {ROWS_PER_JOB} rows per job); the soak then published {ROWS_PER_JOB}-row jobs \
         at half that rate (after a first burst of 2,048 jobs, to fill the prefetch window during warm-up), with confirms, \
         and collected every result.\n\n\
         | figure | value |\n|---|---:|\n\
         | duration | {secs} s |\n\
         | measured capacity | {capacity:.0} rows/s |\n\
         | soak rate | {rate_rows:.0} rows/s ({jobs_per_s:.1} jobs/s) |\n\
         | jobs published / answered ok | {published} / {} |\n\
         | error results | {} |\n\
         | duplicate results | {} |\n\
         | job round trip p50 / p99 | {:.1} / {:.1} ms |\n\
         | worker RSS at the end of warm-up ({warmup} s) | {:.1} MiB |\n\
         | worker RSS after warm-up, min / max | {:.1} MiB ({:+.1} %) / {:.1} MiB ({:+.1} %) |\n\
         | RSS samples (every 5 s) | {} |\n\n\
         The machine (2 cores) was shared with the broker and with other engineers' builds and tests while this ran, \
         so capacity and latency are lower bounds; the memory figures are the point.\n\n\
         Reproduce: `make soak` (`SURGE_SOAK_SECS` shortens it).\n<!-- soak:end -->\n",
        t.ok,
        t.errors,
        t.duplicates,
        pct(0.5),
        pct(0.99),
        base as f64 / 1024.0,
        lo as f64 / 1024.0,
        dev(lo),
        hi as f64 / 1024.0,
        dev(hi),
        samples.len()
    );
    let out_dir = workspace().join("out/soak");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(out_dir.join("section.md"), &section).unwrap();
    std::fs::write(
        out_dir.join("rss.csv"),
        samples
            .iter()
            .map(|(t, r)| format!("{t:.1},{r}\n"))
            .collect::<String>(),
    )
    .unwrap();
    assert_eq!(t.errors, 0, "error results during the soak");
    assert_eq!(t.ok, published, "every job answered ok");
    assert!(
        dev(lo) >= -10.0 && dev(hi) <= 10.0,
        "worker RSS not flat within ±10 % after warm-up: {summary}"
    );
    assert_eq!(w.pid(), pid);
    w.stop(Duration::from_secs(30)).await;
}
