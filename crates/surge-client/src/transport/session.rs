//! One connected session of a run, and the loop at its heart: declare the topology
//! and the reply queue, publish what is unpublished, then read the source, take
//! results and republish overdue jobs until every job is answered. A lost connection
//! ends the session with `Err`; [`super::score_stream`] makes a new one.

use std::time::{Duration, Instant};

use lapin::options::QueueDeleteOptions;
use surge_broker::{timed, topology, BrokerError};
use tokio::sync::mpsc;
use tracing::{info, warn};

use futures_util::StreamExt;

use super::hints::Watches;
use super::publish::Confirms;
use super::replies::{self, Incoming, Replies};
use super::RunCtx;
use crate::run::{publish_run_len, Run};
use crate::tracker::Recorded;
use crate::ClientError;

impl RunCtx<'_> {
    /// One connected session: declare, consume results, publish what is unpublished,
    /// wait until every job is answered. Returns `Err` on a lost connection.
    pub(super) async fn session<T: Send>(
        &self,
        run: &mut Run<T>,
        watch: &mut Watches,
    ) -> Result<(), ClientError> {
        let cfg = self.cfg;
        let t = &cfg.timeouts;
        let conn = surge_broker::connect(&cfg.url, "score-batch", t).await?;
        let res = self.connected(&conn, run, watch).await;
        let _ = tokio::time::timeout(t.operation, conn.close(200, "score-batch done".into())).await;
        res
    }

    /// The session on `conn`: sets up, runs [`RunCtx::publish_and_wait`], and tears
    /// down in an order that keeps lapin quiet (the reply queue is deleted only once
    /// the run is complete).
    async fn connected<T: Send>(
        &self,
        conn: &lapin::Connection,
        run: &mut Run<T>,
        watch: &mut Watches,
    ) -> Result<(), ClientError> {
        let cfg = self.cfg;
        let t = &cfg.timeouts;
        // Declaring the model's queue here means jobs wait safely even when no worker
        // has started yet.
        let ch = topology::publishing_channel(conn, &cfg.topology, t).await?;
        topology::declare_model(&ch, &cfg.topology, &cfg.model, t).await?;
        replies::declare(&ch, self.reply_queue, t).await?;
        let mut replies =
            Replies::start(conn, self.reply_queue, cfg.limits, t, &self.trace).await?;

        let mut probe = None;
        let outcome = self
            .publish_and_wait(conn, &ch, &mut probe, run, watch, &mut replies.rx)
            .await;
        if let Some(p) = probe {
            let _ =
                tokio::time::timeout(t.operation, p.close(200, "score-batch done".into())).await;
        }
        // Cancel the consumer, then close its channel, then (in `session`) the
        // connection.
        replies.stop(t).await;
        if outcome.is_ok() {
            let _ = timed(
                "queue.delete",
                t.operation,
                ch.queue_delete(self.reply_queue.into(), QueueDeleteOptions::default()),
            )
            .await;
        }
        // Closed here rather than on drop, which lapin does in the background and which
        // would race the connection's close.
        let _ = tokio::time::timeout(t.operation, ch.close(200, "score-batch done".into())).await;
        outcome
    }

    /// The run's loop: reads the source while the window has room, publishes what it
    /// reads, records results (handing on what is answered in order), and on each tick
    /// checks `--timeout`, probes for an idle queue, and republishes overdue and
    /// unpublished jobs.
    async fn publish_and_wait<T: Send>(
        &self,
        conn: &lapin::Connection,
        ch: &lapin::Channel,
        probe: &mut Option<lapin::Channel>,
        run: &mut Run<T>,
        watch: &mut Watches,
        rx: &mut mpsc::Receiver<Incoming>,
    ) -> Result<(), ClientError> {
        if run.collect_first {
            run.collect_first = false;
            self.collect_waiting(run, rx).await?;
        }
        // Publishes of a lost session that were never confirmed go again.
        run.window.sent_to_unpublished();
        let mut confirms = Confirms::new();
        self.publish(ch, run, run.window.unpublished(), &mut confirms)
            .await?;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        // The consumer count is read a few times per hint period, at most every 2 s.
        let probe_every = (self.cfg.idle_hint_after / 4)
            .clamp(Duration::from_millis(250), Duration::from_secs(2));
        let mut last_probe: Option<Instant> = None;
        // Jobs read and not yet published: they go together, a run at a time, while
        // the workers still have enough published jobs to work on.
        let run_len = publish_run_len(self.cfg);
        let mut gathered: Vec<usize> = Vec::new();
        while !run.is_complete() {
            let room = run.has_room_for_burst(self.cfg);
            tokio::select! {
                item = run.source.recv(), if room => {
                    match item {
                        Some(Ok(job)) => gathered.push(run.push(job)),
                        Some(Err(e)) => return Err(e),
                        None => run.source_done = true,
                    }
                    // Whatever else is ready goes in the same publish window.
                    while run.has_room(self.cfg) {
                        match run.source.try_recv() {
                            Ok(Ok(job)) => gathered.push(run.push(job)),
                            Ok(Err(e)) => return Err(e),
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => run.source_done = true,
                        }
                    }
                    self.publish_gathered(ch, run, &mut gathered, run_len, &mut confirms)
                        .await?;
                    if run.source_done {
                        self.bar.set_length(run.window.pushed_rows() as u64);
                        // What was held back for a burst goes now.
                        run.hand_on(true).await?;
                    }
                }
                Some((i, id, said)) = confirms.next(), if !confirms.is_empty() => {
                    self.take_confirm(run, i, &id, said)?;
                }
                msg = rx.recv() => match msg {
                    Some(Incoming::Result(r)) => {
                        // Only a job's first result counts towards "every job failed".
                        let said = if run.window.is_pending(&r.job_id) {
                            watch.fail.record(&r)
                        } else {
                            None
                        };
                        if run.window.record(*r) == Recorded::New {
                            self.bar.set_position(run.window.rows_done() as u64);
                            run.hand_on(false).await?;
                            // The workers may be running short.
                            self.publish_gathered(ch, run, &mut gathered, run_len, &mut confirms)
                                .await?;
                        }
                        if let Some(said) = said {
                            self.bar.suspend(|| warn!(model = %self.cfg.model, "{said}"));
                        }
                    }
                    Some(Incoming::Lost(e)) => return Err(e.into()),
                    None => return Err(BrokerError::ConsumerEnded { queue: self.reply_queue.to_string() }.into()),
                },
                _ = tick.tick() => {
                    run.hand_on(true).await?;
                    self.check_timeout(run, watch)?;
                    if last_probe.is_none_or(|at| at.elapsed() >= probe_every) {
                        last_probe = Some(Instant::now());
                        self.probe_idle(conn, probe, run, watch).await;
                    }
                    let overdue = run.window.overdue(Instant::now(), self.cfg.job_timeout);
                    if !overdue.is_empty() {
                        info!(
                            jobs = overdue.len(),
                            dead_letters = %self.cfg.topology.dead_queue(),
                            "results overdue; publishing those jobs again (if this repeats, look for them in the dead-letter queue and check the worker logs)"
                        );
                        run.window.republished += overdue.len() as u64;
                        self.publish(ch, run, overdue, &mut confirms).await?;
                    }
                    // Jobs still gathered go now too, with any whose publish was lost.
                    gathered.clear();
                    let unpublished = run.window.unpublished();
                    if !unpublished.is_empty() {
                        self.publish(ch, run, unpublished, &mut confirms).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Publishes the `gathered` jobs (read, not yet published) when they are due
    /// ([`Run::publish_gathered_now`]).
    async fn publish_gathered<T>(
        &self,
        ch: &lapin::Channel,
        run: &mut Run<T>,
        gathered: &mut Vec<usize>,
        run_len: usize,
        confirms: &mut Confirms,
    ) -> Result<(), ClientError> {
        if run.publish_gathered_now(gathered.len(), run_len) {
            self.publish(ch, run, std::mem::take(gathered), confirms)
                .await?;
        }
        Ok(())
    }

    /// A resumed run's first step: takes the results the killed run left in its reply
    /// queue (and those still coming for jobs it had published), until none has come
    /// for half a second or ten seconds have passed, so that the jobs they answer are
    /// not published again.
    async fn collect_waiting<T>(
        &self,
        run: &mut Run<T>,
        rx: &mut mpsc::Receiver<Incoming>,
    ) -> Result<(), ClientError> {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            match tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
                Err(_) => break,
                Ok(Some(Incoming::Result(r))) => {
                    run.window.record(*r);
                }
                Ok(Some(Incoming::Lost(e))) => return Err(e.into()),
                Ok(None) => {
                    return Err(BrokerError::ConsumerEnded {
                        queue: self.reply_queue.to_string(),
                    }
                    .into())
                }
            }
        }
        info!(
            held = run.window.held(),
            "collected the results the killed run left in its reply queue; their jobs are not published again"
        );
        Ok(())
    }
}
