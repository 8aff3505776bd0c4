//! What a cell holds as far as sending it as a number goes ([`Cell`]), and the job
//! inputs of the cells a [`Selection`] sends ([`Table::inputs`]): a cell that is not
//! a finite number is an error naming its row and column, and how to fix it.

use serde_json::Value;
use surge_protocol::{Inputs, Rows};

use super::{Format, Selection, Table};
use crate::ClientError;

/// What a cell holds, as far as sending it as a number goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Cell {
    /// A finite f32.
    Number(f32),
    /// Nothing: an empty CSV cell, JSON `null` or a missing key.
    Empty,
    /// Anything else: text, a boolean, a value beyond f32's range, NaN.
    Other,
}

impl Table {
    /// What `v`, a cell of this table, holds.
    pub(super) fn cell(&self, v: &Value) -> Cell {
        match v {
            Value::Null => Cell::Empty,
            Value::Number(n) => match n.as_f64() {
                Some(x) if (x as f32).is_finite() => Cell::Number(x as f32),
                _ => Cell::Other,
            },
            // Only CSV has numbers as text; a JSON string is a string.
            Value::String(s) if self.format == Format::Csv => csv_cell(s.as_bytes()),
            _ => Cell::Other,
        }
    }
}

/// A CSV cell, as far as sending it as a number goes.
pub(crate) fn csv_cell(bytes: &[u8]) -> Cell {
    if let Some(x) = plain_decimal(bytes) {
        return Cell::Number(x);
    }
    let Ok(s) = std::str::from_utf8(bytes) else {
        return Cell::Other;
    };
    let t = s.trim();
    if t.is_empty() {
        return Cell::Empty;
    }
    // Parsed straight to f32 (correctly rounded), not through f64.
    match t.parse::<f32>() {
        Ok(x) if x.is_finite() => Cell::Number(x),
        _ => Cell::Other,
    }
}

/// The bytes a [`padded_decimal`] caller must have readable past a field's start.
pub(crate) const DECIMAL_PAD: usize = 9;

/// [`plain_decimal`] without a loop, for the short decimals most cells hold: `at`
/// starts with the cell, `len` bytes long, and holds at least [`DECIMAL_PAD`] bytes
/// (whatever follows the cell). A sign, then up to 8 digits and at most one point,
/// read as one 64-bit word (a point found and squeezed out by bit tricks, the digits
/// combined by three multiplications, as `fast_float` does); the same f32 as
/// [`plain_decimal`], which the caller falls back to on `None` (longer cells,
/// exponents, anything else).
///
/// Written for few branches and no `count_ones` (a dozen instructions without
/// `popcnt`, which baseline x86-64 lacks): this runs once per cell of every CSV
/// row sent, and was three fifths of score-batch's reading thread.
#[inline(always)]
pub(crate) fn padded_decimal(at: &[u8], len: usize) -> Option<f32> {
    const ZEROS: u64 = 0x3030_3030_3030_3030;
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const POINTS: u64 = 0x2e2e_2e2e_2e2e_2e2e;
    let head = at.get(..DECIMAL_PAD)?;
    let negative = head[0] == b'-';
    let start = usize::from(negative || head[0] == b'+');
    let n = len.wrapping_sub(start);
    // 1 to 8 bytes after the sign.
    if n.wrapping_sub(1) >= 8 {
        return None;
    }
    let mut word = [0u8; 8];
    word.copy_from_slice(&head[start..start + 8]);
    let w = u64::from_le_bytes(word);
    let cell = u64::MAX >> (64 - 8 * n);
    // The top bit of each byte of the cell that is a point (exact: no carries).
    let x = w ^ POINTS;
    let points = !(((x & LOW7) + LOW7) | x | LOW7) & cell;
    if points & points.wrapping_sub(1) != 0 {
        return None;
    }
    // Where the point is (`n` when there is none), and the digits around it.
    let p = ((points.trailing_zeros() / 8) as usize).min(n);
    let digits = n - usize::from(points != 0);
    if digits == 0 {
        return None;
    }
    let fraction = digits - p;
    // The bytes after the point move down one place over it (with no point, `below`
    // covers the whole cell and nothing moves).
    let below = (u128::from(u64::MAX) >> (64 - 8 * p)) as u64;
    let w = ((w & below) | ((w >> 8) & !below)) & (u64::MAX >> (64 - 8 * digits));
    // Right-aligned in eight places, '0's before: the first digit is the most
    // significant.
    let shift = 8 * (8 - digits) as u32;
    let w = (w << shift) | ZEROS.checked_shr(64 - shift).unwrap_or(0);
    // Every byte a digit: high nibble 3, low nibble at most 9.
    if w & 0xf0f0_f0f0_f0f0_f0f0 != ZEROS
        || ((w & 0x0f0f_0f0f_0f0f_0f0f) + 0x0606_0606_0606_0606) & 0xf0f0_f0f0_f0f0_f0f0 != 0
    {
        return None;
    }
    // Pairs, then fours, then all eight (10·256 + 1, 100·2^16 + 1, 10^4·2^32 + 1).
    let mut v = (w & 0x0f0f_0f0f_0f0f_0f0f).wrapping_mul(2561) >> 8;
    v = (v & 0x00ff_00ff_00ff_00ff).wrapping_mul(6_553_601) >> 16;
    v = (v & 0x0000_ffff_0000_ffff).wrapping_mul(42_949_672_960_001) >> 32;
    if v > 1 << 24 {
        return None;
    }
    let x = v as f32 / POW10[fraction];
    Some(if negative { -x } else { x })
}

