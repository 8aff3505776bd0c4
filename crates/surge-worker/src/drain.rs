//! The worker's view of its queues: backlog, consumers and an estimated time to
//! drain, exported on `/metrics` so that an external scaler (KEDA's Prometheus scaler,
//! say) can scale to a deadline instead of to a raw queue length.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lapin::Channel;
use surge_broker::{BrokerError, Timeouts};
use surge_protocol::Topology;

use crate::metrics as m;

/// How often the queues are read.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// Jobs this process answered, by model (read by the drain estimate).
static ANSWERED: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

/// Counts one answered job of `model`.
pub(crate) fn count_answered(model: &str) {
    if let Ok(mut map) = ANSWERED.lock() {
        *map.entry(model.to_string()).or_default() += 1;
    }
}

fn answered(model: &str) -> u64 {
    ANSWERED
        .lock()
        .map(|m| m.get(model).copied().unwrap_or(0))
        .unwrap_or(0)
}

/// This worker's service rate, jobs/s, learned while its queue had a backlog (an
/// exponentially weighted average, so one slow batch does not swing it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DrainEstimate {
    rate: Option<f64>,
}

impl DrainEstimate {
    /// Feeds `answered` jobs over `elapsed`; only saturated periods (a backlog waited)
    /// say how fast the worker can go.
    pub fn observe(&mut self, answered: u64, elapsed: Duration, saturated: bool) {
        let secs = elapsed.as_secs_f64();
        if saturated && secs > 0.0 && answered > 0 {
            let sample = answered as f64 / secs;
            self.rate = Some(match self.rate {
                None => sample,
                Some(r) => r + 0.3 * (sample - r),
            });
        }
    }

    /// Seconds for `consumers` workers like this one to drain `backlog` jobs; 0 with
    /// no backlog, `None` before any rate is known.
    pub fn time_to_drain(&self, backlog: u64, consumers: u32) -> Option<f64> {
        if backlog == 0 {
            return Some(0.0);
        }
        self.rate
            .map(|r| backlog as f64 / (r * f64::from(consumers.max(1))))
    }
}

/// Reads every model queue's depth each [`INTERVAL`] and sets the gauges; returns on
/// the first broker error (the session notices the lost connection on its own).
pub(crate) async fn watch(
    channel: Channel,
    topology: Topology,
    models: Vec<String>,
    timeouts: Timeouts,
) -> Result<(), BrokerError> {
    let mut state: BTreeMap<String, (DrainEstimate, u64, u64, Instant)> = BTreeMap::new();
    loop {
        for model in &models {
            let queue = topology.job_queue(model);
            let q = surge_broker::topology::queue_depth(&channel, &queue, &timeouts).await?;
            let backlog = u64::from(q.ready);
            let now = Instant::now();
            let done = answered(model);
            let (est, last_done, last_backlog, last_at) = state
                .entry(model.clone())
                .or_insert_with(|| (DrainEstimate::default(), done, 0, now));
            est.observe(
                done.saturating_sub(*last_done),
                now.duration_since(*last_at),
                backlog > 0 && *last_backlog > 0,
            );
            *last_done = done;
            *last_backlog = backlog;
            *last_at = now;
            let labels = [("model", model.clone())];
            metrics::gauge!(m::QUEUE_BACKLOG, &labels).set(backlog as f64);
            metrics::gauge!(m::QUEUE_CONSUMERS, &labels).set(f64::from(q.consumers));
            if let Some(t) = est.time_to_drain(backlog, q.consumers) {
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
        let mut e = DrainEstimate::default();
        assert_eq!(e.time_to_drain(0, 1), Some(0.0));
        assert_eq!(e.time_to_drain(10, 1), None);
        e.observe(500, Duration::from_secs(1), false);
        assert_eq!(e.time_to_drain(10, 1), None, "idle periods teach nothing");
        e.observe(200, Duration::from_secs(2), true);
        assert_eq!(e.time_to_drain(1000, 2), Some(5.0));
        assert_eq!(e.time_to_drain(1000, 0), Some(10.0));
    }
}
