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
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Acker, BasicProperties, Channel, Consumer};
use surge_broker::{timed, topology, BrokerError};
use surge_protocol::{now_ms, Encoding, ErrorKind, Inputs, Job, JobResult};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{info, warn, Instrument};

use crate::batcher::Fill;
use crate::engine::BatchInputs;
use crate::metrics as m;
use crate::prepare::{prepare, Disposition, Envelope};
use crate::shutdown::Shutdown;
use crate::Shared;

/// How many batches per model may be past gathering (on the model thread or
/// publishing) at once: one scoring while the previous one publishes.
const PIPELINE_DEPTH: usize = 2;

/// One delivery on its way through a batch.
pub(crate) struct Item {
    pub(crate) acker: Acker,
    pub(crate) reply_to: String,
    pub(crate) correlation_id: Option<ShortString>,
    pub(crate) disposition: Disposition,
    /// Kept only for messages that may be dead-lettered.
    pub(crate) original: Option<(Vec<u8>, BasicProperties)>,
    /// Rows and estimated text tokens, for the batch budgets.
    pub(crate) fill: Fill,
}

/// A job to score: id, answer encoding, the job, its queue wait.
type ScoreJob = (String, Encoding, Job, Option<f64>);

/// What goes back to the broker for one item.
pub(crate) enum Outcome {
    Result {
        encoding: Encoding,
        result: JobResult,
    },
    DeadLetter {
        kind: &'static str,
        reason: String,
    },
}

