//! Sharded job queues (`--shards N`): a model's jobs spread over
//! `<prefix>.jobs.<model>:<k>` by a hash of the job id, every shard consumed, the
//! unsharded queue still served for producers that do not shard, a shard nobody
//! consumes named by score-batch, and on a three-node cluster the shards' leaders
//! spread over the nodes.
//!
//! `SURGE_SHARD_BENCH=1` (`make bench-shards`) adds the bench: on the three-node
//! cluster, one worker per node, score-batch with 1 shard against 3 shards,
//! alternating, `SURGE_SHARD_BENCH_ROUNDS` rounds of `SURGE_SHARD_BENCH_ROWS` rows.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use surge_protocol::Topology;
use surge_testkit::figures::{parse_summary, queue_len};
use surge_testkit::node::Cluster;
use surge_testkit::*;

/// The leader node of each of the three breast-cancer shards of `topo`.
async fn shard_leaders(cluster: &Cluster, topo: &Topology) -> Vec<String> {
    let mut leaders = Vec::new();
    for k in 0..3 {
        let (leader, _) = cluster
            .quorum_leader(&topo.shard_queue("breast-cancer", k))
            .await;
        leaders.push(leader);
    }
    leaders
}

fn sharded(prefix: &str, shards: u64) -> Topology {
    Topology::new(prefix)
        .with_shards(shards)
        .expect("building the sharded topology")
}

