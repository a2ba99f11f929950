"""`cnncli check --format html`: one page that holds everything and fetches nothing.

The drawing (inline SVG), the notes' per-layer table, the totals and the memory of a
training step, with the hints and errors `check` prints. Styles are inline; there is no
script, no font, no image file and no link, so the page reads the same offline, mailed
or attached to a CI run. Pure Python: no numpy, like `check` itself.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from cnncli.analysis.report import Report
from cnncli.render.pictures.netdraw import svg
from cnncli.render.tables import COLUMNS, _cells, summary_lines
from cnncli.render.units import binary_bytes

STYLE = """
body { font-family: DejaVu Sans, Helvetica, Arial, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; margin: 0 0 4px 0; }
h2 { font-size: 16px; margin: 28px 0 8px 0; }
.sub { color: #666; margin: 0 0 16px 0; }
.net { overflow-x: auto; border: 1px solid #ddd; padding: 4px; }
table { border-collapse: collapse; font-family: DejaVu Sans Mono, Menlo, Consolas, monospace;
        font-size: 12px; }
th, td { padding: 2px 10px; border-bottom: 1px solid #eee; white-space: nowrap; }
th { text-align: left; border-bottom: 2px solid #999; }
td.r, th.r { text-align: right; }
tr.block td { color: #888; font-style: italic; }
tr.total td { font-weight: bold; border-top: 2px solid #999; }
tr.failed td { background: #fde0e0; }
ul { font-family: DejaVu Sans Mono, Menlo, Consolas, monospace; font-size: 12px; }
li.error { color: #c62828; }
li.hint { color: #8a6d00; }
"""


def _cell(text: str, right: bool, tag: str = "td") -> str:
    cls = ' class="r"' if right else ""
    return f"<{tag}{cls}>{escape(text)}</{tag}>"


def layer_table(report: Report) -> str:
    """The per-layer table of `check`, as HTML: the same columns and the same cells."""
    right = [justify == "right" for _, _, justify in COLUMNS]
    failing = {p.layer for p in report.errors}
    head = "".join(_cell(title, r, "th") for (_, title, _), r in zip(COLUMNS, right,
                                                                       strict=True))
    rows = [f"<tr>{head}</tr>",
            "<tr>" + "".join(_cell(c, r) for c, r in zip(
                ["input", "input", "", str(report.input), f"{report.input.size:,}", "", "",
                 "", "1", "1"], right, strict=True)) + "</tr>"]
    for row in report.rows:
        cells = _cells(row, tree=True)
        # the tree's indentation as non-breaking spaces, so HTML keeps it
        cells[0] = cells[0].replace(" ", "\u00a0")
        cls = "block" if row.is_block else ("failed" if row.name in failing else "")
        attr = f' class="{cls}"' if cls else ""
        rows.append(f"<tr{attr}>" + "".join(_cell(c, r) for c, r in zip(cells, right,
                                                                          strict=True))
                    + "</tr>")
    if report.valid:
        t = report.totals()
        total = ["total", "", "", str(report.output), f"{t['activations_per_image']:,}",
                 f"{t['weights']:,}", f"{t['biases']:,}", f"{t['macs']:,}",
                 _pair(report), _pair(report, jump=True)]
        rows.append('<tr class="total">' + "".join(_cell(c, r) for c, r in zip(
            total, right, strict=True)) + "</tr>")
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def _pair(report: Report, jump: bool = False) -> str:
    p = report.jump if jump else report.receptive_field
    if p is None:
        return ""
    return str(p.h) if p.h == p.w else f"{p.h}x{p.w}"


def memory_section(report: Report, batch: int = 64) -> str:
    """The itemised memory of one training step at `batch` (float32, momentum): what
    `cnncli memory` prints first."""
    from cnncli.analysis.memory import estimate

    r = estimate(report.spec, batch=batch, input_volume=report.input,
                 rounding=report.rounding)
    rows = ["<tr><th>item</th><th class=\"r\">numbers</th><th class=\"r\">per image</th>"
            f"<th class=\"r\">batch of {r.batch}</th></tr>"]
    for it in r.items:
        rows.append("<tr>" + _cell(it.label, False) + _cell(f"{it.numbers:,}", True)
                    + _cell(binary_bytes(it.bytes_per_image) if it.bytes_per_image else "-",
                            True) + _cell(binary_bytes(it.bytes), True) + "</tr>")
    rows.append('<tr class="total">' + _cell("total (each item at its own peak)", False)
                + _cell("", True) * 2 + _cell(binary_bytes(r.total), True) + "</tr>")
    rows.append('<tr class="total">' + _cell(f"peak (most alive at one moment: "
                                              f"{r.peak_where})", False)
                + _cell("", True) * 2 + _cell(binary_bytes(r.peak), True) + "</tr>")
    intro = (f"one training step: batch {r.batch}, {r.dtype}, {r.optimizer}, "
             f"{r.threads} threads (<code>cnncli memory</code> for the per-layer view, "
             "other batches and budgets)")
    return f"<p class=\"sub\">{intro}</p>\n<table>\n" + "\n".join(rows) + "\n</table>"


def _problems(report: Report) -> str:
    items = []
    for kind, found in ((f"rounding ({report.rounding})", report.rounded),
                        ("hint", report.warnings), ("error", report.errors)):
        for p in found:
            where = f"line {p.line}: " if p.line else ""
            fix = f" (fix: {p.fix})" if p.fix else ""
            cls = "error" if kind == "error" else "hint"
            items.append(f'<li class="{cls}">{escape(f"{kind}: {where}{p.message}{fix}")}'
                         "</li>")
    return "<ul>\n" + "\n".join(items) + "\n</ul>" if items else ""


def report_page(report: Report, vertical: bool = False) -> str:
    """The whole page as text."""
    name = escape(report.spec.name)
    status = ("valid" if report.valid else
              f"INVALID: {len(report.errors)} error{'s' if len(report.errors) > 1 else ''}")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{name}: cnncli check</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{name}</h1>",
        f'<p class="sub">{escape(report.spec.source)} · input {report.input} · rounding '
        f"{report.rounding} · {status}</p>",
        '<div class="net">', svg(report, vertical, xml_declaration=False), "</div>",
        "<h2>Layers</h2>", layer_table(report),
    ]
    if report.valid:
        parts += ["<ul>"] + [f"<li>{escape(line)}</li>" for line in summary_lines(report)] \
            + ["</ul>"]
    problems = _problems(report)
    if problems:
        parts += ["<h2>Hints and errors</h2>", problems]
    parts.append("<h2>Memory</h2>")
    if report.valid:
        parts.append(memory_section(report))
    else:
        parts.append('<p class="sub">not computed: the net is invalid</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
