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
    /// What it held, as its [`SourceJob::bytes`] said: what a writer gives back to a
    /// [`ByteBudget`](crate::stream::ByteBudget) once the job is written.
    pub bytes: usize,
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

/// Jobs a streaming run takes from its source, and hands on to its sink, at a time
/// ([`Run::has_room_for_burst`], [`Run::hand_on`]): the threads on the other ends,
/// parked while the window is full, are then woken about once per burst instead of
/// once per job (on a KVM host each wake-up cost ~15 µs). The run's tick hands on
/// fewer, so no answered job waits longer than a tick; windows under twice this use
/// smaller bursts.
pub(crate) const BURST: usize = 4;

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
    /// Jobs read and handed on at a time: [`BURST`], or fewer in a window of under
    /// twice that (1 in a window of 3 or less), whose jobs must not wait for each other.
    burst: usize,
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
            burst: BURST.min(cfg.max_in_flight.max(1) / 2).max(1),
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

    /// True while a burst of jobs may be read: [`has_room`](Self::has_room), with
    /// room in the window for a burst.
    pub(crate) fn has_room_for_burst(&self, cfg: &ScoreConfig) -> bool {
        self.has_room(cfg) && self.window.len() + self.burst <= cfg.max_in_flight.max(1)
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

    /// Hands on, in order, every answered job at the front of the window: once
    /// [`BURST`] of them are there (or every job of a smaller window), or the source
    /// is done, or when `now`. The writer, parked between jobs, is then woken about
    /// once per burst instead of once per job.
    pub(crate) async fn hand_on(&mut self, now: bool) -> Result<(), ClientError> {
        let burst = self.burst.min(self.window.len());
        if !now && !self.source_done && !self.window.done_at_front(burst) {
            return Ok(());
        }
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
                    bytes,
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

    /// A one-text job of one byte.
    fn job() -> SourceJob<()> {
        SourceJob {
            inputs: Inputs::Texts(vec!["x".into()]),
            payload: (),
            bytes: 1,
        }
    }

    #[tokio::test]
    async fn answered_jobs_go_to_the_writer_in_bursts_unless_the_run_needs_them_now() {
        use surge_protocol::ErrorKind;
        let mut cfg = cfg();
        cfg.max_in_flight = 8;
        let (_tx, rx) = mpsc::channel::<Result<SourceJob<()>, ClientError>>(1);
        let (sink, mut written) = mpsc::channel(64);
        let mut run = Run::new(&cfg, "r", rx, sink);
        for _ in 0..7 {
            run.push(job());
        }
        let answer = |run: &mut Run<()>, i: usize| {
            let id = format!("r-{i}");
            run.window
                .record(JobResult::failure(&id, "m", ErrorKind::Internal, "x", "w"))
        };
        let ids = |rx: &mut mpsc::Receiver<DoneJob<()>>| {
            std::iter::from_fn(|| rx.try_recv().ok())
                .map(|d| d.job.id)
                .collect::<Vec<_>>()
        };
        // Fewer than a burst answered (and job 1 not yet): held.
        answer(&mut run, 0);
        answer(&mut run, 2);
        answer(&mut run, 3);
        run.hand_on(false).await.unwrap();
        assert!(ids(&mut written).is_empty());
        // Job 1 makes four in a row at the front: they go, in order.
        answer(&mut run, 1);
        run.hand_on(false).await.unwrap();
        assert_eq!(ids(&mut written), ["r-0", "r-1", "r-2", "r-3"]);
        // One answered: held, until the tick says now.
        answer(&mut run, 4);
        run.hand_on(false).await.unwrap();
        assert!(ids(&mut written).is_empty());
        run.hand_on(true).await.unwrap();
        assert_eq!(ids(&mut written), ["r-4"]);
        // Every job of a window smaller than a burst answered: they go.
        answer(&mut run, 5);
        run.hand_on(false).await.unwrap();
        assert!(ids(&mut written).is_empty());
        answer(&mut run, 6);
        run.hand_on(false).await.unwrap();
        assert_eq!(ids(&mut written), ["r-5", "r-6"]);
        // Reading waits for room for a whole burst (4 of this window of 8).
        for _ in 0..5 {
            run.push(job());
        }
        assert!(run.has_room(&cfg) && !run.has_room_for_burst(&cfg));
        // Once the source is done, each answered job goes at once.
        answer(&mut run, 7);
        run.source_done = true;
        run.hand_on(false).await.unwrap();
        assert_eq!(ids(&mut written), ["r-7"]);

        // A window of 3 has bursts of 1: its jobs never wait for each other.
        cfg.max_in_flight = 3;
        let (_tx, rx) = mpsc::channel::<Result<SourceJob<()>, ClientError>>(1);
        let (sink, mut written) = mpsc::channel(64);
        let mut run = Run::new(&cfg, "s", rx, sink);
        run.push(job());
        run.push(job());
        assert!(run.has_room_for_burst(&cfg));
        run.window.record(JobResult::failure(
            "s-0",
            "m",
            ErrorKind::Internal,
            "x",
            "w",
        ));
        run.hand_on(false).await.unwrap();
        assert_eq!(ids(&mut written), ["s-0"]);
    }

    #[test]
    fn jobs_read_are_published_a_run_at_a_time_unless_the_workers_run_short() {
        let mut cfg = cfg();
        cfg.max_in_flight = 256;
        assert_eq!(publish_run_len(&cfg), 64);
        let (_tx, rx) = mpsc::channel::<Result<SourceJob<()>, ClientError>>(1);
        let (sink, _srx) = mpsc::channel(1);
        let mut run = Run::new(&cfg, "r", rx, sink);
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
