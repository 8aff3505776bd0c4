//! Output buffers filled in pieces by the threads that compute them ([`fill_new`]),
//! shared by the GEMMs and the fused kernels.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// A new `len`-value buffer, cut into `chunk`-value pieces that `work(state, index,
/// piece)` fills, on the pool when `par` (with one `init()` state per task run) or in
/// order. Each piece is zeroed by the thread that fills it, just before: a `vec![0; len]`
/// up front was a serial memset on the calling thread while the pool waited.
pub(super) fn fill_new<S>(
    len: usize,
    chunk: usize,
    par: bool,
    init: impl Fn() -> S + Sync + Send,
    work: impl Fn(&mut S, usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let mut out = Vec::<f32>::with_capacity(len);
    let spare = &mut out.spare_capacity_mut()[..len];
    let run = |state: &mut S, (i, piece): (usize, &mut [MaybeUninit<f32>])| {
        piece.fill(MaybeUninit::new(0.0));
        // SAFETY: every value of `piece` was just written, and `MaybeUninit<f32>` has
        // the layout of `f32`.
        let piece = unsafe { &mut *(piece as *mut [MaybeUninit<f32>] as *mut [f32]) };
        work(state, i, piece);
    };
    if par {
        spare
            .par_chunks_mut(chunk.max(1))
            .enumerate()
            .for_each_init(&init, run);
    } else {
        let mut state = init();
        for item in spare.chunks_mut(chunk.max(1)).enumerate() {
            run(&mut state, item);
        }
    }
    // SAFETY: the pieces cover `..len` and each was written above (a panic in `work`
    // unwinds past this line, dropping `out` with length 0).
    unsafe { out.set_len(len) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value of a [`fill_new`] buffer comes from its piece's `work`, pieces cut as
    /// asked (the last one short), on the pool and inline alike; each piece starts zeroed.
    #[test]
    fn fill_new_hands_out_zeroed_pieces_covering_the_buffer() {
        for par in [false, true] {
            let out = fill_new(
                1000,
                96,
                par,
                || (),
                |_, i, piece| {
                    assert!(piece.iter().all(|&v| v == 0.0));
                    assert_eq!(piece.len(), if i == 10 { 40 } else { 96 });
                    for (j, v) in piece.iter_mut().enumerate() {
                        *v = (i * 96 + j) as f32;
                    }
                },
            );
            let want: Vec<f32> = (0..1000).map(|v| v as f32).collect();
            assert_eq!(out, want, "par = {par}");
            assert!(fill_new(0, 8, par, || (), |_, _, _| panic!("no pieces")).is_empty());
        }
    }
}
