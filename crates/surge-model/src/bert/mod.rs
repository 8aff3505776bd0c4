//! `architecture = "bert-embedding"`: a BERT sentence encoder (for example
//! all-MiniLM-L6-v2) that turns texts into embeddings, the way sentence-transformers
//! does: WordPiece tokens (the `tokenizers` crate, from `tokenizer.json`), truncated to
//! `[input] max_length`, through a BERT encoder, mean-pooled over the real tokens and
//! L2-normalised.
//!
//! `model.toml` section:
//!
//! ```toml
//! [input]
//! kind = "text"
//! max_length = 256              # tokens, [CLS] and [SEP] included; longer texts are cut
//!
//! [bert-embedding]
//! config = "config.json"        # the Hugging Face BERT config
//! tokenizer = "tokenizer.json"  # the Hugging Face tokenizer
//! pooling = "mean"              # mean | cls
//! normalize = true              # L2-normalise each embedding
//! quantization = "int8"         # optional: none (default) | int8 (CPU only)
//! ```
//!
//! `quantization = "int8"` runs the four GEMMs of every layer on integers ([`int8`]):
//! weights quantized at load to 8 bits per output channel, activations to 14 bits per
//! token inside each GEMM, exact i32 sums (AVX2 `vpmaddwd`, or a portable scalar loop on
//! other CPUs); attention, layer norms and GELU stay f32. On all-MiniLM-L6-v2 it keeps a
//! minimum cosine of 0.996 to the f32 embeddings over the fixture's 61 texts
//! (`tests/minilm_int8.rs` holds ≥ 0.99), and on a 2-core AVX2 Zen 3 it embeds about
//! 1.5× the f32 path's sentences per second at 16 to 64 tokens (less at 256, where
//! attention, still f32, takes a larger share). Without AVX2 it is slower than f32.
//!
//! Tensors: the Hugging Face BERT names (`embeddings.*`, `encoder.layer.{i}.*`), every
//! one checked for shape and finiteness against `config.json`. `pooler.*` and
//! `embeddings.position_ids` may be present and are not used.
//!
//! The encoder follows candle-transformers' `bert.rs` (same tensor names, same maths)
//! but is written here for speed on CPU, and because candle-transformers compiles every
//! model it ships (minutes of CI on two cores) for the one we use:
//!
//! * a batch is tokenised, sorted by length and cut into chunks of similar length whose
//!   padded size stays under a token budget ([`CHUNK_TOKENS`]), so padding is not wasted
//!   and each forward pass stays cache-sized; outputs come back in the caller's order;
//! * every linear layer is one 2-D GEMM over all tokens of the chunk (`[tokens, in] ×
//!   [in, out]`), not one small GEMM per sequence; on CPU it is Surge's own ([`gemm`]),
//!   its weights packed once at load for an AVX-512 or AVX2 microkernel;
//! * query, key and value are one fused GEMM, with the `1/√d` attention scale folded
//!   into the query weights at load, and one copy lays out all three heads-first;
//! * on CPU, everything between the GEMMs is a fused kernel split over the thread pool
//!   ([`cpu`]): attention straight from the QKV GEMM's output (padded keys skipped, not
//!   masked), bias + residual + layer norm, and bias + GELU with a vectorisable erf.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, D};
use rayon::prelude::*;
use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

mod cpu;
mod encoder;
mod fill;
mod gemm;
mod int8;

use encoder::Encoder;

use crate::spec::InputSpec;
use crate::weights::Weights;
use crate::{Batch, LoadContext, Model, ModelError, ModelInfo, Scores};

/// The architecture's name in `model.toml`.
pub const NAME: &str = "bert-embedding";

/// Most padded tokens (sequences × longest sequence) in one forward pass. Larger
/// batches are cut into chunks of similar length; a chunk always holds at least one
/// text.
pub const CHUNK_TOKENS: usize = 2048;

/// Smallest chunk budget, in tokens, that a batch is cut down to so that each CPU
/// thread gets chunks of its own (see [`BertEmbedder::chunk_budget`]): smaller forward
/// passes lose more to their fixed work than they gain.
const MIN_SHARED_CHUNK: usize = 256;

