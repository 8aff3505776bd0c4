//! Turning rows into jobs ([`Encoder`]): the selected cells sent (packed numbers, or
//! texts), and the kept columns as the bytes they will be written as ([`RowBytes`]).
//! A cell that is not a finite number fails its row, not the run: the row goes out
//! as zeros and carries its error to the writer.

use serde_json::Value;
use surge_protocol::{Inputs, Rows};
use tokio::sync::mpsc;

use super::source::{Record, RowSource};
use super::{csv_field, RowBytes, INVALID_INPUT};
use crate::table::{cell_from_csv, csv_cell, Cell, Format, Selection, Table};
use crate::{ClientError, SourceJob};

/// The `error` written for a row with a bad cell: the kind, as a worker would name it,
/// then the message that names the row and column.
fn invalid_input(why: &ClientError) -> String {
    match why {
        ClientError::Input(msg) => format!("{INVALID_INPUT}: {msg}"),
        other => format!("{INVALID_INPUT}: {other}"),
    }
}

/// Turns rows into jobs: the cells sent, and the bytes of the columns kept.
pub struct Encoder {
    /// The sample, for column names and the wording of errors.
    table: Table,
    selection: Selection,
    keep: Vec<usize>,
    out: Format,
    rows_per_job: usize,
    /// `"name":` of each kept column, for JSON output.
    json_keys: Vec<Vec<u8>>,
    /// Rows to read past before the first job (written by the run resumed).
    skip: usize,
}

impl Encoder {
    /// An encoder for rows like those of `table` (the sample [`open`](super::open)
    /// returned, with its names adopted), sending `selection`, writing columns `keep`
    /// as `out`.
    pub fn new(
        table: Table,
        selection: Selection,
        keep: Vec<usize>,
        out: Format,
        rows_per_job: usize,
    ) -> Self {
        let json_keys = keep
            .iter()
            .map(|&k| {
                let mut key = serde_json::to_vec(&table.columns[k]).unwrap_or_default();
                key.push(b':');
                key
            })
            .collect();
        Self {
            table,
            selection,
            keep,
            out,
            rows_per_job: rows_per_job.max(1),
            json_keys,
            skip: 0,
        }
    }

    /// Reads past the first `rows` rows (already written by the run being resumed).
    pub fn skipping(mut self, rows: usize) -> Self {
        self.skip = rows;
        self
    }

