//! How to run a scoring run ([`ScoreConfig`]), and which run it is: its id (a fresh
//! one, [`new_run_id`], unless the caller names it) and, for a resumed run, where it
//! picks up ([`ResumeFrom`]).

use std::time::Duration;

use surge_broker::{AmqpUrl, Timeouts};
use surge_protocol::{Encoding, Limits, Topology};

/// A fresh run id: `sb-` and 12 hex digits.
pub fn new_run_id() -> String {
    format!("sb-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Where a resumed run picks up (its id, the killed run's, is
/// [`ScoreConfig::run_id`]): the jobs and rows already written. What waits in its
/// reply queue is collected before anything is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeFrom {
    /// Jobs written before the run stopped.
    pub jobs: usize,
    /// Rows of those jobs.
    pub rows: usize,
}

/// How to run a scoring run.
#[derive(Debug, Clone)]
pub struct ScoreConfig {
    /// Broker URL.
    pub url: AmqpUrl,
    /// Exchange and queue names.
    pub topology: Topology,
    /// Model to score with.
    pub model: String,
    /// Model version; the newest served when `None`.
    pub version: Option<String>,
    /// Rows per job.
    pub rows_per_job: usize,
    /// Republish a job whose result has not arrived this long after its confirm.
    pub job_timeout: Duration,
    /// Give up after this long (`None`: wait for workers indefinitely).
    pub timeout: Option<Duration>,
    /// Encoding of the jobs.
    pub encoding: Encoding,
    /// Send rows packed (`rows_f32` + `cols`, one little-endian f32 block) rather than
    /// as the `inputs` list of lists. Only MessagePack can carry the block: JSON jobs
    /// always send `inputs`.
    pub pack: bool,
    /// Jobs published before their confirms are awaited.
    pub publish_window: usize,
    /// Jobs read and not yet written out (in flight or waiting for an earlier job) at
    /// most: what bounds a streaming run's memory.
    pub max_in_flight: usize,
    /// Bytes held by those jobs (as their sources count them) at most; the window
    /// always holds at least one job.
    pub max_in_flight_bytes: usize,
    /// The run's id, which names its reply queue and its job ids (`None`: a new one).
    pub run_id: Option<String>,
    /// Set when an earlier process ran this run (`run_id`) and was killed: the jobs it
    /// already wrote (`None`: a new run, whose reply queue is new).
    pub resume: Option<ResumeFrom>,
    /// Bounds on broker awaits.
    pub timeouts: Timeouts,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
    /// Limits applied to incoming results.
    pub limits: Limits,
    /// Say so when nothing has consumed the model's queue for this long.
    pub idle_hint_after: Duration,
    /// Repeat that at most this often while it lasts.
    pub idle_hint_every: Duration,
}

impl ScoreConfig {
    /// Defaults for everything but the URL and model.
    pub fn new(url: AmqpUrl, model: impl Into<String>) -> Self {
        Self {
            url,
            topology: Topology::default(),
            model: model.into(),
            version: None,
            rows_per_job: 256,
            job_timeout: Duration::from_secs(60),
            timeout: None,
            encoding: Encoding::Msgpack,
            pack: true,
            publish_window: 1000,
            max_in_flight: 2048,
            max_in_flight_bytes: 64 << 20,
            run_id: None,
            resume: None,
            timeouts: Timeouts::default(),
            progress: false,
            limits: Limits::default(),
            idle_hint_after: Duration::from_secs(10),
            idle_hint_every: Duration::from_secs(30),
        }
    }
}
