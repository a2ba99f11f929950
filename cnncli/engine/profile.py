"""Per-layer timing of a spec on the engine (`cnncli bench`): plain data out.

Every layer is timed where the engine runs it, blocks included: each item of every
sequence is wrapped in a stopwatch for the benchmark's own copy of the network, so the
blocks' forward and backward are the engine's own code, not a re-enactment of them. A
block's stopwatch includes its layers; what is left after them is the block's own work
(the residual add and the gradient's fan-out add; the concatenation and the gradient's
slicing), reported on the report's merge row (`res1.add`, `inception3a.out`). So the rows
of layers and merges add up to the step, and the block headings carry no time of their own.

A ReLU fused into the layer before it (batchnorm, a residual add: engine/network.py) is
computed in that layer's passes: its work is in the producer's row, whose algorithm column
says "+ relu3", and its own row (algorithm "fused into bn3") keeps the little time its
hand-over takes, so the rows still add up to the step. Likewise a residual block whose
body's last batchnorm writes the sum (layers/blocks.py): that batchnorm's row says
"+ res1.add" and carries the add's time, and the add's row says where it ran ("in
res1.bn2") and keeps what is left of the block's own work.
"""

from __future__ import annotations

import time
from statistics import median
from typing import Any

import numpy as np

from cnncli.config import configure_threads
from cnncli.engine.network import Network
from cnncli.layers.base import EngineLayer
from cnncli.layers.blocks import Sequence
from cnncli.spec.parse import Spec, Volume


def _handed(name: str) -> Any:
    """An attribute of the wrapped item, read and written through the wrapper."""
    return property(lambda self: getattr(self.item, name),
                    lambda self, value: setattr(self.item, name, value))


class _Timed:
    """Stands in for one item of a sequence: runs it and keeps how long each forward and
    backward took, everything nested in it included."""

    def __init__(self, item: Any, key: str, children: list[_Timed]):
        self.item = item
        self.key = key  # the report row this item's own time goes to
        self.children = children  # the timed items directly inside a block
        self.forward_s: list[float] = []
        self.backward_s: list[float] = []

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        start = time.perf_counter()
        y = self.item.forward(x, training)
        self.forward_s.append(time.perf_counter() - start)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        dx = self.item.backward(dy)
        self.backward_s.append(time.perf_counter() - start)
        return dx

    def consumes_dy(self) -> bool:
        return bool(self.item.consumes_dy())

    # What a residual block asks of its body's layers, and hands them for one call: the
    # item's own (its time then counts the work it does for the block).
    def adds_sum(self) -> bool:
        return bool(self.item.adds_sum())

    def masks_dy(self) -> bool:
        return bool(self.item.masks_dy())

    def adds_into_dx(self) -> bool:
        return bool(self.item.adds_into_dx())

    sum_addend = _handed("sum_addend")
    dy_mask = _handed("dy_mask")
    dx_addend = _handed("dx_addend")

    def own_ms(self, backward: bool) -> float:
        """Median over passes of this item's time less its children's: a layer's whole
        time, a block's merge. Milliseconds."""
        def times(t: _Timed) -> list[float]:
            return t.backward_s if backward else t.forward_s

        nested = [times(c) for c in self.children]
        return median(max(0.0, t - sum(c[k] for c in nested))
                      for k, t in enumerate(times(self))) * 1000

    def clear(self) -> None:
        self.forward_s.clear()
        self.backward_s.clear()


def _time_items(seq: Sequence, timed: list[_Timed]) -> list[_Timed]:
    """Wrap every item of `seq`, blocks' insides first; return the wrappers of its own
    items (appending every wrapper to `timed`)."""
    own = []
    for i, item in enumerate(seq.items):
        children = [] if isinstance(item, EngineLayer) else \
            [w for sequence in item.sequences() for w in _time_items(sequence, timed)]
        key = item.output_row  # a block's time is its merge's row (name.add, name.out)
        wrapper = _Timed(item, key, children)
        seq.items[i] = wrapper
        timed.append(wrapper)
        own.append(wrapper)
    return own


