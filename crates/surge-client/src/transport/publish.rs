//! Publishing a run's jobs: each encoded (packed rows where it can), sent to the
//! jobs exchange under its idempotent id with the reply queue to answer on, as a
//! producer span whose context the job carries (W3C `traceparent`), and confirmed by
//! the broker a window at a time.

use std::time::Instant;

use lapin::BasicProperties;
use surge_broker::publish::{confirmed, start_publish};
use surge_broker::BrokerError;
use surge_ops::telemetry::{self, SpanName};
use surge_protocol::codec::encode_job_ref;
use surge_protocol::{now_ms, JobRef, PROTOCOL_VERSION};
use tracing::{debug, warn};

use super::RunCtx;
use crate::run::Run;
use crate::tracker::JobState;
use crate::ClientError;

impl RunCtx<'_> {
    /// Publishes jobs `indices` in windows, marking each confirmed one. A nacked job
    /// stays unpublished and goes again on the next tick.
    pub(super) async fn publish<T>(
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
