//! A new model is served by dropping a folder: copied into a running worker's models
//! directory, it is validated and served without a restart, while the model already
//! served keeps answering without interruption.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::process::Command;

use surge_testkit::*;

fn copy_model(from: &Path, to: &Path, name: &str) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::copy(from.join("model.safetensors"), to.join("model.safetensors")).unwrap();
    let toml = std::fs::read_to_string(from.join("model.toml")).unwrap();
    let toml = toml.replace("name = \"breast-cancer\"", &format!("name = \"{name}\""));
    std::fs::write(to.join("model.toml"), toml).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_folder_dropped_into_a_running_worker_is_served() {
    let bed = Bed::new("hot", &["breast-cancer", "breast-cancer-hot"]).await;
    let (prefix, dir) = (bed.prefix.clone(), &bed.dir);
    let models = dir.path().join("models");
    let shipped = models_dir().join("breast-cancer");
    copy_model(&shipped, &models.join("breast-cancer"), "breast-cancer");

    // Slow batches so the first model's run is still going when the new one lands.
    let mut worker = WorkerProc::spawn_in(
        &prefix,
        "w-hot",
        dir.path(),
        &models,
        &[
            "--max-batch-rows",
            "50",
            "--batch-delay-ms",
            "10",
            "--watch-models-ms",
            "500",
        ],
    );
    worker.wait_ready(Duration::from_secs(30)).await;

    // The first model keeps serving a run throughout.
    let input_a = dir.path().join("a.csv");
    let output_a = dir.path().join("a-scores.csv");
    let rows_a = write_rows_csv(&input_a, 20_000);
    let mut run_a = spawn_score_batch(&prefix, &input_a, &output_a, &["--rows-per-job", "10"]);

    // A folder that fails validation is reported and never served.
    let broken = models.join("broken-model");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("model.toml"),
        "name = \"broken-model\"\nversion = \"1\"\narchitecture = \"mlp\"\nweights = \"missing.safetensors\"\n",
    )
    .unwrap();

    // Drop the new model in.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let new_name = "breast-cancer-hot";
    copy_model(&shipped, &models.join(new_name), new_name);
    let dropped = Instant::now();
    assert!(
        run_a.try_wait().unwrap().is_none(),
        "the first model's run should still be going when the new folder lands"
    );

    let input_b = dir.path().join("b.csv");
    let output_b = dir.path().join("b-scores.csv");
    let rows_b = write_rows_csv(&input_b, 200);
    let out_b = spawn_score_batch_for(
        new_name,
        &prefix,
        &input_b,
        &output_b,
        &["--rows-per-job", "200"],
        &[],
    )
    .wait_with_output()
    .await
    .unwrap();
    let to_result = dropped.elapsed();
    assert!(
        out_b.status.success(),
        "the new model was not served: {}\nworker log:\n{}",
        String::from_utf8_lossy(&out_b.stderr),
        worker.log_text()
    );
    // The copy is the same network: the same scores.
    assert_exactly_once_and_correct(&read_output(&output_b), &reference_scores(&rows_b));
    println!("hot model: folder dropped → its first job answered in {to_result:?} (target ≤ 5 s)");

    let out_a = run_a.wait_with_output().await.unwrap();
    assert!(
        out_a.status.success(),
        "the first model's run failed: {}",
        String::from_utf8_lossy(&out_a.stderr)
    );
    assert_exactly_once_and_correct(&read_output(&output_a), &reference_scores(&rows_a));

    let (_, metrics) = worker.get("/metrics").await.unwrap();
    assert!(
        metrics.contains("surge_model_rejected_total{model=\"broken-model\"}"),
        "{metrics}"
    );
    let text = worker.log_text();
    assert!(
        text.contains("new model folder validated; serving it"),
        "{text}"
    );
    assert!(
        text.contains("broken-model") && text.contains("failed validation"),
        "{text}"
    );
    assert!(!text.contains("serving a model found after start\" model=broken-model"));

    worker.signal("TERM").await;
    worker.wait_exit(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_autoscaler_scales_a_model_folder_added_while_it_runs() {
    let bed = Bed::new("hot-auto", &["breast-cancer", "breast-cancer-later"]).await;
    let (prefix, dir) = (bed.prefix.clone(), &bed.dir);
    let models = dir.path().join("models");
    let shipped = models_dir().join("breast-cancer");
    copy_model(&shipped, &models.join("breast-cancer"), "breast-cancer");
    let port = free_port();
    let log = dir.path().join("autoscale.log");
    let mut cmd = Command::new(bin("surge"));
    cmd.arg("autoscale")
        .args(["--prefix", &prefix, "--models-dir"])
        .arg(&models)
        .args(["--cooldown-s", "1", "--scale-down-window-s", "1"])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")]);
    let mut auto = Proc::spawn("surge autoscale", &mut cmd, log);
    let log_text = || auto.log_text();
    let start = Instant::now();
    while !matches!(http_get(port, "/readyz").await, Some((200, _))) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "autoscaler not ready:\n{}",
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let new_name = "breast-cancer-later";
    copy_model(&shipped, &models.join(new_name), new_name);
    let dropped = Instant::now();
    let input = dir.path().join("in.csv");
    let output = dir.path().join("out.csv");
    let rows = write_rows_csv(&input, 100);
    let out = spawn_score_batch_for(new_name, &prefix, &input, &output, &[], &[])
        .wait_with_output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}\nautoscaler log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        log_text()
    );
    assert_exactly_once_and_correct(&read_output(&output), &reference_scores(&rows));
    println!(
        "hot model via the autoscaler, from zero workers: folder dropped → answered in {:?}",
        dropped.elapsed()
    );
    assert!(log_text().contains("new model folder; scaling its queue too"));
    auto.stop(Duration::from_secs(30)).await;
}

