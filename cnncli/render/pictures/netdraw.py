"""The architecture as the notes draw it: every volume a box, the layer between two boxes
named on the arrow, residual shortcuts and Inception branches as parallel lanes.

It reads the analyzer's report (`stats.analyze`) and computes no shape of its own; plain
Python that writes SVG text, no numpy and no Graphviz, so it draws any net at once, even
one that cannot be built: an invalid spec is drawn up to its failing layer, which carries
the error.

What a box shows:
- its three sides follow the volume's depth (along the flow), height and width (the
  receding side) on a log scale, so VGG16's [224x224x64] and a CIFAR net's [4x4x128] fit
  one picture; the true [WxHxD] is printed under it;
- the side facing the reader sideways is the image plane (width x height): on the input
  it carries the receptive field of the last volume, the patch of pixels one of its
  neurons sees;
- elementwise layers (activations, batchnorm, dropout, LRN) keep the volume's size and
  are written under the arrow of the layer before them ("+BN +ReLU") instead of adding
  boxes of the same size: ResNet-50 stays one screen tall.

Text is monospace, so its width is known without a font engine and the layout can keep
every label inside the gap it was given: nothing overlaps, at any size of net.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union
from xml.sax.saxutils import escape, quoteattr

from cnncli.analysis.report import Report, Row, analyze
from cnncli.render.units import human
from cnncli.spec.loading import Located as _Located
from cnncli.spec.parse import (
    Problem,
    Spec,
    SpecError,
    SpecInvalid,
    Volume,
    parse_spec,
    read_yaml,
)

FONT = "DejaVu Sans Mono, Menlo, Consolas, Liberation Mono, monospace"
FONT_SIZE = 11
CHAR_W = 0.6 * FONT_SIZE  # monospace advance: 0.6 em in DejaVu Sans Mono, Menlo, Consolas
LINE_H = 13
MARGIN = 16
PAD = 6          # between a gap's ends and its label
MIN_GAP = 28     # the shortest arrow between two boxes
LANE_GAP = 18    # between parallel lanes
STUB = 10        # from a fork's input to the bus the lanes start on
WRAP = 22        # characters per line of a layer's settings
ERROR_WRAP = 44  # characters per line of an error message
RF_WRAP = 28     # characters per line of the receptive-field note under the input

# elementwise layers (same volume in and out: the layer type says so) are drawn on the
# arrow of the layer before, named by their `picture_label`
# (front, top, side) fills and the outline, by the layer that made the volume
COLOURS = {
    "input": ("#e8e8e8", "#d0d0d0", "#b8b8b8", "#666666"),
    "conv": ("#d6e6f8", "#b4cfef", "#93b7e3", "#3f6fa8"),
    "local": ("#d9ecec", "#b9dada", "#98c6c6", "#3f8585"),
    "pool": ("#fbe3cf", "#f5c9a5", "#eeae7d", "#b5661f"),
    "fc": ("#e6dcf3", "#cfbfe8", "#b7a1dc", "#6a4c9c"),
    "add": ("#d8efd8", "#b9e0b9", "#99cf99", "#3c8a3c"),
    "concat": ("#d8efd8", "#b9e0b9", "#99cf99", "#3c8a3c"),
    "other": ("#f6f0c8", "#ece0a0", "#e0cf7a", "#8a7a20"),
    "failed": ("#fde0e0", "#f8c0c0", "#f2a0a0", "#c62828"),
}
ERROR_COLOUR = "#c62828"
RF_COLOUR = "#d81b60"


def _text_w(text: str) -> float:
    return len(text) * CHAR_W


def _wrap(text: str, width: int) -> list[str]:
    """Greedy wrap at spaces; a word longer than the width gets a line of its own."""
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines or [""]


def _clean(text: str) -> str:
    """Control characters are not allowed in XML 1.0 (a user's name or value could hold one)."""
    return re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]", "?", text)


# --------------------------------------------------------------------------- the net as boxes


@dataclass
class Box:
    """One volume: the layer that made it (named on the arrow into it) and its size."""

    name: str
    kind: str                     # input | conv | pool | fc | add | concat | ... | failed
    volume: Volume | None         # None: a layer that could not be read
    label: list[str]              # above the incoming arrow: the layer and its settings
    folded: list[str] = field(default_factory=list)  # elementwise layers after it
    rows: list[str] = field(default_factory=list)    # full names, for the tooltip
    error: list[str] = field(default_factory=list)   # the failing layer's messages
    notes: list[str] = field(default_factory=list)   # extra lines under the size


@dataclass
class Fork:
    """A residual block (body and shortcut) or a concat (its branches), and the merge."""

    kind: str                     # residual | concat
    name: str
    lanes: list[list[Item]]
    merge: Box | None             # None when the drawing stops inside the block


