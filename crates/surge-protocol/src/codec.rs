//! Encoding and guarded decoding of job and result bodies.
//!
//! Every decode runs the same gauntlet, cheapest first: the size cap, the structure
//! scan ([`crate::scan`]), serde, then the checks on what was decoded (version, row
//! count). [`DecodeError::answerable_kind`] tells the worker which failures it can answer
//! with an error result and which it must dead-letter.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::message::{ErrorKind, Job, JobRef, JobResult, PROTOCOL_VERSION};
use crate::scan::{check_json_depth, check_msgpack, ScanError};

/// Content type of MessagePack bodies.
pub const CONTENT_TYPE_MSGPACK: &str = "application/msgpack";
/// Content type of JSON bodies.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// Limits enforced on every decoded body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest body accepted, in bytes; checked before anything else.
    pub max_message_bytes: usize,
    /// Most inputs (rows or texts) accepted in one job.
    pub max_rows: usize,
    /// Deepest container nesting accepted. A v1 job needs 3 (body, inputs, row).
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 16 * 1024 * 1024,
            max_rows: 65_536,
            max_depth: 16,
        }
    }
}

/// The two encodings of protocol v1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// `application/json`.
    Json,
    /// `application/msgpack` (maps with field names, as `rmp_serde::to_vec_named` writes).
    Msgpack,
}

impl Encoding {
    /// The encoding named by an AMQP `content_type`. Parameters such as
    /// `; charset=utf-8` are ignored. Without a content type the body is sniffed: a
    /// body starting with `{` is JSON, anything else MessagePack.
    pub fn from_content_type(content_type: Option<&str>, body: &[u8]) -> Result<Self, DecodeError> {
        let Some(ct) = content_type else {
            let first = body.iter().find(|b| !b.is_ascii_whitespace());
            return Ok(if first == Some(&b'{') {
                Encoding::Json
            } else {
                Encoding::Msgpack
            });
        };
        let base = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match base.as_str() {
            "application/json" | "text/json" => Ok(Encoding::Json),
            "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack" => {
                Ok(Encoding::Msgpack)
            }
            _ => Err(DecodeError::UnsupportedContentType(ct.to_string())),
        }
    }

    /// The content type to put on a message in this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => CONTENT_TYPE_JSON,
            Encoding::Msgpack => CONTENT_TYPE_MSGPACK,
        }
    }
}

/// Why a body could not be decoded into a message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The body is over [`Limits::max_message_bytes`].
    #[error("body is {size} bytes; the limit is {max} (split the job into smaller ones)")]
    TooLarge {
        /// Size of the body.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The `content_type` names neither JSON nor MessagePack.
    #[error("content type {0:?} is not supported; use application/msgpack or application/json")]
    UnsupportedContentType(String),
    /// The bytes are not valid JSON or MessagePack at all.
    #[error("body is not valid {encoding}: {reason}")]
    Malformed {
        /// `JSON` or `MessagePack`.
        encoding: &'static str,
        /// What the decoder said.
        reason: String,
    },
    /// Containers nest deeper than [`Limits::max_depth`].
    #[error("body nests deeper than {max} levels")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// The body's `v` is not [`PROTOCOL_VERSION`].
    #[error(
        "protocol version {got} is not supported; this worker speaks version {PROTOCOL_VERSION}"
    )]
    UnsupportedVersion {
        /// The version the body claimed.
        got: u64,
    },
    /// The body is well-formed but is not a valid message (missing or mistyped field).
    #[error("body is not a valid v1 message: {0}")]
    Invalid(String),
    /// More inputs than [`Limits::max_rows`].
    #[error("job has {rows} inputs; the limit is {max} per job (use more, smaller jobs)")]
    TooManyRows {
        /// Inputs in the job.
        rows: usize,
        /// The limit.
        max: usize,
    },
}

