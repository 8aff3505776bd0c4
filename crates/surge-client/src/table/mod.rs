//! Reading input files into rows ([`Table`], [`read_table`]), and writing rows plus
//! scores back out, in input order ([`write_table`]). CSV or JSON Lines, chosen by
//! extension (`.csv`, `.jsonl`/`.ndjson`/`.json`) or explicitly; `-` is
//! stdin/stdout.
//!
//! Which cells are sent, and under which names, is decided once for the whole file
//! ([`Table::select`], in `select.rs`) and checked for every row before anything is
//! published ([`Table::inputs`], in `cells.rs`): a run never finds out at row 90,000
//! that a cell is not a number. CSV cells are kept as the text the file holds, so
//! that the columns that are not sent come out exactly as they went in.

mod cells;
mod select;

use std::io::{BufRead, Write};
use std::path::Path;

use serde_json::{Map, Value};

use crate::ClientError;

pub(crate) use cells::{cell_from_csv, csv_cell, padded_decimal, Cell, DECIMAL_PAD};
pub use select::Selection;

/// A file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated values, with a header row unless told otherwise.
    Csv,
    /// One JSON value per line: an object, an array of numbers, or a string.
    JsonLines,
    /// Apache Parquet: typed columns in row groups, read and written a row group at a
    /// time (see [`crate::parquet_io`]).
    Parquet,
}

impl Format {
    /// The format named (`csv`, `jsonl`) or implied by the path's extension; `-` and
    /// unknown extensions default to CSV.
    pub fn resolve(path: &str, explicit: Option<&str>) -> Result<Self, ClientError> {
        if let Some(f) = explicit {
            return match f.to_ascii_lowercase().as_str() {
                "csv" => Ok(Format::Csv),
                "jsonl" | "ndjson" | "json" => Ok(Format::JsonLines),
                "parquet" | "pq" => Ok(Format::Parquet),
                other => Err(ClientError::Input(format!(
                    "unknown format {other:?}; use csv, jsonl or parquet"
                ))),
            };
        }
        let ext = Path::new(path)
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        Ok(match ext.as_str() {
            "jsonl" | "ndjson" | "json" => Format::JsonLines,
            "parquet" | "pq" => Format::Parquet,
            _ => Format::Csv,
        })
    }
}

/// The rows of an input file, kept whole so they can be written back with scores.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Column names, in file order (`column_1`, `column_2`, ... when the file has none).
    pub columns: Vec<String>,
    /// One record per input row: its cells in `columns` order. A CSV cell is the
    /// string the file holds; a JSON cell is the JSON value (`null` when missing).
    pub records: Vec<Vec<Value>>,
    /// True when `columns` are names read from the file (a CSV header, the keys of
    /// JSON objects); false when they are made up (a CSV read without a header, JSON
    /// arrays), so that the values can only be sent by position.
    pub named: bool,
    /// The format the table was read from.
    pub format: Format,
}

/// How to read an input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOptions {
    /// The first CSV line is a header of column names (the default). Without one,
    /// the columns are called `column_1`, `column_2`, ... and the table is not named.
    /// JSON Lines ignore it: objects are named by their keys, arrays are not named.
    pub header: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self { header: true }
    }
}

/// Reads a whole table; a CSV file must start with a header.
pub fn read_table(reader: impl BufRead, format: Format) -> Result<Table, ClientError> {
    read_table_with(reader, format, ReadOptions::default())
}

/// Reads a whole table, as `options` say.
pub fn read_table_with(
    reader: impl BufRead,
    format: Format,
    options: ReadOptions,
) -> Result<Table, ClientError> {
    match format {
        Format::Csv => {
            let mut rdr = csv::ReaderBuilder::new()
                .has_headers(options.header)
                .from_reader(reader);
            let mut columns: Vec<String> = if options.header {
                rdr.headers()
                    .map_err(|e| ClientError::Input(format!("reading the CSV header: {e}")))?
                    .iter()
                    .map(str::to_string)
                    .collect()
            } else {
                Vec::new()
            };
            let mut records = Vec::new();
            for (i, rec) in rdr.records().enumerate() {
                let rec =
                    rec.map_err(|e| ClientError::Input(format!("CSV record {}: {e}", i + 1)))?;
                if !options.header && columns.is_empty() {
                    columns = (1..=rec.len()).map(|j| format!("column_{j}")).collect();
                }
                records.push(rec.iter().map(|c| Value::String(c.to_string())).collect());
            }
            Ok(Table {
                columns,
                records,
                named: options.header,
                format,
            })
        }
        Format::Parquet => Err(ClientError::Input(
            "Parquet is read a row group at a time: use stream::open_parquet".into(),
        )),
        Format::JsonLines => {
            let mut shape = JsonShape::default();
            let mut records = Vec::new();
            for (i, line) in reader.lines().enumerate() {
                let line = line.map_err(|e| ClientError::Input(format!("line {}: {e}", i + 1)))?;
                if let Some(cells) = shape.parse(i + 1, &line)? {
                    records.push(cells);
                }
            }
            Ok(Table {
                columns: shape.columns,
                records,
                named: shape.named,
                format,
            })
        }
    }
}

