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
import time
from statistics import median


def run_cnncli(batch: int, threads: int, steps: int) -> list[float]:
    import numpy as np

    from cnncli.config import configure_threads
    from cnncli.engine.network import Network
    from cnncli.engine.optim import make_optimizer

    configure_threads(threads)
    net = Network.from_spec("cifar_small", seed=0)
    opt = make_optimizer("momentum", net.params, lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    x = rng.random((batch, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    times = []
    for i in range(steps + 3):  # three warm-up steps
        t = time.perf_counter()
        loss, d = net.loss(net.forward(x, training=True), y)
        net.backward(d)
        opt.step(net.grads)
        if i >= 3:
            times.append(time.perf_counter() - t)
    return times


def run_torch(batch: int, threads: int, steps: int, channels_last: bool) -> list[float]:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2048, 10))
    x = torch.rand(batch, 3, 32, 32)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    times = []
    for i in range(steps + 3):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t)
    return times


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
