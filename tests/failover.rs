//! Several broker addresses in `AMQP_URL`: connecting moves past addresses that do
//! not answer, and a worker whose node stops moves on to the next one.
//!
//! * Two addresses, the first a closed port: `surge_broker::connect` connects to the
//!   second; none answering is one error naming every address, without the password.
//! * A worker and score-batch given `[private node A, private node B]` (two
//!   independent nodes, in listed order): a run is answered on A; A is stopped; the
//!   worker reconnects to B and a second run, which score-batch also sends to B after
//!   A's refused connection, is answered there exactly once.

use std::time::{Duration, Instant};

use surge_broker::{AmqpUrl, BrokerError, Timeouts};
use surge_testkit::figures::{self, parse_summary};
use surge_testkit::node::{NodeOptions, PrivateNode};
use surge_testkit::*;

fn quick() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(5),
        operation: Duration::from_secs(10),
    }
}

/// A port on 127.0.0.1 nothing listens on (bound, then released).
fn closed_port() -> u16 {
    free_port()
}

#[tokio::test]
async fn a_closed_port_first_then_the_broker_connects() {
    require_broker().await;
    let closed = closed_port();
    let url = AmqpUrl::new(format!(
        "amqp://guest:guest@127.0.0.1:{closed},127.0.0.1:5672/%2f"
    ))
    .unwrap();
    let t0 = Instant::now();
    let conn = surge_broker::connect(&url, "surge-tests-failover", &quick())
        .await
        .expect("no failover to the second address");
    println!(
        "connected past a closed port in {:.0} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
    assert!(conn.status().connected());
    // The next connection (after this one is lost) starts after the address that
    // answered: back at the first.
    assert_eq!(url.next_index(), 0);
    let _ = conn.close(200, "done".into()).await;

    // The same with full URLs separated by commas.
    let url = AmqpUrl::new(format!(
        "amqp://guest:guest@127.0.0.1:{closed}/%2f, amqp://guest:guest@127.0.0.1:5672/%2f"
    ))
    .unwrap();
    let conn = surge_broker::connect(&url, "surge-tests-failover", &quick())
        .await
        .expect("no failover to the second URL");
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test]
async fn no_address_answering_names_each_without_the_password() {
    let (a, b) = (closed_port(), closed_port());
    let url = AmqpUrl::new(format!(
        "amqp://guest:s3cr3t@127.0.0.1:{a},127.0.0.1:{b}/%2f"
    ))
    .unwrap();
    let err = match surge_broker::connect(&url, "surge-tests-failover", &quick()).await {
        Ok(_) => panic!("connected to closed ports"),
        Err(e) => e,
    };
    assert!(
        matches!(err, BrokerError::Unreachable { tried: 2, .. }),
        "{err:?}"
    );
    assert!(
        err.is_connection_loss(),
        "callers must keep retrying: {err}"
    );
    let text = err.to_string();
    println!("{text}");
    assert!(text.contains(&format!("127.0.0.1:{a}")), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{b}")), "{text}");
    assert!(!text.contains("s3cr3t"), "the password leaks: {text}");
}

/// True when a log line says a connection to `host` was made.
fn connected_to(log: &str, host: &str) -> bool {
    log.lines()
        .any(|l| l.contains("connected to broker") && l.contains(&format!("@{host}/")))
}

/// One score-batch run of `n` rows against `url`; returns its stderr after checking
/// every row was answered exactly once and correctly.
async fn scored_run(url: &str, dir: &std::path::Path, tag: &str, n: usize) -> String {
    let input = dir.join(format!("{tag}.csv"));
    let output = dir.join(format!("{tag}-scores.csv"));
    let rows = write_rows_csv(&input, n);
    let env = [("AMQP_URL", url), ("AMQP_ADDRESS_ORDER", "listed")];
    let sb = spawn_score_batch_with_env(
        "surge",
        &input,
        &output,
        &["--rows-per-job", "20", "--job-timeout", "60"],
        &env,
    );
    let out = sb.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "score-batch ({tag}) failed: {stderr}");
    let s = parse_summary(&stderr).unwrap_or_else(|| panic!("no summary: {stderr}"));
    let got = read_output(&output);
    figures::report(tag, &s, &got, 0, &output);
    assert_exactly_once_and_correct(&got, &reference_scores(&rows));
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_moves_to_the_next_node_when_its_node_stops() {
    let mut a = PrivateNode::start("fo-a", NodeOptions::default()).await;
    let b = PrivateNode::start("fo-b", NodeOptions::default()).await;
    let list = format!(
        "amqp://guest:guest@127.0.0.1:{},127.0.0.1:{}/%2f?heartbeat=5",
        a.port, b.port
    );
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("AMQP_URL", list.as_str()),
        ("AMQP_ADDRESS_ORDER", "listed"),
    ];
    let mut w = WorkerProc::spawn_with_env(
        "surge",
        "w-failover",
        dir.path(),
        &["--broker-timeout-s", "5"],
        &env,
    );
    w.wait_ready(Duration::from_secs(60)).await;
    let a_addr = format!("127.0.0.1:{}", a.port);
    let b_addr = format!("127.0.0.1:{}", b.port);
    assert!(
        connected_to(&w.log_text(), &a_addr),
        "the worker did not start on the first address: {}",
        w.log_text()
    );

    // Answered on A.
    scored_run(&list, dir.path(), "on node A", 1_000).await;

    let t0 = Instant::now();
    a.stop_node().await;
    // The worker reconnects to B; score-batch's first address (A) refuses, so it
    // publishes on B as well.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !connected_to(&w.log_text(), &b_addr) {
        assert!(
            Instant::now() < deadline,
            "the worker never moved to node B: {}",
            w.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let moved = t0.elapsed();
    println!(
        "worker on node B {:.1}s after `rabbitmqctl stop` of node A began",
        moved.as_secs_f64()
    );
    let stderr = scored_run(&list, dir.path(), "on node B after A stopped", 1_000).await;
    assert!(
        stderr.contains("did not answer"),
        "score-batch did not try node A first: {stderr}"
    );
    let log = w.log_text();
    assert!(log.contains("reconnecting"), "{log}");
    assert!(
        !log.contains("guest:guest"),
        "the worker logged the password: {log}"
    );
    assert!(
        !stderr.contains("guest:guest"),
        "score-batch logged the password: {stderr}"
    );
    println!("worker log (failover lines):");
    for line in log.lines().filter(|l| {
        l.contains("reconnecting")
            || l.contains("connected to broker")
            || l.contains("did not answer")
    }) {
        println!("  {line}");
    }
    w.stop(Duration::from_secs(30)).await;
    drop(b);
}