def profile_layers(spec: Spec, volume: Volume | None, batch: int, iterations: int,
                   threads: int | None, conv_algo: str = "gemm",
                   fuse: bool = True) -> dict[str, Any]:
    """Median forward and backward milliseconds of every row of the spec's report: layers
    and block merges timed, block headings (repeat, residual, branch...) as the tree; for
    each conv, the algorithm it ran and its matrix shapes."""
    n_threads = configure_threads(threads)
    net = Network(spec, volume, dtype=np.float32, seed=0, conv_algo=conv_algo, fuse=fuse)
    timed: list[_Timed] = []
    _time_items(net.body, timed)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, net.input.h, net.input.w, net.input.d)).astype(np.float32)
    steps: list[float] = []
    for it in range(iterations + 1):  # the first pass warms up (JIT, caches)
        start = time.perf_counter()
        a = net.body.forward(x, True)
        middle = time.perf_counter()
        d = rng.standard_normal(a.shape).astype(np.float32)
        resumed = time.perf_counter()
        net.body.backward(d)
        if not it:
            for t in timed:
                t.clear()
            continue
        steps.append((middle - start) + (time.perf_counter() - resumed))
    by_key = {t.key: t for t in timed}
    # the residual sums a body's last layer writes: {that layer's row: the add's row}
    sums: dict[str, str] = {}
    for t in timed:
        writer = t.item.sum_writer() if hasattr(t.item, "sum_writer") else None
        if writer is not None:
            sums[writer.key] = t.item.output_row
    summed_in = {add: layer for layer, add in sums.items()}
    rows = []
    for row in net.report.rows:
        entry: dict[str, Any] = {"name": row.name, "kind": row.kind, "depth": row.depth,
                                 "block": row.is_block,
                                 "output": None if row.output is None else str(row.output),
                                 "algorithm": None, "matrices": None}
        rows.append(entry)
        item: Any = by_key[row.name].item if row.name in by_key else None
        if item is not None and hasattr(item, "matrices"):  # a conv: kernel and products
            entry.update(algorithm=item.algorithm, matrices=item.matrices())
        if item is not None and getattr(item, "fused_with", None):
            # a conv keeps its kernel's name in front: "winograd + relu1"
            ran = f"{entry['algorithm']} " if entry["algorithm"] else ""
            entry.update(algorithm=f"{ran}+ {item.fused_with}")
        if item is not None and getattr(item, "fused_into", None):
            entry.update(algorithm=f"fused into {item.fused_into}")
        if row.name in sums:  # writes the block's sum: "+ res1.add"
            ran = f"{entry['algorithm']} " if entry["algorithm"] else ""
            entry.update(algorithm=f"{ran}+ {sums[row.name]}")
        if row.name in summed_in:  # "in res1.bn2 + relu2"
            ran = f" {entry['algorithm']}" if entry["algorithm"] else ""
            entry.update(algorithm=f"in {summed_in[row.name]}{ran}")
        if row.is_block:
            entry.update(forward_ms=None, backward_ms=None, gflops_forward=None,
                         gflops_total=None)
            continue
        t = by_key[row.name]
        f_ms, b_ms = t.own_ms(backward=False), t.own_ms(backward=True)
        flops = 2 * row.macs * batch  # forward; backward costs about twice that
        entry.update(
            forward_ms=f_ms, backward_ms=b_ms,
            gflops_forward=flops / (f_ms / 1000) / 1e9 if row.macs and f_ms else 0.0,
            gflops_total=3 * flops / ((f_ms + b_ms) / 1000) / 1e9
            if row.macs and f_ms + b_ms else 0.0)
    timed_rows = [r for r in rows if not r["block"]]
    total = sum(r["forward_ms"] + r["backward_ms"] for r in timed_rows)
    for r in rows:
        r["share"] = None if r["block"] else (
            (r["forward_ms"] + r["backward_ms"]) / total if total else 0.0)
    # the whole step, stopwatched around the network: what the rows add up to plus the
    # stopwatches' and the sequences' own overhead
    step_ms = median(steps) * 1000
    return {"spec": spec.name, "batch": batch, "threads": n_threads, "iterations": iterations,
            "conv_algo": conv_algo, "fused": fuse, "layers": rows,
            "forward_ms": sum(r["forward_ms"] for r in timed_rows),
            "backward_ms": sum(r["backward_ms"] for r in timed_rows),
            "total_ms": total, "step_ms": step_ms,
            "images_per_s": batch / (step_ms / 1000) if step_ms else 0.0}
