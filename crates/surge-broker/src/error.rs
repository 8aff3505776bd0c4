use std::time::Duration;

use thiserror::Error;

/// What went wrong talking to the broker.
#[derive(Debug, Error)]
pub enum BrokerError {
    /// An operation did not finish in time: the broker or the network is gone or stuck.
    #[error("{what} timed out after {after:?} (is the broker reachable?)")]
    Timeout {
        /// The operation.
        what: &'static str,
        /// The timeout.
        after: Duration,
    },
    /// The broker or the client library refused an operation.
    #[error("{what} failed: {source}")]
    Amqp {
        /// The operation.
        what: &'static str,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
    /// The broker refused a published message (publisher confirm `nack`).
    #[error("the broker refused (nacked) a message published to {exchange:?}/{routing_key:?}; is the queue full (x-overflow reject-publish) or the broker out of resources?")]
    Nacked {
        /// Exchange published to.
        exchange: String,
        /// Routing key.
        routing_key: String,
    },
    /// A `mandatory` message matched no queue and came back.
    #[error("no queue is bound for {exchange:?}/{routing_key:?}: {reply_text}")]
    Returned {
        /// Exchange published to.
        exchange: String,
        /// Routing key.
        routing_key: String,
        /// The broker's reason.
        reply_text: String,
    },
    /// A queue exists with other arguments than Surge declares.
    #[error("queue {queue:?} already exists with different arguments ({source}); delete it (rabbitmqctl delete_queue {queue}) or use another --prefix")]
    Mismatch {
        /// The queue.
        queue: String,
        /// The broker's refusal.
        #[source]
        source: lapin::Error,
    },
    /// The AMQP URL is unusable.
    #[error("AMQP URL: {0}")]
    Url(String),
    /// The TLS files are missing, unreadable or not what they should be.
    #[error("TLS: {0}")]
    Tls(String),
    /// None of several broker addresses answered.
    #[error("none of the {tried} broker addresses answered: {failures}")]
    Unreachable {
        /// How many addresses were tried.
        tried: usize,
        /// Each address (password redacted) and its error, `; `-separated.
        failures: String,
    },
    /// A consumer's stream ended: the broker cancelled it (its queue was deleted, its
    /// node went down) or its channel closed.
    #[error("the consumer of {queue} was cancelled by the broker or its channel closed (queue deleted, node down, or connection lost)")]
    ConsumerEnded {
        /// The queue consumed.
        queue: String,
    },
}

impl BrokerError {
    /// True when the error means the connection or channel is gone (as opposed to a
    /// refusal of one message), so the caller should reconnect.
    pub fn is_connection_loss(&self) -> bool {
        matches!(
            self,
            BrokerError::Timeout { .. }
                | BrokerError::Amqp { .. }
                | BrokerError::ConsumerEnded { .. }
                | BrokerError::Unreachable { .. }
        )
    }
}
