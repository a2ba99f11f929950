"""Inverted dropout: each activation kept with probability 1 - p and scaled by 1/(1 - p) at
training time, so test time is the identity (the notes' recommended form).

In a training step it allocates the scaled mask (kept for backward; at float64 also the
float32 draws it is made from, briefly) and its output; backward multiplies dy by the mask
in place."""

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
        mask = Buf(self.heap, v, base="act", owner=self.name, what="mask (scaled)")
        if self.heap.itemsize != 4:  # the float32 draws, when the mask cannot hold them
            uniform = self.work(v, itemsize=4)
            del uniform
        self.keep(mask)
        del mask
        return self.out(self.vol)

    def backward(self, dy: Buf) -> Buf:
        self.drop()
        return dy  # dy * mask, in place (or dy itself without a mask)

    def consumes_dy(self) -> bool:
        return True


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
        from cnncli.engine.kernels.elementwise import dropout_mask, multiply_into

        # the same float32 draws as rng.random(x.shape, dtype=float32), into the mask
        # itself when it is float32: (u < keep) / keep, as the notes write it
        mask = np.empty(x.shape, x.dtype)
        if x.dtype == np.float32:
            uniform = self.rng.random(dtype=np.float32, out=mask)
        else:
            uniform = self.rng.random(x.shape, dtype=np.float32)
        self._saved_mask = dropout_mask(uniform, 1.0 - self.p, mask)
        del uniform
        return multiply_into(x, mask)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        from cnncli.engine.kernels.elementwise import multiply_into

        mask, self._saved_mask = self._saved_mask, None
        return dy if mask is None else multiply_into(dy, mask, out=dy)

    def consumes_dy(self) -> bool:
        return True  # it writes dy * mask over dy, or hands dy back

    def freeze(self, seed: int) -> None:
        import numpy as np

        self.rng = np.random.default_rng(seed)  # the same mask on every evaluation