/// Powers of ten that are exact f32s.
const POW10: [f32; 11] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10];

/// `bytes` as an f32 when it is a plain decimal (`-12.5`, `0.07871`, `1.095e-05`)
/// whose digits make an integer of at most 2^24 and whose power of ten is within
/// ±10: both are then exact f32s, and one multiplication or division rounds
/// correctly, to the f32 that `str::parse` gives (Clinger's fast path, which
/// skips UTF-8 checking, trimming and the general algorithm). `None` for anything
/// else, which then goes the general way.
fn plain_decimal(bytes: &[u8]) -> Option<f32> {
    let (negative, s) = match bytes {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, bytes),
    };
    // Digits accumulate with wrapping arithmetic: more than 19 of them (which a u64
    // may not hold) are refused below, before the mantissa is used.
    let mut mantissa: u64 = 0;
    let mut i = 0;
    while let Some(d) = s.get(i).map(|b| b.wrapping_sub(b'0')).filter(|&d| d <= 9) {
        mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(d));
        i += 1;
    }
    let mut digits = i;
    let mut exp: i32 = 0;
    if s.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while let Some(d) = s.get(i).map(|b| b.wrapping_sub(b'0')).filter(|&d| d <= 9) {
            mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(d));
            i += 1;
        }
        digits += i - start;
        exp = -((i - start).min(64) as i32);
    }
    if digits == 0 || digits > 19 {
        return None;
    }
    if let Some(b'e' | b'E') = s.get(i) {
        i += 1;
        let negative_exp = match s.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let start = i;
        let mut e: i32 = 0;
        while let Some(&b) = s.get(i).filter(|b| b.is_ascii_digit()) {
            if i - start == 4 {
                return None;
            }
            e = e * 10 + i32::from(b - b'0');
            i += 1;
        }
        if i == start {
            return None;
        }
        exp += if negative_exp { -e } else { e };
    }
    if i != s.len() || mantissa > 1 << 24 || !(-10..=10).contains(&exp) {
        return None;
    }
    let m = mantissa as f32;
    let x = if exp >= 0 {
        m * POW10[exp as usize]
    } else {
        m / POW10[(-exp) as usize]
    };
    Some(if negative { -x } else { x })
}

/// A CSV cell as a JSON value, for JSON Lines output: integers stay integers (so ids
/// are written back as they were read), other numbers become numbers, the rest text.
pub(crate) fn cell_from_csv(s: &str) -> Value {
    if let Ok(i) = s.parse::<i64>() {
        return Value::from(i);
    }
    match s.parse::<f64>() {
        Ok(f) if s.trim() == s && !s.is_empty() => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::String(s.into())),
        _ => Value::String(s.to_string()),
    }
}

