"""`cnncli bench`: every layer timed where the engine runs it, inside residual and concat
blocks too, each block's add or concatenation on a row of its own, as the same tree that
`cnncli check` prints; the JSON carries the same rows as plain data."""

from __future__ import annotations

import json
import re

from typer.testing import CliRunner

from cnncli.analysis.report import Report, analyze
from cnncli.cli.app import app
from cnncli.engine.profile import profile_layers
from cnncli.render.tables import bench_layout
from cnncli.spec import catalog
from cnncli.spec.parse import Volume, load_spec, parse_spec

SMALL = ["--input", "32x32x3", "--batch", "2", "--iterations", "1"]
TIMES = re.compile(r"\s\d+\.\d\d\s+\d+\.\d\d(\s|$)")  # forward ms, backward ms


def bench(name: str) -> tuple[str, Report]:
    result = CliRunner().invoke(app, ["bench", name, *SMALL])
    assert result.exit_code == 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    return result.stdout, analyze(load_spec(catalog.resolve(name)), Volume(32, 32, 3))


def assert_one_row_per_report_row(printed: str, report: Report) -> None:
    """Under the header, the report's rows in order, indented as `check` shows them:
    layers and merges with their times, block headings without."""
    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("layer "))
    body = lines[header + 1:header + 1 + len(report.rows)]
    assert len(body) == len(report.rows)
    for line, row in zip(body, report.rows, strict=True):
        shown = "  " * row.depth + (row.name if row.is_block else row.name.rsplit(".", 1)[-1])
        assert line.startswith(shown + " "), (line, row.name)
        assert (TIMES.search(line) is None) == row.is_block, line
    assert lines[header + 1 + len(report.rows)].startswith("total ")


def test_bench_resnet18_times_every_layer_inside_blocks() -> None:
    printed, report = bench("resnet18")
    assert_one_row_per_report_row(printed, report)
    adds = [r for r in report.rows if r.kind == "add"]
    assert len(adds) == 8  # one residual add per basic block
    assert sum(1 for r in report.rows if r.kind == "conv") == 20  # shortcuts' 1x1 included
    assert "whole step (forward + backward)" in printed


def test_bench_googlenet_times_every_branch_and_its_concat() -> None:
    printed, report = bench("googlenet")
    assert_one_row_per_report_row(printed, report)
    merges = [r for r in report.rows if r.kind == "concat" and not r.is_block]
    assert len(merges) == 9  # inception 3a-3b, 4a-4e, 5a-5b
    assert sum(1 for r in report.rows if r.kind == "branch") == 36


# a residual block with a projection shortcut inside a repeat, then a concat
NESTED = {
    "name": "nested blocks", "input": "8x8x3",
    "layers": [
        {"conv": {"filters": 4, "size": 3, "pad": 1}},
        {"repeat": 2, "layers": [
            {"residual": {"layers": [{"conv": {"filters": 4, "size": 3, "pad": 1}}, "relu"],
                          "shortcut": [{"conv": {"filters": 4, "size": 1}}]}}]},
        {"concat": [[{"conv": {"filters": 2, "size": 1}}],
                    [{"pool": {"size": 3, "stride": 1, "pad": 1}}]]},
        {"fc": 3},
    ],
}


def test_bench_json_rows_are_the_table_rows() -> None:
    spec = parse_spec(NESTED)
    result = json.loads(json.dumps(profile_layers(spec, None, 2, 2, None)))
    report = analyze(spec)
    rows = result["layers"]
    assert [(r["name"], r["kind"], r["depth"], r["block"]) for r in rows] == \
        [(r.name, r.kind, r.depth, r.is_block) for r in report.rows]
    timed = [r for r in rows if not r["block"]]
    assert {r["kind"] for r in timed} >= {"conv", "add", "concat", "pool", "fc"}
    for r in rows:
        figures = (r["forward_ms"], r["backward_ms"])
        if r["block"]:
            assert figures == (None, None)
        else:
            assert all(isinstance(t, float) and t >= 0 for t in figures), r
    assert result["total_ms"] == sum(r["forward_ms"] + r["backward_ms"] for r in timed)
    assert result["step_ms"] > 0
    # the table is drawn from this data: title, header, one line per row, total
    lines = [line for line, _ in bench_layout(result, 240).lines]
    assert len(lines) == 2 + len(rows) + 1
    assert [line.split()[0] for line in lines[2:-1]] == \
        [r["name"] if r["block"] else r["name"].rsplit(".", 1)[-1] for r in rows]
