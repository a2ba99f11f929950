"""Which elementwise layers the engine runs in place: one rule for the engine
(engine/network.py) and for the memory plans (analysis/memory.py). Pure Python.

An activation may overwrite its input when nothing else reads that array afterwards:
not the network's input (the caller's array), not the input of a block (its branches,
body and shortcut all read it), and not the output of a layer whose backward reads its
own output (L2 pooling, LRN) or that may hand its input through unchanged (dropout at
test time): each layer type says so (`output_reusable`).
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
