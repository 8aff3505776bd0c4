//! Fitting a job's inputs to a model before they reach a batch: shape, column names,
//! finiteness. One bad job is answered on its own (`invalid_input`, with the row and
//! the feature named) and never fails its batch mates.

use surge_protocol::{Inputs, Rows};

use crate::spec::{InputSpec, ModelInfo};

/// At most this many feature names are listed in a message.
const NAMES_IN_MESSAGE: usize = 8;

fn some_names(names: &[String]) -> String {
    let mut s = names
        .iter()
        .take(NAMES_IN_MESSAGE)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > NAMES_IN_MESSAGE {
        s.push_str(&format!(", ... ({} in all)", names.len()));
    }
    s
}

impl ModelInfo {
    /// Fits `inputs` to this model. With `columns` (the job's names for the values of
    /// each row), values are matched to the model's features by name: order does not
    /// matter, extra columns are dropped, and missing ones are named. Without them the
    /// values are taken in the model's feature order. Returns the rows in feature
    /// order, or a message for an `invalid_input` answer.
    pub fn conform(&self, inputs: Inputs, columns: Option<&[String]>) -> Result<Inputs, String> {
        if inputs.is_empty() {
            return Err("inputs is empty; send at least one row".to_string());
        }
        match (&self.input, inputs) {
            (InputSpec::Tabular { features }, Inputs::Rows(rows)) => {
                let rows = self.fit_rows(features, rows, columns)?;
                self.check_finite(features, &rows)?;
                Ok(Inputs::Rows(rows))
            }
            (InputSpec::Text { .. }, texts @ Inputs::Texts(_)) => Ok(texts),
            (InputSpec::Tabular { .. }, Inputs::Texts(_)) => Err(format!(
                "model {} takes rows of numbers, not texts",
                self.name
            )),
            (InputSpec::Text { .. }, Inputs::Rows(_)) => Err(format!(
                "model {} takes texts, not rows of numbers",
                self.name
            )),
        }
    }

    /// Checks `inputs` as they are, with no column names.
    pub fn check_inputs(&self, inputs: &Inputs) -> Result<(), String> {
        self.conform(inputs.clone(), None).map(drop)
    }

