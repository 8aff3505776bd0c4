//! The BERT encoder's forward pass: embeddings, then self-attention and feed-forward
//! layers, with weights laid out for 2-D matrix products and a fused bias + GELU on CPU.

use std::collections::HashMap;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

use super::Dims;
use crate::ModelError;

/// One encoder layer, its weights laid out for 2-D GEMMs (`[in, out]`).
pub(super) struct Layer {
    qkv_w: Tensor,
    qkv_b: Tensor,
    out_w: Tensor,
    out_b: Tensor,
    ln1_w: Tensor,
    ln1_b: Tensor,
    ff1_w: Tensor,
    ff1_b: Tensor,
    ff2_w: Tensor,
    ff2_b: Tensor,
    ln2_w: Tensor,
    ln2_b: Tensor,
}

/// The BERT encoder: embeddings, then the layers.
pub(super) struct Encoder {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    ln_w: Tensor,
    ln_b: Tensor,
    layers: Vec<Layer>,
    heads: usize,
    head_dim: usize,
    eps: f32,
}

fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    x.matmul(w)?.broadcast_add(b)
}

impl Encoder {
    pub(super) fn new(mut t: HashMap<String, Tensor>, d: &Dims) -> Result<Self, ModelError> {
        let mut take = |name: &str| {
            t.remove(name).ok_or_else(|| {
                ModelError::Inference(format!("tensor {name} vanished after checking (a bug)"))
            })
        };
        let head_dim = d.hidden_size / d.num_attention_heads;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let mut layers = Vec::with_capacity(d.num_hidden_layers);
        for l in 0..d.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let mut w = |n: &str| take(&format!("{p}.{n}"));
            let qkv_w = Tensor::cat(
                &[
                    (w("attention.self.query.weight")? * scale)?,
                    w("attention.self.key.weight")?,
                    w("attention.self.value.weight")?,
                ],
                0,
            )?;
            let qkv_b = Tensor::cat(
                &[
                    (w("attention.self.query.bias")? * scale)?,
                    w("attention.self.key.bias")?,
                    w("attention.self.value.bias")?,
                ],
                0,
            )?;
            let tr = |x: Tensor| x.t()?.contiguous();
            layers.push(Layer {
                qkv_w: tr(qkv_w)?,
                qkv_b,
                out_w: tr(w("attention.output.dense.weight")?)?,
                out_b: w("attention.output.dense.bias")?,
                ln1_w: w("attention.output.LayerNorm.weight")?,
                ln1_b: w("attention.output.LayerNorm.bias")?,
                ff1_w: tr(w("intermediate.dense.weight")?)?,
                ff1_b: w("intermediate.dense.bias")?,
                ff2_w: tr(w("output.dense.weight")?)?,
                ff2_b: w("output.dense.bias")?,
                ln2_w: w("output.LayerNorm.weight")?,
                ln2_b: w("output.LayerNorm.bias")?,
            });
        }
        Ok(Self {
            word: take("embeddings.word_embeddings.weight")?,
            position: take("embeddings.position_embeddings.weight")?,
            // Every token has type 0: one sentence per input.
            token_type: take("embeddings.token_type_embeddings.weight")?.get(0)?,
            ln_w: take("embeddings.LayerNorm.weight")?,
            ln_b: take("embeddings.LayerNorm.bias")?,
            layers,
            heads: d.num_attention_heads,
            head_dim,
            eps: d.layer_norm_eps as f32,
        })
    }

    /// Token states `[n * len, hidden]` of `n` sequences of `len` token ids (flat).
    pub(super) fn forward(
        &self,
        ids: &Tensor,
        n: usize,
        len: usize,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (heads, hd) = (self.heads, self.head_dim);
        let hidden = heads * hd;
        let positions = self.position.narrow(0, 0, len)?;
        let x = self
            .word
            .index_select(ids, 0)?
            .reshape((n, len, hidden))?
            .broadcast_add(&positions)?
            .broadcast_add(&self.token_type)?
            .reshape((n * len, hidden))?;
        let mut x = candle_nn::ops::layer_norm(&x, &self.ln_w, &self.ln_b, self.eps)?;
        for l in &self.layers {
            // [tokens, 3 * hidden] -> [3, n, heads, len, head_dim] in one copy.
            let qkv = linear(&x, &l.qkv_w, &l.qkv_b)?
                .reshape((n, len, 3, heads, hd))?
                .permute((2, 0, 3, 1, 4))?
                .contiguous()?;
            let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
            let mut scores = q.matmul(&k.t()?)?;
            if let Some(m) = mask {
                scores = scores.broadcast_add(m)?;
            }
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let context = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((n * len, hidden))?;
            let attended = linear(&context, &l.out_w, &l.out_b)?;
            x = candle_nn::ops::layer_norm(&(attended + &x)?, &l.ln1_w, &l.ln1_b, self.eps)?;
            let inner = bias_gelu(&x.matmul(&l.ff1_w)?, &l.ff1_b)?;
            let out = linear(&inner, &l.ff2_w, &l.ff2_b)?;
            x = candle_nn::ops::layer_norm(&(out + &x)?, &l.ln2_w, &l.ln2_b, self.eps)?;
        }
        Ok(x)
    }
}

/// `gelu(x + bias)` (erf GELU, as BERT uses) for `x` of shape `[rows, width]`.
fn bias_gelu(x: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.is_contiguous() && x.dtype() == DType::F32 {
        let b = bias.to_vec1::<f32>()?;
        x.apply_op1_no_bwd(&BiasGelu(b))
    } else {
        x.broadcast_add(bias)?.gelu_erf()
    }
}

/// The fused CPU kernel of [`bias_gelu`]: one pass over the activations instead of two,
/// split over candle's threads. Same formula as candle's `gelu_erf`.
struct BiasGelu(Vec<f32>);

impl CustomOp1 for BiasGelu {
    fn name(&self) -> &'static str {
        "bias-gelu"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("bias-gelu takes f32");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("bias-gelu takes a contiguous tensor");
        };
        let src = &data[start..end];
        let width = self.0.len();
        if width == 0 || !src.len().is_multiple_of(width) {
            candle_core::bail!(
                "bias-gelu: {} values do not split into rows of {width}",
                src.len()
            );
        }
        let mut out = vec![0f32; src.len()];
        let rows = src.len() / width;
        let threads = candle_core::utils::get_num_threads().clamp(1, rows.max(1));
        let per = rows.div_ceil(threads) * width;
        let run = |src: &[f32], dst: &mut [f32]| {
            for (s, d) in src.chunks_exact(width).zip(dst.chunks_exact_mut(width)) {
                for ((x, y), b) in s.iter().zip(d.iter_mut()).zip(&self.0) {
                    let v = x + b;
                    *y = (candle_core::cpu::erf::erf_f32(v * std::f32::consts::FRAC_1_SQRT_2)
                        + 1.0)
                        * 0.5
                        * v;
                }
            }
        };
        if threads <= 1 || src.len() < 1 << 16 {
            run(src, &mut out);
        } else {
            std::thread::scope(|scope| {
                for (s, d) in src.chunks(per).zip(out.chunks_mut(per)) {
                    scope.spawn(move || run(s, d));
                }
            });
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}
