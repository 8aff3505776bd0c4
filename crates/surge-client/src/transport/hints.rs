//! What a run tells the person waiting on it: the progress bar, the hint that no
//! worker consumes the model's queue (probed here, decided by [`crate::watch`]), and
//! the `--timeout` error with the last hint in it.

use std::time::Instant;

use indicatif::ProgressStyle;
use surge_broker::{timed, topology};
use tracing::{debug, info, warn};

use super::RunCtx;
use crate::run::Run;
use crate::watch::{FailWatch, IdleSignal, IdleWatch};
use crate::{ClientError, ScoreConfig};

/// The progress bar's look; `with_hint` adds a second line for [`ProgressBar::set_message`].
pub(super) fn bar_style(with_hint: bool) -> ProgressStyle {
    let template = if with_hint {
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} rows  {per_sec}  ETA {eta}\n{msg}"
    } else {
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} rows  {per_sec}  ETA {eta}"
    };
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// The run's hints, kept across reconnects.
pub(super) struct Watches {
    idle: IdleWatch,
    pub(super) fail: FailWatch,
    /// The idle hint while it stands, for the `--timeout` error.
    idle_hint: Option<String>,
}

impl Watches {
    /// The watches of a run started at `started`, of `total_rows` rows when known.
    pub(super) fn new(cfg: &ScoreConfig, started: Instant, total_rows: Option<usize>) -> Self {
        let expected_jobs = total_rows.map(|r| r.div_ceil(cfg.rows_per_job.max(1)));
        Self {
            idle: IdleWatch::new(cfg.idle_hint_after, cfg.idle_hint_every).idle_from(started),
            fail: FailWatch::new(expected_jobs.unwrap_or(3).min(3)),
            idle_hint: None,
        }
    }
}

impl RunCtx<'_> {
    /// The `--timeout` error, once the run has taken longer than that.
    pub(super) fn check_timeout<T>(
        &self,
        run: &Run<T>,
        watch: &Watches,
    ) -> Result<(), ClientError> {
        match self.cfg.timeout {
            Some(after) if self.started.elapsed() >= after => Err(ClientError::Timeout {
                answered: run.window.done(),
                total: run.window.pushed(),
                after,
                hint: watch.idle_hint.clone().unwrap_or_else(|| {
                    format!(
                        "are workers running for model {}? (`surge worker --model {}`, with the same --prefix; check their logs)",
                        self.cfg.model, self.cfg.model
                    )
                }),
            }),
            _ => Ok(()),
        }
    }

    /// What to check when nobody consumes the model's queue.
    fn idle_advice(&self) -> String {
        let shards = match self.cfg.topology.shards() {
            1 => String::new(),
            n => format!(" and --shards {n}"),
        };
        format!(
            "is a worker running with models/{} and --prefix {}{shards}? check `surge models list` and the worker logs",
            self.cfg.model,
            self.cfg.topology.prefix(),
        )
    }

    /// Looks at the consumer count of the model's queue (on a channel of its own: a
    /// passive declare that fails closes its channel) and says what there is to say.
    pub(super) async fn probe_idle<T>(
        &self,
        conn: &lapin::Connection,
        probe: &mut Option<lapin::Channel>,
        run: &Run<T>,
        watch: &mut Watches,
    ) {
        let t = &self.cfg.timeouts;
        if probe.is_none() {
            match timed("channel.open", t.operation, conn.create_channel()).await {
                Ok(ch) => *probe = Some(ch),
                Err(e) => {
                    debug!(error = %e, "could not open a channel to watch the job queue");
                    return;
                }
            }
        }
        let Some(ch) = probe.as_ref() else { return };
        let (depth, queue) = match topology::model_depth(ch, &self.cfg.topology, &self.cfg.model, t)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                debug!(error = %e, model = %self.cfg.model, "could not read the job queues' consumer counts");
                *probe = None;
                return;
            }
        };
        match watch.idle.observe(depth.consumers, Instant::now()) {
            IdleSignal::Quiet => {}
            IdleSignal::Idle(idle) => {
                let hint = format!(
                    "no worker consumes {} (for {} s; {} of {} jobs answered): {}",
                    queue,
                    idle.as_secs(),
                    run.window.done(),
                    run.window.pushed(),
                    self.idle_advice()
                );
                if self.cfg.progress {
                    self.bar.set_style(bar_style(true));
                    self.bar.set_message(hint);
                } else {
                    warn!("{hint}");
                }
                watch.idle_hint = Some(format!(
                    "no worker consumes {}: {}",
                    queue,
                    self.idle_advice()
                ));
            }
            IdleSignal::Resumed => {
                watch.idle_hint = None;
                if self.cfg.progress {
                    self.bar.set_message("");
                    self.bar.set_style(bar_style(false));
                } else {
                    info!(%queue, consumers = depth.consumers, "a worker consumes the job queue now");
                }
            }
        }
    }
}
