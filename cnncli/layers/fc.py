"""Fully connected: every neuron sees the whole input volume, as in ordinary neural nets.

An FC layer of K units on a W x H x D input has K*W*H*D weights: the notes' example of the
first FC layer of VGG16 ([7x7x512] -> 4096) holding most of the net's parameters. For the
sliding window it becomes a conv with F = the input's size, P = 0, S = 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cnncli.analysis.memory import Buf, Heap, PlanLayer
from cnncli.layers.base import EngineLayer, LayerSpec, ParseContext
from cnncli.layers.conv import Conv, he_normal
from cnncli.spec.types import Pair, Volume

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    import numpy as np

    from cnncli.analysis.report import Row, Walker
    from cnncli.layers.base import RF
    from cnncli.spec.loading import Located

# Below this many multiply-adds a fully connected GEMM stays on one BLAS thread: lending
# BLAS the cores costs ~1 ms (threadpoolctl), and VGG16's fc1 at batch 64 (6.6 G) runs
# 2x faster on two threads (measured 152 -> 81 ms).
PARALLEL_GEMM_MACS = 200_000_000


@dataclass(frozen=True)
class FC(LayerSpec):
    units: int
    bias: bool

    key = "fc"
    prefix = "fc"
    family = "fc"

    @classmethod
    def parse(cls, ctx: ParseContext, loc: Located, name: str, line: int, where: str) -> FC:
        r = ctx.reader
        s = r.settings(where, loc, {"units", "bias"}, "units")
        if "units" not in s:
            r.error(f"{where}: 'units' is required (or write fc: 4096)", line, name)
        units = r.integer(f"{where}.units", s["units"].value, s["units"].line) \
            if "units" in s else 1
        bias = r.boolean(f"{where}.bias", s["bias"].value, s["bias"].line) \
            if "bias" in s else True
        return cls(name, line, units, bias)

    def wasted_by_mean_subtraction(self) -> int:
        return self.units if self.bias else 0

    def to_yaml(self, scope: str, write_sequence: Any) -> Any:
        return self.units if self.bias else {"units": self.units, "bias": False}

    def settings_text(self) -> str:
        return f"{self.units} units" + ("" if self.bias else ", no bias")

    def analyze(self, w: Walker, vol: Volume, rf: RF, depth: int) -> tuple[Volume, RF]:
        n_in = vol.size
        out = Volume(1, 1, self.units)
        # an FC neuron sees the whole input volume: the receptive field grows to cover it
        new_rf = (rf[0].through(vol.h, 1), rf[1].through(vol.w, 1))
        row = w.row(self.name, "fc", depth, self.settings_text(), vol, out, new_rf, self.line)
        row.weights = self.units * n_in
        row.biases = self.units if self.bias else 0
        row.macs = self.units * n_in
        row.params[f"{self.name}.weight"] = (self.units, n_in)
        if self.bias:
            row.params[f"{self.name}.bias"] = (self.units,)
        w.add(row)
        return out, new_rf

    def training_macs(self, row: Row, first: bool) -> tuple[int, int, int]:
        return row.macs, 0 if first else row.macs, row.macs

    def as_sliding(self, row: Row, convert: Any) -> LayerSpec:
        """F = the whole input volume, P = 0, S = 1: one position at the training size."""
        vin = row.input
        assert vin is not None
        return Conv(self.name, self.line, filters=self.units, size=Pair(vin.h, vin.w),
                    stride=Pair(1, 1), pad=Pair(0, 0), dilation=Pair(1, 1), groups=1,
                    bias=self.bias, rounding=None)

    def sliding_change(self, row: Row) -> tuple[str, dict[str, Any]] | None:
        vin = row.input
        if vin is None:
            return None
        return "fc", {"name": self.name, "input": str(vin), "units": self.units,
                      "filter": f"{vin.h}x{vin.w}" if vin.h != vin.w else str(vin.h),
                      "weight_from": [self.units, vin.size],
                      "weight_to": [self.units, vin.d, vin.h, vin.w]}

    def plan(self, heap: Heap, row: Row, threads: int, ctx: Any) -> PlanLayer:
        return FCPlan(heap, row, threads, self)

    def engine(self, row: Row, ctx: Any) -> EngineLayer:
        return FCEngine(self, row, ctx.rng, ctx.dtype)


# ----------------------------------------------------------------------------- memory plan


class FCPlan(PlanLayer):
    def __init__(self, heap: Heap, row: Row, threads: int, node: FC):
        super().__init__(heap, row, threads)
        assert row.input is not None and row.output is not None
        self.vin, self.vout = row.input, row.output
        self.units = node.units
        self.bias = node.bias
        self.flat_view = row.input.w == row.input.h == 1

    def forward(self, x: Buf, training: bool) -> Buf:
        # NHWC -> (D, H, W) order: a view when H = W = 1, else a contiguous copy
        flat = x if self.flat_view else self.out(self.vin, "input flattened in (D,H,W) order")
        if training:
            self.keep(flat)
        y = self.out(self.vout)
        del flat
        return y

    def backward(self, dy: Buf) -> Buf:
        flat = self.saved[0]
        grads = {f"{self.name}.weight": self.work(0, self.units * self.vin.size)}
        bias = self.work(0, self.units) if self.bias else None
        if bias is not None:
            grads[f"{self.name}.bias"] = bias
        del bias
        # the engine assigns the weight gradient before computing the bias gradient
        self.new_grads(grads)
        del grads, flat
        self.drop()
        if not self.need_dx:
            return self.work(0, 0)
        dflat = self.grad(self.vin)
        if self.flat_view:
            return dflat
        return self.grad(self.vin)  # transposed back to NHWC: a second copy, briefly


# ----------------------------------------------------------------------------- engine


def _gemm_threads(macs: int) -> AbstractContextManager[object]:
    """All cores for a big GEMM done from Python (numba's pool is idle then), else none."""
    from contextlib import nullcontext

    from cnncli.config import blas_threads

    return blas_threads() if macs >= PARALLEL_GEMM_MACS else nullcontext()


class FCEngine(EngineLayer):
    """Flattens its input in (depth, height, width) order, as PyTorch flattens an NCHW
    volume, so `weight[units, D*H*W]` loads from PyTorch unchanged."""

    def __init__(self, layer: FC, row: Row, rng: np.random.Generator, dtype: np.dtype):
        import numpy as np

        super().__init__(layer.name)
        shape = row.params[f"{self.name}.weight"]
        self.params[f"{self.name}.weight"] = he_normal(rng, shape, shape[1], dtype)
        self.bias_key = f"{self.name}.bias" if layer.bias else None
        if self.bias_key:
            self.params[self.bias_key] = np.zeros(shape[0], dtype)
        self._saved_flat: np.ndarray | None = None
        self._saved_shape: tuple[int, ...] | None = None

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        import numpy as np

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
        import numpy as np

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
