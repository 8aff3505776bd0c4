//! Writing answered jobs back out in input order ([`OutputWriter`]): each row's kept
//! columns as the encoder wrote them, then the outputs (one column each, or one
//! `embedding` column), then `error`; as CSV, JSON Lines, or Parquet row groups
//! (through [`crate::parquet_io`]). A [`Checkpoint`] says how much is written, for a
//! resumed run.

use std::io::Write;

use arrow_schema::DataType;
use serde_json::Value;

use super::{csv_field, RowBytes};
use crate::parquet_io::{self, ParquetOut};
use crate::table::Format;
use crate::{job_outcome, ClientError, DoneJob};

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
    /// [`INVALID_INPUT`](super::INVALID_INPUT)) instead of a score: the run counted them as scored.
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
                let unique = match self.format {
                    Format::Parquet => distinct_kept(&done.payload, self.kept.len()),
                    _ => Vec::new(),
                };
                self.start(done.result.output_names.clone(), dim, &unique)?;
            } else {
                self.held_rows += done.payload.len();
                self.held.push(done);
                if self.held_rows > HOLD_ROWS {
                    self.start(Vec::new(), 1, &[])?;
                }
                return Ok(());
            }
        }
        self.rows(done)
    }

    /// Writes what is held and flushes; returns the inner writer.
    pub fn finish(mut self) -> Result<W, ClientError> {
        if self.names.is_none() {
            self.start(Vec::new(), 1, &[])?;
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

    /// Writes the header (or opens the Parquet writer); `unique` marks the kept
    /// columns whose values in the first scored job were all distinct.
    fn start(
        &mut self,
        names: Vec<String>,
        dim: usize,
        unique: &[bool],
    ) -> Result<(), ClientError> {
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
                self.write_out(&bytes)?;
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
                    unique,
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
        let len = done.payload.len();
        let columnar = done.payload.columns.take().map(|(_, cols)| cols);
        let kept_whole = columnar.is_some();
        match (self.parquet.as_mut(), columnar) {
            (Some(pq), Some(cols)) => pq.push_kept_columns(cols),
            (None, Some(_)) => {
                return Err(ClientError::Output(
                    "columnar rows reached a writer that is not Parquet".into(),
                ))
            }
            (_, None) => {}
        }
        let outcome = job_outcome(&done.job, &done.result);
        let names = self.names.clone().unwrap_or_default();
        for r in 0..len {
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
                // None on the columnar path, whose kept columns came whole above.
                let kept =
                    (!kept_whole).then(|| cells.get_mut(r).map(std::mem::take).unwrap_or_default());
                pq.push(kept, outputs.map(Vec::as_slice), error);
                continue;
            }
            let mut line = std::mem::take(&mut self.line);
            line.clear();
            line.extend_from_slice(done.payload.row(r));
            self.row_tail(&mut line, &names, outputs.map(Vec::as_slice), error)?;
            self.write_out(&line)?;
            self.line = line;
        }
        if let Some(pq) = self.parquet.as_mut() {
            pq.end_job()?;
        }
        self.written.jobs += 1;
        self.written.rows += len;
        Ok(())
    }

    /// Writes `bytes` to the (CSV or JSON Lines) output and counts them.
    fn write_out(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.out
            .as_mut()
            .ok_or_else(|| ClientError::Output("the output was lost".into()))?
            .write_all(bytes)
            .map_err(|e| ClientError::Output(e.to_string()))?;
        self.written.bytes += bytes.len() as u64;
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
                let mut first = self.kept.is_empty();
                let mut sep = |line: &mut Vec<u8>| {
                    if !first {
                        line.push(b',');
                    }
                    first = false;
                };
                match outputs {
                    Some(values) if embedding => {
                        let text = serde_json::to_vec(values).map_err(json)?;
                        sep(line);
                        csv_field(line, &text);
                    }
                    Some(values) => {
                        // A number needs no quoting: written in place, no allocation.
                        for &v in values {
                            sep(line);
                            push_f32(line, v);
                        }
                    }
                    None => {
                        for _ in 0..names.len().max(1) {
                            sep(line);
                        }
                    }
                }
                sep(line);
                csv_field(line, error.unwrap_or("").as_bytes());
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

/// Rows a job must have for [`distinct_kept`] to judge its columns by it.
const DISTINCT_SAMPLE: usize = 64;

/// For each of the `kept` columns of a job's rows, true when all its values differ
/// (ids, timestamps): a Parquet dictionary of such a column repeats the column and
/// only costs (hashing every value was ~5% of score-batch's CPU on Parquet output).
/// False for every column of a job of fewer than [`DISTINCT_SAMPLE`] rows.
fn distinct_kept(payload: &RowBytes, kept: usize) -> Vec<bool> {
    let all_differ = |cells: &mut dyn Iterator<Item = String>| {
        let mut seen = std::collections::HashSet::new();
        for c in cells {
            if !seen.insert(c) {
                return false;
            }
        }
        true
    };
    if payload.len() < DISTINCT_SAMPLE {
        return vec![false; kept];
    }
    match &payload.columns {
        Some((_, cols)) => cols
            .iter()
            .map(|c| {
                let values = parquet_io::column_values(c.as_ref());
                all_differ(&mut values.iter().map(Value::to_string))
            })
            .collect(),
        None => (0..kept)
            .map(|k| {
                all_differ(
                    &mut payload
                        .cells
                        .iter()
                        .map(|row| row.get(k).map_or(String::new(), Value::to_string)),
                )
            })
            .collect(),
    }
}

/// Writes `v` as `Display` does (the shortest digits that read back as `v`, never an
/// exponent), through `ryu`: std's formatting was ~5% of score-batch's CPU on a CSV
/// of scores. Ryu writes `1.0` for `1` (trimmed here), and an exponent for very small
/// or large values (`3.2e-9`, written out here as `Display` does: a model's
/// probabilities near 0 are common). Where two digit strings are equally short and
/// equally near `v`, ryu may take the other one: both read back as `v`. Such ties
/// are rare below 1 (64 of the ~10^9 floats in (0, 1)) and common above 2^20, where
/// a float's last digits can fall on a half.
fn push_f32(line: &mut Vec<u8>, v: f32) {
    if !v.is_finite() {
        let _ = write!(line, "{v}");
        return;
    }
    let mut buf = ryu::Buffer::new();
    let s = buf.format_finite(v).as_bytes();
    let Some(e) = s.iter().position(|&b| b == b'e') else {
        line.extend_from_slice(s.strip_suffix(b".0").unwrap_or(s));
        return;
    };
    // `[-]d[.ddd]e[-]x`: the digits, and the power of ten of the first one.
    let (mantissa, exp) = (&s[..e], &s[e + 1..]);
    let (negative, mantissa) = match mantissa.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, mantissa),
    };
    let Some(exp) = std::str::from_utf8(exp)
        .ok()
        .and_then(|x| x.parse::<i32>().ok())
    else {
        let _ = write!(line, "{v}");
        return;
    };
    if negative {
        line.push(b'-');
    }
    // At most 9 significant digits for an f32.
    let mut held = [0u8; 16];
    let mut n = 0;
    for &b in mantissa.iter().filter(|&&b| b != b'.') {
        if let Some(d) = held.get_mut(n) {
            *d = b;
            n += 1;
        }
    }
    let digits = &held[..n];
    if exp < 0 {
        line.extend_from_slice(b"0.");
        line.extend(std::iter::repeat_n(b'0', exp.unsigned_abs() as usize - 1));
        line.extend_from_slice(digits);
    } else {
        let whole = exp as usize + 1;
        match digits.split_at_checked(whole) {
            Some((int, frac)) if !frac.is_empty() => {
                line.extend_from_slice(int);
                line.push(b'.');
                line.extend_from_slice(frac);
            }
            _ => {
                line.extend_from_slice(digits);
                line.extend(std::iter::repeat_n(
                    b'0',
                    whole.saturating_sub(digits.len()),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::push_f32;
    use crate::stream::tests::run;
    use crate::table::Format;

    #[test]
    fn scores_are_written_as_display_writes_them() {
        let mut next = crate::stream::tests::xorshift(0x2545_f491_4f6c_dd1d);
        let mut specials = vec![
            0.0f32,
            -0.0,
            1.0,
            -1.0,
            0.5,
            1e-5,
            1e-4,
            9.999e-5,
            1e15,
            1e16,
            1e17,
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-45,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            16_777_216.0,
            0.1,
            0.3,
        ];
        // Random bit patterns (every magnitude), and random scores in [0, 1].
        for _ in 0..400_000 {
            let seed = next();
            specials.push(f32::from_bits(seed as u32));
            specials.push((seed >> 40) as f32 / (1u64 << 24) as f32);
        }
        // 3065919.25 is a tie between 3065919.2 and 3065919.3: either is right.
        specials.push(f32::from_bits(0x4a3b_20fd));
        let mut line = Vec::new();
        for v in &specials {
            line.clear();
            push_f32(&mut line, *v);
            let (got, std) = (String::from_utf8_lossy(&line), format!("{v}"));
            if got == std {
                continue;
            }
            // A tie: as short as std's, no exponent, and read back as the same float.
            assert_eq!(got.len(), std.len(), "{std} written as {got}");
            assert!(!got.contains('e'), "{got}");
            assert_eq!(got.parse::<f32>().ok(), Some(*v), "{std} written as {got}");
        }
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
}
