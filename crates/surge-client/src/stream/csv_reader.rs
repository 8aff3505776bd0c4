//! CSV records read the way the `csv` crate reads them (its defaults: comma, `"`
//! quotes, `\r`, `\n` or `\r\n` ends a record, blank lines skipped, a UTF-8 BOM
//! dropped, every record as long as the first), faster on the lines most files are
//! made of ([`CsvReader`]).
//!
//! Why not `csv::Reader` alone: on a file of numbers, its byte-at-a-time state
//! machine and the copy of every field were a sixth of `score-batch`'s CPU, and
//! on a 2-core host that CPU is taken from the broker and the workers. A line with
//! no `"` and no `\r` but its last byte cannot hold anything but fields split by
//! commas, so such a line is split eight bytes at a time and kept as it is (written
//! back in one copy, [`CsvRecord::line`]). Any other record, quoted fields spanning
//! lines included, goes through `csv_core`, the `csv` crate's own parser, from the
//! start of its line; a test holds the two paths to `csv::Reader` record for record
//! on random inputs.

use std::io::Read;

use csv_core::ReadRecordResult;

use crate::table::{padded_decimal, DECIMAL_PAD};

/// Bytes read from the input at a time (a line longer than this grows the buffer).
const BLOCK: usize = 256 << 10;

/// Bytes kept readable past the end of what the buffer holds, so that any field of
/// a [`PlainLine`] can be read as [`padded_decimal`] reads a [`CsvRecord`]'s
/// ([`PlainLine::padded`]).
pub(crate) const LINE_PAD: usize = DECIMAL_PAD;

/// What [`CsvReader::read_next`] found.
pub(crate) enum Next<'a> {
    /// The end of the input.
    End,
    /// A record read into the caller's [`CsvRecord`].
    Record,
    /// A plain line, as it lies in the reader's buffer.
    Plain(PlainLine<'a>),
}

/// A line with no `"` and no `\r`: fields split by commas, nothing else.
pub(crate) struct PlainLine<'a> {
    /// The line, then [`LINE_PAD`] bytes of whatever follows it.
    pub(crate) padded: &'a [u8],
    /// The line's length.
    pub(crate) len: usize,
    /// Its line number (1-based).
    pub(crate) line: u64,
    /// The first record's field count, once known.
    pub(crate) fields: Option<usize>,
}

impl PlainLine<'_> {
    /// The line without the padding.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.padded[..self.len]
    }
}

/// One CSV record: its fields, and the line it came from when that is them
/// verbatim.
#[derive(Debug, Default, Clone)]
pub(crate) struct CsvRecord {
    /// The fields' bytes, then [`DECIMAL_PAD`] bytes of padding, so that a cell can
    /// be read as one word ([`CsvRecord::number`]).
    bytes: Vec<u8>,
    /// The length of `bytes` without the padding.
    len: usize,
    /// `(start, end)` of each field in `bytes`.
    bounds: Vec<(usize, usize)>,
    /// True when `bytes` is the record's line as the file holds it (fields joined by
    /// commas, nothing quoted, no line end).
    verbatim: bool,
}

impl CsvRecord {
    /// Fields in the record.
    pub(crate) fn len(&self) -> usize {
        self.bounds.len()
    }

    /// Field `i`, unquoted; `None` past the last.
    pub(crate) fn get(&self, i: usize) -> Option<&[u8]> {
        self.bounds.get(i).map(|&(s, e)| &self.bytes[s..e])
    }

