"""Elementwise kernels: activations, dropout, global average pooling.

Each kernel writes into arrays its caller allocated (or overwrites one in place), so a
layer allocates exactly the buffers its memory plan names and numpy makes no hidden
temporaries (bool masks, casting buffers, `dy * (1 - y*y)`'s intermediates).

The arithmetic is numpy's, operation for operation, in the array's dtype (the scalars
arrive as numpy scalars of that dtype, so float32 stays float32), and fastmath is off,
so the results are bit-identical to the numpy expressions each kernel names. The
exponential of sigmoid stays numpy's `np.exp` (into a buffer the layer declares): a
libm `exp` may round differently in the last bit.

Activations go through flat views: the wrappers take C-contiguous arrays and refuse
others, since writing through the flat view of a strided array would write into a copy.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from cnncli.config import PARALLEL_JIT_OPTIONS

__all__ = [
    "relu_forward",
    "relu_backward",
    "add_relu",
    "leaky_relu_forward",
    "leaky_relu_backward",
    "tanh_backward",
    "sigmoid_forward",
    "sigmoid_backward",
    "dropout_mask",
    "multiply_into",
    "global_avg_pool_forward",
    "global_avg_pool_backward",
]


def _flat(a, name):
    """The flat view of a C-contiguous array: writes through it reach the array."""
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    return a.reshape(-1)


def _out(x, out):
    """A new array like x, or `out` (in place when it is x)."""
    if out is None:
        return np.empty_like(x)
    if out.shape != x.shape or out.dtype != x.dtype:
        raise ValueError(f"out must be {x.dtype} {x.shape}, got {out.dtype} {out.shape}")
    return out


# --------------------------------------------------------------------------
# activations
# --------------------------------------------------------------------------


@njit(**PARALLEL_JIT_OPTIONS)
def _relu_fwd(x, b, y, zero, add):
    # np.maximum(x, 0): NaN passes through, -0 becomes 0; with `add`, of x + b (a residual
    # sum and the ReLU after it in one pass)
    if add:
        for i in prange(x.size):
            v = x[i] + b[i]
            y[i] = v if v > zero or v != v else zero
    else:
        for i in prange(x.size):
            v = x[i]
            y[i] = v if v > zero or v != v else zero


@njit(**PARALLEL_JIT_OPTIONS)
def _relu_bwd(dy, y, zero):
    # dy * (y > 0): the bool casts to 1 or 0, and dy * 1 is dy
    for i in prange(dy.size):
        if not y[i] > zero:
            dy[i] = dy[i] * zero


@njit(**PARALLEL_JIT_OPTIONS)
def _leaky_fwd(x, y, slope):
    # np.where(x > 0, x, x * slope)
    for i in prange(x.size):
        v = x[i]
        y[i] = v if v > 0 else v * slope


@njit(**PARALLEL_JIT_OPTIONS)
def _leaky_bwd(dy, y, slope):
    # np.where(y > 0, dy, dy * slope)
    for i in prange(dy.size):
        if not y[i] > 0:
            dy[i] = dy[i] * slope


@njit(**PARALLEL_JIT_OPTIONS)
def _tanh_bwd(dy, y, one):
    # dy * (1 - y * y)
    for i in prange(dy.size):
        v = y[i]
        dy[i] = dy[i] * (one - v * v)


@njit(**PARALLEL_JIT_OPTIONS)
def _sigmoid_from_exp(x, e, y, one):
    # np.where(x >= 0, 1 / (1 + e), e / (1 + e)) with e = exp(-|x|); y may be x or e
    for i in prange(x.size):
        ei = e[i]
        y[i] = one / (one + ei) if x[i] >= 0 else ei / (one + ei)


@njit(**PARALLEL_JIT_OPTIONS)
def _sigmoid_bwd(dy, y, one):
    # dy * y * (1 - y), evaluated left to right as numpy does
    for i in prange(dy.size):
        v = y[i]
        dy[i] = dy[i] * v * (one - v)


def relu_forward(x, out=None):
    """max(x, 0) into `out` (a new array when None; x itself for in place)."""
    y = _out(x, out)
    flat = _flat(x, "x")
    _relu_fwd(flat, flat, _flat(y, "out"), x.dtype.type(0), False)
    return y


def add_relu(a, b, out=None):
    """max(a + b, 0) in one pass (numpy's `a + b`, then `np.maximum(., 0)`), into `out`
    (a new array when None)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"a and b must match: {a.dtype} {a.shape} vs {b.dtype} {b.shape}")
    y = _out(a, out)
    _relu_fwd(_flat(a, "a"), _flat(b, "b"), _flat(y, "out"), a.dtype.type(0), True)
    return y


def relu_backward(dy, y):
    """dy * (y > 0), written over dy; returns dy."""
    _relu_bwd(_flat(dy, "dy"), _flat(y, "y"), dy.dtype.type(0))
    return dy


def leaky_relu_forward(x, slope, out=None):
    """x where x > 0, else slope * x (slope rounded to x's dtype first)."""
    y = _out(x, out)
    _leaky_fwd(_flat(x, "x"), _flat(y, "out"), x.dtype.type(slope))
    return y


