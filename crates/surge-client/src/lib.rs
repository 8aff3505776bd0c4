//! `score-batch` as a library: a file of rows in, scores out, through RabbitMQ, with
//! every row answered exactly once.
//!
//! A tour:
//!
//! * [`table`]: reading CSV / JSON Lines into rows and writing rows plus scores back,
//!   in input order (pure).
//! * [`stream`]: files of any length in bounded memory: rows read incrementally into
//!   jobs, and written back in input order as their jobs are answered.
//! * [`tracker`]: the plan (rows → jobs with idempotent ids) and the bookkeeping of
//!   which jobs are answered, deduplicating results that arrive twice (pure).
//! * [`watch`]: hints for a run that is stuck (no worker consumes the model's queue)
//!   or failing (every job so far answered with an error) (pure).
//! * [`score_stream`] (and [`score_table`], [`score_jobs`] for inputs in memory): the broker side: publish jobs with confirms, collect results on a
//!   reply queue of the run's own, republish jobs whose results are overdue, and
//!   reconnect after a lost connection. With traces exported (`surge_ops::telemetry`),
//!   each publish is a producer span inside the run's span, and the job carries its
//!   context as a W3C `traceparent` header.

pub mod parquet_io;
pub mod resume;
/// The Arrow type of a Parquet column (re-exported for [`stream::open_parquet`]).
pub use arrow_schema::DataType;
pub mod stream;
pub mod table;
pub mod tracker;
pub mod watch;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use surge_broker::publish::{confirmed, start_publish};
use surge_broker::{timed, topology, AmqpUrl, BrokerError, Timeouts};
use surge_ops::telemetry::{self, SpanName};
use surge_protocol::codec::{decode_result, encode_job_ref};
use surge_protocol::{
    now_ms, Encoding, Inputs, JobRef, JobResult, Limits, Status, Topology, PROTOCOL_VERSION,
};
use table::{RowOutcome, Selection, Table};
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use tracker::{plan, JobState, Recorded, Window};
use watch::{FailWatch, IdleSignal, IdleWatch};

/// Why a run failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The input file cannot be used.
    #[error("input: {0}")]
    Input(String),
    /// The output file cannot be written.
    #[error("output: {0}")]
    Output(String),
    /// The broker refused something that retrying will not fix.
    #[error("{0}")]
    Broker(#[from] BrokerError),
    /// The run did not finish within `--timeout`.
    #[error("timed out after {after:?}: {answered} of {total} jobs answered; {hint}")]
    Timeout {
        /// Jobs answered.
        answered: usize,
        /// Jobs in the run.
        total: usize,
        /// The limit.
        after: Duration,
        /// What to check, from what the run saw last (no consumer on the queue, ...).
        hint: String,
    },
}

