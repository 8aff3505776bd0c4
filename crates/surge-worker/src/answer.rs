//! What goes back to the broker for a batch: every result published with `mandatory`
//! and confirms, in one burst (or the message dead-lettered with its reason), and each
//! job acked only once its outcome is confirmed: with one `multiple` ack per run of
//! settled deliveries ([`AckFrontier`]), never past a delivery still open.

use std::sync::Arc;

use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::{AMQPValue, LongString, ShortString};
use lapin::{Acker, BasicProperties};
use surge_broker::publish::{confirmed, start_publish};
use surge_broker::{timed, BrokerError};
use surge_protocol::codec::encode;
use surge_protocol::topology::{
    HEADER_ERROR_KIND, HEADER_REASON, HEADER_SOURCE_QUEUE, HEADER_WORKER,
};
use surge_protocol::{now_ms, Encoding, JobResult, Status};
use tokio::sync::Mutex;
use tracing::{debug, warn};

use crate::batcher::{AckFrontier, Fill};
use crate::metrics as m;
use crate::prepare::Disposition;
use crate::session::{QueueCtx, SessionError};
use crate::Shared;

/// One delivery on its way through a batch.
pub(crate) struct Item {
    pub(crate) acker: Acker,
    /// The delivery's tag on its consumer channel.
    pub(crate) tag: u64,
    pub(crate) reply_to: String,
    pub(crate) correlation_id: Option<ShortString>,
    pub(crate) disposition: Disposition,
    /// The body and properties, for a dead letter.
    pub(crate) original: (Vec<u8>, BasicProperties),
    /// Rows and estimated text tokens, for the batch budgets.
    pub(crate) fill: Fill,
    /// The producer's trace context (the job's `traceparent` header), if well formed.
    pub(crate) trace: Option<surge_protocol::TraceParent>,
    /// The job's trace span while its batch runs (disabled with no exporter); it ends
    /// when the item is dropped, after its outcome is settled.
    pub(crate) span: tracing::Span,
}

/// What goes back to the broker for one item.
pub(crate) enum Outcome {
    /// A result to publish to the job's `reply_to`.
    Result {
        encoding: Encoding,
        result: Box<JobResult>,
    },
    /// The message, to the dead-letter exchange.
    DeadLetter { kind: &'static str, reason: String },
}

/// The acks of one consumer channel. The lock is held while an ack is sent, so acks
/// leave in tag order and a `multiple` ack never follows one that covered it.
pub(crate) type Acks = Arc<Mutex<AckFrontier>>;

/// Marks `tag` settled and sends the `multiple` ack that this makes possible, if any.
async fn settle(
    q: &QueueCtx,
    tag: u64,
    ack: bool,
    t: std::time::Duration,
) -> Result<(), BrokerError> {
    let mut frontier = q.acks.lock().await;
    if let Some(upto) = frontier.settle(tag, ack) {
        timed(
            "basic.ack",
            t,
            q.channel
                .basic_ack(upto, BasicAckOptions { multiple: true }),
        )
        .await?;
    }
    Ok(())
}

/// Returns a delivery to its queue (`basic.nack` with requeue) and marks it settled.
pub(crate) async fn requeue_item(
    q: &QueueCtx,
    item: &Item,
    t: std::time::Duration,
) -> Result<(), BrokerError> {
    requeue(&item.acker, t).await?;
    settle(q, item.tag, false, t).await
}

/// Returns a delivery to its queue (`basic.nack` with requeue) for another try.
pub(crate) async fn requeue(
    acker: &lapin::Acker,
    t: std::time::Duration,
) -> Result<(), BrokerError> {
    timed(
        "basic.nack",
        t,
        acker.nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        }),
    )
    .await
    .map(drop)
}

fn dead_letter_props(
    props: BasicProperties,
    kind: &str,
    reason: &str,
    worker: &str,
    queue: &str,
) -> BasicProperties {
    let mut headers = props.headers().clone().unwrap_or_default();
    for (name, value) in [
        (HEADER_REASON, reason),
        (HEADER_ERROR_KIND, kind),
        (HEADER_WORKER, worker),
        (HEADER_SOURCE_QUEUE, queue),
    ] {
        headers.insert(
            name.into(),
            AMQPValue::LongString(LongString::from(value.to_string())),
        );
    }
    props.with_headers(headers).with_delivery_mode(2)
}