def leaky_relu_backward(dy, y, slope):
    """dy where y > 0, else slope * dy, written over dy; returns dy."""
    _leaky_bwd(_flat(dy, "dy"), _flat(y, "y"), dy.dtype.type(slope))
    return dy


def tanh_backward(dy, y):
    """dy * (1 - y^2) from tanh's output y, written over dy; returns dy."""
    _tanh_bwd(_flat(dy, "dy"), _flat(y, "y"), dy.dtype.type(1))
    return dy


def sigmoid_forward(x, out=None, work=None):
    """1 / (1 + e^-x), computed as 1/(1+e) or e/(1+e) with e = exp(-|x|) so that large |x|
    neither overflows nor loses precision.

    e is computed in the output array, so a new output needs nothing more; in place
    (`out is x`) x's signs are still needed while e exists, so e goes to `work` (an array
    like x; a new one when None)."""
    y = _out(x, out)
    e = y
    if y is x:
        e = _out(x, work)
    np.abs(x, out=e)
    np.negative(e, out=e)
    np.exp(e, out=e)
    _sigmoid_from_exp(_flat(x, "x"), _flat(e, "e"), _flat(y, "out"), x.dtype.type(1))
    return y


def sigmoid_backward(dy, y):
    """dy * y * (1 - y) from sigmoid's output y, written over dy; returns dy."""
    _sigmoid_bwd(_flat(dy, "dy"), _flat(y, "y"), dy.dtype.type(1))
    return dy


# --------------------------------------------------------------------------
# dropout
# --------------------------------------------------------------------------


@njit(**PARALLEL_JIT_OPTIONS)
def _dropout_mask(u, keep, scale, mask):
    # (u < keep).astype(dtype) / keep: `scale` = 1 / keep rounded once, as numpy's
    # `mask /= keep` rounds 1 / keep; u may be mask itself (float32)
    zero = scale - scale
    for i in prange(u.size):
        mask[i] = scale if u[i] < keep else zero


@njit(**PARALLEL_JIT_OPTIONS)
def _multiply(a, b, out):
    for i in prange(a.size):
        out[i] = a[i] * b[i]


def dropout_mask(uniform, keep, mask):
    """The inverted-dropout mask from float32 uniform draws: 1/keep where the draw is below
    `keep` (compared in float32, as numpy compares a float32 array with a Python float),
    else 0. `uniform` may be `mask` itself when the mask is float32. Returns mask."""
    if uniform.dtype != np.float32 or uniform.shape != mask.shape:
        raise ValueError("uniform must be float32 draws shaped like the mask")
    dt = mask.dtype.type
    _dropout_mask(_flat(uniform, "uniform"), np.float32(keep), dt(1) / dt(keep),
                  _flat(mask, "mask"))
    return mask


def multiply_into(a, b, out=None):
    """a * b into `out` (a new array when None; a itself for in place)."""
    if b.shape != a.shape or b.dtype != a.dtype:
        raise ValueError(f"b must be {a.dtype} {a.shape}, got {b.dtype} {b.shape}")
    y = _out(a, out)
    _multiply(_flat(a, "a"), _flat(b, "b"), _flat(y, "out"))
    return y


# --------------------------------------------------------------------------
# global average pooling
# --------------------------------------------------------------------------


@njit(**PARALLEL_JIT_OPTIONS)
def _gap_fwd(x, total, y):
    # float64 sums over each slice in (h, w) order, as numpy's mean(dtype=float64) adds
    # them, then the division in float64 and one rounding to the dtype
    N, H, W, C = x.shape
    count = np.float64(H * W)
    for n in prange(N):
        s = total[n]
        for h in range(H):
            for w in range(W):
                xi = x[n, h, w]
                for c in range(C):
                    s[c] += np.float64(xi[c])
        for c in range(C):
            y[n, c] = s[c] / count


@njit(**PARALLEL_JIT_OPTIONS)
def _gap_bwd(dy, count, dx):
    # dy / (H*W) in dy's dtype, spread over each slice
    N, H, W, C = dx.shape
    for n in prange(N):
        g = dy[n]
        for h in range(H):
            for w in range(W):
                d = dx[n, h, w]
                for c in range(C):
                    d[c] = g[c] / count


def global_avg_pool_forward(x):
    """x[N, H, W, C] -> its mean over H and W, [N, 1, 1, C] in x's dtype. Allocates the
    output and the float64 sums ([N, C], freed on return)."""
    if x.ndim != 4 or not x.flags.c_contiguous:
        raise ValueError(f"x must be C-contiguous NHWC, got shape {x.shape}")
    N, C = x.shape[0], x.shape[3]
    total = np.zeros((N, C), np.float64)
    y = np.empty((N, 1, 1, C), x.dtype)
    _gap_fwd(x, total, y.reshape(N, C))
    return y


def global_avg_pool_backward(dy, in_hw):
    """dy[N, 1, 1, C] -> dx[N, H, W, C]: each position gets dy / (H*W)."""
    N, C = dy.shape[0], dy.shape[-1]
    h, w = in_hw
    dx = np.empty((N, h, w, C), dy.dtype)
    _gap_bwd(np.ascontiguousarray(dy).reshape(N, C), dy.dtype.type(h * w), dx)
    return dx
