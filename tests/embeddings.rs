//! Text embeddings end to end on the real broker: `score-batch --model all-minilm-l6-v2`
//! on JSON Lines and on CSV with a text column, through a worker process. Every text
//! comes back once, in order, with the embedding sentence-transformers gives it (the
//! reference fixture of crates/surge-model/tests). The model folder is filled by
//! `make models`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

use serde_json::Value;
use surge_testkit::*;

const MODEL: &str = "all-minilm-l6-v2";

/// The fixture's texts and reference embeddings.
fn reference() -> Vec<(String, Vec<f32>)> {
    let path = workspace().join("crates/surge-model/tests/fixtures/minilm_reference.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let e = c["embedding"].as_array().unwrap();
            (
                c["text"].as_str().unwrap().to_string(),
                e.iter().map(|x| x.as_f64().unwrap() as f32).collect(),
            )
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (n(a) * n(b))
}

async fn score_batch(prefix: &str, input: &Path, output: &Path, extra: &[&str]) {
    let out = Command::new(bin("score-batch"))
        .args(["--model", MODEL, "--prefix", prefix, "--timeout", "240"])
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .expect("starting score-batch");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "score-batch failed: {stderr}");
    println!(
        "{}",
        stderr.lines().find(|l| l.contains("rows in")).unwrap_or("")
    );
}

fn check(i: usize, id: &str, embedding: &[f32], want: &[f32]) {
    assert_eq!(id, i.to_string(), "row {i} out of order or duplicated");
    assert_eq!(embedding.len(), 384, "row {i}");
    let c = cosine(embedding, want);
    assert!(c >= 0.9999, "row {i}: cosine {c} to sentence-transformers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn texts_through_score_batch_match_sentence_transformers() {
    let _conn = require_broker().await;
    let models = models_dir();
    assert!(
        models.join(MODEL).join("model.safetensors").is_file(),
        "{}/{MODEL}/model.safetensors is missing: run `make models` (make test does)",
        models.display()
    );
    let prefix = unique_prefix("emb");
    let _cleanup = Cleanup::new(&prefix, &[MODEL]);
    let dir = tempfile::tempdir().unwrap();
    let cases = reference();
    let mut w = WorkerProc::spawn(
        &prefix,
        "w-emb",
        dir.path(),
        &["--model", MODEL, "--threads", "2"],
    );
    w.wait_ready(Duration::from_secs(60)).await;

    // JSON Lines in and out; texts are found in the `text` field.
    let input: PathBuf = dir.path().join("texts.jsonl");
    let lines: Vec<String> = cases
        .iter()
        .enumerate()
        .map(|(i, (t, _))| serde_json::json!({"id": i.to_string(), "text": t}).to_string())
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let output = dir.path().join("embeddings.jsonl");
    score_batch(&prefix, &input, &output, &["--rows-per-job", "8"]).await;
    let text = std::fs::read_to_string(&output).unwrap();
    let rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), cases.len());
    for (i, (row, (t, want))) in rows.iter().zip(&cases).enumerate() {
        assert_eq!(row["text"].as_str(), Some(t.as_str()), "row {i}");
        assert!(
            row.get("error").is_none_or(|e| e.is_null() || e == ""),
            "row {i}: {row}"
        );
        let e: Vec<f32> = row["embedding"]
            .as_array()
            .unwrap_or_else(|| panic!("row {i} has no embedding: {row}"))
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        check(i, row["id"].as_str().unwrap(), &e, want);
    }

    // CSV with a text column of another name, picked with --text-column.
    let input = dir.path().join("texts.csv");
    let mut wtr = csv::Writer::from_path(&input).unwrap();
    wtr.write_record(["id", "sentence"]).unwrap();
    for (i, (t, _)) in cases.iter().enumerate() {
        wtr.write_record([i.to_string().as_str(), t.as_str()])
            .unwrap();
    }
    wtr.flush().unwrap();
    drop(wtr);
    let output = dir.path().join("embeddings.csv");
    score_batch(
        &prefix,
        &input,
        &output,
        &["--text-column", "sentence", "--rows-per-job", "16"],
    )
    .await;
    let mut rdr = csv::Reader::from_path(&output).unwrap();
    let header: Vec<String> = rdr.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(header, ["id", "sentence", "embedding", "error"]);
    let mut n = 0;
    for (i, (rec, (_, want))) in rdr.records().zip(&cases).enumerate() {
        let rec = rec.unwrap();
        assert_eq!(&rec[3], "", "row {i} failed");
        let e: Vec<f32> = serde_json::from_str(&rec[2]).unwrap();
        check(i, &rec[0], &e, want);
        n += 1;
    }
    assert_eq!(n, cases.len());

    w.stop(Duration::from_secs(20)).await;
}
