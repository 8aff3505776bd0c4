//! The run's own reply queue: declared durable (results survive a broker restart)
//! and left to expire an hour after the run stops using it, consumed by a task that
//! decodes each result, continues its trace, hands it to the run ([`Incoming`]) and
//! only then acks it.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use surge_broker::{timed, BrokerError, Timeouts};
use surge_ops::telemetry;
use surge_protocol::codec::decode_result;
use surge_protocol::{Encoding, JobResult, Limits};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::warn;

/// What the reply queue's reader hands the run.
pub(super) enum Incoming {
    /// A decoded result (already acked).
    Result(Box<JobResult>),
    /// The consumer failed or ended: the session is over.
    Lost(BrokerError),
}

/// Declares the run's reply queue `queue` on `ch`: durable, and deleted by the
/// broker an hour after the run stops using it.
pub(super) async fn declare(
    ch: &lapin::Channel,
    queue: &str,
    t: &Timeouts,
) -> Result<(), BrokerError> {
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongLongInt(3_600_000));
    let opts = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    timed(
        "queue.declare",
        t.operation,
        ch.queue_declare(queue.into(), opts, args),
    )
    .await?;
    Ok(())
}

/// The reply queue being consumed: its channel, the reader task, and what the
/// reader hands on.
pub(super) struct Replies {
    channel: lapin::Channel,
    reader: JoinHandle<()>,
    /// Results (and the loss of the consumer) as they come.
    pub(super) rx: mpsc::Receiver<Incoming>,
}

impl Replies {
    /// Starts consuming `queue` on a channel of its own, the results decoded within
    /// `limits`; each one's consumer span is a child of `run_trace` (or of the worker's
    /// job span that the result names).
    pub(super) async fn start(
        conn: &lapin::Connection,
        queue: &str,
        limits: Limits,
        t: &Timeouts,
        run_trace: &tracing::Span,
    ) -> Result<Self, BrokerError> {
        let cch = timed("channel.open", t.operation, conn.create_channel()).await?;
        timed(
            "basic.qos",
            t.operation,
            cch.basic_qos(2000, BasicQosOptions::default()),
        )
        .await?;
        let consumer = timed(
            "basic.consume",
            t.operation,
            cch.basic_consume(
                queue.into(),
                "score-batch".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        let (tx, rx) = mpsc::channel::<Incoming>(4096);
        let reader = tokio::spawn(read(
            consumer,
            tx,
            limits,
            t.operation,
            queue.to_string(),
            run_trace.clone(),
        ));
        Ok(Self {
            channel: cch,
            reader,
            rx,
        })
    }

    /// Cancels the consumer, then closes its channel (the caller closes the
    /// connection after): closing under a live consumer makes lapin log a spurious
    /// channel-state error.
    pub(super) async fn stop(self, t: &Timeouts) {
        let cch = self.channel;
        let _ = tokio::time::timeout(
            t.operation,
            cch.basic_cancel("score-batch".into(), BasicCancelOptions::default()),
        )
        .await;
        self.reader.abort();
        let _ = tokio::time::timeout(t.operation, cch.close(200, "score-batch done".into())).await;
    }
}

/// The reader task: hands each result of `queue` on to `tx` and acks it, until the
/// consumer fails or ends (said as [`Incoming::Lost`]) or the run stops listening.
async fn read(
    mut consumer: lapin::Consumer,
    tx: mpsc::Sender<Incoming>,
    limits: Limits,
    op_timeout: Duration,
    queue: String,
    run_trace: tracing::Span,
) {
    loop {
        let d = match consumer.next().await {
            Some(Ok(d)) => d,
            Some(Err(source)) => {
                let _ = tx
                    .send(Incoming::Lost(BrokerError::Amqp {
                        what: "consume results",
                        source,
                    }))
                    .await;
                return;
            }
            None => {
                let _ = tx
                    .send(Incoming::Lost(BrokerError::ConsumerEnded { queue }))
                    .await;
                return;
            }
        };
        // A result's trace runs on here: a consumer span, the child of the
        // worker's job span (the result's `traceparent`), else of the run's.
        let span = surge_ops::process_span!(
            parent: &run_trace,
            "receive",
            &queue,
            messaging.message.id = d.properties.message_id().as_ref().map_or("", |s| s.as_str()),
        );
        if !span.is_disabled() {
            if let Some(Ok(tp)) = surge_broker::headers::traceparent(&d.properties) {
                telemetry::set_parent(&span, &tp);
            }
        }
        let ct = d.properties.content_type().as_ref().map(|s| s.to_string());
        let decoded = Encoding::from_content_type(ct.as_deref(), &d.data)
            .and_then(|enc| decode_result(&d.data, enc, &limits));
        match decoded {
            Ok(r) => {
                if tx.send(Incoming::Result(Box::new(r))).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                warn!(error = %e, "dropping a message on the reply queue that is not a v1 result")
            }
        }
        // Acked once handed over: the run holds results in memory from here on.
        if let Err(e) = timed(
            "basic.ack",
            op_timeout,
            d.acker.ack(BasicAckOptions::default()),
        )
        .await
        {
            let _ = tx.send(Incoming::Lost(e)).await;
            return;
        }
    }
}
