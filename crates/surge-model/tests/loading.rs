//! Loading model folders: a valid folder loads and scores, and every way a folder can be
//! wrong is reported as its own `ModelError` variant whose message names the file and
//! the field or tensor at fault.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use surge_model::{load_model, Batch, InputSpec, Model, ModelError};
use surge_protocol::Inputs;
use tempfile::TempDir;

/// The folder name of the tiny test model.
const NAME: &str = "tiny";

/// A valid `model.toml`: 2 features, standardised, one hidden layer of 3 ReLU units, one
/// sigmoid output. Line numbers matter to `bad_toml_syntax_names_the_line`.
const VALID_TOML: &str = r#"name = "tiny"
version = "1.0.0"
architecture = "mlp"
description = "a tiny test model"
weights = "model.safetensors"

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
activation = "relu"
output_activation = "sigmoid"
"#;

fn tensor(values: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(values, shape, &Device::Cpu).unwrap()
}

/// Weights matching `VALID_TOML`, with easy hand-computable outputs.
fn valid_tensors() -> HashMap<String, Tensor> {
    HashMap::from([
        (
            "layers.0.weight".to_string(),
            tensor(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], &[3, 2]),
        ),
        ("layers.0.bias".to_string(), tensor(&[0.0, 0.0, -1.0], &[3])),
        (
            "layers.1.weight".to_string(),
            tensor(&[1.0, -1.0, 2.0], &[1, 3]),
        ),
        ("layers.1.bias".to_string(), tensor(&[0.5], &[1])),
    ])
}

/// A temporary models directory.
struct Models {
    tmp: TempDir,
}

impl Models {
    fn new() -> Self {
        let tmp = TempDir::new().unwrap();
        std::fs::create_dir(tmp.path().join("models")).unwrap();
        Self { tmp }
    }

    fn dir(&self) -> PathBuf {
        self.tmp.path().join("models")
    }

    /// Writes `models/<folder>/` with this `model.toml` and these tensors in
    /// `model.safetensors`.
    fn write(&self, folder: &str, toml: &str, tensors: &HashMap<String, Tensor>) -> PathBuf {
        write_folder(&self.dir().join(folder), toml, tensors)
    }

    /// Writes the valid tiny model, with `toml` instead of the valid `model.toml`.
    fn write_toml(&self, toml: &str) -> PathBuf {
        self.write(NAME, toml, &valid_tensors())
    }

    /// Writes the valid tiny model's `model.toml` with these tensors.
    fn write_tensors(&self, tensors: &HashMap<String, Tensor>) -> PathBuf {
        self.write(NAME, VALID_TOML, tensors)
    }

    fn load(&self, name: &str) -> Result<Box<dyn Model>, ModelError> {
        load_model(&self.dir(), name, &Device::Cpu)
    }

    /// Loads `name`, which must fail, and returns the error.
    fn load_err(&self, name: &str) -> ModelError {
        match self.load(name) {
            Ok(_) => panic!("model {name:?} loaded but should have been refused"),
            Err(e) => e,
        }
    }
}

fn write_folder(dir: &Path, toml: &str, tensors: &HashMap<String, Tensor>) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("model.toml"), toml).unwrap();
    candle_core::safetensors::save(tensors, dir.join("model.safetensors")).unwrap();
    dir.to_path_buf()
}

/// Asserts that `message` contains every one of `parts`.
fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(
            message.contains(part),
            "error message should mention {part:?}: {message}"
        );
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

// ---------------------------------------------------------------------------------------
// The valid folder.
// ---------------------------------------------------------------------------------------

