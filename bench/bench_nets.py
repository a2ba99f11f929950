"""Whole training steps of the nets people train at CIFAR size: cnncli against PyTorch.

    .venv/bin/python bench/bench_nets.py [--nets cifar_small,cifar_vgg_bn,resnet20]
        [--batch 64] [--threads 2] [--steps 15] [--rounds 3] [--blas own,Haswell]
        [--conv-algo auto] [--mode train|infer]

One training step = forward + softmax cross-entropy + backward + SGD momentum update; with
`--mode infer`, one forward pass in evaluation mode (batchnorm's running statistics, no
dropout; PyTorch in eval() under no_grad). float32, batch 64, the same thread count for
everyone. Each measurement runs in its own subprocess (numba
and torch each bring an OpenMP runtime; OpenBLAS reads OPENBLAS_CORETYPE when it loads), and
the implementations take turns, round after round, so a slow minute of a shared machine
falls on all of them. Reported: the median over rounds of each run's median step.

`--blas own` leaves OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset (OpenBLAS picks its kernel
and block sizes for the CPU, as on a user's machine); `--blas Haswell` forces the AVX2
kernel, as the workplace's environment does on machines whose OpenBLAS is old. PyTorch
uses its own kernels (oneDNN, and MKL for its BLAS) either way.

The machine's limit: the step's multiply-adds (`cnncli check --training`, per image, times
the batch) at the sgemm peak measured here in the same BLAS setting (numpy float32 matmul of
2048 x 2048 on the same threads): the fastest a step made of GEMMs could run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parent.parent
NETS = ("cifar_small", "cifar_vgg_bn", "resnet20")
IMPLS = ("cnncli", "torch", "torch_cl")
LABELS = {"cnncli": "cnncli", "torch": "PyTorch NCHW", "torch_cl": "PyTorch channels_last"}


def torch_model(net: str):  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    sys.path.insert(0, str(ROOT / "tests"))
    from torch_nets import ResNet20, cifar_vgg_bn

    if net == "cifar_small":
        return nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2048, 10))
    if net == "cifar_vgg_bn":
        return cifar_vgg_bn()
    if net == "resnet20":
        return ResNet20("B")
    raise SystemExit(f"no PyTorch model for {net}")
    del torch


def run_cnncli(net: str, batch: int, threads: int, steps: int, conv_algo: str,
               infer: bool = False) -> list[float]:
    import numpy as np

    from cnncli.config import configure_threads
    from cnncli.engine.network import Network
    from cnncli.engine.optim import make_optimizer

    configure_threads(threads)
    model = Network.from_spec(net, seed=0, conv_algo=conv_algo)
    opt = make_optimizer("momentum", model.params, lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    x = rng.random((batch, model.input.h, model.input.w, model.input.d), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    times = []
    for i in range(steps + 3):  # three warm-up steps
        t = time.perf_counter()
        if infer:
            model.forward(x, training=False)
        else:
            loss, d = model.loss(model.forward(x, training=True), y)
            model.backward(d)
            opt.step(model.grads)
        if i >= 3:
            times.append(time.perf_counter() - t)
    return times


def run_torch(net: str, batch: int, threads: int, steps: int, channels_last: bool,
              infer: bool = False) -> list[float]:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torch_model(net)
    model.train()
    x = torch.rand(batch, 3, 32, 32)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    if infer:
        model.eval()
    for i in range(steps + 3):
        t = time.perf_counter()
        if infer:
            with torch.no_grad():
                model(x)
        else:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t)
    return times


def sgemm_peak(threads: int) -> float:
    """Multiply-adds per second of a float32 2048^3 matmul on `threads` BLAS threads."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    best = float("inf")
    with threadpool_limits(threads, user_api="blas"):
        for _ in range(6):
            t = time.perf_counter()
            a @ a
            best = min(best, time.perf_counter() - t)
    return 2048 ** 3 / best


