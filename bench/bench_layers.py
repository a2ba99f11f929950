"""Per-layer times of one net, before and after: `cnncli bench NET --format json` run from
several checkouts (or conv-algo policies), taking turns round after round; the table gives
each layer's median forward and backward ms per variant.

    .venv/bin/python bench/bench_layers.py --net cifar_vgg_bn \\
        --variant before=/path/to/old/checkout:auto --variant after=.:auto [--rounds 3]

A variant is NAME=CHECKOUT:POLICY; each runs `python -m cnncli bench` with that checkout on
PYTHONPATH (its own numba cache: run it once before timing). Rows are matched by layer name
(a fused layer's row may be missing in one variant: its cell says "-").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parent.parent


def run(checkout: str, policy: str, net: str, batch: int, iterations: int,
        threads: int) -> dict:  # type: ignore[type-arg]
    env = dict(os.environ, PYTHONPATH=str(Path(checkout).resolve()))
    out = subprocess.run(
        [sys.executable, "-m", "cnncli", "bench", net, "--batch", str(batch), "--iterations",
         str(iterations), "--threads", str(threads), "--conv-algo", policy, "--format",
         "json"], capture_output=True, text=True, env=env, check=True, cwd=checkout)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--net", default="cifar_vgg_bn")
    ap.add_argument("--variant", action="append", required=True,
                    help="NAME=CHECKOUT:POLICY (repeat)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    variants = []
    for text in a.variant:
        name, rest = text.split("=", 1)
        checkout, policy = rest.rsplit(":", 1)
        variants.append((name, checkout, policy))
    times: dict[str, dict[str, list[tuple[float, float]]]] = {v[0]: {} for v in variants}
    steps: dict[str, list[float]] = {v[0]: [] for v in variants}
    order: list[tuple[str, str, int]] = []  # (layer, kind, depth) as the first variant lists
    for _ in range(a.rounds):
        for name, checkout, policy in variants:
            r = run(checkout, policy, a.net, a.batch, a.iterations, a.threads)
            steps[name].append(r["step_ms"])
            for layer in r["layers"]:
                if layer["forward_ms"] is None:
                    continue
                key = f"{layer['depth']}:{layer['name']}"
                times[name].setdefault(key, []).append(
                    (layer["forward_ms"], layer["backward_ms"]))
                if (key, layer["kind"], layer["depth"]) not in order:
                    order.append((key, layer["kind"], layer["depth"]))
    names = [v[0] for v in variants]
    print(f"{a.net}, batch {a.batch}, {a.threads} threads, median of {a.rounds} alternating "
          f"rounds of `cnncli bench --iterations {a.iterations}` (each itself a median)\n")
    print("| layer | type | " + " | ".join(f"{n} fwd ms | {n} bwd ms" for n in names) + " |")
    print("|---|---|" + "---:|---:|" * len(names))
    for key, kind, depth in order:
        cells = []
        for n in names:
            got = times[n].get(key)
            if got:
                cells += [f"{median(f for f, _ in got):.2f}", f"{median(b for _, b in got):.2f}"]
            else:
                cells += ["-", "-"]
        label = "&nbsp;&nbsp;" * depth + key.split(":", 1)[1]
        print(f"| {label} | {kind} | " + " | ".join(cells) + " |")
    # the whole step (forward + backward as one stopwatch) in each variant's first column
    print("| **whole step** | | " + " | ".join(
        f"**{median(steps[n]):.1f}** | " for n in names) + " |")
    for n in names[1:]:
        print(f"\n{n}: whole step {median(steps[names[0]]) / median(steps[n]):.2f}x "
              f"as fast as {names[0]}")


if __name__ == "__main__":
    main()