impl Table {
    /// The error for cell `v` of column `c` in row `row_no` (counted from 1, header
    /// not counted), which is not a finite number although `sel` sends it.
    pub(crate) fn cell_error(
        &self,
        sel: &Selection,
        row_no: usize,
        c: usize,
        v: &Value,
    ) -> ClientError {
        let why = match self.cell(v) {
            Cell::Empty => "is empty".to_string(),
            _ => format!("holds {}, which is not a finite number", show(v)),
        };
        let by_name = matches!(sel, Selection::Features { names: Some(_), .. });
        let fix = if self.named && by_name {
            format!(
                "fix the cell; or, if {:?} is not one of the model's features, leave it out (--columns lists the columns to send)",
                self.columns[c]
            )
        } else {
            "fix the cell".to_string()
        };
        ClientError::Input(format!(
            "row {row_no}, {} {why}: every value sent to the model must be a number; {fix}",
            self.describe_column(c),
        ))
    }

    fn describe_column(&self, c: usize) -> String {
        if self.named {
            format!("column {:?}", self.columns[c])
        } else {
            format!("column {}", c + 1)
        }
    }

    /// How many of the records read hold a cell that `sel` sends and that is not a
    /// finite number.
    pub fn bad_rows(&self, sel: &Selection) -> usize {
        match sel {
            Selection::Text(_) => 0,
            Selection::Features { cols, .. } => self
                .records
                .iter()
                .filter(|r| {
                    cols.iter()
                        .any(|&c| !matches!(self.cell(&r[c]), Cell::Number(_)))
                })
                .count(),
        }
    }