#[test]
fn valid_tiny_folder_loads_and_scores() {
    let models = Models::new();
    let dir = models.write_toml(VALID_TOML);
    let model = models.load(NAME).unwrap();

    let info = model.info();
    assert_eq!(info.name, "tiny");
    assert_eq!(info.version, "1.0.0");
    assert_eq!(info.architecture, "mlp");
    assert_eq!(info.description, "a tiny test model");
    assert_eq!(
        info.input,
        InputSpec::Tabular {
            features: vec!["a".into(), "b".into()]
        }
    );
    assert_eq!(info.output_names, vec!["p".to_string()]);
    assert_eq!(info.dimension(), Some(2));
    assert_eq!(info.dir, dir.canonicalize().unwrap());

    // By hand: standardise with mean [1, 2] and std [2, 4], then
    //   [3, 6]  -> [1, 1]  -> relu([1, 1, 1])   -> 1 - 1 + 2 + 0.5 = 2.5
    //   [1, 2]  -> [0, 0]  -> relu([0, 0, -1])  -> 0.5
    //   [-1, 2] -> [-1, 0] -> relu([-1, 0, -2]) -> 0.5
    //   [5, -2] -> [2, -1] -> relu([2, -1, 0])  -> 2 + 0.5 = 2.5
    let values = [3.0, 6.0, 1.0, 2.0, -1.0, 2.0, 5.0, -2.0];
    let scores = model
        .score(&Batch::Rows {
            values: &values,
            dim: 2,
        })
        .unwrap();
    assert_eq!(scores.width, 1);
    assert_eq!(scores.len(), 4);
    let expected = [sigmoid(2.5), sigmoid(0.5), sigmoid(0.5), sigmoid(2.5)];
    for (i, want) in expected.iter().enumerate() {
        let got = scores.row(i)[0];
        assert!((got - want).abs() < 1e-6, "row {i}: got {got}, want {want}");
    }

    // An empty batch scores to nothing; a batch of the wrong dimension is refused.
    let empty = model
        .score(&Batch::Rows {
            values: &[],
            dim: 2,
        })
        .unwrap();
    assert!(empty.is_empty());
    let err = model
        .score(&Batch::Rows {
            values: &values,
            dim: 4,
        })
        .unwrap_err();
    assert!(matches!(err, ModelError::BadBatch(_)), "{err:?}");
    let texts = vec!["hello".to_string()];
    let err = model.score(&Batch::Texts(&texts)).unwrap_err();
    assert!(matches!(err, ModelError::BadBatch(_)), "{err:?}");

    // Inputs are checked before they reach a batch.
    assert_eq!(info.check_inputs(&Inputs::rows(&[vec![1.0, 2.0]])), Ok(()));
    assert!(info.check_inputs(&Inputs::rows(&[vec![1.0]])).is_err());
    assert!(info.check_inputs(&Inputs::Texts(texts)).is_err());
}

#[test]
fn discover_lists_model_folders() {
    let models = Models::new();
    models.write_toml(VALID_TOML);
    std::fs::create_dir(models.dir().join("not-a-model")).unwrap();
    assert_eq!(surge_model::discover(&models.dir()).unwrap(), vec!["tiny"]);
}

// ---------------------------------------------------------------------------------------
// Tensors.
// ---------------------------------------------------------------------------------------

#[test]
fn missing_tensor() {
    let models = Models::new();
    let mut tensors = valid_tensors();
    tensors.remove("layers.1.bias");
    models.write_tensors(&tensors);
    let err = models.load_err(NAME);
    assert!(
        matches!(&err, ModelError::MissingTensor { name, expected, .. }
            if name == "layers.1.bias" && expected == &[1]),
        "{err:?}"
    );
    assert_mentions(
        &err.to_string(),
        &["tiny/model.safetensors", "layers.1.bias", "missing"],
    );
}

#[test]
fn misshaped_tensor() {
    let models = Models::new();
    let mut tensors = valid_tensors();
    // Transposed: [in, out] instead of [out, in].
    tensors.insert(
        "layers.0.weight".into(),
        tensor(&[1.0, 0.0, 1.0, 0.0, 1.0, 1.0], &[2, 3]),
    );
    models.write_tensors(&tensors);
    let err = models.load_err(NAME);
    assert!(
        matches!(&err, ModelError::TensorShape { name, expected, got, .. }
            if name == "layers.0.weight" && expected == &[3, 2] && got == &[2, 3]),
        "{err:?}"
    );
    assert_mentions(
        &err.to_string(),
        &[
            "tiny/model.safetensors",
            "layers.0.weight",
            "[2, 3]",
            "[3, 2]",
        ],
    );
}

#[test]
fn wrong_dtype_f64_and_f16() {
    for (dtype, label) in [(DType::F64, "F64"), (DType::F16, "F16")] {
        let models = Models::new();
        let mut tensors = valid_tensors();
        let bias = tensors["layers.0.bias"].to_dtype(dtype).unwrap();
        tensors.insert("layers.0.bias".into(), bias);
        models.write_tensors(&tensors);
        let err = models.load_err(NAME);
        assert!(
            matches!(&err, ModelError::TensorDType { name, expected, got, .. }
                if name == "layers.0.bias" && expected == "F32" && got == label),
            "{label}: {err:?}"
        );
        assert_mentions(
            &err.to_string(),
            &["tiny/model.safetensors", "layers.0.bias", label, "F32"],
        );
    }
}

