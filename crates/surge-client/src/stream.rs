//! Files of any length in bounded memory: rows are read incrementally and turned
//! into jobs ([`RowSource`], [`Encoder`]), and written back in input order as soon as
//! their jobs are answered ([`OutputWriter`]). The columns that are written back travel
//! with each job as the bytes of their output (a CSV line or the start of a JSON
//! object), so a job in flight holds about as much memory as its rows take in the
//! file, and nothing is kept once it is written.
//!
//! Which cells are sent, and under which names, is decided from the first rows (up to
//! [`SAMPLE_ROWS`]), which are all checked before anything is published. A later cell
//! that is not a number ends the run with an error naming its row and column.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use arrow_schema::DataType;

use csv::ByteRecord;
use serde_json::Value;
use surge_protocol::{Inputs, Rows};
use tokio::sync::mpsc;

use crate::parquet_io::{self, ParquetOut, ParquetRows};
use crate::table::{
    cell_from_csv, csv_cell, Cell, Format, JsonShape, ReadOptions, Selection, Table,
};
use crate::{job_outcome, ClientError, DoneJob, SourceJob};

/// Rows read before the run starts: they decide which columns are sent (by default,
/// those that hold a number) and are all checked before the first job is published.
pub const SAMPLE_ROWS: usize = 10_000;

/// A row as the file holds it.
enum Record {
    Csv(ByteRecord),
    Json(Vec<Value>),
}

enum Inner {
    Csv(csv::Reader<Box<dyn Read + Send>>),
    Parquet(ParquetRows),
    Json {
        lines: std::io::Lines<BufReader<Box<dyn Read + Send>>>,
        shape: JsonShape,
        line_no: usize,
    },
}

/// The rows of an input file, read incrementally; the first ones are read ahead.
pub struct RowSource {
    inner: Inner,
    ahead: VecDeque<Record>,
    exhausted: bool,
    /// Data rows read so far (the header not counted).
    rows_read: usize,
}

/// Opens `reader` as `format` and reads up to `sample` rows ahead: the returned table
/// holds those rows (to choose and check the columns, and for the output header), and
/// the source yields every row, those first.
pub fn open(
    reader: Box<dyn Read + Send>,
    format: Format,
    options: ReadOptions,
    sample: usize,
) -> Result<(Table, RowSource), ClientError> {
    let mut columns = Vec::new();
    let named;
    let inner = match format {
        Format::Csv => {
            let mut rdr = csv::ReaderBuilder::new()
                .has_headers(options.header)
                .from_reader(reader);
            if options.header {
                columns = rdr
                    .byte_headers()
                    .map_err(|e| ClientError::Input(format!("reading the CSV header: {e}")))?
                    .iter()
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .collect();
            }
            named = options.header;
            Inner::Csv(rdr)
        }
        Format::Parquet => {
            return Err(ClientError::Input(
                "Parquet input must be a file (it is read from its footer): use open_parquet"
                    .into(),
            ))
        }
        Format::JsonLines => {
            named = true;
            Inner::Json {
                lines: BufReader::new(reader).lines(),
                shape: JsonShape::default(),
                line_no: 0,
            }
        }
    };
    read_ahead(inner, columns, named, format, options, sample)
}

/// Opens the Parquet file at `path` as [`open`] does, and also returns the Arrow
/// type of each column.
pub fn open_parquet(
    path: &Path,
    sample: usize,
) -> Result<(Table, RowSource, Vec<DataType>), ClientError> {
    let (columns, types, rows) = parquet_io::open(path)?;
    let (table, src) = read_ahead(
        Inner::Parquet(rows),
        columns,
        true,
        Format::Parquet,
        ReadOptions::default(),
        sample,
    )?;
    Ok((table, src, types))
}

fn read_ahead(
    inner: Inner,
    columns: Vec<String>,
    named: bool,
    format: Format,
    options: ReadOptions,
    sample: usize,
) -> Result<(Table, RowSource), ClientError> {
    let mut src = RowSource {
        inner,
        ahead: VecDeque::new(),
        exhausted: false,
        rows_read: 0,
    };
    let mut records = Vec::new();
    while records.len() < sample.max(1) {
        let Some(rec) = src.read()? else { break };
        records.push(match &rec {
            Record::Csv(r) => r
                .iter()
                .map(|c| Value::String(String::from_utf8_lossy(c).into_owned()))
                .collect(),
            Record::Json(cells) => cells.clone(),
        });
        src.ahead.push_back(rec);
    }
    let mut table = Table {
        columns,
        records,
        named,
        format,
    };
    match &src.inner {
        Inner::Csv(_) if !options.header => {
            let n = table.records.first().map_or(0, Vec::len);
            table.columns = (1..=n).map(|j| format!("column_{j}")).collect();
        }
        Inner::Json { shape, .. } => {
            table.columns.clone_from(&shape.columns);
            table.named = shape.named;
        }
        Inner::Csv(_) | Inner::Parquet(_) => {}
    }
    Ok((table, src))
}

