//! The scaling policy, as plain functions: how many workers a model's queue needs.
//! No broker, no processes, no clock: time comes in with each [`Observation`], so the
//! policy is tested against traces (burst, steady load, idle, flapping, a worker that
//! dies) in microseconds.
//!
//! The rule, in words:
//!
//! * **Work** is the backlog (ready messages) plus the jobs in flight (delivered to a
//!   worker, not yet acked). Counting in-flight jobs matters: a worker prefetches, so
//!   a queue can read empty while hundreds of jobs are still being scored.
//! * **Need** is the number of workers that drain the work within `target_drain` at
//!   the measured service rate (jobs/s per worker; `initial_rate` until measured), at
//!   least one while any work remains.
//! * **Up at once, down slowly**: the desired count is the largest need seen during
//!   the last `scale_down_window` (a burst raises it immediately; a lull has to last
//!   the whole window before workers go), so a flapping load does not flap workers.
//! * **Zero only when idle**: no backlog and nothing in flight for `cooldown`. While
//!   any job is in flight at least one worker stays, whatever the window says.
//! * Bounded by `min` (0 allowed: scale to zero) and `max`.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

pub use surge_ops::rate::{time_to_drain, RateEstimator};

/// The knobs of the policy.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    /// Fewest workers (0: scale to zero when idle).
    pub min: u32,
    /// Most workers.
    pub max: u32,
    /// Size the pool to drain the work within this time.
    pub target_drain: Duration,
    /// Scale down only to the largest need seen during this window.
    pub scale_down_window: Duration,
    /// Idle (no backlog, nothing in flight) this long before the last worker goes.
    pub cooldown: Duration,
    /// Jobs/s one worker is assumed to serve until a rate has been measured.
    pub initial_rate: f64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            min: 0,
            max: 4,
            target_drain: Duration::from_secs(10),
            scale_down_window: Duration::from_secs(30),
            cooldown: Duration::from_secs(60),
            initial_rate: 100.0,
        }
    }
}

/// What the autoscaler saw at one tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Time since the autoscaler started.
    pub at: Duration,
    /// Ready messages in the queue.
    pub backlog: u64,
    /// Jobs delivered to workers and not yet acked.
    pub in_flight: u64,
    /// Workers running now (not counting those draining).
    pub running: u32,
    /// Measured jobs/s per busy worker, when known.
    pub rate_per_worker: Option<f64>,
}

/// Why the desired count is what it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// Work needs this many workers to drain within the target.
    Work {
        /// Backlog plus in flight.
        work: u64,
        /// Jobs/s per worker used.
        rate: f64,
    },
    /// Need fell, but a larger need was seen within the scale-down window.
    Stabilising {
        /// The need right now.
        need: u32,
    },
    /// Nothing to do, but not idle for the whole cooldown yet: one worker stays.
    CoolingDown {
        /// How long it has been idle.
        idle_for: Duration,
    },
    /// Idle for the whole cooldown.
    Idle,
    /// Jobs are in flight with an empty queue: keep a worker to finish them.
    InFlight {
        /// Jobs in flight.
        in_flight: u64,
    },
    /// The policy wanted another count; `--min`/`--max` bound it.
    Bounded {
        /// What the policy wanted.
        wanted: u32,
        /// Why it wanted it.
        because: Box<Reason>,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Work { work, rate } => write!(
                f,
                "{work} jobs queued or in flight at {rate:.1} jobs/s per worker"
            ),
            Reason::Stabilising { need } => write!(
                f,
                "need fell to {need}; holding the larger need seen within the scale-down window"
            ),
            Reason::CoolingDown { idle_for } => write!(
                f,
                "idle for {:.1}s, waiting for the cooldown before scaling to zero",
                idle_for.as_secs_f64()
            ),
            Reason::Idle => write!(f, "idle for the whole cooldown"),
            Reason::InFlight { in_flight } => {
                write!(f, "{in_flight} jobs still in flight")
            }
            Reason::Bounded { wanted, because } => {
                write!(f, "bounded by --min/--max (wanted {wanted}: {because})")
            }
        }
    }
}

