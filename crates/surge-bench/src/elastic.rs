//! Elasticity measurements against a running `surge autoscale` (whose `/metrics` is
//! read at `--autoscaler`): cold start from zero, a burst to the second worker, and the
//! worker-seconds a run costs.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use surge_broker::AmqpUrl;
use surge_client::score_jobs;
use surge_ops::names::autoscale::{DRAINING, RUNNING, WORKER_SECONDS};
use surge_ops::scrape::{http_get, sum_metric};
use surge_protocol::Topology;

use crate::{jobs, percentile, score_config, timeouts, Probe, ScaledRun};

async fn metric(addr: SocketAddr, name: &str) -> Result<f64> {
    let text = http_get(addr, "/metrics", Duration::from_secs(2))
        .await
        .with_context(|| format!("the autoscaler's /metrics at {addr} did not answer"))?;
    Ok(sum_metric(&text, name))
}

/// Waits until the autoscaler runs no worker (none draining either).
async fn wait_for_zero(addr: SocketAddr, within: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        // The autoscaler may still be starting: a failed read is retried until `within`.
        let running = metric(addr, RUNNING).await;
        let draining = metric(addr, DRAINING).await;
        let up = http_get(addr, "/readyz", Duration::from_secs(2))
            .await
            .is_some();
        match (running, draining) {
            (Ok(r), Ok(d)) if up && r == 0.0 && d == 0.0 => return Ok(()),
            (r, d) if start.elapsed() > within => {
                bail!("the autoscaler did not reach zero workers within {within:?} (workers: {r:?}, draining: {d:?})")
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One job published at zero workers, timed until its result; `samples` times.
pub async fn cold_start(
    prefix: &str,
    pack: bool,
    autoscaler: SocketAddr,
    samples: usize,
) -> Result<()> {
    let mut probe = Probe::open(prefix).await?;
    let mut times = Vec::new();
    for i in 0..samples {
        wait_for_zero(autoscaler, Duration::from_secs(120)).await?;
        let id = format!("cold-{i}");
        let late = "no result within 60 s of a job arriving at zero workers";
        let ms = probe
            .round_trip(&id, (i, pack), Duration::from_secs(60), late)
            .await?;
        times.push(ms);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({"bench":"cold_start","samples":samples,"p50_ms":percentile(&times,0.5),
            "min_ms":times.first(),"max_ms":times.last()})
    );
    Ok(())
}

/// A burst published at zero workers: seconds until the queue has a first and a
/// second consumer, and until the burst is answered.
pub async fn burst(prefix: &str, pack: bool, run: &ScaledRun) -> Result<()> {
    let (rows, per_job) = (run.rows, run.rows_per_job);
    wait_for_zero(run.autoscaler, Duration::from_secs(120)).await?;
    let t = timeouts();
    let conn = surge_broker::connect(&AmqpUrl::from_env()?, "surge-bench-watch", &t).await?;
    let ch = conn.create_channel().await?;
    let queue = Topology::new(prefix).job_queue("breast-cancer");
    let cfg = score_config(prefix, pack)?;
    let inputs = jobs(rows, per_job);
    let t0 = Instant::now();
    let run = tokio::spawn(async move { score_jobs(&cfg, inputs).await });
    let (mut first, mut second) = (None, None);
    while second.is_none() && !run.is_finished() {
        let q = surge_broker::topology::queue_depth(&ch, &queue, &t).await?;
        let now = t0.elapsed().as_secs_f64();
        if q.consumers >= 1 && first.is_none() {
            first = Some(now);
        }
        if q.consumers >= 2 {
            second = Some(now);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let answered = run.await??;
    let s = answered.into_scored().summary;
    if s.rows_ok != rows {
        bail!("only {} of {rows} rows scored", s.rows_ok);
    }
    println!(
        "{}",
        serde_json::json!({"bench":"burst","rows":rows,"rows_per_job":per_job,
            "first_consumer_s":first,"second_consumer_s":second,"answered_s":s.elapsed.as_secs_f64()})
    );
    Ok(())
}

/// Rows scored from zero workers back to zero: the worker-seconds they cost.
pub async fn bill(prefix: &str, pack: bool, run: &ScaledRun) -> Result<()> {
    let (autoscaler, rows, per_job) = (run.autoscaler, run.rows, run.rows_per_job);
    wait_for_zero(autoscaler, Duration::from_secs(120)).await?;
    let before = metric(autoscaler, WORKER_SECONDS).await?;
    let cfg = score_config(prefix, pack)?;
    let t0 = Instant::now();
    let s = score_jobs(&cfg, jobs(rows, per_job))
        .await?
        .into_scored()
        .summary;
    if s.rows_ok != rows {
        bail!("only {} of {rows} rows scored", s.rows_ok);
    }
    let scored_s = t0.elapsed().as_secs_f64();
    wait_for_zero(autoscaler, Duration::from_secs(300)).await?;
    let back_to_zero_s = t0.elapsed().as_secs_f64();
    let worker_s = metric(autoscaler, WORKER_SECONDS).await? - before;
    println!(
        "{}",
        serde_json::json!({"bench":"bill","rows":rows,"rows_per_job":per_job,"scored_s":scored_s,
            "back_to_zero_s":back_to_zero_s,"worker_seconds":worker_s,
            "worker_seconds_per_100k_rows":worker_s * 100_000.0 / rows as f64})
    );
    Ok(())
}
