//! A killed score-batch picks up where it stopped: SIGKILL at about half way with a
//! worker running, `--resume`, and the output is byte for byte that of an
//! uninterrupted run; the run's state file and reply queue are gone afterwards. A
//! resume with a changed input is refused.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

use surge_testkit::figures::queue_len;
use surge_testkit::*;

const ROWS: usize = 200_000;

fn write_csv(path: &Path, n: usize) {
    let sample = std::fs::read_to_string(models_dir().join("breast-cancer/sample.csv"))
        .expect("reading the file");
    let mut lines = sample.lines();
    let header = lines.next().unwrap_or_default().to_string();
    let rows: Vec<&str> = lines.collect();
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(w, "row_id,{header}").unwrap();
    for i in 0..n {
        writeln!(w, "{i},{}", rows[i % rows.len()]).unwrap();
    }
    w.flush().unwrap();
}

fn spawn(prefix: &str, input: &Path, output: &Path, extra: &[&str]) -> Child {
    Command::new(bin("score-batch"))
        .args([
            "--model",
            "breast-cancer",
            "--prefix",
            prefix,
            "--timeout",
            "240",
        ])
        .args(["--rows-per-job", "256", "--max-in-flight", "4"])
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting score-batch")
}

async fn finish(child: Child) -> String {
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "score-batch failed: {stderr}");
    stderr
}

/// Kills the run writing `output` once its state file counts `at_least` rows written.
/// `before_kill` runs just before the SIGKILL.
async fn kill_when_written<F: std::future::Future<Output = ()>>(
    mut child: Child,
    output: &Path,
    at_least: usize,
    before_kill: impl FnOnce() -> F,
) -> serde_json::Value {
    let state = output.with_file_name(format!(
        "{}.state",
        output.file_name().unwrap().to_string_lossy()
    ));
    let started = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&state) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                if v["rows_written"].as_u64().unwrap_or(0) as usize >= at_least {
                    before_kill().await;
                    child.kill().await.unwrap();
                    return v;
                }
            }
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "score-batch ended before it could be killed"
        );
        assert!(started.elapsed() < Duration::from_secs(120), "no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_run_resumes_to_the_same_bytes_and_a_changed_input_is_refused() {
    let bed = Bed::new("resume", &["breast-cancer"]).await;
    let (conn, prefix, dir) = (&bed.conn, bed.prefix.clone(), &bed.dir);
    let input = dir.path().join("rows.csv");
    write_csv(&input, ROWS);
    // One job per batch: a row's score does not depend on which jobs share its batch.
    let mut w = WorkerProc::spawn(
        &prefix,
        "w-resume",
        dir.path(),
        &["--model", "breast-cancer", "--max-batch-rows", "256"],
    );
    w.wait_ready(Duration::from_secs(30)).await;

    let reference = dir.path().join("reference.csv");
    finish(spawn(&prefix, &input, &reference, &[])).await;
    assert!(!dir.path().join("reference.csv.state").exists());

    let output = dir.path().join("scores.csv");
    // The worker is frozen (SIGSTOP) before the kill, so that the run's window of jobs
    // is surely in flight when it dies: it fills while the worker cannot answer.
    let state = kill_when_written(
        spawn(&prefix, &input, &output, &[]),
        &output,
        ROWS / 3,
        || async {
            w.signal("STOP").await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        },
    )
    .await;
    w.signal("CONT").await;
    let run = state["run_id"].as_str().unwrap().to_string();
    // Thawed, the worker answers those jobs into the dead run's reply queue.
    let reply = format!("{prefix}.reply.{run}");
    let waiting = {
        let started = Instant::now();
        let (mut last, mut since) = (0, Instant::now());
        loop {
            let n = queue_len(conn, &reply).await;
            if n != last {
                (last, since) = (n, Instant::now());
            }
            if n > 0 && since.elapsed() > Duration::from_millis(1500) {
                break n as usize;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no results reached {reply} after the kill; worker log:\n{}",
                w.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert!(
        !output.exists(),
        "a killed run leaves no output, only a partial one"
    );
    assert!(dir.path().join("scores.partial").exists());
    // Without --resume the state is not overwritten.
    let refused = spawn(&prefix, &input, &output, &[])
        .wait_with_output()
        .await
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--resume"));

    let log = finish(spawn(&prefix, &input, &output, &["--resume"])).await;
    assert!(log.contains("resuming"), "{log}");
    // The jobs the killed run had in flight were answered into its reply queue while it
    // was dead: the resumed run takes those results instead of publishing the jobs again.
    let collected: usize = log
        .split("collected from the killed run ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no collected count in the summary: {log}"));
    assert!(
        (1..=4).contains(&waiting),
        "{waiting} results waiting (4 jobs in flight at most)"
    );
    assert_eq!(
        collected, waiting,
        "the resumed run takes every result that was waiting: {log}"
    );
    let (got, want) = (
        std::fs::read(&output).unwrap(),
        std::fs::read(&reference).unwrap(),
    );
    assert!(
        got == want,
        "the resumed output differs from the uninterrupted one"
    );
    assert!(
        !dir.path().join("scores.csv.state").exists(),
        "state file removed"
    );
    let probe = conn.create_channel().await.unwrap();
    let gone = probe
        .queue_declare(
            format!("{prefix}.reply.{run}").as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await;
    assert!(
        gone.is_err(),
        "the run's reply queue is deleted when it completes"
    );

    let ch = conn.create_channel().await.unwrap();
    // A changed input is refused.
    let other = dir.path().join("other.csv");
    let killed =
        kill_when_written(spawn(&prefix, &input, &other, &[]), &other, 1, || async {}).await;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .unwrap();
    writeln!(f, "{ROWS},1,2,3").unwrap();
    drop(f);
    let out = spawn(&prefix, &input, &other, &["--resume"])
        .wait_with_output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("changed since the interrupted run"),
        "{stderr}"
    );
    // That run's reply queue would expire in an hour; the test deletes it now.
    let run = killed["run_id"].as_str().unwrap();
    ch.queue_delete(
        format!("{prefix}.reply.{run}").as_str().into(),
        lapin::options::QueueDeleteOptions::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("deleting the reply queue of {run}: {e}"));

    w.stop(Duration::from_secs(20)).await;
}
