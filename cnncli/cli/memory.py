"""`cnncli memory`: will this net fit, and where does the memory go?

The estimate (cnncli.analysis.memory) is pure Python: no numpy, no numba. Only `--measure`
imports the engine, inside the command.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Optional

import typer

from cnncli.cli.options import (
    DEFAULT_CONV,
    ConvAlgoOpt,
    InputOpt,
    RoundingOpt,
    SpecArg,
    TableOrJson,
    TableOrJsonOpt,
    ThreadsOpt,
    input_override,
    open_spec,
    rounding_mode,
)
from cnncli.cli.output import err, out, print_json
from cnncli.render.memory import print_memory
from cnncli.render.units import binary_bytes as size


class Mode(StrEnum):
    train = "train"
    infer = "infer"


class Dtype(StrEnum):
    float32 = "float32"
    float64 = "float64"
    float16 = "float16"


class Optimizer(StrEnum):
    sgd = "sgd"
    momentum = "momentum"
    nesterov = "nesterov"
    adagrad = "adagrad"
    rmsprop = "rmsprop"
    adam = "adam"


def memory(
    spec: SpecArg,
    batch: Annotated[int, typer.Option(help="Images per step.", min=1)] = 64,
    mode: Annotated[Mode, typer.Option(
        help="train: one training step; infer: a forward pass that keeps only the live "
             "activations (the notes' test-time trick).")] = Mode.train,
    optimizer: Annotated[Optimizer, typer.Option(
        help="State per parameter: sgd none, momentum/nesterov/adagrad/rmsprop 1x, "
             "adam 2x.")] = Optimizer.momentum,
    dtype: Annotated[Dtype, typer.Option(
        help="Bytes per number: float32 4, float64 8, float16 2.")] = Dtype.float32,
    budget: Annotated[Optional[str], typer.Option(
        help="Find the largest batch whose peak fits, e.g. 12GiB, 512MiB, 8GB.")] = None,
    threads: ThreadsOpt = None,
    input: InputOpt = None,
    rounding: RoundingOpt = None,
    fmt: TableOrJsonOpt = TableOrJson.table,
    measure: Annotated[bool, typer.Option(
        "--measure", help="Also run one real step of the engine on random data and "
                          "report its measured peak (tracemalloc) next to the "
                          "estimate.")] = False,
    conv_algo: ConvAlgoOpt = DEFAULT_CONV,
    ranks: Annotated[int, typer.Option(
        help="Size one rank of a data-parallel run over N MPI ranks: --batch stays the "
             "global batch (each rank computes batch/N), plus the gradient buffer each "
             "rank allreduces; threads default to this machine's share per rank.",
        min=1)] = 1,
) -> None:
    """Itemised memory of a training step or inference pass; the peak and a budget.

    Input, activations kept
    for backward, their gradients at the worst moment, parameters, their gradients,
    optimizer state, workspace; the total, and the peak at one moment."""
    net = open_spec(spec)
    volume = input_override(input)
    mode_s = rounding_mode(rounding)
    # imported here, not at the top: every other command starts without it
    from cnncli.analysis.memory import default_threads, estimate, largest_batch, parse_bytes
    from cnncli.config import rank_threads
    from cnncli.training import distributed

    # what the engine would run: more than the cores only warns (cnncli.config); with
    # --ranks N, one rank's share of this machine's cores
    n_threads = min(threads or rank_threads(default_threads(), ranks, False), default_threads())
    algo = conv_algo.value  # each conv's workspace is its algorithm's (Winograd's V/M blocks)
    fit: dict[str, Any] | None = None
    dist: dict[str, Any] | None = None
    if budget is not None:
        limit = parse_bytes(budget)
        extra = 0  # --ranks: the gradient buffer a rank allreduces comes off the top
        if ranks > 1:
            extra = distributed.size_rank(estimate(
                net, 1, dtype.value, optimizer.value, mode.value, n_threads, volume,
                mode_s, algo), ranks, ranks)["allreduce_buffer_bytes"]
        best, best_peak, next_peak = largest_batch(
            net, limit - extra, dtype.value, optimizer.value, mode.value, n_threads, volume,
            mode_s, conv_algo=algo)
        fit = {"budget": budget, "budget_bytes": limit, "largest_batch": best,
               "peak_bytes": best_peak + extra,
               "next_batch_peak_bytes": next_peak + extra if next_peak else 0}
        if ranks > 1:
            fit["global_batch"] = best * ranks
        if best == 0:
            fit["peak_bytes"] = None
        else:
            batch = best
        global_batch = batch * ranks
    else:
        global_batch, batch = batch, distributed.per_rank_batch(batch, ranks)
    report = estimate(net, batch, dtype.value, optimizer.value, mode.value, n_threads,
                      volume, mode_s, algo)
    if ranks > 1:
        dist = distributed.size_rank(report, ranks, global_batch)
    measured: dict[str, Any] | None = None
    if measure and (fit is None or fit["largest_batch"]):
        from cnncli.engine.measure import measure as run_measure

        measured = run_measure(net, batch, dtype.value, optimizer.value, mode.value,
                               threads, volume, mode_s, conv_algo=algo)
        measured["estimate_error"] = report.peak / measured["peak_bytes"] - 1
    if fmt is TableOrJson.json:
        data = report.as_dict()
        if fit is not None:
            data["budget"] = fit
        if measured is not None:
            data["measured"] = measured
        if dist is not None:
            data["distributed"] = dist
        print_json(data)
    else:
        if dist is not None:
            out.print(distributed.rank_text(dist), soft_wrap=True)
        print_memory(out, report, fit, measured)
    if fit is not None and fit["largest_batch"] == 0:
        need = size(fit["next_batch_peak_bytes"])
        err.print(f"[bold red]does not fit:[/] one image needs {need} at its peak, "
                  f"more than {budget}")
        raise typer.Exit(1)
