//! Surge wire protocol v1: the contract that any AMQP client speaks.
//!
//! A tour of the crate, one module per idea:
//!
//! * [`message`]: the job and result bodies, field by field.
//! * [`codec`]: JSON and MessagePack encoding, with every decode guarded by [`Limits`].
//! * [`rows`]: tabular rows held flat, from `inputs` lists or packed `rows_f32` blocks.
//! * [`scan`]: pure, iterative structure checks that run *before* serde sees a byte,
//!   so that a depth bomb or a length bomb is an error, never a stack overflow or a
//!   huge allocation.
//! * [`topology`]: exchange and queue names, queue arguments and header names.
//! * [`names`]: what a model name may look like (it becomes a routing key and a folder).
//! * [`trace`]: the W3C `traceparent` header that jobs and results may carry.
//!
//! This crate is pure: no broker, no runtime, no I/O. `docs/PROTOCOL.md` is the prose
//! version of the same contract.

pub mod codec;
pub mod message;
pub mod names;
pub mod rows;
pub mod scan;
pub mod topology;
pub mod trace;

pub use codec::{DecodeError, Encoding, Limits};
pub use message::{
    ErrorKind, Inputs, Job, JobRef, JobResult, ResultError, Status, Timings, PROTOCOL_VERSION,
};
pub use names::{validate_model_name, NameError};
pub use rows::Rows;
pub use topology::Topology;
pub use trace::{TraceParent, TraceParentError, TRACEPARENT_HEADER};

/// Milliseconds since the Unix epoch, the unit of every timestamp on the wire.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
