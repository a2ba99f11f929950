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

from cnncli.config import PARALLEL_JIT_OPTIONS

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
_BN_CHUNKS = 64  # fixed: partial sums must not depend on the thread count


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


@njit(**PARALLEL_JIT_OPTIONS)
def _bn_stats(x2, nchunks, mean, var):
    # Shifted one-pass sums in float64 (shift = first row): stable for data whose
    # mean is far from zero, and one read of x instead of two. Into mean and var
    # (float64, [C]): kernels return nothing (a dry run can then stand in for any of them,
    # cnncli/engine/warmup.py).
    M, C = x2.shape
    K = np.empty(C, dtype=np.float64)
    for c in range(C):
        K[c] = x2[0, c]
    part = np.zeros((nchunks, 2, C), dtype=np.float64)
    for k in prange(nchunks):
        lo = (k * M) // nchunks
        hi = ((k + 1) * M) // nchunks
        # the chunk's sums in arrays of its own, stored into `part` once at the end: as
        # views of `part` LLVM could not tell them from x's rows, and loaded and stored
        # every sum on every row (same additions, same order: bit-identical; 1.04-1.17x per
        # forward at resnet20's sizes, 2026-11-29, the EPYC VM; the backward's sums pass
        # the same way measured 0.94-1.04x, so it stays as it was)
        s1 = np.zeros(C, dtype=np.float64)
        s2 = np.zeros(C, dtype=np.float64)
        for i in range(lo, hi):
            xi = x2[i]
            for c in range(C):
                d = np.float64(xi[c]) - K[c]
                s1[c] += d
                s2[c] += d * d
        for c in range(C):
            part[k, 0, c] = s1[c]
            part[k, 1, c] = s2[c]
    for c in range(C):
        t1 = 0.0
        t2 = 0.0
        for k in range(nchunks):
            t1 += part[k, 0, c]
            t2 += part[k, 1, c]
        d = t1 / M
        mean[c] = K[c] + d
        var[c] = max(t2 / M - d * d, 0.0)


@njit(**PARALLEL_JIT_OPTIONS)
def _bn_apply(x2, m, a, b, y2, relu, zero, add, s2):
    # y = (x - m) * a + b, per channel; with add, then y + s (a residual block's sum, as
    # numpy's out + short adds it); with relu, then max(y, 0) as relu_forward computes it
    # (NaN passes through, -0 becomes 0)
    M, C = x2.shape
    for i in prange(M):
        xi = x2[i]
        yi = y2[i]
        if add:
            si = s2[i]
            if relu:
                for c in range(C):
                    t = (xi[c] - m[c]) * a[c] + b[c] + si[c]
                    yi[c] = t if t > zero or t != t else zero
            else:
                for c in range(C):
                    yi[c] = (xi[c] - m[c]) * a[c] + b[c] + si[c]
        elif relu:
            for c in range(C):
                t = (xi[c] - m[c]) * a[c] + b[c]
                yi[c] = t if t > zero or t != t else zero
        else:
            for c in range(C):
                yi[c] = (xi[c] - m[c]) * a[c] + b[c]


@njit(**PARALLEL_JIT_OPTIONS)
def _bn_bwd_sums(dy2, z2, m, s, nchunks, y2, relu, zero, dbeta, dgamma):
    # dbeta = sum(dy), dgamma = sum(dy * xhat) with xhat = (z - m) * s (both float64 [C],
    # zeroed by the caller), from float64 partials. With relu,
    # dy is first written over by dy * (y > 0) (relu_backward's arithmetic), row by row
    # while the row is in cache, and the sums read that
    M, C = dy2.shape
    part = np.zeros((nchunks, 2, C), dtype=np.float64)
    for k in prange(nchunks):
        lo = (k * M) // nchunks
        hi = ((k + 1) * M) // nchunks
        s1 = part[k, 0]
        s2 = part[k, 1]
        for i in range(lo, hi):
            gi = dy2[i]
            zi = z2[i]
            if relu:
                yi = y2[i]
                for c in range(C):  # a select, not a branch: the loop vectorises
                    gi[c] = gi[c] if yi[c] > zero else gi[c] * zero
            for c in range(C):
                g = np.float64(gi[c])
                s1[c] += g
                s2[c] += g * ((np.float64(zi[c]) - m[c]) * s[c])
    for c in range(C):
        for k in range(nchunks):
            dbeta[c] += part[k, 0, c]
            dgamma[c] += part[k, 1, c]


