"""Compile the engine's kernels ahead of a run; numba caches the machine code on disk
(`cache=True`), so what is compiled once is loaded in a fraction of a second afterwards.

Nothing needs this: every kernel compiles the first time a run calls it, and only the
kernels (and the dtype) that run uses. `cnncli warmup` is for preparing a machine ahead of
time:

* ``warm_up_nets(specs)``: what training and evaluating those nets needs (one step on a
  throwaway copy at batch 2: its weights, optimizer and random draws are not the run's).
* ``CompileWatch``: how long a stretch of a run spent compiling, so that `cnncli train` can
  say why its first step was slow.
* ``warm_up_all(dtypes)``: every kernel, for a machine image or before timing anything:
  the steps of three small nets that between them call every kernel (convolutions by
  GEMM; planar and Winograd convolutions; the other layers).
* ``compile_ahead(steps)``: what those steps will compile, found by a dry run in which no
  kernel runs (``uncached_kernels``), then compiled by ``config.compile_workers()``
  processes side by side; the steps then load it from the cache. Compiling is
  single-threaded and numba holds a lock while it does, so threads would take turns and
  processes do not; each kernel is compiled by one process, so no two write one cache
  index. `cnncli train` does this before its first step (on a machine that has not
  compiled the net's kernels yet: cifar_small's 8 kernels, 68 s in one process on the
  2-core VM, take 39-43 s in two), and `cnncli warmup` for its nets and families.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

# The convolutions on the GEMM paths (run under --conv-algo gemm): a first conv (3 channels,
# its dx skipped), GEMM with dx, grouped (direct), dilated, strided and locally connected.
GEMM_SPEC: dict[str, Any] = {
    "name": "warm-up: convolutions by GEMM",
    "input": "12x12x3",
    "layers": [
        {"conv": {"filters": 8, "size": 3, "pad": 1}},
        {"conv": {"filters": 16, "size": 3, "pad": 1}},
        {"conv": {"filters": 8, "size": 3, "pad": 1, "groups": 8}},
        {"conv": {"filters": 8, "size": 3, "pad": 2, "dilation": 2}},
        {"conv": {"filters": 8, "size": 2, "stride": 2}},
        {"local": {"filters": 4, "size": 3}},
        {"fc": 3},
    ],
}

# The convolutions `auto` runs faster (run under auto): a planar first layer, then Winograd.
FAST_SPEC: dict[str, Any] = {
    "name": "warm-up: planar and Winograd convolutions",
    "input": "12x12x3",
    "layers": [
        {"conv": {"filters": 16, "size": 3, "pad": 1}},
        {"conv": {"filters": 16, "size": 3, "pad": 1}},
        {"fc": 3},
    ],
}

# Everything else: every pooling type (global average included), batchnorm, lrn, every
# activation, dropout, and the blocks' adds and concatenations. No conv.
OTHER_SPEC: dict[str, Any] = {
    "name": "warm-up: the other layers",
    "input": "12x12x8",
    "layers": [
        "relu",
        {"batchnorm": {}},
        {"lrn": {"size": 3}},
        {"residual": {"layers": ["tanh", {"batchnorm": {}}]}},
        "elu",
        {"prelu": {}},
        {"concat": [[{"pool": {"size": 3, "stride": 1, "pad": 1, "type": "avg"}}],
                    [{"pool": {"size": 3, "stride": 1, "pad": 1, "type": "l2"}}]]},
        {"pool": {"size": 2, "stride": 2}},
        "sigmoid",
        {"leaky_relu": {}},
        {"dropout": 0.5},
        {"pool": {"global": True, "type": "avg"}},
        {"fc": 3},
    ],
}

# The families `warm_up_all` runs, with the policy each runs under. They share no kernel
# (tests/test_warmup.py checks), so each family's step shows what its specs reach.
FAMILIES: tuple[tuple[str, str], ...] = (
    ("GEMM_SPEC", "gemm"), ("FAST_SPEC", "auto"), ("OTHER_SPEC", "gemm"))


class CompileWatch:
    """Seconds spent compiling kernels while installed (numba's "numba:compile" events fire
    for real compilations only, not for loads from the on-disk cache).

        with CompileWatch() as watch:
            step()
        watch.seconds, watch.kernels
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.kernels = 0  # top-level compilations (a kernel's helpers compile inside it)
        self._depth = 0
        self._started = 0.0
        self._listener: Any = None

    def __enter__(self) -> CompileWatch:
        from numba.core import event

        watch = self

        class Listener(event.Listener):
            def on_start(self, ev: Any) -> None:
                if watch._depth == 0:
                    watch._started = time.perf_counter()
                watch._depth += 1

            def on_end(self, ev: Any) -> None:
                watch._depth -= 1
                if watch._depth == 0:
                    watch.seconds += time.perf_counter() - watch._started
                    watch.kernels += 1

        self._listener = Listener()
        event.register("numba:compile", self._listener)
        return self

    def __exit__(self, *exc: object) -> None:
        from numba.core import event

        event.unregister("numba:compile", self._listener)


