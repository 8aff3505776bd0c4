//! `surge-bench`: the measurements behind BENCHMARKS.md, each printed as one JSON line.
//!
//! * `throughput`: rows/s end to end through running `surge worker`s (score-batch's
//!   library: publish with confirms → workers → confirmed results → dedup).
//! * `latency`: single-row jobs one at a time at low load; p50/p99 round trip.
//! * `noop-worker`: the ceiling `make bench` measures Surge against. It consumes the
//!   model's queue like `surge worker` (same queue, prefetch, confirms, acks after the
//!   confirm, one `multiple` ack per batch) and answers every job, without decoding
//!   it, with a result the size of Surge's real one for that job size. `throughput`
//!   and `latency` run unchanged against it: same payload in, same-size reply out.
//! * `cold-start`, `burst`, `bill`: elasticity, against a running `surge autoscale`
//!   (see `elastic`).
//!
//! Jobs carry their rows packed (`rows_f32` + `cols`, MessagePack) unless `--no-pack`
//! asks for the `inputs` list form.

mod elastic;
mod genrows;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use surge_broker::publish::{confirmed, publish_confirmed, start_publish};
use surge_broker::{AmqpUrl, Timeouts};
use surge_client::{score_jobs, score_jobs_in_window, ScoreConfig};
use surge_protocol::codec::{encode, encode_job};
use surge_protocol::{Encoding, Inputs, Job, Topology};

#[derive(Parser)]
#[command(about = "Surge benchmarks (one JSON line per measurement)")]
struct Cli {
    /// Topology prefix the workers were started with.
    #[arg(long, default_value = "surge")]
    prefix: String,
    /// Send rows as the `inputs` list of lists instead of packed (`rows_f32` + `cols`),
    /// as older clients do.
    #[arg(long, global = true)]
    no_pack: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Checks a score-batch output of `gen-rows` input (CSV, or Parquet by
    /// extension): `rows` rows, `row_id` 0, 1, 2... in order, a score and no error in
    /// every row. A bench figure counts only when its output passes.
    CheckScores {
        #[arg(long)]
        rows: usize,
        #[arg(long)]
        file: std::path::PathBuf,
    },
    /// Writes a file of `rows` breast-cancer rows (CSV, or Parquet by extension) for
    /// the score-batch bench.
    GenRows {
        #[arg(long)]
        rows: usize,
        #[arg(long)]
        out: std::path::PathBuf,
        /// The dataset the rows repeat (30 feature columns first).
        #[arg(long, default_value = "data/breast-cancer-wisconsin/data.csv")]
        data: std::path::PathBuf,
    },
    /// Rows/s through running workers for the breast-cancer model.
    Throughput {
        #[arg(long)]
        rows: usize,
        #[arg(long)]
        rows_per_job: usize,
        /// Hold at most this many jobs unanswered, as score-batch's `--max-in-flight`
        /// does, instead of publishing every job at once: the rows still come from
        /// memory, so a file run can be told apart from its window.
        #[arg(long)]
        window: Option<usize>,
    },
    /// The ceiling: answers the model's jobs with result-sized bodies, no model.
    NoopWorker {
        /// Rows in each job (sizes the reply: one output per row).
        #[arg(long)]
        rows_per_job: usize,
        /// Prefetch (the worker's default at --max-batch-rows 4096 is 1024).
        #[arg(long, default_value_t = 1024)]
        prefetch: u16,
    },
    /// Single-row job round trips, one at a time.
    Latency {
        #[arg(long, default_value_t = 500)]
        samples: usize,
    },
    /// One job at zero workers until its result (needs `surge autoscale` running).
    ColdStart {
        /// The autoscaler's metrics address.
        #[arg(long)]
        autoscaler: SocketAddr,
        #[arg(long, default_value_t = 5)]
        samples: usize,
    },
    /// A burst at zero workers: until the first and second worker consume.
    Burst(ScaledRun),
    /// Worker-seconds spent from zero back to zero for a run.
    Bill(ScaledRun),
}

/// Rows scored by workers a running `surge autoscale` starts.
#[derive(clap::Args)]
struct ScaledRun {
    #[arg(long)]
    autoscaler: SocketAddr,
    #[arg(long)]
    rows: usize,
    #[arg(long)]
    rows_per_job: usize,
}

fn row(i: usize) -> Vec<f32> {
    // Plausible standardised-ish magnitudes; the values do not affect speed.
    (0..30)
        .map(|j| ((i * 31 + j * 17) % 97) as f32 / 10.0 + 0.5)
        .collect()
}

fn timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(10),
        operation: Duration::from_secs(60),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The client's configuration for a run: the breast-cancer model's workers under
/// `prefix`, rows packed when `pack`, ten minutes for the whole run.
fn score_config(prefix: &str, pack: bool) -> Result<ScoreConfig> {
    let mut cfg = ScoreConfig::new(AmqpUrl::from_env()?, "breast-cancer");
    cfg.pack = pack;
    cfg.topology = Topology::new(prefix);
    cfg.timeouts = timeouts();
    cfg.timeout = Some(Duration::from_secs(600));
    Ok(cfg)
}

/// `rows` rows in jobs of `per_job` (the last may hold fewer).
fn jobs(rows: usize, per_job: usize) -> Vec<Inputs> {
    (0..rows.div_ceil(per_job))
        .map(|j| {
            Inputs::rows(
                &(j * per_job..((j + 1) * per_job).min(rows))
                    .map(row)
                    .collect::<Vec<_>>(),
            )
        })
        .collect()
}

async fn throughput(
    prefix: &str,
    pack: bool,
    rows: usize,
    per_job: usize,
    window: Option<usize>,
) -> Result<()> {
    let cfg = score_config(prefix, pack)?;
    let inputs = jobs(rows, per_job);
    let cpu0 = own_cpu_seconds();
    let answered = match window {
        None => score_jobs(&cfg, inputs).await?,
        Some(w) => score_jobs_in_window(&cfg, inputs, w).await?,
    };
    let s = answered.into_scored().summary;
    let client_cpu_s = own_cpu_seconds() - cpu0;
    if s.rows_ok != rows {
        bail!("only {} of {rows} rows scored: {:?}", s.rows_ok, s.failures);
    }
    let secs = s.elapsed.as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"bench":"throughput","packed":pack,"rows_per_job":per_job,"rows":rows,"jobs":s.jobs,"secs":secs,
            "rows_per_s":rows as f64/secs,"jobs_per_s":s.jobs as f64/secs,"duplicates":s.duplicates,
            "client_cpu_s":client_cpu_s,"window":window})
    );
    Ok(())
}

