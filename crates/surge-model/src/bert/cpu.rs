//! Fused CPU kernels for the BERT encoder, as Candle custom ops. Each replaces a run of
//! small Candle ops (each a full pass over memory, most single-threaded) with one pass
//! split over the rayon pool Candle's matmuls already use:
//!
//! * [`Attention`]: bias add, per-head scores, softmax and the weighted sum of values,
//!   read straight from the fused QKV GEMM's output and written in the layout the output
//!   projection wants: no permute copies and no mask tensor (padded keys are skipped),
//!   and per head two small register-blocked products instead of a GEMM library call
//!   per `len × 32` matrix;
//! * [`AddNorm`]: bias add, residual add and layer norm;
//! * [`BiasGelu`]: bias add and the erf GELU, with a vectorisable erf.
//!
//! The inner loops are written so LLVM vectorises them (no float reductions in strict
//! order on the hot paths) and are compiled three times by [`simd!`]: for AVX-512, for
//! AVX2 + FMA and for the baseline, picked at run time, so one binary runs everywhere.
//!
//! The generic (any device) path in `encoder.rs` computes the same maths with Candle ops;
//! the fixture test holds both to sentence-transformers' outputs.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape};

use super::fill::fill_new;

/// Defines `fn $name(args)` that runs `$body` compiled for the widest vector unit the
/// CPU has (AVX-512, then AVX2 + FMA, then the baseline target), chosen at run time.
///
/// Inside `$body`, the const `ROWS` is the register-blocking height for that unit (the
/// optional `rows(v4, v3, base)` before `fn`, default 8, 6, 4: AVX-512 has 32 vector
/// registers, AVX2 16 of half the width, so a block of rows × 16 lanes that fits one
/// spills on the other), and the const `FMA` says whether fused multiply-add is a single
/// instruction there (on the x86 baseline, `mul_add` would be a libm call).
macro_rules! simd {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        simd! { $(#[$doc])* rows(8, 6, 4) fn $name($($arg: $ty),*) $body }
    };
    ($(#[$doc:meta])* rows($v4:literal, $v3:literal, $base:literal)
     fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$doc])*
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(non_snake_case, unused)]
            fn imp<const ROWS: usize, const FMA: bool>($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn v4($($arg: $ty),*) {
                    imp::<$v4, true>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn v3($($arg: $ty),*) {
                    imp::<$v3, true>($($arg),*)
                }
                if use_avx512() {
                    // SAFETY: the CPU has AVX-512F (and so AVX2 and FMA), checked above.
                    return unsafe { v4($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has AVX2 and FMA, checked above.
                    return unsafe { v3($($arg),*) };
                }
            }
            imp::<$base, { cfg!(target_arch = "aarch64") }>($($arg),*)
        }
    };
}

/// Whether to take the AVX-512 kernels: the CPU has AVX-512F and `SURGE_CPU_ISA=avx2`
/// does not ask for the AVX2 ones (to measure an AVX2 machine's speed on an AVX-512 one).
#[cfg(target_arch = "x86_64")]
pub(crate) fn use_avx512() -> bool {
    static USE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USE.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx512f")
            && !std::env::var("SURGE_CPU_ISA").is_ok_and(|v| v.eq_ignore_ascii_case("avx2"))
    })
}

/// `a · b + c`, fused where the vector unit has FMA.
#[inline(always)]
pub(super) fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Lanes of the widest vector unit this code is written for (AVX-512: 16 f32).
const LANES: usize = 16;

