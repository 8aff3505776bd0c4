//! Keeping a file run's reading and writing threads out of the way of the broker and
//! the workers on the same machine ([`Background`]).
//!
//! On Linux those two threads go into the idle scheduling class (`SCHED_IDLE`): they
//! run whenever nothing else wants a CPU, and give it up at once when the broker or a
//! worker wakes. A file run spends about as much CPU again as the run loop on parsing
//! and writing, and at normal priority that work could hold the CPU when the broker or
//! the worker woke. What it buys depends on how busy the host is: of 11 paired 10M-row
//! CSV rounds on 2 cores, 7 were shorter (by 1-24%, most when the host was slow) and 4
//! longer (by 4-10%); 7% less time in all (BENCHMARKS.md, seventh session).
//!
//! The idle class is a hazard on a machine busy with something else: a thread in it
//! may get almost no CPU. So each thread watches itself: a stretch of its work that
//! took far longer than the CPU it used, while the run was waiting on it, is a starved
//! stretch ([`starved`] is the rule), and after the first one both threads go back to
//! normal priority for the rest of the process: the one that saw it at once, the other
//! at its next stretch. With two busy loops on a 2-core machine, a 500k-row CSV took
//! 2.5-3.6 s this way (the switch 215-300 ms in) and 2.4-3.8 s at normal priority;
//! when each thread needed three starved stretches in a row of its own, 4.5-8.2 s.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Set once a thread of this process was starved in the idle class: the machine has
/// other work, and every thread leaves the class.
static STARVED: AtomicBool = AtomicBool::new(false);

/// A thread's place in the scheduler, and what it has seen of being starved.
#[derive(Debug)]
pub struct Background {
    /// True while the thread is in the idle class.
    idle: bool,
    /// Where the current stretch of work started: wall clock and thread CPU time.
    started: Option<(Instant, Duration)>,
}

impl Background {
    /// Puts the calling thread in the idle class (Linux), and starts its first
    /// stretch of work. Where that is not possible (another system, or refused) the
    /// thread stays as it is, and nothing else changes.
    pub fn enter() -> Self {
        let mut bg = Self {
            idle: !STARVED.load(Ordering::Relaxed) && set_idle(true),
            started: None,
        };
        bg.start();
        bg
    }

    /// [`enter`](Self::enter) when `on`; otherwise the thread is left at normal
    /// priority, and [`start`](Self::start) and [`end`](Self::end) do nothing.
    pub fn new(on: bool) -> Self {
        if on {
            return Self::enter();
        }
        Self {
            idle: false,
            started: None,
        }
    }

    /// True while the thread is in the idle class.
    pub fn is_idle(&self) -> bool {
        self.idle
    }

    /// Starts a stretch of work (reading a job, writing one).
    pub fn start(&mut self) {
        if self.idle && STARVED.load(Ordering::Relaxed) {
            self.leave();
        }
        if self.idle {
            self.started = thread_cpu().map(|cpu| (Instant::now(), cpu));
        }
    }

    /// Ends the stretch begun by [`start`](Self::start). `run_waiting`: the run was
    /// waiting on this thread when it ended (the reader's channel empty, answered jobs
    /// queued for the writer).
    pub fn end(&mut self, run_waiting: bool) {
        let Some((at, cpu0)) = self.started.take() else {
            return;
        };
        let Some(cpu1) = thread_cpu() else {
            return;
        };
        let (wall, cpu) = (at.elapsed(), cpu1.saturating_sub(cpu0));
        if starved(wall, cpu, run_waiting) {
            STARVED.store(true, Ordering::Relaxed);
            tracing::debug!(
                thread = std::thread::current().name().unwrap_or("?"),
                ?wall,
                ?cpu,
                "a file thread was starved of CPU while the run waited on it: back to normal priority"
            );
            self.leave();
        }
    }

    /// Back to the normal class.
    fn leave(&mut self) {
        set_idle(false);
        self.idle = false;
        self.started = None;
    }
}

/// Whether a stretch of work that took `wall` and used `cpu` of its thread's time
/// was starved: the run waited on it, and it took more than four times its CPU time
/// and at least 100 ms longer. Yielding to the run's own broker and worker on 2 cores
/// held a reading thread's stretch (0.5-1 ms of CPU) for 27-31 ms at times, which a
/// 20 ms margin took for starvation in 3 runs of 5; behind two busy loops a stretch
/// waits far longer. Waiting for a disk counts too; it only costs the idle class.
fn starved(wall: Duration, cpu: Duration, run_waiting: bool) -> bool {
    run_waiting && wall > cpu * 4 + Duration::from_millis(100)
}

/// Moves the calling thread into the idle class (`idle`) or back to the normal one;
/// true if it is in the idle class afterwards.
#[cfg(target_os = "linux")]
fn set_idle(idle: bool) -> bool {
    let policy = if idle {
        libc::SCHED_IDLE
    } else {
        libc::SCHED_OTHER
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` outlives the call; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, policy, &param) };
    idle && rc == 0
}

#[cfg(not(target_os = "linux"))]
fn set_idle(_idle: bool) -> bool {
    false
}

/// The calling thread's CPU time.
#[cfg(unix)]
fn thread_cpu() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| {
        Duration::new(
            u64::try_from(ts.tv_sec).unwrap_or(0),
            u32::try_from(ts.tv_nsec).unwrap_or(0),
        )
    })
}

#[cfg(not(unix))]
fn thread_cpu() -> Option<Duration> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stretch_is_starved_only_when_the_run_waits_and_the_cpu_did_not_come() {
        let ms = Duration::from_millis;
        // Busy the whole time: not starved, however long.
        assert!(!starved(ms(500), ms(480), true));
        // Off CPU most of the time while the run waited: starved.
        assert!(starved(ms(150), ms(5), true));
        // The same while the run had other work: not this thread's problem.
        assert!(!starved(ms(150), ms(5), false));
        // Short stretches never count: yielding to the run's own broker and worker
        // for a while is what the idle class is for.
        assert!(!starved(ms(40), Duration::ZERO, true));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_starved_stretch_brings_every_thread_back_to_normal_priority() {
        // SAFETY (both queries below): the calling thread's policy.
        let policy = || unsafe { libc::sched_getscheduler(0) };
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            let mut bg = Background::enter();
            assert!(bg.is_idle(), "SCHED_IDLE needs no privilege on Linux");
            assert_eq!(policy(), libc::SCHED_IDLE);
            bg.end(false);
            wait.recv().unwrap();
            // The other thread was starved: this one leaves at its next stretch.
            bg.start();
            assert!(!bg.is_idle());
            assert_eq!(policy(), libc::SCHED_OTHER);
        });
        std::thread::spawn(move || {
            let mut bg = Background::enter();
            // Busy, or the run not waiting: it stays.
            bg.end(true);
            bg.start();
            std::thread::sleep(Duration::from_millis(30));
            bg.end(false);
            assert!(bg.is_idle());
            // Off CPU for 150 ms while the run waited.
            bg.start();
            std::thread::sleep(Duration::from_millis(150));
            bg.end(true);
            assert!(!bg.is_idle());
            assert_eq!(policy(), libc::SCHED_OTHER);
            go.send(()).unwrap();
        })
        .join()
        .unwrap();
        other.join().unwrap();
        // And a thread that enters afterwards stays at normal priority.
        std::thread::spawn(move || assert!(!Background::enter().is_idle()))
            .join()
            .unwrap();
    }
}
