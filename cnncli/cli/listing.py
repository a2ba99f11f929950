"""`cnncli list`: the bundled architectures with their parameters and MACs (no numpy)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from cnncli.cli.options import Format, FormatOpt
from cnncli.cli.output import out, print_json
from cnncli.spec import catalog
from cnncli.spec.parse import SpecError, SpecInvalid, load_spec

if TYPE_CHECKING:
    from cnncli.render.tables import Laid

# what a narrow terminal gives up first: the size and the cost of each net are the point
LIST_LEAVE_OUT = ("output", "input", "title", "macs")


def list_layout(rows: list[dict[str, Any]], width: int) -> Laid:
    from cnncli.render.tables import Column, TableRow, lay_out
    from cnncli.render.units import human

    columns = (Column("name", "name"), Column("title", "architecture", wraps=True),
               Column("input", "input", right=True),
               Column("parameters", "parameters", right=True),
               Column("macs", "MACs", right=True), Column("output", "output", right=True))
    cells: list[TableRow] = [
        ([r["name"], r["title"], r["input"], f"{r['parameters']:,}", human(r["macs"]),
          r["output"]], None) for r in rows]
    return lay_out("", columns, "bold", cells, width, LIST_LEAVE_OUT)


def list_architectures(fmt: FormatOpt = Format.table) -> None:
    """The bundled architectures, with their parameter counts and MACs."""
    from cnncli.analysis.report import analyze
    from cnncli.render.tables import print_laid
    from cnncli.render.units import human

    rows: list[dict[str, Any]] = []
    for name in catalog.bundled_names():
        path = catalog.bundled_dir() / f"{name}.yaml"
        try:  # one broken bundled file is a row that says so, not the end of the list
            spec = load_spec(path)
            report = analyze(spec)
            rows.append({"name": name, "title": spec.name, "input": str(spec.input),
                         "parameters": report.parameters, "macs": report.macs,
                         "output": str(report.output), "valid": report.valid})
        except (SpecError, SpecInvalid) as exc:
            rows.append({"name": name, "title": "?", "input": "", "parameters": 0, "macs": 0,
                         "output": "", "valid": False, "error": str(exc)})
    if fmt is Format.json:
        print_json(rows)
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
    print_laid(out, list_layout(rows, out.width))
