"""Pooling: a window slides over each depth slice independently and keeps its max (or
average, or L2 norm). The depth is unchanged; with F = 2, S = 2 it halves width and height
and drops 75% of the activations. Global pooling takes each whole slice to one number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cnncli.analysis.memory import FLOAT64, INT32, Buf, Heap, PlanLayer
from cnncli.layers.base import EngineLayer, LayerSpec, ParseContext, Window
from cnncli.spec.loading import show
from cnncli.spec.types import Pair, Problem, Volume

if TYPE_CHECKING:
    import numpy as np

    from cnncli.analysis.report import Row, Walker
    from cnncli.layers.base import RF
    from cnncli.spec.loading import Located

POOL_TYPES = ("max", "avg", "l2")
_KEYS = {"size", "stride", "pad", "type", "global", "rounding"}


@dataclass(frozen=True)
class Pool(LayerSpec):
    size: Pair | None  # None only for global pooling
    stride: Pair | None
    pad: Pair
    type: str
    is_global: bool
    rounding: str | None

    key = "pool"
    prefix = "pool"
    family = "pool"
    windowed = True

    def output_reusable(self) -> bool:
        return self.type != "l2"  # L2 pooling's backward reads its own output

    # ------------------------------------------------------------------ the spec file
    @classmethod
    def parse(cls, ctx: ParseContext, loc: Located, name: str, line: int,
              where: str) -> Pool:
        r = ctx.reader
        s = r.settings(where, loc, _KEYS, None)
        is_global = r.boolean(f"{where}.global", s["global"].value, s["global"].line) \
            if "global" in s else False
        pool_type = "max"
        if "type" in s:
            if not isinstance(s["type"].value, str) or s["type"].value not in POOL_TYPES:
                r.error(f"{where}.type: expected one of {', '.join(POOL_TYPES)}, "
                        f"got {show(s['type'].value)}", s["type"].line, name)
            else:
                pool_type = s["type"].value
        rounding = r.rounding(f"{where}.rounding", s.get("rounding"))
        if is_global:
            for key in ("size", "stride", "pad"):
                if key in s:
                    r.error(f"{where}: '{key}' has no meaning with global: true", s[key].line,
                            name)
            return cls(name, line, None, None, Pair(0, 0), pool_type, True, rounding)
        if "size" not in s:
            r.error(f"{where}: 'size' is required (or global: true)", line, name)
        size = r.pair(f"{where}.size", s.get("size"), 2, 1)
        stride = r.pair(f"{where}.stride", s["stride"], 1, 1) if "stride" in s else size
        pad = r.pair(f"{where}.pad", s.get("pad"), 0, 0)
        return cls(name, line, size, stride, pad, pool_type, False, rounding)

    def to_yaml(self, scope: str, write_sequence: Any) -> Any:
        s: dict[str, Any] = {"global": True} if self.is_global else {}
        if self.size is not None and self.stride is not None:
            s["size"] = self.size.to_yaml()
            if self.stride != self.size:
                s["stride"] = self.stride.to_yaml()
        if self.pad != Pair(0, 0):
            s["pad"] = self.pad.to_yaml()
        if self.type != "max":
            s["type"] = self.type
        if self.rounding:
            s["rounding"] = self.rounding
        return s

    # ------------------------------------------------------------------ analysis
    def settings_text(self) -> str:
        if self.is_global:
            return f"{self.type}, global"
        settings = f"{self.type} {self.size}/{self.stride}"
        if self.pad != Pair(0, 0):
            settings += f", pad {self.pad}"
        if self.rounding:
            settings += f", {self.rounding}"
        return settings

    def analyze(self, w: Walker, vol: Volume, rf: RF, depth: int) -> tuple[Volume, RF]:
        if self.is_global:
            out = Volume(1, 1, vol.d)
            new_rf = (rf[0].through(vol.h, 1), rf[1].through(vol.w, 1))
            w.add(w.row(self.name, "pool", depth, self.settings_text(), vol, out, new_rf,
                        self.line))
            return out, new_rf
        assert self.size is not None and self.stride is not None
        oh, ow, notes = w.windows(self, vol, self.size, self.stride, self.pad, Pair(1, 1),
                                  is_pool=True)
        out = Volume(ow, oh, vol.d)
        new_rf = (rf[0].through(self.size.h, self.stride.h),
                  rf[1].through(self.size.w, self.stride.w))
        row = w.row(self.name, "pool", depth, self.settings_text(), vol, out, new_rf, self.line)
        row.notes = notes
        w.add(row)
        # a window over the whole volume is global pooling, which the notes recommend in
        # place of big FC layers; only windows > 3 that leave several outputs are destructive
        covers_all = (oh == ow == 1 and self.size.h - self.pad.h >= vol.h
                      and self.size.w - self.pad.w >= vol.w)
        if max(self.size.h, self.size.w) > 3 and not covers_all:
            w.warnings.append(Problem(
                f"{self.name}: pooling window {self.size} is larger than 3; the notes warn "
                "such pooling is too destructive (2x2/2 or 3x3/2 are the usual choices)",
                self.line, self.name))
        return out, new_rf

    # ------------------------------------------------------------------ sliding window
    def window(self) -> Window | None:
        if self.is_global or self.size is None or self.stride is None:
            return None  # it pools whatever it is given; converted before sliding
        return Window(self.size, self.stride, self.pad, Pair(1, 1), True, self.rounding,
                      f"{self.type} pool")

    def as_sliding(self, row: Row, convert: Any) -> LayerSpec:
        """Global pooling at the training size is a window of that size sliding by 1."""
        if not self.is_global or row.input is None:
            return self
        vin = row.input
        return Pool(self.name, self.line, Pair(vin.h, vin.w), Pair(1, 1), Pair(0, 0),
                    self.type, False, None)

    def sliding_change(self, row: Row) -> tuple[str, dict[str, Any]] | None:
        if not self.is_global or row.input is None:
            return None
        return "global pool", {"name": self.name, "type": self.type, "input": str(row.input)}

    def plan(self, heap: Heap, row: Row, threads: int, ctx: Any) -> PlanLayer:
        return PoolPlan(heap, row, threads, self)

    def engine(self, row: Row, ctx: Any) -> EngineLayer:
        return PoolEngine(self, row)



# ----------------------------------------------------------------------------- memory plan


class PoolPlan(PlanLayer):
    def __init__(self, heap: Heap, row: Row, threads: int, node: Pool):
        super().__init__(heap, row, threads)
        assert row.input is not None and row.output is not None
        self.vin, self.vout = row.input, row.output
        self.type = node.type
        self.is_global = node.is_global

    def forward(self, x: Buf, training: bool) -> Buf:
        if self.is_global and self.type == "avg":
            y = self.out(self.vout)
            sums = self.work(self.vout.size, itemsize=FLOAT64)  # float64, one per slice
            del sums
            self.saved = []
            return y
        y = self.out(self.vout)
        if self.type == "max":
            switches = Buf(self.heap, self.vout.size, itemsize=INT32, base="act",
                           owner=self.name, what="switches (int32)")
            if training:
                self.keep(switches)
            del switches
        elif self.type == "l2" and training:
            self.keep(x, y)
        return y

    def backward(self, dy: Buf) -> Buf:
        if self.is_global and self.type == "avg":
            return self.grad(self.vin)
        if self.type == "max":
            dx = self.grad(self.vin)
            self.drop()
            return dx
        if self.type == "avg":
            return self.grad(self.vin)
        g = self.work(self.vout.size)
        nonzero = self.work(self.vout.size, itemsize=1)
        del nonzero
        dx = self.grad(self.vin)
        del g
        self.drop()
        return dx


# ----------------------------------------------------------------------------- engine


class PoolEngine(EngineLayer):
    """Max pooling keeps its argmax "switches" for backward, as the notes describe."""

    def __init__(self, layer: Pool, row: Row):
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
        from cnncli.engine.kernels import elementwise as ew
        from cnncli.engine.kernels import pool as pool_k

        if self.is_global and self.type == "avg":
            # x.mean(axis=(1, 2), dtype=float64), one rounding to x's dtype
            y = ew.global_avg_pool_forward(x)
            self._saved = () if training else None
            return y
        if self.type == "max":
            y, switches = pool_k.max_pool_forward(x, self.size, self.stride, self.pad,
                                                  self.out_hw)
            self._saved = (switches,) if training else None
        elif self.type == "avg":
            y = pool_k.avg_pool_forward(x, self.size, self.stride, self.pad, self.out_hw)
            self._saved = () if training else None
        else:
            y = pool_k.l2_pool_forward(x, self.size, self.stride, self.pad, self.out_hw)
            self._saved = (x, y) if training else None
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        from cnncli.engine.kernels import elementwise as ew
        from cnncli.engine.kernels import pool as pool_k

        assert self._saved is not None, f"{self.name}: backward without a training forward"
        saved, self._saved = self._saved, None
        if self.is_global and self.type == "avg":
            return ew.global_avg_pool_backward(dy, self.in_hw)  # dy / (H*W) everywhere
        if self.type == "max":
            return pool_k.max_pool_backward(dy, saved[0], self.in_hw)
        if self.type == "avg":
            return pool_k.avg_pool_backward(dy, self.size, self.stride, self.pad, self.in_hw)
        return pool_k.l2_pool_backward(saved[0], saved[1], dy, self.size, self.stride,
                                       self.pad)

    def release(self) -> None:
        self._saved = None

    def kinks(self) -> bytes | None:
        import numpy as np

        if self.type == "max" and self._saved:
            return np.asarray(self._saved[0]).tobytes()
        return None