impl RowSource {
    /// True when the whole input was read ahead (its row count is known).
    pub fn exhausted(&self) -> bool {
        self.exhausted
    }

    /// Data rows read from the file so far.
    pub fn rows_read(&self) -> usize {
        self.rows_read
    }

    fn next(&mut self) -> Result<Option<Record>, ClientError> {
        match self.ahead.pop_front() {
            Some(r) => Ok(Some(r)),
            None => self.read(),
        }
    }

    fn read(&mut self) -> Result<Option<Record>, ClientError> {
        if self.exhausted {
            return Ok(None);
        }
        let rec = match &mut self.inner {
            Inner::Csv(rdr) => {
                let mut rec = ByteRecord::new();
                match rdr.read_byte_record(&mut rec) {
                    Ok(true) => Some(Record::Csv(rec)),
                    Ok(false) => None,
                    Err(e) => {
                        return Err(ClientError::Input(format!(
                            "CSV record {}: {e}",
                            self.rows_read + 1
                        )))
                    }
                }
            }
            Inner::Parquet(rows) => rows.next()?.map(Record::Json),
            Inner::Json {
                lines,
                shape,
                line_no,
            } => loop {
                let Some(line) = lines.next() else { break None };
                *line_no += 1;
                let line =
                    line.map_err(|e| ClientError::Input(format!("line {}: {e}", *line_no)))?;
                if let Some(cells) = shape.parse(*line_no, &line)? {
                    break Some(Record::Json(cells));
                }
            },
        };
        match rec {
            Some(r) => {
                self.rows_read += 1;
                Ok(Some(r))
            }
            None => {
                self.exhausted = true;
                Ok(None)
            }
        }
    }
}

/// The rows of one job as they will be written out: the bytes of the kept columns of
/// each row (a CSV line without its end, or a JSON object without its closing brace).
/// Rows with a cell that is not a finite number travel too (as zeros, so that the
/// job's rows keep their places) and are written with their own error instead of a
/// score: a bad cell fails its row, not the run.
#[derive(Debug, Default)]
pub struct RowBytes {
    bytes: Vec<u8>,
    ends: Vec<usize>,
    /// `(row in the job, why)` of each row with a bad cell, in row order.
    bad: Vec<(usize, String)>,
    /// For Parquet output: each row's kept cells as values (CSV cells as text), handed
    /// to the Parquet writer as they are; `bytes` is then empty.
    cells: Vec<Vec<Value>>,
}

impl RowBytes {
    fn row(&self, r: usize) -> &[u8] {
        let start = if r == 0 { 0 } else { self.ends[r - 1] };
        &self.bytes[start..self.ends[r]]
    }

