"""`cnncli memory`'s report as tables: the items, the notes' rules of thumb beside the exact
figures, and each layer's share, laid out to the terminal's width. Plain data in
(analysis/memory.py's MemoryReport), no numpy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console

from cnncli.render.units import binary_bytes as size

if TYPE_CHECKING:
    from cnncli.analysis.memory import MemoryReport
    from cnncli.render.tables import Laid


# What a narrow terminal gives up first, per table: the bytes are the point of each.
ITEMS_LEAVE_OUT = ("numbers", "per_image")
RULES_LEAVE_OUT = ("exact_is",)
LAYERS_LEAVE_OUT = ("kind", "algorithm", "parameters", "kept", "kept_per_image", "output",
                    "workspace", "parameter_bytes")


def memory_layouts(r: MemoryReport, width: int) -> dict[str, Laid]:
    """The report's three tables (items, the notes' rules, per layer) laid out to `width`;
    "rules" only when the report has rules."""
    from cnncli.render.tables import Column, TableRow, lay_out

    def laid(title: str, columns: tuple[Column, ...], rows: list[TableRow],
             leave_out: tuple[str, ...]) -> Laid:
        return lay_out(title, columns, "bold", rows, width, leave_out)

    items: list[TableRow] = [
        ([it.label, f"{it.numbers:,}", size(it.bytes_per_image) if it.bytes_per_image
          else "-", size(it.bytes)], None) for it in r.items]
    items.append((["total (each item at its own peak)", "", "", size(r.total)], None))
    items.append(([f"peak (most alive at one moment: {r.peak_where})", "", "", size(r.peak)],
                  "bold"))
    out = {"items": laid("", (
        Column("item", "item", wraps=True), Column("numbers", "numbers", right=True),
        Column("per_image", "per image", right=True),
        Column("batch", f"batch of {r.batch}", right=True)), items, ITEMS_LEAVE_OUT)}
    if r.rules:
        rules: list[TableRow] = [
            ([rule["rule"], size(rule["bytes"]), size(rule["exact"]) if "exact" in rule else "",
              rule.get("exact_is", f"{rule.get('numbers_per_image', 0):,} numbers per image")],
             None) for rule in r.rules]
        out["rules"] = laid("the notes' rules of thumb, next to the exact items", (
            Column("rule", "rule", wraps=True), Column("bytes", "rule gives", right=True),
            Column("exact", "exact", right=True),
            Column("exact_is", "exact is", wraps=True)), rules, RULES_LEAVE_OUT)
    layers: list[TableRow] = [
        (["  " * lm.depth + lm.name, lm.kind, lm.algorithm or "", lm.output,
          ", ".join(lm.kept),
          size(lm.kept_bytes_per_image) if lm.kept_bytes else "",
          size(lm.kept_bytes) if lm.kept_bytes else "",
          f"{lm.parameters:,}" if lm.parameters else "",
          size(lm.parameter_bytes) if lm.parameters else "",
          size(lm.workspace_bytes) if lm.workspace_bytes else ""], None) for lm in r.layers]
    out["layers"] = laid(
        "per layer (kept: what the layer allocates that backward reads; parameters: with "
        "gradients and optimizer state)", (
            Column("name", "layer"), Column("kind", "type"),
            Column("algorithm", "algorithm"), Column("output", "output", right=True),
            Column("kept", "kept", wraps=True),
            Column("kept_per_image", "kept/image", right=True),
            Column("kept_bytes", f"kept, batch {r.batch}", right=True),
            Column("parameters", "parameters", right=True),
            Column("parameter_bytes", "param. memory", right=True),
            Column("workspace", "workspace", right=True)), layers, LAYERS_LEAVE_OUT)
    return out


def print_memory(console: Console, r: MemoryReport, fit: dict[str, Any] | None = None,
                 measured: dict[str, Any] | None = None) -> None:
    from cnncli.analysis.memory import SHORT
    from cnncli.render.tables import print_laid

    what = "training step" if r.mode == "train" else "inference (forward only, test time)"
    opt = f", {r.optimizer}" if r.optimizer else ""
    console.print(f"[bold]{r.name}[/] {r.input}: {what}, batch {r.batch}, {r.dtype} "
                  f"({r.bytes_per_number} bytes per number){opt}, {r.threads} threads")
    if fit is not None:
        if fit["largest_batch"]:
            nxt = (f"; batch {fit['largest_batch'] + 1} needs "
                   f"{size(fit['next_batch_peak_bytes'])}" if fit["next_batch_peak_bytes"]
                   else "")
            ranks = (f" per rank (global batch {fit['global_batch']})" if "global_batch" in fit
                     else "")
            console.print(f"[bold green]largest batch that fits in {fit['budget']} "
                          f"({size(fit['budget_bytes'])}): {fit['largest_batch']}{ranks}[/] "
                          f"(peak {size(fit['peak_bytes'])}{nxt})")
        else:
            console.print(f"[bold red]not even one image fits in {fit['budget']}[/]")
    layouts = memory_layouts(r, console.width)
    print_laid(console, layouts["items"])
    short = dict(SHORT, flight="live activations") if r.mode == "infer" else SHORT
    parts = [f"{short[k]} {size(v)}" for k, v in r.peak_parts.items() if v]
    console.print("at the peak: " + " + ".join(parts))
    if measured is not None:
        console.print(f"[bold]measured peak: {size(measured['peak_bytes'])}[/] (tracemalloc, "
                      f"one real step of the engine on random data, {measured['threads']} "
                      f"threads); estimate {size(r.peak)}: "
                      f"{measured['estimate_error']:+.1%}")
    if r.rules:
        console.print()
        print_laid(console, layouts["rules"])
    console.print()
    print_laid(console, layouts["layers"])
    for note in r.notes:
        console.print(f"- {note}")
