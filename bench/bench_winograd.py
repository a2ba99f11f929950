"""Benchmark the Winograd conv kernels against today's conv kernels (cnncli.engine.kernels.conv).

    .venv/bin/python bench/bench_winograd.py [--batch 64] [--threads 2] [--rounds 15]
                                             [--nets cifar_small,cifar_vgg_bn,resnet20]
    .venv/bin/python bench/bench_winograd.py --small [--rounds 9]

The 3x3 stride-1 "same" layers of the batchnorm CIFAR net and ResNet-20, float32, or with
--nets every distinct Winograd-eligible layer shape of those specs (first layers too). Each
round times every implementation once, in turn, so a load spike on a shared machine hits
them all alike; tables show the median per implementation, GFLOP/s counted as direct
convolution would (2 N OH OW K C 9 / time, whatever the algorithm computes) and the
speed-up against conv.py (its time / this time). conv.py computes dx and dW in one pass
(conv2d_backward); its dW alone is conv2d_backward(need_dx=False) and its dx is shown as
the difference. Then the float32 error table: max |float32 - float64 direct| /
max |float64 direct| per layer, tile and pass, conv.py's float32 im2col for comparison.
--small times conv.py, Winograd F(4x4) and conv.py's planar first-layer kernels on the
small-channel layers (SMALL_LAYERS), per pass. Run it once as is and once with
OPENBLAS_CORETYPE=Haswell: the header names the BLAS kernel threadpoolctl saw.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from statistics import median

# (name, H, W, C, K, pad): 3x3, stride 1
LAYERS = [
    ("32x32 16->16", 32, 32, 16, 16, 1),
    ("32x32 32->32", 32, 32, 32, 32, 1),
    ("16x16 32->32", 16, 16, 32, 32, 1),
    ("16x16 64->64", 16, 16, 64, 64, 1),
    ("8x8 64->64", 8, 8, 64, 64, 1),
    ("8x8 128->128", 8, 8, 128, 128, 1),
]
TILES = (4, 2)
# --small: (name, H, W, C, K, F, pad), stride 1: ResNet-20's stage convs and the first
# layers of the CIFAR nets and LeNet-5, where one block's GEMMs are too small for BLAS
SMALL_LAYERS = [
    ("32x32 3->16", 32, 32, 3, 16, 3, 1),
    ("32x32 3->32", 32, 32, 3, 32, 3, 1),
    ("32x32 1->6 5x5", 32, 32, 1, 6, 5, 0),
    ("32x32 16->16", 32, 32, 16, 16, 3, 1),
    ("16x16 32->32", 16, 16, 32, 32, 3, 1),
    ("8x8 64->64", 8, 8, 64, 64, 3, 1),
]


def net_layers(names):
    """Every distinct Winograd-eligible conv shape of the named specs, in order."""
    from cnncli.analysis.report import analyze
    from cnncli.engine.kernels.conv_algo import winograd_eligible
    from cnncli.spec import catalog
    from cnncli.spec.parse import load_spec
    from cnncli.spec.types import walk

    seen = {}
    for name in names:
        spec = load_spec(catalog.resolve(name))
        rows = {r.name: r for r in analyze(spec).rows}
        for node in walk(spec.layers):
            if node.key != "conv":
                continue
            if not winograd_eligible((node.size.h, node.size.w), (node.stride.h, node.stride.w),
                                     (node.dilation.h, node.dilation.w), node.groups,
                                     (node.pad.h, node.pad.w)):
                continue
            v = rows[node.name].input
            key = (v.h, v.w, v.d, node.filters, node.pad.h)
            label = f"{v.h}x{v.w} {v.d}->{node.filters}" + (f" p{node.pad.h}"
                                                              if node.pad.h != 1 else "")
            seen.setdefault(key, label)
    return [(label, *key) for key, label in seen.items()]


def _flops(N, H, W, C, K):
    return 2.0 * N * H * W * K * C * 9


def _layer_arrays(rng, N, H, W, C, K, dtype):
    import numpy as np

    x = rng.standard_normal((N, H, W, C)).astype(dtype)
    w = (rng.standard_normal((K, C, 3, 3)) * np.sqrt(2.0 / (9 * C))).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    dy = rng.standard_normal((N, H, W, K)).astype(dtype)
    return x, w, b, dy


def alternate(fns, rounds):
    """Median seconds of each function: one warm-up call each (JIT, caches), then `rounds`
    rounds in which every function runs once, in turn."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: median(ts) for name, ts in times.items()}


