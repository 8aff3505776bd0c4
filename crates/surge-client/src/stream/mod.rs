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

mod encoder;
mod source;
mod writer;

use serde_json::Value;

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

#[cfg(test)]
mod tests {
    use surge_protocol::{ErrorKind, JobResult};
    use tokio::sync::mpsc;

    use super::*;
    use crate::table::{Format, ReadOptions};
    use crate::tracker::PlannedJob;
    use crate::DoneJob;

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
            };
            w.write(done).unwrap();
            start += n;
            k += 1;
        }
        String::from_utf8(w.finish().unwrap()).unwrap()
    }
}
