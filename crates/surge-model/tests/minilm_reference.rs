//! all-MiniLM-L6-v2 against sentence-transformers: every embedding in
//! `fixtures/minilm_reference.json` (61 varied texts: short, empty-ish, code, unicode,
//! and texts past 256 tokens that must be truncated the same way) has a cosine
//! similarity of at least 0.9999 with Surge's, scored together in one batch and alone.
//! The fixture was made by sentence-transformers (PyTorch) from the same files; see
//! `fixtures/README.md`. The model folder is filled by `make models`.

mod common;

use std::path::Path;

use common::{
    assert_alone_as_in_batch, assert_mentions, copy_with, fixture, load, score_fixture, score_rows,
};
use surge_model::{Batch, InputSpec, ModelError};

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
    assert_alone_as_in_batch(&*model, &texts, &scores);
}

#[test]
fn rows_are_refused_with_a_clear_error() {
    let model = load();
    let err = score_rows(&*model, &[1.0], 1).unwrap_err();
    assert!(matches!(err, ModelError::BadBatch(_)), "{err}");
    let empty = model.score(&Batch::Texts(&[])).unwrap();
    assert!(empty.is_empty());
}

/// One way to break a file of the model folder.
#[derive(Clone, Copy)]
enum Break {
    /// Delete it.
    Remove,
    /// Write this instead.
    Write(&'static str),
    /// Replace the first text, which it must hold, with the second.
    Replace(&'static str, &'static str),
}

impl Break {
    fn apply(self, path: &Path) {
        match self {
            Break::Remove => std::fs::remove_file(path).unwrap(),
            Break::Write(text) => std::fs::write(path, text).unwrap(),
            Break::Replace(from, to) => {
                let text = std::fs::read_to_string(path).unwrap();
                assert!(text.contains(from), "{} lacks {from:?}", path.display());
                std::fs::write(path, text.replace(from, to)).unwrap();
            }
        }
    }
}

#[test]
fn broken_folders_name_the_file_at_fault() {
    // (the file, how it breaks, what the error must name)
    for (file, how, mentions) in [
        ("tokenizer.json", Break::Remove, &["tokenizer.json"][..]),
        (
            "tokenizer.json",
            Break::Write("{not json"),
            &["tokenizer.json"],
        ),
        (
            "config.json",
            Break::Write("{\"hidden_size\": 384}"),
            &["config.json"],
        ),
        (
            "config.json",
            Break::Replace("\"intermediate_size\": 1536", "\"intermediate_size\": 1024"),
            &["intermediate.dense.weight", "1024"],
        ),
        (
            "model.toml",
            Break::Replace("max_length = 256", "max_length = 4096"),
            &["input.max_length"],
        ),
        (
            "model.toml",
            Break::Replace(
                "tokenizer = \"tokenizer.json\"",
                "tokenizer = \"../tokenizer.json\"",
            ),
            &["bert-embedding.tokenizer"],
        ),
    ] {
        let err = copy_with(|d| how.apply(&d.join(file)))
            .1
            .err()
            .unwrap_or_else(|| {
                panic!("{file} broken, the folder loaded but should have been refused")
            });
        assert_mentions(&err.to_string(), mentions);
    }
}