/// `[bert-embedding]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BertSection {
    /// The Hugging Face `config.json`, inside the model folder.
    #[serde(default = "default_config")]
    pub config: String,
    /// The Hugging Face `tokenizer.json`, inside the model folder.
    #[serde(default = "default_tokenizer")]
    pub tokenizer: String,
    /// How token states become one vector.
    #[serde(default)]
    pub pooling: Pooling,
    /// Whether embeddings are scaled to unit length (cosine similarity = dot product).
    #[serde(default = "yes")]
    pub normalize: bool,
    /// How the encoder's linear layers compute: f32 (default) or int8 (CPU only).
    #[serde(default)]
    pub quantization: Quantization,
}

/// `quantization` in `[bert-embedding]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantization {
    /// f32 weights and activations, as trained.
    #[default]
    None,
    /// The four GEMMs of each layer on 8-bit integers: weights per output channel at
    /// load, activations per token at run time (see the module docs). CPU only.
    Int8,
}

fn default_config() -> String {
    "config.json".into()
}

fn default_tokenizer() -> String {
    "tokenizer.json".into()
}

fn yes() -> bool {
    true
}

/// How the token states of a text become its embedding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The mean of the real (non-padding) tokens' states: sentence-transformers' default.
    #[default]
    Mean,
    /// The state of the first token, `[CLS]`.
    Cls,
}

/// The fields of `config.json` that the weights are checked against.
#[derive(Debug, Clone, Deserialize)]
struct Dims {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    #[serde(default = "two")]
    type_vocab_size: usize,
    #[serde(default = "layer_norm_eps")]
    layer_norm_eps: f64,
    #[serde(default = "gelu")]
    hidden_act: String,
    #[serde(default = "absolute")]
    position_embedding_type: String,
}

fn layer_norm_eps() -> f64 {
    1e-12
}

fn gelu() -> String {
    "gelu".into()
}

fn absolute() -> String {
    "absolute".into()
}

fn two() -> usize {
    2
}

/// A loaded BERT embedding model.
pub struct BertEmbedder {
    info: ModelInfo,
    encoder: Encoder,
    tokenizer: Tokenizer,
    pooling: Pooling,
    normalize: bool,
    hidden: usize,
    device: Device,
}

/// `dir/name`, where `name` (the value of `field`) must be a plain file name.
fn file_in_dir(ctx: &LoadContext, field: &str, name: &str) -> Result<PathBuf, ModelError> {
    if name.is_empty() || name.contains('/') || name.contains('\\') || name.starts_with('.') {
        return Err(ModelError::spec(
            ctx.toml_path(),
            field,
            format!("{name:?} must be a file name inside the model folder"),
        ));
    }
    let path = ctx.info.dir.join(name);
    let real = path.canonicalize().map_err(|e| ModelError::io(&path, e))?;
    if !real.starts_with(&ctx.info.dir) {
        return Err(ModelError::OutsideModelsDir {
            path,
            models_dir: ctx.info.dir.clone(),
        });
    }
    Ok(real)
}

fn bad_file(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::BadFile {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Tells glibc's allocator to keep freed buffers of up to 32 MB in the heap instead of
/// returning them to the kernel. A forward pass allocates and frees a dozen activation
/// buffers of 1–13 MB per layer; glibc's defaults gave them back (munmap, or a heap trim
/// past 128 kB–64 MB), so each pass page-faulted them in again: 356,000 faults and
/// 5% more CPU for 1,875 short texts on 2 threads, 46,000–68,000 with this. RSS stays near the
/// forward pass's peak instead of falling between batches. Skipped when the user sets
/// `GLIBC_TUNABLES` (their malloc settings win) and where the C library is not glibc.
fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        if std::env::var_os("GLIBC_TUNABLES").is_some() {
            return;
        }
        ONCE.call_once(|| {
            // SAFETY: mallopt only changes allocator parameters; both values are in
            // range (the mmap threshold's maximum is 32 MB on 64-bit targets).
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
            }
        });
    }
}

