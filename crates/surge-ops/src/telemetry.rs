//! Traces: OpenTelemetry spans exported over OTLP/HTTP, and the W3C `traceparent`
//! that carries a trace through RabbitMQ (a job's header, then its result's).
//!
//! Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//! is set. When off, no OpenTelemetry layer is installed, so the message spans
//! (target [`TARGET`]) are disabled at their call sites: `tracing` skips them after one
//! cached check, nothing is allocated for them and nothing is exported. When on,
//! [`Telemetry::from_env`] builds an SDK tracer provider with a batch span processor:
//! finished spans go into a bounded queue, and the processor's own thread sends them
//! (OTLP protobuf over HTTP, reqwest's blocking client) every few seconds or when a
//! batch fills; a full queue drops spans rather than slow a job. The standard
//! `OTEL_*` variables tune it (`OTEL_SERVICE_NAME`, `OTEL_BSP_SCHEDULE_DELAY`,
//! `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_TRACES_SAMPLER`, …).
//!
//! Only the spans of target [`TARGET`] go to the exporter, never log spans or log
//! events: a run and each publish in `score-batch`, a batch and each job in the
//! worker. The helpers [`traceparent`], [`set_parent`]
//! and [`add_link`] move contexts between `tracing` spans and the wire; with no
//! exporter they do nothing and return `None`.

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use surge_protocol::TraceParent;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The `tracing` target of the spans that are exported (a run and each publish in
/// `score-batch`, a batch and each job in the worker), and only of those. Log output
/// never shows them (a log filter adds [`LOG_DIRECTIVE`]), so with no exporter no
/// layer enables them and each costs one cached check.
pub const TARGET: &str = "surge_trace";

/// The log-filter directive that keeps the per-message spans out of log output.
pub const LOG_DIRECTIVE: &str = "surge_trace=off";

/// The variables that turn export on, either one: the collector's base URL (the
/// exporter appends `/v1/traces`), or the full URL of its traces endpoint.
pub const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
];

/// A messaging span's name, `<operation> <destination>` (`publish surge.jobs`,
/// `process surge.jobs.breast-cancer`), as the conventions give it; formatted only when
/// a span records it.
#[derive(Debug, Clone, Copy)]
pub struct SpanName<'a>(pub &'static str, pub &'a str);

impl std::fmt::Display for SpanName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.0, self.1)
    }
}

/// A `process` span of the OpenTelemetry messaging conventions on the trace target:
/// `process_span!(parent: P, "name", queue, more.fields = ...)` gives a consumer span
/// named `process <queue>` for RabbitMQ, with its destination, and the extra fields.
/// One place for the attributes that the worker's batch and job spans and
/// score-batch's receive span share.
#[macro_export]
macro_rules! process_span {
    (parent: $parent:expr, $name:literal, $queue:expr, $($field:tt)+) => {
        $crate::tracing::info_span!(
            target: $crate::telemetry::TARGET,
            parent: $parent,
            $name,
            otel.name = %$crate::telemetry::SpanName("process", $queue),
            otel.kind = "consumer",
            messaging.system = "rabbitmq",
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.destination.name = %$queue,
            $($field)+
        )
    };
}

/// Why traces cannot be exported as configured.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter refused its configuration (a malformed endpoint URL, an
    /// unsupported `OTEL_EXPORTER_OTLP_PROTOCOL`, …).
    #[error("cannot export traces: {0} (check OTEL_EXPORTER_OTLP_ENDPOINT and the other OTEL_EXPORTER_OTLP_* variables, or unset them to run without traces)")]
    Exporter(String),
}

/// The running trace export of a process. Keep it until the process ends and call
/// [`Telemetry::shutdown`] then: spans still queued are sent, within a few seconds.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Starts exporting when one of [`ENDPOINT_VARS`] is set and not empty; `Ok(None)`
    /// otherwise. `service` names the process in the traces (`service.name`) unless
    /// `OTEL_SERVICE_NAME` is set.
    pub fn from_env(service: &str) -> Result<Option<Telemetry>, TelemetryError> {
        if !is_configured(|k| std::env::var(k).ok()) {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        let mut resource = Resource::builder();
        let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|s| !s.trim().is_empty());
        if !named {
            resource = resource.with_service_name(service.to_string());
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        Ok(Some(Telemetry { provider }))
    }

    /// The `tracing` layer that turns Surge's trace spans into OpenTelemetry spans. It
    /// sees the spans of [`TARGET`] only: log spans and events stay out of traces.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync + 'static,
    {
        let tracer = self.provider.tracer("surge");
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            // Nothing per poll or per thread: parents are explicit or the current
            // `tracing` span, and a span's attributes are its fields.
            .with_context_activation(false)
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
            .with_target(false)
            .with_filter(filter_fn(|meta| meta.is_span() && meta.target() == TARGET))
    }

    /// Sends the spans still queued and stops the exporter (blocking, bounded by the
    /// exporter's timeout). Call it once, outside async code, at the end of `main`.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "trace export did not shut down cleanly; the last spans may be lost");
        }
    }
}

