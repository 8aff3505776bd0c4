//! int8 linear layers for the BERT encoder (`quantization = "int8"` in
//! `[bert-embedding]`): the four GEMMs of each layer run on integers, everything
//! between them (attention, layer norms, GELU, biases) stays f32.
//!
//! * **Weights**, quantized once at load: per output channel, symmetric, to 8 bits
//!   (`-127..=127`, scale = max |w| / 127), held as i16 and packed in the layout the
//!   microkernel reads (blocks of 16 output channels, 2 consecutive inputs per channel
//!   per 32-bit lane). Half the memory of f32.
//! * **Activations**, quantized inside each GEMM: per row (per token), symmetric, to
//!   14 bits (`-8191..=8191`, fewer for very long rows so that the i32 sums cannot
//!   overflow).
//! * The product is accumulated exactly in i32 (`vpmaddwd`: 16 multiply-adds per
//!   instruction, two per cycle on Zen 3, against 8 per f32 FMA), then `c = sₓ·s_w·acc`.
//!
//! Why not 8-bit activations: on AVX2 without VNNI, u8 × s8 (`vpmaddubsw`) is exact
//! only with 7-bit weights, and 8-bit activations with 7-bit weights cost all-MiniLM-L6-v2
//! a minimum cosine of 0.985 to f32 over the fixture; i16 activations with 8-bit weights
//! keep 0.996, for about 15% less kernel throughput.
//!
//! The kernel is picked at run time: AVX2 on x86-64 CPUs that have it, else a portable
//! scalar loop (correct everywhere and bit-identical, written so the compiler can
//! vectorise it, but slower than the f32 GEMM: on such CPUs int8 only saves memory).

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Output channels per packed block (two AVX2 registers of i32).
const NR: usize = 16;
/// Rows per microkernel tile.
const MR: usize = 6;
/// Largest absolute quantized weight (8 bits).
const WMAX: f32 = 127.0;
/// Largest absolute quantized activation, unless the row is long enough that the i32
/// sums could overflow (see [`QuantLinear::amax`]).
const AMAX: f32 = 8191.0;

/// A linear layer's weight `[in, out]`: f32 for Candle's matmul, f32 packed for the
/// fused CPU path's own GEMM, or int8.
pub(super) enum Linear {
    /// Candle's `x.matmul(w)`, on any device.
    F32(Tensor),
    /// Packed once for [`super::gemm`] (CPU only).
    Packed(super::gemm::PackedWeights),
    /// Quantized weights and the int8 GEMM.
    Int8(QuantLinear),
}

impl Linear {
    /// Wraps the f32 weight `w` (`[in, out]`): quantized when `int8`, else packed for
    /// the fused CPU path when `packed` (the tensor is then dropped).
    pub(super) fn new(w: Tensor, int8: bool, packed: bool) -> candle_core::Result<Self> {
        if !int8 && !packed {
            return Ok(Self::F32(w));
        }
        let (k, n) = w.dims2()?;
        let data = w.flatten_all()?.to_vec1::<f32>()?;
        if int8 {
            return Ok(Self::Int8(QuantLinear::new(&data, k, n)));
        }
        Ok(Self::Packed(super::gemm::PackedWeights::new(&data, k, n)))
    }

    /// `x · w` for `x` of shape `[rows, in]`: `[rows, out]`, no bias.
    pub(super) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::F32(w) => x.matmul(w),
            Self::Packed(p) => x.apply_op1_no_bwd(p),
            Self::Int8(q) => x.apply_op1_no_bwd(q),
        }
    }
}

/// Which inner loop runs the int8 GEMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Isa {
    /// Portable Rust, any CPU.
    Scalar,
    /// x86-64 AVX2 (`vpmaddwd`).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx2,
}

impl Isa {
    /// The best this CPU runs.
    pub(super) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return Self::Avx2;
        }
        Self::Scalar
    }
}

/// A weight matrix `[k, n]` quantized per output channel to `-127..=127` and packed.
pub(super) struct QuantLinear {
    k: usize,
    n: usize,
    /// Input pairs: `k` rounded up to even, halved (the padding holds zero weights).
    groups: usize,
    /// `[n / 16 blocks][groups][16 channels][2 inputs]`, zero-padded.
    packed: Vec<i16>,
    /// Per channel (padded to whole blocks): the weight scale.
    scale: Vec<f32>,
    /// Largest absolute quantized activation for this depth.
    amax: f32,
}

