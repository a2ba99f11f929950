"""Benchmark training: cnncli's engine vs a plain PyTorch script, same net, data and steps.

    .venv/bin/python bench/bench_train.py                  # 5 epochs each; updates BENCHMARKS.md
    .venv/bin/python bench/bench_train.py --epochs 1 --no-write

Both train cifar_small ([CONV-RELU-POOL]*3 -> FC, 113,738 parameters) on the built-in
synthetic shapes (32x32x3, 10 classes; the 8000 training / 1600 validation images that
`cnncli train cifar_small` uses), normalised with the training set's per-channel mean and
std, with SGD + momentum 0.9, lr 0.01, batch 64, no augmentation, on 2 threads. They start
from the same initial weights and see the same minibatches in the same order, so their
accuracies are directly comparable. Each runs in its own subprocess (torch and numba bring
separate OpenMP runtimes); each does one untimed forward/backward first (JIT, caches);
the two take turns, one epoch each, so that other jobs on a shared machine slow both alike.
Time per epoch is the training pass only; validation is timed separately. On a shared
machine the best epoch is the stable figure (images/s are given for it and the median).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
from benchmarks_md import BENCHMARKS, markers, replace_section  # noqa: E402  (beside this script)

START, END = markers("bench_train")
SPEC = "cifar_small"
LR, MOMENTUM, BATCH, SEED = 0.01, 0.9, 64, 0
EpochFn = Callable[[np.ndarray], dict[str, float]]


def prepare(path: Path) -> None:
    """Data, normalisation, initial weights and per-epoch orders, shared by both children."""
    from cnncli.engine.network import Network
    from cnncli.training import data as D
    from cnncli.training.loop import load_training_data

    net = Network.from_spec(SPEC, seed=SEED)
    train, val = load_training_data(net, None, None, 0.2, 8000)
    assert val is not None
    mean, std = D.channel_stats(train.x)
    arrays = {f"w/{k}": v for k, v in net.state_dict().items()}
    np.savez(path, x=D.normalize(train.x, mean, std), y=train.y,
             vx=D.normalize(val.x, mean, std), vy=val.y, **arrays)


def orders(n: int, epochs: int) -> list[np.ndarray]:
    """The trainer's shuffling: one permutation per epoch from default_rng([seed, 1])."""
    rng = np.random.default_rng([SEED, 1])
    return [rng.permutation(n) for _ in range(epochs)]


def setup_cnncli(path: Path, threads: int) -> tuple[str, EpochFn]:
    from cnncli.config import configure_threads
    from cnncli.engine.network import Network
    from cnncli.engine.optim import Momentum

    configure_threads(threads)
    z = np.load(path)
    net = Network.from_spec(SPEC, seed=SEED)
    net.load_state_dict({k[2:]: z[k] for k in z.files if k.startswith("w/")})
    x, y, vx, vy = z["x"], z["y"], z["vx"], z["vy"]
    opt = Momentum(net.params, LR, MOMENTUM)

    def evaluate() -> float:
        correct = 0
        for s in range(0, len(vx), 256):
            correct += int((net.scores(vx[s:s + 256]).argmax(1) == vy[s:s + 256]).sum())
        return correct / len(vx)

    scores = net.forward(x[:BATCH], training=True)  # warm-up: JIT and caches, no step
    net.backward(net.loss(scores, y[:BATCH])[1])
    evaluate()

    def epoch(order: np.ndarray) -> dict[str, float]:
        t0 = time.perf_counter()
        for s in range(0, len(x), BATCH):
            idx = order[s:s + BATCH]
            scores = net.forward(x[idx], training=True)
            _, dscores = net.loss(scores, y[idx])
            net.backward(dscores)
            opt.step(net.grads)
        seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        acc = evaluate()
        return {"seconds": seconds, "val_acc": acc, "val_seconds": time.perf_counter() - t0}

    return "cnncli (numba " + __import__("numba").__version__ + ")", epoch