/// Publishes every outcome (all in flight at once), then settles each job whose
/// outcome was confirmed. A broker error returns early: the unacked jobs are
/// redelivered.
pub(crate) async fn publish_and_ack(
    shared: &Shared,
    q: &QueueCtx,
    items: Vec<Item>,
    outcomes: Vec<Option<Outcome>>,
) -> Result<(), SessionError> {
    let t = &shared.config.timeouts;
    let queue = q.queue.as_str();
    let publisher = &q.publisher;
    let dead_exchange = shared.config.topology.dead_exchange();
    let mut pending = Vec::with_capacity(items.len());
    for (index, (item, outcome)) in items.iter().zip(outcomes).enumerate() {
        let Some(outcome) = outcome else {
            // Cannot happen: every item gets an outcome. Return it rather than lose it.
            warn!("a job had no outcome (a bug); returning it to its queue");
            requeue_item(q, item, t.operation).await?;
            continue;
        };
        match outcome {
            Outcome::Result { encoding, result } => {
                let body =
                    encode(&*result, encoding).map_err(|e| SessionError::Encode(e.to_string()))?;
                let corr = item
                    .correlation_id
                    .clone()
                    .unwrap_or_else(|| result.job_id.as_str().into());
                let props = BasicProperties::default()
                    .with_content_type(encoding.content_type().into())
                    .with_message_id(result.job_id.as_str().into())
                    .with_correlation_id(corr)
                    .with_delivery_mode(2)
                    .with_timestamp(now_ms() / 1000);
                let props = crate::trace::on_result(props, &item.span, item.trace.as_ref());
                let confirm = start_publish(publisher, "", &item.reply_to, &body, props, t).await?;
                pending.push((index, confirm, Some(result), None, body.len()));
            }
            Outcome::DeadLetter { kind, reason } => {
                let (body, props) = item.original.clone();
                warn!(kind, %reason, "dead-lettering an undecodable message");
                let size = body.len();
                let props = dead_letter_props(props, kind, &reason, &shared.worker_id, queue);
                let confirm =
                    start_publish(publisher, &dead_exchange, queue, &body, props, t).await?;
                pending.push((index, confirm, None, Some(kind), size));
            }
        }
    }
    let items = &items;
    let confirms = futures_util::future::join_all(pending.into_iter().map(
        |(index, confirm, result, dead, size)| async move {
            let exchange = if dead.is_some() { "dead" } else { "" };
            let res = confirmed(confirm, exchange, &items[index].reply_to, t).await;
            (index, res, result, dead, size)
        },
    ))
    .await;
    for (index, res, result, dead, size) in confirms {
        let item = &items[index];
        match res {
            Ok(()) => {
                if let Some(r) = &result {
                    record_result(&q.answered, r);
                }
                if let Some(kind) = dead {
                    metrics::counter!(m::DEAD_LETTERED, "reason" => kind).increment(1);
                }
                settle(q, item.tag, true, t.operation).await?;
            }
            Err(BrokerError::Returned { routing_key, .. }) => {
                // Nobody listens at reply_to any more: keep the job, with the reason,
                // in the dead-letter queue rather than drop the answer silently.
                let (body, props) = item.original.clone();
                let reason = format!("the reply_to queue {routing_key:?} does not exist; the result could not be delivered");
                let job = result.as_ref().map_or("", |r| r.job_id.as_str());
                warn!(%job, result_bytes = size, %reason, "the broker returned a result; dead-lettering its job");
                let props = dead_letter_props(
                    props,
                    "unroutable_result",
                    &reason,
                    &shared.worker_id,
                    queue,
                );
                surge_broker::publish::publish_confirmed(
                    publisher,
                    &dead_exchange,
                    queue,
                    &body,
                    props,
                    t,
                )
                .await?;
                metrics::counter!(m::DEAD_LETTERED, "reason" => "unroutable_result").increment(1);
                settle(q, item.tag, true, t.operation).await?;
            }
            Err(BrokerError::Nacked { .. }) => {
                warn!("the broker refused a result; returning the job to its queue");
                requeue_item(q, item, t.operation).await?;
            }
            Err(e) => return Err(e.into()),
        }
        metrics::gauge!(m::IN_FLIGHT).decrement(1.0);
    }
    debug!("batch answered and acked");
    Ok(())
}

pub(crate) fn record_result(answered: &crate::drain::Answered, r: &JobResult) {
    let status = match r.status {
        Status::Ok => "ok",
        Status::Error => "error",
        Status::Expired => "expired",
    };
    metrics::counter!(m::JOBS, "model" => r.model.clone(), "status" => status).increment(1);
    answered.count(&r.model);
    match &r.error {
        None => {
            metrics::counter!(m::ROWS, "model" => r.model.clone()).increment(r.outputs.len() as u64)
        }
        Some(e) => metrics::counter!(m::ERRORS, "kind" => e.kind.as_str()).increment(1),
    }
}
