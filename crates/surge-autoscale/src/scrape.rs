//! Reading a worker's `/metrics`: a bounded HTTP GET and a Prometheus text parser
//! (pure, tested without a worker).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the autoscaler reads off one worker.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WorkerSample {
    /// `surge_jobs_in_flight`.
    pub in_flight: f64,
    /// `surge_jobs_total`, all labels summed.
    pub jobs: f64,
    /// `surge_rows_total`, all labels summed.
    pub rows: f64,
}

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

/// Parses the figures the autoscaler needs out of a worker's `/metrics`.
pub fn parse_worker_metrics(text: &str) -> WorkerSample {
    WorkerSample {
        in_flight: sum_metric(text, "surge_jobs_in_flight").max(0.0),
        jobs: sum_metric(text, "surge_jobs_total"),
        rows: sum_metric(text, "surge_rows_total"),
    }
}

/// GETs `path` from `addr` over HTTP/1.0 within `timeout`; returns the body of a 200
/// answer, `None` on anything else (not up yet, refused, slow, not 200).
pub async fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Option<String> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        // A worker's /metrics is a few KiB; refuse to buffer anything absurd.
        (&mut s).take(8 << 20).read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?;
        (status == "200").then(|| body.to_string())
    };
    tokio::time::timeout(timeout, fetch).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# TYPE surge_jobs_total counter
surge_jobs_total{model=\"a\",status=\"ok\"} 120
surge_jobs_total{model=\"a\",status=\"error\"} 3
surge_jobs_total_extra 99
# TYPE surge_jobs_in_flight gauge
surge_jobs_in_flight 7
surge_rows_total{model=\"a\"} 1200
surge_batch_rows_bucket{le=\"+Inf\"} 5
surge_batch_rows_sum 40
surge_rows_total{model=\"b\"} NaN
";

    #[test]
    fn sums_a_family_and_nothing_else() {
        assert_eq!(sum_metric(SAMPLE, "surge_jobs_total"), 123.0);
        assert_eq!(sum_metric(SAMPLE, "surge_batch_rows"), 0.0);
        assert_eq!(sum_metric(SAMPLE, "missing"), 0.0);
        assert_eq!(
            parse_worker_metrics(SAMPLE),
            WorkerSample {
                in_flight: 7.0,
                jobs: 123.0,
                rows: 1200.0
            }
        );
        assert_eq!(
            parse_worker_metrics("garbage {{ 1 2"),
            WorkerSample::default()
        );
    }

    #[tokio::test]
    async fn a_closed_port_is_none_not_a_hang() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        assert_eq!(
            http_get(addr, "/metrics", Duration::from_secs(1)).await,
            None
        );
    }
}
