//! all-MiniLM-L6-v2 against sentence-transformers: every embedding in
//! `fixtures/minilm_reference.json` (61 varied texts: short, empty-ish, code, unicode,
//! and texts past 256 tokens that must be truncated the same way) has a cosine
//! similarity of at least 0.9999 with Surge's, scored together in one batch and alone.
//! The fixture was made by sentence-transformers (PyTorch) from the same files; see
//! `fixtures/README.md`. The model folder is filled by `make models`.

mod common;

use common::{cosine, fixture, load, models_dir, score_fixture, MODEL};
use surge_model::{load_model, Batch, Device, InputSpec, Model, ModelError};

#[test]
fn matches_sentence_transformers() {
    let model = load();
    assert_eq!(model.info().input, InputSpec::Text { max_length: 256 });
    let (scores, worst, at) = score_fixture(&*model);
    println!(
        "worst cosine to sentence-transformers: {} (text {})",
        worst, at
    );
    let (texts, _) = fixture();
    // A text gives the same embedding alone as inside a batch of others.
    for i in [0, 20, 56, 59] {
        let alone = model.score(&Batch::Texts(&texts[i..=i])).unwrap();
        let c = cosine(alone.row(0), scores.row(i));
        assert!(c >= 0.99999, "text {i}: alone vs batched cosine {c}");
    }
}

#[test]
fn rows_are_refused_with_a_clear_error() {
    let model = load();
    let err = model
        .score(&Batch::Rows {
            values: &[1.0],
            dim: 1,
        })
        .unwrap_err();
    assert!(matches!(err, ModelError::BadBatch(_)), "{err}");
    let empty = model.score(&Batch::Texts(&[])).unwrap();
    assert!(empty.is_empty());
}

/// A copy of the model folder with one file replaced or removed, to check the errors.
fn broken_copy(
    edit: impl FnOnce(&std::path::Path),
) -> (tempfile::TempDir, Result<Box<dyn Model>, ModelError>) {
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

#[test]
fn broken_folders_name_the_file_at_fault() {
    let (_t, r) = broken_copy(|d| std::fs::remove_file(d.join("tokenizer.json")).unwrap());
    let err = r.err().unwrap().to_string();
    assert!(err.contains("tokenizer.json"), "{err}");

    let (_t, r) = broken_copy(|d| std::fs::write(d.join("tokenizer.json"), "{not json").unwrap());
    let err = r.err().unwrap().to_string();
    assert!(err.contains("tokenizer.json"), "{err}");

    let (_t, r) =
        broken_copy(|d| std::fs::write(d.join("config.json"), "{\"hidden_size\": 384}").unwrap());
    let err = r.err().unwrap().to_string();
    assert!(err.contains("config.json"), "{err}");

    let (_t, r) = broken_copy(|d| {
        let c = std::fs::read_to_string(d.join("config.json")).unwrap();
        std::fs::write(
            d.join("config.json"),
            c.replace("\"intermediate_size\": 1536", "\"intermediate_size\": 1024"),
        )
        .unwrap()
    });
    let err = r.err().unwrap().to_string();
    assert!(
        err.contains("intermediate.dense.weight") && err.contains("1024"),
        "{err}"
    );

    let (_t, r) = broken_copy(|d| {
        let t = std::fs::read_to_string(d.join("model.toml")).unwrap();
        std::fs::write(
            d.join("model.toml"),
            t.replace("max_length = 256", "max_length = 4096"),
        )
        .unwrap()
    });
    let err = r.err().unwrap().to_string();
    assert!(err.contains("input.max_length"), "{err}");

    let (_t, r) = broken_copy(|d| {
        let t = std::fs::read_to_string(d.join("model.toml")).unwrap();
        std::fs::write(
            d.join("model.toml"),
            t.replace(
                "tokenizer = \"tokenizer.json\"",
                "tokenizer = \"../tokenizer.json\"",
            ),
        )
        .unwrap()
    });
    let err = r.err().unwrap().to_string();
    assert!(err.contains("bert-embedding.tokenizer"), "{err}");
}