fn put_version(models: &Path, version: &str) {
    let shipped = models_dir().join("breast-cancer");
    let dir = models.join("breast-cancer").join(version);
    copy_model(&shipped, &dir, "breast-cancer");
    let toml = std::fs::read_to_string(dir.join("model.toml")).unwrap();
    std::fs::write(
        dir.join("model.toml"),
        toml.replace("version = \"1.0.0\"", &format!("version = \"{version}\"")),
    )
    .unwrap();
}

/// Scores one file with pinned versions of breast-cancer.
struct Versions<'a> {
    prefix: &'a str,
    input: &'a Path,
    dir: &'a Path,
}

impl Versions<'_> {
    /// Runs score-batch for `breast-cancer@<version>` into `<dir>/<out>`: (success,
    /// stderr, output path).
    async fn score(&self, version: &str, out: &str) -> (bool, String, PathBuf) {
        let output = self.dir.join(out);
        let model = format!("breast-cancer@{version}");
        let o = spawn_score_batch_for(&model, self.prefix, self.input, &output, &[], &[])
            .wait_with_output()
            .await
            .expect("waiting for score-batch");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).to_string(),
            output,
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_side_by_side_and_a_new_version_without_restart() {
    let bed = Bed::new("versions", &["breast-cancer"]).await;
    let (prefix, dir) = (bed.prefix.clone(), &bed.dir);
    let models = dir.path().join("models");
    put_version(&models, "1.0.0");
    let mut worker = WorkerProc::spawn_in(
        &prefix,
        "w-versions",
        dir.path(),
        &models,
        &["--watch-models-ms", "500"],
    );
    worker.wait_ready(Duration::from_secs(30)).await;
    let input = dir.path().join("in.csv");
    let rows = write_rows_csv(&input, 50);
    let expected = reference_scores(&rows);
    let versions = Versions {
        prefix: &prefix,
        input: &input,
        dir: dir.path(),
    };
    let (ok, err, out) = versions.score("1.0.0", "a.csv").await;
    assert!(ok, "{err}");
    assert_exactly_once_and_correct(&read_output(&out), &expected);

    put_version(&models, "1.1.0");
    let dropped = Instant::now();
    // Until the new version is served, asking for it is answered with an error; poll.
    let (mut ok, mut err, mut out) = versions.score("1.1.0", "b.csv").await;
    while !ok && dropped.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        (ok, err, out) = versions.score("1.1.0", "b.csv").await;
    }
    assert!(
        ok,
        "version 1.1.0 was not served: {err}\nworker log:\n{}",
        worker.log_text()
    );
    assert_exactly_once_and_correct(&read_output(&out), &expected);
    println!(
        "versions: 1.1.0 dropped → answered in {:?}",
        dropped.elapsed()
    );
    // The old version is still served beside it, and an unknown one is refused.
    let (ok, err, _) = versions.score("1.0.0", "c.csv").await;
    assert!(ok, "{err}");
    let (ok, err, out) = versions.score("9.9", "d.csv").await;
    assert!(!ok, "an unknown version must not be scored");
    // score-batch writes every row, with the error in its last column.
    let text = std::fs::read_to_string(&out).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert!(header.ends_with(",error"), "{text}");
    let rows_out: Vec<&str> = lines.collect();
    assert_eq!(rows_out.len(), 50, "every row answered: {text}");
    assert!(
        rows_out
            .iter()
            .all(|l| l.contains("no version") && l.contains("9.9") && l.contains("1.0.0, 1.1.0")),
        "{err}\n{text}"
    );
    worker.signal("TERM").await;
    worker.wait_exit(Duration::from_secs(30)).await;
}

