"""Winograd minimal filtering for 3x3 stride-1 convolutions, NHWC, float32/float64.

Public wrappers (plain Python: validate, allocate, call the @njit kernels):

    winograd_filter_transform(w, tile=4) -> u
    winograd_conv_forward(x, w, b, pad, tile=4, u=None, relu=False, affine=None) -> y
    winograd_conv_backward_data(dy, w, pad, tile=4) -> dx
    winograd_conv_backward_weights(x, dy, pad, tile=4) -> dw
    winograd_conv_backward_params(x, dy, pad, tile=4, need_db=True) -> (dw, db or None)

Shapes as in cnncli.engine.kernels.conv: x[N, H, W, C], y/dy[N, OH, OW, K] with OH = H + 2*pad - 2
and OW = W + 2*pad - 2, weights OIHW ``w[K, C, 3, 3]``, bias ``b[K]`` or None. Stride 1,
dilation 1, groups 1; ``pad`` (0, 1 or 2) zero-pads every side. Same results as
conv2d_forward / conv2d_backward up to rounding; ``tile`` is m in F(m x m, 3 x 3), 4 or 2.

Algorithm (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks"): an
m x m output tile is computed from its alpha x alpha input tile d (alpha = m + 2) as

    Y = A^T [ (G g G^T) . (B^T d B) ] A        (. is the elementwise product)

Summed over input channels, the elementwise product becomes alpha^2 independent GEMMs
M[e] = V[e] @ U[e] ([tiles x C] by [C x K]) with V = B^T d B per tile and channel and
U = G g G^T per filter: 16 multiplies per output where direct convolution needs 36
(F(4x4): 4x fewer), or 2.25x fewer for F(2x2). dx is the same convolution of dy with the
flipped, transposed filter; dW sums G^T [ (B^T d B) . (A dy A^T) ] G over tiles, again
alpha^2 GEMMs ([C x tiles] by [tiles x K]).

Design (measured on the 2-core target, see bench/bench_winograd.py):

* Fused: ``prange`` over ranges of blocks; a block is a few consecutive tile rows
  (about sizes.WINOGRAD_BLOCK_TILES tiles, across images when images are small). Per
  block: input transform into V[e, tile, c] (in cache), alpha^2 tile products
  ([tiles x C] by [C x K]; see below), output transform straight into y. Whole-batch
  V and M arrays through memory measured 0.4-1.0x of direct convolution: the
  transforms decide, not the GEMMs.
* Each transform is separable: B^T (or A^T) down the rows of a whole tile row at once,
  then along the columns, both as long vectorised loops over a tile row in "phase
  layout" (see the comment above the transforms). Hand-simplified formulas, no
  matrix loops. That halved the transforms' time against a loop per tile.
* float32 F(4x4) layers with channels in multiples of 16 (every CIFAR ResNet and VGG
  layer) instead transform each tile on 16 channels at a time in vector registers
  (winograd_vec.py, `vec_in` / `vec_out` / `vec_grad`; no phase layout): the same
  operations in the same order, so bit-identical, and 1.5-3x faster per transform at
  16-64 channels, where the phase-layout bookkeeping had become most of the work. Per
  call against the stages (bench/ab_kernels.py --module winograd, 2026-11-29, the EPYC
  VM): forward 1.05-1.19x, dx 1.05-1.19x, dW 0.92-1.11x at resnet20's sizes; a resnet20
  training step 1.06-1.10x.
* V and M get one spare tile row: with 32 tiles of 32 float32 channels their alpha^2
  slices would lie exactly 4 KiB apart, and the six stores of a column transform then
  alias in L1 (measured 1.25x slower input transform at 32 channels, no gain elsewhere).
* dW: fixed chunks of blocks (``min(blocks, max(threads, MIN_CHUNKS))``) each sum their
  alpha^2 GEMMs into their own S; the wrapper adds the chunks' S up in chunk order and
  takes the sum to the 3x3 taps with one GEMM (G's products are linear: once, not once a
  chunk, which had cost up to 14% of a 64-channel layer's multiply-adds): bit-identical
  run to run and across thread counts up to MIN_CHUNKS. Forward and dx write disjoint
  outputs: any split gives the same bits.
* The tile products: float32 runs them through microkernel.py (the engine's own
  register-blocked kernel, LLVM vector IR) wherever numba compiles for AVX-512
  (sizes.own_winograd has the measurements), as `gemm_rows` / `gemm_cols` when the
  channels come in 16s (no checks, no leftover columns) and `gemm_into` otherwise; float64
  (gradcheck) and AVX2-only machines through np.dot. Each way is its own compiled copy of
  the kernels (`_wino_fwd_own`, microkernel.own_gemm_variant), so a run compiles one.
  Plain numba loops in np.dot's place (vectorised over K, four terms per store, several
  tiles per pass, one scalar accumulator per filter) had measured 2-5x slower per product
  than OpenBLAS's SkylakeX kernel; microkernel.py says why. dW adds each block's products
  into the chunk's sums in the kernel (np.dot needs the `tmp` buffer and an add pass;
  float64 still does).
* float32 error grows with the tile (transform entries up to 8 and 1/24): measured against
  float64 direct convolution on CIFAR layer sizes it stays near 1e-5 relative for F(4x4);
  see the bench's error table.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from numba import njit, prange

from cnncli.config import (
    JIT_OPTIONS,
    PARALLEL_JIT_OPTIONS,
    ensure_configured,
)
from cnncli.engine.kernels import microkernel, sizes  # sizes: shared with the memory plans
from cnncli.engine.kernels.conv import _as, _check_x, _post_rows, post_ops
from cnncli.engine.kernels.microkernel import (
    OWN_GEMM,
    gemm_cols,
    gemm_into,
    gemm_rows,
    own_gemm_variant,
)
from cnncli.engine.kernels.winograd_vec import grad_tiles, in_tiles, out_tiles, usable

__all__ = [
    "winograd_filter_transform",
    "winograd_conv_forward",
    "winograd_conv_backward_data",
    "winograd_conv_backward_weights",
    "winograd_conv_backward_params",
]

TILES = (2, 4)

# ----------------------------------------------------------------------------------
# transform matrices
# ----------------------------------------------------------------------------------
#
# Derivation (Toom-Cook, as in Lavin & Gray section 4). Multiplying a polynomial h of
# degree m-1 by the filter polynomial g of degree r-1 = 2 gives s = h g of degree
# alpha-1, alpha = m + 2: evaluate h and g at alpha points, multiply the values, and
# interpolate. With "infinity" as the last point (the value there is the leading
# coefficient):
#
#     s = L [ (G g) . (A h) ],   A[j] = (1, p_j, ..., p_j^(m-1)),  G[j] = (1, p_j, p_j^2),
#                                A[inf] = (0, ..., 0, 1), G[inf] = (0, 0, 1),
#                                L = inverse of the alpha x alpha Vandermonde matrix.
#
# Linear convolution s_j = sum_i h_i g_(j-i) is that map h -> s; its transpose maps d to
# y_i = sum_k g_k d_(i+k), the correlation a conv layer computes. Transposing gives
#
#     y = A^T [ (G g) . (B^T d) ],   B^T = L^T,
#
# and nesting it over rows and columns gives the 2-d form above. Scaling row j of G by
# s_j and column j of L by 1/s_j changes nothing, which buys small integers in B^T.
#
# F(2x2, 3x3): points 0, 1, -1, inf.
# F(4x4, 3x3): points 0, 1, -1, 2, -2, inf (1/2 and -1/2 would also do; these keep B^T
# and A^T in small integers, and the fractions in G, where they cost nothing per call).
# tests/test_kernels_winograd.py rebuilds both from their points and checks the identity.

_BT2 = np.array([[1, 0, -1, 0],
                 [0, 1, 1, 0],
                 [0, -1, 1, 0],
                 [0, 1, 0, -1]], dtype=np.float64)
_G2 = np.array([[1, 0, 0],
                [1 / 2, 1 / 2, 1 / 2],
                [1 / 2, -1 / 2, 1 / 2],
                [0, 0, 1]], dtype=np.float64)
_AT2 = np.array([[1, 1, 1, 0],
                 [0, 1, -1, -1]], dtype=np.float64)

_BT4 = np.array([[4, 0, -5, 0, 1, 0],
                 [0, -4, -4, 1, 1, 0],
                 [0, 4, -4, -1, 1, 0],
                 [0, -2, -1, 2, 1, 0],
                 [0, 2, -1, -2, 1, 0],
                 [0, 4, 0, -5, 0, 1]], dtype=np.float64)
_G4 = np.array([[1 / 4, 0, 0],
                [-1 / 6, -1 / 6, -1 / 6],
                [-1 / 6, 1 / 6, -1 / 6],
                [1 / 24, 1 / 12, 1 / 6],
                [1 / 24, -1 / 12, 1 / 6],
                [0, 0, 1]], dtype=np.float64)
_AT4 = np.array([[1, 1, 1, 1, 1, 0],
                 [0, 1, -1, 2, -2, 0],
                 [0, 1, 1, 4, 4, 0],
                 [0, 1, -1, 8, -8, 1]], dtype=np.float64)


def transform_matrices(tile):
    """(A^T, G, B^T) of F(tile x tile, 3 x 3), float64 copies. The kernels hard-code them."""
    if tile == 4:
        return _AT4.copy(), _G4.copy(), _BT4.copy()
    if tile == 2:
        return _AT2.copy(), _G2.copy(), _BT2.copy()
    raise ValueError(f"tile must be 2 or 4, got {tile!r}")


# ----------------------------------------------------------------------------------
# njit transforms
# ----------------------------------------------------------------------------------
#
# Each 2-d transform is separable: first down the rows of a whole tile row ("rows" stages:
# 2-d arrays [row, flattened column x channel], one long loop), then along each tile's
# columns ("cols" stages). NHWC interleaves columns with channels and tiles start every
# m columns, so a tile row is first copied into *phase layout*:
#
#     P[row, ((u % m) * KS + u // m) * C + c] = column u, channel c    (KS slots a phase)
#
# where column b of tile t lies at o_b + t * C + c: a cols stage is then one loop over all
# tiles and channels of a row. A loop per tile (C long) measured 3-4x slower at 32
# channels: LLVM checks the twelve load/store streams for overlap once per loop. The input
# is not copied into phase layout first: its rows stage reads the image rows and writes its
# results there (`_in_rows`, and `_grad_rows` for dy in dW), one loop per column; the
# output's rows stage reads phase layout and writes NHWC rows (`_out_rows`). That measured
# 1.00-1.10x per call against copying into and out of phase layout around the rows stages
# (bench/ab_kernels.py --module winograd, 2026-11-29, the EPYC VM: forward, dx and dW at
# resnet20's sizes, bit-identical).
# Offsets into the innermost index are unsigned, so numba emits no negative-index
# wraparound there (signed offsets measured 2-4x slower), and constants are cast to the
# array dtype so float32 arithmetic stays float32.


@njit(**JIT_OPTIONS)
def _in_rows(src, base, nrows, r0, shift, m, KS, C, zero, dst):
    """dst[a] = B^T d down the alpha image rows r0 .. r0 + alpha - 1 (src rows base ..
    base + nrows, each W * C long; rows outside the image read as `zero`), written straight
    into phase layout, column j at u = j + shift: slot u // m of phase u % m. Slots no
    column maps to are the padding: never written (zeroed once by the wrapper)."""
    W = src.shape[1] // C
    two = src.dtype.type(2)
    four = src.dtype.type(4)
    five = src.dtype.type(5)
    s0 = src[base + r0] if 0 <= r0 < nrows else zero
    s1 = src[base + r0 + 1] if 0 <= r0 + 1 < nrows else zero
    s2 = src[base + r0 + 2] if 0 <= r0 + 2 < nrows else zero
    s3 = src[base + r0 + 3] if 0 <= r0 + 3 < nrows else zero
    ph = shift % m  # column j + shift is slot k of phase ph (counted, not divided: two
    k = shift // m  # integer divisions per column cost more than the column's work)
    if m == 4:
        s4 = src[base + r0 + 4] if 0 <= r0 + 4 < nrows else zero
        s5 = src[base + r0 + 5] if 0 <= r0 + 5 < nrows else zero
        d_0 = dst[0]
        d_1 = dst[1]
        d_2 = dst[2]
        d_3 = dst[3]
        d_4 = dst[4]
        d_5 = dst[5]
        for j in range(W):
            do = np.uint64((ph * KS + k) * C)
            so = np.uint64(j * C)
            for c in range(np.uint64(C)):
                d0 = s0[so + c]
                d1 = s1[so + c]
                d2 = s2[so + c]
                d3 = s3[so + c]
                d4 = s4[so + c]
                d5 = s5[so + c]
                p = d4 - four * d2
                q = d3 - four * d1
                s = d4 - d2
                t = two * (d3 - d1)
                o = do + c
                d_0[o] = four * d0 - five * d2 + d4
                d_1[o] = p + q
                d_2[o] = p - q
                d_3[o] = s + t
                d_4[o] = s - t
                d_5[o] = four * d1 - five * d3 + d5
            ph += 1
            if ph == m:
                ph = 0
                k += 1
    else:
        d_0 = dst[0]
        d_1 = dst[1]
        d_2 = dst[2]
        d_3 = dst[3]
        for j in range(W):
            do = np.uint64((ph * KS + k) * C)
            so = np.uint64(j * C)
            for c in range(np.uint64(C)):
                d0 = s0[so + c]
                d1 = s1[so + c]
                d2 = s2[so + c]
                d3 = s3[so + c]
                o = do + c
                d_0[o] = d0 - d2
                d_1[o] = d1 + d2
                d_2[o] = d2 - d1
                d_3[o] = d1 - d3
            ph += 1
            if ph == m:
                ph = 0
                k += 1


@njit(**JIT_OPTIONS)
def _in_cols(src, m, KS, C, L, V2, e, do):
    """V2[e + nu, do + i] = sum_b src[o_b + i] * B[b, nu] for i < L = tiles * C: row a of
    (B^T d) B for every tile of a tile row (src: row a in phase layout, KS slots)."""
    two = src.dtype.type(2)
    four = src.dtype.type(4)
    five = src.dtype.type(5)
    o0 = np.uint64(0)
    o1 = np.uint64(KS * C)
    ud = np.uint64(do)
    if m == 4:
        o2 = np.uint64(2 * KS * C)
        o3 = np.uint64(3 * KS * C)
        o4 = np.uint64(C)
        o5 = np.uint64((KS + 1) * C)
        for i in range(np.uint64(L)):
            d0 = src[o0 + i]
            d1 = src[o1 + i]
            d2 = src[o2 + i]
            d3 = src[o3 + i]
            d4 = src[o4 + i]
            d5 = src[o5 + i]
            p = d4 - four * d2
            q = d3 - four * d1
            s = d4 - d2
            t = two * (d3 - d1)
            j = ud + i
            V2[e, j] = four * d0 - five * d2 + d4
            V2[e + 1, j] = p + q
            V2[e + 2, j] = p - q
            V2[e + 3, j] = s + t
            V2[e + 4, j] = s - t
            V2[e + 5, j] = four * d1 - five * d3 + d5
    else:
        o2 = np.uint64(C)
        o3 = np.uint64((KS + 1) * C)
        for i in range(np.uint64(L)):
            d0 = src[o0 + i]
            d1 = src[o1 + i]
            d2 = src[o2 + i]
            d3 = src[o3 + i]
            j = ud + i
            V2[e, j] = d0 - d2
            V2[e + 1, j] = d1 + d2
            V2[e + 2, j] = d2 - d1
            V2[e + 3, j] = d1 - d3


@njit(**JIT_OPTIONS)
def _out_cols(M2, e, so, m, L, dst):
    """dst[b * L + i] = sum_nu M2[e + nu, so + i] * A[nu, b] for i < L = tiles * K: row a
    of M A for every tile of a tile row, written in phase layout (b: output column)."""
    two = M2.dtype.type(2)
    four = M2.dtype.type(4)
    eight = M2.dtype.type(8)
    us = np.uint64(so)
    uL = np.uint64(L)
    if m == 4:
        for i in range(uL):
            j = us + i
            m0 = M2[e, j]
            m1 = M2[e + 1, j]
            m2 = M2[e + 2, j]
            m3 = M2[e + 3, j]
            m4 = M2[e + 4, j]
            m5 = M2[e + 5, j]
            p = m1 + m2
            q = m1 - m2
            s = m3 + m4
            w = m3 - m4
            dst[i] = m0 + p + s
            dst[uL + i] = q + two * w
            dst[np.uint64(2) * uL + i] = p + four * s
            dst[np.uint64(3) * uL + i] = q + eight * w + m5
    else:
        for i in range(uL):
            j = us + i
            m1 = M2[e + 1, j]
            m2 = M2[e + 2, j]
            dst[i] = M2[e, j] + m1 + m2
            dst[uL + i] = m1 - m2 - M2[e + 3, j]


@njit(**JIT_OPTIONS)
def _out_rows(src, m, bias, TW, K, OW, dst, r0, nrows):
    """dst[r0 + i, j * K + k] = sum_a A^T[i, a] * src[a, s] + bias[s], s = (ph * TW + t) * K
    + k, for output column j = t * m + ph < OW and i < nrows: A^T (M A) down the rows,
    read from phase layout (src, bias) and written straight into NHWC rows."""
    two = src.dtype.type(2)
    four = src.dtype.type(4)
    eight = src.dtype.type(8)
    ph = 0  # column j is slot t of phase ph
    t = 0
    for j in range(OW):
        so = np.uint64((ph * TW + t) * K)
        do = np.uint64(j * K)
        if m == 4 and nrows == 4:
            d0 = dst[r0]
            d1 = dst[r0 + 1]
            d2 = dst[r0 + 2]
            d3 = dst[r0 + 3]
            for k in range(np.uint64(K)):
                i = so + k
                m0 = src[0, i]
                m1 = src[1, i]
                m2 = src[2, i]
                m3 = src[3, i]
                m4 = src[4, i]
                m5 = src[5, i]
                bj = bias[i]
                p = m1 + m2
                q = m1 - m2
                s = m3 + m4
                w = m3 - m4
                o = do + k
                d0[o] = m0 + p + s + bj
                d1[o] = q + two * w + bj
                d2[o] = p + four * s + bj
                d3[o] = q + eight * w + m5 + bj
        elif m == 4:  # the image's last tile row, cut short
            for r in range(nrows):
                d = dst[r0 + r]
                for k in range(np.uint64(K)):
                    i = so + k
                    m1 = src[1, i]
                    m2 = src[2, i]
                    m3 = src[3, i]
                    m4 = src[4, i]
                    bj = bias[i]
                    if r == 0:
                        v = src[0, i] + (m1 + m2) + (m3 + m4) + bj
                    elif r == 1:
                        v = (m1 - m2) + two * (m3 - m4) + bj
                    else:
                        v = (m1 + m2) + four * (m3 + m4) + bj
                    d[do + k] = v
        else:
            for r in range(nrows):
                d = dst[r0 + r]
                for k in range(np.uint64(K)):
                    i = so + k
                    m1 = src[1, i]
                    m2 = src[2, i]
                    bj = bias[i]
                    if r == 0:
                        v = src[0, i] + m1 + m2 + bj
                    else:
                        v = m1 - m2 - src[3, i] + bj
                    d[do + k] = v
        ph += 1
        if ph == m:
            ph = 0
            t += 1


@njit(**JIT_OPTIONS)
def _grad_rows(src, base, nrows, r0, m, TW, K, zero, dst):
    """dst[a, (ph * TW + t) * K + k] = sum_r A[a, r] * dy[r0 + r, j * K + k] (A dy down the
    m rows of a tile row) for column j = t * m + ph of dy (src rows base .. base + nrows,
    each OW * K long; rows past the image read as `zero`: their gradient is zero), written
    straight into phase layout. Slots no column maps to are never written (zeroed once by
    the wrapper)."""
    OW = src.shape[1] // K
    two = src.dtype.type(2)
    four = src.dtype.type(4)
    eight = src.dtype.type(8)
    s0 = src[base + r0] if r0 < nrows else zero
    s1 = src[base + r0 + 1] if r0 + 1 < nrows else zero
    d_0 = dst[0]
    d_1 = dst[1]
    d_2 = dst[2]
    d_3 = dst[3]
    ph = 0  # column j is slot t of phase ph
    t = 0
    if m == 4:
        s2 = src[base + r0 + 2] if r0 + 2 < nrows else zero
        s3 = src[base + r0 + 3] if r0 + 3 < nrows else zero
        d_4 = dst[4]
        d_5 = dst[5]
        for j in range(OW):
            do = np.uint64((ph * TW + t) * K)
            so = np.uint64(j * K)
            for k in range(np.uint64(K)):
                y0 = s0[so + k]
                y1 = s1[so + k]
                y2 = s2[so + k]
                y3 = s3[so + k]
                p = y0 + y2
                q = y1 + y3
                s = y0 + four * y2
                w = two * y1 + eight * y3
                o = do + k
                d_0[o] = y0
                d_1[o] = p + q
                d_2[o] = p - q
                d_3[o] = s + w
                d_4[o] = s - w
                d_5[o] = y3
            ph += 1
            if ph == m:
                ph = 0
                t += 1
    else:
        for j in range(OW):
            do = np.uint64((ph * TW + t) * K)
            so = np.uint64(j * K)
            for k in range(np.uint64(K)):
                y0 = s0[so + k]
                y1 = s1[so + k]
                o = do + k
                d_0[o] = y0
                d_1[o] = y0 + y1
                d_2[o] = y0 - y1
                d_3[o] = -y1
            ph += 1
            if ph == m:
                ph = 0
                t += 1


@njit(**JIT_OPTIONS)
def _grad_cols(src, m, L, Z2, e, do):
    """Z2[e + nu, do + i] = sum_b src[b * L + i] * A^T[b, nu] for i < L = tiles * K: row a
    of (A dy) A^T for every tile of a tile row (src: row a in phase layout, tiles slots)."""
    two = src.dtype.type(2)
    four = src.dtype.type(4)
    eight = src.dtype.type(8)
    ud = np.uint64(do)
    uL = np.uint64(L)
    if m == 4:
        for i in range(uL):
            y0 = src[i]
            y1 = src[uL + i]
            y2 = src[np.uint64(2) * uL + i]
            y3 = src[np.uint64(3) * uL + i]
            p = y0 + y2
            q = y1 + y3
            s = y0 + four * y2
            w = two * y1 + eight * y3
            j = ud + i
            Z2[e, j] = y0
            Z2[e + 1, j] = p + q
            Z2[e + 2, j] = p - q
            Z2[e + 3, j] = s + w
            Z2[e + 4, j] = s - w
            Z2[e + 5, j] = y3
    else:
        for i in range(uL):
            y0 = src[i]
            y1 = src[uL + i]
            j = ud + i
            Z2[e, j] = y0
            Z2[e + 1, j] = y0 + y1
            Z2[e + 2, j] = y0 - y1
            Z2[e + 3, j] = -y1


@njit(**JIT_OPTIONS)
def _sum_channels(src, base, nrows, r0, m, TW, K, acc):
    """acc[k] += every dy[r0 + r, j * K + k] of the tile row's m rows inside the image
    (float64 sums of float32 or float64 values), added in phase-layout order (column j =
    t * m + ph in the order ph, t), the order the sums have always had: bit-identical."""
    OW = src.shape[1] // K
    for r in range(min(m, nrows - r0)):
        row = src[base + r0 + r]
        for ph in range(m):
            for t in range(TW):
                j = t * m + ph
                if j < OW:
                    so = np.uint64(j * K)
                    for k in range(np.uint64(K)):
                        acc[k] += row[so + k]


@njit(**JIT_OPTIONS)
def _input_tile_row(x2, n, H, r0, m, pad, KS, C, TW, zero, rowt, V2, t0):
    """V2[:, t0 * C:(t0 + TW) * C] = B^T d B of the TW tiles whose input rows start at r0
    (zero: a row of zeros for the rows outside the image)."""
    alpha = m + 2
    _in_rows(x2, n * H, H, r0, pad, m, KS, C, zero, rowt)
    for a in range(alpha):
        _in_cols(rowt[a], m, KS, C, TW * C, V2, a * alpha, t0 * C)


# ----------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------


@njit(**JIT_OPTIONS)
def _filter_transform(wf, G, u):
    """u[a * alpha + b, c, k] = sum_pq G[a, p] * wf[p, q, c, k] * G[b, q], float64 sums.

    wf is w transposed to [3, 3, C * K] (w's dtype), so each stage is one long loop over
    every (c, k) at once: t[q] = sum_p G[a, p] wf[p, q] (float64), then each u[a * alpha +
    b] = sum_q t[q] G[b, q], written whole. numpy's einsum and stacked matmuls over the
    K * C tiny filters took ~20 ms for 128 -> 128, as long as that layer's whole forward
    pass. Serial: across the threads (each a row a of G) it ran 2.0x at 64 -> 64 but 0.8x
    at 16 -> 16, and its parallel loop compiled 1.2 s longer, which a user's first minute
    pays.
    """
    CK = wf.shape[2]
    alpha = G.shape[0]
    uf = u.reshape(alpha * alpha, CK)
    t = np.empty((3, CK))  # row a of G g, every (c, k)
    for a in range(alpha):
        g0 = G[a, 0]
        g1 = G[a, 1]
        g2 = G[a, 2]
        for q in range(3):
            tq = t[q]
            w0 = wf[0, q]
            w1 = wf[1, q]
            w2 = wf[2, q]
            for i in range(CK):
                tq[i] = (g0 * np.float64(w0[i]) + g1 * np.float64(w1[i])
                         + g2 * np.float64(w2[i]))
        t0 = t[0]
        t1 = t[1]
        t2 = t[2]
        for b in range(alpha):
            h0 = G[b, 0]
            h1 = G[b, 1]
            h2 = G[b, 2]
            dst = uf[a * alpha + b]
            for i in range(CK):
                dst[i] = t0[i] * h0 + t1[i] * h1 + t2[i] * h2


@njit(**PARALLEL_JIT_OPTIONS)
def _wino_fwd(x, U, bias, m, pad, R, V_t, M_t, zero_t, rowt_t, orow_t, y, post_mode, post,
              vec_in, vec_out, add, addend):
    """y[N, OH, OW, K] = Winograd F(m x m, 3 x 3) conv of x with U[alpha^2, C, K] + bias
    (bias: one tile row of output columns in phase layout, m * TW * K; with vec_out
    bias[K]); with `add`, + addend (y's shape, flat: a residual block's other gradient, added
    into dx while its rows are in cache instead of in a pass of its own); then what the
    conv absorbed, on each output row as it is written (conv.py's `_post_rows`).

    Blocks are R consecutive tile rows (over all images); each thread runs a range of
    blocks with its buffers in cache: the `_t` arrays, [T, ...], allocated by the wrapper
    (zero_t and rowt_t zeroed), so what a call holds does not depend on how the threads are
    timed. vec_in / vec_out: the input / output transform runs on winograd_vec.py's
    vector tiles (rowt_t / orow_t then hold nothing).
    """
    N, H, W, C = x.shape
    OH = y.shape[1]
    OW = y.shape[2]
    K = y.shape[3]
    alpha = m + 2
    A2 = alpha * alpha
    TH = (OH + m - 1) // m
    TW = (OW + m - 1) // m
    KS = TW + 1  # input columns reach one slot past the last tile's start
    nrow = N * TH
    nblk = (nrow + R - 1) // R
    T = V_t.shape[0]
    x2 = x.reshape(N * H, W * C)
    y2 = y.reshape(N * OH, OW * K)
    yf = y.reshape(N * OH * OW * K)
    for p in prange(T):
        V = V_t[p]  # [A2, R * TW + 1, C]; + 1: see module docstring
        M = M_t[p]
        V2 = V.reshape(A2, (R * TW + 1) * C)
        M2 = M.reshape(A2, (R * TW + 1) * K)
        zero = zero_t[p]
        rowt = rowt_t[p]
        orow = orow_t[p]
        for blk in range(p * nblk // T, (p + 1) * nblk // T):
            g0 = blk * R
            g1 = min(nrow, g0 + R)
            nt = (g1 - g0) * TW
            for g in range(g0, g1):
                r0 = (g % TH) * m - pad
                if vec_in:
                    in_tiles(x2, (g // TH) * H, H, r0, -pad, TW, C, zero, V, (g - g0) * TW)
                else:
                    _input_tile_row(x2, g // TH, H, r0, m, pad, KS, C, TW, zero, rowt, V2,
                                    (g - g0) * TW)
            for e in range(A2):
                if OWN_GEMM and vec_out:  # _wino_fwd_own (sizes.own_winograd decides);
                    # K in 16s: the kernel's blocks without gemm_into's checks
                    gemm_rows(V[e].ctypes.data, C, U[e].ctypes.data, M[e].ctypes.data, nt,
                              C, K, False)
                elif OWN_GEMM:
                    gemm_into(V[e, :nt], U[e], M[e, :nt], False)
                else:
                    np.dot(V[e, :nt], U[e], M[e, :nt])
            for g in range(g0, g1):
                i0 = (g % TH) * m
                t0 = (g - g0) * TW
                r0 = (g // TH) * OH + i0
                nr = min(m, OH - i0)
                if vec_out:
                    out_tiles(M, t0, TW, K, bias, y2, r0, nr, OW)
                else:
                    for a in range(alpha):
                        _out_cols(M2, a * alpha, t0 * K, m, TW * K, orow[a])
                    _out_rows(orow, m, bias, TW, K, OW, y2, r0, nr)
                if add:  # y + addend, as numpy's np.add(y, addend) computes it
                    for j in range(r0 * OW * K, (r0 + nr) * OW * K):
                        yf[j] = yf[j] + addend[j]
                if post_mode:
                    for r in range(r0, r0 + nr):
                        _post_rows(y[r // OH, r % OH], post_mode, post)


@njit(**PARALLEL_JIT_OPTIONS)
def _wino_bwd_w(x, dy, m, pad, R, nchunk, V_t, Z_t, zero_t, rowt_t, dzero_t, zrow_t,
                tmp_t, Sp, need_db, dbp, vec_in, vec_grad):
    """Sp[chunk, alpha^2, C, K] = the chunk's sums of the tile products V^T Z, one [C x K]
    per tile position; the wrapper adds the chunks up and takes them back to dW through
    G's products (linear, so once, not once a chunk: that product cost up to 14% of the
    layer's multiply-adds at 64 channels). Chunk q owns blocks
    [q * nblk // nchunk, (q + 1) * nblk // nchunk).
    Each thread's buffers are the `_t` arrays, [T, ...], allocated by the wrapper (zero_t,
    rowt_t, dzero_t and zrow_t zeroed). With need_db, dbp[chunk, K] (float64, zeroed) gets
    the chunk's partial bias gradient, summed from the dy rows the transform has just read
    (a separate float64 reduction over dy took as long as the whole dW kernel at 16
    channels). vec_in / vec_grad: x's / dy's transform runs on winograd_vec.py's vector
    tiles.
    """
    N, H, W, C = x.shape
    OH = dy.shape[1]
    OW = dy.shape[2]
    K = dy.shape[3]
    alpha = m + 2
    A2 = alpha * alpha
    TH = (OH + m - 1) // m
    TW = (OW + m - 1) // m
    KS = TW + 1
    nrow = N * TH
    nblk = (nrow + R - 1) // R
    T = V_t.shape[0]
    x2 = x.reshape(N * H, W * C)
    dy2 = dy.reshape(N * OH, OW * K)
    for p in prange(T):
        V = V_t[p]
        Z = Z_t[p]
        V2 = V.reshape(A2, (R * TW + 1) * C)
        Z2 = Z.reshape(A2, (R * TW + 1) * K)
        zero = zero_t[p]
        rowt = rowt_t[p]
        dzero = dzero_t[p]
        zrow = zrow_t[p]
        tmp = tmp_t[p]
        tmpf = tmp.reshape(C * K)
        for q in range(p * nchunk // T, (p + 1) * nchunk // T):
            S = Sp[q]
            S2 = S.reshape(A2, C * K)
            b0 = q * nblk // nchunk
            for blk in range(b0, (q + 1) * nblk // nchunk):
                g0 = blk * R
                g1 = min(nrow, g0 + R)
                nt = (g1 - g0) * TW
                for g in range(g0, g1):
                    n = g // TH
                    i0 = (g % TH) * m
                    t0 = (g - g0) * TW
                    if vec_in:
                        in_tiles(x2, n * H, H, i0 - pad, -pad, TW, C, zero, V, t0)
                    else:
                        _input_tile_row(x2, n, H, i0 - pad, m, pad, KS, C, TW, zero, rowt,
                                        V2, t0)
                    if need_db:  # every dy value of these rows once
                        _sum_channels(dy2, n * OH, OH, i0, m, TW, K, dbp[q])
                    if vec_grad:
                        grad_tiles(dy2, n * OH, OH, i0, TW, K, dzero, Z, t0)
                    else:
                        _grad_rows(dy2, n * OH, OH, i0, m, TW, K, dzero, zrow)
                        for a in range(alpha):
                            _grad_cols(zrow[a], m, TW * K, Z2, a * alpha, t0 * K)
                if OWN_GEMM and vec_grad:  # _wino_bwd_w_own: adds into S itself
                    for e in range(A2):
                        gemm_cols(V[e].ctypes.data, C, Z[e].ctypes.data, S[e].ctypes.data,
                                  C, nt, K, blk != b0)
                    continue
                if OWN_GEMM:
                    for e in range(A2):
                        gemm_into(V[e, :nt].T, Z[e, :nt], S[e], blk != b0)
                    continue
                for e in range(A2):
                    if blk == b0:  # the chunk's first block starts its sums
                        np.dot(V[e, :nt].T, Z[e, :nt], S[e])
                        continue
                    np.dot(V[e, :nt].T, Z[e, :nt], tmp)
                    acc = S2[e]
                    for i in range(C * K):
                        acc[i] += tmpf[i]


# The kernels with their products through microkernel.py: a run compiles only the copy it
# calls (microkernel.own_gemm_variant).
_wino_fwd_own = own_gemm_variant(_wino_fwd, PARALLEL_JIT_OPTIONS)
_wino_bwd_w_own = own_gemm_variant(_wino_bwd_w, PARALLEL_JIT_OPTIONS)


# ----------------------------------------------------------------------------------
# Python wrappers
# ----------------------------------------------------------------------------------


def _check_w(w, dtype, C):
    w = _as(w, dtype, "w")
    if w.ndim != 4 or w.shape[1:] != (C, 3, 3):
        raise ValueError(f"w must be OIHW [K, C={C}, 3, 3], got shape {w.shape}")
    return w


def _check_pad_tile(pad, tile):
    if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or not 0 <= pad <= 2:
        raise ValueError(f"pad must be 0, 1 or 2 (every side), got {pad!r}")
    if tile not in TILES:
        raise ValueError(f"tile must be 2 or 4, got {tile!r}")
    return int(pad), int(tile)


def _threads():
    return int(numba.get_num_threads())


def _own_gemm(x):
    """Whether the tile products run on microkernel.py rather than np.dot (sizes.py)."""
    return sizes.own_winograd(x.itemsize, microkernel.WIDE)


def winograd_filter_transform(w, tile=4):
    """U[alpha^2, C, K] = G g G^T of OIHW w[K, C, 3, 3], computed in float64, w's dtype.

    Depends on the weights only: compute it once per weight update and pass it as
    ``u`` to winograd_conv_forward.
    """
    w = np.asarray(w)
    if w.ndim != 4 or w.shape[2:] != (3, 3):
        raise ValueError(f"w must be OIHW [K, C, 3, 3], got shape {w.shape}")
    if w.dtype not in (np.float32, np.float64):
        raise TypeError(f"w must be float32 or float64, got {w.dtype}")
    ensure_configured()
    _, G, _ = transform_matrices(_check_pad_tile(0, tile)[1])
    K, C = w.shape[:2]
    u = np.empty((G.shape[0] ** 2, C, K), dtype=w.dtype)
    if u.size:
        _filter_transform(np.ascontiguousarray(w.transpose(2, 3, 1, 0)).reshape(3, 3, C * K),
                          G, u)
    return u


def _forward(x, u, b, pad, tile, out_hw, relu=False, affine=None, addend=None):
    """The forward kernel on validated arrays; b[K] or None; addend: None or an array of
    the output's shape and dtype, added to it."""
    N = x.shape[0]
    K = u.shape[2]
    OH, OW = out_hw
    y = np.empty((N, OH, OW, K), dtype=x.dtype)
    if N == 0 or K == 0:
        return y
    TW = -(-OW // tile)
    C, dt = x.shape[3], x.dtype
    vec_in, vec_out = usable(x.itemsize, tile, C), usable(x.itemsize, tile, K)
    if vec_out:  # the vector tiles add bias[K] themselves
        bias = b if b is not None else np.zeros(K, dt)
    else:  # the phase-layout rows stage: the bias tiled over a tile row
        bias = np.tile(b, tile * TW) if b is not None else np.zeros(tile * TW * K, dt)
    nrow = N * -(-OH // tile)
    R = sizes.winograd_rows_per_block(TW, nrow, sizes.WINOGRAD_BLOCK_TILES)
    T = min(_threads(), -(-nrow // R))  # each thread's blocks, allocated here, not in it
    alpha, KS = tile + 2, TW + 1
    kernel = _wino_fwd_own if _own_gemm(x) else _wino_fwd
    # the phase-layout buffers only where the vector tiles do not replace them
    rowt = np.zeros((T, alpha, 0 if vec_in else tile * KS * C), dt)
    orow = np.empty((T, alpha, 0 if vec_out else tile * TW * K), dt)
    kernel(x, u, bias, tile, pad, R, np.empty((T, alpha * alpha, R * TW + 1, C), dt),
           np.empty((T, alpha * alpha, R * TW + 1, K), dt), np.zeros((T, tile * KS * C), dt),
           rowt, orow, y, *post_ops(K, dt, relu, affine), vec_in, vec_out,
           addend is not None, (y if addend is None else addend).reshape(-1))
    return y


@functools.cache
def _weights_from_positions(tile, dtype):
    """GGt[9, alpha^2]: G[a, p] * G[b, q] at [p * 3 + q, a * alpha + b], so that dW's taps
    are GGt @ the tile positions' [C x K] sums (G^T S G, each tap a sum over positions).
    Read-only: one array per tile size and dtype for every call."""
    _, G, _ = transform_matrices(tile)
    ggt = np.ascontiguousarray(np.einsum("ap,bq->pqab", G, G).reshape(9, -1), dtype)
    ggt.flags.writeable = False
    return ggt


def _out_size(H, W, pad, name):
    OH, OW = H + 2 * pad - 2, W + 2 * pad - 2
    if OH < 1 or OW < 1:
        raise ValueError(f"{name} spatial size {H}x{W} with pad={pad} leaves no 3x3 window")
    return OH, OW


def winograd_conv_forward(x, w, b, pad, tile=4, u=None, relu=False, affine=None):
    """y[N, OH, OW, K] = conv2d(x[N, H, W, C], w[K, C, 3, 3]) + b[K], stride 1; then, as
    each output row is written, the batchnorm after it in evaluation (`affine`) and the
    ReLU (`relu`), as conv.conv2d_forward applies them.

    ``u``: winograd_filter_transform(w, tile), if the caller keeps it between calls.
    """
    ensure_configured()
    pad, tile = _check_pad_tile(pad, tile)
    x = _check_x(x, "x")
    N, H, W, C = x.shape
    w = _check_w(w, x.dtype, C)
    K = w.shape[0]
    OH, OW = _out_size(H, W, pad, "x")
    if u is None:
        u = winograd_filter_transform(w, tile)
    else:
        u = _as(u, x.dtype, "u")
        if u.shape != ((tile + 2) ** 2, C, K):
            raise ValueError(f"u must have shape {((tile + 2) ** 2, C, K)}, got {u.shape}")
    if b is not None:
        b = _as(b, x.dtype, "b").reshape(-1)
        if b.shape != (K,):
            raise ValueError(f"b must have shape ({K},), got {b.shape}")
    return _forward(x, u, b, pad, tile, (OH, OW), relu, affine)


def winograd_conv_backward_data(dy, w, pad, tile=4, add=None):
    """dx[N, H, W, C] of winograd_conv_forward: the 3x3 stride-1 convolution of dy, padded
    by 2 - pad, with the flipped filter and input/output channels swapped.

    ``add``: an array of dx's shape and dtype added to dx as its rows are written (a
    residual block's shortcut gradient): the same numbers as ``np.add(dx, add)``, without a
    pass of their own."""
    ensure_configured()
    pad, tile = _check_pad_tile(pad, tile)
    dy = _check_x(dy, "dy")
    N, OH, OW, K = dy.shape
    w = _as(w, dy.dtype, "w")
    if w.ndim != 4 or w.shape[0] != K or w.shape[2:] != (3, 3):
        raise ValueError(f"w must be OIHW [K={K}, C, 3, 3], got shape {w.shape}")
    wflip = w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)  # [C, K, 3, 3]
    u = winograd_filter_transform(wflip, tile)
    H, W = _out_size(OH, OW, 2 - pad, "dy")
    C = w.shape[1]
    if add is not None:
        if not isinstance(add, np.ndarray) or add.shape != (N, H, W, C) \
                or add.dtype != dy.dtype or not add.flags.c_contiguous:
            raise ValueError(f"add must be a C-contiguous {dy.dtype} array of shape "
                             f"{(N, H, W, C)}, got {getattr(add, 'shape', type(add))}")
    return _forward(dy, u, None, 2 - pad, tile, (H, W), addend=add)


def winograd_conv_backward_weights(x, dy, pad, tile=4):
    """dw[K, C, 3, 3] of winograd_conv_forward."""
    return winograd_conv_backward_params(x, dy, pad, tile, need_db=False)[0]


def winograd_conv_backward_params(x, dy, pad, tile=4, need_db=True):
    """(dw[K, C, 3, 3], db[K] or None) of winograd_conv_forward: db = dy summed over
    images and positions, in float64 and cast (as conv.py's), only with need_db."""
    ensure_configured()
    pad, tile = _check_pad_tile(pad, tile)
    x = _check_x(x, "x")
    N, H, W, C = x.shape
    dy = _as(dy, x.dtype, "dy")
    OH, OW = _out_size(H, W, pad, "x")
    if dy.ndim != 4 or dy.shape[:3] != (N, OH, OW):
        raise ValueError(f"dy must have shape (N={N}, {OH}, {OW}, K), got {dy.shape}")
    K = dy.shape[3]
    if N == 0 or C == 0 or K == 0:
        db = np.zeros(K, dtype=x.dtype) if need_db else None
        return np.zeros((K, C, 3, 3), dtype=x.dtype), db
    TW = -(-OW // tile)
    nrow = N * -(-OH // tile)
    R = sizes.winograd_rows_per_block(TW, nrow, sizes.WINOGRAD_BLOCK_TILES_DW)
    nchunk = sizes.winograd_weights_chunks(N, OH, OW, tile, _threads())
    T = min(_threads(), nchunk)  # each thread's blocks, allocated here, not in it
    alpha, KS, dt = tile + 2, TW + 1, x.dtype
    A2 = alpha * alpha
    Sp = np.empty((nchunk, A2, C, K), dtype=dt)
    dbp = np.zeros((nchunk, K) if need_db else (1, 1), dtype=np.float64)
    vec_in, vec_grad = usable(x.itemsize, tile, C), usable(x.itemsize, tile, K)
    kernel = _wino_bwd_w_own if _own_gemm(x) else _wino_bwd_w
    # the phase-layout buffers only where the vector tiles do not replace them
    rowt = np.zeros((T, alpha, 0 if vec_in else tile * KS * C), dt)
    zrow = np.zeros((T, alpha, 0 if vec_grad else tile * TW * K), dt)
    kernel(x, dy, tile, pad, R, nchunk, np.empty((T, A2, R * TW + 1, C), dt),
           np.empty((T, A2, R * TW + 1, K), dt), np.zeros((T, tile * KS * C), dt), rowt,
           np.zeros((T, tile * TW * K), dt), zrow, np.empty((T, C, K), dt), Sp,
           bool(need_db), dbp, vec_in, vec_grad)
    S = Sp[0].reshape(A2, C * K)
    for q in range(1, nchunk):  # chunk order: deterministic
        S += Sp[q].reshape(A2, C * K)
    dW = np.dot(_weights_from_positions(tile, dt), S)  # [(p, q), (c, k)]
    dw = np.ascontiguousarray(dW.reshape(3, 3, C, K).transpose(3, 2, 0, 1))
    del dW, S, Sp
    db = dbp.sum(axis=0).astype(x.dtype) if need_db else None
    return dw, db
