//! Publishing where success means "the broker has it, in a queue".

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel};
use lapin::{Confirmation, PublisherConfirm};

use crate::{timed, BrokerError, Timeouts};

/// True for RabbitMQ's direct reply-to pseudo-queue (`amq.rabbitmq.reply-to...`, the
/// RPC pattern of pika and amqplib). It is not a queue, so a `mandatory` publish to it
/// is returned as unroutable even though it is delivered: publish to it without
/// `mandatory`. If its consumer has gone, the broker drops the message; that is the
/// pattern's own contract.
pub fn is_direct_reply_to(exchange: &str, routing_key: &str) -> bool {
    exchange.is_empty() && routing_key.starts_with("amq.rabbitmq.reply-to")
}

/// Publishes with `mandatory` (an unroutable message comes back instead of vanishing)
/// on a channel in confirm mode. Returns the pending confirmation, so that many
/// publishes can be in flight before their confirms are awaited with [`confirmed`].
pub async fn start_publish(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
    t: &Timeouts,
) -> Result<PublisherConfirm, BrokerError> {
    let opts = BasicPublishOptions {
        mandatory: !is_direct_reply_to(exchange, routing_key),
        ..BasicPublishOptions::default()
    };
    timed(
        "basic.publish",
        t.operation,
        ch.basic_publish(exchange.into(), routing_key.into(), opts, body, props),
    )
    .await
}

/// Awaits a publisher confirm: only an ack of a message that was routed counts.
pub async fn confirmed(
    pending: PublisherConfirm,
    exchange: &str,
    routing_key: &str,
    t: &Timeouts,
) -> Result<(), BrokerError> {
    match timed("publisher confirm", t.operation, pending).await? {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) => Err(BrokerError::Returned {
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
            reply_text: returned.reply_text.to_string(),
        }),
        Confirmation::Nack(_) => Err(BrokerError::Nacked {
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
        }),
        Confirmation::NotRequested => Err(BrokerError::Url(
            "channel is not in confirm mode; this is a bug".to_string(),
        )),
    }
}

/// Publishes one message and waits for its confirm.
pub async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
    t: &Timeouts,
) -> Result<(), BrokerError> {
    let pending = start_publish(ch, exchange, routing_key, body, props, t).await?;
    confirmed(pending, exchange, routing_key, t).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn direct_reply_to_is_recognised_only_on_the_default_exchange() {
        assert!(super::is_direct_reply_to("", "amq.rabbitmq.reply-to"));
        assert!(super::is_direct_reply_to(
            "",
            "amq.rabbitmq.reply-to.g1h2AA=="
        ));
        assert!(!super::is_direct_reply_to("", "surge.results"));
        assert!(!super::is_direct_reply_to("x", "amq.rabbitmq.reply-to"));
    }
}
