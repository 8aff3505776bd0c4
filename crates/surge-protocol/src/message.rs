//! The job and result bodies of protocol v1.
//!
//! Field names are short and stable; `docs/PROTOCOL.md` documents each one. Unknown
//! fields are ignored, so later minor additions do not break older workers.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

use crate::rows::{rest_of_rows, FirstRow, Packed, PackedOut, Rows, RowsBuilderHandle};

/// The protocol version this crate speaks; it travels as `v` in every body.
pub const PROTOCOL_VERSION: u32 = 1;

/// A scoring job: what a producer publishes to the jobs exchange.
///
/// On the wire the rows travel as `inputs` (a list) or packed as `rows_f32` + `cols`
/// (see [`crate::rows`]); decoded, both are [`Inputs::Rows`]. Serialising a `Job`
/// writes the list form; [`crate::codec::encode_job`] writes the packed one.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "JobIn")]
pub struct Job {
    /// Protocol version; must be [`PROTOCOL_VERSION`].
    pub v: u32,
    /// Model to score with; also the routing key.
    pub model: String,
    /// Model version to use; the newest served version when absent.
    pub version: Option<String>,
    /// The rows (tabular models) or texts (text models) to score.
    pub inputs: Inputs,
    /// Names of the values of each row, in row order. When present the worker maps
    /// them to the model's features by name: column order does not matter, extra
    /// columns are ignored and missing ones are named in an `invalid_input` answer.
    pub columns: Option<Vec<String>>,
    /// Unix epoch milliseconds after which the job must not be scored; it is answered
    /// `expired` instead.
    pub deadline_ms: Option<u64>,
    /// Unix epoch milliseconds when the producer published the job; lets the worker
    /// report how long the job waited in the queue.
    pub sent_ms: Option<u64>,
}

impl Job {
    /// A v1 job with no version, column names, deadline or timestamp.
    pub fn new(model: impl Into<String>, inputs: Inputs) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            model: model.into(),
            version: None,
            inputs,
            columns: None,
            deadline_ms: None,
            sent_ms: None,
        }
    }

    /// The job, borrowed, for encoding.
    pub fn as_ref(&self) -> JobRef<'_> {
        JobRef {
            v: self.v,
            model: &self.model,
            version: self.version.as_deref(),
            inputs: &self.inputs,
            columns: self.columns.as_deref(),
            deadline_ms: self.deadline_ms,
            sent_ms: self.sent_ms,
        }
    }
}

/// A job that borrows its inputs, so that a producer publishing (and republishing) a
/// job never copies them; encode it with [`crate::codec::encode_job`].
#[derive(Debug, Clone, Copy)]
pub struct JobRef<'a> {
    /// Protocol version; [`PROTOCOL_VERSION`].
    pub v: u32,
    /// Model to score with.
    pub model: &'a str,
    /// Model version; the newest when `None`.
    pub version: Option<&'a str>,
    /// The rows or texts.
    pub inputs: &'a Inputs,
    /// Names of the values of each row (see [`Job::columns`]).
    pub columns: Option<&'a [String]>,
    /// Unix ms after which the job must not be scored.
    pub deadline_ms: Option<u64>,
    /// Unix ms when the job was published.
    pub sent_ms: Option<u64>,
}

impl<'a> JobRef<'a> {
    /// The wire form, with rows packed as `rows_f32` + `cols` when `packed` and the
    /// job holds rows.
    pub(crate) fn wire(&self, packed: bool) -> JobOut<'a> {
        let (inputs, rows_f32, cols) = match (self.inputs, packed) {
            (Inputs::Rows(r), true) => (None, Some(PackedOut(r.to_le_bytes())), Some(r.cols())),
            (inputs, _) => (Some(inputs), None, None),
        };
        JobOut {
            v: self.v,
            model: self.model,
            version: self.version,
            columns: self.columns,
            inputs,
            rows_f32,
            cols,
            deadline_ms: self.deadline_ms,
            sent_ms: self.sent_ms,
        }
    }
}

impl Serialize for Job {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.as_ref().wire(false).serialize(s)
    }
}

/// A job on its way out, borrowing the job.
#[derive(Serialize)]
pub(crate) struct JobOut<'a> {
    v: u32,
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    columns: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inputs: Option<&'a Inputs>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rows_f32: Option<PackedOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cols: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deadline_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sent_ms: Option<u64>,
}

