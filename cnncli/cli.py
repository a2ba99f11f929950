"""The typer app: parse options, call the library, render, map errors to exit codes.

Exit codes: 0 success, 1 the net (or the run) is invalid, 2 the input cannot be read.
Commands that need the engine import it inside the command, so `check` and `memory`
never load numba.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import Annotated, Any, NoReturn, Optional

import typer
from rich.console import Console
from rich.text import Text

from cnncli import catalog
from cnncli.spec import ROUNDINGS, Spec, SpecError, SpecInvalid, Volume, load_spec, parse_volume

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="The CS231n ConvNet notes as a tool: check, size, train and slide CNNs.")
# Piped output is read by scripts and diffs: never cut a figure to fit 80 columns.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 240)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 240)


class Format(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"


class Rounding(StrEnum):
    strict = "strict"
    floor = "floor"
    ceil = "ceil"


assert tuple(r.value for r in Rounding) == ROUNDINGS

SpecArg = Annotated[str, typer.Argument(
    help="A spec file, or the name of a bundled architecture (see `cnncli list`).")]
InputOpt = Annotated[Optional[str], typer.Option(
    "--input", help="Override the input volume, WIDTHxHEIGHTxDEPTH (e.g. 384x384x3).")]
RoundingOpt = Annotated[Optional[Rounding], typer.Option(
    "--rounding", help="Override the file's rounding: strict | floor | ceil.")]


def fail(message: str, code: int) -> NoReturn:
    """One line on stderr and the exit code; the message is printed verbatim (a path like
    '[/]' is text, not rich markup)."""
    err.print(Text.assemble(("error: ", "bold red"), message))
    raise typer.Exit(code)


def open_spec(name: str) -> Spec:
    """Load a spec; a file problem exits 2, an invalid net exits 1 with every problem."""
    try:
        return load_spec(catalog.resolve(name))
    except SpecError as exc:
        fail(str(exc), 2)
    except SpecInvalid as exc:
        report_invalid(name, exc)


def report_invalid(name: str, exc: SpecInvalid, as_json: bool = False) -> NoReturn:
    """Every problem of an invalid spec on stderr (and as JSON on stdout if asked); exit 1."""
    from cnncli.render import problem_text
    if as_json:
        import json
        print(json.dumps({"source": name, "valid": False,
                          "errors": [p.as_dict() for p in exc.problems]}, indent=2))
    for p in exc.problems:
        err.print(problem_text(p, "error"))
    err.print(Text(f"{len(exc.problems)} error{'s' if len(exc.problems) > 1 else ''} in {name}"))
    raise typer.Exit(1) from None


def input_override(text: str | None) -> Volume | None:
    if text is None:
        return None
    try:
        return parse_volume(text, "--input")
    except ValueError as exc:
        fail(str(exc), 2)


@app.command()
def check(
    spec: SpecArg,
    input: InputOpt = None,
    rounding: RoundingOpt = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="table | json | csv | markdown")]
    = Format.table,
    fc_to_conv: Annotated[bool, typer.Option(
        "--fc-to-conv", help="Check the net with its FC layers rewritten as convolutions "
                             "(sliding-window evaluation at a larger --input).")] = False,
    ranks: Annotated[Optional[int], typer.Option(
        "--ranks", min=1, help="Also size a data-parallel run over N MPI ranks: the gradient "
        "buffer each step allreduces and what a ring allreduce moves (float32).")] = None,
) -> None:
    """Validate a spec's arithmetic and print the notes' per-layer table."""
    from cnncli import render
    from cnncli.stats import analyze, valid_input_sizes

    try:
        net = load_spec(catalog.resolve(spec))
    except SpecError as exc:
        fail(str(exc), 2)
    except SpecInvalid as exc:
        report_invalid(spec, exc, as_json=fmt is Format.json)
    volume = input_override(input)
    mode = rounding.value if rounding else None
    if fc_to_conv:
        from cnncli.convert import check_sliding, fc_to_conv_spec
        try:
            trained_at = net.input
            net = fc_to_conv_spec(net, mode)
        except SpecInvalid as exc:
            for p in exc.problems:
                err.print(render.problem_text(p, "error"))
            raise typer.Exit(1) from None
        report = analyze(net, volume, mode)
        sliding = check_sliding(net, trained_at, report)
    else:
        report = analyze(net, volume, mode)
        sliding = None
    plan = None
    if ranks is not None:
        from cnncli.distributed import AllreducePlan
        plan = AllreducePlan(ranks, report.parameters, 4)
    if fmt is Format.json:
        data = report.as_dict()
        if sliding is not None:
            data["sliding_window"] = sliding
        if plan is not None:
            data["distributed"] = plan.as_dict()
        import json
        out.print_json(json.dumps(data)) if sys.stdout.isatty() else print(json.dumps(data,
                                                                                   indent=2))
    elif fmt is Format.csv:
        sys.stdout.write(render.report_csv(report))
    elif fmt is Format.markdown:
        sys.stdout.write(render.report_markdown(report))
    else:
        render.print_report(out, report, errors=err)
        if sliding is not None:
            from cnncli.convert import print_sliding
            print_sliding(out, sliding)
        if plan is not None:
            out.print(Text(plan.text(render.binary_bytes)), soft_wrap=True)
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


@app.command("list")
def list_architectures(
    fmt: Annotated[Format, typer.Option("--format", "-f",
                                        help="table | json | csv | markdown")] = Format.table,
) -> None:
    """The bundled architectures, with their parameter counts and MACs."""
    from rich.table import Table

    from cnncli.render import human
    from cnncli.stats import analyze

    rows: list[dict[str, Any]] = []
    for name in catalog.bundled_names():
        path = catalog.bundled_dir() / f"{name}.yaml"
        try:
            spec = load_spec(path)
            report = analyze(spec)
            rows.append({"name": name, "title": spec.name, "input": str(spec.input),
                         "parameters": report.parameters, "macs": report.macs,
                         "output": str(report.output), "valid": report.valid})
        except (SpecError, SpecInvalid) as exc:
            rows.append({"name": name, "title": "?", "input": "", "parameters": 0, "macs": 0,
                         "output": "", "valid": False, "error": str(exc)})
    if fmt is Format.json:
        import json
        print(json.dumps(rows, indent=2))
        return
    keys = ("name", "title", "input", "parameters", "macs", "output")
    if fmt is Format.csv:
        import csv
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(keys)
        writer.writerows([r[k] for k in keys] for r in rows)
        return
    if fmt is Format.markdown:
        print("| " + " | ".join(keys) + " |\n|---|---|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['name']} | {r['title']} | {r['input']} | {r['parameters']:,} | "
                  f"{human(r['macs'])} | {r['output']} |")
        return
    table = Table(header_style="bold", box=None, pad_edge=False)
    for title, justify in (("name", "left"), ("architecture", "left"), ("input", "right"),
                           ("parameters", "right"), ("MACs", "right"), ("output", "right")):
        table.add_column(title, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(r["name"], r["title"], r["input"], f"{r['parameters']:,}",
                      human(r["macs"]), r["output"])
    out.print(table)


# The other commands live in their own modules, each importing its heavy parts (numpy,
# numba, the engine) inside the command, so `check` and `memory` stay fast.
from cnncli import cli_engine, cli_memory, cli_slide, cli_train  # noqa: E402

for _module in (cli_engine, cli_memory, cli_train, cli_slide):
    _module.register(app)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except SystemExit as exc:
        from cnncli.distributed import exiting

        exiting(exc.code)  # under mpiexec: a rank failing early lets the others know
        raise


if __name__ == "__main__":
    main()
