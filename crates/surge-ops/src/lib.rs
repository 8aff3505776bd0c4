//! Operations endpoints shared by Surge's long-running processes (the worker and the
//! autoscaler): `/metrics` in the Prometheus text format, `/healthz` and `/readyz`.
//!
//! Nothing here knows about jobs or brokers: each process installs the recorder with
//! its own histogram buckets ([`install_recorder`]), owns a readiness flag, and hands
//! both to [`serve`]. [`telemetry`] exports traces over OTLP/HTTP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and moves trace contexts between spans and the
//! `traceparent` header.

pub mod names;
pub mod rate;
pub mod scrape;
pub mod shutdown;
pub mod telemetry;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

pub use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
/// For [`process_span!`]: the `tracing` its expansion calls.
#[doc(hidden)]
pub use tracing;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder built by `builder` (the first call
/// wins; later calls return the same handle) and starts its upkeep. `None` when another
/// recorder was installed first.
pub fn install_recorder(builder: PrometheusBuilder) -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            // A recorder built this way keeps every histogram sample until upkeep folds
            // it into the buckets; without upkeep a process nobody scrapes grows by tens
            // of bytes per observation, for ever (the soak found it). Upkeep every 5 s.
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(std::time::Duration::from_secs(5));
                    upkeep.run_upkeep();
                });
            Some(handle)
        })
        .clone()
}

#[derive(Clone)]
struct AppState {
    metrics: Option<PrometheusHandle>,
    ready: Arc<AtomicBool>,
    not_ready: &'static str,
}

async fn metrics(State(s): State<AppState>) -> (StatusCode, String) {
    match &s.metrics {
        Some(h) => (StatusCode::OK, h.render()),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed\n".into(),
        ),
    }
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, s.not_ready)
    }
}

/// Binds `addr` and serves until `shutdown` resolves; returns the bound address
/// (useful with port 0). `/healthz` answers while the process runs; `/readyz` answers
/// 200 only while `ready` is set, and `not_ready` (one line saying why) otherwise.
pub async fn serve(
    addr: SocketAddr,
    metrics_handle: Option<PrometheusHandle>,
    ready: Arc<AtomicBool>,
    not_ready: &'static str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    serve_with(
        addr,
        metrics_handle,
        ready,
        not_ready,
        shutdown,
        Router::new(),
    )
    .await
}

/// [`serve`], plus the process's own routes (the autoscaler's status page).
pub async fn serve_with(
    addr: SocketAddr,
    metrics_handle: Option<PrometheusHandle>,
    ready: Arc<AtomicBool>,
    not_ready: &'static str,
    shutdown: impl Future<Output = ()> + Send + 'static,
    extra: Router,
) -> std::io::Result<SocketAddr> {
    let state = AppState {
        metrics: metrics_handle,
        ready,
        not_ready,
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
        .merge(extra);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn readyz_follows_the_flag_and_metrics_says_when_missing() {
        let ready = Arc::new(AtomicBool::new(false));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let addr = serve(
            "127.0.0.1:0".parse().unwrap(),
            None,
            ready.clone(),
            "not connected\n",
            async {
                let _ = rx.await;
            },
        )
        .await
        .unwrap();
        assert!(get(addr, "/healthz").await.contains("200 OK"));
        let r = get(addr, "/readyz").await;
        assert!(r.contains("503") && r.ends_with("not connected\n"), "{r}");
        ready.store(true, Ordering::Relaxed);
        assert!(get(addr, "/readyz").await.contains("200 OK"));
        assert!(get(addr, "/metrics").await.contains("503"));
        let _ = tx.send(());
    }
}
