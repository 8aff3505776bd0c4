//! W3C Trace Context on the wire: the `traceparent` header of a job and of its result.
//!
//! A producer that traces puts its publish span's context on the job as the AMQP
//! header `traceparent` (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`, the
//! format of <https://www.w3.org/TR/trace-context/#traceparent-header>); a worker
//! continues that trace and puts its own job span's context on the result. The header
//! is optional and advisory: a job whose header is missing or malformed is scored like
//! any other, and its trace simply starts at the worker.
//!
//! Parsing works on the header's bytes, allocates nothing and never panics: a header is
//! at most a few dozen bytes of hex, but it comes from the network like the body.

use std::fmt;

/// The AMQP header (in the message properties' `headers` table) that carries the trace
/// context, on jobs and on results. The value is a string.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// Length of a version-00 `traceparent`: `2 + 1 + 32 + 1 + 16 + 1 + 2`.
const LEN_V00: usize = 55;

/// A parsed `traceparent`: which trace a message belongs to and which span sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// The trace every span of one job's journey shares; never all zeros.
    pub trace_id: [u8; 16],
    /// The span that published the message (the parent of the receiver's span); never
    /// all zeros.
    pub span_id: [u8; 8],
    /// Trace flags; bit 0 is "sampled": the sender recorded its span, and a receiver
    /// that follows its parent's decision records its own.
    pub flags: u8,
}

/// Why a `traceparent` value was not used. A receiver ignores such a header and starts
/// a new trace; the job itself is unaffected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TraceParentError {
    /// Too short, too long for its version, or fields not separated by `-` where the
    /// format puts them.
    #[error("a traceparent is `00-<32 hex>-<16 hex>-<2 hex>` (55 characters)")]
    Shape,
    /// A field holds something other than lowercase hex digits.
    #[error("a traceparent field is not lowercase hex")]
    NotHex,
    /// Version `ff`, which the format reserves as invalid.
    #[error("traceparent version ff is invalid")]
    Version,
    /// A trace id or span id of all zeros, which the format reserves as invalid.
    #[error("a traceparent trace id or span id is all zeros")]
    ZeroId,
}

impl TraceParent {
    /// Whether the sender recorded its span (flag bit 0).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// Parses a header value. Surrounding ASCII whitespace is ignored. Versions other
    /// than `00` are read as the format asks (the first four fields, and nothing but
    /// `-…` after them); version `00` must be exactly 55 characters.
    pub fn parse(value: &[u8]) -> Result<Self, TraceParentError> {
        let v = value.trim_ascii();
        if v.len() < LEN_V00 {
            return Err(TraceParentError::Shape);
        }
        if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return Err(TraceParentError::Shape);
        }
        let version: [u8; 1] = hex(&v[0..2])?;
        match version[0] {
            0xff => return Err(TraceParentError::Version),
            0x00 if v.len() != LEN_V00 => return Err(TraceParentError::Shape),
            // A later version may append fields, each after a `-`.
            _ if v.len() > LEN_V00 && v[LEN_V00] != b'-' => return Err(TraceParentError::Shape),
            _ => {}
        }
        let trace_id: [u8; 16] = hex(&v[3..35])?;
        let span_id: [u8; 8] = hex(&v[36..52])?;
        let [flags] = hex::<1>(&v[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return Err(TraceParentError::ZeroId);
        }
        Ok(TraceParent {
            trace_id,
            span_id,
            flags,
        })
    }
}

impl std::str::FromStr for TraceParent {
    type Err = TraceParentError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TraceParent::parse(s.as_bytes())
    }
}

/// Writes version `00`, lowercase, whatever version was parsed (a receiver that speaks
/// version 00 propagates version 00).
impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("00-")?;
        for b in self.trace_id {
            write!(f, "{b:02x}")?;
        }
        f.write_str("-")?;
        for b in self.span_id {
            write!(f, "{b:02x}")?;
        }
        write!(f, "-{:02x}", self.flags)
    }
}

/// Decodes exactly `2 * N` lowercase hex digits.
fn hex<const N: usize>(digits: &[u8]) -> Result<[u8; N], TraceParentError> {
    fn nibble(c: u8) -> Result<u8, TraceParentError> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            _ => Err(TraceParentError::NotHex),
        }
    }
    if digits.len() != 2 * N {
        return Err(TraceParentError::Shape);
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *o = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_w3c_example_round_trips() {
        let tp: TraceParent = GOOD.parse().unwrap();
        assert_eq!(tp.trace_id[0], 0x4b);
        assert_eq!(tp.trace_id[15], 0x36);
        assert_eq!(tp.span_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert!(tp.sampled());
        assert_eq!(tp.to_string(), GOOD);
        let unsampled: TraceParent = GOOD.replace("-01", "-00").parse().unwrap();
        assert!(!unsampled.sampled());
        assert!(unsampled.to_string().ends_with("-00"));
    }

    #[test]
    fn whitespace_around_the_value_is_ignored() {
        let tp = TraceParent::parse(format!("  {GOOD}\t").as_bytes()).unwrap();
        assert_eq!(tp.to_string(), GOOD);
    }

    #[test]
    fn later_versions_are_read_and_written_as_00() {
        let v1 = GOOD.replacen("00", "01", 1);
        assert_eq!(v1.parse::<TraceParent>().unwrap().to_string(), GOOD);
        let more = format!("{}-what-comes-next", GOOD.replacen("00", "cc", 1));
        assert_eq!(more.parse::<TraceParent>().unwrap().to_string(), GOOD);
        // A later version still needs a `-` after the flags if anything follows.
        let glued = format!("{}x", GOOD.replacen("00", "cc", 1));
        assert_eq!(glued.parse::<TraceParent>(), Err(TraceParentError::Shape));
    }

    #[test]
    fn malformed_headers_are_refused_with_a_reason_and_never_panic() {
        use TraceParentError::*;
        let cases: Vec<(String, TraceParentError)> = vec![
            (String::new(), Shape),
            ("00".into(), Shape),
            ("garbage".into(), Shape),
            (GOOD[..54].into(), Shape),
            (format!("{GOOD}-"), Shape),
            (format!("{GOOD}0"), Shape),
            (GOOD.replace('-', "_"), Shape),
            (GOOD.to_uppercase(), NotHex),
            (GOOD.replacen("4bf9", "4bg9", 1), NotHex),
            (GOOD.replacen("00f0", "00 0", 1), NotHex),
            (GOOD.replacen("-01", "-0x", 1), NotHex),
            (GOOD.replacen("00", "ff", 1), Version),
            (format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)), ZeroId),
            (
                format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", "0".repeat(16)),
                ZeroId,
            ),
        ];
        for (value, want) in cases {
            assert_eq!(TraceParent::parse(value.as_bytes()), Err(want), "{value:?}");
        }
        // Non-UTF-8 and multi-byte characters in the right places: refused, no panic.
        let mut bytes = GOOD.as_bytes().to_vec();
        bytes[10] = 0xff;
        assert_eq!(TraceParent::parse(&bytes), Err(NotHex));
        let accented = GOOD.replacen("4b", "é", 1);
        assert!(TraceParent::parse(accented.as_bytes()).is_err());
        for len in 0..80 {
            let _ = TraceParent::parse(&vec![b'-'; len]);
            let _ = TraceParent::parse(&GOOD.as_bytes()[..len.min(GOOD.len())]);
        }
    }
}
