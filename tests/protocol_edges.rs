//! The edges of the wire protocol, each from a client in another language: a Node
//! client (amqplib, @msgpack/msgpack) and a Python client (pika, msgpack), both written
//! from docs/PROTOCOL.md alone, run against a real worker; this file asserts on what
//! they report. Then the §9 examples of docs/PROTOCOL.md, published and run exactly as
//! they are written there, and a result whose reply queue does not exist.
//!
//! Each test has a vhost of its own (deleted however the test ends), with the default
//! prefix, so the documented names are the real ones. The Node client needs
//! `make node-client` (npm ci into tests/clients/node); the Python ones need pika and
//! msgpack (`make pyenv`; `make test` passes that interpreter in SURGE_PYTHON).

use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::process::Command;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation};
use serde_json::Value;
use surge_broker::{AmqpUrl, Timeouts};
use surge_testkit::*;

/// The worker's `--max-rows-per-job` in the client tests, so that a small job is
/// `too_many_rows`.
const MAX_ROWS: &str = "4";
const MODEL: &str = "breast-cancer";
/// Where the clients put the bad value: row 1, feature 4 of the model.
const BAD_AT: &str = "row 1, feature 4 (mean_smoothness)";

/// Publishes a persistent JSON job for the model to `surge.jobs`, mandatory, and
/// waits for the broker's confirm (the channel is in confirm mode).
async fn publish_json_job(
    ch: &lapin::Channel,
    body: &[u8],
    id: &str,
    reply_to: &str,
) -> lapin::Result<Confirmation> {
    ch.basic_publish(
        "surge.jobs".into(),
        MODEL.into(),
        BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        },
        body,
        BasicProperties::default()
            .with_message_id(id.into())
            .with_reply_to(reply_to.into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2),
    )
    .await
    .expect("publishing the job")
    .await
}

/// A ready worker with the default prefix on the vhost of `url`.
async fn worker(
    url: &str,
    name: &str,
    dir: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> WorkerProc {
    let mut args = vec!["--model", MODEL];
    args.extend_from_slice(extra);
    let mut envs = vec![("AMQP_URL", url)];
    envs.extend_from_slice(env);
    let mut w = WorkerProc::spawn_with_env("surge", name, dir, &args, &envs);
    w.wait_ready(Duration::from_secs(30)).await;
    w
}

async fn connect(url: &str) -> lapin::Connection {
    let url = AmqpUrl::new(url).expect("parsing the AMQP URL");
    let t = Timeouts {
        connect: Duration::from_secs(5),
        operation: Duration::from_secs(10),
    };
    surge_broker::connect(&url, "protocol-edges", &t)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

/// Messages in `queue`, by passive declare.
async fn queue_len(conn: &lapin::Connection, queue: &str) -> u32 {
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("{queue}: {e}"));
    let _ = ch.close(200, "done".into()).await;
    q.message_count()
}

fn python() -> String {
    std::env::var("SURGE_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs a client (from the repository root, as its header says) against the vhost of
/// `url`: its exit status, stdout and stderr.
async fn run(program: &str, script: &Path, url: &str, hint: &str) -> (ExitStatus, String, String) {
    let out = Command::new(program)
        .arg(script)
        .current_dir(workspace())
        .env("AMQP_URL", url)
        .env("SURGE_PREFIX", "surge")
        .env("SURGE_MAX_ROWS", MAX_ROWS)
        .output()
        .await
        .unwrap_or_else(|e| panic!("running {program} {}: {e} ({hint})", script.display()));
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The report a client prints as its last line of stdout.
fn report(status: ExitStatus, stdout: &str, stderr: &str, hint: &str) -> Value {
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| {
        panic!("the client printed no report ({e}; {hint}); exit {status}\nstdout:\n{stdout}\nstderr:\n{stderr}")
    })
}

/// What a client's case got back, with the case in every failure message.
struct Got<'a> {
    client: &'a str,
    name: &'a str,
    case: &'a Value,
}

impl Got<'_> {
    fn result(&self) -> &Value {
        let r = &self.case["result"];
        assert!(r.is_object(), "{self}: no result");
        r
    }
    fn eq(&self, field: &str, want: &str) {
        let got = self.result().pointer(field).and_then(Value::as_str);
        assert_eq!(got, Some(want), "{self}: {field}");
    }
    fn ok(&self) {
        self.eq("/status", "ok");
        self.eq("/model", MODEL);
        let outputs = self.result()["outputs"].as_array().map(Vec::len);
        assert_eq!(outputs, Some(2), "{self}: one output per row");
    }
    fn error(&self, kind: &str, model: &str) {
        self.eq("/status", "error");
        self.eq("/error/kind", kind);
        self.eq("/model", model);
    }
    fn queue_ms(&self) -> f64 {
        self.ok();
        self.result()["timings"]["queue_ms"]
            .as_f64()
            .unwrap_or_else(|| panic!("{self}: no timings.queue_ms"))
    }
}

impl std::fmt::Display for Got<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} client, case {}: sent {} ({}, reply_to {}), got {}",
            self.client,
            self.name,
            self.case["sent"],
            self.case["content_type"],
            self.case["reply_to"],
            self.case["result"]
        )
    }
}

