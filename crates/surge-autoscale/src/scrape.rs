//! Reading a worker's `/metrics` (with surge-ops' bounded HTTP GET and Prometheus
//! text parser) into what the autoscaler needs.

use surge_ops::names::worker::{IN_FLIGHT, JOBS, ROWS};
pub use surge_ops::scrape::{http_get, sum_metric};

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

/// Parses the figures the autoscaler needs out of a worker's `/metrics`.
pub fn parse_worker_metrics(text: &str) -> WorkerSample {
    WorkerSample {
        in_flight: sum_metric(text, IN_FLIGHT).max(0.0),
        jobs: sum_metric(text, JOBS),
        rows: sum_metric(text, ROWS),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
