"""`cnncli slide`'s results as the terminal shows them: per image, the grid of windows with
each one's top class in its colour, the average over windows, and the crop-by-crop check."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape

from cnncli.render.tables import Column, Laid, TableRow, lay_out, print_laid

# one colour per class in the grid (cycled past ten classes)
PALETTE = ("red", "green", "blue", "magenta", "cyan", "yellow", "bright_red", "bright_green",
           "bright_blue", "bright_magenta")



def grid_layout(scores: Any, names: list[str], geo: dict[str, Any], width: int) -> Laid:
    """Top class and its score per window, as a table laid out like the image, each class
    in its colour; a grid too wide for the terminal becomes one record per row of windows."""
    top = scores.argmax(-1)
    best = scores.max(-1)
    step = geo["window_stride"]
    columns = (Column("y", "y\\x", right=True),
               *(Column(str(j), str(j * step["width"])) for j in range(scores.shape[1])))
    rows: list[TableRow] = []
    for i in range(scores.shape[0]):
        classes = [int(k) for k in top[i]]
        rows.append(([str(i * step["height"]),
                      *(f"{names[k][:10]} {best[i, j]:.2f}" for j, k in enumerate(classes))],
                     ("dim", *(PALETTE[k % len(PALETTE)] for k in classes))))
    return lay_out("", columns, "dim", rows, width)


def print_slide_result(out: Console, r: dict[str, Any], scores: Any, names: list[str],
                       geo: dict[str, Any]) -> None:
    """One image's result: the header line, the grid of windows, the average, the check."""

    step = geo["window_stride"]
    win = geo["window"]
    out.print(f"[bold]{escape(r['image'])}[/] {r['size']['width']}x{r['size']['height']}: "
              f"{scores.shape[1]}x{scores.shape[0]} windows of {win['width']}x{win['height']} at "
              f"stride {step['width']}, {scores.shape[2]} classes "
              f"({r['passes']} pass{'es' if r['passes'] != 1 else ''}, {r['seconds']:.3f} s); "
              "top class and score per window (rows: y, columns: x offset in px):")
    print_laid(out, grid_layout(scores, names, geo, out.width))
    if "average" in r:
        best = r["average"][0]
        others = ", ".join(f"{escape(a['name'])} {a['score']:.3f}" for a in r["average"][1:])
        out.print(f"average over {scores.shape[0] * scores.shape[1]} windows: "
                  f"[bold]{escape(best['name'])}[/] {best['score']:.3f}"
                  + (f" (then {others})" if others else ""))
    if "verify" in r:
        v = r["verify"]
        speed = v["crop_by_crop_seconds"] / v["one_pass_seconds"] if v["one_pass_seconds"] \
            else float("inf")
        line = (f"verify: {v['windows']} crops through the original net in "
                f"{v['crop_by_crop_seconds']:.3f} s (one pass {v['one_pass_seconds']:.3f} s, "
                f"{speed:.1f}x); largest |difference| {v['max_abs_diff']:.3g} "
                f"(scores up to {v['score_scale']:.3g})")
        if v["expected_exact"]:
            mark = "[green]ok[/]" if v["passed"] else "[bold red]FAIL[/]"
            out.print(f"{line}: {mark} (tolerance {v['tolerance']:g})")
        else:
            out.print(f"{line}; [yellow]not expected to match[/]: the net pads inside, so a "
                      f"window's score depends on its surroundings (same top class in "
                      f"{v['top_class_agreement']:.0%} of windows)")
    out.print()
