"""Benchmark data-parallel training over MPI, and model its scaling to many machines.

    .venv/bin/python bench/bench_distributed.py             # measures; updates BENCHMARKS.md
    .venv/bin/python bench/bench_distributed.py --no-write --steps 20

Three measurements on this machine, each in fresh processes:

1. Training throughput of cifar_small (batch 64, the built-in data, the Trainer's own loop):
   1 process with 2 threads, against `mpiexec -n 2` with 1 thread per rank (the same
   global batch of 64, 32 images per rank), and 1 process with 1 thread for scale; with
   the time each step spends in the gradient Allreduce.
2. The Allreduce of every bundled net's gradients (float32, one fused buffer, in place)
   between 2 ranks here (shared memory): median time per step and the bandwidth it
   reaches (ring bytes / time).
3. Compute per image of a training step (forward, backward, momentum step) of
   cifar_small, ResNet-18 and VGG16 in one process with 2 threads.

From 2 and 3 a model of synchronous data parallelism on N machines like this one, each
on its own link of 10 or 100 Gbit/s: per step, compute of B/N images (the global batch B
stays fixed: the same model is trained), then a ring allreduce that sends
2(N-1)/N x the gradient bytes over each link plus 2(N-1) message latencies; nothing
overlaps (the engine reduces after the whole backward). Speed-up = T(1) / T(N).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmarks_md import markers, replace_section  # noqa: E402  (beside this script)

START, END = markers("bench_distributed")
RESULTS = ROOT / "bench-results" / "bench_distributed.json"  # the last run's figures
MODELLED = ("cifar_small", "resnet18", "vgg16")
# per-step batch at which compute per image is measured (VGG16 at 224x224 is ~46 GFLOP
# per image for a training step: a few images already take seconds here)
MEASURE_BATCH = {"cifar_small": 64, "resnet18": 8, "vgg16": 4}
GLOBAL_BATCH = 256
FASTER = 100  # a second kind of machine: this much faster compute (GPU-class)
MACHINES = (1, 2, 4, 8, 16, 32)
# latency of one message step of the ring (assumed, not measured): TCP over 10 Gbit/s
# Ethernet, RDMA over 100 Gbit/s (InfiniBand / RoCE)
LINKS = {10: 50e-6, 100: 5e-6}


def mpiexec() -> str:
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else "mpiexec"


def run_child(args: list[str], ranks: int = 1, timeout: float = 1800) -> Any:
    cmd = [sys.executable, __file__, "--child", *args]
    if ranks > 1:
        cmd = [mpiexec(), "-n", str(ranks), *cmd]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- children


def child_throughput(threads: int, steps: int) -> dict[str, Any]:
    """Train cifar_small with the Trainer (under mpiexec: data-parallel)."""
    from cnncli.config import configure_threads
    from cnncli.engine.network import Network
    from cnncli.training.distributed import connect
    from cnncli.training.loop import (
        BatchDone,
        TrainConfig,
        Trainer,
        load_training_data,
        spec_text_of,
    )

    comm = connect()
    configure_threads(threads)
    net = Network.from_spec("cifar_small", seed=0)
    train, _ = load_training_data(net, None, None, 0.0, 8000)
    config = TrainConfig(epochs=1, batch=64, lr=0.01)
    trainer = Trainer(net, train, None, config, spec_text_of(net.spec), comm=comm)
    comm_seconds: list[float] = []
    reduce_step = comm.reduce_step

    def timed(*args: Any) -> Any:
        t0 = time.perf_counter()
        result = reduce_step(*args)
        comm_seconds.append(time.perf_counter() - t0)
        return result

    comm.reduce_step = timed  # type: ignore[method-assign,assignment]
    warmup, seconds = 5, []
    for event in trainer.run():
        if isinstance(event, BatchDone):
            seconds.append(event.seconds)
            if len(seconds) == warmup + steps:
                break
    per_step = float(np.median(seconds[warmup:]))
    return {"ranks": comm.size, "threads": threads, "steps": steps, "step_s": per_step,
            "images_per_s": 64 / per_step,
            "allreduce_s": float(np.median(comm_seconds[warmup:]))}


def child_allreduce(repeats: int) -> list[dict[str, Any]]:
    """Time the in-place Allreduce of each bundled net's float32 gradient buffer."""
    from mpi4py import MPI

    from cnncli.analysis.report import analyze
    from cnncli.spec import catalog
    from cnncli.spec.parse import load_spec

    world = MPI.COMM_WORLD
    rows = []
    for name in catalog.bundled_names():
        report = analyze(load_spec(catalog.bundled_dir() / f"{name}.yaml"))
        if not report.valid:
            continue
        buf = np.ones(report.parameters, dtype=np.float32)
        world.Allreduce(MPI.IN_PLACE, buf)  # first touch of the pages, MPI's set-up
        times = []
        for _ in range(repeats):
            world.Barrier()
            t0 = time.perf_counter()
            world.Allreduce(MPI.IN_PLACE, buf)
            times.append(time.perf_counter() - t0)
        worst = world.allreduce(float(np.median(times)), op=MPI.MAX)
        rows.append({"name": name, "title": report.spec.name, "parameters": report.parameters,
                     "bytes": buf.nbytes, "seconds": worst})
        del buf
    return rows