Item = Union[Box, Fork]


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _square(window: str) -> str:
    """'3' -> '3x3', '3/2' -> '3x3/2': the report writes a square window once."""
    m = re.fullmatch(r"(\d+)(/.*)?", window)
    return f"{m.group(1)}x{m.group(1)}{m.group(2) or ''}" if m else window


def _settings_lines(row: Row) -> list[str]:
    """The report's settings text, square windows written out, wrapped between settings."""
    from cnncli.layers import REGISTRY

    parts = [p for p in row.settings.split(", ") if p]
    layer_type = REGISTRY.get(row.kind)
    if layer_type is not None and layer_type.windowed:  # its window: "3/2" or "max 3/2"
        for i, part in enumerate(parts):
            head, _, tail = part.rpartition(" ")
            if re.fullmatch(r"\d+(/\d+)?", tail) and head in ("", "max", "avg", "l2"):
                parts[i] = f"{head} {_square(tail)}".strip()
    lines: list[str] = []
    for part in parts:
        if lines and len(lines[-1]) + 2 + len(part) <= WRAP:
            lines[-1] += ", " + part
        else:
            lines.extend(_wrap(part, WRAP))
    return lines


def _layer_box(row: Row) -> Box:
    from cnncli.layers import REGISTRY

    settings = _settings_lines(row)
    layer_type = REGISTRY.get(row.kind)
    # a block's merge row (add, concat) is coloured as the merge, a layer by its family
    family = row.kind if layer_type is None or _is_merge(row) else layer_type.family
    kind = family if family in COLOURS else "other"
    return Box(row.name, kind, row.output, [_short(row.name)] + settings, rows=[row.name])


def _folded(row: Row) -> bool:
    from cnncli.layers import REGISTRY

    kind = REGISTRY.get(row.kind)
    return not row.is_block and kind is not None and kind.elementwise


def _fold_text(row: Row) -> str:
    from cnncli.layers import REGISTRY

    return REGISTRY[row.kind].picture_label(row.settings)


def _is_merge(row: Row) -> bool:
    return not row.is_block and (row.kind == "add" or row.kind == "concat")


def _chain(rows: list[Row], i: int, depth: int, items: list[Item]) -> int:
    """Read one sequence of the report's tree (rows at `depth`) into `items`; returns the
    index of the first row that is not part of it (a branch heading, a merge, a shallower
    row or the end)."""
    n = len(rows)
    while i < n:
        r = rows[i]
        if r.depth != depth or (r.is_block and r.kind in ("shortcut", "branch")) \
                or _is_merge(r):
            return i
        if r.is_block and r.kind == "residual":
            body: list[Item] = []
            i = _chain(rows, i + 1, depth + 1, body)
            shortcut: list[Item] = []
            if i < n and rows[i].is_block and rows[i].kind == "shortcut":
                i = _chain(rows, i + 1, depth + 2, shortcut)
            merge = None
            if i < n and rows[i].depth == depth + 1 and rows[i].kind == "add":
                merge = _layer_box(rows[i])
                merge.label = ["add" if _short(rows[i].name) == "add" else _short(rows[i].name)]
                i += 1
            items.append(Fork("residual", r.name, [body, shortcut], merge))
        elif r.is_block and r.kind == "concat":
            lanes: list[list[Item]] = []
            i += 1
            while i < n and rows[i].is_block and rows[i].kind == "branch" \
                    and rows[i].depth == depth + 1:
                lane: list[Item] = []
                i = _chain(rows, i + 1, depth + 2, lane)
                lanes.append(lane)
            merge = None
            if i < n and rows[i].depth == depth + 1 and _is_merge(rows[i]):
                merge = _layer_box(rows[i])
                merge.label = ["concat", "in depth"]
                i += 1
            items.append(Fork("concat", r.name, lanes, merge))
        elif r.is_block:  # repeat (and any other heading): its layers are drawn in line
            i = _chain(rows, i + 1, depth + 1, items)
        else:
            _append_layer(items, r)
            i += 1
    return i


def _append_layer(items: list[Item], row: Row) -> None:
    if _folded(row):
        target = items[-1] if items else None
        if isinstance(target, Fork):
            target = target.merge
        if target is not None and not target.error:
            target.folded.append(_fold_text(row))
            target.rows.append(row.name)
            return
    items.append(_layer_box(row))


