//! A job's trace through the worker (OpenTelemetry messaging conventions).
//!
//! * A delivery's `traceparent` header is parsed once, when the job is taken
//!   ([`incoming`]); a malformed one is ignored (with a debug line) and never fails
//!   the job.
//! * Each batch has one span, `process <queue>` (kind consumer, no parent), linked to
//!   the producer context of every job in it ([`batch_span`]).
//! * Each job gets a span while its batch runs, `process <queue>` (kind consumer):
//!   the child of its producer's span when the job carried a `traceparent`, so the
//!   trace runs on from the producer, and then linked to the batch's span; the child
//!   of the batch's span otherwise ([`job_span`]).
//! * The result carries the job span's `traceparent` ([`on_result`]).
//!
//! With no exporter (see `surge_ops::telemetry`) these spans are disabled at their
//! call sites, and a result carries the job's own `traceparent` back unchanged: the
//! nearest span that was recorded is the producer's.

use lapin::BasicProperties;
use surge_ops::telemetry;
use surge_protocol::TraceParent;
use tracing::Span;

/// The trace context a delivery carried, if its `traceparent` header is well formed.
pub(crate) fn incoming(props: &BasicProperties) -> Option<TraceParent> {
    match surge_broker::headers::traceparent(props)? {
        Ok(tp) => Some(tp),
        Err(e) => {
            tracing::debug!(job = ?props.message_id(), error = %e, "ignoring a malformed traceparent header; the job's trace starts here");
            None
        }
    }
}

/// The trace span of a batch, next to its `batch` log span: a consumer span with no
/// parent (its jobs come from many traces), linked to each job's producer context.
/// Disabled when no exporter runs.
pub(crate) fn batch_span<'a>(
    queue: &str,
    contexts: impl Iterator<Item = Option<&'a TraceParent>>,
    size: usize,
) -> Span {
    let span = surge_ops::process_span!(
        parent: None,
        "batch",
        queue,
        messaging.batch.message_count = size,
    );
    if !span.is_disabled() {
        for tp in contexts.flatten() {
            telemetry::add_link(&span, tp);
        }
    }
    span
}

/// The trace span of one job of the batch whose trace span is `batch` (with its
/// `traceparent`). Ends when dropped, once the job's outcome is settled.
pub(crate) fn job_span(
    queue: &str,
    message_id: Option<&str>,
    delivery_tag: u64,
    producer: Option<&TraceParent>,
    batch: (&Span, Option<&TraceParent>),
) -> Span {
    // The producer's span is the parent when there is one; the batch's otherwise.
    let parent = match producer {
        Some(_) => None,
        None => batch.0.id(),
    };
    let span = surge_ops::process_span!(
        parent: parent,
        "job",
        queue,
        messaging.message.id = message_id.unwrap_or(""),
        messaging.rabbitmq.message.delivery_tag = delivery_tag,
    );
    if let Some(producer) = producer {
        telemetry::set_parent(&span, producer);
        if let Some(batch) = batch.1 {
            telemetry::add_link(&span, batch);
        }
    }
    span
}

/// A job's result properties with its `traceparent`: the job span's context when
/// traces are exported, else the one the job came with; unchanged when there is
/// neither.
pub(crate) fn on_result(
    props: BasicProperties,
    job: &Span,
    producer: Option<&TraceParent>,
) -> BasicProperties {
    match telemetry::traceparent(job).or(producer.copied()) {
        Some(tp) => surge_broker::headers::with_traceparent(props, &tp),
        None => props,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{AMQPValue, FieldTable, LongString};
    use surge_protocol::TRACEPARENT_HEADER;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn with_header(v: &str) -> BasicProperties {
        let mut h = FieldTable::default();
        h.insert(
            TRACEPARENT_HEADER.into(),
            AMQPValue::LongString(LongString::from(v)),
        );
        BasicProperties::default().with_headers(h)
    }

    #[test]
    fn a_missing_or_malformed_header_is_ignored() {
        assert_eq!(incoming(&with_header(GOOD)), GOOD.parse().ok());
        assert_eq!(incoming(&BasicProperties::default()), None);
        for bad in [
            "",
            "00-zz",
            &GOOD.to_uppercase(),
            &GOOD.replacen("00", "ff", 1),
        ] {
            assert_eq!(incoming(&with_header(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn without_an_exporter_a_result_echoes_the_jobs_traceparent() {
        let tp: TraceParent = GOOD.parse().unwrap();
        let batch = Span::none();
        let job = job_span("q", Some("j-0"), 1, Some(&tp), (&batch, None));
        assert!(job.is_disabled());
        let props = on_result(BasicProperties::default(), &job, Some(&tp));
        assert_eq!(surge_broker::headers::traceparent(&props), Some(Ok(tp)));
        let props = on_result(BasicProperties::default(), &job, None);
        assert!(props.headers().is_none());
    }
}
