//! Each kind of bad input gets its documented outcome (an error result of its kind,
//! or the dead-letter queue with a reason), good jobs in the same batches are scored,
//! and the worker keeps serving.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use surge_protocol::codec::{decode_result, encode};
use surge_protocol::{Encoding, ErrorKind, Inputs, Job, JobResult, Limits, Status};
use surge_testkit::*;

const MSGPACK: &str = "application/msgpack";
const JSON: &str = "application/json";

struct Case {
    name: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    with_id: bool,
}

fn json(v: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap()
}

fn row(x: f32) -> Vec<f32> {
    vec![x; 30]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_kind_gets_its_outcome_and_the_worker_keeps_serving() {
    let bed = Bed::new("bad", &["breast-cancer"]).await;
    let (conn, prefix, dir) = (&bed.conn, bed.prefix.clone(), &bed.dir);
    let mut w = WorkerProc::spawn(
        &prefix,
        "w-bad",
        dir.path(),
        &[
            "--max-rows-per-job",
            "1000",
            "--max-message-bytes",
            "200000",
        ],
    );
    w.wait_ready(Duration::from_secs(30)).await;

    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let reply = format!("{prefix}.test-replies");
    ch.queue_declare(
        reply.as_str().into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();

    let good = |x: f32| {
        encode(
            &Job::new("breast-cancer", Inputs::rows(&[row(x), row(x * 2.0)])),
            Encoding::Msgpack,
        )
        .unwrap()
    };
    let mut depth_bomb = vec![
        0x83, 0xa1, b'v', 0x01, 0xa5, b'm', b'o', b'd', b'e', b'l', 0xa1, b'm', 0xa6, b'i', b'n',
        b'p', b'u', b't', b's',
    ];
    depth_bomb.extend(std::iter::repeat_n(0x91u8, 100_000));
    depth_bomb.push(0x01);
    let answered: Vec<(Case, ErrorKind)> = vec![
        (
            Case {
                name: "wrong-dimension",
                content_type: Some(JSON),
                body: json(serde_json::json!({"v":1,"model":"breast-cancer","inputs":[[1,2,3]]})),
                with_id: true,
            },
            ErrorKind::InvalidInput,
        ),
        (
            Case {
                name: "nan",
                content_type: Some(MSGPACK),
                body: encode(
                    &Job::new(
                        "breast-cancer",
                        Inputs::rows(&[row(1.0), {
                            let mut r = row(1.0);
                            r[3] = f32::NAN;
                            r
                        }]),
                    ),
                    Encoding::Msgpack,
                )
                .unwrap(),
                with_id: true,
            },
            ErrorKind::InvalidInput,
        ),
        (
            Case {
                name: "inf",
                content_type: Some(MSGPACK),
                body: encode(
                    &Job::new("breast-cancer", Inputs::rows(&[row(f32::INFINITY)])),
                    Encoding::Msgpack,
                )
                .unwrap(),
                with_id: true,
            },
            ErrorKind::InvalidInput,
        ),
        (
            Case {
                name: "empty",
                content_type: Some(JSON),
                body: json(serde_json::json!({"v":1,"model":"breast-cancer","inputs":[]})),
                with_id: true,
            },
            ErrorKind::InvalidInput,
        ),
        (
            Case {
                name: "texts-for-tabular",
                content_type: Some(JSON),
                body: json(serde_json::json!({"v":1,"model":"breast-cancer","inputs":["hello"]})),
                with_id: true,
            },
            ErrorKind::InvalidInput,
        ),
        (
            Case {
                name: "unknown-model",
                content_type: Some(JSON),
                body: json(serde_json::json!({"v":1,"model":"nope","inputs":[row(1.0)]})),
                with_id: true,
            },
            ErrorKind::UnknownModel,
        ),
        (
            Case {
                name: "path-model",
                content_type: Some(JSON),
                body: json(serde_json::json!({"v":1,"model":"../etc/passwd","inputs":[row(1.0)]})),
                with_id: true,
            },
            ErrorKind::UnknownModel,
        ),
        (
            Case {
                name: "unknown-version",
                content_type: Some(JSON),
                body: json(
                    serde_json::json!({"v":1,"model":"breast-cancer","version":"9.9.9","inputs":[row(1.0)]}),
                ),
                with_id: true,
            },
            ErrorKind::UnknownVersion,
        ),
        (
            Case {
                name: "too-many-rows",
                content_type: Some(MSGPACK),
                body: encode(
                    &Job::new("breast-cancer", Inputs::rows(&vec![row(1.0); 1001])),
                    Encoding::Msgpack,
                )
                .unwrap(),
                with_id: true,
            },
            ErrorKind::TooManyRows,
        ),
        (
            Case {
                name: "v2",
                content_type: Some(JSON),
                body: json(serde_json::json!({"v":2,"model":"breast-cancer","payload":{}})),
                with_id: true,
            },
            ErrorKind::UnsupportedVersion,
        ),
        (
            Case {
                name: "expired",
                content_type: Some(JSON),
                body: json(
                    serde_json::json!({"v":1,"model":"breast-cancer","inputs":[row(1.0)],"deadline_ms":1}),
                ),
                with_id: true,
            },
            ErrorKind::Expired,
        ),
        (
            Case {
                name: "wrong-types",
                content_type: Some(JSON),
                body: json(serde_json::json!({"v":1,"model":"breast-cancer","inputs":[[1,"x"]]})),
                with_id: true,
            },
            ErrorKind::InvalidJob,
        ),
        (
            Case {
                name: "model-not-a-string",
                content_type: Some(JSON),
                body: json(serde_json::json!({"v":1,"model":5,"inputs":[[1]]})),
                with_id: true,
            },
            ErrorKind::InvalidJob,
        ),
        (
            Case {
                name: "too-large",
                content_type: Some(JSON),
                body: json(
                    serde_json::json!({"v":1,"model":"breast-cancer","inputs":["x".repeat(300_000)]}),
                ),
                with_id: true,
            },
            ErrorKind::TooLarge,
        ),
    ];
    let dead: Vec<(Case, &str)> = vec![
        (
            Case {
                name: "garbage",
                content_type: Some(MSGPACK),
                body: vec![0xc1, 0xff, 0x00, 0x13],
                with_id: true,
            },
            "malformed",
        ),
        (
            Case {
                name: "broken-json",
                content_type: Some(JSON),
                body: b"{\"v\":1,\"model\":".to_vec(),
                with_id: true,
            },
            "malformed",
        ),
        (
            Case {
                name: "depth-bomb",
                content_type: Some(MSGPACK),
                body: depth_bomb,
                with_id: true,
            },
            "too_deep",
        ),
        (
            Case {
                name: "xml",
                content_type: Some("text/xml"),
                body: b"<job/>".to_vec(),
                with_id: true,
            },
            "unsupported_content_type",
        ),
        (
            Case {
                name: "no-message-id",
                content_type: Some(MSGPACK),
                body: good(1.0),
                with_id: false,
            },
            "missing_message_id",
        ),
    ];
    let goods: Vec<Case> = (0..6)
        .map(|i| Case {
            name: ["good-0", "good-1", "good-2", "good-3", "good-4", "good-5"][i],
            content_type: Some(MSGPACK),
            body: good(i as f32 + 1.0),
            with_id: true,
        })
        .collect();

    // Interleave good and bad so they share batches.
    let mut all: Vec<&Case> = Vec::new();
    let mut bad_iter = answered
        .iter()
        .map(|(c, _)| c)
        .chain(dead.iter().map(|(c, _)| c));
    for g in &goods {
        all.push(g);
        all.extend(bad_iter.by_ref().take(4));
    }
    all.extend(bad_iter);
    for case in &all {
        let mut headers = FieldTable::default();
        headers.insert(
            "x-test-case".into(),
            AMQPValue::LongString(LongString::from(case.name.to_string())),
        );
        let mut props = BasicProperties::default()
            .with_reply_to(reply.as_str().into())
            .with_headers(headers);
        if case.with_id {
            props = props.with_message_id(case.name.into());
        }
        if let Some(ct) = case.content_type {
            props = props.with_content_type(ct.into());
        }
        let c = ch
            .basic_publish(
                format!("{prefix}.jobs").as_str().into(),
                "breast-cancer".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &case.body,
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(c.is_ack(), "{}", case.name);
    }

    // Results.
    let want = answered.len() + goods.len();
    let mut results: HashMap<String, JobResult> = HashMap::new();
    let mut consumer = consume(&ch, &reply, "t").await;
    while results.len() < want {
        let d = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {want} results: {:?}; log:\n{}",
                    results.len(),
                    results.keys(),
                    w.log_text()
                )
            })
            .unwrap()
            .unwrap();
        let enc = Encoding::from_content_type(
            d.properties.content_type().as_ref().map(|s| s.as_str()),
            &d.data,
        )
        .unwrap();
        let r = decode_result(&d.data, enc, &Limits::default()).unwrap();
        assert_eq!(
            d.properties.correlation_id().as_ref().map(|s| s.as_str()),
            Some(r.job_id.as_str()),
            "correlation id echoed"
        );
        d.acker.ack(BasicAckOptions::default()).await.unwrap();
        assert!(
            results.insert(r.job_id.clone(), r).is_none(),
            "a job was answered twice"
        );
    }
    for (case, kind) in &answered {
        let r = &results[case.name];
        let err = r
            .error
            .as_ref()
            .unwrap_or_else(|| panic!("{}: no error in {r:?}", case.name));
        assert_eq!(err.kind, *kind, "{}: {}", case.name, err.message);
        assert!(!err.message.is_empty());
        let expected_status = if *kind == ErrorKind::Expired {
            Status::Expired
        } else {
            Status::Error
        };
        assert_eq!(r.status, expected_status, "{}", case.name);
    }
    for (i, g) in goods.iter().enumerate() {
        let r = &results[g.name];
        assert_eq!(r.status, Status::Ok, "{}: {:?}", g.name, r.error);
        let x = i as f32 + 1.0;
        let want = reference_scores(&[row(x), row(x * 2.0)]);
        assert_eq!(r.outputs.len(), 2);
        assert!(
            (r.outputs[0][0] - want[0]).abs() <= 1e-6 && (r.outputs[1][0] - want[1]).abs() <= 1e-6
        );
        assert_eq!(r.version.as_deref(), Some("1.0.0"));
    }

    // Dead letters, with their reasons.
    let mut dl = consume(&ch, &format!("{prefix}.dead"), "t-dead").await;
    let mut seen: HashMap<String, (String, String)> = HashMap::new();
    while seen.len() < dead.len() {
        let d = tokio::time::timeout(Duration::from_secs(30), dl.next())
            .await
            .unwrap_or_else(|_| panic!("dead letters seen: {seen:?}"))
            .unwrap()
            .unwrap();
        let headers = d.properties.headers().clone().unwrap_or_default();
        let get = |k: &str| match headers.inner().get(k) {
            Some(AMQPValue::LongString(s)) => s.to_string(),
            other => panic!("header {k}: {other:?}"),
        };
        seen.insert(
            get("x-test-case"),
            (get("x-surge-error-kind"), get("x-surge-reason")),
        );
        assert_eq!(
            get("x-surge-source-queue"),
            format!("{prefix}.jobs.breast-cancer")
        );
        d.acker.ack(BasicAckOptions::default()).await.unwrap();
    }
    for (case, kind) in &dead {
        let (k, reason) = &seen[case.name];
        assert_eq!(k, kind, "{}: {reason}", case.name);
        assert!(reason.len() > 10, "{}: reason {reason:?}", case.name);
    }

    // Still alive and serving.
    assert_eq!(w.get("/healthz").await.map(|(s, _)| s), Some(200));
    assert_eq!(
        w.metric_sum("surge_errors_total").await,
        answered.len() as f64
    );
    assert_eq!(
        w.metric_sum("surge_dead_lettered_total").await,
        dead.len() as f64
    );
    let last = encode(
        &Job::new("breast-cancer", Inputs::rows(&[row(3.0)])),
        Encoding::Msgpack,
    )
    .unwrap();
    ch.basic_publish(
        format!("{prefix}.jobs").as_str().into(),
        "breast-cancer".into(),
        BasicPublishOptions::default(),
        &last,
        BasicProperties::default()
            .with_message_id("after".into())
            .with_reply_to(reply.as_str().into())
            .with_content_type(MSGPACK.into()),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(30), consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let r = decode_result(&d.data, Encoding::Msgpack, &Limits::default()).unwrap();
    assert_eq!((r.job_id.as_str(), r.status), ("after", Status::Ok));

    w.stop(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_queue_stops_the_worker_with_a_clear_error() {
    let bed = Bed::new("conflict", &["breast-cancer"]).await;
    let (conn, prefix) = (&bed.conn, bed.prefix.clone());
    let ch = conn.create_channel().await.unwrap();
    // A classic queue where Surge wants a quorum queue.
    let queue = format!("{prefix}.jobs.breast-cancer");
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut w = WorkerProc::spawn(&prefix, "w-conflict", dir.path(), &[]);
    let status = w.wait_exit(Duration::from_secs(30)).await;
    let log = w.log_text();
    assert!(
        !status.success(),
        "the worker must not retry forever; log:\n{log}"
    );
    assert!(
        log.contains(&queue) && log.contains("different arguments"),
        "{log}"
    );
}