async fn reply_channel(conn: &Connection, queue: &str) -> Result<(Channel, lapin::Consumer)> {
    let ch = conn.create_channel().await?;
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.basic_qos(2000, BasicQosOptions::default()).await?;
    let consumer = ch
        .basic_consume(
            queue.into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((ch, consumer))
}

/// Single-row breast-cancer jobs, one at a time: a confirming channel to publish them
/// to the jobs exchange, and an exclusive queue their results come back to.
struct Probe {
    /// Held so that the channels stay open.
    _conn: Connection,
    ch: Channel,
    /// The reply queue's channel.
    rch: Channel,
    consumer: lapin::Consumer,
    reply: String,
    exchange: String,
    t: Timeouts,
}

impl Probe {
    /// Connects, and declares the reply queue, for the topology under `prefix`.
    async fn open(prefix: &str) -> Result<Self> {
        let t = timeouts();
        let conn = surge_broker::connect(&AmqpUrl::from_env()?, "surge-bench", &t).await?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let reply = format!("{prefix}.bench-reply-{}", uuid::Uuid::new_v4().simple());
        let (rch, consumer) = reply_channel(&conn, &reply).await?;
        Ok(Self {
            _conn: conn,
            ch,
            rch,
            consumer,
            reply,
            exchange: format!("{prefix}.jobs"),
            t,
        })
    }

    /// Publishes the job of row `i` (packed when `pack`) with id `id`, waits for its
    /// confirm, then up to `within` for its result, and acks that: the round trip in ms.
    /// `late` says what no result within `within` means.
    async fn round_trip(
        &mut self,
        id: &str,
        (i, pack): (usize, bool),
        within: Duration,
        late: &'static str,
    ) -> Result<f64> {
        let t0 = Instant::now();
        let body = encode_job(
            &Job::new("breast-cancer", Inputs::rows(&[row(i)])),
            Encoding::Msgpack,
            pack,
        )?;
        let props = BasicProperties::default()
            .with_message_id(id.into())
            .with_reply_to(self.reply.as_str().into())
            .with_content_type("application/msgpack".into())
            .with_delivery_mode(2);
        publish_confirmed(
            &self.ch,
            &self.exchange,
            "breast-cancer",
            &body,
            props,
            &self.t,
        )
        .await?;
        let d = tokio::time::timeout(within, self.consumer.next())
            .await
            .context(late)?
            .context("reply consumer ended")??;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        d.acker.ack(BasicAckOptions::default()).await?;
        Ok(ms)
    }
}

async fn latency(prefix: &str, pack: bool, samples: usize) -> Result<()> {
    let mut probe = Probe::open(prefix).await?;
    let mut rtts = Vec::with_capacity(samples);
    for i in 0..samples + 20 {
        let id = format!("lat-{i}");
        let late = "no result in 30 s";
        let rtt = probe
            .round_trip(&id, (i, pack), Duration::from_secs(30), late)
            .await?;
        if i >= 20 {
            rtts.push(rtt);
        }
    }
    rtts.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({"bench":"latency","samples":samples,"p50_ms":percentile(&rtts,0.5),"p99_ms":percentile(&rtts,0.99)})
    );
    let _ = probe.rch.close(200, "done".into()).await;
    Ok(())
}

