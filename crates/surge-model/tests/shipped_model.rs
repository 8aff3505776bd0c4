//! The shipped model, `models/breast-cancer`, loads from the workspace's models
//! directory and scores its own `sample.csv` consistently: a row gives the same output
//! alone as inside a batch, N rows give N probabilities.

mod common;

use std::path::Path;

use candle_core::Device;
use common::score_rows;
use surge_model::{load_model, InputSpec, Model};
use surge_protocol::Inputs;

const MODELS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models");
const NAME: &str = "breast-cancer";

fn load() -> Box<dyn Model> {
    load_model(Path::new(MODELS_DIR), NAME, &Device::Cpu).unwrap()
}

/// `sample.csv`: a header of feature names, then rows of numbers (no label column).
fn sample() -> (Vec<String>, Vec<Vec<f32>>) {
    let path = Path::new(MODELS_DIR).join(NAME).join("sample.csv");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> = lines
        .next()
        .unwrap()
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    let rows: Vec<Vec<f32>> = lines
        .enumerate()
        .map(|(i, line)| {
            line.split(',')
                .map(|cell| {
                    cell.trim()
                        .parse::<f32>()
                        .unwrap_or_else(|e| panic!("sample.csv row {i}: {cell:?}: {e}"))
                })
                .collect()
        })
        .collect();
    (header, rows)
}

#[test]
fn shipped_model_loads_with_the_expected_shape() {
    let model = load();
    let info = model.info();
    assert_eq!(info.name, NAME);
    assert_eq!(info.architecture, "mlp");
    assert_eq!(info.dimension(), Some(30));
    assert_eq!(info.output_names, vec!["malignant_probability".to_string()]);
    let (header, _) = sample();
    assert_eq!(
        info.input,
        InputSpec::Tabular { features: header },
        "sample.csv's header must list the model's features, in order"
    );
}

#[test]
fn sample_scores_the_same_in_a_batch_and_alone() {
    let model = load();
    let (_, rows) = sample();
    assert!(!rows.is_empty(), "sample.csv holds no rows");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.len(), 30, "sample.csv row {i} has {} values", row.len());
    }

    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let batch = score_rows(model.as_ref(), &flat, 30).unwrap();
    assert_eq!(batch.width, 1);
    assert_eq!(batch.len(), rows.len(), "N rows in must give N outputs");
    assert_eq!(batch.values.len(), rows.len());

    for (i, row) in rows.iter().enumerate() {
        let p = batch.row(i)[0];
        assert!(
            (0.0..=1.0).contains(&p),
            "row {i}: {p} is not a probability"
        );
        let alone = score_rows(model.as_ref(), row, 30).unwrap();
        assert_eq!(alone.len(), 1);
        let q = alone.row(0)[0];
        assert!(
            (p - q).abs() <= 1e-6,
            "row {i}: {p} in the batch but {q} alone"
        );
    }

    // The sample is the held-out split, both classes: the model should not give every
    // row the same answer.
    let malignant = batch.values.iter().filter(|&&p| p >= 0.5).count();
    assert!(
        malignant > 0 && malignant < rows.len(),
        "{malignant} of {} rows called malignant",
        rows.len()
    );
}

#[test]
fn check_inputs_refuses_wrong_dimension_and_nan() {
    let model = load();
    let info = model.info();
    let (_, rows) = sample();

    assert_eq!(info.check_inputs(&Inputs::rows(&rows[..3])), Ok(()));

    let mut short = rows[..2].to_vec();
    short[1].pop();
    let err = info.check_inputs(&Inputs::rows(&short)).unwrap_err();
    assert!(
        err.contains("row 1") && err.contains("29") && err.contains("30"),
        "{err}"
    );

    let mut long = rows[..1].to_vec();
    long[0].push(1.0);
    let err = info.check_inputs(&Inputs::rows(&long)).unwrap_err();
    assert!(err.contains("row 0") && err.contains("31"), "{err}");

    let mut nan = rows[..2].to_vec();
    nan[0][4] = f32::NAN;
    let err = info.check_inputs(&Inputs::rows(&nan)).unwrap_err();
    assert!(
        err.contains("row 0") && err.contains("mean_smoothness") && err.contains("NaN"),
        "{err}"
    );

    let mut inf = rows[..1].to_vec();
    inf[0][0] = f32::INFINITY;
    assert!(info.check_inputs(&Inputs::rows(&inf)).is_err());

    assert!(info.check_inputs(&Inputs::rows(&[])).is_err());
    assert!(info
        .check_inputs(&Inputs::Texts(vec!["a tumour".to_string()]))
        .is_err());
}
