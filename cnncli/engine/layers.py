"""One small class per layer type: forward, backward and parameters side by side.

Activations are NHWC (`x[N, H, W, C]`) inside the engine; parameters are kept in
PyTorch's layouts (conv OIHW, fc [units, D*H*W] over an input flattened in
(depth, height, width) order), so they move to and from PyTorch without guesswork.
Output sizes come from the report (`stats.analyze`), never recomputed here, so the
engine and `cnncli check` cannot disagree about a volume.

Each layer's `forward` keeps exactly what its `backward` needs, and `backward`
returns the gradient of its input after storing its parameters' gradients in
`self.grads` (same keys as `self.params`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import numpy as np

from cnncli.analysis.report import Row
from cnncli.config import blas_threads
from cnncli.engine.kernels import conv as conv_k
from cnncli.engine.kernels import norm as norm_k
from cnncli.engine.kernels import pool as pool_k
from cnncli.spec import parse as S


class Layer:
    """The common surface: params/grads/buffers dicts keyed by the full parameter name."""

    def __init__(self, name: str):
        self.name = name
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.need_dx = True  # the network's first layer skips its input gradient

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dy: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def release(self) -> None:
        """Drop what forward saved for backward (evaluation keeps no activations)."""
        for key in list(vars(self)):
            if key.startswith("_saved"):
                setattr(self, key, None)


def he_normal(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int,
              dtype: np.dtype) -> np.ndarray:
    """He initialisation (std sqrt(2/fan_in)), the notes' advice for ReLU nets."""
    return (rng.standard_normal(shape) * np.sqrt(2.0 / max(1, fan_in))).astype(dtype)


# ------------------------------------------------------------------ dot products


