//! What goes back to the broker for a batch: every result published with `mandatory`
//! and confirms (or the message dead-lettered with its reason), and each job acked only
//! once its outcome is confirmed.

use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::{AMQPValue, LongString};
use lapin::{BasicProperties, Channel};
use surge_broker::publish::{confirmed, start_publish};
use surge_broker::{timed, BrokerError};
use surge_model::Scores;
use surge_protocol::codec::encode;
use surge_protocol::topology::{
    HEADER_ERROR_KIND, HEADER_REASON, HEADER_SOURCE_QUEUE, HEADER_WORKER,
};
use surge_protocol::{now_ms, Job, JobResult, Status, Timings, PROTOCOL_VERSION};
use tracing::{debug, warn};

use crate::metrics as m;
use crate::session::{Item, Outcome};
use crate::Shared;

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
    headers.insert(
        HEADER_REASON.into(),
        AMQPValue::LongString(LongString::from(reason.to_string())),
    );
    headers.insert(
        HEADER_ERROR_KIND.into(),
        AMQPValue::LongString(LongString::from(kind.to_string())),
    );
    headers.insert(
        HEADER_WORKER.into(),
        AMQPValue::LongString(LongString::from(worker.to_string())),
    );
    headers.insert(
        HEADER_SOURCE_QUEUE.into(),
        AMQPValue::LongString(LongString::from(queue.to_string())),
    );
    props.with_headers(headers).with_delivery_mode(2)
}

/// Publishes every outcome (all in flight at once), then acks each job whose outcome
/// was confirmed. A broker error returns early: the unacked jobs are redelivered.
pub(crate) async fn publish_and_ack(
    shared: &Shared,
    queue: &str,
    publisher: &Channel,
    items: Vec<Item>,
    outcomes: Vec<Option<Outcome>>,
) -> Result<(), BrokerError> {
    let t = &shared.config.timeouts;
    let dead_exchange = shared.config.topology.dead_exchange();
    let mut pending = Vec::with_capacity(items.len());
    for (index, (item, outcome)) in items.iter().zip(outcomes).enumerate() {
        let Some(outcome) = outcome else {
            // Cannot happen: every item gets an outcome. Return it rather than lose it.
            warn!("a job had no outcome (a bug); returning it to its queue");
            requeue(&item.acker, t.operation).await?;
            continue;
        };
        match outcome {
            Outcome::Result { encoding, result } => {
                let body =
                    encode(&result, encoding).map_err(|e| BrokerError::Url(e.to_string()))?;
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
                let confirm = start_publish(publisher, "", &item.reply_to, &body, props, t).await?;
                pending.push((index, confirm, Some(result), None, body.len()));
            }
            Outcome::DeadLetter { kind, reason } => {
                let (body, props) = item.original.clone().unwrap_or_default();
                warn!(kind, %reason, "dead-lettering an undecodable message");
                let props = dead_letter_props(props, kind, &reason, &shared.worker_id, queue);
                let confirm =
                    start_publish(publisher, &dead_exchange, queue, &body, props, t).await?;
                pending.push((index, confirm, None, Some(kind), body.len()));
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
                    record_result(r);
                }
                if let Some(kind) = dead {
                    metrics::counter!(m::DEAD_LETTERED, "reason" => kind).increment(1);
                }
                timed(
                    "basic.ack",
                    t.operation,
                    item.acker.ack(BasicAckOptions::default()),
                )
                .await?;
            }
            Err(BrokerError::Returned { routing_key, .. }) => {
                // Nobody listens at reply_to any more: keep the job, with the reason,
                // in the dead-letter queue rather than drop the answer silently.
                let (body, props) = item.original.clone().unwrap_or_default();
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
                timed(
                    "basic.ack",
                    t.operation,
                    item.acker.ack(BasicAckOptions::default()),
                )
                .await?;
            }
            Err(BrokerError::Nacked { .. }) => {
                warn!("the broker refused a result; returning the job to its queue");
                requeue(&item.acker, t.operation).await?;
            }
            Err(e) => return Err(e),
        }
        metrics::gauge!(m::IN_FLIGHT).decrement(1.0);
    }
    debug!("batch answered and acked");
    Ok(())
}

pub(crate) fn record_result(r: &JobResult) {
    let status = match r.status {
        Status::Ok => "ok",
        Status::Error => "error",
        Status::Expired => "expired",
    };
    metrics::counter!(m::JOBS, "model" => r.model.clone(), "status" => status).increment(1);
    crate::drain::count_answered(&r.model);
    match &r.error {
        None => {
            metrics::counter!(m::ROWS, "model" => r.model.clone()).increment(r.outputs.len() as u64)
        }
        Some(e) => metrics::counter!(m::ERRORS, "kind" => e.kind.as_str()).increment(1),
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn ok_result(
    worker: &str,
    job_id: String,
    job: &Job,
    info: &surge_model::ModelInfo,
    scores: &Scores,
    offset: usize,
    n: usize,
    inference_ms: f64,
    batch_rows: usize,
    queue_ms: Option<f64>,
) -> JobResult {
    let outputs: Vec<Vec<f32>> = (offset..offset + n)
        .map(|r| scores.row(r).to_vec())
        .collect();
    JobResult {
        v: PROTOCOL_VERSION,
        job_id,
        model: job.model.clone(),
        version: Some(info.version.clone()),
        status: Status::Ok,
        output_names: info.output_names.clone(),
        outputs,
        error: None,
        worker: worker.to_string(),
        timings: Timings {
            queue_ms,
            inference_ms,
            batch_rows: batch_rows as u32,
        },
    }
}