    fn fit_rows(
        &self,
        features: &[String],
        rows: Rows,
        columns: Option<&[String]>,
    ) -> Result<Rows, String> {
        let dim = features.len();
        if let Some(why) = rows.shape_error() {
            return Err(format!(
                "{why}; model {} expects {dim} values per row ({})",
                self.name,
                some_names(features)
            ));
        }
        let cols = rows.cols();
        let Some(columns) = columns else {
            if cols != dim {
                return Err(format!(
                    "row 0 has {cols} values; model {} expects {dim} ({}). Send `columns` with the rows to match them by name",
                    self.name,
                    some_names(features)
                ));
            }
            return Ok(rows);
        };
        if columns.len() != cols {
            return Err(format!(
                "the job names {} columns but its rows have {cols} values each",
                columns.len()
            ));
        }
        // The usual job names the model's features in its order: its rows are taken
        // as they are, without the pairwise matching below (which was most of this
        // function's cost, run for every job).
        if cols == dim
            && columns
                .iter()
                .zip(features)
                .all(|(c, f)| c.trim() == f.trim())
        {
            return Ok(rows);
        }
        let names: Vec<&str> = columns.iter().map(|c| c.trim()).collect();
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                return Err(format!("column {n:?} appears more than once in columns"));
            }
        }
        let mut source = Vec::with_capacity(dim);
        let mut missing = Vec::new();
        for f in features {
            match names.iter().position(|n| *n == f.trim()) {
                Some(i) => source.push(i),
                None => missing.push(f.clone()),
            }
        }
        if !missing.is_empty() {
            return Err(format!(
                "missing columns: {} (model {} needs {dim} features: {}; the job has: {})",
                some_names(&missing),
                self.name,
                some_names(features),
                some_names(columns)
            ));
        }
        if cols == dim && source.iter().enumerate().all(|(j, &i)| i == j) {
            return Ok(rows);
        }
        // One pass, gathering each row's values in feature order.
        let mut values = Vec::with_capacity(rows.len() * dim);
        for r in rows.iter() {
            values.extend(source.iter().map(|&i| r[i]));
        }
        Ok(Rows::from_flat(values, dim))
    }

    fn check_finite(&self, features: &[String], rows: &Rows) -> Result<(), String> {
        let dim = features.len().max(1);
        if let Some(at) = rows.values().iter().position(|x| !x.is_finite()) {
            let (i, j) = (at / dim, at % dim);
            let value = rows.values()[at];
            let shown = if value.is_nan() {
                "null or NaN".to_string()
            } else {
                format!("{value} (or beyond f32's range)")
            };
            return Err(format!(
                "row {i}, feature {j} ({}) is {shown}; inputs must be finite numbers",
                features.get(j).map_or("?", String::as_str)
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn info() -> ModelInfo {
        ModelInfo {
            name: "m".into(),
            version: "1".into(),
            architecture: "mlp".into(),
            description: String::new(),
            input: InputSpec::Tabular {
                features: vec!["a".into(), "b".into(), "c".into()],
            },
            output_names: vec!["p".into()],
            dir: PathBuf::new(),
        }
    }

    fn cols(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn values(i: Inputs) -> Vec<f32> {
        match i {
            Inputs::Rows(r) => r.into_values(),
            Inputs::Texts(_) => panic!("texts"),
        }
    }

    #[test]
    fn columns_are_matched_by_name_and_extras_dropped() {
        let rows = Inputs::rows(&[vec![30.0, 9.0, 10.0, 20.0], vec![3.0, 9.0, 1.0, 2.0]]);
        let names = cols(&["c", "extra", "a", "b"]);
        let got = info().conform(rows, Some(&names)).unwrap();
        assert_eq!(values(got), vec![10.0, 20.0, 30.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn columns_in_feature_order_take_the_rows_as_they_are() {
        let rows = Inputs::rows(&[vec![1.0, 2.0, 3.0], vec![4.0, 5.0, 6.0]]);
        for names in [cols(&["a", "b", "c"]), cols(&[" a", "b ", "c"])] {
            let got = info().conform(rows.clone(), Some(&names)).unwrap();
            assert_eq!(values(got), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        }
        // One swap is enough to leave the fast path: the values follow their names.
        let got = info()
            .conform(rows.clone(), Some(&cols(&["a", "c", "b"])))
            .unwrap();
        assert_eq!(values(got), vec![1.0, 3.0, 2.0, 4.0, 6.0, 5.0]);
        // And a bad value is still refused on it.
        let bad = Inputs::rows(&[vec![1.0, f32::INFINITY, 3.0]]);
        let err = info()
            .conform(bad, Some(&cols(&["a", "b", "c"])))
            .unwrap_err();
        assert!(err.contains("row 0, feature 1 (b)"), "{err}");
    }

    #[test]
    fn missing_and_duplicate_columns_are_named() {
        let rows = Inputs::rows(&[vec![1.0, 2.0]]);
        let err = info()
            .conform(rows.clone(), Some(&cols(&["a", "x"])))
            .unwrap_err();
        assert!(err.contains("missing columns: b, c"), "{err}");
        let err = info()
            .conform(rows.clone(), Some(&cols(&["a", "a"])))
            .unwrap_err();
        assert!(err.contains("\"a\" appears more than once"), "{err}");
        let err = info().conform(rows, Some(&cols(&["a"]))).unwrap_err();
        assert!(err.contains("names 1 columns but its rows have 2"), "{err}");
    }

    #[test]
    fn non_finite_values_name_the_row_and_the_feature_after_mapping() {
        let rows = Inputs::rows(&[vec![1.0, 2.0, 3.0], vec![f32::NAN, 5.0, 6.0]]);
        let err = info()
            .conform(rows, Some(&cols(&["b", "a", "c"])))
            .unwrap_err();
        assert!(err.contains("row 1, feature 1 (b) is null or NaN"), "{err}");
    }

    #[test]
    fn without_columns_the_count_must_match() {
        let err = info()
            .check_inputs(&Inputs::rows(&[vec![1.0; 4]]))
            .unwrap_err();
        assert!(
            err.contains("row 0 has 4 values") && err.contains("a, b, c"),
            "{err}"
        );
        assert!(info().check_inputs(&Inputs::rows(&[vec![1.0; 3]])).is_ok());
    }
}
