"""Whole training steps under each --conv-algo policy, and Winograd's float32 error per layer.

    .venv/bin/python bench/bench_algo.py [--nets cifar_small,cifar_vgg_bn,resnet20]
                                         [--batch 64] [--rounds 3] [--steps 5] [--threads 2]

A training step is what `cnncli train` runs per batch: forward, softmax loss, backward,
momentum update (float32). Every (net, policy) run is its own subprocess (a fresh heap and
thread pool; numba's compiled kernels come from the on-disk cache, compiled by a warm-up
before the rounds). Round r runs every net under every policy in turn, so a load spike on
a shared machine hits all of them alike; each run reports the median of --steps timed
steps after one untimed step, and the table shows the median over rounds in images/s,
and each policy's speed-up over gemm.

Then, per distinct Winograd-eligible layer shape of the nets: the float32 relative error
of Winograd F(4x4, 3x3) against float32 im2col + GEMM (max |wino - gemm| / max |gemm|) for
forward, backward-data and backward-weights, and which algorithm `auto` picks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from statistics import median

POLICIES = ("gemm", "winograd", "auto")


def child(net_name: str, policy: str, batch: int, steps: int, threads: int) -> None:
    """One run: print {"images_per_s": ..., "algorithms": {...}} as JSON."""
    import numpy as np

    from cnncli.config import configure_threads
    from cnncli.engine.network import Network
    from cnncli.engine.optim import make_optimizer
    from cnncli.spec import catalog
    from cnncli.spec.parse import load_spec

    configure_threads(threads)
    net = Network(load_spec(catalog.resolve(net_name)), dtype=np.float32, seed=0,
                  conv_algo=policy)
    opt = make_optimizer("momentum", net.params, lr=1e-3)
    rng = np.random.default_rng(0)
    v = net.input
    x = rng.standard_normal((batch, v.h, v.w, v.d), dtype=np.float32)
    labels = rng.integers(0, net.output.size, size=batch)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        scores = net.forward(x, training=True)
        _, dscores = net.loss(scores, labels)
        net.backward(dscores)
        opt.step(net.grads)
        if i:  # the first step allocates the optimizer state
            times.append(time.perf_counter() - t0)
    algos = {layer.name: layer.algorithm for layer in net.layers if hasattr(layer, "algo")}
    print(json.dumps({"images_per_s": batch / median(times), "algorithms": algos}))


def run_child(net_name: str, policy: str, a: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", net_name, policy, "--batch", str(a.batch),
           "--steps", str(a.steps), "--threads", str(a.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def errors(nets: list[str]) -> None:
    import numpy as np

    from cnncli.engine.kernels import conv
    from cnncli.engine.kernels import winograd as wg
    from cnncli.engine.kernels.conv_algo import choose

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_winograd import net_layers

    print("\nfloat32 Winograd F(4x4,3x3) vs float32 im2col+GEMM, max |wino - gemm| / "
          "max |gemm| (batch 8, He-scaled weights)")
    print(f"{'layer':16s} {'forward':>9s} {'dx':>9s} {'dW':>9s}  auto picks")
    rng = np.random.default_rng(0)
    for name, H, W, C, K, P in net_layers(nets):
        x = rng.standard_normal((8, H, W, C)).astype(np.float32)
        w = (rng.standard_normal((K, C, 3, 3)) * np.sqrt(2.0 / (9 * C))).astype(np.float32)
        b = rng.standard_normal(K).astype(np.float32)
        OH, OW = H + 2 * P - 2, W + 2 * P - 2
        dy = rng.standard_normal((8, OH, OW, K)).astype(np.float32)
        geo = ((1, 1), (P, P), (1, 1), 1)
        y = conv.conv2d_forward(x, w, b, *geo, (OH, OW))
        dx, dw, _ = conv.conv2d_backward(x, w, dy, *geo)

        def rel(a, ref):
            return float(np.abs(a - ref).max() / np.abs(ref).max())

        errs = (rel(wg.winograd_conv_forward(x, w, b, P), y),
                rel(wg.winograd_conv_backward_data(dy, w, P), dx),
                rel(wg.winograd_conv_backward_weights(x, dy, P), dw))
        pick = choose("auto", True, OH, OW, K).name
        print(f"{name:16s} " + " ".join(f"{e:9.2e}" for e in errs) + f"  {pick}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="cifar_small,cifar_vgg_bn,resnet20")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-errors", action="store_true", help="skip the error table")
    ap.add_argument("--child", nargs=2, metavar=("NET", "POLICY"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child[0], a.child[1], a.batch, a.steps, a.threads)
        return
    nets = a.nets.split(",")
    from cnncli.engine.warmup import warm_up_nets

    for policy in ("gemm", "winograd", "auto"):  # compile (or load) outside the timed runs
        warm_up_nets(nets, conv_algo=policy)
    load0 = os.getloadavg()[0]
    print(f"batch {a.batch}, float32, momentum, {a.threads} threads, {a.steps} timed steps "
          f"per run, {a.rounds} alternating rounds, load average {load0:.1f} at start")
    speeds: dict[tuple[str, str], list[float]] = {}
    picks: dict[tuple[str, str], dict] = {}
    for _ in range(a.rounds):
        for net_name in nets:
            for policy in POLICIES:
                r = run_child(net_name, policy, a)
                speeds.setdefault((net_name, policy), []).append(r["images_per_s"])
                picks[net_name, policy] = r["algorithms"]
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    print(f"\nimages/s, median of {a.rounds} (speed-up over gemm); each run's rounds in []")
    print(f"{'net':14s} " + " ".join(f"{p:>30s}" for p in POLICIES))
    for net_name in nets:
        base = median(speeds[net_name, "gemm"])
        cells = []
        for p in POLICIES:
            s = speeds[net_name, p]
            runs = ",".join(f"{v:.0f}" for v in s)
            cells.append(f"{median(s):7.1f} {median(s) / base:5.2f}x [{runs}]")
        print(f"{net_name:14s} " + " ".join(f"{c:>30s}" for c in cells))
    print("\nwhat auto ran, per conv layer:")
    for net_name in nets:
        print(f"  {net_name}: " + ", ".join(f"{k} {v}" for k, v in
                                            picks[net_name, "auto"].items()))
    if not a.no_errors:
        errors(nets)


if __name__ == "__main__":
    if "." not in sys.path and os.path.isdir(os.path.join(os.getcwd(), "cnncli")):
        sys.path.insert(0, os.getcwd())
    main()