    /// Why row `r` of the job was not sent as it is (a bad cell), if it was not.
    fn bad_row(&self, r: usize) -> Option<&str> {
        self.bad
            .binary_search_by_key(&r, |(i, _)| *i)
            .ok()
            .map(|i| self.bad[i].1.as_str())
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// About how much memory the kept cells of a Parquet output hold.
    fn cells_bytes(&self) -> usize {
        self.cells
            .iter()
            .map(|row| {
                row.len() * std::mem::size_of::<Value>()
                    + row
                        .iter()
                        .map(|v| match v {
                            Value::String(s) => s.capacity(),
                            _ => 0,
                        })
                        .sum::<usize>()
            })
            .sum()
    }

    /// True when no row is held.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

/// The `error` written for a row with a bad cell: the kind, as a worker would name it,
/// then the message that names the row and column.
fn invalid_input(why: &ClientError) -> String {
    match why {
        ClientError::Input(msg) => format!("{INVALID_INPUT}: {msg}"),
        other => format!("{INVALID_INPUT}: {other}"),
    }
}

/// The error kind of a row whose cell is not a finite number.
pub const INVALID_INPUT: &str = "invalid_input";

/// Writes `field` as a CSV field, quoted when it must be (as the `csv` crate does).
fn csv_field(out: &mut Vec<u8>, field: &[u8]) {
    if field
        .iter()
        .any(|&b| matches!(b, b',' | b'"' | b'\n' | b'\r'))
    {
        out.push(b'"');
        for &b in field {
            if b == b'"' {
                out.push(b'"');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(field);
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
    /// An encoder for rows like those of `table` (the sample [`open`] returned, with
    /// its names adopted), sending `selection`, writing columns `keep` as `out`.
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

/// Rows of answered jobs held back while the output columns are not yet known (no
/// job has scored yet), at most; past that, the outputs are written as one
/// `embedding` column.
const HOLD_ROWS: usize = 100_000;

/// Writes answered jobs, in the order given, with the output columns the first
/// scored job names.
pub struct OutputWriter<W: Write + Send> {
    out: Option<W>,
    parquet: Option<ParquetOut<W>>,
    format: Format,
    kept: Vec<String>,
    kept_types: Vec<DataType>,
    names: Option<Vec<String>>,
    held: Vec<DoneJob<RowBytes>>,
    held_rows: usize,
    line: Vec<u8>,
    written: Checkpoint,
    /// Rows of answered jobs written with a bad cell's error instead of their score.
    bad_rows: usize,
}

/// How much of the output is written: what a resumed run keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// Jobs written.
    pub jobs: usize,
    /// Rows written.
    pub rows: usize,
    /// Bytes written (header included).
    pub bytes: u64,
    /// The output columns, once the header is written.
    pub names: Option<Vec<String>>,
}

impl<W: Write + Send> OutputWriter<W> {
    /// A writer that continues an output of `format` already holding what `from`
    /// says (its header included): `out` must be positioned at its end. Not for
    /// Parquet, whose footer is written last.
    pub fn resumed(out: W, format: Format, kept: Vec<String>, from: Checkpoint) -> Self {
        let mut w = Self::new(out, format, kept);
        w.names = from.names.clone();
        w.written = from;
        w
    }

    /// Flushes what is written and says how much that is; `None` for Parquet, which
    /// cannot be resumed.
    pub fn checkpoint(&mut self) -> Result<Option<Checkpoint>, ClientError> {
        if self.format == Format::Parquet || self.names.is_none() {
            return Ok(None);
        }
        if let Some(out) = self.out.as_mut() {
            out.flush()
                .map_err(|e| ClientError::Output(e.to_string()))?;
        }
        Ok(Some(self.written.clone()))
    }

    /// A writer of `format` whose rows start with the columns named `kept`.
    pub fn new(out: W, format: Format, kept: Vec<String>) -> Self {
        let kept_types = vec![DataType::Utf8; kept.len()];
        Self {
            out: Some(out),
            parquet: None,
            format,
            kept,
            kept_types,
            names: None,
            held: Vec::new(),
            held_rows: 0,
            line: Vec::new(),
            written: Checkpoint::default(),
            bad_rows: 0,
        }
    }

    /// Rows of answered jobs written with their bad cell's error (kind
    /// [`INVALID_INPUT`]) instead of a score: the run counted them as scored.
    pub fn bad_rows(&self) -> usize {
        self.bad_rows
    }

    /// For Parquet output: the Arrow types of the kept columns in the input (`None`
    /// for a text input), which decide their types in the output.
    pub fn with_input_types(mut self, types: Option<Vec<DataType>>) -> Self {
        self.kept_types = match types {
            Some(t) => t.iter().map(|t| parquet_io::kept_type(Some(t))).collect(),
            None => vec![DataType::Utf8; self.kept.len()],
        };
        self
    }

    /// Writes one answered job (or holds it until the output columns are known).
    pub fn write(&mut self, done: DoneJob<RowBytes>) -> Result<(), ClientError> {
        if self.names.is_none() {
            if job_outcome(&done.job, &done.result).is_ok() {
                let dim = done.result.outputs.first().map_or(1, Vec::len);
                self.start(done.result.output_names.clone(), dim)?;
            } else {
                self.held_rows += done.payload.len();
                self.held.push(done);
                if self.held_rows > HOLD_ROWS {
                    self.start(Vec::new(), 1)?;
                }
                return Ok(());
            }
        }
        self.rows(done)
    }

    /// Writes what is held and flushes; returns the inner writer.
    pub fn finish(mut self) -> Result<W, ClientError> {
        if self.names.is_none() {
            self.start(Vec::new(), 1)?;
        }
        let io = |e: std::io::Error| ClientError::Output(e.to_string());
        let mut out = match (self.parquet.take(), self.out.take()) {
            (Some(p), _) => p.finish()?,
            (None, Some(out)) => out,
            (None, None) => return Err(ClientError::Output("the output was lost".into())),
        };
        out.flush().map_err(io)?;
        Ok(out)
    }

    fn start(&mut self, names: Vec<String>, dim: usize) -> Result<(), ClientError> {
        match self.format {
            Format::Csv => {
                let mut header = self.kept.clone();
                if names.is_empty() {
                    header.push("embedding".into());
                } else {
                    header.extend(names.iter().cloned());
                }
                header.push("error".into());
                let mut bytes = Vec::new();
                let mut w = csv::Writer::from_writer(&mut bytes);
                w.write_record(&header)
                    .map_err(|e| ClientError::Output(e.to_string()))?;
                w.flush().map_err(|e| ClientError::Output(e.to_string()))?;
                drop(w);
                self.out
                    .as_mut()
                    .ok_or_else(|| ClientError::Output("the output was lost".into()))?
                    .write_all(&bytes)
                    .map_err(|e| ClientError::Output(e.to_string()))?;
                self.written.bytes += bytes.len() as u64;
            }
            Format::Parquet => {
                let out = self
                    .out
                    .take()
                    .ok_or_else(|| ClientError::Output("the output was lost".into()))?;
                self.parquet = Some(ParquetOut::new(
                    out,
                    &self.kept,
                    self.kept_types.clone(),
                    names.clone(),
                    dim,
                )?);
            }
            Format::JsonLines => {}
        }
        self.names = Some(names.clone());
        self.written.names = Some(names);
        for done in std::mem::take(&mut self.held) {
            self.rows(done)?;
        }
        self.held_rows = 0;
        Ok(())
    }

    fn rows(&mut self, mut done: DoneJob<RowBytes>) -> Result<(), ClientError> {
        let mut cells = std::mem::take(&mut done.payload.cells);
        let outcome = job_outcome(&done.job, &done.result);
        let names = self.names.clone().unwrap_or_default();
        for r in 0..done.payload.len() {
            let bad = done.payload.bad_row(r);
            if bad.is_some() && outcome.is_ok() {
                self.bad_rows += 1;
            }
            let outputs = outcome
                .as_ref()
                .ok()
                .filter(|()| bad.is_none())
                .and_then(|()| done.result.outputs.get(r));
            let error = bad.or_else(|| outcome.as_ref().err().map(|(_, msg)| msg.as_str()));
            if let Some(pq) = self.parquet.as_mut() {
                let kept = cells.get_mut(r).map(std::mem::take).unwrap_or_default();
                pq.push(kept, outputs.map(Vec::as_slice), error)?;
                continue;
            }
            let mut line = std::mem::take(&mut self.line);
            line.clear();
            line.extend_from_slice(done.payload.row(r));
            self.row_tail(&mut line, &names, outputs.map(Vec::as_slice), error)?;
            self.out
                .as_mut()
                .ok_or_else(|| ClientError::Output("the output was lost".into()))?
                .write_all(&line)
                .map_err(|e| ClientError::Output(e.to_string()))?;
            self.written.bytes += line.len() as u64;
            self.line = line;
        }
        self.written.jobs += 1;
        self.written.rows += done.payload.len();
        Ok(())
    }

    fn row_tail(
        &self,
        line: &mut Vec<u8>,
        names: &[String],
        outputs: Option<&[f32]>,
        error: Option<&str>,
    ) -> Result<(), ClientError> {
        let json = |e: serde_json::Error| ClientError::Output(e.to_string());
        let embedding = names.is_empty();
        match self.format {
            Format::Csv => {
                let mut sep = !self.kept.is_empty();
                let mut field = |line: &mut Vec<u8>, bytes: &[u8]| {
                    if sep {
                        line.push(b',');
                    }
                    sep = true;
                    csv_field(line, bytes);
                };
                match outputs {
                    Some(values) if embedding => {
                        let text = serde_json::to_vec(values).map_err(json)?;
                        field(line, &text);
                    }
                    Some(values) => {
                        for v in values {
                            field(line, v.to_string().as_bytes());
                        }
                    }
                    None => {
                        for _ in 0..names.len().max(1) {
                            field(line, b"");
                        }
                    }
                }
                field(line, error.unwrap_or("").as_bytes());
                line.push(b'\n');
            }
            Format::JsonLines | Format::Parquet => {
                let mut sep = !self.kept.is_empty();
                let mut key = |line: &mut Vec<u8>, k: &str| -> Result<(), ClientError> {
                    if sep {
                        line.push(b',');
                    }
                    sep = true;
                    serde_json::to_writer(&mut *line, k).map_err(json)?;
                    line.push(b':');
                    Ok(())
                };
                match (outputs, error) {
                    (Some(values), _) if embedding => {
                        key(line, "embedding")?;
                        serde_json::to_writer(&mut *line, &Value::from(values.to_vec()))
                            .map_err(json)?;
                    }
                    (Some(values), _) => {
                        for (n, v) in names.iter().zip(values) {
                            key(line, n)?;
                            serde_json::to_writer(&mut *line, &Value::from(*v)).map_err(json)?;
                        }
                    }
                    (None, msg) => {
                        key(line, "error")?;
                        serde_json::to_writer(&mut *line, msg.unwrap_or("")).map_err(json)?;
                    }
                }
                line.extend_from_slice(b"}\n");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use surge_protocol::{ErrorKind, JobResult};

    use super::*;
    use crate::tracker::PlannedJob;

    fn run(input: &str, out: Format, keep: &[&str], per_job: usize) -> String {
        let (table, src) = open(
            Box::new(std::io::Cursor::new(input.as_bytes().to_vec())),
            Format::Csv,
            ReadOptions::default(),
            2,
        )
        .unwrap();
        let sel = table.select(&["b".to_string()], None).unwrap();
        let keep_names: Vec<String> = keep.iter().map(|s| s.to_string()).collect();
        let keep = table.keep(&keep_names).unwrap();
        let kept: Vec<String> = keep.iter().map(|&k| table.columns[k].clone()).collect();
        let enc = Encoder::new(table, sel, keep, out, per_job);
        let (tx, mut rx) = mpsc::channel(64);
        enc.run(src, tx);
        let mut w = OutputWriter::new(Vec::new(), out, kept);
        let mut start = 0;
        let mut k = 0;
        while let Ok(job) = rx.try_recv() {
            let job = job.unwrap();
            let n = job.inputs.len();
            let id = format!("r-{k}");
            let result = if k == 1 {
                JobResult::failure(&id, "m", ErrorKind::InvalidInput, "bad, \"x\"", "w")
            } else {
                let mut r = JobResult::failure(&id, "m", ErrorKind::Internal, "", "w");
                r.status = surge_protocol::Status::Ok;
                r.error = None;
                r.output_names = vec!["p".into()];
                r.outputs = (0..n).map(|i| vec![i as f32 + 0.5]).collect();
                r
            };
            let done = DoneJob {
                job: PlannedJob {
                    id,
                    start,
                    end: start + n,
                },
                payload: job.payload,
                result,
            };
            w.write(done).unwrap();
            start += n;
            k += 1;
        }
        String::from_utf8(w.finish().unwrap()).unwrap()
    }

    #[test]
    fn cells_come_back_byte_for_byte_with_keep_and_errors_quoted() {
        let input = "id,b,note\n007,1.50,\"a, b\"\nx,2,\"say \"\"hi\"\"\"\n9,3e0,\n";
        assert_eq!(
            run(input, Format::Csv, &[], 2),
            "id,b,note,p,error\n007,1.50,\"a, b\",0.5,\n\
             x,2,\"say \"\"hi\"\"\",1.5,\n\
             9,3e0,,,\"invalid_input: bad, \"\"x\"\"\"\n"
        );
        assert_eq!(
            run(input, Format::Csv, &["note", "id"], 2),
            "note,id,p,error\n\"a, b\",007,0.5,\n\
             \"say \"\"hi\"\"\",x,1.5,\n\
             ,9,,\"invalid_input: bad, \"\"x\"\"\"\n"
        );
        assert_eq!(
            run(input, Format::JsonLines, &["id"], 2),
            "{\"id\":7,\"p\":0.5}\n{\"id\":\"x\",\"p\":1.5}\n{\"id\":9,\"error\":\"invalid_input: bad, \\\"x\\\"\"}\n"
        );
    }

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