def _failing_row(report: Report) -> tuple[int, list[str]] | None:
    """The first row (in the report's order) that carries an error, and its messages. An
    error of a block (a shortcut that does not match, branches of different sizes) belongs
    to the block's merge row, where the two volumes meet."""
    where: dict[str, int] = {}
    for i, r in enumerate(report.rows):
        if r.is_block:
            continue
        where.setdefault(r.name, i)
        if _is_merge(r):
            where.setdefault(r.name.rsplit(".", 1)[0], i)
    found: dict[int, list[str]] = {}
    for p in report.errors:
        if p.layer in where:
            found.setdefault(where[p.layer], []).append(p.message)
    if not found:
        return None
    first = min(found)
    return first, found[first]


def build(report: Report) -> list[Item]:
    """The report's rows as boxes and forks; an invalid report stops at its failing layer."""
    rows = list(report.rows)
    failing = _failing_row(report)
    if failing is not None:
        rows = rows[:failing[0] + 1]
    items: list[Item] = [Box("input", "input", report.input, [], rows=["input"])]
    # an elementwise layer right after the input makes a box of its own (nothing to fold into)
    body: list[Item] = []
    _chain(rows, 0, 0, body)
    items.extend(body)
    if failing is not None:
        last = _last_box(items)
        if last is not None:
            last.kind = "failed"
            last.error = failing[1]
    return items


def _last_box(items: list[Item]) -> Box | None:
    """The box drawn last: the failing layer when the drawing stops at one."""
    if not items:
        return None
    last = items[-1]
    if isinstance(last, Box):
        return last
    if last.merge is not None:
        return last.merge
    for lane in reversed(last.lanes):
        found = _last_box(lane)
        if found is not None:
            return found
    return None


def count_boxes(items: list[Item]) -> int:
    """Volumes drawn, branches included."""
    total = 0
    for it in items:
        if isinstance(it, Box):
            total += 1
        else:
            total += sum(count_boxes(lane) for lane in it.lanes) + (it.merge is not None)
    return total


# --------------------------------------------------------------------------- geometry


def _log_side(n: int) -> float:
    """A width or height in pixels: 10 px for 1, +11 px per doubling (224 -> 96 px)."""
    return 10.0 + 11.0 * math.log2(max(1, n))


def _log_depth(n: int) -> float:
    """A depth in pixels: 4 px for 1, +4.5 px per doubling (64 -> 31 px, 4096 -> 58 px)."""
    return 4.0 + 4.5 * math.log2(max(1, n))


@dataclass
class _Shape:
    """A box's drawn size in flow coordinates: `across` the flow, `along` it (the depth),
    and the receding side projected as (ox right, oy up)."""

    across: float
    along: float
    ox: float
    oy: float


def _shape(volume: Volume | None, vertical: bool) -> _Shape:
    if volume is None:
        return _Shape(40.0, 16.0, 12.0, 12.0)
    across = _log_side(volume.w if vertical else volume.h)
    recede = 0.45 * _log_side(volume.h if vertical else volume.w)
    o = recede * math.sqrt(0.5)
    return _Shape(across, _log_depth(volume.d), o, o)


# --------------------------------------------------------------------------- primitives


@dataclass
class _Canvas:
    """What is drawn, in screen coordinates, in drawing order: lines, then boxes, then text."""

    lines: list[str] = field(default_factory=list)
    boxes: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def line(self, points: list[tuple[float, float]], arrow: bool = False,
             dashed: bool = False) -> None:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        extra = ' marker-end="url(#arrow)"' if arrow else ""
        if dashed:
            extra += ' stroke-dasharray="4 3"'
        self.lines.append(f'<polyline class="edge" points="{path}"{extra}/>')

    def text(self, x: float, y: float, text: str, anchor: str = "start", cls: str = "",
             size: int = FONT_SIZE, colour: str | None = None, bold: bool = False) -> None:
        attrs = f'x="{x:.1f}" y="{y:.1f}"'
        if anchor != "start":
            attrs += f' text-anchor="{anchor}"'
        if cls:
            attrs += f' class="{cls}"'
        if size != FONT_SIZE:
            attrs += f' font-size="{size}"'
        if colour:
            attrs += f' fill="{colour}"'
        if bold:
            attrs += ' font-weight="bold"'
        self.texts.append(f"<text {attrs}>{escape(_clean(text))}</text>")


# --------------------------------------------------------------------------- layout


