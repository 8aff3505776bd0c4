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
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
            taken: BTreeSet::new(),
        })
    }

    /// The name and shape of every tensor in the file, sorted by name.
    pub fn shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut out: Vec<(String, Vec<usize>)> = self
            .tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.dims().to_vec()))
            .collect();
        out.sort();
        out
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
        names.sort();
        Err(ModelError::UnexpectedTensors {
            path: self.path,
            names,
        })
    }
}