/// `c[i, j] = Σ_k a[i, k] · b[k, j]` for `i < m`, `j < n`, `k < depth`, all row-major
/// with row strides `lda`, `ldb` and `n`; `n` is a whole number of 16-lane blocks.
/// `ROWS` rows of `a` at a time are first copied into `panel`, transposed (`[depth][ROWS]`,
/// zeros past the last row), so the inner loop reads them at fixed offsets from one
/// pointer with no bounds checks; then each 16-lane block of `b` is multiplied into
/// `ROWS` accumulators kept in registers by the GEMM's microkernel ([`super::gemm::tile`];
/// a whole GEMM call's blocking would dominate products this small).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn small_gemm<const ROWS: usize>(
    m: usize,
    n: usize,
    depth: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    panel: &mut Vec<f32>,
) {
    debug_assert!(n.is_multiple_of(LANES));
    if m == 0 || depth == 0 {
        c[..m * n].fill(0.0);
        return;
    }
    panel.resize(depth * ROWS, 0.0);
    for i0 in (0..m).step_by(ROWS) {
        let live = ROWS.min(m - i0);
        let (panel, _) = panel.as_chunks_mut::<ROWS>();
        for (r, row) in a[i0 * lda..].chunks(lda).take(live).enumerate() {
            put_lane(panel, r, &row[..depth]);
        }
        for p in panel.iter_mut() {
            p[live..].fill(0.0);
        }
        let panel = &*panel;
        for col in (0..n).step_by(LANES) {
            if live == ROWS {
                super::gemm::tile::<ROWS>(panel, &b[col..], ldb, &mut c[i0 * n + col..], n, false);
                continue;
            }
            let mut part = [[0f32; LANES]; ROWS];
            super::gemm::tile::<ROWS>(panel, &b[col..], ldb, part.as_flattened_mut(), LANES, false);
            for (r, part) in part.iter().enumerate().take(live) {
                let at = (i0 + r) * n + col;
                c[at..at + LANES].copy_from_slice(part);
            }
        }
    }
}

// The two strided copies below are functions of their own, never inlined, so they are
// compiled for the baseline target and not inside the AVX-512 builds of their callers:
// there LLVM turned them into scatter instructions, which AMD's Zen 4 runs in microcode.
// Attention ran three times slower with its AVX-512 build than with its AVX2 build.

/// `panel[i][lane] = row[i]` for every `i` of `row` (one row into a transposed panel).
#[inline(never)]
pub(super) fn put_lane<const ROWS: usize>(panel: &mut [[f32; ROWS]], lane: usize, row: &[f32]) {
    for (p, &x) in panel.iter_mut().zip(row) {
        p[lane] = x;
    }
}

/// `dst[i * stride + at] = src[i] + bias[i]` for every `i` of `src` (a column).
#[inline(never)]
fn put_column(dst: &mut [f32], stride: usize, at: usize, src: &[f32], bias: &[f32]) {
    for ((col, x), b) in dst.chunks_exact_mut(stride).zip(src).zip(bias) {
        col[at] = x + b;
    }
}

/// e^x for f32, as a polynomial that vectorises (libm's `expf` is a call per value):
/// x = n·ln 2 + r with |r| ≤ ln 2 / 2, e^r by Cephes' degree-6 polynomial, 2^n built in
/// the exponent bits. Relative error about 2e-7; inputs are clamped to [-87, 88], where
/// the result stays a normal float.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    // 1.5 · 2^23: adding it rounds to an integer kept in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4 * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    p = p * r * r + r + 1.0;
    // The low mantissa bits of `t` hold n (mod 512); shifted into the exponent field,
    // with the bias, they are 2^n.
    p * f32::from_bits(t.to_bits().wrapping_add(127) << 23)
}

/// The largest of `xs` (−∞ when empty), in 16 interleaved lanes, which vectorise.
#[inline(always)]
fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let (chunks, tail) = xs.as_chunks::<LANES>();
    for c in chunks {
        for l in 0..LANES {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    acc.iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x))
}

/// Sum of `xs` in 16 interleaved partial sums, which vectorise (a plain `.sum()` over
/// f32 must add in order, one at a time).
#[inline(always)]
fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (chunks, tail) = xs.as_chunks::<LANES>();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

/// The contiguous f32 values of a CPU tensor.
pub(super) fn f32s<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op} takes f32");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op} takes a contiguous tensor");
    };
    Ok(&data[start..end])
}

/// Whether to split work over the pool: one thread, or too little work, runs inline.
fn parallel(values: usize) -> bool {
    candle_core::utils::get_num_threads() > 1 && values >= 1 << 14
}

