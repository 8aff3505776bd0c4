//! Parquet in and out, a row group at a time.
//!
//! In: each record batch is turned into rows of JSON values (integers and floats as
//! numbers, strings as strings, nulls as null), so that choosing, checking and sending
//! the cells works as for JSON Lines: a null in a feature column fails its row, naming
//! its row and column. Out: the kept input columns (integers as Int64,
//! Float32 and Float64 as they were, booleans, anything else as text; CSV and JSON
//! Lines cells as text), then the outputs as Float32 columns (an embedding as one
//! `FixedSizeList<Float32>` column), then `error` (Utf8, null when the row scored).

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{FixedSizeListBuilder, Float32Builder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float32Array, Float64Array, Int64Array, RecordBatch,
};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde_json::Value;

use crate::ClientError;

/// Rows per record batch read.
const READ_BATCH: usize = 8192;
/// Rows per record batch written.
const WRITE_BATCH: usize = 8192;
/// Rows per row group written: what bounds the writer's memory.
const ROW_GROUP: usize = 65_536;

/// The rows of a Parquet file, a record batch at a time.
pub(crate) struct ParquetRows {
    reader: ParquetRecordBatchReader,
    pending: VecDeque<Vec<Value>>,
    /// Rows read from the file so far.
    read: usize,
    path: String,
}

/// A Parquet file opened for reading: its column names and types, and its rows.
pub(crate) fn open(path: &Path) -> Result<(Vec<String>, Vec<DataType>, ParquetRows), ClientError> {
    let shown = path.display().to_string();
    let file = File::open(path).map_err(|e| ClientError::Input(format!("opening {shown}: {e}")))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| {
        ClientError::Input(format!(
            "{shown} is not a readable Parquet file ({e}); check that it was written completely, or give --input-format for another format"
        ))
    })?;
    let schema = builder.schema().clone();
    let reader = builder
        .with_batch_size(READ_BATCH)
        .build()
        .map_err(|e| ClientError::Input(format!("{shown}: {e}")))?;
    let names = schema.fields().iter().map(|f| f.name().clone()).collect();
    let types = schema
        .fields()
        .iter()
        .map(|f| f.data_type().clone())
        .collect();
    Ok((
        names,
        types,
        ParquetRows {
            reader,
            pending: VecDeque::new(),
            read: 0,
            path: shown,
        },
    ))
}

impl ParquetRows {
    /// The next row, its cells in column order.
    pub(crate) fn next(&mut self) -> Result<Option<Vec<Value>>, ClientError> {
        while self.pending.is_empty() {
            match self.reader.next() {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(ClientError::Input(format!(
                        "{}: reading the rows after row {}: {e} (is the file damaged?)",
                        self.path, self.read
                    )))
                }
                Some(Ok(batch)) => self.pending = rows_of(&batch).into(),
            }
        }
        self.read += 1;
        Ok(self.pending.pop_front())
    }
}

/// A float as the shortest decimal that reads back as it, as a JSON value; not a
/// number (NaN, infinities) as its text, so that sending it is refused by name.
fn float(x: f64, shortest: String) -> Value {
    if !x.is_finite() {
        return Value::String(shortest);
    }
    shortest
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// The rows of `batch` as JSON values, built a column at a time.
fn rows_of(batch: &RecordBatch) -> Vec<Vec<Value>> {
    let n = batch.num_rows();
    let mut rows: Vec<Vec<Value>> = (0..n)
        .map(|_| Vec::with_capacity(batch.num_columns()))
        .collect();
    macro_rules! ints {
        ($col:expr, $t:ty) => {{
            let a = $col.as_primitive::<$t>();
            push_cells(&mut rows, a, |i| Value::from(a.value(i)));
        }};
    }
    for col in batch.columns() {
        match col.data_type() {
            DataType::Int8 => ints!(col, Int8Type),
            DataType::Int16 => ints!(col, Int16Type),
            DataType::Int32 => ints!(col, Int32Type),
            DataType::Int64 => ints!(col, Int64Type),
            DataType::UInt8 => ints!(col, UInt8Type),
            DataType::UInt16 => ints!(col, UInt16Type),
            DataType::UInt32 => ints!(col, UInt32Type),
            DataType::UInt64 => ints!(col, UInt64Type),
            DataType::Float32 => {
                let a = col.as_primitive::<Float32Type>();
                push_cells(&mut rows, a, |i| {
                    let x = a.value(i);
                    float(x as f64, x.to_string())
                });
            }
            DataType::Float64 => {
                let a = col.as_primitive::<Float64Type>();
                push_cells(&mut rows, a, |i| {
                    let x = a.value(i);
                    // A finite f64 is its own shortest decimal: no text round
                    // trip (formatting every cell was a quarter of the run's CPU).
                    serde_json::Number::from_f64(x)
                        .map_or_else(|| Value::String(x.to_string()), Value::Number)
                });
            }
            DataType::Boolean => {
                let a = col.as_boolean();
                push_cells(&mut rows, a, |i| Value::Bool(a.value(i)));
            }
            DataType::Utf8 => {
                let a = col.as_string::<i32>();
                push_cells(&mut rows, a, |i| Value::String(a.value(i).to_string()));
            }
            DataType::LargeUtf8 => {
                let a = col.as_string::<i64>();
                push_cells(&mut rows, a, |i| Value::String(a.value(i).to_string()));
            }
            DataType::Utf8View => {
                let a = col.as_string_view();
                push_cells(&mut rows, a, |i| Value::String(a.value(i).to_string()));
            }
            other => {
                let shown = Value::String(format!("<{other} value>"));
                push_cells(&mut rows, col, |_| shown.clone());
            }
        }
    }
    rows
}

/// Appends the cells of column `col` to `rows`, one per row: null where the column
/// holds a null, else `cell(i)` for row `i`.
fn push_cells<A: Array + ?Sized>(
    rows: &mut [Vec<Value>],
    col: &A,
    mut cell: impl FnMut(usize) -> Value,
) {
    for (i, row) in rows.iter_mut().enumerate() {
        row.push(if col.is_null(i) { Value::Null } else { cell(i) });
    }
}

/// True for the Arrow types a feature column may have.
pub fn is_numeric(t: &DataType) -> bool {
    t.is_integer() || matches!(t, DataType::Float32 | DataType::Float64)
}

/// The type a kept input column is written with.
pub(crate) fn kept_type(input: Option<&DataType>) -> DataType {
    match input {
        Some(t) if t.is_integer() => DataType::Int64,
        Some(DataType::Float32) => DataType::Float32,
        Some(DataType::Float64) => DataType::Float64,
        Some(DataType::Boolean) => DataType::Boolean,
        _ => DataType::Utf8,
    }
}

/// One row waiting to be written.
struct Row {
    kept: Vec<Value>,
    outputs: Option<Vec<f32>>,
    error: Option<String>,
}

/// Writes rows to a Parquet file, a batch at a time.
pub(crate) struct ParquetOut<W: Write + Send> {
    writer: ArrowWriter<W>,
    schema: Arc<Schema>,
    kept_types: Vec<DataType>,
    names: Vec<String>,
    dim: usize,
    rows: Vec<Row>,
}

fn out_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Output(e.to_string())
}

