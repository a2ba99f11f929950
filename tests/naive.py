"""Deliberately plain reference implementations (nested loops over NumPy arrays).

Slow and obvious on purpose: the Numba kernels are tested against these. Layout is the
engine's: activations NHWC, conv weights OIHW ``w[K, C//groups, Fh, Fw]``, locally
connected weights ``w[K, OH, OW, C, Fh, Fw]`` with bias ``b[K, OH, OW]``. Input indices
outside [0, H) x [0, W) read as zero (``pad`` is the top/left padding).
"""

from __future__ import annotations

import numpy as np

# ----------------------------------------------------------------------------------
# convolution
# ----------------------------------------------------------------------------------


def naive_conv2d(x, w, b, stride, pad, dilation, groups, out_hw):
    """y[n, i, j, k] = b[k] + sum_{c, p, q} w[k, c, p, q] * x[n, i*sh-ph+p*dh, j*sw-pw+q*dw,
    g*Cg + c] with g = k // (K // groups)."""
    N, H, W, C = x.shape
    K, Cg, Fh, Fw = w.shape
    OH, OW = out_hw
    Kg = K // groups
    y = np.zeros((N, OH, OW, K), dtype=np.result_type(x, w))
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                for k in range(K):
                    g = k // Kg
                    s = 0.0
                    for c in range(Cg):
                        for p in range(Fh):
                            for q in range(Fw):
                                ii = i * stride[0] - pad[0] + p * dilation[0]
                                jj = j * stride[1] - pad[1] + q * dilation[1]
                                if 0 <= ii < H and 0 <= jj < W:
                                    s += w[k, c, p, q] * x[n, ii, jj, g * Cg + c]
                    y[n, i, j, k] = s + (b[k] if b is not None else 0.0)
    return y


def naive_conv2d_backward(x, w, dy, stride, pad, dilation, groups):
    """Adjoint of naive_conv2d: returns (dx, dw, db)."""
    N, H, W, C = x.shape
    K, Cg, Fh, Fw = w.shape
    _, OH, OW, _ = dy.shape
    Kg = K // groups
    dx = np.zeros_like(x)
    dw = np.zeros_like(w)
    db = np.zeros(K, dtype=dy.dtype)
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                for k in range(K):
                    g = k // Kg
                    d = dy[n, i, j, k]
                    db[k] += d
                    for c in range(Cg):
                        for p in range(Fh):
                            for q in range(Fw):
                                ii = i * stride[0] - pad[0] + p * dilation[0]
                                jj = j * stride[1] - pad[1] + q * dilation[1]
                                if 0 <= ii < H and 0 <= jj < W:
                                    dw[k, c, p, q] += d * x[n, ii, jj, g * Cg + c]
                                    dx[n, ii, jj, g * Cg + c] += d * w[k, c, p, q]
    return dx, dw, db


# ----------------------------------------------------------------------------------
# locally connected (convolution without parameter sharing)
# ----------------------------------------------------------------------------------


def naive_local2d(x, w, b, stride, pad, dilation, out_hw):
    """y[n, i, j, k] = b[k, i, j] + sum_{c, p, q} w[k, i, j, c, p, q] *
    x[n, i*sh-ph+p*dh, j*sw-pw+q*dw, c]."""
    N, H, W, C = x.shape
    K, OH, OW, _, Fh, Fw = w.shape
    assert (OH, OW) == tuple(out_hw)
    y = np.zeros((N, OH, OW, K), dtype=np.result_type(x, w))
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                for k in range(K):
                    s = 0.0
                    for c in range(C):
                        for p in range(Fh):
                            for q in range(Fw):
                                ii = i * stride[0] - pad[0] + p * dilation[0]
                                jj = j * stride[1] - pad[1] + q * dilation[1]
                                if 0 <= ii < H and 0 <= jj < W:
                                    s += w[k, i, j, c, p, q] * x[n, ii, jj, c]
                    y[n, i, j, k] = s + (b[k, i, j] if b is not None else 0.0)
    return y


def naive_local2d_backward(x, w, dy, stride, pad, dilation):
    """Adjoint of naive_local2d: returns (dx, dw, db)."""
    N, H, W, C = x.shape
    K, OH, OW, _, Fh, Fw = w.shape
    dx = np.zeros_like(x)
    dw = np.zeros_like(w)
    db = np.zeros((K, OH, OW), dtype=dy.dtype)
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                for k in range(K):
                    d = dy[n, i, j, k]
                    db[k, i, j] += d
                    for c in range(C):
                        for p in range(Fh):
                            for q in range(Fw):
                                ii = i * stride[0] - pad[0] + p * dilation[0]
                                jj = j * stride[1] - pad[1] + q * dilation[1]
                                if 0 <= ii < H and 0 <= jj < W:
                                    dw[k, i, j, c, p, q] += d * x[n, ii, jj, c]
                                    dx[n, ii, jj, c] += d * w[k, i, j, c, p, q]
    return dx, dw, db
