"""Thread and JIT settings for the Numba engine: the one place that decides thread counts.

On this 2-core machine numba's thread pool and BLAS (the OpenBLAS of numpy and of
scipy; numba's ``np.dot`` calls scipy's) must never both run several threads at once:
idle threads spin and the measured slowdown is 2-3x. The engine's kernels call BLAS
from inside ``prange`` bodies, so BLAS is pinned to one thread and numba owns the cores.
For the rare large single GEMM done from plain Python (a big fully connected layer),
``blas_threads`` lends the cores to BLAS for the duration of a ``with`` block.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# Options shared by every @njit kernel. fastmath stays off: it lets LLVM reassociate
# sums, which changes results in the last bits and buys nothing measurable here (the
# heavy lifting is BLAS); gradient checks compare float64 results to ~1e-10.
JIT_OPTIONS: dict[str, Any] = dict(cache=True, nogil=True, fastmath=False)
PARALLEL_JIT_OPTIONS: dict[str, Any] = dict(JIT_OPTIONS, parallel=True)

# Note: OpenBLAS picks its kernels from OPENBLAS_CORETYPE when numpy first loads it. This
# machine's environment pins OPENBLAS_CORETYPE=Haswell (AVX2); unset, OpenBLAS detects the
# EPYC's AVX-512 as SkylakeX and single-thread sgemm goes 113 -> 215 GFLOP/s (conv layers
# ~1.7x faster). We leave that choice to whoever sets the environment.

# OpenBLAS cores (threadpoolctl's "architecture") whose sgemm kernels use AVX-512
_AVX512_BLAS_CORES = frozenset({"skylakex", "cooperlake", "sapphirerapids"})

_configured: int | None = None
_blas_limiter: Any = None  # keeps the threadpoolctl limiter (and its saved state) alive
_blas_controller: Any = None  # the BLAS libraries, looked up once (see _blas)


def _load_blas_libraries() -> None:
    """Load the OpenBLAS copies threadpoolctl must see before it can limit them."""
    import numpy  # noqa: F401  (numpy's OpenBLAS)

    try:  # scipy's OpenBLAS: numba's np.dot calls it via scipy.linalg.cython_blas
        import scipy.linalg.cython_blas  # noqa: F401
    except ImportError:  # pragma: no cover - numba then has no np.dot anyway
        pass


def _blas() -> Any:
    """threadpoolctl's controller for the BLAS libraries, looked up once per process:
    `threadpool_limits(...)` searches every loaded library again on each call, 2.2 ms on
    the 2-core VM, paid on every lend (three a step for each big fully connected layer);
    limiting through a kept controller costs 0.04-0.06 ms."""
    global _blas_controller
    if _blas_controller is None:
        from threadpoolctl import ThreadpoolController

        _load_blas_libraries()
        _blas_controller = ThreadpoolController().select(user_api="blas")
    return _blas_controller


def jit_has_avx512() -> bool:
    """Whether numba compiles for a CPU with AVX-512F: its target (NUMBA_CPU_FEATURES if
    set, else the host's). kernels/microkernel.py sizes its register blocks by it."""
    import numba
    from llvmlite import binding

    features = numba.config.CPU_FEATURES  # type: ignore[attr-defined]
    if features is None:
        features = binding.get_host_cpu_features().flatten()
    return "+avx512f" in str(features).split(",")


_blas_narrower: bool | None = None


def blas_narrower_than_jit() -> bool:
    """Whether an OpenBLAS loaded here runs an older core than numba compiles for: the
    target has AVX-512 and OpenBLAS runs an AVX2-or-older kernel (OPENBLAS_CORETYPE=
    Haswell, as this workplace sets it for old OpenBLAS builds, or an OpenBLAS too old to
    know the CPU). Then the engine's own micro-kernel (kernels/microkernel.py) beats it
    at the im2col GEMMs that fit in cache (kernels/sizes.py decides which). Asked once."""
    global _blas_narrower
    if _blas_narrower is None:
        from threadpoolctl import threadpool_info

        _load_blas_libraries()
        cores = {str(lib.get("architecture", "")).lower() for lib in threadpool_info()
                 if lib.get("internal_api") == "openblas"}
        _blas_narrower = jit_has_avx512() and bool(cores - _AVX512_BLAS_CORES)
    return _blas_narrower


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_malloc_tuned = False


def keep_freed_memory() -> bool:
    """Let glibc keep freed activation buffers for reuse instead of returning them.

    A training step allocates and frees the same multi-MiB arrays every step. By default
    glibc serves those with mmap and unmaps them on free, so every step page-faults its
    activations in again, and its dynamic threshold made every other step ~50% slower
    (measured: 34/52 ms alternating on cifar_small at batch 64; 32 ms steady with this).
    Arrays up to 32 MiB (glibc's ceiling for the threshold) now come from the heap, and
    the heap is trimmed only when 256 MiB lie free at its top. Other platforms: no-op.
    """
    global _malloc_tuned
    if _malloc_tuned:
        return True
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, 256 * 2**20))
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    _malloc_tuned = ok
    return ok