def child_compute(name: str, batch: int, repeats: int) -> dict[str, Any]:
    """Seconds per training step (forward, loss, backward, momentum step) at `batch`."""
    from cnncli.config import configure_threads
    from cnncli.engine.network import Network
    from cnncli.engine.optim import Momentum

    configure_threads(2)
    net = Network.from_spec(name, seed=0)
    v = net.input
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, v.h, v.w, v.d)).astype(np.float32)
    y = rng.integers(0, net.output.d, batch)
    opt = Momentum(net.params, 0.001, 0.9)
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        scores = net.forward(x, training=True)
        _, dscores = net.loss(scores, y)
        net.backward(dscores)
        opt.step(net.grads)
        if i:  # the first step compiles and touches every buffer
            times.append(time.perf_counter() - t0)
    step = float(np.median(times))
    return {"name": name, "batch": batch, "step_s": step, "image_s": step / batch,
            "parameters": net.num_parameters()}


# --------------------------------------------------------------------------- the model


def ring_seconds(nbytes: float, machines: int, gbit: int) -> float:
    """A ring allreduce of `nbytes` over `machines`, each on its own link of `gbit`."""
    if machines == 1:
        return 0.0
    return (2 * (machines - 1) / machines * nbytes / (gbit * 1e9 / 8)
            + 2 * (machines - 1) * LINKS[gbit])


def step_parts(image_s: float, nbytes: float, machines: int, gbit: int) -> tuple[float, float]:
    """(compute, communication) seconds of one step of the global batch on `machines`."""
    return image_s * GLOBAL_BATCH / machines, ring_seconds(nbytes, machines, gbit)


def scaling(image_s: float, nbytes: float, gbit: int) -> list[tuple[float, float]]:
    """[(speed-up over one machine, communication's share of the step)] per MACHINES."""
    one = image_s * GLOBAL_BATCH
    rows = []
    for n in MACHINES:
        work, comm = step_parts(image_s, nbytes, n, gbit)
        rows.append((one / (work + comm), comm / (work + comm)))
    return rows


def at(n: int | None) -> str:
    return f"N={n}" if n else "beyond N=4096"


def half_point(image_s: float, nbytes: float, gbit: int, limit: int = 4096) -> int | None:
    """The fewest machines at which the Allreduce takes half the step (None: > limit)."""
    for n in range(2, limit + 1):
        work, comm = step_parts(image_s, nbytes, n, gbit)
        if comm >= work:
            return n
    return None


# --------------------------------------------------------------------------- report


