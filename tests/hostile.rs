//! A flood of hostile messages: random bytes, MessagePack and JSON depth and length
//! bombs, oversized bodies, wrong dimensions, NaN/Inf, wrong types, unknown models,
//! names with `../`, missing ids, foreign content types, interleaved with good jobs.
//! The worker never crashes, its memory stays flat, every good job is scored, and
//! every hostile message is either answered with an error or dead-lettered with a
//! reason: each exactly once, none lost.
//!
//! `make test` sends 2,000; `make test-faults` (`SURGE_FAULTS=full`) 10,000.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use surge_protocol::codec::{decode_result, encode};
use surge_protocol::{Encoding, Inputs, Job, Limits, Status, Topology};
use surge_testkit::figures::{self, header, rss_kib};
use surge_testkit::*;

/// xorshift64*: deterministic, so a failing message can be regenerated from its index.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

const MSGPACK: &str = "application/msgpack";
const JSON: &str = "application/json";
const MAX_BYTES: usize = 65_536;
const MAX_ROWS: usize = 100;

/// One message to send: what it is, its body, content type, whether it has an id.
struct Msg {
    kind: &'static str,
    body: Vec<u8>,
    content_type: Option<&'static str>,
    with_id: bool,
    good: bool,
}

fn msgpack_job(model: &str, rows: Vec<Vec<f32>>) -> Vec<u8> {
    encode(&Job::new(model, Inputs::rows(&rows)), Encoding::Msgpack).unwrap()
}

