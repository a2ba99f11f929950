"""Elementwise nonlinearities: ReLU, leaky ReLU, ELU, tanh, sigmoid, and PReLU.

The notes' advice: use ReLU (mind the learning rate and the dead units), try leaky ReLU,
never sigmoid, tanh only if you must. Each keeps its output volume and, in the engine,
overwrites its input when nothing else reads it (analysis/inplace.py), so it adds no
activation memory. Backward needs only the output: its sign (ReLU, leaky ReLU) or its
value (ELU: y + alpha where y <= 0, tanh: 1 - y^2, sigmoid: y(1 - y)), and ReLU, leaky
ReLU, tanh and sigmoid write the input's gradient over dy
(cnncli/engine/kernels/elementwise.py), so their backward allocates nothing either.

PReLU (a leaky ReLU whose slope is learned, one per channel) is the exception: its
backward needs the input x (the slope's gradient is a sum of dy * x, and a learned slope
may turn negative, so the output's sign no longer tells x's), so it keeps x and writes a
new output.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import inf
from typing import TYPE_CHECKING, Any

from cnncli.analysis.memory import BOOL, Buf, Heap, PlanLayer
from cnncli.layers.base import EngineLayer, LayerSpec, ParseContext
from cnncli.spec.types import Volume

if TYPE_CHECKING:
    import numpy as np

    from cnncli.analysis.report import Row, Walker
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
    # batchnorm and the residual add compute it in their passes (`absorbs`)

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
class ELU(Activation):
    """x for x > 0, else alpha*(e^x - 1) (PyTorch's F.elu): smooth, saturating at -alpha.

    With alpha >= 0, y > 0 exactly where x > 0, and where x <= 0 the derivative
    alpha*e^x is y + alpha: backward works from the output, so ELU runs in place."""

    alpha: float = 1.0

    key = "elu"
    prefix = "elu"
    label = "ELU"
    kinked = True  # the derivative jumps from alpha to 1 at 0 (unless alpha is 1)

    @classmethod
    def parse(cls, ctx: ParseContext, loc: Located, name: str, line: int,
              where: str) -> ELU:
        r = ctx.reader
        s = r.settings(where, loc, {"alpha"}, "alpha")
        alpha = r.number(f"{where}.alpha", s["alpha"], 0.0, inf) if "alpha" in s else 1.0
        return cls(name, line, alpha)

    def to_yaml(self, scope: str, write_sequence: Any) -> Any:
        return {"alpha": self.alpha}

    def settings_text(self) -> str:
        return f"alpha {self.alpha:g}"

    @classmethod
    def picture_label(cls, settings: str) -> str:
        alpha = settings.split()[-1] if settings else "1"
        return cls.label if alpha == "1" else f"{cls.label} {alpha}"

    def apply(self, np: Any, x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        # max(x, 0) + alpha*expm1(min(x, 0)): one temporary, and the output written in place
        e = np.minimum(x, 0)
        np.expm1(e, out=e)
        e *= x.dtype.type(self.alpha)
        y = np.maximum(x, 0, out=out)
        y += e
        return y

    def gradient(self, np: Any, dy: np.ndarray, y: np.ndarray) -> np.ndarray:
        # (min(y, 0) + alpha) * dy, then dy itself where y > 0
        dx = np.minimum(y, 0)
        dx += dy.dtype.type(self.alpha)
        dx *= dy
        np.copyto(dx, dy, where=y > 0)
        return dx

    def plan_forward(self, p: ActivationPlan, x: Buf) -> Buf:
        e = p.work(p.vol.size)  # alpha*expm1(min(x, 0)), alive until added to the output
        y = x if p.in_place else p.out(p.vol)
        del e
        return y

    def plan_backward(self, p: ActivationPlan, dy: Buf) -> Buf:
        dx = p.grad(p.vol)
        mask = p.work(p.vol.size, itemsize=BOOL)  # y > 0
        del mask
        return dx


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


@dataclass(frozen=True)
class PReLU(LayerSpec):
    """x for x > 0, else a_c * x, with one learned slope a_c per channel (PyTorch's
    nn.PReLU(num_parameters=C)); every slope starts at `init`."""

    init: float = 0.25

    key = "prelu"
    prefix = "prelu"
    label = "PReLU"
    family = "activation"
    elementwise = True
    # a new output, and the input kept for backward: neither in place nor overwriting

    @classmethod
    def parse(cls, ctx: ParseContext, loc: Located, name: str, line: int,
              where: str) -> PReLU:
        r = ctx.reader
        s = r.settings(where, loc, {"init"}, "init")
        init = r.number(f"{where}.init", s["init"], 0.0, 1.0) if "init" in s else 0.25
        return cls(name, line, init)

    def to_yaml(self, scope: str, write_sequence: Any) -> Any:
        return {"init": self.init}

    def settings_text(self) -> str:
        return f"init {self.init:g}"

    def describe(self, row: Row, vol: Volume, w: Walker) -> None:
        row.weights = vol.d  # one slope per channel
        row.params = {f"{self.name}.weight": (vol.d,)}

    def plan(self, heap: Heap, row: Row, threads: int, ctx: Any) -> PlanLayer:
        return PReLUPlan(heap, row, threads)

    def engine(self, row: Row, ctx: Any) -> EngineLayer:
        return PReLUEngine(self, row, ctx.dtype)


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


class PReLUPlan(PlanLayer):
    """PReLUEngine's arrays, in its order: besides output and gradients, only a bool mask
    (x > 0) at a time, and the input kept for backward."""

    def __init__(self, heap: Heap, row: Row, threads: int):
        super().__init__(heap, row, threads)
        assert row.output is not None
        self.vol = row.output

    def forward(self, x: Buf, training: bool) -> Buf:
        y = self.out(self.vol)  # x * a
        mask = self.work(self.vol.size, itemsize=BOOL)  # x > 0, where y takes x
        del mask
        if training:
            self.keep(x)
        return y

    def backward(self, dy: Buf) -> Buf:
        # min(x, 0) * dy in what becomes dx (a work array when no dx is wanted), summed
        # for the slopes' gradient, then dy * a overwritten by dy where x > 0
        dx = self.grad(self.vol) if self.need_dx else self.work(self.vol.size)
        self.new_grads({f"{self.name}.weight": self.work(0, self.vol.d)})
        if self.need_dx:
            mask = self.work(self.vol.size, itemsize=BOOL)
            del mask
        else:
            dx = self.work(0, 1)  # the engine hands back None
        self.drop()
        return dx


# ----------------------------------------------------------------------------- engine


def absorbed_relu_backward(dy: np.ndarray, relu_y: np.ndarray | None) -> None:
    """The backward of a ReLU its producer absorbed (a conv, a residual add; batchnorm
    masks in its own sums pass): dy * (relu_y > 0) written over dy, as the ReLU would have
    (the ReLU consumes dy, so dy is its to write). Nothing when no ReLU was absorbed."""
    if relu_y is not None:
        from cnncli.engine.kernels.elementwise import relu_backward

        relu_backward(dy, relu_y)


class ActivationEngine(EngineLayer):
    """In place when the layer before allows it (analysis/inplace.py decides).

    Fused (analysis/inplace.py's `fused_activations`, engine/network.py): the layer before
    computes this activation in its own passes (`absorb`) and says so on each forward
    (`producer_ran`); this layer then hands its input on as its output, and dy back
    unchanged, the producer having applied the gradient. A producer that did not (a
    distributed run's synchronised batchnorm replaces the engine's) leaves it to this one."""

    def __init__(self, layer: Activation, in_place: bool):
        super().__init__(layer.name)
        self.layer = layer
        self.function = layer.key
        self.in_place = in_place
        self._saved: np.ndarray | None = None
        self._handed: np.ndarray | None = None  # an output the producer computed
        self._saved_by_producer = False  # ... whose gradient the producer applies

    def producer_ran(self, y: np.ndarray) -> None:
        """The layer before wrote this activation's output, `y`, in its own forward (the
        array itself is the token: a layer run alone, as gradient checks do, hands over
        nothing to the next array this one sees)."""
        self._handed = y

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        import numpy as np

        fused, self._handed = x is self._handed, None
        y = x if fused else self.layer.apply(np, x, x if self.in_place else None)
        # backward needs only the output (relu/leaky: its sign; tanh/sigmoid: its value);
        # fused, only for `kinks`: the producer keeps the same array for the mask
        self._saved = y if training else None
        self._saved_by_producer = fused and training
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        import numpy as np

        assert self._saved is not None, f"{self.name}: backward without a training forward"
        y, self._saved = self._saved, None
        if self._saved_by_producer:
            self._saved_by_producer = False
            return dy  # the producer's backward applies the mask, in its own pass
        return self.layer.gradient(np, dy, y)

    def consumes_dy(self) -> bool:
        return self.layer.gradient_in_place

    def kinks(self) -> bytes | None:
        import numpy as np

        if self.layer.kinked and self._saved is not None:
            return np.packbits(self._saved > 0).tobytes()
        return None


class PReLUEngine(EngineLayer):
    """Keeps x for backward; writes each result into an array it needs anyway, so its only
    temporary is a bool mask (a quarter of the activation at float32)."""

    def __init__(self, layer: PReLU, row: Row, dtype: np.dtype):
        import numpy as np

        super().__init__(layer.name)
        assert row.output is not None
        # the PReLU paper leaves the slopes out of weight decay (it would pull them to 0,
        # towards a plain ReLU); PyTorch's optimizers decay them unless told otherwise
        self.decays = False
        self.params[f"{self.name}.weight"] = np.full(row.output.d, layer.init, dtype)
        self._saved: np.ndarray | None = None

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        import numpy as np

        a = self.params[f"{self.name}.weight"]  # broadcast over the last (channel) axis
        y = np.multiply(x, a)
        np.copyto(y, x, where=x > 0)
        self._saved = x if training else None
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        import numpy as np

        assert self._saved is not None, f"{self.name}: backward without a training forward"
        x, self._saved = self._saved, None
        a = self.params[f"{self.name}.weight"]
        dx = np.minimum(x, 0)
        dx *= dy  # dy * x where x <= 0, else 0
        self.grads[f"{self.name}.weight"] = dx.reshape(-1, x.shape[-1]).sum(axis=0)
        if not self.need_dx:
            return None
        np.multiply(dy, a, out=dx)
        np.copyto(dx, dy, where=x > 0)
        return dx

    def kinks(self) -> bytes | None:
        import numpy as np

        if self._saved is not None:
            return np.packbits(self._saved > 0).tobytes()
        return None
