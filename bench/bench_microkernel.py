"""The engine's own float32 GEMM (cnncli.engine.kernels.microkernel.gemm_into) against
np.dot, both called from a numba loop as the kernels call them, at the shapes the engine
gives them: Winograd's 36 tile products of a block ([32 tiles x C] by [C x K]) and the
im2col GEMMs of resnet20's and the batchnorm net's layers (one band), plus a VGG-size
band where OpenBLAS's packing wins. One thread; the two take turns, round after round;
GFLOP/s from the median round.

    .venv/bin/python bench/bench_microkernel.py [--rounds 7]
    OPENBLAS_CORETYPE=Haswell .venv/bin/python bench/bench_microkernel.py   # AVX2 kernel

Prints a Markdown table and the OpenBLAS core each library runs (threadpoolctl).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numba
import numpy as np
from numba import njit
from numba.core.errors import NumbaPerformanceWarning

from cnncli.config import blas_narrower_than_jit, configure_threads
from cnncli.engine.kernels.microkernel import WIDE, gemm_into

# (what, M, K, N, A transposed, products per call)
CASES = [
    ("Winograd 32x32 16->16 (36 products)", 32, 16, 16, False, 36),
    ("Winograd 16x16 32->32 (36 products)", 32, 32, 32, False, 36),
    ("Winograd 8x8 64->64 (36 products)", 32, 64, 64, False, 36),
    ("Winograd 8x8 128->128 (36 products)", 32, 128, 128, False, 36),
    ("Winograd dW 32x32 16->16 (36, V^T Z)", 16, 64, 16, True, 36),
    ("planar forward 32x32 3->32 (a band)", 1024, 27, 32, True, 1),
    ("planar dW 32x32 3->32 (a band)", 27, 1024, 32, False, 1),
    ("im2col 16x16 16->32 stride 2", 256, 144, 32, False, 1),
    ("im2col 8x8 32->64 stride 2", 512, 288, 64, False, 1),
    ("im2col 1x1 16->32 stride 2", 256, 16, 32, False, 1),
    ("im2col dW 16x16 16->32 stride 2", 144, 256, 32, True, 1),
    ("VGG 3x3 256->256 band (not used)", 784, 2304, 256, False, 1),
]


@njit(cache=True)
def _run(A, B, out, reps, own):
    """The products as the engine's kernels call them: gemm_into (own) or np.dot."""
    for _ in range(reps):
        for e in range(A.shape[0]):
            if own:
                gemm_into(A[e], B[e], out[e], False)
            else:
                np.dot(A[e], B[e], out[e])


def _operands(rng, M, K, N, transposed, count):
    if transposed:  # A read across its rows, as dW and the planar forward read theirs
        A = rng.standard_normal((count, K, M), dtype=np.float32).transpose(0, 2, 1)
    else:
        A = rng.standard_normal((count, M, K), dtype=np.float32)
    B = rng.standard_normal((count, K, N), dtype=np.float32)
    return A, B


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    # np.dot on a transposed view: the engine's kernels take it that way too
    warnings.simplefilter("ignore", NumbaPerformanceWarning)
    configure_threads(1)
    from threadpoolctl import threadpool_info

    cores = sorted({str(lib.get("architecture")) for lib in threadpool_info()
                    if lib.get("internal_api") == "openblas"})
    print(f"OpenBLAS core: {', '.join(cores)}; numba target AVX-512: {WIDE}; "
          f"OpenBLAS older than the target: {blas_narrower_than_jit()}; "
          f"numba {numba.__version__}, 1 thread, {args.rounds} alternating rounds\n")
    print("| GEMM | shape | own GFLOP/s | np.dot GFLOP/s | own / np.dot | max rel. diff |")
    print("|---|---|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for what, M, K, N, transposed, count in CASES:
        A, B = _operands(rng, M, K, N, transposed, count)
        out = {"own": np.empty((count, M, N), np.float32),
               "dot": np.empty((count, M, N), np.float32)}
        for name in out:
            _run(A, B, out[name], 1, name == "own")
        ref = np.abs(out["dot"]).max()
        diff = float(np.abs(out["own"] - out["dot"]).max() / ref)
        flops = 2.0 * M * K * N * count
        reps = max(2, int(3e8 / flops))
        times: dict[str, list[float]] = {"own": [], "dot": []}
        for r in range(args.rounds):
            for name in (("own", "dot") if r % 2 == 0 else ("dot", "own")):
                t0 = time.perf_counter()
                _run(A, B, out[name], reps, name == "own")
                times[name].append(time.perf_counter() - t0)
        own, dot = (flops * reps / float(np.median(times[k])) / 1e9 for k in ("own", "dot"))
        print(f"| {what} | [{M} x {K}] by [{K} x {N}] | {own:.1f} | {dot:.1f} | "
              f"{own / dot:.2f}x | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