/// A fresh run id: `sb-` and 12 hex digits.
pub fn new_run_id() -> String {
    format!("sb-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Where a resumed run picks up: its id (so its reply queue and job ids are the
/// killed run's), and the jobs and rows already written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeFrom {
    /// The run's id.
    pub run_id: String,
    /// Jobs written before the run stopped.
    pub jobs: usize,
    /// Rows of those jobs.
    pub rows: usize,
}

/// How to run a scoring run.
#[derive(Debug, Clone)]
pub struct ScoreConfig {
    /// Broker URL.
    pub url: AmqpUrl,
    /// Exchange and queue names.
    pub topology: Topology,
    /// Model to score with.
    pub model: String,
    /// Model version; the newest served when `None`.
    pub version: Option<String>,
    /// Rows per job.
    pub rows_per_job: usize,
    /// Republish a job whose result has not arrived this long after its confirm.
    pub job_timeout: Duration,
    /// Give up after this long (`None`: wait for workers indefinitely).
    pub timeout: Option<Duration>,
    /// Encoding of the jobs.
    pub encoding: Encoding,
    /// Send rows packed (`rows_f32` + `cols`, one little-endian f32 block) rather than
    /// as the `inputs` list of lists. Only MessagePack can carry the block: JSON jobs
    /// always send `inputs`.
    pub pack: bool,
    /// Jobs published before their confirms are awaited.
    pub publish_window: usize,
    /// Jobs read and not yet written out (in flight or waiting for an earlier job) at
    /// most: what bounds a streaming run's memory.
    pub max_in_flight: usize,
    /// Bytes held by those jobs (as their sources count them) at most; the window
    /// always holds at least one job.
    pub max_in_flight_bytes: usize,
    /// Continue the run with this id after the jobs it already wrote (`None`: a new
    /// run with a new id).
    pub resume: Option<ResumeFrom>,
    /// Bounds on broker awaits.
    pub timeouts: Timeouts,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
    /// Limits applied to incoming results.
    pub limits: Limits,
    /// Say so when nothing has consumed the model's queue for this long.
    pub idle_hint_after: Duration,
    /// Repeat that at most this often while it lasts.
    pub idle_hint_every: Duration,
}

impl ScoreConfig {
    /// Defaults for everything but the URL and model.
    pub fn new(url: AmqpUrl, model: impl Into<String>) -> Self {
        Self {
            url,
            topology: Topology::default(),
            model: model.into(),
            version: None,
            rows_per_job: 256,
            job_timeout: Duration::from_secs(60),
            timeout: None,
            encoding: Encoding::Msgpack,
            pack: true,
            publish_window: 1000,
            max_in_flight: 2048,
            max_in_flight_bytes: 64 << 20,
            resume: None,
            timeouts: Timeouts::default(),
            progress: false,
            limits: Limits::default(),
            idle_hint_after: Duration::from_secs(10),
            idle_hint_every: Duration::from_secs(30),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Input rows.
    pub rows: usize,
    /// Jobs in the run.
    pub jobs: usize,
    /// Rows scored.
    pub rows_ok: usize,
    /// Rows whose job failed.
    pub rows_failed: usize,
    /// Failed rows by error kind.
    pub failures: BTreeMap<String, usize>,
    /// Results dropped because their job was already answered.
    pub duplicates: u64,
    /// Results that belonged to no job of this run.
    pub strays: u64,
    /// Jobs published again after their result was overdue.
    pub republished: u64,
    /// Jobs of a resumed run answered by results the killed run left in its reply
    /// queue: never published again.
    pub collected: u64,
    /// Connections lost and re-made.
    pub reconnects: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl Summary {
    /// Rows scored per second of wall time.
    pub fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The outcome of a run: one outcome per input row, in input order.
#[derive(Debug, Clone)]
pub struct Scored {
    /// Names of the output columns (empty for embeddings).
    pub output_names: Vec<String>,
    /// One per input row.
    pub outcomes: Vec<RowOutcome>,
    /// Counts.
    pub summary: Summary,
}

/// Scores the selected cells of `table` with `cfg.model` through the broker. Every
/// cell is checked before the first job is published; the selection's names travel
/// as each job's `columns`.
pub async fn score_table(
    cfg: &ScoreConfig,
    table: &Table,
    selection: &Selection,
) -> Result<Scored, ClientError> {
    let jobs = plan("", table.records.len(), cfg.rows_per_job);
    let inputs: Vec<Inputs> = jobs
        .iter()
        .map(|j| table.inputs(selection, j.start, j.end))
        .collect::<Result<_, _>>()?;
    let columns = match selection {
        Selection::Features { names, .. } => names.clone(),
        Selection::Text(_) => None,
    };
    let answered = score_jobs_with_columns(cfg, inputs, columns).await?;
    Ok(answered.into_scored())
}

/// Every job of a run with its result, in job order, and the run's counters.
#[derive(Debug)]
pub struct Answered {
    /// Each job (rows `start..end` of the input) with its result.
    pub jobs: Vec<(tracker::PlannedJob, JobResult)>,
    /// Counters; the row counts are filled by [`Answered::into_scored`].
    pub summary: Summary,
}

/// Publishes one job per element of `inputs` and waits until each is answered once.
/// The rows go by position: in the model's feature order.
pub async fn score_jobs(cfg: &ScoreConfig, inputs: Vec<Inputs>) -> Result<Answered, ClientError> {
    score_jobs_with_columns(cfg, inputs, None).await
}

/// [`score_jobs`] with the names of each row's values, sent as every job's `columns`
/// so that the worker matches them to the model's features by name. Every job is
/// published at once (the inputs are in memory already); [`score_stream`] is the
/// bounded form.
pub async fn score_jobs_with_columns(
    cfg: &ScoreConfig,
    inputs: Vec<Inputs>,
    columns: Option<Vec<String>>,
) -> Result<Answered, ClientError> {
    let total_rows: usize = inputs.iter().map(Inputs::len).sum();
    let n = inputs.len();
    let mut cfg = cfg.clone();
    cfg.max_in_flight = usize::MAX;
    cfg.max_in_flight_bytes = usize::MAX;
    let (src_tx, src_rx) = mpsc::channel(n.max(1));
    for inputs in inputs {
        // The channel holds every job: this never waits.
        let _ = src_tx.try_send(Ok(SourceJob {
            inputs,
            payload: (),
            bytes: 0,
        }));
    }
    drop(src_tx);
    let (sink_tx, mut sink_rx) = mpsc::channel::<DoneJob<()>>(1024);
    let collect = tokio::spawn(async move {
        let mut jobs = Vec::with_capacity(n);
        while let Some(d) = sink_rx.recv().await {
            jobs.push((d.job, d.result));
        }
        jobs
    });
    let summary = score_stream(&cfg, columns, Some(total_rows), src_rx, sink_tx).await?;
    let jobs = collect
        .await
        .map_err(|e| ClientError::Output(format!("collecting results: {e}")))?;
    let summary = Summary {
        rows_ok: 0,
        rows_failed: 0,
        failures: BTreeMap::new(),
        ..summary
    };
    Ok(Answered { jobs, summary })
}

/// A job read from the input: what it sends, and what goes with it to the output.
#[derive(Debug)]
pub struct SourceJob<T> {
    /// The rows or texts sent.
    pub inputs: Inputs,
    /// The input rows to write back with the results (opaque to the run).
    pub payload: T,
    /// About how much memory the job holds, for [`ScoreConfig::max_in_flight_bytes`].
    pub bytes: usize,
}

/// A job answered, handed on in input order.
#[derive(Debug)]
pub struct DoneJob<T> {
    /// Its id and rows.
    pub job: tracker::PlannedJob,
    /// What came with it from the source.
    pub payload: T,
    /// Its (first) result.
    pub result: JobResult,
}

/// How the rows of one answered job came out: the outputs of each row, or the one
/// error message of them all.
pub fn job_outcome(job: &tracker::PlannedJob, r: &JobResult) -> Result<(), (String, String)> {
    let n = job.end - job.start;
    match (r.status, r.outputs.len() == n) {
        (Status::Ok, true) => Ok(()),
        _ => Err(match &r.error {
            Some(e) => (
                e.kind.as_str().to_string(),
                format!("{}: {}", e.kind, e.message),
            ),
            None => (
                "internal".to_string(),
                format!(
                    "internal: the worker returned {} outputs for {n} rows",
                    r.outputs.len()
                ),
            ),
        }),
    }
}

/// Scores the jobs that `source` yields, with a bounded window in flight: at most
/// [`ScoreConfig::max_in_flight`] jobs (and about [`ScoreConfig::max_in_flight_bytes`])
/// are read and not yet handed on, so a run of any length holds only that much. Each
/// job is handed to `sink` once answered and once every job before it has been, so
/// the sink sees them in input order. Results that arrive twice are dropped, overdue
/// jobs are published again, and a lost connection is re-made. An `Err` from the
/// source ends the run with that error. `total_rows`, when known, sizes the progress
/// bar. The summary's row counts are those of the jobs handed on.
pub async fn score_stream<T: Send>(
    cfg: &ScoreConfig,
    columns: Option<Vec<String>>,
    total_rows: Option<usize>,
    source: mpsc::Receiver<Result<SourceJob<T>, ClientError>>,
    sink: mpsc::Sender<DoneJob<T>>,
) -> Result<Summary, ClientError> {
    let started = Instant::now();
    let run_id = match &cfg.resume {
        Some(r) => r.run_id.clone(),
        None => new_run_id(),
    };
    let reply_queue = format!("{}.reply.{run_id}", cfg.topology.prefix());
    let bar = match (cfg.progress, total_rows) {
        (true, Some(n)) => ProgressBar::new(n as u64),
        (true, None) => ProgressBar::no_length(),
        (false, _) => ProgressBar::hidden(),
    };
    bar.set_style(bar_style(false));
    info!(
        run = %run_id,
        rows = ?total_rows,
        model = %cfg.model,
        packed = cfg.pack && cfg.encoding == Encoding::Msgpack,
        by_name = columns.is_some(),
        max_in_flight = cfg.max_in_flight,
        "scoring"
    );
    let mut reconnects = 0u64;
    let mut backoff = Duration::from_millis(100);
    let ctx = RunCtx {
        cfg,
        columns: columns.as_deref(),
        reply_queue: &reply_queue,
        bar: &bar,
        started,
        trace: tracing::info_span!(
            target: telemetry::TARGET,
            parent: None,
            "score-batch",
            run = %run_id,
            model = %cfg.model,
        ),
    };
    let expected_jobs = total_rows.map(|r| r.div_ceil(cfg.rows_per_job.max(1)));
    let mut watch = Watches {
        idle: IdleWatch::new(cfg.idle_hint_after, cfg.idle_hint_every).idle_from(started),
        fail: FailWatch::new(expected_jobs.unwrap_or(3).min(3)),
        idle_hint: None,
    };
    let mut run = Run {
        window: match &cfg.resume {
            Some(r) => {
                let mut w = Window::starting_at(&run_id, r.jobs, r.rows);
                // The killed run had at most `max_in_flight` jobs past the last one it
                // wrote, and may have written a few more than its state file says.
                w.hold_until(r.jobs + 2 * cfg.max_in_flight.max(1) + 64);
                w
            }
            None => Window::new(&run_id),
        },
        collect_first: cfg.resume.is_some(),
        bytes: 0,
        source,
        source_done: false,
        sink,
        summary: Summary::default(),
    };
    loop {
        match ctx.session(&mut run, &mut watch).await {
            Ok(()) => break,
            Err(ClientError::Broker(e)) if e.is_connection_loss() => {
                reconnects += 1;
                warn!(error = %e, retry_in = ?backoff, "broker connection lost; reconnecting");
                ctx.check_timeout(&run, &watch)?;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
    bar.finish_and_clear();
    let w = &run.window;
    Ok(Summary {
        jobs: w.pushed(),
        duplicates: w.duplicates,
        strays: w.strays,
        republished: w.republished,
        collected: w.collected,
        reconnects,
        elapsed: started.elapsed(),
        ..run.summary
    })
}

/// The state of a streaming run, kept across reconnects.
struct Run<T> {
    window: Window<(T, usize)>,
    /// Bytes held by the jobs in the window.
    bytes: usize,
    source: mpsc::Receiver<Result<SourceJob<T>, ClientError>>,
    source_done: bool,
    sink: mpsc::Sender<DoneJob<T>>,
    summary: Summary,
    /// A resumed run takes what waits in its reply queue before it publishes anything.
    collect_first: bool,
}

impl<T> Run<T> {
    fn has_room(&self, cfg: &ScoreConfig) -> bool {
        !self.source_done
            && self.window.len() < cfg.max_in_flight.max(1)
            && (self.window.is_empty() || self.bytes < cfg.max_in_flight_bytes)
    }

    fn push(&mut self, job: SourceJob<T>) -> usize {
        self.bytes += job.bytes;
        self.window.push(job.inputs, (job.payload, job.bytes))
    }

    fn is_complete(&self) -> bool {
        self.source_done && self.window.is_empty()
    }

    /// Hands on, in order, every answered job at the front of the window.
    async fn hand_on(&mut self) -> Result<(), ClientError> {
        while let Some((job, (payload, bytes), result)) = self.window.pop_done() {
            self.bytes = self.bytes.saturating_sub(bytes);
            let n = job.end - job.start;
            self.summary.rows += n;
            match job_outcome(&job, &result) {
                Ok(()) => self.summary.rows_ok += n,
                Err((kind, _)) => {
                    self.summary.rows_failed += n;
                    *self.summary.failures.entry(kind).or_default() += n;
                }
            }
            self.sink
                .send(DoneJob {
                    job,
                    payload,
                    result,
                })
                .await
                .map_err(|_| ClientError::Output("the output writer stopped".into()))?;
        }
        Ok(())
    }
}

impl Answered {
    /// One outcome per input row, in input order, and the row counters.
    pub fn into_scored(self) -> Scored {
        let mut summary = self.summary;
        let mut output_names = Vec::new();
        let mut outcomes = Vec::with_capacity(summary.rows);
        summary.rows = 0;
        for (job, r) in self.jobs {
            let n = job.end - job.start;
            summary.rows += n;
            match job_outcome(&job, &r) {
                Ok(()) => {
                    if output_names.is_empty() {
                        output_names = r.output_names.clone();
                    }
                    summary.rows_ok += n;
                    outcomes.extend(r.outputs.into_iter().map(RowOutcome::Scored));
                }
                Err((kind, msg)) => {
                    summary.rows_failed += n;
                    *summary.failures.entry(kind).or_default() += n;
                    outcomes.extend((0..n).map(|_| RowOutcome::Failed(msg.clone())));
                }
            }
        }
        Scored {
            output_names,
            outcomes,
            summary,
        }
    }
}

/// The progress bar's look; `with_hint` adds a second line for [`ProgressBar::set_message`].
fn bar_style(with_hint: bool) -> ProgressStyle {
    let template = if with_hint {
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} rows  {per_sec}  ETA {eta}\n{msg}"
    } else {
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} rows  {per_sec}  ETA {eta}"
    };
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

struct RunCtx<'a> {
    cfg: &'a ScoreConfig,
    columns: Option<&'a [String]>,
    reply_queue: &'a str,
    bar: &'a ProgressBar,
    started: Instant,
    /// The run's trace span, parent of every publish span (disabled with no exporter).
    trace: tracing::Span,
}

/// The run's hints, kept across reconnects.
struct Watches {
    idle: IdleWatch,
    fail: FailWatch,
    /// The idle hint while it stands, for the `--timeout` error.
    idle_hint: Option<String>,
}

enum Incoming {
    Result(Box<JobResult>),
    Lost(BrokerError),
}

impl RunCtx<'_> {
    fn check_timeout<T>(&self, run: &Run<T>, watch: &Watches) -> Result<(), ClientError> {
        match self.cfg.timeout {
            Some(after) if self.started.elapsed() >= after => Err(ClientError::Timeout {
                answered: run.window.done(),
                total: run.window.pushed(),
                after,
                hint: watch.idle_hint.clone().unwrap_or_else(|| {
                    format!(
                        "are workers running for model {}? (`surge worker --model {}`, with the same --prefix; check their logs)",
                        self.cfg.model, self.cfg.model
                    )
                }),
            }),
            _ => Ok(()),
        }
    }

    /// What to check when nobody consumes the model's queue.
    fn idle_advice(&self) -> String {
        let shards = match self.cfg.topology.shards() {
            1 => String::new(),
            n => format!(" and --shards {n}"),
        };
        format!(
            "is a worker running with models/{} and --prefix {}{shards}? check `surge models list` and the worker logs",
            self.cfg.model,
            self.cfg.topology.prefix(),
        )
    }

    /// Looks at the consumer count of the model's queue (on a channel of its own: a
    /// passive declare that fails closes its channel) and says what there is to say.
    async fn probe_idle<T>(
        &self,
        conn: &lapin::Connection,
        probe: &mut Option<lapin::Channel>,
        run: &Run<T>,
        watch: &mut Watches,
    ) {
        let t = &self.cfg.timeouts;
        if probe.is_none() {
            match timed("channel.open", t.operation, conn.create_channel()).await {
                Ok(ch) => *probe = Some(ch),
                Err(e) => {
                    debug!(error = %e, "could not open a channel to watch the job queue");
                    return;
                }
            }
        }
        let Some(ch) = probe.as_ref() else { return };
        let (depth, queue) = match topology::model_depth(ch, &self.cfg.topology, &self.cfg.model, t)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                debug!(error = %e, model = %self.cfg.model, "could not read the job queues' consumer counts");
                *probe = None;
                return;
            }
        };
        match watch.idle.observe(depth.consumers, Instant::now()) {
            IdleSignal::Quiet => {}
            IdleSignal::Idle(idle) => {
                let hint = format!(
                    "no worker consumes {} (for {} s; {} of {} jobs answered): {}",
                    queue,
                    idle.as_secs(),
                    run.window.done(),
                    run.window.pushed(),
                    self.idle_advice()
                );
                if self.cfg.progress {
                    self.bar.set_style(bar_style(true));
                    self.bar.set_message(hint);
                } else {
                    warn!("{hint}");
                }
                watch.idle_hint = Some(format!(
                    "no worker consumes {}: {}",
                    queue,
                    self.idle_advice()
                ));
            }
            IdleSignal::Resumed => {
                watch.idle_hint = None;
                if self.cfg.progress {
                    self.bar.set_message("");
                    self.bar.set_style(bar_style(false));
                } else {
                    info!(%queue, consumers = depth.consumers, "a worker consumes the job queue now");
                }
            }
        }
    }

    /// One connected session: declare, consume results, publish what is unpublished,
    /// wait until every job is answered. Returns `Err` on a lost connection.
    async fn session<T: Send>(
        &self,
        run: &mut Run<T>,
        watch: &mut Watches,
    ) -> Result<(), ClientError> {
        let cfg = self.cfg;
        let t = &cfg.timeouts;
        let conn = surge_broker::connect(&cfg.url, "score-batch", t).await?;
        let res = self.connected(&conn, run, watch).await;
        let _ = tokio::time::timeout(t.operation, conn.close(200, "score-batch done".into())).await;
        res
    }

    async fn connected<T: Send>(
        &self,
        conn: &lapin::Connection,
        run: &mut Run<T>,
        watch: &mut Watches,
    ) -> Result<(), ClientError> {
        let cfg = self.cfg;
        let t = &cfg.timeouts;
        let ch = timed("channel.open", t.operation, conn.create_channel()).await?;
        timed(
            "confirm.select",
            t.operation,
            ch.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        // Declaring the model's queue here means jobs wait safely even when no worker
        // has started yet.
        topology::declare_base(&ch, &cfg.topology, t).await?;
        topology::declare_model(&ch, &cfg.topology, &cfg.model, t).await?;
        // The run's own reply queue: durable (results survive a broker restart), and
        // deleted by the broker an hour after the run stops using it.
        let mut args = FieldTable::default();
        args.insert("x-expires".into(), AMQPValue::LongLongInt(3_600_000));
        let opts = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        timed(
            "queue.declare",
            t.operation,
            ch.queue_declare(self.reply_queue.into(), opts, args),
        )
        .await?;

        let cch = timed("channel.open", t.operation, conn.create_channel()).await?;
        timed(
            "basic.qos",
            t.operation,
            cch.basic_qos(2000, BasicQosOptions::default()),
        )
        .await?;
        let mut consumer = timed(
            "basic.consume",
            t.operation,
            cch.basic_consume(
                self.reply_queue.into(),
                "score-batch".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        let (tx, mut rx) = mpsc::channel::<Incoming>(4096);
        let limits = cfg.limits;
        let op_timeout = t.operation;
        let queue = self.reply_queue.to_string();
        let run_trace = self.trace.clone();
        let reader = tokio::spawn(async move {
            loop {
                let d = match consumer.next().await {
                    Some(Ok(d)) => d,
                    Some(Err(source)) => {
                        let _ = tx
                            .send(Incoming::Lost(BrokerError::Amqp {
                                what: "consume results",
                                source,
                            }))
                            .await;
                        return;
                    }
                    None => {
                        let _ = tx
                            .send(Incoming::Lost(BrokerError::ConsumerEnded { queue }))
                            .await;
                        return;
                    }
                };
                // A result's trace runs on here: a consumer span, the child of the
                // worker's job span (the result's `traceparent`), else of the run's.
                let span = surge_ops::process_span!(
                    parent: &run_trace,
                    "receive",
                    &queue,
                    messaging.message.id = d.properties.message_id().as_ref().map_or("", |s| s.as_str()),
                );
                if !span.is_disabled() {
                    if let Some(Ok(tp)) = surge_broker::headers::traceparent(&d.properties) {
                        telemetry::set_parent(&span, &tp);
                    }
                }
                let ct = d.properties.content_type().as_ref().map(|s| s.to_string());
                let decoded = Encoding::from_content_type(ct.as_deref(), &d.data)
                    .and_then(|enc| decode_result(&d.data, enc, &limits));
                match decoded {
                    Ok(r) => {
                        if tx.send(Incoming::Result(Box::new(r))).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "dropping a message on the reply queue that is not a v1 result")
                    }
                }
                // Acked once handed over: the run holds results in memory from here on.
                if let Err(e) = timed(
                    "basic.ack",
                    op_timeout,
                    d.acker.ack(BasicAckOptions::default()),
                )
                .await
                {
                    let _ = tx.send(Incoming::Lost(e)).await;
                    return;
                }
            }
        });

        let mut probe = None;
        let outcome = self
            .publish_and_wait(conn, &ch, &mut probe, run, watch, &mut rx)
            .await;
        if let Some(p) = probe {
            let _ =
                tokio::time::timeout(t.operation, p.close(200, "score-batch done".into())).await;
        }
        // Cancel the consumer, then close its channel, then (in `session`) the
        // connection: closing under a live consumer makes lapin log a spurious
        // channel-state error.
        let _ = tokio::time::timeout(
            t.operation,
            cch.basic_cancel("score-batch".into(), BasicCancelOptions::default()),
        )
        .await;
        reader.abort();
        let _ = tokio::time::timeout(t.operation, cch.close(200, "score-batch done".into())).await;
        if outcome.is_ok() {
            let _ = timed(
                "queue.delete",
                t.operation,
                ch.queue_delete(self.reply_queue.into(), QueueDeleteOptions::default()),
            )
            .await;
        }
        // Closed here rather than on drop, which lapin does in the background and which
        // would race the connection's close.
        let _ = tokio::time::timeout(t.operation, ch.close(200, "score-batch done".into())).await;
        outcome
    }

    async fn publish_and_wait<T: Send>(
        &self,
        conn: &lapin::Connection,
        ch: &lapin::Channel,
        probe: &mut Option<lapin::Channel>,
        run: &mut Run<T>,
        watch: &mut Watches,
        rx: &mut mpsc::Receiver<Incoming>,
    ) -> Result<(), ClientError> {
        if run.collect_first {
            run.collect_first = false;
            self.collect_waiting(run, rx).await?;
        }
        self.publish(ch, run, run.window.unpublished()).await?;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        // The consumer count is read a few times per hint period, at most every 2 s.
        let probe_every = (self.cfg.idle_hint_after / 4)
            .clamp(Duration::from_millis(250), Duration::from_secs(2));
        let mut last_probe: Option<Instant> = None;
        while !run.is_complete() {
            let room = run.has_room(self.cfg);
            tokio::select! {
                item = run.source.recv(), if room => {
                    let mut fresh = Vec::new();
                    match item {
                        Some(Ok(job)) => fresh.push(run.push(job)),
                        Some(Err(e)) => return Err(e),
                        None => run.source_done = true,
                    }
                    // Whatever else is ready goes in the same publish window.
                    while run.has_room(self.cfg) {
                        match run.source.try_recv() {
                            Ok(Ok(job)) => fresh.push(run.push(job)),
                            Ok(Err(e)) => return Err(e),
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => run.source_done = true,
                        }
                    }
                    if !fresh.is_empty() {
                        self.publish(ch, run, fresh).await?;
                    }
                    if run.source_done {
                        self.bar.set_length(run.window.pushed_rows() as u64);
                    }
                }
                msg = rx.recv() => match msg {
                    Some(Incoming::Result(r)) => {
                        // Only a job's first result counts towards "every job failed".
                        let said = if run.window.is_pending(&r.job_id) {
                            watch.fail.record(&r)
                        } else {
                            None
                        };
                        if run.window.record(*r) == Recorded::New {
                            self.bar.set_position(run.window.rows_done() as u64);
                            run.hand_on().await?;
                        }
                        if let Some(said) = said {
                            self.bar.suspend(|| warn!(model = %self.cfg.model, "{said}"));
                        }
                    }
                    Some(Incoming::Lost(e)) => return Err(e.into()),
                    None => return Err(BrokerError::ConsumerEnded { queue: self.reply_queue.to_string() }.into()),
                },
                _ = tick.tick() => {
                    self.check_timeout(run, watch)?;
                    if last_probe.is_none_or(|at| at.elapsed() >= probe_every) {
                        last_probe = Some(Instant::now());
                        self.probe_idle(conn, probe, run, watch).await;
                    }
                    let overdue = run.window.overdue(Instant::now(), self.cfg.job_timeout);
                    if !overdue.is_empty() {
                        info!(
                            jobs = overdue.len(),
                            dead_letters = %self.cfg.topology.dead_queue(),
                            "results overdue; publishing those jobs again (if this repeats, look for them in the dead-letter queue and check the worker logs)"
                        );
                        run.window.republished += overdue.len() as u64;
                        self.publish(ch, run, overdue).await?;
                    }
                    let unpublished = run.window.unpublished();
                    if !unpublished.is_empty() {
                        self.publish(ch, run, unpublished).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A resumed run's first step: takes the results the killed run left in its reply
    /// queue (and those still coming for jobs it had published), until none has come
    /// for half a second or ten seconds have passed, so that the jobs they answer are
    /// not published again.
    async fn collect_waiting<T>(
        &self,
        run: &mut Run<T>,
        rx: &mut mpsc::Receiver<Incoming>,
    ) -> Result<(), ClientError> {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            match tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
                Err(_) => break,
                Ok(Some(Incoming::Result(r))) => {
                    run.window.record(*r);
                }
                Ok(Some(Incoming::Lost(e))) => return Err(e.into()),
                Ok(None) => {
                    return Err(BrokerError::ConsumerEnded {
                        queue: self.reply_queue.to_string(),
                    }
                    .into())
                }
            }
        }
        info!(
            held = run.window.held(),
            "collected the results the killed run left in its reply queue; their jobs are not published again"
        );
        Ok(())
    }

    /// Publishes jobs `indices` in windows, marking each confirmed one. A nacked job
    /// stays unpublished and goes again on the next tick.
    async fn publish<T>(
        &self,
        ch: &lapin::Channel,
        run: &mut Run<T>,
        indices: Vec<usize>,
    ) -> Result<(), ClientError> {
        let cfg = self.cfg;
        let t = &cfg.timeouts;
        let exchange = cfg.topology.jobs_exchange();
        for window in indices.chunks(cfg.publish_window.max(1)) {
            let mut pending = Vec::with_capacity(window.len());
            for &i in window {
                let Some(slot) = run.window.slot(i) else {
                    continue;
                };
                if matches!(slot.state, JobState::Done(_)) {
                    continue;
                }
                let id = slot.job.id.clone();
                let route = cfg.topology.job_routing_key(&cfg.model, &id);
                let job = JobRef {
                    v: PROTOCOL_VERSION,
                    model: &cfg.model,
                    version: cfg.version.as_deref(),
                    inputs: &slot.inputs,
                    columns: self.columns,
                    deadline_ms: None,
                    sent_ms: Some(now_ms()),
                };
                let body = encode_job_ref(job, cfg.encoding, cfg.pack)
                    .map_err(|e| ClientError::Input(e.to_string()))?;
                let props = BasicProperties::default()
                    .with_message_id(id.as_str().into())
                    .with_correlation_id(id.as_str().into())
                    .with_reply_to(self.reply_queue.into())
                    .with_content_type(cfg.encoding.content_type().into())
                    .with_delivery_mode(2)
                    .with_timestamp(now_ms() / 1000);
                // One producer span per publish, ended by its confirm; the job carries
                // its context to the worker (W3C `traceparent`).
                let span = tracing::info_span!(
                    target: telemetry::TARGET,
                    parent: &self.trace,
                    "publish",
                    otel.name = %SpanName("publish", &exchange),
                    otel.kind = "producer",
                    messaging.system = "rabbitmq",
                    messaging.operation.type = "send",
                    messaging.operation.name = "publish",
                    messaging.destination.name = %exchange,
                    messaging.rabbitmq.destination.routing_key = %route,
                    messaging.message.id = %id,
                );
                let props = match telemetry::traceparent(&span) {
                    Some(tp) => surge_broker::headers::with_traceparent(props, &tp),
                    None => props,
                };
                pending.push((
                    i,
                    id,
                    start_publish(ch, &exchange, &route, &body, props, t).await?,
                    span,
                ));
            }
            for (i, id, confirm, _span) in pending {
                match confirmed(confirm, &exchange, &cfg.model, t).await {
                    Ok(()) => run.window.published(i, Instant::now()),
                    Err(BrokerError::Nacked { .. }) => {
                        warn!(job = %id, "the broker refused a job (queue full?); will retry")
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        debug!(in_flight = run.window.len(), "publish window done");
        Ok(())
    }
}
