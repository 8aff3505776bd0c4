//! A three-node RabbitMQ cluster on this machine (`surge_testkit::node::Cluster`): two
//! workers each connected to a different node, score-batch on the third, every
//! process given all three addresses (its own node first, `AMQP_ADDRESS_ORDER=listed`).
//!
//! * Variant 1: the node leading the model's quorum queue is stopped mid-run, then
//!   started again.
//! * Variant 2: the node score-batch is connected to is killed (SIGKILL) mid-run;
//!   score-batch moves to the next address; the node is started again later.
//!
//! Each variant checks that the job queue's members span the three nodes, that every
//! row is answered exactly once and correctly (0 lost), and prints the time to
//! recover, the reconnects and the leader before and after. Reduced: 5,000 rows;
//! `SURGE_FAULTS=full`: 100,000.

use std::time::{Duration, Instant};

use surge_protocol::Topology;
use surge_testkit::figures::{self, parse_summary};
use surge_testkit::node::Cluster;
use surge_testkit::*;

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// `rabbitmqctl stop` of the queue leader's node, then start it again.
    StopLeader,
    /// SIGKILL of score-batch's node, then start it again.
    KillClientNode,
}

/// Dead letters of the run, asked of a running node.
async fn dead_count(url: &str, prefix: &str) -> u32 {
    let url = surge_broker::AmqpUrl::new(url).expect("parsing the AMQP URL");
    let conn = surge_broker::connect(&url, "surge-tests", &surge_broker::Timeouts::default())
        .await
        .expect("no node answers");
    let queue = Topology::new(prefix).dead_queue();
    let n = figures::queue_len(&conn, &queue).await;
    if n > 0 {
        let by = figures::dead_reasons(&conn, &queue, n as usize).await;
        println!("  dead letters by reason: {by:?}");
    }
    n
}

async fn jobs(ws: &[&WorkerProc]) -> f64 {
    let mut sum = 0.0;
    for w in ws {
        sum += w.metric_sum("surge_jobs_total").await;
    }
    sum
}