    /// The fields in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.bounds.iter().map(|&(s, e)| &self.bytes[s..e])
    }

    /// The record's line when it is its fields joined by commas and no field needs
    /// quoting: written back as it is.
    pub(crate) fn line(&self) -> Option<&[u8]> {
        self.verbatim.then_some(&self.bytes[..self.len])
    }

    /// Field `i` as an f32 when it is a short plain decimal (see
    /// [`padded_decimal`]); `None` leaves it to [`crate::table::csv_cell`].
    #[inline]
    pub(crate) fn number(&self, i: usize) -> Option<f32> {
        let &(s, e) = self.bounds.get(i)?;
        padded_decimal(&self.bytes[s..], e - s)
    }

    /// The bytes of every field (and, for a verbatim line, the commas between them).
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.len = 0;
        self.bounds.clear();
        self.verbatim = false;
    }

    /// Takes `line` (no `"`, no `\r`, no `\n`) as the record's fields.
    pub(crate) fn set_line(&mut self, line: &[u8]) {
        self.clear();
        self.bytes.extend_from_slice(line);
        self.pad();
        split_commas(line, &mut self.bounds);
        self.verbatim = true;
    }

    /// Marks the end of the fields' bytes and pads them.
    fn pad(&mut self) {
        self.len = self.bytes.len();
        self.bytes.extend_from_slice(&[0; DECIMAL_PAD]);
    }
}

/// Pushes the `(start, end)` of each comma-separated field of `line` onto `bounds`.
/// Eight bytes at a time, each comma found by a bit trick (fields of numbers are a
/// few bytes long: a `memchr` call per comma cost more than this whole scan).
fn split_commas(line: &[u8], bounds: &mut Vec<(usize, usize)>) {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const COMMAS: u64 = 0x2c2c_2c2c_2c2c_2c2c;
    let mut start = 0;
    let mut chunks = line.chunks_exact(8);
    for (k, chunk) in chunks.by_ref().enumerate() {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word) ^ COMMAS;
        // The top bit of each byte that was a comma (now zero), and no other bit:
        // exact, as no byte's sum carries into the next.
        let mut commas = !(((x & LOW7) + LOW7) | x | LOW7);
        while commas != 0 {
            let at = k * 8 + (commas.trailing_zeros() / 8) as usize;
            bounds.push((start, at));
            start = at + 1;
            commas &= commas - 1;
        }
    }
    let tail = line.len() - chunks.remainder().len();
    for (j, &b) in chunks.remainder().iter().enumerate() {
        if b == b',' {
            bounds.push((start, tail + j));
            start = tail + j + 1;
        }
    }
    bounds.push((start, line.len()));
}

/// Why a record could not be read.
#[derive(Debug)]
pub(crate) enum CsvError {
    /// Reading the input failed.
    Io(std::io::Error),
    /// A record's field count differs from the first record's.
    Fields {
        /// The record's line (1-based; a quoted field may span lines).
        line: u64,
        /// Its fields.
        found: usize,
        /// The first record's fields.
        expected: usize,
    },
}

impl std::fmt::Display for CsvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CsvError::Io(e) => write!(f, "reading the input: {e}"),
            CsvError::Fields {
                line,
                found,
                expected,
            } => write!(
                f,
                "line {line}: found a record with {found} fields, but the first record has {expected}"
            ),
        }
    }
}

/// Reads CSV records from a byte stream (see the module's doc).
pub(crate) struct CsvReader {
    src: Box<dyn Read + Send>,
    buf: Vec<u8>,
    /// The unread bytes are `buf[pos..end]`.
    pos: usize,
    end: usize,
    eof: bool,
    /// Set once the input's first bytes were looked at for a BOM.
    started: bool,
    /// No record left (`csv_core` said so, or the fast path reached the end).
    done: bool,
    core: csv_core::Reader,
    /// Field ends as `csv_core` writes them.
    core_ends: Vec<usize>,
    /// The first record's field count.
    fields: Option<usize>,
    /// The line `buf[pos]` is on (1-based).
    line: u64,
}

impl CsvReader {
    /// A reader of `src`.
    pub(crate) fn new(src: Box<dyn Read + Send>) -> Self {
        Self::with_block(src, BLOCK)
    }

