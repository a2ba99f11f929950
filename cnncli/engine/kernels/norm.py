"""Normalization kernels: batch normalization and local response normalization.

Both work on channels-last activations: ``x[..., C]`` (NHWC from conv layers,
``[N, C]`` after fully connected layers); every leading axis counts as a
sample position. float32 and float64 are supported; outputs keep the dtype.

Batch normalization statistics are accumulated in float64 over a fixed number
of row chunks (independent of the thread count) and combined in a fixed order,
so results are bit-identical run to run and across thread counts.

Batch normalization followed by a ReLU runs in the same passes when the layer asks
(`relu=True`, `relu_y=`): the forward clamps each value as it writes it, and the backward
applies ReLU's mask to dy in its sums pass, with the same operations in the same order
as the two layers apart, so the results are bit-identical to them.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from cnncli.config import JIT_OPTIONS, PARALLEL_JIT_OPTIONS
from cnncli.engine.kernels import sizes  # the segment length, shared with the memory plans

__all__ = [
    "batchnorm_forward_train",
    "batchnorm_forward_eval",
    "batchnorm_eval_affine",
    "batchnorm_backward",
    "batchnorm_backward_sums",
    "batchnorm_backward_dx",
    "lrn_forward",
    "lrn_backward",
]

_FLOATS = (np.float32, np.float64)
_BN_CHUNKS = sizes.BN_CHUNKS  # fixed: partial sums must not depend on the thread count
_SEGMENT = sizes.BN_SEGMENT  # numbers per segment of the flat kernels (_tiled)


def _as_act(x, name="x"):
    x = np.asarray(x)
    if x.dtype.type not in _FLOATS:
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"{name} must be channels-last with ndim >= 2, got shape {x.shape}")
    return np.ascontiguousarray(x)


def _rows(x):
    return x.reshape(-1, x.shape[-1])


def _channel_vec(v, C, dtype, name):
    v = np.asarray(v)
    if v.shape != (C,):
        raise ValueError(f"{name} must have shape ({C},), got {v.shape}")
    return np.ascontiguousarray(v, dtype=dtype)


# --------------------------------------------------------------------------
# batch normalization
# --------------------------------------------------------------------------


@njit(**JIT_OPTIONS)
def _tiled(v, C):
    """v[C] repeated to L = sizes.bn_period(C) numbers: the value for flat index i of a
    segment that starts at a multiple of C is at i - start."""
    L = C * max(1, _SEGMENT // C)
    t = np.empty(L, dtype=v.dtype)
    for r in range(0, L, C):
        for c in range(C):
            t[r + c] = v[c]
    return t


# The kernels work on the flat activations in segments of L numbers, each starting at a
# multiple of C, with the per-channel vectors repeated to L numbers (`_tiled`): one
# vectorised loop of L numbers per segment. A loop per row of C numbers measured 1.3-2.5x
# slower at 16 channels (LLVM checks the rows for overlap once per row, and a row of 16
# float32 is one vector), alike at 64 (bench/ab_kernels.py --module norm and the kernels
# alone, 2026-11-29, the EPYC VM). The sums keep a float64 sum per position of the
# segment and fold them into the channel's sum at the end of each chunk, in a fixed order.


@njit(**PARALLEL_JIT_OPTIONS)
def _bn_stats(x, C, nchunks, mean, var):
    # Shifted one-pass sums in float64 (shift Kt = the first row, tiled): stable for data
    # whose mean is far from zero, and one read of x instead of two. Into mean and var
    # (float64, [C]): kernels return nothing (a dry run can then stand in for any of them,
    # cnncli/engine/warmup.py).
    Kt = _tiled(x[:C].astype(np.float64), C)
    L = Kt.shape[0]
    M = x.shape[0] // C
    part = np.zeros((nchunks, 2, C), dtype=np.float64)
    for k in prange(nchunks):
        lo = (k * M) // nchunks * C
        hi = ((k + 1) * M) // nchunks * C
        # the chunk's sums in arrays of its own: as views of `part` LLVM could not tell
        # them from x and loaded and stored every sum on every segment
        s1 = np.zeros(L, dtype=np.float64)
        s2 = np.zeros(L, dtype=np.float64)
        for o in range(lo, hi, L):
            xs = x[o:min(hi, o + L)]
            for j in range(xs.shape[0]):
                d = np.float64(xs[j]) - Kt[j]
                s1[j] += d
                s2[j] += d * d
        for r in range(0, L, C):
            for c in range(C):
                part[k, 0, c] += s1[r + c]
                part[k, 1, c] += s2[r + c]
    for c in range(C):
        t1 = 0.0
        t2 = 0.0
        for k in range(nchunks):
            t1 += part[k, 0, c]
            t2 += part[k, 1, c]
        d = t1 / M
        mean[c] = Kt[c] + d
        var[c] = max(t2 / M - d * d, 0.0)


@njit(**PARALLEL_JIT_OPTIONS)
def _bn_apply(x, m, a, b, y, relu, zero):
    # y = (x - m) * a + b, per channel; with relu, then max(y, 0) as relu_forward computes
    # it (NaN passes through, -0 becomes 0)
    C = m.shape[0]
    mt = _tiled(m, C)
    at = _tiled(a, C)
    bt = _tiled(b, C)
    L = mt.shape[0]
    n = x.shape[0]
    for s in prange((n + L - 1) // L):
        o = s * L
        xs = x[o:min(n, o + L)]
        ys = y[o:min(n, o + L)]
        if relu:
            for j in range(xs.shape[0]):
                t = (xs[j] - mt[j]) * at[j] + bt[j]
                ys[j] = t if t > zero or t != t else zero
        else:
            for j in range(xs.shape[0]):
                ys[j] = (xs[j] - mt[j]) * at[j] + bt[j]


@njit(**PARALLEL_JIT_OPTIONS)
def _bn_bwd_sums(dy, z, m, s, nchunks, y, relu, zero, dbeta, dgamma):
    # dbeta = sum(dy), dgamma = sum(dy * xhat) with xhat = (z - m) * s (both float64 [C],
    # zeroed by the caller), from float64 partials. With relu,
    # dy is first written over by dy * (y > 0) (relu_backward's arithmetic), segment by
    # segment while it is in cache, and the sums read that
    C = m.shape[0]
    mt = _tiled(m, C)
    st = _tiled(s, C)
    L = mt.shape[0]
    M = dy.shape[0] // C
    part = np.zeros((nchunks, 2, C), dtype=np.float64)
    for k in prange(nchunks):
        lo = (k * M) // nchunks * C
        hi = ((k + 1) * M) // nchunks * C
        s1 = np.zeros(L, dtype=np.float64)
        s2 = np.zeros(L, dtype=np.float64)
        for o in range(lo, hi, L):
            e = min(hi, o + L)
            gs = dy[o:e]
            zs = z[o:e]
            if relu:
                ys = y[o:e]
                for j in range(gs.shape[0]):  # a select, not a branch: the loop vectorises
                    gs[j] = gs[j] if ys[j] > zero else gs[j] * zero
            for j in range(gs.shape[0]):
                g = np.float64(gs[j])
                s1[j] += g
                s2[j] += g * ((np.float64(zs[j]) - mt[j]) * st[j])
        for r in range(0, L, C):
            for c in range(C):
                part[k, 0, c] += s1[r + c]
                part[k, 1, c] += s2[r + c]
    for c in range(C):
        for k in range(nchunks):
            dbeta[c] += part[k, 0, c]
            dgamma[c] += part[k, 1, c]


@njit(**PARALLEL_JIT_OPTIONS)
def _bn_bwd_dx(dy, z, m, a, q, r, dx):
    # dx = a * dy + q * (z - m) + r, per channel
    C = m.shape[0]
    mt = _tiled(m, C)
    at = _tiled(a, C)
    qt = _tiled(q, C)
    rt = _tiled(r, C)
    L = mt.shape[0]
    n = dy.shape[0]
    for s in prange((n + L - 1) // L):
        o = s * L
        e = min(n, o + L)
        gs = dy[o:e]
        zs = z[o:e]
        ds = dx[o:e]
        for j in range(gs.shape[0]):
            ds[j] = at[j] * gs[j] + qt[j] * (zs[j] - mt[j]) + rt[j]


def batchnorm_forward_train(x, gamma, beta, eps, keep_xhat=False, relu=False):
    """Training-mode batch norm over every axis but the last (channels).

    Returns ``(y, mean, inv_std, xhat_or_None)``:

    * ``y = (x - mean) * inv_std * gamma + beta`` in the dtype of ``x``;
    * ``mean`` (float64, ``[C]``) is the batch mean;
    * ``inv_std`` (float64, ``[C]``) is ``1 / sqrt(var + eps)`` with the
      *biased* batch variance ``var`` (as PyTorch normalizes). The layer
      updating running statistics can recover ``var = inv_std**-2 - eps`` and
      unbias it with ``M / (M - 1)``, ``M = x.size // C``;
    * ``xhat`` (dtype of ``x``) only when ``keep_xhat`` is true, else ``None``
      (backward then recomputes it from ``x``, saving one activation-sized
      buffer).

    With ``relu``, ``y`` is ``max(y, 0)`` (a ReLU fused in the same pass).
    """
    x = _as_act(x)
    C = x.shape[-1]
    x2 = _rows(x)
    if x2.shape[0] == 0:
        raise ValueError("batch norm needs at least one sample per channel")
    g = _channel_vec(gamma, C, np.float64, "gamma")
    b = _channel_vec(beta, C, np.float64, "beta")
    nchunks = min(_BN_CHUNKS, x2.shape[0])
    mean = np.empty(C, dtype=np.float64)
    var = np.empty(C, dtype=np.float64)
    xf = x.reshape(-1)
    _bn_stats(xf, C, nchunks, mean, var)
    inv_std = 1.0 / np.sqrt(var + float(eps))
    dt = x.dtype
    y = np.empty_like(x)
    zero = dt.type(0)
    m = mean.astype(dt)
    _bn_apply(xf, m, (g * inv_std).astype(dt), b.astype(dt), y.reshape(-1), bool(relu), zero)
    xhat = None
    if keep_xhat:
        xhat = np.empty_like(x)
        zeros = np.zeros(C, dtype=dt)
        _bn_apply(xf, m, inv_std.astype(dt), zeros, xhat.reshape(-1), False, zero)
    return y, mean, inv_std, xhat


def batchnorm_eval_affine(gamma, beta, running_mean, running_var, eps, dtype, channels=None):
    """(m, a, b), each [C] in ``dtype``: inference-mode batch norm is ``(x - m) * a + b``
    with a = gamma / sqrt(running_var + eps) computed in float64. A conv that applies the
    batchnorm after it as it writes its output (conv.py's `affine`) gets these same
    vectors, so its results are this function's, bit for bit. ``channels``: the C every
    vector must have (default: gamma's length)."""
    C = np.shape(gamma)[-1] if channels is None else channels
    g = _channel_vec(gamma, C, np.float64, "gamma")
    b = _channel_vec(beta, C, np.float64, "beta")
    rm = _channel_vec(running_mean, C, np.float64, "running_mean")
    rv = _channel_vec(running_var, C, np.float64, "running_var")
    a = g / np.sqrt(rv + float(eps))
    dt = np.dtype(dtype)
    return rm.astype(dt), a.astype(dt), b.astype(dt)


def batchnorm_forward_eval(x, gamma, beta, running_mean, running_var, eps, relu=False):
    """Inference-mode batch norm with running statistics:
    ``y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta``, then
    ``max(y, 0)`` with ``relu``."""
    x = _as_act(x)
    dt = x.dtype
    m, a, b = batchnorm_eval_affine(gamma, beta, running_mean, running_var, eps, dt,
                                    channels=x.shape[-1])
    y = np.empty_like(x)
    _bn_apply(x.reshape(-1), m, a, b, y.reshape(-1), bool(relu), dt.type(0))
    return y


def batchnorm_backward(dy, x_or_xhat, gamma, mean, inv_std, relu_y=None):
    """Gradient of :func:`batchnorm_forward_train`.

    Pass the forward input ``x`` with the ``mean`` and ``inv_std`` it
    returned, or pass ``xhat`` (from ``keep_xhat=True``) with ``mean=None``
    (``inv_std`` is still needed). Returns ``(dx, dgamma, dbeta)``; ``dx`` has
    the dtype of ``dy``, ``dgamma``/``dbeta`` the dtype of ``gamma``.

    With ``relu_y`` (the output of a forward with ``relu=True``), the ReLU's
    gradient comes first: ``dy`` (C-contiguous) is written over by
    ``dy * (relu_y > 0)``. The two halves are also callable apart
    (:func:`batchnorm_backward_sums`, then :func:`batchnorm_backward_dx`), so a
    caller can let ``relu_y`` go before ``dx`` is allocated.
    """
    sums = batchnorm_backward_sums(dy, x_or_xhat, mean, inv_std, relu_y)
    return batchnorm_backward_dx(sums, gamma)


def batchnorm_backward_sums(dy, x_or_xhat, mean, inv_std, relu_y=None):
    """The first pass of :func:`batchnorm_backward`: the per-channel sums (and,
    with ``relu_y``, ReLU's mask written over ``dy``). Returns what
    :func:`batchnorm_backward_dx` takes."""
    if relu_y is not None and not (isinstance(dy, np.ndarray) and dy.flags.c_contiguous):
        raise ValueError("dy must be a C-contiguous array: ReLU's mask is written over it")
    dy = _as_act(dy, "dy")
    z = _as_act(x_or_xhat, "x_or_xhat")
    if z.shape != dy.shape:
        raise ValueError(f"x_or_xhat shape {z.shape} != dy shape {dy.shape}")
    if z.dtype != dy.dtype:
        z = z.astype(dy.dtype)
    C = dy.shape[-1]
    s_true = _channel_vec(inv_std, C, np.float64, "inv_std")
    if mean is None:  # z is xhat already
        m = np.zeros(C, dtype=np.float64)
        s = np.ones(C, dtype=np.float64)
    else:
        m = _channel_vec(mean, C, np.float64, "mean")
        s = s_true
    M = _rows(dy).shape[0]
    if M == 0:
        raise ValueError("batch norm needs at least one sample per channel")
    relu = relu_y is not None
    if relu:
        y = _as_act(relu_y, "relu_y")
        if y.shape != dy.shape or y.dtype != dy.dtype:
            raise ValueError("relu_y must match dy in shape and dtype")
        yf = y.reshape(-1)
    else:
        yf = dy.reshape(-1)  # not read
    nchunks = min(_BN_CHUNKS, M)
    dbeta = np.zeros(C, dtype=np.float64)
    dgamma = np.zeros(C, dtype=np.float64)
    _bn_bwd_sums(dy.reshape(-1), z.reshape(-1), m, s, nchunks, yf, relu, dy.dtype.type(0),
                 dbeta, dgamma)
    return dy, z, m, s, s_true, dbeta, dgamma


def batchnorm_backward_dx(sums, gamma):
    """The second pass of :func:`batchnorm_backward`: ``(dx, dgamma, dbeta)``
    from what :func:`batchnorm_backward_sums` returned."""
    dy, z, m, s, s_true, dbeta, dgamma = sums
    C = dy.shape[-1]
    M = dy.size // C
    gamma_dtype = np.asarray(gamma).dtype
    if gamma_dtype.type not in _FLOATS:
        gamma_dtype = np.dtype(np.float64)
    g = _channel_vec(gamma, C, np.float64, "gamma")
    a = g * s_true
    q = -a * s * dgamma / M
    r = -a * dbeta / M
    dt = dy.dtype
    dx = np.empty_like(dy)
    _bn_bwd_dx(dy.reshape(-1), z.reshape(-1), m.astype(dt), a.astype(dt), q.astype(dt),
               r.astype(dt), dx.reshape(-1))
    return dx, dgamma.astype(gamma_dtype), dbeta.astype(gamma_dtype)


# --------------------------------------------------------------------------
# local response normalization (across channels)
# --------------------------------------------------------------------------

_LRN_BLOCK = 64  # pixels per task


def _pow_mode(beta):
    # closed forms for common exponents: vectorizable, unlike pow() without SVML
    return {0.75: 1, 0.5: 2, 1.0: 3}.get(float(beta), 0)


@njit(**PARALLEL_JIT_OPTIONS)
def _lrn_fwd(x2, size, coef, beta, k, mode, y2, s2):
    # Per pixel, the squares go into a zero-padded buffer so that the window
    # sum is `size` full-length, vectorizable passes over the channels into a
    # private accumulator (measured 3-4x faster than accumulating in place).
    P, C = x2.shape
    lo = size // 2
    nblk = (P + _LRN_BLOCK - 1) // _LRN_BLOCK
    for blk in prange(nblk):
        sq = np.zeros(C + size - 1, dtype=x2.dtype)  # sq[lo + c] = x_c^2
        acc = np.empty(C, dtype=x2.dtype)
        for p in range(blk * _LRN_BLOCK, min(P, (blk + 1) * _LRN_BLOCK)):
            xp = x2[p]
            sp = s2[p]
            yp = y2[p]
            for c in range(C):
                sq[lo + c] = xp[c] * xp[c]
            # output channel c sums input channels c-lo .. c+hi (clipped)
            for c in range(C):
                acc[c] = sq[c]
            for d in range(1, size):
                for c in range(C):
                    acc[c] += sq[c + d]
            for c in range(C):
                acc[c] = k + coef * acc[c]
                sp[c] = acc[c]
            # y = x * scale^-beta; closed forms (same dtype, vectorizable) for
            # common exponents, pow() otherwise
            if mode == 1:
                for c in range(C):
                    yp[c] = xp[c] * np.sqrt(np.sqrt(acc[c])) / acc[c]
            elif mode == 2:
                for c in range(C):
                    yp[c] = xp[c] * np.sqrt(acc[c]) / acc[c]
            elif mode == 3:
                for c in range(C):
                    yp[c] = xp[c] / acc[c]
            else:
                for c in range(C):
                    yp[c] = xp[c] * acc[c] ** (-beta)


@njit(**PARALLEL_JIT_OPTIONS)
def _lrn_bwd(x2, y2, s2, dy2, size, beta, coef2, mode, dx2):
    # dx_j = dy_j * s_j^-beta - coef2 * x_j * sum_{c : j in window(c)} dy_c y_c / s_c
    P, C = x2.shape
    hi = (size - 1) // 2
    nblk = (P + _LRN_BLOCK - 1) // _LRN_BLOCK
    for blk in prange(nblk):
        t = np.zeros(C + size - 1, dtype=x2.dtype)  # t[hi + c] = dy_c y_c / s_c
        acc = np.empty(C, dtype=x2.dtype)
        u = np.empty(C, dtype=x2.dtype)
        for p in range(blk * _LRN_BLOCK, min(P, (blk + 1) * _LRN_BLOCK)):
            xp = x2[p]
            yp = y2[p]
            sp = s2[p]
            gp = dy2[p]
            dp = dx2[p]
            for c in range(C):
                t[hi + c] = gp[c] * yp[c] / sp[c]
            # window(c) = [c-lo, c+hi] contains j  <=>  c in [j-hi, j+lo]
            for j in range(C):
                acc[j] = t[j]
            for d in range(1, size):
                for j in range(C):
                    acc[j] += t[j + d]
            if mode == 1:
                for j in range(C):
                    u[j] = np.sqrt(np.sqrt(sp[j])) / sp[j]
            elif mode == 2:
                for j in range(C):
                    u[j] = np.sqrt(sp[j]) / sp[j]
            elif mode == 3:
                for j in range(C):
                    u[j] = 1.0 / sp[j]
            else:
                for j in range(C):
                    u[j] = sp[j] ** (-beta)
            for j in range(C):
                dp[j] = gp[j] * u[j] - coef2 * xp[j] * acc[j]


def _lrn_check(size, alpha, beta, k):
    size = int(size)
    if size < 1:
        raise ValueError(f"LRN size must be >= 1, got {size}")
    return size, float(alpha), float(beta), float(k)


def lrn_forward(x, size, alpha, beta, k):
    """Local response normalization across channels (PyTorch semantics):
    ``y_c = x_c / scale_c**beta`` with
    ``scale_c = k + alpha/size * sum(x_j**2 for j in [c - size//2, c + (size-1)//2])``,
    the channel window clipped at the edges (exactly
    ``torch.nn.functional.local_response_norm``). Returns ``(y, scale)``, both
    shaped and typed like ``x``; ``scale`` is kept for backward.
    """
    x = _as_act(x)
    size, alpha, beta, k = _lrn_check(size, alpha, beta, k)
    t = x.dtype.type
    y = np.empty_like(x)
    scale = np.empty_like(x)
    if x.size:
        _lrn_fwd(
            _rows(x),
            size,
            t(alpha / size),
            t(beta),
            t(k),
            _pow_mode(beta),
            _rows(y),
            _rows(scale),
        )
    return y, scale


def lrn_backward(x, y, scale, dy, size, alpha, beta):
    """Gradient of :func:`lrn_forward` given its input, output and ``scale``."""
    x = _as_act(x)
    y = _as_act(y, "y")
    scale = _as_act(scale, "scale")
    dy = _as_act(dy, "dy")
    for name, a in (("y", y), ("scale", scale), ("dy", dy)):
        if a.shape != x.shape or a.dtype != x.dtype:
            raise ValueError(f"{name} must match x in shape and dtype")
    size, alpha, beta, _ = _lrn_check(size, alpha, beta, 0.0)
    t = x.dtype.type
    dx = np.empty_like(x)
    if x.size:
        _lrn_bwd(
            _rows(x),
            _rows(y),
            _rows(scale),
            _rows(dy),
            size,
            t(beta),
            t(2.0 * alpha * beta / size),
            _pow_mode(beta),
            _rows(dx),
        )
    return dx