def setup_torch(path: Path, threads: int) -> tuple[str, EpochFn]:
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    z = np.load(path)

    class CifarSmall(nn.Module):
        """cifar_small as PyTorch writes it; attribute names match cnncli's parameters."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
            self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
            self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
            self.fc1 = nn.Linear(128 * 4 * 4, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for conv in (self.conv1, self.conv2, self.conv3):
                x = nn.functional.max_pool2d(torch.relu(conv(x)), 2)
            return self.fc1(torch.flatten(x, 1))

    model = CifarSmall()
    model.load_state_dict({k[2:]: torch.from_numpy(z[k]) for k in z.files
                           if k.startswith("w/")})
    # NHWC -> NCHW once, outside the timed loop (a torch user's DataLoader delivers NCHW)
    x = torch.from_numpy(np.ascontiguousarray(z["x"].transpose(0, 3, 1, 2)))
    vx = torch.from_numpy(np.ascontiguousarray(z["vx"].transpose(0, 3, 1, 2)))
    y, vy = torch.from_numpy(z["y"]), torch.from_numpy(z["vy"])
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    loss_fn = nn.CrossEntropyLoss()

    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(vx[s:s + 256]).argmax(1) == vy[s:s + 256]).sum())
                          for s in range(0, len(vx), 256))
        model.train()
        return correct / len(vx)

    loss_fn(model(x[:BATCH]), y[:BATCH]).backward()  # warm-up, no step
    opt.zero_grad()
    evaluate()

    def epoch(order: np.ndarray) -> dict[str, float]:
        order_t = torch.from_numpy(order)
        t0 = time.perf_counter()
        for s in range(0, len(x), BATCH):
            idx = order_t[s:s + BATCH]
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
        seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        acc = evaluate()
        return {"seconds": seconds, "val_acc": acc, "val_seconds": time.perf_counter() - t0}

    return "PyTorch " + torch.__version__, epoch


def child(engine: str, data: Path, epochs: int, threads: int) -> None:
    """Set up, say "ready", then train one epoch per "go" line on stdin (JSON out)."""
    version, epoch = (setup_cnncli if engine == "cnncli" else setup_torch)(data, threads)
    print(json.dumps({"version": version}), flush=True)
    n = len(np.load(data)["y"])
    for order in orders(n, epochs):
        sys.stdin.readline()
        print(json.dumps(epoch(order)), flush=True)


def summarize(r: dict) -> dict:  # type: ignore[type-arg]
    n = r["images"]
    secs = [e["seconds"] for e in r["epochs"]]
    med = float(np.median(secs))
    return {"name": r["version"].split(" (")[0].split(" ")[0], "version": r["version"],
            "median_s": med, "best_s": min(secs),
            "images_per_s": n / min(secs), "median_images_per_s": n / med,
            "val_acc": r["epochs"][-1]["val_acc"],
            "val_accs": [e["val_acc"] for e in r["epochs"]],
            "val_s": float(np.median([e["val_seconds"] for e in r["epochs"]]))}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def write_section(rows: list[dict], epochs: int, threads: int, n: int,  # type: ignore[type-arg]
                  load: tuple[float, float]) -> None:
    ours, theirs = rows
    lines = [
        START,
        "## Training `cifar_small`: cnncli against PyTorch",
        "",
        f"- **What:** {epochs} epochs of cifar_small (113,738 parameters) on the built-in "
        f"synthetic shapes (32x32x3, 10 classes; {n} training / 1600 validation images, as "
        "`cnncli train cifar_small` uses them): SGD with momentum 0.9, lr 0.01, batch 64, no "
        "augmentation. Both start from the same initial weights and see the same minibatches "
        "in the same order. PyTorch is a plain `torch.nn` script (`Conv2d`, `max_pool2d`, "
        "`Linear`, `CrossEntropyLoss`, `optim.SGD`) on NCHW tensors. Time per epoch is the "
        "training pass (best and median over epochs), after one untimed warm-up step; "
        "validation is timed apart. The two run in separate processes and take turns, one "
        "epoch each.",
        f"- **Command:** `.venv/bin/python bench/bench_train.py --epochs {epochs}`",
        f"- **Machine:** {cpu_name()}, `{os.cpu_count()} cores`, {threads} threads for both "
        f"(`configure_threads({threads})`, `torch.set_num_threads({threads})`), Python "
        f"{sys.version.split()[0]}, {ours['version']}, {theirs['version']}",
        "- **Date:** 2026-11-22",
        f"- **Load:** 1-minute load average {load[0]:.2f} before, {load[1]:.2f} after (2 "
        "cores; other jobs share the machine, which slows both engines, PyTorch's OpenMP "
        "threads most)",
        "",
        "| engine | time per epoch: best | median | images/s (best epoch) | images/s (median) "
        "| validation pass (1600 images) | validation accuracy per epoch | final validation "
        "accuracy |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        accs = ", ".join(f"{100 * a:.2f}%" for a in r["val_accs"])
        lines.append(f"| {r['name']} | {r['best_s']:.1f} s | {r['median_s']:.1f} s | "
                     f"{r['images_per_s']:.0f} | {r['median_images_per_s']:.0f} | "
                     f"{r['val_s']:.2f} s | {accs} | {100 * r['val_acc']:.2f}% |")
    ratio = ours["best_s"] / theirs["best_s"]
    lines += ["", f"cnncli's best epoch takes {ratio:.2f}x PyTorch's. The best epoch is the "
              "figure to compare: on a shared machine slower epochs measure the other jobs.",
              END]
    section = "\n".join(lines) + "\n"
    replace_section("bench_train", section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    parser.add_argument("--child", choices=["cnncli", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.data, args.epochs, args.threads)
        return
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.npz"
        prepare(data)
        n = len(np.load(data)["y"])
        # Both children live side by side and take turns, one epoch each, so that other
        # jobs on a shared machine slow both alike; the idle one waits on a pipe.
        procs, results = [], []
        for name in ("cnncli", "torch"):
            cmd = [sys.executable, __file__, "--child", name, "--data", str(data),
                   "--epochs", str(args.epochs), "--threads", str(args.threads)]
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    text=True)
            assert proc.stdout is not None
            results.append(dict(json.loads(proc.stdout.readline()), epochs=[], images=n))
            procs.append(proc)
        for e in range(args.epochs):
            for proc, result in zip(procs, results, strict=True):
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
                result["epochs"].append(json.loads(proc.stdout.readline()))
                print(f"epoch {e + 1}: {result['version']}: "
                      f"{result['epochs'][-1]['seconds']:.1f} s", file=sys.stderr, flush=True)
        for proc in procs:
            if proc.wait() != 0:
                raise SystemExit(f"a benchmark child failed (exit {proc.returncode})")
        rows = [summarize(r) for r in results]
    print(f"{'engine':<8} {'best s':>7} {'median':>7} {'img/s':>7} {'val s':>6}  "
          "val acc per epoch")
    for r in rows:
        accs = " ".join(f"{100 * a:.2f}%" for a in r["val_accs"])
        print(f"{r['name']:<8} {r['best_s']:>7.1f} {r['median_s']:>7.1f} "
              f"{r['images_per_s']:>7.0f} {r['val_s']:>6.2f}  {accs}")
    if not args.no_write:
        write_section(rows, args.epochs, args.threads, n, (load_before, os.getloadavg()[0]))
        print(f"wrote {BENCHMARKS.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
