//! all-MiniLM-L6-v2 with `quantization = "int8"`: every fixture text's embedding stays
//! within cosine 0.99 of the f32 model's (and of sentence-transformers'), scored in one
//! batch and alone. The model folder is filled by `make models`; the int8 folder is a
//! copy of it, weights hard-linked, with the one line added.

mod common;

use common::{cosine, fixture, load, models_dir, MODEL};
use surge_model::{load_model, Batch, Device, Model, ModelError};

/// Least cosine the int8 model must keep to the f32 one over the fixture.
const MIN_INT8_COSINE: f32 = 0.99;

/// A copy of the model folder whose `model.toml` gets `extra` appended (inside
/// `[bert-embedding]`, its last section).
fn copy_with(extra: &str) -> (tempfile::TempDir, Result<Box<dyn Model>, ModelError>) {
    let tmp = tempfile::tempdir().unwrap();
    let src = models_dir().join(MODEL);
    let dst = tmp.path().join(MODEL);
    std::fs::create_dir(&dst).unwrap();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        // Hard links where the filesystem allows (a symlink would be refused as leaving
        // the folder).
        if std::fs::hard_link(src.join(f), dst.join(f)).is_err() {
            std::fs::copy(src.join(f), dst.join(f)).unwrap();
        }
    }
    let toml = std::fs::read_to_string(src.join("model.toml")).unwrap();
    assert!(
        toml.trim_end().ends_with("normalize = true"),
        "[bert-embedding] must come last"
    );
    std::fs::write(dst.join("model.toml"), format!("{toml}{extra}\n")).unwrap();
    let r = load_model(tmp.path(), MODEL, &Device::Cpu);
    (tmp, r)
}

#[test]
fn int8_stays_close_to_f32() {
    let f32_model = load();
    let (_tmp, int8) = copy_with("quantization = \"int8\"");
    let int8 = int8.unwrap_or_else(|e| panic!("loading the int8 model: {e}"));
    let (texts, reference) = fixture();
    let want = f32_model.score(&Batch::Texts(&texts)).unwrap();
    let got = int8.score(&Batch::Texts(&texts)).unwrap();
    assert_eq!(got.width, 384);
    assert_eq!(got.len(), texts.len());
    let (mut worst, mut worst_ref, mut sum) = ((1.0f32, 0usize), 1.0f32, 0.0f64);
    for (i, reference) in reference.iter().enumerate() {
        let norm: f32 = got.row(i).iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "text {i}: norm {norm}");
        let c = cosine(got.row(i), want.row(i));
        sum += f64::from(c);
        if c < worst.0 {
            worst = (c, i);
        }
        worst_ref = worst_ref.min(cosine(got.row(i), reference));
    }
    println!(
        "int8 vs f32 over {} texts: min cosine {} (text {}), mean {:.6}; min vs sentence-transformers {}",
        texts.len(),
        worst.0,
        worst.1,
        sum / texts.len() as f64,
        worst_ref
    );
    assert!(
        worst.0 >= MIN_INT8_COSINE,
        "text {} ({:?}): int8 cosine {} < {MIN_INT8_COSINE}",
        worst.1,
        texts[worst.1].chars().take(60).collect::<String>(),
        worst.0
    );
    assert!(
        worst_ref >= MIN_INT8_COSINE,
        "vs sentence-transformers: {worst_ref}"
    );
    // Per-token quantization: a text gives the same embedding alone as in a batch.
    for i in [0, 20, 56, 59] {
        let alone = int8.score(&Batch::Texts(&texts[i..=i])).unwrap();
        let c = cosine(alone.row(0), got.row(i));
        assert!(c >= 0.99999, "text {i}: alone vs batched cosine {c}");
    }
}

#[test]
fn unknown_quantization_is_refused() {
    let (_tmp, r) = copy_with("quantization = \"int4\"");
    let err = r.err().unwrap().to_string();
    assert!(
        err.contains("quantization") || err.contains("int4"),
        "{err}"
    );
}
