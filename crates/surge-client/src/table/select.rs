//! Which cells of a record are sent, and under which names ([`Selection`], chosen
//! once for the whole file by [`Table::select`]), and which columns are written back
//! ([`Table::keep`], [`Table::not_sent`]).

use crate::ClientError;

use super::{Cell, Table};

/// Which cells of a record the model scores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// These columns (indices into [`Table::columns`]), as numbers, in this order.
    Features {
        /// The columns sent, in the order of each row's values.
        cols: Vec<usize>,
        /// The name each column is sent under (the job's `columns`), so that the
        /// worker matches them to the model's features by name. `None` sends the
        /// values by position: their order must then be the model's feature order.
        names: Option<Vec<String>>,
    },
    /// This column, as text.
    Text(usize),
}

/// Splits `file_col=feature` (or just `name`, sent under its own name).
fn split_pick(spec: &str) -> (&str, &str) {
    match spec.split_once('=') {
        Some((file, feature)) => (file.trim(), feature.trim()),
        None => (spec.trim(), spec.trim()),
    }
}

/// An error if a name is sent twice: the worker could not tell which value is meant.
fn check_unique(names: &[String], what: &str) -> Result<(), ClientError> {
    // The worker compares names trimmed, so " a" and "a" are the same name.
    for (i, n) in names.iter().enumerate() {
        if names[..i].iter().any(|m| m.trim() == n.trim()) {
            return Err(ClientError::Input(format!(
                "column {n:?} would be sent twice ({what}); every name sent must be unique"
            )));
        }
    }
    Ok(())
}

impl Table {
    /// Index of the column named `name` in a named table, refusing names that the
    /// header holds twice.
    fn index(&self, name: &str) -> Result<usize, ClientError> {
        let mut found = self.columns.iter().enumerate().filter(|(_, c)| *c == name);
        match (found.next(), found.next()) {
            (Some((i, _)), None) => Ok(i),
            (Some((i, _)), Some((j, _))) => Err(ClientError::Input(format!(
                "the input has two columns named {name:?} (columns {} and {}); rename one",
                i + 1,
                j + 1
            ))),
            (None, _) => Err(ClientError::Input(format!(
                "no column {name:?} in the input (its columns: {})",
                self.columns.join(", ")
            ))),
        }
    }

    /// Picks the cells to score.
    ///
    /// * `text_column`, when given, is the column of texts (for text models).
    /// * A named table (CSV with a header, JSON objects):
    ///   - `columns` empty: a non-numeric column named `text` is the texts; otherwise
    ///     every column that holds at least one number is sent, under its own name.
    ///     Columns with no number at all (ids, dates, notes) are not sent; they are
    ///     written back to the output as they are.
    ///   - `columns` given: those columns, in that order. `file_col=feature` sends
    ///     the file's `file_col` under the name `feature`.
    /// * A table without names (CSV read without a header, JSON arrays):
    ///   - `columns` empty: every column, by position (no names).
    ///   - `columns` given: it names the file's columns in order, one name per column;
    ///     an empty name leaves that column out.
    pub fn select(
        &self,
        columns: &[String],
        text_column: Option<&str>,
    ) -> Result<Selection, ClientError> {
        if let Some(t) = text_column {
            return Ok(Selection::Text(self.index(t)?));
        }
        if !self.named {
            if columns.is_empty() {
                return Ok(Selection::Features {
                    cols: (0..self.columns.len()).collect(),
                    names: None,
                });
            }
            if columns.len() != self.columns.len() {
                return Err(ClientError::Input(format!(
                    "the input has no header and {} columns, but --columns names {}: name every column in file order (leave a name empty, as in `,mean_radius,...`, to skip a column)",
                    self.columns.len(),
                    columns.len()
                )));
            }
            if let Some(c) = columns.iter().find(|c| c.contains('=')) {
                return Err(ClientError::Input(format!(
                    "--columns {c:?}: the input has no header, so `file_col=feature` cannot name a file column; give each column's feature name in file order"
                )));
            }
            let (cols, names): (Vec<usize>, Vec<String>) = columns
                .iter()
                .enumerate()
                .filter(|(_, n)| !n.trim().is_empty())
                .map(|(i, n)| (i, n.trim().to_string()))
                .unzip();
            check_unique(&names, "in --columns")?;
            return Self::features(cols, Some(names));
        }
        if columns.is_empty() {
            if let Ok(t) = self.index("text") {
                if self
                    .records
                    .iter()
                    .any(|r| matches!(self.cell(&r[t]), Cell::Other))
                {
                    return Ok(Selection::Text(t));
                }
            }
            let cols: Vec<usize> = (0..self.columns.len())
                .filter(|&c| {
                    self.records
                        .iter()
                        .any(|r| matches!(self.cell(&r[c]), Cell::Number(_)))
                })
                .collect();
            let names: Vec<String> = cols.iter().map(|&c| self.columns[c].clone()).collect();
            check_unique(&names, "the header names it more than once")?;
            return Self::features(cols, Some(names));
        }
        let mut cols = Vec::with_capacity(columns.len());
        let mut names = Vec::with_capacity(columns.len());
        for spec in columns {
            let (file, feature) = split_pick(spec);
            if file.is_empty() || feature.is_empty() {
                return Err(ClientError::Input(format!(
                    "--columns {spec:?}: give a column name, or file_col=feature"
                )));
            }
            cols.push(self.index(file)?);
            names.push(feature.to_string());
        }
        check_unique(&names, "in --columns")?;
        Self::features(cols, Some(names))
    }

