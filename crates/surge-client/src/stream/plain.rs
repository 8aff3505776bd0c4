//! The sent cells of a plain CSV line read straight from the reader's buffer
//! ([`PlainSlots::parse`]): four cells at a time in AVX2 registers where the CPU has
//! them, one at a time otherwise; the same f32s, and the same lines refused, either
//! way (a test holds the two to each other on random lines).
//!
//! Why four at a time: on a 2-core host the reading thread's CPU is taken from the
//! broker and the workers, and reading decimals one by one was most of it (~440 ns
//! for a line of 30 short decimals on a Zen 4 host, against ~230 ns four at a time).

use super::csv_reader::PlainLine;
use crate::table::padded_decimal;

/// Marks a field that is not sent in [`PlainSlots`].
pub(crate) const NOT_SENT: u32 = u32::MAX;

/// Where each field of a plain line goes in a sent row, and the sent fields in
/// groups of four for the wide path.
#[derive(Debug, Clone)]
pub(crate) struct PlainSlots {
    /// The place of each field's value in a sent row ([`NOT_SENT`] for the others).
    slots: Vec<u32>,
    /// `(field, place)` of the sent fields, in field order, four to a group (the
    /// last group filled up with copies of its last cell).
    groups: Vec<[(u32, u32); 4]>,
    /// Sent fields.
    sent: usize,
    /// True when this CPU reads four cells at a time.
    wide: bool,
}

impl PlainSlots {
    /// Slots for `slots` (a place per field, [`NOT_SENT`] for a field not sent).
    pub(crate) fn new(slots: Vec<u32>) -> Self {
        let sent: Vec<(u32, u32)> = slots
            .iter()
            .enumerate()
            .filter(|&(_, &s)| s != NOT_SENT)
            .map(|(f, &s)| (f as u32, s))
            .collect();
        let groups = sent
            .chunks(4)
            .map(|cells| std::array::from_fn(|k| cells[k.min(cells.len() - 1)]))
            .collect();
        Self {
            slots,
            groups,
            sent: sent.len(),
            wide: wide::available(),
        }
    }

    /// Reads the sent cells of `line` into `out` (each at its place) as short
    /// decimals ([`padded_decimal`]). False when a sent cell is anything else, or the
    /// line does not have as many fields as the first record (or that count is not
    /// known yet): the caller then reads the line the general way, which also words
    /// the errors. `out` may then hold some of the line's values.
    #[inline]
    pub(crate) fn parse(&self, line: &PlainLine<'_>, out: &mut [f32]) -> bool {
        if self.wide {
            if let Some(done) = wide::parse(line, &self.groups, self.sent, out) {
                return done;
            }
        }
        narrow(line, &self.slots, out)
    }

    /// The same, one cell at a time whatever the CPU.
    #[cfg(test)]
    fn parse_narrow(&self, line: &PlainLine<'_>, out: &mut [f32]) -> bool {
        narrow(line, &self.slots, out)
    }
}

/// [`PlainSlots::parse`] one cell at a time: each field found by a word-at-a-time
/// scan for its comma, and when `slots` sends it (`slots[field]` is its place in
/// `out`), read as a short decimal ([`padded_decimal`]).
fn narrow(line: &PlainLine<'_>, slots: &[u32], out: &mut [f32]) -> bool {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const COMMAS: u64 = 0x2c2c_2c2c_2c2c_2c2c;
    let Some(fields) = line.fields else {
        return false;
    };
    let (bytes, len) = (line.padded, line.len);
    let (mut pos, mut field) = (0, 0);
    loop {
        let rest = len - pos;
        let Some(at) = bytes.get(pos..) else {
            return false;
        };
        let mut word = [0u8; 8];
        word.copy_from_slice(&at[..8]);
        let x = u64::from_le_bytes(word) ^ COMMAS;
        // The top bit of each byte that is a comma (exact: no carries), or past the
        // line's end.
        let mut ends = !(((x & LOW7) + LOW7) | x | LOW7);
        if rest < 8 {
            ends |= HIGH << (8 * rest);
        }
        let n = if ends != 0 {
            (ends.trailing_zeros() / 8) as usize
        } else {
            memchr::memchr(b',', &at[8..rest]).map_or(rest, |i| i + 8)
        };
        if let Some(&slot) = slots.get(field) {
            if slot != NOT_SENT {
                match (padded_decimal(at, n), out.get_mut(slot as usize)) {
                    (Some(v), Some(o)) => *o = v,
                    _ => return false,
                }
            }
        }
        field += 1;
        if n >= rest {
            return field == fields;
        }
        pos += n + 1;
    }
}