def fmt_s(s: float) -> str:
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def write(results: dict[str, Any], write_md: bool) -> None:
    thr, ar, comp = results["throughput"], results["allreduce"], results["compute"]
    by_name = {r["name"]: r for r in ar}
    lines = [
        START,
        "## Data-parallel training over MPI: 2 ranks here, and a model for many machines",
        "",
        "- **What:** (1) training throughput of cifar_small at batch 64 with the Trainer's "
        "own loop (built-in data, momentum SGD): one process with 2 threads against "
        "`mpiexec -n 2` with 1 thread per rank (the same global batch, 32 images per rank); "
        "the median of "
        f"{thr[0]['steps']} steps after 5 untimed ones. (2) the in-place Allreduce of each "
        "bundled net's gradients (float32, one fused buffer, as the engine sends it) between "
        "2 ranks on this machine (shared memory, no network): the median of "
        f"{results['repeats']} after one untimed. (3) compute per image of one training "
        "step (forward, backward, momentum step) in one process with 2 threads.",
        "- **Command:** `.venv/bin/python bench/bench_distributed.py` (MPICH from the `mpich` "
        "wheel)",
        f"- **Machine:** {results.get('cpu', 'unknown CPU')}, {os.cpu_count()} cores "
        f"(a virtual machine), Python {sys.version.split()[0]}, {results['mpi']}; load "
        f"average {results['load'][0]:.2f} before, {results['load'][1]:.2f} after"
        + (f"; the host took back {results['steal']:.0%} of the CPU time while it ran "
           "(steal: threads ready to run but not running)" if results.get("steal") else ""),
        f"- **Date:** {date.today().isoformat()}",
        "",
        "### Throughput on this machine (cifar_small, batch 64)",
        "",
        "| processes x threads | time per step | images/s | of which the Allreduce |",
        "|---|---:|---:|---:|",
    ]
    for r in thr:
        who = "1 process" if r["ranks"] == 1 else f"{r['ranks']} ranks (mpiexec)"
        ranks = f"{who} x {r['threads']} thread{'s' if r['threads'] > 1 else ''}"
        allreduce = fmt_s(r["allreduce_s"]) if r["ranks"] > 1 else "-"
        lines.append(f"| {ranks} | {fmt_s(r['step_s'])} | {r['images_per_s']:.0f} | "
                     f"{allreduce} |")
    two, one = thr[1], thr[0]
    lines += [
        "",
        f"2 ranks x 1 thread train at {two['images_per_s'] / one['images_per_s']:.2f}x the "
        "images/s of 1 process x 2 threads, each step including one Allreduce of the "
        f"gradients ({fmt_s(two['allreduce_s'])}, through shared memory). Both do the same "
        "work on the same two cores. A process's two threads meet at every parallel loop of "
        "every layer, and whenever one of them is descheduled (by the host, or by anything "
        "else on the machine) the other waits for it; single-threaded ranks meet once per "
        "step, in the Allreduce. So a machine that does not give both cores steadily "
        "favours the ranks (here 2 threads ran at "
        f"{one['images_per_s'] / thr[2]['images_per_s']:.2f}x the images/s of 1). Across "
        "machines, ranks pay off anyway: each brings its own cores.",
        "",
        "### The gradient Allreduce of each bundled net (2 ranks, shared memory)",
        "",
        "| net | parameters | gradients (float32) | Allreduce per step | bus bandwidth "
        "(ring bytes / time) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in sorted(ar, key=lambda r: r["parameters"]):
        ring = 2 * (2 - 1) / 2 * r["bytes"]
        lines.append(f"| {r['title']} ({r['name']}) | {r['parameters']:,} | {mib(r['bytes'])} | "
                     f"{fmt_s(r['seconds'])} | {ring / r['seconds'] / 1e9:.1f} GB/s |")
    lines += [
        "",
        "### Scaling model: N machines, global batch "
        f"{GLOBAL_BATCH} (each computes {GLOBAL_BATCH}/N images per step)",
        "",
        f"Per step: compute = seconds per image x {GLOBAL_BATCH}/N; communication = a ring "
        "allreduce, 2(N-1)/N x the gradient bytes over each machine's link plus 2(N-1) "
        f"message latencies ({LINKS[10] * 1e6:.0f} us at 10 Gbit/s, TCP; "
        f"{LINKS[100] * 1e6:.0f} us at 100 Gbit/s, RDMA; assumed); no overlap, since the "
        "engine reduces after the whole backward. Two kinds of machine: like this one "
        f"(compute per image as measured, at the batch given), and one {FASTER}x faster "
        "(GPU-class compute; the same gradients to send). Cells: speed-up over one machine "
        "(communication's share of the step); the last column: the N at which the "
        "Allreduce takes half of every step.",
        "",
        "| net | gradients | machine: compute per image | link | "
        + " | ".join(f"N={n}" for n in MACHINES[1:]) + " | half the step at |",
        "|---|---:|---|---|" + "---:|" * (len(MACHINES) - 1) + "---:|",
    ]
    for c in comp:
        nbytes = by_name[c["name"]]["bytes"]
        for speed in (1, FASTER):
            image_s = c["image_s"] / speed
            kind = (f"this one: {fmt_s(image_s)} (batch {c['batch']})" if speed == 1
                    else f"{speed}x faster: {fmt_s(image_s)}")
            for gbit in LINKS:
                cells = [f"{x:.1f}x ({share:.0%})" for x, share in
                         scaling(image_s, nbytes, gbit)[1:]]
                half = half_point(image_s, nbytes, gbit)
                lines.append(f"| {by_name[c['name']]['title']} | {mib(nbytes)} | {kind} | "
                             f"{gbit} Gbit/s | " + " | ".join(cells) + f" | {at(half)} |")
    lines += ["", "Where it stops scaling, and why:", ""]
    for c in comp:
        nbytes = by_name[c["name"]]["bytes"]
        work, comm = step_parts(c["image_s"] / FASTER, nbytes, 32, 10)
        say = ", ".join(
            f"{'this machine' if speed == 1 else f'{FASTER}x faster'} at {gbit} Gbit/s: "
            f"{at(half_point(c['image_s'] / speed, nbytes, gbit))}"
            for speed in (1, FASTER) for gbit in LINKS)
        lines.append(
            f"- {by_name[c['name']]['title']}: {mib(nbytes)} of gradients per step against "
            f"{fmt_s(c['image_s'])} of compute per image here. The Allreduce takes half "
            f"the step from {say}. At N=32 on 10 Gbit/s a {FASTER}x faster machine computes "
            f"its {GLOBAL_BATCH // 32} images in {fmt_s(work)}, then sends for "
            f"{fmt_s(comm)}.")
    names = {c["name"] for c in comp}
    if {"vgg16", "resnet18", "cifar_small"} <= names:
        vgg = next(c for c in comp if c["name"] == "vgg16")
        small = next(c for c in comp if c["name"] == "cifar_small")
        nbytes, r18 = by_name["vgg16"]["bytes"], by_name["resnet18"]["bytes"]
        here = half_point(vgg["image_s"], nbytes, 10)
        slow = ("it keeps scaling to 32 machines on 10 Gbit/s" if not here or here > 32
                else f"it stops near N={here} even on 10 Gbit/s")
        latency = 2 * 31 * LINKS[10]
        lines += [
            "",
            "VGG16 stops on bandwidth: every step each machine sends and receives 2(N-1)/N x "
            f"{mib(nbytes)} of gradients, however few images it computes "
            f"({fmt_s(ring_seconds(nbytes, 2, 10))} at N=2, "
            f"{fmt_s(ring_seconds(nbytes, 32, 10))} at N=32 over 10 Gbit/s), while its "
            f"compute shrinks as {GLOBAL_BATCH}/N images; 89% of those bytes are its three FC "
            "layers (fc1 alone: 392 MiB, 74%). With compute as slow as this machine's "
            f"{slow}; {FASTER}x faster compute reaches half the step at "
            f"{at(half_point(vgg['image_s'] / FASTER, nbytes, 10))} on 10 Gbit/s and "
            f"{at(half_point(vgg['image_s'] / FASTER, nbytes, 100))} on 100 Gbit/s. "
            f"ResNet-18 sends {nbytes / r18:.0f}x fewer bytes (one small FC layer) and goes "
            "further on the same link. cifar_small stops for another reason: its "
            f"{mib(by_name['cifar_small']['bytes'])} cost little bandwidth but 2(N-1) message "
            f"latencies ({fmt_s(latency)} at N=32 on 10 Gbit/s), against "
            f"{fmt_s(small['image_s'] * GLOBAL_BATCH / 32 / FASTER)} of compute per step there "
            f"at {FASTER}x this machine's speed.",
        ]
    lines += ["", END]
    section = "\n".join(lines) + "\n"
    print(section)
    if write_md:
        replace_section("bench_distributed", section)


def cpu_times() -> list[int]:
    """The machine's CPU time counters (/proc/stat's first line; empty where there is none)."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            return [int(v) for v in fh.readline().split()[1:]]
    except OSError:
        return []


def steal_share(before: list[int], after: list[int]) -> float | None:
    """Of the CPU time that passed, the share a virtual machine's host took back (steal):
    time in which this machine's threads were ready but not running."""
    if len(before) < 8 or len(after) < 8:
        return None
    spent = [b - a for a, b in zip(before, after, strict=True)]
    return spent[7] / max(1, sum(spent))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed training steps")
    parser.add_argument("--repeats", type=int, default=5, help="timed Allreduces per net")
    parser.add_argument("--no-write", action="store_true", help="print, do not update "
                        "BENCHMARKS.md")
    parser.add_argument("--render", action="store_true", help=f"rewrite the section from the "
                        f"last run's figures ({RESULTS.relative_to(ROOT)}), measuring nothing")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.render:
        write(json.loads(RESULTS.read_text(encoding="utf-8")), not args.no_write)
        return
    if args.child:
        kind, *rest = args.child
        if kind == "throughput":
            result: Any = child_throughput(int(rest[0]), int(rest[1]))
        elif kind == "allreduce":
            result = child_allreduce(int(rest[0]))
        else:
            result = child_compute(rest[0], int(rest[1]), int(rest[2]))
        rank = os.environ.get("PMI_RANK") or os.environ.get("OMPI_COMM_WORLD_RANK") or "0"
        if rank == "0":
            print(json.dumps(result), flush=True)
        return
    from mpi4py import MPI

    load0, cpu0 = os.getloadavg()[0], cpu_times()
    throughput = [run_child(["throughput", "2", str(args.steps)]),
                  run_child(["throughput", "1", str(args.steps)], ranks=2),
                  run_child(["throughput", "1", str(args.steps)])]
    allreduce = run_child(["allreduce", str(args.repeats)], ranks=2)
    compute = [run_child(["compute", name, str(MEASURE_BATCH[name]), "3"])
               for name in MODELLED]
    results = {"throughput": throughput, "allreduce": allreduce, "compute": compute,
               "repeats": args.repeats, "load": (load0, os.getloadavg()[0]),
               "steal": steal_share(cpu0, cpu_times()), "cpu": cpu_model(),
               "mpi": " ".join(MPI.Get_library_version().splitlines()[0].split())}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1), encoding="utf-8")
    write(results, not args.no_write)


if __name__ == "__main__":
    main()
