//! Structure checks that run before any serde decoding.
//!
//! serde decoders recurse once per nesting level and may size buffers from a length
//! prefix. A hostile 700-byte MessagePack body of nested one-element arrays overflows
//! a 2 MiB stack; a 5-byte `array32` header claims four billion elements. These checks
//! walk the bytes with an explicit stack (no recursion) and refuse both before serde
//! ever runs.

use thiserror::Error;

/// Why a body failed the structure check.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScanError {
    /// Containers nest deeper than allowed.
    #[error("nesting is deeper than {max} levels")]
    TooDeep {
        /// The configured maximum depth.
        max: usize,
    },
    /// A length prefix claims more elements or bytes than the body holds.
    #[error("a length prefix at byte {offset} claims {claimed} items/bytes but only {available} bytes remain")]
    LengthBomb {
        /// Offset of the container or string header.
        offset: usize,
        /// What the prefix claimed.
        claimed: u64,
        /// Bytes left in the body.
        available: usize,
    },
    /// The body ends inside a value.
    #[error("the body ends inside a value (truncated at byte {offset})")]
    Truncated {
        /// Where the body ended.
        offset: usize,
    },
    /// A byte that MessagePack never uses as a type marker.
    #[error("byte {offset} is 0x{marker:02x}, which is not a MessagePack type marker")]
    BadMarker {
        /// Where it was.
        offset: usize,
        /// The byte.
        marker: u8,
    },
    /// Bytes remain after the first complete value.
    #[error("{extra} bytes follow the end of the message")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
}

/// What one MessagePack header says follows it.
enum Next {
    /// `n` raw bytes of payload, then the value is complete.
    Skip(u64),
    /// A container of `n` items (map pairs count twice).
    Items(u64),
}

fn be(buf: &[u8], pos: usize, n: usize) -> Result<u64, ScanError> {
    let bytes = buf
        .get(pos..pos + n)
        .ok_or(ScanError::Truncated { offset: buf.len() })?;
    Ok(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

/// Checks that `buf` holds exactly one well-formed MessagePack value, nested at most
/// `max_depth` containers deep, whose length prefixes all fit in the body.
pub fn check_msgpack(buf: &[u8], max_depth: usize) -> Result<(), ScanError> {
    let mut pos = 0usize;
    // Items still expected in each open container, innermost last.
    let mut open: Vec<u64> = Vec::new();
    loop {
        let start = pos;
        let marker = *buf.get(pos).ok_or(ScanError::Truncated { offset: pos })?;
        pos += 1;
        let (header, next) = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, Next::Skip(0)),
            0x80..=0x8f => (0, Next::Items(2 * u64::from(marker & 0x0f))),
            0x90..=0x9f => (0, Next::Items(u64::from(marker & 0x0f))),
            0xa0..=0xbf => (0, Next::Skip(u64::from(marker & 0x1f))),
            0xc4 | 0xd9 => (1, Next::Skip(be(buf, pos, 1)?)),
            0xc5 | 0xda => (2, Next::Skip(be(buf, pos, 2)?)),
            0xc6 | 0xdb => (4, Next::Skip(be(buf, pos, 4)?)),
            0xc7 => (2, Next::Skip(be(buf, pos, 1)?)),
            0xc8 => (3, Next::Skip(be(buf, pos, 2)?)),
            0xc9 => (5, Next::Skip(be(buf, pos, 4)?)),
            0xca | 0xce | 0xd2 => (0, Next::Skip(4)),
            0xcb | 0xcf | 0xd3 => (0, Next::Skip(8)),
            0xcc | 0xd0 => (0, Next::Skip(1)),
            0xcd | 0xd1 => (0, Next::Skip(2)),
            0xd4 => (0, Next::Skip(2)),
            0xd5 => (0, Next::Skip(3)),
            0xd6 => (0, Next::Skip(5)),
            0xd7 => (0, Next::Skip(9)),
            0xd8 => (0, Next::Skip(17)),
            0xdc => (2, Next::Items(be(buf, pos, 2)?)),
            0xdd => (4, Next::Items(be(buf, pos, 4)?)),
            0xde => (2, Next::Items(2 * be(buf, pos, 2)?)),
            0xdf => (4, Next::Items(2 * be(buf, pos, 4)?)),
            0xc1 => {
                return Err(ScanError::BadMarker {
                    offset: start,
                    marker,
                })
            }
        };
        pos += header;
        if pos > buf.len() {
            return Err(ScanError::Truncated { offset: buf.len() });
        }
        let available = buf.len() - pos;
        // Payload bytes must be there; and every item takes at least one byte, so an
        // item count above the bytes left is a lie told to make a decoder preallocate.
        let (Next::Skip(n) | Next::Items(n)) = next;
        if n > available as u64 {
            return Err(ScanError::LengthBomb {
                offset: start,
                claimed: n,
                available,
            });
        }
        match next {
            Next::Skip(n) => pos += n as usize,
            Next::Items(n) => {
                if n > 0 {
                    if open.len() >= max_depth {
                        return Err(ScanError::TooDeep { max: max_depth });
                    }
                    open.push(n);
                    continue;
                }
            }
        }
        // A value is complete: count it against the containers it closes.
        loop {
            match open.last_mut() {
                None => {
                    return if pos == buf.len() {
                        Ok(())
                    } else {
                        Err(ScanError::TrailingBytes {
                            extra: buf.len() - pos,
                        })
                    };
                }
                Some(left) => {
                    *left -= 1;
                    if *left > 0 {
                        break;
                    }
                    open.pop();
                }
            }
        }
    }
}

