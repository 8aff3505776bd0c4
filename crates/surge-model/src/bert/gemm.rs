//! The f32 GEMM of the encoder's linear layers on CPU (`x [m, k] · W [k, n]`), with `W`
//! packed once at load.
//!
//! Why not the `gemm` crate, which this replaced: it packs `W` again on every call (each
//! thread's row slice copies all of it), and it picks its microkernel itself, so
//! `SURGE_CPU_ISA=avx2` could not move it off AVX-512 to measure an AVX2 machine's speed.
//! Here the weights are laid out once in the order the microkernel reads them, and the
//! kernel is compiled for AVX-512, AVX2 + FMA and the baseline, picked at run time like
//! the fused kernels in [`super::cpu`].
//!
//! Blocking, as in BLIS: the depth is cut into passes of [`KC`] so that one block of
//! packed weights (`KC × 16`, 24 KiB) stays in L1 while every row tile of a slice runs
//! over it; the rows into passes of [`MC`] whose packed activations (`MC × KC`, up to
//! 144 KiB) stay in L2 while every column block runs over them. 384 is MiniLM's hidden
//! size, so three of its four products take one pass and write `c` once; 256 was 10–20%
//! slower on one core, its second pass adding into `c`. The microkernel keeps
//! `ROWS × 16` sums in registers (12 rows of one 16-lane register on AVX-512, 6 rows of
//! two 8-lane registers on AVX2) and reads activations at fixed offsets from one packed
//! panel, so its inner loop has no bounds checks.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};

#[cfg(target_arch = "x86_64")]
use super::cpu::use_avx512;
use super::cpu::{f32s, madd, put_lane};
use super::fill::fill_new;

/// Output columns per packed block: one AVX-512 register, two AVX2 ones.
const NB: usize = 16;
/// Depth per pass (see the module docs).
const KC: usize = 384;
/// Rows per pass: a multiple of every ISA's tile height (12, 6 and 4).
const MC: usize = 96;

/// A weight matrix `[k, n]` packed for [`PackedWeights::matmul`]: `[n / 16 blocks][k][16]`, the last
/// block zero-padded.
pub(super) struct PackedWeights {
    k: usize,
    n: usize,
    packed: Vec<f32>,
}

impl PackedWeights {
    /// Packs the row-major `w` (`[k, n]`, input by output).
    pub(super) fn new(w: &[f32], k: usize, n: usize) -> Self {
        debug_assert_eq!(w.len(), k * n);
        let blocks = n.div_ceil(NB);
        let mut packed = vec![0f32; blocks * k * NB];
        for (kk, row) in w.chunks_exact(n.max(1)).enumerate().take(k) {
            for (j, &v) in row.iter().enumerate() {
                packed[((j / NB) * k + kk) * NB + j % NB] = v;
            }
        }
        Self { k, n, packed }
    }

    /// `x · W` for the row-major `x` (`[m, k]`): `[m, n]`, row-major. The rows are cut
    /// into a few slices per thread of the pool, each one single-threaded product, so the
    /// threads never wait on each other until the end.
    pub(super) fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (k, n) = (self.k, self.n);
        debug_assert_eq!(x.len(), m * k);
        if m == 0 || n == 0 || k == 0 {
            return vec![0f32; m * n];
        }
        let rows = slice_rows(m);
        let work = |panel: &mut Vec<f32>, i: usize, c: &mut [f32]| {
            let a = &x[i * rows * k..][..c.len() / n * k];
            gemm_slice(a, c.len() / n, k, &self.packed, n, c, panel)
        };
        fill_new(m * n, rows * n, m > rows, Vec::new, work)
    }
}

/// As a Candle op on a `[m, k]` f32 tensor.
impl CustomOp1 for PackedWeights {
    fn name(&self) -> &'static str {
        "bert-matmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(s, l, self.name())?;
        let (m, k) = l.shape().dims2()?;
        if k != self.k || x.len() != m * k {
            candle_core::bail!(
                "bert-matmul: [{m}, {k}] × [{}, {}] do not fit",
                self.k,
                self.n
            );
        }
        Ok((CpuStorage::F32(self.matmul(x, m)), Shape::from((m, self.n))))
    }
}