def time_layer(N, H, W, C, K, P, rounds):
    """Median seconds per implementation, timed in alternating rounds."""
    import numpy as np

    from cnncli.engine.kernels import conv
    from cnncli.engine.kernels import winograd as wg

    x, w, b, dy = _layer_arrays(np.random.default_rng(0), N, H, W, C, K, np.float32)
    dy = dy[:, :H + 2 * P - 2, :W + 2 * P - 2].copy()
    geo = ((1, 1), (P, P), (1, 1), 1)
    fns = {
        "conv fwd": lambda: conv.conv2d_forward(x, w, b, *geo, dy.shape[1:3]),
        "conv dx+dW": lambda: conv.conv2d_backward(x, w, dy, *geo, need_dx=True),
        "conv dW": lambda: conv.conv2d_backward(x, w, dy, *geo, need_dx=False),
    }
    for t in TILES:
        fns[f"F{t} fwd"] = lambda t=t: wg.winograd_conv_forward(x, w, b, P, t)
        fns[f"F{t} dx"] = lambda t=t: wg.winograd_conv_backward_data(dy, w, P, t)
        fns[f"F{t} dW"] = lambda t=t: wg.winograd_conv_backward_weights(x, dy, P, t)
    med = alternate(fns, rounds)
    med["conv dx"] = max(med["conv dx+dW"] - med["conv dW"], 1e-9)
    return med


def time_small(N, H, W, C, K, F, P, rounds):
    """Median seconds of conv.py, Winograd F(4x4) and conv.py's planar kernels (C <= 3),
    per pass, in alternating rounds. dx is timed on its own for Winograd; conv.py's and
    the planar kernels' as dx+dW minus dW."""
    import numpy as np

    from cnncli.engine.kernels import conv
    from cnncli.engine.kernels import winograd as wg

    x, w, b, dy = _layer_arrays(np.random.default_rng(0), N, H, W, C, K, np.float32)
    w = np.ascontiguousarray(w[:, :, :1, :1].repeat(F, 2).repeat(F, 3)) if F != 3 else w
    OH, OW = H + 2 * P - F + 1, W + 2 * P - F + 1
    dy = np.ascontiguousarray(dy[:, :OH, :OW])
    geo = ((1, 1), (P, P), (1, 1), 1)
    fns = {
        "conv fwd": lambda: conv.conv2d_forward(x, w, b, *geo, (OH, OW)),
        "conv dx+dW": lambda: conv.conv2d_backward(x, w, dy, *geo, need_dx=True),
        "conv dW": lambda: conv.conv2d_backward(x, w, dy, *geo, need_dx=False),
    }
    if F == 3:
        fns["F4 fwd"] = lambda: wg.winograd_conv_forward(x, w, b, P, 4)
        fns["F4 dx"] = lambda: wg.winograd_conv_backward_data(dy, w, P, 4)
        fns["F4 dW"] = lambda: wg.winograd_conv_backward_weights(x, dy, P, 4)
    if C <= 3:
        pd = ((P, P), (1, 1))
        fns["planar fwd"] = lambda: conv.conv2d_forward_planar(x, w, b, *pd, (OH, OW))
        fns["planar dx+dW"] = lambda: conv.conv2d_backward_planar(x, w, dy, *pd)
        fns["planar dW"] = lambda: conv.conv2d_backward_planar(x, w, dy, *pd, need_dx=False)
    med = alternate(fns, rounds)
    for impl in ("conv", "planar"):
        if f"{impl} dW" in med:
            med[f"{impl} dx"] = max(med[f"{impl} dx+dW"] - med[f"{impl} dW"], 1e-9)
    return med


def main_small(a):
    """--small: per layer and pass, ms and direct-equivalent GFLOP/s of each kernel."""
    impls = ("conv", "F4", "planar")
    print(f"{'layer':15s} {'pass':4s} | " + " | ".join(f"{i:>12s}" for i in impls))
    for name, H, W, C, K, F, P in SMALL_LAYERS:
        OH, OW = H + 2 * P - F + 1, W + 2 * P - F + 1
        fl = 2.0 * a.batch * OH * OW * K * C * F * F
        med = time_small(a.batch, H, W, C, K, F, P, a.rounds)
        for ps in ("fwd", "dx", "dW"):
            cells = [f"{med[f'{i} {ps}'] * 1e3:6.2f} {fl / med[f'{i} {ps}'] / 1e9:5.1f}"
                     if f"{i} {ps}" in med else f"{'-':>12s}" for i in impls]
            print(f"{name:15s} {ps:4s} | " + " | ".join(cells))


