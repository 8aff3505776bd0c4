//! Shared by the model tests: scoring rows and checking error messages; the MiniLM
//! model folder, the sentence-transformers fixture and the comparison; and [`tiny`],
//! the small MLP folder the loading tests write.

#![allow(dead_code)] // each test binary uses its own part

pub mod tiny;

use std::path::{Path, PathBuf};

use serde_json::Value;
use surge_model::{load_model, Batch, Device, Model, ModelError, Scores};
use tempfile::TempDir;

/// Scores `values`, rows of `dim` numbers, with `model`.
pub fn score_rows(model: &dyn Model, values: &[f32], dim: usize) -> Result<Scores, ModelError> {
    model.score(&Batch::Rows { values, dim })
}

/// Asserts that `message` contains every one of `parts`.
pub fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(
            message.contains(part),
            "error message should mention {part:?}: {message}"
        );
    }
}

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

/// A copy of the MiniLM folder in a temporary models directory (the weights
/// hard-linked where the filesystem allows), changed by `edit`, then loaded.
pub fn copy_with(edit: impl FnOnce(&Path)) -> (TempDir, Result<Box<dyn Model>, ModelError>) {
    let tmp = tempfile::tempdir().unwrap();
    let src = models_dir().join(MODEL);
    let dst = tmp.path().join(MODEL);
    std::fs::create_dir(&dst).unwrap();
    for f in ["model.toml", "config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    // The weights are large: hard-link them when the filesystem allows (a symlink would
    // rightly be refused as leaving the folder).
    let (from, to) = (src.join("model.safetensors"), dst.join("model.safetensors"));
    if std::fs::hard_link(&from, &to).is_err() {
        std::fs::copy(&from, &to).unwrap();
    }
    edit(&dst);
    let r = load_model(tmp.path(), MODEL, &Device::Cpu);
    (tmp, r)
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// Asserts that every row of `scores` has unit length.
pub fn assert_unit_rows(scores: &Scores) {
    for i in 0..scores.len() {
        let norm: f32 = scores.row(i).iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "text {i}: norm {norm}");
    }
}

/// The least cosine between row `i` of `got` and the `i`th of `want`, and its `i`.
pub fn worst_cosine<'a>(got: &Scores, want: impl IntoIterator<Item = &'a [f32]>) -> (f32, usize) {
    let mut worst = (1.0f32, 0usize);
    for (i, want) in want.into_iter().enumerate() {
        let c = cosine(got.row(i), want);
        if c < worst.0 {
            worst = (c, i);
        }
    }
    worst
}

/// Asserts that the worst cosine, `(cosine, text index)`, is at least `min`, naming the
/// text; `what` says which cosine it is.
pub fn assert_worst(worst: (f32, usize), texts: &[String], min: f32, what: &str) {
    assert!(
        worst.0 >= min,
        "text {} ({:?}): {what} {} < {min}",
        worst.1,
        texts[worst.1].chars().take(60).collect::<String>(),
        worst.0
    );
}

/// Asserts that a few fixture texts, scored alone by `model`, give the embeddings they
/// got in `batched`: a text's embedding does not depend on its batch mates.
pub fn assert_alone_as_in_batch(model: &dyn Model, texts: &[String], batched: &Scores) {
    for i in [0, 20, 56, 59] {
        let alone = model.score(&Batch::Texts(&texts[i..=i])).unwrap();
        let c = cosine(alone.row(0), batched.row(i));
        assert!(c >= 0.99999, "text {i}: alone vs batched cosine {c}");
    }
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
    assert_unit_rows(&scores);
    let worst = worst_cosine(&scores, reference.iter().map(Vec::as_slice));
    assert_worst(worst, &texts, MIN_COSINE, "cosine");
    (scores, worst.0, worst.1)
}