/// Rows per parallel task: two tasks per thread (so a slow thread's share is picked up
/// by the other), in whole 12-row tiles. Four per thread, or whole passes of [`MC`]
/// rows, measured 2–10% slower at 16 tokens.
fn slice_rows(m: usize) -> usize {
    let threads = candle_core::utils::get_num_threads().max(1);
    m.div_ceil(2 * threads).next_multiple_of(12).max(12)
}

/// `c = a · b` on one thread: `a` is `[m, k]` row-major, `b` packed (`[blocks][k][16]`),
/// `c` is `[m, n]` row-major; `panel` is scratch for the packed activations.
#[allow(clippy::too_many_arguments)]
fn gemm_slice(
    a: &[f32],
    m: usize,
    k: usize,
    b: &[f32],
    n: usize,
    c: &mut [f32],
    panel: &mut Vec<f32>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        // The blocking is compiled with the microkernel's features too: its packing and
        // sums over depth passes are a tenth of the time, and slow in baseline SSE.
        #[target_feature(enable = "avx512f,avx2,fma")]
        fn v4(a: &[f32], m: usize, k: usize, b: &[f32], n: usize, c: &mut [f32], p: &mut Vec<f32>) {
            blocked::<12>(a, m, k, b, n, c, p)
        }
        #[target_feature(enable = "avx2,fma")]
        fn v3(a: &[f32], m: usize, k: usize, b: &[f32], n: usize, c: &mut [f32], p: &mut Vec<f32>) {
            blocked::<6>(a, m, k, b, n, c, p)
        }
        if use_avx512() {
            // SAFETY: the CPU has AVX-512F (and so AVX2 and FMA), checked by use_avx512.
            return unsafe { v4(a, m, k, b, n, c, panel) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA, checked above.
            return unsafe { v3(a, m, k, b, n, c, panel) };
        }
    }
    blocked::<4>(a, m, k, b, n, c, panel)
}

/// The blocking around the `ROWS × 16` microkernel [`tile`]. Tiles cut by the last rows
/// or columns go through a scratch tile.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn blocked<const ROWS: usize>(
    a: &[f32],
    m: usize,
    k: usize,
    b: &[f32],
    n: usize,
    c: &mut [f32],
    panel: &mut Vec<f32>,
) {
    let blocks = n.div_ceil(NB);
    let mut part = [[0f32; NB]; ROWS];
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        let add = k0 > 0;
        for i0 in (0..m).step_by(MC) {
            let mc = MC.min(m - i0);
            let tiles = mc.div_ceil(ROWS);
            // The activations of this pass, tile by tile, transposed: `[tile][kc][ROWS]`
            // (zeros past the last row).
            panel.clear();
            panel.resize(tiles * kc * ROWS, 0.0);
            for (t, tile) in panel.chunks_exact_mut(kc * ROWS).enumerate() {
                let (tile, _) = tile.as_chunks_mut::<ROWS>();
                let first = i0 + t * ROWS;
                for (r, row) in a[first * k..]
                    .chunks(k)
                    .take(ROWS.min(m - first))
                    .enumerate()
                {
                    put_lane(tile, r, &row[k0..k0 + kc]);
                }
            }
            for blk in 0..blocks {
                let bp = &b[(blk * k + k0) * NB..][..kc * NB];
                let j0 = blk * NB;
                let width = NB.min(n - j0);
                for (t, ap) in panel.chunks_exact(kc * ROWS).enumerate() {
                    let ap = ap.as_chunks::<ROWS>().0;
                    let first = i0 + t * ROWS;
                    let live = ROWS.min(m - first);
                    if live == ROWS && width == NB {
                        tile(ap, bp, NB, &mut c[first * n + j0..], n, add);
                        continue;
                    }
                    tile(ap, bp, NB, part.as_flattened_mut(), NB, false);
                    for (r, part) in part.iter().enumerate().take(live) {
                        let at = (first + r) * n + j0;
                        for (d, &s) in c[at..at + width].iter_mut().zip(part) {
                            *d = if add { *d + s } else { s };
                        }
                    }
                }
            }
        }
    }
}

