"""Compiling kernels: lazily, what a run uses; `cnncli warmup` ahead of time, for named nets
or every kernel (families that share no kernel, compiled side by side); and a first
training step that says how much of its time was compiling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numba import njit
from rich.console import Console
from typer.testing import CliRunner

from cnncli.cli.app import app
from cnncli.engine import warmup
from cnncli.render.training import TrainDisplay
from cnncli.spec.parse import parse_spec
from cnncli.training.loop import BatchDone

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()

# In a fresh interpreter: run one family's warm-up step, then name every parallel kernel of
# cnncli.engine.kernels that now has machine code (compiled or loaded from the cache).
# Only those: they are what Python calls and what compile_ahead hands out, one process
# each. The serial helpers called from inside them compile into their callers, and a
# helper gets machine code of its own only when a caller was compiled rather than loaded
# (after an edit to its module, say): counted, a helper two families share made this
# test fail on a partly stale cache and pass on a warm or empty one.
USED_KERNELS = """
import json, sys, importlib, pkgutil
from numba.core.registry import CPUDispatcher
import cnncli.engine.kernels as K
from cnncli.engine import warmup
warmup._step(getattr(warmup, sys.argv[1]), "float32", sys.argv[2])
used, every = set(), set()
for info in pkgutil.iter_modules(K.__path__):
    module = importlib.import_module(f"cnncli.engine.kernels.{info.name}")
    for name, value in vars(module).items():
        if not (isinstance(value, CPUDispatcher) and value.__module__ == module.__name__
                and value.targetoptions.get("parallel")):
            continue
        # a kernel and its copy with the products on microkernel.py (`_own`) count as one:
        # which copy a layer runs depends on this machine's OpenBLAS
        key = f"{info.name}.{name.removesuffix('_own')}"
        every.add(key)
        if value.overloads:
            used.add(key)
