"""`cnncli check`: a spec's arithmetic, the notes' per-layer table (pure Python, no numpy)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from cnncli.cli.options import (
    Format,
    FormatOpt,
    InputOpt,
    RoundingOpt,
    SpecArg,
    input_override,
    open_spec,
    rounding_mode,
)
from cnncli.cli.output import err, out, print_json, write


def check(
    spec: SpecArg,
    input: InputOpt = None,
    rounding: RoundingOpt = None,
    fmt: FormatOpt = Format.table,
    fc_to_conv: Annotated[bool, typer.Option(
        "--fc-to-conv", help="Check the net with its FC layers rewritten as convolutions "
                             "(sliding-window evaluation at a larger --input).")] = False,
) -> None:
    """Validate a spec's arithmetic and print the notes' per-layer table."""
    from cnncli import render
    from cnncli.stats import analyze, valid_input_sizes

    net = open_spec(spec)
    volume = input_override(input)
    mode = rounding_mode(rounding)
    sliding = None
    if fc_to_conv:
        from cnncli.convert import check_sliding, fc_to_conv_spec

        trained_at = net.input
        net = fc_to_conv_spec(net, mode)
        report = analyze(net, volume, mode)
        sliding = check_sliding(net, trained_at, report)
    else:
        report = analyze(net, volume, mode)
    if fmt is Format.json:
        data = report.as_dict()
        if sliding is not None:
            data["sliding_window"] = sliding
        print_json(data)
    elif fmt is Format.csv:
        write(render.report_csv(report))
    elif fmt is Format.markdown:
        write(render.report_markdown(report))
    else:
        render.print_report(out, report, errors=err)
        if sliding is not None:
            from cnncli.convert import print_sliding
            print_sliding(out, sliding)
    if fmt is not Format.table:
        for p in report.errors:
            err.print(render.problem_text(p, "error"))
    if report.errors:
        near = volume or net.input
        sizes = valid_input_sizes(net, near, mode)
        if sizes:
            err.print(Text(f"input sizes near {near} for which every layer is whole: "
                           f"{', '.join(str(v) for v in sizes)}", style="green"))
        err.print(Text(f"{len(report.errors)} error{'s' if len(report.errors) > 1 else ''}: "
                       f"{net.source} is not a valid net at {near}"))
        raise typer.Exit(1)
    if sliding is not None and not sliding["usable"]:
        raise typer.Exit(1)