impl<W: Write + Send> ParquetOut<W> {
    /// A writer of the kept columns (`kept`, typed `kept_types`), then `names` (one
    /// Float32 column each) or, when none, an `embedding` of `dim` floats, then `error`.
    pub(crate) fn new(
        out: W,
        kept: &[String],
        kept_types: Vec<DataType>,
        names: Vec<String>,
        dim: usize,
    ) -> Result<Self, ClientError> {
        let mut fields: Vec<Field> = kept
            .iter()
            .zip(&kept_types)
            .map(|(n, t)| Field::new(n, t.clone(), true))
            .collect();
        if names.is_empty() {
            let item = Arc::new(Field::new("item", DataType::Float32, true));
            fields.push(Field::new(
                "embedding",
                DataType::FixedSizeList(item, dim.max(1) as i32),
                true,
            ));
        } else {
            fields.extend(names.iter().map(|n| Field::new(n, DataType::Float32, true)));
        }
        fields.push(Field::new("error", DataType::Utf8, true));
        let schema = Arc::new(Schema::new(fields));
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP))
            .build();
        let writer = ArrowWriter::try_new(out, schema.clone(), Some(props)).map_err(out_err)?;
        Ok(Self {
            writer,
            schema,
            kept_types,
            names,
            dim: dim.max(1),
            rows: Vec::with_capacity(WRITE_BATCH),
        })
    }

    /// Adds a row: its kept cells, and its outputs or its error.
    pub(crate) fn push(
        &mut self,
        kept: Vec<Value>,
        outputs: Option<&[f32]>,
        error: Option<&str>,
    ) -> Result<(), ClientError> {
        self.rows.push(Row {
            kept,
            outputs: outputs.map(<[f32]>::to_vec),
            error: error.map(str::to_string),
        });
        if self.rows.len() >= WRITE_BATCH {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn flush_batch(&mut self) -> Result<(), ClientError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.rows);
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for (j, t) in self.kept_types.iter().enumerate() {
            let cells = rows.iter().map(|r| r.kept.get(j).unwrap_or(&Value::Null));
            columns.push(match t {
                DataType::Int64 => Arc::new(cells.map(Value::as_i64).collect::<Int64Array>()),
                DataType::Float32 => Arc::new(
                    cells
                        .map(|v| v.as_f64().map(|x| x as f32))
                        .collect::<Float32Array>(),
                ),
                DataType::Float64 => Arc::new(cells.map(Value::as_f64).collect::<Float64Array>()),
                DataType::Boolean => Arc::new(cells.map(Value::as_bool).collect::<BooleanArray>()),
                _ => {
                    let mut b = StringBuilder::new();
                    for v in cells {
                        match v {
                            Value::Null => b.append_null(),
                            Value::String(s) => b.append_value(s),
                            other => b.append_value(other.to_string()),
                        }
                    }
                    Arc::new(b.finish())
                }
            });
        }
        if self.names.is_empty() {
            let mut b = FixedSizeListBuilder::new(Float32Builder::new(), self.dim as i32)
                .with_field(Arc::new(Field::new("item", DataType::Float32, true)));
            for r in &rows {
                match &r.outputs {
                    Some(v) if v.len() == self.dim => {
                        b.values().append_slice(v);
                        b.append(true);
                    }
                    _ => {
                        for _ in 0..self.dim {
                            b.values().append_null();
                        }
                        b.append(false);
                    }
                }
            }
            columns.push(Arc::new(b.finish()));
        } else {
            for k in 0..self.names.len() {
                let mut b = Float32Builder::with_capacity(rows.len());
                for r in &rows {
                    b.append_option(r.outputs.as_ref().and_then(|v| v.get(k).copied()));
                }
                columns.push(Arc::new(b.finish()));
            }
        }
        let mut b = StringBuilder::new();
        for r in &rows {
            b.append_option(r.error.as_deref());
        }
        columns.push(Arc::new(b.finish()));
        let batch = RecordBatch::try_new(self.schema.clone(), columns).map_err(out_err)?;
        self.writer.write(&batch).map_err(out_err)
    }

    /// Writes what is left and the file's footer; returns the inner writer.
    pub(crate) fn finish(mut self) -> Result<W, ClientError> {
        self.flush_batch()?;
        self.writer.into_inner().map_err(out_err)
    }
}
