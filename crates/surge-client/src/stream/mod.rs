//! Files of any length in bounded memory: rows are read incrementally
//! ([`RowSource`], `source.rs`) and turned into jobs ([`Encoder`], `encoder.rs`), and
//! written back in input order as soon as their jobs are answered ([`OutputWriter`],
//! `writer.rs`). The columns that are written back travel with each job as the bytes
//! of their output ([`RowBytes`], here: a CSV line or the start of a JSON object), so
//! a job in flight holds about as much memory as its rows take in the file, and
//! nothing is kept once it is written.
//!
//! Which cells are sent, and under which names, is decided from the first rows (up to
//! [`SAMPLE_ROWS`]), which are all checked before anything is published. A later cell
//! that is not a number fails its row (written with an [`INVALID_INPUT`] error naming
//! its row and column), not the run.

mod background;
mod budget;
mod csv_reader;
mod encoder;
mod plain;
mod source;
mod writer;

use arrow_array::ArrayRef;
use serde_json::Value;

pub use background::Background;
pub use budget::ByteBudget;
pub use encoder::Encoder;
pub use source::{open, open_parquet, RowSource, SAMPLE_ROWS};
pub use writer::{Checkpoint, OutputWriter};

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
    /// On the columnar path (Parquet in and out): the job's rows, and its kept
    /// columns as slices of the input's arrays; `bytes`, `ends` and `cells` are then
    /// empty.
    columns: Option<(usize, Vec<ArrayRef>)>,
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
        match &self.columns {
            Some((n, _)) => *n,
            None => self.ends.len(),
        }
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
        self.len() == 0
    }
}

/// The error kind of a row whose cell is not a finite number.
pub const INVALID_INPUT: &str = "invalid_input";

/// True when `bytes` hold a byte that a CSV field must be quoted for.
fn needs_quoting(bytes: &[u8]) -> bool {
    memchr::memchr3(b',', b'"', b'\n', bytes).is_some() || memchr::memchr(b'\r', bytes).is_some()
}

