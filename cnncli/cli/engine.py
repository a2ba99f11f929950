"""Engine commands: `cnncli gradcheck`, `cnncli bench` and `cnncli warmup` (numba loads
only inside them)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import typer

from cnncli.cli.options import (
    DEFAULT_CONV,
    ConvAlgoOpt,
    InputOpt,
    SeedOpt,
    SpecArg,
    TableOrJson,
    TableOrJsonOpt,
    ThreadsOpt,
    input_override,
    open_spec,
)
from cnncli.cli.output import err, out, print_json
from cnncli.spec.parse import Spec, Volume

if TYPE_CHECKING:
    from rich.console import Console

    from cnncli.engine.gradcheck import Check
    from cnncli.render.tables import Laid


def compiling_line(kernels: int, processes: int, net: str = "") -> str:
    """What a command says before it compiles kernels ahead (`net`: whose they are)."""
    what = f"{kernels} kernel{'s' if kernels != 1 else ''}"
    if net:
        what = f"the {what} {net} uses"
    return (f"compiling {what}, in {processes} process{'es' if processes != 1 else ''} "
            "(once per machine: numba caches them on disk)")


def compile_first(spec: Spec, dtype: str, conv_algo: str, training: bool = True,
                  quiet: bool = False, also: Sequence[Spec] = ()) -> None:
    """Before a command's first pass on a machine that has not compiled what it will run:
    compile that side by side now (cnncli.engine.warmup.compile_ahead) and say so on
    stderr, instead of a first pass that sits for a minute compiling one kernel at a time.
    `also`: other nets the command runs (slide's original net beside its converted one).
    A machine that has them pays only the dry run (0.2 s for cifar_small, 1.5 s for VGG16)
    and hears nothing."""
    from rich.markup import escape

    from cnncli.engine.warmup import compile_ahead

    def announce(kernels: int, processes: int) -> None:
        if not quiet:
            err.print(escape(compiling_line(kernels, processes, spec.name)), soft_wrap=True)

    ahead = compile_ahead([(net, dtype, conv_algo) for net in (spec, *also)],
                          training=training, announce=announce)
    if ahead.kernels and not quiet:
        err.print(f"compiled in {ahead.seconds:.1f} s" if ahead.processes else
                  "could not compile them ahead; each compiles when the run first calls it")


def smallest_valid_input(spec: Spec, start: int = 16) -> Volume:
    """The smallest square input (same depth) at which every layer is whole: gradient
    checks run in float64, and small volumes keep them to seconds."""
    from cnncli.analysis.report import analyze

    for size in range(start, max(start, spec.input.w) + 1):
        volume = Volume(size, size, spec.input.d)
        if analyze(spec, volume).valid:
            return volume
    return spec.input


def gradcheck(
    spec: SpecArg,
    input: InputOpt = None,
    batch: Annotated[int, typer.Option(help="Images per check.", min=1)] = 2,
    samples: Annotated[int, typer.Option(help="Entries sampled per tensor.", min=1)] = 8,
    seed: SeedOpt = 0,
    fmt: TableOrJsonOpt = TableOrJson.table,
    conv_algo: ConvAlgoOpt = DEFAULT_CONV,
) -> None:
    """Finite-difference gradient check in float64, every layer and the whole net.

    Centred differences at sampled entries; fails (exit 1) if any relative error exceeds
    1e-6 or an analytic gradient is identically zero where the numeric one is not."""
    import numpy as np

    from cnncli.engine.gradcheck import THRESHOLD, check_network
    from cnncli.engine.network import Network

    net_spec = open_spec(spec)
    volume = input_override(input) or smallest_valid_input(net_spec)
    net = Network(net_spec, volume, dtype=np.float64, seed=seed, conv_algo=conv_algo.value)
    started = time.perf_counter()
    checks = check_network(net, batch=batch, samples=samples, seed=seed)
    elapsed = time.perf_counter() - started
    failed = [c for c in checks if not c.passed]
    if fmt is TableOrJson.json:
        print_json({"input": str(volume), "threshold": THRESHOLD, "passed": not failed,
                    "checks": [c.as_dict() for c in checks]})
    else:
        print_gradcheck(out, f"{net_spec.name} at {volume}", samples, checks, elapsed)
    if failed:
        err.print(f"[bold red]{len(failed)} gradient check(s) failed[/]")
        raise typer.Exit(1)


# what a narrow terminal gives up first: the error and its verdict are the point
GRADCHECK_LEAVE_OUT = ("samples", "kinks", "shape")


def gradcheck_layout(net: str, samples: int, checks: list[Check], width: int) -> Laid:
    """One row per check: the layer, what was checked, the worst error and the verdict."""
    from cnncli.render.tables import Column, TableRow, lay_out

    columns = (Column("layer", "layer"), Column("what", "gradient of"),
               Column("shape", "shape", right=True), Column("samples", "samples", right=True),
               Column("kinks", "kinks", right=True),
               Column("error", "max rel. error", right=True),
               Column("verdict", "", wraps=True))
    rows: list[TableRow] = []
    for c in checks:
        verdict, style = ("ok", "green") if c.passed else ("FAIL", "bold red")
        if c.analytic_all_zero and not c.numeric_all_zero:
            verdict = "FAIL (analytic gradient is all zero)"
        cells = [c.layer, c.what, "x".join(map(str, c.shape)), str(c.samples),
                 str(c.kinks) if c.kinks else "", f"{c.max_rel_error:.2e}", verdict]
        rows.append((cells, (None,) * 6 + (style,)))
    return lay_out(f"gradient check of {net}, float64, centred differences, {samples} "
                   "samples per tensor", columns, "bold", rows, width, GRADCHECK_LEAVE_OUT,
                   pad_edge=True)


def print_gradcheck(console: Console, net: str, samples: int, checks: list[Check],
                    elapsed: float) -> None:
    from cnncli.engine.gradcheck import THRESHOLD
    from cnncli.render.tables import print_laid

    print_laid(console, gradcheck_layout(net, samples, checks, console.width))
    worst = max(checks, key=lambda c: c.max_rel_error)
    kinks = sum(c.kinks for c in checks)
    console.print(f"{len(checks)} checks in {elapsed:.1f} s; worst {worst.max_rel_error:.2e} "
                  f"({worst.layer} {worst.what}); threshold {THRESHOLD:g}"
                  + (f"; {kinks} sampled entries skipped: their +-h steps flipped a ReLU "
                     "or max-pool winner (a kink), where differences measure the jump"
                     if kinks else ""))


def warmup(
    specs: Annotated[list[str] | None, typer.Argument(
        metavar="SPEC", help="Nets to prepare: bundled names or YAML files. "
        "None: every kernel the engine has.", show_default=False)] = None,
    float64: Annotated[bool, typer.Option(
        "--float64", help="Also the float64 kernels (gradcheck runs in float64).")] = False,
    conv_algo: ConvAlgoOpt = DEFAULT_CONV,
) -> None:
    """Compile the engine's kernels ahead of a run (numba caches them on disk).

    Not needed: a run compiles what it uses the first time, once per machine. With
    SPECs: what training and evaluating those nets needs; without: every kernel, in
    float32 (what train, eval, slide and bench run), compiled by one process per core."""
    from rich.markup import escape

    from cnncli.engine.warmup import warm_up_all, warm_up_nets

    dtypes = ("float32", "float64") if float64 else ("float32",)

    def announce(kernels: int, processes: int) -> None:
        # said before the minute or two of compiling starts; a warm machine hears nothing
        err.print(escape(compiling_line(kernels, processes)), soft_wrap=True)

    if specs:
        nets = [open_spec(spec) for spec in specs]  # every spec readable before any compiles
        seconds = warm_up_nets(nets, dtypes, conv_algo.value, announce)
        what = f"the kernels {', '.join(specs)} {'use' if len(specs) > 1 else 'uses'}"
    else:
        seconds = warm_up_all(dtypes, announce)
        what = "every engine kernel"
    out.print(f"{what} ({', '.join(dtypes)}) compiled and cached in {seconds:.1f} s")


def bench(
    spec: SpecArg,
    input: InputOpt = None,
    batch: Annotated[int, typer.Option(help="Batch size.", min=1)] = 64,
    iterations: Annotated[int, typer.Option(help="Timed passes (after one warm-up).",
                                            min=1)] = 5,
    threads: ThreadsOpt = None,
    fmt: TableOrJsonOpt = TableOrJson.table,
    conv_algo: ConvAlgoOpt = DEFAULT_CONV,
) -> None:
    """Per-layer forward and backward time and GFLOP/s, like `caffe time`.

    Find the slow layer of any spec: every layer, inside residual and concat blocks
    too, and each block's add or concatenation."""
    from cnncli.engine.profile import profile_layers

    net_spec = open_spec(spec)
    compile_first(net_spec, "float32", conv_algo.value)  # not inside the warm-up pass
    result = profile_layers(net_spec, input_override(input), batch, iterations, threads,
                            conv_algo.value)
    if fmt is TableOrJson.json:
        print_json(result)
        return
    from cnncli.render.tables import print_bench
    print_bench(out, result)
