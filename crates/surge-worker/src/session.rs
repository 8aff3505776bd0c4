//! One connected session: consume, batch, score, publish confirmed results, ack.
//!
//! The life of a job inside a session:
//! delivery → [`prepare`](crate::prepare) → gathered into a batch (per model queue) →
//! forward pass on the model thread → results published with `mandatory` and
//! confirms → the job acked only after its result is confirmed (that last part is
//! [`answer`](crate::answer)).
//!
//! Any broker error ends the session; the caller reconnects. Unacked jobs are then
//! redelivered by the broker, so nothing is lost, and a job may be answered twice:
//! results carry the job id and consumers deduplicate.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Consumer};
use surge_broker::{timed, topology, BrokerError};
use surge_protocol::{now_ms, ErrorKind, Inputs, Job, JobResult, Timings};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{info, warn, Instrument};

use crate::answer::{Acks, Item, Outcome};
use crate::batcher::{AckFrontier, Fill, Gathering};
use crate::drain::Answered;
use crate::engine::{BatchInputs, ModelKey};
use crate::metrics as m;
use crate::prepare::{prepare, Disposition, Envelope};
use crate::shutdown::Shutdown;
use crate::Shared;

/// How many batches per model may be past gathering (on the model thread or
/// publishing) at once: one scoring while the previous one publishes.
const PIPELINE_DEPTH: usize = 2;

/// Why a session ended other than by shutdown. The caller reconnects, except after a
/// [`BrokerError::Mismatch`], which retrying cannot fix.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    /// The broker or the connection failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The broker cancelled a consumer (its queue was deleted, or the node holding it
    /// went away).
    #[error("the broker cancelled the consumer of {queue} (queue deleted, or its node down)")]
    ConsumerCancelled {
        /// The queue.
        queue: String,
    },
    /// A task of the session panicked: a bug.
    #[error("a {what} task failed: {reason}")]
    Task {
        /// Which task.
        what: &'static str,
        /// The panic.
        reason: String,
    },
    /// A result could not be encoded (a non-serialisable value: a bug).
    #[error("could not encode a result: {0}")]
    Encode(String),
}

/// What the batch tasks of one queue share.
pub(crate) struct QueueCtx {
    /// The job queue.
    pub(crate) queue: String,
    /// The consumer's channel: acks go here.
    pub(crate) channel: Channel,
    /// The confirm-mode channel results and dead letters are published on.
    pub(crate) publisher: Channel,
    /// Which deliveries may be acked together.
    pub(crate) acks: Acks,
    /// Jobs answered in this session, for the drain estimate.
    pub(crate) answered: Arc<Answered>,
}