    fn features(cols: Vec<usize>, names: Option<Vec<String>>) -> Result<Selection, ClientError> {
        if cols.is_empty() {
            return Err(ClientError::Input(
                "no column to send: no column holds numbers (choose them with --columns, or the texts with --text-column)".into(),
            ));
        }
        Ok(Selection::Features { cols, names })
    }

    /// Gives a table without names the names of `selection` (for the output's
    /// header); a named table keeps its own.
    pub fn adopt_names(&mut self, selection: &Selection) {
        if self.named {
            return;
        }
        if let Selection::Features {
            cols,
            names: Some(names),
        } = selection
        {
            for (&c, n) in cols.iter().zip(names) {
                if let Some(slot) = self.columns.get_mut(c) {
                    slot.clone_from(n);
                }
            }
        }
    }

    /// The columns of the table that `selection` does not send.
    pub fn not_sent(&self, selection: &Selection) -> Vec<&str> {
        let sent = |c: usize| match selection {
            Selection::Features { cols, .. } => cols.contains(&c),
            Selection::Text(t) => *t == c,
        };
        (0..self.columns.len())
            .filter(|&c| !sent(c))
            .map(|c| self.columns[c].as_str())
            .collect()
    }

    /// Indices of the columns named by `--keep` (every column when empty).
    pub fn keep(&self, names: &[String]) -> Result<Vec<usize>, ClientError> {
        if names.is_empty() {
            return Ok((0..self.columns.len()).collect());
        }
        names
            .iter()
            .map(|n| {
                self.index(n.trim()).map_err(|e| match e {
                    ClientError::Input(m) => ClientError::Input(format!("--keep: {m}")),
                    other => other,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use surge_protocol::Inputs;

    use crate::table::tests::{csv, features, strings, written};
    use crate::table::{read_table_with, Format, ReadOptions, RowOutcome};

    #[test]
    fn by_default_numeric_columns_are_sent_by_name_and_the_rest_pass_through() {
        let t = csv("id,b,date,a,note\nx1,2.50,2024-01-01,1e3,\nx2,-0,2024-01-02,7,\n");
        let sel = t.select(&[], None).unwrap();
        assert_eq!(features(&sel), (vec![1, 3], Some(strings(&["b", "a"]))));
        assert_eq!(t.not_sent(&sel), vec!["id", "date", "note"]);
        assert_eq!(
            t.inputs(&sel, 0, 2).unwrap(),
            Inputs::rows(&[vec![2.5, 1000.0], vec![-0.0, 7.0]])
        );
        // Cells come out exactly as they went in, not re-formatted.
        let scored = [RowOutcome::Scored(vec![0.5]), RowOutcome::Scored(vec![1.0])];
        assert_eq!(
            written(Format::Csv, &t, &["p"], &scored),
            "id,b,date,a,note,p,error\nx1,2.50,2024-01-01,1e3,,0.5,\nx2,-0,2024-01-02,7,,1,\n"
        );
        // To JSON Lines, numbers become numbers again.
        let first = written(Format::JsonLines, &t, &["p"], &scored);
        assert!(
            first.starts_with(
                r#"{"id":"x1","b":2.5,"date":"2024-01-01","a":1000.0,"note":"","p":0.5}"#
            ),
            "{first}"
        );
    }

    #[test]
    fn columns_select_and_rename() {
        let t = csv("id,x,y,z\n1,2,3,4\n");
        let sel = t.select(&strings(&["z", "x=mean_radius"]), None).unwrap();
        assert_eq!(
            features(&sel),
            (vec![3, 1], Some(strings(&["z", "mean_radius"])))
        );
        assert_eq!(
            t.inputs(&sel, 0, 1).unwrap(),
            Inputs::rows(&[vec![4.0, 2.0]])
        );
        let err = t.select(&strings(&["nope"]), None).unwrap_err().to_string();
        assert!(
            err.contains("no column \"nope\"") && err.contains("id, x, y, z"),
            "{err}"
        );
        let err = t
            .select(&strings(&["x=a", "y=a"]), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"a\" would be sent twice"), "{err}");
        let dup = csv("a,a\n1,2\n");
        assert!(dup.select(&[], None).is_err());
        assert!(dup
            .select(&strings(&["a"]), None)
            .unwrap_err()
            .to_string()
            .contains("two columns named \"a\""));
    }

    #[test]
    fn headerless_files_are_sent_by_position_or_named_in_order() {
        let opts = ReadOptions { header: false };
        let mut t = read_table_with("7,1,2\n8,3,4\n".as_bytes(), Format::Csv, opts).unwrap();
        assert!(!t.named);
        assert_eq!(t.columns, strings(&["column_1", "column_2", "column_3"]));
        let sel = t.select(&[], None).unwrap();
        assert_eq!(features(&sel), (vec![0, 1, 2], None));
        assert_eq!(
            t.inputs(&sel, 1, 2).unwrap(),
            Inputs::rows(&[vec![8.0, 3.0, 4.0]])
        );

        let sel = t.select(&strings(&["", "a", "b"]), None).unwrap();
        assert_eq!(features(&sel), (vec![1, 2], Some(strings(&["a", "b"]))));
        t.adopt_names(&sel);
        assert_eq!(t.columns, strings(&["column_1", "a", "b"]));

        let err = t
            .select(&strings(&["a", "b"]), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("3 columns, but --columns names 2"), "{err}");
        assert!(t.select(&strings(&["x", "a=b", "c"]), None).is_err());
        let bad = read_table_with("1,x\n".as_bytes(), Format::Csv, opts).unwrap();
        let err = bad
            .inputs(&bad.select(&[], None).unwrap(), 0, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("row 1, column 2 holds \"x\""), "{err}");
    }
}
