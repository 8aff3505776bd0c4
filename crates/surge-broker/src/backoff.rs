//! Exponential backoff, the one retry rhythm of Surge: reconnecting (worker,
//! score-batch, autoscaler) and restarting crashed workers (autoscaler). Pure.

use std::time::Duration;

/// Delays that double from `min` up to `max`, until [`Backoff::reset`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff whose first delay is `min` and that never waits longer than `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        let max = max.max(min);
        Self {
            min,
            max,
            next: min,
        }
    }

    /// The delay to wait now; the one after it is twice as long (up to the maximum).
    pub fn next_delay(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        now
    }

    /// The delay [`Backoff::next_delay`] will return, without moving on.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// Back to the first delay (after a success that lasted).
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_maximum_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(500));
        let got: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert_eq!(got, [ms(100), ms(200), ms(400), ms(500), ms(500)]);
        assert_eq!(b.peek(), ms(500));
        b.reset();
        assert_eq!(b.next_delay(), ms(100));
        // A maximum below the minimum is the minimum.
        assert_eq!(Backoff::new(ms(300), ms(1)).next_delay(), ms(300));
    }
}
