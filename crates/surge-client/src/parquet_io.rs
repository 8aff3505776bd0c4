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
    Array, ArrayRef, BooleanArray, Float32Array, Float64Array, Int64Array, LargeStringArray,
    PrimitiveArray, RecordBatch, StringArray, StringViewArray,
};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::{ArrowSchemaConverter, ArrowWriter};
use parquet::basic::{Compression, Type as PhysicalType};
use parquet::file::properties::WriterProperties;
use serde_json::Value;

use crate::ClientError;

/// Rows per record batch read.
const READ_BATCH: usize = 8192;
/// Rows per record batch written.
const WRITE_BATCH: usize = 8192;
/// Rows per row group written: what bounds the writer's memory.
const ROW_GROUP: usize = 65_536;

/// The rows of a Parquet file, a record batch at a time: handed on as rows of values
/// ([`ParquetRows::next`]) or as slices of record batches ([`ParquetRows::next_slice`],
/// the columnar path, which never turns a cell into a value).
pub(crate) struct ParquetRows {
    reader: ParquetRecordBatchReader,
    /// Batches read and not yet handed on: rows `pos..` of the front one come next.
    queue: VecDeque<RecordBatch>,
    pos: usize,
    /// The rest of a batch as values, while rows are taken one at a time.
    pending: VecDeque<Vec<Value>>,
    /// True once the reader has given its last batch.
    ended: bool,
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
            queue: VecDeque::new(),
            pos: 0,
            pending: VecDeque::new(),
            ended: false,
            read: 0,
            path: shown,
        },
    ))
}

impl ParquetRows {
    /// Reads one more batch into the queue; false at the end of the file.
    fn read_batch(&mut self) -> Result<bool, ClientError> {
        if self.ended {
            return Ok(false);
        }
        match self.reader.next() {
            None => {
                self.ended = true;
                Ok(false)
            }
            Some(Err(e)) => Err(ClientError::Input(format!(
                "{}: reading the rows after row {}: {e} (is the file damaged?)",
                self.path, self.read
            ))),
            Some(Ok(batch)) => {
                self.read += batch.num_rows();
                self.queue.push_back(batch);
                Ok(true)
            }
        }
    }

    /// The first `n` rows not yet handed on, as values, without handing them on
    /// (the sample that decides the columns); fewer when the file has fewer.
    pub(crate) fn peek(&mut self, n: usize) -> Result<Vec<Vec<Value>>, ClientError> {
        let mut rows: Vec<Vec<Value>> = self.pending.iter().take(n).cloned().collect();
        let mut k = 0;
        let mut pos = self.pos;
        while rows.len() < n {
            if k == self.queue.len() && !self.read_batch()? {
                break;
            }
            let b = &self.queue[k];
            let take = (b.num_rows() - pos).min(n - rows.len());
            rows.extend(rows_of(&b.slice(pos, take)));
            k += 1;
            pos = 0;
        }
        Ok(rows)
    }

    /// True when every row of the file is read (none is left in the reader).
    pub(crate) fn all_read(&self) -> bool {
        self.ended
    }

    /// The next row, its cells in column order.
    pub(crate) fn next(&mut self) -> Result<Option<Vec<Value>>, ClientError> {
        if self.pending.is_empty() {
            let Some(batch) = self.next_slice(usize::MAX)? else {
                return Ok(None);
            };
            self.pending = rows_of(&batch).into();
        }
        Ok(self.pending.pop_front())
    }

