"""Convolution and locally connected kernels (forward and backward), NHWC, float32/float64.

Public wrappers (plain Python: validate, allocate, call the @njit kernels):

    conv2d_forward(x, w, b, stride, pad, dilation, groups, out_hw) -> y
    conv2d_backward(x, w, dy, stride, pad, dilation, groups, need_dx=True) -> (dx|None, dw, db)
    conv2d_forward_planar(x, w, b, pad, dilation, out_hw) -> y              (stride 1, groups 1)
    conv2d_backward_planar(x, w, dy, pad, dilation, need_dx=True) -> (dx|None, dw, db)
    local2d_forward(x, w, b, stride, pad, dilation, out_hw) -> y
    local2d_backward(x, w, dy, stride, pad, dilation, need_dx=True) -> (dx|None, dw, db)

Shapes: x[N, H, W, C], y/dy[N, OH, OW, K]. Conv weights OIHW ``w[K, C//groups, Fh, Fw]``,
bias ``b[K]``; locally connected weights ``w[K, OH, OW, C, Fh, Fw]``, bias ``b[K, OH, OW]``.
``stride``, ``pad`` (top/left zero padding), ``dilation`` are (h, w) int pairs; an input
index outside [0, H) x [0, W) reads as zero, so bottom/right padding is implicit.
``b`` may be None. ``db`` is always returned (accumulated in float64, cast to the dtype).
Same semantics as ``torch.nn.functional.conv2d`` on NCHW.

Design (measured on the 2-core target, see bench/bench_conv.py):

* Conv (GEMM path): ``prange`` over a fixed number of chunks; each chunk walks its tasks
  (an image, or a band of output rows of an image), builds that band's column matrix
  ``cols[g, rows, Fh*Fw*Cg]`` (row order p, q, c: contiguous channel runs in NHWC; the
  band is sized to stay in L2) and calls ``np.dot`` (single-threaded BLAS, see
  cnncli.config) straight into ``y``. Groups: one GEMM per group on its slice.
* Conv backward: chunks own whole images. dW/db accumulate into per-chunk partials that
  are summed in chunk order at the end; dx is a GEMM into a column buffer then col2im
  into the chunk's own images. No racy accumulation: results are bit-identical run to
  run, and, because the chunk count is ``min(N, max(threads, 8))``, also across thread
  counts up to 8.
* Depthwise-like groups (C//groups * K//groups <= 8) use a direct loop kernel instead,
  vectorised over groups (tiny per-group GEMMs are all call overhead).
* First layers (1-3 channels, stride 1; conv_algo.py's ``auto`` picks them): the planar
  kernels. A band's input rows are transposed once into zero-padded planes, so a tap's
  inputs along an output row are one contiguous run: the columns [27 x positions] are
  built from runs of OW numbers, and the GEMMs take them transposed, writing y's rows
  and reading dy's as they lie. Measured by bench/bench_winograd.py --small (table in
  conv_algo.py): 32x32 3->16 forward / dW at 2.1x / 2.0x im2col's speed and 1.75x /
  1.45x Winograd's with OpenBLAS's SkylakeX kernel, 1.3x / 1.9x and 1.4x / 1.4x with its
  Haswell kernel; LeNet's 1->6 5x5 at 2.6-3.1x im2col's.
  A direct loop kernel (an output pixel's K filters as the accumulator, windows read
  from NHWC x) measured 1.5-2.5x slower than im2col: see winograd.py's note on loops.
* Which GEMM: forward and dW GEMMs run on microkernel.py's `gemm_into` instead of
  np.dot where a group's filter matrix fits in L2 and either numba compiles for AVX-512
  and the filters fill the kernel's 16-wide blocks, or OpenBLAS runs an older core than
  numba compiles for (OPENBLAS_CORETYPE=Haswell on an AVX-512 CPU); sizes.own_gemm has
  the measurements. dW then adds into the chunk's partial sums directly; dx (dy @ W2^T)
  joins where kdim fills the blocks, reading W2's transpose the wrapper lays out, and
  stays on np.dot otherwise. On the own kernel a 1x1 conv without padding skips im2col
  (`_pointwise`): its GEMMs read x, and write dx, at the stride where the pixels lie.
  Each way is its own compiled copy of the kernel (`_conv_fwd_gemm_own`, ...:
  microkernel.own_gemm_variant), so a run compiles only the copies its layers call.
* Locally connected: forward and dW are one small GEMM per output position over the
  batch (parallel over positions, no reduction needed); dx is parallel over chunks of
  images, each scattering into its own images.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from cnncli.config import (
    JIT_OPTIONS,
    PARALLEL_JIT_OPTIONS,
    blas_narrower_than_jit,
    ensure_configured,
)
from cnncli.engine.kernels import microkernel, sizes
from cnncli.engine.kernels.microkernel import OWN_GEMM, gemm_into, own_gemm_variant
from cnncli.engine.kernels.sizes import (
    COL_BLOCK_BYTES,  # noqa: F401 - tests and benchmarks read it through this module
    MIN_CHUNKS,  # noqa: F401
    OWN_GEMM_BLOCK,
    band_rows,
    chunks,
    use_direct,
)

__all__ = [
    "conv2d_forward",
    "conv2d_backward",
    "conv2d_forward_planar",
    "conv2d_backward_planar",
    "local2d_forward",
    "local2d_backward",
]

# How the work is split (band sizes, chunk counts) is defined once in sizes.py, which the
# layers' memory plans read too.


# ----------------------------------------------------------------------------------
# njit helpers (called from inside prange bodies)
# ----------------------------------------------------------------------------------


@njit(**JIT_OPTIONS)
def _q_range(j0, Fw, dw, W):
    """Kernel columns q with 0 <= j0 + q * dw < W, as the half-open range [qlo, qhi)."""
    qlo = 0
    if j0 < 0:
        qlo = (-j0 + dw - 1) // dw
    qhi = Fw
    if j0 + (Fw - 1) * dw >= W:
        qhi = max(0, (W - 1 - j0) // dw + 1)
    return min(qlo, qhi), qhi


# Copies below go through 1-d views indexed by a range() variable: LLVM then knows the
# index is non-negative, drops numba's wraparound check and vectorises the loop (flat
# indexing with computed offsets measured 4-8x slower).


@njit(**JIT_OPTIONS)
def _im2col_band(x, n, r0, r1, OW, Fh, Fw, sh, sw, ph, pw, dh, dw, G, Cg, cols):
    """cols[g, (i - r0) * OW + j, (p * Fw + q) * Cg + c] = x[n, ii, jj, g * Cg + c]."""
    H = x.shape[1]
    W = x.shape[2]
    C = x.shape[3]
    xf = x[n].reshape(H * W * C)
    zero = x.dtype.type(0)
    FwCg = Fw * Cg
    for i in range(r0, r1):
        for j in range(OW):
            r = (i - r0) * OW + j
            j0 = j * sw - pw
            qlo, qhi = _q_range(j0, Fw, dw, W)
            for g in range(G):
                crow = cols[g, r]
                for p in range(Fh):
                    ii = i * sh - ph + p * dh
                    dst = crow[p * FwCg:(p + 1) * FwCg]
                    if ii < 0 or ii >= H:
                        for t in range(FwCg):
                            dst[t] = zero
                        continue
                    for t in range(qlo * Cg):
                        dst[t] = zero
                    for t in range(qhi * Cg, FwCg):
                        dst[t] = zero
                    if G == 1 and dw == 1:  # one contiguous run of (qhi - qlo) pixels
                        L = (qhi - qlo) * C
                        s0 = (ii * W + j0 + qlo) * C
                        src = xf[s0:s0 + L]
                        d = dst[qlo * C:qlo * C + L]
                        for t in range(L):
                            d[t] = src[t]
                    else:
                        for q in range(qlo, qhi):
                            s0 = (ii * W + j0 + q * dw) * C + g * Cg
                            src = xf[s0:s0 + Cg]
                            d = dst[q * Cg:(q + 1) * Cg]
                            for t in range(Cg):
                                d[t] = src[t]


@njit(**JIT_OPTIONS)
def _col2im_band(dcols, n, r0, r1, OW, Fh, Fw, sh, sw, ph, pw, dh, dw, G, Cg, dx):
    """Adjoint of _im2col_band: dx[n, ii, jj, g * Cg + c] += dcols[g, row, col]."""
    H = dx.shape[1]
    W = dx.shape[2]
    C = dx.shape[3]
    xf = dx[n].reshape(H * W * C)
    FwCg = Fw * Cg
    for i in range(r0, r1):
        for j in range(OW):
            r = (i - r0) * OW + j
            j0 = j * sw - pw
            qlo, qhi = _q_range(j0, Fw, dw, W)
            for g in range(G):
                crow = dcols[g, r]
                for p in range(Fh):
                    ii = i * sh - ph + p * dh
                    if ii < 0 or ii >= H:
                        continue
                    src = crow[p * FwCg:(p + 1) * FwCg]
                    if G == 1 and dw == 1:
                        L = (qhi - qlo) * C
                        s0 = (ii * W + j0 + qlo) * C
                        d = xf[s0:s0 + L]
                        sv = src[qlo * C:qlo * C + L]
                        for t in range(L):
                            d[t] += sv[t]
                    else:
                        for q in range(qlo, qhi):
                            s0 = (ii * W + j0 + q * dw) * C + g * Cg
                            d = xf[s0:s0 + Cg]
                            sv = src[q * Cg:(q + 1) * Cg]
                            for t in range(Cg):
                                d[t] += sv[t]


# What a conv kernel applies to each band of output it has just written, while it is in
# cache (`post_mode`, bits): 2, the batchnorm after it in evaluation, (y - post[0]) *
# post[1] + post[2] per channel as norm.py's _bn_apply computes it; then 1, max(y, 0) as
# relu_forward computes it (NaN passes through, -0 becomes 0). The same operations in the
# same order as the layers apart, so the results are theirs, bit for bit.
POST_RELU = 1
POST_AFFINE = 2


@njit(**JIT_OPTIONS)
def _pointwise(Fh, Fw, ph, pw, G, Cg):
    """A 1x1 conv without padding, one group, channels in the own kernel's 16s: on the own
    kernel its GEMMs read x (and write dx) where the pixels lie, strided by the stride,
    instead of through im2col (resnet20's stride-2 shortcuts: a copy of 16 numbers per
    pixel had cost more than their products)."""
    return Fh == 1 and Fw == 1 and ph == 0 and pw == 0 and G == 1 and Cg % OWN_GEMM_BLOCK == 0


@njit(**JIT_OPTIONS)
def _post_rows(out, post_mode, post):
    """out[r, k] after the conv: the layers it absorbed (see POST_RELU, POST_AFFINE)."""
    zero = out.dtype.type(0)
    pm = post[0]
    pa = post[1]
    pb = post[2]
    for r in range(out.shape[0]):
        row = out[r]
        if post_mode & 2:
            for k in range(row.shape[0]):
                row[k] = (row[k] - pm[k]) * pa[k] + pb[k]
        if post_mode & 1:
            for k in range(row.shape[0]):
                v = row[k]
                row[k] = v if v > zero or v != v else zero


# ----------------------------------------------------------------------------------
# conv, GEMM path
# ----------------------------------------------------------------------------------


@njit(**PARALLEL_JIT_OPTIONS)
def _conv_fwd_gemm(x, W2, b, has_bias, Fh, Fw, sh, sw, ph, pw, dh, dw, rb, cols_t, tmp_t, y,
                   post_mode, post):
    """y[N, OH, OW, K] = conv(x, W2) (+ b), then what it absorbed (`_post_rows`);
    W2[G, Fh*Fw*Cg, Kg] rows ordered (p, q, c). One slot per thread:
    cols_t[T, G, rb*OW, kdim] and tmp_t[T, rb*OW, Kg] are its band."""
    N = x.shape[0]
    G = W2.shape[0]
    Kg = W2.shape[2]
    Cg = x.shape[3] // G
    OH = y.shape[1]
    OW = y.shape[2]
    K = y.shape[3]
    nblk = (OH + rb - 1) // rb
    ntask = N * nblk
    T = cols_t.shape[0]
    y2 = y.reshape(N * OH * OW, K)
    for t in prange(T):
        t0 = t * ntask // T
        t1 = (t + 1) * ntask // T
        cols = cols_t[t]
        tmp = tmp_t[t]
        for task in range(t0, t1):
            n = task // nblk
            r0 = (task % nblk) * rb
            r1 = min(OH, r0 + rb)
            rows = (r1 - r0) * OW
            base = (n * OH + r0) * OW
            out = y2[base:base + rows]
            if OWN_GEMM and _pointwise(Fh, Fw, ph, pw, G, Cg):
                for i in range(r0, r1):  # x's pixels as they lie: no im2col
                    o = (n * OH + i) * OW
                    gemm_into(x[n, i * sh, :(OW - 1) * sw + 1:sw], W2[0], y2[o:o + OW],
                              False)
            elif G == 1:
                _im2col_band(x, n, r0, r1, OW, Fh, Fw, sh, sw, ph, pw, dh, dw, G, Cg, cols)
                if OWN_GEMM:  # _conv_fwd_gemm_own (sizes.own_gemm decides)
                    gemm_into(cols[0, :rows], W2[0], out, False)
                else:
                    np.dot(cols[0, :rows], W2[0], out)
            else:
                _im2col_band(x, n, r0, r1, OW, Fh, Fw, sh, sw, ph, pw, dh, dw, G, Cg, cols)
                for g in range(G):
                    tg = tmp[:rows]
                    if OWN_GEMM:
                        gemm_into(cols[g, :rows], W2[g], tg, False)
                    else:
                        np.dot(cols[g, :rows], W2[g], tg)
                    k0 = g * Kg
                    for r in range(rows):
                        dst = out[r, k0:k0 + Kg]
                        src = tg[r]
                        for k in range(Kg):
                            dst[k] = src[k]
            if has_bias:
                for r in range(rows):
                    orow = out[r]
                    for k in range(K):
                        orow[k] += b[k]
            if post_mode:
                _post_rows(out, post_mode, post)


@njit(**PARALLEL_JIT_OPTIONS)
def _conv_bwd_gemm(x, W2, W2T, dy, Fh, Fw, sh, sw, ph, pw, dh, dw, rb, nchunk, need_dx,
                   dx, dWp, dbp, cols_t, dcols_t, dyg_t, tw_t):
    """dWp[chunk, G, kdim, Kg] and dbp[chunk, K] (zeroed) get per-chunk partial sums;
    dx (zeroed, when need_dx) gets the input gradient. Chunks own whole images. One slot
    per thread works through its share of the chunks with its own band buffers (the
    `_t` arrays, [T, ...]); a chunk's sums do not depend on which slot computed them."""
    N = x.shape[0]
    G = W2.shape[0]
    kdim = W2.shape[1]
    Kg = W2.shape[2]
    Cg = x.shape[3] // G
    OH = dy.shape[1]
    OW = dy.shape[2]
    K = dy.shape[3]
    nblk = (OH + rb - 1) // rb
    dy2 = dy.reshape(N * OH * OW, K)
    T = cols_t.shape[0]
    for slot in prange(T):
        cols = cols_t[slot]
        dcols = dcols_t[slot]
        dyg = dyg_t[slot]
        tw = tw_t[slot]
        for t in range(slot * nchunk // T, (slot + 1) * nchunk // T):
            _conv_bwd_gemm_chunk(x, W2, W2T, dy2, Fh, Fw, sh, sw, ph, pw, dh, dw, rb, nblk, G,
                                 kdim, Kg, Cg, OH, OW, K, t * N // nchunk,
                                 (t + 1) * N // nchunk, need_dx, dx, dWp[t], dbp[t], cols,
                                 dcols, dyg, tw)


@njit(**JIT_OPTIONS)
def _conv_bwd_gemm_chunk(x, W2, W2T, dy2, Fh, Fw, sh, sw, ph, pw, dh, dw, rb, nblk, G, kdim,
                         Kg, Cg, OH, OW, K, n0, n1, need_dx, dx, dWt, dbt, cols, dcols, dyg,
                         tw):
    """One chunk of images [n0, n1) of _conv_bwd_gemm: its partial sums dWt, dbt, and
    (need_dx) the chunk's images of dx, zeroed here first: the scatter then lands in
    cache, and no one-thread np.zeros pass over all of dx comes before (1 ms of the 4.7 ms
    backward of resnet20's 1x1 stride-2 shortcut, batch 64)."""
    zero = dx.dtype.type(0)
    for n in range(n0, n1):
        if need_dx:
            dxn = dx[n]
            for h in range(dxn.shape[0]):
                for w in range(dxn.shape[1]):
                    for c in range(dxn.shape[2]):
                        dxn[h, w, c] = zero
        for blk in range(nblk):
            r0 = blk * rb
            r1 = min(OH, r0 + rb)
            rows = (r1 - r0) * OW
            base = (n * OH + r0) * OW
            dyb = dy2[base:base + rows]
            if dbt.shape[0]:  # [0]-long: no bias, no sums (the wrapper's need_db)
                for r in range(rows):
                    drow = dyb[r]
                    for k in range(K):
                        dbt[k] += drow[k]
            if OWN_GEMM and _pointwise(Fh, Fw, ph, pw, G, Cg):
                for i in range(r0, r1):  # x's and dx's pixels as they lie: no im2col
                    src = x[n, i * sh, :(OW - 1) * sw + 1:sw]
                    d = dyb[(i - r0) * OW:(i - r0 + 1) * OW]
                    gemm_into(src.T, d, dWt[0], True)
                    if need_dx:
                        gemm_into(d, W2T[0], dx[n, i * sh, :(OW - 1) * sw + 1:sw], False)
                continue
            _im2col_band(x, n, r0, r1, OW, Fh, Fw, sh, sw, ph, pw, dh, dw, G, Cg, cols)
            for g in range(G):
                if G == 1:
                    d = dyb
                else:
                    d = dyg[:rows]
                    k0 = g * Kg
                    for r in range(rows):
                        dst = d[r]
                        src = dyb[r, k0:k0 + Kg]
                        for k in range(Kg):
                            dst[k] = src[k]
                if OWN_GEMM:  # _conv_bwd_gemm_chunk_own adds into the chunk's sums itself
                    gemm_into(cols[g, :rows].T, d, dWt[g], True)
                else:
                    np.dot(cols[g, :rows].T, d, tw)
                    acc = dWt[g].reshape(kdim * Kg)
                    twf = tw.reshape(kdim * Kg)
                    for a in range(kdim * Kg):
                        acc[a] += twf[a]
                if need_dx and OWN_GEMM and kdim % OWN_GEMM_BLOCK == 0:  # W2T: the wrapper's
                    gemm_into(d, W2T[g], dcols[g, :rows], False)
                elif need_dx:
                    np.dot(d, W2[g].T, dcols[g, :rows])
            if need_dx:
                _col2im_band(dcols, n, r0, r1, OW, Fh, Fw, sh, sw, ph, pw, dh, dw,
                             G, Cg, dx)


# ----------------------------------------------------------------------------------
# conv, direct path (depthwise and other tiny groups)
# ----------------------------------------------------------------------------------


@njit(**PARALLEL_JIT_OPTIONS)
def _conv_fwd_direct(x, Wd, b, has_bias, sh, sw, ph, pw, dh, dw, acc_t, y, post_mode, post):
    """Wd[Fh, Fw, Cg, Kg, G]; y[n, i, j, g*Kg + t] = sum x[n, ii, jj, g*Cg + c] Wd[p,q,c,t,g],
    then what it absorbed (as `_post_rows`).

    Innermost loops run over the groups through 1-d views (contiguous when Cg == Kg == 1,
    i.e. depthwise), so they vectorise.
    """
    N, H, W, _ = x.shape
    Fh, Fw, Cg, Kg, G = Wd.shape
    OH = y.shape[1]
    OW = y.shape[2]
    ntask = N * OH
    T = acc_t.shape[0]  # one accumulator [Kg, G] per thread
    zero = y.dtype.type(0)
    for t in prange(T):
        acc = acc_t[t]
        for task in range(t * ntask // T, (t + 1) * ntask // T):
            n = task // OH
            i = task % OH
            for j in range(OW):
                for tk in range(Kg):
                    arow = acc[tk]
                    for g in range(G):
                        arow[g] = b[g * Kg + tk] if has_bias else 0
                for p in range(Fh):
                    ii = i * sh - ph + p * dh
                    if ii < 0 or ii >= H:
                        continue
                    for q in range(Fw):
                        jj = j * sw - pw + q * dw
                        if jj < 0 or jj >= W:
                            continue
                        xrow = x[n, ii, jj]
                        for tk in range(Kg):
                            arow = acc[tk]
                            for c in range(Cg):
                                wv = Wd[p, q, c, tk]
                                if Cg == 1:
                                    for g in range(G):
                                        arow[g] += xrow[g] * wv[g]
                                else:
                                    for g in range(G):
                                        arow[g] += xrow[g * Cg + c] * wv[g]
                yrow = y[n, i, j]
                for tk in range(Kg):
                    arow = acc[tk]
                    for g in range(G):
                        kk = g * Kg + tk
                        v = arow[g]
                        if post_mode & 2:
                            v = (v - post[0, kk]) * post[1, kk] + post[2, kk]
                        if post_mode & 1 and not (v > zero or v != v):
                            v = zero
                        yrow[kk] = v


@njit(**PARALLEL_JIT_OPTIONS)
def _conv_bwd_direct(x, Wd, dy, sh, sw, ph, pw, dh, dw, nchunk, need_dx, dx, dWp, dbp,
                     dyt_t):
    """Adjoint of _conv_fwd_direct; dWp[chunk, Fh, Fw, Cg, Kg, G], dbp[chunk, K] partials.
    One slot per thread (dyt_t[T, Kg, G] its buffer) works through its share of chunks."""
    N, H, W, _ = x.shape
    Fh, Fw, Cg, Kg, G = Wd.shape
    T = dyt_t.shape[0]
    for slot in prange(T):
        dyt = dyt_t[slot]
        for t in range(slot * nchunk // T, (slot + 1) * nchunk // T):
            _conv_bwd_direct_chunk(x, Wd, dy, sh, sw, ph, pw, dh, dw, t * N // nchunk,
                                   (t + 1) * N // nchunk, need_dx, dx, dWp[t], dbp[t], dyt)


@njit(**JIT_OPTIONS)
def _conv_bwd_direct_chunk(x, Wd, dy, sh, sw, ph, pw, dh, dw, n0, n1, need_dx, dx, dWt, dbt,
                           dyt):
    """One chunk of images [n0, n1) of _conv_bwd_direct: its partial sums dWt, dbt."""
    N, H, W, _ = x.shape
    Fh, Fw, Cg, Kg, G = Wd.shape
    OH = dy.shape[1]
    OW = dy.shape[2]
    K = dy.shape[3]
    for n in range(n0, n1):
        for i in range(OH):
            for j in range(OW):
                dyrow = dy[n, i, j]
                for k in range(K):
                    dbt[k] += dyrow[k]
                for tk in range(Kg):  # regroup dy[.., g*Kg + tk] as dyt[tk, g]
                    drow = dyt[tk]
                    for g in range(G):
                        drow[g] = dyrow[g * Kg + tk]
                for p in range(Fh):
                    ii = i * sh - ph + p * dh
                    if ii < 0 or ii >= H:
                        continue
                    for q in range(Fw):
                        jj = j * sw - pw + q * dw
                        if jj < 0 or jj >= W:
                            continue
                        xrow = x[n, ii, jj]
                        dxrow = dx[n, ii, jj] if need_dx else dx[0, 0, 0]  # dummy dx
                        for tk in range(Kg):
                            drow = dyt[tk]
                            for c in range(Cg):
                                dwrow = dWt[p, q, c, tk]
                                wv = Wd[p, q, c, tk]
                                if Cg == 1:
                                    for g in range(G):
                                        dwrow[g] += drow[g] * xrow[g]
                                    if need_dx:
                                        for g in range(G):
                                            dxrow[g] += drow[g] * wv[g]
                                else:
                                    for g in range(G):
                                        dwrow[g] += drow[g] * xrow[g * Cg + c]
                                    if need_dx:
                                        for g in range(G):
                                            dxrow[g * Cg + c] += drow[g] * wv[g]


# ----------------------------------------------------------------------------------
# conv, planar path (first layers: 1-3 input channels, stride 1)
# ----------------------------------------------------------------------------------
#
# A first layer's NHWC im2col copies runs of Fw * C = 9 numbers into rows of 27 (or 25).
# Here a band of output rows first transposes its input rows, zero-padded, into planes
# xp[c, r, s] (s: padded column, Wp of them), so the inputs of tap (p, q, c) along an
# output row are one contiguous run of xp: the columns cols[tap, position] are built
# from runs of OW numbers, and the GEMMs run on them transposed, straight into y's rows
# (forward: y = cols^T @ W2) or from dy's (dW: cols @ dy), with no transpose of y or dy.
# (Columns over the padded width, so that a tap is ONE run per band, measured 1.2-1.5x
# slower: y and dy then need transposing to [K, positions] and back.)


@njit(**JIT_OPTIONS)
def _planar_band(x, n, r0, nr, ph, pw, xp):
    """xp[c, a, s] = x[n, r0 + a - ph, s - pw, c] for a < nr (zero outside the image)."""
    H = x.shape[1]
    W = x.shape[2]
    C = x.shape[3]
    Wp = xp.shape[2]
    zero = x.dtype.type(0)
    for c in range(C):
        for a in range(nr):
            row = xp[c, a]
            r = r0 + a - ph
            if r < 0 or r >= H:
                for t in range(Wp):
                    row[t] = zero
                continue
            xr = x[n, r]
            for t in range(min(pw, Wp)):
                row[t] = zero
            for t in range(min(W, Wp - pw)):
                row[pw + t] = xr[t, c]
            for t in range(min(W + pw, Wp), Wp):
                row[t] = zero


@njit(**JIT_OPTIONS)
def _planar_cols(xp, Fh, Fw, dh, dw, rows, OW, cols):
    """cols[(p * Fw + q) * C + c, i * OW + j] = xp[c, i + p * dh, j + q * dw], i < rows."""
    C = xp.shape[0]
    for c in range(C):
        for p in range(Fh):
            for q in range(Fw):
                dst = cols[(p * Fw + q) * C + c]
                for i in range(rows):
                    src = xp[c, i + p * dh, q * dw:q * dw + OW]
                    d = dst[i * OW:(i + 1) * OW]
                    for t in range(OW):
                        d[t] = src[t]


@njit(**JIT_OPTIONS)
def _planar_col2im(cols, Fh, Fw, dh, dw, rows, OW, xp):
    """Adjoint of _planar_cols: xp (zeroed here) = the columns added back to their taps."""
    C = xp.shape[0]
    xf = xp.reshape(xp.size)
    zero = xp.dtype.type(0)
    for t in range(xf.shape[0]):
        xf[t] = zero
    for c in range(C):
        for p in range(Fh):
            for q in range(Fw):
                src = cols[(p * Fw + q) * C + c]
                for i in range(rows):
                    d = xp[c, i + p * dh, q * dw:q * dw + OW]
                    sv = src[i * OW:(i + 1) * OW]
                    for t in range(OW):
                        d[t] += sv[t]


@njit(**PARALLEL_JIT_OPTIONS)
def _conv_fwd_planar(x, W2, b, Fh, Fw, ph, pw, dh, dw, rb, xp_t, cols_t, y, post_mode, post):
    """y[N, OH, OW, K] = conv(x, W2) + b, stride 1, then what it absorbed (`_post_rows`);
    W2[Fh * Fw * C, K] rows (p, q, c).
    Tasks are bands of rb output rows; one slot per thread with its flat buffers (the `_t`
    arrays, [T, ...], viewed per band as xp[C, nr, Wp] and cols[kdim, rows * OW]). Each
    output is written by one task: any split gives the same bits."""
    N, H, W, C = x.shape
    kdim, K = W2.shape
    OH = y.shape[1]
    OW = y.shape[2]
    Wp = OW + (Fw - 1) * dw
    nblk = (OH + rb - 1) // rb
    ntask = N * nblk
    T = xp_t.shape[0]
    y2 = y.reshape(N * OH * OW, K)
    for t in prange(T):
        for task in range(t * ntask // T, (t + 1) * ntask // T):
            n = task // nblk
            r0 = (task % nblk) * rb
            rows = min(OH, r0 + rb) - r0
            nr = rows + (Fh - 1) * dh
            P = rows * OW
            xp = xp_t[t, :C * nr * Wp].reshape(C, nr, Wp)
            cols = cols_t[t, :kdim * P].reshape(kdim, P)
            _planar_band(x, n, r0, nr, ph, pw, xp)
            _planar_cols(xp, Fh, Fw, dh, dw, rows, OW, cols)
            base = (n * OH + r0) * OW
            out = y2[base:base + P]
            if OWN_GEMM:  # _conv_fwd_planar_own
                gemm_into(cols.T, W2, out, False)
            else:
                np.dot(cols.T, W2, out)
            for r in range(P):
                orow = out[r]
                for k in range(K):
                    orow[k] += b[k]
            if post_mode:
                _post_rows(out, post_mode, post)


@njit(**PARALLEL_JIT_OPTIONS)
def _conv_bwd_planar(x, W2, dy, Fh, Fw, ph, pw, dh, dw, rb, nchunk, need_dx, dx, dWp, dbp,
                     xp_t, cols_t, tw_t):
    """dWp[chunk, Fh * Fw * C, K] and dbp[chunk, K] (zeroed) get per-chunk partial sums;
    chunks own whole images, summed in chunk order by the caller (the same bits for any
    thread count up to nchunk). dx (zeroed, when need_dx) gets the input gradient: cols
    then holds W2 @ dy^T and xp the band's padded input gradient. Buffers as in
    _conv_fwd_planar, plus tw_t[T, kdim, K] for one band's dW."""
    N, H, W, C = x.shape
    kdim, K = W2.shape
    OH = dy.shape[1]
    OW = dy.shape[2]
    Wp = OW + (Fw - 1) * dw
    nblk = (OH + rb - 1) // rb
    T = xp_t.shape[0]
    dy2 = dy.reshape(N * OH * OW, K)
    for slot in prange(T):
        tw = tw_t[slot]
        twf = tw.reshape(kdim * K)
        for ch in range(slot * nchunk // T, (slot + 1) * nchunk // T):
            dWf = dWp[ch].reshape(kdim * K)
            dbt = dbp[ch]
            for n in range(ch * N // nchunk, (ch + 1) * N // nchunk):
                for blk in range(nblk):
                    r0 = blk * rb
                    rows = min(OH, r0 + rb) - r0
                    nr = rows + (Fh - 1) * dh
                    P = rows * OW
                    xp = xp_t[slot, :C * nr * Wp].reshape(C, nr, Wp)
                    cols = cols_t[slot, :kdim * P].reshape(kdim, P)
                    base = (n * OH + r0) * OW
                    d = dy2[base:base + P]
                    if dbt.shape[0]:  # [0]-long: no bias, no sums (need_db)
                        for r in range(P):
                            drow = d[r]
                            for k in range(K):
                                dbt[k] += drow[k]
                    _planar_band(x, n, r0, nr, ph, pw, xp)
                    _planar_cols(xp, Fh, Fw, dh, dw, rows, OW, cols)
                    if OWN_GEMM:  # _conv_bwd_planar_own
                        gemm_into(cols, d, dWp[ch], True)
                    else:
                        np.dot(cols, d, tw)
                        for a in range(kdim * K):
                            dWf[a] += twf[a]
                    if not need_dx:
                        continue
                    np.dot(W2, d.T, cols)
                    _planar_col2im(cols, Fh, Fw, dh, dw, rows, OW, xp)
                    for a in range(nr):
                        r = r0 + a - ph
                        if r < 0 or r >= H:
                            continue
                        for s in range(max(0, pw), min(W + pw, Wp)):
                            dxrow = dx[n, r, s - pw]
                            for c in range(C):
                                dxrow[c] += xp[c, a, s]


# ----------------------------------------------------------------------------------
# locally connected
# ----------------------------------------------------------------------------------


@njit(**JIT_OPTIONS)
def _gather_patches(x, i, j, Fh, Fw, sh, sw, ph, pw, dh, dw, patch):
    """patch[n, (p * Fw + q) * C + c] = x[n, i*sh - ph + p*dh, j*sw - pw + q*dw, c]."""
    N, H, W, C = x.shape
    zero = x.dtype.type(0)
    for n in range(N):
        for p in range(Fh):
            ii = i * sh - ph + p * dh
            for q in range(Fw):
                jj = j * sw - pw + q * dw
                off = (p * Fw + q) * C
                if ii >= 0 and ii < H and jj >= 0 and jj < W:
                    for c in range(C):
                        patch[n, off + c] = x[n, ii, jj, c]
                else:
                    for c in range(C):
                        patch[n, off + c] = zero


@njit(**JIT_OPTIONS)
def _local_w_at(w, i, j, Wt):
    """Wt[k, (p * Fw + q) * C + c] = w[k, i, j, c, p, q] (one position's weights, in cache)."""
    K = w.shape[0]
    C = w.shape[3]
    Fh = w.shape[4]
    Fw = w.shape[5]
    for k in range(K):
        src = w[k, i, j]
        dst = Wt[k]
        for c in range(C):
            for p in range(Fh):
                for q in range(Fw):
                    dst[(p * Fw + q) * C + c] = src[c, p, q]


@njit(**PARALLEL_JIT_OPTIONS)
def _local_fwd(x, w, b, has_bias, sh, sw, ph, pw, dh, dw, patch_t, wt_t, out_t, y):
    """w[K, OH, OW, C, Fh, Fw], b[K, OH, OW]; y[N, OH, OW, K]. Parallel over positions,
    one slot per thread with its buffers (patch_t[T, N, kdim], wt_t[T, K, kdim],
    out_t[T, N, K])."""
    N = x.shape[0]
    K, OH, OW, C, Fh, Fw = w.shape
    P = OH * OW
    T = patch_t.shape[0]
    for t in prange(T):
        patch = patch_t[t]
        Wt = wt_t[t]
        out = out_t[t]
        for pos in range(t * P // T, (t + 1) * P // T):
            i = pos // OW
            j = pos % OW
            _gather_patches(x, i, j, Fh, Fw, sh, sw, ph, pw, dh, dw, patch)
            _local_w_at(w, i, j, Wt)
            np.dot(patch, Wt.T, out)
            for n in range(N):
                orow = out[n]
                yrow = y[n, i, j]
                for k in range(K):
                    yrow[k] = orow[k] + b[k, i, j] if has_bias else orow[k]


@njit(**PARALLEL_JIT_OPTIONS)
def _local_bwd_w(x, dy, sh, sw, ph, pw, dh, dw, patch_t, d_t, g_t, dwt, db):
    """dwt[K, OH, OW, C, Fh, Fw] and db[K, OH, OW] (float64, zeroed); parallel over
    positions (each owns its weights: no reduction across threads), one slot per thread
    with its buffers (patch_t[T, N, kdim], d_t[T, N, K], g_t[T, K, kdim])."""
    N = x.shape[0]
    K, OH, OW, C, Fh, Fw = dwt.shape
    P = OH * OW
    T = patch_t.shape[0]
    for t in prange(T):
        patch = patch_t[t]
        d = d_t[t]
        g = g_t[t]
        for pos in range(t * P // T, (t + 1) * P // T):
            i = pos // OW
            j = pos % OW
            _gather_patches(x, i, j, Fh, Fw, sh, sw, ph, pw, dh, dw, patch)
            for n in range(N):
                src = dy[n, i, j]
                drow = d[n]
                for k in range(K):
                    drow[k] = src[k]
                    db[k, i, j] += src[k]
            np.dot(d.T, patch, g)
            for k in range(K):
                dst = dwt[k, i, j]
                grow = g[k]
                for c in range(C):
                    for p in range(Fh):
                        for q in range(Fw):
                            dst[c, p, q] = grow[(p * Fw + q) * C + c]


@njit(**PARALLEL_JIT_OPTIONS)
def _local_bwd_x(w, dy, sh, sw, ph, pw, dh, dw, d_t, dp_t, wt_t, dx):
    """dx[N, H, W, C] (zeroed) += scatter of dy[n, i, j, :] @ w[:, i, j]; chunks own images
    (so the result does not depend on the chunking). One chunk per thread, with its buffers
    (d_t[T, m, K], dp_t[T, m, kdim], wt_t[T, K, kdim]; m = ceil(N / T))."""
    N, H, W, C = dx.shape
    K, OH, OW, _, Fh, Fw = w.shape
    nchunk = d_t.shape[0]
    for t in prange(nchunk):
        n0 = t * N // nchunk
        n1 = (t + 1) * N // nchunk
        m = n1 - n0
        d = d_t[t, :m]
        dp = dp_t[t, :m]
        Wt = wt_t[t]
        for i in range(OH):
            for j in range(OW):
                for a in range(m):
                    src = dy[n0 + a, i, j]
                    drow = d[a]
                    for k in range(K):
                        drow[k] = src[k]
                _local_w_at(w, i, j, Wt)
                np.dot(d, Wt, dp)
                for p in range(Fh):
                    ii = i * sh - ph + p * dh
                    if ii < 0 or ii >= H:
                        continue
                    for q in range(Fw):
                        jj = j * sw - pw + q * dw
                        if jj < 0 or jj >= W:
                            continue
                        off = (p * Fw + q) * C
                        for a in range(m):
                            dst = dx[n0 + a, ii, jj]
                            src = dp[a, off:off + C]
                            for c in range(C):
                                dst[c] += src[c]


# The kernels with their products through microkernel.py: a run compiles only the copies it
# calls (microkernel.own_gemm_variant). The backward's chunk helper has one of its own.
_conv_bwd_gemm_chunk_own = own_gemm_variant(_conv_bwd_gemm_chunk, JIT_OPTIONS)
_conv_fwd_gemm_own = own_gemm_variant(_conv_fwd_gemm, PARALLEL_JIT_OPTIONS)
_conv_bwd_gemm_own = own_gemm_variant(_conv_bwd_gemm, PARALLEL_JIT_OPTIONS,
                                      _conv_bwd_gemm_chunk=_conv_bwd_gemm_chunk_own)
_conv_fwd_planar_own = own_gemm_variant(_conv_fwd_planar, PARALLEL_JIT_OPTIONS)
_conv_bwd_planar_own = own_gemm_variant(_conv_bwd_planar, PARALLEL_JIT_OPTIONS)


# ----------------------------------------------------------------------------------
# Python wrappers
# ----------------------------------------------------------------------------------


def _pair(v, name):
    try:
        a, b = (int(t) for t in v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of ints, got {v!r}") from None
    return a, b


def _check_x(x, name="x"):
    """An activation array as the kernels take it: NHWC float32/float64, contiguous (the
    Winograd kernels check theirs with it too)."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"{name} must be NHWC (4-d), got shape {x.shape}")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")
    return np.ascontiguousarray(x)


def _as(a, dtype, name):
    """`a` contiguous in the input's dtype; a different dtype is refused, not cast."""
    a = np.asarray(a)
    if a.dtype != dtype:
        raise TypeError(f"{name} has dtype {a.dtype}, expected {dtype} (the input's)")
    return np.ascontiguousarray(a)


def _geometry(stride, pad, dilation):
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(pad, "pad")
    dh, dw = _pair(dilation, "dilation")
    if sh < 1 or sw < 1 or dh < 1 or dw < 1 or ph < 0 or pw < 0:
        raise ValueError(f"bad geometry stride={stride} pad={pad} dilation={dilation}")
    return sh, sw, ph, pw, dh, dw


def _check_conv_w(x, w, groups):
    w = _as(w, x.dtype, "w")
    if w.ndim != 4:
        raise ValueError(f"conv weight must be OIHW (4-d), got shape {w.shape}")
    G = int(groups)
    C = x.shape[3]
    K, Cg, Fh, Fw = w.shape
    if G < 1 or C % G or K % G or Cg != C // G:
        raise ValueError(
            f"groups={groups}: need C={C} and K={K} divisible by groups and "
            f"w.shape[1] == C // groups, got w.shape={w.shape}"
        )
    return w, G


def _use_direct(Cg, Kg, G):
    return use_direct(Cg, Kg, G)


def _gemm_weights(w, G):
    """OIHW -> W2[G, Fh*Fw*Cg, Kg] with rows ordered (p, q, c)."""
    K, Cg, Fh, Fw = w.shape
    Kg = K // G
    return np.ascontiguousarray(
        w.reshape(G, Kg, Cg, Fh, Fw).transpose(0, 3, 4, 2, 1).reshape(G, Fh * Fw * Cg, Kg)
    )


def _direct_weights(w, G):
    """OIHW -> Wd[Fh, Fw, Cg, Kg, G]."""
    K, Cg, Fh, Fw = w.shape
    return np.ascontiguousarray(w.reshape(G, K // G, Cg, Fh, Fw).transpose(3, 4, 2, 1, 0))


def _band_rows(OH, OW, G, kdim, itemsize):
    return band_rows(OH, OW, G, kdim, itemsize)


def _own_gemm(kdim, kg, x):
    """Whether this conv's GEMMs run on microkernel.py rather than OpenBLAS (sizes.py)."""
    return sizes.own_gemm(kdim, kg, x.itemsize, microkernel.WIDE, blas_narrower_than_jit())


def _own_planar(kdim, kg, x):
    """Whether a planar layer's GEMMs run on microkernel.py rather than OpenBLAS."""
    return sizes.own_planar(kdim, kg, x.itemsize, blas_narrower_than_jit())


def _threads():
    return int(numba.get_num_threads())


def _nchunk(N):
    return chunks(N, _threads())


def _out_hw(out_hw):
    OH, OW = _pair(out_hw, "out_hw")
    if OH < 1 or OW < 1:
        raise ValueError(f"out_hw must be positive, got {out_hw}")
    return OH, OW


def post_ops(K, dtype, relu=False, affine=None):
    """(post_mode, post[3, K]) for the forward kernels: `affine` = (m, a, b), each [K] in
    the activations' dtype, is batchnorm in evaluation, y = (y - m) * a + b; then `relu`."""
    mode = (POST_AFFINE if affine is not None else 0) | (POST_RELU if relu else 0)
    if affine is None:  # the kernels read post only under POST_AFFINE: a stand-in
        return mode, np.zeros((3, 1), dtype)
    post = np.stack([_as(v, dtype, "affine").reshape(-1) for v in affine])
    if post.shape != (3, K):
        raise ValueError(f"affine must be three vectors of {K} numbers, got {post.shape}")
    return mode, post


def conv2d_forward(x, w, b, stride, pad, dilation, groups, out_hw, relu=False, affine=None):
    """y[N, OH, OW, K] = conv2d(x[N, H, W, C], w[K, C//groups, Fh, Fw]) + b[K]; then, in the
    same pass, with `affine` = (m, a, b) the batchnorm after it in evaluation,
    (y - m) * a + b, and with `relu` max(y, 0): bit for bit the layers apart."""
    ensure_configured()
    x = _check_x(x)
    w, G = _check_conv_w(x, w, groups)
    sh, sw, ph, pw, dh, dw = _geometry(stride, pad, dilation)
    OH, OW = _out_hw(out_hw)
    N = x.shape[0]
    K, Cg, Fh, Fw = w.shape
    has_bias = b is not None
    bb = _as(b, x.dtype, "b").reshape(-1) if has_bias else np.zeros(K, x.dtype)
    if bb.shape != (K,):
        raise ValueError(f"bias must have shape ({K},), got {np.shape(b)}")
    y = np.empty((N, OH, OW, K), dtype=x.dtype)
    if N == 0:
        return y
    if _use_direct(Cg, K // G, G):
        Wd = _direct_weights(w, G)
        T = min(_threads(), N * OH)  # each thread's accumulator, allocated here, not in it
        acc = np.empty((T, K // G, G), dtype=x.dtype)
        _conv_fwd_direct(x, Wd, bb, has_bias, sh, sw, ph, pw, dh, dw, acc, y,
                         *post_ops(K, x.dtype, relu, affine))
    else:
        W2 = _gemm_weights(w, G)
        kdim = W2.shape[1]
        rb = _band_rows(OH, OW, G, kdim, x.itemsize)
        T = min(_threads(), N * (-(-OH // rb)))  # each thread's im2col band
        cols = np.empty((T, G, rb * OW, kdim), dtype=x.dtype)
        tmp = np.empty((T, rb * OW, K // G), dtype=x.dtype)
        kernel = _conv_fwd_gemm_own if _own_gemm(kdim, K // G, x) else _conv_fwd_gemm
        kernel(x, W2, bb, has_bias, Fh, Fw, sh, sw, ph, pw, dh, dw, rb, cols, tmp, y,
               *post_ops(K, x.dtype, relu, affine))
    return y


def conv2d_backward(x, w, dy, stride, pad, dilation, groups, need_dx=True, need_db=True):
    """Gradients of conv2d_forward: (dx[N,H,W,C] or None, dw[K,C//g,Fh,Fw], db[K] or None).

    need_db=False (a bias-free layer): db is None, and the GEMM path skips its float64
    sums over dy."""
    ensure_configured()
    x = _check_x(x)
    w, G = _check_conv_w(x, w, groups)
    sh, sw, ph, pw, dh, dw = _geometry(stride, pad, dilation)
    dy = _as(dy, x.dtype, "dy")
    N = x.shape[0]
    K, Cg, Fh, Fw = w.shape
    Kg = K // G
    if dy.ndim != 4 or dy.shape[0] != N or dy.shape[3] != K:
        raise ValueError(f"dy must have shape (N={N}, OH, OW, K={K}), got {dy.shape}")
    OH, OW = dy.shape[1], dy.shape[2]
    gemm = not (N == 0 or OH == 0 or OW == 0 or _use_direct(Cg, Kg, G))
    if not need_dx:
        dx = np.zeros((1, 1, 1, 1), x.dtype)
    else:  # the GEMM kernel zeroes each image of dx itself, just before it scatters into it
        dx = np.empty_like(x) if gemm else np.zeros_like(x)
    nchunk = _nchunk(N)
    # the direct kernel always sums db; the GEMM kernel only into a K-long dbp
    dbp = np.zeros((nchunk, K if need_db or not gemm else 0), dtype=np.float64)
    if N == 0 or OH == 0 or OW == 0:
        dwt = np.zeros_like(w)
    elif _use_direct(Cg, Kg, G):
        Wd = _direct_weights(w, G)
        dWp = np.zeros((nchunk,) + Wd.shape, dtype=x.dtype)
        dyt = np.empty((min(_threads(), nchunk), Kg, G), dtype=x.dtype)
        _conv_bwd_direct(x, Wd, dy, sh, sw, ph, pw, dh, dw, nchunk, bool(need_dx), dx, dWp,
                         dbp, dyt)
        dWd = _sum_chunks(dWp)  # [Fh, Fw, Cg, Kg, G]
        dwt = np.ascontiguousarray(dWd.transpose(4, 3, 2, 0, 1).reshape(K, Cg, Fh, Fw))
    else:
        W2 = _gemm_weights(w, G)
        kdim = W2.shape[1]
        rb = _band_rows(OH, OW, G, kdim, x.itemsize)
        dWp = np.zeros((nchunk, G, kdim, Kg), dtype=x.dtype)
        T = min(_threads(), nchunk)  # each thread's band buffers, allocated here, not in it
        band = rb * OW
        own = _own_gemm(kdim, Kg, x)
        kernel = _conv_bwd_gemm_own if own else _conv_bwd_gemm
        # dx's product (dy @ W2^T, kdim wide) on the own kernel, where kdim fills its
        # blocks (sizes.own_gemm_dx), reads W2's transpose with unit stride: laid out here
        # whatever kernel runs, as the memory plan counts it; np.dot reads W2 as it lies
        W2T = (np.ascontiguousarray(W2.transpose(0, 2, 1))
               if need_dx and sizes.own_gemm_dx(kdim, Kg, x.itemsize) else W2)
        kernel(x, W2, W2T, dy, Fh, Fw, sh, sw, ph, pw, dh, dw, rb, nchunk, bool(need_dx), dx,
               dWp, dbp, np.empty((T, G, band, kdim), dtype=x.dtype),
               np.empty((T, G, band, kdim), dtype=x.dtype),
               np.empty((T, band, Kg), dtype=x.dtype), np.empty((T, kdim, Kg), dtype=x.dtype))
        dW2 = _sum_chunks(dWp)  # [G, (p, q, c), Kg]
        dwt = np.ascontiguousarray(
            dW2.reshape(G, Fh, Fw, Cg, Kg).transpose(0, 4, 3, 1, 2).reshape(K, Cg, Fh, Fw)
        )
    db = dbp.sum(axis=0).astype(x.dtype) if need_db else None
    return (dx if need_dx else None), dwt, db


def conv2d_forward_planar(x, w, b, pad, dilation, out_hw, relu=False, affine=None):
    """conv2d_forward for stride 1, groups 1 by the planar kernel (first layers)."""
    ensure_configured()
    x = _check_x(x)
    w, _ = _check_conv_w(x, w, 1)
    _, _, ph, pw, dh, dw = _geometry((1, 1), pad, dilation)
    OH, OW = _out_hw(out_hw)
    N = x.shape[0]
    K, C, Fh, Fw = w.shape
    bb = _as(b, x.dtype, "b").reshape(-1) if b is not None else np.zeros(K, x.dtype)
    if bb.shape != (K,):
        raise ValueError(f"bias must have shape ({K},), got {np.shape(b)}")
    y = np.empty((N, OH, OW, K), dtype=x.dtype)
    if N == 0 or K == 0:
        return y
    Wp, rb, nr, P = sizes.planar_geometry(OH, OW, Fh, Fw, dh, dw, C, x.itemsize)
    T = min(_threads(), N * -(-OH // rb))  # each thread's band, allocated here, not in it
    dt = x.dtype
    kernel = _conv_fwd_planar_own if _own_planar(Fh * Fw * C, K, x) else _conv_fwd_planar
    kernel(x, _gemm_weights(w, 1)[0], bb, Fh, Fw, ph, pw, dh, dw, rb,
           np.empty((T, C * nr * Wp), dt), np.empty((T, Fh * Fw * C * P), dt), y,
           *post_ops(K, dt, relu, affine))
    return y


def conv2d_backward_planar(x, w, dy, pad, dilation, need_dx=True, need_db=True):
    """Gradients of conv2d_forward_planar, as conv2d_backward returns them (db None, and
    no sums over dy, with need_db=False)."""
    ensure_configured()
    x = _check_x(x)
    w, _ = _check_conv_w(x, w, 1)
    _, _, ph, pw, dh, dw = _geometry((1, 1), pad, dilation)
    dy = _as(dy, x.dtype, "dy")
    N = x.shape[0]
    K, C, Fh, Fw = w.shape
    if dy.ndim != 4 or dy.shape[0] != N or dy.shape[3] != K:
        raise ValueError(f"dy must have shape (N={N}, OH, OW, K={K}), got {dy.shape}")
    OH, OW = dy.shape[1], dy.shape[2]
    dx = np.zeros_like(x) if need_dx else np.zeros((1, 1, 1, 1), x.dtype)
    nchunk = _nchunk(N)
    dbp = np.zeros((nchunk, K if need_db else 0), dtype=np.float64)
    kdim = Fh * Fw * C
    dWp = np.zeros((nchunk, kdim, K), dtype=x.dtype)
    if N and OH and OW and K:
        Wp, rb, nr, P = sizes.planar_geometry(OH, OW, Fh, Fw, dh, dw, C, x.itemsize)
        T = min(_threads(), nchunk)  # each thread's band, allocated here, not in it
        dt = x.dtype
        kernel = _conv_bwd_planar_own if _own_planar(kdim, K, x) else _conv_bwd_planar
        kernel(x, _gemm_weights(w, 1)[0], dy, Fh, Fw, ph, pw, dh, dw, rb, nchunk,
               bool(need_dx), dx, dWp, dbp, np.empty((T, C * nr * Wp), dt),
               np.empty((T, kdim * P), dt), np.empty((T, kdim, K), dt))
    dW2 = _sum_chunks(dWp)  # [(p, q, c), K]
    dwt = np.ascontiguousarray(dW2.reshape(Fh, Fw, C, K).transpose(3, 2, 0, 1))
    db = dbp.sum(axis=0).astype(x.dtype) if need_db else None
    return (dx if need_dx else None), dwt, db

def _sum_chunks(parts):
    """Sum per-chunk partials in chunk order (deterministic)."""
    out = parts[0].copy()
    for t in range(1, parts.shape[0]):
        out += parts[t]
    return out


def _check_local_w(x, w, out_hw):
    w = _as(w, x.dtype, "w")
    if w.ndim != 6:
        raise ValueError(f"local weight must be [K, OH, OW, C, Fh, Fw], got shape {w.shape}")
    if w.shape[3] != x.shape[3]:
        raise ValueError(f"local weight has C={w.shape[3]}, input has C={x.shape[3]}")
    if out_hw is not None and tuple(w.shape[1:3]) != tuple(out_hw):
        raise ValueError(f"local weight is for output {w.shape[1:3]}, out_hw={out_hw}")
    return w


def local2d_forward(x, w, b, stride, pad, dilation, out_hw):
    """Locally connected layer: y[N, OH, OW, K], weights w[K, OH, OW, C, Fh, Fw],
    bias b[K, OH, OW] (or None)."""
    ensure_configured()
    x = _check_x(x)
    OH, OW = _out_hw(out_hw)
    w = _check_local_w(x, w, (OH, OW))
    sh, sw, ph, pw, dh, dw = _geometry(stride, pad, dilation)
    N = x.shape[0]
    K, _, _, C, Fh, Fw = w.shape
    has_bias = b is not None
    if has_bias:
        bb = _as(b, x.dtype, "b")
        if bb.shape != (K, OH, OW):
            raise ValueError(f"local bias must have shape {(K, OH, OW)}, got {bb.shape}")
    else:
        bb = np.zeros((1, 1, 1), x.dtype)
    y = np.empty((N, OH, OW, K), dtype=x.dtype)
    if N == 0:
        return y
    T = min(_threads(), OH * OW)  # each thread's buffers, allocated here, not in it
    kdim = Fh * Fw * C
    _local_fwd(x, w, bb, has_bias, sh, sw, ph, pw, dh, dw, np.empty((T, N, kdim), x.dtype),
               np.empty((T, K, kdim), x.dtype), np.empty((T, N, K), x.dtype), y)
    return y


def local2d_backward(x, w, dy, stride, pad, dilation, need_dx=True):
    """Gradients of local2d_forward: (dx or None, dw[K, OH, OW, C, Fh, Fw], db[K, OH, OW])."""
    ensure_configured()
    x = _check_x(x)
    w = _check_local_w(x, w, None)
    sh, sw, ph, pw, dh, dw = _geometry(stride, pad, dilation)
    dy = _as(dy, x.dtype, "dy")
    N = x.shape[0]
    K, OH, OW, C, Fh, Fw = w.shape
    if dy.shape != (N, OH, OW, K):
        raise ValueError(f"dy must have shape {(N, OH, OW, K)}, got {dy.shape}")
    dwt = np.zeros_like(w)
    dbl = np.zeros((K, OH, OW), dtype=np.float64)
    dx = np.zeros_like(x) if need_dx else None
    if N > 0:
        kdim = Fh * Fw * C
        T = min(_threads(), OH * OW)
        _local_bwd_w(x, dy, sh, sw, ph, pw, dh, dw, np.empty((T, N, kdim), x.dtype),
                     np.empty((T, N, K), x.dtype), np.empty((T, K, kdim), x.dtype), dwt, dbl)
        if dx is not None:
            nchunk = max(1, min(N, _threads()))  # chunks own images: any count gives the same bits
            m = -(-N // nchunk)
            _local_bwd_x(w, dy, sh, sw, ph, pw, dh, dw, np.empty((nchunk, m, K), x.dtype),
                         np.empty((nchunk, m, kdim), x.dtype),
                         np.empty((nchunk, K, kdim), x.dtype), dx)
    db = dbl.astype(x.dtype)
    return dx, dwt, db
