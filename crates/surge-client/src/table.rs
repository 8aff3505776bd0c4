//! Reading input files into rows, and writing rows plus scores back out, in input
//! order. CSV or JSON Lines, chosen by extension (`.csv`, `.jsonl`/`.ndjson`/`.json`)
//! or explicitly; `-` is stdin/stdout.
//!
//! Which cells are sent, and under which names, is decided once for the whole file
//! ([`Table::select`]) and checked for every row before anything is published
//! ([`Table::inputs`]): a run never finds out at row 90,000 that a cell is not a
//! number. CSV cells are kept as the text the file holds, so that the columns that are
//! not sent come out exactly as they went in.

use std::io::{BufRead, Write};
use std::path::Path;

use serde_json::{Map, Value};
use surge_protocol::{Inputs, Rows};

use crate::ClientError;

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

/// What a cell holds, as far as sending it as a number goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Cell {
    /// A finite f32.
    Number(f32),
    /// Nothing: an empty CSV cell, JSON `null` or a missing key.
    Empty,
    /// Anything else: text, a boolean, a value beyond f32's range, NaN.
    Other,
}

impl Table {
    fn cell(&self, v: &Value) -> Cell {
        match v {
            Value::Null => Cell::Empty,
            Value::Number(n) => match n.as_f64() {
                Some(x) if (x as f32).is_finite() => Cell::Number(x as f32),
                _ => Cell::Other,
            },
            // Only CSV has numbers as text; a JSON string is a string.
            Value::String(s) if self.format == Format::Csv => csv_cell(s.as_bytes()),
            _ => Cell::Other,
        }
    }
}

/// A CSV cell, as far as sending it as a number goes.
pub(crate) fn csv_cell(bytes: &[u8]) -> Cell {
    let Ok(s) = std::str::from_utf8(bytes) else {
        return Cell::Other;
    };
    let t = s.trim();
    if t.is_empty() {
        return Cell::Empty;
    }
    // Parsed straight to f32 (correctly rounded), not through f64.
    match t.parse::<f32>() {
        Ok(x) if x.is_finite() => Cell::Number(x),
        _ => Cell::Other,
    }
}

/// A CSV cell as a JSON value, for JSON Lines output: integers stay integers (so ids
/// are written back as they were read), other numbers become numbers, the rest text.
pub(crate) fn cell_from_csv(s: &str) -> Value {
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

    /// The error for cell `v` of column `c` in row `row_no` (counted from 1, header
    /// not counted), which is not a finite number although `sel` sends it.
    pub(crate) fn cell_error(
        &self,
        sel: &Selection,
        row_no: usize,
        c: usize,
        v: &Value,
    ) -> ClientError {
        let why = match self.cell(v) {
            Cell::Empty => "is empty".to_string(),
            _ => format!("holds {}, which is not a finite number", show(v)),
        };
        let by_name = matches!(sel, Selection::Features { names: Some(_), .. });
        let fix = if self.named && by_name {
            format!(
                "fix the cell; or, if {:?} is not one of the model's features, leave it out (--columns lists the columns to send)",
                self.columns[c]
            )
        } else {
            "fix the cell".to_string()
        };
        ClientError::Input(format!(
            "row {row_no}, {} {why}: every value sent to the model must be a number; {fix}",
            self.describe_column(c),
        ))
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

    fn describe_column(&self, c: usize) -> String {
        if self.named {
            format!("column {:?}", self.columns[c])
        } else {
            format!("column {}", c + 1)
        }
    }

    /// How many of the records read hold a cell that `sel` sends and that is not a
    /// finite number.
    pub fn bad_rows(&self, sel: &Selection) -> usize {
        match sel {
            Selection::Text(_) => 0,
            Selection::Features { cols, .. } => self
                .records
                .iter()
                .filter(|r| {
                    cols.iter()
                        .any(|&c| !matches!(self.cell(&r[c]), Cell::Number(_)))
                })
                .count(),
        }
    }

    /// The inputs of records `start..end`, as a job would carry them. A cell that is
    /// not a finite number is an error naming its row (counted from 1, header not
    /// counted) and column.
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
            Selection::Features { cols, .. } => {
                let mut values = Vec::with_capacity((end - start) * cols.len());
                for (i, r) in self.records[start..end].iter().enumerate() {
                    for &c in cols {
                        if let Cell::Number(x) = self.cell(&r[c]) {
                            values.push(x);
                            continue;
                        }
                        return Err(self.cell_error(sel, start + i + 1, c, &r[c]));
                    }
                }
                Ok(Inputs::Rows(Rows::from_flat(values, cols.len())))
            }
        }
    }
}

/// A cell as quoted in an error message, cut short.
fn show(v: &Value) -> String {
    let s = match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    };
    if s.chars().count() > 40 {
        format!("{}...", s.chars().take(40).collect::<String>())
    } else {
        s
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
    use super::*;

    fn csv(text: &str) -> Table {
        read_table(text.as_bytes(), Format::Csv).unwrap()
    }

    fn features(sel: &Selection) -> (Vec<usize>, Option<Vec<String>>) {
        match sel {
            Selection::Features { cols, names } => (cols.clone(), names.clone()),
            other => panic!("{other:?}"),
        }
    }

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn csv_round_trip_keeps_order_and_adds_columns() {
        let t = csv("a,b,name\n1,2,x\n3,4.5,y\n");
        let sel = t.select(&strings(&["a", "b"]), None).unwrap();
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
        let mut out = Vec::new();
        let scored = [RowOutcome::Scored(vec![0.5]), RowOutcome::Scored(vec![1.0])];
        write_table(&mut out, Format::Csv, &t, &["p".into()], &scored).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "id,b,date,a,note,p,error\nx1,2.50,2024-01-01,1e3,,0.5,\nx2,-0,2024-01-02,7,,1,\n"
        );
        // To JSON Lines, numbers become numbers again.
        let mut out = Vec::new();
        write_table(&mut out, Format::JsonLines, &t, &["p".into()], &scored).unwrap();
        let first = String::from_utf8(out).unwrap();
        assert!(
            first.starts_with(
                r#"{"id":"x1","b":2.5,"date":"2024-01-01","a":1000.0,"note":"","p":0.5}"#
            ),
            "{first}"
        );
    }

    #[test]
    fn a_bad_cell_in_a_sent_column_is_named_before_anything_is_sent() {
        let t = csv("a,b\n1,2\n3,zz\n");
        let sel = t.select(&[], None).unwrap();
        let err = t.inputs(&sel, 0, 2).unwrap_err().to_string();
        assert!(
            err.contains("row 2, column \"b\" holds \"zz\", which is not a finite number"),
            "{err}"
        );
        assert!(err.contains("--columns"), "{err}");
        for (cell, why) in [
            ("", "is empty"),
            ("NaN", "not a finite number"),
            ("1e39", "not a finite number"),
        ] {
            let t = csv(&format!("a,b\n1,2\n3,{cell}\n"));
            let err = t
                .inputs(&t.select(&[], None).unwrap(), 0, 2)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("row 2, column \"b\"") && err.contains(why),
                "{err}"
            );
        }
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