class _Windowed(Layer):
    """What conv and local share: the window geometry, He-initialised weights and an
    optional bias (shapes from the report), the input kept for backward."""

    def __init__(self, layer: S.Conv | S.Local, row: Row, rng: np.random.Generator,
                 dtype: np.dtype, fan_in: int):
        super().__init__(layer.name)
        self.stride = (layer.stride.h, layer.stride.w)
        self.pad = (layer.pad.h, layer.pad.w)
        self.dilation = (layer.dilation.h, layer.dilation.w)
        assert row.output is not None
        self.out_hw = (row.output.h, row.output.w)
        self.weight_key = f"{self.name}.weight"
        self.params[self.weight_key] = he_normal(rng, row.params[self.weight_key], fan_in, dtype)
        self.bias_key = f"{self.name}.bias" if layer.bias else None
        if self.bias_key:
            self.params[self.bias_key] = np.zeros(row.params[self.bias_key], dtype)
        self._saved_x: np.ndarray | None = None

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        self._saved_x = x if training else None
        b = self.params[self.bias_key] if self.bias_key else None
        return self._forward(x, self.params[self.weight_key], b)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        assert self._saved_x is not None, f"{self.name}: backward without a training forward"
        dx, dw, db = self._backward(self._saved_x, self.params[self.weight_key], dy)
        self.grads[self.weight_key] = dw
        if self.bias_key:
            self.grads[self.bias_key] = db
        self._saved_x = None
        return dx

    def _forward(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    def _backward(self, x: np.ndarray, w: np.ndarray,
                  dy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError


class Conv(_Windowed):
    """y = w * x + b, one filter bank shared by every position (OIHW weights)."""

    def __init__(self, layer: S.Conv, row: Row, rng: np.random.Generator, dtype: np.dtype):
        shape = row.params[f"{layer.name}.weight"]
        super().__init__(layer, row, rng, dtype, fan_in=int(np.prod(shape[1:])))
        self.groups = layer.groups

    def _forward(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
        return conv_k.conv2d_forward(x, w, b, self.stride, self.pad, self.dilation,
                                     self.groups, self.out_hw)

    def _backward(self, x: np.ndarray, w: np.ndarray,
                  dy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return conv_k.conv2d_backward(x, w, dy, self.stride, self.pad, self.dilation,
                                      self.groups, need_dx=self.need_dx)


class Local(_Windowed):
    """The notes' locally connected layer: a conv without parameter sharing
    (weights [K, OH, OW, D, Fh, Fw], bias [K, OH, OW])."""

    def __init__(self, layer: S.Local, row: Row, rng: np.random.Generator, dtype: np.dtype):
        shape = row.params[f"{layer.name}.weight"]
        super().__init__(layer, row, rng, dtype, fan_in=shape[3] * shape[4] * shape[5])

    def _forward(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
        return conv_k.local2d_forward(x, w, b, self.stride, self.pad, self.dilation,
                                      self.out_hw)

    def _backward(self, x: np.ndarray, w: np.ndarray,
                  dy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return conv_k.local2d_backward(x, w, dy, self.stride, self.pad, self.dilation,
                                       need_dx=self.need_dx)


# Below this many multiply-adds a fully connected GEMM stays on one BLAS thread: lending
# BLAS the cores costs ~1 ms (threadpoolctl), and VGG16's fc1 at batch 64 (6.6 G) runs
# 2x faster on two threads (measured 152 -> 81 ms).
PARALLEL_GEMM_MACS = 200_000_000


def _gemm_threads(macs: int) -> AbstractContextManager[object]:
    """All cores for a big GEMM done from Python (numba's pool is idle then), else none."""
    return blas_threads() if macs >= PARALLEL_GEMM_MACS else nullcontext()


class FC(Layer):
    """Fully connected: flattens its input in (depth, height, width) order, as PyTorch
    flattens an NCHW volume, so `weight[units, D*H*W]` loads from PyTorch unchanged."""

    def __init__(self, layer: S.FC, row: Row, rng: np.random.Generator, dtype: np.dtype):
        super().__init__(layer.name)
        shape = row.params[f"{self.name}.weight"]
        self.params[f"{self.name}.weight"] = he_normal(rng, shape, shape[1], dtype)
        self.bias_key = f"{self.name}.bias" if layer.bias else None
        if self.bias_key:
            self.params[self.bias_key] = np.zeros(shape[0], dtype)
        self._saved_flat: np.ndarray | None = None
        self._saved_shape: tuple[int, ...] | None = None

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        n = x.shape[0]
        # NHWC -> (D, H, W) order; a no-op copy-free reshape when H = W = 1
        flat = x.reshape(n, -1) if x.shape[1] == x.shape[2] == 1 else \
            np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(n, -1)
        if training:
            self._saved_flat, self._saved_shape = flat, x.shape
        w = self.params[f"{self.name}.weight"]
        with _gemm_threads(w.size * n):
            y = flat @ w.T
        if self.bias_key:
            y += self.params[self.bias_key]
        return y.reshape(n, 1, 1, -1)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        assert self._saved_flat is not None and self._saved_shape is not None
        d = dy.reshape(dy.shape[0], -1)
        w = self.params[f"{self.name}.weight"]
        with _gemm_threads(w.size * d.shape[0]):
            self.grads[f"{self.name}.weight"] = d.T @ self._saved_flat
        if self.bias_key:
            self.grads[self.bias_key] = d.sum(axis=0)
        n, h, wd, c = self._saved_shape
        self._saved_flat = None
        if not self.need_dx:
            return np.empty(0)
        with _gemm_threads(w.size * d.shape[0]):
            dflat = d @ w
        if h == wd == 1:
            return dflat.reshape(n, 1, 1, c)
        return np.ascontiguousarray(dflat.reshape(n, c, h, wd).transpose(0, 2, 3, 1))


# ------------------------------------------------------------------ pooling


class Pool(Layer):
    """Max pooling keeps its argmax "switches" for backward, as the notes describe."""

    def __init__(self, layer: S.Pool, row: Row):
        super().__init__(layer.name)
        assert row.input is not None and row.output is not None
        self.type = layer.type
        self.is_global = layer.is_global
        if layer.is_global:
            self.size = (row.input.h, row.input.w)
            self.stride = self.size
            self.pad = (0, 0)
        else:
            assert layer.size is not None and layer.stride is not None
            self.size = (layer.size.h, layer.size.w)
            self.stride = (layer.stride.h, layer.stride.w)
            self.pad = (layer.pad.h, layer.pad.w)
        self.out_hw = (row.output.h, row.output.w)
        self.in_hw = (row.input.h, row.input.w)
        self._saved: tuple[np.ndarray, ...] | None = None

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        if self.is_global and self.type == "avg":
            y = x.mean(axis=(1, 2), keepdims=True, dtype=np.float64).astype(x.dtype)
            self._saved = () if training else None
            return y
        if self.type == "max":
            y, switches = pool_k.max_pool_forward(x, self.size, self.stride, self.pad, self.out_hw)
            self._saved = (switches,) if training else None
        elif self.type == "avg":
            y = pool_k.avg_pool_forward(x, self.size, self.stride, self.pad, self.out_hw)
            self._saved = () if training else None
        else:
            y = pool_k.l2_pool_forward(x, self.size, self.stride, self.pad, self.out_hw)
            self._saved = (x, y) if training else None
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        assert self._saved is not None, f"{self.name}: backward without a training forward"
        saved, self._saved = self._saved, None
        if self.is_global and self.type == "avg":
            h, w = self.in_hw
            return np.broadcast_to(dy / (h * w), (dy.shape[0], h, w, dy.shape[3])).copy()
        if self.type == "max":
            return pool_k.max_pool_backward(dy, saved[0], self.in_hw)
        if self.type == "avg":
            return pool_k.avg_pool_backward(dy, self.size, self.stride, self.pad, self.in_hw)
        return pool_k.l2_pool_backward(saved[0], saved[1], dy, self.size, self.stride, self.pad)

    def release(self) -> None:
        self._saved = None


# ------------------------------------------------------------------ nonlinearities


class Activation(Layer):
    """relu, leaky_relu, tanh, sigmoid; in place when the layer before allows it."""

    def __init__(self, layer: S.Activation, in_place: bool):
        super().__init__(layer.name)
        self.function = layer.function
        self.slope = layer.slope
        self.in_place = in_place
        self._saved: np.ndarray | None = None

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        out = x if self.in_place else None
        f = self.function
        if f == "relu":
            y = np.maximum(x, 0, out=out)
        elif f == "leaky_relu":
            y = np.where(x > 0, x, x * x.dtype.type(self.slope))
            if out is not None:
                out[...] = y
                y = out
        elif f == "tanh":
            y = np.tanh(x, out=out)
        else:
            # 1/(1+e^-x), written so that large |x| neither overflows nor loses precision
            e = np.exp(-np.abs(x))
            y = np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)
            if out is not None:
                out[...] = y
                y = out
        # backward needs only the output (relu/leaky: its sign; tanh/sigmoid: its value)
        self._saved = y if training else None
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        assert self._saved is not None, f"{self.name}: backward without a training forward"
        y, self._saved = self._saved, None
        f = self.function
        if f == "relu":
            return dy * (y > 0)
        if f == "leaky_relu":
            return np.where(y > 0, dy, dy * dy.dtype.type(self.slope))
        if f == "tanh":
            return dy * (1 - y * y)
        return dy * y * (1 - y)


class Dropout(Layer):
    """Inverted dropout: scaled by 1/(1-p) at training time, the identity at test time."""

    def __init__(self, layer: S.Dropout, rng: np.random.Generator):
        super().__init__(layer.name)
        self.p = layer.p
        self.rng = rng
        self._saved_mask: np.ndarray | None = None

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        if not training or self.p == 0:
            self._saved_mask = None
            return x
        keep = 1.0 - self.p
        mask = (self.rng.random(x.shape, dtype=np.float32) < keep).astype(x.dtype)
        mask /= x.dtype.type(keep)
        self._saved_mask = mask
        return x * mask

    def backward(self, dy: np.ndarray) -> np.ndarray:
        mask, self._saved_mask = self._saved_mask, None
        return dy if mask is None else dy * mask


# ------------------------------------------------------------------ normalization


class BatchNorm(Layer):
    """Batch statistics in training (running statistics updated with `momentum`, variance
    unbiased, as PyTorch does); running statistics in evaluation."""

    def __init__(self, layer: S.BatchNorm, row: Row, dtype: np.dtype):
        super().__init__(layer.name)
        assert row.output is not None
        c = row.output.d
        self.eps, self.momentum = layer.eps, layer.momentum
        self.params[f"{self.name}.weight"] = np.ones(c, dtype)
        self.params[f"{self.name}.bias"] = np.zeros(c, dtype)
        self.buffers[f"{self.name}.running_mean"] = np.zeros(c, dtype)
        self.buffers[f"{self.name}.running_var"] = np.ones(c, dtype)
        self._saved: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        gamma = self.params[f"{self.name}.weight"]
        beta = self.params[f"{self.name}.bias"]
        rm = self.buffers[f"{self.name}.running_mean"]
        rv = self.buffers[f"{self.name}.running_var"]
        if not training:
            return norm_k.batchnorm_forward_eval(x, gamma, beta, rm, rv, self.eps)
        y, mean, inv_std, _ = norm_k.batchnorm_forward_train(x, gamma, beta, self.eps)
        m = x.size // x.shape[-1]
        var = inv_std ** -2 - self.eps
        unbiased = var * m / max(1, m - 1)
        rm *= 1 - self.momentum
        rm += (self.momentum * mean).astype(rm.dtype)
        rv *= 1 - self.momentum
        rv += (self.momentum * unbiased).astype(rv.dtype)
        self._saved = (x, mean, inv_std)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        assert self._saved is not None, f"{self.name}: backward without a training forward"
        x, mean, inv_std = self._saved
        self._saved = None
        dx, dgamma, dbeta = norm_k.batchnorm_backward(dy, x, self.params[f"{self.name}.weight"],
                                                      mean, inv_std)
        self.grads[f"{self.name}.weight"] = dgamma
        self.grads[f"{self.name}.bias"] = dbeta
        return dx


class LRN(Layer):
    """AlexNet's local response normalization across channels (PyTorch's formula:
    alpha is divided by the window size)."""

    def __init__(self, layer: S.LRN):
        super().__init__(layer.name)
        self.size, self.alpha, self.beta, self.k = layer.size, layer.alpha, layer.beta, layer.k
        self._saved: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        y, scale = norm_k.lrn_forward(x, self.size, self.alpha, self.beta, self.k)
        self._saved = (x, y, scale) if training else None
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        assert self._saved is not None, f"{self.name}: backward without a training forward"
        x, y, scale = self._saved
        self._saved = None
        return norm_k.lrn_backward(x, y, scale, dy, self.size, self.alpha, self.beta)


# ------------------------------------------------------------------ losses


def softmax_cross_entropy(scores: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of softmax(scores) and its gradient; scores [N, K]."""
    n = scores.shape[0]
    shifted = scores - scores.max(axis=1, keepdims=True)  # exp never overflows
    log_z = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_p = shifted - log_z
    loss = -float(log_p[np.arange(n), labels].mean())
    grad = np.exp(log_p)
    grad[np.arange(n), labels] -= 1
    return loss, (grad / n).astype(scores.dtype)


def svm_hinge(scores: np.ndarray, labels: np.ndarray,
              margin: float = 1.0) -> tuple[float, np.ndarray]:
    """The notes' multiclass SVM: mean over images of sum_j!=y max(0, s_j - s_y + margin)."""
    n = scores.shape[0]
    correct = scores[np.arange(n), labels][:, None]
    margins = np.maximum(0, scores - correct + margin)
    margins[np.arange(n), labels] = 0
    loss = float(margins.sum() / n)
    grad = (margins > 0).astype(scores.dtype)
    grad[np.arange(n), labels] = -grad.sum(axis=1)
    return loss, grad / n


LOSSES = {"softmax": softmax_cross_entropy, "svm": svm_hinge}
