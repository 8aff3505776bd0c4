//! Reading another process's `/metrics`: one bounded HTTP GET and one Prometheus text
//! parser, used by the autoscaler, the bench and the test kit.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sums every sample of metric `name` (any labels) in a Prometheus text exposition.
/// Lines of other metrics (including `name_bucket`, `name_sum`...) and comments are
/// skipped; an unparsable value counts as nothing.
pub fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            // The name must end here: `name 1` or `name{...} 1`.
            let value = if let Some(labelled) = rest.strip_prefix('{') {
                labelled.rsplit_once('}')?.1
            } else if rest.starts_with(' ') {
                rest
            } else {
                return None;
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .filter(|v| v.is_finite())
        .sum()
}

/// GETs `path` from `addr` over HTTP/1.0 within `timeout`; returns the body of a 200
/// answer, `None` on anything else (not up yet, refused, slow, not 200).
pub async fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Option<String> {
    match http_get_status(addr, path, timeout).await? {
        (200, body) => Some(body),
        _ => None,
    }
}

/// [`http_get`] with the answer's status: `(status, body)` of any answer, `None` when
/// nothing answered within `timeout` (for probes that tell 503 from no answer).
pub async fn http_get_status(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Option<(u16, String)> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        // A worker's /metrics is a few KiB; refuse to buffer anything absurd.
        (&mut s).take(8 << 20).read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    };
    tokio::time::timeout(timeout, fetch).await.ok().flatten()
}