const NON_FINITE: [&str; 11] = [
    "json_null",
    "json_nan",
    "json_infinity",
    "json_minus_infinity",
    "json_overflow_1e999",
    "json_beyond_f32_1e39",
    "msgpack_nil",
    "msgpack_nan",
    "msgpack_infinity",
    "msgpack_minus_infinity",
    "msgpack_beyond_f32_1e39",
];

/// Asserts every case of a client's report, then what the worker and the broker saw.
async fn assert_edges(report: &Value, w: &WorkerProc, conn: &lapin::Connection) {
    let client = report["client"].as_str().unwrap_or("?");
    let got = |name: &'static str| {
        let case = &report["cases"][name];
        assert!(
            case.is_object(),
            "{client} client has no case {name}: {report}"
        );
        Got { client, name, case }
    };

    // Direct reply-to: answered, in both encodings.
    for name in ["direct_reply_to_json", "direct_reply_to_msgpack"] {
        let g = got(name);
        assert_eq!(g.case["reply_to"], "amq.rabbitmq.reply-to", "{g}");
        g.ok();
    }
    // null, NaN, ±Infinity and numbers beyond f32, in JSON and in MessagePack:
    // invalid_input, naming the row and the feature; the model is known.
    for name in NON_FINITE {
        let g = got(name);
        g.error("invalid_input", MODEL);
        let msg = g.result()["error"]["message"].as_str().unwrap_or("");
        assert!(msg.contains(BAD_AT), "{g}: the message must name {BAD_AT}");
    }
    // A list is not a job, in either encoding; no model can be read from it.
    for name in ["json_array_body", "msgpack_array_body"] {
        got(name).error("invalid_job", "");
    }
    // Errors name the model whenever it was readable.
    got("too_many_rows").error("too_many_rows", MODEL);
    got("version_not_a_string").error("invalid_job", MODEL);
    got("unsupported_version_v2").error("unsupported_version", MODEL);
    // An AMQP timestamp in milliseconds gives a sane queue wait.
    let g = got("timestamp_ms");
    let q = g.queue_ms();
    assert!((0.0..=10_000.0).contains(&q), "{g}: queue_ms {q}");
    // A producer clock ahead of the worker's: 0, counted, said once.
    let g = got("clock_ahead");
    assert_eq!(g.queue_ms(), 0.0, "{g}");
    assert!(
        w.metric_sum("surge_jobs_clock_ahead_total").await >= 1.0,
        "surge_jobs_clock_ahead_total"
    );
    let log = w.log_text();
    assert_eq!(
        log.matches("the producer's clock is ahead").count(),
        1,
        "said once:\n{log}"
    );

    // Nothing was dead-lettered: not the direct reply-to results (returned as
    // unroutable if published with mandatory), not the non-finite JSON (malformed,
    // before), nor anything else.
    assert_eq!(
        report["dead_letter_queue"],
        serde_json::json!({"name": "surge.dead", "messages": 0}),
        "{client} client saw dead letters; log:\n{log}"
    );
    assert_eq!(
        queue_len(conn, "surge.dead").await,
        0,
        "surge.dead; log:\n{log}"
    );
    assert_eq!(
        w.metric_sum("surge_dead_lettered_total").await,
        0.0,
        "log:\n{log}"
    );
    let problems = report["problems"].as_array().cloned().unwrap_or_default();
    assert!(problems.is_empty(), "{client} client: {problems:?}");
}