def _step(spec: Any, dtype: str, conv_algo: str, batch: int = 2, training: bool = True) -> None:
    """One training step (unless not `training`) and one evaluation pass of a throwaway
    net: every kernel they call compiles (or loads from the cache)."""
    import numpy as np

    from cnncli.engine.network import Network

    net = Network.from_spec(spec, dtype=np.dtype(dtype), conv_algo=conv_algo)
    v = net.input
    x = np.zeros((batch, v.h, v.w, v.d), net.dtype)
    labels = np.zeros(batch, np.int64)
    with np.errstate(all="ignore"):  # zeros through a net: nothing to learn, nothing to warn
        if training:
            _, dscores = net.loss(net.forward(x, training=True), labels)
            net.backward(dscores)
        net.forward(x, training=False)


# ----------------------------------------------------------------------------------
# which kernels a run will compile, and compiling them side by side
# ----------------------------------------------------------------------------------

# A kernel as a process names it: the module and the name of an @njit function that
# plain Python calls (the serial helpers called from inside kernels compile into them).
Kernel = tuple[str, str]
Signature = tuple[Any, ...]  # numba types, one per argument, as a call would infer them

# What one kernel costs to compile, relative to a serial one: a parallel kernel's parfor
# passes and gufunc took 4-18 s each on the 2-core VM (2026-11-29: cifar_small's Winograd
# forward 18 s, its planar forward 12 s, max-pooling 3.9 s), a serial one ~1 s.
PARALLEL_COST = 8


@dataclass(frozen=True)
class AheadOfRun:
    """What ``compile_ahead`` did: kernel signatures compiled (0: every one was in the
    cache), the processes that compiled them, and the wall seconds, dry run included."""

    kernels: int
    processes: int
    seconds: float


class _Recorder:
    """Stands in for a kernel during a dry run: notes the signature a call would compile
    (numba's own inference of each argument's type) and runs nothing."""

    def __init__(self, dispatcher: Any, calls: dict[Any, set[Signature]]):
        self.dispatcher = dispatcher
        self.calls = calls

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs:  # the wrappers pass kernels positional arguments only
            raise TypeError("a kernel called with keyword arguments")
        sig = tuple(self.dispatcher.typeof_pyval(a) for a in args)
        self.calls.setdefault(self.dispatcher, set()).add(sig)


def _kernel_modules() -> list[Any]:
    import cnncli.engine.kernels as kernels

    return [importlib.import_module(f"{kernels.__name__}.{info.name}")
            for info in pkgutil.iter_modules(kernels.__path__)]


