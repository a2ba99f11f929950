"""What a layer type is: one class that knows everything about its kind of layer.

A layer type is a frozen dataclass of its settings (what the spec file says). The class
answers every question cnncli asks about that kind of layer, each in one method, so that a
new layer type is one module plus one line in the registry (cnncli/layers/__init__.py):

- `key`, `prefix`, `label`, `family`: its YAML key, the prefix of automatic names
  (conv1, bn1), the words pictures use, and the family it is drawn with;
- `parse`: its settings read from YAML, every problem recorded (spec/reader.py);
- `analyze`: its row of the notes' table: output volume, parameters, multiply-adds,
  receptive field, warnings (analysis/report.py walks the tree and asks each layer);
- `settings_text` and `to_yaml`: its settings as the table shows them and as a spec file
  writes them back;
- `training_macs`: multiply-adds of forward, backward-data and backward-weights;
- `plan`: what it allocates in a training step and in inference (analysis/memory.py walks
  the step's schedule over these plans);
- `engine`: its forward/backward on arrays. numpy and the Numba kernels are imported there
  and only there, so `check`, `list` and `memory` never load them;
- for the sliding window: `window` (its geometry), `as_sliding` (an FC layer becomes a conv),
  `sliding_problem` (a layer that cannot slide says why).

Blocks (repeat, residual, concat) are layer types too; they hold sequences (`children`).
Pure Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from cnncli.spec.types import Pair, Problem, Volume

if TYPE_CHECKING:
    from cnncli.analysis.memory import Heap, PlanLayer
    from cnncli.analysis.report import Row, Walker
    from cnncli.analysis.shapes import Field
    from cnncli.spec.loading import Located
    from cnncli.spec.reader import Reader, Scope

    RF = tuple[Field, Field]


class Window(NamedTuple):
    """A layer that slides a window over its input: what the sliding-window check reads."""

    size: Pair
    stride: Pair
    pad: Pair
    dilation: Pair
    is_pool: bool
    rounding: str | None
    what: str  # "conv", "max pool", ...: how a message names the layer


class ParseContext(NamedTuple):
    """What a layer's parser may need besides its own settings: the reader that records
    problems, and (for blocks) a way to read nested sequences with their naming scope."""

    reader: Reader
    scope: Scope
    rename: str
    sequence: Any  # (items, line, scope, where, rename="") -> tuple[LayerSpec, ...]


@dataclass(frozen=True)
class LayerSpec:
    """A layer's settings, and the rules of its type (see the module docstring)."""

    name: str
    line: int | None

    key: ClassVar[str] = ""
    prefix: ClassVar[str] = ""
    label: ClassVar[str] = ""  # how pictures name it ("leaky ReLU"); the key when empty
    family: ClassVar[str] = "other"  # drawing colour: conv, pool, fc, activation, norm, ...
    is_block: ClassVar[bool] = False
    unrolls: ClassVar[bool] = False  # a repeat: its passes are written out in sequences
    sibling_keys: ClassVar[frozenset[str]] = frozenset()  # keys written beside its own
    in_place: ClassVar[bool] = False  # elementwise, computed in place: no new activation memory
    overwrites_input: ClassVar[bool] = False  # the engine writes its output over its input
    draws_filters: ClassVar[bool] = False  # `cnncli filters` can tile its weights
    subtracts_mean: ClassVar[bool] = False  # batchnorm: a constant added before it is lost
    elementwise: ClassVar[bool] = False  # same volume in and out, no window: drawn folded
    windowed: ClassVar[bool] = False  # slides a window (conv, local, pool): drawn as FxF/S
    # the activations (keys) its engine computes in its own passes when one follows it in
    # place (batchnorm, a residual add: ReLU); the engine's `absorb` does it
    absorbs: ClassVar[frozenset[str]] = frozenset()
    # layers after it (by key) that its engine computes in evaluation (conv: batchnorm);
    # analysis/inplace.py decides
    absorbs_in_evaluation: ClassVar[frozenset[str]] = frozenset()

    @property
    def kind(self) -> str:
        return self.key

    @classmethod
    def picture_label(cls, settings: str) -> str:
        """How a drawing names a layer of this type (from its report row's settings)."""
        return cls.label or cls.key

    @property
    def output_row(self) -> str:
        """The report row holding this layer's (or block's) output volume."""
        return self.name

    def output_reusable(self) -> bool:
        """May a following activation overwrite this layer's output in place? Not when its
        backward reads its own output (LRN, L2 pooling) or when it may hand its input
        through unchanged (dropout at test time)."""
        return True

    # ------------------------------------------------------------------ the spec file
    @classmethod
    def parse(cls, ctx: ParseContext, loc: Located, name: str, line: int,
              where: str) -> LayerSpec:
        raise NotImplementedError

    def to_yaml(self, scope: str, write_sequence: Any) -> Any:
        """The value under this layer's key when the spec is written back."""
        raise NotImplementedError

    def children(self) -> tuple[tuple[LayerSpec, ...], ...]:
        """The sequences a block holds (none for a layer)."""
        return ()

    # ------------------------------------------------------------------ analysis
    def analyze(self, w: Walker, vol: Volume, rf: RF, depth: int) -> tuple[Volume, RF]:
        """An elementwise layer by default: same volume, same receptive field."""
        row = w.row(self.name, self.kind, depth, self.settings_text(), vol, vol, rf, self.line)
        row.in_place = self.in_place
        self.describe(row, vol, w)
        w.add(row)
        return vol, rf

    def describe(self, row: Row, vol: Volume, w: Walker) -> None:
        """Parameters, buffers and warnings of an elementwise layer (none by default)."""

    def settings_text(self) -> str:
        return ""

    def wasted_by_mean_subtraction(self) -> int:
        """Parameters that learn nothing when a mean-subtracting layer (batchnorm) follows:
        a conv's or fc's bias, a constant per channel that batchnorm removes again."""
        return 0

    def training_macs(self, row: Row, first: bool) -> tuple[int, int, int]:
        """Multiply-adds of forward, backward to the input, backward to the weights.

        Layers whose work is not a dot product count none (the convention of the published
        figures); the first layer of a net computes no input gradient."""
        return 0, 0, 0

    # ------------------------------------------------------------------ memory and engine
    def plan(self, heap: Heap, row: Row, threads: int, ctx: Any) -> PlanLayer:
        raise NotImplementedError(f"{self.key}: no memory plan")

    def engine(self, row: Row, ctx: Any) -> Any:
        raise NotImplementedError(f"{self.key}: no engine layer")

    # ------------------------------------------------------------------ sliding window
    def window(self) -> Window | None:
        return None

    def as_sliding(self, row: Row, convert: Any) -> LayerSpec:
        """This layer in a net that slides over larger images (FC -> conv); itself here."""
        return self

    def sliding_problem(self) -> Problem | None:
        return None

    def sliding_change(self, row: Row) -> tuple[str, dict[str, Any]] | None:
        """What converting this layer for the sliding window changes, for `cnncli convert`'s
        report: (what it is, the details), or None when it stays as it is."""
        return None