class _Layout:
    """Places boxes and forks along the flow (main axis) and lanes across it.

    Every item is measured first (`length` along the flow, `lo`/`hi` across it, relative
    to its lane's centre line), then placed; lanes of a fork are stacked by their measured
    extents, so neither boxes nor labels of two lanes can meet. `m`/`c` are main/cross
    coordinates: x/y when the flow is horizontal, y/x when it is vertical.
    """

    def __init__(self, vertical: bool, rf_marks: list[tuple[str, str, float, float]]):
        self.vertical = vertical
        self.rf_marks = rf_marks  # (label, colour, fraction of height, fraction of width)
        self.canvas = _Canvas()
        self.boxes_drawn = 0

    def xy(self, m: float, c: float) -> tuple[float, float]:
        return (c, m) if self.vertical else (m, c)

    # ---------------------------------------------------------------- measuring
    def _gap_lines(self, box: Box) -> tuple[list[str], list[str]]:
        return box.label, [" ".join("+" + f for f in box.folded)] if box.folded else []

    def _under(self, box: Box) -> list[tuple[str, str]]:
        """Lines printed under (or beside) a box: its size, notes, error; with colours."""
        # a failing layer has no true output: its error stands where the size would
        size = "?" if box.volume is None else str(box.volume)
        lines = [] if box.error else [(size, "#222222")]
        if box.kind == "input":
            lines[0] = (f"input {size}", "#222222")
            for label, colour, _, _ in self.rf_marks:
                lines.extend((line, colour) for line in _wrap(label, RF_WRAP))
        lines.extend((n, "#555555") for n in box.notes)
        for message in box.error:
            lines.extend((line, ERROR_COLOUR) for line in _wrap("error: " + message,
                                                                ERROR_WRAP))
        return lines

    def gap(self, box: Box, first: bool) -> float:
        if first:
            return 0.0
        above, below = self._gap_lines(box)
        if self.vertical:
            return max(MIN_GAP, (len(above) + len(below)) * LINE_H + 2 * PAD + 4)
        widest = max((_text_w(t) for t in above + below), default=0.0)
        return max(MIN_GAP, widest + 2 * PAD)

    def slot(self, box: Box) -> tuple[float, float, float]:
        """(length along the flow, lo and hi across it) of a box with its printed lines."""
        s = _shape(box.volume, self.vertical)
        under = self._under(box)
        widest = max(_text_w(t) for t, _ in under)
        if self.vertical:
            length = max(s.oy + s.along, len(under) * LINE_H + 4)
            return length, -s.across / 2, s.across / 2 + s.ox + PAD + widest
        length = max(s.along + s.ox, widest)
        return length, -(s.across / 2 + s.oy), s.across / 2 + 4 + len(under) * LINE_H

    def gap_extent(self, box: Box, first: bool) -> tuple[float, float]:
        if first:
            return 0.0, 0.0
        above, below = self._gap_lines(box)
        if self.vertical:
            widest = max((_text_w(t) for t in above + below), default=0.0)
            return 0.0, PAD + widest
        return -(len(above) * LINE_H + 4), len(below) * LINE_H + 4

    def measure(self, items: list[Item], first: bool = False) -> tuple[float, float, float]:
        length, lo, hi = 0.0, 0.0, 0.0
        for k, it in enumerate(items):
            if isinstance(it, Box):
                g = self.gap(it, first and k == 0)
                sl, slo, shi = self.slot(it)
                glo, ghi = self.gap_extent(it, first and k == 0)
                length += g + sl
                lo, hi = min(lo, slo, glo), max(hi, shi, ghi)
            else:
                fl, flo, fhi = self.measure_fork(it)
                length += fl
                lo, hi = min(lo, flo), max(hi, fhi)
        return length, lo, hi

    def _lanes(self, fork: Fork) -> list[tuple[list[Item], float, float, float, bool]]:
        """(items, length, lo, hi, identity) of the lanes drawn: an empty shortcut is the
        identity, drawn only when the block's merge is drawn."""
        out = []
        for lane in fork.lanes:
            if lane:
                out.append((lane, *self.measure(lane), False))
            elif fork.kind == "residual" and fork.merge is not None:
                if self.vertical:
                    out.append((lane, MIN_GAP, -2.0, PAD + _text_w("identity"), True))
                else:
                    out.append((lane, MIN_GAP, -(LINE_H + 2.0), 2.0, True))
        return out

    def _offsets(self, lanes: list[tuple[list[Item], float, float, float, bool]]) -> list[float]:
        offsets: list[float] = []
        for k, (_, _, lo, _, _) in enumerate(lanes):
            if k == 0:
                offsets.append(0.0)
            else:
                prev_hi = lanes[k - 1][3]
                offsets.append(offsets[-1] + prev_hi + LANE_GAP - lo)
        return offsets

    def measure_fork(self, fork: Fork) -> tuple[float, float, float]:
        lanes = self._lanes(fork)
        offsets = self._offsets(lanes)
        longest = max((ln[1] for ln in lanes), default=0.0)
        length = STUB + longest
        lo = min([0.0] + [off + ln[2] for off, ln in zip(offsets, lanes, strict=True)])
        hi = max([0.0] + [off + ln[3] for off, ln in zip(offsets, lanes, strict=True)])
        if fork.merge is not None:
            sl, slo, shi = self.slot(fork.merge)
            glo, ghi = self.gap_extent(fork.merge, False)
            # the join bus, then the circled plus, then the merge's own arrow
            length += 2 * STUB + self.gap(fork.merge, False) + sl
            lo, hi = min(lo, slo, glo), max(hi, shi, ghi)
        return length, lo, hi

    # ---------------------------------------------------------------- placing
    def place(self, items: list[Item], m: float, c: float, m_from: float | None,
              first: bool = False) -> float | None:
        """Draw a chain starting at `m` on the centre line `c`; the first arrow starts at
        `m_from` (None: no arrow). Returns where the arrow out of the chain starts."""
        for k, it in enumerate(items):
            if isinstance(it, Box):
                is_first = first and k == 0
                g = self.gap(it, is_first)
                m_from = self.place_box(it, m, c, g, m_from if not is_first else None)
                m += g + self.slot(it)[0]
            else:
                length = self.measure_fork(it)[0]
                m_from = self.place_fork(it, m, c, m_from)
                m += length
        return m_from

    def place_box(self, box: Box, m: float, c: float, gap: float,
                  m_from: float | None) -> float:
        s = _shape(box.volume, self.vertical)
        length = self.slot(box)[0]
        body = s.along + (s.oy if self.vertical else s.ox)
        start = m + gap + (length - body) / 2 if not self.vertical else m + gap
        if self.vertical:
            face_m = start + s.oy                     # the front face's top
            entry = face_m - s.oy * min(1.0, (s.across / 2) / s.ox if s.ox else 1.0)
            exit_m = face_m + s.along
        else:
            face_m = start
            entry = face_m
            exit_m = face_m + s.along
        if m_from is not None:
            self.canvas.line([self.xy(m_from, c), self.xy(entry, c)], arrow=True)
            self._gap_text(box, m, c, gap)
        # the cuboid: front face, then the receding top and side faces
        if self.vertical:
            x0, y0, w, h = c - s.across / 2, face_m, s.across, s.along
        else:
            x0, y0, w, h = face_m, c - s.across / 2, s.along, s.across
        self._cuboid(box, x0, y0, w, h, s.ox, s.oy)
        self._under_text(box, s, m + gap, length, c, x0, y0, w, h)
        return exit_m

    def _gap_text(self, box: Box, m: float, c: float, gap: float) -> None:
        above, below = self._gap_lines(box)
        if self.vertical:
            y = m + PAD + LINE_H
            for k, t in enumerate(above + below):
                colour = "#555555" if k >= len(above) else None
                self.canvas.text(c + PAD, y, t, cls="layer" if k == 0 else "", colour=colour,
                                 bold=k == 0)
                y += LINE_H
            return
        mid = m + gap / 2
        for k, t in enumerate(reversed(above)):
            first_line = k == len(above) - 1
            self.canvas.text(mid, c - 4 - k * LINE_H, t, anchor="middle",
                             cls="layer" if first_line else "", bold=first_line)
        for k, t in enumerate(below):
            self.canvas.text(mid, c + 4 + LINE_H - 3 + k * LINE_H, t, anchor="middle",
                             colour="#555555")

    def _cuboid(self, box: Box, x0: float, y0: float, w: float, h: float, ox: float,
                oy: float) -> None:
        front, top, side, edge = COLOURS.get(box.kind, COLOURS["other"])
        dashed = ' stroke-dasharray="4 3"' if box.volume is None else ""

        def poly(points: list[tuple[float, float]], fill: str) -> str:
            pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            return f'<polygon points="{pts}" fill="{fill}" stroke="{edge}"{dashed}/>'

        title = escape(_clean(" + ".join(box.rows) + (f" -> {box.volume}" if box.volume
                                                       else "")))
        attrs = (f'class="volume{" failed" if box.error else ""}" '
                 f'data-name={quoteattr(_clean(box.name))} '
                 f'data-kind="{box.kind}"')
        if box.volume is not None:
            v = box.volume
            attrs += f' data-volume="{v.w}x{v.h}x{v.d}"'
        parts = [
            f"<g {attrs}><title>{title}</title>",
            poly([(x0, y0), (x0 + w, y0), (x0 + w + ox, y0 - oy), (x0 + ox, y0 - oy)], top),
            poly([(x0 + w, y0), (x0 + w, y0 + h), (x0 + w + ox, y0 + h - oy),
                  (x0 + w + ox, y0 - oy)], side),
            poly([(x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0, y0 + h)], front),
        ]
        if box.kind == "input":
            parts.extend(self._rf_patches(x0, y0, w, h, ox, oy))
        parts.append("</g>")
        self.canvas.boxes.append("".join(parts))
        self.boxes_drawn += 1

    def _rf_patches(self, x0: float, y0: float, w: float, h: float, ox: float,
                    oy: float) -> list[str]:
        """The receptive field on the input's image plane: the side face (height x width)
        when the flow is horizontal, the top face (width x height) when it is vertical."""
        out = []
        for _, colour, fh, fw in self.rf_marks:
            if self.vertical:
                # top face: u across the front edge (width), v receding (height)
                def at(u: float, v: float) -> tuple[float, float]:
                    return x0 + u * w + v * ox, y0 - v * oy
                u0, u1, v0, v1 = (1 - fw) / 2, (1 + fw) / 2, (1 - fh) / 2, (1 + fh) / 2
            else:
                # side face: u receding (width), v down the front edge (height)
                def at(u: float, v: float) -> tuple[float, float]:
                    return x0 + w + u * ox, y0 + v * h - u * oy
                u0, u1, v0, v1 = (1 - fw) / 2, (1 + fw) / 2, (1 - fh) / 2, (1 + fh) / 2
            pts = [at(u0, v0), at(u1, v0), at(u1, v1), at(u0, v1)]
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            out.append(f'<polygon class="rf" points="{path}" fill="{colour}" '
                       f'fill-opacity="0.25" stroke="{colour}" stroke-width="1.5"/>')
        return out

    def _under_text(self, box: Box, s: _Shape, m_slot: float, length: float, c: float,
                    x0: float, y0: float, w: float, h: float) -> None:
        lines = self._under(box)
        if self.vertical:
            x = x0 + w + s.ox + PAD
            y = y0 + h / 2 - (len(lines) - 1) * LINE_H / 2 + 4
            y = max(y, m_slot + LINE_H - 3)
            for k, (t, colour) in enumerate(lines):
                self.canvas.text(x, y + k * LINE_H, t, colour=colour, cls="size" if k == 0
                                 else "")
            return
        mid = m_slot + length / 2
        y = c + s.across / 2 + 4 + LINE_H - 3
        for k, (t, colour) in enumerate(lines):
            self.canvas.text(mid, y + k * LINE_H, t, anchor="middle", colour=colour,
                             cls="size" if k == 0 else "")

    def place_fork(self, fork: Fork, m: float, c: float, m_from: float | None) -> float | None:
        lanes = self._lanes(fork)
        offsets = self._offsets(lanes)
        m_fork = m + STUB
        longest = max((ln[1] for ln in lanes), default=0.0)
        m_join = m_fork + longest + STUB
        if m_from is not None:
            self.canvas.line([self.xy(m_from, c), self.xy(m_fork, c)])
        if len(lanes) > 1:
            self.canvas.line([self.xy(m_fork, c), self.xy(m_fork, c + offsets[-1])])
        ends: list[tuple[float, float]] = []
        for (items, _, _, _, identity), off in zip(lanes, offsets, strict=True):
            lc = c + off
            if identity:
                self.canvas.line([self.xy(m_fork, lc), self.xy(m_join, lc)])
                mid = (m_fork + m_join) / 2
                if self.vertical:
                    self.canvas.text(lc + PAD, mid, "identity", colour="#555555")
                else:
                    self.canvas.text(mid, lc - 4, "identity", anchor="middle", colour="#555555")
                ends.append((m_join, lc))
                continue
            exit_m = self.place(items, m_fork, lc, m_fork)
            if exit_m is not None:
                ends.append((exit_m, lc))
        if fork.merge is None:
            return None
        for exit_m, lc in ends:
            if exit_m < m_join:
                self.canvas.line([self.xy(exit_m, lc), self.xy(m_join, lc)])
        if len(lanes) > 1:
            self.canvas.line([self.xy(m_join, c + offsets[-1]), self.xy(m_join, c)])
        self._join_mark(fork, m_join, c)
        return self.place_box(fork.merge, m_join + STUB, c, self.gap(fork.merge, False),
                              m_join)

    def _join_mark(self, fork: Fork, m: float, c: float) -> None:
        """A residual sum: the circled plus of the papers' figures where the lanes meet."""
        if fork.kind != "residual":
            return
        x, y = self.xy(m, c)
        self.canvas.boxes.append(
            f'<g class="join"><circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="white" '
            f'stroke="#3c8a3c"/><path d="M{x - 3.5:.1f},{y:.1f} h7 M{x:.1f},{y - 3.5:.1f} v7" '
            'stroke="#3c8a3c"/></g>')


