"""VGG16's fully connected head (7x7x512 -> 4096 -> 4096 -> 1000), one training step at
batch 64, float32: BLAS on one thread (as inside the conv kernels) against the cores lent
to BLAS for big GEMMs (cnncli.layers.fc.PARALLEL_GEMM_MACS).

    .venv/bin/python bench/bench_fc_head.py
"""

from __future__ import annotations

import time
from statistics import median

import numpy as np

import cnncli.layers.fc as L
from cnncli.config import configure_threads
from cnncli.engine.network import Network

HEAD = {"input": "7x7x512", "layers": [{"fc": 4096}, "relu", {"fc": 4096}, "relu",
                                       {"fc": 1000}]}


def step_times(threshold: int, steps: int = 6) -> list[float]:
    L.PARALLEL_GEMM_MACS = threshold
    net = Network.from_spec(HEAD)
    rng = np.random.default_rng(0)
    x = rng.random((64, 7, 7, 512), dtype=np.float32)
    y = rng.integers(0, 1000, 64)
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        loss, d = net.loss(net.forward(x, training=True), y)
        net.backward(d)
        times.append(time.perf_counter() - t)
    return times[1:]


def main() -> None:
    threads = configure_threads(2)
    default = L.PARALLEL_GEMM_MACS
    for label, threshold in (("BLAS on 1 thread", 10**18), (f"BLAS on {threads} threads "
                             f"for GEMMs >= {default:,} MACs", default)):
        t = step_times(threshold)
        print(f"{label:<50} median {median(t) * 1000:7.1f} ms  best {min(t) * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
