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
    #[error("no model {name:?} in {models_dir} (expected {models_dir}/{name}/model.toml)")]
    NotFound {
        /// The requested name.
        name: String,
        /// The models directory.
        models_dir: PathBuf,
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
    #[error("{path}: tensor `{name}` is missing (expected shape {expected:?})")]
    MissingTensor {
        /// The weights file.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// Shape it should have.
        expected: Vec<usize>,
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
    #[error("{path}: unexpected tensors {names:?} (does model.toml describe these weights?)")]
    UnexpectedTensors {
        /// The weights file.
        path: PathBuf,
        /// Their names.
        names: Vec<String>,
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

impl ModelError {
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
