//! The memory a file run holds between reading a job and writing it out
//! ([`ByteBudget`]).
//!
//! The run's window bounds the jobs in flight ([`crate::ScoreConfig::max_in_flight_bytes`]),
//! but a job also waits in the reader's channel before it enters the window, and in the
//! writer's channel after it leaves. At 256 rows per job those waits hold a few MB; at
//! 16,384 rows per job (3.4 MB of CSV each) they held up to 80 jobs, and a 2M-row run
//! peaked at 282 MB of RSS with `--max-in-flight-mb 64`. The budget counts a job from
//! the moment it is read to the moment it is written, so the flag bounds what it says.

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

/// Bytes held by jobs read and not yet written, shared by the reading thread (which
/// waits for room before it reads another job) and the writing thread (which gives a
/// job's bytes back once it is written).
#[derive(Debug)]
pub struct ByteBudget {
    limit: usize,
    held: Mutex<usize>,
    freed: Condvar,
}

impl ByteBudget {
    /// A budget of `limit` bytes. A job is always taken when nothing is held, so a
    /// job larger than the limit still goes (alone).
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            held: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, usize> {
        // A panic elsewhere never leaves the count half-updated: take it as it is.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The rule: another job may be read when nothing is held, or less than the limit.
    fn room(&self, held: usize) -> bool {
        held == 0 || held < self.limit
    }

    /// True when another job may be read (nothing is held, or less than the limit).
    pub fn has_room(&self) -> bool {
        self.room(*self.held())
    }

    /// Waits up to `timeout` for room (see [`has_room`](Self::has_room)); true if there
    /// is room. The reader waits in short steps, so that it sees when the run has
    /// stopped (its channel closed) and no job will be given back again.
    pub fn wait_for_room(&self, timeout: Duration) -> bool {
        let held = self.held();
        let (held, _) = self
            .freed
            .wait_timeout_while(held, timeout, |h| !self.room(*h))
            .unwrap_or_else(PoisonError::into_inner);
        self.room(*held)
    }

    /// Blocks until there is room, looking every `poll` whether `stopped()` (the run
    /// has ended, so no job will be given back again); false if it stopped first.
    pub fn wait_for_room_unless(&self, poll: Duration, stopped: impl Fn() -> bool) -> bool {
        while !self.wait_for_room(poll) {
            if stopped() {
                return false;
            }
        }
        true
    }

    /// Counts a job of `bytes` just read.
    pub fn take(&self, bytes: usize) {
        *self.held() += bytes;
    }

    /// Gives back the `bytes` of a job written out, waking the reader.
    pub fn give_back(&self, bytes: usize) {
        let mut held = self.held();
        *held = held.saturating_sub(bytes);
        drop(held);
        self.freed.notify_all();
    }

    /// Bytes held now.
    pub fn in_use(&self) -> usize {
        *self.held()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn room_until_the_limit_is_reached_and_always_when_empty() {
        let b = ByteBudget::new(100);
        assert!(b.has_room());
        // A job larger than the whole budget still goes, alone.
        b.take(250);
        assert!(!b.has_room());
        b.give_back(250);
        assert!(b.has_room());
        b.take(60);
        assert!(b.has_room(), "60 of 100 held");
        b.take(40);
        assert!(!b.has_room(), "100 of 100 held");
        assert_eq!(b.in_use(), 100);
        b.give_back(40);
        assert!(b.has_room());
        assert_eq!(b.in_use(), 60);
    }

    #[test]
    fn a_waiting_reader_wakes_when_a_job_is_written() {
        let b = Arc::new(ByteBudget::new(10));
        b.take(10);
        let writer = {
            let b = Arc::clone(&b);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                b.give_back(10);
            })
        };
        let t0 = Instant::now();
        assert!(b.wait_for_room(Duration::from_secs(10)));
        // Woken by the writer, not by the timeout.
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(writer.join().is_ok(), "the writer panicked");
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn a_reader_stops_waiting_once_the_run_has_stopped() {
        let b = ByteBudget::new(10);
        b.take(10);
        let looked = std::cell::Cell::new(0);
        let stopped = || {
            looked.set(looked.get() + 1);
            looked.get() == 3
        };
        assert!(!b.wait_for_room_unless(Duration::from_millis(1), stopped));
        assert_eq!(looked.get(), 3);
        b.give_back(10);
        assert!(b.wait_for_room_unless(Duration::from_millis(1), || true));
    }

    #[test]
    fn waiting_gives_up_after_its_timeout_when_nothing_is_written() {
        let b = ByteBudget::new(10);
        b.take(11);
        let t0 = Instant::now();
        assert!(!b.wait_for_room(Duration::from_millis(30)));
        assert!(t0.elapsed() >= Duration::from_millis(30));
    }
}