/// Follows JSON strings byte by byte, escapes included, so that what they hold is
/// passed over.
#[derive(Default)]
struct JsonStrings {
    /// Inside a string.
    open: bool,
    /// The previous byte, inside a string, was an unescaped backslash.
    escaped: bool,
}

impl JsonStrings {
    /// Takes the next byte, `b`. True when it belongs to a string already open: its
    /// content or its closing quote. False when it lies outside strings; a `"` there
    /// opens one.
    fn within(&mut self, b: u8) -> bool {
        if !self.open {
            self.open = b == b'"';
            return false;
        }
        if self.escaped {
            self.escaped = false;
        } else if b == b'\\' {
            self.escaped = true;
        } else if b == b'"' {
            self.open = false;
        }
        true
    }
}

/// Checks that JSON brackets nest at most `max_depth` deep. Syntax is left to the JSON
/// parser; this only makes sure the parser's recursion stays shallow.
pub fn check_json_depth(buf: &[u8], max_depth: usize) -> Result<(), ScanError> {
    let mut depth = 0usize;
    let mut strings = JsonStrings::default();
    for &b in buf {
        if strings.within(b) {
            continue;
        }
        match b {
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Err(ScanError::TooDeep { max: max_depth });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Rewrites the non-finite numbers some JSON writers emit (`NaN`, `Infinity`,
/// `-Infinity`, and literals like `1e999` that overflow a double), outside strings, so
/// that the job decodes and each gets the answer it deserves. Inside the top-level
/// `inputs`, NaN becomes `null` and an infinity `±1e39` (beyond f32: infinite once
/// read), so the input check names the row and feature. Anywhere else the token becomes
/// a string, which the schema refuses (`invalid_job`) instead of reading as absent.
/// Returns `None` when there is nothing to rewrite.
pub fn json_non_finite_to_null(buf: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(buf.len());
    let mut changed = false;
    let mut strings = JsonStrings::default();
    let mut depth = 0usize;
    // The last string that closed at depth 1 (a top-level key, or a value).
    let mut key_start = None;
    let mut last_key: &[u8] = b"";
    // Depth at which the `inputs` array opened, while inside it.
    let mut inputs_at: Option<usize> = None;
    let mut i = 0;
    while i < buf.len() {
        let b = buf[i];
        if strings.within(b) {
            if !strings.open {
                // The closing quote.
                if let Some(start) = key_start.take() {
                    last_key = &buf[start..i];
                }
            }
            out.push(b);
            i += 1;
            continue;
        }
        match b {
            // A string opens: at depth 1 it may be a key.
            b'"' if depth == 1 => key_start = Some(i + 1),
            b'[' | b'{' => {
                depth += 1;
                if depth == 2 && b == b'[' && last_key == b"inputs" && inputs_at.is_none() {
                    inputs_at = Some(depth);
                }
            }
            b']' | b'}' => {
                if inputs_at == Some(depth) {
                    inputs_at = None;
                }
                depth = depth.saturating_sub(1);
            }
            _ => {}
        }
        let is_token_start = b == b'-' || b == b'+' || b.is_ascii_alphanumeric();
        if !is_token_start {
            out.push(b);
            i += 1;
            continue;
        }
        let end = buf[i..]
            .iter()
            .position(|c| !(c.is_ascii_alphanumeric() || matches!(c, b'-' | b'+' | b'.')))
            .map_or(buf.len(), |p| i + p);
        let token = &buf[i..end];
        let negative = token.first() == Some(&b'-');
        let non_finite = match token {
            b"NaN" | b"-NaN" | b"nan" => Some(f64::NAN),
            b"Infinity" | b"+Infinity" | b"inf" => Some(f64::INFINITY),
            b"-Infinity" | b"-inf" => Some(f64::NEG_INFINITY),
            t if t.first().is_some_and(|c| c.is_ascii_digit() || *c == b'-') => {
                std::str::from_utf8(t)
                    .ok()
                    .and_then(|s| s.parse::<f64>().ok())
                    .filter(|v| !v.is_finite())
            }
            _ => None,
        };
        match non_finite {
            Some(v) if inputs_at.is_some() => {
                out.extend_from_slice(if v.is_nan() {
                    b"null"
                } else if negative {
                    b"-1e39"
                } else {
                    b"1e39"
                });
                changed = true;
            }
            Some(_) => {
                out.push(b'"');
                out.extend_from_slice(token);
                out.push(b'"');
                changed = true;
            }
            None => out.extend_from_slice(token),
        }
        i = end;
    }
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn non_finite_json_literals_are_rewritten_by_place() {
        let got = super::json_non_finite_to_null(
            br#"{"inputs":[[NaN, -Infinity, 1e999, 2.5e3, -1e-999]], "s":"NaN \" Infinity", "deadline_ms":NaN, "t":true}"#,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(got).unwrap(),
            r#"{"inputs":[[null, -1e39, 1e39, 2.5e3, -1e-999]], "s":"NaN \" Infinity", "deadline_ms":"NaN", "t":true}"#
        );
        assert_eq!(
            super::json_non_finite_to_null(br#"{"inputs":[[1,2]]}"#),
            None
        );
        // A key named inputs deeper down is not the job's inputs.
        let got =
            super::json_non_finite_to_null(br#"{"x":{"inputs":[NaN]},"v":Infinity}"#).unwrap();
        assert_eq!(
            String::from_utf8(got).unwrap(),
            r#"{"x":{"inputs":["NaN"]},"v":"Infinity"}"#
        );
    }

    use super::*;

    #[test]
    fn accepts_well_formed_values() {
        let v =
            rmp_serde::to_vec_named(&serde_json::json!({"a": [1, 2.5, "x", null, {"b": true}]}))
                .unwrap();
        assert_eq!(check_msgpack(&v, 8), Ok(()));
        assert_eq!(check_msgpack(&[0x90], 8), Ok(())); // empty array
        assert_eq!(check_msgpack(&[0x01], 8), Ok(()));
    }

    #[test]
    fn refuses_depth_bombs_without_recursing() {
        let mut bomb = vec![0x91u8; 1_000_000];
        bomb.push(0x01);
        assert_eq!(
            check_msgpack(&bomb, 16),
            Err(ScanError::TooDeep { max: 16 })
        );
        let json = "[".repeat(100_000);
        assert_eq!(
            check_json_depth(json.as_bytes(), 16),
            Err(ScanError::TooDeep { max: 16 })
        );
    }

    #[test]
    fn refuses_length_bombs() {
        // array32 claiming 2^32-1 elements in a 5-byte body.
        let bomb = [0xdd, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            check_msgpack(&bomb, 16),
            Err(ScanError::LengthBomb { .. })
        ));
        // str32 claiming 4 GiB.
        let bomb = [0xdb, 0xff, 0xff, 0xff, 0xff, b'a'];
        assert!(matches!(
            check_msgpack(&bomb, 16),
            Err(ScanError::LengthBomb { .. })
        ));
    }

    #[test]
    fn refuses_truncation_trailing_bytes_and_bad_markers() {
        assert!(matches!(
            check_msgpack(&[0x92, 0x01, 0xdc, 0x00], 8),
            Err(ScanError::Truncated { .. })
        ));
        assert!(matches!(
            check_msgpack(&[0x01, 0x02], 8),
            Err(ScanError::TrailingBytes { extra: 1 })
        ));
        assert!(matches!(
            check_msgpack(&[0xc1], 8),
            Err(ScanError::BadMarker { .. })
        ));
        assert!(matches!(
            check_msgpack(&[], 8),
            Err(ScanError::Truncated { .. })
        ));
    }

    #[test]
    fn json_strings_do_not_count_as_brackets() {
        let s = format!("{{\"a\": \"{}\"}}", "[[[[[[[[[[\\\"[[[[");
        assert_eq!(check_json_depth(s.as_bytes(), 2), Ok(()));
    }
}
