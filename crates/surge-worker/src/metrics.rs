//! The worker's metric names (from `surge_ops::names::worker`) and its Prometheus
//! recorder, installed once per process.

use metrics_exporter_prometheus::PrometheusHandle;
use surge_ops::{Matcher, PrometheusBuilder};

// The names live in surge-ops, shared with the autoscaler, which scrapes them.
pub use surge_ops::names::worker::*;

/// Installs the process-wide Prometheus recorder (once) with the worker's histogram
/// buckets and returns its handle, or `None` when another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    let seconds = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    let rows = [
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0,
    ];
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
        .ok()?
        .set_buckets_for_metric(Matcher::Full(BATCH_ROWS.into()), &rows)
        .ok()?;
    surge_ops::install_recorder(builder)
}

/// Every reason a message is dead-lettered (the `reason` label of [`DEAD_LETTERED`]).
/// (The other decode failures are answered with an error result, not dead-lettered.)
pub const DEAD_LETTER_REASONS: [&str; 5] = [
    "missing_message_id",
    "unsupported_content_type",
    "malformed",
    "too_deep",
    "unroutable_result",
];

/// Registers the counters that alerts take `increase()` of at 0, so the first event
/// after a start is an increase Prometheus can see rather than the series' first value.
pub fn zero_counters() {
    for reason in DEAD_LETTER_REASONS {
        ::metrics::counter!(DEAD_LETTERED, "reason" => reason).absolute(0);
    }
    ::metrics::counter!(RECONNECTS).absolute(0);
}