class EngineLayer:
    """The engine's surface of a layer: params/grads/buffers dicts keyed by the full
    parameter name, forward keeping exactly what backward needs.

    Activations are NHWC (`x[N, H, W, C]`); parameters keep PyTorch's layouts (conv OIHW,
    fc [units, D*H*W] over an input flattened in (depth, height, width) order), so they move
    to and from PyTorch without guesswork. Output sizes come from the report's rows, never
    recomputed, so the engine and `cnncli check` cannot disagree about a volume.
    """

    def __init__(self, name: str):
        self.name = name
        self.output_row = name  # the report row of its output
        self.params: dict[str, Any] = {}
        self.grads: dict[str, Any] = {}
        self.buffers: dict[str, Any] = {}
        self.need_dx = True  # the network's first layer skips its input gradient
        self.decays = True  # its `.weight` parameters take weight decay (not batchnorm's)
        self.fused_into: str | None = None  # an activation its producer computes (`absorb`)
        self.fused_with: str | None = None  # a producer: the activation it computes
        self.dx_addend: Any = None  # added into the next backward's dx (`adds_into_dx`)
        self.dy_mask: Any = None  # a ReLU's output, its mask for the next dy (`masks_dy`)
        self.sum_addend: Any = None  # (array, relu) for the next forward (`adds_sum`)

    # its forward reads statistics of the whole batch (batchnorm): gradient checks need
    # enough images, and data-parallel training decides whose batch that is
    batch_statistics = False

    def forward(self, x: Any, training: bool) -> Any:
        raise NotImplementedError

    def backward(self, dy: Any) -> Any:
        raise NotImplementedError

    def consumes_dy(self) -> bool:
        """Does backward write over the dy it is given, or hand dy itself back? Then
        nothing may read dy afterwards: a block whose branches all read one dy gives such a
        branch a copy (blocks.py), and the network copies a caller's dy (network.py)."""
        return False

    def adds_sum(self) -> bool:
        """Can a training forward add an array to its output and apply a ReLU, as it writes
        it (`sum_addend`: (the array, whether to clamp), set by a residual block for one
        call: its shortcut's output and the ReLU after the block)? Then the block's sum is
        this layer's output, and its own output is never written apart."""
        return False

    def masks_dy(self) -> bool:
        """Can backward apply a ReLU's mask to dy in its own first pass over it (`dy_mask`:
        the ReLU's output, set by a residual block for one call, whose ReLU after the sum
        it is)? dy is written over with the masked values, as the ReLU's backward would,
        so the block's shortcut reads them after the body."""
        return False

    def adds_into_dx(self) -> bool:
        """Can backward add an array into the dx it computes, as it writes it (`dx_addend`,
        set by a residual block for one call: its shortcut's gradient)? Then the block needs
        no pass of its own for the sum."""
        return False

    def absorb(self, activation: Any) -> None:
        """Compute the in-place activation that follows in this layer's own passes (a type
        whose spec lists it in `absorbs`): forward writes the activation's output, backward
        applies its gradient, and the activation's engine passes both through."""
        raise NotImplementedError(f"{self.name}: absorbs no activation")

    def release(self) -> None:
        """Drop what forward saved for backward (evaluation keeps no activations)."""
        for key in list(vars(self)):
            if key.startswith("_saved"):
                setattr(self, key, None)

    def kinks(self) -> bytes | None:
        """Every non-differentiable choice the last training forward made (ReLU signs, max
        pooling's winners), for gradient checks that must not step across one."""
        return None

    def freeze(self, seed: int) -> None:
        """Make the next forward passes repeatable (dropout draws the same mask)."""