/// Writes `field` as a CSV field, quoted when it must be (as the `csv` crate does).
fn csv_field(out: &mut Vec<u8>, field: &[u8]) {
    if needs_quoting(field) {
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

#[cfg(test)]
mod tests {
    use surge_protocol::{ErrorKind, JobResult};
    use tokio::sync::mpsc;

    use super::*;
    use crate::table::{Format, ReadOptions};
    use crate::tracker::PlannedJob;
    use crate::DoneJob;

    /// Cells of every kind the CSV fast paths tell apart: short decimals with and
    /// without signs and points, too long, too large, empty, two points, letters,
    /// exponents, NaN.
    pub(super) const CELLS: [&str; 31] = [
        "1",
        "-2.5",
        "+0.07871",
        ".5",
        "5.",
        "12345678",
        "16777216",
        "16777217",
        "99999999",
        "123456789",
        "1e3",
        "",
        " 7",
        "x",
        "1.2.3",
        "-",
        "+",
        ".",
        "-.",
        "0.000001",
        "99999.99",
        "-0",
        "-0.0",
        "0.1234567",
        "1234.5678",
        "7:",
        "/1",
        "+-1",
        "00000000",
        "-8",
        "NaN",
    ];

    /// A xorshift generator from `seed` (not zero): the random inputs of this
    /// module's tests, the same on every run.
    pub(super) fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        }
    }

    /// Runs the CSV `input` through [`open`], an [`Encoder`] sending column `b` and
    /// keeping `keep`, and an [`OutputWriter`] of `out`: every job scores but the
    /// second, which fails.
    pub(super) fn run(input: &str, out: Format, keep: &[&str], per_job: usize) -> String {
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
                bytes: job.bytes,
            };
            w.write(done).unwrap();
            start += n;
            k += 1;
        }
        String::from_utf8(w.finish().unwrap()).unwrap()
    }

    /// A Parquet file of `n` rows: `id` (Int32), `f1` (Float32, NaN at row 12,345),
    /// `f2` (Float64, null at row 9,000), `name` (Utf8View).
    fn parquet_input(path: &std::path::Path, n: usize) {
        use arrow_array::{Float32Array, Float64Array, Int32Array, RecordBatch, StringViewArray};
        use std::sync::Arc;
        let f1: Float32Array = (0..n)
            .map(|i| {
                Some(if i == 12_344 {
                    f32::NAN
                } else {
                    i as f32 * 0.25
                })
            })
            .collect();
        let f2: Float64Array = (0..n)
            .map(|i| (i != 8_999).then_some(i as f64 / 3.0))
            .collect();
        let batch = RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(Int32Array::from_iter_values(0..n as i32)) as ArrayRef,
            ),
            ("f1", Arc::new(f1) as ArrayRef),
            ("f2", Arc::new(f2) as ArrayRef),
            (
                "name",
                Arc::new(StringViewArray::from_iter_values(
                    (0..n).map(|i| format!("n{i}")),
                )),
            ),
            (
                "group",
                Arc::new(Int32Array::from_iter_values((0..n as i32).map(|i| i % 7))),
            ),
        ])
        .unwrap();
        let file = std::fs::File::create(path).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }

    /// Scores `path` (Parquet) to Parquet through an encoder on the columnar path
    /// (`columnar`) or the row path, every job scoring each row as the sum of its
    /// values; returns the jobs' inputs, their bad rows, and the output's bytes.
    fn parquet_run(
        path: &std::path::Path,
        columnar: bool,
    ) -> (Vec<surge_protocol::Inputs>, Vec<String>, Vec<u8>) {
        use surge_protocol::Inputs;
        let (table, src, types) = open_parquet(path, 100).unwrap();
        let sel = table.select(&["f1".into(), "f2".into()], None).unwrap();
        let keep = table.keep(&[]).unwrap();
        let kept: Vec<String> = keep.iter().map(|&k| table.columns[k].clone()).collect();
        let kept_types: Vec<_> = keep.iter().map(|&k| types[k].clone()).collect();
        let enc = Encoder::new(table, sel, keep, Format::Parquet, 300)
            .with_input_types(columnar.then_some(types.as_slice()));
        assert_eq!(enc.is_columnar(), columnar);
        let (tx, mut rx) = mpsc::channel(1000);
        enc.run(src, tx);
        let mut w =
            OutputWriter::new(Vec::new(), Format::Parquet, kept).with_input_types(Some(kept_types));
        let (mut inputs, mut bad, mut start) = (Vec::new(), Vec::new(), 0);
        let mut k = 0;
        while let Ok(job) = rx.try_recv() {
            let job = job.unwrap();
            let n = job.inputs.len();
            bad.extend(
                job.payload
                    .bad
                    .iter()
                    .map(|(r, why)| format!("{}: {why}", start + r)),
            );
            let Inputs::Rows(rows) = &job.inputs else {
                panic!("rows expected")
            };
            let id = format!("r-{k}");
            let mut r = JobResult::failure(&id, "m", ErrorKind::Internal, "", "w");
            r.status = surge_protocol::Status::Ok;
            r.error = None;
            r.output_names = vec!["p".into()];
            r.outputs = (0..n).map(|i| vec![rows.row(i).iter().sum()]).collect();
            inputs.push(job.inputs);
            let job_rows = PlannedJob {
                id,
                start,
                end: start + n,
            };
            w.write(DoneJob {
                job: job_rows,
                payload: job.payload,
                result: r,
                bytes: job.bytes,
            })
            .unwrap();
            start += n;
            k += 1;
        }
        (inputs, bad, w.finish().unwrap())
    }

    #[test]
    fn the_columnar_parquet_path_sends_and_writes_exactly_what_the_row_path_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.parquet");
        // 20,000 rows: jobs of 300 straddle the reader's batches of 8,192.
        parquet_input(&path, 20_000);
        let (rows_in, rows_bad, rows_out) = parquet_run(&path, false);
        let (cols_in, cols_bad, cols_out) = parquet_run(&path, true);
        assert_eq!(rows_in.len(), 67);
        assert_eq!(cols_in, rows_in, "the same jobs, value for value");
        let fix = |c: &str| {
            format!("every value sent to the model must be a number; fix the cell; or, if \"{c}\" is not one of the model's features, leave it out (--columns lists the columns to send)")
        };
        assert_eq!(
            cols_bad,
            vec![
                format!("8999: invalid_input: row 9000, column \"f2\" is empty: {}", fix("f2")),
                format!(
                    "12344: invalid_input: row 12345, column \"f1\" holds \"NaN\", which is not a finite number: {}",
                    fix("f1")
                ),
            ]
        );
        assert_eq!(cols_bad, rows_bad);
        assert_eq!(cols_out, rows_out, "byte-identical Parquet output");
        let written = dir.path().join("out.parquet");
        std::fs::write(&written, cols_out).unwrap();
        let out = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&written).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        let batches: Vec<_> = out.map(Result::unwrap).collect();
        let n: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(n, 20_000, "every row written once");
        let names: Vec<String> = batches[0]
            .schema()
            .fields()
            .iter()
            .map(|f| format!("{}:{}", f.name(), f.data_type()))
            .collect();
        assert_eq!(
            names,
            [
                "id:Int64",
                "f1:Float32",
                "f2:Float64",
                "name:Utf8",
                "group:Int64",
                "p:Float32",
                "error:Utf8"
            ]
        );
        // Columns whose values all differ (in the first job) are written plain, the
        // others with a dictionary, as usual.
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let meta = SerializedFileReader::new(std::fs::File::open(&written).unwrap())
            .unwrap()
            .metadata()
            .clone();
        let dictionary: Vec<(String, bool)> = meta
            .row_group(0)
            .columns()
            .iter()
            .map(|c| {
                let name = c.column_path().string();
                (name, c.dictionary_page_offset().is_some())
            })
            .filter(|(name, _)| ["id", "name", "group"].contains(&name.as_str()))
            .collect();
        assert_eq!(
            dictionary,
            [
                ("id".to_string(), false),
                ("name".to_string(), false),
                ("group".to_string(), true)
            ]
        );
    }
}