#[cfg(target_arch = "x86_64")]
mod wide {
    //! [`padded_decimal`](crate::table::padded_decimal)'s arithmetic on four cells at
    //! once, one 64-bit lane each, step for step (the same masks, the same bit
    //! tricks); only the digits' combination differs in form (byte and word
    //! multiply-adds instead of three 64-bit multiplications, which AVX2 lacks), and
    //! `count_ones`/`trailing_zeros` of the point's mask become a sum of bytes.

    use std::arch::x86_64::*;

    use super::PlainLine;

    /// Fields a line may have for the wide path (longer lines go one cell at a time).
    const MAX_FIELDS: usize = 256;

    /// True when this CPU has AVX2.
    pub(super) fn available() -> bool {
        std::is_x86_feature_detected!("avx2")
    }

    /// The wide path, when the line fits it; `None` leaves it to the narrow one.
    #[inline]
    pub(super) fn parse(
        line: &PlainLine<'_>,
        groups: &[[(u32, u32); 4]],
        sent: usize,
        out: &mut [f32],
    ) -> Option<bool> {
        let fields = line.fields?;
        if fields > MAX_FIELDS || line.len > u32::MAX as usize / 2 {
            return None;
        }
        // SAFETY: `available()` said this CPU has AVX2 (the only caller checks it).
        // The field starts go in an array sized for the line: zeroing 257 of them
        // for a line of 31 fields was 4% of the reading thread.
        Some(unsafe {
            if fields < 64 {
                parse_avx2::<64>(line, fields, groups, sent, out)
            } else {
                parse_avx2::<{ MAX_FIELDS + 1 }>(line, fields, groups, sent, out)
            }
        })
    }

    /// Finds every field's start with one comparison per 32 bytes, then reads the
    /// sent cells four at a time ([`decode4`]).
    #[target_feature(enable = "avx2")]
    unsafe fn parse_avx2<const STARTS: usize>(
        line: &PlainLine<'_>,
        fields: usize,
        groups: &[[(u32, u32); 4]],
        sent: usize,
        out: &mut [f32],
    ) -> bool {
        let (bytes, len) = (line.padded, line.len);
        // starts[f] is where field f starts; starts[fields] is one past the line's end.
        let mut starts = [0u32; STARTS];
        let mut field = 1usize;
        let commas = _mm256_set1_epi8(b',' as i8);
        for (k, block) in bytes[..len].chunks(32).enumerate() {
            let v = if let Ok(whole) = <&[u8; 32]>::try_from(block) {
                // SAFETY: `whole` is 32 bytes; an unaligned load.
                unsafe { _mm256_loadu_si256(whole.as_ptr().cast()) }
            } else {
                // The line's last bytes, zeros after them (not commas).
                let mut copy = [0u8; 32];
                copy[..block.len()].copy_from_slice(block);
                // SAFETY: `copy` is 32 bytes; an unaligned load.
                unsafe { _mm256_loadu_si256(copy.as_ptr().cast()) }
            };
            let mut m = _mm256_movemask_epi8(_mm256_cmpeq_epi8(v, commas)) as u32;
            while m != 0 {
                // More fields than the first record: the narrow path's `false`.
                let Some(s) = starts.get_mut(field) else {
                    return false;
                };
                *s = (k * 32) as u32 + m.trailing_zeros() + 1;
                field += 1;
                m &= m - 1;
            }
        }
        if field != fields {
            return false;
        }
        starts[fields] = len as u32 + 1;
        for (g, cells) in groups.iter().enumerate() {
            let count = (sent - 4 * g).min(4);
            // SAFETY: AVX2 is there (this function's own feature).
            if !unsafe { decode4(bytes, &starts[..=fields], cells, count, out) } {
                return false;
            }
        }
        true
    }

