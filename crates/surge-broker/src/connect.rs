//! Connecting with a bounded wait, over TLS for `amqps://` URLs.

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

use crate::{AmqpUrl, BrokerError};

/// How long broker operations may take before the connection is presumed lost.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect plus AMQP handshake.
    pub connect: Duration,
    /// Declares, publishes, confirms, acks, cancels.
    pub operation: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            operation: Duration::from_secs(15),
        }
    }
}

/// Opens a connection named `name` (shown in the management UI). For `amqps://` the
/// URL's TLS files are read now (so rotated certificates are picked up) and the
/// broker's certificate is checked against the system's CAs plus the private CA.
pub async fn connect(
    url: &AmqpUrl,
    name: &str,
    timeouts: &Timeouts,
) -> Result<Connection, BrokerError> {
    let props = ConnectionProperties::default().with_connection_name(name.to_string().into());
    let tls = url.tls().load()?;
    let runtime = lapin::runtime::default_runtime().map_err(|source| BrokerError::Amqp {
        what: "connect",
        source,
    })?;
    crate::timed(
        "connect",
        timeouts.connect,
        Connection::connect_with_config(url.expose(), props, tls, runtime),
    )
    .await
}
