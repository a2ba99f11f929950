"""The check table on a terminal of any width, and on nets of any depth: a figure is
printed whole or its column is left out with a note saying so, and laying out the table
costs the same per layer whether the net has a thousand layers or three thousand."""

from __future__ import annotations

import io
import re
from collections import Counter
from collections.abc import Callable

import pytest
from rich.console import Console

from cnncli.analysis.report import Report, analyze
from cnncli.render import tables as render
from cnncli.spec import catalog
from cnncli.spec.parse import load_spec, parse_spec

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


# --------------------------------------------------------------------------- every table


NOTE = re.compile(r"note: (?:left\s+out|one\s+record).*?shows\s+(?:them|the\s+table)\)", re.S)


def figures(text: str) -> set[str]:
    """The tokens holding a digit, the note about a narrow terminal set aside."""
    return {token for token in NOTE.sub("", text).split() if re.search(r"\d", token)}


def console_print(draw: Callable[[Console], None], width: int) -> str:
    console = Console(file=io.StringIO(), width=width, highlight=False)
    draw(console)
    return console.file.getvalue()  # type: ignore[attr-defined]


def command_print(args: list[str], width: int, monkeypatch: pytest.MonkeyPatch) -> str:
    from typer.testing import CliRunner

    from cnncli.cli import output
    from cnncli.cli.app import app

    with monkeypatch.context() as patch:
        patch.setattr(output.out, "width", width)  # what a terminal of that width gives
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.stdout


def gradcheck_table(console: Console) -> None:
    from cnncli.cli.engine import print_gradcheck
    from cnncli.engine.gradcheck import Check

    checks = [Check("conv1", "input", (2, 16, 16, 3), 8, 5.69e-10, False, False),
              Check("conv1", "conv1.weight", (12, 3, 3, 3), 8, 2.85e-3, False, False, kinks=2),
              Check("fc1", "fc1.bias", (10,), 8, 0.0, True, False),
              Check("(loss softmax)", "scores", (2, 10), 20, 9.45e-10, False, False)]
    print_gradcheck(console, "CIFAR-10 tiny (CS231n notes) at [16x16x3]", 8, checks, 12.5)


def eval_tables(console: Console) -> None:
    from cnncli.cli.train import print_eval

    names = ["disc", "ring", "square", "square-outline", "triangle", "plus", "x-cross",
             "h-stripes", "v-stripes", "checkerboard"]
    confusion = [[(7 * i + 13 * j) % 101 if (i + j) % 3 else 0 for j in range(10)]
                 for i in range(10)]
    images = [sum(row) for row in confusion]
    print_eval(console, {
        "spec": "CIFAR-10 tiny", "weights": "best.npz", "data": "synthetic shapes",
        "images": sum(images), "loss": 1.2345, "accuracy": 0.5, "classes": names,
        "per_class_images": images, "confusion": confusion,
        "per_class_accuracy": [row[i] / n if n else None
                               for i, (row, n) in enumerate(zip(confusion, images, strict=True))]})


def slide_grid(console: Console) -> None:
    import numpy as np

    from cnncli.render.sliding import grid_layout

    scores = np.random.default_rng(0).random((5, 9, 10)) * 20
    names = ["disc", "ring", "square", "square-outline", "triangle", "plus", "x-cross",
             "h-stripes", "v-stripes", "checkerboard"]
    render.print_laid(console, grid_layout(scores, names, {"window_stride": {"width": 8,
                                                                            "height": 8}},
                                           console.width))


TABLE_COMMANDS: dict[str, Callable[[int, pytest.MonkeyPatch], str]] = {
    "list": lambda width, mp: command_print(["list"], width, mp),
    "memory vgg16": lambda width, mp: command_print(["memory", "vgg16"], width, mp),
    "memory googlenet --budget": lambda width, mp: command_print(
        ["memory", "googlenet", "--budget", "4GiB", "--optimizer", "adam"], width, mp),
    "gradcheck": lambda width, _: console_print(gradcheck_table, width),
    "eval": lambda width, _: console_print(eval_tables, width),
    "slide": lambda width, _: console_print(slide_grid, width),
}


@pytest.mark.parametrize("width", [40, 60])
@pytest.mark.parametrize("command", TABLE_COMMANDS)
def test_every_command_table_on_a_narrow_terminal_never_cuts_a_figure(
        command: str, width: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """list, memory, gradcheck, eval and slide print their tables through `lay_out`, as
    check does: rich's Table cut figures to fit (an RF of 10 shown as "1", 138,357,544 as
    "138,357,"). Narrow, a figure is printed whole or its column is named as left out."""
    draw = TABLE_COMMANDS[command]
    wide, narrow = draw(240, monkeypatch), draw(width, monkeypatch)
    assert "note:" not in wide
    cut = figures(narrow) - figures(wide)
    assert not cut, f"{command} at {width} columns prints figures cut short: {sorted(cut)}"
    said = " ".join(narrow.split())
    if "left out to fit" not in said:
        missing = figures(wide) - figures(narrow)
        assert not missing, f"{command} at {width} columns lost {sorted(missing)}"
    assert "Table" not in narrow and "…" not in narrow
