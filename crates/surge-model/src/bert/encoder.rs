//! The BERT encoder's forward pass: embeddings, then self-attention and feed-forward
//! layers, with weights laid out for 2-D matrix products. On CPU everything between the
//! GEMMs runs as fused kernels ([`super::cpu`]); on other devices as Candle ops.

use std::collections::HashMap;

use candle_core::{DType, Tensor};

use super::int8::Linear;
use super::{cpu, Dims};
use crate::ModelError;

/// One encoder layer, its weights laid out for 2-D GEMMs (`[in, out]`).
pub(super) struct Layer {
    qkv_w: Linear,
    qkv_b: Tensor,
    out_w: Linear,
    out_b: Tensor,
    ln1_w: Tensor,
    ln1_b: Tensor,
    ff1_w: Linear,
    ff1_b: Tensor,
    ff2_w: Linear,
    ff2_b: Tensor,
    ln2_w: Tensor,
    ln2_b: Tensor,
    /// The biases and norms as plain vectors, for the fused CPU kernels (CPU only).
    host: Option<HostParams>,
}

/// A layer's small parameters on the host, read by the fused CPU kernels.
struct HostParams {
    qkv_b: Vec<f32>,
    out_b: Vec<f32>,
    ln1_w: Vec<f32>,
    ln1_b: Vec<f32>,
    ff1_b: Vec<f32>,
    ff2_b: Vec<f32>,
    ln2_w: Vec<f32>,
    ln2_b: Vec<f32>,
}

impl HostParams {
    fn of(l: &Layer) -> candle_core::Result<Option<Self>> {
        if !l.qkv_b.device().is_cpu() || l.qkv_b.dtype() != DType::F32 {
            return Ok(None);
        }
        Ok(Some(Self {
            qkv_b: l.qkv_b.to_vec1()?,
            out_b: l.out_b.to_vec1()?,
            ln1_w: l.ln1_w.to_vec1()?,
            ln1_b: l.ln1_b.to_vec1()?,
            ff1_b: l.ff1_b.to_vec1()?,
            ff2_b: l.ff2_b.to_vec1()?,
            ln2_w: l.ln2_w.to_vec1()?,
            ln2_b: l.ln2_b.to_vec1()?,
        }))
    }
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

fn linear(x: &Tensor, w: &Linear, b: &Tensor) -> candle_core::Result<Tensor> {
    w.forward(x)?.broadcast_add(b)
}

impl Encoder {
    /// The encoder from the checked tensors `t`; `int8` quantizes the four GEMMs' weights.
    pub(super) fn new(
        mut t: HashMap<String, Tensor>,
        d: &Dims,
        int8: bool,
    ) -> Result<Self, ModelError> {
        // The fused CPU path packs its f32 weights once for its own GEMM ([`super::gemm`]).
        let packed = !generic_only()
            && t.values()
                .next()
                .is_some_and(|x| x.device().is_cpu() && x.dtype() == DType::F32);
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
            let tr = |x: Tensor| Linear::new(x.t()?.contiguous()?, int8, packed);
            let mut layer = Layer {
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
                host: None,
            };
            if !generic_only() {
                layer.host = HostParams::of(&layer)?;
            }
            layers.push(layer);
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

    /// Token states `[n * len, hidden]` of `n = lengths.len()` sequences padded to `len`
    /// tokens (`ids` flat, `n * len`; sequence `i` has `lengths[i]` real tokens).
    pub(super) fn forward(
        &self,
        ids: &Tensor,
        lengths: &[usize],
        len: usize,
    ) -> candle_core::Result<Tensor> {
        let (n, hidden) = (lengths.len(), self.heads * self.head_dim);
        let positions = self.position.narrow(0, 0, len)?;
        let x = self
            .word
            .index_select(ids, 0)?
            .reshape((n, len, hidden))?
            .broadcast_add(&positions)?
            .broadcast_add(&self.token_type)?
            .reshape((n * len, hidden))?;
        let mut x = candle_nn::ops::layer_norm(&x, &self.ln_w, &self.ln_b, self.eps)?;
        // The generic path masks padded keys with a huge negative added to their scores.
        let mut mask = None;
        for l in &self.layers {
            x = match &l.host {
                Some(h) => self.layer_cpu(l, h, &x, lengths, len)?,
                None => {
                    if mask.is_none() && lengths.iter().any(|&r| r != len) {
                        mask = Some(padding_mask(lengths, len, x.device())?);
                    }
                    self.layer_generic(l, &x, n, len, mask.as_ref())?
                }
            };
        }
        Ok(x)
    }

    /// One layer on CPU: four GEMMs, with the fused kernels between them.
    fn layer_cpu(
        &self,
        l: &Layer,
        h: &HostParams,
        x: &Tensor,
        lengths: &[usize],
        len: usize,
    ) -> candle_core::Result<Tensor> {
        let attention = cpu::Attention {
            bias: &h.qkv_b,
            lengths,
            len,
            heads: self.heads,
            head_dim: self.head_dim,
        };
        let context = l.qkv_w.forward(x)?.apply_op1_no_bwd(&attention)?;
        let norm1 = cpu::AddNorm {
            bias: &h.out_b,
            weight: &h.ln1_w,
            norm_bias: &h.ln1_b,
            eps: self.eps,
        };
        let x = l.out_w.forward(&context)?.apply_op2_no_bwd(x, &norm1)?;
        let inner = l
            .ff1_w
            .forward(&x)?
            .apply_op1_no_bwd(&cpu::BiasGelu(&h.ff1_b))?;
        let norm2 = cpu::AddNorm {
            bias: &h.ff2_b,
            weight: &h.ln2_w,
            norm_bias: &h.ln2_b,
            eps: self.eps,
        };
        l.ff2_w.forward(&inner)?.apply_op2_no_bwd(&x, &norm2)
    }

    /// One layer with Candle ops, on any device.
    fn layer_generic(
        &self,
        l: &Layer,
        x: &Tensor,
        n: usize,
        len: usize,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (heads, hd) = (self.heads, self.head_dim);
        let hidden = heads * hd;
        // [tokens, 3 * hidden] -> [3, n, heads, len, head_dim] in one copy.
        let qkv = linear(x, &l.qkv_w, &l.qkv_b)?
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
        let x = candle_nn::ops::layer_norm(&(attended + x)?, &l.ln1_w, &l.ln1_b, self.eps)?;
        let inner = linear(&x, &l.ff1_w, &l.ff1_b)?.gelu_erf()?;
        let out = linear(&inner, &l.ff2_w, &l.ff2_b)?;
        candle_nn::ops::layer_norm(&(out + &x)?, &l.ln2_w, &l.ln2_b, self.eps)
    }
}

/// Whether `SURGE_BERT_KERNELS=generic` asks for the Candle-op path on CPU too: a
/// diagnostic knob, and how the tests hold the path other devices take to the fixture.
fn generic_only() -> bool {
    std::env::var("SURGE_BERT_KERNELS").is_ok_and(|v| v == "generic")
}

/// `[n, 1, 1, len]`, added to attention scores: 0 for real tokens, a huge negative for
/// padding, so softmax gives padding no weight.
fn padding_mask(
    lengths: &[usize],
    len: usize,
    device: &candle_core::Device,
) -> candle_core::Result<Tensor> {
    let add: Vec<f32> = lengths
        .iter()
        .flat_map(|&r| (0..len).map(move |t| if t < r { 0.0 } else { -1e30 }))
        .collect();
    Tensor::from_vec(add, (lengths.len(), 1, 1, len), device)
}
