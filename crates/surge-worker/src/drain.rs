//! The worker's view of its queues: backlog, consumers and an estimated time to
//! drain, exported on `/metrics` so that an external scaler (KEDA's Prometheus scaler,
//! say) can scale to a deadline instead of to a raw queue length.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lapin::Channel;
use surge_broker::{BrokerError, Timeouts};
use surge_ops::rate::RateEstimator;
use surge_protocol::Topology;

use crate::metrics as m;

/// How often the queues are read.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// Jobs a session answered, by model (read by the drain estimate). Owned by the
/// session: a new session learns its rate afresh.
#[derive(Debug, Default)]
pub(crate) struct Answered(Mutex<BTreeMap<String, u64>>);

impl Answered {
    /// Counts one answered job of `model`.
    pub(crate) fn count(&self, model: &str) {
        if let Ok(mut map) = self.0.lock() {
            *map.entry(model.to_string()).or_default() += 1;
        }
    }

    fn of(&self, model: &str) -> u64 {
        self.0
            .lock()
            .map(|m| m.get(model).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

/// Seconds for `consumers` workers like this one to drain `backlog` jobs at the rate
/// `est` learned while the queue had a backlog: 0 with no backlog, `None` before any
/// rate is known.
fn drain_seconds(est: &RateEstimator, backlog: u64, consumers: u32) -> Option<f64> {
    if backlog == 0 {
        return Some(0.0);
    }
    est.rate()
        .and_then(|r| surge_ops::rate::time_to_drain(backlog, r, consumers))
}

/// Reads every model queue's depth each [`INTERVAL`] and sets the gauges; returns on
/// the first broker error (the session notices the lost connection on its own).
pub(crate) async fn watch(
    channel: Channel,
    topology: Topology,
    models: Vec<String>,
    timeouts: Timeouts,
    answered: std::sync::Arc<Answered>,
) -> Result<(), BrokerError> {
    let mut state: BTreeMap<String, (RateEstimator, u64, u64, Instant)> = BTreeMap::new();
    loop {
        for model in &models {
            let (q, _) =
                surge_broker::topology::model_depth(&channel, &topology, model, &timeouts).await?;
            let backlog = u64::from(q.ready);
            let now = Instant::now();
            let done = answered.of(model);
            let (est, last_done, last_backlog, last_at) = state
                .entry(model.clone())
                .or_insert_with(|| (RateEstimator::default(), done, 0, now));
            // One worker (this one); only saturated periods say how fast it can go.
            est.observe(
                done.saturating_sub(*last_done),
                now.duration_since(*last_at),
                1,
                backlog > 0 && *last_backlog > 0,
            );
            *last_done = done;
            *last_backlog = backlog;
            *last_at = now;
            let labels = [("model", model.clone())];
            metrics::gauge!(m::QUEUE_BACKLOG, &labels).set(backlog as f64);
            metrics::gauge!(m::QUEUE_CONSUMERS, &labels).set(f64::from(q.consumers));
            if let Some(t) = drain_seconds(est, backlog, q.consumers) {
                metrics::gauge!(m::TIME_TO_DRAIN, &labels).set(t);
            }
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_time_uses_the_rate_learned_under_load() {
        let mut e = RateEstimator::default();
        assert_eq!(drain_seconds(&e, 0, 1), Some(0.0));
        assert_eq!(drain_seconds(&e, 10, 1), None);
        e.observe(500, Duration::from_secs(1), 1, false);
        assert_eq!(drain_seconds(&e, 10, 1), None, "idle periods teach nothing");
        e.observe(200, Duration::from_secs(2), 1, true);
        assert_eq!(drain_seconds(&e, 1000, 2), Some(5.0));
        assert_eq!(drain_seconds(&e, 1000, 0), Some(10.0));
    }
}
