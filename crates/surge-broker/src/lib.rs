//! Surge's RabbitMQ layer, on lapin. Everything the binaries need from the broker and
//! nothing more:
//!
//! * [`url`]: the AMQP URL, read from the environment or a file, whose password never
//!   reaches a log line (its `Debug` and `Display` redact it).
//! * [`connect`]: connecting with a timeout and a heartbeat, so a half-open connection
//!   is noticed; over TLS for `amqps://`.
//! * [`tls`]: a private CA and client certificates for `amqps://`, from PEM files.
//! * [`topology`]: declaring the v1 exchanges and queues, idempotently.
//! * [`publish`]: publishing with `mandatory` and publisher confirms, where only a
//!   broker ack of a routed message counts as success.
//! * [`backoff`]: the one exponential backoff every retry loop uses.
//! * [`headers`]: the W3C `traceparent` header, read from a delivery and written on a
//!   publish.
//!
//! lapin does not bound its awaits and has known hangs when the broker goes away, so
//! every broker await here goes through [`timed`]. lapin does not reconnect either:
//! callers own a reconnect loop that rebuilds connection, channels, topology and
//! consumers (see `surge-worker`).

pub mod backoff;
pub mod connect;
mod error;
pub mod headers;
pub mod publish;
pub mod tls;
pub mod topology;
pub mod url;

use std::future::Future;
use std::time::Duration;

pub use backoff::Backoff;
pub use connect::{connect, Timeouts};
pub use error::BrokerError;
pub use lapin;
pub use tls::TlsFiles;
pub use url::AmqpUrl;

/// Awaits `fut` for at most `after`; a broker operation that takes longer is treated as
/// a lost connection by the caller.
pub async fn timed<T, F>(what: &'static str, after: Duration, fut: F) -> Result<T, BrokerError>
where
    F: Future<Output = Result<T, lapin::Error>>,
{
    match tokio::time::timeout(after, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(BrokerError::Amqp { what, source }),
        Err(_) => Err(BrokerError::Timeout { what, after }),
    }
}