/// Waits for `child` and returns its stderr, asserting success.
async fn finish(child: tokio::process::Child, what: &str) -> String {
    let out = child
        .wait_with_output()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what} failed: {stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_spread_over_the_shards_and_unsharded_producers_keep_working() {
    let conn = require_broker().await;
    let prefix = unique_prefix("shards");
    // Four shards' worth: the test also publishes with --shards 4.
    let _cleanup = Cleanup::topology(sharded(&prefix, 4), &["breast-cancer"]);
    let topo = sharded(&prefix, 3);
    let dir = tempfile::tempdir().expect("a temporary folder");
    let input = dir.path().join("rows.csv");
    let rows = write_rows_csv(&input, 3_000);
    let expected = reference_scores(&rows);

    // Published with no worker running: the jobs wait in the shard queues, where the
    // hash of their ids put them, and none in the unsharded queue.
    let output = dir.path().join("sharded.csv");
    let sb = spawn_score_batch(
        &prefix,
        &input,
        &output,
        &["--shards", "3", "--rows-per-job", "30"],
    );
    let shard_queues: Vec<String> = (0..3)
        .map(|k| topo.shard_queue("breast-cancer", k))
        .collect();
    let started = Instant::now();
    let lens = loop {
        let mut lens = Vec::new();
        for q in &shard_queues {
            lens.push(queue_len(&conn, q).await);
        }
        if lens.iter().all(|&n| n > 0) {
            break lens;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "jobs did not reach every shard queue: {lens:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("waiting jobs per shard before any worker: {lens:?}");
    assert_eq!(
        queue_len(&conn, &topo.job_queue("breast-cancer")).await,
        0,
        "a sharded producer put jobs in the unsharded queue"
    );

    let mut w = WorkerProc::spawn(
        &prefix,
        "w-shards",
        dir.path(),
        &["--model", "breast-cancer", "--shards", "3"],
    );
    w.wait_ready(Duration::from_secs(30)).await;
    let log = finish(sb, "sharded score-batch").await;
    let s = parse_summary(&log).unwrap_or_else(|| panic!("no summary: {log}"));
    assert_eq!(s.rows, 3_000, "{log}");
    assert_exactly_once_and_correct(&read_output(&output), &expected);
    let consuming = w.log_text().matches("consuming").count();
    assert_eq!(
        consuming,
        4,
        "the worker consumes the unsharded queue and 3 shards:\n{}",
        w.log_text()
    );

    // A producer that does not shard goes to the unsharded queue, which the sharded
    // worker serves too.
    let plain = dir.path().join("plain.csv");
    finish(
        spawn_score_batch(&prefix, &input, &plain, &["--rows-per-job", "30"]),
        "unsharded score-batch",
    )
    .await;
    assert_exactly_once_and_correct(&read_output(&plain), &expected);

    // A producer with more shards than the workers: shard 3 has no consumer, and
    // score-batch names it instead of waiting in silence.
    let more = dir.path().join("more.csv");
    let columns = feature_names().join(",");
    let out = tokio::process::Command::new(bin("score-batch"))
        .args([
            "--model",
            "breast-cancer",
            "--prefix",
            &prefix,
            "--shards",
            "4",
        ])
        .args([
            "--columns",
            &columns,
            "--rows-per-job",
            "30",
            "--timeout",
            "6",
        ])
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&more)
        .env("SURGE_IDLE_HINT_SECS", "1")
        .output()
        .await
        .expect("score-batch --shards 4 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "--timeout ends the run: {stderr}"
    );
    let lonely = format!("no worker consumes {prefix}.jobs.breast-cancer:3");
    assert!(
        stderr.contains(&lonely) && stderr.contains("--shards 4"),
        "score-batch names the shard nobody consumes: {stderr}"
    );
    // That run keeps its reply queue for late results; the test deletes it.
    if let Some(run) = stderr
        .split("run=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
    {
        if let Ok(ch) = conn.create_channel().await {
            let _ = ch
                .queue_delete(
                    format!("{prefix}.reply.{run}").as_str().into(),
                    lapin::options::QueueDeleteOptions::default(),
                )
                .await;
        }
    }

    w.stop(Duration::from_secs(20)).await;
}

/// `(wall rows/s, scoring rows/s)` of one score-batch run over `input`.
async fn run_once(
    prefix: &str,
    input: &Path,
    output: &Path,
    url: &str,
    shards: u64,
    rpj: usize,
) -> (f64, f64) {
    let shards = shards.to_string();
    let rpj = rpj.to_string();
    let log = finish(
        spawn_score_batch_with_env(
            prefix,
            input,
            output,
            &[
                "--shards",
                &shards,
                "--rows-per-job",
                &rpj,
                "--max-in-flight",
                "64",
            ],
            &[("AMQP_URL", url), ("AMQP_ADDRESS_ORDER", "listed")],
        ),
        "score-batch",
    )
    .await;
    let rate = |label: &str| -> f64 {
        log.split(label)
            .next()
            .and_then(|head| head.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0)
    };
    (rate(" rows/s (wall"), rate(" rows/s)"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_leaders_spread_over_a_three_node_cluster() {
    let cluster = Cluster::start("sh", 3).await;
    let dir = tempfile::tempdir().expect("a temporary folder");
    let bench = std::env::var("SURGE_SHARD_BENCH").is_ok_and(|v| v == "1");
    let env_num = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let n_rows = if bench {
        env_num("SURGE_SHARD_BENCH_ROWS", 200_000)
    } else {
        2_000
    };
    let rounds = if bench {
        env_num("SURGE_SHARD_BENCH_ROUNDS", 3)
    } else {
        1
    };
    let rpj = env_num("SURGE_SHARD_BENCH_ROWS_PER_JOB", 16);
    let input = dir.path().join("rows.csv");
    let rows = write_rows_csv(&input, n_rows);
    let expected = reference_scores(&rows);

    let mut rates: Vec<(u64, f64, f64)> = Vec::new();
    for round in 0..rounds {
        for shards in [1u64, 3] {
            let prefix = format!("sh{shards}r{round}");
            // One worker per node, each listing its own node first.
            let mut workers: Vec<WorkerProc> = (0..3)
                .map(|i| {
                    let order = [i, (i + 1) % 3, (i + 2) % 3];
                    WorkerProc::spawn_with_env(
                        &prefix,
                        &format!("w-{prefix}-{i}"),
                        dir.path(),
                        &["--model", "breast-cancer", "--shards", &shards.to_string()],
                        &[
                            ("AMQP_URL", &cluster.url(&order, "")),
                            ("AMQP_ADDRESS_ORDER", "listed"),
                        ],
                    )
                })
                .collect();
            for w in &mut workers {
                w.wait_ready(Duration::from_secs(60)).await;
            }
            if shards == 3 {
                let topo = sharded(&prefix, 3);
                // `balanced` places each new leader on the node leading the fewest
                // quorum queues of the whole cluster (those of other prefixes too), so
                // one model's shards land on at least two nodes, not necessarily three.
                let placed = shard_leaders(&cluster, &topo).await;
                let distinct: BTreeSet<&String> = placed.iter().collect();
                println!("SHARDS leaders of the 3 shards as declared: {placed:?}");
                assert!(
                    distinct.len() >= 2,
                    "the shards' leaders all sit on one node: {placed:?}"
                );
                if bench {
                    // What an operator runs to even leaders out (docs/SCALING.md).
                    cluster.nodes[0]
                        .try_tool("rabbitmq-queues", &["rebalance", "quorum"])
                        .await
                        .expect("rabbitmq-queues rebalance");
                    println!(
                        "SHARDS leaders after `rabbitmq-queues rebalance quorum`: {:?}",
                        shard_leaders(&cluster, &topo).await
                    );
                }
            }
            let output = dir.path().join(format!("{prefix}.csv"));
            let (wall, scoring) = run_once(
                &prefix,
                &input,
                &output,
                &cluster.url(&[2, 0, 1], ""),
                shards,
                rpj,
            )
            .await;
            assert_exactly_once_and_correct(&read_output(&output), &expected);
            let _ = std::fs::remove_file(&output);
            println!(
                "SHARDS round {round}: {shards} shard(s), {n_rows} rows at {rpj} rows/job: {wall:.0} rows/s wall, {scoring:.0} rows/s scoring"
            );
            rates.push((shards, wall, scoring));
            for w in &mut workers {
                w.stop(Duration::from_secs(60)).await;
            }
        }
    }
    if bench {
        let median = |shards: u64| {
            let mut v: Vec<f64> = rates
                .iter()
                .filter(|r| r.0 == shards)
                .map(|r| r.1)
                .collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "SHARDS median wall rows/s over {rounds} rounds: 1 shard {:.0}, 3 shards {:.0}, ratio {:.2}",
            median(1),
            median(3),
            median(3) / median(1)
        );
    }
}
