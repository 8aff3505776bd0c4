//! `model.toml`: what a model folder says about itself.
//!
//! The common part (name, version, architecture, input, output, preprocessing, golden) is parsed
//! here; each architecture parses its own section (`[mlp]`, ...) from
//! [`SpecFile::sections`], so a new architecture never touches this file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ModelError;

/// The file every model folder holds.
pub const SPEC_FILE: &str = "model.toml";

/// `model.toml` as written.
#[derive(Debug, Clone, Deserialize)]
pub struct SpecFile {
    /// Model name; when present it must equal the folder name.
    #[serde(default)]
    pub name: Option<String>,
    /// Version label, for example `1.0.0`.
    pub version: String,
    /// Registered architecture that runs it, for example `mlp`.
    pub architecture: String,
    /// One line for `surge models list`.
    #[serde(default)]
    pub description: String,
    /// Weights file inside the folder.
    #[serde(default = "default_weights")]
    pub weights: String,
    /// What a job's inputs must look like.
    pub input: InputSection,
    /// What each output holds.
    #[serde(default)]
    pub output: OutputSection,
    /// Constants applied to tabular inputs before the forward pass.
    #[serde(default)]
    pub preprocessing: Option<Preprocessing>,
    /// Inputs and the outputs the training code gave for them, checked at every load.
    #[serde(default)]
    pub golden: Option<crate::golden::GoldenSection>,
    /// Architecture sections (`[mlp]`, ...), parsed by the architecture.
    #[serde(flatten)]
    pub sections: toml::Table,
}

fn default_weights() -> String {
    "model.safetensors".to_string()
}

/// `[input]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum InputSection {
    /// Rows of numbers, one per named feature.
    Tabular {
        /// Feature names, in column order; their count is the input dimension.
        features: Vec<String>,
    },
    /// Strings.
    Text {
        /// Longest input in tokens; longer texts are truncated.
        #[serde(default)]
        max_length: Option<usize>,
    },
}

/// `[output]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    /// Name of each output column (for example `["malignant_probability"]`).
    #[serde(default)]
    pub names: Vec<String>,
}

/// `[preprocessing]`: standardisation, `(x - mean) / std` per feature.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocessing {
    /// Per-feature mean.
    pub mean: Vec<f32>,
    /// Per-feature standard deviation; every value must be positive.
    pub std: Vec<f32>,
}

/// What inputs a model accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSpec {
    /// Rows with these features, in this order.
    Tabular {
        /// Feature names.
        features: Vec<String>,
    },
    /// Texts, truncated to `max_length` tokens.
    Text {
        /// Longest input in tokens.
        max_length: usize,
    },
}

/// What the rest of Surge knows about a loaded model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// Model name (the folder name).
    pub name: String,
    /// Version label.
    pub version: String,
    /// Architecture name.
    pub architecture: String,
    /// One-line description.
    pub description: String,
    /// Accepted inputs.
    pub input: InputSpec,
    /// Output column names; empty for embeddings.
    pub output_names: Vec<String>,
    /// The folder it was loaded from.
    pub dir: PathBuf,
}

impl ModelInfo {
    /// The input dimension of a tabular model.
    pub fn dimension(&self) -> Option<usize> {
        match &self.input {
            InputSpec::Tabular { features } => Some(features.len()),
            InputSpec::Text { .. } => None,
        }
    }
}

/// Reads and parses `dir/model.toml`.
pub fn read_spec(dir: &Path) -> Result<SpecFile, ModelError> {
    let path = dir.join(SPEC_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    toml::from_str(&text).map_err(|e| ModelError::BadToml {
        path,
        message: e.to_string(),
    })
}
