"""Benchmark sliding-window evaluation: one pass of the FC-as-conv net against the loop
that runs the original net on every window crop.

    .venv/bin/python bench/bench_slide.py             # writes its section of BENCHMARKS.md
    .venv/bin/python bench/bench_slide.py --quick --no-write

Cases:
- the notes' case: VGG16 itself (224x224 crops, 138 M parameters) on a 384x384 image:
  a [6x6x1000] map, 36 windows at stride 32;
- the bundled cifar_small (32x32 crops) on a 128x128 image: 13x13 = 169 windows at
  stride 8, and at stride 4 (four shifted passes, 25x25 = 625 windows).

Random weights (the engine's He initialisation, non-zero biases), float32, batch 16 for
the crops, all cores. Networks are built (weights allocated, converted) before timing;
the numba kernels are compiled and cached beforehand (one untimed run of each). Times are
the median and best of N runs of the whole map. The largest |one pass - crop by crop| is
reported too: VGG16 and cifar_small pad inside, so they differ (see
docs/sliding-window.md).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from benchmarks_md import BENCHMARKS, markers, replace_section  # noqa: E402  (beside this script)

from cnncli.config import configure_threads  # noqa: E402
from cnncli.engine.network import Network  # noqa: E402
from cnncli.sliding.slide import SlidingNet  # noqa: E402
from cnncli.spec import catalog  # noqa: E402
from cnncli.spec.parse import load_spec  # noqa: E402

START, END = markers("bench_slide")


def sliding_net(name: str) -> tuple[SlidingNet, float]:
    started = time.perf_counter()
    spec = load_spec(catalog.resolve(name))
    net = Network(spec, seed=0)
    rng = np.random.default_rng(1)
    for key, value in net.params.items():
        if key.endswith(".bias"):
            net.set_param(key, rng.standard_normal(value.shape) * 0.1)
    sn = SlidingNet(spec, net.state_dict())
    sn._original = net
    return sn, time.perf_counter() - started


def timed(fn, runs: int) -> tuple[list[float], object]:  # type: ignore[no-untyped-def]
    times, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return times, result


def case(label: str, name: str, size: int, stride: int | None, runs: int,
         crop_runs: int) -> dict:  # type: ignore[type-arg]
    sn, build_s = sliding_net(name)
    image = np.random.default_rng(0).standard_normal((size, size, sn.trained_at.d)).astype(
        np.float32)
    started = time.perf_counter()
    sn.warm(image.shape, stride, crops=True)
    warm_s = time.perf_counter() - started
    sn.score_map(image, stride)  # untimed: loads the cached kernels
    sn.crop_by_crop(image[:sn.trained_at.h, :sn.trained_at.w])  # untimed, likewise
    one, scores = timed(lambda: sn.score_map(image, stride), runs)
    crops, reference = timed(lambda: sn.crop_by_crop(image, stride), crop_runs)
    assert isinstance(scores, np.ndarray) and isinstance(reference, np.ndarray)
    geo = sn.geometry(size, size, stride)
    win = geo["windows"]
    row = {
        "label": label, "image": f"{size}x{size}", "map": "x".join(map(str, scores.shape)),
        "windows": win["height"] * win["width"], "stride": geo["window_stride"]["width"],
        "passes": geo["passes"], "one_median": statistics.median(one), "one_best": min(one),
        "crops_median": statistics.median(crops), "crops_best": min(crops),
        "max_diff": float(np.abs(scores - reference).max()), "exact": sn.exact,
        "scale": float(np.abs(reference).max()),
        "build_s": build_s + warm_s, "runs": runs, "crop_runs": crop_runs,
    }
    row["speedup"] = row["crops_median"] / row["one_median"]
    row["speedup_best"] = row["crops_best"] / row["one_best"]
    print(f"{label}: one pass {row['one_median']:.3f} s, crops {row['crops_median']:.3f} s, "
          f"{row['speedup']:.1f}x, max diff {row['max_diff']:.3g}", flush=True)
    return row


def write_section(rows: list[dict], threads: int) -> None:  # type: ignore[type-arg]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        START,
        "## Sliding windows: one pass (FC layers as convolutions) against crop by crop",
        "",
        "- **What:** the time to score every window of one image. *One pass*: `cnncli "
        "slide`'s converted net (FC layers rewritten as convolutions) on the whole image, "
        "one forward pass per shift. *Crop by crop*: the original net on every window crop, "
        "in batches of 16, as `cnncli slide --verify` does. Random weights (He "
        "initialisation, non-zero biases), float32; networks built and kernels compiled "
        "before timing (building VGG16 twice, original and converted, with its 138 M "
        "random parameters, takes the seconds in the last column and is not in the times).",
        "- **Command:** `.venv/bin/python bench/bench_slide.py`",
        f"- **Machine:** `{os.cpu_count()} cores` (CPU only), {threads} engine threads, Python "
        f"{sys.version.split()[0]}, numpy {np.__version__}; load average {load} when written "
        "(a shared machine: other jobs were running, so medians carry noise)",
        f"- **Date:** {datetime.date.today().isoformat()}",
        "",
        "| net (window) | image | windows (stride) | score map | one pass (median / best) "
        "| crop by crop (median / best) | speed-up (median / best) | max \\|diff\\| "
        "(largest \\|score\\|) | runs | build |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        passes = f", {r['passes']} passes" if r["passes"] and r["passes"] > 1 else ""
        lines.append(
            f"| {r['label']} | {r['image']} | {r['windows']} ({r['stride']}{passes}) | "
            f"{r['map']} | {r['one_median']:.3f} / {r['one_best']:.3f} s | "
            f"{r['crops_median']:.3f} / {r['crops_best']:.3f} s | {r['speedup']:.1f}x / "
            f"{r['speedup_best']:.1f}x | {r['max_diff']:.2g} ({r['scale']:.2g})"
            f"{' exact' if r['exact'] else ', pads: not exact'} | {r['runs']} / "
            f"{r['crop_runs']} | {r['build_s']:.1f} s |")
    lines += [
        "",
        "Runs: timed runs of one pass / of crop by crop. The speed-up comes from sharing: "
        "neighbouring windows overlap (VGG16's 36 windows of 224 px at stride 32 cover the "
        "384 px image about 12x over), and one pass computes every shared activation once. "
        "VGG16 and cifar_small pad every conv, so each one-pass score also sees up to "
        "90 px (VGG16) "
        "or 7 px (cifar_small) around its window and differs from the lone crop's score; "
        "LeNet-5 pads nowhere and the difference is float32 rounding. For VGG16 the "
        "one pass uses the FC weights as stored, one GEMM over all windows (the engine's "
        "conv would reorder fc1's 4096x25088 weight on every call, about 1.2 s).",
        END,
    ]
    section = "\n".join(lines) + "\n"
    replace_section("bench_slide", section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed one-pass runs")
    parser.add_argument("--crop-runs", type=int, default=3, help="timed crop-by-crop runs")
    parser.add_argument("--quick", action="store_true", help="cifar_small only, 2 runs")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    threads = configure_threads(args.threads)
    runs, crop_runs = (2, 1) if args.quick else (args.runs, args.crop_runs)
    small = (max(runs, 20), max(crop_runs, 10)) if not args.quick else (runs, crop_runs)
    rows = [case("cifar_small (32x32)", "cifar_small", 128, None, *small),
            case("cifar_small (32x32)", "cifar_small", 128, 4, *small),
            case("LeNet-5 (32x32)", "lenet5", 128, None, *small)]
    if not args.quick:
        rows.insert(0, case("VGG16 (224x224)", "vgg16", 384, None, min(runs, 3),
                            min(crop_runs, 2)))
    if not args.no_write:
        write_section(rows, threads)
        print(f"wrote {BENCHMARKS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
