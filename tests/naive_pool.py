"""Deliberately plain nested-loop NumPy references for the pooling and
normalization kernels (NHWC). Slow and obvious on purpose: no vectorization
tricks, one element at a time, straight from the definitions."""

from __future__ import annotations

import numpy as np


def out_size(n, k, s, p, ceil=False):
    """PyTorch's pooling output size for one axis (symmetric padding p)."""
    if ceil:
        o = -(-(n + 2 * p - k) // s) + 1
        if (o - 1) * s >= n + p:  # last window must start inside input or left pad
            o -= 1
    else:
        o = (n + 2 * p - k) // s + 1
    return o


def _windows(H, W, size, stride, pad, out_hw):
    kh, kw = size
    sh, sw = stride
    ph, pw = pad
    OH, OW = out_hw
    for oh in range(OH):
        for ow in range(OW):
            rows = [oh * sh - ph + i for i in range(kh)]
            cols = [ow * sw - pw + j for j in range(kw)]
            yield oh, ow, rows, cols


def max_pool(x, size, stride, pad, out_hw):
    N, H, W, C = x.shape
    y = np.full((N,) + tuple(out_hw) + (C,), -np.inf, dtype=x.dtype)
    sw_ = np.full(y.shape, -1, dtype=np.int64)
    for n in range(N):
        for c in range(C):
            for oh, ow, rows, cols in _windows(H, W, size, stride, pad, out_hw):
                for h in rows:
                    for w in cols:
                        if 0 <= h < H and 0 <= w < W and x[n, h, w, c] > y[n, oh, ow, c]:
                            y[n, oh, ow, c] = x[n, h, w, c]
                            sw_[n, oh, ow, c] = h * W + w
    return y, sw_


def max_pool_backward(dy, switches, in_hw):
    N, OH, OW, C = dy.shape
    H, W = in_hw
    dx = np.zeros((N, H, W, C), dtype=dy.dtype)
    for n in range(N):
        for oh in range(OH):
            for ow in range(OW):
                for c in range(C):
                    s = switches[n, oh, ow, c]
                    if s >= 0:
                        dx[n, s // W, s % W, c] += dy[n, oh, ow, c]
    return dx


def _divisor(rows, cols, H, W, pad):
    # window clipped to the padded extent [-pad, H + pad)
    ph, pw = pad
    nr = sum(1 for h in rows if -ph <= h < H + ph)
    nc = sum(1 for w in cols if -pw <= w < W + pw)
    return nr * nc


def avg_pool(x, size, stride, pad, out_hw):
    N, H, W, C = x.shape
    y = np.zeros((N,) + tuple(out_hw) + (C,), dtype=x.dtype)
    for n in range(N):
        for c in range(C):
            for oh, ow, rows, cols in _windows(H, W, size, stride, pad, out_hw):
                total = 0.0
                for h in rows:
                    for w in cols:
                        if 0 <= h < H and 0 <= w < W:
                            total += x[n, h, w, c]
                y[n, oh, ow, c] = total / _divisor(rows, cols, H, W, pad)
    return y


def avg_pool_backward(dy, size, stride, pad, in_hw):
    N, OH, OW, C = dy.shape
    H, W = in_hw
    dx = np.zeros((N, H, W, C), dtype=dy.dtype)
    for n in range(N):
        for c in range(C):
            for oh, ow, rows, cols in _windows(H, W, size, stride, pad, (OH, OW)):
                g = dy[n, oh, ow, c] / _divisor(rows, cols, H, W, pad)
                for h in rows:
                    for w in cols:
                        if 0 <= h < H and 0 <= w < W:
                            dx[n, h, w, c] += g
    return dx


def l2_pool(x, size, stride, pad, out_hw):
    N, H, W, C = x.shape
    y = np.zeros((N,) + tuple(out_hw) + (C,), dtype=x.dtype)
    for n in range(N):
        for c in range(C):
            for oh, ow, rows, cols in _windows(H, W, size, stride, pad, out_hw):
                total = 0.0
                for h in rows:
                    for w in cols:
                        if 0 <= h < H and 0 <= w < W:
                            total += x[n, h, w, c] ** 2
                y[n, oh, ow, c] = np.sqrt(total)
    return y


def l2_pool_backward(x, y, dy, size, stride, pad):
    N, H, W, C = x.shape
    OH, OW = dy.shape[1:3]
    dx = np.zeros_like(x)
    for n in range(N):
        for c in range(C):
            for oh, ow, rows, cols in _windows(H, W, size, stride, pad, (OH, OW)):
                if y[n, oh, ow, c] == 0:
                    continue
                for h in rows:
                    for w in cols:
                        if 0 <= h < H and 0 <= w < W:
                            dx[n, h, w, c] += dy[n, oh, ow, c] * x[n, h, w, c] / y[n, oh, ow, c]
    return dx


def batchnorm_train(x, gamma, beta, eps):
    """Returns (y, mean, biased var)."""
    C = x.shape[-1]
    x2 = x.reshape(-1, C)
    M = x2.shape[0]
    mean = np.zeros(C)
    var = np.zeros(C)
    for c in range(C):
        for i in range(M):
            mean[c] += x2[i, c]
        mean[c] /= M
        for i in range(M):
            var[c] += (x2[i, c] - mean[c]) ** 2
        var[c] /= M
    y2 = np.zeros_like(x2)
    for i in range(M):
        for c in range(C):
            y2[i, c] = (x2[i, c] - mean[c]) / np.sqrt(var[c] + eps) * gamma[c] + beta[c]
    return y2.reshape(x.shape), mean, var


def batchnorm_eval(x, gamma, beta, rmean, rvar, eps):
    C = x.shape[-1]
    x2 = x.reshape(-1, C)
    y2 = np.zeros_like(x2)
    for i in range(x2.shape[0]):
        for c in range(C):
            y2[i, c] = (x2[i, c] - rmean[c]) / np.sqrt(rvar[c] + eps) * gamma[c] + beta[c]
    return y2.reshape(x.shape)


def batchnorm_backward(dy, x, gamma, eps):
    """The CS231n staged backward pass, one channel at a time."""
    C = x.shape[-1]
    x2 = x.reshape(-1, C)
    g2 = dy.reshape(-1, C)
    M = x2.shape[0]
    dx2 = np.zeros_like(x2)
    dgamma = np.zeros(C)
    dbeta = np.zeros(C)
    for c in range(C):
        mu = sum(x2[i, c] for i in range(M)) / M
        var = sum((x2[i, c] - mu) ** 2 for i in range(M)) / M
        istd = 1.0 / np.sqrt(var + eps)
        xhat = [(x2[i, c] - mu) * istd for i in range(M)]
        dxhat = [g2[i, c] * gamma[c] for i in range(M)]
        for i in range(M):
            dbeta[c] += g2[i, c]
            dgamma[c] += g2[i, c] * xhat[i]
        s1 = sum(dxhat)
        s2 = sum(dxhat[i] * xhat[i] for i in range(M))
        for i in range(M):
            dx2[i, c] = istd / M * (M * dxhat[i] - s1 - xhat[i] * s2)
    return dx2.reshape(x.shape), dgamma, dbeta


def _lrn_window(c, C, size):
    return range(max(0, c - size // 2), min(C, c + (size - 1) // 2 + 1))


def lrn(x, size, alpha, beta, k):
    """Returns (y, scale)."""
    C = x.shape[-1]
    x2 = x.reshape(-1, C)
    y2 = np.zeros_like(x2)
    s2 = np.zeros_like(x2)
    for p in range(x2.shape[0]):
        for c in range(C):
            sq = 0.0
            for j in _lrn_window(c, C, size):
                sq += x2[p, j] ** 2
            s2[p, c] = k + alpha / size * sq
            y2[p, c] = x2[p, c] / s2[p, c] ** beta
    return y2.reshape(x.shape), s2.reshape(x.shape)


def lrn_backward(x, dy, size, alpha, beta, k):
    """Full Jacobian-transpose product, element by element."""
    C = x.shape[-1]
    x2 = x.reshape(-1, C)
    g2 = dy.reshape(-1, C)
    _, s = lrn(x, size, alpha, beta, k)
    s2 = s.reshape(-1, C)
    dx2 = np.zeros_like(x2)
    for p in range(x2.shape[0]):
        for c in range(C):  # output channel
            for j in range(C):  # input channel
                d = s2[p, c] ** -beta if j == c else 0.0
                if j in _lrn_window(c, C, size):
                    d -= x2[p, c] * beta * s2[p, c] ** (-beta - 1) * alpha / size * 2 * x2[p, j]
                dx2[p, j] += g2[p, c] * d
    return dx2.reshape(x.shape)


def rel_error(a, b):
    """|a - b| / (|a| + |b|) over whole arrays (0 when both are zero)."""
    den = np.linalg.norm(a) + np.linalg.norm(b)
    return 0.0 if den == 0 else np.linalg.norm(a - b) / den


def numeric_gradient(f, x, dy, h=1e-6):
    """Centred differences of loss = sum(f(x) * dy) w.r.t. every element of x."""
    g = np.zeros_like(x)
    xf = x.reshape(-1)
    gf = g.reshape(-1)
    for i in range(xf.size):
        old = xf[i]
        xf[i] = old + h
        lp = np.sum(f(x) * dy)
        xf[i] = old - h
        lm = np.sum(f(x) * dy)
        xf[i] = old
        gf[i] = (lp - lm) / (2 * h)
    return g