/// The policy's answer for one tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Workers wanted, within `min..=max`.
    pub desired: u32,
    /// Workers the current work alone needs (before stabilisation and bounds).
    pub need: u32,
    /// Why.
    pub reason: Reason,
    /// Estimated seconds to drain the work with the workers running now (with one
    /// worker when none runs); `None` when there is no work.
    pub time_to_drain: Option<f64>,
}

/// What the policy remembers between ticks.
#[derive(Debug, Clone, Default)]
pub struct PolicyState {
    /// Needs seen within the scale-down window, oldest first.
    history: VecDeque<(Duration, u32)>,
    /// Since when the queue has been idle.
    idle_since: Option<Duration>,
}

/// Workers needed to drain `work` jobs within `target` at `rate` jobs/s per worker
/// (at least one while there is work).
pub fn workers_needed(work: u64, rate: f64, target: Duration) -> u32 {
    if work == 0 {
        return 0;
    }
    let per_worker = rate.max(1e-9) * target.as_secs_f64().max(1e-3);
    let n = (work as f64 / per_worker).ceil();
    n.clamp(1.0, u32::MAX as f64) as u32
}

impl PolicyConfig {
    /// Decides the desired worker count for one observation, updating `state`.
    pub fn decide(&self, state: &mut PolicyState, obs: &Observation) -> Decision {
        let rate = obs
            .rate_per_worker
            .filter(|r| r.is_finite() && *r > 0.0)
            .unwrap_or(self.initial_rate);
        let work = obs.backlog.saturating_add(obs.in_flight);
        let need = workers_needed(work, rate, self.target_drain);

        if work == 0 {
            state.idle_since.get_or_insert(obs.at);
        } else {
            state.idle_since = None;
        }
        state.history.push_back((obs.at, need));
        while let Some(&(t, _)) = state.history.front() {
            if obs.at.saturating_sub(t) > self.scale_down_window {
                state.history.pop_front();
            } else {
                break;
            }
        }
        let held = state.history.iter().map(|&(_, n)| n).max().unwrap_or(0);

        let (mut desired, reason) = if need > 0 && need >= held {
            (need, Reason::Work { work, rate })
        } else if held > 0 && held.min(obs.running.max(need)) > need {
            // Never hold more than what runs: holding is about not scaling down,
            // not about scaling up again after a worker has gone.
            (
                held.min(obs.running.max(need)),
                Reason::Stabilising { need },
            )
        } else if need > 0 {
            (need, Reason::Work { work, rate })
        } else {
            let idle_for = state
                .idle_since
                .map(|t| obs.at.saturating_sub(t))
                .unwrap_or_default();
            if idle_for >= self.cooldown {
                (0, Reason::Idle)
            } else if obs.running > 0 {
                (1, Reason::CoolingDown { idle_for })
            } else {
                // Already at zero and still idle: stay there.
                (0, Reason::Idle)
            }
        };
        if obs.in_flight > 0 && desired == 0 {
            desired = 1;
        }
        let reason = if obs.in_flight > 0 && obs.backlog == 0 && need <= 1 && desired == 1 {
            Reason::InFlight {
                in_flight: obs.in_flight,
            }
        } else {
            reason
        };
        let bounded = desired.clamp(self.min, self.max.max(self.min));
        let reason = if bounded == desired {
            reason
        } else {
            Reason::Bounded {
                wanted: desired,
                because: Box::new(reason),
            }
        };
        let desired = bounded;
        Decision {
            desired,
            need,
            reason,
            time_to_drain: time_to_drain(work, rate, obs.running),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PolicyConfig {
        PolicyConfig {
            min: 0,
            max: 8,
            target_drain: Duration::from_secs(10),
            scale_down_window: Duration::from_secs(30),
            cooldown: Duration::from_secs(60),
            initial_rate: 100.0,
        }
    }

    fn obs(
        at_s: u64,
        backlog: u64,
        in_flight: u64,
        running: u32,
        rate: Option<f64>,
    ) -> Observation {
        Observation {
            at: Duration::from_secs(at_s),
            backlog,
            in_flight,
            running,
            rate_per_worker: rate,
        }
    }

    /// Runs a trace where the pool follows the decision at once; returns the desired
    /// counts.
    fn run(cfg: &PolicyConfig, trace: &[(u64, u64, u64, Option<f64>)]) -> Vec<u32> {
        let mut state = PolicyState::default();
        let mut running = 0;
        trace
            .iter()
            .map(|&(at, backlog, in_flight, rate)| {
                let d = cfg.decide(&mut state, &obs(at, backlog, in_flight, running, rate));
                running = d.desired;
                d.desired
            })
            .collect()
    }

    #[test]
    fn need_is_work_over_what_one_worker_drains_in_the_target() {
        let t = Duration::from_secs(10);
        assert_eq!(workers_needed(0, 100.0, t), 0);
        assert_eq!(workers_needed(1, 100.0, t), 1);
        assert_eq!(workers_needed(1000, 100.0, t), 1);
        assert_eq!(workers_needed(1001, 100.0, t), 2);
        assert_eq!(workers_needed(20_000, 100.0, t), 20);
        // A nonsense rate never divides by zero.
        assert!(workers_needed(10, 0.0, t) > 1_000_000);
        assert_eq!(time_to_drain(0, 100.0, 2), None);
        assert_eq!(time_to_drain(1000, 100.0, 2), Some(5.0));
        assert_eq!(time_to_drain(1000, 100.0, 0), Some(10.0));
    }

    #[test]
    fn a_burst_from_zero_scales_up_at_once_within_max() {
        let d = cfg().decide(&mut PolicyState::default(), &obs(0, 20_000, 0, 0, None));
        assert_eq!(d.desired, 8, "{d:?}");
        assert_eq!(d.need, 20);
        let Reason::Bounded {
            wanted: 20,
            because,
        } = &d.reason
        else {
            panic!("{d:?}")
        };
        assert!(matches!(**because, Reason::Work { work: 20_000, .. }));
        assert_eq!(d.time_to_drain, Some(200.0));
        // One job from zero starts one worker.
        let d = cfg().decide(&mut PolicyState::default(), &obs(0, 1, 0, 0, None));
        assert_eq!(d.desired, 1);
    }

    #[test]
    fn the_measured_rate_replaces_the_assumed_one() {
        // 20,000 jobs at a measured 1,000 jobs/s per worker: 2 workers drain in 10 s.
        let d = cfg().decide(
            &mut PolicyState::default(),
            &obs(0, 20_000, 0, 0, Some(1000.0)),
        );
        assert_eq!(d.desired, 2);
        // A nonsense measurement falls back to the assumed rate.
        let d = cfg().decide(
            &mut PolicyState::default(),
            &obs(0, 2_000, 0, 0, Some(f64::NAN)),
        );
        assert_eq!(d.desired, 2);
    }

    #[test]
    fn in_flight_jobs_count_as_work_and_keep_a_worker() {
        // The queue reads empty because one worker prefetched everything.
        let d = cfg().decide(&mut PolicyState::default(), &obs(0, 0, 3_000, 1, None));
        assert_eq!(d.desired, 3);
        // Long after any cooldown, one job in flight still keeps one worker.
        let mut s = PolicyState::default();
        cfg().decide(&mut s, &obs(0, 0, 0, 1, None));
        let d = cfg().decide(&mut s, &obs(500, 0, 1, 1, None));
        assert_eq!(d.desired, 1);
        assert!(
            matches!(d.reason, Reason::InFlight { in_flight: 1 }),
            "{d:?}"
        );
    }

    #[test]
    fn steady_load_holds_a_steady_pool() {
        // 1,500 jobs waiting at every tick, 100 jobs/s per worker: 2 workers, always.
        let trace: Vec<_> = (0..120).map(|t| (t, 1_500, 40, Some(100.0))).collect();
        let out = run(&cfg(), &trace);
        assert!(out.iter().all(|&d| d == 2), "{out:?}");
    }

    #[test]
    fn idle_goes_to_zero_only_after_the_cooldown() {
        let mut trace = vec![(0, 5_000, 0, None)];
        trace.extend((1..=100).map(|t| (t, 0, 0, None)));
        let out = run(&cfg(), &trace);
        assert_eq!(out[0], 5);
        // Held by the window for 30 s, one worker until 60 s of idleness, then zero.
        assert_eq!(out[29], 5, "{out:?}");
        assert_eq!(out[32], 1, "{out:?}");
        assert_eq!(out[60], 1, "{out:?}");
        assert_eq!(out[61], 0, "{out:?}");
        assert!(out[61..].iter().all(|&d| d == 0));
        // And a job arriving at zero starts one at once.
        let mut s = PolicyState::default();
        let p = cfg();
        p.decide(&mut s, &obs(0, 0, 0, 0, None));
        assert_eq!(p.decide(&mut s, &obs(1, 0, 0, 0, None)).desired, 0);
        assert_eq!(p.decide(&mut s, &obs(2, 1, 0, 0, None)).desired, 1);
    }

    #[test]
    fn a_flapping_load_does_not_flap_workers() {
        // Bursts every 10 s, an empty queue in between.
        let trace: Vec<_> = (0..120)
            .map(|t| (t, if t % 10 < 2 { 3_000 } else { 0 }, 0, None))
            .collect();
        let out = run(&cfg(), &trace);
        let changes = out.windows(2).filter(|w| w[0] != w[1]).count();
        assert_eq!(out[0], 3);
        assert_eq!(changes, 0, "{out:?}");
    }

    #[test]
    fn a_lull_shorter_than_the_window_keeps_the_pool_then_it_shrinks() {
        let mut trace: Vec<_> = (0..10).map(|t| (t, 4_000, 100, Some(100.0))).collect();
        trace.extend((10..60).map(|t| (t, 500, 100, Some(100.0))));
        let out = run(&cfg(), &trace);
        assert_eq!(out[9], 5);
        assert_eq!(out[30], 5, "still inside the window: {out:?}");
        assert_eq!(out[45], 1, "after the window: {out:?}");
    }

    #[test]
    fn a_worker_that_dies_is_replaced() {
        let p = cfg();
        let mut s = PolicyState::default();
        assert_eq!(p.decide(&mut s, &obs(0, 3_000, 0, 0, None)).desired, 3);
        assert_eq!(p.decide(&mut s, &obs(1, 2_900, 50, 3, None)).desired, 3);
        // One dies: the pool reads 2, the work still needs 3.
        let d = p.decide(&mut s, &obs(2, 2_800, 30, 2, None));
        assert_eq!(d.desired, 3, "{d:?}");
    }

    #[test]
    fn bounds_hold() {
        let p = PolicyConfig {
            min: 2,
            max: 3,
            ..cfg()
        };
        let out = run(
            &p,
            &[(0, 0, 0, None), (1, 100_000, 0, None), (500, 0, 0, None)],
        );
        assert_eq!(out, vec![2, 3, 2]);
        let d = p.decide(&mut PolicyState::default(), &obs(0, 0, 0, 0, None));
        assert!(
            matches!(d.reason, Reason::Bounded { wanted: 0, .. }),
            "{d:?}"
        );
        assert!(d
            .reason
            .to_string()
            .starts_with("bounded by --min/--max (wanted 0"));
    }
}