/// The shape of a JSON Lines file, set by its first line: every line must match it.
#[derive(Debug, Clone)]
pub(crate) struct JsonShape {
    pub(crate) columns: Vec<String>,
    pub(crate) named: bool,
}

impl Default for JsonShape {
    fn default() -> Self {
        Self {
            columns: Vec::new(),
            named: true,
        }
    }
}

impl JsonShape {
    /// The cells of line `line_no` (counted from 1); `None` for a blank line.
    pub(crate) fn parse(
        &mut self,
        line_no: usize,
        line: &str,
    ) -> Result<Option<Vec<Value>>, ClientError> {
        if line.trim().is_empty() {
            return Ok(None);
        }
        let v: Value = serde_json::from_str(line)
            .map_err(|e| ClientError::Input(format!("line {line_no}: not JSON: {e}")))?;
        let first = self.columns.is_empty();
        let named = self.named;
        let cells = match v {
            Value::Object(map) if first || named => {
                if first {
                    self.columns = map.keys().cloned().collect();
                }
                self.columns
                    .iter()
                    .map(|c| map.get(c).cloned().unwrap_or(Value::Null))
                    .collect()
            }
            Value::Array(items) if first || !named => {
                if first {
                    self.columns = (1..=items.len()).map(|j| format!("column_{j}")).collect();
                    self.named = false;
                }
                items
            }
            Value::String(s) if first || self.columns == ["text"] => {
                if first {
                    self.columns = vec!["text".into()];
                }
                vec![Value::String(s)]
            }
            Value::Object(_) | Value::Array(_) | Value::String(_) => {
                return Err(ClientError::Input(format!(
                    "line {line_no}: every line must have the shape of the first (all objects, all arrays or all strings)"
                )))
            }
            other => {
                return Err(ClientError::Input(format!(
                    "line {line_no}: expected an object, an array or a string, got {other}"
                )))
            }
        };
        let cells: Vec<Value> = cells;
        if cells.len() != self.columns.len() {
            return Err(ClientError::Input(format!(
                "line {line_no}: {} values, but the first line had {}",
                cells.len(),
                self.columns.len()
            )));
        }
        Ok(Some(cells))
    }
}

/// The answer for one input row.
#[derive(Debug, Clone, PartialEq)]
pub enum RowOutcome {
    /// The model's outputs.
    Scored(Vec<f32>),
    /// Why the row's job failed: `kind: message`.
    Failed(String),
}

