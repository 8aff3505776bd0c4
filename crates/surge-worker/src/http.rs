//! `/metrics`, `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::shutdown::Shutdown;

#[derive(Clone)]
struct AppState {
    metrics: Option<PrometheusHandle>,
    ready: Arc<AtomicBool>,
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

async fn ready(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the broker\n",
        )
    }
}

/// Binds `addr` and serves until shutdown; returns the bound address (useful with
/// port 0). `/healthz` answers while the process runs; `/readyz` only while it is
/// connected and consuming.
pub async fn serve(
    addr: SocketAddr,
    metrics_handle: Option<PrometheusHandle>,
    ready_flag: Arc<AtomicBool>,
    mut shutdown: Shutdown,
) -> std::io::Result<SocketAddr> {
    let state = AppState {
        metrics: metrics_handle,
        ready: ready_flag,
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    });
    Ok(bound)
}
