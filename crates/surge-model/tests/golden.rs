//! Golden rows: a folder that does not reproduce the outputs its training code gave is
//! refused at load, with the row, the output and the difference.

mod common;

use std::path::{Path, PathBuf};

use common::tiny::{self, tensors, NAME, TOML};
use common::{assert_mentions, score_rows};
use surge_model::{load_model, spec, Device, Model, ModelError, Proof};

const GOLDEN: &str = r#"
[golden]
inputs = "golden/inputs.csv"
expected = "golden/expected.csv"
"#;

/// Golden inputs: columns in another order than model.toml, plus an id column.
const ROWS: [[f32; 2]; 4] = [[3.0, 6.0], [1.0, 2.0], [-1.0, 2.0], [5.0, -2.0]];

/// A models directory whose `tiny` folder has golden rows written by the correct model
/// (the "training code"), then `toml` as its model.toml.
struct Folder {
    tmp: tempfile::TempDir,
}

impl Folder {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tiny::write_folder(
            &tmp.path().join(NAME),
            TOML,
            &tensors("layers.0", "layers.1"),
        );
        std::fs::create_dir(dir.join("golden")).unwrap();
        let truth = load_model(tmp.path(), NAME, &Device::Cpu).unwrap();
        let flat: Vec<f32> = ROWS.iter().flatten().copied().collect();
        let want = score_rows(truth.as_ref(), &flat, 2).unwrap();
        let mut inputs = "id,b,a\n".to_string();
        let mut expected = "p\n".to_string();
        for (i, [a, b]) in ROWS.iter().enumerate() {
            inputs.push_str(&format!("{i},{b},{a}\n"));
            expected.push_str(&format!("{}\n", want.row(i)[0]));
        }
        std::fs::write(dir.join("golden/inputs.csv"), inputs).unwrap();
        std::fs::write(dir.join("golden/expected.csv"), expected).unwrap();
        Self { tmp }
    }

    fn dir(&self) -> PathBuf {
        self.tmp.path().join(NAME)
    }

    fn load(&self, toml: &str) -> Result<Box<dyn Model>, ModelError> {
        std::fs::write(self.dir().join("model.toml"), toml).unwrap();
        load_model(self.tmp.path(), NAME, &Device::Cpu)
    }

    fn load_err(&self, toml: &str) -> ModelError {
        self.load(toml)
            .err()
            .expect("the folder loaded but should have been refused")
    }
}

#[test]
fn golden_rows_that_match_load_whatever_the_column_order() {
    let f = Folder::new();
    assert!(f.load(&format!("{TOML}{GOLDEN}")).is_ok());
}