    /// The next rows, at most `max` of them, as a slice of the batch they were read
    /// in (fewer than `max` where that batch ends); `None` at the end of the file.
    /// Not to be mixed with [`next`](Self::next) within a run.
    pub(crate) fn next_slice(&mut self, max: usize) -> Result<Option<RecordBatch>, ClientError> {
        debug_assert!(self.pending.is_empty(), "rows and slices mixed");
        loop {
            match self.queue.front() {
                Some(b) if self.pos < b.num_rows() => {
                    let take = (b.num_rows() - self.pos).min(max.max(1));
                    let slice = b.slice(self.pos, take);
                    self.pos += take;
                    return Ok(Some(slice));
                }
                Some(_) => {
                    self.queue.pop_front();
                    self.pos = 0;
                }
                None => {
                    if !self.read_batch()? {
                        return Ok(None);
                    }
                }
            }
        }
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
    for col in batch.columns() {
        for (row, cell) in rows.iter_mut().zip(column_values(col.as_ref())) {
            row.push(cell);
        }
    }
    rows
}

/// Cell `i` of `col` as the row path sees it (what an error about it shows).
pub(crate) fn cell_value(col: &dyn Array, i: usize) -> Value {
    column_values(col.slice(i, 1).as_ref())
        .pop()
        .unwrap_or(Value::Null)
}

/// The cells of `col` as JSON values: null where it holds a null; integers and
/// floats as numbers (a float that is not finite as its text, so that sending it is
/// refused by name); strings and booleans as themselves; anything else as
/// `<type value>`.
pub(crate) fn column_values(col: &dyn Array) -> Vec<Value> {
    macro_rules! cells {
        ($a:expr, $cell:expr) => {{
            let a = $a;
            (0..a.len())
                .map(|i| {
                    if a.is_null(i) {
                        Value::Null
                    } else {
                        $cell(a, i)
                    }
                })
                .collect()
        }};
    }
    macro_rules! ints {
        ($t:ty) => {
            cells!(col.as_primitive::<$t>(), |a: &PrimitiveArray<$t>, i| {
                Value::from(a.value(i))
            })
        };
    }
    match col.data_type() {
        DataType::Int8 => ints!(Int8Type),
        DataType::Int16 => ints!(Int16Type),
        DataType::Int32 => ints!(Int32Type),
        DataType::Int64 => ints!(Int64Type),
        DataType::UInt8 => ints!(UInt8Type),
        DataType::UInt16 => ints!(UInt16Type),
        DataType::UInt32 => ints!(UInt32Type),
        DataType::UInt64 => ints!(UInt64Type),
        DataType::Float32 => cells!(
            col.as_primitive::<Float32Type>(),
            |a: &PrimitiveArray<Float32Type>, i| {
                let x = a.value(i);
                float(x as f64, x.to_string())
            }
        ),
        // A finite f64 is its own shortest decimal: no text round trip (formatting
        // every cell was a quarter of the run's CPU).
        DataType::Float64 => cells!(
            col.as_primitive::<Float64Type>(),
            |a: &PrimitiveArray<Float64Type>, i| {
                let x = a.value(i);
                serde_json::Number::from_f64(x)
                    .map_or_else(|| Value::String(x.to_string()), Value::Number)
            }
        ),
        DataType::Boolean => cells!(col.as_boolean(), |a: &BooleanArray, i| Value::Bool(
            a.value(i)
        )),
        DataType::Utf8 => cells!(col.as_string::<i32>(), |a: &StringArray, i| {
            Value::String(a.value(i).to_string())
        }),
        DataType::LargeUtf8 => cells!(col.as_string::<i64>(), |a: &LargeStringArray, i| {
            Value::String(a.value(i).to_string())
        }),
        DataType::Utf8View => cells!(col.as_string_view(), |a: &StringViewArray, i| {
            Value::String(a.value(i).to_string())
        }),
        other => {
            let shown = Value::String(format!("<{other} value>"));
            cells!(col, |_, _| shown.clone())
        }
    }
}

/// Writes the cells of feature column `col` into `values` (rows of `width` floats)
/// at position `j` of each row, read as the row path reads them (an integer through
/// f64, a Float64 rounded to f32); calls `bad(i)` for row `i` instead where the cell
/// is null or not a finite f32. False when `col` is not a numeric column.
pub(crate) fn scatter_features(
    col: &dyn Array,
    j: usize,
    width: usize,
    values: &mut [f32],
    mut bad: impl FnMut(usize),
) -> bool {
    macro_rules! scatter {
        ($t:ty, $conv:expr) => {{
            let a = col.as_primitive::<$t>();
            let nulls = a.null_count() > 0;
            for (i, &x) in a.values().iter().enumerate() {
                let v: f32 = $conv(x);
                if (nulls && a.is_null(i)) || !v.is_finite() {
                    bad(i);
                } else if let Some(slot) = values.get_mut(i * width + j) {
                    *slot = v;
                }
            }
        }};
    }
    match col.data_type() {
        DataType::Int8 => scatter!(Int8Type, |x: i8| x as f32),
        DataType::Int16 => scatter!(Int16Type, |x: i16| x as f32),
        DataType::Int32 => scatter!(Int32Type, |x: i32| x as f64 as f32),
        DataType::Int64 => scatter!(Int64Type, |x: i64| x as f64 as f32),
        DataType::UInt8 => scatter!(UInt8Type, |x: u8| x as f32),
        DataType::UInt16 => scatter!(UInt16Type, |x: u16| x as f32),
        DataType::UInt32 => scatter!(UInt32Type, |x: u32| x as f64 as f32),
        DataType::UInt64 => scatter!(UInt64Type, |x: u64| x as f64 as f32),
        DataType::Float32 => scatter!(Float32Type, |x: f32| x),
        DataType::Float64 => scatter!(Float64Type, |x: f64| x as f32),
        _ => return false,
    }
    true
}

/// True for the Arrow types a kept column may have on the columnar path (the
/// others are written as text through the row path).
pub(crate) fn keeps_columnar(t: &DataType) -> bool {
    t.is_integer()
        || matches!(
            t,
            DataType::Float32
                | DataType::Float64
                | DataType::Boolean
                | DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
        )
}

/// Kept column `col` as the output writes it (`kept_type` of its type): integers
/// as Int64 (a UInt64 past i64's range as null, as on the row path), text as Utf8,
/// floats and booleans as they are.
fn kept_array(col: &ArrayRef, t: &DataType) -> ArrayRef {
    macro_rules! int64 {
        ($t:ty) => {
            Arc::new(
                col.as_primitive::<$t>()
                    .iter()
                    .map(|v| v.and_then(|x| i64::try_from(x).ok()))
                    .collect::<Int64Array>(),
            ) as ArrayRef
        };
    }
    match (col.data_type(), t) {
        (a, b) if a == b => col.clone(),
        (DataType::Int8, _) => int64!(Int8Type),
        (DataType::Int16, _) => int64!(Int16Type),
        (DataType::Int32, _) => int64!(Int32Type),
        (DataType::UInt8, _) => int64!(UInt8Type),
        (DataType::UInt16, _) => int64!(UInt16Type),
        (DataType::UInt32, _) => int64!(UInt32Type),
        (DataType::UInt64, _) => int64!(UInt64Type),
        (DataType::LargeUtf8, _) => {
            Arc::new(col.as_string::<i64>().iter().collect::<StringArray>())
        }
        (DataType::Utf8View, _) => Arc::new(col.as_string_view().iter().collect::<StringArray>()),
        // Not reached: `keeps_columnar` admits no other type (were one let through, the
        // written batch would be refused for its type, not silently converted).
        _ => col.clone(),
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

/// The outputs of the rows waiting to be written, built as they come.
enum OutputCols {
    /// One Float32 column per output name.
    Named(Vec<Float32Builder>),
    /// One `embedding` column of `dim` floats.
    Embedding(FixedSizeListBuilder<Float32Builder>, usize),
}

/// Writes rows to a Parquet file, a batch at a time: the kept cells of each row
/// (as values, or as slices of the input's columns on the columnar path), its
/// outputs, its error.
pub(crate) struct ParquetOut<W: Write + Send> {
    writer: ArrowWriter<W>,
    schema: Arc<Schema>,
    kept_types: Vec<DataType>,
    /// Kept cells of rows pushed one at a time.
    kept_rows: Vec<Vec<Value>>,
    /// Kept columns of rows pushed a job at a time: one list of arrays per column.
    kept_arrays: Vec<Vec<ArrayRef>>,
    outputs: OutputCols,
    errors: StringBuilder,
    /// Rows waiting.
    rows: usize,
}

fn out_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Output(e.to_string())
}

fn embedding_builder(dim: usize) -> FixedSizeListBuilder<Float32Builder> {
    FixedSizeListBuilder::new(Float32Builder::new(), dim as i32).with_field(Arc::new(Field::new(
        "item",
        DataType::Float32,
        true,
    )))
}

impl<W: Write + Send> ParquetOut<W> {
    /// A writer of the kept columns (`kept`, typed `kept_types`), then `names` (one
    /// Float32 column each) or, when none, an `embedding` of `dim` floats, then `error`.
    /// The kept columns marked in `unique` (values seen all distinct) are written
    /// without a dictionary.
    pub(crate) fn new(
        out: W,
        kept: &[String],
        kept_types: Vec<DataType>,
        names: Vec<String>,
        dim: usize,
        unique: &[bool],
    ) -> Result<Self, ClientError> {
        let dim = dim.max(1);
        let mut fields: Vec<Field> = kept
            .iter()
            .zip(&kept_types)
            .map(|(n, t)| Field::new(n, t.clone(), true))
            .collect();
        let outputs = if names.is_empty() {
            let item = Arc::new(Field::new("item", DataType::Float32, true));
            fields.push(Field::new(
                "embedding",
                DataType::FixedSizeList(item, dim as i32),
                true,
            ));
            OutputCols::Embedding(embedding_builder(dim), dim)
        } else {
            fields.extend(names.iter().map(|n| Field::new(n, DataType::Float32, true)));
            OutputCols::Named(names.iter().map(|_| Float32Builder::new()).collect())
        };
        fields.push(Field::new("error", DataType::Utf8, true));
        let schema = Arc::new(Schema::new(fields));
        let mut props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP));
        // Floats (features carried through, scores, embeddings) are written plain:
        // hashing every value into a dictionary took ~20% of score-batch's CPU on
        // Parquet output, and measured values rarely repeat. Other columns (text,
        // ids, errors) keep the default dictionary.
        let leaves = ArrowSchemaConverter::new()
            .convert(&schema)
            .map_err(out_err)?;
        let unique_name = |parts: &[String]| {
            kept.iter()
                .zip(unique)
                .any(|(name, &u)| u && parts.len() == 1 && parts[0] == *name)
        };
        for col in leaves.columns() {
            if matches!(
                col.physical_type(),
                PhysicalType::FLOAT | PhysicalType::DOUBLE
            ) || unique_name(col.path().parts())
            {
                props = props.set_column_dictionary_enabled(col.path().clone(), false);
            }
        }
        let props = props.build();
        let writer = ArrowWriter::try_new(out, schema.clone(), Some(props)).map_err(out_err)?;
        Ok(Self {
            writer,
            schema,
            kept_arrays: vec![Vec::new(); kept_types.len()],
            kept_types,
            kept_rows: Vec::new(),
            outputs,
            errors: StringBuilder::new(),
            rows: 0,
        })
    }