/// Runs one client's edge script (`program script url`) against a worker in a vhost of
/// the test's own, then checks what the client reported and what the broker holds.
async fn client_edges(
    vhost_tag: &str,
    worker_name: &str,
    program: &str,
    script: &Path,
    hint: &str,
) {
    let _broker = require_broker().await;
    let (_vhost, url) = OwnedVhost::for_guest(vhost_tag).await;
    let conn = connect(&url).await;
    let dir = tempfile::tempdir().expect("creating a temporary directory");
    let mut w = worker(
        &url,
        worker_name,
        dir.path(),
        &["--max-rows-per-job", MAX_ROWS],
        &[],
    )
    .await;
    let (status, stdout, stderr) = run(program, script, &url, hint).await;
    let report = report(status, &stdout, &stderr, hint);
    assert_edges(&report, &w, &conn).await;
    assert!(status.success(), "exit {status}\n{stdout}\n{stderr}");

    w.stop(Duration::from_secs(20)).await;
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_client_protocol_edges() {
    let client = workspace().join("tests/clients/node");
    assert!(
        client.join("node_modules/amqplib").is_dir()
            && client.join("node_modules/@msgpack/msgpack").is_dir(),
        "{}/node_modules is missing: run `make node-client` (make test does)",
        client.display()
    );
    let node = std::env::var("SURGE_NODE").unwrap_or_else(|_| "node".into());
    let hint = "needs Node.js >= 20 and `make node-client`";
    client_edges(
        "edges-node",
        "w-node",
        &node,
        &client.join("edges.mjs"),
        hint,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_protocol_edges() {
    let script = workspace().join("tests/clients/python/edges.py");
    let hint = "needs pika and msgpack: `make pyenv`, then SURGE_PYTHON=.venv/bin/python";
    client_edges("edges-py", "w-py", &python(), &script, hint).await;
}

/// The text of the first fenced block of `lang` after `heading` in docs/PROTOCOL.md.
fn doc_block(doc: &str, heading: &str, lang: &str) -> String {
    let at = doc
        .find(heading)
        .unwrap_or_else(|| panic!("docs/PROTOCOL.md has no {heading:?}"));
    let fence = format!("```{lang}\n");
    let start = doc[at..]
        .find(&fence)
        .map(|i| at + i + fence.len())
        .unwrap_or_else(|| panic!("no {lang} block after {heading:?}"));
    let end = doc[start..]
        .find("\n```")
        .map(|i| start + i + 1)
        .unwrap_or_else(|| panic!("unterminated {lang} block after {heading:?}"));
    doc[start..end].to_string()
}

/// The text after `anchor` in docs/PROTOCOL.md, up to the next blank line.
fn doc_paragraph<'a>(doc: &'a str, anchor: &str) -> &'a str {
    let at = doc
        .find(anchor)
        .unwrap_or_else(|| panic!("docs/PROTOCOL.md has no {anchor:?}"));
    let rest = &doc[at..];
    &rest[..rest.find("\n\n").unwrap_or(rest.len())]
}

/// True when `line` is what the document shows, where each `<placeholder>` in
/// `shown` stands for one or more lowercase hex digits (a trace or span id).
fn shown_matches(line: &str, shown: &str) -> bool {
    let mut rest = line;
    let mut pieces = shown.split('<');
    let Some(first) = pieces.next() else {
        return line.is_empty();
    };
    let Some(after) = rest.strip_prefix(first) else {
        return false;
    };
    rest = after;
    for piece in pieces {
        let Some((_, literal)) = piece.split_once('>') else {
            return false;
        };
        let hex = rest
            .find(|c: char| !matches!(c, '0'..='9' | 'a'..='f'))
            .unwrap_or(rest.len());
        if hex == 0 {
            return false;
        }
        match rest[hex..].strip_prefix(literal) {
            Some(after) => rest = after,
            None => return false,
        }
    }
    rest.is_empty()
}

/// The `code spans` of a piece of markdown.
fn code_spans(md: &str) -> Vec<&str> {
    md.split('`').skip(1).step_by(2).collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_md_examples_work_when_pasted() {
    let _broker = require_broker().await;
    let (_vhost, url) = OwnedVhost::for_guest("edges-doc").await;
    let conn = connect(&url).await;
    let dir = tempfile::tempdir().unwrap();
    let mut w = worker(&url, "w-doc", dir.path(), &[], &[]).await;
    let doc = std::fs::read_to_string(workspace().join("docs/PROTOCOL.md")).unwrap();

    // The JSON job, published as it is written, with the properties the text names.
    let job = doc_block(&doc, "### JSON", "json");
    let parsed: Value = serde_json::from_str(&job).unwrap_or_else(|e| panic!("{e}:\n{job}"));
    if let Some(deadline) = parsed["deadline_ms"].as_u64() {
        assert!(
            deadline > now_ms() + 10_000,
            "the JSON example's deadline_ms {deadline} has passed: pasted, it is answered expired"
        );
    }
    let props_line = doc_paragraph(&doc, "Properties:");
    let prop = |name: &str| {
        code_spans(props_line)
            .into_iter()
            .find_map(|s| s.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= in {props_line:?}"))
            .to_string()
    };
    let (id, reply_to, content_type) = (prop("message_id"), prop("reply_to"), prop("content_type"));
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = ch
        .basic_publish(
            "surge.jobs".into(),
            MODEL.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            job.as_bytes(),
            BasicProperties::default()
                .with_message_id(id.as_str().into())
                .with_reply_to(reply_to.as_str().into())
                .with_content_type(content_type.as_str().into())
                .with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(
        matches!(confirm, Confirmation::Ack(None)),
        "the job was not accepted: {confirm:?}"
    );
    let mut results = consume(&ch, &reply_to, "doc-results").await;
    let d = tokio::time::timeout(Duration::from_secs(30), results.next())
        .await
        .unwrap_or_else(|_| panic!("no result on {reply_to}; log:\n{}", w.log_text()))
        .unwrap()
        .unwrap();
    d.acker.ack(BasicAckOptions::default()).await.unwrap();
    let got: Value = serde_json::from_slice(&d.data).unwrap();
    // The result the document shows for it.
    let shown: Value = serde_json::from_str(&doc_block(&doc, "Its result", "json")).unwrap();
    assert_eq!(got["status"], "ok", "{got}");
    assert_eq!(got["job_id"], id.as_str());
    for field in ["v", "model", "version", "status", "output_names"] {
        assert_eq!(got[field], shown[field], "{field}: {got}");
    }
    let outputs = |r: &Value| -> Vec<f64> {
        r["outputs"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|row| row.as_array().cloned().unwrap_or_default())
            .filter_map(|x| x.as_f64())
            .collect()
    };
    let (got_out, shown_out) = (outputs(&got), outputs(&shown));
    assert_eq!(got_out.len(), shown_out.len(), "{got}");
    for (g, s) in got_out.iter().zip(&shown_out) {
        assert!(
            (g - s).abs() <= 1e-6,
            "outputs {got_out:?}, documented {shown_out:?}"
        );
    }

    // The Python example, run as it is written, from the repository root.
    let example = doc_block(&doc, "### Python (pika)", "python");
    let file = dir.path().join("example.py");
    std::fs::write(&file, &example).unwrap();
    let hint = "needs pika: `make pyenv`, then SURGE_PYTHON=.venv/bin/python";
    let (status, stdout, stderr) = run(&python(), &file, &url, hint).await;
    assert!(
        status.success(),
        "the §9 Python example failed ({hint}):\n{example}\nstdout:\n{stdout}\nstderr:\n{stderr}\nlog:\n{}",
        w.log_text()
    );
    // It prints what the document says it prints.
    let promised = code_spans(doc_paragraph(&doc, "It prints"));
    let printed: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        printed.len(),
        promised.len(),
        "{printed:?} vs {promised:?}\nstderr:\n{stderr}"
    );
    for (line, shown) in printed.iter().zip(&promised) {
        assert!(
            shown_matches(line, shown),
            "printed {line:?}, the document shows {shown:?}\nstderr:\n{stderr}"
        );
    }

    assert_eq!(queue_len(&conn, "surge.dead").await, 0);
    w.stop(Duration::from_secs(20)).await;
    let _ = conn.close(200, "done".into()).await;
}

/// True when `text` holds a run of at least `n` comma-separated integers (a byte
/// array written out by `{:?}`).
fn has_byte_array(text: &str, n: usize) -> bool {
    text.split(['[', ']']).any(|piece| {
        let items: Vec<&str> = piece.split(',').map(str::trim).collect();
        items.len() >= n && items.iter().all(|x| x.parse::<u8>().is_ok())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_for_a_missing_reply_queue_is_dead_lettered_and_logged_by_id_and_size() {
    let _broker = require_broker().await;
    let (_vhost, url) = OwnedVhost::for_guest("edges-unroutable").await;
    let conn = connect(&url).await;
    let dir = tempfile::tempdir().unwrap();
    // The default log filter, spelled out, so that RUST_LOG in the test's environment
    // cannot change what is checked: lapin at warn would dump a returned message whole.
    let mut w = worker(
        &url,
        "w-unroutable",
        dir.path(),
        &[],
        &[("RUST_LOG", "info,lapin=warn,amq_protocol=warn")],
    )
    .await;

    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let id = unique_prefix("job");
    let missing = unique_prefix("no-such-queue");
    let rows = vec![vec![1.5f32; 30]; 8];
    let body =
        serde_json::to_vec(&serde_json::json!({"v": 1, "model": MODEL, "inputs": rows})).unwrap();
    let confirm = publish_json_job(&ch, &body, &id, &missing).await.unwrap();
    assert!(
        matches!(confirm, Confirmation::Ack(None)),
        "the job was not accepted: {confirm:?}"
    );

    // The job (not its result) is dead-lettered as unroutable_result.
    let mut dead = consume(&ch, "surge.dead", "dead").await;
    let d = tokio::time::timeout(Duration::from_secs(30), dead.next())
        .await
        .unwrap_or_else(|_| panic!("nothing dead-lettered; log:\n{}", w.log_text()))
        .unwrap()
        .unwrap();
    d.acker.ack(BasicAckOptions::default()).await.unwrap();
    let headers = d.properties.headers().clone().unwrap_or_default();
    let header = |k: &str| match headers.inner().get(k) {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("header {k}: {other:?}"),
    };
    assert_eq!(header("x-surge-error-kind"), "unroutable_result");
    assert!(header("x-surge-reason").contains(&missing));
    assert_eq!(
        d.properties.message_id().as_ref().map(|s| s.as_str()),
        Some(id.as_str())
    );
    assert_eq!(d.data, body, "the job's own body is dead-lettered");
    // The worker counts the dead letter once the broker has confirmed it, which may be
    // a moment after the message reaches this consumer on a loaded machine.
    let counted = Instant::now();
    while w.metric_sum("surge_dead_lettered_total").await < 1.0
        && counted.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(w.metric_sum("surge_dead_lettered_total").await, 1.0);

    // The log names the job and the result's size, and holds no result body.
    w.stop(Duration::from_secs(20)).await;
    let log = w.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("returned a result"))
        .unwrap_or_else(|| panic!("no line about the returned result:\n{log}"));
    assert!(line.contains(&id), "the job id: {line}");
    let size = line
        .split_once("result_bytes=")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("no result_bytes=<n>: {line}"));
    assert!(
        size > 100,
        "a result of 8 outputs is more than 100 bytes: {line}"
    );
    assert!(
        !log.contains("Server returned us a message"),
        "lapin's dump:\n{log}"
    );
    assert!(
        !log.contains("malignant_probability"),
        "a result body:\n{log}"
    );
    assert!(!has_byte_array(&log, 16), "a byte array:\n{log}");
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_reply_to_result_whose_client_has_gone_is_dropped_and_its_job_acked() {
    let _broker = require_broker().await;
    let (_vhost, url) = OwnedVhost::for_guest("edges-gone").await;
    // Batches wait up to 2 s for company, so the client is gone before the answer.
    let dir = tempfile::tempdir().unwrap();
    let mut w = worker(&url, "w-gone", dir.path(), &["--max-wait-ms", "2000"], &[]).await;

    let client = connect(&url).await;
    let ch = client.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let _replies = ch
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "rpc".into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let id = unique_prefix("gone");
    let body = serde_json::to_vec(
        &serde_json::json!({"v": 1, "model": MODEL, "inputs": [vec![1.5f32; 30]]}),
    )
    .unwrap();
    let confirm = publish_json_job(&ch, &body, &id, "amq.rabbitmq.reply-to")
        .await
        .unwrap();
    assert!(
        matches!(confirm, Confirmation::Ack(None)),
        "the job was not accepted: {confirm:?}"
    );
    client.close(200, "gone".into()).await.unwrap();

    // Answered (to nobody), then acked: nothing back in the queue once the worker has
    // stopped, nothing dead-lettered, nothing to warn about.
    w.wait_for_jobs(1.0, Duration::from_secs(30)).await;
    w.stop(Duration::from_secs(20)).await;
    let log = w.log_text();
    let conn = connect(&url).await;
    assert_eq!(
        queue_len(&conn, "surge.jobs.breast-cancer").await,
        0,
        "log:\n{log}"
    );
    assert_eq!(queue_len(&conn, "surge.dead").await, 0, "log:\n{log}");
    assert!(!log.contains(" WARN ") && !log.contains(" ERROR "), "{log}");
    let _ = conn.close(200, "done".into()).await;
}
