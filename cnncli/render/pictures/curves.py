"""Training curves from a run's metrics.csv: loss and accuracy per epoch, training against
validation, and the learning rate.

The notes read these curves to tune a run: a loss that falls slowly and linearly wants a
higher learning rate, one that drops and then plateaus high wants a lower one, and a wide
gap between training and validation accuracy is overfitting. `cnncli train` rewrites
metrics.csv from the whole history at every epoch, so a resumed run's file holds every
epoch since the start, and so does every plot of it.

Files are drawn by matplotlib (the `plot` extra, imported only when a file is written,
with its non-interactive Agg backend so it works without a display); the terminal chart
needs nothing and is the fallback.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cnncli.render.pictures import PictureError

METRICS = "metrics.csv"
SUFFIXES = (".png", ".svg", ".pdf")


@dataclass(frozen=True)
class Epoch:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float | None
    val_acc: float | None
    lr: float
    best: bool


def _number(text: str | None, where: str, optional: bool = False) -> float | None:
    if text is None or text == "":
        if optional:
            return None
        raise PictureError(f"{where}: missing value")
    try:
        value = float(text)
    except ValueError:
        raise PictureError(f"{where}: not a number: {text[:40]!r}") from None
    return value


def read_metrics(run: str | Path) -> list[Epoch]:
    """Every finished epoch of a run directory (or of a metrics.csv given directly)."""
    path = Path(run)
    if path.is_dir():
        path = path / METRICS
        if not path.is_file():
            raise PictureError(f"{run}: no {METRICS} here; not a run directory (cnncli train "
                               "--out DIR writes one)")
    elif not path.is_file():
        raise PictureError(f"{run}: no such run directory")
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PictureError(f"{path}: cannot read ({exc})") from None
    epochs = []
    for i, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"{path} line {i}"
        if not {"epoch", "train_loss", "train_acc", "lr"} <= set(row):
            raise PictureError(f"{path}: not a cnncli metrics file (needs the columns epoch, "
                               f"train_loss, train_acc, val_loss, val_acc, lr)")
        values = [_number(row.get(k), f"{where} {k}") for k in
                  ("epoch", "train_loss", "train_acc", "lr")]
        val_loss = _number(row.get("val_loss"), f"{where} val_loss", optional=True)
        val_acc = _number(row.get("val_acc"), f"{where} val_acc", optional=True)
        epoch, train_loss, train_acc, lr = (v if v is not None else 0.0 for v in values)
        epochs.append(Epoch(int(epoch), train_loss, train_acc, val_loss, val_acc, lr,
                            str(row.get("best", "")).lower() == "true"))
    if not epochs:
        raise PictureError(f"{path}: the run has not finished an epoch yet", 1)
    return epochs


def run_title(run: str | Path, epochs: list[Epoch]) -> str:
    """'CIFAR-10 small, runs/demo: 8 epochs': the spec's name from the run's config.json."""
    import json

    folder = Path(run) if Path(run).is_dir() else Path(run).parent
    name = ""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        name = str(config.get("spec_name") or "") if isinstance(config, dict) else ""
    except (OSError, ValueError):
        pass
    return f"{name + ', ' if name else ''}{folder}: {len(epochs)} epochs"


# --------------------------------------------------------------------------- files


def write_plot(epochs: list[Epoch], out: str | Path, title: str = "") -> Path:
    """Loss, accuracy and learning rate side by side, as PNG, SVG or PDF (by the suffix)."""
    out = Path(out)
    if out.suffix.lower() not in SUFFIXES:
        raise PictureError(f"{out}: write curves as {', '.join(SUFFIXES)} (by the file's "
                           "suffix)")
    try:
        import matplotlib
    except ImportError:
        raise PictureError(f"writing {out.name} needs matplotlib: pip install "
                           "'cnncli[plot]'") from None
    matplotlib.use("Agg")  # no display needed: headless machines, CI
    import matplotlib.pyplot as plt

    x = [e.epoch for e in epochs]
    has_val = any(e.val_loss is not None for e in epochs)
    marker = "o" if len(epochs) <= 30 else None
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), dpi=100, layout="constrained")
    loss_ax, acc_ax, lr_ax = axes
    loss_ax.plot(x, [e.train_loss for e in epochs], marker=marker, label="training")
    acc_ax.plot(x, [100 * e.train_acc for e in epochs], marker=marker, label="training")
    if has_val:
        vx = [e.epoch for e in epochs if e.val_loss is not None]
        loss_ax.plot(vx, [e.val_loss for e in epochs if e.val_loss is not None],
                     marker=marker, label="validation")
        acc_ax.plot(vx, [100 * e.val_acc for e in epochs if e.val_acc is not None],
                    marker=marker, label="validation")
    best = [e for e in epochs if e.best]
    if best:  # the checkpoint kept as best.npz
        acc_ax.axvline(best[-1].epoch, color="grey", linestyle=":", linewidth=1)
        acc_ax.annotate("best", (best[-1].epoch, acc_ax.get_ylim()[0]), fontsize=8,
                        color="grey", xytext=(-3, 3), textcoords="offset points", ha="right")
    lr_ax.plot(x, [e.lr for e in epochs], marker=marker, color="tab:green")
    lrs = [e.lr for e in epochs if e.lr > 0]
    if lrs and max(lrs) / min(lrs) > 10:
        lr_ax.set_yscale("log")
    elif lrs:  # from zero, so a constant rate reads as constant, not as noise around it
        lr_ax.set_ylim(0, 1.15 * max(lrs))
        lr_ax.ticklabel_format(axis="y", style="plain", useOffset=False)
    for ax, name in ((loss_ax, "loss"), (acc_ax, "accuracy (%)"), (lr_ax, "learning rate")):
        ax.set_xlabel("epoch")
        ax.set_title(name, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    loss_ax.legend(fontsize=8)
    acc_ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out, metadata={"Date": None} if out.suffix.lower() == ".svg" else None)
    finally:
        plt.close(fig)
    return out


# --------------------------------------------------------------------------- the terminal

BLOCKS = " ▁▂▃▄▅▆▇█"


def _bucket(values: Sequence[float | None], width: int) -> list[float | None]:
    """At most `width` values: means of equal runs of epochs when there are more."""
    if len(values) <= width:
        return list(values)
    out: list[float | None] = []
    for k in range(width):
        part = [v for v in values[k * len(values) // width:(k + 1) * len(values) // width]
                if v is not None]
        out.append(sum(part) / len(part) if part else None)
    return out


def _spark(values: list[float | None], low: float, high: float) -> str:
    span = high - low
    chars = []
    for v in values:
        if v is None or not math.isfinite(v):
            chars.append(" ")
            continue
        level = 8 if span <= 0 else round(1 + 7 * (v - low) / span)
        chars.append(BLOCKS[max(1, min(8, level))])
    return "".join(chars)


def _fmt(v: float | None, percent: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}%" if percent else f"{v:.3g}"


def sparklines(epochs: list[Epoch], width: int = 48) -> list[str]:
    """A compact chart: one line per curve, training and validation of the same quantity on
    one scale so they can be compared; first and last values at the ends."""
    lines = [f"{'':12} epochs 1-{epochs[-1].epoch}" if len(epochs) > 1 else
             f"{'':12} epoch {epochs[-1].epoch}"]
    groups = (
        (("train loss", [e.train_loss for e in epochs]),
         ("val loss", [e.val_loss for e in epochs]), False),
        (("train acc", [e.train_acc for e in epochs]),
         ("val acc", [e.val_acc for e in epochs]), True),
    )
    for (name_a, a), (name_b, b), percent in groups:
        series = [(name_a, a)] + ([(name_b, b)] if any(v is not None for v in b) else [])
        finite = [v for _, s in series for v in s if v is not None and math.isfinite(v)]
        low, high = (min(finite), max(finite)) if finite else (0.0, 0.0)
        for name, s in series:
            known = [v for v in s if v is not None]
            first, last = (known[0], known[-1]) if known else (None, None)
            lines.append(f"{name:<11} {_fmt(first, percent):>7} "
                         f"{_spark(_bucket(s, width), low, high)} {_fmt(last, percent)}")
    lrs = [e.lr for e in epochs]
    if min(lrs) != max(lrs):
        logs = [math.log10(v) if v > 0 else None for v in lrs]
        known = [v for v in logs if v is not None]
        lines.append(f"{'lr (log)':<11} {lrs[0]:>7.3g} "
                     f"{_spark(_bucket(logs, width), min(known), max(known))} {lrs[-1]:.3g}")
    else:
        lines.append(f"{'lr':<11} {lrs[0]:>7.3g} (constant)")
    return lines


BRAILLE = 0x2800
# dot bits of a braille cell by (column 0..1, row 0..3)
_DOTS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))


def line_chart(series: list[tuple[str, list[float | None]]], width: int = 60, height: int = 8,
               percent: bool = False) -> list[tuple[str, list[tuple[str, int]]]]:
    """Curves drawn with braille dots (2 x 4 per character cell), the y axis labelled at its
    top and bottom. Returns lines as (text, [(character run, series index)]), where the
    index says which curve a run belongs to (-1: axis, 2+: several), so a caller can colour
    them; `"".join` of the runs is the plain line."""
    finite = [v for _, s in series for v in s if v is not None and math.isfinite(v)]
    if not finite:
        return []
    low, high = min(finite), max(finite)
    if high == low:
        high = low + (abs(low) or 1.0)
    n = max(len(s) for _, s in series)
    cols, rows = width * 2, height * 4
    cells = [[0] * width for _ in range(height)]
    owner = [[-1] * width for _ in range(height)]

    def dot(px: int, py: int, who: int) -> None:
        cx, cy = px // 2, py // 4
        cells[cy][cx] |= _DOTS[px % 2][py % 4]
        owner[cy][cx] = who if owner[cy][cx] in (-1, who) else 99

    for who, (_, s) in enumerate(series):
        prev: tuple[int, int] | None = None
        for i, v in enumerate(s):
            if v is None or not math.isfinite(v):
                prev = None
                continue
            px = 0 if n == 1 else round(i * (cols - 1) / (n - 1))
            py = rows - 1 - round((v - low) / (high - low) * (rows - 1))
            if prev is None:
                dot(px, py, who)
            else:  # a straight line from the previous point, one dot per column and row
                steps = max(abs(px - prev[0]), abs(py - prev[1]), 1)
                for t in range(steps + 1):
                    dot(round(prev[0] + (px - prev[0]) * t / steps),
                        round(prev[1] + (py - prev[1]) * t / steps), who)
            prev = (px, py)

    def label(v: float) -> str:
        return f"{100 * v:.1f}%" if percent else f"{v:.3g}"

    labels = [label(high)] + [""] * (height - 2) + [label(low)]
    pad = max(len(t) for t in labels)
    out = []
    for r in range(height):
        runs: list[tuple[str, int]] = [(f"{labels[r]:>{pad}} ┤", -1)]
        for c in range(width):
            ch = chr(BRAILLE + cells[r][c]) if cells[r][c] else " "
            who = owner[r][c]
            if runs and runs[-1][1] == who:
                runs[-1] = (runs[-1][0] + ch, who)
            else:
                runs.append((ch, who))
        out.append(("".join(t for t, _ in runs), runs))
    axis = f"{'':>{pad}} └" + "─" * width
    out.append((axis, [(axis, -1)]))
    first, last = "1", str(n)
    ticks = f"{'':>{pad}}  {first}{last:>{width - len(first)}}  (epoch)"
    out.append((ticks, [(ticks, -1)]))
    return out


def terminal_charts(epochs: list[Epoch], width: int = 60) -> list[tuple[str,
                                                                          list[tuple[str, int]]]]:
    """Loss and accuracy as braille line charts (training: series 0, validation: 1) with
    a title line each, then the learning rate as a sparkline."""
    out: list[tuple[str, list[tuple[str, int]]]] = []
    has_val = any(e.val_loss is not None for e in epochs)
    for title, train, val, percent in (
            ("loss", [e.train_loss for e in epochs], [e.val_loss for e in epochs], False),
            ("accuracy", [e.train_acc for e in epochs], [e.val_acc for e in epochs], True)):
        series: list[tuple[str, list[float | None]]] = [("training", list(train))]
        if has_val:
            series.append(("validation", val))
        head = f"{title}: training" + (" vs validation" if has_val else "")
        runs = [(f"{title}: ", -1), ("training", 0)]
        if has_val:
            runs += [(" vs ", -1), ("validation", 1)]
        out.append((head, runs))
        out.extend(line_chart(series, width, percent=percent))
        out.append(("", []))
    lr = sparklines(epochs, width)[-1]
    out.append((lr, [(lr, -1)]))
    return out