    /// Adds the kept columns of the next rows (one array per kept column, each as
    /// long as the rows then pushed with [`push`](Self::push) and `kept: None`).
    pub(crate) fn push_kept_columns(&mut self, columns: Vec<ArrayRef>) {
        for (list, col) in self.kept_arrays.iter_mut().zip(columns) {
            list.push(col);
        }
    }

    /// Adds a row: its kept cells (`None` when they came with
    /// [`push_kept_columns`](Self::push_kept_columns)), and its outputs or its error.
    pub(crate) fn push(
        &mut self,
        kept: Option<Vec<Value>>,
        outputs: Option<&[f32]>,
        error: Option<&str>,
    ) {
        if let Some(kept) = kept {
            self.kept_rows.push(kept);
        }
        match &mut self.outputs {
            OutputCols::Named(cols) => {
                for (k, b) in cols.iter_mut().enumerate() {
                    b.append_option(outputs.and_then(|v| v.get(k).copied()));
                }
            }
            OutputCols::Embedding(b, dim) => match outputs {
                Some(v) if v.len() == *dim => {
                    b.values().append_slice(v);
                    b.append(true);
                }
                _ => {
                    b.values().append_nulls(*dim);
                    b.append(false);
                }
            },
        }
        self.errors.append_option(error);
        self.rows += 1;
    }

