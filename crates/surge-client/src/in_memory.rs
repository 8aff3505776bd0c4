//! Runs whose inputs are in memory already: [`score_table`] (a whole [`Table`]) and
//! [`score_jobs`] (one job per element), which publish every job at once and collect
//! every answer ([`Answered`]) before turning them into one outcome per row
//! ([`Scored`]). They are [`score_stream`] with an unbounded window: the bench's
//! in-memory baseline.

use std::collections::BTreeMap;

use surge_protocol::{Inputs, JobResult};
use tokio::sync::mpsc;

use crate::table::{RowOutcome, Selection, Table};
use crate::tracker::{self, plan};
use crate::{job_outcome, score_stream, ClientError, DoneJob, ScoreConfig, SourceJob, Summary};

/// The outcome of a run: one outcome per input row, in input order.
#[derive(Debug, Clone)]
pub struct Scored {
    /// Names of the output columns (empty for embeddings).
    pub output_names: Vec<String>,
    /// One per input row.
    pub outcomes: Vec<RowOutcome>,
    /// Counts.
    pub summary: Summary,
}

/// Scores the selected cells of `table` with `cfg.model` through the broker. Every
/// cell is checked before the first job is published; the selection's names travel
/// as each job's `columns`.
pub async fn score_table(
    cfg: &ScoreConfig,
    table: &Table,
    selection: &Selection,
) -> Result<Scored, ClientError> {
    let jobs = plan("", table.records.len(), cfg.rows_per_job);
    let inputs: Vec<Inputs> = jobs
        .iter()
        .map(|j| table.inputs(selection, j.start, j.end))
        .collect::<Result<_, _>>()?;
    let columns = match selection {
        Selection::Features { names, .. } => names.clone(),
        Selection::Text(_) => None,
    };
    let answered = score_jobs_with_columns(cfg, inputs, columns).await?;
    Ok(answered.into_scored())
}

/// Every job of a run with its result, in job order, and the run's counters.
#[derive(Debug)]
pub struct Answered {
    /// Each job (rows `start..end` of the input) with its result.
    pub jobs: Vec<(tracker::PlannedJob, JobResult)>,
    /// Counters; the row counts are filled by [`Answered::into_scored`].
    pub summary: Summary,
}

/// Publishes one job per element of `inputs` and waits until each is answered once.
/// The rows go by position: in the model's feature order.
pub async fn score_jobs(cfg: &ScoreConfig, inputs: Vec<Inputs>) -> Result<Answered, ClientError> {
    score_jobs_with_columns(cfg, inputs, None).await
}

/// [`score_jobs`] with the names of each row's values, sent as every job's `columns`
/// so that the worker matches them to the model's features by name. Every job is
/// published at once (the inputs are in memory already); [`score_stream`] is the
/// bounded form.
pub async fn score_jobs_with_columns(
    cfg: &ScoreConfig,
    inputs: Vec<Inputs>,
    columns: Option<Vec<String>>,
) -> Result<Answered, ClientError> {
    score_in_memory(cfg, inputs, columns, usize::MAX).await
}

/// [`score_jobs`] with at most `window` jobs unanswered at once, as a streaming run
/// holds (score-batch's `--max-in-flight`), instead of all of them: the bench's way to
/// tell what a file run's window costs from what its file costs.
pub async fn score_jobs_in_window(
    cfg: &ScoreConfig,
    inputs: Vec<Inputs>,
    window: usize,
) -> Result<Answered, ClientError> {
    score_in_memory(cfg, inputs, None, window.max(1)).await
}

/// Every job of `inputs` in the source at once, at most `window` of them in flight.
async fn score_in_memory(
    cfg: &ScoreConfig,
    inputs: Vec<Inputs>,
    columns: Option<Vec<String>>,
    window: usize,
) -> Result<Answered, ClientError> {
    let total_rows: usize = inputs.iter().map(Inputs::len).sum();
    let n = inputs.len();
    let mut cfg = cfg.clone();
    cfg.max_in_flight = window;
    cfg.max_in_flight_bytes = usize::MAX;
    let (src_tx, src_rx) = mpsc::channel(n.max(1));
    for inputs in inputs {
        // The channel holds every job: this never waits.
        let _ = src_tx.try_send(Ok(SourceJob {
            inputs,
            payload: (),
            bytes: 0,
        }));
    }
    drop(src_tx);
    let (sink_tx, mut sink_rx) = mpsc::channel::<DoneJob<()>>(1024);
    let collect = tokio::spawn(async move {
        let mut jobs = Vec::with_capacity(n);
        while let Some(d) = sink_rx.recv().await {
            jobs.push((d.job, d.result));
        }
        jobs
    });
    let summary = score_stream(&cfg, columns, Some(total_rows), src_rx, sink_tx).await?;
    let jobs = collect
        .await
        .map_err(|e| ClientError::Output(format!("collecting results: {e}")))?;
    let summary = Summary {
        rows_ok: 0,
        rows_failed: 0,
        failures: BTreeMap::new(),
        ..summary
    };
    Ok(Answered { jobs, summary })
}

impl Answered {
    /// One outcome per input row, in input order, and the row counters.
    pub fn into_scored(self) -> Scored {
        let mut summary = self.summary;
        let mut output_names = Vec::new();
        let mut outcomes = Vec::with_capacity(summary.rows);
        summary.rows = 0;
        for (job, r) in self.jobs {
            let n = job.end - job.start;
            summary.rows += n;
            match job_outcome(&job, &r) {
                Ok(()) => {
                    if output_names.is_empty() {
                        output_names = r.output_names.clone();
                    }
                    summary.rows_ok += n;
                    outcomes.extend(r.outputs.into_iter().map(RowOutcome::Scored));
                }
                Err((kind, msg)) => {
                    summary.rows_failed += n;
                    *summary.failures.entry(kind).or_default() += n;
                    outcomes.extend((0..n).map(|_| RowOutcome::Failed(msg.clone())));
                }
            }
        }
        Scored {
            output_names,
            outcomes,
            summary,
        }
    }
}
