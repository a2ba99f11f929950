"""One kernel module before and after a change, in one process: an older commit's file
against the working tree's, calls (or training steps) taking turns, outputs compared.

    .venv/bin/python bench/ab_kernels.py --rev 1901ac4 --module norm [--threads 1]
    .venv/bin/python bench/ab_kernels.py --rev 1901ac4 --module norm --net resnet20

On this 2-core VM whole steps swing 2-3x with the host's load, and separate processes see
different hours; alternating calls in one process see the same machine, so the ratio holds
where the absolute times do not.

* The old file is `git show REV:cnncli/engine/kernels/MODULE.py`, written to
  `$TMPDIR/cnncli_ab/` (on sys.path) as `_ab_MODULE_REV.py` and imported by that name:
  numba caches its kernels beside it like any module's, so a second run with the same REV
  compiles nothing (loading a file by location instead confused numba's cache index). It
  imports the current package's helpers (config, sizes, conv), so it must still fit them.
* Kernel mode (the default): each case of the module builds its inputs once (fixed seed)
  at each shape, then old and new are called in turn, `--calls` times each, with fresh
  copies of any argument a call writes over, prepared outside the timer. The table gives
  each side's median and fastest ms, old / new of both (above 1: the change is faster),
  and the largest difference between their outputs relative to the largest output
  (0: bit-identical).
* Step mode (`--net`): one network, training steps at batch 64, alternating between the
  module's public functions swapped for the old file's and the current ones (the layers
  look a kernel up in its module at each call). Old / new of the median and fastest step.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "cnncli.engine.kernels"

# A case: (module, shape, generator) -> (prepare, call); see below
Side = tuple[Callable[[], tuple], Callable[..., Any]]  # type: ignore[type-arg]
Case = Callable[[Any, tuple[int, ...], np.random.Generator], Side]


def load_old(module: str, rev: str, where: Path) -> Any:
    """The module as it was at `rev`, imported under a name of its own from `where`."""
    source = subprocess.run(
        ["git", "show", f"{rev}:cnncli/engine/kernels/{module}.py"], cwd=ROOT,
        capture_output=True, text=True, check=True).stdout
    name = f"_ab_{module}_{re.sub(r'[^0-9A-Za-z]', '_', rev)}"  # v1.0, main~2: a module name
    path = where / f"{name}.py"
    if not path.exists() or path.read_text() != source:  # rewritten: numba's cache goes stale
        path.write_text(source)
    if str(where) not in sys.path:
        sys.path.insert(0, str(where))
    return import_module(name)


# ----------------------------------------------------------------------------- cases
# A case gets the module (old or new), a shape and a generator, and returns
# (prepare, call): prepare() makes the arguments a call may write over, outside the timer;
# call(*prepared) runs the kernel and returns what it computed.


def _act(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def bn_forward(mod: Any, shape: tuple[int, ...], rng: np.random.Generator) -> Any:
    x = _act(rng, shape) + 1
    c = shape[-1]
    g, b = rng.random(c) + 0.5, rng.standard_normal(c)
    return (lambda: ()), (lambda: mod.batchnorm_forward_train(x, g, b, 1e-5, relu=True)[:3])


def bn_backward(mod: Any, shape: tuple[int, ...], rng: np.random.Generator) -> Any:
    x = _act(rng, shape) + 1
    c = shape[-1]
    g, b = rng.random(c) + 0.5, rng.standard_normal(c)
    y, mean, inv_std, _ = mod.batchnorm_forward_train(x, g, b, 1e-5, relu=True)
    dy = _act(rng, shape)
    return (lambda: (dy.copy(),)), (
        lambda d: mod.batchnorm_backward(d, x, g, mean, inv_std, relu_y=y))


def wino_forward(mod: Any, shape: tuple[int, ...], rng: np.random.Generator) -> Any:
    n, h, c, k = shape
    x = _act(rng, (n, h, h, c))
    w = _act(rng, (k, c, 3, 3)) * np.float32(0.1)
    u = mod.winograd_filter_transform(w)
    return (lambda: ()), (lambda: mod.winograd_conv_forward(x, w, None, 1, u=u))


def wino_backward_data(mod: Any, shape: tuple[int, ...], rng: np.random.Generator) -> Any:
    n, h, c, k = shape
    dy = _act(rng, (n, h, h, k))
    w = _act(rng, (k, c, 3, 3)) * np.float32(0.1)
    return (lambda: ()), (lambda: mod.winograd_conv_backward_data(dy, w, 1))


def wino_backward_weights(mod: Any, shape: tuple[int, ...], rng: np.random.Generator) -> Any:
    n, h, c, k = shape
    x = _act(rng, (n, h, h, c))
    dy = _act(rng, (n, h, h, k))
    return (lambda: ()), (lambda: mod.winograd_conv_backward_params(x, dy, 1, need_db=False))


def _conv_shape(shape: tuple[int, ...]) -> tuple[int, int, int, int, int, int, int]:
    """(n, h, c, k, stride, filter size, pad): 3x3 pad 1 unless a sixth number gives the
    filter size (then pad size // 2)."""
    n, h, c, k, s = shape[:5]
    f = shape[5] if len(shape) > 5 else 3
    return n, h, c, k, s, f, f // 2


def conv_forward(mod: Any, shape: tuple[int, ...], rng: np.random.Generator) -> Any:
    n, h, c, k, s, f, p = _conv_shape(shape)
    x = _act(rng, (n, h, h, c))
    w = _act(rng, (k, c, f, f)) * np.float32(0.1)
    o = (h + 2 * p - f) // s + 1
    return (lambda: ()), (lambda: mod.conv2d_forward(x, w, None, (s, s), (p, p), (1, 1), 1,
                                                     (o, o)))


def conv_backward(mod: Any, shape: tuple[int, ...], rng: np.random.Generator) -> Any:
    n, h, c, k, s, f, p = _conv_shape(shape)
    x = _act(rng, (n, h, h, c))
    w = _act(rng, (k, c, f, f)) * np.float32(0.1)
    o = (h + 2 * p - f) // s + 1
    dy = _act(rng, (n, o, o, k))
    return (lambda: ()), (lambda: mod.conv2d_backward(x, w, dy, (s, s), (p, p), (1, 1), 1))


def max_pool(mod: Any, shape: tuple[int, ...], rng: np.random.Generator) -> Any:
    x = _act(rng, shape)
    n, h, w, c = shape
    hw = (h // 2, w // 2)
    y, switches = mod.max_pool_forward(x, (2, 2), (2, 2), (0, 0), hw)
    dy = _act(rng, y.shape)

    def both() -> Any:
        y2, s2 = mod.max_pool_forward(x, (2, 2), (2, 2), (0, 0), hw)
        return y2, mod.max_pool_backward(dy, s2, (h, w))
    return (lambda: ()), both


def add_relu(mod: Any, shape: tuple[int, ...], rng: np.random.Generator) -> Any:
    a, b = _act(rng, shape), _act(rng, shape)
    return (lambda: ()), (lambda: mod.add_relu(a, b))


# resnet20's and the batchnorm net's layer sizes at batch 64
ACT_SHAPES = [(64, 32, 32, 16), (64, 16, 16, 32), (64, 8, 8, 64), (64, 32, 32, 32)]
WINO_SHAPES = [(64, 32, 16, 16), (64, 16, 32, 32), (64, 8, 64, 64), (64, 32, 32, 32)]
CONV_SHAPES = [(64, 32, 16, 32, 2), (64, 16, 32, 64, 2), (64, 32, 3, 16, 1),
               (64, 32, 16, 32, 2, 1), (64, 16, 32, 64, 2, 1)]  # + resnet20's 1x1 shortcuts
CASES: dict[str, list[tuple[str, Case, list[tuple[int, ...]]]]] = {
    "norm": [("batchnorm+relu forward", bn_forward, ACT_SHAPES),
             ("batchnorm+relu backward", bn_backward, ACT_SHAPES)],
    "winograd": [("forward", wino_forward, WINO_SHAPES),
                 ("backward data", wino_backward_data, WINO_SHAPES),
                 ("backward weights", wino_backward_weights, WINO_SHAPES)],
    "conv": [("forward (GEMM)", conv_forward, CONV_SHAPES),
             ("backward (GEMM)", conv_backward, CONV_SHAPES)],
    "pool": [("max 2/2 forward + backward", max_pool, ACT_SHAPES)],
    "elementwise": [("add + relu", add_relu, ACT_SHAPES)],
}


def _leaves(out: Any) -> list[np.ndarray]:
    if isinstance(out, (tuple, list)):
        return [a for o in out for a in _leaves(o)]
    return [] if out is None else [np.asarray(out)]


def difference(a: Any, b: Any) -> float:
    """Largest |a - b| over every output, relative to the largest |a| (0: the same bits)."""
    worst = 0.0
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        if x.shape != y.shape:
            return float("inf")
        if np.array_equal(x, y):
            continue
        scale = float(np.max(np.abs(x))) or 1.0
        worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - y))) / scale)
    return worst


