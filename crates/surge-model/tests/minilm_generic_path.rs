//! The BERT encoder's Candle-op path, the one CUDA and every device but the CPU take,
//! held to the same sentence-transformers fixture as the fused CPU kernels, by running
//! it on the CPU with `SURGE_BERT_KERNELS=generic`; and the two paths agree with each
//! other. A test binary of its own, with one test: the variable is process-wide.

mod common;

use common::{cosine, load, score_fixture};

#[test]
fn generic_path_matches_sentence_transformers_and_the_fused_kernels() {
    let fused = load();
    std::env::set_var("SURGE_BERT_KERNELS", "generic");
    let generic = load();
    std::env::remove_var("SURGE_BERT_KERNELS");
    let (a, worst_fused, _) = score_fixture(&*fused);
    let (b, worst_generic, at) = score_fixture(&*generic);
    println!("worst cosine to sentence-transformers: fused {worst_fused}, generic {worst_generic} (text {at})");
    for i in 0..a.len() {
        let c = cosine(a.row(i), b.row(i));
        assert!(c >= 0.99999, "text {i}: fused vs generic cosine {c}");
    }
}