# --------------------------------------------------------------------------- the picture


def _pair(h: int, w: int) -> str:
    return f"{h}" if h == w else f"{h}x{w}"


def _rf_marks(report: Report, items: list[Item], drawn_failed: bool) -> list[
        tuple[str, str, float, float]]:
    """The receptive field of the last volume, and of the last volume that still has a
    width and height when the last one is a classifier's [1x1xK] (which sees everything)."""
    if drawn_failed:
        return []
    rows = [r for r in report.layers if r.output is not None and r.receptive_field]
    if not rows:
        return []
    vol = report.input
    marks = []
    last = rows[-1]
    chosen = [last]
    if last.output is not None and (last.output.w, last.output.h) == (1, 1):
        spatial = [r for r in rows if r.output is not None and (r.output.w, r.output.h) != (1, 1)]
        if spatial and spatial[-1].receptive_field is not None:
            seen = spatial[-1].receptive_field
            if seen.h < vol.h or seen.w < vol.w:
                chosen.insert(0, spatial[-1])
    colours = [RF_COLOUR, "#8e24aa"]
    for k, r in enumerate(chosen):
        rf = r.receptive_field
        assert rf is not None
        whole = rf.h >= vol.h and rf.w >= vol.w
        what = "the whole input" if whole else f"a {rf.w}x{rf.h} px patch"
        label = (f"a neuron of {_short(r.name)} {r.output} sees {what}"
                 f"{f' (receptive field {_pair(rf.h, rf.w)} px)' if whole else ''}")
        marks.append((label, colours[k % 2] if len(chosen) > 1 else RF_COLOUR,
                       min(1.0, rf.h / vol.h), min(1.0, rf.w / vol.w)))
    # the larger patch first, so the smaller one is drawn on top of it
    return sorted(marks, key=lambda mark: -mark[2] * mark[3])


