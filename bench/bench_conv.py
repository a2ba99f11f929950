"""Benchmark conv kernels: cnncli (Numba) vs plain NumPy im2col + np.dot vs torch conv2d.

    .venv/bin/python bench/bench_conv.py                 # all implementations, 2 threads
    .venv/bin/python bench/bench_conv.py --impl numba --threads 2 --batch 64

Each implementation runs in its own subprocess (torch and numba both bring an OpenMP
runtime; mixing them in one process skews timings). Prints ms and GFLOP/s per layer for
forward and forward+backward; backward GFLOPs count dW and dx (dx skipped on layers whose
input is the network input, as in training).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# (name, H, W, C, K, F, stride, pad, groups, need_dx)
LAYERS = [
    ("conv1 32x32 3->32", 32, 32, 3, 32, 3, 1, 1, 1, False),
    ("32x32 32->32", 32, 32, 32, 32, 3, 1, 1, 1, True),
    ("16x16 64->64", 16, 16, 64, 64, 3, 1, 1, 1, True),
    ("8x8 128->128", 8, 8, 128, 128, 3, 1, 1, 1, True),
    ("16x16 dw 64", 16, 16, 64, 64, 3, 1, 1, 64, True),
    ("lenet 28x28 1->20 5x5", 28, 28, 1, 20, 5, 1, 0, 1, False),
]


def _flops(N, OH, OW, C, K, F, groups):
    return 2.0 * N * OH * OW * K * (C // groups) * F * F


def _timeit(fn, min_time=1.0, min_reps=5):
    """Best-of wall time: the machine is shared, so the minimum is the stable statistic."""
    fn()  # warm-up (JIT, caches)
    best = float("inf")
    reps = 0
    t_end = time.perf_counter() + min_time
    while reps < min_reps or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        reps += 1
    return best


def _numpy_impl(x, w, b, s, p, groups, OH, OW):
    """Plain NumPy im2col (sliding_window_view copy) + np.dot; NHWC, groups=1 only."""
    import numpy as np

    N, H, W, C = x.shape
    K, _, F, _ = w.shape
    W2 = np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(F * F * C, K))

    def fwd():
        xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        win = np.lib.stride_tricks.sliding_window_view(xp, (F, F), axis=(1, 2))
        win = win[:, ::s, ::s][:, :OH, :OW]  # N, OH, OW, C, F, F
        cols = win.transpose(0, 1, 2, 4, 5, 3).reshape(N * OH * OW, F * F * C)
        y = cols @ W2 + b
        return cols, y.reshape(N, OH, OW, K)

    def fwd_bwd(need_dx):
        cols, y = fwd()
        dy = y.reshape(-1, K)  # stand-in gradient
        dW = cols.T @ dy
        db = dy.sum(0)
        if need_dx:
            dcols = (dy @ W2.T).reshape(N, OH, OW, F, F, C)
            dxp = np.zeros((N, H + 2 * p + s, W + 2 * p + s, C), x.dtype)
            for a in range(F):
                for c in range(F):
                    dxp[:, a:a + s * OH:s, c:c + s * OW:s, :] += dcols[:, :, :, a, c, :]
        return dW, db

    return fwd, fwd_bwd


def run_impl(impl, threads, batch, reps_time):
    import numpy as np

    rng = np.random.default_rng(0)
    results = []
    if impl == "numba":
        from cnncli import config
        from cnncli.engine.kernels import conv

        config.configure_threads(threads)
    elif impl == "numpy":
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads, user_api="blas")
    elif impl in ("torch", "torch_cl"):
        import torch

        torch.set_num_threads(threads)
    for name, H, W, C, K, F, s, p, g, need_dx in LAYERS:
        OH = (H + 2 * p - F) // s + 1
        OW = (W + 2 * p - F) // s + 1
        x = rng.standard_normal((batch, H, W, C)).astype(np.float32)
        w = (rng.standard_normal((K, C // g, F, F)) * 0.1).astype(np.float32)
        b = rng.standard_normal(K).astype(np.float32)
        dy = rng.standard_normal((batch, OH, OW, K)).astype(np.float32)
        fl = _flops(batch, OH, OW, C, K, F, g)
        fl_fb = fl * (3 if need_dx else 2)
        if impl == "numba":
            def f(x=x, w=w, b=b, s=s, p=p, g=g, OH=OH, OW=OW):
                conv.conv2d_forward(x, w, b, (s, s), (p, p), (1, 1), g, (OH, OW))

            def fb(x=x, w=w, b=b, dy=dy, s=s, p=p, g=g, OH=OH, OW=OW, need_dx=need_dx):
                conv.conv2d_forward(x, w, b, (s, s), (p, p), (1, 1), g, (OH, OW))
                conv.conv2d_backward(x, w, dy, (s, s), (p, p), (1, 1), g, need_dx)
        elif impl == "numpy":
            if g != 1:
                continue
            fwd, fwd_bwd = _numpy_impl(x, w, b, s, p, g, OH, OW)
            f = fwd

            def fb(fwd_bwd=fwd_bwd, need_dx=need_dx):
                fwd_bwd(need_dx)
        else:
            import torch
            import torch.nn.functional as tF

            xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
            if impl == "torch_cl":
                xt = xt.contiguous(memory_format=torch.channels_last)
            xt.requires_grad_(need_dx)
            wt = torch.from_numpy(w).requires_grad_(True)
            bt = torch.from_numpy(b).requires_grad_(True)
            dyt = torch.from_numpy(dy.transpose(0, 3, 1, 2).copy())
            if impl == "torch_cl":
                dyt = dyt.contiguous(memory_format=torch.channels_last)

            def f(xt=xt, wt=wt, bt=bt, s=s, p=p, g=g):
                with torch.no_grad():
                    tF.conv2d(xt, wt, bt, s, p, 1, g)

            def fb(xt=xt, wt=wt, bt=bt, dyt=dyt, s=s, p=p, g=g):
                tF.conv2d(xt, wt, bt, s, p, 1, g).backward(dyt)
        tf = _timeit(f, reps_time)
        tfb = _timeit(fb, reps_time)
        results.append(dict(layer=name, fwd_ms=tf * 1e3, fwd_gflops=fl / tf / 1e9,
                            fb_ms=tfb * 1e3, fb_gflops=fl_fb / tfb / 1e9))
    return results


def sgemm_peak(threads):
    import numpy as np
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads, user_api="blas")
    a = np.random.rand(2048, 2048).astype(np.float32)
    t = _timeit(lambda: a @ a, 1.0)
    return 2 * 2048**3 / t / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", default="all", help="numba, numpy, torch, torch_cl or all")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--time", type=float, default=1.0, help="seconds per measurement")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each implementation this many times, keep the best (shared box)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.impl == "all":
        cmd = [sys.executable, __file__, "--threads", str(a.threads), "--batch", str(a.batch),
               "--time", str(a.time), "--json"]
        peak = max(json.loads(subprocess.check_output(cmd + ["--impl", "sgemm"]))
                   for _ in range(a.repeat))
        print(f"sgemm 2048^3, {a.threads} threads: {peak:.0f} GFLOP/s")
        table: dict[str, list[dict]] = {}
        for _ in range(a.repeat):
            for impl in ("numba", "numpy", "torch", "torch_cl"):
                try:
                    rows = json.loads(subprocess.check_output(cmd + ["--impl", impl]))
                except subprocess.CalledProcessError:
                    print(f"{impl}: failed")
                    continue
                if impl not in table:
                    table[impl] = rows
                    continue
                for old, new in zip(table[impl], rows, strict=True):
                    for k in ("fwd", "fb"):
                        if new[k + "_ms"] < old[k + "_ms"]:
                            old[k + "_ms"] = new[k + "_ms"]
                            old[k + "_gflops"] = new[k + "_gflops"]
        hdr = f"{'layer':20s} {'impl':9s} {'fwd ms':>8s} {'GF/s':>6s} {'%pk':>4s}"
        print(hdr + f" {'f+b ms':>8s} {'GF/s':>6s}")
        for name, *_ in LAYERS:
            for impl, rows in table.items():
                for r in rows:
                    if r["layer"] == name:
                        print(f"{name:20s} {impl:9s} {r['fwd_ms']:8.2f} {r['fwd_gflops']:6.1f} "
                              f"{100 * r['fwd_gflops'] / peak:4.0f} {r['fb_ms']:8.2f} "
                              f"{r['fb_gflops']:6.1f}")
        return
    if a.impl == "sgemm":
        out = sgemm_peak(a.threads)
    else:
        out = run_impl(a.impl, a.threads, a.batch, a.time)
    if a.json:
        print(json.dumps(out))
    else:
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    if "." not in sys.path and os.path.isdir(os.path.join(os.getcwd(), "cnncli")):
        sys.path.insert(0, os.getcwd())
    main()
