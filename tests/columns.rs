//! No silent wrong answers, and no endless waits, from `score-batch` on the real broker
//! with a real worker: columns are matched to the model's features by name (so their
//! order in the file never changes a score), a missing feature is named, a bad cell
//! fails its row only (named by row and column), rows travel packed or as lists with
//! the same scores, and a model nobody serves is reported instead of waited on.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::process::Command;

use surge_testkit::*;

/// Runs score-batch for `model` with exactly `args` (no `--columns` added) and waits.
async fn score_batch(model: &str, prefix: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(bin("score-batch"))
        .args(["--model", model, "--prefix", prefix])
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .expect("running score-batch")
}

async fn run_ok(prefix: &str, input: &Path, output: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--timeout",
        "120",
        "--rows-per-job",
        "40",
    ];
    args.extend_from_slice(extra);
    let out = score_batch("breast-cancer", prefix, &args, &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "score-batch {extra:?} failed ({}): {stderr}",
        out.status
    );
    stderr
}

/// The CSV at `path`: its header and records, as the strings the file holds.
fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut rdr =
        csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header = rdr
        .headers()
        .expect("reading the CSV header")
        .iter()
        .map(str::to_string)
        .collect();
    let records = rdr
        .records()
        .map(|r| {
            r.expect("reading a CSV record")
                .iter()
                .map(str::to_string)
                .collect()
        })
        .collect();
    (header, records)
}

/// Column `name` of a CSV read by [`read_csv`].
fn column(csv: &(Vec<String>, Vec<Vec<String>>), name: &str) -> Vec<String> {
    let i = csv
        .0
        .iter()
        .position(|c| c == name)
        .unwrap_or_else(|| panic!("no column {name} in {:?}", csv.0));
    csv.1.iter().map(|r| r[i].clone()).collect()
}