/// Runs one connected session until shutdown (`Ok`) or a broker error (`Err`).
pub(crate) async fn run_session(
    shared: Arc<Shared>,
    shutdown: Shutdown,
) -> Result<(), SessionError> {
    let cfg = &shared.config;
    let t = &cfg.timeouts;
    let conn =
        surge_broker::connect(&cfg.url, &format!("surge-worker {}", shared.worker_id), t).await?;
    let result = async {
        let publisher = topology::publishing_channel(&conn, &cfg.topology, t).await?;
        let names = shared.engine.model_names();
        let answered = Arc::new(Answered::default());
        let mut tasks = JoinSet::new();
        let mut serving = std::collections::BTreeSet::new();
        for model in names {
            start_consumer(&shared, &conn, &publisher, &model, &mut tasks, &shutdown, &answered).await?;
            serving.insert(model);
        }
        shared.ready.store(true, Ordering::Relaxed);
        metrics::gauge!(m::CONNECTED).set(1.0);
        let spawn_watcher = |models: Vec<String>, ch: Channel| {
            AbortOnDrop(tokio::spawn(crate::drain::watch(
                ch,
                cfg.topology.clone(),
                models,
                *t,
                answered.clone(),
            )))
        };
        let ch = timed("channel.open", t.operation, conn.create_channel()).await?;
        let mut watch_ch = ch.clone();
        let mut watcher = spawn_watcher(serving.iter().cloned().collect(), ch);
        // Models found after start (hot discovery) join the running session.
        let mut look = tokio::time::interval(std::time::Duration::from_millis(250));
        loop {
            tokio::select! {
                joined = tasks.join_next() => match joined {
                    None => break,
                    Some(Ok(Ok(()))) => {}
                    Some(Ok(Err(e))) => {
                        tasks.abort_all();
                        return Err(e);
                    }
                    Some(Err(join_error)) => {
                        tasks.abort_all();
                        warn!(error = %join_error, "a queue task panicked; restarting the session");
                        return Err(SessionError::Task { what: "queue", reason: join_error.to_string() });
                    }
                },
                _ = look.tick(), if !shutdown.is_triggered() => {
                    let fresh: Vec<String> = shared
                        .engine
                        .model_names()
                        .into_iter()
                        .filter(|k| !serving.contains(k))
                        .collect();
                    if fresh.is_empty() {
                        continue;
                    }
                    for model in fresh {
                        start_consumer(&shared, &conn, &publisher, &model, &mut tasks, &shutdown, &answered)
                            .await?;
                        info!(%model, "serving a model found after start");
                        serving.insert(model);
                    }
                    let ch = timed("channel.open", t.operation, conn.create_channel()).await?;
                    watch_ch = ch.clone();
                    watcher = spawn_watcher(serving.iter().cloned().collect(), ch);
                }
            }
        }
        // Drained: close the channels before the connection. Dropped instead, lapin
        // closes them in the background, racing the connection's close, and logs a
        // spurious channel-state error.
        drop(watcher);
        for ch in [&watch_ch, &publisher] {
            let _ =
                tokio::time::timeout(t.operation, ch.close(200, "surge worker stopping".into()))
                    .await;
        }
        Ok(())
    }
    .await;
    shared.ready.store(false, Ordering::Relaxed);
    metrics::gauge!(m::CONNECTED).set(0.0);
    // Closing returns every unacked delivery to its queue. Best effort: after a broker
    // error the connection may already be gone.
    let _ =
        tokio::time::timeout(t.operation, conn.close(200, "surge worker stopping".into())).await;
    result
}

/// The model version that scores a prepared job: `prepare` has set its version.
fn engine_key(job: &Job) -> ModelKey {
    (job.model.clone(), job.version.clone().unwrap_or_default())
}

