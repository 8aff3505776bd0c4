//! Reading input files into rows, and writing rows plus scores back out, in input
//! order. CSV or JSON Lines, chosen by extension (`.csv`, `.jsonl`/`.ndjson`/`.json`)
//! or explicitly; `-` is stdin/stdout.

use std::io::{BufRead, Write};
use std::path::Path;

use serde_json::{Map, Value};
use surge_protocol::Inputs;

use crate::ClientError;

/// A file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated values with a header row.
    Csv,
    /// One JSON value per line: an object, an array of numbers, or a string.
    JsonLines,
}

impl Format {
    /// The format named (`csv`, `jsonl`) or implied by the path's extension; `-` and
    /// unknown extensions default to CSV.
    pub fn resolve(path: &str, explicit: Option<&str>) -> Result<Self, ClientError> {
        if let Some(f) = explicit {
            return match f.to_ascii_lowercase().as_str() {
                "csv" => Ok(Format::Csv),
                "jsonl" | "ndjson" | "json" => Ok(Format::JsonLines),
                other => Err(ClientError::Input(format!(
                    "unknown format {other:?}; use csv or jsonl"
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
            _ => Format::Csv,
        })
    }
}

/// The rows of an input file, kept whole so they can be written back with scores.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Column names, in file order.
    pub columns: Vec<String>,
    /// One record per input row: its cells in `columns` order.
    pub records: Vec<Vec<Value>>,
}

/// Which cells of a record the model scores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// These columns, as numbers, in this order.
    Features(Vec<usize>),
    /// This column, as text.
    Text(usize),
}

fn cell_from_csv(s: &str) -> Value {
    // Integers stay integers, so ids are written back as they were read.
    if let Ok(i) = s.parse::<i64>() {
        return Value::from(i);
    }
    match s.parse::<f64>() {
        Ok(f) if s.trim() == s && !s.is_empty() => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::String(s.into())),
        _ => Value::String(s.to_string()),
    }
}

/// Reads a whole table.
pub fn read_table(reader: impl BufRead, format: Format) -> Result<Table, ClientError> {
    match format {
        Format::Csv => {
            let mut rdr = csv::Reader::from_reader(reader);
            let columns: Vec<String> = rdr
                .headers()
                .map_err(|e| ClientError::Input(format!("reading the CSV header: {e}")))?
                .iter()
                .map(str::to_string)
                .collect();
            let mut records = Vec::new();
            for (i, rec) in rdr.records().enumerate() {
                let rec =
                    rec.map_err(|e| ClientError::Input(format!("CSV record {}: {e}", i + 1)))?;
                records.push(rec.iter().map(cell_from_csv).collect());
            }
            Ok(Table { columns, records })
        }
        Format::JsonLines => {
            let mut columns: Vec<String> = Vec::new();
            let mut records = Vec::new();
            for (i, line) in reader.lines().enumerate() {
                let line = line.map_err(|e| ClientError::Input(format!("line {}: {e}", i + 1)))?;
                if line.trim().is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_str(&line)
                    .map_err(|e| ClientError::Input(format!("line {}: not JSON: {e}", i + 1)))?;
                let cells = match v {
                    Value::Object(map) => {
                        if columns.is_empty() {
                            columns = map.keys().cloned().collect();
                        }
                        columns
                            .iter()
                            .map(|c| map.get(c).cloned().unwrap_or(Value::Null))
                            .collect()
                    }
                    Value::Array(items) => {
                        if columns.is_empty() {
                            columns = (0..items.len()).map(|j| format!("x{j}")).collect();
                        }
                        items
                    }
                    Value::String(s) => {
                        if columns.is_empty() {
                            columns = vec!["text".into()];
                        }
                        vec![Value::String(s)]
                    }
                    other => {
                        return Err(ClientError::Input(format!(
                            "line {}: expected an object, an array or a string, got {other}",
                            i + 1
                        )))
                    }
                };
                if cells.len() != columns.len() {
                    return Err(ClientError::Input(format!(
                        "line {}: {} values, but the first line had {}",
                        i + 1,
                        cells.len(),
                        columns.len()
                    )));
                }
                records.push(cells);
            }
            Ok(Table { columns, records })
        }
    }
}

