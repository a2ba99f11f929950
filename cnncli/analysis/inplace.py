"""Which elementwise layers the engine runs in place: one rule for the engine
(engine/network.py) and for the memory plans (analysis/memory.py). Pure Python.

An activation may overwrite its input when nothing else reads that array afterwards:
not the network's input (the caller's array), not the input of a block (its branches,
body and shortcut all read it), and not the output of a layer whose backward reads its
own output (L2 pooling, LRN) or that may hand its input through unchanged (dropout at
test time): each layer type says so (`output_reusable`).

Which of those the engine fuses into the layer before (`fused_activations`): an in-place
activation that the producer's type lists in `absorbs` (a conv, batchnorm and a residual
add absorb ReLU). Only in-place ones: the producer's output is then the activation's, so a
fused pair allocates and keeps exactly what the two layers apart do.

And in evaluation (`fused_in_evaluation`): a batchnorm right after a conv, which the conv's
kernels apply with the running statistics as they write (`absorbs_in_evaluation`); the
memory plan counts no output for that batchnorm when nothing is trained.
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


def fused_in_evaluation(nodes: tuple[LayerSpec, ...]) -> dict[str, str]:
    """The layers the engine computes in the layer before them when it evaluates (no
    training), by name: the producer's name for each. A batchnorm right after a conv in the
    same sequence, whose output only that batchnorm reads: the conv's kernels apply it (and
    the ReLU it absorbed) as they write, and the batchnorm allocates nothing."""
    found: dict[str, str] = {}
    _fuse_evaluation(nodes, found)
    return found


def _fuse_evaluation(nodes: tuple[LayerSpec, ...], found: dict[str, str]) -> None:
    before: LayerSpec | None = None
    for node in unrolled(nodes):
        for sequence in node.children():
            _fuse_evaluation(sequence, found)
        if before is not None and node.key in before.absorbs_in_evaluation:
            found[node.name] = before.name
        before = node


def _fuse(nodes: tuple[LayerSpec, ...], in_place: set[str], found: dict[str, str]) -> None:
    before: LayerSpec | None = None
    for node in unrolled(nodes):
        for sequence in node.children():
            _fuse(sequence, in_place, found)
        if before is not None and node.name in in_place and node.key in before.absorbs:
            found[node.name] = before.name
        before = node
