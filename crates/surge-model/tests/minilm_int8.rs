//! all-MiniLM-L6-v2 with `quantization = "int8"`: every fixture text's embedding stays
//! within cosine 0.99 of the f32 model's (and of sentence-transformers'), scored in one
//! batch and alone. The model folder is filled by `make models`; the int8 folder is a
//! copy of it, weights hard-linked, with the one line added.

mod common;

use common::{
    assert_alone_as_in_batch, assert_unit_rows, assert_worst, copy_with, cosine, fixture, load,
    worst_cosine,
};
use surge_model::{Batch, Model, ModelError};

/// Least cosine the int8 model must keep to the f32 one over the fixture.
const MIN_INT8_COSINE: f32 = 0.99;

/// A copy of the model folder whose `model.toml` gets `extra` appended (inside
/// `[bert-embedding]`, its last section).
fn copy_with_line(extra: &str) -> (tempfile::TempDir, Result<Box<dyn Model>, ModelError>) {
    copy_with(|dst| {
        let path = dst.join("model.toml");
        let toml = std::fs::read_to_string(&path).unwrap();
        assert!(
            toml.trim_end().ends_with("normalize = true"),
            "[bert-embedding] must come last"
        );
        std::fs::write(path, format!("{toml}{extra}\n")).unwrap();
    })
}

#[test]
fn int8_stays_close_to_f32() {
    let f32_model = load();
    let (_tmp, int8) = copy_with_line("quantization = \"int8\"");
    let int8 = int8.expect("loading the int8 model");
    let (texts, reference) = fixture();
    let want = f32_model.score(&Batch::Texts(&texts)).unwrap();
    let got = int8.score(&Batch::Texts(&texts)).unwrap();
    assert_eq!(got.width, 384);
    assert_eq!(got.len(), texts.len());
    assert_unit_rows(&got);
    let worst = worst_cosine(&got, (0..texts.len()).map(|i| want.row(i)));
    let sum: f64 = (0..texts.len())
        .map(|i| f64::from(cosine(got.row(i), want.row(i))))
        .sum();
    let worst_ref = worst_cosine(&got, reference.iter().map(Vec::as_slice)).0;
    println!(
        "int8 vs f32 over {} texts: min cosine {} (text {}), mean {:.6}; min vs sentence-transformers {}",
        texts.len(),
        worst.0,
        worst.1,
        sum / texts.len() as f64,
        worst_ref
    );
    assert_worst(worst, &texts, MIN_INT8_COSINE, "int8 cosine");
    assert!(
        worst_ref >= MIN_INT8_COSINE,
        "vs sentence-transformers: {worst_ref}"
    );
    // Per-token quantization: a text gives the same embedding alone as in a batch.
    assert_alone_as_in_batch(&*int8, &texts, &got);
}

#[test]
fn unknown_quantization_is_refused() {
    let (_tmp, r) = copy_with_line("quantization = \"int4\"");
    let err = r.err().unwrap().to_string();
    assert!(
        err.contains("quantization") || err.contains("int4"),
        "{err}"
    );
}