    /// A reader of `src` that reads `block` bytes at a time.
    fn with_block(src: Box<dyn Read + Send>, block: usize) -> Self {
        let mut core = csv_core::Reader::new();
        // csv_core drops a BOM only at the start of what it is first given, and this
        // reader may hand it its first bytes mid-file: a blank line read now makes
        // it past its start, while the BOM is dropped here.
        let _ = core.read_record(b"\n", &mut [], &mut []);
        Self {
            src,
            buf: vec![0; block.max(1) + LINE_PAD],
            pos: 0,
            end: 0,
            eof: false,
            started: false,
            done: false,
            core,
            core_ends: vec![0; 64],
            fields: None,
            line: 1,
        }
    }

    /// Reads the next record into `rec`; false at the end.
    pub(crate) fn read(&mut self, rec: &mut CsvRecord) -> Result<bool, CsvError> {
        match self.read_next(rec)? {
            Next::End => Ok(false),
            Next::Record => Ok(true),
            Next::Plain(p) => {
                let line = p.line;
                rec.set_line(p.bytes());
                self.check_fields(rec.len(), line)?;
                Ok(true)
            }
        }
    }

    /// The next record: a plain line (no `"`, no `\r`) handed out as it lies in the
    /// buffer, not yet split, its field count not yet checked
    /// ([`check_fields`](Self::check_fields)); any other record read into `rec` and
    /// checked.
    pub(crate) fn read_next(&mut self, rec: &mut CsvRecord) -> Result<Next<'_>, CsvError> {
        if !self.started {
            self.started = true;
            while self.end - self.pos < 3 && self.fill()? {}
            if self.buf[self.pos..self.end].starts_with(b"\xef\xbb\xbf") {
                self.pos += 3;
            }
        }
        loop {
            if self.done {
                rec.clear();
                return Ok(Next::End);
            }
            let line_start = self.line;
            let Some((start, stop, next, plain)) = self.next_line()? else {
                self.done = true;
                continue;
            };
            let line = &self.buf[start..stop];
            if line.is_empty() {
                // A blank line: skipped, as csv_core does.
                self.pos = next;
                self.line += 1;
                continue;
            }
            if plain {
                self.pos = next;
                self.line += 1;
                return Ok(Next::Plain(PlainLine {
                    padded: &self.buf[start..stop + LINE_PAD],
                    len: stop - start,
                    line: line_start,
                    fields: self.fields,
                }));
            }
            if self.read_core(rec)? {
                self.check_fields(rec.len(), line_start)?;
                return Ok(Next::Record);
            }
        }
    }

    /// Checks that the record on line `line` has as many fields as the first
    /// (`found`; the first record sets the count).
    pub(crate) fn check_fields(&mut self, found: usize, line: u64) -> Result<(), CsvError> {
        let expected = *self.fields.get_or_insert(found);
        if found != expected {
            return Err(CsvError::Fields {
                line,
                found,
                expected,
            });
        }
        Ok(())
    }

    /// The next line in the buffer (reading more as needed): `(start, stop, next,
    /// plain)`, where `buf[start..stop]` is the line without its `\n` and without one
    /// `\r` before it, `next` is where the following line starts, and `plain` says
    /// the line holds no `"` and no other `\r`. One pass finds both, for the lines most
    /// files are made of. `None` at the end of the input.
    fn next_line(&mut self) -> Result<Option<(usize, usize, usize, bool)>, CsvError> {
        let (mut scanned, mut plain) = (0, true);
        loop {
            let unread = &self.buf[self.pos + scanned..self.end];
            let hit = if plain {
                memchr::memchr3(b'\n', b'"', b'\r', unread)
            } else {
                memchr::memchr(b'\n', unread)
            };
            if let Some(at) = hit.map(|i| self.pos + scanned + i) {
                if self.buf[at] == b'\n' {
                    let stop = if at > self.pos && self.buf[at - 1] == b'\r' {
                        at - 1
                    } else {
                        at
                    };
                    return Ok(Some((self.pos, stop, at + 1, plain)));
                }
                // A quote, or a `\r`: the line is plain only if that is the `\r` of
                // its `\r\n` (one at the end of the buffer is taken as not).
                plain = self.buf[at] == b'\r' && self.buf[at + 1..self.end].first() == Some(&b'\n');
                scanned = at + 1 - self.pos;
                continue;
            }
            scanned = self.end - self.pos;
            if !self.fill()? {
                if self.pos == self.end {
                    return Ok(None);
                }
                // The last line, without a line end.
                let stop = if self.buf[self.end - 1] == b'\r' {
                    self.end - 1
                } else {
                    self.end
                };
                return Ok(Some((self.pos, stop, self.end, plain)));
            }
        }
    }

    /// Reads more of the input into the buffer, keeping the unread bytes (moved to
    /// its start, the buffer grown when they fill it); false at the end of input.
    fn fill(&mut self) -> Result<bool, CsvError> {
        if self.eof {
            return Ok(false);
        }
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        if self.end + LINE_PAD == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let room = self.buf.len() - LINE_PAD;
        loop {
            match self.src.read(&mut self.buf[self.end..room]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CsvError::Io(e)),
            }
        }
    }

    /// Reads one record with `csv_core` from `buf[pos]` (the start of a line); false
    /// when the input ends first.
    fn read_core(&mut self, rec: &mut CsvRecord) -> Result<bool, CsvError> {
        rec.clear();
        rec.bytes.reserve(1024);
        let (mut out_len, mut ends_len) = (0, 0);
        loop {
            // Nothing left to give is how csv_core learns of the end of the input.
            let at_end = self.pos == self.end && !self.fill()?;
            let cap = rec.bytes.capacity();
            rec.bytes.resize(cap, 0);
            let input = if at_end {
                &[][..]
            } else {
                &self.buf[self.pos..self.end]
            };
            let (res, nin, nout, nend) = self.core.read_record(
                input,
                &mut rec.bytes[out_len..],
                &mut self.core_ends[ends_len..],
            );
            self.line += memchr::memchr_iter(b'\n', &input[..nin]).count() as u64;
            self.pos += nin;
            out_len += nout;
            ends_len += nend;
            match res {
                ReadRecordResult::InputEmpty => {}
                ReadRecordResult::OutputFull => rec.bytes.reserve(cap.max(1024)),
                ReadRecordResult::OutputEndsFull => {
                    self.core_ends.resize(self.core_ends.len() * 2, 0);
                }
                ReadRecordResult::Record => break,
                ReadRecordResult::End => {
                    self.done = true;
                    rec.bytes.clear();
                    return Ok(false);
                }
            }
        }
        rec.bytes.truncate(out_len);
        rec.pad();
        let mut start = 0;
        for &end in &self.core_ends[..ends_len] {
            rec.bounds.push((start, end));
            start = end;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every record `csv::Reader` (no headers, its defaults) reads from `input`, and
    /// the index of the record it fails on, if any.
    fn with_csv_crate(input: &[u8]) -> (Vec<Vec<Vec<u8>>>, bool) {
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(input);
        let mut rec = csv::ByteRecord::new();
        let mut out = Vec::new();
        loop {
            match rdr.read_byte_record(&mut rec) {
                Ok(true) => out.push(rec.iter().map(<[u8]>::to_vec).collect()),
                Ok(false) => return (out, false),
                Err(_) => return (out, true),
            }
        }
    }

    fn with_this(input: &[u8], block: usize) -> (Vec<Vec<Vec<u8>>>, bool) {
        let mut rdr = CsvReader::with_block(Box::new(std::io::Cursor::new(input.to_vec())), block);
        let mut rec = CsvRecord::default();
        let mut out = Vec::new();
        loop {
            match rdr.read(&mut rec) {
                Ok(true) => {
                    if let Some(line) = rec.line() {
                        let fields: Vec<&[u8]> = rec.iter().collect();
                        assert_eq!(line, fields.join(&b','), "a verbatim line is its fields");
                    }
                    out.push(rec.iter().map(<[u8]>::to_vec).collect());
                }
                Ok(false) => return (out, false),
                Err(_) => return (out, true),
            }
        }
    }

    #[test]
    fn reads_what_the_csv_crate_reads_on_random_inputs() {
        const PIECES: [&[u8]; 12] = [
            b"a",
            b"12.5",
            b",",
            b",",
            b"\"",
            b"\"\"",
            b"\r",
            b"\n",
            b"\n",
            b"\r\n",
            b" ",
            "é".as_bytes(),
        ];
        let mut next = crate::stream::tests::xorshift(0x9e37_79b9_7f4a_7c15u64);
        for case in 0..20_000 {
            let mut input = Vec::new();
            if next().is_multiple_of(8) {
                input.extend_from_slice(b"\xef\xbb\xbf");
            }
            for _ in 0..next() % 40 {
                input.extend_from_slice(PIECES[(next() % PIECES.len() as u64) as usize]);
            }
            let want = with_csv_crate(&input);
            for block in [1, 3, 7, 4096] {
                assert_eq!(
                    with_this(&input, block),
                    want,
                    "case {case}, block {block}, input {:?}",
                    String::from_utf8_lossy(&input)
                );
            }
        }
    }

    #[test]
    fn commas_are_found_at_every_place_of_a_word() {
        for len in 0..40 {
            for mask in [0u64, 1, 0x5555_5555_5555, 0x8421_0842_1084, u64::MAX] {
                let line: Vec<u8> = (0..len)
                    .map(|i| {
                        if mask >> (i % 64) & 1 == 1 {
                            b','
                        } else {
                            b'a' + (i % 26) as u8
                        }
                    })
                    .collect();
                let mut bounds = Vec::new();
                split_commas(&line, &mut bounds);
                let got: Vec<&[u8]> = bounds.iter().map(|&(s, e)| &line[s..e]).collect();
                let want: Vec<&[u8]> = line.split(|&b| b == b',').collect();
                assert_eq!(got, want, "{:?}", String::from_utf8_lossy(&line));
            }
        }
    }

    #[test]
    fn plain_lines_are_kept_verbatim_and_quoted_ones_unquoted() {
        let input = "id,text\r\n1,plain\r\n\n2,\"a, \"\"quoted\"\"\ntext\"\n3,x";
        let mut rdr = CsvReader::new(Box::new(std::io::Cursor::new(input.as_bytes().to_vec())));
        let mut rec = CsvRecord::default();
        let mut lines = Vec::new();
        while rdr.read(&mut rec).expect("a valid CSV") {
            lines.push((
                rec.iter()
                    .map(|f| String::from_utf8_lossy(f).into_owned())
                    .collect::<Vec<_>>(),
                rec.line().is_some(),
            ));
        }
        let row = |a: &str, b: &str, verbatim| (vec![a.to_string(), b.to_string()], verbatim);
        assert_eq!(
            lines,
            [
                row("id", "text", true),
                row("1", "plain", true),
                row("2", "a, \"quoted\"\ntext", false),
                row("3", "x", true),
            ]
        );
    }

    #[test]
    fn a_short_record_is_an_error_naming_its_line() {
        let input = b"a,b\n1,2\n\n3\n";
        let mut rdr = CsvReader::new(Box::new(std::io::Cursor::new(input.to_vec())));
        let mut rec = CsvRecord::default();
        assert!(rdr.read(&mut rec).is_ok_and(|r| r));
        assert!(rdr.read(&mut rec).is_ok_and(|r| r));
        let err = rdr.read(&mut rec).map(|_| ()).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("line 4: found a record with 1 fields, but the first record has 2")
        );
    }
}