fn write_csv(path: &Path, header: &[String], records: &[Vec<String>]) {
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .from_path(path)
        .expect("opening the CSV file");
    if !header.is_empty() {
        w.write_record(header).expect("writing a CSV record");
    }
    for r in records {
        w.write_record(r).expect("writing a CSV record");
    }
    w.flush().expect("flushing the writer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_order_extras_and_packing_never_change_a_score() {
    let bed = Bed::new("cols", &["breast-cancer"]).await;
    let (prefix, dir) = (bed.prefix.clone(), &bed.dir);
    let sample = models_dir().join("breast-cancer/sample.csv");
    let original = read_csv(&sample);
    let (features, rows) = (&original.0, &original.1);
    assert_eq!(features, &feature_names(), "sample.csv is in model order");

    // The same cells, columns in another order (a fixed permutation), with a string
    // column first and a numeric one last that the model does not know.
    let n = features.len();
    let order: Vec<usize> = (0..n).map(|i| (i * 7 + 3) % n).collect();
    let mut header = vec!["patient".to_string()];
    header.extend(order.iter().map(|&i| features[i].clone()));
    header.push("visit_no".into());
    let shuffled_rows: Vec<Vec<String>> = rows
        .iter()
        .enumerate()
        .map(|(k, r)| {
            let mut rec = vec![format!("p-{k:03}")];
            rec.extend(order.iter().map(|&i| r[i].clone()));
            rec.push((k % 4 + 1).to_string());
            rec
        })
        .collect();
    let shuffled = dir.path().join("shuffled.csv");
    write_csv(&shuffled, &header, &shuffled_rows);
    // The original rows with no header, and an id column in front.
    let headerless = dir.path().join("headerless.csv");
    let headerless_rows: Vec<Vec<String>> = rows
        .iter()
        .enumerate()
        .map(|(k, r)| {
            let mut rec = vec![format!("p-{k:03}")];
            rec.extend(r.iter().cloned());
            rec
        })
        .collect();
    write_csv(&headerless, &[], &headerless_rows);
    let positional = dir.path().join("positional.csv");
    write_csv(&positional, &[], rows);

    let mut w = WorkerProc::spawn(&prefix, "w-cols", dir.path(), &["--model", "breast-cancer"]);
    w.wait_ready(Duration::from_secs(30)).await;

    let out = |name: &str| dir.path().join(name);
    run_ok(&prefix, &sample, &out("original.csv"), &[]).await;
    let log = run_ok(&prefix, &shuffled, &out("packed.csv"), &[]).await;
    assert!(
        log.contains("packed=true") && log.contains("by_name=true"),
        "{log}"
    );
    let log = run_ok(&prefix, &shuffled, &out("listed.csv"), &["--no-pack"]).await;
    assert!(log.contains("packed=false"), "{log}");
    let log = run_ok(
        &prefix,
        &shuffled,
        &out("json.csv"),
        &["--encoding", "json"],
    )
    .await;
    assert!(
        log.contains("packed=false"),
        "JSON always sends inputs: {log}"
    );
    let names = format!(",{}", features.join(","));
    run_ok(
        &prefix,
        &headerless,
        &out("headerless.csv"),
        &["--no-header", "--columns", &names],
    )
    .await;
    let warned = run_ok(
        &prefix,
        &positional,
        &out("positional.csv"),
        &["--no-header"],
    )
    .await;
    assert!(
        warned.contains("WARN") && warned.contains("sent by position"),
        "a headerless file without --columns warns that order matters: {warned}"
    );

    let reference = read_csv(&out("original.csv"));
    let scores = column(&reference, "malignant_probability");
    assert_eq!(scores.len(), rows.len());
    assert!(column(&reference, "error").iter().all(String::is_empty));
    // The scores are the model's, in row order.
    let parsed: Vec<Vec<f32>> = rows
        .iter()
        .map(|r| r.iter().map(|c| c.parse().unwrap()).collect())
        .collect();
    for (got, want) in scores.iter().zip(reference_scores(&parsed)) {
        let got: f32 = got.parse().unwrap();
        assert!((got - want).abs() <= 1e-6, "{got} vs in-process {want}");
    }
    for name in [
        "packed.csv",
        "listed.csv",
        "json.csv",
        "headerless.csv",
        "positional.csv",
    ] {
        let got = read_csv(&out(name));
        assert_eq!(
            column(&got, "malignant_probability"),
            scores,
            "{name}: scores differ from the original column order"
        );
        assert!(column(&got, "error").iter().all(String::is_empty), "{name}");
    }
    // Every input cell comes out as it went in, extra columns included.
    let packed = read_csv(&out("packed.csv"));
    assert_eq!(&packed.0[..header.len()], &header[..]);
    for (got, want) in packed.1.iter().zip(&shuffled_rows) {
        assert_eq!(&got[..want.len()], &want[..]);
    }
    let named = read_csv(&out("headerless.csv"));
    assert_eq!(named.0[0], "column_1");
    assert_eq!(&named.0[1..=n], &features[..]);
    assert_eq!(column(&named, "column_1")[7], "p-007");

    w.stop(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_feature_is_named_and_a_bad_cell_fails_its_row_only() {
    let bed = Bed::new("missing", &["breast-cancer"]).await;
    let (prefix, dir) = (bed.prefix.clone(), &bed.dir);
    let (header, records) = read_csv(&models_dir().join("breast-cancer/sample.csv"));
    let gone = header
        .iter()
        .position(|c| c == "mean_area")
        .expect("sample.csv has mean_area");
    let drop_col = |r: &Vec<String>| -> Vec<String> {
        r.iter()
            .enumerate()
            .filter(|(i, _)| *i != gone)
            .map(|(_, c)| c.clone())
            .collect()
    };
    let missing = dir.path().join("missing.csv");
    write_csv(
        &missing,
        &drop_col(&header),
        &records.iter().map(drop_col).collect::<Vec<_>>(),
    );
    let mut bad_records = records.clone();
    bad_records[41][3] = "n/a".into();
    let bad = dir.path().join("bad.csv");
    write_csv(&bad, &header, &bad_records);
    let good = dir.path().join("good.csv");
    write_csv(&good, &header, &records);

    let mut w = WorkerProc::spawn(
        &prefix,
        "w-missing",
        dir.path(),
        &["--model", "breast-cancer"],
    );
    w.wait_ready(Duration::from_secs(30)).await;
    let output = dir.path().join("missing-out.csv");
    let out = score_batch(
        "breast-cancer",
        &prefix,
        &[
            "--input",
            missing.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--rows-per-job",
            "20",
            "--timeout",
            "120",
        ],
        &[],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let got = read_csv(&output);
    let errors = column(&got, "error");
    assert_eq!(errors.len(), records.len());
    for e in &errors {
        assert!(
            e.starts_with("invalid_input: missing columns: mean_area "),
            "every row names the missing column: {e}"
        );
    }
    assert!(
        stderr.contains("every job so far failed") && stderr.contains("missing columns: mean_area"),
        "score-batch says once that everything fails, and why: {stderr}"
    );

    // A bad cell fails its row, named by row and column; every other row is scored
    // as it would be without it.
    let output = dir.path().join("bad-out.csv");
    let out = score_batch(
        "breast-cancer",
        &prefix,
        &[
            "--input",
            bad.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--rows-per-job",
            "20",
        ],
        &[],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("1 rows failed with invalid_input"),
        "{stderr}"
    );
    let reference = dir.path().join("good-out.csv");
    let out = score_batch(
        "breast-cancer",
        &prefix,
        &[
            "--input",
            good.to_str().unwrap(),
            "--output",
            reference.to_str().unwrap(),
            "--rows-per-job",
            "20",
        ],
        &[],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (got, want) = (read_csv(&output), read_csv(&reference));
    let errors = column(&got, "error");
    let (scores, wanted) = (
        column(&got, "malignant_probability"),
        column(&want, "malignant_probability"),
    );
    assert_eq!(errors.len(), records.len());
    for (i, e) in errors.iter().enumerate() {
        if i == 41 {
            assert!(
                e.starts_with("invalid_input: row 42, column \"mean_area\" holds \"n/a\", which is not a finite number"),
                "{e}"
            );
            assert_eq!(scores[i], "", "the bad row has no score");
        } else {
            assert_eq!(e, "", "row {i}");
            assert_eq!(scores[i], wanted[i], "row {i}");
        }
    }
    w.stop(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_nobody_serves_is_reported_and_timeout_still_ends_the_run() {
    let bed = Bed::new("idle", &["nobody-serves-this"]).await;
    let (conn, prefix, dir) = (&bed.conn, bed.prefix.clone(), &bed.dir);
    let output = dir.path().join("out.csv");
    let sample = models_dir().join("breast-cancer/sample.csv");
    let started = std::time::Instant::now();
    let out = score_batch(
        "nobody-serves-this",
        &prefix,
        &[
            "--input",
            sample.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--timeout",
            "6",
        ],
        &[("SURGE_IDLE_HINT_SECS", "1")],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "--timeout ends the run: {stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(30), "{stderr}");
    let queue = format!("{prefix}.jobs.nobody-serves-this");
    let hint = stderr
        .lines()
        .find(|l| l.contains("WARN") && l.contains(&format!("no worker consumes {queue}")))
        .unwrap_or_else(|| panic!("no WARN line naming {queue}: {stderr}"));
    assert!(
        hint.contains("models/nobody-serves-this") && hint.contains("surge models list"),
        "{hint}"
    );
    // Said once (then at most every 30 s), not on every probe.
    assert_eq!(stderr.matches("WARN").count(), 1, "{stderr}");
    assert!(
        stderr.contains("timed out after 6s") && stderr.contains(&queue),
        "{stderr}"
    );
    // A run that gave up keeps its reply queue (for an hour) for late results; this
    // one is the test's to delete.
    let run = stderr
        .split("run=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no run id in: {stderr}"));
    let ch = conn.create_channel().await.unwrap();
    ch.queue_delete(
        format!("{prefix}.reply.{run}").as_str().into(),
        lapin::options::QueueDeleteOptions::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("deleting the reply queue of {run}: {e}"));
}
