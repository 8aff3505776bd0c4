//! `/metrics`, `/healthz` and `/readyz` of a worker (served by `surge-ops`).

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::shutdown::Shutdown;

/// Binds `addr` and serves until shutdown; returns the bound address (useful with
/// port 0). `/healthz` answers while the process runs; `/readyz` only while it is
/// connected and consuming.
pub async fn serve(
    addr: SocketAddr,
    metrics_handle: Option<PrometheusHandle>,
    ready_flag: Arc<AtomicBool>,
    shutdown: Shutdown,
) -> std::io::Result<SocketAddr> {
    surge_ops::serve(
        addr,
        metrics_handle,
        ready_flag,
        "not connected to the broker\n",
        async move { shutdown.wait().await },
    )
    .await
}