@njit(**PARALLEL_JIT_OPTIONS)
def _bn_bwd_dx(dy2, z2, m, a, q, r, dx2):
    # dx = a * dy + q * (z - m) + r, per channel
    M, C = dy2.shape
    for i in prange(M):
        gi = dy2[i]
        zi = z2[i]
        di = dx2[i]
        for c in range(C):
            di[c] = a[c] * gi[c] + q[c] * (zi[c] - m[c]) + r[c]


def batchnorm_forward_train(x, gamma, beta, eps, keep_xhat=False, relu=False, add=None):
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

    With ``add`` (an array like ``x``), ``y`` is ``y + add`` (a residual block's sum, its
    shortcut's output added in the same pass, as ``np.add`` would), then with ``relu``
    ``max(y, 0)`` (a ReLU fused in the same pass).
    """
    x = _as_act(x)
    C = x.shape[-1]
    x2 = _rows(x)
    if x2.shape[0] == 0:
        raise ValueError("batch norm needs at least one sample per channel")
    if add is not None and (not isinstance(add, np.ndarray) or add.shape != x.shape
                            or add.dtype != x.dtype or not add.flags.c_contiguous):
        raise ValueError(f"add must be a C-contiguous {x.dtype} array of shape {x.shape}, "
                         f"got {getattr(add, 'shape', type(add))}")
    g = _channel_vec(gamma, C, np.float64, "gamma")
    b = _channel_vec(beta, C, np.float64, "beta")
    nchunks = min(_BN_CHUNKS, x2.shape[0])
    mean = np.empty(C, dtype=np.float64)
    var = np.empty(C, dtype=np.float64)
    _bn_stats(x2, nchunks, mean, var)
    inv_std = 1.0 / np.sqrt(var + float(eps))
    dt = x.dtype
    y = np.empty_like(x)
    zero = dt.type(0)
    _bn_apply(x2, mean.astype(dt), (g * inv_std).astype(dt), b.astype(dt), _rows(y),
              bool(relu), zero, add is not None, x2 if add is None else _rows(add))
    xhat = None
    if keep_xhat:
        xhat = np.empty_like(x)
        zeros = np.zeros(C, dtype=dt)
        _bn_apply(x2, mean.astype(dt), inv_std.astype(dt), zeros, _rows(xhat), False, zero,
                  False, x2)
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
    x2 = _rows(x)
    _bn_apply(x2, m, a, b, _rows(y), bool(relu), dt.type(0), False, x2)
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
    dy2 = _rows(dy)
    z2 = _rows(z)
    M = dy2.shape[0]
    if M == 0:
        raise ValueError("batch norm needs at least one sample per channel")
    relu = relu_y is not None
    if relu:
        y = _as_act(relu_y, "relu_y")
        if y.shape != dy.shape or y.dtype != dy.dtype:
            raise ValueError("relu_y must match dy in shape and dtype")
        y2 = _rows(y)
    else:
        y2 = dy2  # not read
    nchunks = min(_BN_CHUNKS, M)
    dbeta = np.zeros(dy2.shape[1], dtype=np.float64)
    dgamma = np.zeros(dy2.shape[1], dtype=np.float64)
    _bn_bwd_sums(dy2, z2, m, s, nchunks, y2, relu, dy.dtype.type(0), dbeta, dgamma)
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
    _bn_bwd_dx(_rows(dy), _rows(z), m.astype(dt), a.astype(dt), q.astype(dt), r.astype(dt),
               _rows(dx))
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