/// A job as it arrives: rows as `inputs` or as `rows_f32` + `cols`.
#[derive(Deserialize)]
struct JobIn {
    v: u32,
    model: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    inputs: Option<Inputs>,
    #[serde(default)]
    rows_f32: Option<Packed>,
    #[serde(default)]
    cols: Option<u64>,
    #[serde(default)]
    columns: Option<Vec<String>>,
    #[serde(default)]
    deadline_ms: Option<u64>,
    #[serde(default)]
    sent_ms: Option<u64>,
}

impl TryFrom<JobIn> for Job {
    type Error = String;

    fn try_from(j: JobIn) -> Result<Self, String> {
        let inputs = match (j.inputs, j.rows_f32, j.cols) {
            (Some(_), Some(_), _) => {
                return Err("the job carries both inputs and rows_f32; send one".into())
            }
            (Some(inputs), None, _) => inputs,
            (None, Some(_), None) => {
                return Err("rows_f32 needs cols, the number of values per row".into())
            }
            (None, Some(p), Some(cols)) => {
                let cols = usize::try_from(cols).unwrap_or(usize::MAX);
                let mut rows = Rows::from_flat(p.values, cols);
                if p.stray_bytes > 0 {
                    rows = Rows::with_shape_error(
                        rows,
                        format!(
                            "rows_f32 ends with {} stray bytes; its length must be a multiple of 4 (little-endian f32)",
                            p.stray_bytes
                        ),
                    );
                }
                Inputs::Rows(rows)
            }
            (None, None, _) => {
                return Err("missing field `inputs` (or `rows_f32` and `cols`)".into())
            }
        };
        Ok(Job {
            v: j.v,
            model: j.model,
            version: j.version,
            inputs,
            columns: j.columns,
            deadline_ms: j.deadline_ms,
            sent_ms: j.sent_ms,
        })
    }
}

/// The inputs of a job: on the wire, a list whose items are all rows (lists of
/// numbers) or all strings.
#[derive(Debug, Clone, PartialEq)]
pub enum Inputs {
    /// Tabular rows, held flat.
    Rows(Rows),
    /// Texts, one per item.
    Texts(Vec<String>),
}

impl Inputs {
    /// Rows from a list of rows.
    pub fn rows(rows: &[Vec<f32>]) -> Self {
        Inputs::Rows(Rows::from_rows(rows))
    }

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
            Inputs::Rows(rows) => rows.serialize(s),
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

/// The first item of `inputs`, told apart by its wire type.
enum Item {
    Row(FirstRow),
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
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Item, A::Error> {
                FirstRow::visit(seq).map(Item::Row)
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
                // Never trust a length prefix for preallocation: cap it.
                let hint = seq.size_hint().unwrap_or(0).min(1024);
                match seq.next_element::<Item>()? {
                    None => Ok(Inputs::Rows(Rows::default())),
                    Some(Item::Row(first)) => {
                        rest_of_rows(seq, RowsBuilderHandle::starting_with(first.0, hint))
                            .map(Inputs::Rows)
                    }
                    Some(Item::Text(first)) => {
                        let mut texts = Vec::with_capacity(hint);
                        texts.push(first);
                        while let Some(t) = seq.next_element::<TextItem>()? {
                            texts.push(t.0);
                        }
                        Ok(Inputs::Texts(texts))
                    }
                }
            }
        }
        d.deserialize_seq(InputsVisitor)
    }
}

/// An item after a first text: it must be a text too.
struct TextItem(String);

impl<'de> Deserialize<'de> for TextItem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = TextItem;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a text like inputs[0]: a job holds only rows or only texts")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TextItem, E> {
                Ok(TextItem(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<TextItem, E> {
                Ok(TextItem(v))
            }
        }
        d.deserialize_any(V)
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
    /// An `ok` result: `outputs` holds one entry per input, in input order.
    pub fn ok(
        job_id: impl Into<String>,
        model: impl Into<String>,
        version: impl Into<String>,
        output_names: Vec<String>,
        outputs: Vec<Vec<f32>>,
        worker: impl Into<String>,
        timings: Timings,
    ) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            job_id: job_id.into(),
            model: model.into(),
            version: Some(version.into()),
            status: Status::Ok,
            output_names,
            outputs,
            error: None,
            worker: worker.into(),
            timings,
        }
    }

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
