//! Surge's model runtime: model folders in, scores out, with Candle.
//!
//! A tour:
//!
//! * A model is a folder `models/<name>/` holding [`spec::SPEC_FILE`] (`model.toml`)
//!   and a `.safetensors` file, or version folders `models/<name>/<version>/` that do;
//!   [`folder`] owns that rule ([`layout`]: flat, versioned, or refused as mixed) for
//!   every part of Surge that looks at a models directory. [`load_model`] validates all
//!   of it and says what is wrong, and where, when it is not right.
//! * [`golden`]: rows the training code scored, re-scored at every load; a folder
//!   that does not reproduce them is refused, so a missing `[preprocessing]` or a
//!   feature order gone wrong never scores in silence.
//! * Architectures register in one place, [`ARCHITECTURES`]; each is one module
//!   ([`mlp`], [`bert`], ...) with a `load` function that parses its own `model.toml` section.
//! * A loaded model is a [`Model`]: a synchronous `score(batch)`. The caller runs it on
//!   a thread of its own; nothing here is async, and nothing here knows about AMQP.
//! * [`device`] picks `cpu`, `cuda[:N]` (with the `cuda` cargo feature) or `auto`.

pub mod bert;
mod conform;
pub mod device;
mod error;
pub mod folder;
pub mod golden;
pub mod mlp;
pub mod registry;
pub mod spec;
pub mod weights;

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub use candle_core::Device;
pub use device::{select_device, DeviceSpec};
pub use error::ModelError;
pub use folder::{compare_versions, discover, is_quiet, layout, versions, Layout};
pub use golden::Proof;
pub use registry::Registry;
pub use spec::{InputSpec, ModelInfo, SpecFile};

/// A batch of inputs for one forward pass.
#[derive(Debug, Clone, Copy)]
pub enum Batch<'a> {
    /// `values.len() / dim` rows of `dim` numbers, row-major.
    Rows {
        /// Row-major values.
        values: &'a [f32],
        /// Values per row.
        dim: usize,
    },
    /// Texts.
    Texts(&'a [String]),
}

impl Batch<'_> {
    /// Number of rows or texts.
    pub fn len(&self) -> usize {
        match self {
            Batch::Rows { values, dim } => values.len().checked_div(*dim).unwrap_or(0),
            Batch::Texts(t) => t.len(),
        }
    }

    /// True when the batch holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The outputs of a forward pass: `width` values per input, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// Values per input.
    pub width: usize,
    /// `n * width` values.
    pub values: Vec<f32>,
}

impl Scores {
    /// The outputs of input `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.width..(i + 1) * self.width]
    }

    /// Number of inputs scored.
    pub fn len(&self) -> usize {
        self.values.len().checked_div(self.width).unwrap_or(0)
    }

    /// True when nothing was scored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A loaded model, ready to score. `score` is synchronous and may be slow: run it off
/// the async runtime.
pub trait Model: Send {
    /// What the model is and what it accepts.
    fn info(&self) -> &ModelInfo;
    /// Scores a batch: N inputs in, N outputs out, in order. A row gives the same
    /// output alone or inside a batch.
    fn score(&self, batch: &Batch<'_>) -> Result<Scores, ModelError>;
}

/// Everything an architecture's `load` function gets.
pub struct LoadContext {
    /// The common, already validated part of `model.toml`.
    pub info: ModelInfo,
    /// The whole parsed `model.toml`.
    pub spec: SpecFile,
    /// The weights file, already checked to lie inside the model folder.
    pub weights_path: PathBuf,
    /// Where tensors go.
    pub device: Device,
}

impl LoadContext {
    /// Path of the model's `model.toml`, for error messages.
    pub fn toml_path(&self) -> PathBuf {
        self.info.dir.join(spec::SPEC_FILE)
    }

