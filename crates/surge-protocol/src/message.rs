//! The job and result bodies of protocol v1.
//!
//! Field names are short and stable; `docs/PROTOCOL.md` documents each one. Unknown
//! fields are ignored, so later minor additions do not break older workers.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks; it travels as `v` in every body.
pub const PROTOCOL_VERSION: u32 = 1;

/// A scoring job: what a producer publishes to the jobs exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Protocol version; must be [`PROTOCOL_VERSION`].
    pub v: u32,
    /// Model to score with; also the routing key.
    pub model: String,
    /// Model version to use; the newest served version when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The rows (tabular models) or texts (text models) to score.
    pub inputs: Inputs,
    /// Unix epoch milliseconds after which the job must not be scored; it is answered
    /// `expired` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Unix epoch milliseconds when the producer published the job; lets the worker
    /// report how long the job waited in the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_ms: Option<u64>,
}

impl Job {
    /// A v1 job with no version, deadline or timestamp.
    pub fn new(model: impl Into<String>, inputs: Inputs) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            model: model.into(),
            version: None,
            inputs,
            deadline_ms: None,
            sent_ms: None,
        }
    }
}

/// The inputs of a job: on the wire, a list whose items are all rows (lists of
/// numbers) or all strings.
#[derive(Debug, Clone, PartialEq)]
pub enum Inputs {
    /// Tabular rows, each a list of numbers.
    Rows(Vec<Vec<f32>>),
    /// Texts, one per item.
    Texts(Vec<String>),
}

impl Inputs {
    /// Number of rows or texts.
    pub fn len(&self) -> usize {
        match self {
            Inputs::Rows(r) => r.len(),
            Inputs::Texts(t) => t.len(),
        }
    }

    /// True when there is nothing to score.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `"rows"` or `"texts"`, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Inputs::Rows(_) => "rows",
            Inputs::Texts(_) => "texts",
        }
    }
}

impl Serialize for Inputs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Inputs::Rows(rows) => {
                let mut seq = s.serialize_seq(Some(rows.len()))?;
                for r in rows {
                    seq.serialize_element(r)?;
                }
                seq.end()
            }
            Inputs::Texts(texts) => {
                let mut seq = s.serialize_seq(Some(texts.len()))?;
                for t in texts {
                    seq.serialize_element(t)?;
                }
                seq.end()
            }
        }
    }
}

/// One item of `inputs`, told apart by its wire type.
enum Item {
    Row(Vec<f32>),
    Text(String),
}

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ItemVisitor;
        impl<'de> Visitor<'de> for ItemVisitor {
            type Value = Item;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a row (a list of numbers) or a text (a string)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Item, E> {
                Ok(Item::Text(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Item, E> {
                Ok(Item::Text(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Item, A::Error> {
                // Never trust a length prefix for preallocation: cap it.
                let mut row = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(x) = seq.next_element::<f32>()? {
                    row.push(x);
                }
                Ok(Item::Row(row))
            }
        }
        d.deserialize_any(ItemVisitor)
    }
}

impl<'de> Deserialize<'de> for Inputs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct InputsVisitor;
        impl<'de> Visitor<'de> for InputsVisitor {
            type Value = Inputs;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of rows (lists of numbers) or a list of strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Inputs, A::Error> {
                let cap = seq.size_hint().unwrap_or(0).min(1024);
                let mut out: Option<Inputs> = None;
                let mut index = 0usize;
                while let Some(item) = seq.next_element::<Item>()? {
                    match (&mut out, item) {
                        (None, Item::Row(r)) => {
                            let mut v = Vec::with_capacity(cap);
                            v.push(r);
                            out = Some(Inputs::Rows(v));
                        }
                        (None, Item::Text(t)) => {
                            let mut v = Vec::with_capacity(cap);
                            v.push(t);
                            out = Some(Inputs::Texts(v));
                        }
                        (Some(Inputs::Rows(v)), Item::Row(r)) => v.push(r),
                        (Some(Inputs::Texts(v)), Item::Text(t)) => v.push(t),
                        (Some(existing), _) => {
                            return Err(de::Error::custom(format!(
                                "inputs[{index}] does not match inputs[0]: a job holds only {}",
                                existing.kind()
                            )))
                        }
                    }
                    index += 1;
                }
                Ok(out.unwrap_or(Inputs::Rows(Vec::new())))
            }
        }
        d.deserialize_seq(InputsVisitor)
    }
}

/// The outcome of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Every input was scored; `outputs` has one entry per input.
    Ok,
    /// The job was not scored; `error` says why.
    Error,
    /// The job's deadline passed before it was scored.
    Expired,
}

/// Machine-readable reason a job was not scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The body's `v` is not a version this worker speaks.
    UnsupportedVersion,
    /// The body decoded but does not have the shape of a job (missing or mistyped field).
    InvalidJob,
    /// The inputs do not fit the model: wrong dimension, not finite, empty, rows for a
    /// text model, ...
    InvalidInput,
    /// No model of that name is served here.
    UnknownModel,
    /// The model is served but not in the requested version.
    UnknownVersion,
    /// More rows than the per-job limit.
    TooManyRows,
    /// The message body is over the size limit.
    TooLarge,
    /// The deadline passed before scoring.
    Expired,
    /// The model failed while scoring; a bug or a resource problem on the worker.
    Internal,
}