/// Loads a BERT embedding model from its folder (registered in [`crate::ARCHITECTURES`]).
pub fn load(ctx: &LoadContext) -> Result<Box<dyn Model>, ModelError> {
    let section: BertSection = ctx.section(NAME)?;
    let InputSpec::Text { max_length } = ctx.info.input else {
        return Err(ModelError::spec(
            ctx.toml_path(),
            "input.kind",
            format!("the {NAME} architecture takes kind = \"text\""),
        ));
    };
    if !ctx.info.output_names.is_empty() {
        return Err(ModelError::spec(
            ctx.toml_path(),
            "output.names",
            "an embedding model has no named outputs; leave output.names out",
        ));
    }

    let config_path = file_in_dir(ctx, &format!("{NAME}.config"), &section.config)?;
    let text =
        std::fs::read_to_string(&config_path).map_err(|e| ModelError::io(&config_path, e))?;
    let dims: Dims =
        serde_json::from_str(&text).map_err(|e| bad_file(&config_path, e.to_string()))?;
    if dims.hidden_act != "gelu" || dims.position_embedding_type != "absolute" {
        return Err(bad_file(
            &config_path,
            format!(
                "hidden_act {:?} with position_embedding_type {:?} is not supported; {NAME} runs \"gelu\" (erf) with \"absolute\" positions",
                dims.hidden_act, dims.position_embedding_type
            ),
        ));
    }
    let heads_ok =
        dims.num_attention_heads > 0 && dims.hidden_size.is_multiple_of(dims.num_attention_heads);
    if dims.hidden_size == 0 || dims.num_hidden_layers == 0 || !heads_ok {
        return Err(bad_file(
            &config_path,
            format!(
                "hidden_size {} must be a positive multiple of num_attention_heads {}, with at least one layer",
                dims.hidden_size, dims.num_attention_heads
            ),
        ));
    }
    if max_length < 2 || max_length > dims.max_position_embeddings {
        return Err(ModelError::spec(
            ctx.toml_path(),
            "input.max_length",
            format!(
                "{max_length} must lie in 2..={} (max_position_embeddings in {})",
                dims.max_position_embeddings,
                config_path.display()
            ),
        ));
    }

    let tokenizer_path = file_in_dir(ctx, &format!("{NAME}.tokenizer"), &section.tokenizer)?;
    let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
        .map_err(|e| bad_file(&tokenizer_path, e.to_string()))?;
    // Padding is ours (per chunk); truncation is the model's, [CLS] and [SEP] included.
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: TruncationDirection::Right,
        }))
        .map_err(|e| bad_file(&tokenizer_path, e.to_string()))?;
    let vocab = tokenizer.get_vocab_size(true);
    if vocab > dims.vocab_size {
        return Err(bad_file(
            &tokenizer_path,
            format!(
                "has {vocab} tokens but the model's vocab_size is {} ({})",
                dims.vocab_size,
                config_path.display()
            ),
        ));
    }

    let int8 = section.quantization == Quantization::Int8;
    if int8 && !ctx.device.is_cpu() {
        return Err(ModelError::spec(
            ctx.toml_path(),
            &format!("{NAME}.quantization"),
            "int8 runs on CPU only; leave quantization out to run on this device",
        ));
    }
    if ctx.device.is_cpu() {
        keep_freed_buffers();
    }
    let tensors = take_tensors(&ctx.weights_path, &dims, &ctx.device)?;
    let encoder = Encoder::new(tensors, &dims, int8)?;
    Ok(Box::new(BertEmbedder {
        info: ctx.info.clone(),
        encoder,
        tokenizer,
        pooling: section.pooling,
        normalize: section.normalize,
        hidden: dims.hidden_size,
        device: ctx.device.clone(),
    }))
}

/// Every tensor BERT needs, checked against `config.json`; the rest is refused, except
/// the unused pooler and position ids.
fn take_tensors(
    path: &Path,
    d: &Dims,
    device: &Device,
) -> Result<HashMap<String, Tensor>, ModelError> {
    let (h, i) = (d.hidden_size, d.intermediate_size);
    let mut want: Vec<(String, Vec<usize>)> = vec![
        (
            "embeddings.word_embeddings.weight".into(),
            vec![d.vocab_size, h],
        ),
        (
            "embeddings.position_embeddings.weight".into(),
            vec![d.max_position_embeddings, h],
        ),
        (
            "embeddings.token_type_embeddings.weight".into(),
            vec![d.type_vocab_size, h],
        ),
        ("embeddings.LayerNorm.weight".into(), vec![h]),
        ("embeddings.LayerNorm.bias".into(), vec![h]),
    ];
    for l in 0..d.num_hidden_layers {
        let p = format!("encoder.layer.{l}");
        // Each a weight, then a bias as long as the weight's first dimension.
        for (name, weight) in [
            ("attention.self.query", vec![h, h]),
            ("attention.self.key", vec![h, h]),
            ("attention.self.value", vec![h, h]),
            ("attention.output.dense", vec![h, h]),
            ("attention.output.LayerNorm", vec![h]),
            ("intermediate.dense", vec![i, h]),
            ("output.dense", vec![h, i]),
            ("output.LayerNorm", vec![h]),
        ] {
            let bias = vec![weight[0]];
            want.push((format!("{p}.{name}.weight"), weight));
            want.push((format!("{p}.{name}.bias"), bias));
        }
    }
    let mut weights = Weights::open(path)?;
    let mut tensors = HashMap::with_capacity(want.len());
    for (name, shape) in want {
        let t = weights.take(&name, &shape, device)?;
        tensors.insert(name, t);
    }
    for unused in [
        "embeddings.position_ids",
        "pooler.dense.weight",
        "pooler.dense.bias",
    ] {
        weights.skip(unused);
    }
    weights.finish()?;
    Ok(tensors)
}