impl QuantLinear {
    /// Quantizes the row-major `w` (`[k, n]`, input by output).
    pub(super) fn new(w: &[f32], k: usize, n: usize) -> Self {
        debug_assert_eq!(w.len(), k * n);
        let blocks = n.div_ceil(NR);
        let groups = k.div_ceil(2);
        let mut scale = vec![0f32; blocks * NR];
        for row in w.chunks_exact(n.max(1)) {
            for (s, &v) in scale.iter_mut().zip(row) {
                *s = s.max(v.abs());
            }
        }
        for s in &mut scale {
            *s /= WMAX;
        }
        let mut packed = vec![0i16; blocks * groups * NR * 2];
        for kk in 0..k {
            for j in 0..n {
                let s = scale[j];
                let q = if s > 0.0 {
                    (w[kk * n + j] / s).round_ties_even().clamp(-WMAX, WMAX) as i16
                } else {
                    0
                };
                let (block, c) = (j / NR, j % NR);
                packed[((block * groups + kk / 2) * NR + c) * 2 + kk % 2] = q;
            }
        }
        // |Σ| ≤ 2·groups · WMAX · amax must stay below 2³¹.
        let amax = ((i32::MAX as f32) / (2.0 * groups.max(1) as f32 * WMAX))
            .floor()
            .min(AMAX);
        Self {
            k,
            n,
            groups,
            packed,
            scale,
            amax,
        }
    }

    /// `x · w` for the row-major `x` (`[m, k]`): `[m, n]`, row-major.
    pub(super) fn matmul(&self, x: &[f32], m: usize, isa: Isa) -> Vec<f32> {
        let (k, n, groups) = (self.k, self.n, self.groups);
        debug_assert_eq!(x.len(), m * k);
        if m == 0 || n == 0 || k == 0 {
            return vec![0f32; m * n];
        }
        // Quantized rows, packed by tiles of MR rows: `[tile][pair][row]` (rows past
        // `m` hold zeros), so the kernel reads one sequential stream.
        let tiles = m.div_ceil(MR);
        let mut qa = vec![[0i16; 2]; tiles * groups * MR];
        let mut sa = vec![0f32; tiles * MR];
        let amax = self.amax;
        qa.par_chunks_mut(groups * MR)
            .zip(x.par_chunks(MR * k))
            .zip(sa.par_chunks_mut(MR))
            .for_each_init(
                || vec![0i16; 2 * groups],
                |row, ((q, x), sa)| {
                    for (r, (x, sa)) in x.chunks(k).zip(sa).enumerate() {
                        *sa = quantize_row(x, row, amax, isa);
                        for (g, pair) in row.chunks_exact(2).enumerate() {
                            q[g * MR + r] = [pair[0], pair[1]];
                        }
                    }
                },
            );
        let rows = chunk_rows(m);
        let blocks = n.div_ceil(NR);
        let bstride = groups * NR * 2;
        let tstride = groups * MR;
        let work = |_: &mut (), c: usize, out: &mut [f32]| {
            let i0 = c * rows;
            let mc = out.len() / n;
            for block in 0..blocks {
                let j0 = block * NR;
                let width = NR.min(n - j0);
                let w = Weights {
                    b: &self.packed[block * bstride..(block + 1) * bstride],
                    scale: &self.scale[j0..j0 + NR],
                };
                for t in (0..mc).step_by(MR) {
                    let tile_at = (i0 + t) / MR;
                    let a = Acts {
                        q: &qa[tile_at * tstride..(tile_at + 1) * tstride],
                        scale: &sa[tile_at * MR..(tile_at + 1) * MR],
                    };
                    let o = &mut out[t * n + j0..];
                    tile(isa, &a, &w, o, n, MR.min(mc - t), width);
                }
            }
        };
        super::fill::fill_new(m * n, rows * n, true, || (), work)
    }
}

/// Rows per parallel task: about eight tasks per thread, whole tiles, at most 48 rows.
/// Small tasks keep the threads evenly loaded (nine tasks of 144 rows on two threads
/// leave one idle for a third of the time); each task streams the whole packed weight
/// once, which costs little next to its 48 · k · n multiply-adds.
fn chunk_rows(m: usize) -> usize {
    let threads = candle_core::utils::get_num_threads().max(1);
    m.div_ceil(8 * threads).div_ceil(MR).clamp(1, 8) * MR
}

