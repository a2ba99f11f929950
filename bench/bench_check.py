"""Benchmark `cnncli check` against what a PyTorch user runs today for the same answer.

    .venv/bin/python bench/bench_check.py            # 10 runs each; writes BENCHMARKS.md
    .venv/bin/python bench/bench_check.py --runs 3 --no-write

Every timing is a whole fresh process, start-up and imports included, since that is what
a person waits for at the prompt:

- cnncli:    .venv/bin/cnncli check vgg16
             .venv/bin/cnncli check resnet50 --format json
- torchinfo: python -c "<import torch, torchinfo; build the model; torchinfo.summary(
             model, input_size=(1, 3, 224, 224))>"

torchvision is not installed here, so VGG16 and ResNet-50 are written below as plain
torch.nn modules, layer for layer as torchvision writes them (same parameter counts:
138,357,544 and 25,557,032; the script checks torchinfo's totals against cnncli's).
Output goes to a pipe in both cases. Best and median of N runs, after one warm-up run
each (so the file cache is warm for both); the two commands take turns, so that both see
the same background load.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CNNCLI = ROOT / ".venv" / "bin" / "cnncli"
PYTHON = ROOT / ".venv" / "bin" / "python"

from benchmarks_md import BENCHMARKS, markers, replace_section  # noqa: E402  (beside this script)

START, END = markers("bench_check")

# Plain torch.nn VGG16 and ResNet-50 (torchvision's layouts: ResNet v1.5, stride on the 3x3).
MODELS = '''
import torch
import torchinfo
from torch import nn



def build_vgg16():
    layers, depth = [], 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(depth, v, 3, padding=1), nn.ReLU(inplace=True)]
            depth = v
    return nn.Sequential(
        nn.Sequential(*layers), nn.AdaptiveAvgPool2d((7, 7)), nn.Flatten(),
        nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(0.5), nn.Linear(4096, 1000))


class Bottleneck(nn.Module):
    def __init__(self, d_in, width, stride):
        super().__init__()
        d_out = width * 4
        self.conv1 = nn.Conv2d(d_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, d_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(d_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or d_in != d_out:
            self.downsample = nn.Sequential(nn.Conv2d(d_in, d_out, 1, stride, bias=False),
                                            nn.BatchNorm2d(d_out))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def build_resnet50():
    blocks, d_in = [], 64
    for width, count, stride in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]:
        for i in range(count):
            blocks.append(Bottleneck(d_in, width, stride if i == 0 else 1))
            d_in = width * 4
    return nn.Sequential(
        nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1), *blocks, nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
        nn.Linear(2048, 1000))
'''

CASES = [
    # (label, cnncli arguments, model builder, published parameter count)
    ("VGG16", ["check", "vgg16"], "build_vgg16", 138_357_544),
    ("ResNet-50", ["check", "resnet50", "--format", "json"], "build_resnet50", 25_557_032),
]


def torchinfo_code(builder: str) -> str:
    return MODELS + f"\ntorchinfo.summary({builder}(), input_size=(1, 3, 224, 224))\n"


def time_processes(commands: list[list[str]], runs: int) -> list[list[float]]:
    """Wall times of each command, run in turn (a, b, a, b, ...) so that both see the same
    background load on a shared machine."""
    for argv in commands:
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)  # warm-up: file cache
    times: list[list[float]] = [[] for _ in commands]
    for _ in range(runs):
        for argv, found in zip(commands, times, strict=True):
            start = time.perf_counter()
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
            found.append(time.perf_counter() - start)
    return times


def check_answers(args: list[str], builder: str, published: int) -> tuple[int, int]:
    """Both tools must give the same (published) parameter count, or the race is moot."""
    ours = subprocess.run([str(CNNCLI), *args[:2], "--format", "json"], check=True,
                          capture_output=True, text=True).stdout
    ours_total = json.loads(ours)["totals"]["parameters"]
    theirs = subprocess.run([str(PYTHON), "-c", torchinfo_code(builder)], check=True,
                            capture_output=True, text=True).stdout
    match = re.search(r"Total params: ([\d,]+)", theirs)
    theirs_total = int(match.group(1).replace(",", "")) if match else -1
    if not ours_total == theirs_total == published:
        sys.exit(f"{builder}: cnncli {ours_total:,}, torchinfo {theirs_total:,}, "
                 f"published {published:,}: not the same net")
    return ours_total, theirs_total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs per command (10)")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    opts = parser.parse_args()

    rows = []
    for label, args, builder, published in CASES:
        check_answers(args, builder, published)
        ours, theirs = time_processes(
            [[str(CNNCLI), *args], [str(PYTHON), "-c", torchinfo_code(builder)]], opts.runs)
        row = {
            "label": label, "command": "cnncli " + " ".join(args), "parameters": published,
            "ours_best": min(ours), "ours_median": statistics.median(ours),
            "theirs_best": min(theirs), "theirs_median": statistics.median(theirs),
        }
        row["ratio"] = row["theirs_median"] / row["ours_median"]
        row["ratio_best"] = row["theirs_best"] / row["ours_best"]
        rows.append(row)
        print(f"{label:10s} cnncli    best {row['ours_best']:.3f} s  median "
              f"{row['ours_median']:.3f} s   ({row['command']})")
        print(f"{'':10s} torchinfo best {row['theirs_best']:.3f} s  median "
              f"{row['theirs_median']:.3f} s   ({row['ratio_best']:.1f}x slower best to best, "
              f"{row['ratio']:.1f}x median to median)", flush=True)
    if not opts.no_write:
        write_section(rows, opts.runs)
        print(f"wrote {BENCHMARKS.relative_to(ROOT)}")


def write_section(rows: list[dict], runs: int) -> None:  # type: ignore[type-arg]
    import torch  # only for the version line
    import torchinfo

    cores = os.cpu_count()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        START,
        "## `cnncli check` against torchinfo",
        "",
        "- **What:** wall time of a whole fresh process that answers \"what are this net's "
        "volumes, parameters and MACs?\", start-up and imports included. cnncli reads the "
        "bundled spec; the PyTorch user's answer today is a `python -c` that imports torch "
        "and torchinfo, builds the model (VGG16 and ResNet-50 as plain `torch.nn` modules, "
        "torchvision's layouts) and calls `torchinfo.summary(model, input_size=(1, 3, 224, "
        "224))`. Both give the same parameter counts (checked before timing). Output to a "
        f"pipe; best and median of {runs} runs after one warm-up run, the two commands "
        "taking turns.",
        "- **Command:** `make bench` (runs `.venv/bin/python bench/bench_check.py`)",
        f"- **Machine:** `{cores} cores` (CPU only), Python {sys.version.split()[0]}, "
        f"torch {torch.__version__}, torchinfo {torchinfo.__version__}; load average "
        f"{load} when written (a shared machine: medians move with the load, bests less)",
        f"- **Date:** {datetime.date.today().isoformat()}",
        "",
        "| net | cnncli command | cnncli best | cnncli median | torchinfo best | "
        "torchinfo median | speed-up (best / median) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['label']} ({r['parameters']:,} parameters) | `{r['command']}` | "
                     f"{r['ours_best']:.3f} s | {r['ours_median']:.3f} s | "
                     f"{r['theirs_best']:.2f} s | {r['theirs_median']:.2f} s | "
                     f"{r['ratio_best']:.1f}x / {r['ratio']:.1f}x |")
    lines += ["", "Target: well under half a second, at least 10x faster than torchinfo.", END]
    section = "\n".join(lines) + "\n"
    replace_section("bench_check", section)


if __name__ == "__main__":
    main()