/// The microkernel: writes (or with `add`, adds) the product of a transposed activation
/// panel `ap` (`[kc][ROWS]`) and `kc` rows of 16 weights (`b`, rows `ldb` apart) to the
/// `ROWS × 16` tile at the start of `c`, whose rows are `ldc` apart. With intrinsics on
/// x86-64 (AVX-512 or AVX2 + FMA, as [`use_avx512`] and the CPU say), else portable.
///
/// # Panics
/// If `b` or `c` is too short for the tile.
#[inline(always)]
pub(super) fn tile<const ROWS: usize>(
    ap: &[[f32; ROWS]],
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    add: bool,
) {
    let kc = ap.len();
    assert!(
        (kc == 0 || b.len() >= (kc - 1) * ldb + NB) && c.len() >= (ROWS - 1) * ldc + NB,
        "gemm tile out of bounds"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if use_avx512() {
            // SAFETY: the CPU has AVX-512F; the bounds are asserted above.
            return unsafe { x86::tile_avx512(ap, b, ldb, c, ldc, add) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA; the bounds are asserted above.
            return unsafe { x86::tile_avx2(ap, b, ldb, c, ldc, add) };
        }
    }
    tile_portable(ap, b, ldb, c, ldc, add)
}

/// [`tile`] in portable Rust (LLVM vectorises the 16 lanes).
#[inline(never)]
fn tile_portable<const ROWS: usize>(
    ap: &[[f32; ROWS]],
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    add: bool,
) {
    const FMA: bool = cfg!(target_arch = "aarch64");
    let mut acc = [[0f32; NB]; ROWS];
    for (xs, bk) in ap.iter().zip(b.chunks(ldb)) {
        let bk = &bk[..NB];
        for (acc, &x) in acc.iter_mut().zip(xs) {
            for l in 0..NB {
                acc[l] = madd::<FMA>(x, bk[l], acc[l]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (d, &s) in c[r * ldc..r * ldc + NB].iter_mut().zip(acc) {
            *d = if add { *d + s } else { s };
        }
    }
}

/// The x86-64 microkernels of [`tile`], with intrinsics: LLVM, given the portable loop
/// in an AVX-512 build, vectorised it across rows with gathers (microcoded on AMD's Zen
/// 4) or kept the sums in memory.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `ROWS` rows × one 16-lane register: one weight load and `ROWS` broadcast FMAs per
    /// step.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `b` and `c` must hold the tile (as [`super::tile`]
    /// asserts).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile_avx512<const ROWS: usize>(
        ap: &[[f32; ROWS]],
        b: &[f32],
        ldb: usize,
        c: &mut [f32],
        ldc: usize,
        add: bool,
    ) {
        let mut acc = [_mm512_setzero_ps(); ROWS];
        let mut w = b.as_ptr();
        for xs in ap {
            // SAFETY: step `kk` reads `b[kk * ldb ..][..16]`, in bounds (caller).
            let v = unsafe { _mm512_loadu_ps(w) };
            w = w.wrapping_add(ldb);
            for r in 0..ROWS {
                acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(xs[r]), v, acc[r]);
            }
        }
        for (r, acc) in acc.into_iter().enumerate() {
            // SAFETY: row `r` of the tile, `r * ldc .. r * ldc + 16`, is in `c` (caller).
            unsafe {
                let o = c.as_mut_ptr().add(r * ldc);
                let v = if add {
                    _mm512_add_ps(_mm512_loadu_ps(o), acc)
                } else {
                    acc
                };
                _mm512_storeu_ps(o, v);
            }
        }
    }

    /// `ROWS` rows × two 8-lane registers (keep `2 · ROWS` ≤ 12, the sixteen registers
    /// also hold the weights and a broadcast): two weight loads and `ROWS` broadcasts
    /// per step.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; `b` and `c` must hold the tile (as
    /// [`super::tile`] asserts).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile_avx2<const ROWS: usize>(
        ap: &[[f32; ROWS]],
        b: &[f32],
        ldb: usize,
        c: &mut [f32],
        ldc: usize,
        add: bool,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; ROWS];
        let mut w = b.as_ptr();
        for xs in ap {
            // SAFETY: step `kk` reads `b[kk * ldb ..][..16]`, in bounds (caller).
            let (w0, w1) = unsafe { (_mm256_loadu_ps(w), _mm256_loadu_ps(w.add(8))) };
            w = w.wrapping_add(ldb);
            for r in 0..ROWS {
                let x = _mm256_set1_ps(xs[r]);
                acc[r][0] = _mm256_fmadd_ps(x, w0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(x, w1, acc[r][1]);
            }
        }
        for (r, [a0, a1]) in acc.into_iter().enumerate() {
            // SAFETY: row `r` of the tile, `r * ldc .. r * ldc + 16`, is in `c` (caller).
            unsafe {
                let o = c.as_mut_ptr().add(r * ldc);
                let (v0, v1) = if add {
                    (
                        _mm256_add_ps(_mm256_loadu_ps(o), a0),
                        _mm256_add_ps(_mm256_loadu_ps(o.add(8)), a1),
                    )
                } else {
                    (a0, a1)
                };
                _mm256_storeu_ps(o, v0);
                _mm256_storeu_ps(o.add(8), v1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_the_naive_product_on_odd_shapes() {
        // Tails in every dimension: rows past a tile and a pass, columns past a block,
        // depth past a pass and under one.
        for &(m, k, n) in &[
            (1, 1, 1),
            (5, 3, 17),
            (13, 255, 16),
            (97, 257, 33),
            (200, 384, 48),
            (31, 1536, 40),
            (0, 4, 4),
            (3, 0, 5),
        ] {
            let (a, w) = (noise(m * k, 1), noise(k * n, 2));
            let got = PackedWeights::new(&w, k, n).matmul(&a, m);
            assert_eq!(got.len(), m * n);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|x| f64::from(a[i * k + x]) * f64::from(w[x * n + j]))
                        .sum();
                    let g = f64::from(got[i * n + j]);
                    assert!(
                        (g - want).abs() <= 1e-4 * (k as f64).sqrt(),
                        "[{m},{k},{n}] at ({i},{j}): {g} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    #[ignore = "a measurement, not a check"]
    fn speed() {
        use std::time::Instant;
        for &(m, k, n) in &[(1024, 384, 1152), (1024, 384, 1536), (1024, 1536, 384)] {
            let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
            let w: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
            let p = PackedWeights::new(&w, k, n);
            let mut panel = Vec::new();
            let mut c = vec![0f32; m * n];
            gemm_slice(&a, m, k, &p.packed, n, &mut c, &mut panel);
            let t = Instant::now();
            let reps = 20;
            for _ in 0..reps {
                gemm_slice(&a, m, k, &p.packed, n, &mut c, &mut panel);
            }
            let s = t.elapsed().as_secs_f64();
            let gf = 2.0 * (m * k * n * reps) as f64 / s / 1e9;
            let t = Instant::now();
            for _ in 0..reps {
                // SAFETY: sizes as above, all row-major.
                unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        c.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        a.as_ptr(),
                        1,
                        k as isize,
                        w.as_ptr(),
                        1,
                        n as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    )
                }
            }
            let lib = 2.0 * (m * k * n * reps) as f64 / t.elapsed().as_secs_f64() / 1e9;
            eprintln!("[{m},{k},{n}] one thread: {gf:.1} GFLOP/s, gemm crate {lib:.1}");
        }
    }
}
