"""`cnncli check`: a spec's arithmetic, the notes' per-layer table (pure Python, no numpy)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.text import Text

from cnncli.cli.options import (
    InputOpt,
    ReportFormat,
    RoundingOpt,
    SpecArg,
    input_override,
    open_spec,
    rounding_mode,
)
from cnncli.cli.output import err, out, print_json, write
from cnncli.errors import InputError


def check(
    spec: SpecArg,
    input: InputOpt = None,
    rounding: RoundingOpt = None,
    fmt: Annotated[ReportFormat, typer.Option(
        "--format", "-f", help="table | json | csv | markdown | html (one self-contained page: "
                               "the drawing, the table, the memory)")] = ReportFormat.table,
    output: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Write the json, csv, markdown or html report to this file.",
        show_default=False)] = None,
    ranks: Annotated[Optional[int], typer.Option(
        "--ranks", min=1, help="Also size a data-parallel run over N MPI ranks: the gradient "
        "buffer each step allreduces and what a ring allreduce moves (float32).")] = None,
    fc_to_conv: Annotated[bool, typer.Option(
        "--fc-to-conv", help="Check the net with its FC layers rewritten as convolutions "
                             "(sliding-window evaluation at a larger --input).")] = False,
    training: Annotated[bool, typer.Option(
        "--training", help="Also each layer's multiply-adds in a training step: forward, "
                           "backward to the input, backward to the weights.")] = False,
) -> None:
    """Validate a spec's arithmetic and print the notes' per-layer table."""
    from cnncli.analysis.report import analyze, valid_input_sizes
    from cnncli.render import tables as render

    if output is not None and fmt is ReportFormat.table:
        raise InputError("--out writes a file: pick its --format (json, csv, markdown or html)")
    net = open_spec(spec)
    volume = input_override(input)
    mode = rounding_mode(rounding)
    sliding = None
    if fc_to_conv:
        from cnncli.sliding.convert import check_sliding, fc_to_conv_spec

        trained_at = net.input
        net = fc_to_conv_spec(net, mode)
        report = analyze(net, volume, mode)
        sliding = check_sliding(net, trained_at, report)
    else:
        report = analyze(net, volume, mode)
    plan = None
    if ranks is not None:
        from cnncli.training.distributed import AllreducePlan

        plan = AllreducePlan(ranks, report.parameters, 4)
    costs = None
    if training and report.valid:
        from cnncli.analysis.report import training_costs

        costs = training_costs(report)
    if output is not None or fmt is ReportFormat.html:
        _write_report(report, fmt, output, sliding, plan, costs)
    elif fmt is ReportFormat.json:
        print_json(_report_data(report, sliding, plan, costs))
    elif fmt is ReportFormat.csv:
        write(render.report_csv(report))
    elif fmt is ReportFormat.markdown:
        write(render.report_markdown(report))
    else:
        render.print_report(out, report, errors=err)
        if sliding is not None:
            from cnncli.sliding.convert import print_sliding
            print_sliding(out, sliding)
        if plan is not None:
            from cnncli.render.units import binary_bytes

            out.print(Text(plan.text(binary_bytes)), soft_wrap=True)
        if costs is not None:
            render.print_laid(out, render.training_layout(costs, out.width))
    if fmt is not ReportFormat.table:
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


def _report_data(report: Any, sliding: dict[str, Any] | None, plan: Any,
                 costs: dict[str, Any] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = report.as_dict()
    if costs is not None:
        data["training"] = costs
    if sliding is not None:
        data["sliding_window"] = sliding
    if plan is not None:
        data["distributed"] = plan.as_dict()
    return data


def _write_report(report: Any, fmt: ReportFormat, output: Path | None,
                  sliding: dict[str, Any] | None, plan: Any,
                  costs: dict[str, Any] | None = None) -> None:
    """A report in a file format, to `output` (written whole, then renamed) or stdout."""
    import json

    from cnncli.render import tables as render

    if fmt is ReportFormat.html:
        from cnncli.render.pictures.html import report_page
        text = report_page(report)
    elif fmt is ReportFormat.json:
        text = json.dumps(_report_data(report, sliding, plan, costs), indent=2,
                          allow_nan=False) + "\n"
    elif fmt is ReportFormat.csv:
        text = render.report_csv(report)
    else:
        text = render.report_markdown(report)
    if output is None:
        write(text)
        return
    from cnncli.files import write_text

    write_text(output, text)
    out.print(Text(f"wrote {output}"))
