//! Tabular rows, held flat (row-major), however they travelled.
//!
//! A job carries its rows either as `inputs`, a list of lists of numbers, or packed:
//! `rows_f32`, one little-endian f32 block (MessagePack `bin`), with `cols` values per
//! row. Both decode to the same [`Rows`]: one `Vec<f32>` and a column count, so a
//! batch is gathered with one `memcpy` per job and the packed form costs no per-value
//! work beyond one copy out of the body.
//!
//! Decoding never fails on the *shape* of the table: ragged rows or a packed block
//! that is not a whole number of rows are recorded in [`Rows::shape_error`], and the
//! worker answers them `invalid_input` with the model's features in the message. A
//! `null` value decodes to NaN, so it too is answered `invalid_input`, naming the row
//! and the feature, rather than failing the whole body as a schema error.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::Serialize;

/// Rows of numbers, row-major.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rows {
    values: Vec<f32>,
    cols: usize,
    len: usize,
    shape_error: Option<String>,
}

impl Rows {
    /// Rows from a list of rows. Rows of differing lengths are kept as a shape error
    /// naming the first one that differs.
    pub fn from_rows(rows: &[Vec<f32>]) -> Self {
        let mut b = RowsBuilder::default();
        for r in rows {
            b.push_row(r);
        }
        b.finish()
    }

    /// Rows from a flat row-major block of `cols` values per row. A block that is not
    /// a whole number of rows (or `cols` of 0 with values) is kept as a shape error.
    pub fn from_flat(values: Vec<f32>, cols: usize) -> Self {
        let n = values.len();
        let (len, shape_error) = match n.checked_rem(cols) {
            Some(0) => (n / cols, None),
            Some(rest) => (
                n / cols,
                Some(format!(
                    "the packed rows hold {n} values, which is not a whole number of rows of {cols} (cols): {rest} values are left over"
                )),
            ),
            None if n == 0 => (0, None),
            None => (
                0,
                Some(format!("cols is 0 but the packed rows hold {n} values")),
            ),
        };
        Self {
            values,
            cols,
            len,
            shape_error,
        }
    }

    /// `rows` with `why` as its shape error, unless it already has one.
    pub fn with_shape_error(mut rows: Rows, why: String) -> Self {
        rows.shape_error.get_or_insert(why);
        rows
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Values per row (of the first row when the rows are ragged).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Every value, row-major.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// Takes the values out, row-major.
    pub fn into_values(self) -> Vec<f32> {
        self.values
    }

    /// Row `i`; only meaningful when [`Rows::shape_error`] is `None`.
    pub fn row(&self, i: usize) -> &[f32] {
        let start = i.saturating_mul(self.cols).min(self.values.len());
        let end = start.saturating_add(self.cols).min(self.values.len());
        &self.values[start..end]
    }

    /// Each row in order; only meaningful when [`Rows::shape_error`] is `None`.
    pub fn iter(&self) -> impl Iterator<Item = &[f32]> + '_ {
        (0..self.len).map(move |i| self.row(i))
    }

    /// Why these rows do not form a table, when they do not.
    pub fn shape_error(&self) -> Option<&str> {
        self.shape_error.as_deref()
    }

    /// The values as little-endian bytes, for `rows_f32`.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.values.len() * 4);
        for v in &self.values {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }
}

/// Builds [`Rows`] one row at a time, recording the first ragged row.
#[derive(Default)]
struct RowsBuilder {
    values: Vec<f32>,
    cols: Option<usize>,
    len: usize,
    shape_error: Option<String>,
}

impl RowsBuilder {
    fn push_row(&mut self, row: &[f32]) {
        self.values.extend_from_slice(row);
        self.end_row(row.len());
    }

    /// Closes a row of `n` values that were already pushed onto `values`.
    fn end_row(&mut self, n: usize) {
        match self.cols {
            None => self.cols = Some(n),
            Some(c) if c != n && self.shape_error.is_none() => {
                self.shape_error = Some(format!(
                    "row {} has {n} values where row 0 has {c}; every row must have the same length",
                    self.len
                ));
            }
            Some(_) => {}
        }
        self.len += 1;
    }

    fn finish(self) -> Rows {
        Rows {
            values: self.values,
            cols: self.cols.unwrap_or(0),
            len: self.len,
            shape_error: self.shape_error,
        }
    }
}

impl Serialize for Rows {
    /// As `inputs`: a list of lists of numbers.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.len))?;
        for r in self.iter() {
            seq.serialize_element(r)?;
        }
        seq.end()
    }
}

/// One value of a row: a number, or `null` (decoded as NaN and refused later with the
/// row and feature named).
struct Value(f32);

impl<'de> de::Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
                // Beyond f32's range becomes ±inf, refused by the input check.
                Ok(Value(v as f32))
            }
            fn visit_f32<E: de::Error>(self, v: f32) -> Result<Value, E> {
                Ok(Value(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
                Ok(Value(v as f32))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
                Ok(Value(v as f32))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
                Ok(Value(f32::NAN))
            }
            fn visit_none<E: de::Error>(self) -> Result<Value, E> {
                Ok(Value(f32::NAN))
            }
        }
        d.deserialize_any(V)
    }
}

