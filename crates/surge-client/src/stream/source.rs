//! The rows of an input file, read incrementally ([`RowSource`]): CSV (as
//! `csv::ByteRecord`s, no per-cell allocation), JSON Lines, or Parquet (a record
//! batch at a time, through [`crate::parquet_io`]: as rows of values, or as batch
//! slices for the columnar path). The first rows (up to
//! [`SAMPLE_ROWS`]) are read ahead into a [`Table`], which decides the columns sent
//! and is checked before anything is published.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use arrow_array::RecordBatch;
use arrow_schema::DataType;
use serde_json::Value;

use super::csv_reader::{CsvError, CsvReader, CsvRecord, Next};
use crate::parquet_io::{self, ParquetRows};
use crate::table::{Format, JsonShape, ReadOptions, Table};
use crate::ClientError;

/// Rows read before the run starts: they decide which columns are sent (by default,
/// those that hold a number) and are all checked before the first job is published.
pub const SAMPLE_ROWS: usize = 10_000;

/// A row as the file holds it.
pub(super) enum Record {
    /// A CSV record: its cells as the file's bytes.
    Csv(CsvRecord),
    /// A JSON Lines or Parquet row: its cells as values, in column order.
    Json(Vec<Value>),
}

/// The reader under a [`RowSource`], by format.
enum Inner {
    Csv(Box<CsvReader>),
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
            let mut rdr = Box::new(CsvReader::new(reader));
            if options.header {
                let mut header = CsvRecord::default();
                rdr.read(&mut header)
                    .map_err(|e| ClientError::Input(format!("reading the CSV header: {e}")))?;
                columns = header
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
    if let Inner::Parquet(rows) = &mut src.inner {
        // Looked at, not taken: the batches stay queued for the columnar path.
        records = rows.peek(sample.max(1))?;
    }
    while records.len() < sample.max(1) && !matches!(src.inner, Inner::Parquet(_)) {
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
        match &self.inner {
            Inner::Parquet(rows) => self.rows_read == 0 && rows.all_read(),
            _ => self.exhausted,
        }
    }

    /// True for a Parquet input, whose rows can be taken a batch slice at a time
    /// ([`next_slice`](Self::next_slice)).
    pub(super) fn is_parquet(&self) -> bool {
        matches!(self.inner, Inner::Parquet(_))
    }

    /// The next rows of a Parquet input, at most `max`, as a slice of a record batch
    /// (fewer where a batch ends); `None` at the end, and for other formats. Not to
    /// be mixed with [`next`](Self::next).
    pub(super) fn next_slice(&mut self, max: usize) -> Result<Option<RecordBatch>, ClientError> {
        let Inner::Parquet(rows) = &mut self.inner else {
            return Ok(None);
        };
        let slice = rows.next_slice(max)?;
        if let Some(b) = &slice {
            self.rows_read += b.num_rows();
        }
        Ok(slice)
    }

    /// Data rows read from the file so far.
    pub fn rows_read(&self) -> usize {
        self.rows_read
    }

    /// The next row: a row read ahead, else one read from the file.
    pub(super) fn next(&mut self) -> Result<Option<Record>, ClientError> {
        match self.ahead.pop_front() {
            Some(r) => Ok(Some(r)),
            None => self.read(),
        }
    }

    /// Reads the next row into `slot` (a CSV record is read into the one `slot`
    /// holds, keeping its buffers); false at the end.
    pub(super) fn next_into(&mut self, slot: &mut Record) -> Result<bool, ClientError> {
        if let Some(r) = self.ahead.pop_front() {
            *slot = r;
            return Ok(true);
        }
        if let (Inner::Csv(rdr), Record::Csv(rec)) = (&mut self.inner, &mut *slot) {
            if self.exhausted {
                return Ok(false);
            }
            return match rdr.read(rec) {
                Ok(true) => {
                    self.rows_read += 1;
                    Ok(true)
                }
                Ok(false) => {
                    self.exhausted = true;
                    Ok(false)
                }
                Err(e) => Err(csv_error(self.rows_read, &e)),
            };
        }
        match self.read()? {
            Some(r) => {
                *slot = r;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// True when the next row comes straight from a CSV reader (no row read ahead is
    /// left): [`next_csv`](Self::next_csv) may be used.
    pub(super) fn reads_csv_directly(&self) -> bool {
        self.ahead.is_empty() && matches!(self.inner, Inner::Csv(_))
    }

    /// The next CSV row, for a caller that reads plain lines itself (see
    /// [`CsvReader::read_next`]); the field count of a plain line is the caller's to
    /// check ([`check_csv_fields`](Self::check_csv_fields)). Only once
    /// [`reads_csv_directly`](Self::reads_csv_directly).
    pub(super) fn next_csv<'a>(&'a mut self, rec: &mut CsvRecord) -> Result<Next<'a>, ClientError> {
        let Inner::Csv(rdr) = &mut self.inner else {
            return Err(ClientError::Input("not a CSV input".into()));
        };
        if self.exhausted {
            return Ok(Next::End);
        }
        match rdr.read_next(rec) {
            Ok(Next::End) => {
                self.exhausted = true;
                Ok(Next::End)
            }
            Ok(next) => {
                self.rows_read += 1;
                Ok(next)
            }
            Err(e) => Err(csv_error(self.rows_read, &e)),
        }
    }

    /// Checks the field count (`found`) of the plain line on `line` that
    /// [`next_csv`](Self::next_csv) just gave, as a record read whole is checked.
    pub(super) fn check_csv_fields(&mut self, found: usize, line: u64) -> Result<(), ClientError> {
        let Inner::Csv(rdr) = &mut self.inner else {
            return Ok(());
        };
        rdr.check_fields(found, line)
            .map_err(|e| csv_error(self.rows_read.saturating_sub(1), &e))
    }

    fn read(&mut self) -> Result<Option<Record>, ClientError> {
        if self.exhausted {
            return Ok(None);
        }
        let rec = match &mut self.inner {
            Inner::Csv(rdr) => {
                let mut rec = CsvRecord::default();
                match rdr.read(&mut rec) {
                    Ok(true) => Some(Record::Csv(rec)),
                    Ok(false) => None,
                    Err(e) => return Err(csv_error(self.rows_read, &e)),
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

/// The error for a CSV record that cannot be read, after `rows_read` rows.
fn csv_error(rows_read: usize, e: &CsvError) -> ClientError {
    ClientError::Input(format!("CSV record {}: {e}", rows_read + 1))
}