def blas_kernel() -> str:
    import numpy  # noqa: F401  (loads OpenBLAS)
    from threadpoolctl import threadpool_info

    return ", ".join(str(i.get("architecture")) for i in threadpool_info()
                     if i.get("internal_api") == "openblas") or "?"


def step_macs(net: str, mode: str) -> int:
    """Multiply-adds per image of a training step (or of a forward pass)."""
    from cnncli.analysis.report import analyze, training_costs
    from cnncli.spec import catalog
    from cnncli.spec.parse import load_spec

    totals = training_costs(analyze(load_spec(catalog.resolve(net))))["totals"]
    return int(totals["total"] if mode == "train" else totals["forward"])


def child(args: argparse.Namespace) -> None:
    if args.impl == "peak":
        print(json.dumps({"peak": sgemm_peak(args.threads), "kernel": blas_kernel()}))
    elif args.impl == "cnncli":
        print(json.dumps(run_cnncli(args.net, args.batch, args.threads, args.steps,
                                    args.conv_algo, args.mode == "infer")))
    else:
        print(json.dumps(run_torch(args.net, args.batch, args.threads, args.steps,
                                   args.impl == "torch_cl", args.mode == "infer")))


def measure(args: argparse.Namespace, impl: str, net: str, blas: str) -> object:
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    if blas == "own":  # as on a user's machine: neither of the workplace's two variables
        env.pop("OPENBLAS_L2_SIZE", None)
    else:
        env["OPENBLAS_CORETYPE"] = blas
    cmd = [sys.executable, __file__, "--impl", impl, "--net", net, "--batch", str(args.batch),
           "--threads", str(args.threads), "--steps", str(args.steps),
           "--conv-algo", args.conv_algo, "--mode", args.mode]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env,
                         cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default=",".join(NETS))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--blas", default="own,Haswell")
    parser.add_argument("--conv-algo", default="auto", choices=("auto", "gemm", "winograd"))
    parser.add_argument("--mode", default="train", choices=("train", "infer"))
    parser.add_argument("--impl", choices=IMPLS + ("peak",))
    parser.add_argument("--net")
    args = parser.parse_args()
    if args.impl:
        child(args)
        return
    nets, settings = args.nets.split(","), args.blas.split(",")
    medians: dict[tuple[str, str, str], list[float]] = {}
    peaks: dict[str, dict[str, object]] = {}
    for blas in settings:
        peaks[blas] = measure(args, "peak", "", blas)  # type: ignore[assignment]
    for r in range(args.rounds):
        for blas in settings:
            for net in nets:
                for impl in IMPLS:
                    times = measure(args, impl, net, blas)
                    medians.setdefault((blas, net, impl), []).append(median(times))  # type: ignore[arg-type]
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    what = "whole training step" if args.mode == "train" else "inference (forward, eval mode)"
    print(f"{what}, batch {args.batch}, float32, {args.threads} threads, "
          f"median of {args.rounds} alternating rounds of {args.steps} steps each; "
          f"cnncli --conv-algo {args.conv_algo}")
    print("| net | OpenBLAS kernel | cnncli img/s | PyTorch NCHW img/s | PyTorch channels_last "
          "img/s | cnncli / faster PyTorch | cnncli at % of sgemm peak (direct MACs) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for net in nets:
        macs = step_macs(net, args.mode) * args.batch
        for blas in settings:
            rate = {impl: args.batch / median(medians[(blas, net, impl)]) for impl in IMPLS}
            best_torch = max(rate["torch"], rate["torch_cl"])
            peak = float(peaks[blas]["peak"])  # type: ignore[arg-type]
            share = macs / peak / median(medians[(blas, net, "cnncli")])
            kernel = f"{blas} ({peaks[blas]['kernel']}, sgemm {2 * peak / 1e9:.0f} GFLOP/s)"
            print(f"| {net} | {kernel} | {rate['cnncli']:,.0f} | {rate['torch']:,.0f} | "
                  f"{rate['torch_cl']:,.0f} | {rate['cnncli'] / best_torch:.2f}x | "
                  f"{share:.0%} |")


if __name__ == "__main__":
    main()