impl DecodeError {
    /// The error kind to answer this failure with, or `None` when the message cannot
    /// be answered sensibly and belongs in the dead-letter queue.
    pub fn answerable_kind(&self) -> Option<ErrorKind> {
        match self {
            DecodeError::TooLarge { .. } => Some(ErrorKind::TooLarge),
            DecodeError::UnsupportedVersion { .. } => Some(ErrorKind::UnsupportedVersion),
            DecodeError::Invalid(_) => Some(ErrorKind::InvalidJob),
            DecodeError::TooManyRows { .. } => Some(ErrorKind::TooManyRows),
            DecodeError::UnsupportedContentType(_)
            | DecodeError::Malformed { .. }
            | DecodeError::TooDeep { .. } => None,
        }
    }

    /// A short snake_case name for logs, metrics and dead-letter headers.
    pub fn kind_name(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::UnsupportedContentType(_) => "unsupported_content_type",
            DecodeError::Malformed { .. } => "malformed",
            DecodeError::TooDeep { .. } => "too_deep",
            DecodeError::UnsupportedVersion { .. } => "unsupported_version",
            DecodeError::Invalid(_) => "invalid_job",
            DecodeError::TooManyRows { .. } => "too_many_rows",
        }
    }
}

/// Why a message could not be encoded (only non-serialisable values, in practice never).
#[derive(Debug, Error)]
#[error("could not encode message: {0}")]
pub struct EncodeError(String);

/// Encodes any protocol message in `encoding`.
pub fn encode<T: Serialize>(message: &T, encoding: Encoding) -> Result<Vec<u8>, EncodeError> {
    match encoding {
        Encoding::Json => serde_json::to_vec(message).map_err(|e| EncodeError(e.to_string())),
        Encoding::Msgpack => {
            rmp_serde::to_vec_named(message).map_err(|e| EncodeError(e.to_string()))
        }
    }
}

fn scan_error(e: ScanError, encoding: Encoding) -> DecodeError {
    match e {
        ScanError::TooDeep { max } => DecodeError::TooDeep { max },
        other => DecodeError::Malformed {
            encoding: encoding_name(encoding),
            reason: other.to_string(),
        },
    }
}

fn encoding_name(encoding: Encoding) -> &'static str {
    match encoding {
        Encoding::Json => "JSON",
        Encoding::Msgpack => "MessagePack",
    }
}

/// Encodes a job, with its rows packed as `rows_f32` + `cols` when `packed` and the
/// encoding can carry bytes (MessagePack). JSON always gets the `inputs` list.
pub fn encode_job(job: &Job, encoding: Encoding, packed: bool) -> Result<Vec<u8>, EncodeError> {
    encode_job_ref(job.as_ref(), encoding, packed)
}

/// [`encode_job`] for a borrowed job.
pub fn encode_job_ref(
    job: JobRef<'_>,
    encoding: Encoding,
    packed: bool,
) -> Result<Vec<u8>, EncodeError> {
    encode(&job.wire(packed && encoding == Encoding::Msgpack), encoding)
}

/// True when the body's top-level value is a map (JSON object, MessagePack map), the
/// only shape a message may have. serde would also read a struct from an array, by
/// field order; that must not become part of the contract.
fn is_map(body: &[u8], encoding: Encoding) -> bool {
    match encoding {
        Encoding::Json => body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'),
        Encoding::Msgpack => matches!(body.first(), Some(0x80..=0x8f | 0xde | 0xdf)),
    }
}

/// Size cap, structure scan, then serde. Schema errors come back as
/// [`DecodeError::Invalid`]; broken bytes as [`DecodeError::Malformed`].
fn decode_guarded<T: DeserializeOwned>(
    body: &[u8],
    encoding: Encoding,
    limits: &Limits,
) -> Result<T, DecodeError> {
    if body.len() > limits.max_message_bytes {
        return Err(DecodeError::TooLarge {
            size: body.len(),
            max: limits.max_message_bytes,
        });
    }
    let first = decode_unchecked(body, encoding, limits);
    if first.is_err() && encoding == Encoding::Json {
        // JSON has no NaN or infinity, but Python's json.dumps writes `NaN` and
        // `Infinity`, and `1e999` overflows: read them as null, which the input check
        // then refuses with the row and feature named, instead of dead-lettering the
        // whole job as malformed.
        if let Some(clean) = crate::scan::json_non_finite_to_null(body) {
            // Rewritten, the body decodes, or fails on its schema (a non-finite number
            // where a field wants an integer): either is a better answer than
            // "malformed".
            let second = decode_unchecked(&clean, encoding, limits);
            if matches!(second, Ok(_) | Err(DecodeError::Invalid(_))) {
                return second;
            }
        }
    }
    first
}

