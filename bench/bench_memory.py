"""`cnncli memory`: the estimated peak of a training step against the measured one.

    .venv/bin/python bench/bench_memory.py             # writes its section of BENCHMARKS.md
    .venv/bin/python bench/bench_memory.py --no-write

For each net and batch: the estimate (`cnncli memory SPEC --batch N`, pure Python) and the
measured peak of one real training step of the engine on random data (`--measure`, see
cnncli/engine/measure.py: tracemalloc traces numpy's arrays and, through numba's runtime
allocator `PyMem_RawMalloc`, the arrays the @njit kernels allocate; the peak of the
second step, steady state). Beside them, what the notes' rules of thumb give
(2 x the forward activations of the notes' table + 3 x the parameters), to show what the
itemised model buys. Momentum SGD, float32, all cores.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from benchmarks_md import BENCHMARKS, markers, replace_section  # noqa: E402  (beside this script)

from cnncli.analysis.memory import estimate  # noqa: E402
from cnncli.analysis.report import analyze  # noqa: E402
from cnncli.render.units import binary_bytes as size  # noqa: E402
from cnncli.spec import catalog  # noqa: E402
from cnncli.spec.parse import Volume, load_spec  # noqa: E402

START, END = markers("bench_memory")
NETS = [  # (bundled name, --input, label)
    ("cifar_small", None, "CIFAR small (cifar_small)"),
    ("lenet5", None, "LeNet-5 (lenet5)"),
    ("vgg16", Volume(64, 64, 3), "VGG16 at 64x64 (vgg16 --input 64x64x3)"),
    ("resnet18", Volume(64, 64, 3), "ResNet-18 at 64x64 (resnet18 --input 64x64x3)"),
]
BATCHES = (1, 16, 64)


def run() -> list[dict]:  # type: ignore[type-arg]
    from cnncli.engine.measure import measure

    rows = []
    for name, volume, label in NETS:
        spec = load_spec(catalog.resolve(name))
        report = analyze(spec, volume)
        for batch in BATCHES:
            t0 = time.perf_counter()
            est = estimate(spec, batch, input_volume=volume)
            est_s = time.perf_counter() - t0
            got = measure(spec, batch, input_volume=volume)
            rule = 2 * report.activations * 4 * batch + 3 * report.parameters * 4
            row = {"label": label, "name": name, "input": str(volume or spec.input),
                   "batch": batch, "estimate": est.peak, "where": est.peak_where,
                   "measured": got["peak_bytes"], "rule": rule, "estimate_s": est_s,
                   "step_s": got["step_seconds"],
                   "command": f"cnncli memory {name}"
                              + (f" --input {volume.w}x{volume.h}x{volume.d}" if volume else "")
                              + f" --batch {batch} --measure"}
            row["error"] = row["estimate"] / row["measured"] - 1
            row["rule_error"] = rule / row["measured"] - 1
            rows.append(row)
            print(f"{label:45s} {batch:3d}  estimate {size(est.peak):>11}  measured "
                  f"{size(got['peak_bytes']):>11}  {row['error']:+6.1%}   rules "
                  f"{size(rule):>11} {row['rule_error']:+7.1%}", flush=True)
    return rows


def write_section(rows: list[dict]) -> None:  # type: ignore[type-arg]
    import numba
    import numpy

    worst = max(abs(r["error"]) for r in rows)
    lines = [
        START,
        "## `cnncli memory`: estimated against measured peak of a training step",
        "",
        "- **What:** the peak bytes of one training step (forward, softmax loss, backward, "
        "momentum update; float32; random images and labels) as `cnncli memory` estimates it "
        "without running anything, against the peak measured while the engine runs that "
        "step. The estimate walks the step's schedule over each layer's memory plan (the "
        "layer types in cnncli/layers/ declare what their engine allocates: outputs, what "
        "backward reads, workspace such as im2col bands, gradients) on a simulated heap "
        "(cnncli/analysis/memory.py), with the input batch, parameters and optimizer state. "
        "Im2col + GEMM convolutions (`--conv-algo gemm`). Before the layer-type refactor of "
        "2026-11-28 the peaks of cifar_small at batch 64 and LeNet-5 at 16 and 64 were "
        "28.09, 1.92 and 5.56 MiB: numpy temporaries in activations, now gone.",
        "- **How the peak is measured:** `tracemalloc` in the measuring process. numpy "
        "reports every array it allocates to tracemalloc, and numba's runtime allocates "
        "through `PyMem_RawMalloc`, so the buffers the @njit kernels allocate in their "
        "`prange` loops are traced too. One warm-up step of a separate batch-1 copy "
        "(compilation is not a step), then the net, optimizer and batch are built under "
        "tracing, one step is run (so last step's parameter gradients exist, as in every "
        "step but the first), the peak is reset and the second step's peak is taken, less "
        "the net's Python objects alive before it (tens of KiB). Not counted: OpenBLAS's "
        "own buffers, allocated once at start-up. Where the model counts per-thread kernel "
        "buffers it assumes all threads hold one at the same moment; for tiny layers one "
        "thread can finish before the other starts, so the measured peak can be lower "
        "there.",
        "- **Rules of thumb:** the notes' \"~*2 for bwd\" on the forward activations of "
        "their table (input + every layer's output, ReLU in place) plus \"x3\" on the "
        "parameters, at 4 bytes a number.",
        "- **Command:** `.venv/bin/python bench/bench_memory.py` (each row is also "
        "`cnncli memory SPEC --batch N --measure`)",
        f"- **Machine:** `{os.cpu_count()} cores` (CPU only), Python "
        f"{sys.version.split()[0]}, numpy {numpy.__version__}, numba {numba.__version__}",
        f"- **Date:** {datetime.date.today().isoformat()}",
        "",
        "| net | batch | estimated peak | measured peak | estimate error | peak at | "
        "notes' rules | rules error |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['label']} | {r['batch']} | {size(r['estimate'])} | "
                     f"{size(r['measured'])} | {r['error']:+.1%} | {r['where']} | "
                     f"{size(r['rule'])} | {r['rule_error']:+.1%} |")
    lines += ["", f"Target: within 10% at every row; worst here {worst:.1%}. Binary units "
              "(1 MiB = 2^20 bytes).", END]
    section = "\n".join(lines) + "\n"
    replace_section("bench_memory", section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args()
    rows = run()
    if not args.no_write:
        write_section(rows)
        print(f"wrote {BENCHMARKS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