#[test]
fn non_finite_weights() {
    let models = Models::new();
    let mut tensors = valid_tensors();
    tensors.insert(
        "layers.1.weight".into(),
        tensor(&[f32::NAN, 1.0, f32::INFINITY], &[1, 3]),
    );
    models.write_tensors(&tensors);
    let err = models.load_err(NAME);
    assert!(
        matches!(&err, ModelError::NonFiniteWeights { name, count, .. }
            if name == "layers.1.weight" && *count == 2),
        "{err:?}"
    );
    assert_mentions(
        &err.to_string(),
        &[
            "tiny/model.safetensors",
            "layers.1.weight",
            "2 NaN or infinite",
        ],
    );
}

#[test]
fn unexpected_extra_tensor() {
    let models = Models::new();
    let mut tensors = valid_tensors();
    tensors.insert("layers.2.weight".into(), tensor(&[1.0], &[1, 1]));
    models.write_tensors(&tensors);
    let err = models.load_err(NAME);
    assert!(
        matches!(&err, ModelError::UnexpectedTensors { names, .. }
            if names == &["layers.2.weight"]),
        "{err:?}"
    );
    assert_mentions(
        &err.to_string(),
        &["tiny/model.safetensors", "layers.2.weight"],
    );
}

#[test]
fn garbage_or_truncated_safetensors() {
    let models = Models::new();
    let dir = models.write_toml(VALID_TOML);
    let weights = dir.join("model.safetensors");
    let good = std::fs::read(&weights).unwrap();
    let cases: [(&str, Vec<u8>); 3] = [
        ("garbage", b"this is not a safetensors file".to_vec()),
        ("truncated", good[..good.len() - 7].to_vec()),
        ("empty", Vec::new()),
    ];
    for (case, bytes) in cases {
        std::fs::write(&weights, bytes).unwrap();
        let err = models.load_err(NAME);
        assert!(
            matches!(&err, ModelError::BadWeights { .. }),
            "{case}: {err:?}"
        );
        assert_mentions(
            &err.to_string(),
            &["tiny/model.safetensors", "not a valid safetensors file"],
        );
    }
}

#[test]
fn missing_weights_file() {
    let models = Models::new();
    let dir = models.write_toml(VALID_TOML);
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let err = models.load_err(NAME);
    assert!(matches!(&err, ModelError::Io { .. }), "{err:?}");
    assert_mentions(&err.to_string(), &["tiny/model.safetensors"]);
}

// ---------------------------------------------------------------------------------------
// model.toml.
// ---------------------------------------------------------------------------------------