/// Quantizes one row to i16, symmetric: returns the scale, so that `x ≈ scale · q`.
/// `q` is the padded row (its tail stays 0).
fn quantize_row(x: &[f32], q: &mut [i16], amax: f32, isa: Isa) -> f32 {
    let top = match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only chosen when the CPU has AVX2.
        Isa::Avx2 => unsafe { avx2::abs_max(x) },
        _ => abs_max(x),
    };
    if !(top > 0.0 && top.is_finite()) {
        q.fill(0);
        return 0.0;
    }
    let inv = amax / top;
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only chosen when the CPU has AVX2.
        Isa::Avx2 => unsafe { avx2::quantize(x, q, inv, amax) },
        _ => quantize(x, q, inv, amax),
    }
    top / amax
}

/// The largest `|x|` (0 for an empty row).
fn abs_max(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |m, &v| m.max(v.abs()))
}

/// `q[i] = clamp(round(x[i] · inv), -amax, amax)`, rounding half to even.
fn quantize(x: &[f32], q: &mut [i16], inv: f32, amax: f32) {
    for (q, &v) in q.iter_mut().zip(x) {
        *q = (v * inv).round_ties_even().clamp(-amax, amax) as i16;
    }
}

/// A tile's quantized activation rows.
struct Acts<'a> {
    /// `[pair][MR rows]`: inputs `2g, 2g + 1` of each row.
    q: &'a [[i16; 2]],
    /// Per row (MR).
    scale: &'a [f32],
}

/// One packed block of 16 output channels.
struct Weights<'a> {
    /// `[groups][16][2]` i16.
    b: &'a [i16],
    scale: &'a [f32],
}

/// `out[r * ldo + c] = Σ_k a[r, k] · w[k, c]` dequantized, for the first `rows` rows of
/// the tile and the first `width` channels of the block.
fn tile(isa: Isa, a: &Acts, w: &Weights, out: &mut [f32], ldo: usize, rows: usize, width: usize) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        // SAFETY: `Isa::Avx2` is only chosen when the CPU has AVX2.
        return unsafe { avx2::tile(a, w, out, ldo, rows, width) };
    }
    let _ = isa;
    tile_scalar(a, w, out, ldo, rows, width);
}

