"""What a second thread buys on this machine, for numba's parallel loops and for PyTorch.

    .venv/bin/python bench/bench_threads.py [--rounds 3] [--calls 200]

A parallel region is only as fast as its slowest thread. On a VM whose host takes a core
back for milliseconds at a time, a region of 1 ms on two threads can take several, while
one thread is never kept waiting by another. This times the same work on 1 and on 2
threads, each measurement in its own subprocess, the thread counts taking turns (the order
reversed every other round, so neither always runs first), and reads the host's steal
time from /proc/stat while each runs:

* numba: a `prange` over 64 rows of fixed arithmetic (work per call about 0.16, 1.6 and
  15 ms on one thread here);
* PyTorch: ReLU and a 3x3 16->16 convolution (channels_last, batch 64, 32x32), forward
  under `no_grad`: ResNet-20's first stage.

The table gives each case's median and 90th percentile per call, the ratio of medians
(1 thread / 2 threads: above 1, the second thread helps), and the share of the cores'
time the host took (steal) during the 2-thread runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parent.parent
NUMBA_WORK = (1_000, 10_000, 100_000)  # inner iterations per row


def cpu_times() -> tuple[int, int]:
    """(steal, all) jiffies over every CPU, from /proc/stat (0, 0 where there is none)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0, 0
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def timed(call, calls: int) -> list[float]:
    """ms per call of `calls` calls, after one untimed call (compiling, first touches)."""
    call()
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        call()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def run_numba(threads: int, calls: int) -> dict[str, list[float]]:
    import numba
    import numpy as np
    from numba import njit, prange

    numba.set_num_threads(threads)

    @njit(parallel=True)
    def rows(a, work):
        for i in prange(a.shape[0]):
            s = 0.0
            for r in range(work):
                s += np.sqrt(r + i)
            a[i] = s

    a = np.zeros(64)
    return {f"numba prange, {w:,} iterations a row": timed(lambda w=w: rows(a, w), calls)
            for w in NUMBA_WORK}


def run_torch(threads: int, calls: int) -> dict[str, list[float]]:
    import torch

    torch.set_num_threads(threads)
    x = torch.randn(64, 16, 32, 32).contiguous(memory_format=torch.channels_last)
    w = torch.randn(16, 16, 3, 3).contiguous(memory_format=torch.channels_last)
    out = {}
    with torch.no_grad():
        out["PyTorch relu, 64x16x32x32"] = timed(lambda: torch.relu(x), calls)
        out["PyTorch conv 3x3 16->16, 64x32x32"] = timed(
            lambda: torch.nn.functional.conv2d(x, w, padding=1), calls)
    return out


def child(impl: str, threads: int, calls: int) -> None:
    steal0, all0 = cpu_times()
    times = (run_numba if impl == "numba" else run_torch)(threads, calls)
    steal1, all1 = cpu_times()
    share = (steal1 - steal0) / (all1 - all0) if all1 > all0 else 0.0
    print(json.dumps({"times": times, "steal": share}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--impl", choices=("numba", "torch"), help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.impl:
        child(a.impl, a.threads, a.calls)
        return
    try:
        import torch  # noqa: F401
        impls = ["numba", "torch"]
    except ImportError:
        impls = ["numba"]
        print("PyTorch is not installed: numba only", file=sys.stderr)
    per_call: dict[tuple[str, int], list[float]] = {}
    steal: dict[int, list[float]] = {1: [], 2: []}
    for r in range(a.rounds):
        for impl in impls:
            for threads in (1, 2) if r % 2 == 0 else (2, 1):
                out = subprocess.run(
                    [sys.executable, __file__, "--impl", impl, "--threads", str(threads),
                     "--calls", str(a.calls)], capture_output=True, text=True, check=True,
                    cwd=ROOT)
                res = json.loads(out.stdout)
                steal[threads].append(res["steal"])
                for case, times in res["times"].items():
                    per_call.setdefault((case, threads), []).extend(times)
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)

    def pct(values: list[float], q: float) -> float:
        s = sorted(values)
        return s[min(len(s) - 1, int(q * len(s)))]

    print(f"per call, ms: {a.rounds} rounds of {a.calls} calls, each thread count in its own "
          f"subprocess; host steal during the runs: {100 * median(steal[1]):.0f}% of the "
          f"cores' time on 1 thread, {100 * median(steal[2]):.0f}% on 2 (medians of rounds)\n")
    print("| work | 1 thread median | 1 thread p90 | 2 threads median | 2 threads p90 | "
          "1 / 2 threads (medians) |")
    print("|---|---:|---:|---:|---:|---:|")
    for case in dict.fromkeys(c for c, _ in per_call):
        one, two = per_call[(case, 1)], per_call[(case, 2)]
        print(f"| {case} | {median(one):.3f} | {pct(one, 0.9):.3f} | {median(two):.3f} | "
              f"{pct(two, 0.9):.3f} | {median(one) / median(two):.2f}x |")


if __name__ == "__main__":
    main()
