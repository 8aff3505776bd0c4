//! Loading model folders: a valid folder loads and scores, and every way a folder can be
//! wrong is reported as its own `ModelError` variant whose message names the file and
//! the field or tensor at fault.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::tiny::{tensor, tensors, write_folder, NAME, TOML};
use common::{assert_mentions, score_rows};
use surge_model::{load_model, Batch, InputSpec, Model, ModelError};
use surge_protocol::Inputs;
use tempfile::TempDir;

/// A valid `model.toml`: the tiny one (2 features, standardised, one hidden layer of 3
/// units, one output) with its optional fields spelled out: a description, the weights
/// file, ReLU hidden units and a sigmoid output. Line numbers matter to
/// `toml_that_does_not_parse_names_the_line_or_the_field`: `version` stays on line 2.
fn valid_toml() -> String {
    let top = "architecture = \"mlp\"\n";
    assert!(TOML.contains(top) && TOML.ends_with("hidden = [3]\n"));
    let toml = TOML.replace(
        top,
        &format!("{top}description = \"a tiny test model\"\nweights = \"model.safetensors\"\n"),
    );
    format!("{toml}activation = \"relu\"\noutput_activation = \"sigmoid\"\n")
}

/// Weights matching `valid_toml()`, with easy hand-computable outputs.
fn valid_tensors() -> HashMap<String, Tensor> {
    tensors("layers.0", "layers.1")
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
        self.write(NAME, &valid_toml(), tensors)
    }

    fn load(&self, name: &str) -> Result<Box<dyn Model>, ModelError> {
        load_model(&self.dir(), name, &Device::Cpu)
    }

    /// Loads `name`, which must fail, and returns the error.
    fn load_err(&self, name: &str) -> ModelError {
        self.load(name)
            .err()
            .unwrap_or_else(|| panic!("model {name:?} loaded but should have been refused"))
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
    let dir = models.write_toml(&valid_toml());
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
    let scores = score_rows(model.as_ref(), &values, 2).unwrap();
    assert_eq!(scores.width, 1);
    assert_eq!(scores.len(), 4);
    let expected = [sigmoid(2.5), sigmoid(0.5), sigmoid(0.5), sigmoid(2.5)];
    for (i, want) in expected.iter().enumerate() {
        let got = scores.row(i)[0];
        assert!((got - want).abs() < 1e-6, "row {i}: got {got}, want {want}");
    }

    // An empty batch scores to nothing; a batch of the wrong dimension is refused.
    let empty = score_rows(model.as_ref(), &[], 2).unwrap();
    assert!(empty.is_empty());
    let err = score_rows(model.as_ref(), &values, 4).unwrap_err();
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
    models.write_toml(&valid_toml());
    std::fs::create_dir(models.dir().join("not-a-model")).unwrap();
    assert_eq!(surge_model::discover(&models.dir()).unwrap(), vec!["tiny"]);
}

// ---------------------------------------------------------------------------------------
// Tensors.
// ---------------------------------------------------------------------------------------

