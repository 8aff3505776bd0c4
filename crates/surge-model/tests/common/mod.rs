//! Shared by the MiniLM tests: the model folder, the sentence-transformers fixture and
//! the comparison.

#![allow(dead_code)] // each test binary uses its own part

use std::path::PathBuf;

use serde_json::Value;
use surge_model::{load_model, Batch, Device, Model};

pub const MODEL: &str = "all-minilm-l6-v2";
pub const MIN_COSINE: f32 = 0.9999;

pub fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models")
}

pub fn load() -> Box<dyn Model> {
    let dir = models_dir();
    assert!(
        dir.join(MODEL).join("model.safetensors").is_file(),
        "{}/{MODEL}/model.safetensors is missing: run `make models` (make test does)",
        dir.display()
    );
    load_model(&dir, MODEL, &Device::Cpu).unwrap_or_else(|e| panic!("loading {MODEL}: {e}"))
}

pub fn fixture() -> (Vec<String>, Vec<Vec<f32>>) {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm_reference.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    let texts = cases
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect();
    let embeddings = cases
        .iter()
        .map(|c| {
            c["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    (texts, embeddings)
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// Scores every fixture text in one batch and returns the embeddings with the worst
/// cosine to sentence-transformers' and its text's index, after checking each embedding
/// has unit length.
pub fn score_fixture(model: &dyn Model) -> (surge_model::Scores, f32, usize) {
    let (texts, reference) = fixture();
    assert!(texts.len() >= 50);
    let scores = model.score(&Batch::Texts(&texts)).unwrap();
    assert_eq!(scores.width, 384);
    assert_eq!(scores.len(), texts.len());
    let mut worst = (1.0f32, 0usize);
    for (i, want) in reference.iter().enumerate() {
        let got = scores.row(i);
        let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "text {i}: norm {norm}");
        let c = cosine(got, want);
        if c < worst.0 {
            worst = (c, i);
        }
    }
    assert!(
        worst.0 >= MIN_COSINE,
        "text {} ({:?}): cosine {} < {MIN_COSINE}",
        worst.1,
        texts[worst.1].chars().take(60).collect::<String>(),
        worst.0
    );
    (scores, worst.0, worst.1)
}