print(json.dumps({"used": sorted(used), "every": sorted(every)}))
"""


def _kernels_after(family: str, policy: str) -> dict[str, list[str]]:
    done = subprocess.run([sys.executable, "-c", USED_KERNELS, family, policy],
                          capture_output=True,
                          text=True, timeout=900, cwd=ROOT, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_warmup_families_reach_every_kernel_and_share_none() -> None:
    # each family reaches kernels of its own (warmup.FAMILIES: so a family's step shows what
    # its specs reach), and together they reach every kernel, so `cnncli warmup` is complete
    after = {name: _kernels_after(name, policy) for name, policy in warmup.FAMILIES}
    used = {name: set(kernels["used"]) for name, kernels in after.items()}
    every = set(after["FAST_SPEC"]["every"])  # the same list in every process
    names = list(used)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert used[a] & used[b] == set(), (a, b)
    assert every <= set().union(*used.values()), sorted(every - set().union(*used.values()))
    assert {"conv._conv_fwd_gemm", "conv._local_fwd"} <= used["GEMM_SPEC"]
    assert {"winograd._wino_fwd", "conv._conv_fwd_planar"} <= used["FAST_SPEC"]
    assert "norm._bn_stats" in used["OTHER_SPEC"]


def test_warmup_specs_are_valid_nets() -> None:
    from cnncli.analysis.report import analyze

    for spec in (warmup.GEMM_SPEC, warmup.FAST_SPEC, warmup.OTHER_SPEC):
        assert analyze(parse_spec(spec)).valid, spec["name"]


def test_compile_watch_counts_compiling_not_loading_or_calling() -> None:
    @njit  # no cache: it compiles in this test every time
    def triple(x: float) -> float:
        return 3.0 * x

    with warmup.CompileWatch() as watch:
        assert triple(2.0) == 6.0
    assert watch.kernels == 1 and watch.seconds > 0
    with warmup.CompileWatch() as again:
        triple(5.0)  # compiled already: a call, nothing else
    assert again.kernels == 0 and again.seconds == 0.0


def test_cli_warmup_named_nets_says_what_it_compiled() -> None:
    result = runner.invoke(app, ["warmup", "lenet5", "cifar_small"])
    assert result.exit_code == 0, result.output
    assert "the kernels lenet5, cifar_small use (float32) compiled and cached in" in \
        result.stdout


def test_cli_warmup_says_what_it_compiles_before_it_starts(monkeypatch: Any) -> None:
    # every kernel takes minutes on a fresh machine: the first line comes before that, and
    # both dtypes go to one compile_ahead (their kernels then share the processes)
    seen: list[list[str]] = []

    def cold(steps: Any, training: bool = True, announce: Any = None) -> warmup.AheadOfRun:
        seen.append(sorted({dtype for _, dtype, _ in steps}))
        announce(33, 2)
        return warmup.AheadOfRun(kernels=33, processes=2, seconds=97.0)

    monkeypatch.setattr(warmup, "compile_ahead", cold)
    monkeypatch.setattr(warmup, "_step", lambda *args, **kwargs: None)  # nothing to load
    result = runner.invoke(app, ["warmup", "--float64"])
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == ("compiling 33 kernels, in 2 processes (once per machine: "
                                     "numba caches them on disk)")
    assert "every engine kernel (float32, float64) compiled and cached in" in result.stdout
    result = runner.invoke(app, ["warmup", "lenet5"])
    assert result.exit_code == 0, result.output
    assert "compiling 33 kernels, in 2 processes" in result.stderr
    assert seen == [["float32", "float64"], ["float32"]]


def test_cli_warmup_unknown_net_is_one_line_exit_2() -> None:
    result = runner.invoke(app, ["warmup", "cifar_small", "no_such_net.yaml"])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no_such_net.yaml" in result.stderr


def test_cli_warmup_invalid_net_is_exit_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: 32x32x3\nlayers:\n  - conv: {filters: 4, size: 5, stride: 2}\n"
                   "  - fc: 10\n", encoding="utf-8")
    result = runner.invoke(app, ["warmup", str(bad)])
    assert result.exit_code == 1, result.output
    assert "not a whole number" in result.stderr


def _display() -> tuple[TrainDisplay, Console]:
    err = Console(record=True, width=200, file=open("/dev/null", "w"))  # noqa: SIM115
    return TrainDisplay(Console(file=open("/dev/null", "w")), err, quiet=False,  # noqa: SIM115
                        tty=False), err


def _batch(batch: int, seconds: float, compile_seconds: float) -> BatchDone:
    return BatchDone(0, batch, 10, 2.3, 0.1, 64, seconds, 0.01, compile_seconds)


def test_first_step_that_compiled_is_explained_once() -> None:
    display, err = _display()
    for event in (_batch(0, 44.8, 43.2), _batch(1, 0.1, 0.0), _batch(2, 3.0, 2.9)):
        display._compiled(event)
    said = err.export_text()
    assert said.count("compiling") == 1
    assert "step 1 of epoch 1 took 44.8 s, 43.2 s of it compiling" in said


def test_steps_that_compiled_nothing_say_nothing() -> None:
    display, err = _display()
    display._compiled(_batch(0, 0.2, 0.0))
    assert err.export_text() == ""


def test_training_step_reports_its_compile_time(tmp_path: Path, monkeypatch: Any) -> None:
    # a kernel the run has not compiled yet (a fresh dispatcher): the step that first
    # calls it carries the seconds, later steps none
    from cnncli.training import loop

    @njit
    def fresh(x: np.ndarray) -> float:
        return float(x.sum())

    calls: list[float] = []
    real_forward = loop.Network.forward

    def forward(self: Any, x: np.ndarray, training: bool) -> np.ndarray:
        calls.append(fresh(np.ones(3)))
        return real_forward(self, x, training)

    monkeypatch.setattr(loop.Network, "forward", forward)
    from cnncli.engine.network import Network

    net = Network.from_spec({"name": "t", "input": "12x12x1", "layers": [{"fc": 2}]})
    data = loop.builtin_dataset(net, 40, seed=0)
    trainer = loop.Trainer(net, data, None, loop.TrainConfig(epochs=1, batch=20), "")
    done = [e for e in trainer.run() if isinstance(e, BatchDone)]
    assert calls and done[0].compile_seconds > 0
    assert all(e.compile_seconds == 0.0 for e in done[1:])


# ----------------------------------------------------------------------------------
# compiling ahead: a dry run finds what a run will compile, processes compile it
# ----------------------------------------------------------------------------------

SMALL_NET = {"name": "ahead", "input": "6x6x2",
             "layers": ["relu", {"pool": {"size": 2, "stride": 2}}, {"fc": 3}]}

# In a fresh interpreter and an empty numba cache (NUMBA_CACHE_DIR): compile SMALL_NET's
# kernels ahead, then run its steps and count what still compiled; then the same in a
# second interpreter, which must find everything cached.
AHEAD = """
import json, sys
from cnncli.engine import warmup