    /// The inputs of records `start..end`, as a job would carry them. A cell that is
    /// not a finite number is an error naming its row (counted from 1, header not
    /// counted) and column.
    pub fn inputs(&self, sel: &Selection, start: usize, end: usize) -> Result<Inputs, ClientError> {
        match sel {
            Selection::Text(c) => Ok(Inputs::Texts(
                self.records[start..end]
                    .iter()
                    .map(|r| match &r[*c] {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect(),
            )),
            Selection::Features { cols, .. } => {
                let mut values = Vec::with_capacity((end - start) * cols.len());
                for (i, r) in self.records[start..end].iter().enumerate() {
                    for &c in cols {
                        if let Cell::Number(x) = self.cell(&r[c]) {
                            values.push(x);
                            continue;
                        }
                        return Err(self.cell_error(sel, start + i + 1, c, &r[c]));
                    }
                }
                Ok(Inputs::Rows(Rows::from_flat(values, cols.len())))
            }
        }
    }
}

/// A cell as quoted in an error message, cut short.
fn show(v: &Value) -> String {
    let s = match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    };
    if s.chars().count() > 40 {
        format!("{}...", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use crate::table::tests::csv;

    /// The error for the first two rows of the CSV `text`, sending what it sends by
    /// default.
    fn inputs_error(text: &str) -> String {
        let t = csv(text);
        t.inputs(&t.select(&[], None).unwrap(), 0, 2)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_bad_cell_in_a_sent_column_is_named_before_anything_is_sent() {
        let err = inputs_error("a,b\n1,2\n3,zz\n");
        assert!(
            err.contains("row 2, column \"b\" holds \"zz\", which is not a finite number"),
            "{err}"
        );
        assert!(err.contains("--columns"), "{err}");
        for (cell, why) in [
            ("", "is empty"),
            ("NaN", "not a finite number"),
            ("1e39", "not a finite number"),
        ] {
            let err = inputs_error(&format!("a,b\n1,2\n3,{cell}\n"));
            assert!(
                err.contains("row 2, column \"b\"") && err.contains(why),
                "{err}"
            );
        }
    }
}

#[cfg(test)]
mod fast_path_tests {
    use super::*;

    #[test]
    fn plain_decimals_read_exactly_as_str_parse_reads_them() {
        let cells = [
            "0",
            "-0",
            "17.99",
            "0.07871",
            "1.095e-05",
            "1001.0",
            "2019",
            "+3.5",
            "-12.25e+3",
            ".5",
            "5.",
            "16777216",
            "16777217",
            "0.1",
            "0.2",
            "0.3",
            "3.4028235e38",
            "1e-45",
            "1e11",
            "1e-11",
            "123456789",
            "0.000001234",
            "9999999e10",
            "1E5",
        ];
        for c in cells {
            let want: f32 = c.parse().unwrap();
            let got = match csv_cell(c.as_bytes()) {
                Cell::Number(x) => x,
                other => panic!("{c}: {other:?}"),
            };
            assert_eq!(got.to_bits(), want.to_bits(), "{c}");
        }
        // Every short decimal of the sweep, against the general algorithm.
        for m in (0..20_000_000u32).step_by(997) {
            for e in -12..=12 {
                let c = format!("{m}e{e}");
                let want: f32 = c.parse().unwrap();
                if let Some(x) = plain_decimal(c.as_bytes()) {
                    assert_eq!(x.to_bits(), want.to_bits(), "{c}");
                }
            }
        }
        // And with the point at every place, signed or not.
        for m in (0..16_777_216u32).step_by(9973) {
            let d = m.to_string();
            for p in 0..=d.len() {
                for sign in ["", "-", "+"] {
                    let c = format!("{sign}{}.{}", &d[..p], &d[p..]);
                    let want: f32 = c.parse().unwrap();
                    let got = plain_decimal(c.as_bytes());
                    assert_eq!(got.map(f32::to_bits), Some(want.to_bits()), "{c}");
                }
            }
        }
        assert_eq!(plain_decimal(b"12345678901234567890.5"), None);
        for c in [
            "-.", "+", "1.-2", "1e-", "0x10", "1_0", "", "-", ".", "e5", "1e", "1e+", "1.2.3",
            " 1", "1 ", "nan", "inf", "1x", "--1",
        ] {
            assert_eq!(plain_decimal(c.as_bytes()), None, "{c:?}");
        }
        // The word-at-a-time path gives the same f32 as the loop, or leaves the cell
        // to it, whatever follows the cell in memory.
        let mut checked = 0;
        for m in (0..100_000_000u32)
            .step_by(7919)
            .chain([0, 1, 9, 10, 16_777_216, 16_777_217])
        {
            let d = m.to_string();
            for p in 0..=d.len() + 1 {
                for sign in ["", "-", "+"] {
                    let cell = match p {
                        _ if p > d.len() => format!("{sign}{d}"),
                        _ => format!("{sign}{}.{}", &d[..p], &d[p..]),
                    };
                    for tail in ["", "9.9.9.9.9", ",1,2,3,4,5", "\0\0\0\0\0\0\0\0\0"] {
                        let mut at = format!("{cell}{tail}").into_bytes();
                        at.resize(at.len().max(cell.len() + DECIMAL_PAD), b'7');
                        let fast = padded_decimal(&at, cell.len());
                        if let Some(x) = fast {
                            checked += 1;
                            let want = plain_decimal(cell.as_bytes());
                            assert_eq!(Some(x.to_bits()), want.map(f32::to_bits), "{cell:?}");
                        } else if cell.len() - usize::from(!sign.is_empty()) <= 8 {
                            // Refused only past 2^24 (the loop refuses those too).
                            assert!(m > 1 << 24, "{cell:?} refused");
                        }
                    }
                }
            }
        }
        assert!(checked > 100_000, "{checked}");
        for c in [
            "", "-", "+", ".", "-.", "1.2.3", "1e5", "12a4", " 12", "1,5", "--1",
        ] {
            let mut at = c.as_bytes().to_vec();
            at.resize(c.len() + DECIMAL_PAD, b'5');
            assert_eq!(padded_decimal(&at, c.len()), None, "{c:?}");
        }
        assert_eq!(csv_cell(b" 2.5 "), Cell::Number(2.5));
        assert_eq!(csv_cell(b"   "), Cell::Empty);
        assert_eq!(csv_cell(b"NaN"), Cell::Other);
        assert_eq!(csv_cell(b"1e39"), Cell::Other);
    }
}