impl BertEmbedder {
    /// Token ids of each text, truncated to the model's maximum length.
    fn tokenize(&self, texts: &[String]) -> Result<Vec<Vec<u32>>, ModelError> {
        texts
            .iter()
            .map(|t| {
                self.tokenizer
                    .encode(t.as_str(), true)
                    .map(|e| e.get_ids().to_vec())
                    .map_err(|e| ModelError::Inference(format!("tokenizing: {e}")))
            })
            .collect()
    }

    /// The token budget of a chunk for a batch of texts of `lengths` tokens:
    /// [`CHUNK_TOKENS`], and on a CPU with several threads small enough that each
    /// thread gets about one chunk (not under [`MIN_SHARED_CHUNK`]), and that the passes
    /// in flight together hold no more than one pass did (memory). 64 texts of 16
    /// tokens on 2 threads: 2 passes of about 512 tokens instead of 1 of 1,024.
    fn chunk_budget(&self, lengths: &[usize]) -> usize {
        let threads = candle_core::utils::get_num_threads().max(1);
        if !self.device.is_cpu() || threads == 1 {
            return CHUNK_TOKENS;
        }
        // At most CHUNK_TOKENS in flight over all threads, as in one pass at a time.
        let most = (CHUNK_TOKENS / threads).max(MIN_SHARED_CHUNK);
        let total: usize = lengths.iter().sum();
        // Whole rounds of one chunk per thread (5 chunks on 2 threads would leave one
        // thread a last chunk alone), with a tenth more for padding inside a chunk.
        let rounds = total.div_ceil(threads * most).max(1);
        (total + total / 10)
            .div_ceil(threads * rounds)
            .clamp(MIN_SHARED_CHUNK, most)
    }

    /// Embeds texts of similar length in one forward pass: `[n, hidden]`, in order.
    fn embed_chunk(&self, ids: &[&[u32]]) -> Result<Vec<f32>, ModelError> {
        let n = ids.len();
        let len = ids.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let mut flat = vec![0u32; n * len];
        let mut keep = vec![0f32; n * len];
        for (r, s) in ids.iter().enumerate() {
            flat[r * len..r * len + s.len()].copy_from_slice(s);
            keep[r * len..r * len + s.len()].fill(1.0);
        }
        let padded = ids.iter().any(|s| s.len() != len);
        let lengths: Vec<usize> = ids.iter().map(|s| s.len()).collect();
        let input_ids = Tensor::from_vec(flat, n * len, &self.device)?;
        let states =
            self.encoder
                .forward(&input_ids, &lengths, len)?
                .reshape((n, len, self.hidden))?;
        let pooled = match self.pooling {
            Pooling::Cls => states.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean if !padded => states.mean(1)?,
            Pooling::Mean => {
                let m = Tensor::from_vec(keep, (n, len, 1), &self.device)?;
                let sum = states.broadcast_mul(&m)?.sum(1)?;
                let count = m.sum(1)?.clamp(1e-9f32, f32::MAX)?;
                sum.broadcast_div(&count)?
            }
        };
        let pooled = if self.normalize {
            let norm = pooled
                .sqr()?
                .sum_keepdim(D::Minus1)?
                .sqrt()?
                .clamp(1e-12f32, f32::MAX)?;
            pooled.broadcast_div(&norm)?
        } else {
            pooled
        };
        Ok(pooled.flatten_all()?.to_vec1::<f32>()?)
    }
}