def svg(report: Report, vertical: bool = False, xml_declaration: bool = True,
        parse_problems: list[Problem] | None = None) -> str:
    """The drawing of a report as SVG text. `parse_problems`: the report is the readable
    part of a spec that failed to load; the first problem is drawn as its failing layer."""
    items = build(report)
    failed = bool(report.errors) or bool(parse_problems)
    if parse_problems:
        p = parse_problems[0]
        # a setting's problem names its layer in the message: "layers[3] (conv2): ..."
        named = re.match(r"[\w\[\].]+ \(([A-Za-z_][\w.\-]*)\):", p.message)
        layer = p.layer or (named.group(1) if named else None)
        name = layer or (f"line {p.line}" if p.line else "spec")
        label = [_short(layer)] if layer else ([f"line {p.line}"] if p.line else [])
        items.append(Box(name, "failed", None, label + ["(unreadable)"], rows=[name],
                         error=[p.message]))
    layout = _Layout(vertical, _rf_marks(report, items, failed))
    length, lo, hi = layout.measure(items, first=True)
    title = f"{report.spec.name} · input {report.input}"
    if not failed:
        title += (f" · {human(report.parameters)} parameters · {human(report.macs)} MACs"
                  f" · output {report.output}")
    errors = len(report.errors) + len(parse_problems or [])
    if failed:
        title += f" · INVALID: {errors} error{'s' if errors > 1 else ''}"
    subtitle = ("box sides follow depth, height and width on a log scale; true sizes in "
                "[WxHxD]; +BN +ReLU: elementwise layers on the volume before them")
    if errors > 1:
        subtitle = f"drawn up to the first failing layer ({errors - 1} more error" \
                   f"{'s' if errors > 2 else ''}: see cnncli check)"
    head = 2 * LINE_H + 16
    top_margin = MARGIN + head
    if vertical:
        width = hi - lo + 2 * MARGIN
        height = length + top_margin + MARGIN
        origin_c, origin_m = MARGIN - lo, top_margin
    else:
        width = length + 2 * MARGIN
        height = hi - lo + top_margin + MARGIN
        origin_m, origin_c = MARGIN, top_margin - lo
    layout.place(items, origin_m, origin_c, None, first=True)
    width = max(width, _text_w(title) * 13 / FONT_SIZE + 2 * MARGIN,
                _text_w(subtitle) + 2 * MARGIN)
    c = layout.canvas
    c.text(MARGIN, MARGIN + 12, title, size=13, bold=True,
           colour=ERROR_COLOUR if failed else "#111111")
    c.text(MARGIN, MARGIN + 12 + LINE_H + 3, subtitle, colour="#666666")
    out = []
    if xml_declaration:
        out.append('<?xml version="1.0" encoding="UTF-8"?>')
    w, h = math.ceil(width), math.ceil(height)
    out.append(f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
               f'viewBox="0 0 {w} {h}" class="cnncli-net">')
    out.append(f"<title>{escape(_clean(report.spec.name))}</title>")
    out.append('<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" '
               'markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
               '<path d="M0,0 L10,5 L0,10 z" fill="#555555"/></marker></defs>')
    out.append(f'<rect width="{w}" height="{h}" fill="white"/>')
    out.append(f'<g font-family="{FONT}" font-size="{FONT_SIZE}" fill="#222222">')
    out.append('<g fill="none" stroke="#555555" stroke-width="1.2">')
    out.extend(c.lines)
    out.append("</g>")
    out.extend(c.boxes)
    out.extend(c.texts)
    out.append("</g></svg>")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- from a spec file