#[test]
fn bad_toml_syntax_names_the_line() {
    let models = Models::new();
    // Unterminated string on line 2.
    models.write_toml(&VALID_TOML.replace(r#"version = "1.0.0""#, r#"version = "1.0.0"#));
    let err = models.load_err(NAME);
    assert!(matches!(&err, ModelError::BadToml { .. }), "{err:?}");
    assert_mentions(&err.to_string(), &["tiny/model.toml", "line 2"]);
}

#[test]
fn missing_required_field() {
    let models = Models::new();
    models.write_toml(&VALID_TOML.replace("architecture = \"mlp\"\n", ""));
    let err = models.load_err(NAME);
    assert!(matches!(&err, ModelError::BadToml { .. }), "{err:?}");
    assert_mentions(&err.to_string(), &["tiny/model.toml", "architecture"]);
}

#[test]
fn unknown_field_or_value_in_a_known_section() {
    let models = Models::new();
    // (what is wrong, the broken model.toml, what the message must name)
    for (case, toml, mention) in [
        (
            "[mlp] field",
            VALID_TOML.replace("hidden = [3]", "hidden = [3]\ndropout = 0.1"),
            "dropout",
        ),
        (
            "[mlp] value",
            VALID_TOML.replace(r#"activation = "relu""#, r#"activation = "swish""#),
            "swish",
        ),
        (
            "[output] field",
            VALID_TOML.replace(r#"names = ["p"]"#, "names = [\"p\"]\nlabels = [\"x\"]"),
            "labels",
        ),
        (
            "[preprocessing] field",
            VALID_TOML.replace("std = [2.0, 4.0]", "std = [2.0, 4.0]\nscale = 1.0"),
            "scale",
        ),
        (
            "[input] field",
            VALID_TOML.replace(r#"kind = "tabular""#, "kind = \"tabular\"\nmax_length = 5"),
            "max_length",
        ),
        (
            "[input] kind",
            VALID_TOML.replace(r#"kind = "tabular""#, r#"kind = "image""#),
            "image",
        ),
    ] {
        models.write_toml(&toml);
        let err = models.load_err(NAME);
        assert!(
            matches!(&err, ModelError::BadToml { .. }),
            "{case}: {err:?}"
        );
        assert_mentions(&err.to_string(), &["tiny/model.toml", mention]);
    }
}

#[test]
fn unknown_architecture_lists_the_known_ones() {
    let models = Models::new();
    models.write_toml(
        &VALID_TOML.replace(r#"architecture = "mlp""#, r#"architecture = "transformer""#),
    );
    let err = models.load_err(NAME);
    assert!(
        matches!(&err, ModelError::UnknownArchitecture { name, known, .. }
            if name == "transformer" && known.split(", ").any(|k| k == "mlp")),
        "{err:?}"
    );
    assert_mentions(&err.to_string(), &["tiny/model.toml", "transformer", "mlp"]);
}

#[test]
fn preprocessing_length_mismatch() {
    let models = Models::new();
    models.write_toml(&VALID_TOML.replace("mean = [1.0, 2.0]", "mean = [1.0, 2.0, 3.0]"));
    let err = models.load_err(NAME);
    assert!(
        matches!(&err, ModelError::InvalidSpec { field, .. } if field == "preprocessing.mean"),
        "{err:?}"
    );
    assert_mentions(
        &err.to_string(),
        &["tiny/model.toml", "preprocessing.mean", "3 values"],
    );
}

#[test]
fn non_positive_std() {
    for std in ["[2.0, 0.0]", "[-1.0, 4.0]"] {
        let models = Models::new();
        models.write_toml(&VALID_TOML.replace("std = [2.0, 4.0]", &format!("std = {std}")));
        let err = models.load_err(NAME);
        assert!(
            matches!(&err, ModelError::InvalidSpec { field, .. } if field == "preprocessing.std"),
            "{std}: {err:?}"
        );
        assert_mentions(
            &err.to_string(),
            &["tiny/model.toml", "preprocessing.std", "positive"],
        );
    }
}

#[test]
fn non_finite_preprocessing() {
    let models = Models::new();
    models.write_toml(&VALID_TOML.replace("mean = [1.0, 2.0]", "mean = [1.0, nan]"));
    let err = models.load_err(NAME);
    assert!(
        matches!(&err, ModelError::InvalidSpec { field, .. } if field == "preprocessing.mean"),
        "{err:?}"
    );
    assert_mentions(&err.to_string(), &["tiny/model.toml", "finite"]);
}

#[test]
fn declared_name_must_match_folder() {
    let models = Models::new();
    models.write_toml(&VALID_TOML.replace(r#"name = "tiny""#, r#"name = "other""#));
    let err = models.load_err(NAME);
    assert!(
        matches!(&err, ModelError::InvalidSpec { field, .. } if field == "name"),
        "{err:?}"
    );
    assert_mentions(
        &err.to_string(),
        &["tiny/model.toml", "field `name`", "\"other\"", "\"tiny\""],
    );
}

#[test]
fn bad_version_label() {
    let models = Models::new();
    models.write_toml(&VALID_TOML.replace(r#"version = "1.0.0""#, r#"version = "../1""#));
    let err = models.load_err(NAME);
    assert!(
        matches!(&err, ModelError::InvalidSpec { field, .. } if field == "version"),
        "{err:?}"
    );
    assert_mentions(&err.to_string(), &["tiny/model.toml", "field `version`"]);
}

#[test]
fn weights_path_must_stay_in_the_folder() {
    for weights in [
        "../x.safetensors",
        "sub/x.safetensors",
        ".hidden.safetensors",
    ] {
        let models = Models::new();
        models.write_toml(&VALID_TOML.replace(
            r#"weights = "model.safetensors""#,
            &format!("weights = {weights:?}"),
        ));
        let err = models.load_err(NAME);
        assert!(
            matches!(&err, ModelError::InvalidSpec { field, .. } if field == "weights"),
            "{weights}: {err:?}"
        );
        assert_mentions(
            &err.to_string(),
            &["tiny/model.toml", "field `weights`", weights],
        );
    }
}

#[test]
fn unknown_extra_section() {
    let models = Models::new();
    models.write_toml(&format!("{VALID_TOML}\n[extra]\nfoo = 1\n"));
    let err = models.load_err(NAME);
    assert!(
        matches!(&err, ModelError::InvalidSpec { field, .. } if field == "extra"),
        "{err:?}"
    );
    assert_mentions(&err.to_string(), &["tiny/model.toml", "field `extra`"]);
}

#[test]
fn unknown_top_level_key() {
    let models = Models::new();
    models.write_toml(&format!("colour = \"red\"\n{VALID_TOML}"));
    let err = models.load_err(NAME);
    assert!(
        matches!(&err, ModelError::InvalidSpec { field, .. } if field == "colour"),
        "{err:?}"
    );
    assert_mentions(&err.to_string(), &["tiny/model.toml", "field `colour`"]);
}

#[test]
fn mlp_needs_tabular_inputs_outputs_and_nonzero_widths() {
    for (field, toml) in [
        (
            "output.names",
            VALID_TOML.replace(r#"names = ["p"]"#, "names = []"),
        ),
        (
            "input.features",
            VALID_TOML.replace(r#"features = ["a", "b"]"#, "features = []"),
        ),
        (
            "mlp.hidden",
            VALID_TOML.replace("hidden = [3]", "hidden = [3, 0]"),
        ),
        (
            "input.kind",
            VALID_TOML.replace(
                "kind = \"tabular\"\nfeatures = [\"a\", \"b\"]",
                "kind = \"text\"",
            ),
        ),
    ] {
        let models = Models::new();
        models.write_toml(&toml);
        let err = models.load_err(NAME);
        assert!(
            matches!(&err, ModelError::InvalidSpec { field: f, .. } if f == field),
            "{field}: {err:?}"
        );
        assert_mentions(&err.to_string(), &["tiny/model.toml", field]);
    }
}

// ---------------------------------------------------------------------------------------
// Names and paths.
// ---------------------------------------------------------------------------------------

#[test]
fn model_name_with_dot_dot_slash() {
    let models = Models::new();
    models.write_toml(VALID_TOML);
    let err = models.load_err("../tiny");
    assert!(matches!(&err, ModelError::BadName(_)), "{err:?}");
    assert_mentions(&err.to_string(), &["model name", "../tiny"]);
}

#[test]
fn symlinked_folder_outside_models_dir() {
    let models = Models::new();
    let outside = models.tmp.path().join("elsewhere").join("evil");
    write_folder(
        &outside,
        &VALID_TOML.replace(r#"name = "tiny""#, r#"name = "evil""#),
        &valid_tensors(),
    );
    std::os::unix::fs::symlink(&outside, models.dir().join("evil")).unwrap();
    let err = models.load_err("evil");
    assert!(
        matches!(&err, ModelError::OutsideModelsDir { .. }),
        "{err:?}"
    );
    assert_mentions(
        &err.to_string(),
        &["models/evil", "resolves outside the models directory"],
    );
}

#[test]
fn symlinked_weights_outside_model_folder() {
    let models = Models::new();
    let dir = models.write_toml(VALID_TOML);
    let outside = models.tmp.path().join("stolen.safetensors");
    std::fs::rename(dir.join("model.safetensors"), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("model.safetensors")).unwrap();
    let err = models.load_err(NAME);
    assert!(
        matches!(&err, ModelError::OutsideModelsDir { .. }),
        "{err:?}"
    );
    assert_mentions(
        &err.to_string(),
        &["tiny/model.safetensors", "resolves outside"],
    );
}

#[test]
fn model_that_does_not_exist() {
    let models = Models::new();
    models.write_toml(VALID_TOML);
    let err = models.load_err("absent");
    assert!(
        matches!(&err, ModelError::NotFound { name, .. } if name == "absent"),
        "{err:?}"
    );
    assert_mentions(&err.to_string(), &["\"absent\"", "absent/model.toml"]);
}
