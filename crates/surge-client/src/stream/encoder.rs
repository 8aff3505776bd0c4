//! Turning rows into jobs ([`Encoder`]): the selected cells sent (packed numbers, or
//! texts), and the kept columns as the bytes they will be written as ([`RowBytes`]).
//! A cell that is not a finite number fails its row, not the run: the row goes out
//! as zeros and carries its error to the writer.

use arrow_schema::DataType;
use arrow_select::concat::concat_batches;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use surge_protocol::{Inputs, Rows};
use tokio::sync::mpsc;

use super::background::Background;
use super::budget::ByteBudget;
use super::csv_reader::{CsvRecord, Next};
use super::plain::{PlainSlots, NOT_SENT};
use super::source::{Record, RowSource};
use super::{csv_field, RowBytes, INVALID_INPUT};
use crate::parquet_io;
use crate::table::{cell_from_csv, csv_cell, Cell, Format, Selection, Table};
use crate::{ClientError, SourceJob};

/// How long the reading thread waits for room in its budget before it looks whether
/// the run has stopped.
const BUDGET_POLL: Duration = Duration::from_millis(100);

/// The `error` written for a row with a bad cell: the kind, as a worker would name it,
/// then the message that names the row and column.
fn invalid_input(why: &ClientError) -> String {
    match why {
        ClientError::Input(msg) => format!("{INVALID_INPUT}: {msg}"),
        other => format!("{INVALID_INPUT}: {other}"),
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
    /// True when the columns kept are all of them, in order.
    keeps_all: bool,
    /// Rows to read past before the first job (written by the run resumed).
    skip: usize,
    /// Parquet in and out with plain column types: jobs are cut from record batches
    /// column by column, and no cell becomes a value ([`Encoder::with_input_types`]).
    columnar: bool,
    /// CSV in and out, every column kept, features sent: the place of each field's
    /// value in a sent row, for reading plain lines straight from the reader's buffer
    /// ([`PlainSlots::parse`]); `None` reads every row the general way.
    plain_slots: Option<PlainSlots>,
    /// Jobs handed to the run together ([`Encoder::in_bursts`]).
    burst: usize,
    /// The reading thread in the idle scheduling class ([`Encoder::in_background`]).
    background: bool,
    /// Bytes of jobs read and not yet written, shared with the writer
    /// ([`Encoder::within`]).
    budget: Option<Arc<ByteBudget>>,
}

impl Encoder {
    /// An encoder for rows like those of `table` (the sample [`open`](super::open)
    /// returned, with its names adopted), sending `selection`, writing columns `keep`
    /// as `out`.
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
        let keeps_all = keep.iter().copied().eq(0..table.columns.len());
        let plain_slots = match &selection {
            Selection::Features { cols, .. }
                if table.format == Format::Csv && out == Format::Csv && keeps_all =>
            {
                let mut slots = vec![NOT_SENT; table.columns.len()];
                let mut distinct = true;
                for (j, &c) in cols.iter().enumerate() {
                    match slots.get_mut(c) {
                        Some(s) if *s == NOT_SENT => *s = j as u32,
                        _ => distinct = false,
                    }
                }
                distinct.then(|| PlainSlots::new(slots))
            }
            _ => None,
        };
        Self {
            plain_slots,
            table,
            selection,
            keep,
            keeps_all,
            out,
            rows_per_job: rows_per_job.max(1),
            json_keys,
            skip: 0,
            columnar: false,
            burst: 1,
            background: false,
            budget: None,
        }
    }

    /// The Arrow type of each input column (for a Parquet input): when the output
    /// is Parquet too, the features are numeric and the kept columns are integers,
    /// floats, booleans or text, jobs take the columnar path, which reads each cell
    /// as the row path does but never turns it into a value.
    pub fn with_input_types(mut self, types: Option<&[DataType]>) -> Self {
        let Some(types) = types else { return self };
        let typed = |c: usize, ok: fn(&DataType) -> bool| types.get(c).is_some_and(ok);
        let sent = match &self.selection {
            Selection::Features { cols, .. } => {
                cols.iter().all(|&c| typed(c, parquet_io::is_numeric))
            }
            Selection::Text(c) => *c < types.len(),
        };
        self.columnar = self.out == Format::Parquet
            && self.table.format == Format::Parquet
            && sent
            && self
                .keep
                .iter()
                .all(|&k| typed(k, parquet_io::keeps_columnar));
        self
    }

    /// True when jobs take the columnar path (see [`Encoder::with_input_types`]).
    pub fn is_columnar(&self) -> bool {
        self.columnar
    }

    /// Reads past the first `rows` rows (already written by the run being resumed).
    pub fn skipping(mut self, rows: usize) -> Self {
        self.skip = rows;
        self
    }

    /// Hands jobs to the run `n` at a time (the last ones when the input ends): the
    /// run's loop, parked between jobs, is then woken once per `n` jobs instead of
    /// once per job, and on a KVM host each wake-up cost ~15 µs of the reading thread
    /// (2M-row CSV read alone, 8 alternating runs: 392 -> 360 ns a row at 4). For a
    /// file, whose next rows are always there: a job read from a pipe that pauses
    /// would wait for the rows of `n - 1` more.
    pub fn in_bursts(mut self, n: usize) -> Self {
        self.burst = n.max(1);
        self
    }

    /// [`run`](Self::run) reads a job only while `budget` has room, and counts each
    /// job it reads in it; the writer gives a job's bytes back once it is written
    /// ([`ByteBudget::give_back`]). Without one, only the run's window bounds memory.
    pub fn within(mut self, budget: Arc<ByteBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// [`run`](Self::run) puts its thread in the idle scheduling class
    /// ([`Background`]): reading yields the CPU to the broker and workers on the same
    /// machine, and goes back to normal priority if starved while the run waits.
    pub fn in_background(mut self, on: bool) -> Self {
        self.background = on;
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
        let columnar = self.columnar && src.is_parquet();
        while row_no < self.skip {
            let read = if columnar {
                src.next_slice(self.skip - row_no)
                    .map(|b| b.map(|b| b.num_rows()))
            } else {
                src.next().map(|r| r.map(|_| 1))
            };
            match read {
                Ok(Some(rows)) => row_no += rows,
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
        // One record read into again and again: no allocation per CSV row.
        let mut rec = Record::Csv(CsvRecord::default());
        let mut ready = Vec::with_capacity(self.burst);
        let mut bg = Background::new(self.background);
        let send_all = |ready: &mut Vec<SourceJob<RowBytes>>, bg: &mut Background| {
            // The run waits on this thread when the channel is empty.
            bg.end(tx.capacity() == tx.max_capacity());
            let sent = ready.drain(..).all(|job| tx.blocking_send(Ok(job)).is_ok());
            bg.start();
            sent
        };
        loop {
            if let Some(budget) = self.budget.as_deref().filter(|b| !b.has_room()) {
                // The jobs read so far go first: the run cannot free the budget with
                // jobs it has not been given.
                if !send_all(&mut ready, &mut bg)
                    || !budget.wait_for_room_unless(BUDGET_POLL, || tx.is_closed())
                {
                    return;
                }
                // The wait was not work: the stretch starts again after it.
                bg.start();
            }
            let job = if columnar {
                self.columnar_job(&mut src, &mut row_no)
            } else {
                self.job(&mut src, &mut rec, &mut row_no)
            };
            match job {
                Ok(Some(job)) => {
                    if let Some(budget) = &self.budget {
                        budget.take(job.bytes);
                    }
                    ready.push(job);
                    if ready.len() >= self.burst && !send_all(&mut ready, &mut bg) {
                        return;
                    }
                }
                Ok(None) => {
                    send_all(&mut ready, &mut bg);
                    return;
                }
                Err(e) => {
                    if send_all(&mut ready, &mut bg) {
                        let _ = tx.blocking_send(Err(e));
                    }
                    return;
                }
            }
        }
    }

    fn job(
        &self,
        src: &mut RowSource,
        rec: &mut Record,
        row_no: &mut usize,
    ) -> Result<Option<SourceJob<RowBytes>>, ClientError> {
        let mut rows = RowBytes::default();
        let mut values = Vec::new();
        let mut texts = Vec::new();
        while rows.len() < self.rows_per_job {
            let read = match &self.plain_slots {
                Some(slots) if src.reads_csv_directly() => {
                    self.read_direct(src, rec, slots, &mut rows, &mut values)?
                }
                _ if src.next_into(rec)? => Direct::General,
                _ => Direct::End,
            };
            match read {
                Direct::End => break,
                Direct::Taken => *row_no += 1,
                Direct::General => {
                    *row_no += 1;
                    self.take_row(rec, *row_no, &mut rows, &mut values, &mut texts)?;
                }
            }
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

    /// Reads the next CSV row straight from the reader: a plain line whose sent cells
    /// all parse is taken into `rows` and `values` here ([`PlainSlots::parse`]); any other
    /// row is left in `rec` for [`take_row`](Self::take_row), its field count checked.
    fn read_direct(
        &self,
        src: &mut RowSource,
        rec: &mut Record,
        slots: &PlainSlots,
        rows: &mut RowBytes,
        values: &mut Vec<f32>,
    ) -> Result<Direct, ClientError> {
        if !matches!(rec, Record::Csv(_)) {
            *rec = Record::Csv(CsvRecord::default());
        }
        let Record::Csv(csv) = rec else {
            return Ok(Direct::General);
        };
        let row_start = values.len();
        let plain_line = match src.next_csv(csv)? {
            Next::End => return Ok(Direct::End),
            Next::Record => return Ok(Direct::General),
            Next::Plain(p) => {
                values.resize(row_start + self.width(), 0.0);
                if slots.parse(&p, &mut values[row_start..]) {
                    // Sent as parsed, and kept as it is: the whole line.
                    rows.bytes.extend_from_slice(p.bytes());
                    self.row_done(rows, values);
                    return Ok(Direct::Taken);
                }
                // Anything else (a long or odd cell, a wrong field count) takes the
                // general way, which also words the errors.
                values.truncate(row_start);
                csv.set_line(p.bytes());
                p.line
            }
        };
        src.check_csv_fields(csv.len(), plain_line)?;
        Ok(Direct::General)
    }

    /// Takes one row read the general way: its selected cells into `values` (or its
    /// text into `texts`; a bad cell fails the row), its kept columns into `rows`.
    fn take_row(
        &self,
        rec: &Record,
        row_no: usize,
        rows: &mut RowBytes,
        values: &mut Vec<f32>,
        texts: &mut Vec<String>,
    ) -> Result<(), ClientError> {
        match &self.selection {
            Selection::Features { cols, .. } => {
                let row_start = values.len();
                for &c in cols {
                    match self.number(rec, c) {
                        Some(x) => values.push(x),
                        None => {
                            let v = self.value(rec, c);
                            let why = self.table.cell_error(&self.selection, row_no, c, &v);
                            values.truncate(row_start);
                            values.resize(row_start + cols.len(), 0.0);
                            rows.bad.push((rows.len(), invalid_input(&why)));
                            break;
                        }
                    }
                }
            }
            Selection::Text(c) => texts.push(match rec {
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
            rows.cells.push(self.kept_cells(rec));
        } else {
            self.write_kept(rec, &mut rows.bytes)?;
        }
        self.row_done(rows, values);
        Ok(())
    }

    /// Ends the row whose kept bytes were just written.
    fn row_done(&self, rows: &mut RowBytes, values: &mut Vec<f32>) {
        rows.ends.push(rows.bytes.len());
        if rows.ends.len() == 1 {
            // Room for the job at the first row's size (capped): growing by
            // doubling copied each job's bytes about twice over.
            let room = rows.bytes.len().saturating_mul(self.rows_per_job - 1);
            rows.bytes.reserve(room.min(8 << 20));
            rows.ends.reserve(self.rows_per_job.min(1 << 16));
            values.reserve((values.len() * self.rows_per_job).min(2 << 20));
        }
    }

    /// The next job on the columnar path: up to `rows_per_job` rows cut from the
    /// input's record batches; the features scattered into packed rows column by
    /// column, a null or non-finite cell failing its row with the row path's words.
    fn columnar_job(
        &self,
        src: &mut RowSource,
        row_no: &mut usize,
    ) -> Result<Option<SourceJob<RowBytes>>, ClientError> {
        let mut parts = Vec::new();
        let mut n = 0;
        while n < self.rows_per_job {
            let Some(b) = src.next_slice(self.rows_per_job - n)? else {
                break;
            };
            n += b.num_rows();
            parts.push(b);
        }
        let batch = match parts.len() {
            0 => return Ok(None),
            1 => parts.swap_remove(0),
            _ => concat_batches(&parts[0].schema(), &parts)
                .map_err(|e| ClientError::Input(format!("joining record batches: {e}")))?,
        };
        let first = *row_no + 1;
        *row_no += n;
        let mut rows = RowBytes::default();
        let inputs = match &self.selection {
            Selection::Features { cols, .. } => {
                let width = cols.len();
                let mut values = vec![0f32; n * width];
                // The first bad column of each row, in the order the row path checks.
                let mut bad: Vec<Option<usize>> = Vec::new();
                for (j, &c) in cols.iter().enumerate() {
                    let scattered =
                        parquet_io::scatter_features(batch.column(c), j, width, &mut values, |i| {
                            if bad.is_empty() {
                                bad.resize(n, None);
                            }
                            bad[i].get_or_insert(c);
                        });
                    if !scattered {
                        return Err(ClientError::Input(format!(
                            "column {:?} is not numeric",
                            self.table.columns[c]
                        )));
                    }
                }
                for (i, c) in bad.iter().enumerate() {
                    let Some(c) = *c else { continue };
                    values[i * width..(i + 1) * width].fill(0.0);
                    let v = parquet_io::cell_value(batch.column(c).as_ref(), i);
                    let why = self.table.cell_error(&self.selection, first + i, c, &v);
                    rows.bad.push((i, invalid_input(&why)));
                }
                Inputs::Rows(Rows::from_flat(values, width))
            }
            Selection::Text(c) => Inputs::Texts(
                parquet_io::column_values(batch.column(*c).as_ref())
                    .into_iter()
                    .map(|v| match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    })
                    .collect(),
            ),
        };
        let kept: Vec<_> = self.keep.iter().map(|&k| batch.column(k).clone()).collect();
        let bytes = kept
            .iter()
            .map(|a| a.to_data().get_slice_memory_size().unwrap_or(0))
            .sum::<usize>()
            + match &inputs {
                Inputs::Rows(r) => r.len() * 4 * self.width(),
                Inputs::Texts(t) => t.iter().map(String::len).sum(),
            };
        rows.columns = Some((n, kept));
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
            Record::Csv(r) => {
                r.number(c)
                    .or_else(|| match csv_cell(r.get(c).unwrap_or_default()) {
                        Cell::Number(x) => Some(x),
                        _ => None,
                    })
            }
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
            // The common case: no cell of the record needs quoting (a line read as
            // it is, or one SIMD scan of the record's bytes says so), so the cells are
            // copied as they are; a verbatim line whose every column is kept, in
            // order, in one copy.
            Format::Csv if matches!(rec, Record::Csv(r) if r.line().is_some() || !super::needs_quoting(r.as_slice())) => {
                if let Record::Csv(r) = rec {
                    match r.line() {
                        Some(line) if self.keeps_all => out.extend_from_slice(line),
                        _ => {
                            for (i, &k) in self.keep.iter().enumerate() {
                                if i > 0 {
                                    out.push(b',');
                                }
                                out.extend_from_slice(r.get(k).unwrap_or_default());
                            }
                        }
                    }
                }
            }
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

/// What [`Encoder::read_direct`] did with the next row.
enum Direct {
    /// The input is over.
    End,
    /// The row is taken.
    Taken,
    /// The row is in the record slot, for the general way.
    General,
}

#[cfg(test)]
mod tests {
    use surge_protocol::Inputs;
    use tokio::sync::mpsc;

    use super::Encoder;
    use crate::stream::open;
    use crate::stream::tests::{run, CELLS};
    use crate::table::{Format, ReadOptions};

    /// What an encoder made of `input` (every job's rows as bits, its bad rows and
    /// kept bytes, or the error it stopped at), reading plain lines straight from the
    /// reader's buffer or not.
    fn encoded(input: &[u8], direct: bool) -> Vec<String> {
        let opened = open(
            Box::new(std::io::Cursor::new(input.to_vec())),
            Format::Csv,
            ReadOptions::default(),
            1,
        );
        let Ok((mut table, src)) = opened else {
            return vec!["unreadable header".into()];
        };
        let names: Vec<String> = table.columns.iter().skip(1).cloned().collect();
        let Ok(sel) = table.select(&names, None) else {
            return vec!["no selection".into()];
        };
        table.adopt_names(&sel);
        let keep = (0..table.columns.len()).collect();
        // The direct way also hands jobs on in bursts: the same jobs, in the same
        // order, an error after the jobs before it.
        let mut enc =
            Encoder::new(table, sel, keep, Format::Csv, 3).in_bursts(if direct { 4 } else { 1 });
        assert!(enc.plain_slots.is_some(), "the fast path applies");
        if !direct {
            enc.plain_slots = None;
        }
        let (tx, mut rx) = mpsc::channel(1 << 16);
        enc.run(src, tx);
        let mut out = Vec::new();
        while let Ok(job) = rx.try_recv() {
            out.push(match job {
                Ok(job) => {
                    let Inputs::Rows(rows) = &job.inputs else {
                        panic!("features are sent as rows");
                    };
                    let bits: Vec<u32> = rows.values().iter().map(|x| x.to_bits()).collect();
                    format!(
                        "{bits:?} {:?} {:?} {:?}",
                        job.payload.bad,
                        job.payload.ends,
                        String::from_utf8_lossy(&job.payload.bytes)
                    )
                }
                Err(e) => format!("error: {e}"),
            });
        }
        out
    }

    #[test]
    fn lines_read_in_place_give_the_jobs_and_errors_the_general_way_gives() {
        let mut next = crate::stream::tests::xorshift(0x853c_49e6_748f_ea9bu64);
        let mut compared = 0;
        for case in 0..3_000 {
            let width = 1 + next() % 5;
            let mut input = String::from("id");
            for j in 0..width {
                input.push_str(&format!(",c{j}"));
            }
            input.push('\n');
            for row in 0..next() % 12 {
                // Now and then a row one field short or long, a blank line, or a
                // quoted cell (read whole by csv_core).
                let fields = match next() % 40 {
                    0 => width - 1,
                    1 => width + 1,
                    _ => width,
                };
                input.push_str(&format!("r{row}"));
                for _ in 0..fields {
                    input.push(',');
                    match next() % 30 {
                        0 => input.push_str("\"3.5\""),
                        _ => input.push_str(CELLS[(next() % CELLS.len() as u64) as usize]),
                    }
                }
                input.push_str(if next().is_multiple_of(9) {
                    "\n\n"
                } else {
                    "\n"
                });
            }
            let (direct, general) = (
                encoded(input.as_bytes(), true),
                encoded(input.as_bytes(), false),
            );
            assert_eq!(direct, general, "case {case}: {input:?}");
            compared += direct.len();
        }
        assert!(compared > 1_000, "{compared}");
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