/// CPU seconds (user + system) this process has used so far.
fn own_cpu_seconds() -> f64 {
    // Fields 14 and 15 of /proc/self/stat, in clock ticks (100 per second on Linux).
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            let f: Vec<&str> = after.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0)
}

/// An optional AMQP text property's value, or "" when it is absent.
fn text_or_empty(property: &Option<ShortString>) -> String {
    property.as_ref().map(|s| s.to_string()).unwrap_or_default()
}

/// The ceiling consumer (see the crate docs): the broker work of a worker, no model.
async fn noop_worker(prefix: &str, rows_per_job: usize, prefetch: u16) -> Result<()> {
    let t = timeouts();
    let topo = Topology::new(prefix);
    let model = "breast-cancer";
    let conn = surge_broker::connect(&AmqpUrl::from_env()?, "surge-bench noop worker", &t).await?;
    let ch = conn.create_channel().await?;
    let pubch = conn.create_channel().await?;
    pubch
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    surge_broker::topology::declare_base(&pubch, &topo, &t).await?;
    surge_broker::topology::declare_model(&pubch, &topo, model, &t).await?;
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            topo.job_queue(model).as_str().into(),
            "noop".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let outputs = vec![vec![0.123_456_7_f32]; rows_per_job];
    let names = vec!["malignant_probability".to_string()];
    eprintln!("noop-worker: consuming {}", topo.job_queue(model));
    while let Some(first) = consumer.next().await {
        // Take what is ready right now (up to the worker's 4096-row budget).
        let mut batch = vec![first?];
        while batch.len() * rows_per_job < 4096 {
            match consumer.next().now_or_never() {
                Some(Some(d)) => batch.push(d?),
                _ => break,
            }
        }
        let mut pending = Vec::with_capacity(batch.len());
        for d in &batch {
            let id = text_or_empty(d.properties.message_id());
            let reply = text_or_empty(d.properties.reply_to());
            let result = surge_protocol::JobResult::ok(
                id.as_str(),
                model,
                "1.0.0",
                names.clone(),
                outputs.clone(),
                "noop",
                surge_protocol::Timings {
                    queue_ms: Some(0.0),
                    inference_ms: 0.0,
                    batch_rows: (batch.len() * rows_per_job) as u32,
                },
            );
            let body = encode(&result, Encoding::Msgpack)?;
            let props = BasicProperties::default()
                .with_content_type("application/msgpack".into())
                .with_message_id(id.as_str().into())
                .with_correlation_id(
                    d.properties
                        .correlation_id()
                        .clone()
                        .unwrap_or_else(|| id.as_str().into()),
                )
                .with_delivery_mode(2);
            pending.push((
                start_publish(&pubch, "", &reply, &body, props, &t).await?,
                reply,
            ));
        }
        for (c, reply) in pending {
            confirmed(c, "", &reply, &t).await?;
        }
        if let Some(last) = batch.last() {
            last.acker.ack(BasicAckOptions { multiple: true }).await?;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let pack = !cli.no_pack;
    match cli.cmd {
        Cmd::GenRows { rows, out, data } => genrows::gen_rows(&data, &out, rows),
        Cmd::CheckScores { rows, file } => genrows::check_scores(&file, rows),
        Cmd::Throughput {
            rows,
            rows_per_job,
            window,
        } => throughput(&cli.prefix, pack, rows, rows_per_job, window).await,
        Cmd::Latency { samples } => latency(&cli.prefix, pack, samples).await,
        Cmd::NoopWorker {
            rows_per_job,
            prefetch,
        } => noop_worker(&cli.prefix, rows_per_job, prefetch).await,
        Cmd::ColdStart {
            autoscaler,
            samples,
        } => elastic::cold_start(&cli.prefix, pack, autoscaler, samples).await,
        Cmd::Burst(run) => elastic::burst(&cli.prefix, pack, &run).await,
        Cmd::Bill(run) => elastic::bill(&cli.prefix, pack, &run).await,
    }
}