    /// Writes the rows waiting once they make a batch: called between jobs, so that
    /// a batch never cuts the kept columns of a job.
    pub(crate) fn end_job(&mut self) -> Result<(), ClientError> {
        if self.rows >= WRITE_BATCH {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn flush_batch(&mut self) -> Result<(), ClientError> {
        if self.rows == 0 {
            return Ok(());
        }
        self.rows = 0;
        let rows = std::mem::take(&mut self.kept_rows);
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for (j, t) in self.kept_types.iter().enumerate() {
            let arrays = std::mem::take(&mut self.kept_arrays[j]);
            if !arrays.is_empty() {
                let parts: Vec<ArrayRef> = arrays.iter().map(|a| kept_array(a, t)).collect();
                let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
                columns.push(arrow_select::concat::concat(&refs).map_err(out_err)?);
                continue;
            }
            let cells = rows.iter().map(|r| r.get(j).unwrap_or(&Value::Null));
            columns.push(match t {
                DataType::Int64 => Arc::new(cells.map(Value::as_i64).collect::<Int64Array>()),
                DataType::Float32 => Arc::new(
                    cells
                        .map(|v| float_of(v).map(|x| x as f32))
                        .collect::<Float32Array>(),
                ),
                DataType::Float64 => Arc::new(cells.map(float_of).collect::<Float64Array>()),
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
        match &mut self.outputs {
            OutputCols::Named(cols) => {
                columns.extend(cols.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
            }
            OutputCols::Embedding(b, _) => columns.push(Arc::new(b.finish())),
        }
        columns.push(Arc::new(self.errors.finish()));
        let batch = RecordBatch::try_new(self.schema.clone(), columns).map_err(out_err)?;
        self.writer.write(&batch).map_err(out_err)
    }

    /// Writes what is left and the file's footer; returns the inner writer.
    pub(crate) fn finish(mut self) -> Result<W, ClientError> {
        self.flush_batch()?;
        self.writer.into_inner().map_err(out_err)
    }
}

/// A kept float cell: a number, or a float that is not finite (kept as its text by
/// the reader: "NaN", "inf", "-inf").
fn float_of(v: &Value) -> Option<f64> {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.parse::<f64>().ok()))
}
