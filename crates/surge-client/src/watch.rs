//! Telling the person running `score-batch` why nothing is happening, instead of
//! waiting in silence: nobody consumes the model's queue, or every job so far came
//! back as an error. Pure bookkeeping; the run decides where the words go (the
//! progress bar on a terminal, a WARN log line otherwise).

use std::time::{Duration, Instant};

use surge_protocol::{JobResult, Status};

/// What [`IdleWatch::observe`] says to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleSignal {
    /// Nothing to say.
    Quiet,
    /// Nobody has consumed the queue for this long: say so (again).
    Idle(Duration),
    /// A consumer came back after [`IdleSignal::Idle`] was said: take it back.
    Resumed,
}

/// Watches the consumer count of the model's queue.
#[derive(Debug, Clone)]
pub struct IdleWatch {
    after: Duration,
    every: Duration,
    idle_since: Option<Instant>,
    last_said: Option<Instant>,
}

impl IdleWatch {
    /// Speaks once the queue has had no consumer for `after`, then at most every
    /// `every` while that lasts.
    pub fn new(after: Duration, every: Duration) -> Self {
        Self {
            after,
            every,
            idle_since: None,
            last_said: None,
        }
    }

    /// The watch starts as if the queue had been idle since `at` (when the run
    /// began), so the first hint does not wait for a probe to find it idle.
    pub fn idle_from(mut self, at: Instant) -> Self {
        self.idle_since = Some(at);
        self
    }

    /// True while a hint is out (said and not taken back).
    pub fn is_saying(&self) -> bool {
        self.last_said.is_some()
    }

    /// Records that the queue has `consumers` consumers at `now`.
    pub fn observe(&mut self, consumers: u32, now: Instant) -> IdleSignal {
        if consumers > 0 {
            self.idle_since = None;
            return if self.last_said.take().is_some() {
                IdleSignal::Resumed
            } else {
                IdleSignal::Quiet
            };
        }
        let since = *self.idle_since.get_or_insert(now);
        let idle = now.saturating_duration_since(since);
        if idle < self.after {
            return IdleSignal::Quiet;
        }
        match self.last_said {
            Some(at) if now.saturating_duration_since(at) < self.every => IdleSignal::Quiet,
            _ => {
                self.last_said = Some(now);
                IdleSignal::Idle(idle)
            }
        }
    }
}

/// Watches the first answers: when the first `threshold` answered jobs (or every job
/// of a smaller run) all failed, the run is almost surely misconfigured, and the
/// first error says how.
#[derive(Debug, Clone)]
pub struct FailWatch {
    threshold: usize,
    ok: usize,
    failed: usize,
    first_error: Option<String>,
    said: bool,
}

impl FailWatch {
    /// Speaks once `threshold` jobs (at least 1) have failed and none scored.
    pub fn new(threshold: usize) -> Self {
        Self {
            threshold: threshold.max(1),
            ok: 0,
            failed: 0,
            first_error: None,
            said: false,
        }
    }

    /// Records a job's (first) result; returns the message to show, once.
    pub fn record(&mut self, result: &JobResult) -> Option<String> {
        if result.status == Status::Ok {
            self.ok += 1;
            return None;
        }
        self.failed += 1;
        if self.first_error.is_none() {
            self.first_error = Some(match &result.error {
                Some(e) => format!("{}: {}", e.kind, e.message),
                None => format!("{:?} with no error", result.status),
            });
        }
        if self.said || self.ok > 0 || self.failed < self.threshold {
            return None;
        }
        self.said = true;
        Some(format!(
            "every job so far failed ({} of {} answered); the first error: {}",
            self.failed,
            self.failed,
            self.first_error.as_deref().unwrap_or("")
        ))
    }
}

#[cfg(test)]
mod tests {
    use surge_protocol::{ErrorKind, JobResult};

    use super::*;

    #[test]
    fn idle_is_said_after_the_delay_then_at_most_every_period_and_taken_back() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = IdleWatch::new(s(10), s(30)).idle_from(t0);
        assert_eq!(w.observe(0, t0 + s(5)), IdleSignal::Quiet);
        assert_eq!(w.observe(0, t0 + s(10)), IdleSignal::Idle(s(10)));
        assert!(w.is_saying());
        assert_eq!(w.observe(0, t0 + s(20)), IdleSignal::Quiet);
        assert_eq!(w.observe(0, t0 + s(40)), IdleSignal::Idle(s(40)));
        assert_eq!(w.observe(1, t0 + s(41)), IdleSignal::Resumed);
        assert_eq!(w.observe(1, t0 + s(42)), IdleSignal::Quiet);
        // Idle again: the clock starts over.
        assert_eq!(w.observe(0, t0 + s(50)), IdleSignal::Quiet);
        assert_eq!(w.observe(0, t0 + s(60)), IdleSignal::Idle(s(10)));
        // A consumer that never left is never announced.
        let mut busy = IdleWatch::new(s(10), s(30));
        assert_eq!(busy.observe(2, t0 + s(100)), IdleSignal::Quiet);
    }

    fn failed(id: &str, msg: &str) -> JobResult {
        JobResult::failure(id, "m", ErrorKind::InvalidInput, msg, "w")
    }

    #[test]
    fn every_failure_so_far_is_said_once_with_the_first_error() {
        let mut w = FailWatch::new(2);
        assert_eq!(w.record(&failed("a", "missing columns: x")), None);
        let said = w.record(&failed("b", "other")).unwrap();
        assert!(
            said.contains("every job so far failed (2 of 2 answered)")
                && said.contains("invalid_input: missing columns: x"),
            "{said}"
        );
        assert_eq!(w.record(&failed("c", "other")), None);

        let mut ok_first = FailWatch::new(2);
        let mut ok = failed("a", "");
        ok.status = Status::Ok;
        ok.error = None;
        ok_first.record(&ok);
        assert_eq!(ok_first.record(&failed("b", "x")), None);
        assert_eq!(ok_first.record(&failed("c", "x")), None);
    }
}
