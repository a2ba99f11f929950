"""Pooling kernels (max with switches, average, L2) on NHWC activations.

Geometry shared by every function here:

* ``x`` is ``[N, H, W, C]``, float32 or float64; outputs keep the dtype.
* ``size``, ``stride``, ``pad`` are ``(height, width)`` pairs (an int means
  the same value for both). ``pad`` is the top/left zero padding; window
  ``(oh, ow)`` covers rows ``oh*sh - ph .. oh*sh - ph + kh - 1`` and the
  matching columns.
* ``out_hw = (OH, OW)`` is decided by the caller. In "ceil" mode the last
  window may hang past the bottom/right edge: positions outside the input are
  skipped by max pooling and count as zeros for average and L2 pooling.
* Global pooling is the same call with ``size = (H, W)``, ``stride = 1``,
  ``pad = 0`` and ``out_hw = (1, 1)``; the general kernels already stream the
  window with channels innermost, so there is no separate kernel.

All kernels are deterministic: each output element is written by exactly one
task and summed in a fixed order, whatever the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import get_num_threads, njit, prange

from cnncli.config import PARALLEL_JIT_OPTIONS

__all__ = [
    "max_pool_forward",
    "max_pool_backward",
    "avg_pool_forward",
    "avg_pool_backward",
    "l2_pool_forward",
    "l2_pool_backward",
]

_FLOATS = (np.float32, np.float64)


# --------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------


def _pair(v, name, minimum):
    if np.ndim(v) == 0:
        a = b = int(v)
    else:
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a (height, width) pair, got {v!r}")
        a, b = int(v[0]), int(v[1])
    if a < minimum or b < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {(a, b)}")
    return a, b


def _as_act(x, name="x"):
    x = np.asarray(x)
    if x.dtype.type not in _FLOATS:
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")
    if x.ndim != 4:
        raise ValueError(f"{name} must be NHWC (4-D), got shape {x.shape}")
    return np.ascontiguousarray(x)


def _geometry(size, stride, pad, out_hw):
    kh, kw = _pair(size, "size", 1)
    sh, sw = _pair(stride, "stride", 1)
    ph, pw = _pair(pad, "pad", 0)
    oh, ow = _pair(out_hw, "out_hw", 0)
    return kh, kw, sh, sw, ph, pw, oh, ow


def _same_dtype(a, ref, name):
    a = np.asarray(a)
    if a.dtype != ref.dtype:
        raise TypeError(f"{name} dtype {a.dtype} differs from {ref.dtype}")
    return np.ascontiguousarray(a)


# --------------------------------------------------------------------------
# max pooling
# --------------------------------------------------------------------------


@njit(**PARALLEL_JIT_OPTIONS)
def _max_fwd(x, kh, kw, sh, sw, ph, pw, y, switches):
    N, H, W, C = x.shape
    OH, OW = y.shape[1], y.shape[2]
    for r in prange(N * OH):
        n = r // OH
        oh = r - n * OH
        h0 = oh * sh - ph
        hs = max(h0, 0)
        he = min(h0 + kh, H)
        for ow in range(OW):
            w0 = ow * sw - pw
            ws = max(w0, 0)
            we = min(w0 + kw, W)
            yo = y[n, oh, ow]
            so = switches[n, oh, ow]
            for c in range(C):
                yo[c] = -np.inf
                so[c] = -1
            for h in range(hs, he):
                for w in range(ws, we):
                    xi = x[n, h, w]
                    idx = np.int32(h * W + w)
                    for c in range(C):
                        v = xi[c]
                        cur = yo[c]
                        # strict '>' keeps the first maximum in scan order;
                        # NaN wins like in PyTorch (the last NaN is kept). Selects and
                        # stores every time, not a branch: the loop vectorises (10-25%
                        # faster at batch 64, 2026-11-29)
                        take = v > cur or v != v
                        yo[c] = v if take else cur
                        so[c] = idx if take else so[c]


@njit(**PARALLEL_JIT_OPTIONS)
def _max_bwd(dy, switches, nblk, dx):
    # dx: [N, H*W, C], written whole. Tasks own disjoint (image, channel block) pairs,
    # so the scatter has no races and a fixed order. Each task zeroes its own part first
    # and scatters into it while it is in cache (np.zeros of the whole dx beforehand, one
    # thread and one more pass over memory, made the backward 1.5x slower)
    N, OH, OW, C = dy.shape
    zero = dx.dtype.type(0)
    for t in prange(N * nblk):
        n = t // nblk
        b = t - n * nblk
        c0 = (b * C) // nblk
        c1 = ((b + 1) * C) // nblk
        dn = dx[n]
        for i in range(dn.shape[0]):
            for c in range(c0, c1):
                dn[i, c] = zero
        for oh in range(OH):
            for ow in range(OW):
                g = dy[n, oh, ow]
                s = switches[n, oh, ow]
                for c in range(c0, c1):
                    i = s[c]
                    if i >= 0:
                        dn[i, c] += g[c]


def max_pool_forward(x, size, stride, pad, out_hw):
    """Max pooling. Returns ``(y, switches)``.

    ``y`` is ``[N, OH, OW, C]`` (dtype of ``x``); ``switches`` is int32
    ``[N, OH, OW, C]`` holding the flat position ``h*W + w`` (unpadded input)
    of the maximum, the first one in row-major window order on ties (PyTorch's
    ``return_indices`` convention). A window containing no input position
    (possible only if the padding is as large as the window) yields ``-inf``
    and switch ``-1``, which backward ignores.
    """
    x = _as_act(x)
    kh, kw, sh, sw, ph, pw, OH, OW = _geometry(size, stride, pad, out_hw)
    N, H, W, C = x.shape
    y = np.empty((N, OH, OW, C), dtype=x.dtype)
    switches = np.empty((N, OH, OW, C), dtype=np.int32)
    if y.size:
        _max_fwd(x, kh, kw, sh, sw, ph, pw, y, switches)
    return y, switches


def max_pool_backward(dy, switches, in_hw):
    """Gradient of max pooling: routes each ``dy`` to its switch position.

    ``in_hw = (H, W)`` of the forward input. Returns ``dx [N, H, W, C]``.
    """
    dy = _as_act(dy, "dy")
    switches = np.ascontiguousarray(switches)
    if switches.shape != dy.shape:
        raise ValueError(f"switches shape {switches.shape} != dy shape {dy.shape}")
    if switches.dtype.type not in (np.int32, np.int64):
        raise TypeError(f"switches must be int32 or int64, got {switches.dtype}")
    H, W = _pair(in_hw, "in_hw", 0)
    N, _, _, C = dy.shape
    dx = np.empty((N, H * W, C), dtype=dy.dtype)
    if dx.size and not dy.size:  # no window: no gradient reaches the input
        dx[...] = 0
    elif dx.size:
        # enough (image, channel-block) tasks to keep every thread busy at batch 1
        nblk = max(1, min(C, -(-2 * get_num_threads() // N)))
        _max_bwd(dy, switches, nblk, dx)
    return dx.reshape(N, H, W, C)


# --------------------------------------------------------------------------
# average and L2 pooling
# --------------------------------------------------------------------------


@njit(**PARALLEL_JIT_OPTIONS)
def _sum_fwd(x, kh, kw, sh, sw, ph, pw, mode, y):
    # mode 0: average (count_include_pad=True, PyTorch divisor); mode 1: L2.
    N, H, W, C = x.shape
    OH, OW = y.shape[1], y.shape[2]
    for r in prange(N * OH):
        n = r // OH
        oh = r - n * OH
        h0 = oh * sh - ph
        hs = max(h0, 0)
        he = min(h0 + kh, H)
        cnt_h = min(h0 + kh, H + ph) - h0
        for ow in range(OW):
            w0 = ow * sw - pw
            ws = max(w0, 0)
            we = min(w0 + kw, W)
            yo = y[n, oh, ow]
            for c in range(C):
                yo[c] = 0.0
            for h in range(hs, he):
                for w in range(ws, we):
                    xi = x[n, h, w]
                    if mode == 0:
                        for c in range(C):
                            yo[c] += xi[c]
                    else:
                        for c in range(C):
                            yo[c] += xi[c] * xi[c]
            if mode == 0:
                cnt = cnt_h * (min(w0 + kw, W + pw) - w0)
                if cnt > 0:
                    for c in range(C):
                        yo[c] = yo[c] / cnt
            else:
                for c in range(C):
                    yo[c] = np.sqrt(yo[c])


@njit(**PARALLEL_JIT_OPTIONS)
def _sum_bwd(g, kh, kw, sh, sw, ph, pw, mode, x, dx):
    # Gather form: every input position sums the windows that cover it, in
    # (oh, ow) order. mode 0: g = dy, divided by the window's PyTorch divisor.
    # mode 1: g = dy / y (0 where y == 0), result multiplied by x.
    N, H, W, C = dx.shape
    OH, OW = g.shape[1], g.shape[2]
    for r in prange(N * H):
        n = r // H
        h = r - n * H
        oh_lo = max(0, (h + ph - kh) // sh + 1)
        oh_hi = min(OH - 1, (h + ph) // sh)
        for w in range(W):
            ow_lo = max(0, (w + pw - kw) // sw + 1)
            ow_hi = min(OW - 1, (w + pw) // sw)
            d = dx[n, h, w]
            for c in range(C):
                d[c] = 0.0
            for oh in range(oh_lo, oh_hi + 1):
                h0 = oh * sh - ph
                cnt_h = min(h0 + kh, H + ph) - h0
                for ow in range(ow_lo, ow_hi + 1):
                    gi = g[n, oh, ow]
                    if mode == 0:
                        w0 = ow * sw - pw
                        cnt = cnt_h * (min(w0 + kw, W + pw) - w0)
                        for c in range(C):
                            d[c] += gi[c] / cnt
                    else:
                        for c in range(C):
                            d[c] += gi[c]
            if mode == 1:
                xi = x[n, h, w]
                for c in range(C):
                    d[c] *= xi[c]


def avg_pool_forward(x, size, stride, pad, out_hw):
    """Average pooling, exactly ``torch.nn.functional.avg_pool2d`` with
    ``count_include_pad=True`` (either ``ceil_mode``): padding counts as zeros
    and the divisor is the window clipped to the padded extent
    ``[-pad, H + pad)``. Returns ``y [N, OH, OW, C]``.
    """
    x = _as_act(x)
    kh, kw, sh, sw, ph, pw, OH, OW = _geometry(size, stride, pad, out_hw)
    N, H, W, C = x.shape
    y = np.empty((N, OH, OW, C), dtype=x.dtype)
    if y.size:
        _sum_fwd(x, kh, kw, sh, sw, ph, pw, 0, y)
    return y


def avg_pool_backward(dy, size, stride, pad, in_hw):
    """Gradient of :func:`avg_pool_forward`; ``in_hw = (H, W)`` of its input."""
    dy = _as_act(dy, "dy")
    kh, kw, sh, sw, ph, pw, _, _ = _geometry(size, stride, pad, (0, 0))
    H, W = _pair(in_hw, "in_hw", 0)
    N, _, _, C = dy.shape
    dx = np.empty((N, H, W, C), dtype=dy.dtype)
    if dx.size:
        _sum_bwd(dy, kh, kw, sh, sw, ph, pw, 0, dx, dx)
    return dx


def l2_pool_forward(x, size, stride, pad, out_hw):
    """L2 pooling: ``sqrt`` of the sum of squares over each window (padding
    contributes zeros). Returns ``y [N, OH, OW, C]``."""
    x = _as_act(x)
    kh, kw, sh, sw, ph, pw, OH, OW = _geometry(size, stride, pad, out_hw)
    N, H, W, C = x.shape
    y = np.empty((N, OH, OW, C), dtype=x.dtype)
    if y.size:
        _sum_fwd(x, kh, kw, sh, sw, ph, pw, 1, y)
    return y


def l2_pool_backward(x, y, dy, size, stride, pad):
    """Gradient of :func:`l2_pool_forward`: ``dx = sum over windows dy * x / y``,
    with windows where ``y == 0`` contributing 0."""
    x = _as_act(x)
    y = _same_dtype(y, x, "y")
    dy = _same_dtype(dy, x, "dy")
    if y.shape != dy.shape or y.ndim != 4:
        raise ValueError(f"y shape {y.shape} and dy shape {dy.shape} must match (NHWC)")
    kh, kw, sh, sw, ph, pw, _, _ = _geometry(size, stride, pad, (0, 0))
    g = np.zeros_like(dy)
    np.divide(dy, y, out=g, where=y != 0)
    dx = np.empty_like(x)
    if dx.size:
        _sum_bwd(g, kh, kw, sh, sw, ph, pw, 1, x, dx)
    return dx
