"""One whole training step of the notes' small CIFAR net: cnncli against PyTorch.

    .venv/bin/python bench/bench_step.py [--batch 64] [--threads 2] [--steps 30]

conv(3->32)-relu-pool-conv(32->64)-relu-pool-conv(64->128)-relu-pool-fc(2048->10)-softmax
on 32x32x3, forward + backward + SGD-momentum update, float32, same thread count for all.
Each implementation runs in its own subprocess (numba and torch each bring an OpenMP
runtime). Reports the median and best ms per step and images/s, and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from statistics import median


def run_cnncli(batch: int, threads: int, steps: int) -> list[float]:
    """cifar_small's step in cnncli (im2col + GEMM convs), as bench_nets.py times it."""
    from bench_nets import run_cnncli as run_net  # beside this script

    return run_net("cifar_small", batch, threads, steps, "gemm")


def run_torch(batch: int, threads: int, steps: int, channels_last: bool) -> list[float]:
    """The same net in torch.nn, as bench_nets.py times it."""
    from bench_nets import run_torch as run_net

    return run_net("cifar_small", batch, threads, steps, channels_last)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--impl", choices=["cnncli", "torch", "torch_cl"])
    a = parser.parse_args()
    if a.impl:
        if a.impl == "cnncli":
            times = run_cnncli(a.batch, a.threads, a.steps)
        else:
            times = run_torch(a.batch, a.threads, a.steps, a.impl == "torch_cl")
        print(json.dumps(times))
        return
    results = {}
    for impl, label in (("cnncli", "cnncli (NHWC, numba)"), ("torch", "PyTorch NCHW"),
                        ("torch_cl", "PyTorch channels_last")):
        cmd = [sys.executable, __file__, "--impl", impl, "--batch", str(a.batch),
               "--threads", str(a.threads), "--steps", str(a.steps)]
        try:
            out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                                 env=dict(os.environ)).stdout
            results[label] = json.loads(out.strip().splitlines()[-1])
        except (subprocess.CalledProcessError, json.JSONDecodeError) as exc:
            print(f"{label}: failed ({exc})", file=sys.stderr)
    blas = os.environ.get("OPENBLAS_CORETYPE", "auto")
    print(f"whole training step, cifar_small, batch {a.batch}, float32, {a.threads} threads, "
          f"{a.steps} steps (OPENBLAS_CORETYPE={blas})")
    print(f"{'implementation':<24}{'median ms':>11}{'best ms':>10}{'images/s':>11}"
          f"{'time / cnncli':>15}")
    ours = median(results["cnncli (NHWC, numba)"]) if "cnncli (NHWC, numba)" in results else None
    for label, times in results.items():
        med = median(times)
        ratio = f"{med / ours:.2f}" if ours else ""
        print(f"{label:<24}{med * 1000:>11.1f}{min(times) * 1000:>10.1f}"
              f"{a.batch / med:>11,.0f}{ratio:>15}")


if __name__ == "__main__":
    main()