async fn drill(cluster: &mut Cluster, fault: Fault, prefix: &str) {
    let dir = tempfile::tempdir().expect("creating a temporary directory");
    let input = dir.path().join("rows.csv");
    let output = dir.path().join("scores.csv");
    let n_rows = figures::size(100_000, 5_000);
    let rows_per_job = figures::size(100, 10);
    let rows = write_rows_csv(&input, n_rows);
    let q = "heartbeat=5";
    let (url_w1, url_w2, url_sb) = (
        cluster.url(&[0, 1, 2], q),
        cluster.url(&[1, 2, 0], q),
        cluster.url(&[2, 0, 1], q),
    );
    let listed = ("AMQP_ADDRESS_ORDER", "listed");
    // Slow enough that the run outlasts the fault (about 40 jobs/s together).
    let batch_rows = (2 * rows_per_job).to_string();
    let slow = [
        "--max-batch-rows",
        &batch_rows,
        "--prefetch",
        "20",
        "--batch-delay-ms",
        "100",
        "--broker-timeout-s",
        "5",
    ];
    let mut w1 = WorkerProc::spawn_with_env(
        prefix,
        "w-node0",
        dir.path(),
        &slow,
        &[("AMQP_URL", &url_w1), listed],
    );
    let mut w2 = WorkerProc::spawn_with_env(
        prefix,
        "w-node1",
        dir.path(),
        &slow,
        &[("AMQP_URL", &url_w2), listed],
    );
    w1.wait_ready(Duration::from_secs(60)).await;
    w2.wait_ready(Duration::from_secs(60)).await;
    let rpj = rows_per_job.to_string();
    let t_run = Instant::now();
    let sb = spawn_score_batch_with_env(
        prefix,
        &input,
        &output,
        &["--rows-per-job", &rpj, "--job-timeout", "30"],
        &[("AMQP_URL", &url_sb), listed],
    );
    let mut sb = sb;
    let queue = Topology::new(prefix).job_queue("breast-cancer");
    w1.wait_for_jobs(1.0, Duration::from_secs(60)).await;
    w2.wait_for_jobs(1.0, Duration::from_secs(60)).await;
    while jobs(&[&w1, &w2]).await < 20.0 {
        assert!(t_run.elapsed() < Duration::from_secs(120), "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (leader, members) = cluster.quorum_leader(&queue).await;
    println!("{fault:?}: {queue} leader {leader}, members {members:?}");
    assert_eq!(
        members.len(),
        3,
        "the job queue's members do not span the three nodes: {members:?}"
    );
    for node in &cluster.nodes {
        assert!(members.contains(&node.name), "{} is no member", node.name);
    }
    let victim = match fault {
        Fault::StopLeader => cluster
            .index_of(&leader)
            .unwrap_or_else(|| panic!("leader {leader} is no node of the cluster")),
        Fault::KillClientNode => 2,
    };
    assert!(
        sb.try_wait().ok().flatten().is_none(),
        "the run ended before the fault"
    );
    let before = jobs(&[&w1, &w2]).await;
    let t0 = Instant::now();
    match fault {
        Fault::StopLeader => cluster.nodes[victim].stop_node().await,
        Fault::KillClientNode => cluster.nodes[victim].kill_node().await,
    }
    let down_after = t0.elapsed();
    // Recovered: the workers answer 5 more jobs after the node is gone. When
    // score-batch's node dies, its reply queue (a classic queue homed there) goes
    // with it: results come back unroutable until the node returns, so the workers
    // are only watched for 10 s.
    let at_down = jobs(&[&w1, &w2]).await;
    let watch_for = match fault {
        Fault::StopLeader => Duration::from_secs(120),
        Fault::KillClientNode => Duration::from_secs(10),
    };
    let mut recovered = None;
    while t0.elapsed() < watch_for {
        if jobs(&[&w1, &w2]).await >= at_down + 5.0 {
            recovered = Some(t0.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if matches!(fault, Fault::StopLeader) {
        assert!(
            recovered.is_some(),
            "the workers did not resume within 120 s of the fault\nw1:\n{}\nw2:\n{}",
            w1.log_text(),
            w2.log_text()
        );
    }
    let (leader_during, members_during) = cluster.quorum_leader(&queue).await;
    // Down for at least 10 s in all, then back with its data. score-batch is
    // watched meanwhile (and while the node boots) for the moment the run ends.
    let mut finished = None;
    while t0.elapsed() < Duration::from_secs(10) {
        if finished.is_none() && sb.try_wait().ok().flatten().is_some() {
            finished = Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let victim_node = &mut cluster.nodes[victim];
    let booting = async {
        victim_node.launch().await;
        t0.elapsed()
    };
    let watching = async {
        loop {
            if finished.is_none() && sb.try_wait().ok().flatten().is_some() {
                finished = Some(t0.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let back = tokio::select! {
        back = booting => back,
        () = watching => unreachable!("the watch loop never ends"),
    };
    let out = sb
        .wait_with_output()
        .await
        .expect("waiting for score-batch");
    let finished_after_fault = finished.unwrap_or_else(|| t0.elapsed());
    let run_took = t_run.elapsed() - (t0.elapsed() - finished_after_fault);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "score-batch did not survive {fault:?}: {stderr}\nw1:\n{}\nw2:\n{}",
        w1.log_text(),
        w2.log_text()
    );
    let (leader_after, _) = cluster.quorum_leader(&queue).await;
    let s = parse_summary(&stderr).unwrap_or_else(|| panic!("no summary: {stderr}"));
    let got = read_output(&output);
    let dead = dead_count(&url_w1, prefix).await;
    figures::report(&format!("cluster {fault:?}"), &s, &got, dead, &output);
    let reconnects = [
        w1.metric_sum("surge_reconnects_total").await,
        w2.metric_sum("surge_reconnects_total").await,
    ];
    println!(
        "CLUSTER {fault:?}: {n_rows} rows; node {} ({}) {} after {:.1}s; workers answered 5 more jobs {} after the fault began \
         ({before} jobs before); node back at {:.1}s; run finished {:.1}s after the fault ({:.1}s in all); \
         reconnects: score-batch {}, w-node0 {}, w-node1 {}; leader before {leader}, while down {leader_during} \
         (members {}), after {leader_after}",
        victim,
        cluster.nodes[victim].name,
        match fault {
            Fault::StopLeader => "stopped",
            Fault::KillClientNode => "killed",
        },
        down_after.as_secs_f64(),
        recovered.map_or("not within 10 s (results unroutable)".to_string(), |d| format!("{:.1}s", d.as_secs_f64())),
        back.as_secs_f64(),
        finished_after_fault.as_secs_f64(),
        run_took.as_secs_f64(),
        s.reconnects,
        reconnects[0].abs(),
        reconnects[1].abs(),
        members_during.len(),
    );
    for line in stderr
        .lines()
        .filter(|l| {
            l.contains("did not answer")
                || l.contains("connected to broker")
                || l.contains("reconnecting")
        })
        .take(12)
    {
        println!("  score-batch: {line}");
    }
    assert_exactly_once_and_correct(&got, &reference_scores(&rows));
    if matches!(fault, Fault::KillClientNode) {
        assert!(s.reconnects >= 1, "score-batch never reconnected: {stderr}");
        assert!(
            stderr.contains("connected to broker"),
            "score-batch never connected to another node: {stderr}"
        );
    }
    for w in [&mut w1, &mut w2] {
        w.stop(Duration::from_secs(60)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_loses_nothing_when_a_node_stops_or_dies() {
    let mut cluster = Cluster::start("cl", 3).await;
    drill(&mut cluster, Fault::StopLeader, "surge-v1").await;
    drill(&mut cluster, Fault::KillClientNode, "surge-v2").await;
    println!("cluster formed in {:.1}s", cluster.formed_in.as_secs_f64());
}