impl Table {
    /// Picks the cells to score: the `text_column` when given (or when the table has a
    /// non-numeric column named `text`), else the named `columns`, else every column.
    pub fn select(
        &self,
        columns: &[String],
        text_column: Option<&str>,
    ) -> Result<Selection, ClientError> {
        let index = |name: &str| {
            self.columns.iter().position(|c| c == name).ok_or_else(|| {
                ClientError::Input(format!(
                    "no column {name:?} in the input (columns: {})",
                    self.columns.join(", ")
                ))
            })
        };
        if let Some(t) = text_column {
            return Ok(Selection::Text(index(t)?));
        }
        if columns.is_empty() {
            if let Some(t) = self.columns.iter().position(|c| c == "text") {
                if self
                    .records
                    .iter()
                    .any(|r| matches!(r[t], Value::String(_)))
                {
                    return Ok(Selection::Text(t));
                }
            }
            return Ok(Selection::Features((0..self.columns.len()).collect()));
        }
        Ok(Selection::Features(
            columns.iter().map(|c| index(c)).collect::<Result<_, _>>()?,
        ))
    }

    /// The inputs of records `start..end`, as a job would carry them.
    pub fn inputs(&self, sel: &Selection, start: usize, end: usize) -> Result<Inputs, ClientError> {
        match sel {
            Selection::Text(c) => Ok(Inputs::Texts(
                self.records[start..end]
                    .iter()
                    .map(|r| match &r[*c] {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect(),
            )),
            Selection::Features(cols) => {
                let mut rows = Vec::with_capacity(end - start);
                for (i, r) in self.records[start..end].iter().enumerate() {
                    let mut row = Vec::with_capacity(cols.len());
                    for &c in cols {
                        let x = r[c].as_f64().ok_or_else(|| {
                            ClientError::Input(format!(
                                "row {}, column {:?}: {} is not a number (pick numeric columns with --columns, or texts with --text-column)",
                                start + i + 1,
                                self.columns[c],
                                r[c]
                            ))
                        })?;
                        row.push(x as f32);
                    }
                    rows.push(row);
                }
                Ok(Inputs::rows(&rows))
            }
        }
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
/// column holding a JSON array when the model names none) and an `error` column.
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
        Format::JsonLines => {
            for (rec, outcome) in table.records.iter().zip(outcomes) {
                let mut obj = Map::new();
                for (c, v) in table.columns.iter().zip(rec) {
                    obj.insert(c.clone(), v.clone());
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
    use super::*;

    #[test]
    fn csv_round_trip_keeps_order_and_adds_columns() {
        let t = read_table("a,b,name\n1,2,x\n3,4.5,y\n".as_bytes(), Format::Csv).unwrap();
        let sel = t.select(&["a".into(), "b".into()], None).unwrap();
        assert_eq!(
            t.inputs(&sel, 0, 2).unwrap(),
            Inputs::rows(&[vec![1.0, 2.0], vec![3.0, 4.5]])
        );
        let mut out = Vec::new();
        let outcomes = [
            RowOutcome::Scored(vec![0.25]),
            RowOutcome::Failed("invalid_input: bad".into()),
        ];
        write_table(&mut out, Format::Csv, &t, &["p".into()], &outcomes).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a,b,name,p,error\n1,2,x,0.25,\n3,4.5,y,,invalid_input: bad\n"
        );
    }

    #[test]
    fn non_numeric_features_are_named() {
        let t = read_table("a,b\n1,zz\n".as_bytes(), Format::Csv).unwrap();
        let sel = t.select(&[], None).unwrap();
        let err = t.inputs(&sel, 0, 1).unwrap_err().to_string();
        assert!(err.contains("row 1, column \"b\""), "{err}");
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
        let mut out = Vec::new();
        write_table(
            &mut out,
            Format::JsonLines,
            &t,
            &[],
            &[
                RowOutcome::Scored(vec![0.5, 0.5]),
                RowOutcome::Failed("x".into()),
            ],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"id\":1,\"text\":\"hello\",\"embedding\":[0.5,0.5]}\n{\"id\":2,\"text\":\"world\",\"error\":\"x\"}\n"
        );
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