def turns(names: list[str], i: int) -> list[str]:
    """Round i's order: reversed every other round, so neither side always goes first
    (the first call of a round can find the caches cold or warm for it)."""
    return names if i % 2 == 0 else names[::-1]


def alternate(sides: dict[str, Side], calls: int) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Each side called `calls` times in turn (after one untimed call each); their times in
    ms and their first outputs."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    outs = {name: call(*prepare()) for name, (prepare, call) in sides.items()}
    for i in range(calls):
        for name in turns(list(sides), i):
            prepare, call = sides[name]
            args = prepare()
            t = time.perf_counter()
            call(*args)
            times[name].append((time.perf_counter() - t) * 1e3)
    return times, outs


def kernel_rows(module: str, old: Any, new: Any, calls: int,
                only: str | None) -> list[list[str]]:
    rows = []
    for label, case, shapes in CASES[module]:
        if only and only not in label:
            continue
        for shape in shapes:
            sides = {"old": case(old, shape, np.random.default_rng(0)),
                     "new": case(new, shape, np.random.default_rng(0))}
            times, outs = alternate(sides, calls)
            mo, mn = median(times["old"]), median(times["new"])
            fo, fn = min(times["old"]), min(times["new"])
            rows.append([label, "x".join(map(str, shape)), f"{mo:.2f}", f"{mn:.2f}",
                         f"{mo / mn:.2f}x", f"{fo:.2f}", f"{fn:.2f}", f"{fo / fn:.2f}x",
                         f"{difference(outs['old'], outs['new']):.1e}"])
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    return rows