/// What a chunk costs besides its padded tokens (a forward pass's fixed work, and the
/// lower efficiency of small matrix products), in tokens.
const CHUNK_OVERHEAD: usize = 64;

/// Cuts `order` (indices sorted longest first) into runs whose padded size, count ×
/// longest, stays within `budget` tokens (a text over budget goes alone), choosing the
/// cuts that minimise padded tokens plus [`CHUNK_OVERHEAD`] per run: a few long texts
/// do not make a whole run of short ones pad to their length.
pub fn chunks_by_tokens(order: &[usize], lengths: &[usize], budget: usize) -> Vec<(usize, usize)> {
    let n = order.len();
    let len = |k: usize| lengths[order[k]].max(1);
    // best[j]: least cost of order[..j]; start[j]: where its last run starts.
    let mut best = vec![usize::MAX; n + 1];
    let mut start = vec![0; n + 1];
    best[0] = 0;
    for j in 1..=n {
        for i in (0..j).rev() {
            // The run i..j pads to len(i); going left only makes it longer and wider.
            let padded = (j - i) * len(i);
            if i + 1 < j && padded > budget {
                break;
            }
            let cost = best[i].saturating_add(padded + CHUNK_OVERHEAD);
            if cost < best[j] {
                best[j] = cost;
                start[j] = i;
            }
        }
    }
    let mut runs = Vec::new();
    let mut j = n;
    while j > 0 {
        runs.push((start[j], j));
        j = start[j];
    }
    runs.reverse();
    runs
}

impl Model for BertEmbedder {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn score(&self, batch: &Batch<'_>) -> Result<Scores, ModelError> {
        let Batch::Texts(texts) = batch else {
            return Err(ModelError::BadBatch(format!(
                "model {} takes texts, not rows",
                self.info.name
            )));
        };
        let ids = self.tokenize(texts)?;
        let lengths: Vec<usize> = ids.iter().map(Vec::len).collect();
        // Longest first: chunks of similar length waste little on padding.
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        let mut values = vec![0f32; ids.len() * self.hidden];
        let runs = chunks_by_tokens(&order, &lengths, self.chunk_budget(&lengths));
        let embed = |&(start, end): &(usize, usize)| {
            let chunk: Vec<&[u32]> = order[start..end]
                .iter()
                .map(|&i| ids[i].as_slice())
                .collect();
            self.embed_chunk(&chunk)
        };
        // On CPU the chunks run side by side on the pool (each forward pass's own
        // parallel steps borrow idle threads): no thread waits at the end of every
        // matrix product for the other's share.
        let outs: Vec<Vec<f32>> = if self.device.is_cpu() && runs.len() > 1 {
            runs.par_iter().map(embed).collect::<Result<_, _>>()?
        } else {
            runs.iter().map(embed).collect::<Result<_, _>>()?
        };
        for (&(start, end), out) in runs.iter().zip(&outs) {
            for (k, &i) in order[start..end].iter().enumerate() {
                values[i * self.hidden..(i + 1) * self.hidden]
                    .copy_from_slice(&out[k * self.hidden..(k + 1) * self.hidden]);
            }
        }
        Ok(Scores {
            width: self.hidden,
            values,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_keep_padding_within_budget() {
        let lengths = vec![10, 50, 12, 49, 11];
        let mut order: Vec<usize> = (0..5).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        assert_eq!(order, vec![1, 3, 2, 4, 0]);
        // 2 × 50 = 100 fits; a third row would make 3 × 50 = 150.
        assert_eq!(
            chunks_by_tokens(&order, &lengths, 100),
            vec![(0, 2), (2, 5)]
        );
        // A large budget still keeps the short texts from padding to 50 tokens.
        assert_eq!(
            chunks_by_tokens(&order, &lengths, 1000),
            vec![(0, 2), (2, 5)]
        );
        let same = vec![20; 10];
        let all: Vec<usize> = (0..10).collect();
        assert_eq!(chunks_by_tokens(&all, &same, 1000), vec![(0, 10)]);
        assert_eq!(chunks_by_tokens(&all, &same, 100), vec![(0, 5), (5, 10)]);
        // A text longer than the budget goes alone.
        assert_eq!(
            chunks_by_tokens(&order, &lengths, 20),
            vec![(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
        );
        assert!(chunks_by_tokens(&[], &[], 100).is_empty());
    }
}