/// Runs one connected session until shutdown (`Ok`) or a broker error (`Err`).
pub(crate) async fn run_session(
    shared: Arc<Shared>,
    shutdown: Shutdown,
) -> Result<(), BrokerError> {
    let cfg = &shared.config;
    let t = &cfg.timeouts;
    let conn =
        surge_broker::connect(&cfg.url, &format!("surge-worker {}", shared.worker_id), t).await?;
    let result = async {
        let publisher = timed("channel.open", t.operation, conn.create_channel()).await?;
        timed(
            "confirm.select",
            t.operation,
            publisher.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        topology::declare_base(&publisher, &cfg.topology, t).await?;
        let names = shared.engine.model_names();
        let mut tasks = JoinSet::new();
        let mut serving = std::collections::BTreeSet::new();
        for model in names {
            start_consumer(&shared, &conn, &publisher, &model, &mut tasks, &shutdown).await?;
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
                        return Err(BrokerError::Url(format!("queue task failed: {join_error}")));
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
                        start_consumer(&shared, &conn, &publisher, &model, &mut tasks, &shutdown)
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

/// The engine key of a prepared job: `prepare` has set its version to the one that
/// scores it.
fn engine_key(job: &Job) -> String {
    crate::engine::key(&job.model, job.version.as_deref().unwrap_or_default())
}

/// Declares `model`'s queue and starts consuming it on a channel of its own.
async fn start_consumer(
    shared: &Arc<Shared>,
    conn: &lapin::Connection,
    publisher: &Channel,
    model: &str,
    tasks: &mut JoinSet<Result<(), BrokerError>>,
    shutdown: &Shutdown,
) -> Result<(), BrokerError> {
    let cfg = &shared.config;
    let t = &cfg.timeouts;
    let prefetch = cfg
        .prefetch
        .unwrap_or_else(|| cfg.policy.default_prefetch());
    topology::declare_model(publisher, &cfg.topology, model, t).await?;
    let ch = timed("channel.open", t.operation, conn.create_channel()).await?;
    timed(
        "basic.qos",
        t.operation,
        ch.basic_qos(prefetch, BasicQosOptions::default()),
    )
    .await?;
    let queue = cfg.topology.job_queue(model);
    let tag = format!("{}/{model}", shared.worker_id);
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
    tasks.spawn(serve_queue(
        shared.clone(),
        queue,
        ch,
        consumer,
        publisher.clone(),
        shutdown.clone(),
    ));
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
    queue: String,
    channel: Channel,
    mut consumer: Consumer,
    publisher: Channel,
    mut shutdown: Shutdown,
) -> Result<(), BrokerError> {
    let cfg = &shared.config;
    let policy = cfg.policy;
    let pipeline = Arc::new(Semaphore::new(PIPELINE_DEPTH));
    let mut running: JoinSet<Result<(), BrokerError>> = JoinSet::new();
    let mut gathered: Vec<Item> = Vec::new();
    let mut fill = Fill::default();
    let mut oldest: Option<Instant> = None;
    loop {
        let deadline = oldest.map(|o| tokio::time::Instant::from_std(policy.deadline(o)));
        let mut close = false;
        tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            Some(done) = running.join_next(), if !running.is_empty() => {
                done.map_err(|e| BrokerError::Url(format!("batch task failed: {e}")))??;
                // A pipeline slot freed up: a waiting batch need not wait any longer.
                close = policy.close_when_drained(fill, pipeline.available_permits() == PIPELINE_DEPTH);
            }
            _ = sleep_until_opt(deadline), if deadline.is_some() => close = true,
            next = consumer.next() => {
                let mut next = next;
                loop {
                    let delivery = match next {
                        Some(Ok(d)) => d,
                        Some(Err(source)) => return Err(BrokerError::Amqp { what: "consume", source }),
                        None => return Err(BrokerError::Url(format!("consumer of {queue} was cancelled by the broker"))),
                    };
                    metrics::gauge!(m::IN_FLIGHT).increment(1.0);
                    let item = make_item(&shared, delivery);
                    if !policy.fits(fill, item.fill) {
                        dispatch(&shared, &queue, &publisher, &pipeline, &mut running, std::mem::take(&mut gathered)).await;
                        fill = Fill::default();
                        oldest = None;
                    }
                    fill = fill.plus(item.fill);
                    oldest.get_or_insert_with(Instant::now);
                    gathered.push(item);
                    if policy.should_close(fill, oldest, Instant::now()) {
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
                close = close || policy.close_when_drained(fill, model_idle);
            }
        }
        if close && !gathered.is_empty() {
            dispatch(
                &shared,
                &queue,
                &publisher,
                &pipeline,
                &mut running,
                std::mem::take(&mut gathered),
            )
            .await;
            fill = Fill::default();
            oldest = None;
        }
    }

    // Graceful drain: stop deliveries, return what has not started, finish the rest.
    info!(%queue, "draining: cancelling the consumer");
    let tag = consumer.tag();
    let _ = timed(
        "basic.cancel",
        cfg.timeouts.operation,
        channel.basic_cancel(tag, BasicCancelOptions::default()),
    )
    .await;
    for item in gathered {
        let _ = crate::answer::requeue(&item.acker, cfg.timeouts.operation).await;
        metrics::gauge!(m::IN_FLIGHT).decrement(1.0);
    }
    while let Some(done) = running.join_next().await {
        done.map_err(|e| BrokerError::Url(format!("batch task failed: {e}")))??;
    }
    info!(%queue, "drained");
    // Closed here, not on drop, so it does not race the connection's close.
    let _ = timed(
        "channel.close",
        cfg.timeouts.operation,
        channel.close(200, "drained".into()),
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
        Disposition::Score { job, .. } => match models.get(&engine_key(job)) {
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
    // Kept (moved, not copied) in case the job must be dead-lettered after all.
    let original = Some((delivery.data, delivery.properties));
    Item {
        acker: delivery.acker,
        reply_to,
        correlation_id,
        disposition,
        original,
        fill,
    }
}

/// Waits for a pipeline slot (back-pressure on consumption), then runs the batch.
async fn dispatch(
    shared: &Arc<Shared>,
    queue: &str,
    publisher: &Channel,
    pipeline: &Arc<Semaphore>,
    running: &mut JoinSet<Result<(), BrokerError>>,
    batch: Vec<Item>,
) {
    let Ok(permit) = pipeline.clone().acquire_owned().await else {
        return;
    };
    let shared = shared.clone();
    let publisher = publisher.clone();
    let queue = queue.to_string();
    let ids: Vec<String> = batch
        .iter()
        .filter_map(|i| match &i.disposition {
            Disposition::Score { job_id, .. } => Some(job_id.clone()),
            Disposition::Answer { result, .. } => Some(result.job_id.clone()),
            Disposition::DeadLetter { .. } => None,
        })
        .collect();
    let span =
        tracing::info_span!("batch", queue = %queue, jobs = %ids.join(","), size = batch.len());
    running.spawn(
        async move {
            let r = process_batch(&shared, &queue, &publisher, batch).await;
            drop(permit);
            r
        }
        .instrument(span),
    );
}

/// Scores the jobs of a batch that need it (one forward pass per model), then publishes
/// every outcome and acks each job whose outcome the broker confirmed.
async fn process_batch(
    shared: &Shared,
    queue: &str,
    publisher: &Channel,
    batch: Vec<Item>,
) -> Result<(), BrokerError> {
    if !shared.config.batch_delay.is_zero() {
        tokio::time::sleep(shared.config.batch_delay).await;
    }
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(batch.len());
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let now = now_ms();
    let mut jobs: Vec<Option<ScoreJob>> = Vec::with_capacity(batch.len());
    let mut items = Vec::with_capacity(batch.len());
    for (i, mut item) in batch.into_iter().enumerate() {
        let disposition = std::mem::replace(
            &mut item.disposition,
            Disposition::DeadLetter {
                kind: "",
                reason: String::new(),
            },
        );
        match disposition {
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
                        &shared.worker_id,
                    );
                    outcomes.push(Some(Outcome::Result {
                        encoding,
                        result: r,
                    }));
                    jobs.push(None);
                } else {
                    groups.entry(engine_key(&job)).or_default().push(i);
                    outcomes.push(None);
                    jobs.push(Some((job_id, encoding, job, queue_ms)));
                }
            }
            Disposition::Answer { encoding, result } => {
                outcomes.push(Some(Outcome::Result {
                    encoding,
                    result: *result,
                }));
                jobs.push(None);
            }
            Disposition::DeadLetter { kind, reason } => {
                outcomes.push(Some(Outcome::DeadLetter { kind, reason }));
                jobs.push(None);
            }
        }
        items.push(item);
    }

    for (model, idx) in groups {
        let info = shared.engine.models().get(&model).cloned();
        let inputs = gather_inputs(
            idx.iter()
                .filter_map(|&i| jobs[i].as_ref().map(|j| &j.2.inputs)),
        );
        let total_rows = inputs_len(&inputs);
        let scored = shared.engine.score(&model, inputs).await;
        metrics::histogram!(m::BATCH_ROWS).record(total_rows as f64);
        let mut offset = 0usize;
        for &i in &idx {
            let Some((job_id, encoding, job, queue_ms)) = jobs[i].take() else {
                continue;
            };
            let n = job.inputs.len();
            let result = match (&scored, &info) {
                (Ok((scores, ms)), Some(info)) => {
                    metrics::histogram!(m::INFERENCE_SECONDS, "model" => model.clone())
                        .record(ms / 1e3);
                    crate::answer::ok_result(
                        &shared.worker_id,
                        job_id,
                        &job,
                        info,
                        scores,
                        offset,
                        n,
                        *ms,
                        total_rows,
                        queue_ms,
                    )
                }
                (Err(e), _) => {
                    warn!(error = %e, job = %job_id, "forward pass failed");
                    JobResult::failure(
                        job_id,
                        &model,
                        ErrorKind::Internal,
                        format!("the worker failed to score this job: {e}"),
                        &shared.worker_id,
                    )
                }
                (Ok(_), None) => JobResult::failure(
                    job_id,
                    &model,
                    ErrorKind::UnknownModel,
                    "model vanished",
                    &shared.worker_id,
                ),
            };
            if let Some(q) = queue_ms {
                metrics::histogram!(m::QUEUE_WAIT_SECONDS).record(q / 1e3);
            }
            offset += n;
            outcomes[i] = Some(Outcome::Result { encoding, result });
        }
    }

    crate::answer::publish_and_ack(shared, queue, publisher, items, outcomes).await
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

fn inputs_len(inputs: &BatchInputs) -> usize {
    match inputs {
        BatchInputs::Rows { values, dim } => values.len().checked_div(*dim).unwrap_or(0),
        BatchInputs::Texts(t) => t.len(),
    }
}
