"""Plain data -> what a person reads: rich tables, JSON, CSV, Markdown.

Nothing here computes a figure; it only lays out what `stats` computed.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from cnncli.spec import Problem
from cnncli.stats import Report, Row

# One header table for the report's columns: (key, title, justify).
COLUMNS = (
    ("name", "layer", "left"),
    ("kind", "type", "left"),
    ("settings", "settings", "left"),
    ("output", "output [WxHxD]", "right"),
    ("activations", "activations", "right"),
    ("weights", "weights", "right"),
    ("biases", "biases", "right"),
    ("macs", "MACs", "right"),
    ("receptive_field", "RF", "right"),
    ("jump", "stride", "right"),
)


def human(n: float, unit: str = "") -> str:
    """3.2M-style figures as the notes write them (decimal multiples)."""
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= factor:
            return f"{n / factor:.2f}{suffix}{unit}"
    return f"{n:g}{unit}"


def binary_bytes(n: float) -> str:
    for factor, suffix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(n) >= factor:
            return f"{n / factor:.2f} {suffix}"
    return f"{n:.0f} B"


def _pair(p: Any) -> str:
    if p is None:
        return ""
    return str(p.h) if p.h == p.w else f"{p.h}x{p.w}"


def _cells(row: Row, tree: bool) -> list[str]:
    indent = "  " * row.depth if tree else ""
    if row.is_block:
        return [indent + row.name, row.kind, row.settings] + [""] * (len(COLUMNS) - 3)
    in_place = row.in_place
    return [
        indent + row.name.rsplit(".", 1)[-1] if tree else row.name,
        row.kind,
        row.settings,
        str(row.output),
        "(in place)" if in_place else f"{row.activations:,}",
        f"{row.weights:,}" if row.weights else "",
        f"{row.biases:,}" if row.biases else "",
        f"{row.macs:,}" if row.macs else "",
        _pair(row.receptive_field),
        _pair(row.jump),
    ]


def report_table(report: Report) -> Table:
    # Text, not str: rich would read a spec's name like "[/]" as markup (and raise)
    heading = Text(f"{report.spec.name}  input {report.input}  rounding {report.rounding}")
    table = Table(title=heading, title_justify="left", header_style="bold", pad_edge=False,
                  box=None)
    for key, title, justify in COLUMNS:
        # figures never wrap; the free-text settings column folds when the terminal is narrow
        table.add_column(title, justify=justify,  # type: ignore[arg-type]
                         no_wrap=key != "settings", overflow="fold")
    table.add_row("input", "input", "", str(report.input), f"{report.input.size:,}",
                  "", "", "", "1", "1")
    for row in report.rows:
        style = "dim" if row.is_block else None
        table.add_row(*(Text(c) for c in _cells(row, tree=True)), style=style)
    t = report.totals()
    table.add_section()
    table.add_row("total", "", "", str(report.output), f"{t['activations_per_image']:,}",
                  f"{t['weights']:,}", f"{t['biases']:,}", f"{t['macs']:,}",
                  _pair(report.receptive_field), _pair(report.jump), style="bold")
    return table


def summary_lines(report: Report) -> list[str]:
    t = report.totals()
    lines = [
        f"parameters   {t['parameters']:,} ({t['weights']:,} weights + {t['biases']:,} biases)"
        f" = {binary_bytes(t['parameter_bytes_float32'])} at float32",
        f"activations  {t['activations_per_image']:,} per image (forward, input included, "
        f"elementwise layers in place) = {binary_bytes(t['activation_bytes_per_image_float32'])}"
        " at float32",
        f"compute      {human(t['macs'])} MACs = {human(t['flops'])} FLOPs per image "
        "(1 MAC = 1 multiply-add = 2 FLOPs; conv, local and fc layers)",
    ]
    if report.receptive_field is not None and report.jump is not None:
        lines.append(f"output       {report.output}, receptive field "
                     f"{_pair(report.receptive_field)} px, total stride {_pair(report.jump)} px")
    return lines


def problem_text(p: Problem, kind: str) -> Text:
    where = f"line {p.line}: " if p.line else ""
    text = Text()
    text.append(f"{kind}: ", style="bold red" if kind == "error" else "yellow")
    text.append(where + p.message)
    if p.fix:
        text.append(f"\n    fix: {p.fix}", style="green")
    return text


def print_report(console: Console, report: Report, errors: Console | None = None,
                 show_table: bool = True) -> None:
    """The table, summary, rounding notes and hints on `console`; errors on `errors`
    (stderr in the CLI, so a pipe carries only the report)."""
    if show_table and report.valid:
        console.print(report_table(report))
        console.print()
        for line in summary_lines(report):
            console.print(Text(line))
    for p in report.rounded:
        console.print(problem_text(p, f"rounding ({report.rounding})"))
    for p in report.warnings:
        console.print(problem_text(p, "hint"))
    for p in report.errors:
        (errors or console).print(problem_text(p, "error"))


def report_json(report: Report) -> str:
    return json.dumps(report.as_dict(), indent=2)


_FLAT_KEYS = ("name", "kind", "depth", "settings", "input", "output", "activations", "in_place",
              "weights", "biases", "parameters", "macs", "receptive_field", "jump", "line")


def _flat(row: Row) -> list[Any]:
    d = row.as_dict()
    out = []
    for key in _FLAT_KEYS:
        v = d[key]
        if isinstance(v, dict):
            v = v.get("text") or f"{v['height']}x{v['width']}"
        out.append("" if v is None else v)
    return out


def report_csv(report: Report) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(_FLAT_KEYS)
    for row in report.rows:
        writer.writerow(_flat(row))
    return buf.getvalue()


def report_markdown(report: Report) -> str:
    head = [title for _, title, _ in COLUMNS]
    lines = [f"### {report.spec.name} (input {report.input}, rounding {report.rounding})", "",
             "| " + " | ".join(head) + " |",
             "|" + "|".join("---:" if j == "right" else "---" for _, _, j in COLUMNS) + "|"]
    for row in report.rows:
        cells = _cells(row, tree=False)
        if row.is_block:
            cells[0] = f"*{row.name}*"
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    t = report.totals()
    lines.append(f"| **total** | | | {report.output} | {t['activations_per_image']:,} | "
                 f"{t['weights']:,} | {t['biases']:,} | {t['macs']:,} | "
                 f"{_pair(report.receptive_field)} | {_pair(report.jump)} |")
    lines.append("")
    lines.extend(f"- {line}" for line in summary_lines(report))
    # what the table format prints below the table: rounding per layer, hints, errors
    for kind, found in ((f"rounding ({report.rounding})", report.rounded),
                        ("hint", report.warnings), ("error", report.errors)):
        for p in found:
            where = f"line {p.line}: " if p.line else ""
            fix = f" (fix: {p.fix})" if p.fix else ""
            lines.append(f"- {kind}: {where}{p.message}{fix}")
    return "\n".join(lines) + "\n"
