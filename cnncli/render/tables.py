"""Plain data -> what a person reads: tables laid out to the terminal, JSON, CSV, Markdown.

Nothing here computes a figure; it only lays out what `stats` computed.
"""

from __future__ import annotations

import csv
import io
import json
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Union

from rich.cells import cell_len
from rich.console import Console
from rich.control import strip_control_codes
from rich.segment import Segment
from rich.style import Style
from rich.text import Text

from cnncli.analysis.report import Report, Row
from cnncli.render.units import binary_bytes, human
from cnncli.spec.parse import Problem

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


# ------------------------------------------------------------------ tables laid out to a width
#
# Tables are laid out here rather than by rich's Table, for two reasons: rich measures and
# renders every cell through its layout machinery (about half a millisecond a cell on our
# machines: a minute for a 10,000-layer net, where the CSV takes a fraction of a second),
# and on a terminal narrower than the table it crops figures without a mark (an RF of 10
# shows as "1"). This layout is one pass over plain strings, and it never cuts a figure.
# When the table is wider than the terminal, in this order:
#   1. free-text columns (settings) wrap at spaces, down to their longest word;
#   2. whole columns are left out, least important first (each table gives its order),
#      and a note under the table names them;
#   3. if what is left still does not fit, each row becomes a record: its name on one
#      line, then one "title  value" line per figure.
# Where the table fits, the lines are what rich's Table(box=None, pad_edge=False) printed,
# byte for byte (the golden files pin it): columns two spaces apart, every line padded to
# the table's width, the title left-justified above it; with pad_edge=True, one space more
# at each end of the lines below the title, as rich's default Table(box=None) prints.

_GAP = 2  # spaces between columns

# A row's style: one for the whole row, or one per cell (a class's colour, a FAIL in red).
RowStyle = Union[str, None, tuple[Union[str, None], ...]]
TableRow = tuple[Sequence[str], RowStyle]
# A laid-out line's style: one for the whole line, or the (text, style) pieces it is made of.
LineStyle = Union[str, None, tuple[tuple[str, Union[str, None]], ...]]


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    right: bool = False  # figures align right
    wraps: bool = False  # free text, which may wrap at spaces


@dataclass
class Laid:
    """A table laid out to a width: lines (text, rich style), and what had to give."""

    lines: list[tuple[str, LineStyle]]
    left_out: list[str]  # titles of the columns left out, in the order they went
    records: bool  # one record per row instead of a table
    width: int

    def note(self) -> str | None:
        """The line that says what a narrow terminal cost, or None if nothing."""
        if self.records:
            return (f"note: one record per row to fit {self.width} columns (a wider terminal, "
                    "or piped output, shows the table)")
        if self.left_out:
            return (f"note: left out to fit {self.width} columns: {', '.join(self.left_out)} "
                    "(a wider terminal, or piped output, shows them)")
        return None


def _cells_wide(text: str) -> int:
    """Terminal cells `text` takes: its length for printable ASCII (nearly every cell,
    and the fast case for 10,000-layer tables), else rich's measure (wide characters)."""
    return len(text) if text.isascii() and text.isprintable() else cell_len(text)


def _longest_word(text: str) -> int:
    return max((_cells_wide(word) for word in text.split()), default=0)


def lay_out(title: str, columns: Sequence[Column], header_style: str | None,
            rows: Sequence[TableRow], width: int, leave_out: Sequence[str] = (),
            pad_edge: bool = False) -> Laid:
    """`rows` (cells, style) under a header of `columns`, to fit `width`; the columns
    named (by key) in `leave_out` may be left out, first named first."""
    natural = [_cells_wide(c.title) for c in columns]
    shortest = list(natural)
    for cells, _ in rows:
        for i, cell in enumerate(cells):
            n = _cells_wide(cell)
            if n > natural[i]:
                natural[i] = n
    for i, column in enumerate(columns):
        if column.wraps:
            shortest[i] = max([shortest[i]] + [_longest_word(cells[i]) for cells, _ in rows])
        else:
            shortest[i] = natural[i]
    order = [i for key in leave_out for i, c in enumerate(columns) if c.key == key]
    edge = 1 if pad_edge else 0
    for n_out in range(len(order) + 1):
        kept = [i for i in range(len(columns)) if i not in order[:n_out]]
        widths = _fit(kept, natural, shortest, width - 2 * edge)
        if widths is not None:
            lines = _table_lines(title, columns, header_style, rows, kept, widths, edge)
            return Laid(lines, [columns[i].title for i in order[:n_out]], False, width)
    return Laid(_record_lines(title, columns, rows, width), [], True, width)


