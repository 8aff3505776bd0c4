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

/// The batch being gathered for one queue: its jobs, what they hold, when the oldest
/// came, and the policy that says when it must go to the model.
#[derive(Debug)]
pub struct Gathering<T> {
    policy: BatchPolicy,
    items: Vec<T>,
    fill: Fill,
    oldest: Option<Instant>,
}

impl<T> Gathering<T> {
    /// An empty batch under `policy`.
    pub fn new(policy: BatchPolicy) -> Self {
        Self {
            policy,
            items: Vec::new(),
            fill: Fill::default(),
            oldest: None,
        }
    }

    /// True when nothing is gathered.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// What the batch holds.
    pub fn fill(&self) -> Fill {
        self.fill
    }

    /// Whether a job of `job` may join; when not, close the batch first.
    pub fn fits(&self, job: Fill) -> bool {
        self.policy.fits(self.fill, job)
    }

    /// Adds a job; returns whether the batch must close now (a budget is reached, or
    /// the oldest job has waited long enough).
    pub fn push(&mut self, item: T, job: Fill, now: Instant) -> bool {
        self.fill = self.fill.plus(job);
        self.oldest.get_or_insert(now);
        self.items.push(item);
        self.policy.should_close(self.fill, self.oldest, now)
    }

    /// When the batch must close at the latest; `None` when empty.
    pub fn deadline(&self) -> Option<Instant> {
        self.oldest.map(|o| self.policy.deadline(o))
    }

    /// Whether to close once every ready delivery was taken (see
    /// [`BatchPolicy::close_when_drained`]).
    pub fn close_when_drained(&self, model_idle: bool) -> bool {
        self.policy.close_when_drained(self.fill, model_idle)
    }

    /// Takes the gathered jobs, leaving an empty batch.
    pub fn take(&mut self) -> Vec<T> {
        self.fill = Fill::default();
        self.oldest = None;
        std::mem::take(&mut self.items)
    }
}

/// Which deliveries of one channel may be acknowledged with one `basic.ack` carrying
/// `multiple`: the longest run of delivery tags, from the lowest still open, that are
/// all settled. Batches of the same channel finish out of order (one is scored while
/// the previous one publishes), so a `multiple` ack must never reach past a delivery
/// whose result is not yet confirmed.
#[derive(Debug)]
pub struct AckFrontier {
    /// The lowest tag not yet covered by an ack sent.
    next: u64,
    /// Tags above `next` that are settled: `true` when they await an ack, `false` when
    /// they were settled another way (requeued), which a `multiple` ack may pass.
    settled: std::collections::BTreeMap<u64, bool>,
}

impl Default for AckFrontier {
    fn default() -> Self {
        // AMQP delivery tags start at 1 on every channel.
        Self {
            next: 1,
            settled: std::collections::BTreeMap::new(),
        }
    }
}

impl AckFrontier {
    /// Records that `tag` is settled (`ack`: its result is confirmed and it awaits an
    /// ack; otherwise it was nacked). Returns the tag to ack with `multiple`, when the
    /// run from the lowest open tag has grown and holds a tag awaiting an ack.
    pub fn settle(&mut self, tag: u64, ack: bool) -> Option<u64> {
        if tag < self.next {
            return None;
        }
        self.settled.insert(tag, ack);
        let mut upto = None;
        while let Some(ack) = self.settled.remove(&self.next) {
            if ack {
                upto = Some(self.next);
            }
            self.next += 1;
        }
        upto
    }

    /// Tags settled but not yet covered by an ack (waiting on a lower open tag).
    pub fn waiting(&self) -> usize {
        self.settled.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gathering_batch_closes_on_its_budget_and_resets_when_taken() {
        let p = BatchPolicy {
            max_rows: 10,
            max_wait: Duration::from_millis(5),
            max_tokens: 0,
        };
        let mut g = Gathering::new(p);
        let t0 = Instant::now();
        assert!(g.is_empty() && g.deadline().is_none());
        assert!(!g.push("a", rows(4), t0));
        assert_eq!(g.deadline(), Some(t0 + Duration::from_millis(5)));
        assert!(g.fits(rows(6)) && !g.fits(rows(7)));
        assert!(g.push("b", rows(6), t0));
        assert_eq!(g.take(), vec!["a", "b"]);
        assert!(g.is_empty() && g.fill() == Fill::default() && g.deadline().is_none());
        // A job bigger than the budget still joins an empty batch, and closes it.
        assert!(g.fits(rows(50)));
        assert!(g.push("c", rows(50), t0));
    }

    #[test]
    fn multiple_acks_never_pass_an_unconfirmed_delivery() {
        let mut f = AckFrontier::default();
        // Batch 2 (tags 4..=6) is confirmed before batch 1 (1..=3): nothing yet.
        assert_eq!(f.settle(4, true), None);
        assert_eq!(f.settle(5, true), None);
        assert_eq!(f.settle(6, true), None);
        assert_eq!(f.waiting(), 3);
        assert_eq!(f.settle(1, true), Some(1));
        // Tag 2 was requeued (nacked on its own): the run may pass it.
        assert_eq!(f.settle(2, false), None);
        assert_eq!(f.settle(3, true), Some(6));
        assert_eq!(f.waiting(), 0);
        // A run of only requeued tags sends no ack; a stale tag is ignored.
        assert_eq!(f.settle(7, false), None);
        assert_eq!(f.settle(3, true), None);
        assert_eq!(f.settle(8, true), Some(8));
    }

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
