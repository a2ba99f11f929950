"""Which elementwise layers the engine runs in place: one rule for the engine
(engine/network.py) and for the memory plans (analysis/memory.py). Pure Python.

An activation may overwrite its input when nothing else reads that array afterwards:
not the network's input (the caller's array), not the input of a block (its branches,
body and shortcut all read it), and not the output of a layer whose backward reads its
own output (L2 pooling, LRN) or that may hand its input through unchanged (dropout at
test time): each layer type says so (`output_reusable`).

Which of those the engine fuses into the layer before (`fused_activations`): an in-place
activation that the producer's type lists in `absorbs` (batchnorm and a residual add
absorb ReLU). Only in-place ones: the producer's output is then the activation's, so a
fused pair allocates and keeps exactly what the two layers apart do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cnncli.spec.types import unrolled

if TYPE_CHECKING:
    from cnncli.layers.base import LayerSpec


def in_place_activations(nodes: tuple[LayerSpec, ...]) -> set[str]:
    """Names of the activations the engine computes in place, for a net's layers."""
    found: set[str] = set()
    _plan(nodes, shared_input=True, found=found)
    return found


def _plan(nodes: tuple[LayerSpec, ...], shared_input: bool, found: set[str]) -> bool:
    """Walk one sequence; return whether its output may be overwritten."""
    reusable = not shared_input
    for node in unrolled(nodes):
        if node.is_block:
            for sequence in node.children():
                _plan(sequence, True, found)
            reusable = True  # the sum or the concatenation is a new array
        else:
            if node.in_place and node.overwrites_input and reusable:
                found.add(node.name)
            reusable = node.output_reusable()
    return reusable


def fused_activations(nodes: tuple[LayerSpec, ...]) -> dict[str, str]:
    """The in-place activations the engine computes in the layer before them, by name:
    the producer's name for each (the one place that decides fusion)."""
    in_place = in_place_activations(nodes)
    found: dict[str, str] = {}
    _fuse(nodes, in_place, found)
    return found


def _fuse(nodes: tuple[LayerSpec, ...], in_place: set[str], found: dict[str, str]) -> None:
    before: LayerSpec | None = None
    for node in unrolled(nodes):
        for sequence in node.children():
            _fuse(sequence, in_place, found)
        if before is not None and node.name in in_place and node.key in before.absorbs:
            found[node.name] = before.name
        before = node
