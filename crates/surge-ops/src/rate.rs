//! The service-rate signal both the worker and the autoscaler export: how fast one
//! worker drains its queue, learned from answered-job counters, and the time a backlog
//! takes to drain at that rate (`surge_time_to_drain_seconds`, which KEDA can scale on).

use std::time::Duration;

/// Seconds to drain `work` jobs with `workers` workers at `rate` jobs/s each.
pub fn time_to_drain(work: u64, rate: f64, workers: u32) -> Option<f64> {
    (work > 0).then(|| work as f64 / (rate.max(1e-9) * f64::from(workers.max(1))))
}

/// Learns the service rate (jobs/s per busy worker) from the workers' answered-job
/// counters, as an exponentially weighted moving average.
///
/// Only ticks where the workers were saturated (a backlog was waiting) teach it: an
/// idle worker's rate says how fast jobs arrive, not how fast it can serve them.
#[derive(Debug, Clone, PartialEq)]
pub struct RateEstimator {
    /// Weight of each new sample, in (0, 1].
    pub alpha: f64,
    rate: Option<f64>,
}

impl Default for RateEstimator {
    fn default() -> Self {
        Self {
            alpha: 0.3,
            rate: None,
        }
    }
}

impl RateEstimator {
    /// The current estimate, once there is one.
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// Feeds one tick: `answered` jobs over `elapsed` by `busy` workers, `saturated`
    /// when a backlog waited all along. Returns the estimate.
    pub fn observe(
        &mut self,
        answered: u64,
        elapsed: Duration,
        busy: u32,
        saturated: bool,
    ) -> Option<f64> {
        let secs = elapsed.as_secs_f64();
        if saturated && busy > 0 && secs > 0.0 && answered > 0 {
            let sample = answered as f64 / secs / f64::from(busy);
            self.rate = Some(match self.rate {
                None => sample,
                Some(r) => r + self.alpha * (sample - r),
            });
        }
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_learned_only_under_saturation() {
        let mut r = RateEstimator::default();
        let s = Duration::from_secs(1);
        assert_eq!(
            r.observe(500, s, 2, false),
            None,
            "idle ticks teach nothing"
        );
        assert_eq!(r.observe(0, s, 2, true), None);
        assert_eq!(r.observe(2_000, s, 2, true), Some(1000.0));
        let next = r.observe(4_000, s, 2, true).unwrap();
        assert!((next - 1300.0).abs() < 1e-9, "{next}");
        assert_eq!(
            r.observe(10, s, 0, true),
            Some(next),
            "no busy worker, no sample"
        );
    }

    #[test]
    fn time_to_drain_divides_work_over_workers() {
        assert_eq!(time_to_drain(0, 100.0, 2), None);
        assert_eq!(time_to_drain(1000, 100.0, 2), Some(5.0));
        assert_eq!(
            time_to_drain(1000, 100.0, 0),
            Some(10.0),
            "no worker counts as one"
        );
    }
}