def _fit(kept: list[int], natural: list[int], shortest: list[int],
         width: int) -> dict[int, int] | None:
    """Column widths for `kept` within `width`, narrowing free text first; None if they
    cannot fit. Of several free-text columns the widest gives first, a cell at a time, so
    they end up about as wide as each other (not the first one squeezed to a word)."""
    widths = {i: natural[i] for i in kept}
    excess = sum(widths.values()) + _GAP * (len(kept) - 1) - width
    if excess > sum(natural[i] - shortest[i] for i in kept):
        return None
    while excess > 0:
        i = max((i for i in kept if widths[i] > shortest[i]), key=lambda i: widths[i])
        widths[i] -= 1
        excess -= 1
    return widths


def _pad(text: str, width: int, right: bool) -> str:
    if text.isascii() and text.isprintable():
        return text.rjust(width) if right else text.ljust(width)
    fill = " " * (width - cell_len(text))
    return fill + text if right else text + fill


def _title_lines(title: str, width: int) -> list[str]:
    """The title wrapped as rich wraps it (at spaces, not hyphens); none for no title."""
    if not title:
        return []
    return textwrap.wrap(title, max(1, width), break_on_hyphens=False) or [""]


def _line(padded: list[str], style: RowStyle, kept: list[int],
          edge: int) -> tuple[str, LineStyle]:
    """Padded cells joined into a line (`edge` spaces at each end), with the row's style,
    or with the pieces that carry each cell's own style."""
    gap, margin = " " * _GAP, " " * edge
    text = margin + gap.join(padded) + margin
    if not isinstance(style, tuple):
        return text, style
    pieces: list[tuple[str, str | None]] = [(margin, None)] if edge else []
    for n, (cell, i) in enumerate(zip(padded, kept, strict=True)):
        pieces.extend([(gap, None)] if n else [])
        pieces.append((cell, style[i]))
    pieces.extend([(margin, None)] if edge else [])
    return text, tuple(pieces)


def _table_lines(title: str, columns: Sequence[Column], header_style: str | None,
                 rows: Sequence[TableRow], kept: list[int], widths: dict[int, int],
                 edge: int = 0) -> list[tuple[str, LineStyle]]:
    table_width = sum(widths.values()) + _GAP * (len(kept) - 1) + 2 * edge
    # rich's "table.title" style; a title longer than the table wraps within its width
    lines: list[tuple[str, LineStyle]] = [
        (_pad(part, table_width, False), "italic")
        for part in _title_lines(title, table_width)]
    lines.append(_line([_pad(columns[i].title, widths[i], columns[i].right) for i in kept],
                       header_style, kept, edge))
    for cells, style in rows:
        folded = {i: textwrap.wrap(cells[i], widths[i], break_long_words=False,
                                   break_on_hyphens=False)
                  for i in kept if columns[i].wraps and _cells_wide(cells[i]) > widths[i]}
        if not folded:
            lines.append(_line([_pad(cells[i], widths[i], columns[i].right) for i in kept],
                               style, kept, edge))
            continue
        # a free-text cell wrapped over several lines; the other cells sit on the first
        for n in range(max(len(parts) for parts in folded.values())):
            line = []
            for i in kept:
                if i in folded:
                    cell = folded[i][n] if n < len(folded[i]) else ""
                else:
                    cell = cells[i] if n == 0 else ""
                line.append(_pad(cell, widths[i], columns[i].right))
            lines.append(_line(line, style, kept, edge))
    return lines