@dataclass
class Drawing:
    svg: str
    report: Report | None
    problems: list[Problem]   # every error (of the report, or of reading the spec)
    boxes: int

    @property
    def valid(self) -> bool:
        return not self.problems


def draw(path: str | Path, input_volume: Volume | None = None, rounding: str | None = None,
         vertical: bool = False, load: bool = True) -> Drawing:
    """Draw a spec file. A spec whose arithmetic fails is drawn up to the failing layer; one
    that cannot even be read as a net (a bad setting) is drawn up to the top-level layer
    that holds the problem. SpecError (not a spec at all) is raised."""
    from cnncli.spec.parse import load_spec

    try:
        spec = load_spec(path)
    except SpecInvalid as exc:
        return _draw_unreadable(Path(path), exc.problems, input_volume, rounding, vertical)
    report = analyze(spec, input_volume, rounding)
    text = svg(report, vertical)
    return Drawing(text, report, list(report.errors), text.count('class="volume'))


def _draw_unreadable(path: Path, problems: list[Problem], input_volume: Volume | None,
                     rounding: str | None, vertical: bool) -> Drawing:
    """The layers before the first one with a problem, analysed, and that one failing."""
    data = read_yaml(path.read_text(encoding="utf-8"), str(path))
    top = dict(data) if isinstance(data, dict) else {}
    layers = top.get("layers")
    prefix: Spec | None = None
    if isinstance(layers, _Located) and isinstance(layers.value, list) and layers.value:
        items = layers.value
        lines = [p.line for p in problems if p.line is not None]
        first = min(lines) if lines else None
        cut = 0
        if first is not None:
            cut = sum(1 for it in items if isinstance(it, _Located) and it.line <= first) - 1
            cut = max(0, cut)
        if cut > 0:
            top["layers"] = _Located(items[:cut], layers.line)
            try:
                prefix = parse_spec(_Located(top, 1), str(path))
            except (SpecInvalid, SpecError):
                prefix = None
    ordered = sorted(problems, key=lambda p: (p.line is None, p.line or 0))
    if prefix is None:
        text = _problems_only(path, ordered)
        return Drawing(text, None, problems, text.count('class="volume'))
    report = analyze(prefix, input_volume, rounding)
    text = svg(report, vertical, parse_problems=ordered)
    return Drawing(text, report, problems, text.count('class="volume'))