/// Self-attention of `lengths.len()` sequences padded to `len` tokens, from the QKV
/// GEMM's output `[n * len, 3 * hidden]` (query columns first, already scaled by
/// `1/√head_dim`, then keys, then values; biases not yet added) to the context
/// `[n * len, hidden]`. Rows of padding tokens come out as zeros: no real token attends
/// to them and pooling ignores them.
pub(super) struct Attention<'a> {
    /// QKV bias, `3 * hidden` (the query part scaled like its weights).
    pub bias: &'a [f32],
    /// Real tokens of each sequence (each ≤ `len`).
    pub lengths: &'a [usize],
    /// Padded length of every sequence.
    pub len: usize,
    /// Attention heads.
    pub heads: usize,
    /// Values per head.
    pub head_dim: usize,
}

simd! {
    /// The context rows of one sequence (`out`: `[len, hidden]`, `real` of them real)
    /// from its QKV rows (`qkv`: `[len, 3 * hidden]`), head by head.
    fn attend(
        qkv: &[f32],
        bias: &[f32],
        heads: usize,
        head_dim: usize,
        real: usize,
        out: &mut [f32],
        scratch: &mut Scratch,
    ) {
        let (hd, hidden) = (head_dim, heads * head_dim);
        // Both products below are small GEMMs whose output columns come in whole 16-lane
        // blocks: keys are stored transposed, [hd, rp], and values as [real, hdp], with
        // zeros past `real` keys and `hd` values (padding that is never read back).
        let (rp, hdp) = (real.next_multiple_of(LANES), hd.next_multiple_of(LANES));
        let Scratch { q, kt, v, p, c, totals, panel } = scratch;
        totals.resize(real, 0.0);
        q.resize(real * hd, 0.0);
        kt.resize(hd * rp, 0.0);
        v.resize(real * hdp, 0.0);
        p.resize(real * rp, 0.0);
        c.resize(real * hdp, 0.0);
        kt.fill(0.0);
        v.fill(0.0);
        for h in 0..heads {
            // This head's biased queries, keys and values.
            let (qc, kc, vc) = (h * hd, hidden + h * hd, 2 * hidden + h * hd);
            let (qb, kb, vb) = (&bias[qc..qc + hd], &bias[kc..kc + hd], &bias[vc..vc + hd]);
            let rows = qkv.chunks_exact(3 * hidden).take(real);
            let dst = q.chunks_exact_mut(hd).zip(v.chunks_exact_mut(hdp));
            for (t, (row, (qt, vt))) in rows.zip(dst).enumerate() {
                for ((o, x), b) in qt.iter_mut().zip(&row[qc..qc + hd]).zip(qb) {
                    *o = x + b;
                }
                for ((o, x), b) in vt.iter_mut().zip(&row[vc..vc + hd]).zip(vb) {
                    *o = x + b;
                }
                put_column(kt, rp, t, &row[kc..kc + hd], kb);
            }
            // Scores [real, rp] = Q Kᵀ (the scale is folded into Q's weights).
            small_gemm::<ROWS>(real, rp, hd, q, hd, kt, rp, p, panel);
            // Unnormalised softmax: each row's sum divides its context row below, a pass
            // over `hd` values instead of `real`.
            for (scores, total) in p.chunks_exact_mut(rp).zip(totals.iter_mut()) {
                let scores = &mut scores[..real];
                let top = max(scores);
                for s in scores.iter_mut() {
                    *s = exp(*s - top);
                }
                *total = sum(scores);
            }
            // Context [real, hdp] = P V, over the real keys only.
            small_gemm::<ROWS>(real, hdp, real, p, rp, v, hdp, c, panel);
            for ((t, ctx), total) in c.chunks_exact(hdp).enumerate().zip(totals.iter()) {
                let inv = 1.0 / total;
                let dst = &mut out[t * hidden + h * hd..t * hidden + (h + 1) * hd];
                for (o, x) in dst.iter_mut().zip(ctx) {
                    *o = x * inv;
                }
            }
        }
        out[real * hidden..].fill(0.0);
    }
}

