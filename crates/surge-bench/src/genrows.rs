//! `surge-bench gen-rows`: a file of breast-cancer rows of any length for the
//! score-batch bench, written as it goes (CSV, or Parquet in row groups of 64 Ki rows):
//! `row_id`, then the 30 features of the shipped dataset's rows in turn; and
//! `surge-bench check-scores`, which checks score-batch's output of such a file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int64Type};
use arrow_array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

/// Writes `rows` rows to `out` (`.csv` or `.parquet`) from the CSV `data` (a header,
/// then 30 feature columns first).
pub fn gen_rows(data: &Path, out: &Path, rows: usize) -> Result<()> {
    let text =
        std::fs::read_to_string(data).with_context(|| format!("reading {}", data.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .context("empty dataset")?
        .split(',')
        .take(30)
        .collect();
    let base: Vec<Vec<&str>> = lines
        .filter(|l| !l.is_empty())
        .map(|l| l.split(',').take(30).collect())
        .collect();
    if base.is_empty() || header.len() < 30 {
        bail!("{} has no rows of 30 features", data.display());
    }
    let parquet = out.extension().is_some_and(|e| e == "parquet");
    if !parquet {
        let mut w = BufWriter::with_capacity(1 << 20, File::create(out)?);
        writeln!(w, "row_id,{}", header.join(","))?;
        for i in 0..rows {
            writeln!(w, "{i},{}", base[i % base.len()].join(","))?;
        }
        w.flush()?;
        return Ok(());
    }
    let mut fields = vec![Field::new("row_id", DataType::Int64, false)];
    fields.extend(
        header
            .iter()
            .map(|h| Field::new(*h, DataType::Float64, false)),
    );
    let schema = Arc::new(Schema::new(fields));
    let parsed: Vec<Vec<f64>> = base
        .iter()
        .map(|r| r.iter().map(|c| c.parse::<f64>()).collect::<Result<_, _>>())
        .collect::<Result<_, _>>()
        .context("a feature cell is not a number")?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut w = ArrowWriter::try_new(File::create(out)?, schema.clone(), Some(props))?;
    const GROUP: usize = 65_536;
    let mut start = 0;
    while start < rows {
        let end = (start + GROUP).min(rows);
        let mut cols: Vec<ArrayRef> = vec![Arc::new(Int64Array::from_iter_values(
            (start as i64)..(end as i64),
        ))];
        #[allow(clippy::needless_range_loop)] // j picks a column of every row
        for j in 0..30 {
            cols.push(Arc::new(Float64Array::from_iter_values(
                (start..end).map(|i| parsed[i % parsed.len()][j]),
            )));
        }
        w.write(&RecordBatch::try_new(schema.clone(), cols)?)?;
        w.flush()?;
        start = end;
    }
    w.close()?;
    Ok(())
}

/// Checks that `file`, score-batch's output of a `gen-rows` file of `rows` rows,
/// holds every row once, in order (`row_id` 0, 1, 2...), each with a score
/// (`malignant_probability`) and no error; prints what it checked.
pub fn check_scores(file: &Path, rows: usize) -> Result<()> {
    let parquet = file.extension().is_some_and(|e| e == "parquet");
    let mut seen = 0usize;
    let mut row = |id: i64, scored: bool, error: bool| -> Result<()> {
        if id != seen as i64 || !scored || error {
            bail!(
                "{}: row {seen} has row_id {id}, score present {scored}, error present {error}",
                file.display()
            );
        }
        seen += 1;
        Ok(())
    };
    if parquet {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            File::open(file)?,
        )?
        .build()?;
        for batch in reader {
            let batch = batch?;
            let col = |name: &str| {
                batch
                    .column_by_name(name)
                    .with_context(|| format!("no {name} column"))
            };
            let ids = col("row_id")?.as_primitive::<Int64Type>();
            let scores = col("malignant_probability")?.as_primitive::<Float32Type>();
            let errors = col("error")?;
            for i in 0..batch.num_rows() {
                row(ids.value(i), scores.is_valid(i), errors.is_valid(i))?;
            }
        }
    } else {
        let mut rdr = csv::Reader::from_path(file)?;
        let header = rdr.headers()?.clone();
        let at = |name: &str| {
            header
                .iter()
                .position(|h| h == name)
                .with_context(|| format!("no {name} column"))
        };
        let (id, score, error) = (at("row_id")?, at("malignant_probability")?, at("error")?);
        let mut rec = csv::ByteRecord::new();
        while rdr.read_byte_record(&mut rec)? {
            let id: i64 = std::str::from_utf8(&rec[id])?.parse()?;
            row(id, !rec[score].is_empty(), !rec[error].is_empty())?;
        }
    }
    if seen != rows {
        bail!("{}: {seen} rows, {rows} expected", file.display());
    }
    println!(
        "{}",
        serde_json::json!({"bench": "check_scores", "file": file.display().to_string(), "rows": seen, "ok": true})
    );
    Ok(())
}