/// Declares `model`'s queues (the unsharded one and, with shards, each shard) and
/// starts consuming each on a channel of its own; each queue gathers its own batches.
async fn start_consumer(
    shared: &Arc<Shared>,
    conn: &lapin::Connection,
    publisher: &Channel,
    model: &str,
    tasks: &mut JoinSet<Result<(), SessionError>>,
    shutdown: &Shutdown,
    answered: &Arc<Answered>,
) -> Result<(), BrokerError> {
    let cfg = &shared.config;
    let t = &cfg.timeouts;
    let prefetch = cfg
        .prefetch
        .unwrap_or_else(|| cfg.policy.default_prefetch());
    topology::declare_model(publisher, &cfg.topology, model, t).await?;
    for (queue, key) in cfg.topology.job_queues(model) {
        let ch = timed("channel.open", t.operation, conn.create_channel()).await?;
        timed(
            "basic.qos",
            t.operation,
            ch.basic_qos(prefetch, BasicQosOptions::default()),
        )
        .await?;
        let tag = format!("{}/{key}", shared.worker_id);
        let consumer = timed(
            "basic.consume",
            t.operation,
            ch.basic_consume(
                queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        info!(%queue, prefetch, "consuming");
        let ctx = Arc::new(QueueCtx {
            queue,
            channel: ch,
            publisher: publisher.clone(),
            acks: Arc::new(tokio::sync::Mutex::new(AckFrontier::default())),
            answered: answered.clone(),
        });
        tasks.spawn(serve_queue(shared.clone(), ctx, consumer, shutdown.clone()));
    }
    Ok(())
}

/// Aborts a helper task when the session ends, however it ends.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn envelope(props: &BasicProperties) -> Envelope {
    Envelope {
        message_id: props.message_id().as_ref().map(|s| s.to_string()),
        content_type: props.content_type().as_ref().map(|s| s.to_string()),
        timestamp: *props.timestamp(),
    }
}

/// Consumes one job queue: gathers deliveries into batches and hands each closed
/// batch to a pipeline task.
async fn serve_queue(
    shared: Arc<Shared>,
    q: Arc<QueueCtx>,
    mut consumer: Consumer,
    shutdown: Shutdown,
) -> Result<(), SessionError> {
    let cfg = &shared.config;
    let pipeline = Arc::new(Semaphore::new(PIPELINE_DEPTH));
    let mut running: JoinSet<Result<(), SessionError>> = JoinSet::new();
    let mut batch: Gathering<Item> = Gathering::new(cfg.policy);
    let task_failed = |e: tokio::task::JoinError| SessionError::Task {
        what: "batch",
        reason: e.to_string(),
    };
    loop {
        let deadline = batch.deadline().map(tokio::time::Instant::from_std);
        let mut close = false;
        tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            Some(done) = running.join_next(), if !running.is_empty() => {
                done.map_err(task_failed)??;
                // A pipeline slot freed up: a waiting batch need not wait any longer.
                close = batch.close_when_drained(pipeline.available_permits() == PIPELINE_DEPTH);
            }
            _ = sleep_until_opt(deadline), if deadline.is_some() => close = true,
            next = consumer.next() => {
                let mut next = next;
                loop {
                    let delivery = match next {
                        Some(Ok(d)) => d,
                        Some(Err(source)) => return Err(BrokerError::Amqp { what: "consume", source }.into()),
                        None => return Err(SessionError::ConsumerCancelled { queue: q.queue.clone() }),
                    };
                    metrics::gauge!(m::IN_FLIGHT).increment(1.0);
                    let item = make_item(&shared, delivery);
                    if !batch.fits(item.fill) {
                        dispatch(&shared, &q, &pipeline, &mut running, batch.take()).await;
                    }
                    let fill = item.fill;
                    if batch.push(item, fill, Instant::now()) {
                        close = true;
                        break;
                    }
                    // Take whatever else is ready right now, without waiting.
                    match consumer.next().now_or_never() {
                        Some(more) => next = more,
                        None => break,
                    }
                }
                // Nothing more is ready: with the model idle, waiting would only add
                // latency; with it busy, the batch keeps growing for free.
                let model_idle = pipeline.available_permits() == PIPELINE_DEPTH;
                close = close || batch.close_when_drained(model_idle);
            }
        }
        if close && !batch.is_empty() {
            dispatch(&shared, &q, &pipeline, &mut running, batch.take()).await;
        }
    }

    // Graceful drain: stop deliveries, return what has not started, finish the rest.
    info!(queue = %q.queue, "draining: cancelling the consumer");
    let tag = consumer.tag();
    let _ = timed(
        "basic.cancel",
        cfg.timeouts.operation,
        q.channel.basic_cancel(tag, BasicCancelOptions::default()),
    )
    .await;
    for item in batch.take() {
        let _ = crate::answer::requeue_item(&q, &item, cfg.timeouts.operation).await;
        metrics::gauge!(m::IN_FLIGHT).decrement(1.0);
    }
    while let Some(done) = running.join_next().await {
        done.map_err(task_failed)??;
    }
    info!(queue = %q.queue, "drained");
    // Closed here, not on drop, so it does not race the connection's close.
    let _ = timed(
        "channel.close",
        cfg.timeouts.operation,
        q.channel.close(200, "drained".into()),
    )
    .await;
    Ok(())
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn make_item(shared: &Shared, delivery: Delivery) -> Item {
    let cfg = &shared.config;
    let env = envelope(&delivery.properties);
    let models = shared.engine.models();
    let disposition = prepare(
        &env,
        &delivery.data,
        &models,
        &cfg.limits,
        &shared.worker_id,
        now_ms(),
    );
    let fill = match &disposition {
        Disposition::Score { job, .. } => match models.get(&job.model, job.version.as_deref()) {
            Some(info) => Fill::of(&job.inputs, &info.input),
            None => Fill {
                rows: job.inputs.len(),
                tokens: 0,
            },
        },
        _ => Fill::default(),
    };
    let reply_to = delivery
        .properties
        .reply_to()
        .as_ref()
        .map(|s| s.to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| cfg.topology.results_queue());
    let correlation_id = delivery.properties.correlation_id().clone();
    let trace = crate::trace::incoming(&delivery.properties);
    // Kept (moved, not copied) in case the job must be dead-lettered after all.
    let original = (delivery.data, delivery.properties);
    Item {
        acker: delivery.acker,
        tag: delivery.delivery_tag,
        reply_to,
        correlation_id,
        disposition,
        original,
        fill,
        trace,
        span: tracing::Span::none(),
    }
}

/// Waits for a pipeline slot (back-pressure on consumption), then runs the batch.
async fn dispatch(
    shared: &Arc<Shared>,
    q: &Arc<QueueCtx>,
    pipeline: &Arc<Semaphore>,
    running: &mut JoinSet<Result<(), SessionError>>,
    batch: Vec<Item>,
) {
    let Ok(permit) = pipeline.clone().acquire_owned().await else {
        return;
    };
    let shared = shared.clone();
    let q = q.clone();
    let ids: Vec<String> = batch
        .iter()
        .filter_map(|i| match &i.disposition {
            Disposition::Score { job_id, .. } => Some(job_id.clone()),
            Disposition::Answer { result, .. } => Some(result.job_id.clone()),
            Disposition::DeadLetter { .. } => None,
        })
        .collect();
    let span =
        tracing::info_span!("batch", queue = %q.queue, jobs = %ids.join(","), size = batch.len());
    let trace = crate::trace::batch_span(
        &q.queue,
        batch.iter().map(|i| i.trace.as_ref()),
        batch.len(),
    );
    running.spawn(
        async move {
            let r = process_batch(&shared, &q, batch, trace).await;
            drop(permit);
            r
        }
        .instrument(span),
    );
}

/// A job of a batch that is to be scored.
struct ToScore {
    job_id: String,
    encoding: surge_protocol::Encoding,
    job: Job,
    queue_ms: Option<f64>,
}

/// Scores the jobs of a batch that need it (one forward pass per model), then publishes
/// every outcome and acks each job whose outcome the broker confirmed. `trace` is the
/// batch's trace span; each job's span runs inside it.
async fn process_batch(
    shared: &Shared,
    q: &QueueCtx,
    batch: Vec<Item>,
    trace: tracing::Span,
) -> Result<(), SessionError> {
    let batch_context = surge_ops::telemetry::traceparent(&trace);
    if !shared.config.batch_delay.is_zero() {
        tokio::time::sleep(shared.config.batch_delay).await;
    }
    let worker = shared.worker_id.as_str();
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(batch.len());
    let mut groups: BTreeMap<ModelKey, Vec<usize>> = BTreeMap::new();
    let now = now_ms();
    let mut jobs: Vec<Option<ToScore>> = Vec::with_capacity(batch.len());
    let mut items = Vec::with_capacity(batch.len());
    for (i, mut item) in batch.into_iter().enumerate() {
        item.span = crate::trace::job_span(
            &q.queue,
            item.original.1.message_id().as_ref().map(|s| s.as_str()),
            item.tag,
            item.trace.as_ref(),
            (&trace, batch_context.as_ref()),
        );
        let disposition = std::mem::replace(
            &mut item.disposition,
            Disposition::DeadLetter {
                kind: "",
                reason: String::new(),
            },
        );
        let (outcome, job) = match disposition {
            Disposition::Score {
                job_id,
                encoding,
                job,
                queue_ms,
                clock_ahead_ms,
            } => {
                if clock_ahead_ms > 0 {
                    note_clock_ahead(&job_id, clock_ahead_ms);
                }
                // Deadlines are checked again: the job may have expired while gathered.
                if job.deadline_ms.is_some_and(|d| now > d) {
                    let r = JobResult::failure(
                        &job_id,
                        &job.model,
                        ErrorKind::Expired,
                        "deadline passed before scoring",
                        worker,
                    );
                    (
                        Some(Outcome::Result {
                            encoding,
                            result: Box::new(r),
                        }),
                        None,
                    )
                } else {
                    groups.entry(engine_key(&job)).or_default().push(i);
                    (
                        None,
                        Some(ToScore {
                            job_id,
                            encoding,
                            job,
                            queue_ms,
                        }),
                    )
                }
            }
            Disposition::Answer { encoding, result } => {
                (Some(Outcome::Result { encoding, result }), None)
            }
            Disposition::DeadLetter { kind, reason } => {
                (Some(Outcome::DeadLetter { kind, reason }), None)
            }
        };
        outcomes.push(outcome);
        jobs.push(job);
        items.push(item);
    }

    for (model, idx) in groups {
        let info = shared
            .engine
            .models()
            .get(&model.0, Some(&model.1))
            .cloned();
        let inputs = gather_inputs(
            idx.iter()
                .filter_map(|&i| jobs[i].as_ref().map(|j| &j.job.inputs)),
        );
        let sizes: Vec<usize> = idx
            .iter()
            .filter_map(|&i| jobs[i].as_ref().map(|j| j.job.inputs.len()))
            .collect();
        let total_rows: usize = sizes.iter().sum();
        let scored = shared.engine.score(&model, inputs, sizes).await;
        metrics::histogram!(m::BATCH_ROWS).record(total_rows as f64);
        let (mut per_job, ms, failure) = match (scored, &info) {
            (Ok(s), Some(_)) => {
                metrics::histogram!(m::INFERENCE_SECONDS, "model" => model.0.clone())
                    .record(s.ms / 1e3);
                (s.per_job.into_iter(), s.ms, None)
            }
            (Err(e), _) => {
                warn!(error = %e, model = %model.0, version = %model.1, "forward pass failed");
                (
                    Vec::new().into_iter(),
                    0.0,
                    Some((
                        ErrorKind::Internal,
                        format!("the worker failed to score this job: {e}"),
                    )),
                )
            }
            (Ok(_), None) => (
                Vec::new().into_iter(),
                0.0,
                Some((ErrorKind::UnknownModel, "model vanished".to_string())),
            ),
        };
        for &i in &idx {
            let Some(ToScore {
                job_id,
                encoding,
                job,
                queue_ms,
            }) = jobs[i].take()
            else {
                continue;
            };
            let result = match (&failure, per_job.next(), &info) {
                (None, Some(outputs), Some(info)) => JobResult::ok(
                    job_id,
                    job.model,
                    info.version.clone(),
                    info.output_names.clone(),
                    outputs,
                    worker,
                    Timings {
                        queue_ms,
                        inference_ms: ms,
                        batch_rows: total_rows as u32,
                    },
                ),
                (Some((kind, msg)), _, _) => {
                    JobResult::failure(job_id, &job.model, *kind, msg.clone(), worker)
                }
                _ => JobResult::failure(
                    job_id,
                    &job.model,
                    ErrorKind::Internal,
                    "the model returned fewer outputs than jobs (a bug)",
                    worker,
                ),
            };
            if let Some(wait) = queue_ms {
                metrics::histogram!(m::QUEUE_WAIT_SECONDS).record(wait / 1e3);
            }
            outcomes[i] = Some(Outcome::Result {
                encoding,
                result: Box::new(result),
            });
        }
    }

    crate::answer::publish_and_ack(shared, q, items, outcomes).await
}

/// Says, once per process, that a producer's clock runs ahead of this worker's; its
/// jobs then report a queue wait of 0.
fn note_clock_ahead(job_id: &str, ahead_ms: u64) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    metrics::counter!(m::CLOCK_AHEAD).increment(1);
    if !SAID.swap(true, Ordering::Relaxed) {
        warn!(
            job = %job_id,
            ahead_ms,
            "a job was sent {ahead_ms} ms in the future: the producer's clock is ahead of this worker's, so queue_ms reads 0 (said once; counted in {})",
            m::CLOCK_AHEAD
        );
    }
}

fn gather_inputs<'a>(inputs: impl Iterator<Item = &'a Inputs>) -> BatchInputs {
    let mut values = Vec::new();
    let mut texts = Vec::new();
    let mut dim = 0;
    for inp in inputs {
        match inp {
            Inputs::Rows(rows) => {
                dim = rows.cols();
                values.extend_from_slice(rows.values());
            }
            Inputs::Texts(t) => texts.extend(t.iter().cloned()),
        }
    }
    if texts.is_empty() {
        BatchInputs::Rows { values, dim }
    } else {
        BatchInputs::Texts(texts)
    }
}
