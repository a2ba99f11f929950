"""Inverted dropout: each activation kept with probability 1 - p and scaled by 1/(1 - p) at
training time, so test time is the identity (the notes' recommended form)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cnncli.analysis.memory import BOOL, Buf, Heap, PlanLayer
from cnncli.layers.base import EngineLayer, LayerSpec, ParseContext

if TYPE_CHECKING:
    import numpy as np

    from cnncli.analysis.report import Row
    from cnncli.spec.loading import Located


@dataclass(frozen=True)
class Dropout(LayerSpec):
    p: float

    key = "dropout"
    prefix = "drop"
    label = "dropout"
    family = "regularizer"
    in_place = True
    elementwise = True

    @classmethod
    def picture_label(cls, settings: str) -> str:
        return f"dropout {settings.split()[-1]}" if settings else "dropout"  # p 0.5 -> 0.5

    def output_reusable(self) -> bool:
        return False  # at test time it hands its input through unchanged

    @classmethod
    def parse(cls, ctx: ParseContext, loc: Located, name: str, line: int,
              where: str) -> Dropout:
        r = ctx.reader
        s = r.settings(where, loc, {"p"}, "p")
        p = r.number(f"{where}.p", s["p"], 0.0, 1.0, hi_open=True) if "p" in s else 0.5
        return cls(name, line, p)

    def to_yaml(self, scope: str, write_sequence: Any) -> Any:
        return self.p

    def settings_text(self) -> str:
        return f"p {self.p:g}"

    def plan(self, heap: Heap, row: Row, threads: int, ctx: Any) -> PlanLayer:
        return DropoutPlan(heap, row, threads, self)

    def engine(self, row: Row, ctx: Any) -> EngineLayer:
        return DropoutEngine(self, ctx.rng)


class DropoutPlan(PlanLayer):
    def __init__(self, heap: Heap, row: Row, threads: int, node: Dropout):
        super().__init__(heap, row, threads)
        assert row.output is not None
        self.vol = row.output
        self.p = node.p

    def forward(self, x: Buf, training: bool) -> Buf:
        if not training or self.p == 0:
            return x
        v = self.vol.size
        uniform = self.work(v, itemsize=4)  # rng.random(..., dtype=float32)
        keep = self.work(v, itemsize=BOOL)
        del uniform
        mask = Buf(self.heap, v, base="act", owner=self.name, what="mask (scaled)")
        del keep
        self.keep(mask)
        del mask
        return self.out(self.vol)

    def backward(self, dy: Buf) -> Buf:
        if not self.saved:
            return dy
        dx = self.grad(self.vol)
        self.drop()
        return dx


class DropoutEngine(EngineLayer):
    def __init__(self, layer: Dropout, rng: np.random.Generator):
        super().__init__(layer.name)
        self.p = layer.p
        self.rng = rng
        self._saved_mask: np.ndarray | None = None

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        import numpy as np

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

    def freeze(self, seed: int) -> None:
        import numpy as np

        self.rng = np.random.default_rng(seed)  # the same mask on every evaluation
