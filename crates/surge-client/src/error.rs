//! [`ClientError`]: why a run failed.

use std::time::Duration;

use surge_broker::BrokerError;
use thiserror::Error;

/// Why a run failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The input file cannot be used.
    #[error("input: {0}")]
    Input(String),
    /// The output file cannot be written.
    #[error("output: {0}")]
    Output(String),
    /// The broker refused something that retrying will not fix.
    #[error("{0}")]
    Broker(#[from] BrokerError),
    /// The run did not finish within `--timeout`.
    #[error("timed out after {after:?}: {answered} of {total} jobs answered; {hint}")]
    Timeout {
        /// Jobs answered.
        answered: usize,
        /// Jobs in the run.
        total: usize,
        /// The limit.
        after: Duration,
        /// What to check, from what the run saw last (no consumer on the queue, ...).
        hint: String,
    },
}