/// Whether `get` (the environment, in production) turns export on.
fn is_configured(get: impl Fn(&str) -> Option<String>) -> bool {
    ENDPOINT_VARS
        .iter()
        .any(|k| get(k).is_some_and(|v| !v.trim().is_empty()))
}

/// The trace context of `span` as a `traceparent`, for a message header. `None` when
/// the span is not exported (no exporter, or filtered out); this builds the span's
/// OpenTelemetry side, so set its parent and links first.
pub fn traceparent(span: &tracing::Span) -> Option<TraceParent> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| TraceParent {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        flags: sc.trace_flags().to_u8(),
    })
}

/// Makes the sender of a message (its `traceparent`) the parent of `span`, so that
/// `span` joins the sender's trace. Call it before anything else reads `span`'s
/// context; a no-op when the span is not exported.
pub fn set_parent(span: &tracing::Span, parent: &TraceParent) {
    if span.is_disabled() {
        return;
    }
    let parent = opentelemetry::Context::new().with_remote_span_context(remote(parent));
    // Fails only when no exporter sees the span, or its context was already read:
    // then the span simply starts a trace of its own.
    let _ = span.set_parent(parent);
}

/// Links `span` to another span's context (a batch to each of its jobs, a job to its
/// batch). A no-op when the span is not exported.
pub fn add_link(span: &tracing::Span, to: &TraceParent) {
    if span.is_disabled() {
        return;
    }
    span.add_link(remote(to));
}

fn remote(tp: &TraceParent) -> SpanContext {
    SpanContext::new(
        TraceId::from_bytes(tp.trace_id),
        SpanId::from_bytes(tp.span_id),
        TraceFlags::new(tp.flags),
        true,
        TraceState::NONE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_is_on_only_with_a_non_empty_endpoint() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(name, _)| *name == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert!(!is_configured(env(&[])));
        assert!(!is_configured(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])));
        assert!(!is_configured(env(&[("OTEL_SERVICE_NAME", "x")])));
        assert!(is_configured(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://127.0.0.1:4318"
        )])));
        assert!(is_configured(env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4318/v1/traces"
        )])));
    }

    #[test]
    fn without_an_exporter_the_helpers_do_nothing() {
        // No subscriber with an OpenTelemetry layer: message spans are disabled.
        let span = tracing::info_span!(target: "surge_trace", "job");
        let tp: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap();
        set_parent(&span, &tp);
        add_link(&span, &tp);
        assert_eq!(traceparent(&span), None);
    }

    #[test]
    fn with_a_layer_a_span_continues_its_parent_and_carries_its_links() {
        use tracing_subscriber::layer::SubscriberExt;
        let provider = SdkTracerProvider::builder().build();
        let telemetry = Telemetry { provider };
        let subscriber = tracing_subscriber::registry().with(telemetry.layer());
        tracing::subscriber::with_default(subscriber, || {
            let parent: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap();
            let span = tracing::info_span!(target: "surge_trace", parent: None, "job");
            set_parent(&span, &parent);
            let tp = traceparent(&span).expect("an exported span has a context");
            assert_eq!(tp.trace_id, parent.trace_id, "same trace as the sender");
            assert_ne!(tp.span_id, parent.span_id, "a span of its own");
            assert!(tp.sampled());
            // Without a parent: a trace of its own.
            let root = tracing::info_span!(target: "surge_trace", parent: None, "job");
            let own = traceparent(&root).expect("a root span has a context");
            assert_ne!(own.trace_id, parent.trace_id);
            // Log spans are not exported.
            let other = tracing::info_span!("batch");
            assert_eq!(traceparent(&other), None);
        });
        telemetry.shutdown();
    }
}
