"""Options several commands share, and the parsers behind them.

A bad value raises (cnncli.errors.InputError); the boundary (cnncli.cli.boundary) turns it
into one line naming the option and exit code 2, like every other error.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Optional

import typer

from cnncli.cli.output import warn
from cnncli.engine.kernels.conv_algo import CONV_ALGOS, DEFAULT_CONV_ALGO
from cnncli.errors import InputError
from cnncli.spec import catalog
from cnncli.spec.parse import ROUNDINGS, Spec, Volume, load_spec, parse_volume


class Format(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"


class ReportFormat(StrEnum):
    """`check`'s formats: the others, and one self-contained HTML page."""

    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"
    html = "html"


class TableOrJson(StrEnum):
    table = "table"
    json = "json"


class Rounding(StrEnum):
    strict = "strict"
    floor = "floor"
    ceil = "ceil"


assert tuple(r.value for r in Rounding) == ROUNDINGS


class ConvAlgoChoice(StrEnum):
    """--conv-algo: cnncli/engine/kernels/conv_algo.py's policies."""

    auto = "auto"
    gemm = "gemm"
    winograd = "winograd"


assert tuple(a.value for a in ConvAlgoChoice) == CONV_ALGOS


def threads_callback(value: int | None) -> int | None:
    from cnncli.config import check_threads  # the one rule: cnncli.config decides threads

    warning = check_threads(value, "--threads")
    if warning:
        warn(warning)
    return value


def seed_callback(value: int | None) -> int | None:
    if value is not None and value < 0:  # numpy's generators take no negative seed
        raise InputError(f"--seed: expected an integer >= 0, got {value}")
    return value


SpecArg = Annotated[str, typer.Argument(
    metavar="SPEC", help="A spec file, or the name of a bundled architecture (see "
                         "`cnncli list`).", show_default=False)]
InputOpt = Annotated[Optional[str], typer.Option(
    "--input", help="Override the input volume, WIDTHxHEIGHTxDEPTH (e.g. 384x384x3).")]
RoundingOpt = Annotated[Optional[Rounding], typer.Option(
    "--rounding", help="Override the file's rounding: strict | floor | ceil.")]
FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="table | json | csv | markdown")]
TableOrJsonOpt = Annotated[TableOrJson, typer.Option("--format", "-f", help="table | json")]
ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", callback=threads_callback, show_default=False,
    help="Threads for the engine (at least 1; more than the cores only warns). "
         "\\[default: all cores]")]
CONV_ALGO_HELP = ("How 3x3 stride-1 convs run: gemm (im2col), winograd (F(4x4,3x3) on every "
                  "such layer) or auto (per layer by shape, from measured costs).")
ConvAlgoOpt = Annotated[ConvAlgoChoice, typer.Option(
    "--conv-algo", help=CONV_ALGO_HELP)]
DEFAULT_CONV = ConvAlgoChoice(DEFAULT_CONV_ALGO)
SeedOpt = Annotated[int, typer.Option("--seed", callback=seed_callback, help="Random seed (>= 0).")]


def open_spec(name: str) -> Spec:
    """The spec a SPEC argument names: a file, or a bundled architecture (cnncli.spec.catalog).
    Raises SpecError (unreadable, exit 2) or SpecInvalid (an invalid net, exit 1)."""
    return load_spec(catalog.resolve(name))


def input_override(text: str | None) -> Volume | None:
    """`--input WxHxD`, or None for the spec's own input."""
    if text is None:
        return None
    try:
        return parse_volume(text, "--input")
    except ValueError as exc:
        raise InputError(str(exc)) from None


def rounding_mode(rounding: Rounding | None) -> str | None:
    return rounding.value if rounding else None
