//! Names of exchanges, queues and headers, and the arguments queues are declared with.
//!
//! Every name derives from one prefix (`surge` in production) so that tests, or two
//! tenants on one vhost, can run side by side without seeing each other's messages.

/// The prefix used when none is configured.
pub const DEFAULT_PREFIX: &str = "surge";

/// How many times a job may be delivered before the broker dead-letters it
/// (quorum queues count redeliveries after a consumer died or rejected).
pub const DELIVERY_LIMIT: i64 = 5;

/// Header on a dead-lettered message: why Surge could not answer it.
pub const HEADER_REASON: &str = "x-surge-reason";
/// Header on a dead-lettered message: the machine-readable error kind.
pub const HEADER_ERROR_KIND: &str = "x-surge-error-kind";
/// Header on a dead-lettered message: the worker that dead-lettered it.
pub const HEADER_WORKER: &str = "x-surge-worker";
/// Header on a dead-lettered message: the queue it came from.
pub const HEADER_SOURCE_QUEUE: &str = "x-surge-source-queue";

/// A queue argument value, free of any AMQP library type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgValue {
    /// A string argument, such as `x-queue-type`.
    Str(&'static str),
    /// An owned string argument, such as an exchange name with a prefix.
    String(String),
    /// An integer argument, such as `x-delivery-limit`.
    Int(i64),
}

/// The names of one Surge deployment's exchanges and queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
}

impl Default for Topology {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_string(),
        }
    }
}

impl Topology {
    /// A topology whose names all start with `prefix` (`surge` in production).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix every name starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Durable direct exchange that producers publish jobs to, routing key = model name.
    pub fn jobs_exchange(&self) -> String {
        format!("{}.jobs", self.prefix)
    }

    /// Durable quorum queue holding one model's jobs.
    pub fn job_queue(&self, model: &str) -> String {
        format!("{}.jobs.{model}", self.prefix)
    }

    /// Durable fanout exchange for messages Surge could not answer.
    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// Durable queue bound to [`Self::dead_exchange`].
    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// Durable queue that results go to when a job has no `reply_to`.
    pub fn results_queue(&self) -> String {
        format!("{}.results", self.prefix)
    }

    /// Arguments of every job queue: quorum (replicated, survives broker restarts),
    /// a delivery limit so a poison job cannot loop forever, and dead-lettering so a
    /// job over that limit (or expired) lands in the dead queue instead of vanishing.
    pub fn job_queue_arguments(&self) -> Vec<(&'static str, ArgValue)> {
        vec![
            ("x-queue-type", ArgValue::Str("quorum")),
            ("x-delivery-limit", ArgValue::Int(DELIVERY_LIMIT)),
            (
                "x-dead-letter-exchange",
                ArgValue::String(self.dead_exchange()),
            ),
        ]
    }

    /// Arguments of the shared results and dead-letter queues.
    pub fn durable_queue_arguments(&self) -> Vec<(&'static str, ArgValue)> {
        vec![("x-queue-type", ArgValue::Str("quorum"))]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix() {
        let t = Topology::default();
        assert_eq!(t.jobs_exchange(), "surge.jobs");
        assert_eq!(t.job_queue("breast-cancer"), "surge.jobs.breast-cancer");
        assert_eq!(t.dead_exchange(), "surge.dead");
        assert_eq!(t.dead_queue(), "surge.dead");
        assert_eq!(t.results_queue(), "surge.results");
        let t = Topology::new("t-1234");
        assert_eq!(t.job_queue("m"), "t-1234.jobs.m");
        assert!(t.job_queue_arguments().contains(&(
            "x-dead-letter-exchange",
            ArgValue::String("t-1234.dead".into())
        )));
    }
}
