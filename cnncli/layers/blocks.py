"""Blocks: layers that hold sequences of layers.

- `repeat`: the notes' [CONV -> RELU]*N, written out at load time, one sequence per pass;
- `residual`: out = body(x) + shortcut(x), an empty shortcut being the identity (ResNet);
- `concat`: branches that all read the same input, concatenated in depth (Inception).

Each block walks its sequences through the same walkers the net uses, so a block is just
another layer type to every room of cnncli.

Backward: a sequence may write over the dy it is given or hand it back (an activation's
gradient is computed in place, `consumes_dy`). A residual block reads its dy twice (body
and shortcut), so its body gets a copy when it consumes dy; a concat's branches each get
their own slice. The gradients the branches return are theirs, so they are summed in place.

A residual block absorbs the in-place ReLU after it (ResNet's; engine/network.py decides):
the sum is clamped as it is written, and backward applies the ReLU's mask over dy, as the
ReLU would have, before the body and the shortcut read it. Where the body's layers can,
they do the block's passes in their own: the last (ResNet's second batchnorm) writes the
sum and its ReLU in training instead of its own output (`adds_sum`; the memory plan
counts the sum in its place) and masks dy in its first pass over it (`masks_dy`), and the
first (a Winograd conv) adds an identity shortcut's dy into the dx it writes
(`adds_into_dx`); the same numbers, bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from cnncli.analysis.memory import Buf, Heap, PlanLayer, run_planned
from cnncli.analysis.shapes import Field
from cnncli.layers.activations import absorbed_relu_backward
from cnncli.layers.base import EngineLayer, LayerSpec, ParseContext
from cnncli.spec.reader import Scope
from cnncli.spec.types import MAX_LAYERS, Problem, Volume

if TYPE_CHECKING:
    import numpy as np

    from cnncli.analysis.report import Row, Walker
    from cnncli.layers.base import RF
    from cnncli.spec.loading import Located


@dataclass(frozen=True)
class Repeat(LayerSpec):
    """[CONV -> RELU]*N: the copies are expanded at load time, one tuple per pass."""

    count: int
    passes: tuple[tuple[LayerSpec, ...], ...]

    key = "repeat"
    prefix = "repeat"
    family = "block"
    is_block = True
    unrolls = True
    sibling_keys = frozenset({"layers"})  # `repeat: 3` with `layers:` beside it

    @classmethod
    def parse(cls, ctx: ParseContext, loc: Located, name: str, line: int,
              where: str) -> Repeat:
        r = ctx.reader
        if not isinstance(loc.value, dict):  # a bare `- repeat`
            r.error(f"{where}: write a repeat block as 'repeat: N' with 'layers:' beside it",
                    line, name)
            return cls(name, line, 1, ())
        count_loc, layers_loc = loc.value[cls.key], loc.value["layers"]
        count = r.integer(f"{where}.repeat", count_loc.value, count_loc.line)
        if layers_loc.value is None:
            r.error(f"{where}: a repeat block needs 'layers:' beside 'repeat: N'", line, name)
            return cls(name, line, count, ())
        # The copies continue the enclosing sequence's numbering (VGG's conv1..conv13);
        # an explicit name inside gets the pass number appended (name_1, name_2, ...).
        passes: list[tuple[LayerSpec, ...]] = []
        for i in range(count):
            passes.append(ctx.sequence(layers_loc.value, layers_loc.line, ctx.scope,
                                       f"{where}.layers", rename=f"{ctx.rename}_{i + 1}"))
            if r.layer_count > MAX_LAYERS:
                break  # reported by the sequence reader
        return cls(name, line, count, tuple(passes))

    def children(self) -> tuple[tuple[LayerSpec, ...], ...]:
        return self.passes

    def analyze(self, w: Walker, vol: Volume, rf: RF, depth: int) -> tuple[Volume, RF]:
        w.add(w.heading(self.name, "repeat", depth, f"x{self.count}", vol, self.line))
        for one_pass in self.passes:
            vol, rf = w.sequence(one_pass, vol, rf, depth + 1)
        return vol, rf

    def as_sliding(self, row: Row, convert: Any) -> LayerSpec:
        return replace(self, passes=tuple(tuple(convert(n) for n in p) for p in self.passes))


@dataclass(frozen=True)
class Residual(LayerSpec):
    """out = body(x) + shortcut(x); an empty shortcut is the identity."""

    body: tuple[LayerSpec, ...]
    shortcut: tuple[LayerSpec, ...]

    key = "residual"
    prefix = "res"
    family = "block"
    is_block = True
    absorbs = frozenset({"relu"})  # the sum clamped as it is written (ResNet's ReLU after)

    @classmethod
    def parse(cls, ctx: ParseContext, loc: Located, name: str, line: int,
              where: str) -> Residual:
        r = ctx.reader
        s = r.settings(where, loc, {"layers", "shortcut"}, None)
        if "layers" not in s:
            r.error(f"{where}: a residual block needs 'layers:' (its body)", line, name)
            return cls(name, line, (), ())
        body = ctx.sequence(s["layers"].value, s["layers"].line, Scope(name), f"{where}.layers")
        shortcut: tuple[LayerSpec, ...] = ()
        if "shortcut" in s and s["shortcut"].value is not None:
            shortcut = ctx.sequence(s["shortcut"].value, s["shortcut"].line,
                                    Scope(f"{name}.shortcut"), f"{where}.shortcut")
        return cls(name, line, body, shortcut)

    @property
    def output_row(self) -> str:
        return f"{self.name}.add"

    def to_yaml(self, scope: str, write_sequence: Any) -> Any:
        block: dict[str, Any] = {"layers": write_sequence(self.body, self.name)}
        if self.shortcut:
            block["shortcut"] = write_sequence(self.shortcut, f"{self.name}.shortcut")
        return block

    def children(self) -> tuple[tuple[LayerSpec, ...], ...]:
        return (self.body, self.shortcut)

    def analyze(self, w: Walker, vol: Volume, rf: RF, depth: int) -> tuple[Volume, RF]:
        w.add(w.heading(self.name, "residual", depth, "body + shortcut", vol, self.line))
        body_vol, body_rf = w.sequence(self.body, vol, rf, depth + 1)
        short_vol, short_rf = vol, rf
        if self.shortcut:
            w.add(w.heading(f"{self.name}.shortcut", "shortcut", depth + 1, "", vol, self.line))
            short_vol, short_rf = w.sequence(self.shortcut, vol, rf, depth + 2)
        if body_vol != short_vol:
            w.errors.append(Problem(
                f"{self.name}: the body ends in {body_vol} but the shortcut "
                f"{'ends in' if self.shortcut else '(identity) is'} {short_vol}; they must "
                "match to be added", self.line, self.name,
                "give the shortcut a 1x1 conv with the body's filters and stride"
                if body_vol.d != short_vol.d or body_vol.w != short_vol.w else None))
        out_rf = (Field.widest([body_rf[0], short_rf[0]]),
                  Field.widest([body_rf[1], short_rf[1]]))
        w.add(w.row(f"{self.name}.add", "add", depth + 1, "body + shortcut", body_vol,
                    body_vol, out_rf, self.line))
        return body_vol, out_rf

    def as_sliding(self, row: Row, convert: Any) -> LayerSpec:
        return replace(self, body=tuple(convert(n) for n in self.body),
                       shortcut=tuple(convert(n) for n in self.shortcut))

    def plan(self, heap: Heap, row: Row, threads: int, ctx: Any) -> Any:
        return ResidualPlan(heap, ctx.rows[f"{self.name}.add"], ctx.sequence(self.body),
                            ctx.sequence(self.shortcut))

    def engine(self, row: Row, ctx: Any) -> Any:
        return ResidualBlock(ctx.sequence(self.body), ctx.sequence(self.shortcut), self.name,
                             fuse=ctx.fuse)


@dataclass(frozen=True)
class Concat(LayerSpec):
    """Depth concatenation of branches that all see the same input (Inception)."""

    branches: tuple[tuple[LayerSpec, ...], ...]

    key = "concat"
    prefix = "concat"
    family = "block"
    is_block = True

    @classmethod
    def parse(cls, ctx: ParseContext, loc: Located, name: str, line: int,
              where: str) -> Concat:
        if not isinstance(loc.value, list) or len(loc.value) < 2:
            ctx.reader.error(f"{where}: concat takes a list of two or more branches, each a "
                             "list of layers", line, name)
            return cls(name, line, ())
        branches = tuple(
            ctx.sequence(branch.value, branch.line, Scope(f"{name}.b{i + 1}"), f"{where}[{i}]")
            for i, branch in enumerate(loc.value))
        return cls(name, line, branches)

    @property
    def output_row(self) -> str:
        return f"{self.name}.out"

    def to_yaml(self, scope: str, write_sequence: Any) -> Any:
        return [write_sequence(b, f"{self.name}.b{i + 1}") for i, b in enumerate(self.branches)]

    def children(self) -> tuple[tuple[LayerSpec, ...], ...]:
        return self.branches

    def analyze(self, w: Walker, vol: Volume, rf: RF, depth: int) -> tuple[Volume, RF]:
        w.add(w.heading(self.name, "concat", depth, f"{len(self.branches)} branches", vol,
                        self.line))
        ends: list[tuple[Volume, RF]] = []
        for i, branch in enumerate(self.branches):
            w.add(w.heading(f"{self.name}.b{i + 1}", "branch", depth + 1, "", vol, self.line))
            ends.append(w.sequence(branch, vol, rf, depth + 2))
        sizes = {(v.w, v.h) for v, _ in ends}
        if len(sizes) > 1:
            shown = ", ".join(f"b{i + 1} {v}" for i, (v, _) in enumerate(ends))
            w.errors.append(Problem(
                f"{self.name}: branches must end with the same width and height to be "
                f"concatenated in depth; they end in {shown}", self.line, self.name))
        first = ends[0][0]
        out = Volume(first.w, first.h, sum(v.d for v, _ in ends))
        out_rf = (Field.widest([r[0] for _, r in ends]), Field.widest([r[1] for _, r in ends]))
        w.add(w.row(f"{self.name}.out", "concat", depth + 1, "depth concat", vol, out, out_rf,
                    self.line))
        return out, out_rf

    def as_sliding(self, row: Row, convert: Any) -> LayerSpec:
        return replace(self, branches=tuple(tuple(convert(n) for n in b)
                                            for b in self.branches))

    def plan(self, heap: Heap, row: Row, threads: int, ctx: Any) -> Any:
        return ConcatPlan(heap, ctx.rows[f"{self.name}.out"],
                          [ctx.sequence(b) for b in self.branches],
                          [ctx.end_depth(b) for b in self.branches])

    def engine(self, row: Row, ctx: Any) -> Any:
        return ConcatBlock([ctx.sequence(b) for b in self.branches], self.name)


def _consumes(items: list[Any]) -> bool:
    """Does a sequence's backward write over its dy or hand it back? Its last item's does
    (an empty sequence hands dy back); the items before it see a gradient of their own."""
    return not items or items[-1].consumes_dy()


# ----------------------------------------------------------------------------- memory plans


class PlanSequence:
    def __init__(self, items: list[Any]):
        self.items = items

    def forward(self, x: Buf, training: bool) -> Buf:
        for item in self.items:
            x = run_planned(item, "forward", x, training)
        return x

    def backward(self, dy: Buf) -> Buf:
        for item in reversed(self.items):
            dy = run_planned(item, "backward", dy)
        return dy

    def consumes_dy(self) -> bool:
        return _consumes(self.items)

    def leaves(self) -> list[PlanLayer]:
        out: list[PlanLayer] = []
        for item in self.items:
            out.extend([item] if isinstance(item, PlanLayer) else item.leaves())
        return out


class ResidualPlan:
    def __init__(self, heap: Heap, row: Row, body: PlanSequence, shortcut: PlanSequence):
        self.heap, self.vol = heap, row.output
        self.name = row.name
        self.body, self.shortcut = body, shortcut

    def forward(self, x: Buf, training: bool) -> Buf:
        assert self.vol is not None
        last = self.body.items[-1] if self.body.items else None
        if training and isinstance(last, PlanLayer) and last.adds_sum():
            # the engine's rule (ResidualBlock.forward): the body's last layer writes the
            # sum in place of its own output
            h = x
            for item in self.body.items[:-1]:
                h = run_planned(item, "forward", h, training)
            short = self.shortcut.forward(x, training) if self.shortcut.items else x
            last.sum_owner = self.name
            total = run_planned(last, "forward", h, training)
            del h, short
            return total
        out = self.body.forward(x, training)
        short = self.shortcut.forward(x, training) if self.shortcut.items else x
        total = Buf(self.heap, self.vol.size, base="act", owner=self.name, what="sum")
        del out, short
        return total

    def backward(self, dy: Buf) -> Buf:
        assert self.vol is not None
        copy = self.body.consumes_dy()
        dx = self.body.backward(
            Buf(self.heap, self.vol.size, base="grad", owner=self.name) if copy else dy)
        short = self.shortcut.backward(dy) if self.shortcut.items else dy
        del short  # added into dx
        return dx

    def consumes_dy(self) -> bool:
        return bool(self.shortcut.items) and self.shortcut.consumes_dy()

    def leaves(self) -> list[PlanLayer]:
        return self.body.leaves() + self.shortcut.leaves()


class ConcatPlan:
    def __init__(self, heap: Heap, row: Row, branches: list[PlanSequence], depths: list[int]):
        self.heap, self.vol, self.name = heap, row.output, row.name
        self.branches, self.depths = branches, depths

    def forward(self, x: Buf, training: bool) -> Buf:
        outs = [b.forward(x, training) for b in self.branches]
        assert self.vol is not None
        total = Buf(self.heap, self.vol.size, base="act", owner=self.name, what="concatenation")
        del outs
        return total

    def backward(self, dy: Buf) -> Buf:
        assert self.vol is not None
        plane = self.vol.w * self.vol.h
        dx = None
        part = None
        for branch, depth in zip(self.branches, self.depths, strict=True):
            part = branch.backward(Buf(self.heap, plane * depth, base="grad", owner=self.name))
            if dx is None:
                dx = part  # the later parts are added into it
        del part
        assert dx is not None
        return dx

    def consumes_dy(self) -> bool:
        return False

    def leaves(self) -> list[PlanLayer]:
        return [leaf for b in self.branches for leaf in b.leaves()]


# ----------------------------------------------------------------------------- engine


class Sequence:
    def __init__(self, items: list[Any]):
        self.items = items

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        for item in self.items:
            x = item.forward(x, training)
        return x

    def backward(self, dy: np.ndarray) -> np.ndarray:
        for item in reversed(self.items):
            dy = item.backward(dy)
        return dy

    def consumes_dy(self) -> bool:
        return _consumes(self.items)

    def sequences(self) -> list[Sequence]:
        return [self]

    def leaves(self) -> Iterator[EngineLayer]:
        for item in self.items:
            if isinstance(item, EngineLayer):
                yield item
            else:
                yield from item.leaves()


class _BlockEngine:
    """What a residual block asks of the first and last items of its body (layers/base.py's
    EngineLayer has the same questions): a block does none of it for another block."""

    def adds_sum(self) -> bool:
        return False

    def masks_dy(self) -> bool:
        return False

    def adds_into_dx(self) -> bool:
        return False


class ResidualBlock(_BlockEngine):
    """out = body(x) + shortcut(x): the gradient flows to both and adds up at x."""

    def __init__(self, body: Sequence, shortcut: Sequence, name: str = "residual",
                 fuse: bool = True):
        self.body, self.shortcut = body, shortcut
        # the body's layers do the block's passes where they can: the last one writes the
        # sum and the ReLU after it (`adds_sum`) and masks dy with that ReLU (`masks_dy`),
        # the first adds an identity shortcut's dy into the dx it writes (`adds_into_dx`);
        # False: passes of the block's own (the engine's fuse=False, which tests compare
        # with, bit for bit). What the block hands a layer is for one call: it is taken
        # back if the call fails before the layer took it.
        self.fuse = fuse
        self.name = name  # the spec's block name: its add is the report's row `name.add`
        self.output_row = f"{name}.add"
        self.fused_with: str | None = None  # the ReLU after it, computed with the sum
        self._relu: Any = None
        self._saved_relu_y: np.ndarray | None = None

    def absorb(self, activation: EngineLayer) -> None:
        """The ReLU after the block (ResNet's): max(sum, 0) written as the sum is, and its
        mask applied to dy here, once, before the body and the shortcut read it."""
        self._relu = activation

    def sum_writer(self) -> Any:
        """The body's last layer where a training forward has it write the block's sum and
        the ReLU after it (`adds_sum`), else None: the one rule, which `cnncli bench`
        reads too."""
        last = self.body.items[-1] if self.body.items else None
        return last if self.fuse and last is not None and last.adds_sum() else None

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        last = self.sum_writer() if training else None
        if last is not None:
            # the body's last layer (ResNet's second batchnorm) writes the sum, and the
            # ReLU after it, in its own pass: its output alone is never written
            h = x
            for item in self.body.items[:-1]:
                h = item.forward(h, training)
            short = self.shortcut.forward(x, training) if self.shortcut.items else x
            last.sum_addend = (short, self._relu is not None)
            try:
                y = last.forward(h, training)
            finally:
                last.sum_addend = None
            del h, short
            if self._relu is None:
                return y
        else:
            out = self.body.forward(x, training)
            short = self.shortcut.forward(x, training) if self.shortcut.items else x
            if self._relu is None:
                return out + short
            from cnncli.engine.kernels.elementwise import add_relu

            y = add_relu(out, short)
            del out, short
        self._saved_relu_y = y if training else None  # the ReLU's own output (in place)
        self._relu.producer_ran(y)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        import numpy as np

        relu_y, self._saved_relu_y = self._saved_relu_y, None
        copies = self.body.consumes_dy()
        last = self.body.items[-1] if self.body.items else None
        masked_by = None
        if (relu_y is not None and self.fuse and not copies and last is not None
                and last.masks_dy()):
            # the body's last layer (ResNet's second batchnorm) masks dy in its first pass
            # over it, written over dy before the shortcut reads it: one pass fewer
            masked_by, last.dy_mask = last, relu_y
        else:
            absorbed_relu_backward(dy, relu_y)
        del relu_y  # the output goes, as after the ReLU's backward
        # the shortcut reads dy after the body: a body that writes over dy gets a copy
        body_dy = dy.copy() if copies else dy
        first = self.body.items[0] if self.body.items else None
        try:
            if (self.fuse and not self.shortcut.items and first is not None
                    and first.adds_into_dx()):
                # identity shortcut: the body's first layer adds dy into its dx as it writes
                # it (the same numbers as np.add below, without a pass over both arrays)
                first.dx_addend = dy
                try:
                    return self.body.backward(body_dy)
                finally:
                    first.dx_addend = None
            dx = self.body.backward(body_dy)
        finally:
            if masked_by is not None:
                masked_by.dy_mask = None
        short = self.shortcut.backward(dy) if self.shortcut.items else dy
        return np.add(dx, short, out=dx)  # dx is the body's own array: summed in place

    def consumes_dy(self) -> bool:
        return bool(self.shortcut.items) and self.shortcut.consumes_dy()

    def sequences(self) -> list[Sequence]:
        return [self.body, self.shortcut]

    def leaves(self) -> Iterator[EngineLayer]:
        yield from self.body.leaves()
        yield from self.shortcut.leaves()


class ConcatBlock(_BlockEngine):
    """Depth concatenation: each branch's gradient is its slice of the output's."""

    def __init__(self, branches: list[Sequence], name: str = "concat"):
        self.branches = branches
        self.name = name  # the spec's block name: its concatenation is the row `name.out`
        self.output_row = f"{name}.out"
        self._depths: list[int] = []

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        import numpy as np

        outs = [b.forward(x, training) for b in self.branches]
        self._depths = [o.shape[3] for o in outs]
        return np.concatenate(outs, axis=3)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        import numpy as np

        dx = None
        start = 0
        for branch, depth in zip(self.branches, self._depths, strict=True):
            # a copy of its slice for each branch (a view when the slice is contiguous
            # would let the branch write over the concat's dy)
            part = branch.backward(dy[..., start:start + depth].copy())
            dx = part if dx is None else np.add(dx, part, out=dx)
            start += depth
        assert dx is not None
        return dx

    def consumes_dy(self) -> bool:
        return False

    def sequences(self) -> list[Sequence]:
        return list(self.branches)

    def leaves(self) -> Iterator[EngineLayer]:
        for b in self.branches:
            yield from b.leaves()
