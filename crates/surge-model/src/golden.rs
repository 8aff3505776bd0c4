//! Golden rows: a model folder proves that it scores like the code that trained it.
//!
//! A folder that loads can still score wrong: a missing `[preprocessing]`, features in
//! another order, the wrong activation. None of that breaks a shape. Golden rows catch
//! it: inputs and the outputs the training code gave for them, checked every time the
//! folder is loaded (by `surge models check` and by every worker, which refuses a folder
//! that does not reproduce them).
//!
//! ```toml
//! [golden]
//! inputs = "golden/inputs.csv"      # a header naming the features (any order; other columns ignored)
//! expected = "golden/expected.csv"  # a header naming the outputs; one row per input row
//! tolerance = 1e-4                  # largest |got - expected| allowed, per value
//! ```
//!
//! Columns are matched by name, so a file written from a pandas frame whose columns
//! are in another order still checks the right thing. Golden rows are for tabular
//! models.

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::spec::{InputSection, SpecFile};
use crate::{Batch, InputSpec, Model, ModelError};

/// Largest `|got - expected|` allowed when `[golden] tolerance` is not set.
pub const DEFAULT_TOLERANCE: f32 = 1e-4;

/// Most golden rows a folder may hold: they are scored at every load.
pub const MAX_ROWS: usize = 10_000;

/// `[golden]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenSection {
    /// CSV of inputs, inside the model folder.
    pub inputs: String,
    /// CSV of the outputs the training code gave for them, inside the model folder.
    pub expected: String,
    /// Largest absolute difference allowed per output value.
    #[serde(default = "default_tolerance")]
    pub tolerance: f32,
}

fn default_tolerance() -> f32 {
    DEFAULT_TOLERANCE
}

/// What, besides loading, shows that a folder scores like its training code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// Golden rows, checked at every load.
    Golden,
    /// A tabular model with `[preprocessing]` but no golden rows: the constants are
    /// there, but nothing checks them or the feature order.
    PreprocessingOnly,
    /// A tabular model with neither: inputs reach the network raw, and nothing shows
    /// that this is how it was trained.
    Nothing,
    /// Not a tabular model (golden rows are for tabular models).
    NotTabular,
}

impl Proof {
    /// What `model.toml` offers as proof.
    pub fn of(spec: &SpecFile) -> Self {
        match (&spec.input, &spec.golden, &spec.preprocessing) {
            (InputSection::Text { .. }, _, _) => Proof::NotTabular,
            (_, Some(_), _) => Proof::Golden,
            (_, None, Some(_)) => Proof::PreprocessingOnly,
            (_, None, None) => Proof::Nothing,
        }
    }

    /// The warning to show for this folder, if any.
    pub fn warning(self) -> Option<&'static str> {
        match self {
            Proof::Nothing => Some(
                "nothing shows that this folder scores like the training code: it has no \
                 [golden] rows and no [preprocessing], so inputs reach the network raw. If the \
                 network was trained on standardised inputs, every score is wrong and nothing \
                 will say so. Add golden rows (`surge models new ... --golden rows.csv --expect \
                 scores.csv`, or a [golden] section), and [preprocessing] if it was trained on \
                 scaled inputs",
            ),
            Proof::PreprocessingOnly => Some(
                "no [golden] rows: nothing checks [preprocessing] or the feature order against \
                 the training code. Add golden rows (`surge models new ... --golden rows.csv \
                 --expect scores.csv`, or a [golden] section)",
            ),
            Proof::Golden | Proof::NotTabular => None,
        }
    }
}

/// A path named in `[golden]`: relative, inside the folder, no `..`, and resolving
/// inside the folder.
fn inside(dir: &Path, toml: &Path, field: &str, name: &str) -> Result<PathBuf, ModelError> {
    let rel = Path::new(name);
    if name.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(ModelError::spec(
            toml,
            field,
            format!("{name:?} must be a relative path inside the model folder, like \"golden/inputs.csv\""),
        ));
    }
    let path = dir.join(rel);
    let real = path.canonicalize().map_err(|e| ModelError::io(&path, e))?;
    if !real.starts_with(dir) {
        return Err(ModelError::OutsideModelsDir {
            path,
            models_dir: dir.to_path_buf(),
        });
    }
    Ok(real)
}