    /// Parses the architecture's own section, `[name]`.
    pub fn section<T: DeserializeOwned>(&self, name: &str) -> Result<T, ModelError> {
        let value = self.spec.sections.get(name).cloned().ok_or_else(|| {
            ModelError::spec(
                self.toml_path(),
                name,
                format!("section [{name}] is missing"),
            )
        })?;
        value
            .try_into()
            .map_err(|e: toml::de::Error| ModelError::BadToml {
                path: self.toml_path(),
                message: format!("in section [{name}]: {e}"),
            })
    }
}

/// One registered architecture.
pub struct Architecture {
    /// The value of `architecture` in `model.toml`.
    pub name: &'static str,
    /// Loads and validates a model folder of this architecture.
    pub load: fn(&LoadContext) -> Result<Box<dyn Model>, ModelError>,
}

/// Every architecture Surge can run. A new architecture is a module and a line here.
pub const ARCHITECTURES: &[Architecture] = &[
    Architecture {
        name: "mlp",
        load: mlp::load,
    },
    Architecture {
        name: bert::NAME,
        load: bert::load,
    },
];

fn known_architectures() -> String {
    ARCHITECTURES
        .iter()
        .map(|a| a.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `dir` resolved, symlinks followed.
fn canonical(dir: &Path) -> Result<PathBuf, ModelError> {
    dir.canonicalize().map_err(|e| ModelError::io(dir, e))
}

/// `path` resolved, symlinks followed, which must stay inside `root` (already resolved).
fn resolve_inside(path: PathBuf, root: &Path) -> Result<PathBuf, ModelError> {
    let real = canonical(&path)?;
    if !real.starts_with(root) {
        return Err(ModelError::OutsideModelsDir {
            path,
            models_dir: root.to_path_buf(),
        });
    }
    Ok(real)
}

/// Resolves `models_dir/name` and makes sure it does not leave `models_dir`, even
/// through a symlink.
fn model_dir(models_dir: &Path, name: &str) -> Result<PathBuf, ModelError> {
    surge_protocol::validate_model_name(name)?;
    let root = canonical(models_dir)?;
    let dir = root.join(name);
    if !dir.join(spec::SPEC_FILE).is_file() {
        return Err(ModelError::NotFound {
            name: name.to_string(),
            models_dir: models_dir.to_path_buf(),
        });
    }
    resolve_inside(dir, &root)
}

/// Loads and validates model `name` from `models_dir` onto `device`: the flat layout
/// `models_dir/<name>/model.toml`, or, when the folder holds versions
/// (`models_dir/<name>/<version>/model.toml`), the newest of them. A folder with both
/// is refused ([`layout`]).
pub fn load_model(
    models_dir: &Path,
    name: &str,
    device: &Device,
) -> Result<Box<dyn Model>, ModelError> {
    surge_protocol::validate_model_name(name)?;
    match layout(&models_dir.join(name))? {
        Layout::Flat => load_dir(model_dir(models_dir, name)?, name, None, device),
        Layout::Versioned(mut versions) => {
            let newest = versions.pop().unwrap_or_default();
            load_version(models_dir, name, &newest, device)
        }
    }
}

/// Loads version `version` of model `name` from `models_dir/<name>/<version>/`; the
/// folder's name must equal the `version` in its `model.toml`, and the model folder
/// must not mix layouts ([`layout`]).
pub fn load_version(
    models_dir: &Path,
    name: &str,
    version: &str,
    device: &Device,
) -> Result<Box<dyn Model>, ModelError> {
    surge_protocol::validate_model_name(name)?;
    let root = canonical(models_dir)?;
    let real = resolve_inside(root.join(name), &root)?;
    layout(&real)?;
    let dir = model_dir(&real, version)?;
    load_dir(dir, name, Some(version), device)
}

fn load_dir(
    dir: PathBuf,
    name: &str,
    folder_version: Option<&str>,
    device: &Device,
) -> Result<Box<dyn Model>, ModelError> {
    let spec = spec::read_spec(&dir)?;
    let toml_path = dir.join(spec::SPEC_FILE);
    if let Some(declared) = &spec.name {
        if declared != name {
            return Err(ModelError::spec(
                &toml_path,
                "name",
                format!("says {declared:?} but the folder is named {name:?}; they must match"),
            ));
        }
    }
    surge_protocol::validate_model_name(&spec.version)
        .map_err(|e| ModelError::spec(&toml_path, "version", e.to_string()))?;
    if let Some(folder) = folder_version {
        if spec.version != folder {
            return Err(ModelError::spec(
                &toml_path,
                "version",
                format!(
                    "says {:?} but the folder is named {folder:?}; they must match",
                    spec.version
                ),
            ));
        }
    }
    // The weights file must be a plain name inside the folder: no path tricks.
    if spec.weights.contains('/') || spec.weights.contains('\\') || spec.weights.starts_with('.') {
        return Err(ModelError::spec(
            &toml_path,
            "weights",
            format!(
                "{:?} must be a file name inside the model folder",
                spec.weights
            ),
        ));
    }
    let real_weights = resolve_inside(dir.join(&spec.weights), &dir)?;
    let input = match &spec.input {
        spec::InputSection::Tabular { features } => InputSpec::Tabular {
            features: features.clone(),
        },
        spec::InputSection::Text { max_length } => InputSpec::Text {
            max_length: max_length.unwrap_or(512),
        },
    };
    let arch = ARCHITECTURES
        .iter()
        .find(|a| a.name == spec.architecture)
        .ok_or_else(|| ModelError::UnknownArchitecture {
            path: toml_path.clone(),
            name: spec.architecture.clone(),
            known: known_architectures(),
        })?;
    // Sections other than the architecture's own are typos or leftovers.
    if let Some(other) = spec.sections.keys().find(|k| k.as_str() != arch.name) {
        return Err(ModelError::spec(
            &toml_path,
            other,
            format!("unknown field or section for architecture {:?}", arch.name),
        ));
    }
    let info = ModelInfo {
        name: name.to_string(),
        version: spec.version.clone(),
        architecture: spec.architecture.clone(),
        description: spec.description.clone(),
        input,
        output_names: spec.output.names.clone(),
        dir,
    };
    let golden = spec.golden.clone();
    let dir = info.dir.clone();
    let ctx = LoadContext {
        info,
        spec,
        weights_path: real_weights,
        device: device.clone(),
    };
    let model = (arch.load)(&ctx)?;
    if let Some(section) = golden {
        golden::verify(model.as_ref(), &section, &dir)?;
    }
    Ok(model)
}

/// Whether model `name` in `models_dir` takes texts (in any of its versions), read from
/// its `model.toml` files alone, without loading weights. `false` when nothing can be
/// read: loading the model reports why.
pub fn takes_text(models_dir: &Path, name: &str) -> bool {
    if surge_protocol::validate_model_name(name).is_err() {
        return false;
    }
    let dir = models_dir.join(name);
    let dirs = match layout(&dir) {
        Ok(Layout::Flat) => vec![dir],
        Ok(Layout::Versioned(versions)) => versions.iter().map(|v| dir.join(v)).collect(),
        Err(_) => Vec::new(),
    };
    dirs.iter()
        .filter_map(|d| spec::read_spec(d).ok())
        .any(|s| matches!(s.input, spec::InputSection::Text { .. }))
}
