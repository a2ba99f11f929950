"""`cnncli memory --measure`: run one real step of the engine and measure its peak.

How the peak is measured: with `tracemalloc`. NumPy reports every array buffer it
allocates to tracemalloc, and numba's runtime allocates through `PyMem_RawMalloc`
(`numba/core/runtime/_nrt_pythonmod.c`: `memsys_use_cpython_allocator`), so the arrays
that the @njit kernels allocate inside `prange` bodies (im2col bands, per-thread buffers)
are traced too. tracemalloc then gives the exact peak of the bytes held in arrays (plus
the few Python objects the step creates), independent of the allocator's caching and of
pages the OS has not touched: a resident-memory figure would measure glibc's arenas.

The procedure, all in this process:

1. warm up: one step of a separate copy of the net at batch 1 (the JIT compiles, or loads
   its cache), then drop it: compilation is not part of a step;
2. `tracemalloc.start()`, then build the net, the optimizer, the input batch (random
   images, random labels), so parameters, optimizer state and input are measured, not
   assumed;
3. training: one step (so the parameter gradients of a previous step exist, as in every
   step of training but the first), then `reset_peak()` and a second step: its peak is
   the measured peak. Inference: `reset_peak()` and one forward pass (`training=False`).
4. the net's own Python objects (layer objects, dicts, its shape report; tens of KiB) are
   taken off: traced bytes at the start of the step minus the bytes of the arrays then
   alive (parameters, buffers, gradients, optimizer state, input) -- what is left is the
   peak of the arrays, which is what the estimate counts.

Not counted: OpenBLAS's own work buffers (allocated once when BLAS starts, whatever the
batch) and the interpreter's and numba's code. One step is
`forward -> loss -> backward -> weight_decay(0) -> optimizer.step`, as in `cnncli train`.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from cnncli.errors import InputError
from cnncli.spec import parse as S
from cnncli.spec.parse import Volume

ENGINE_DTYPES = ("float32", "float64")


class MeasureError(InputError, ValueError):
    """The engine cannot run this configuration (one line)."""


def measure(spec: S.Spec, batch: int, dtype: str = "float32", optimizer: str = "momentum",
            mode: str = "train", threads: int | None = None,
            input_volume: Volume | None = None, rounding: str | None = None,
            seed: int = 0, conv_algo: str = "gemm") -> dict[str, Any]:
    """Measured peak bytes of one training step (or one inference pass); see the module doc."""
    if dtype not in ENGINE_DTYPES:
        raise MeasureError(f"the engine runs float32 and float64 only; --measure cannot run "
                           f"{dtype} (the estimate is still given)")
    import tracemalloc

    import numpy as np

    from cnncli.config import configure_threads
    from cnncli.engine.network import Network
    from cnncli.engine.optim import make_optimizer

    used_threads = configure_threads(threads)
    training = mode == "train"

    def build(n: int) -> tuple[Any, Any, Any, Any]:
        net = Network(spec, input_volume, dtype=np.dtype(dtype), seed=seed, rounding=rounding,
                      conv_algo=conv_algo)
        opt = make_optimizer(optimizer, net.params, lr=1e-3) if training else None
        rng = np.random.default_rng(seed)
        v = net.input
        x = rng.standard_normal((n, v.h, v.w, v.d), dtype=np.dtype(dtype))
        classes = max(1, net.output.size)
        labels = rng.integers(0, classes, size=n)
        return net, opt, x, labels

    def step(net: Any, opt: Any, x: Any, labels: Any) -> None:
        if not training:
            net.forward(x, training=False)
            return
        scores = net.forward(x, training=True)
        _, dscores = net.loss(scores, labels)
        net.backward(dscores)
        net.weight_decay(0.0)
        opt.step(net.grads)

    started = time.perf_counter()
    step(*build(1))  # JIT warm-up, outside the trace
    gc.collect()
    warm = time.perf_counter() - started

    was_tracing = tracemalloc.is_tracing()
    if was_tracing:
        tracemalloc.stop()
    tracemalloc.start()
    try:
        net, opt, x, labels = build(batch)
        if training:
            step(net, opt, x, labels)
        gc.collect()
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        arrays = _array_bytes(net, opt, x, labels)
        t0 = time.perf_counter()
        step(net, opt, x, labels)
        seconds = time.perf_counter() - t0
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        if was_tracing:
            tracemalloc.start()
    objects = before - arrays  # the net's Python objects (layers, dicts, its report)
    return {"peak_bytes": peak - objects, "traced_peak_bytes": peak,
            "python_objects_bytes": objects, "start_bytes": arrays,
            "end_bytes": after - objects, "step_seconds": seconds, "warmup_seconds": warm,
            "threads": used_threads,
            "method": "tracemalloc: peak of the second step, numpy and numba arrays (the "
                      "Python objects alive before the step are taken off)"}


def _array_bytes(net: Any, opt: Any, x: Any, labels: Any) -> int:
    """Bytes of the distinct arrays alive between steps: parameters, buffers, gradients,
    optimizer state, the input batch."""
    import numpy as np

    seen: dict[int, int] = {}
    groups = [net.params, net.buffers, net.grads, {"x": x, "labels": labels}]
    if opt is not None:
        groups += list(opt.state.values())
    for group in groups:
        for a in group.values():
            base = a.base if isinstance(a.base, np.ndarray) else a
            seen[id(base)] = base.nbytes
    return sum(seen.values())
