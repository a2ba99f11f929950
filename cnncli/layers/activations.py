"""Elementwise nonlinearities: ReLU, leaky ReLU, tanh, sigmoid.

The notes' advice: use ReLU (mind the learning rate and the dead units), try leaky ReLU,
never sigmoid, tanh only if you must. Each keeps its output volume and, in the engine,
overwrites its input when nothing else reads it (analysis/inplace.py), so it adds no
activation memory. Backward needs only the output: its sign (ReLU, leaky ReLU) or its
value (tanh: 1 - y^2, sigmoid: y(1 - y)), and ReLU, leaky ReLU, tanh and sigmoid write
the input's gradient over dy (cnncli/engine/kernels/elementwise.py), so their backward
allocates nothing either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cnncli.analysis.memory import Buf, Heap, PlanLayer
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
    # its gradient is written over dy (which nothing reads after this layer's backward,
    # see ResidualBlock) and returned: backward allocates nothing
    gradient_in_place = False

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

    # what that arithmetic allocates, for the memory plan: the output (none in place)
    def plan_forward(self, p: ActivationPlan, x: Buf) -> Buf:
        return x if p.in_place else p.out(p.vol)

    def plan_backward(self, p: ActivationPlan, dy: Buf) -> Buf:
        """The gradient over dy: nothing new."""
        if self.gradient_in_place:
            return dy
        raise NotImplementedError


@dataclass(frozen=True)
class ReLU(Activation):
    """max(0, x)."""

    key = "relu"
    prefix = "relu"
    label = "ReLU"
    kinked = True
    gradient_in_place = True

    def apply(self, np: Any, x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        from cnncli.engine.kernels.elementwise import relu_forward

        return relu_forward(x, out)

    def gradient(self, np: Any, dy: np.ndarray, y: np.ndarray) -> np.ndarray:
        from cnncli.engine.kernels.elementwise import relu_backward

        return relu_backward(dy, y)  # dy * (y > 0)


@dataclass(frozen=True)
class LeakyReLU(Activation):
    """x for x > 0, else slope*x: no dead units."""

    slope: float = 0.01

    key = "leaky_relu"
    prefix = "lrelu"
    label = "leaky ReLU"
    kinked = True
    gradient_in_place = True

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
        from cnncli.engine.kernels.elementwise import leaky_relu_forward

        return leaky_relu_forward(x, self.slope, out)  # np.where(x > 0, x, x * slope)

    def gradient(self, np: Any, dy: np.ndarray, y: np.ndarray) -> np.ndarray:
        from cnncli.engine.kernels.elementwise import leaky_relu_backward

        return leaky_relu_backward(dy, y, self.slope)  # np.where(y > 0, dy, dy * slope)


@dataclass(frozen=True)
class Tanh(Activation):
    key = "tanh"
    prefix = "tanh"
    gradient_in_place = True

    def apply(self, np: Any, x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        return np.tanh(x, out=out)  # numpy's tanh, into the output: nothing else

    def gradient(self, np: Any, dy: np.ndarray, y: np.ndarray) -> np.ndarray:
        from cnncli.engine.kernels.elementwise import tanh_backward

        return tanh_backward(dy, y)  # dy * (1 - y*y)


@dataclass(frozen=True)
class Sigmoid(Activation):
    key = "sigmoid"
    prefix = "sigmoid"
    gradient_in_place = True

    def apply(self, np: Any, x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        # 1/(1+e^-x), written so that large |x| neither overflows nor loses precision
        from cnncli.engine.kernels.elementwise import sigmoid_forward

        return sigmoid_forward(x, out)

    def gradient(self, np: Any, dy: np.ndarray, y: np.ndarray) -> np.ndarray:
        from cnncli.engine.kernels.elementwise import sigmoid_backward

        return sigmoid_backward(dy, y)  # dy * y * (1 - y)

    def plan_forward(self, p: ActivationPlan, x: Buf) -> Buf:
        # e = exp(-|x|) goes into the new output; in place, x's signs are still needed
        # while e exists, so e takes a buffer of its own
        if not p.in_place:
            return p.out(p.vol)
        e = p.work(p.vol.size)
        del e
        return x


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

    def consumes_dy(self) -> bool:
        return self.node.gradient_in_place


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

    def consumes_dy(self) -> bool:
        return self.layer.gradient_in_place

    def kinks(self) -> bytes | None:
        import numpy as np

        if self.layer.kinked and self._saved is not None:
            return np.packbits(self._saved > 0).tobytes()
        return None
