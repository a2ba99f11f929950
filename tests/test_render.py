"""The check table on a terminal of any width, and on nets of any depth: a figure is
printed whole or its column is left out with a note saying so, and laying out the table
costs the same per layer whether the net has a thousand layers or three thousand."""

from __future__ import annotations

import io
import re
from collections import Counter

import pytest
from rich.console import Console

from cnncli import catalog, render
from cnncli.spec import load_spec, parse_spec
from cnncli.stats import Report, analyze

# the check table's columns whose cells are right-justified (figures)
RIGHT = ("output [WxHxD]", "activations", "weights", "biases", "MACs", "RF", "stride")


def printed(report: Report, width: int) -> str:
    console = Console(file=io.StringIO(), width=width, highlight=False)
    render.print_report(console, report)
    return console.file.getvalue()  # type: ignore[attr-defined]


def figures_by_row(wide: str) -> list[tuple[str, int, list[tuple[str, str]]]]:
    """From a table printed wide enough to fit: per row, its name, indent and the
    (column title, token) of every token holding a digit. A right-justified cell ends
    where its column's title ends; a left-justified one starts at or after its title."""
    lines = wide.splitlines()
    header = lines[1]
    titles = [(m.group(), m.start(), m.end())
              for m in re.finditer(r"output \[WxHxD\]|\S+", header)]
    rows = []
    for line in lines[2:]:
        if not line.strip():
            break
        figures = []
        for m in re.finditer(r"\S+", line):
            if not re.search(r"\d", m.group()):
                continue
            column = next((t for t, _, end in titles if t in RIGHT and end == m.end()), None)
            if column is None:
                column = [t for t, start, _ in titles if t not in RIGHT and start <= m.start()][-1]
            figures.append((column, m.group()))
        name = line.split()[0]
        rows.append((name, len(line) - len(line.lstrip()), figures))
    return rows


def row_chunks(narrow: str, rows: list[tuple[str, int, list[tuple[str, str]]]]) -> list[str]:
    """The narrow print cut into one piece per row: a row starts on the line that begins
    with its name at its indent (a table line or a record's first line)."""
    lines = narrow.splitlines()
    starts = []
    at = 0
    for name, indent, _ in rows:
        while at < len(lines) and not (lines[at].split()[:1] == [name] and
                                       len(lines[at]) - len(lines[at].lstrip()) == indent):
            at += 1
        assert at < len(lines), f"the row {name!r} is cut or missing"
        starts.append(at)
        at += 1
    end = next(i for i in range(starts[-1], len(lines)) if not lines[i].strip())
    return ["\n".join(lines[a:b]) for a, b in zip(starts, starts[1:] + [end], strict=True)]


@pytest.mark.parametrize("name", ["vgg16", "resnet18", "googlenet"])
@pytest.mark.parametrize("width", [24, 40, 60, 80])
def test_narrow_terminal_never_cuts_a_number(name: str, width: int) -> None:
    report = analyze(load_spec(catalog.resolve(name)))
    wide, narrow = printed(report, 240), printed(report, width)
    laid = render.report_layout(report, width)
    left_out = set(laid.left_out)
    rows = figures_by_row(wide)
    for (row, _, figures), chunk in zip(rows, row_chunks(narrow, rows), strict=True):
        shown = chunk.split()
        for column, figure in figures:
            assert figure in shown or column in left_out, \
                f"{name} at {width} columns: {row}'s {column} {figure!r} is cut or missing"
    said = " ".join(narrow.split())  # the note may wrap at the terminal's width
    if laid.records:
        assert "one record per row to fit" in said
    elif left_out:
        assert f"left out to fit {width} columns: {', '.join(laid.left_out)}" in said
        assert all(len(line) <= width for line, _ in laid.lines)
    else:
        assert "left out" not in said


def test_narrow_table_leaves_out_the_least_important_columns_first() -> None:
    report = analyze(load_spec(catalog.resolve("vgg16")))
    assert render.report_layout(report, 240).left_out == []
    at_80 = render.report_layout(report, 80).left_out
    at_60 = render.report_layout(report, 60).left_out
    # the notes' own columns (layer, output, activations, weights) outlast the others
    assert at_80 == ["biases", "stride", "RF", "settings"]
    assert at_60[:len(at_80)] == at_80 and len(at_60) > len(at_80)
    assert not {"layer", "output [WxHxD]", "activations"} & set(at_60)


def test_settings_wrap_at_spaces_before_any_column_is_left_out() -> None:
    report = analyze(load_spec(catalog.resolve("cifar_small")))
    fits = max(len(line) for line, _ in render.report_layout(report, 240).lines)
    laid = render.report_layout(report, fits - 5)
    assert laid.left_out == [] and not laid.records
    text = "\n".join(line for line, _ in laid.lines)
    assert "32 filters, 3, pad 1" not in text
    assert "32 filters," in text and "pad 1" in text  # one cell over two lines
    assert max(len(line) for line, _ in laid.lines) <= fits - 5


def _chain(layers: int) -> Report:
    return analyze(parse_spec({"name": "deep", "input": "8x8x4", "layers": ["relu"] * layers}))


def counting_console(calls: Counter[str]) -> Console:
    """A 240-column console that counts in `calls` each renderable rich lays out."""
    console = Console(file=io.StringIO(), width=240, highlight=False)
    rich_render = console.render

    def counted_render(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["rich renders"] += 1
        return rich_render(*args, **kwargs)

    console.render = counted_render  # type: ignore[method-assign]
    return console


def test_table_work_per_layer_is_the_same_at_any_depth(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 10,000-layer net took a minute to print as a table (rich laid out every cell);
    no timing here: rich is handed the table once as lines, and our own measuring of
    cells grows by the same amount for every thousand layers added."""
    calls: Counter[str] = Counter()
    measure = render._cells_wide

    def counted_measure(text: str) -> int:
        calls["measure"] += 1
        return measure(text)

    monkeypatch.setattr(render, "_cells_wide", counted_measure)
    work = []
    for layers in (1000, 2000, 3000):
        calls.clear()
        console = counting_console(calls)
        render.print_report(console, _chain(layers))
        lines = console.file.getvalue().count("\n")  # type: ignore[attr-defined]
        work.append((calls["rich renders"], calls["measure"], lines))
    (r1, m1, l1), (r2, m2, l2), (r3, m3, l3) = work
    assert r1 == r2 == r3  # rich's work does not grow with the net
    assert m2 - m1 == m3 - m2 > 0  # ours grows linearly
    assert l2 - l1 == l3 - l2 == 1000  # one line per layer