/// The portable tile: the same integer sums as the SIMD paths, the same f32 epilogue,
/// so the results are bit-identical.
fn tile_scalar(a: &Acts, w: &Weights, out: &mut [f32], ldo: usize, rows: usize, width: usize) {
    let groups = w.b.len() / (NR * 2);
    for (r, &sa) in a.scale.iter().enumerate().take(rows) {
        let mut acc = [0i32; NR];
        for g in 0..groups {
            let [x0, x1] = a.q[g * MR + r].map(i32::from);
            let b = &w.b[g * NR * 2..(g + 1) * NR * 2];
            for (c, acc) in acc.iter_mut().enumerate() {
                *acc += x0 * i32::from(b[2 * c]) + x1 * i32::from(b[2 * c + 1]);
            }
        }
        let o = &mut out[r * ldo..r * ldo + width];
        for (c, o) in o.iter_mut().enumerate() {
            *o = (acc[c] as f32) * (sa * w.scale[c]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Acts, Weights, MR, NR};

    /// [`super::abs_max`] with AVX2 (same result: max is exact).
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn abs_max(x: &[f32]) -> f32 {
        let (chunks, tail) = x.as_chunks::<8>();
        let sign = _mm256_set1_ps(-0.0);
        let mut top = _mm256_setzero_ps();
        for c in chunks {
            // SAFETY: `c` holds 8 f32.
            let v = unsafe { _mm256_loadu_ps(c.as_ptr()) };
            top = _mm256_max_ps(top, _mm256_andnot_ps(sign, v));
        }
        let mut t = [0f32; 8];
        // SAFETY: `t` holds 8 f32.
        unsafe { _mm256_storeu_ps(t.as_mut_ptr(), top) };
        t.iter().fold(super::abs_max(tail), |m, &v| m.max(v))
    }

    /// [`super::quantize`] with AVX2, 16 values at a time (bit-identical: the same
    /// multiply, `vcvtps2dq` rounds half to even, `|x · inv| ≤ amax` so the saturating
    /// pack never clips).
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn quantize(x: &[f32], q: &mut [i16], inv: f32, amax: f32) {
        let inv8 = _mm256_set1_ps(inv);
        let n = x.len().min(q.len()) / 16 * 16;
        for (xs, qs) in x[..n].chunks_exact(16).zip(q[..n].chunks_exact_mut(16)) {
            let p = xs.as_ptr();
            // SAFETY: `xs` holds 16 f32, read as two groups of 8.
            let (a, b) = unsafe {
                (
                    _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p), inv8)),
                    _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p.add(8)), inv8)),
                )
            };
            // The pack interleaves 128-bit lanes; the permute puts them back in order.
            let v = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(a, b));
            // SAFETY: `qs` holds 16 i16.
            unsafe { _mm256_storeu_si256(qs.as_mut_ptr().cast(), v) };
        }
        super::quantize(&x[n..], &mut q[n..], inv, amax);
    }

    /// The AVX2 tile of 6 rows × 16 channels (rows past `rows` are computed, not
    /// stored): per 2 inputs, one `vpmaddwd` (i16 pairs multiplied and added into i32)
    /// per row and 8 channels.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn tile(
        a: &Acts,
        w: &Weights,
        out: &mut [f32],
        ldo: usize,
        rows: usize,
        width: usize,
    ) {
        let groups = w.b.len() / (NR * 2);
        assert!(
            a.scale.len() == MR
                && a.q.len() >= groups * MR
                && w.scale.len() >= NR
                && (1..=MR).contains(&rows)
                && width <= NR
                && out.len() >= (rows - 1) * ldo + width
        );
        let mut acc = [[_mm256_setzero_si256(); 2]; MR];
        let (pa, pb) = (a.q.as_ptr(), w.b.as_ptr());
        for g in 0..groups {
            // SAFETY: block `g` of 32 i16 lies within `w.b` (`groups` = len / 32).
            let (b0, b1) = unsafe {
                (
                    _mm256_loadu_si256(pb.add(g * 32).cast()),
                    _mm256_loadu_si256(pb.add(g * 32 + 16).cast()),
                )
            };
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: pair `g · MR + r` lies in `a.q` (asserted above); a pair of i16
                // is 4 bytes, read as one i32.
                let x = unsafe { pa.add(g * MR + r).cast::<i32>().read_unaligned() };
                let x = _mm256_set1_epi32(x);
                acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(x, b0));
                acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(x, b1));
            }
        }
        // SAFETY: `scale` holds at least 16 values (asserted above).
        let ws = unsafe {
            [
                _mm256_loadu_ps(w.scale.as_ptr()),
                _mm256_loadu_ps(w.scale.as_ptr().add(8)),
            ]
        };
        for (r, acc) in acc.iter().enumerate().take(rows) {
            let sa = _mm256_set1_ps(a.scale[r]);
            let mut row = [0f32; NR];
            for h in 0..2 {
                let v = _mm256_mul_ps(_mm256_cvtepi32_ps(acc[h]), _mm256_mul_ps(sa, ws[h]));
                if width == NR {
                    // SAFETY: the row's 16 outputs lie inside `out` (asserted above).
                    unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(r * ldo + 8 * h), v) };
                } else {
                    // SAFETY: `row` holds 16 f32.
                    unsafe { _mm256_storeu_ps(row.as_mut_ptr().add(8 * h), v) };
                }
            }
            if width < NR {
                out[r * ldo..r * ldo + width].copy_from_slice(&row[..width]);
            }
        }
    }
}