/// Appends one row's values to a shared builder.
struct RowSeed<'a>(&'a mut RowsBuilder);

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a row like inputs[0] (a list of numbers): a job holds only rows or only texts")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut n = 0usize;
        while let Some(Value(x)) = seq.next_element::<Value>()? {
            self.0.values.push(x);
            n += 1;
        }
        self.0.end_row(n);
        Ok(())
    }
}

/// Deserialises the rest of a list of rows whose first item was a row, into `b`.
pub(crate) fn rest_of_rows<'de, A: SeqAccess<'de>>(
    mut seq: A,
    mut b: RowsBuilderHandle,
) -> Result<Rows, A::Error> {
    while seq.next_element_seed(RowSeed(&mut b.0))?.is_some() {}
    Ok(b.0.finish())
}

/// A builder that already holds the first row; opaque outside this module.
pub(crate) struct RowsBuilderHandle(RowsBuilder);

impl RowsBuilderHandle {
    /// A builder holding `first` as row 0, with room for about `hint` rows.
    pub(crate) fn starting_with(first: Vec<f32>, hint: usize) -> Self {
        let mut b = RowsBuilder {
            values: Vec::with_capacity(first.len().saturating_mul(hint.max(1)).min(1 << 20)),
            ..RowsBuilder::default()
        };
        b.push_row(&first);
        Self(b)
    }
}

/// The first row of `inputs`, decoded on its own (its type tells rows from texts).
pub(crate) struct FirstRow(pub(crate) Vec<f32>);

impl FirstRow {
    pub(crate) fn visit<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        let mut row = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(Value(x)) = seq.next_element::<Value>()? {
            row.push(x);
        }
        Ok(Self(row))
    }
}

/// `rows_f32` as decoded: the values, and any bytes left over after the last whole
/// f32 (a shape error, answered `invalid_input`).
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Packed {
    pub(crate) values: Vec<f32>,
    pub(crate) stray_bytes: usize,
}

impl Packed {
    fn from_bytes(b: &[u8]) -> Self {
        let chunks = b.chunks_exact(4);
        let stray_bytes = chunks.remainder().len();
        let values = chunks
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Self {
            values,
            stray_bytes,
        }
    }
}

const PACKED_NEEDS_BIN: &str = "rows_f32 must be raw bytes (MessagePack bin: little-endian f32, row-major); JSON cannot carry it, so send `inputs` in JSON";

impl<'de> de::Deserialize<'de> for Packed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Packed;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("bytes (MessagePack bin)")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Packed, E> {
                Ok(Packed::from_bytes(v))
            }
            fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Packed, E> {
                Ok(Packed::from_bytes(v))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Packed, E> {
                Ok(Packed::from_bytes(&v))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Packed, E> {
                Err(E::custom(PACKED_NEEDS_BIN))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Packed, A::Error> {
                Err(de::Error::custom(PACKED_NEEDS_BIN))
            }
        }
        // `deserialize_any`, not `deserialize_bytes`: serde_json hands a string's bytes
        // to `visit_bytes`, which would read base64 text as floats.
        d.deserialize_any(V)
    }
}

/// `rows_f32` on the way out: the row-major values as little-endian bytes.
pub(crate) struct PackedOut(pub(crate) Vec<u8>);

impl Serialize for PackedOut {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ragged_rows_name_the_first_that_differs() {
        let r = Rows::from_rows(&[vec![1.0, 2.0], vec![3.0, 4.0], vec![5.0]]);
        assert_eq!(r.len(), 3);
        assert!(r
            .shape_error()
            .unwrap()
            .contains("row 2 has 1 values where row 0 has 2"));
        let ok = Rows::from_rows(&[vec![1.0, 2.0], vec![3.0, 4.0]]);
        assert_eq!(ok.shape_error(), None);
        assert_eq!(ok.row(1), &[3.0, 4.0]);
    }

    #[test]
    fn flat_blocks_must_be_whole_rows() {
        assert_eq!(Rows::from_flat(vec![0.0; 6], 3).len(), 2);
        assert!(Rows::from_flat(vec![0.0; 7], 3).shape_error().is_some());
        assert!(Rows::from_flat(vec![0.0; 7], 0).shape_error().is_some());
        assert_eq!(Rows::from_flat(vec![], 0).shape_error(), None);
        // A huge cols never allocates or overflows: it is just zero whole rows and
        // values left over.
        let huge = Rows::from_flat(vec![1.0; 5], usize::MAX);
        assert_eq!(huge.len(), 0);
        assert!(huge.shape_error().is_some());
        assert_eq!(huge.row(0), &[1.0; 5]);
    }

    #[test]
    fn packed_bytes_round_trip_and_count_strays() {
        let r = Rows::from_rows(&[vec![1.5, -2.0], vec![f32::MAX, 0.0]]);
        let p = Packed::from_bytes(&r.to_le_bytes());
        assert_eq!(p.values, r.values());
        assert_eq!(p.stray_bytes, 0);
        let mut b = r.to_le_bytes();
        b.push(7);
        assert_eq!(Packed::from_bytes(&b).stray_bytes, 1);
    }
}
