//! The model runtime's one error type. Every variant names the file (and where it
//! helps, the field or tensor) so that `surge models check` output is actionable.

use std::path::PathBuf;

use thiserror::Error;

/// Everything that can go wrong loading or running a model.
#[derive(Debug, Error)]
pub enum ModelError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// `model.toml` is not valid TOML or does not have the expected fields.
    #[error("{path}: {message}")]
    BadToml {
        /// The `model.toml`.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A field of `model.toml` has a value that cannot work.
    #[error("{path}: field `{field}`: {reason}")]
    InvalidSpec {
        /// The `model.toml`.
        path: PathBuf,
        /// Dotted field path, for example `preprocessing.std`.
        field: String,
        /// What is wrong and what would be right.
        reason: String,
    },
    /// The model (folder) name is not a valid model name.
    #[error("model name: {0}")]
    BadName(#[from] surge_protocol::NameError),
    /// The folder, or a file it names, resolves outside the models directory.
    #[error("{path} resolves outside the models directory {models_dir}")]
    OutsideModelsDir {
        /// The offending path.
        path: PathBuf,
        /// The models directory.
        models_dir: PathBuf,
    },
    /// No model folder of that name.
    #[error("no model {name:?} in {models_dir} (expected {models_dir}/{name}/model.toml, or {models_dir}/{name}/<version>/model.toml for versions side by side)")]
    NotFound {
        /// The requested name.
        name: String,
        /// The models directory.
        models_dir: PathBuf,
    },
    /// A model folder holds a `model.toml` (the flat layout) and version folders (the
    /// versioned layout) at once: which one would be served is anybody's guess, so
    /// none is.
    #[error("{dir} mixes two layouts: it holds model.toml (one flat version{}) and version folder(s) {}; it is refused until it holds one layout. To keep versions side by side, move the flat model's files (model.toml, the weights and anything else beside them) into {dir}/{}/; to keep the flat model alone, remove the version folders", flat_version.as_ref().map(|v| format!(", {v}")).unwrap_or_default(), versions.join(", "), flat_version.as_deref().unwrap_or("<its version>"))]
    MixedLayout {
        /// The model folder.
        dir: PathBuf,
        /// The `version` its flat `model.toml` declares, when it can be read.
        flat_version: Option<String>,
        /// The version folders beside it.
        versions: Vec<String>,
    },
    /// `architecture` names no registered architecture.
    #[error("{path}: unknown architecture {name:?}; known architectures: {known}")]
    UnknownArchitecture {
        /// The `model.toml`.
        path: PathBuf,
        /// The unknown name.
        name: String,
        /// Comma-separated list of registered names.
        known: String,
    },
    /// The weights file is not a readable safetensors file.
    #[error("{path}: not a valid safetensors file: {message}")]
    BadWeights {
        /// The weights file.
        path: PathBuf,
        /// What the reader said.
        message: String,
    },
    /// A file the architecture reads besides the weights (for example `config.json` or
    /// `tokenizer.json`) is not what it should be.
    #[error("{path}: {message}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A tensor the architecture needs is absent.
    #[error("{path}: tensor `{name}` is missing (expected shape {expected:?}); found: {found}")]
    MissingTensor {
        /// The weights file.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// Shape it should have.
        expected: Vec<usize>,
        /// Every tensor in the file, with its shape, for the reader to compare.
        found: String,
    },
    /// The tensor names do not follow a layout the architecture knows.
    #[error("{path}: {message}; found: {found}")]
    TensorNames {
        /// The weights file.
        path: PathBuf,
        /// What was expected and how to fix it.
        message: String,
        /// Every tensor in the file, with its shape.
        found: String,
    },
    /// A tensor has the wrong shape.
    #[error("{path}: tensor `{name}` has shape {got:?}, expected {expected:?}")]
    TensorShape {
        /// The weights file.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// Shape it should have.
        expected: Vec<usize>,
        /// Shape it has.
        got: Vec<usize>,
    },
    /// A tensor has the wrong element type.
    #[error("{path}: tensor `{name}` has dtype {got}, expected {expected}")]
    TensorDType {
        /// The weights file.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// Element type it should have.
        expected: String,
        /// Element type it has.
        got: String,
    },
    /// A tensor holds NaN or infinite values.
    #[error("{path}: tensor `{name}` holds {count} NaN or infinite values")]
    NonFiniteWeights {
        /// The weights file.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// How many bad values.
        count: usize,
    },
    /// The weights file holds tensors the architecture does not use (a sign that the
    /// wrong file or the wrong `model.toml` was shipped).
    #[error("{path}: unexpected tensors {names:?} (does model.toml describe these weights?); found: {found}")]
    UnexpectedTensors {
        /// The weights file.
        path: PathBuf,
        /// Their names.
        names: Vec<String>,
        /// Every tensor in the file, with its shape.
        found: String,
    },
    /// The folder's golden rows do not come out as expected: the folder does not score
    /// like the code that wrote them.
    #[error("{path}: golden row {row} (line {line} of {inputs}), output {output}: got {got}, expected {expected} (|diff| {} > tolerance {tolerance}); {differing} of {rows} golden rows differ. The folder does not score like the code that wrote the golden rows: check [preprocessing] (mean and std) and the order of [input] features", num(*diff))]
    GoldenMismatch {
        /// The expected-outputs file.
        path: PathBuf,
        /// The inputs file, as named in `model.toml`.
        inputs: String,
        /// First differing row, counted from 1 (the header is not a row).
        row: usize,
        /// Its line in the inputs file.
        line: usize,
        /// The output that differs.
        output: String,
        /// What the folder computed.
        got: f32,
        /// What the golden file says.
        expected: f32,
        /// `|got - expected|` (infinite when `got` is not finite).
        diff: f32,
        /// The largest difference allowed.
        tolerance: f32,
        /// How many rows differ in at least one output.
        differing: usize,
        /// How many golden rows there are.
        rows: usize,
    },
    /// The requested device cannot be used.
    #[error("device: {0}")]
    Device(String),
    /// A batch does not fit the model (a bug in the caller: inputs are checked first).
    #[error("bad batch: {0}")]
    BadBatch(String),
    /// Candle failed during a forward pass.
    #[error("inference failed: {0}")]
    Inference(String),
}

/// A difference written for people: 4 decimals, or scientific when that would print 0.
fn num(x: f32) -> String {
    if x.is_finite() && x.abs() < 1e-3 {
        format!("{x:.2e}")
    } else {
        format!("{x:.4}")
    }
}

impl ModelError {
    /// A short label for what kind of problem this is, for metrics and log fields:
    /// `mixed_layout`, `golden_mismatch`, `spec` (model.toml), `weights`, `files`,
    /// `not_found` or `runtime`.
    pub fn reason(&self) -> &'static str {
        match self {
            ModelError::MixedLayout { .. } => "mixed_layout",
            ModelError::GoldenMismatch { .. } => "golden_mismatch",
            ModelError::BadToml { .. }
            | ModelError::InvalidSpec { .. }
            | ModelError::BadName(_)
            | ModelError::UnknownArchitecture { .. } => "spec",
            ModelError::BadWeights { .. }
            | ModelError::MissingTensor { .. }
            | ModelError::TensorNames { .. }
            | ModelError::TensorShape { .. }
            | ModelError::TensorDType { .. }
            | ModelError::NonFiniteWeights { .. }
            | ModelError::UnexpectedTensors { .. } => "weights",
            ModelError::Io { .. }
            | ModelError::BadFile { .. }
            | ModelError::OutsideModelsDir { .. } => "files",
            ModelError::NotFound { .. } => "not_found",
            ModelError::Device(_) | ModelError::BadBatch(_) | ModelError::Inference(_) => "runtime",
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn spec(path: impl Into<PathBuf>, field: &str, reason: impl Into<String>) -> Self {
        ModelError::InvalidSpec {
            path: path.into(),
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}

/// Candle errors during inference are converted here, in one place.
impl From<candle_core::Error> for ModelError {
    fn from(e: candle_core::Error) -> Self {
        ModelError::Inference(e.to_string())
    }
}
