//! The batching policy, as plain functions: when a gathered batch must go to the
//! model. Tested without a broker.

use std::time::{Duration, Instant};

/// When to close a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Close once this many rows are gathered. A single job larger than this is scored
    /// alone: jobs are never split.
    pub max_rows: usize,
    /// Close once the oldest gathered job has waited this long.
    pub max_wait: Duration,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        Self {
            max_rows: 512,
            max_wait: Duration::from_millis(5),
        }
    }
}

impl BatchPolicy {
    /// Whether a batch of `rows` rows whose oldest job arrived at `oldest` must close
    /// at `now`.
    pub fn should_close(&self, rows: usize, oldest: Option<Instant>, now: Instant) -> bool {
        match oldest {
            None => false,
            Some(t) => rows >= self.max_rows || now.saturating_duration_since(t) >= self.max_wait,
        }
    }

    /// Whether a batch of `rows` rows should close once every delivery that was ready
    /// has been taken: yes when the model is idle (continuous batching: under low load
    /// a job goes at once instead of waiting `max_wait`; under load the model is busy
    /// and batches fill up while it works).
    pub fn close_when_drained(&self, rows: usize, model_idle: bool) -> bool {
        rows > 0 && (model_idle || rows >= self.max_rows)
    }

    /// When a batch whose oldest job arrived at `oldest` must close at the latest.
    pub fn deadline(&self, oldest: Instant) -> Instant {
        oldest + self.max_wait
    }

    /// Whether a job of `job_rows` rows still fits a batch of `rows` rows; a job that
    /// does not fit closes the batch first (an empty batch takes any job).
    pub fn fits(&self, rows: usize, job_rows: usize) -> bool {
        rows == 0 || rows + job_rows <= self.max_rows
    }

    /// The prefetch count that keeps a batch and the next one supplied with one-row
    /// jobs, bounded so a worker never hoards a queue.
    pub fn default_prefetch(&self) -> u16 {
        (2 * self.max_rows).clamp(8, 1024) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_on_rows_or_age() {
        let p = BatchPolicy {
            max_rows: 100,
            max_wait: Duration::from_millis(5),
        };
        let t0 = Instant::now();
        assert!(!p.should_close(0, None, t0));
        assert!(!p.should_close(10, Some(t0), t0));
        assert!(p.should_close(100, Some(t0), t0));
        assert!(p.should_close(10, Some(t0), t0 + Duration::from_millis(5)));
        assert_eq!(p.deadline(t0), t0 + Duration::from_millis(5));
    }

    #[test]
    fn an_idle_model_takes_what_is_ready_at_once() {
        let p = BatchPolicy {
            max_rows: 100,
            max_wait: Duration::from_millis(5),
        };
        assert!(p.close_when_drained(1, true));
        assert!(!p.close_when_drained(1, false));
        assert!(p.close_when_drained(100, false));
        assert!(!p.close_when_drained(0, true));
    }

    #[test]
    fn large_jobs_go_alone_and_never_split() {
        let p = BatchPolicy {
            max_rows: 100,
            max_wait: Duration::from_millis(5),
        };
        assert!(p.fits(0, 4096));
        assert!(!p.fits(1, 4096));
        assert!(p.fits(60, 40));
        assert!(!p.fits(61, 40));
    }

    #[test]
    fn prefetch_follows_batch_size_within_bounds() {
        let p = |r| {
            BatchPolicy {
                max_rows: r,
                max_wait: Duration::ZERO,
            }
            .default_prefetch()
        };
        assert_eq!(p(1), 8);
        assert_eq!(p(256), 512);
        assert_eq!(p(100_000), 1024);
    }
}