/// Writes the table with output columns (named by `output_names`, or one `embedding`
/// column holding a JSON array when the model names none) and an `error` column. A
/// CSV input's cells are written back as the file held them.
pub fn write_table(
    mut out: impl Write,
    format: Format,
    table: &Table,
    output_names: &[String],
    outcomes: &[RowOutcome],
) -> Result<(), ClientError> {
    let io = |e: std::io::Error| ClientError::Output(e.to_string());
    let names: Vec<String> = if output_names.is_empty() {
        vec!["embedding".into()]
    } else {
        output_names.to_vec()
    };
    let embedding = output_names.is_empty();
    match format {
        Format::Csv => {
            let mut w = csv::Writer::from_writer(&mut out);
            let mut header = table.columns.clone();
            header.extend(names.iter().cloned());
            header.push("error".into());
            w.write_record(&header)
                .map_err(|e| ClientError::Output(e.to_string()))?;
            for (rec, outcome) in table.records.iter().zip(outcomes) {
                let mut row: Vec<String> = rec
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => s.clone(),
                        Value::Null => String::new(),
                        other => other.to_string(),
                    })
                    .collect();
                match outcome {
                    RowOutcome::Scored(values) if embedding => {
                        row.push(
                            serde_json::to_string(values)
                                .map_err(|e| ClientError::Output(e.to_string()))?,
                        );
                        row.push(String::new());
                    }
                    RowOutcome::Scored(values) => {
                        row.extend(values.iter().map(|v| v.to_string()));
                        row.push(String::new());
                    }
                    RowOutcome::Failed(msg) => {
                        row.extend(names.iter().map(|_| String::new()));
                        row.push(msg.clone());
                    }
                }
                w.write_record(&row)
                    .map_err(|e| ClientError::Output(e.to_string()))?;
            }
            w.flush().map_err(io)?;
        }
        Format::Parquet => {
            return Err(ClientError::Output(
                "Parquet is written a row group at a time: use stream::OutputWriter".into(),
            ))
        }
        Format::JsonLines => {
            for (rec, outcome) in table.records.iter().zip(outcomes) {
                let mut obj = Map::new();
                for (c, v) in table.columns.iter().zip(rec) {
                    let v = match (table.format, v) {
                        (Format::Csv, Value::String(s)) => cell_from_csv(s),
                        (_, v) => v.clone(),
                    };
                    obj.insert(c.clone(), v);
                }
                match outcome {
                    RowOutcome::Scored(values) if embedding => {
                        obj.insert("embedding".into(), Value::from(values.clone()));
                    }
                    RowOutcome::Scored(values) => {
                        for (n, v) in names.iter().zip(values) {
                            obj.insert(n.clone(), Value::from(*v));
                        }
                    }
                    RowOutcome::Failed(msg) => {
                        obj.insert("error".into(), Value::String(msg.clone()));
                    }
                }
                serde_json::to_writer(&mut out, &Value::Object(obj))
                    .map_err(|e| ClientError::Output(e.to_string()))?;
                out.write_all(b"\n").map_err(io)?;
            }
            out.flush().map_err(io)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use surge_protocol::Inputs;

    use super::*;

    /// A table read from CSV text with a header.
    pub(super) fn csv(text: &str) -> Table {
        read_table(text.as_bytes(), Format::Csv).unwrap()
    }

    /// The columns and names of a [`Selection::Features`].
    pub(super) fn features(sel: &Selection) -> (Vec<usize>, Option<Vec<String>>) {
        match sel {
            Selection::Features { cols, names } => (cols.clone(), names.clone()),
            other => panic!("{other:?}"),
        }
    }

    /// Owned copies of `names`.
    pub(super) fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// What [`write_table`] writes for `t` as `format`, with outputs `names`.
    pub(super) fn written(
        format: Format,
        t: &Table,
        names: &[&str],
        outcomes: &[RowOutcome],
    ) -> String {
        let mut out = Vec::new();
        write_table(&mut out, format, t, &strings(names), outcomes).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn csv_round_trip_keeps_order_and_adds_columns() {
        let t = csv("a,b,name\n1,2,x\n3,4.5,y\n");
        let sel = t.select(&strings(&["a", "b"]), None).unwrap();
        assert_eq!(
            t.inputs(&sel, 0, 2).unwrap(),
            Inputs::rows(&[vec![1.0, 2.0], vec![3.0, 4.5]])
        );
        let outcomes = [
            RowOutcome::Scored(vec![0.25]),
            RowOutcome::Failed("invalid_input: bad".into()),
        ];
        assert_eq!(
            written(Format::Csv, &t, &["p"], &outcomes),
            "a,b,name,p,error\n1,2,x,0.25,\n3,4.5,y,,invalid_input: bad\n"
        );
    }

    #[test]
    fn jsonl_texts_are_detected() {
        let t = read_table(
            "{\"id\":1,\"text\":\"hello\"}\n\"bare string\"\n".as_bytes(),
            Format::JsonLines,
        );
        assert!(t.is_err(), "mixed line shapes must be refused");
        let t = read_table(
            "{\"id\":1,\"text\":\"hello\"}\n{\"id\":2,\"text\":\"world\"}\n".as_bytes(),
            Format::JsonLines,
        )
        .unwrap();
        assert_eq!(t.select(&[], None).unwrap(), Selection::Text(1));
        let outcomes = [
            RowOutcome::Scored(vec![0.5, 0.5]),
            RowOutcome::Failed("x".into()),
        ];
        assert_eq!(
            written(Format::JsonLines, &t, &[], &outcomes),
            "{\"id\":1,\"text\":\"hello\",\"embedding\":[0.5,0.5]}\n{\"id\":2,\"text\":\"world\",\"error\":\"x\"}\n"
        );
    }

    #[test]
    fn jsonl_objects_are_named_and_json_strings_are_never_numbers() {
        let t = read_table(
            "{\"row_id\":\"0\",\"b\":2,\"a\":1}\n{\"row_id\":\"1\",\"b\":4,\"a\":null}\n"
                .as_bytes(),
            Format::JsonLines,
        )
        .unwrap();
        let sel = t.select(&[], None).unwrap();
        assert_eq!(features(&sel), (vec![1, 2], Some(strings(&["b", "a"]))));
        let err = t.inputs(&sel, 0, 2).unwrap_err().to_string();
        assert!(err.contains("row 2, column \"a\" is empty"), "{err}");
        let arrays = read_table("[1,2]\n[3,4]\n".as_bytes(), Format::JsonLines).unwrap();
        assert!(!arrays.named);
        assert_eq!(features(&arrays.select(&[], None).unwrap()).1, None);
        assert!(read_table("[1,2]\n{\"a\":1,\"b\":2}\n".as_bytes(), Format::JsonLines).is_err());
    }

    #[test]
    fn format_follows_extension() {
        assert_eq!(Format::resolve("a.jsonl", None).unwrap(), Format::JsonLines);
        assert_eq!(Format::resolve("a.csv", None).unwrap(), Format::Csv);
        assert_eq!(
            Format::resolve("-", Some("jsonl")).unwrap(),
            Format::JsonLines
        );
        assert!(Format::resolve("-", Some("xml")).is_err());
    }
}
