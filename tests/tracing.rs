//! Traces through the queue (W3C Trace Context in AMQP headers, OTLP/HTTP export).
//!
//! A small OTLP/HTTP receiver runs in the test (POST /v1/traces, protobuf bodies
//! decoded with `opentelemetry-proto`). With `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at
//! it, `score-batch` and a `surge worker` export their spans there, and the test
//! checks that one trace runs from `score-batch`'s publish span, through the worker's
//! job span (its child, linked to the batch's span), to the result: the result's
//! `traceparent` names the worker's job span, as the span `score-batch` records for
//! the result (its child) shows, and as the header read directly off a result shows.
//! Malformed `traceparent` headers never fail a job: the trace starts at the worker.
//! Without the variable the worker exports nothing and hands a job's `traceparent`
//! back on the result unchanged.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;
use surge_protocol::{Topology, TraceParent, TRACEPARENT_HEADER};
use surge_testkit::*;

/// OTLP span kinds (opentelemetry.proto.trace.v1.Span.SpanKind).
const KIND_PRODUCER: i32 = 4;
const KIND_CONSUMER: i32 = 5;

/// One exported span, as the receiver decoded it.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    name: String,
    kind: i32,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    /// (trace id, span id) of each link.
    links: Vec<(Vec<u8>, Vec<u8>)>,
    attributes: BTreeMap<String, String>,
}

/// The OTLP/HTTP receiver: one thread accepting, one per connection (the exporter
/// keeps its connection alive), every request's spans appended to `spans`.
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Got>>>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the OTLP receiver");
        let addr = listener.local_addr().expect("the receiver's address");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (spans.clone(), requests.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (s, r) = (s.clone(), r.clone());
                std::thread::spawn(move || serve(conn, &s, &r));
            }
        });
        Collector {
            addr,
            spans,
            requests,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spans(&self) -> Vec<Got> {
        self.spans.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until `done` holds for the spans received, or panics after `within`.
    async fn wait_for(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&[Got]) -> bool,
    ) -> Vec<Got> {
        let start = Instant::now();
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                start.elapsed() < within,
                "{what}: not received within {within:?}; requests: {:?}; spans: {spans:#?}",
                self.requests.lock().map(|r| r.clone()).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Serves HTTP/1.1 requests on one connection until it closes.
fn serve(mut conn: TcpStream, spans: &Mutex<Vec<Got>>, requests: &Mutex<Vec<String>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // The head, up to the blank line.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 64 * 1024 || !read_more(&mut conn, &mut buf) {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let request_line = head.lines().next().unwrap_or_default().to_string();
        let length: usize = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            if !read_more(&mut conn, &mut buf) {
                return;
            }
        }
        let body: Vec<u8> = buf[head_end..head_end + length].to_vec();
        buf.drain(..head_end + length);
        if let Ok(mut r) = requests.lock() {
            r.push(format!("{request_line} ({length} bytes)"));
        }
        let status = if request_line.starts_with("POST /v1/traces ") {
            match ExportTraceServiceRequest::decode(body.as_slice()) {
                Ok(req) => {
                    if let Ok(mut s) = spans.lock() {
                        s.extend(flatten(req));
                    }
                    "200 OK"
                }
                Err(_) => "400 Bad Request",
            }
        } else {
            "404 Not Found"
        };
        // An empty ExportTraceServiceResponse is zero bytes of protobuf.
        let reply = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
        );
        if conn.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match conn.read(&mut chunk) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

fn flatten(req: ExportTraceServiceRequest) -> Vec<Got> {
    let mut out = Vec::new();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .map(|r| attrs(&r.attributes))
            .and_then(|a| a.get("service.name").cloned())
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(Got {
                    service: service.clone(),
                    name: s.name,
                    kind: s.kind,
                    trace_id: s.trace_id,
                    span_id: s.span_id,
                    parent_span_id: s.parent_span_id,
                    links: s
                        .links
                        .into_iter()
                        .map(|l| (l.trace_id, l.span_id))
                        .collect(),
                    attributes: attrs(&s.attributes),
                });
            }
        }
    }
    out
}