/// Per-task buffers of [`attend`], reused across heads and sequences.
#[derive(Default)]
struct Scratch {
    q: Vec<f32>,
    kt: Vec<f32>,
    v: Vec<f32>,
    p: Vec<f32>,
    c: Vec<f32>,
    totals: Vec<f32>,
    panel: Vec<f32>,
}

impl CustomOp1 for Attention<'_> {
    fn name(&self) -> &'static str {
        "bert-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let qkv = f32s(s, l, self.name())?;
        let hidden = self.heads * self.head_dim;
        let n = self.lengths.len();
        if qkv.len() != n * self.len * 3 * hidden || self.lengths.iter().any(|&r| r > self.len) {
            candle_core::bail!(
                "bert-attention: {} values for {n} sequences of {} tokens and hidden size {hidden}",
                qkv.len(),
                self.len
            );
        }
        let (in_seq, out_seq) = (self.len * 3 * hidden, self.len * hidden);
        let work = |scratch: &mut Scratch, s: usize, dst: &mut [f32]| {
            let src = &qkv[s * in_seq..(s + 1) * in_seq];
            let (heads, hd, real) = (self.heads, self.head_dim, self.lengths[s]);
            attend(src, self.bias, heads, hd, real, dst, scratch);
        };
        let out = fill_new(
            n * out_seq,
            out_seq,
            parallel(qkv.len()),
            Scratch::default,
            work,
        );
        Ok((CpuStorage::F32(out), Shape::from((n * self.len, hidden))))
    }
}

/// `layer_norm(x + bias + residual) * weight + norm_bias`, row by row, for `x` and the
/// residual of shape `[rows, width]`.
pub(super) struct AddNorm<'a> {
    /// Bias of the linear layer that produced `x`.
    pub bias: &'a [f32],
    /// Layer norm scale.
    pub weight: &'a [f32],
    /// Layer norm shift.
    pub norm_bias: &'a [f32],
    /// Layer norm epsilon.
    pub eps: f32,
}

simd! {
    /// [`AddNorm`] over whole rows of `x`, `res` and `out`.
    fn add_norm_rows(
        x: &[f32],
        res: &[f32],
        out: &mut [f32],
        bias: &[f32],
        weight: &[f32],
        norm_bias: &[f32],
        eps: f32,
    ) {
        let width = bias.len();
        for ((o, x), r) in out
            .chunks_exact_mut(width)
            .zip(x.chunks_exact(width))
            .zip(res.chunks_exact(width))
        {
            for (((o, x), r), b) in o.iter_mut().zip(x).zip(r).zip(bias) {
                *o = x + r + b;
            }
            let mean = sum(o) / width as f32;
            for v in o.iter_mut() {
                *v -= mean;
            }
            let mut sq = [0f32; LANES];
            let (chunks, tail) = o.as_chunks::<LANES>();
            for c in chunks {
                for l in 0..LANES {
                    sq[l] += c[l] * c[l];
                }
            }
            let tail: f32 = tail.iter().map(|v| v * v).sum();
            let var = (sq.iter().sum::<f32>() + tail) / width as f32;
            let inv_std = 1.0 / (var + eps).sqrt();
            for ((v, w), b) in o.iter_mut().zip(weight).zip(norm_bias) {
                *v = *v * inv_std * w + b;
            }
        }
    }
}

impl CustomOp2 for AddNorm<'_> {
    fn name(&self) -> &'static str {
        "bert-add-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, res) = (f32s(s1, l1, self.name())?, f32s(s2, l2, self.name())?);
        let width = self.bias.len();
        if width == 0
            || x.len() != res.len()
            || !x.len().is_multiple_of(width)
            || self.weight.len() != width
            || self.norm_bias.len() != width
        {
            candle_core::bail!("bert-add-norm: shapes do not match rows of {width}");
        }
        // Several rows per task: one row is too little work to hand to another thread.
        let per = width * 16;
        let work = |_: &mut (), i: usize, o: &mut [f32]| {
            let (x, r) = (&x[i * per..][..o.len()], &res[i * per..][..o.len()]);
            add_norm_rows(x, r, o, self.bias, self.weight, self.norm_bias, self.eps);
        };
        let out = fill_new(x.len(), per, parallel(x.len()), || (), work);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `gelu(x + bias)` (the erf GELU, as BERT uses) for `x` of shape `[rows, width]`.
