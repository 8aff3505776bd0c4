//! `score-batch` as a library: a file of rows in, scores out, through RabbitMQ, with
//! every row answered exactly once.
//!
//! A tour:
//!
//! * [`table`]: reading CSV / JSON Lines into rows, choosing the columns sent, and
//!   writing rows plus scores back, in input order (pure).
//! * [`stream`]: files of any length in bounded memory: rows read incrementally into
//!   jobs, and written back in input order as their jobs are answered.
//! * [`parquet_io`]: Parquet in and out, a row group at a time; [`resume`]: the state
//!   file that lets a killed run continue.
//! * [`tracker`]: the plan (rows → jobs with idempotent ids) and the bookkeeping of
//!   which jobs are answered, deduplicating results that arrive twice (pure).
//! * [`watch`]: hints for a run that is stuck (no worker consumes the model's queue)
//!   or failing (every job so far answered with an error) (pure).
//! * [`ScoreConfig`] (`config.rs`): how to run; [`SourceJob`], [`DoneJob`] and
//!   [`Summary`] (`run.rs`): what a run takes, hands on and counts.
//! * [`score_stream`] (`transport/`; and [`score_table`], [`score_jobs`] for inputs in
//!   memory, `in_memory.rs`): the broker side: publish jobs with confirms, collect
//!   results on a reply queue of the run's own, republish jobs whose results are
//!   overdue, and reconnect after a lost connection. With traces exported
//!   (`surge_ops::telemetry`), each publish is a producer span inside the run's span,
//!   and the job carries its context as a W3C `traceparent` header.

mod config;
mod error;
mod in_memory;
pub mod parquet_io;
pub mod resume;
mod run;
pub mod stream;
pub mod table;
pub mod tracker;
mod transport;
pub mod watch;

/// The Arrow type of a Parquet column (re-exported for [`stream::open_parquet`]).
pub use arrow_schema::DataType;
pub use config::{new_run_id, ResumeFrom, ScoreConfig};
pub use error::ClientError;
pub use in_memory::{
    score_jobs, score_jobs_in_window, score_jobs_with_columns, score_table, Answered, Scored,
};
pub use run::{job_outcome, DoneJob, SourceJob, Summary};
pub use transport::score_stream;
