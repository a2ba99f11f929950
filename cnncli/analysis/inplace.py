"""Which elementwise layers the engine runs in place: one rule for the engine
(network.py) and for the memory model that replays it (memory.py). Pure Python.

An activation may overwrite its input when nothing else reads that array afterwards:
not the network's input (the caller's array), not the input of a block (its branches,
body and shortcut all read it), and not the output of a layer whose backward reads its
own output (L2 pooling, LRN) or that may hand its input through unchanged (dropout at
test time).
"""

from __future__ import annotations

from cnncli.spec import parse as S


def output_reusable(node: S.Node) -> bool:
    """May a following activation overwrite this node's output?"""
    if isinstance(node, S.Activation):
        return True  # in place, its output is as reusable as its input was; else it is new
    if isinstance(node, S.Dropout):
        return False
    if isinstance(node, S.Pool):
        return node.type != "l2"
    return not isinstance(node, S.LRN)


def in_place_activations(nodes: tuple[S.Node, ...]) -> set[str]:
    """Names of the activations the engine computes in place, for a net's layers."""
    found: set[str] = set()
    _plan(nodes, shared_input=True, found=found)
    return found


def _plan(nodes: tuple[S.Node, ...], shared_input: bool, found: set[str]) -> bool:
    """Walk one sequence; return whether its output may be overwritten."""
    reusable = not shared_input
    for node in S.unrolled(nodes):
        if isinstance(node, S.Residual):
            _plan(node.body, True, found)
            _plan(node.shortcut, True, found)
            reusable = True  # the sum is a new array
        elif isinstance(node, S.Concat):
            for branch in node.branches:
                _plan(branch, True, found)
            reusable = True  # the concatenation is a new array
        else:
            if isinstance(node, S.Activation) and reusable:
                found.add(node.name)
            reusable = output_reusable(node)
    return reusable