def _record_lines(title: str, columns: Sequence[Column], rows: Sequence[TableRow],
                  width: int) -> list[tuple[str, LineStyle]]:
    """One record per row: the first cell (the name, tree indent kept) on its own line,
    then "title  value" for every other non-empty cell. A value wider than the terminal
    is left whole for the terminal to wrap."""
    label = max(_cells_wide(c.title) for c in columns[1:])
    lines: list[tuple[str, LineStyle]] = [(part, "italic") for part in _title_lines(title, width)]
    for cells, style in rows:
        name = cells[0]
        lines.append((name, style[0] if isinstance(style, tuple) else style))
        indent = " " * (len(name) - len(name.lstrip()) + 2)
        for i, (column, cell) in enumerate(zip(columns[1:], cells[1:], strict=True), 1):
            if not cell:
                continue
            head = f"{indent}{_pad(column.title, label, False)}  "
            parts = [cell]
            if column.wraps:
                room = max(width - len(head), _longest_word(cell))
                parts = textwrap.wrap(cell, room, break_long_words=False,
                                      break_on_hyphens=False) or [cell]
            heads = [head] + [" " * len(head)] * (len(parts) - 1)
            if isinstance(style, tuple):  # the title plain, the value in its cell's style
                lines.extend((h + part, ((h, None), (part, style[i])))
                             for h, part in zip(heads, parts, strict=True))
            else:
                lines.extend((h + part, style) for h, part in zip(heads, parts, strict=True))
    return lines


class _Lines:
    """Laid-out lines as rich segments, one per line: nothing for rich to measure, wrap or
    crop (the layout already fits, or deliberately leaves a record's long value whole for
    the terminal to wrap). Control codes in a name are dropped, as rich's Text drops them."""

    def __init__(self, lines: list[tuple[str, LineStyle]]):
        self.lines = lines

    def __rich_console__(self, console: Console, options: Any) -> Iterator[Segment]:
        styles: dict[str | None, Style | None] = {None: None}

        def segment(text: str, style: str | None) -> Segment:
            if style not in styles:
                styles[style] = console.get_style(style) if style else None
            return Segment(text if text.isascii() and text.isprintable()
                           else strip_control_codes(text), styles[style])

        newline = Segment.line()
        for line, style in self.lines:
            if isinstance(style, tuple):
                for text, piece_style in style:
                    yield segment(text, piece_style)
            else:
                yield segment(line, style)
            yield newline


def print_laid(console: Console, laid: Laid) -> None:
    console.print(_Lines(laid.lines), end="", soft_wrap=True)
    note = laid.note()
    if note:
        console.print(Text(note, style="dim"))


# The report's columns, least important first, as a narrow terminal leaves them out: the
# notes' own table is layer, output, memory (activations) and weights, so these stay
# longest; biases are small next to weights, the receptive field and stride describe
# position, settings repeat the spec file, the type is usually in the name, MACs last.
REPORT_LEAVE_OUT = ("biases", "jump", "receptive_field", "settings", "kind", "macs", "weights",
                    "activations")


def report_layout(report: Report, width: int) -> Laid:
    heading = f"{report.spec.name}  input {report.input}  rounding {report.rounding}"
    columns = [Column(key, title, justify == "right", key == "settings")
               for key, title, justify in COLUMNS]
    rows: list[TableRow] = [
        (["input", "input", "", str(report.input), f"{report.input.size:,}",
          "", "", "", "1", "1"], None)]
    rows.extend((_cells(row, tree=True), "dim" if row.is_block else None)
                for row in report.rows)
    t = report.totals()
    rows.append((["total", "", "", str(report.output), f"{t['activations_per_image']:,}",
                  f"{t['weights']:,}", f"{t['biases']:,}", f"{t['macs']:,}",
                  _pair(report.receptive_field), _pair(report.jump)], "bold"))
    return lay_out(heading, columns, "bold", rows, width, REPORT_LEAVE_OUT)


