"""Elementwise nonlinearities: ReLU, leaky ReLU, tanh, sigmoid.

The notes' advice: use ReLU (mind the learning rate and the dead units), try leaky ReLU,
never sigmoid, tanh only if you must. Each keeps its output volume and, in the engine,
overwrites its input when nothing else reads it (analysis/inplace.py), so it adds no
activation memory. Backward needs only the output: its sign (ReLU, leaky ReLU) or its
value (tanh: 1 - y^2, sigmoid: y(1 - y)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cnncli.analysis.memory import BOOL, UFUNC_BUFSIZE, Buf, Heap, PlanLayer, elides
from cnncli.layers.base import EngineLayer, LayerSpec, ParseContext

if TYPE_CHECKING:
    import numpy as np

    from cnncli.analysis.report import Row
    from cnncli.spec.loading import Located


@dataclass(frozen=True)
class Activation(LayerSpec):
    """A nonlinearity without settings (ReLU, tanh, sigmoid)."""

    family = "activation"
    in_place = True
    elementwise = True
    overwrites_input = True
    kinked = False  # not differentiable at 0: gradient checks must not step across it

    @property
    def function(self) -> str:
        return self.key

    @classmethod
    def parse(cls, ctx: ParseContext, loc: Located, name: str, line: int,
              where: str) -> Activation:
        ctx.reader.settings(where, loc, set(), None)
        return cls(name, line)

    def to_yaml(self, scope: str, write_sequence: Any) -> Any:
        return {}

    def plan(self, heap: Heap, row: Row, threads: int, ctx: Any) -> PlanLayer:
        return ActivationPlan(heap, row, threads, self, in_place=self.name in ctx.in_place)

    def engine(self, row: Row, ctx: Any) -> EngineLayer:
        return ActivationEngine(self, in_place=self.name in ctx.in_place)

    # the engine's arithmetic, on arrays (numpy imported by the engine layer)
    def apply(self, np: Any, x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    def gradient(self, np: Any, dy: np.ndarray, y: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # what that arithmetic allocates (numpy's temporaries), for the memory plan
    def plan_forward(self, p: ActivationPlan, x: Buf) -> Buf:
        return x if p.in_place else p.out(p.vol)

    def plan_backward(self, p: ActivationPlan, dy: Buf) -> Buf:
        raise NotImplementedError


@dataclass(frozen=True)
class ReLU(Activation):
    """max(0, x)."""

    key = "relu"
    prefix = "relu"
    label = "ReLU"
    kinked = True

    def apply(self, np: Any, x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        return np.maximum(x, 0, out=out)

    def gradient(self, np: Any, dy: np.ndarray, y: np.ndarray) -> np.ndarray:
        return dy * (y > 0)

    def plan_backward(self, p: ActivationPlan, dy: Buf) -> Buf:
        # dy * (y > 0): the mask, and the ufunc casts the bools through a buffer
        v = p.vol.size
        mask = p.work(v, itemsize=BOOL)
        cast = p.work(0, UFUNC_BUFSIZE)
        dx = p.grad(p.vol)
        del mask, cast
        return dx


@dataclass(frozen=True)
class LeakyReLU(Activation):
    """x for x > 0, else slope*x: no dead units."""

    slope: float = 0.01

    key = "leaky_relu"
    prefix = "lrelu"
    label = "leaky ReLU"
    kinked = True

    @classmethod
    def parse(cls, ctx: ParseContext, loc: Located, name: str, line: int,
              where: str) -> LeakyReLU:
        r = ctx.reader
        s = r.settings(where, loc, {"slope"}, "slope")
        slope = r.number(f"{where}.slope", s["slope"], 0.0, 1.0) if "slope" in s else 0.01
        return cls(name, line, slope)

    def to_yaml(self, scope: str, write_sequence: Any) -> Any:
        return {"slope": self.slope}

    def settings_text(self) -> str:
        return f"slope {self.slope:g}"

    @classmethod
    def picture_label(cls, settings: str) -> str:
        return f"{cls.label} {settings.split()[-1]}" if settings else cls.label  # slope

    def apply(self, np: Any, x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        y = np.where(x > 0, x, x * x.dtype.type(self.slope))
        if out is not None:
            out[...] = y
            y = out
        return y

    def gradient(self, np: Any, dy: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.where(y > 0, dy, dy * dy.dtype.type(self.slope))

    def plan_forward(self, p: ActivationPlan, x: Buf) -> Buf:
        # np.where(x > 0, x, x*slope), copied into x when in place
        v = p.vol.size
        mask, scaled = p.work(v, itemsize=BOOL), p.work(v)
        y = p.out(p.vol)
        del mask, scaled
        return x if p.in_place else y

    def plan_backward(self, p: ActivationPlan, dy: Buf) -> Buf:
        v = p.vol.size  # np.where(y > 0, dy, dy*slope)
        mask, scaled = p.work(v, itemsize=BOOL), p.work(v)
        dx = p.grad(p.vol)
        del mask, scaled
        return dx


@dataclass(frozen=True)
class Tanh(Activation):
    key = "tanh"
    prefix = "tanh"

    def apply(self, np: Any, x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        return np.tanh(x, out=out)

    def gradient(self, np: Any, dy: np.ndarray, y: np.ndarray) -> np.ndarray:
        return dy * (1 - y * y)

    def plan_backward(self, p: ActivationPlan, dy: Buf) -> Buf:
        # dy * (1 - y*y): y*y goes once 1 - y*y exists
        v = p.vol.size
        square = p.work(v)
        one_minus = p.work(v)
        del square
        dx = p.product_into(one_minus)
        del one_minus
        return dx


@dataclass(frozen=True)
class Sigmoid(Activation):
    key = "sigmoid"
    prefix = "sigmoid"

    def apply(self, np: Any, x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        # 1/(1+e^-x), written so that large |x| neither overflows nor loses precision
        e = np.exp(-np.abs(x))
        y = np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)
        if out is not None:
            out[...] = y
            y = out
        return y

    def gradient(self, np: Any, dy: np.ndarray, y: np.ndarray) -> np.ndarray:
        return dy * y * (1 - y)

    def plan_forward(self, p: ActivationPlan, x: Buf) -> Buf:
        # e, x >= 0, 1/(1+e), e/(1+e) and its (1+e), np.where, astype
        v = p.vol.size
        e = p.work(v)
        parts = [p.work(v, itemsize=BOOL), p.work(v), p.work(v), p.work(v)]
        del parts[-1]
        where = p.work(v)
        del parts
        y = p.out(p.vol)
        del where, e
        return x if p.in_place else y

    def plan_backward(self, p: ActivationPlan, dy: Buf) -> Buf:
        # dy * y * (1 - y): both factors alive for the last product
        v = p.vol.size
        dy_y, one_minus = p.work(v), p.work(v)
        dx = p.product_into(dy_y)
        del dy_y, one_minus
        return dx


# ----------------------------------------------------------------------------- memory plan


class ActivationPlan(PlanLayer):
    def __init__(self, heap: Heap, row: Row, threads: int, node: Activation, in_place: bool):
        super().__init__(heap, row, threads)
        assert row.output is not None
        self.vol = row.output
        self.node = node
        self.in_place = in_place

    def forward(self, x: Buf, training: bool) -> Buf:
        y = self.node.plan_forward(self, x)
        if training:
            self.keep(y)
        return y

    def backward(self, dy: Buf) -> Buf:
        dx = self.node.plan_backward(self, dy)
        self.drop()
        return dx

    def product_into(self, temp: Buf) -> Buf:
        """The last product: numpy writes it into the temporary operand when that is big
        enough, else into a new array."""
        if elides(temp):
            temp.base = "grad"
            self.heap.add("work", temp, -1)
            self.heap.add("grad", temp, +1)
            return temp
        return self.grad(self.vol)


# ----------------------------------------------------------------------------- engine


class ActivationEngine(EngineLayer):
    """In place when the layer before allows it (analysis/inplace.py decides)."""

    def __init__(self, layer: Activation, in_place: bool):
        super().__init__(layer.name)
        self.layer = layer
        self.function = layer.key
        self.in_place = in_place
        self._saved: np.ndarray | None = None

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        import numpy as np

        y = self.layer.apply(np, x, x if self.in_place else None)
        # backward needs only the output (relu/leaky: its sign; tanh/sigmoid: its value)
        self._saved = y if training else None
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        import numpy as np

        assert self._saved is not None, f"{self.name}: backward without a training forward"
        y, self._saved = self._saved, None
        return self.layer.gradient(np, dy, y)

    def kinks(self) -> bytes | None:
        import numpy as np

        if self.layer.kinked and self._saved is not None:
            return np.packbits(self._saved > 0).tobytes()
        return None
