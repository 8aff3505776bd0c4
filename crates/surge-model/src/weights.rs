//! Checked access to a safetensors file: every tensor an architecture takes is checked
//! for presence, dtype, shape and finiteness, and [`Weights::finish`] refuses leftovers.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::ModelError;

/// The tensors of one weights file, loaded on the CPU for checking.
pub struct Weights {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
    taken: BTreeSet<String>,
    /// Every tensor of the file with its shape, in natural order, for error messages.
    all: Vec<(String, Vec<usize>)>,
}

/// Most tensors listed by [`found`]; a BERT file holds about a hundred.
const MAX_LISTED: usize = 40;

/// `name [shape], ...` for every tensor (at most [`MAX_LISTED`], then a count), in
/// natural order (`2.weight` before `10.weight`): what error messages show as "found".
pub fn found(shapes: &[(String, Vec<usize>)]) -> String {
    if shapes.is_empty() {
        return "no tensors at all".to_string();
    }
    let mut sorted: Vec<&(String, Vec<usize>)> = shapes.iter().collect();
    sorted.sort_by(|a, b| crate::compare_versions(&a.0, &b.0));
    let mut out: Vec<String> = sorted
        .iter()
        .take(MAX_LISTED)
        .map(|(n, s)| format!("{n} {s:?}"))
        .collect();
    if sorted.len() > MAX_LISTED {
        out.push(format!("... and {} more", sorted.len() - MAX_LISTED));
    }
    out.join(", ")
}

impl Weights {
    /// Loads every tensor of a safetensors file.
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| {
            ModelError::BadWeights {
                path: path.to_path_buf(),
                message: e.to_string(),
            }
        })?;
        let mut all: Vec<(String, Vec<usize>)> = tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.dims().to_vec()))
            .collect();
        all.sort_by(|a, b| crate::compare_versions(&a.0, &b.0));
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
            taken: BTreeSet::new(),
            all,
        })
    }

    /// The weights file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The name and shape of every tensor in the file, in natural order (`2.weight`
    /// before `10.weight`).
    pub fn shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.all.clone()
    }

    /// Every tensor in the file with its shape, as error messages list them.
    pub fn found(&self) -> String {
        found(&self.all)
    }

    /// Takes tensor `name`, which must be f32, of shape `shape`, and finite; returns it
    /// on `device`.
    pub fn take(
        &mut self,
        name: &str,
        shape: &[usize],
        device: &Device,
    ) -> Result<Tensor, ModelError> {
        let Some(t) = self.tensors.get(name) else {
            return Err(ModelError::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
                expected: shape.to_vec(),
                found: self.found(),
            });
        };
        if t.dtype() != DType::F32 {
            return Err(ModelError::TensorDType {
                path: self.path.clone(),
                name: name.to_string(),
                expected: "F32".to_string(),
                got: format!("{:?}", t.dtype()).to_uppercase(),
            });
        }
        if t.dims() != shape {
            return Err(ModelError::TensorShape {
                path: self.path.clone(),
                name: name.to_string(),
                expected: shape.to_vec(),
                got: t.dims().to_vec(),
            });
        }
        let values = t.flatten_all()?.to_vec1::<f32>()?;
        let count = values.iter().filter(|x| !x.is_finite()).count();
        if count > 0 {
            return Err(ModelError::NonFiniteWeights {
                path: self.path.clone(),
                name: name.to_string(),
                count,
            });
        }
        self.taken.insert(name.to_string());
        Ok(t.to_device(device)?)
    }

    /// Marks tensor `name` as known but unused (for example a pooler the architecture
    /// does not run), so that [`Weights::finish`] does not refuse it. Absent is fine.
    pub fn skip(&mut self, name: &str) {
        if self.tensors.remove(name).is_some() {
            self.taken.insert(name.to_string());
        }
    }

    /// Refuses tensors nobody took: the file does not match `model.toml`.
    pub fn finish(self) -> Result<(), ModelError> {
        let mut names: Vec<String> = self
            .tensors
            .into_keys()
            .filter(|n| !self.taken.contains(n))
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        names.sort_by(|a, b| crate::compare_versions(a, b));
        Err(ModelError::UnexpectedTensors {
            found: found(&self.all),
            path: self.path,
            names,
        })
    }
}