def main():
    spec = json.loads(sys.argv[1])
    said = []
    ahead = warmup.compile_ahead([(spec, "float32", "auto")],
                                 announce=lambda k, p: said.append([k, p]))
    with warmup.CompileWatch() as watch:
        warmup._step(spec, "float32", "auto")
    print(json.dumps({"kernels": ahead.kernels, "processes": ahead.processes,
                      "said": said, "compiled_after": watch.kernels}))

if __name__ == "__main__":
    main()
"""


def _ahead(cache: Path, threads: str = "2") -> dict[str, Any]:
    import os

    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), NUMBA_NUM_THREADS=threads)
    done = subprocess.run([sys.executable, "-c", AHEAD, json.dumps(SMALL_NET)], env=env,
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_compile_ahead_compiles_everything_a_run_needs_then_nothing(tmp_path: Path) -> None:
    first = _ahead(tmp_path)
    # relu forward and backward, max-pooling forward and backward (fc is numpy's BLAS)
    assert first["kernels"] >= 4
    assert first["processes"] == 2  # NUMBA_NUM_THREADS=2: one process per core
    assert first["said"] == [[first["kernels"], 2]]
    assert first["compiled_after"] == 0  # the dry run saw every kernel the step calls
    again = _ahead(tmp_path)
    assert again == {"kernels": 0, "processes": 0, "said": [], "compiled_after": 0}


def test_compile_ahead_on_one_core_compiles_in_this_process(tmp_path: Path) -> None:
    first = _ahead(tmp_path, threads="1")
    assert first["processes"] == 1 and first["kernels"] >= 4
    assert first["compiled_after"] == 0


def _recorded(spec: dict[str, Any], policy: str = "auto") -> dict[str, Any]:
    """The kernels a dry run calls, by name (a kernel and its `_own` copy as one: which
    one a layer runs depends on this machine's OpenBLAS), with their signatures."""
    calls: dict[Any, set[Any]] = {}
    with warmup._recording(calls):
        warmup._step(spec, "float32", policy)
    named: dict[str, set[Any]] = {}
    for d, sigs in calls.items():
        named.setdefault(d.py_func.__name__.removesuffix("_own"), set()).update(sigs)
    return named


def test_dry_run_records_the_kernels_of_the_notes_small_net() -> None:
    from cnncli.cli.options import open_spec

    recorded = _recorded(open_spec("cifar_small"))
    # conv1: planar (3 channels); conv2, conv3: Winograd with the ReLU absorbed; pools
    assert {"_conv_fwd_planar", "_conv_bwd_planar", "_wino_fwd", "_wino_bwd_w",
            "_filter_transform", "_max_fwd", "_max_bwd"} <= set(recorded)
    assert "_relu_fwd" not in recorded  # every ReLU is absorbed by its conv
    # one signature per kernel and dtype: float32 arrays throughout
    from numba import types

    for sig in recorded["_wino_fwd"]:
        assert sig[0] == types.Array(types.float32, 4, "C")


@pytest.mark.parametrize("narrower", [True, False])
@pytest.mark.parametrize("avx512", [True, False])
def test_a_run_calls_one_copy_of_each_conv_kernel_the_one_its_machine_decides(
        narrower: bool, avx512: bool, monkeypatch: Any) -> None:
    # the planar kernels with their products on microkernel.py where OpenBLAS runs an
    # older core; Winograd's wherever numba compiles for AVX-512; elsewhere the plain
    # kernels: never both, so a run compiles one
    from cnncli.cli.options import open_spec
    from cnncli.engine.kernels import conv, microkernel

    monkeypatch.setattr(conv, "blas_narrower_than_jit", lambda: narrower)
    monkeypatch.setattr(microkernel, "WIDE", avx512)
    calls: dict[Any, set[Any]] = {}
    with warmup._recording(calls):
        warmup._step(open_spec("cifar_small"), "float32", "auto")
    names = {d.py_func.__name__ for d in calls}
    for own, decides in (({"_conv_fwd_planar_own", "_conv_bwd_planar_own"}, narrower),
                         ({"_wino_fwd_own", "_wino_bwd_w_own"}, avx512)):
        plain = {name.removesuffix("_own") for name in own}
        runs, never = (own, plain) if decides else (plain, own)
        assert runs <= names and not names & never


def test_dry_run_runs_no_kernel_and_puts_every_kernel_back() -> None:
    from numba.core.registry import CPUDispatcher

    from cnncli.engine.kernels import elementwise, pool

    x = np.full((1, 4, 4, 1), -1.0, np.float32)

    def run() -> None:
        elementwise.relu_forward(x, out=x)  # would clamp x if the kernel ran
        raise RuntimeError("a dry run that trips ends early; what it saw still counts")

    calls: dict[Any, set[Any]] = {}
    with warmup._recording(calls):
        try:
            run()
        except RuntimeError:
            pass
    assert (x == -1.0).all()
    assert [d.py_func.__name__ for d in calls] == ["_relu_fwd"]
    assert isinstance(elementwise._relu_fwd, CPUDispatcher)
    assert isinstance(pool._max_fwd, CPUDispatcher)


def test_queue_hands_out_the_dearest_kernels_first() -> None:
    conv, wino, elem, micro = ("cnncli.engine.kernels.conv", "cnncli.engine.kernels.winograd",
                               "cnncli.engine.kernels.elementwise",
                               "cnncli.engine.kernels.microkernel")
    kernels: dict[Any, list[Any]] = {
        (micro, "gemm_into"): ["f64"], (wino, "_wino_fwd"): ["f32"],
        (conv, "_conv_fwd_planar"): ["f32", "f64"], (elem, "_relu_bwd"): ["f32"]}
    # parallel kernels weigh PARALLEL_COST a signature (their parfor passes), serial ones 1
    assert warmup._cost((conv, "_conv_fwd_planar"), ["f32", "f64"]) == 2 * warmup.PARALLEL_COST
    assert warmup._cost((micro, "gemm_into"), ["f64"]) == 1
    order = warmup._queue(kernels)
    assert sorted(order) == sorted(kernels)
    assert order[0] == (conv, "_conv_fwd_planar") and order[-1] == (micro, "gemm_into")


def test_cached_is_false_for_what_no_cache_holds() -> None:
    from numba import types

    from cnncli.engine.kernels import elementwise

    never = (types.Array(types.int8, 3, "F"),)  # a signature no run compiles
    assert not warmup._cached(elementwise._relu_fwd, never)
    assert not warmup._cached(object(), never)  # anything unexpected: "unsure", not cached


def test_commands_say_they_compile_ahead_and_how_long_it_took(monkeypatch: Any) -> None:
    # a machine without the kernels, as compile_ahead would find it: bench says why it
    # waits before it waits, and eval asks for no training kernels
    asked: list[bool] = []

    def cold(steps: Any, training: bool = True, announce: Any = None) -> warmup.AheadOfRun:
        asked.append(training)
        announce(8, 2)
        return warmup.AheadOfRun(kernels=8, processes=2, seconds=39.4)

    monkeypatch.setattr(warmup, "compile_ahead", cold)
    result = runner.invoke(app, ["bench", "lenet5", "--batch", "2", "--iterations", "1"])
    assert result.exit_code == 0, result.output
    assert "compiling the 8 kernels LeNet-5 uses, in 2 processes" in result.stderr
    assert "compiled in 39.4 s" in result.stderr
    assert asked == [True]


def test_eval_compiles_ahead_only_what_evaluating_runs(tmp_path: Path, monkeypatch: Any) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text("name: tiny\ninput: 12x12x1\nlayers:\n  - conv: {filters: 4, size: 3}\n"
                    "  - relu\n  - fc: 3\n", encoding="utf-8")
    run = tmp_path / "run"
    trained = runner.invoke(app, ["train", str(spec), "--epochs", "1", "--train-size", "64",
                                  "--out", str(run), "--quiet"])
    assert trained.exit_code == 0, trained.output
    asked: list[bool] = []

    def cold(steps: Any, training: bool = True, announce: Any = None) -> warmup.AheadOfRun:
        asked.append(training)
        return warmup.AheadOfRun(kernels=0, processes=0, seconds=0.01)

    monkeypatch.setattr(warmup, "compile_ahead", cold)
    result = runner.invoke(app, ["eval", str(spec), "--weights", str(run / "last.npz")])
    assert result.exit_code == 0, result.output
    assert asked == [False]


def test_a_command_whose_compiling_ahead_gave_up_says_so(monkeypatch: Any) -> None:
    def gave_up(steps: Any, training: bool = True, announce: Any = None) -> warmup.AheadOfRun:
        announce(8, 2)
        return warmup.AheadOfRun(kernels=8, processes=0, seconds=1.0)

    monkeypatch.setattr(warmup, "compile_ahead", gave_up)
    result = runner.invoke(app, ["bench", "lenet5", "--batch", "2", "--iterations", "1"])
    assert result.exit_code == 0, result.output
    assert "could not compile them ahead; each compiles when the run first calls it" in \
        result.stderr


def test_a_warm_machine_hears_nothing_about_compiling() -> None:
    result = runner.invoke(app, ["bench", "lenet5", "--batch", "2", "--iterations", "1"])
    assert result.exit_code == 0, result.output
    assert "compil" not in result.stderr


def test_every_kernel_python_calls_returns_nothing() -> None:
    # a dry run's stand-in returns None; a kernel whose caller used a returned value would
    # end the dry run there, and what came after it would compile one process at a time
    import ast
    import inspect

    calls: dict[Any, set[Any]] = {}
    with warmup._recording(calls):
        for name, policy in warmup.FAMILIES:
            warmup._step(getattr(warmup, name), "float32", policy)  # none may raise
    assert len(calls) > 20
    for dispatcher in calls:
        tree = ast.parse(inspect.getsource(dispatcher.py_func))
        returns = [node for node in ast.walk(tree)
                   if isinstance(node, ast.Return) and node.value is not None]
        assert not returns, dispatcher.py_func.__name__


def test_compiling_processes_follow_the_threads_the_run_was_given() -> None:
    from cnncli import config

    before = config._configured
    try:
        config.configure_threads(1)  # `--threads 1`: one process compiles
        assert config.compile_workers(5) == 1
        config.configure_threads(2)
        assert config.compile_workers(5) == min(2, config.available_threads())
        assert config.compile_workers(1) == 1  # never more processes than kernels
    finally:
        config.configure_threads(before)


def test_a_narrowed_dry_run_records_what_the_full_net_calls() -> None:
    # FC layers run numpy: capping their width (AlexNet's 4096-wide fc6, fc7) leaves every
    # kernel and signature as they were and keeps a dry run of VGG16 to a second
    from cnncli.cli.options import open_spec

    spec = open_spec("alexnet")
    narrow = warmup._narrow(spec)
    widths = [layer.units for layer in narrow.layers if hasattr(layer, "units")]
    assert widths == [8, 8, 8]  # fc6, fc7 and the 1000-way fc8
    full, cut = _recorded(spec), _recorded(narrow)
    assert full == cut and "_conv_fwd_gemm" in full
    assert warmup._narrow(SMALL_NET) is SMALL_NET  # warm-up's own dict specs stay as they are


def test_compiling_ahead_gives_up_quietly_and_leaves_it_to_the_run(monkeypatch: Any) -> None:
    # a kernel no process can compile (here: a module that does not exist) must not stop
    # the command: the run compiles as it goes and reports real errors itself
    from cnncli import config

    bogus = {("cnncli.engine.kernels.no_such_module", "_kernel"): [("f32",)]}
    before = config._configured
    try:
        config.configure_threads(1)
        assert warmup.compile_kernels(bogus) == 0  # in this process
        config.configure_threads(2)
        if config.compile_workers(2) == 2:
            two = {**bogus, ("cnncli.engine.kernels.no_such_other", "_k"): [("f32",)]}
            assert warmup.compile_kernels(two) == 0  # in spawned processes
    finally:
        config.configure_threads(before)
