//! Connecting with a bounded wait, over TLS for `amqps://` URLs.

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use tracing::{info, warn};

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
///
/// With several addresses, they are tried in turn, each for at most
/// `timeouts.connect`, starting after the address of the previous successful
/// connection made from this `url` (or its clones): a process whose connection was
/// lost tries the next node first. The first that answers is used; when none does,
/// the error lists each address (password redacted) with its failure, and counts as a
/// lost connection (the callers' reconnect loops retry). With one address its error
/// is returned as it is.
pub async fn connect(
    url: &AmqpUrl,
    name: &str,
    timeouts: &Timeouts,
) -> Result<Connection, BrokerError> {
    let props = ConnectionProperties::default().with_connection_name(name.to_string().into());
    let tls = url.tls().load()?;
    let n = url.len();
    let start = url.next_index();
    let mut failures = Vec::new();
    for k in 0..n {
        let i = (start + k) % n;
        let runtime = lapin::runtime::default_runtime().map_err(|source| BrokerError::Amqp {
            what: "connect",
            source,
        })?;
        let attempt = crate::timed(
            "connect",
            timeouts.connect,
            Connection::connect_with_config(
                &url.expose_address(i),
                props.clone(),
                tls.clone(),
                runtime,
            ),
        )
        .await;
        match attempt {
            Ok(conn) => {
                url.connected_to(i);
                if n > 1 {
                    info!(address = %url.redacted_address(i), connection = name, "connected to broker");
                }
                return Ok(conn);
            }
            Err(e) if n == 1 => return Err(e),
            Err(e) => {
                let address = url.redacted_address(i);
                warn!(%address, error = %e, left = n - k - 1, "broker address did not answer; trying the next");
                failures.push(format!("{address}: {e}"));
            }
        }
    }
    Err(BrokerError::Unreachable {
        tried: n,
        failures: failures.join("; "),
    })
}