pub(super) struct BiasGelu<'a>(pub &'a [f32]);

impl CustomOp1 for BiasGelu<'_> {
    fn name(&self) -> &'static str {
        "bert-bias-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = f32s(s, l, self.name())?;
        let width = self.0.len();
        if width == 0 || !src.len().is_multiple_of(width) {
            candle_core::bail!(
                "bert-bias-gelu: {} values do not split into rows of {width}",
                src.len()
            );
        }
        let per = width * 16;
        let work = |_: &mut (), i: usize, d: &mut [f32]| {
            bias_gelu_rows(&src[i * per..][..d.len()], d, self.0)
        };
        let out = fill_new(src.len(), per, parallel(src.len()), || (), work);
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

simd! {
    /// [`BiasGelu`] over whole rows of `src` and `dst`.
    fn bias_gelu_rows(src: &[f32], dst: &mut [f32], bias: &[f32]) {
        for (d, s) in dst.chunks_exact_mut(bias.len()).zip(src.chunks_exact(bias.len())) {
            for ((y, x), b) in d.iter_mut().zip(s).zip(bias) {
                let v = x + b;
                *y = 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
            }
        }
    }
}

/// erf(x) for f32 as a rational function of x on [-4, 4] (±1 outside, exact in f32
/// there): the approximation Eigen and XLA use, absolute error about 1e-7. Only
/// multiplies, adds and one divide, so the GELU loop vectorises; libm's `erff` does not.
#[inline(always)]
pub(super) fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p - 2.101_024e-6;
    p = x2 * p - 5.692_506_4e-5;
    p = x2 * p - 7.349_906_3e-4;
    p = x2 * p - 2.954_600_2e-3;
    p = x2 * p - 1.609_603_3e-2;
    let mut q = x2 * -1.456_607_2e-5 - 2.133_740_6e-4;
    q = x2 * q - 1.682_827e-3;
    q = x2 * q - 7.373_329_2e-3;
    q = x2 * q - 1.426_474e-2;
    x * p / q
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| {
                let x = (i.wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40_503)) % 2001;
                x as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol, "value {i}: {x} vs {y}");
        }
    }

    #[test]
    fn attention_matches_the_textbook_formula() {
        // A head size that is not a whole number of vector lanes, sequences shorter and
        // longer than one lane block, and one that is all padding but one token.
        let (heads, hd, len) = (3, 20, 19);
        let hidden = heads * hd;
        // Enough values to be split over threads (when there are several).
        let lengths = [5, 19, 1, 17, 16];
        let qkv = values(lengths.len() * len * 3 * hidden, 1);
        let bias = values(3 * hidden, 2);
        let op = Attention {
            bias: &bias,
            lengths: &lengths,
            len,
            heads,
            head_dim: hd,
        };
        let t =
            Tensor::from_vec(qkv.clone(), (lengths.len() * len, 3 * hidden), &Device::Cpu).unwrap();
        let got = t.apply_op1_no_bwd(&op).unwrap().flatten_all().unwrap();
        let got = got.to_vec1::<f32>().unwrap();
        let mut want = vec![0f32; lengths.len() * len * hidden];
        let at = |s: usize, t: usize, col: usize| qkv[(s * len + t) * 3 * hidden + col] + bias[col];
        for (s, &real) in lengths.iter().enumerate() {
            for h in 0..heads {
                for i in 0..real {
                    let scores: Vec<f32> = (0..real)
                        .map(|j| {
                            (0..hd)
                                .map(|d| at(s, i, h * hd + d) * at(s, j, hidden + h * hd + d))
                                .sum()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let e: Vec<f32> = scores.iter().map(|x| (x - max).exp()).collect();
                    let total: f32 = e.iter().sum();
                    for d in 0..hd {
                        want[(s * len + i) * hidden + h * hd + d] = (0..real)
                            .map(|j| e[j] / total * at(s, j, 2 * hidden + h * hd + d))
                            .sum();
                    }
                }
            }
        }
        close(&got, &want, 1e-5);
    }

    #[test]
    fn add_norm_and_bias_gelu_match_the_textbook_formulas() {
        let (rows, width) = (701, 24);
        let (x, res) = (values(rows * width, 3), values(rows * width, 4));
        let (bias, weight, shift) = (values(width, 5), values(width, 6), values(width, 7));
        let op = AddNorm {
            bias: &bias,
            weight: &weight,
            norm_bias: &shift,
            eps: 1e-12,
        };
        let xt = Tensor::from_vec(x.clone(), (rows, width), &Device::Cpu).unwrap();
        let rt = Tensor::from_vec(res.clone(), (rows, width), &Device::Cpu).unwrap();
        let got = xt
            .apply_op2_no_bwd(&rt, &op)
            .unwrap()
            .flatten_all()
            .unwrap();
        let mut want = Vec::new();
        for r in 0..rows {
            let v: Vec<f32> = (0..width)
                .map(|c| x[r * width + c] + res[r * width + c] + bias[c])
                .collect();
            let mean = v.iter().sum::<f32>() / width as f32;
            let var = v.iter().map(|a| (a - mean) * (a - mean)).sum::<f32>() / width as f32;
            want.extend(
                (0..width).map(|c| (v[c] - mean) / (var + 1e-12).sqrt() * weight[c] + shift[c]),
            );
        }
        close(&got.to_vec1::<f32>().unwrap(), &want, 1e-5);

        let got = xt
            .apply_op1_no_bwd(&BiasGelu(&bias))
            .unwrap()
            .flatten_all()
            .unwrap();
        let want: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let v = v + bias[i % width];
                let e = candle_core::cpu::erf::erf_f64(f64::from(v) / 2f64.sqrt()) as f32;
                0.5 * v * (1.0 + e)
            })
            .collect();
        close(&got.to_vec1::<f32>().unwrap(), &want, 1e-6);
    }

    #[test]
    fn exp_matches_the_reference_to_3e_7_relative() {
        let mut worst = 0f64;
        for i in -870_000..=880_000 {
            let x = i as f32 * 1e-4;
            let exact = f64::from(x).exp();
            worst = worst.max(((f64::from(exp(x)) - exact) / exact).abs());
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        // Clamped, not overflowing: softmax inputs are ≤ 0, but nothing may become inf.
        assert!(exp(1000.0).is_finite() && exp(-1000.0) >= 0.0);
    }

    #[test]
    fn matmul_matches_the_textbook_product() {
        // The packed GEMM as a Candle op; rows that do not split evenly over threads or
        // into 12-row tiles.
        for (m, k, n) in [(1, 3, 5), (37, 20, 7), (300, 17, 33)] {
            let (a, b) = (values(m * k, 8), values(k * n, 9));
            let at = Tensor::from_vec(a.clone(), (m, k), &Device::Cpu).unwrap();
            let w = super::super::gemm::PackedWeights::new(&b, k, n);
            let got = at.apply_op1_no_bwd(&w).unwrap();
            assert_eq!(got.dims(), &[m, n]);
            let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let want: Vec<f32> = (0..m * n)
                .map(|ij| (0..k).map(|x| a[ij / n * k + x] * b[x * n + ij % n]).sum())
                .collect();
            close(&got, &want, 1e-4);
        }
    }

    #[test]
    fn erf_matches_the_reference_to_1e_6() {
        let mut worst = 0f32;
        for i in -80_000..=80_000 {
            let x = i as f32 * 1e-4;
            let exact = candle_core::cpu::erf::erf_f64(x as f64) as f32;
            worst = worst.max((erf(x) - exact).abs());
        }
        assert!(worst < 1e-6, "worst absolute error {worst}");
        // Saturates beyond the clamp, to within one f32 step of ±1.
        assert!((erf(9.0) - 1.0).abs() < 1e-6 && (erf(-9.0) + 1.0).abs() < 1e-6);
        assert_eq!(erf(0.0), 0.0);
    }
}
