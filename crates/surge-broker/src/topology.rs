//! Declaring the v1 topology. Declares are idempotent: every process declares what it
//! uses, so it does not matter whether workers or producers start first.

use lapin::options::{
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};
use surge_protocol::topology::ArgValue;
use surge_protocol::Topology;

use crate::{timed, BrokerError, Timeouts};

/// Converts protocol-level queue arguments to an AMQP field table.
pub fn field_table(args: &[(&'static str, ArgValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in args {
        let value = match v {
            ArgValue::Str(s) => AMQPValue::LongString(LongString::from(s.to_string())),
            ArgValue::String(s) => AMQPValue::LongString(LongString::from(s.clone())),
            ArgValue::Int(i) => AMQPValue::LongLongInt(*i),
        };
        t.insert((*k).into(), value);
    }
    t
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

/// Binds `queue` to `exchange` with `routing_key`.
async fn bind(
    ch: &Channel,
    queue: &str,
    exchange: &str,
    routing_key: &str,
    t: &Timeouts,
) -> Result<(), BrokerError> {
    timed(
        "queue.bind",
        t.operation,
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
}

async fn declare_queue(
    ch: &Channel,
    name: &str,
    args: FieldTable,
    t: &Timeouts,
) -> Result<(), BrokerError> {
    let opts = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    match timed(
        "queue.declare",
        t.operation,
        ch.queue_declare(name.into(), opts, args),
    )
    .await
    {
        Ok(_) => Ok(()),
        Err(BrokerError::Amqp { source, .. })
            if source.to_string().contains("PRECONDITION_FAILED") =>
        {
            Err(BrokerError::Mismatch {
                queue: name.to_string(),
                source,
            })
        }
        Err(e) => Err(e),
    }
}

/// Opens the channel a producer publishes on (score-batch's jobs, a worker's results):
/// in confirm mode, with the shared part of the topology declared ([`declare_base`]).
pub async fn publishing_channel(
    conn: &lapin::Connection,
    topo: &Topology,
    t: &Timeouts,
) -> Result<Channel, BrokerError> {
    let ch = timed("channel.open", t.operation, conn.create_channel()).await?;
    timed(
        "confirm.select",
        t.operation,
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await?;
    declare_base(&ch, topo, t).await?;
    Ok(ch)
}

/// Declares the shared part: the jobs exchange, the dead-letter exchange and queue,
/// and the default results queue.
pub async fn declare_base(ch: &Channel, topo: &Topology, t: &Timeouts) -> Result<(), BrokerError> {
    for (exchange, kind) in [
        (topo.jobs_exchange(), ExchangeKind::Direct),
        (topo.dead_exchange(), ExchangeKind::Fanout),
    ] {
        timed(
            "exchange.declare",
            t.operation,
            ch.exchange_declare(
                exchange.as_str().into(),
                kind,
                durable_exchange(),
                FieldTable::default(),
            ),
        )
        .await?;
    }
    let durable = field_table(&topo.durable_queue_arguments());
    declare_queue(ch, &topo.dead_queue(), durable.clone(), t).await?;
    bind(ch, &topo.dead_queue(), &topo.dead_exchange(), "", t).await?;
    declare_queue(ch, &topo.results_queue(), durable, t).await
}

/// Declares one model's job queues (the unsharded one, then each shard's when the
/// topology has shards) and binds each to the jobs exchange with its routing key.
pub async fn declare_model(
    ch: &Channel,
    topo: &Topology,
    model: &str,
    t: &Timeouts,
) -> Result<(), BrokerError> {
    for (i, (queue, key)) in topo.job_queues(model).into_iter().enumerate() {
        let args = if i == 0 {
            topo.job_queue_arguments()
        } else {
            topo.shard_queue_arguments()
        };
        declare_queue(ch, &queue, field_table(&args), t).await?;
        bind(ch, &queue, &topo.jobs_exchange(), &key, t).await?;
    }
    Ok(())
}

/// What a passive declare says of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueDepth {
    /// Ready messages (not counting those delivered and unacked).
    pub ready: u32,
    /// Consumers.
    pub consumers: u32,
}

/// Reads a model's depth over all its job queues (see [`Topology::job_queues`]): the
/// ready messages summed, and the fewest consumers any of them has, so that a shard
/// nobody consumes shows as 0. `queue` names that shard (or the first queue).
pub async fn model_depth(
    ch: &Channel,
    topo: &Topology,
    model: &str,
    t: &Timeouts,
) -> Result<(QueueDepth, String), BrokerError> {
    let mut ready = 0u32;
    let mut least: Option<(u32, String)> = None;
    for (queue, _) in topo.job_queues(model) {
        let d = queue_depth(ch, &queue, t).await?;
        ready = ready.saturating_add(d.ready);
        if least.as_ref().is_none_or(|(c, _)| d.consumers < *c) {
            least = Some((d.consumers, queue));
        }
    }
    let (consumers, queue) = least.unwrap_or_else(|| (0, topo.job_queue(model)));
    Ok((QueueDepth { ready, consumers }, queue))
}

/// Reads a queue's depth with a passive declare. A missing queue is an error, and the
/// broker closes `ch` then: use a channel that may be lost.
pub async fn queue_depth(
    ch: &Channel,
    queue: &str,
    t: &Timeouts,
) -> Result<QueueDepth, BrokerError> {
    let q = timed(
        "queue.declare(passive)",
        t.operation,
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    Ok(QueueDepth {
        ready: q.message_count(),
        consumers: q.consumer_count(),
    })
}
