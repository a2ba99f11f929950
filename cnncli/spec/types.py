"""The values a spec is made of: volumes, pairs, problems, the spec itself, and the limits.

Layer settings are frozen dataclasses defined by each layer type (cnncli/layers/); a spec
holds them as a tree (blocks hold sequences), and `walk`/`unrolled` go through it asking each
node for its `children`, whatever its type. No numpy, no numba.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cnncli.layers.base import LayerSpec

ROUNDINGS = ("strict", "floor", "ceil")
LOSSES = ("softmax", "svm")
MAX_SPEC_BYTES = 4 * 2**20  # the largest bundled spec is 10 KB; anything near this is not a spec
MAX_YAML_NODES = 200_000  # values written in the file: bounds the loader's time and memory
MAX_ALIAS_NODES = 200_000  # values repeated by aliases: a "billion laughs" expands past this
MAX_LAYERS = 100_000  # layers after expanding `repeat`; nested repeats can multiply past any memory
MAX_INT = 2**31 - 1  # sizes beyond int32 are typos, and overflow float formatting downstream


class SpecError(Exception):
    """The file cannot be read or is not a spec at all (exit code 2).

    The file is kept apart from the message and named once in front of it, however many
    layers of the loader see the error go by (`str(exc)` is "net.yaml: the file is empty").
    """

    def __init__(self, message: str, source: str | None = None):
        super().__init__(message)
        self.message = message
        self.source = source

    def __str__(self) -> str:
        return f"{self.source}: {self.message}" if self.source else self.message


@dataclass(frozen=True)
class Problem:
    """One error or warning, tied to a place in the file."""

    message: str
    line: int | None = None
    layer: str | None = None
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"message": self.message, "line": self.line, "layer": self.layer, "fix": self.fix}


class SpecInvalid(Exception):
    """The file is a spec but the net it describes is invalid (exit code 1)."""

    def __init__(self, problems: list[Problem]):
        super().__init__("; ".join(p.message for p in problems))
        self.problems = problems

    def __reduce__(self) -> tuple[Any, ...]:
        # rebuilt from its problems, not its message: it crosses processes (`cnncli warmup`)
        return (SpecInvalid, (self.problems,))


@dataclass(frozen=True)
class Pair:
    """A setting that may differ between height and width."""

    h: int
    w: int

    def __str__(self) -> str:
        return str(self.h) if self.h == self.w else f"{self.h}x{self.w}"

    def to_yaml(self) -> int | dict[str, int]:
        """As a spec file writes it: one number when square, else {height, width}."""
        return self.h if self.h == self.w else {"height": self.h, "width": self.w}


@dataclass(frozen=True)
class Volume:
    """A W x H x D volume, printed as the notes print it: [55x55x96]."""

    w: int
    h: int
    d: int

    def __str__(self) -> str:
        return f"[{self.w}x{self.h}x{self.d}]"

    @property
    def size(self) -> int:
        return self.w * self.h * self.d




@dataclass(frozen=True)
class Spec:
    name: str
    input: Volume
    loss: str | None
    rounding: str
    layers: tuple[LayerSpec, ...]
    source: str = "<memory>"
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)



def unrolled(nodes: tuple[LayerSpec, ...]) -> list[LayerSpec]:
    """A sequence with its `repeat` blocks written out (other blocks kept as they are)."""
    out: list[LayerSpec] = []
    for node in nodes:
        if node.unrolls:
            for one_pass in node.children():
                out.extend(unrolled(one_pass))
        else:
            out.append(node)
    return out


def walk(nodes: tuple[LayerSpec, ...]) -> Iterator[LayerSpec]:
    """Every leaf layer in execution order (blocks expanded)."""
    for node in nodes:
        children = node.children()
        if not children and not node.is_block:
            yield node
        for sequence in children:
            yield from walk(sequence)