/// The i-th message of the flood: every 10th is a good job, the rest cycle through
/// the hostile kinds with random details.
fn message(i: usize, rng: &mut Rng) -> Msg {
    let m = |kind, body, ct| Msg {
        kind,
        body,
        content_type: ct,
        with_id: true,
        good: false,
    };
    if i.is_multiple_of(10) {
        let x = 1.0 + (i % 97) as f32;
        return Msg {
            good: true,
            ..m(
                "good",
                msgpack_job("breast-cancer", vec![vec![x; 30]]),
                Some(MSGPACK),
            )
        };
    }
    match rng.below(16) {
        0 => {
            let n = rng.below(600) as usize;
            m("random-msgpack", rng.bytes(n), Some(MSGPACK))
        }
        1 => {
            let n = rng.below(600) as usize;
            m("random-untyped", rng.bytes(n), None)
        }
        2 => {
            // MessagePack depth bomb: a job whose inputs nest thousands of arrays.
            let mut b = vec![
                0x83, 0xa1, b'v', 0x01, 0xa5, b'm', b'o', b'd', b'e', b'l', 0xa1, b'm', 0xa6, b'i',
                b'n', b'p', b'u', b't', b's',
            ];
            b.extend(std::iter::repeat_n(0x91u8, 17 + rng.below(20_000) as usize));
            b.push(0x01);
            m("msgpack-depth-bomb", b, Some(MSGPACK))
        }
        3 => {
            // Length bombs: headers that claim billions of items or bytes.
            let b = match rng.below(4) {
                0 => vec![0xdd, 0xff, 0xff, 0xff, 0xff, 0x01],
                1 => vec![0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, b'v'],
                2 => vec![0xdb, 0xff, 0xff, 0xff, 0xf0, b'x'],
                _ => {
                    // A job whose inputs claim 2^32-1 rows.
                    let mut b = vec![
                        0x83, 0xa1, b'v', 0x01, 0xa5, b'm', b'o', b'd', b'e', b'l', 0xa1, b'm',
                        0xa6, b'i', b'n', b'p', b'u', b't', b's',
                    ];
                    b.extend([0xdd, 0xff, 0xff, 0xff, 0xff, 0x90]);
                    b
                }
            };
            m("msgpack-length-bomb", b, Some(MSGPACK))
        }
        4 => {
            let depth = 17 + rng.below(50_000) as usize;
            let mut b = b"{\"v\":1,\"model\":\"breast-cancer\",\"inputs\":".to_vec();
            b.extend(std::iter::repeat_n(b'[', depth));
            b.extend(std::iter::repeat_n(b']', depth));
            b.push(b'}');
            m("json-depth-bomb", b, Some(JSON))
        }
        5 => {
            let n = MAX_BYTES + 1 + rng.below(40_000) as usize;
            let mut b = b"{\"v\":1,\"model\":\"breast-cancer\",\"inputs\":[\"".to_vec();
            b.extend(std::iter::repeat_n(b'x', n));
            b.extend(b"\"]}");
            m("oversized", b, Some(JSON))
        }
        6 => {
            let mut dim = rng.below(60) as usize;
            if dim == 30 {
                dim = 31;
            }
            m(
                "wrong-dimension",
                msgpack_job(
                    "breast-cancer",
                    vec![vec![1.0; dim]; 1 + rng.below(5) as usize],
                ),
                Some(MSGPACK),
            )
        }
        7 => {
            let bad = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][rng.below(3) as usize];
            let mut row = vec![1.0; 30];
            row[rng.below(30) as usize] = bad;
            m(
                "nan-inf",
                msgpack_job("breast-cancer", vec![vec![2.0; 30], row]),
                Some(MSGPACK),
            )
        }
        8 => {
            let bodies: [&[u8]; 6] = [
                br#"{"v":1,"model":"breast-cancer","inputs":"rows"}"#,
                br#"{"v":1,"model":5,"inputs":[[1]]}"#,
                br#"{"v":"1","model":"breast-cancer","inputs":[[1]]}"#,
                br#"{"v":1,"model":"breast-cancer","inputs":[[true,null]]}"#,
                br#"{"v":1,"model":"breast-cancer","inputs":[[1],"x"]}"#,
                br#"[1,2,3]"#,
            ];
            m(
                "wrong-types",
                bodies[rng.below(6) as usize].to_vec(),
                Some(JSON),
            )
        }
        9 => {
            let name = format!("nope-{}", rng.below(1000));
            m(
                "unknown-model",
                msgpack_job(&name, vec![vec![1.0; 30]]),
                Some(MSGPACK),
            )
        }
        10 => {
            let names = [
                "../breast-cancer",
                "../../etc/passwd",
                "..",
                "breast-cancer/../breast-cancer",
                "/etc/passwd",
                "models/../../x",
            ];
            let name = names[rng.below(names.len() as u64) as usize];
            m(
                "path-name",
                msgpack_job(name, vec![vec![1.0; 30]]),
                Some(MSGPACK),
            )
        }
        11 => Msg {
            with_id: false,
            ..m(
                "no-id",
                msgpack_job("breast-cancer", vec![vec![1.0; 30]]),
                Some(MSGPACK),
            )
        },
        12 => {
            let cts = [
                "text/xml",
                "application/octet-stream",
                "image/png",
                "application/x-protobuf",
            ];
            m(
                "content-type",
                b"<job/>".to_vec(),
                Some(cts[rng.below(4) as usize]),
            )
        }
        13 => m(
            "too-many-rows",
            msgpack_job("breast-cancer", vec![vec![1.0; 30]; MAX_ROWS + 1]),
            Some(MSGPACK),
        ),
        14 => m("empty-body", Vec::new(), Some(MSGPACK)),
        _ => m(
            "v2",
            br#"{"v":2,"model":"breast-cancer","payload":{"x":1}}"#.to_vec(),
            Some(JSON),
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_hostile_messages_never_crashes_the_worker() {
    let bed = Bed::new("hostile", &["breast-cancer"]).await;
    let (conn, prefix) = (&bed.conn, bed.prefix.clone());
    let topo = Topology::new(&prefix);
    let total = figures::size(10_000, 2_000);
    let dir = tempfile::tempdir().unwrap();
    let mut w = WorkerProc::spawn(
        &prefix,
        "w-hostile",
        dir.path(),
        &[
            "--max-rows-per-job",
            &MAX_ROWS.to_string(),
            "--max-message-bytes",
            &MAX_BYTES.to_string(),
        ],
    );
    w.wait_ready(Duration::from_secs(30)).await;
    let pid = w.pid();

    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let reply = format!("{prefix}.replies");
    declare_reply_queue(&ch, &reply).await;
    // Collect results and dead letters while publishing.
    let rch = conn.create_channel().await.unwrap();
    let mut results = consume(&rch, &reply, "t-results").await;
    let dch = conn.create_channel().await.unwrap();
    let mut dead = consume(&dch, &topo.dead_queue(), "t-dead").await;

    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut kinds: Vec<&'static str> = Vec::with_capacity(total);
    let mut good: Vec<bool> = Vec::with_capacity(total);
    let mut rss_warm = 0;
    let started = Instant::now();
    for chunk_start in (0..total).step_by(500) {
        let mut pending = Vec::new();
        for i in chunk_start..(chunk_start + 500).min(total) {
            let msg = message(i, &mut rng);
            kinds.push(msg.kind);
            good.push(msg.good);
            let mut headers = FieldTable::default();
            headers.insert(
                "x-test-index".into(),
                AMQPValue::LongString(LongString::from(i.to_string())),
            );
            let mut props = BasicProperties::default()
                .with_reply_to(reply.as_str().into())
                .with_headers(headers);
            if msg.with_id {
                props = props.with_message_id(format!("h-{i}").as_str().into());
            }
            if let Some(ct) = msg.content_type {
                props = props.with_content_type(ct.into());
            }
            pending.push(
                ch.basic_publish(
                    topo.jobs_exchange().as_str().into(),
                    "breast-cancer".into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &msg.body,
                    props,
                )
                .await
                .unwrap(),
            );
        }
        for p in pending {
            assert!(p.await.unwrap().is_ack(), "the broker refused a message");
        }
        if chunk_start == 1_000 {
            rss_warm = rss_kib(pid).unwrap_or(0);
        }
    }
    if rss_warm == 0 {
        rss_warm = rss_kib(pid).unwrap_or(0);
    }

    // Every message accounted for exactly once: a result or a dead letter.
    let mut outcome: HashMap<usize, String> = HashMap::new();
    let mut answered = 0usize;
    let mut dead_lettered = 0usize;
    let mut answered_ok = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while outcome.len() < total {
        tokio::select! {
            r = results.next() => {
                let d = r.unwrap().unwrap();
                let enc = Encoding::from_content_type(
                    d.properties.content_type().as_ref().map(|s| s.as_str()),
                    &d.data,
                )
                .unwrap();
                let r = decode_result(&d.data, enc, &Limits::default()).unwrap();
                let i: usize = r.job_id.trim_start_matches("h-").parse().unwrap();
                let what = match (&r.status, &r.error) {
                    (Status::Ok, _) => {
                        assert!(good[i], "hostile message {i} ({}) was scored: {r:?}", kinds[i]);
                        answered_ok += 1;
                        "ok".to_string()
                    }
                    (_, Some(e)) => {
                        assert!(!good[i], "good job {i} failed: {e:?}");
                        assert!(!e.message.is_empty());
                        format!("answered {}", e.kind)
                    }
                    (s, None) => panic!("result {i} has status {s:?} and no error"),
                };
                answered += 1;
                assert!(outcome.insert(i, what).is_none(), "message {i} ({}) answered twice", kinds[i]);
                d.acker.ack(BasicAckOptions::default()).await.unwrap();
            }
            x = dead.next() => {
                let d = x.unwrap().unwrap();
                let i: usize = header(&d, "x-test-index").unwrap().parse().unwrap();
                let kind = header(&d, "x-surge-error-kind")
                    .unwrap_or_else(|| panic!("dead letter {i} ({}) without a kind", kinds[i]));
                let reason = header(&d, "x-surge-reason").unwrap_or_default();
                assert!(reason.len() > 10, "dead letter {i}: reason {reason:?}");
                assert!(!good[i], "good job {i} dead-lettered: {reason}");
                dead_lettered += 1;
                assert!(
                    outcome.insert(i, format!("dead {kind}")).is_none(),
                    "message {i} ({}) dead-lettered and answered", kinds[i]
                );
                d.acker.ack(BasicAckOptions::default()).await.unwrap();
            }
            _ = tokio::time::sleep_until(deadline) => {
                let missing: Vec<_> = (0..total).filter(|i| !outcome.contains_key(i)).take(20).map(|i| (i, kinds[i])).collect();
                panic!("{} of {total} accounted for; missing e.g. {missing:?}; log tail:\n{}", outcome.len(),
                    w.log_text().lines().rev().take(30).collect::<Vec<_>>().join("\n"));
            }
        }
    }
    let elapsed = started.elapsed();
    let rss_end = rss_kib(pid).unwrap_or(0);

    // Outcomes per kind, for the report.
    let mut per_kind: std::collections::BTreeMap<(&str, String), usize> = Default::default();
    for (i, what) in &outcome {
        *per_kind.entry((kinds[*i], what.clone())).or_default() += 1;
    }
    for ((kind, what), n) in &per_kind {
        println!("  {kind:>20} -> {what}: {n}");
    }
    let goods = good.iter().filter(|g| **g).count();
    println!(
        "FIGURES hostile: messages {total} ({} hostile, {goods} good) in {:.1}s; answered {answered} ({answered_ok} ok), \
         dead-lettered with reason {dead_lettered}, lost {}, worker RSS {} KiB after 1,000 -> {} KiB at the end",
        total - goods,
        elapsed.as_secs_f64(),
        total - outcome.len(),
        rss_warm,
        rss_end
    );
    assert_eq!(answered_ok, goods, "every good job scored");
    assert_eq!(answered + dead_lettered, total);
    // Memory flat: no growth beyond 25 % (and 20 MiB of slack for allocator noise).
    assert!(
        rss_end <= rss_warm + rss_warm / 4 + 20 * 1024,
        "worker RSS grew from {rss_warm} KiB to {rss_end} KiB"
    );
    // Never crashed, never even lost its connection.
    assert_eq!(w.pid(), pid);
    assert_eq!(w.get("/healthz").await.map(|(s, _)| s), Some(200));
    assert_eq!(w.get("/readyz").await.map(|(s, _)| s), Some(200));
    assert_eq!(
        w.metric_sum("surge_reconnects_total").await,
        0.0,
        "{}",
        w.log_text()
    );
    // The queues are empty: nothing waits, nothing was left behind.
    assert_eq!(
        figures::queue_len(conn, &topo.job_queue("breast-cancer")).await,
        0
    );
    w.stop(Duration::from_secs(30)).await;
}