fn decode_unchecked<T: DeserializeOwned>(
    body: &[u8],
    encoding: Encoding,
    limits: &Limits,
) -> Result<T, DecodeError> {
    match encoding {
        Encoding::Msgpack => {
            check_msgpack(body, limits.max_depth).map_err(|e| scan_error(e, encoding))?;
            if !is_map(body, encoding) {
                return Err(not_a_map());
            }
            // The scan proved the bytes well-formed, so what serde refuses is the schema.
            rmp_serde::from_slice(body).map_err(|e| DecodeError::Invalid(e.to_string()))
        }
        Encoding::Json => {
            check_json_depth(body, limits.max_depth).map_err(|e| scan_error(e, encoding))?;
            if !is_map(body, encoding)
                && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
            {
                return Err(not_a_map());
            }
            serde_json::from_slice(body).map_err(|e| match e.classify() {
                serde_json::error::Category::Data => DecodeError::Invalid(e.to_string()),
                _ => DecodeError::Malformed {
                    encoding: "JSON",
                    reason: e.to_string(),
                },
            })
        }
    }
}

fn not_a_map() -> DecodeError {
    DecodeError::Invalid(
        "the body must be a map of named fields (a JSON object or a MessagePack map), not a list or a scalar".into(),
    )
}

/// Just the model of a body, to fill `model` in an error answer.
#[derive(Deserialize)]
struct ModelProbe {
    #[serde(default)]
    model: Option<String>,
}

/// The `model` field of a body that did not decode as a job, when it can be read; so
/// an error answer names the model the producer asked for.
pub fn probe_model(body: &[u8], encoding: Encoding, limits: &Limits) -> Option<String> {
    decode_guarded::<ModelProbe>(body, encoding, limits)
        .ok()
        .and_then(|p| p.model)
}

/// Just the version of a body, to tell "a v2 job" from "a broken v1 job".
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    v: Option<u64>,
}

fn check_version(got: u64) -> Result<(), DecodeError> {
    if got == u64::from(PROTOCOL_VERSION) {
        Ok(())
    } else {
        Err(DecodeError::UnsupportedVersion { got })
    }
}

/// On a schema error, a body with another `v` is reported as a version problem: its
/// shape is not ours to judge.
fn explain_invalid(
    err: DecodeError,
    body: &[u8],
    encoding: Encoding,
    limits: &Limits,
) -> DecodeError {
    if let DecodeError::Invalid(_) = &err {
        if let Ok(Probe { v: Some(v) }) = decode_guarded::<Probe>(body, encoding, limits) {
            if let Err(version_err) = check_version(v) {
                return version_err;
            }
        }
    }
    err
}

/// Decodes a job body under `limits`.
pub fn decode_job(body: &[u8], encoding: Encoding, limits: &Limits) -> Result<Job, DecodeError> {
    let job: Job = decode_guarded(body, encoding, limits)
        .map_err(|e| explain_invalid(e, body, encoding, limits))?;
    check_version(u64::from(job.v))?;
    if job.inputs.len() > limits.max_rows {
        return Err(DecodeError::TooManyRows {
            rows: job.inputs.len(),
            max: limits.max_rows,
        });
    }
    Ok(job)
}

/// Decodes a result body under `limits`.
pub fn decode_result(
    body: &[u8],
    encoding: Encoding,
    limits: &Limits,
) -> Result<JobResult, DecodeError> {
    let result: JobResult = decode_guarded(body, encoding, limits)
        .map_err(|e| explain_invalid(e, body, encoding, limits))?;
    check_version(u64::from(result.v))?;
    Ok(result)
}