    /// Reads every row of `src`, sends one job per `rows_per_job` rows to `tx`, and
    /// stops at the first unreadable row (sending its error) or when `tx` is closed. A
    /// row with a bad cell goes out as zeros, its error kept for the writer. Blocks:
    /// run it on a thread of its own.
    pub fn run(
        &self,
        mut src: RowSource,
        tx: mpsc::Sender<Result<SourceJob<RowBytes>, ClientError>>,
    ) {
        let mut row_no = 0usize;
        while row_no < self.skip {
            match src.next() {
                Ok(Some(_)) => row_no += 1,
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
        loop {
            match self.job(&mut src, &mut row_no) {
                Ok(Some(job)) => {
                    if tx.blocking_send(Ok(job)).is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    }

    fn job(
        &self,
        src: &mut RowSource,
        row_no: &mut usize,
    ) -> Result<Option<SourceJob<RowBytes>>, ClientError> {
        let mut rows = RowBytes::default();
        let mut values = Vec::new();
        let mut texts = Vec::new();
        while rows.len() < self.rows_per_job {
            let Some(rec) = src.next()? else { break };
            *row_no += 1;
            match &self.selection {
                Selection::Features { cols, .. } => {
                    let row_start = values.len();
                    for &c in cols {
                        match self.number(&rec, c) {
                            Some(x) => values.push(x),
                            None => {
                                let v = self.value(&rec, c);
                                let why = self.table.cell_error(&self.selection, *row_no, c, &v);
                                values.truncate(row_start);
                                values.resize(row_start + cols.len(), 0.0);
                                rows.bad.push((rows.len(), invalid_input(&why)));
                                break;
                            }
                        }
                    }
                }
                Selection::Text(c) => texts.push(match &rec {
                    Record::Csv(r) => {
                        String::from_utf8_lossy(r.get(*c).unwrap_or_default()).into_owned()
                    }
                    Record::Json(cells) => match cells.get(*c) {
                        Some(Value::String(s)) => s.clone(),
                        Some(other) => other.to_string(),
                        None => String::new(),
                    },
                }),
            }
            if self.out == Format::Parquet {
                rows.cells.push(self.kept_cells(&rec));
            } else {
                self.write_kept(&rec, &mut rows.bytes)?;
            }
            rows.ends.push(rows.bytes.len());
        }
        if rows.is_empty() {
            return Ok(None);
        }
        let inputs = match &self.selection {
            Selection::Features { cols, .. } => Inputs::Rows(Rows::from_flat(values, cols.len())),
            Selection::Text(_) => Inputs::Texts(texts),
        };
        let bytes = rows.bytes.capacity()
            + rows.cells_bytes()
            + rows.ends.capacity() * std::mem::size_of::<usize>()
            + match &inputs {
                Inputs::Rows(r) => r.len() * 4 * self.width(),
                Inputs::Texts(t) => t.iter().map(String::len).sum(),
            };
        Ok(Some(SourceJob {
            inputs,
            payload: rows,
            bytes,
        }))
    }

    fn width(&self) -> usize {
        match &self.selection {
            Selection::Features { cols, .. } => cols.len(),
            Selection::Text(_) => 1,
        }
    }

    fn number(&self, rec: &Record, c: usize) -> Option<f32> {
        match rec {
            Record::Csv(r) => match csv_cell(r.get(c).unwrap_or_default()) {
                Cell::Number(x) => Some(x),
                _ => None,
            },
            Record::Json(cells) => match cells.get(c) {
                Some(Value::Number(n)) => n.as_f64().map(|x| x as f32).filter(|x| x.is_finite()),
                _ => None,
            },
        }
    }

    fn value(&self, rec: &Record, c: usize) -> Value {
        match rec {
            Record::Csv(r) => {
                Value::String(String::from_utf8_lossy(r.get(c).unwrap_or_default()).into_owned())
            }
            Record::Json(cells) => cells.get(c).cloned().unwrap_or(Value::Null),
        }
    }

    /// The kept cells of `rec`, for the Parquet writer (CSV cells as text).
    fn kept_cells(&self, rec: &Record) -> Vec<Value> {
        self.keep
            .iter()
            .map(|&k| match rec {
                Record::Csv(r) => Value::String(
                    String::from_utf8_lossy(r.get(k).unwrap_or_default()).into_owned(),
                ),
                Record::Json(cells) => cells.get(k).cloned().unwrap_or(Value::Null),
            })
            .collect()
    }

    fn write_kept(&self, rec: &Record, out: &mut Vec<u8>) -> Result<(), ClientError> {
        let json = |e: serde_json::Error| ClientError::Output(e.to_string());
        match self.out {
            Format::Csv => {
                for (i, &k) in self.keep.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    match rec {
                        Record::Csv(r) => csv_field(out, r.get(k).unwrap_or_default()),
                        Record::Json(cells) => match cells.get(k) {
                            Some(Value::String(s)) => csv_field(out, s.as_bytes()),
                            Some(Value::Null) | None => {}
                            Some(other) => csv_field(out, other.to_string().as_bytes()),
                        },
                    }
                }
            }
            // Parquet output carries the kept cells as values (`kept_cells`).
            Format::Parquet => {}
            Format::JsonLines => {
                out.push(b'{');
                for (i, &k) in self.keep.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(&self.json_keys[i]);
                    match rec {
                        Record::Csv(r) => {
                            let cell = String::from_utf8_lossy(r.get(k).unwrap_or_default());
                            serde_json::to_writer(&mut *out, &cell_from_csv(&cell)).map_err(json)?
                        }
                        Record::Json(cells) => {
                            serde_json::to_writer(&mut *out, cells.get(k).unwrap_or(&Value::Null))
                                .map_err(json)?
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::stream::tests::run;
    use crate::table::Format;

    #[test]
    fn a_bad_cell_past_the_rows_read_ahead_fails_its_row_only() {
        // Row 3 ("zz") is past the one row read ahead; row 4 is empty.
        let input = "id,b\n1,1\n2,2\n3,zz\n4,\n5,5\n";
        let fix = "every value sent to the model must be a number; fix the cell; or, if \"\"b\"\" is not one of the model's features, leave it out (--columns lists the columns to send)";
        assert_eq!(
            run(input, Format::Csv, &[], 8),
            format!(
                "id,b,p,error\n1,1,0.5,\n2,2,1.5,\n\
                 3,zz,,\"invalid_input: row 3, column \"\"b\"\" holds \"\"zz\"\", which is not a finite number: {fix}\"\n\
                 4,,,\"invalid_input: row 4, column \"\"b\"\" is empty: {fix}\"\n\
                 5,5,4.5,\n"
            )
        );
    }
}