/// The refusals counted under `model` in the worker's `/metrics` for `reason`.
async fn refusals(worker: &WorkerProc, model: &str, reason: &str) -> f64 {
    let Some((200, body)) = worker.get("/metrics").await else {
        return 0.0;
    };
    body.lines()
        .filter(|l| l.starts_with("surge_model_folders_refused_total{"))
        .filter(|l| {
            l.contains(&format!("model=\"{model}\"")) && l.contains(&format!("reason=\"{reason}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_mixing_flat_and_versioned_layouts_is_refused_out_loud() {
    let bed = Bed::new("mixed", &["breast-cancer", "mixed-start"]).await;
    let (prefix, dir) = (bed.prefix.clone(), &bed.dir);
    let models = dir.path().join("models");
    let shipped = models_dir().join("breast-cancer");
    copy_model(&shipped, &models.join("breast-cancer"), "breast-cancer");
    // Mixed from the start: refused at start, with the model beside it served.
    copy_model(&shipped, &models.join("mixed-start"), "mixed-start");
    copy_model(&shipped, &models.join("mixed-start/1.1.0"), "mixed-start");
    let v = models.join("mixed-start/1.1.0/model.toml");
    let toml = std::fs::read_to_string(&v).unwrap();
    std::fs::write(
        &v,
        toml.replace("version = \"1.0.0\"", "version = \"1.1.0\""),
    )
    .unwrap();

    let mut worker = WorkerProc::spawn_in(
        &prefix,
        "w-mixed",
        dir.path(),
        &models,
        &["--watch-models-ms", "200"],
    );
    worker.wait_ready(Duration::from_secs(30)).await;
    assert_eq!(
        refusals(&worker, "mixed-start", "mixed_layout").await,
        1.0,
        "{}",
        worker.log_text()
    );
    let log = worker.log_text();
    assert!(
        log.contains("ERROR")
            && log.contains("model folder refused")
            && log.contains("mixed-start mixes two layouts"),
        "{log}"
    );

    // F3: a 1.1.0/ dropped beside the served flat model's files is no longer ignored in
    // silence: an ERROR line and a count say why it is not served...
    put_version(&models, "1.1.0");
    let dropped = Instant::now();
    while refusals(&worker, "breast-cancer", "mixed_layout").await < 1.0 {
        assert!(
            dropped.elapsed() < Duration::from_secs(15),
            "the mixed folder was not reported; log:\n{}",
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = worker.log_text();
    assert!(
        log.contains("breast-cancer mixes two layouts") && log.contains("breast-cancer/1.0.0/"),
        "{log}"
    );
    // ...said once, not at every look...
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(
        refusals(&worker, "breast-cancer", "mixed_layout").await,
        1.0
    );
    // ...and the version already served keeps answering.
    let input = dir.path().join("in.csv");
    let output = dir.path().join("out.csv");
    let rows = write_rows_csv(&input, 20);
    let out = spawn_score_batch(&prefix, &input, &output, &[])
        .wait_with_output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_exactly_once_and_correct(&read_output(&output), &reference_scores(&rows));
    worker.stop(Duration::from_secs(30)).await;
}
