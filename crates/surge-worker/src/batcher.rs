//! The batching policy, as plain functions: when a gathered batch must go to the
//! model. Tested without a broker.
//!
//! A batch is measured in rows and, for text models, in tokens: a worker packs text
//! jobs up to a token budget as well as a row budget, because a transformer's cost
//! follows tokens, not texts. Tokens are estimated from the text ([`estimate_tokens`]),
//! so the broker-facing side never needs the model's tokenizer; the model thread
//! tokenises for real and sorts by length inside the batch.

use std::time::{Duration, Instant};

use surge_model::InputSpec;
use surge_protocol::Inputs;

/// When to close a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Close once this many rows are gathered. A single job larger than this is scored
    /// alone: jobs are never split.
    pub max_rows: usize,
    /// Close once the oldest gathered job has waited this long.
    pub max_wait: Duration,
    /// Close once this many (estimated) tokens of text are gathered; 0 means no token
    /// budget. Rows of numbers count no tokens. A single job over the budget is scored
    /// alone.
    pub max_tokens: usize,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        Self {
            max_rows: 512,
            max_wait: Duration::from_millis(5),
            max_tokens: 16_384,
        }
    }
}

/// How much a batch (or a job) holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fill {
    /// Rows or texts.
    pub rows: usize,
    /// Estimated tokens of text (0 for rows of numbers).
    pub tokens: usize,
}

impl Fill {
    /// The fill of one job's inputs for a model that takes `input`.
    pub fn of(inputs: &Inputs, input: &InputSpec) -> Self {
        let tokens = match (inputs, input) {
            (Inputs::Texts(texts), InputSpec::Text { max_length }) => texts
                .iter()
                .map(|t| estimate_tokens(t).min(*max_length))
                .sum(),
            _ => 0,
        };
        Self {
            rows: inputs.len(),
            tokens,
        }
    }

    /// The sum of two fills.
    pub fn plus(self, other: Fill) -> Fill {
        Fill {
            rows: self.rows + other.rows,
            tokens: self.tokens + other.tokens,
        }
    }
}

/// A cheap upper-leaning estimate of a text's WordPiece tokens, `[CLS]` and `[SEP]`
/// included: about 4/3 tokens per word, one per punctuation mark, one per non-ASCII
/// character (CJK characters are single tokens). It only steers batch sizes.
pub fn estimate_tokens(text: &str) -> usize {
    let words = text.split_whitespace().count();
    let punct = text.bytes().filter(u8::is_ascii_punctuation).count();
    let non_ascii = text.chars().filter(|c| !c.is_ascii()).count();
    2 + (words * 4).div_ceil(3) + punct + non_ascii
}

impl BatchPolicy {
    /// Whether a batch holding `fill` has reached a budget.
    pub fn is_full(&self, fill: Fill) -> bool {
        fill.rows >= self.max_rows || (self.max_tokens > 0 && fill.tokens >= self.max_tokens)
    }

    /// Whether a batch holding `fill` whose oldest job arrived at `oldest` must close
    /// at `now`.
    pub fn should_close(&self, fill: Fill, oldest: Option<Instant>, now: Instant) -> bool {
        match oldest {
            None => false,
            Some(t) => self.is_full(fill) || now.saturating_duration_since(t) >= self.max_wait,
        }
    }

    /// Whether a batch holding `fill` should close once every delivery that was ready
    /// has been taken: yes when the model is idle (continuous batching: under low load
    /// a job goes at once instead of waiting `max_wait`; under load the model is busy
    /// and batches fill up while it works).
    pub fn close_when_drained(&self, fill: Fill, model_idle: bool) -> bool {
        fill.rows > 0 && (model_idle || self.is_full(fill))
    }

    /// When a batch whose oldest job arrived at `oldest` must close at the latest.
    pub fn deadline(&self, oldest: Instant) -> Instant {
        oldest + self.max_wait
    }

