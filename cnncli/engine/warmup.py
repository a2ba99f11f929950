"""Compile the engine's kernels ahead of a run; numba caches the machine code on disk
(`cache=True`), so what is compiled once is loaded in a fraction of a second afterwards.

Nothing needs this: every kernel compiles the first time a run calls it, and only the
kernels (and the dtype) that run uses. `cnncli warmup` is for preparing a machine ahead of
time:

* ``warm_up_nets(specs)``: what training and evaluating those nets needs (one step on a
  throwaway copy at batch 2: its weights, optimizer and random draws are not the run's).
* ``CompileWatch``: how long a stretch of a run spent compiling, so that `cnncli train` can
  say why its first step was slow.
* ``warm_up_all(dtypes)``: every kernel, for a machine image or before timing anything.
  The kernels split into three families that share no kernel (convolutions by GEMM; planar
  and Winograd convolutions; the other layers), and ``config.compile_workers()`` processes
  compile them side by side:
  compilation is single-threaded, and two processes never compile the same kernel, so
  they never write the same cache entry.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

# The convolutions on the GEMM paths (run under --conv-algo gemm): a first conv (3 channels,
# its dx skipped), GEMM with dx, grouped (direct), dilated, strided and locally connected.
GEMM_SPEC: dict[str, Any] = {
    "name": "warm-up: convolutions by GEMM",
    "input": "12x12x3",
    "layers": [
        {"conv": {"filters": 8, "size": 3, "pad": 1}},
        {"conv": {"filters": 16, "size": 3, "pad": 1}},
        {"conv": {"filters": 8, "size": 3, "pad": 1, "groups": 8}},
        {"conv": {"filters": 8, "size": 3, "pad": 2, "dilation": 2}},
        {"conv": {"filters": 8, "size": 2, "stride": 2}},
        {"local": {"filters": 4, "size": 3}},
        {"fc": 3},
    ],
}

# The convolutions `auto` runs faster (run under auto): a planar first layer, then Winograd.
FAST_SPEC: dict[str, Any] = {
    "name": "warm-up: planar and Winograd convolutions",
    "input": "12x12x3",
    "layers": [
        {"conv": {"filters": 16, "size": 3, "pad": 1}},
        {"conv": {"filters": 16, "size": 3, "pad": 1}},
        {"fc": 3},
    ],
}

# Everything else: every pooling type (global average included), batchnorm, lrn, every
# activation, dropout, and the blocks' adds and concatenations. No conv.
OTHER_SPEC: dict[str, Any] = {
    "name": "warm-up: the other layers",
    "input": "12x12x8",
    "layers": [
        "relu",
        {"batchnorm": {}},
        {"lrn": {"size": 3}},
        {"residual": {"layers": ["tanh", {"batchnorm": {}}]}},
        "elu",
        {"prelu": {}},
        {"concat": [[{"pool": {"size": 3, "stride": 1, "pad": 1, "type": "avg"}}],
                    [{"pool": {"size": 3, "stride": 1, "pad": 1, "type": "l2"}}]]},
        {"pool": {"size": 2, "stride": 2}},
        "sigmoid",
        {"leaky_relu": {}},
        {"dropout": 0.5},
        {"pool": {"global": True, "type": "avg"}},
        {"fc": 3},
    ],
}

# The families `warm_up_all` compiles side by side, with the policy each runs under: no two
# share a kernel (tests/test_warmup.py checks), so no two processes write one cache entry.
FAMILIES: tuple[tuple[str, str], ...] = (
    ("GEMM_SPEC", "gemm"), ("FAST_SPEC", "auto"), ("OTHER_SPEC", "gemm"))


class CompileWatch:
    """Seconds spent compiling kernels while installed (numba's "numba:compile" events fire
    for real compilations only, not for loads from the on-disk cache).

        with CompileWatch() as watch:
            step()
        watch.seconds, watch.kernels
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.kernels = 0  # top-level compilations (a kernel's helpers compile inside it)
        self._depth = 0
        self._started = 0.0
        self._listener: Any = None

    def __enter__(self) -> CompileWatch:
        from numba.core import event

        watch = self

        class Listener(event.Listener):
            def on_start(self, ev: Any) -> None:
                if watch._depth == 0:
                    watch._started = time.perf_counter()
                watch._depth += 1

            def on_end(self, ev: Any) -> None:
                watch._depth -= 1
                if watch._depth == 0:
                    watch.seconds += time.perf_counter() - watch._started
                    watch.kernels += 1

        self._listener = Listener()
        event.register("numba:compile", self._listener)
        return self

    def __exit__(self, *exc: object) -> None:
        from numba.core import event

        event.unregister("numba:compile", self._listener)


def _step(spec: Any, dtype: str, conv_algo: str, batch: int = 2) -> None:
    """One training step and one evaluation pass of a throwaway net: every kernel they call
    compiles (or loads from the cache)."""
    import numpy as np

    from cnncli.engine.network import Network

    net = Network.from_spec(spec, dtype=np.dtype(dtype), conv_algo=conv_algo)
    v = net.input
    x = np.zeros((batch, v.h, v.w, v.d), net.dtype)
    labels = np.zeros(batch, np.int64)
    with np.errstate(all="ignore"):  # zeros through a net: nothing to learn, nothing to warn
        _, dscores = net.loss(net.forward(x, training=True), labels)
        net.backward(dscores)
        net.forward(x, training=False)


def _family(name: str, conv_algo: str, dtypes: Sequence[str]) -> float:
    """Compile one family's kernels (FAMILIES) in this process; return its seconds."""
    from cnncli.config import configure_threads

    started = time.perf_counter()
    configure_threads(1)  # compiling is single-threaded; the steps are tiny
    for dtype in dtypes:
        _step(globals()[name], dtype, conv_algo)
    return time.perf_counter() - started


def warm_up_all(dtypes: Sequence[str] = ("float32", "float64")) -> float:
    """Compile every kernel in `dtypes`; return the wall seconds."""
    from cnncli.config import compile_workers

    started = time.perf_counter()
    jobs = [(name, policy, tuple(dtypes)) for name, policy in FAMILIES]
    workers = compile_workers(len(jobs))
    if workers == 1:
        for job in jobs:
            _family(*job)
    else:
        # spawn, not fork: a forked child would inherit this process's numba thread pool
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            for future in [pool.submit(_family, *job) for job in jobs]:
                future.result()
    return time.perf_counter() - started


def warm_up_nets(specs: Sequence[Any], dtype: str = "float32",
                 conv_algo: str = "auto") -> float:
    """Compile what training and evaluating each of `specs` needs; return the seconds."""
    from cnncli.config import ensure_configured

    started = time.perf_counter()
    ensure_configured()
    for spec in specs:
        _step(spec, dtype, conv_algo)
    return time.perf_counter() - started
