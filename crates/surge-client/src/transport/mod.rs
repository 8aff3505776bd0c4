//! The broker side of a run: [`score_stream`] publishes jobs with confirms
//! ([`publish`]), collects results on a reply queue of the run's own ([`replies`]),
//! republishes jobs whose results are overdue, and reconnects after a lost connection
//! ([`session`]), telling the user what it sees on the way ([`hints`]). With traces
//! exported (`surge_ops::telemetry`), each publish is a producer span inside the run's
//! span, and the job carries its context as a W3C `traceparent` header. What the run
//! counts and holds is [`crate::run`].

mod hints;
mod publish;
mod replies;
mod session;

use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use surge_ops::telemetry;
use surge_protocol::Encoding;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::run::Run;
use crate::{new_run_id, ClientError, DoneJob, ScoreConfig, SourceJob, Summary};
use hints::{bar_style, Watches};

/// Scores the jobs that `source` yields, with a bounded window in flight: at most
/// [`ScoreConfig::max_in_flight`] jobs (and about [`ScoreConfig::max_in_flight_bytes`])
/// are read and not yet handed on, so a run of any length holds only that much. Each
/// job is handed to `sink` once answered and once every job before it has been, so
/// the sink sees them in input order. Results that arrive twice are dropped, overdue
/// jobs are published again, and a lost connection is re-made. An `Err` from the
/// source ends the run with that error. `total_rows`, when known, sizes the progress
/// bar. The summary's row counts are those of the jobs handed on.
pub async fn score_stream<T: Send>(
    cfg: &ScoreConfig,
    columns: Option<Vec<String>>,
    total_rows: Option<usize>,
    source: mpsc::Receiver<Result<SourceJob<T>, ClientError>>,
    sink: mpsc::Sender<DoneJob<T>>,
) -> Result<Summary, ClientError> {
    let started = Instant::now();
    let run_id = cfg.run_id.clone().unwrap_or_else(new_run_id);
    let reply_queue = format!("{}.reply.{run_id}", cfg.topology.prefix());
    let bar = match (cfg.progress, total_rows) {
        (true, Some(n)) => ProgressBar::new(n as u64),
        (true, None) => ProgressBar::no_length(),
        (false, _) => ProgressBar::hidden(),
    };
    bar.set_style(bar_style(false));
    info!(
        run = %run_id,
        rows = ?total_rows,
        model = %cfg.model,
        packed = cfg.pack && cfg.encoding == Encoding::Msgpack,
        by_name = columns.is_some(),
        max_in_flight = cfg.max_in_flight,
        "scoring"
    );
    let mut reconnects = 0u64;
    let mut backoff =
        surge_broker::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let ctx = RunCtx {
        cfg,
        columns: columns.as_deref(),
        reply_queue: &reply_queue,
        bar: &bar,
        started,
        trace: tracing::info_span!(
            target: telemetry::TARGET,
            parent: None,
            "score-batch",
            run = %run_id,
            model = %cfg.model,
        ),
    };
    let mut watch = Watches::new(cfg, started, total_rows);
    let mut run = Run::new(cfg, &run_id, source, sink);
    loop {
        match ctx.session(&mut run, &mut watch).await {
            Ok(()) => break,
            Err(ClientError::Broker(e)) if e.is_connection_loss() => {
                reconnects += 1;
                let delay = backoff.next_delay();
                warn!(error = %e, retry_in = ?delay, "broker connection lost; reconnecting");
                ctx.check_timeout(&run, &watch)?;
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
    bar.finish_and_clear();
    Ok(run.into_summary(reconnects, started.elapsed()))
}

/// What every step of a run's broker side needs, the same across reconnects.
struct RunCtx<'a> {
    cfg: &'a ScoreConfig,
    columns: Option<&'a [String]>,
    reply_queue: &'a str,
    bar: &'a ProgressBar,
    started: Instant,
    /// The run's trace span, parent of every publish span (disabled with no exporter).
    trace: tracing::Span,
}