# `cnncli bench`: the rows of `profile.profile_layers`, as a tree like the check report's.
BENCH_COLUMNS = (
    Column("name", "layer"), Column("kind", "type"), Column("algorithm", "algorithm"),
    Column("output", "output", right=True),
    Column("forward_ms", "forward ms", right=True),
    Column("backward_ms", "backward ms", right=True),
    Column("gflops_forward", "GFLOP/s fwd", right=True),
    Column("gflops_total", "GFLOP/s fwd+bwd", right=True), Column("share", "share", right=True),
    Column("matrices", "matrices", wraps=True),
)
# what a narrow terminal gives up first: the times per layer are the point of the table,
# then which algorithm ran; the matrix shapes wrap before they go
BENCH_LEAVE_OUT = ("gflops_forward", "kind", "output", "gflops_total", "share", "matrices")


def bench_layout(result: dict[str, Any], width: int) -> Laid:
    heading = (f"{result['spec']}: batch {result['batch']}, float32, {result['threads']} "
               f"threads, --conv-algo {result.get('conv_algo', 'gemm')}, median of "
               f"{result['iterations']}")
    rows: list[TableRow] = []
    for r in result["layers"]:
        indent = "  " * r["depth"]
        if r["block"]:
            rows.append(([indent + r["name"], r["kind"]] + [""] * 8, "dim"))
            continue
        rows.append(([indent + r["name"].rsplit(".", 1)[-1], r["kind"], r.get("algorithm") or "",
                      r["output"] or "", f"{r['forward_ms']:.2f}", f"{r['backward_ms']:.2f}",
                      f"{r['gflops_forward']:.1f}" if r["gflops_forward"] else "",
                      f"{r['gflops_total']:.1f}" if r["gflops_total"] else "",
                      f"{r['share']:.0%}", r.get("matrices") or ""], None))
    rows.append((["total", "", "", "", f"{result['forward_ms']:.2f}",
                  f"{result['backward_ms']:.2f}", "", "", "100%" if result["total_ms"] else "",
                  ""], "bold"))
    return lay_out(heading, BENCH_COLUMNS, "bold", rows, width, BENCH_LEAVE_OUT)


TRAINING_COLUMNS = (
    Column("name", "layer"), Column("kind", "type"),
    Column("forward", "forward MACs", right=True),
    Column("backward_data", "backward dL/dx", right=True),
    Column("backward_weights", "backward dL/dW", right=True),
    Column("total", "step MACs", right=True), Column("share", "share", right=True),
)


def training_layout(costs: dict[str, Any], width: int) -> Laid:
    total = costs["totals"]["total"]
    rows: list[TableRow] = []
    for r in costs["layers"]:
        if not r["total"]:
            continue
        # full names (res4.conv1): the table has no block headings to say whose layer it is
        rows.append(([r["name"], r["kind"],
                      human(r["forward"]), human(r["backward_data"]) if r["backward_data"]
                      else "-", human(r["backward_weights"]), human(r["total"]),
                      f"{r['total'] / total:.0%}" if total else ""], None))
    t = costs["totals"]
    rows.append((["total", "", human(t["forward"]), human(t["backward_data"]),
                  human(t["backward_weights"]), human(total), "100%" if total else ""], "bold"))
    return lay_out("training step multiply-adds per image (forward, backward to the input, "
                   "backward to the weights)", TRAINING_COLUMNS, "bold", rows, width,
                   ("kind", "share"))


def print_bench(console: Console, result: dict[str, Any]) -> None:
    print_laid(console, bench_layout(result, console.width))
    rate = result["images_per_s"]
    console.print(Text(
        f"whole step (forward + backward): {result['step_ms']:.1f} ms = "
        f"{f'{rate:,.0f}' if rate >= 100 else f'{rate:.3g}'} images/s; the rows add up to "
        f"{result['total_ms']:.1f} ms (the rest is the stopwatches and the walk between "
        "layers)"))


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
        print_laid(console, report_layout(report, console.width))
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