def error_layer(N, H, W, C, K, P):
    """Max relative error of float32 results against float64 direct convolution."""
    import numpy as np

    from cnncli.engine.kernels import conv
    from cnncli.engine.kernels import winograd as wg

    x, w, b, dy = _layer_arrays(np.random.default_rng(1), N, H, W, C, K, np.float64)
    dy = dy[:, :H + 2 * P - 2, :W + 2 * P - 2].copy()
    geo = ((1, 1), (P, P), (1, 1), 1)
    out_hw = dy.shape[1:3]
    y64 = conv.conv2d_forward(x, w, b, *geo, out_hw)
    dx64, dw64, _ = conv.conv2d_backward(x, w, dy, *geo)
    x32, w32, b32, dy32 = (a.astype(np.float32) for a in (x, w, b, dy))

    def rel(a, ref):
        return float(np.abs(a.astype(np.float64) - ref).max() / np.abs(ref).max())

    dx32, dw32, _ = conv.conv2d_backward(x32, w32, dy32, *geo)
    rows = {"im2col": (rel(conv.conv2d_forward(x32, w32, b32, *geo, out_hw), y64),
                       rel(dx32, dx64), rel(dw32, dw64))}
    for t in TILES:
        rows[f"F({t}x{t})"] = (rel(wg.winograd_conv_forward(x32, w32, b32, P, t), y64),
                              rel(wg.winograd_conv_backward_data(dy32, w32, P, t), dx64),
                              rel(wg.winograd_conv_backward_weights(x32, dy32, P, t), dw64))
    return rows


def _blas_arch():
    from threadpoolctl import threadpool_info

    return ", ".join(sorted({f"{d.get('internal_api')} {d.get('architecture', '?')}"
                             for d in threadpool_info() if d["user_api"] == "blas"}))


def _cell(seconds, fl, base=None):
    s = f"{seconds * 1e3:7.2f} {fl / seconds / 1e9:5.1f}"
    return s + (f" {base / seconds:5.2f}x" if base is not None else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15, help="alternating timing rounds")
    ap.add_argument("--no-errors", action="store_true", help="skip the float32 error table")
    ap.add_argument("--nets", help="comma-separated specs: time their eligible layer shapes")
    ap.add_argument("--small", action="store_true",
                    help="the small-channel layers: conv.py, Winograd and the planar "
                    "first-layer kernels")
    a = ap.parse_args()
    layers = net_layers(a.nets.split(",")) if a.nets else LAYERS

    from cnncli import config

    config.configure_threads(a.threads)
    load0 = os.getloadavg()[0]
    print(f"batch {a.batch}, {a.threads} numba threads, BLAS: {_blas_arch()}, "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}, "
          f"load average {load0:.1f} at start")
    if a.small:
        main_small(a)
        print(f"load average {os.getloadavg()[0]:.1f} at the end")
        return
    results = []
    for name, H, W, C, K, P in layers:
        results.append((name, _flops(a.batch, H + 2 * P - 2, W + 2 * P - 2, C, K),
                        time_layer(a.batch, H, W, C, K, P, a.rounds)))
    print(f"load average {os.getloadavg()[0]:.1f} at the end of timing")
    print("\nms, direct-equivalent GFLOP/s and speed-up vs conv.py (median of "
          f"{a.rounds} alternating rounds)")
    for title, conv_key, keys in (
        ("forward", "conv fwd", ("F4 fwd", "F2 fwd")),
        ("backward-data (conv.py: dx+dW minus dW)", "conv dx", ("F4 dx", "F2 dx")),
        ("backward-weights", "conv dW", ("F4 dW", "F2 dW")),
    ):
        print(f"\n{title}")
        print(f"{'layer':14s} | {'conv.py':>13s} | {'F(4x4)':>20s} | {'F(2x2)':>20s}")
        for name, fl, med in results:
            base = med[conv_key]
            print(f"{name:14s} | {_cell(base, fl)} | "
                  + " | ".join(_cell(med[k], fl, base) for k in keys))
    print("\nwhole backward (dx + dW), ms and speed-up vs conv.py's one pass")
    print(f"{'layer':14s} | {'conv.py':>8s} | {'F4 dx + conv dW':>16s} | "
          f"{'F4 dx + F4 dW':>16s} | {'F2 dx + conv dW':>16s}")
    for name, _, med in results:
        base = med["conv dx+dW"]
        combos = (med["F4 dx"] + med["conv dW"], med["F4 dx"] + med["F4 dW"],
                  med["F2 dx"] + med["conv dW"])
        print(f"{name:14s} | {base * 1e3:8.2f} | "
              + " | ".join(f"{t * 1e3:8.2f} {base / t:5.2f}x" for t in combos))
    if a.no_errors:
        return
    print(f"\nfloat32 max relative error vs float64 direct (batch {a.batch}, He-scaled "
          "weights)")
    print(f"{'layer':14s} {'algorithm':10s} {'forward':>9s} {'dx':>9s} {'dW':>9s}")
    for name, H, W, C, K, P in layers:
        for alg, errs in error_layer(a.batch, H, W, C, K, P).items():
            print(f"{name:14s} {alg:10s} " + " ".join(f"{e:9.2e}" for e in errs))


if __name__ == "__main__":
    if "." not in sys.path and os.path.isdir(os.path.join(os.getcwd(), "cnncli")):
        sys.path.insert(0, os.getcwd())
    main()