    /// Whether a job of `job` still fits a batch holding `fill`; a job that does not
    /// fit closes the batch first (an empty batch takes any job).
    pub fn fits(&self, fill: Fill, job: Fill) -> bool {
        let sum = fill.plus(job);
        fill.rows == 0
            || (sum.rows <= self.max_rows
                && (self.max_tokens == 0 || sum.tokens <= self.max_tokens))
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

    fn rows(rows: usize) -> Fill {
        Fill { rows, tokens: 0 }
    }

    fn texts(rows: usize, tokens: usize) -> Fill {
        Fill { rows, tokens }
    }

    #[test]
    fn text_jobs_are_packed_by_tokens() {
        let p = BatchPolicy {
            max_rows: 512,
            max_wait: Duration::from_millis(5),
            max_tokens: 1000,
        };
        // Few texts, many tokens: the token budget closes the batch, not the rows.
        assert!(p.fits(texts(10, 600), texts(10, 400)));
        assert!(!p.fits(texts(10, 600), texts(10, 401)));
        assert!(p.is_full(texts(20, 1000)));
        assert!(!p.is_full(texts(20, 999)));
        let t0 = Instant::now();
        assert!(p.should_close(texts(3, 1200), Some(t0), t0));
        assert!(p.close_when_drained(texts(3, 1200), false));
        // A job over the budget goes alone; rows of numbers count no tokens.
        assert!(p.fits(Fill::default(), texts(1, 5000)));
        assert!(p.fits(rows(100), rows(100)));
        // No token budget.
        let q = BatchPolicy { max_tokens: 0, ..p };
        assert!(q.fits(texts(10, 600), texts(10, 100_000)));
        assert!(!q.is_full(texts(10, 100_000)));
    }

    #[test]
    fn token_estimates_follow_length_and_respect_max_length() {
        assert_eq!(estimate_tokens(""), 2);
        let short = estimate_tokens("The cat sat on the mat.");
        let long = estimate_tokens(&"word ".repeat(600));
        assert!((8..=14).contains(&short), "{short}");
        assert!(long > 600, "{long}");
        assert_eq!(estimate_tokens("東京"), 6);
        let spec = InputSpec::Text { max_length: 256 };
        let inputs = Inputs::Texts(vec!["word ".repeat(600), "hi".into()]);
        assert_eq!(
            Fill::of(&inputs, &spec),
            Fill {
                rows: 2,
                tokens: 256 + 4
            }
        );
        let tab = InputSpec::Tabular {
            features: vec!["a".into()],
        };
        assert_eq!(Fill::of(&Inputs::rows(&vec![vec![1.0]; 3]), &tab), rows(3));
    }

    #[test]
    fn closes_on_rows_or_age() {
        let p = BatchPolicy {
            max_rows: 100,
            max_wait: Duration::from_millis(5),
            max_tokens: 0,
        };
        let t0 = Instant::now();
        assert!(!p.should_close(rows(0), None, t0));
        assert!(!p.should_close(rows(10), Some(t0), t0));
        assert!(p.should_close(rows(100), Some(t0), t0));
        assert!(p.should_close(rows(10), Some(t0), t0 + Duration::from_millis(5)));
        assert_eq!(p.deadline(t0), t0 + Duration::from_millis(5));
    }

    #[test]
    fn an_idle_model_takes_what_is_ready_at_once() {
        let p = BatchPolicy {
            max_rows: 100,
            max_wait: Duration::from_millis(5),
            max_tokens: 0,
        };
        assert!(p.close_when_drained(rows(1), true));
        assert!(!p.close_when_drained(rows(1), false));
        assert!(p.close_when_drained(rows(100), false));
        assert!(!p.close_when_drained(rows(0), true));
    }

    #[test]
    fn large_jobs_go_alone_and_never_split() {
        let p = BatchPolicy {
            max_rows: 100,
            max_wait: Duration::from_millis(5),
            max_tokens: 0,
        };
        assert!(p.fits(rows(0), rows(4096)));
        assert!(!p.fits(rows(1), rows(4096)));
        assert!(p.fits(rows(60), rows(40)));
        assert!(!p.fits(rows(61), rows(40)));
    }

    #[test]
    fn prefetch_follows_batch_size_within_bounds() {
        let p = |r| {
            BatchPolicy {
                max_rows: r,
                max_wait: Duration::ZERO,
                max_tokens: 0,
            }
            .default_prefetch()
        };
        assert_eq!(p(1), 8);
        assert_eq!(p(256), 512);
        assert_eq!(p(100_000), 1024);
    }
}