impl CustomOp1 for QuantLinear {
    fn name(&self) -> &'static str {
        "int8-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = s else {
            candle_core::bail!("int8-linear: expected f32 input");
        };
        let (m, k) = l.shape().dims2()?;
        if k != self.k {
            candle_core::bail!("int8-linear: input has {k} columns, the weight {}", self.k);
        }
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("int8-linear: input must be contiguous");
        };
        let out = self.matmul(&data[start..end], m, Isa::detect());
        Ok((CpuStorage::F32(out), Shape::from((m, self.n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random sequence in `-1..1`.
    fn noise(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn reference(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for kk in 0..k {
                for j in 0..n {
                    c[i * n + j] += x[i * k + kk] * w[kk * n + j];
                }
            }
        }
        c
    }

    fn isas() -> Vec<Isa> {
        let mut v = vec![Isa::Scalar];
        if Isa::detect() != Isa::Scalar {
            v.push(Isa::detect());
        }
        v
    }

    #[test]
    fn matches_f32_on_odd_shapes() {
        for &(m, k, n) in &[
            (1, 1, 1),
            (5, 7, 3),
            (7, 33, 17),
            (13, 384, 31),
            (6, 64, 16),
            (25, 130, 49),
            (64, 1536, 40),
        ] {
            let mut x = noise(m * k, (m * 31 + k) as u64);
            // Rows of one sign, a zero row and an outlier, as layer outputs have.
            if m > 2 {
                x[..k].iter_mut().for_each(|v| *v = v.abs() + 0.1);
                x[k..2 * k].fill(0.0);
                x[2 * k] = 20.0;
            }
            let w = noise(k * n, (n * 17 + k) as u64);
            let q = QuantLinear::new(&w, k, n);
            let want = reference(&x, &w, m, k, n);
            for isa in isas() {
                let got = q.matmul(&x, m, isa);
                assert_eq!(got.len(), m * n);
                for i in 0..m {
                    let (g, r) = (&got[i * n..(i + 1) * n], &want[i * n..(i + 1) * n]);
                    let err: f32 = g.iter().zip(r).map(|(a, b)| (a - b).powi(2)).sum();
                    let norm: f32 = r.iter().map(|b| b * b).sum();
                    assert!(
                        err <= 1e-3 * norm + 1e-12,
                        "{isa:?} {m}x{k}x{n} row {i}: relative squared error {}",
                        err / norm
                    );
                }
            }
        }
    }

    #[test]
    fn simd_and_scalar_agree_bit_for_bit() {
        let (m, k, n) = (29, 390, 45);
        let mut x = noise(m * k, 7);
        x[5] = -30.0;
        let w = noise(k * n, 8);
        let q = QuantLinear::new(&w, k, n);
        let scalar = q.matmul(&x, m, Isa::Scalar);
        let best = q.matmul(&x, m, Isa::detect());
        assert_eq!(scalar, best);
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        // All activations and weights at ±max over a long row: the i32 sums are at
        // their largest; the result must still be exact.
        let (m, k, n) = (6, 4099, 16);
        let x = vec![1.0f32; m * k];
        let w: Vec<f32> = (0..k * n)
            .map(|i| if i % 3 == 0 { -1.0 } else { 1.0 })
            .collect();
        let q = QuantLinear::new(&w, k, n);
        let want = reference(&x, &w, m, k, n);
        for isa in isas() {
            let got = q.matmul(&x, m, isa);
            for (g, r) in got.iter().zip(&want) {
                assert!(
                    (g - r).abs() <= 1e-3 * r.abs().max(1.0),
                    "{isa:?}: {g} vs {r}"
                );
            }
        }
    }

    /// Throughput against Candle's f32 matmul on the encoder's shapes (1216 tokens):
    /// `cargo test --release -p surge-model --lib int8::tests::speed -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn speed() {
        use std::time::Instant;
        let m = 1216;
        for (k, n) in [(384, 1152), (384, 384), (384, 1536), (1536, 384)] {
            let x = noise(m * k, 1);
            let w = noise(k * n, 2);
            let q = QuantLinear::new(&w, k, n);
            let xt = Tensor::from_vec(x.clone(), (m, k), &candle_core::Device::Cpu).unwrap();
            let wt = Tensor::from_vec(w, (k, n), &candle_core::Device::Cpu).unwrap();
            let reps = 20;
            let _ = xt.matmul(&wt).unwrap();
            let t = Instant::now();
            for _ in 0..reps {
                let _ = xt.matmul(&wt).unwrap();
            }
            let f = t.elapsed().as_secs_f64();
            let _ = q.matmul(&x, m, Isa::detect());
            let t = Instant::now();
            for _ in 0..reps {
                let _ = q.matmul(&x, m, Isa::detect());
            }
            let i = t.elapsed().as_secs_f64();
            let gmac = (reps * m * k * n) as f64 / 1e9;
            println!(
                "{m}x{k}x{n}: f32 {:.1} GMAC/s, int8 {:.1} GMAC/s, {:.2}x",
                gmac / f,
                gmac / i,
                f / i
            );
        }
    }
}