impl ErrorKind {
    /// The snake_case name used on the wire and in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::UnsupportedVersion => "unsupported_version",
            ErrorKind::InvalidJob => "invalid_job",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::UnknownModel => "unknown_model",
            ErrorKind::UnknownVersion => "unknown_version",
            ErrorKind::TooManyRows => "too_many_rows",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Expired => "expired",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job was not scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultError {
    /// What went wrong, for programs.
    pub kind: ErrorKind,
    /// What went wrong and what to do about it, for people.
    pub message: String,
}

/// Where the time went, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// From the producer's `sent_ms` (or the AMQP `timestamp`) to the worker taking the
    /// job; absent when the job carried no timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_ms: Option<f64>,
    /// Time of the forward pass that scored this job (shared with its batch mates).
    pub inference_ms: f64,
    /// Rows in the forward pass this job was part of.
    pub batch_rows: u32,
}

/// The answer to a job, published to the job's `reply_to` queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// Protocol version of this body.
    pub v: u32,
    /// The job's `message_id`.
    pub job_id: String,
    /// The model that scored the job (as requested when it was not found).
    pub model: String,
    /// The model version that scored the job; absent when no model was resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `ok`, `error` or `expired`.
    pub status: Status,
    /// Names of the columns of each output (for example `["malignant_probability"]`);
    /// empty for embedding models, whose output is one vector.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_names: Vec<String>,
    /// One output per input, in input order; empty unless `status` is `ok`.
    #[serde(default)]
    pub outputs: Vec<Vec<f32>>,
    /// Why the job was not scored; present unless `status` is `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ResultError>,
    /// Identity of the worker that answered.
    pub worker: String,
    /// Where the time went.
    #[serde(default)]
    pub timings: Timings,
}

impl JobResult {
    /// An `error` (or, for [`ErrorKind::Expired`], `expired`) result.
    pub fn failure(
        job_id: impl Into<String>,
        model: impl Into<String>,
        kind: ErrorKind,
        message: impl Into<String>,
        worker: impl Into<String>,
    ) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            job_id: job_id.into(),
            model: model.into(),
            version: None,
            status: if kind == ErrorKind::Expired {
                Status::Expired
            } else {
                Status::Error
            },
            output_names: Vec::new(),
            outputs: Vec::new(),
            error: Some(ResultError {
                kind,
                message: message.into(),
            }),
            worker: worker.into(),
            timings: Timings::default(),
        }
    }
}