    /// Reads the first `count` of the four `cells` (`(field, place)`; the field's
    /// bytes run from `starts[field]` to `starts[field + 1] - 1`) into `out`; false
    /// when one is not a short decimal (or its field or place does not exist).
    #[target_feature(enable = "avx2")]
    unsafe fn decode4(
        bytes: &[u8],
        starts: &[u32],
        cells: &[(u32, u32); 4],
        count: usize,
        out: &mut [f32],
    ) -> bool {
        let mut words = [[0i64; 4]; 2];
        let mut lens = [0i64; 4];
        for (k, &(field, _)) in cells.iter().enumerate() {
            let f = field as usize;
            let (Some(&s), Some(&next)) = (starts.get(f), starts.get(f + 1)) else {
                return false;
            };
            let at = s as usize;
            lens[k] = i64::from(next) - 1 - i64::from(s);
            // The cell's first 9 bytes: the reader keeps that much readable past
            // every field's start.
            let Some(head) = bytes.get(at..at + 9) else {
                return false;
            };
            let mut word = [0u8; 8];
            word.copy_from_slice(&head[..8]);
            words[0][k] = i64::from_le_bytes(word);
            word.copy_from_slice(&head[1..9]);
            words[1][k] = i64::from_le_bytes(word);
        }
        let set = |x: [i64; 4]| _mm256_setr_epi64x(x[0], x[1], x[2], x[3]);
        let splat = |x: u64| _mm256_set1_epi64x(x as i64);
        let (ones, zero, sixty4) = (splat(u64::MAX), _mm256_setzero_si256(), splat(64));
        let (low7, high) = (splat(0x7f7f_7f7f_7f7f_7f7f), splat(0x8080_8080_8080_8080));
        let (zeros, high_nibbles) = (splat(0x3030_3030_3030_3030), splat(0xf0f0_f0f0_f0f0_f0f0));
        let mask = |shift| _mm256_srlv_epi64(ones, shift);
        let not = |x| _mm256_xor_si256(x, ones);

        // A sign: skipped, the cell read from its next byte.
        let (w0, w1) = (set(words[0]), set(words[1]));
        let first = _mm256_and_si256(w0, splat(0xff));
        let negative = _mm256_cmpeq_epi64(first, splat(u64::from(b'-')));
        let signed = _mm256_or_si256(negative, _mm256_cmpeq_epi64(first, splat(u64::from(b'+'))));
        let w = _mm256_blendv_epi8(w0, w1, signed);
        let n = _mm256_add_epi64(set(lens), signed);
        // 1 to 8 bytes after the sign.
        let bad_len = _mm256_or_si256(
            _mm256_cmpgt_epi64(splat(1), n),
            _mm256_cmpgt_epi64(n, splat(8)),
        );
        let cell = mask(_mm256_sub_epi64(sixty4, _mm256_slli_epi64(n, 3)));
        // The top bit of each byte of the cell that is a point; at most one.
        let x = _mm256_xor_si256(w, splat(0x2e2e_2e2e_2e2e_2e2e));
        let t = _mm256_add_epi64(_mm256_and_si256(x, low7), low7);
        let points = _mm256_andnot_si256(_mm256_or_si256(_mm256_or_si256(t, x), low7), cell);
        let below_point = _mm256_add_epi64(points, ones);
        let two_points = not(_mm256_cmpeq_epi64(
            _mm256_and_si256(points, below_point),
            zero,
        ));
        // Where the point is (`n` when there is none): the bytes under the point's
        // bit, all of whose top bits `points - 1` sets (8 with no point).
        let under = _mm256_srli_epi64(_mm256_and_si256(below_point, high), 7);
        let p = _mm256_min_epu32(_mm256_sad_epu8(under, zero), n);
        let digits = _mm256_add_epi64(n, not(_mm256_cmpeq_epi64(points, zero)));
        let no_digits = _mm256_cmpeq_epi64(digits, zero);
        let fraction = _mm256_sub_epi64(digits, p);
        // The bytes after the point move down one place over it.
        let below = mask(_mm256_sub_epi64(sixty4, _mm256_slli_epi64(p, 3)));
        let moved = _mm256_andnot_si256(below, _mm256_srli_epi64(w, 8));
        let digit_bits = _mm256_slli_epi64(digits, 3);
        let w = _mm256_and_si256(
            _mm256_or_si256(_mm256_and_si256(w, below), moved),
            mask(_mm256_sub_epi64(sixty4, digit_bits)),
        );
        // Right-aligned in eight places, '0's before (a shift of 64 gives 0, as
        // `checked_shr` does in the narrow path).
        let shift = _mm256_sub_epi64(sixty4, digit_bits);
        let w = _mm256_or_si256(
            _mm256_sllv_epi64(w, shift),
            _mm256_srlv_epi64(zeros, _mm256_sub_epi64(sixty4, shift)),
        );
        // Every byte a digit.
        let low_nibbles = _mm256_and_si256(w, splat(0x0f0f_0f0f_0f0f_0f0f));
        let digits_ok = _mm256_and_si256(
            _mm256_cmpeq_epi64(_mm256_and_si256(w, high_nibbles), zeros),
            _mm256_cmpeq_epi64(
                _mm256_and_si256(
                    _mm256_add_epi64(low_nibbles, splat(0x0606_0606_0606_0606)),
                    high_nibbles,
                ),
                zero,
            ),
        );
        // Pairs (10·first + second), fours (100·pair + pair), eight (10^4·four + four).
        let pairs = _mm256_maddubs_epi16(low_nibbles, _mm256_set1_epi16(0x010a));
        let fours = _mm256_madd_epi16(pairs, _mm256_set1_epi32(0x0001_0064));
        let v = _mm256_add_epi64(
            _mm256_mul_epu32(fours, splat(10_000)),
            _mm256_srli_epi64(fours, 32),
        );
        let too_big = _mm256_cmpgt_epi64(v, splat(1 << 24));
        let bad = _mm256_or_si256(
            _mm256_or_si256(
                _mm256_or_si256(bad_len, two_points),
                _mm256_or_si256(no_digits, too_big),
            ),
            not(digits_ok),
        );
        let lanes = (1u32 << count) - 1;
        if _mm256_movemask_pd(_mm256_castsi256_pd(bad)) as u32 & lanes != 0 {
            return false;
        }
        // v (at most 2^24: exact as an f32) / 10^fraction, rounded once as the
        // narrow path's division is; the sign put back.
        let low_halves = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
        let low = |x| _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(x, low_halves));
        // 10^fraction: a fraction is 0 to 7 in a good lane (8 digits have no
        // point), and the permutation reads only an index's low 3 bits.
        let powers = _mm256_setr_ps(1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7);
        let divisors = _mm256_castps256_ps128(_mm256_permutevar8x32_ps(
            powers,
            _mm256_permutevar8x32_epi32(fraction, low_halves),
        ));
        let quotients = _mm_div_ps(_mm_cvtepi32_ps(low(v)), divisors);
        let sign = _mm_slli_epi32(low(negative), 31);
        let values = _mm_xor_ps(quotients, _mm_castsi128_ps(sign));
        let mut got = [0f32; 4];
        // SAFETY: `got` is 16 bytes; an unaligned store.
        unsafe { _mm_storeu_ps(got.as_mut_ptr(), values) };
        for (&(_, place), &x) in cells.iter().zip(&got).take(count) {
            match out.get_mut(place as usize) {
                Some(o) => *o = x,
                None => return false,
            }
        }
        true
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod wide {
    //! No wide path on this architecture.

    use super::PlainLine;

    /// Never: one cell at a time.
    pub(super) fn available() -> bool {
        false
    }

    /// Never called ([`available`] is false).
    pub(super) fn parse(
        _line: &PlainLine<'_>,
        _groups: &[[(u32, u32); 4]],
        _sent: usize,
        _out: &mut [f32],
    ) -> Option<bool> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::{PlainSlots, NOT_SENT};
    use crate::stream::csv_reader::{PlainLine, LINE_PAD};
    use crate::stream::tests::CELLS;

    #[test]
    fn four_cells_at_a_time_read_what_one_at_a_time_reads() {
        let mut next = crate::stream::tests::xorshift(0x2545_f491_4f6c_dd1d);
        let (mut agreed, mut taken) = (0, 0);
        for case in 0..40_000 {
            let fields = 1 + (next() % 70) as usize;
            // Most fields sent, in shuffled places; a few not sent.
            let mut places: Vec<u32> = (0..fields as u32).collect();
            for i in (1..places.len()).rev() {
                places.swap(i, (next() % (i as u64 + 1)) as usize);
            }
            let slots: Vec<u32> = places
                .iter()
                .map(|&p| {
                    if next().is_multiple_of(6) {
                        NOT_SENT
                    } else {
                        p
                    }
                })
                .collect();
            let plain = PlainSlots::new(slots);
            // A line of good cells, now and then one of any kind, and now and then
            // a field too many or too few.
            let cells = match next() % 20 {
                0 => fields + 1,
                1 => fields.saturating_sub(1).max(1),
                _ => fields,
            };
            let mut line = Vec::new();
            for j in 0..cells {
                if j > 0 {
                    line.push(b',');
                }
                let cell = if next().is_multiple_of(40) {
                    CELLS[(next() % CELLS.len() as u64) as usize].to_string()
                } else {
                    let digits = 1 + next() % 7;
                    let mut s: String = (0..digits)
                        .map(|_| char::from(b'0' + (next() % 10) as u8))
                        .collect();
                    if next().is_multiple_of(2) {
                        s.insert((next() % (digits + 1)) as usize, '.');
                    }
                    if next().is_multiple_of(4) {
                        s.insert(0, '-');
                    }
                    s
                };
                line.extend_from_slice(cell.as_bytes());
            }
            let len = line.len();
            // What follows the line in the reader's buffer: anything.
            line.extend((0..LINE_PAD).map(|_| b"0123456789,.-\n"[(next() % 14) as usize]));
            let line = PlainLine {
                padded: &line,
                len,
                line: 1,
                fields: Some(fields),
            };
            let (mut wide, mut narrow) = (vec![f32::NAN; fields], vec![f32::NAN; fields]);
            let (w, n) = (
                plain.parse(&line, &mut wide),
                plain.parse_narrow(&line, &mut narrow),
            );
            assert_eq!(
                w,
                n,
                "case {case}: {:?}",
                String::from_utf8_lossy(line.bytes())
            );
            if n {
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&wide),
                    bits(&narrow),
                    "case {case}: {:?}",
                    String::from_utf8_lossy(line.bytes())
                );
                taken += 1;
            }
            agreed += 1;
        }
        assert!(
            taken > 8_000 && agreed == 40_000,
            "{taken} of {agreed} lines taken"
        );
    }
}
