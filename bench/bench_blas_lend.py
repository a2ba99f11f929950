"""BLAS on one thread against two for the fully connected GEMMs, timed as a step runs them.

    .venv/bin/python bench/bench_blas_lend.py [--calls 25]

Each GEMM is timed just after a small numba kernel (as in a training step, where a conv or
activation kernel comes before the FC layer), once on BLAS's one thread and once inside
`config.blas_threads()`, alternating; medians in ms. Decides `layers/fc.py`'s
PARALLEL_GEMM_MACS: numba's pool still spins right after a kernel, and a second BLAS thread
competes with it, so only big GEMMs gain from the cores.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

CASES = {  # name: (A shape, B shape), float32, batch 64
    "cifar_small fc (2048 -> 10)": ((64, 2048), (2048, 10)),
    "512 -> 256": ((64, 512), (512, 256)),
    "cifar_vgg_bn fc1 forward (2048 -> 256)": ((64, 2048), (2048, 256)),
    "cifar_vgg_bn fc1 dW": ((256, 64), (64, 2048)),
    "cifar_vgg_bn fc1 dx": ((64, 256), (256, 2048)),
    "AlexNet fc7 (4096 -> 4096)": ((64, 4096), (4096, 4096)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=25)
    a = parser.parse_args()
    from cnncli.config import blas_threads, ensure_configured
    from cnncli.engine.kernels.elementwise import relu_forward

    threads = ensure_configured()
    rng = np.random.default_rng(0)
    z = np.zeros((64, 256), np.float32)
    print(f"{threads} threads; median of {a.calls} alternating calls, ms")
    print("| GEMM | multiply-adds | 1 thread ms | 2 threads ms | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for name, (sa, sb) in CASES.items():
        x = rng.random(sa, dtype=np.float32)
        w = rng.random(sb, dtype=np.float32)
        out = np.empty((sa[0], sb[1]), np.float32)
        one, lent = [], []
        for _ in range(a.calls):
            relu_forward(z, out=z)
            t = time.perf_counter()
            np.dot(x, w, out=out)
            one.append(time.perf_counter() - t)
            relu_forward(z, out=z)
            t = time.perf_counter()
            with blas_threads():
                np.dot(x, w, out=out)
            lent.append(time.perf_counter() - t)
        m1, m2 = np.median(one) * 1e3, np.median(lent) * 1e3
        macs = sa[0] * sa[1] * sb[1] / 1e6
        print(f"| {name} | {macs:,.1f} M | {m1:.2f} | {m2:.2f} | {m1 / m2:.2f}x |")


if __name__ == "__main__":
    main()