#[test]
fn features_in_the_wrong_order_are_refused_with_row_output_and_diff() {
    let f = Folder::new();
    let swapped = TOML.replace(r#"features = ["a", "b"]"#, r#"features = ["b", "a"]"#);
    let err = f.load_err(&format!("{swapped}{GOLDEN}"));
    assert!(
        matches!(&err, ModelError::GoldenMismatch { row: 1, output, differing, rows: 4, .. }
            if output == "p" && *differing >= 1),
        "{err:?}"
    );
    assert_eq!(err.reason(), "golden_mismatch");
    assert_mentions(
        &err.to_string(),
        &[
            "golden/expected.csv",
            "golden row 1 (line 2 of golden/inputs.csv), output p",
            "|diff|",
            "> tolerance 0.0001",
            "check [preprocessing]",
            "order of [input] features",
        ],
    );
}

#[test]
fn a_missing_preprocessing_section_is_caught_by_the_golden_rows() {
    let f = Folder::new();
    let raw = TOML.replace("[preprocessing]\nmean = [1.0, 2.0]\nstd = [2.0, 4.0]\n", "");
    assert!(!raw.contains("preprocessing"));
    // Without golden rows the folder loads, and scores wrong in silence...
    assert!(f.load(&raw).is_ok());
    // ...with them it is refused.
    let err = f.load_err(&format!("{raw}{GOLDEN}"));
    assert!(matches!(&err, ModelError::GoldenMismatch { .. }), "{err:?}");
    assert_mentions(
        &err.to_string(),
        &["got", "expected", "check [preprocessing]"],
    );
}

#[test]
fn the_tolerance_is_absolute_and_configurable() {
    let f = Folder::new();
    let path = f.dir().join("golden/expected.csv");
    let text = std::fs::read_to_string(&path).unwrap();
    // Shift every expected value by 5e-5: inside the default 1e-4, outside 1e-5.
    let shifted: String = text
        .lines()
        .map(|l| match l.parse::<f32>() {
            Ok(v) => format!("{}\n", v + 5e-5),
            Err(_) => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&path, shifted).unwrap();
    assert!(f.load(&format!("{TOML}{GOLDEN}")).is_ok());
    let err = f.load_err(&format!("{TOML}{GOLDEN}tolerance = 1e-5\n"));
    assert_mentions(
        &err.to_string(),
        &["4 of 4 golden rows differ", "tolerance 0.00001"],
    );
}

#[test]
fn golden_files_that_cannot_work_are_named() {
    let f = Folder::new();
    let golden = |toml: &str| format!("{TOML}{toml}");
    // A path outside the folder.
    for bad in ["../x.csv", "/etc/passwd", ""] {
        let err = f.load_err(&golden(&GOLDEN.replace("golden/inputs.csv", bad)));
        assert!(
            matches!(&err, ModelError::InvalidSpec { field, .. } if field == "golden.inputs"),
            "{bad}: {err:?}"
        );
    }
    // A header without a feature.
    std::fs::write(f.dir().join("golden/bad.csv"), "id,a\n1,2\n").unwrap();
    let err = f.load_err(&golden(
        &GOLDEN.replace("golden/inputs.csv", "golden/bad.csv"),
    ));
    assert_mentions(
        &err.to_string(),
        &["golden/bad.csv", "lacks the features b", "it has: id, a"],
    );
    // Fewer expected rows than inputs.
    std::fs::write(f.dir().join("golden/short.csv"), "p\n0.5\n").unwrap();
    let err = f.load_err(&golden(
        &GOLDEN.replace("golden/expected.csv", "golden/short.csv"),
    ));
    assert_mentions(&err.to_string(), &["holds 1 rows", "holds 4"]);
    // Expected outputs named otherwise.
    std::fs::write(f.dir().join("golden/named.csv"), "score\n0.5\n").unwrap();
    let err = f.load_err(&golden(
        &GOLDEN.replace("golden/expected.csv", "golden/named.csv"),
    ));
    assert_mentions(&err.to_string(), &["lacks the outputs p", "it has: score"]);
    // A cell that is no number.
    std::fs::write(f.dir().join("golden/nan.csv"), "a,b\n1,x\n").unwrap();
    let err = f.load_err(&golden(
        &GOLDEN.replace("golden/inputs.csv", "golden/nan.csv"),
    ));
    assert_mentions(&err.to_string(), &["row 1 (line 2), column b", "\"x\""]);
    // A missing file.
    let err = f.load_err(&golden(
        &GOLDEN.replace("golden/inputs.csv", "golden/absent.csv"),
    ));
    assert_mentions(&err.to_string(), &["golden/absent.csv"]);
    // A negative tolerance; an unknown field.
    let err = f.load_err(&golden(&format!("{GOLDEN}tolerance = -1.0\n")));
    assert_mentions(&err.to_string(), &["golden.tolerance"]);
    let err = f.load_err(&golden(&format!("{GOLDEN}rtol = 1.0\n")));
    assert_mentions(&err.to_string(), &["rtol"]);
}

#[test]
fn what_a_folder_offers_as_proof() {
    let proof = |toml: &str| Proof::of(&toml::from_str::<spec::SpecFile>(toml).unwrap());
    assert_eq!(proof(&format!("{TOML}{GOLDEN}")), Proof::Golden);
    assert_eq!(proof(TOML), Proof::PreprocessingOnly);
    let raw = TOML.replace("[preprocessing]\nmean = [1.0, 2.0]\nstd = [2.0, 4.0]\n", "");
    assert_eq!(proof(&raw), Proof::Nothing);
    assert!(Proof::Nothing.warning().unwrap().contains("--golden"));
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-minilm-l6-v2/model.toml"),
    )
    .unwrap();
    assert_eq!(proof(&text), Proof::NotTabular);
    assert_eq!(Proof::NotTabular.warning(), None);
}