/// Writes the tiny folder with its valid tensors changed by `edit` and loads it, which
/// must fail: the error, whose message must name `model.safetensors`.
fn refused_tensors(edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> ModelError {
    let mut tensors = valid_tensors();
    edit(&mut tensors);
    let models = Models::new();
    models.write_tensors(&tensors);
    let err = models.load_err(NAME);
    assert_mentions(&err.to_string(), &["tiny/model.safetensors"]);
    err
}

#[test]
fn missing_tensor() {
    let err = refused_tensors(|t| assert!(t.remove("layers.1.bias").is_some()));
    assert!(
        matches!(&err, ModelError::MissingTensor { name, expected, .. }
            if name == "layers.1.bias" && expected == &[1]),
        "{err:?}"
    );
    assert_mentions(&err.to_string(), &["layers.1.bias", "missing"]);
}

#[test]
fn misshaped_tensor() {
    // Transposed: [in, out] instead of [out, in].
    let transposed = tensor(&[1.0, 0.0, 1.0, 0.0, 1.0, 1.0], &[2, 3]);
    let err =
        refused_tensors(|t| assert!(t.insert("layers.0.weight".into(), transposed).is_some()));
    assert!(
        matches!(&err, ModelError::TensorShape { name, expected, got, .. }
            if name == "layers.0.weight" && expected == &[3, 2] && got == &[2, 3]),
        "{err:?}"
    );
    assert_mentions(&err.to_string(), &["layers.0.weight", "[2, 3]", "[3, 2]"]);
}

#[test]
fn wrong_dtype_f64_and_f16() {
    for (dtype, label) in [(DType::F64, "F64"), (DType::F16, "F16")] {
        let err = refused_tensors(|t| {
            let bias = t["layers.0.bias"].to_dtype(dtype).unwrap();
            t.insert("layers.0.bias".into(), bias);
        });
        assert!(
            matches!(&err, ModelError::TensorDType { name, expected, got, .. }
                if name == "layers.0.bias" && expected == "F32" && got == label),
            "{label}: {err:?}"
        );
        assert_mentions(&err.to_string(), &["layers.0.bias", label, "F32"]);
    }
}

#[test]
fn non_finite_weights() {
    let weight = tensor(&[f32::NAN, 1.0, f32::INFINITY], &[1, 3]);
    let err = refused_tensors(|t| assert!(t.insert("layers.1.weight".into(), weight).is_some()));
    assert!(
        matches!(&err, ModelError::NonFiniteWeights { name, count, .. }
            if name == "layers.1.weight" && *count == 2),
        "{err:?}"
    );
    assert_mentions(&err.to_string(), &["layers.1.weight", "2 NaN or infinite"]);
}

#[test]
fn unexpected_extra_tensor() {
    let extra = tensor(&[1.0], &[1, 1]);
    let err = refused_tensors(|t| assert!(t.insert("layers.2.weight".into(), extra).is_none()));
    assert!(
        matches!(&err, ModelError::UnexpectedTensors { names, .. }
            if names == &["layers.2.weight"]),
        "{err:?}"
    );
    assert_mentions(&err.to_string(), &["layers.2.weight"]);
}

/// Writes the valid tiny folder, lets `edit` change its weights file (given that file
/// and a folder outside the models directory) and loads it, which must fail: the
/// error, whose message must name `model.safetensors`.
fn refused_weights_file(edit: impl FnOnce(&Path, &Path)) -> ModelError {
    let models = Models::new();
    let weights = models.write_toml(&valid_toml()).join("model.safetensors");
    edit(&weights, models.tmp.path());
    let err = models.load_err(NAME);
    assert_mentions(&err.to_string(), &["tiny/model.safetensors"]);
    err
}

#[test]
fn garbage_or_truncated_safetensors() {
    for case in ["garbage", "truncated", "empty"] {
        let err = refused_weights_file(|weights, _| {
            let good = std::fs::read(weights).unwrap();
            let bytes = match case {
                "garbage" => b"this is not a safetensors file".to_vec(),
                "truncated" => good[..good.len() - 7].to_vec(),
                _ => Vec::new(),
            };
            std::fs::write(weights, bytes).unwrap();
        });
        assert!(
            matches!(&err, ModelError::BadWeights { .. }),
            "{case}: {err:?}"
        );
        assert_mentions(&err.to_string(), &["not a valid safetensors file"]);
    }
}

#[test]
fn missing_weights_file() {
    let err = refused_weights_file(|weights, _| std::fs::remove_file(weights).unwrap());
    assert!(matches!(&err, ModelError::Io { .. }), "{err:?}");
}

#[test]
fn symlinked_weights_outside_model_folder() {
    let err = refused_weights_file(|weights, elsewhere| {
        let outside = elsewhere.join("stolen.safetensors");
        std::fs::rename(weights, &outside).unwrap();
        std::os::unix::fs::symlink(&outside, weights).unwrap();
    });
    assert!(
        matches!(&err, ModelError::OutsideModelsDir { .. }),
        "{err:?}"
    );
    assert_mentions(&err.to_string(), &["resolves outside"]);
}

// ---------------------------------------------------------------------------------------
// model.toml.
// ---------------------------------------------------------------------------------------

/// `valid_toml()` with `from`, which it must hold, replaced by `to`.
fn valid_toml_with(from: &str, to: &str) -> String {
    let toml = valid_toml();
    assert!(toml.contains(from), "the valid model.toml lacks {from:?}");
    toml.replace(from, to)
}

/// Writes the tiny folder with `toml` as its `model.toml` and loads it, which must fail:
/// the error, whose message must name `model.toml`.
fn refused_toml(toml: &str) -> ModelError {
    let models = Models::new();
    models.write_toml(toml);
    let err = models.load_err(NAME);
    assert_mentions(&err.to_string(), &["tiny/model.toml"]);
    err
}

#[test]
fn toml_that_does_not_parse_names_the_line_or_the_field() {
    // (what is wrong, the text replaced, its replacement, what the message must name)
    for (case, from, to, mention) in [
        // An unterminated string: the line is named.
        (
            "syntax",
            r#"version = "1.0.0""#,
            r#"version = "1.0.0"#,
            "line 2",
        ),
        (
            "missing field",
            "architecture = \"mlp\"\n",
            "",
            "architecture",
        ),
        // Unknown fields or values in a known section.
        (
            "[mlp] field",
            "hidden = [3]",
            "hidden = [3]\ndropout = 0.1",
            "dropout",
        ),
        (
            "[mlp] value",
            r#"activation = "relu""#,
            r#"activation = "swish""#,
            "swish",
        ),
        (
            "[output] field",
            r#"names = ["p"]"#,
            "names = [\"p\"]\nlabels = [\"x\"]",
            "labels",
        ),
        (
            "[preprocessing] field",
            "std = [2.0, 4.0]",
            "std = [2.0, 4.0]\nscale = 1.0",
            "scale",
        ),
        (
            "[input] field",
            r#"kind = "tabular""#,
            "kind = \"tabular\"\nmax_length = 5",
            "max_length",
        ),
        (
            "[input] kind",
            r#"kind = "tabular""#,
            r#"kind = "image""#,
            "image",
        ),
    ] {
        let err = refused_toml(&valid_toml_with(from, to));
        assert!(
            matches!(&err, ModelError::BadToml { .. }),
            "{case}: {err:?}"
        );
        assert_mentions(&err.to_string(), &[mention]);
    }
}

#[test]
fn unknown_architecture_lists_the_known_ones() {
    let err = refused_toml(&valid_toml_with(
        r#"architecture = "mlp""#,
        r#"architecture = "transformer""#,
    ));
    assert!(
        matches!(&err, ModelError::UnknownArchitecture { name, known, .. }
            if name == "transformer" && known.split(", ").any(|k| k == "mlp")),
        "{err:?}"
    );
    assert_mentions(&err.to_string(), &["transformer", "mlp"]);
}

#[test]
fn invalid_values_name_their_field() {
    // (the field at fault, the text replaced, its replacement, what else the message must
    // name)
    for (field, from, to, mentions) in [
        (
            "preprocessing.mean",
            "mean = [1.0, 2.0]",
            "mean = [1.0, 2.0, 3.0]",
            &["3 values"][..],
        ),
        (
            "preprocessing.std",
            "std = [2.0, 4.0]",
            "std = [2.0, 0.0]",
            &["positive"],
        ),
        (
            "preprocessing.std",
            "std = [2.0, 4.0]",
            "std = [-1.0, 4.0]",
            &["positive"],
        ),
        (
            "preprocessing.mean",
            "mean = [1.0, 2.0]",
            "mean = [1.0, nan]",
            &["finite"],
        ),
        // The declared name must match the folder's.
        (
            "name",
            r#"name = "tiny""#,
            r#"name = "other""#,
            &["field `name`", "\"other\"", "\"tiny\""],
        ),
        (
            "version",
            r#"version = "1.0.0""#,
            r#"version = "../1""#,
            &["field `version`"],
        ),
        // The weights must stay in the folder.
        (
            "weights",
            r#""model.safetensors""#,
            r#""../x.safetensors""#,
            &["field `weights`", "../x.safetensors"],
        ),
        (
            "weights",
            r#""model.safetensors""#,
            r#""sub/x.safetensors""#,
            &["field `weights`", "sub/x.safetensors"],
        ),
        (
            "weights",
            r#""model.safetensors""#,
            r#"".hidden.safetensors""#,
            &["field `weights`", ".hidden.safetensors"],
        ),
        // An unknown section, an unknown top-level key.
        (
            "extra",
            "sigmoid\"\n",
            "sigmoid\"\n\n[extra]\nfoo = 1\n",
            &["field `extra`"],
        ),
        (
            "colour",
            "name = \"tiny\"\n",
            "colour = \"red\"\nname = \"tiny\"\n",
            &["field `colour`"],
        ),
        // An MLP needs tabular inputs, outputs and hidden layers of some width.
        ("output.names", r#"names = ["p"]"#, "names = []", &[]),
        (
            "input.features",
            r#"features = ["a", "b"]"#,
            "features = []",
            &[],
        ),
        ("mlp.hidden", "hidden = [3]", "hidden = [3, 0]", &[]),
        (
            "input.kind",
            "kind = \"tabular\"\nfeatures = [\"a\", \"b\"]",
            "kind = \"text\"",
            &[],
        ),
    ] {
        let err = refused_toml(&valid_toml_with(from, to));
        assert!(
            matches!(&err, ModelError::InvalidSpec { field: f, .. } if f == field),
            "{field}: {err:?}"
        );
        assert_mentions(&err.to_string(), &[field]);
        assert_mentions(&err.to_string(), mentions);
    }
}

// ---------------------------------------------------------------------------------------
// Names and paths.
// ---------------------------------------------------------------------------------------

#[test]
fn model_name_with_dot_dot_slash() {
    let models = Models::new();
    models.write_toml(&valid_toml());
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
        &valid_toml().replace(r#"name = "tiny""#, r#"name = "evil""#),
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
fn model_that_does_not_exist() {
    let models = Models::new();
    models.write_toml(&valid_toml());
    let err = models.load_err("absent");
    assert!(
        matches!(&err, ModelError::NotFound { name, .. } if name == "absent"),
        "{err:?}"
    );
    assert_mentions(&err.to_string(), &["\"absent\"", "absent/model.toml"]);
}
