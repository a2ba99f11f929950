"""AlexNet's local response normalization across channels.

b = a / (k + alpha/n * sum of a^2 over n neighbouring channels)^beta, PyTorch's formula
(alpha divided by the window size). The notes: out of favour, its contribution minimal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cnncli.analysis.memory import Buf, Heap, PlanLayer
from cnncli.layers.base import EngineLayer, LayerSpec, ParseContext
from cnncli.spec.types import Problem, Volume

if TYPE_CHECKING:
    import numpy as np

    from cnncli.analysis.report import Row, Walker
    from cnncli.spec.loading import Located


@dataclass(frozen=True)
class LRN(LayerSpec):
    size: int
    alpha: float
    beta: float
    k: float

    key = "lrn"
    prefix = "lrn"
    label = "LRN"
    elementwise = True
    family = "norm"

    def output_reusable(self) -> bool:
        return False  # its backward reads its own output

    @classmethod
    def parse(cls, ctx: ParseContext, loc: Located, name: str, line: int, where: str) -> LRN:
        r = ctx.reader
        s = r.settings(where, loc, {"size", "alpha", "beta", "k"}, None)
        size = r.integer(f"{where}.size", s["size"].value, s["size"].line) if "size" in s else 5
        inf = float("inf")
        alpha = r.number(f"{where}.alpha", s["alpha"], 0.0, inf) if "alpha" in s else 1e-4
        beta = r.number(f"{where}.beta", s["beta"], 0.0, inf) if "beta" in s else 0.75
        k = r.number(f"{where}.k", s["k"], 0.0, inf) if "k" in s else 1.0
        return cls(name, line, size, alpha, beta, k)

    def to_yaml(self, scope: str, write_sequence: Any) -> Any:
        return {"size": self.size, "alpha": self.alpha, "beta": self.beta, "k": self.k}

    def settings_text(self) -> str:
        return f"size {self.size}, alpha {self.alpha:g}, beta {self.beta:g}, k {self.k:g}"

    def describe(self, row: Row, vol: Volume, w: Walker) -> None:
        if self.size > vol.d:
            w.warnings.append(Problem(
                f"{self.name}: the LRN window ({self.size}) is wider than the depth ({vol.d})",
                self.line, self.name))

    def plan(self, heap: Heap, row: Row, threads: int, ctx: Any) -> PlanLayer:
        return LRNPlan(heap, row, threads)

    def engine(self, row: Row, ctx: Any) -> EngineLayer:
        return LRNEngine(self)


class LRNPlan(PlanLayer):
    def __init__(self, heap: Heap, row: Row, threads: int):
        super().__init__(heap, row, threads)
        assert row.output is not None
        self.vol = row.output

    def forward(self, x: Buf, training: bool) -> Buf:
        y = self.out(self.vol)
        scale = Buf(self.heap, self.vol.size, base="act", owner=self.name, what="scale")
        if training:
            self.keep(x, y, scale)
        del scale
        return y

    def backward(self, dy: Buf) -> Buf:
        dx = self.grad(self.vol)
        self.drop()
        return dx


class LRNEngine(EngineLayer):
    def __init__(self, layer: LRN):
        super().__init__(layer.name)
        self.size, self.alpha, self.beta, self.k = layer.size, layer.alpha, layer.beta, layer.k
        self._saved: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        from cnncli.engine.kernels import norm as norm_k

        y, scale = norm_k.lrn_forward(x, self.size, self.alpha, self.beta, self.k)
        self._saved = (x, y, scale) if training else None
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        from cnncli.engine.kernels import norm as norm_k

        assert self._saved is not None, f"{self.name}: backward without a training forward"
        x, y, scale = self._saved
        self._saved = None
        return norm_k.lrn_backward(x, y, scale, dy, self.size, self.alpha, self.beta)