/// Reads a CSV whose header must hold every one of `wanted` (other columns are
/// ignored), and returns its rows with those columns, in `wanted`'s order.
fn read_columns(path: &Path, what: &str, wanted: &[String]) -> Result<Vec<Vec<f32>>, ModelError> {
    let bad = |message: String| ModelError::BadFile {
        path: path.to_path_buf(),
        message,
    };
    let mut rdr = csv::Reader::from_path(path).map_err(|e| bad(e.to_string()))?;
    let header: Vec<String> = rdr
        .headers()
        .map_err(|e| bad(e.to_string()))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    let mut columns = Vec::with_capacity(wanted.len());
    let mut missing = Vec::new();
    for w in wanted {
        let at: Vec<usize> = (0..header.len()).filter(|&i| header[i] == *w).collect();
        match at[..] {
            [i] => columns.push(i),
            [] => missing.push(w.as_str()),
            _ => {
                return Err(bad(format!(
                    "column {w:?} appears {} times in the header",
                    at.len()
                )))
            }
        }
    }
    if !missing.is_empty() {
        return Err(bad(format!(
            "the header lacks the {what} {} (it has: {}); the first line must name the \
             columns, spelled as in model.toml",
            missing.join(", "),
            header.join(", ")
        )));
    }
    let mut rows = Vec::new();
    for (i, record) in rdr.records().enumerate() {
        let record = record.map_err(|e| bad(e.to_string()))?;
        if rows.len() == MAX_ROWS {
            return Err(bad(format!(
                "holds more than {MAX_ROWS} rows; golden rows are scored at every load, keep a few dozen"
            )));
        }
        let mut row = Vec::with_capacity(columns.len());
        for (&c, name) in columns.iter().zip(wanted) {
            let cell = record.get(c).unwrap_or("").trim();
            match cell.parse::<f32>() {
                Ok(v) if v.is_finite() => row.push(v),
                _ => {
                    return Err(bad(format!(
                        "row {} (line {}), column {name}: {cell:?} is not a finite number",
                        i + 1,
                        i + 2
                    )))
                }
            }
        }
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(bad("holds no rows under its header".to_string()));
    }
    Ok(rows)
}

/// Scores the golden inputs of folder `dir` (whose `model.toml` has `section`) with
/// `model` and compares them with the expected outputs: [`ModelError::GoldenMismatch`]
/// names the first row and output that differ by more than the tolerance, and by how
/// much. Returns the number of rows checked.
pub fn verify(model: &dyn Model, section: &GoldenSection, dir: &Path) -> Result<usize, ModelError> {
    let toml = dir.join(crate::spec::SPEC_FILE);
    let info = model.info();
    let InputSpec::Tabular { features } = &info.input else {
        return Err(ModelError::spec(
            &toml,
            "golden",
            "golden rows are for tabular models; remove [golden]",
        ));
    };
    if !(section.tolerance.is_finite() && section.tolerance >= 0.0) {
        return Err(ModelError::spec(
            &toml,
            "golden.tolerance",
            format!("{} must be a finite number >= 0", section.tolerance),
        ));
    }
    let inputs_path = inside(dir, &toml, "golden.inputs", &section.inputs)?;
    let expected_path = inside(dir, &toml, "golden.expected", &section.expected)?;
    let inputs = read_columns(&inputs_path, "features", features)?;
    let expected = read_columns(&expected_path, "outputs", &info.output_names)?;
    if inputs.len() != expected.len() {
        return Err(ModelError::BadFile {
            path: expected_path,
            message: format!(
                "holds {} rows but {} holds {}; write one row of outputs per input row",
                expected.len(),
                section.inputs,
                inputs.len()
            ),
        });
    }
    let flat: Vec<f32> = inputs.iter().flatten().copied().collect();
    let scores = model.score(&Batch::Rows {
        values: &flat,
        dim: features.len(),
    })?;
    let mut first = None;
    let mut differing = 0;
    for (i, want) in expected.iter().enumerate() {
        let got = scores.row(i);
        let mut row_differs = false;
        for (j, (&g, &w)) in got.iter().zip(want).enumerate() {
            let diff = if g.is_finite() {
                (g - w).abs()
            } else {
                f32::INFINITY
            };
            if diff > section.tolerance {
                row_differs = true;
                first.get_or_insert((i, j, g, w, diff));
            }
        }
        differing += usize::from(row_differs);
    }
    match first {
        None => Ok(expected.len()),
        Some((row, j, got, want, diff)) => Err(ModelError::GoldenMismatch {
            path: expected_path,
            inputs: section.inputs.clone(),
            row: row + 1,
            line: row + 2,
            output: info.output_names[j].clone(),
            got,
            expected: want,
            diff,
            tolerance: section.tolerance,
            differing,
            rows: expected.len(),
        }),
    }
}
