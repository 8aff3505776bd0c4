//! The bookkeeping of a run: the jobs that go in ([`SourceJob`]) and come out in
//! input order ([`DoneJob`], [`job_outcome`]), what the run counted ([`Summary`]),
//! and the state a streaming run keeps across reconnects (the window of jobs read
//! and not yet handed on, their bytes, the source and the sink). Nothing here talks
//! to the broker: that is [`crate::transport`].

use std::collections::BTreeMap;
use std::time::Duration;

use surge_protocol::{Inputs, JobResult, Status};
use tokio::sync::mpsc;

use crate::tracker::{self, Window};
use crate::{ClientError, ScoreConfig};

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Input rows.
    pub rows: usize,
    /// Jobs in the run.
    pub jobs: usize,
    /// Rows scored.
    pub rows_ok: usize,
    /// Rows whose job failed.
    pub rows_failed: usize,
    /// Failed rows by error kind.
    pub failures: BTreeMap<String, usize>,
    /// Results dropped because their job was already answered.
    pub duplicates: u64,
    /// Results that belonged to no job of this run.
    pub strays: u64,
    /// Jobs published again after their result was overdue.
    pub republished: u64,
    /// Jobs of a resumed run answered by results the killed run left in its reply
    /// queue: never published again.
    pub collected: u64,
    /// Connections lost and re-made.
    pub reconnects: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl Summary {
    /// Rows scored per second of wall time.
    pub fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}
/// A job read from the input: what it sends, and what goes with it to the output.
#[derive(Debug)]
pub struct SourceJob<T> {
    /// The rows or texts sent.
    pub inputs: Inputs,
    /// The input rows to write back with the results (opaque to the run).
    pub payload: T,
    /// About how much memory the job holds, for [`ScoreConfig::max_in_flight_bytes`].
    pub bytes: usize,
}

/// A job answered, handed on in input order.
#[derive(Debug)]
pub struct DoneJob<T> {
    /// Its id and rows.
    pub job: tracker::PlannedJob,
    /// What came with it from the source.
    pub payload: T,
    /// Its (first) result.
    pub result: JobResult,
}

/// How the rows of one answered job came out: the outputs of each row, or the one
/// error message of them all.
pub fn job_outcome(job: &tracker::PlannedJob, r: &JobResult) -> Result<(), (String, String)> {
    let n = job.end - job.start;
    match (r.status, r.outputs.len() == n) {
        (Status::Ok, true) => Ok(()),
        _ => Err(match &r.error {
            Some(e) => (
                e.kind.as_str().to_string(),
                format!("{}: {}", e.kind, e.message),
            ),
            None => (
                "internal".to_string(),
                format!(
                    "internal: the worker returned {} outputs for {n} rows",
                    r.outputs.len()
                ),
            ),
        }),
    }
}

/// Jobs a run publishes together: a quarter of its window, at most 64. A quorum
/// queue fed one job per answered result cost the broker ~15% more CPU per job than
/// one fed in runs of 64 (2M-row CSV at score-batch's default window of 256).
pub(crate) fn publish_run_len(cfg: &ScoreConfig) -> usize {
    (cfg.max_in_flight / 4).clamp(1, 64)
}

/// The state of a streaming run, kept across reconnects.
pub(crate) struct Run<T> {
    pub(crate) window: Window<(T, usize)>,
    /// Bytes held by the jobs in the window.
    bytes: usize,
    pub(crate) source: mpsc::Receiver<Result<SourceJob<T>, ClientError>>,
    pub(crate) source_done: bool,
    sink: mpsc::Sender<DoneJob<T>>,
    summary: Summary,
    /// A resumed run takes what waits in its reply queue before it publishes anything.
    pub(crate) collect_first: bool,
}

impl<T> Run<T> {
    /// A run `run_id` reading jobs from `source` and handing them on to `sink`; a
    /// resumed one (`cfg.resume`) starts after the jobs the killed run wrote.
    pub(crate) fn new(
        cfg: &ScoreConfig,
        run_id: &str,
        source: mpsc::Receiver<Result<SourceJob<T>, ClientError>>,
        sink: mpsc::Sender<DoneJob<T>>,
    ) -> Self {
        Self {
            window: match &cfg.resume {
                Some(r) => {
                    let mut w = Window::starting_at(run_id, r.jobs, r.rows);
                    // The killed run had at most `max_in_flight` jobs past the last one it
                    // wrote, and may have written a few more than its state file says.
                    w.hold_until(r.jobs + 2 * cfg.max_in_flight.max(1) + 64);
                    w
                }
                None => Window::new(run_id),
            },
            collect_first: cfg.resume.is_some(),
            bytes: 0,
            source,
            source_done: false,
            sink,
            summary: Summary::default(),
        }
    }

    /// True while another job may be read: the source has more, and the window is
    /// under both of its bounds (it always takes one job).
    pub(crate) fn has_room(&self, cfg: &ScoreConfig) -> bool {
        !self.source_done
            && self.window.len() < cfg.max_in_flight.max(1)
            && (self.window.is_empty() || self.bytes < cfg.max_in_flight_bytes)
    }