@contextmanager
def _recording(calls: dict[Any, set[Signature]]) -> Iterator[None]:
    """Every module of cnncli that holds a kernel holds a _Recorder instead until the
    block ends. The kernel modules are imported first, so no call can reach a kernel
    that was not swapped: none runs (its outputs stay as allocated, so nothing computed
    from them is used) and none compiles."""
    from numba.core.registry import CPUDispatcher

    _kernel_modules()
    swapped: list[tuple[Any, str, Any]] = []
    try:
        for name, module in list(sys.modules.items()):
            if module is None or not (name == "cnncli" or name.startswith("cnncli.")):
                continue
            for attr, value in list(vars(module).items()):
                if isinstance(value, CPUDispatcher):
                    swapped.append((module, attr, value))
                    setattr(module, attr, _Recorder(value, calls))
        yield
    finally:
        for module, attr, value in swapped:
            setattr(module, attr, value)


def _cached(dispatcher: Any, sig: Signature) -> bool:
    """Whether numba's on-disk cache holds `dispatcher` compiled for `sig`: the index
    lookup its own load does (numba.core.caching.Cache._load_overload), without loading
    the machine code. Unsure (another numba, no cache) counts as not cached."""
    try:
        cache = dispatcher._cache
        key = cache._index_key(sig, dispatcher.targetctx.codegen())
        return key in cache._cache_file._load_index()
    except Exception:  # noqa: BLE001 - a private interface: any change means "unsure"
        return False


def uncached_kernels(run: Callable[[], None]) -> dict[Kernel, list[Signature]]:
    """The kernels (and signatures) that `run` would compile, found without compiling or
    running any: `run` goes through its Python with every kernel swapped for a recorder,
    then each signature is looked up in numba's cache. `run` must only touch throwaway
    state (a throwaway net): the arrays kernels would have written hold nothing. Python
    that trips over that (an index from a kernel's output) ends the dry run early; what
    it missed compiles when the real run calls it, as it would have anyway."""
    calls: dict[Any, set[Signature]] = {}
    with _recording(calls):
        try:
            run()
        except Exception:  # noqa: BLE001 - see the docstring: a dry run is best effort
            pass
    missing: dict[Kernel, list[Signature]] = {}
    for dispatcher, sigs in calls.items():
        todo = sorted((sig for sig in sigs if not _cached(dispatcher, sig)), key=str)
        if todo:
            func = dispatcher.py_func
            missing[(func.__module__, func.__name__)] = todo
    return missing


def _cost(kernel: Kernel, sigs: Sequence[Signature]) -> int:
    dispatcher = getattr(importlib.import_module(kernel[0]), kernel[1])
    return len(sigs) * (PARALLEL_COST if dispatcher.targetoptions.get("parallel") else 1)


def _queue(kernels: dict[Kernel, list[Signature]]) -> list[Kernel]:
    """The order kernels are handed to the compiling processes: dearest first, so that
    the cheap ones fill in at the end (longest processing time first), each process
    taking the next kernel when it is done with one."""
    return sorted(kernels, key=lambda k: (-_cost(k, kernels[k]), k))


def _compile(kernel: Kernel, sigs: Sequence[Signature]) -> float:
    """Compile `kernel` for `sigs` in this process (numba saves each to its cache); the
    seconds. A kernel's signatures are compiled together: the process that compiles a
    kernel is the only one that writes its cache index."""
    from cnncli.config import configure_threads

    started = time.perf_counter()
    configure_threads(1)  # compiling runs nothing
    dispatcher = getattr(importlib.import_module(kernel[0]), kernel[1])
    for sig in sigs:
        dispatcher.compile(sig)
    return time.perf_counter() - started


