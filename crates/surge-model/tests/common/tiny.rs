//! The tiny MLP folder the loading tests write: a 2 → 3 → 1 network, its `model.toml`
//! with every optional field left to its default, and weights whose outputs are easy to
//! compute by hand.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

/// The folder's name.
pub const NAME: &str = "tiny";

/// The `model.toml`: 2 features, standardised, one hidden layer of 3 units, one output;
/// no optional field.
pub const TOML: &str = r#"name = "tiny"
version = "1.0.0"
architecture = "mlp"

[input]
kind = "tabular"
features = ["a", "b"]

[output]
names = ["p"]

[preprocessing]
mean = [1.0, 2.0]
std = [2.0, 4.0]

[mlp]
hidden = [3]
"#;

/// A CPU tensor of `values` in `shape`.
pub fn tensor(values: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(values, shape, &Device::Cpu).unwrap()
}

/// The weights of the 2 → 3 → 1 network, its two linear layers named `<first>` and
/// `<second>` (Surge's own names are `layers.0` and `layers.1`).
pub fn tensors(first: &str, second: &str) -> HashMap<String, Tensor> {
    HashMap::from([
        (
            format!("{first}.weight"),
            tensor(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], &[3, 2]),
        ),
        (format!("{first}.bias"), tensor(&[0.0, 0.0, -1.0], &[3])),
        (
            format!("{second}.weight"),
            tensor(&[1.0, -1.0, 2.0], &[1, 3]),
        ),
        (format!("{second}.bias"), tensor(&[0.5], &[1])),
    ])
}

/// Writes the model folder `dir`: `toml` as its `model.toml`, `tensors` in
/// `model.safetensors`. Returns `dir`.
pub fn write_folder(dir: &Path, toml: &str, tensors: &HashMap<String, Tensor>) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("model.toml"), toml).unwrap();
    candle_core::safetensors::save(tensors, dir.join("model.safetensors")).unwrap();
    dir.to_path_buf()
}
