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

/// The most shards a model's jobs may be spread over.
pub const MAX_SHARDS: u16 = 256;

/// The names of one Surge deployment's exchanges and queues.
///
/// With `shards` above 1, a model's jobs are spread over that many quorum queues,
/// `<prefix>.jobs.<model>:<k>` for `k` in `0..shards`, each with its own leader, so that
/// one model's throughput is not capped by the one node that leads its queue. The
/// unsharded queue `<prefix>.jobs.<model>` stays and is consumed too, so producers
/// that do not shard keep working. `:` cannot occur in a model name, so a shard queue
/// never collides with another model's queue (`a` shard 1 vs a model named `a.1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
    shards: u16,
}

impl Default for Topology {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

/// A shard count outside `1..=MAX_SHARDS`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--shards must be between 1 and {MAX_SHARDS}, got {0}")]
pub struct BadShards(pub u64);

impl Topology {
    /// A topology whose names all start with `prefix` (`surge` in production), with
    /// one queue per model (no shards).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            shards: 1,
        }
    }

    /// The same topology with each model's jobs spread over `shards` queues
    /// (1 = unsharded). Every producer and worker of a model must agree on it.
    pub fn with_shards(mut self, shards: u64) -> Result<Self, BadShards> {
        if !(1..=u64::from(MAX_SHARDS)).contains(&shards) {
            return Err(BadShards(shards));
        }
        self.shards = shards as u16;
        Ok(self)
    }

    /// How many shard queues each model has (1 = unsharded).
    pub fn shards(&self) -> u16 {
        self.shards
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

    /// Shard `k`'s queue of `model`'s jobs: `<prefix>.jobs.<model>:<k>`.
    pub fn shard_queue(&self, model: &str, k: u16) -> String {
        format!("{}.jobs.{model}:{k}", self.prefix)
    }

    /// The routing key that reaches shard `k` of `model` on the jobs exchange.
    pub fn shard_routing_key(model: &str, k: u16) -> String {
        format!("{model}:{k}")
    }

    /// Every queue a worker of `model` consumes and a depth reading sums, with the
    /// routing key each is bound with: the unsharded queue first, then the shards.
    pub fn job_queues(&self, model: &str) -> Vec<(String, String)> {
        let mut queues = vec![(self.job_queue(model), model.to_string())];
        if self.shards > 1 {
            queues.extend((0..self.shards).map(|k| {
                (
                    self.shard_queue(model, k),
                    Self::shard_routing_key(model, k),
                )
            }));
        }
        queues
    }

    /// The routing key a producer publishes job `job_id` of `model` with: the model's
    /// name when unsharded, else `<model>:<k>` with `k = shard_of(job_id, shards)`.
    pub fn job_routing_key(&self, model: &str, job_id: &str) -> String {
        if self.shards > 1 {
            Self::shard_routing_key(model, shard_of(job_id, self.shards))
        } else {
            model.to_string()
        }
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

    /// Arguments of a shard queue: those of [`Self::job_queue_arguments`], and the
    /// leader placed on the node that leads the fewest queues, so that a model's shards
    /// spread over the cluster's nodes (RabbitMQ 3.10+; the default, `client-local`,
    /// would put them all on the node the declaring client is connected to).
    pub fn shard_queue_arguments(&self) -> Vec<(&'static str, ArgValue)> {
        let mut args = self.job_queue_arguments();
        args.push(("x-queue-leader-locator", ArgValue::Str("balanced")));
        args
    }

    /// Arguments of the shared results and dead-letter queues.
    pub fn durable_queue_arguments(&self) -> Vec<(&'static str, ArgValue)> {
        vec![("x-queue-type", ArgValue::Str("quorum"))]
    }
}

/// The shard of job `job_id` among `shards`: FNV-1a (32-bit) of the id's UTF-8 bytes,
/// modulo `shards`. Simple to write in any language (PROTOCOL.md shows Python), and the
/// same id always lands on the same shard, so a republished job keeps its queue.
pub fn shard_of(job_id: &str, shards: u16) -> u16 {
    let mut h: u32 = 0x811c_9dc5;
    for b in job_id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % u32::from(shards.max(1))) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        // FNV-1a 32 of "" is the offset basis, of "a" 0xe40c292c, of "foobar" 0xbf9cf968
        // (the reference test vectors); the shard is that modulo the count.
        assert_eq!(shard_of("", u16::MAX), (0x811c_9dc5u32 % 65535) as u16);
        assert_eq!(shard_of("a", 1000), (0xe40c_292cu32 % 1000) as u16);
        assert_eq!(shard_of("foobar", 7), (0xbf9c_f968u32 % 7) as u16);
        assert_eq!(shard_of("anything", 1), 0);
    }

    #[test]
    fn job_ids_spread_evenly_over_shards() {
        let mut counts = [0u32; 3];
        for i in 0..30_000 {
            counts[usize::from(shard_of(&format!("sb-0123456789ab-{i}"), 3))] += 1;
        }
        for c in counts {
            assert!((9_000..=11_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn sharded_names_and_routes() {
        let t = Topology::new("surge");
        assert_eq!(t.shards(), 1);
        assert_eq!(
            t.job_queues("m"),
            vec![("surge.jobs.m".to_string(), "m".to_string())]
        );
        assert_eq!(t.job_routing_key("m", "job-1"), "m");
        let t = t.with_shards(3).unwrap();
        let queues: Vec<String> = t.job_queues("m").into_iter().map(|(q, _)| q).collect();
        assert_eq!(
            queues,
            [
                "surge.jobs.m",
                "surge.jobs.m:0",
                "surge.jobs.m:1",
                "surge.jobs.m:2"
            ]
        );
        let key = t.job_routing_key("m", "job-1");
        assert_eq!(key, format!("m:{}", shard_of("job-1", 3)));
        assert!(t.job_queues("m").iter().any(|(_, k)| *k == key));
        assert_eq!(Topology::new("s").with_shards(0), Err(BadShards(0)));
        assert!(Topology::new("s").with_shards(257).is_err());
        assert!(t
            .shard_queue_arguments()
            .contains(&("x-queue-leader-locator", ArgValue::Str("balanced"))));
    }

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
