//! Tensor names as exporters write them: Surge's `layers.{i}`, a PyTorch
//! `nn.Sequential` state dict (`0.weight`, `2.weight`, ...), a Sequential under an
//! attribute (`net.0.weight`), and `[mlp] tensor_prefix` for files with several groups.
//! Every naming error lists the tensors found, with their shapes.

mod common;

use std::collections::HashMap;

use candle_core::Tensor;
use common::score_rows;
use common::tiny::{self, tensor, tensors, NAME, TOML};
use surge_model::{load_model, Device, Model, ModelError};

fn load(toml: &str, tensors: &HashMap<String, Tensor>) -> Result<Box<dyn Model>, ModelError> {
    let tmp = tempfile::tempdir().unwrap();
    tiny::write_folder(&tmp.path().join(NAME), toml, tensors);
    load_model(tmp.path(), NAME, &Device::Cpu)
}

fn load_err(toml: &str, tensors: &HashMap<String, Tensor>) -> String {
    load(toml, tensors)
        .err()
        .expect("the folder loaded but should have been refused")
        .to_string()
}

fn scores(m: &dyn Model) -> Vec<f32> {
    let rows = [3.0, 6.0, 1.0, 2.0, -1.0, 2.0, 5.0, -2.0, 0.3, 0.7];
    score_rows(m, &rows, 2).unwrap().values
}

#[test]
fn sequential_state_dicts_load_and_score_like_layers_n() {
    let reference = scores(
        load(TOML, &tensors("layers.0", "layers.1"))
            .unwrap()
            .as_ref(),
    );
    for (first, second) in [
        ("0", "2"),
        ("net.0", "net.2"),
        ("model.layers.3", "model.layers.5"),
        ("layers.0", "layers.2"),
        // Numeric order, not text order: 9 comes before 10.
        ("9", "10"),
    ] {
        let m =
            load(TOML, &tensors(first, second)).unwrap_or_else(|e| panic!("{first}/{second}: {e}"));
        assert_eq!(scores(m.as_ref()), reference, "{first}/{second}");
    }
}

#[test]
fn a_tensor_prefix_picks_one_of_several_groups() {
    let mut both = tensors("student.0", "student.2");
    both.extend(tensors("teacher.0", "teacher.2"));
    let err = load_err(TOML, &both);
    assert!(
        err.contains("several prefixes") && err.contains("tensor_prefix"),
        "{err}"
    );
    assert!(err.contains("found: student.0.bias [3]"), "{err}");
    // With the prefix, the other group is left over and named.
    let toml = format!("{TOML}tensor_prefix = \"student\"\n");
    let err = load_err(&toml, &both);
    assert!(
        err.contains("unexpected tensors") && err.contains("teacher.0.weight"),
        "{err}"
    );
    let toml = format!("{TOML}tensor_prefix = \"teacher\"\n");
    let err = load_err(&toml, &tensors("0", "2"));
    assert!(err.contains("`teacher.<n>.weight`"), "{err}");
    assert!(load(&toml, &tensors("teacher.0", "teacher.2")).is_ok());
}

#[test]
fn every_naming_error_lists_the_tensors_found_with_shapes() {
    // Names that are no linear layers at all.
    let odd = HashMap::from([
        ("fc1.w".to_string(), tensor(&[0.0; 6], &[3, 2])),
        ("fc1.b".to_string(), tensor(&[0.0; 3], &[3])),
    ]);
    let err = load_err(TOML, &odd);
    assert!(
        err.contains("no tensor is named like a linear layer")
            && err.contains("found: fc1.b [3], fc1.w [3, 2]"),
        "{err}"
    );
    // A missing bias.
    let mut t = tensors("0", "2");
    t.remove("2.bias");
    let err = load_err(TOML, &t);
    assert!(
        err.contains("tensor `2.bias` is missing")
            && err.contains("found: 0.bias [3], 0.weight [3, 2], 2.weight [1, 3]"),
        "{err}"
    );
    // Fewer layers than model.toml describes.
    let err = load_err(
        &TOML.replace("hidden = [3]", "hidden = [3, 3]"),
        &tensors("0", "2"),
    );
    assert!(
        err.contains("describes 3 linear layers") && err.contains("hold 2 (0.weight, 2.weight)"),
        "{err}"
    );
    assert!(err.contains("found: 0.bias [3]"), "{err}");
    // Tensors left over.
    let mut t = tensors("0", "2");
    t.insert("3.running_mean".into(), tensor(&[0.0], &[1]));
    let err = load_err(TOML, &t);
    assert!(
        err.contains("unexpected tensors [\"3.running_mean\"]")
            && err.contains("found: 0.bias [3], 0.weight [3, 2], 2.bias [1], 2.weight [1, 3], 3.running_mean [1]"),
        "{err}"
    );
}