    /// Whether the `gathered` jobs (read, not yet published) go now: a whole run of
    /// them (`run_len`, [`publish_run_len`]), the source done, or fewer than two
    /// runs' worth of published jobs left to the workers.
    pub(crate) fn publish_gathered_now(&self, gathered: usize, run_len: usize) -> bool {
        let published = self.window.len().saturating_sub(gathered);
        gathered > 0 && (gathered >= run_len || published < 2 * run_len || self.source_done)
    }

    /// Takes a job read from the source into the window; returns its index.
    pub(crate) fn push(&mut self, job: SourceJob<T>) -> usize {
        self.bytes += job.bytes;
        self.window.push(job.inputs, (job.payload, job.bytes))
    }

    /// True once the source is done and every job read has been handed on.
    pub(crate) fn is_complete(&self) -> bool {
        self.source_done && self.window.is_empty()
    }

    /// Hands on, in order, every answered job at the front of the window.
    pub(crate) async fn hand_on(&mut self) -> Result<(), ClientError> {
        while let Some((job, (payload, bytes), result)) = self.window.pop_done() {
            self.bytes = self.bytes.saturating_sub(bytes);
            let n = job.end - job.start;
            self.summary.rows += n;
            match job_outcome(&job, &result) {
                Ok(()) => self.summary.rows_ok += n,
                Err((kind, _)) => {
                    self.summary.rows_failed += n;
                    *self.summary.failures.entry(kind).or_default() += n;
                }
            }
            self.sink
                .send(DoneJob {
                    job,
                    payload,
                    result,
                })
                .await
                .map_err(|_| ClientError::Output("the output writer stopped".into()))?;
        }
        Ok(())
    }

    /// What the run did, once it is over.
    pub(crate) fn into_summary(self, reconnects: u64, elapsed: Duration) -> Summary {
        let w = &self.window;
        Summary {
            jobs: w.pushed(),
            duplicates: w.duplicates,
            strays: w.strays,
            republished: w.republished,
            collected: w.collected,
            reconnects,
            elapsed,
            ..self.summary
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ResumeFrom;

    fn cfg() -> ScoreConfig {
        let url = surge_broker::AmqpUrl::new("amqp://127.0.0.1:5672/%2f").unwrap();
        ScoreConfig::new(url, "m")
    }

    #[test]
    fn only_a_resumed_run_waits_for_results_before_publishing() {
        let mut cfg = cfg();
        // A new run that names its id (as score-batch does, for its state file), and
        // the same run resumed.
        cfg.run_id = Some("r".into());
        for (resume, collects) in [(None, false), (Some(ResumeFrom { jobs: 0, rows: 0 }), true)] {
            cfg.resume = resume;
            let (_tx, rx) = mpsc::channel::<Result<SourceJob<()>, ClientError>>(1);
            let (sink, _srx) = mpsc::channel(1);
            assert_eq!(Run::new(&cfg, "r", rx, sink).collect_first, collects);
        }
        cfg.run_id = None;
        cfg.resume = None;
        let (_tx, rx) = mpsc::channel::<Result<SourceJob<()>, ClientError>>(1);
        let (sink, _srx) = mpsc::channel(1);
        assert!(!Run::new(&cfg, "r", rx, sink).collect_first);
    }

    #[test]
    fn jobs_read_are_published_a_run_at_a_time_unless_the_workers_run_short() {
        let mut cfg = cfg();
        cfg.max_in_flight = 256;
        assert_eq!(publish_run_len(&cfg), 64);
        let (_tx, rx) = mpsc::channel::<Result<SourceJob<()>, ClientError>>(1);
        let (sink, _srx) = mpsc::channel(1);
        let mut run = Run::new(&cfg, "r", rx, sink);
        let job = || SourceJob {
            inputs: Inputs::Texts(vec!["x".into()]),
            payload: (),
            bytes: 1,
        };
        // Nothing gathered: nothing to publish.
        assert!(!run.publish_gathered_now(0, 64));
        // 10 read, none published: the workers have nothing, so they go.
        for _ in 0..10 {
            run.push(job());
        }
        assert!(run.publish_gathered_now(10, 64));
        // 200 in the window, 10 of them gathered: 190 published is plenty.
        for _ in 0..190 {
            run.push(job());
        }
        assert!(!run.publish_gathered_now(10, 64));
        // A whole run gathered goes, and so does any once fewer than two runs are out.
        assert!(run.publish_gathered_now(64, 64));
        assert!(run.publish_gathered_now(73, 64));
        // The last jobs of the source go at once.
        run.source_done = true;
        assert!(run.publish_gathered_now(10, 64));
        // Small windows publish every job as it is read.
        cfg.max_in_flight = 3;
        assert_eq!(publish_run_len(&cfg), 1);
    }
}