def _problems_only(path: Path, problems: list[Problem]) -> str:
    """A spec with no drawable layer (a bad input, or its first layer fails): one failing
    box with the problems."""
    lines: list[str] = []
    for p in problems:
        where = f"line {p.line}: " if p.line else ""
        lines.extend(_wrap(where + p.message, 2 * ERROR_WRAP))
    width = max(_text_w(t) for t in lines + [str(path)]) + 2 * MARGIN + 60
    height = MARGIN * 2 + 30 + LINE_H * len(lines) + 40
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<svg xmlns="http://www.w3.org/2000/svg" width="{math.ceil(width)}" '
           f'height="{height}" viewBox="0 0 {math.ceil(width)} {height}" class="cnncli-net">',
           f'<rect width="{math.ceil(width)}" height="{height}" fill="white"/>',
           f'<g font-family="{FONT}" font-size="{FONT_SIZE}" fill="#222222">',
           f'<text x="{MARGIN}" y="{MARGIN + 12}" font-size="13" font-weight="bold" '
           f'fill="{ERROR_COLOUR}">{escape(_clean(str(path)))}   INVALID: nothing to draw'
           "</text>",
           f'<g class="volume failed" data-name="spec" data-kind="failed"><title>the spec'
           f'</title><rect x="{MARGIN}" y="{MARGIN + 26}" width="40" height="30" '
           f'fill="#fde0e0" stroke="{ERROR_COLOUR}" stroke-dasharray="4 3"/></g>']
    y = MARGIN + 26 + 40 + LINE_H
    for t in lines:
        out.append(f'<text x="{MARGIN}" y="{y}" fill="{ERROR_COLOUR}">'
                   f"{escape(_clean(t))}</text>")
        y += LINE_H
    out.append("</g></svg>")
    return "\n".join(out) + "\n"