/// A `traceparent` of the test's own, as a producer such as the Python example makes.
fn fresh_traceparent() -> TraceParent {
    let id = uuid::Uuid::new_v4();
    let mut span_id = [0u8; 8];
    span_id.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..8]);
    span_id[0] |= 1; // never all zeros
    TraceParent {
        trace_id: *id.as_bytes(),
        span_id,
        flags: 1,
    }
}

/// Publishes one JSON job with `traceparent` set to `header` (if any) and returns the
/// result's properties and body. Results come to `reply`, consumed on `results`.
async fn job_with_header(
    ch: &lapin::Channel,
    results: &mut lapin::Consumer,
    prefix: &str,
    reply: &str,
    id: &str,
    header: Option<&str>,
) -> (BasicProperties, serde_json::Value) {
    let row = vec!["1.0"; feature_names().len()].join(",");
    let body = format!(r#"{{"v":1,"model":"breast-cancer","inputs":[[{row}]]}}"#);
    let mut props = BasicProperties::default()
        .with_message_id(id.into())
        .with_reply_to(reply.into())
        .with_content_type("application/json".into());
    if let Some(h) = header {
        let mut headers = FieldTable::default();
        headers.insert(
            TRACEPARENT_HEADER.into(),
            AMQPValue::LongString(LongString::from(h)),
        );
        props = props.with_headers(headers);
    }
    let confirm = ch
        .basic_publish(
            Topology::new(prefix).jobs_exchange().as_str().into(),
            "breast-cancer".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body.as_bytes(),
            props,
        )
        .await
        .expect("publishing a job")
        .await
        .expect("the job's confirm");
    assert!(confirm.is_ack(), "the broker refused job {id}");
    loop {
        let next = tokio::time::timeout(Duration::from_secs(30), results.next())
            .await
            .unwrap_or_else(|_| panic!("no result for {id} within 30 s"));
        let d = match next {
            Some(Ok(d)) => d,
            other => panic!("the result consumer ended: {other:?}"),
        };
        let _ = d.acker.ack(BasicAckOptions::default()).await;
        let result: serde_json::Value = serde_json::from_slice(&d.data).expect("a JSON result");
        if result["job_id"] == id {
            assert_eq!(result["status"], "ok", "job {id}: {result}");
            return (d.properties, result);
        }
    }
}

/// The `traceparent` header of a result, parsed; `None` when absent.
fn result_traceparent(props: &BasicProperties) -> Option<TraceParent> {
    surge_broker::headers::traceparent(props).map(|r| r.expect("a well-formed traceparent"))
}

async fn reply_consumer(
    prefix: &str,
) -> (lapin::Connection, lapin::Channel, lapin::Consumer, String) {
    let conn = require_broker().await;
    let ch = conn.create_channel().await.expect("a channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let reply = format!("{prefix}.test-replies");
    declare_reply_queue(&ch, &reply).await;
    let results = consume(&ch, &reply, "tracing-test").await;
    (conn, ch, results, reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_score_batch_through_the_worker_to_the_result() {
    let prefix = unique_prefix("tracing");
    let _cleanup = Cleanup::new(&prefix, &["breast-cancer"]);
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start();
    let endpoint = collector.endpoint();
    let otel: [(&str, &str); 2] = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        // Export within 100 ms of a span's end rather than 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let mut worker = WorkerProc::spawn_with_env(&prefix, "w-traced", dir.path(), &[], &otel);
    worker.wait_ready(Duration::from_secs(60)).await;

    // 1. score-batch: 6 rows, 2 per job, 3 jobs; each publish a producer span.
    let input = dir.path().join("rows.csv");
    write_rows_csv(&input, 6);
    let output = dir.path().join("scores.csv");
    let sb = spawn_score_batch_with_env(&prefix, &input, &output, &["--rows-per-job", "2"], &otel);
    let out = sb.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "score-batch failed: {}\nworker log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        worker.log_text()
    );
    let queue = Topology::new(&prefix).job_queue("breast-cancer");
    let process = format!("process {queue}");
    let spans = collector
        .wait_for(
            "score-batch's and the worker's spans",
            Duration::from_secs(30),
            |s| {
                let publishes = s
                    .iter()
                    .filter(|g| g.service == "score-batch" && g.kind == KIND_PRODUCER)
                    .count();
                let receives = s
                    .iter()
                    .filter(|g| g.service == "score-batch" && g.kind == KIND_CONSUMER)
                    .count();
                let jobs = s
                    .iter()
                    .filter(|g| {
                        g.service == "surge-worker"
                            && g.kind == KIND_CONSUMER
                            && g.attributes.contains_key("messaging.message.id")
                    })
                    .count();
                publishes >= 3 && receives >= 3 && jobs >= 3
            },
        )
        .await;
    let publishes: Vec<&Got> = spans
        .iter()
        .filter(|g| g.service == "score-batch" && g.kind == KIND_PRODUCER)
        .collect();
    assert_eq!(
        publishes.len(),
        3,
        "one publish span per job: {publishes:#?}"
    );
    let exchange = Topology::new(&prefix).jobs_exchange();
    let run = spans
        .iter()
        .find(|g| g.service == "score-batch" && g.name == "score-batch")
        .expect("score-batch's run span");
    for p in &publishes {
        assert_eq!(p.name, format!("publish {exchange}"));
        assert_eq!(p.attributes["messaging.system"], "rabbitmq");
        assert_eq!(p.attributes["messaging.destination.name"], exchange);
        assert_eq!(p.trace_id, run.trace_id, "a publish runs inside the run");
        assert_eq!(p.parent_span_id, run.span_id);
        let id = &p.attributes["messaging.message.id"];
        // The worker's job span: the publish span's child, in the same trace.
        let job = spans
            .iter()
            .find(|g| g.service == "surge-worker" && g.parent_span_id == p.span_id)
            .unwrap_or_else(|| panic!("no worker span is the child of publish {id}: {spans:#?}"));
        assert_eq!(job.trace_id, p.trace_id, "one trace from publish to job");
        assert_eq!(job.kind, KIND_CONSUMER);
        assert_eq!(job.name, process);
        assert_eq!(&job.attributes["messaging.message.id"], id);
        assert_eq!(job.attributes["messaging.destination.name"], queue);
        assert_eq!(job.attributes["messaging.system"], "rabbitmq");
        // Its batch: a span linked to the publish, to which the job links back.
        let batch = spans
            .iter()
            .find(|g| {
                g.service == "surge-worker"
                    && g.links.contains(&(p.trace_id.clone(), p.span_id.clone()))
            })
            .unwrap_or_else(|| panic!("no batch span links to publish {id}"));
        assert_eq!(batch.name, process);
        assert_eq!(batch.kind, KIND_CONSUMER);
        assert!(batch.parent_span_id.is_empty(), "a batch span is a root");
        assert!(
            job.links
                .contains(&(batch.trace_id.clone(), batch.span_id.clone())),
            "job {id} links to its batch"
        );
        // The result carried the job span's traceparent: score-batch's span for the
        // result is the job span's child, still in the one trace.
        let received = spans
            .iter()
            .find(|g| {
                g.service == "score-batch"
                    && g.kind == KIND_CONSUMER
                    && &g.attributes["messaging.message.id"] == id
            })
            .unwrap_or_else(|| panic!("no span of score-batch for the result of {id}"));
        assert_eq!(received.trace_id, p.trace_id, "one trace to the result");
        assert_eq!(
            received.parent_span_id, job.span_id,
            "the result's traceparent names the worker's job span"
        );
    }

    // 2. A producer's own traceparent (as the Python example sets it), read back off
    //    the result; a malformed one and none at all start a trace at the worker.
    let (conn, ch, mut results, reply) = reply_consumer(&prefix).await;
    let mine = fresh_traceparent();
    let (props, _) = job_with_header(
        &ch,
        &mut results,
        &prefix,
        &reply,
        "own-0",
        Some(&mine.to_string()),
    )
    .await;
    let back = result_traceparent(&props).expect("the result carries a traceparent");
    assert_eq!(
        back.trace_id, mine.trace_id,
        "the result is in the producer's trace"
    );
    assert_ne!(back.span_id, mine.span_id, "it names the worker's span");
    let spans = collector
        .wait_for("the job span of own-0", Duration::from_secs(30), |s| {
            s.iter().any(|g| g.span_id == back.span_id)
        })
        .await;
    let job = spans
        .iter()
        .find(|g| g.span_id == back.span_id)
        .expect("the job span");
    assert_eq!(job.service, "surge-worker");
    assert_eq!(job.trace_id, mine.trace_id);
    assert_eq!(
        job.parent_span_id, mine.span_id,
        "the producer's span is its parent"
    );

    for (id, header) in [
        ("bad-0", Some("00-not-a-trace-context-01")),
        ("bad-1", Some(&*mine.to_string().to_uppercase())),
        ("none-0", None),
    ] {
        let (props, _) = job_with_header(&ch, &mut results, &prefix, &reply, id, header).await;
        let back = result_traceparent(&props).expect("a trace started at the worker");
        assert_ne!(back.trace_id, mine.trace_id, "{id}");
        let spans = collector
            .wait_for(id, Duration::from_secs(30), |s| {
                s.iter().any(|g| g.span_id == back.span_id)
            })
            .await;
        let job = spans
            .iter()
            .find(|g| g.span_id == back.span_id)
            .expect("the job span");
        // With no producer context the job span is its batch's child.
        let batch = spans
            .iter()
            .find(|g| g.span_id == job.parent_span_id)
            .unwrap_or_else(|| panic!("{id}: the job span's parent is exported"));
        assert_eq!(batch.name, process);
        assert_eq!(batch.trace_id, back.trace_id);
    }
    let _ = conn.close(200, "done".into()).await;
    worker.stop(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_nothing_is_exported_and_the_traceparent_comes_back() {
    let prefix = unique_prefix("untraced");
    let _cleanup = Cleanup::new(&prefix, &["breast-cancer"]);
    let dir = tempfile::tempdir().unwrap();
    let off: [(&str, &str); 2] = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ""),
    ];
    let mut worker = WorkerProc::spawn_with_env(&prefix, "w-plain", dir.path(), &[], &off);
    worker.wait_ready(Duration::from_secs(60)).await;
    let (conn, ch, mut results, reply) = reply_consumer(&prefix).await;

    // The worker records no span of its own: the nearest recorded span is still the
    // producer's, so the result carries the job's traceparent back unchanged.
    let mine = fresh_traceparent();
    let (props, _) = job_with_header(
        &ch,
        &mut results,
        &prefix,
        &reply,
        "own-0",
        Some(&mine.to_string()),
    )
    .await;
    assert_eq!(result_traceparent(&props), Some(mine));

    // A malformed header is ignored: the job is scored, its result has no header.
    for (id, header) in [
        ("bad-0", "garbage"),
        (
            "bad-1",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ),
        (
            "bad-2",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
    ] {
        let (props, _) =
            job_with_header(&ch, &mut results, &prefix, &reply, id, Some(header)).await;
        assert_eq!(result_traceparent(&props), None, "{id}");
    }
    let _ = conn.close(200, "done".into()).await;
    worker.stop(Duration::from_secs(30)).await;
}