def compile_kernels(kernels: dict[Kernel, list[Signature]]) -> int:
    """Compile `kernels` (``uncached_kernels``' answer) into numba's cache, in up to one
    process per thread; return how many processes did (0: it gave up).

    Compiling ahead only saves time, so a failure here (no processes to be had, a kernel
    that does not compile) gives up quietly: the run then compiles each kernel when it
    first calls it, where a real error is raised and reported as it always was."""
    from cnncli.config import compile_workers

    if not kernels:
        return 0
    workers = compile_workers(len(kernels))
    try:
        order = _queue(kernels)
        if workers == 1:
            for kernel in order:
                _compile(kernel, kernels[kernel])
            return 1
        # spawn, not fork: a forked child would inherit this process's numba thread pool
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            for future in [pool.submit(_compile, kernel, kernels[kernel]) for kernel in order]:
                future.result()
    except Exception:  # noqa: BLE001 - see the docstring; Ctrl-C still stops it
        return 0
    return workers


# A dry run's fully connected layers are at most this wide. They run numpy, not kernels, so
# their width changes no kernel a run calls; at full width a dry run of VGG16 spent 9 s and
# 1.3 GB initialising and multiplying its 124 M FC weights. More than 3 keeps a conv after
# an FC layer off the planar kernels (for 1-3 input channels) if it was off them.
DRY_FC_UNITS = 8


def _narrow(spec: Any) -> Any:
    """`spec` (a parsed Spec) with its top-level FC layers at most DRY_FC_UNITS wide."""
    from dataclasses import replace

    from cnncli.layers.fc import FC

    if not hasattr(spec, "layers"):
        return spec  # a dict: warm-up's own small nets
    layers = tuple(replace(layer, units=min(layer.units, DRY_FC_UNITS))
                   if isinstance(layer, FC) else layer for layer in spec.layers)
    return replace(spec, layers=layers)


def compile_ahead(steps: Sequence[tuple[Any, str, str]], training: bool = True,
                  announce: Callable[[int, int], None] | None = None) -> AheadOfRun:
    """Compile, side by side, what the throwaway `steps` (spec, dtype, conv policy: one
    training step unless not `training`, and one evaluation pass each) would compile and
    the cache lacks.
    `announce(kernels, processes)` is called before compiling starts, and only when
    something will compile: on a warm machine this costs only the dry run (0.2 s for
    cifar_small, 1.5 s for VGG16 on the 2-core VM)."""
    from cnncli.config import compile_workers

    started = time.perf_counter()

    def dry_run() -> None:
        for spec, dtype, conv_algo in steps:
            _step(_narrow(spec), dtype, conv_algo, training=training)

    missing = uncached_kernels(dry_run)
    count = sum(len(sigs) for sigs in missing.values())
    processes = 0
    if missing:
        if announce is not None:
            announce(count, compile_workers(len(missing)))
        processes = compile_kernels(missing)
    return AheadOfRun(count, processes, time.perf_counter() - started)


def _warm(steps: Sequence[tuple[Any, str, str]],
          announce: Callable[[int, int], None] | None = None) -> float:
    """Compile what `steps` need side by side (``compile_ahead``, which calls `announce`
    before it starts, if anything is to compile), then run them here, loading it (and
    compiling whatever a dry run could not see); the wall seconds."""
    from cnncli.config import ensure_configured

    started = time.perf_counter()
    ensure_configured()
    compile_ahead(steps, announce=announce)
    for step in steps:
        _step(*step)
    return time.perf_counter() - started


def warm_up_all(dtypes: Sequence[str] = ("float32", "float64"),
                announce: Callable[[int, int], None] | None = None) -> float:
    """Compile every kernel in `dtypes` (the families' steps); return the wall seconds."""
    return _warm([(globals()[name], dtype, policy)
                  for name, policy in FAMILIES for dtype in dtypes], announce)


def warm_up_nets(specs: Sequence[Any], dtypes: Sequence[str] = ("float32",),
                 conv_algo: str = "auto",
                 announce: Callable[[int, int], None] | None = None) -> float:
    """Compile what training and evaluating each of `specs` needs in each of `dtypes`;
    return the seconds."""
    return _warm([(spec, dtype, conv_algo) for dtype in dtypes for spec in specs], announce)
