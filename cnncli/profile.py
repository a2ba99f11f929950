"""Per-layer timing of a spec on the engine (`cnncli bench`): plain data out."""

from __future__ import annotations

import time
from statistics import median
from typing import Any

import numpy as np

from cnncli.config import configure_threads
from cnncli.network import Network
from cnncli.spec import Spec, Volume


def profile_layers(spec: Spec, volume: Volume | None, batch: int, iterations: int,
                   threads: int | None) -> dict[str, Any]:
    n_threads = configure_threads(threads)
    net = Network(spec, volume, dtype=np.float32, seed=0)
    rows = {r.name: r for r in net.report.rows}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, net.input.h, net.input.w, net.input.d)).astype(np.float32)
    forward: dict[str, list[float]] = {layer.name: [] for layer in net.layers}
    backward: dict[str, list[float]] = {layer.name: [] for layer in net.layers}
    flat = _flat_sequence(net)
    for it in range(iterations + 1):  # the first pass warms up (JIT, caches)
        a = x
        for layer in flat:
            t = time.perf_counter()
            a = layer.forward(a, True)
            if it:
                forward[layer.name].append(time.perf_counter() - t)
        d = rng.standard_normal(a.shape).astype(np.float32)
        for layer in reversed(flat):
            t = time.perf_counter()
            d = layer.backward(d)
            if it:
                backward[layer.name].append(time.perf_counter() - t)
    result = []
    for layer in flat:
        row = rows[layer.name]
        f_ms = median(forward[layer.name]) * 1000
        b_ms = median(backward[layer.name]) * 1000
        flops = 2 * row.macs * batch  # forward; backward costs about twice that
        result.append({
            "name": layer.name, "kind": row.kind, "output": str(row.output),
            "forward_ms": f_ms, "backward_ms": b_ms,
            "gflops_forward": flops / (f_ms / 1000) / 1e9 if row.macs and f_ms else 0.0,
            "gflops_total": 3 * flops / ((f_ms + b_ms) / 1000) / 1e9
            if row.macs and f_ms + b_ms else 0.0,
        })
    total = sum(r["forward_ms"] + r["backward_ms"] for r in result)
    return {"spec": spec.name, "batch": batch, "threads": n_threads, "iterations": iterations,
            "layers": result, "total_ms": total}


def _flat_sequence(net: Network) -> list[Any]:
    """Per-layer timing needs a plain chain; blocks (residual/concat) are not chains."""
    from cnncli.network import Sequence

    items = net.body.items
    if not all(not isinstance(i, Sequence) and hasattr(i, "name") for i in items):
        raise ValueError(f"{net.spec.name}: per-layer timing supports plain chains of layers; "
                         "this net has residual or concat blocks")
    return list(items)