def available_threads() -> int:
    """The threads the engine can run: all cores, capped by NUMBA_NUM_THREADS (the size of
    numba's pool), read without importing numba so `cnncli memory` stays light."""
    n = os.cpu_count() or 1
    env = os.environ.get("NUMBA_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        n = min(n, int(env))
    return n


def compile_workers(jobs: int) -> int:
    """Processes that compile kernels side by side (cnncli.engine.warmup): one per thread
    the run was given (`--threads`; all cores when it was not configured), at most one per
    job. numba compiles on one thread and holds a lock while it does, so threads would take
    turns; processes do not, and a run told to use one core compiles in one process."""
    return max(1, min(jobs, _configured or available_threads()))


def check_threads(n: int | None, option: str = "--threads") -> str | None:
    """The one rule for a thread count someone asks for, on every command.

    Below 1 is an error naming `option` (no count of threads can run nothing). More than
    the engine can run is allowed, since a spec or a script may be written for a larger
    machine, and numba runs at most its pool; the returned one-line warning says so.
    None (the default: all cores) and counts that fit return None.
    """
    if n is None:
        return None
    if n < 1:
        from cnncli.errors import InputError

        raise InputError(f"{option}: expected a thread count >= 1, got {n}")
    cores = available_threads()
    if n > cores:
        return (f"{option} {n} is more than the {cores} core{'s' if cores > 1 else ''} the "
                f"engine can use here; it runs {cores}")
    return None


def configure_threads(n: int | None = None) -> int:
    """Give numba ``n`` threads (default: all cores) and BLAS one thread; return the count.

    ``n`` below 1 is refused (``check_threads``); above NUMBA_NUM_THREADS (the pool size
    fixed at numba import) it is capped there. Safe to call again to change the count.
    """
    global _configured, _blas_limiter
    import numba

    check_threads(n)
    if n is None:
        n = os.cpu_count() or 1
    n = min(int(n), int(numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    numba.set_num_threads(n)
    keep_freed_memory()
    if _blas_limiter is None:
        _blas_limiter = _blas().limit(limits=1)
    else:
        _blas().limit(limits=1)
    _configured = n
    return n


def rank_threads(cores: int, local_ranks: int, bound: bool) -> int:
    """Threads for one MPI rank of a data-parallel run (cnncli.training.distributed asks).

    ``cores``: how many this process may run on (its CPU affinity); ``local_ranks``: the
    ranks on its machine; ``bound``: whether the launcher gave each of them cores of its
    own (Open MPI binds by default, MPICH does not). Bound ranks use all of theirs; ranks
    that may all run anywhere split the cores evenly, so that ranks x threads never
    exceeds them (spinning threads of two ranks on one core cost 2-3x, as above).
    """
    if bound:
        return max(1, cores)
    return max(1, cores // max(1, local_ranks))


def ensure_configured() -> int:
    """Call ``configure_threads()`` once with defaults unless the caller already did."""
    if _configured is None:
        return configure_threads()
    return _configured


def num_threads() -> int:
    """The numba thread count currently in force (configuring defaults if needed)."""
    import numba

    ensure_configured()
    return int(numba.get_num_threads())


@contextmanager
def blas_threads(n: int | None = None) -> Iterator[int]:
    """Let BLAS use ``n`` threads (default: the configured count) inside the block.

    For a big GEMM called from Python while numba's pool is idle; BLAS goes back to one
    thread on exit. Do not call numba parallel kernels inside the block.
    """
    if n is None:
        n = ensure_configured()
    else:
        ensure_configured()
    with _blas().limit(limits=int(n)):
        yield int(n)