def step_rows(old: Any, new: Any, net: str, steps: int, conv_algo: str) -> list[list[str]]:
    from cnncli.engine.network import Network
    from cnncli.engine.optim import make_optimizer

    model = Network.from_spec(net, seed=0, conv_algo=conv_algo)
    opt = make_optimizer("momentum", model.params, lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    x = rng.random((64, model.input.h, model.input.w, model.input.d), dtype=np.float32)
    labels = rng.integers(0, 10, 64)
    public = [n for n in getattr(new, "__all__", []) if hasattr(old, n)]
    funcs = {"old": {n: getattr(old, n) for n in public},
             "new": {n: getattr(new, n) for n in public}}

    def use(side: str) -> None:
        for n, f in funcs[side].items():
            setattr(new, n, f)

    def step() -> None:
        loss, d = model.loss(model.forward(x, training=True), labels)
        model.backward(d)
        opt.step(model.grads)

    times: dict[str, list[float]] = {"old": [], "new": []}
    try:
        for i in range(steps + 2):  # two untimed rounds: compiling, first allocations
            for side in turns(["old", "new"], i):
                use(side)
                t = time.perf_counter()
                step()
                if i >= 2:
                    times[side].append((time.perf_counter() - t) * 1e3)
    finally:
        use("new")
    mo, mn = median(times["old"]), median(times["new"])
    fo, fn = min(times["old"]), min(times["new"])
    return [[f"{net} training step ({conv_algo})", "batch 64", f"{mo:.1f}", f"{mn:.1f}",
             f"{mo / mn:.2f}x", f"{fo:.1f}", f"{fn:.1f}", f"{fo / fn:.2f}x", "-"]]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rev", required=True, help="the commit to compare the working tree with")
    ap.add_argument("--module", required=True, choices=sorted(CASES))
    ap.add_argument("--case", help="only the cases whose label contains this")
    ap.add_argument("--calls", type=int, default=20, help="timed calls per side and shape")
    ap.add_argument("--threads", type=int, default=None, help="engine threads (all cores)")
    ap.add_argument("--net", help="time training steps of this net instead of kernels")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per side (--net)")
    ap.add_argument("--conv-algo", default="auto", choices=("auto", "gemm", "winograd"))
    a = ap.parse_args(argv)

    from cnncli.config import configure_threads

    threads = configure_threads(a.threads)
    new = import_module(f"{PACKAGE}.{a.module}")
    where = Path(tempfile.gettempdir()) / "cnncli_ab"
    where.mkdir(exist_ok=True)
    old = load_old(a.module, a.rev, where)
    if a.net:
        rows = step_rows(old, new, a.net, a.steps, a.conv_algo)
    else:
        rows = kernel_rows(a.module, old, new, a.calls, a.case)
    what = f"{a.steps} steps" if a.net else f"{a.calls} calls"
    print(f"{a.module}.py at {a.rev} (old) against the working tree (new), {threads} "
          f"thread{'s' if threads > 1 else ''}, float32, {what} per side, alternating\n")
    print("| what | shape | old median ms | new median ms | old / new | old fastest ms | "
          "new fastest ms | old / new | outputs differ by |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
