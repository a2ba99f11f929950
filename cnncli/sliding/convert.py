"""FC layers -> convolutions (the notes' "converting FC layers to CONV layers"), the
matching weight reshape, and the geometry of sliding-window evaluation, as plain data.

A net trained on n x n crops ends in fully-connected layers. The first one sees the
whole last volume [H x W x D]; as a convolution with F = (H, W), P = 0, S = 1 and one
filter per unit it computes the same numbers, and later FC layers (over [1x1xD]) become
1x1 convolutions. Global pooling becomes a window of the size it pooled at the training
size, stride 1. The converted net then runs on a larger image in one pass and produces a
map of class scores: one position per n x n window, windows `J` pixels apart, where `J`
is the product of the strides (the report's "jump").

Weights: an FC weight is [units, D*H*W] with its input flattened in (depth, height,
width) order, as PyTorch flattens an NCHW volume, so it reshapes to the conv layout OIHW
[units, D, H, W] with no transpose. The converted layer keeps the FC layer's name, so
`fc1.weight` maps one to one.

When is one pass the same as evaluating every crop on its own? See `equivalence`:
only when no layer pads (zero padding inside the net means a window in the middle of a
big image sees real neighbours where the lone crop saw zeros) and no pooling rounds up
(the crop's last window hangs past its edge onto padding; in the big image the same
window reads real pixels). docs/sliding-window.md states the rule.

No numpy, no numba at module level: `cnncli check --fc-to-conv` starts fast.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from cnncli.analysis.report import Report, analyze
from cnncli.analysis.shapes import window_output
from cnncli.errors import RunInvalid
from cnncli.layers.base import LayerSpec
from cnncli.spec.types import Pair, Spec, SpecInvalid, Volume, walk
from cnncli.spec.write import spec_to_dict, spec_yaml  # noqa: F401 - the convert command's

# --------------------------------------------------------------------------- the spec


def fc_to_conv_spec(spec: Spec, rounding: str | None = None) -> Spec:
    """The net with every FC layer (and global pool) rewritten as a convolution (a pool).

    Sizes come from the net at its own input (the training size). Raises SpecInvalid if
    the net is invalid there or cannot slide (a locally-connected layer).
    """
    report = analyze(spec, None, rounding)
    if report.errors:
        raise SpecInvalid(report.errors)
    rows = {r.name: r for r in report.rows}
    problems = [p for layer in walk(spec.layers) if (p := layer.sliding_problem())]
    if problems:
        raise SpecInvalid(problems)

    def convert(node: LayerSpec) -> LayerSpec:
        return node.as_sliding(rows.get(node.name), convert)  # type: ignore[arg-type]

    converted = replace(spec, layers=tuple(convert(n) for n in spec.layers),
                        rounding=report.rounding)
    return replace(converted, raw=spec_to_dict(converted, description=(
        f"{spec.name} with its FC layers rewritten as convolutions (cnncli convert "
        f"--fc-to-conv); trained on {spec.input}: evaluate at a larger input to score every "
        f"window in one pass")))


def _conversions(spec: Spec, rounding: str | None, what: str) -> list[dict[str, Any]]:
    report = analyze(spec, None, rounding)
    rows = {r.name: r for r in report.rows}
    found = []
    for layer in walk(spec.layers):
        change = layer.sliding_change(rows[layer.name])
        if change is not None and change[0] == what:
            found.append(change[1])
    return found


def fc_layers(spec: Spec, rounding: str | None = None) -> list[dict[str, Any]]:
    """Each FC layer of the (unconverted) net with the volume it sees and its conv form."""
    return _conversions(spec, rounding, "fc")


def global_pools(spec: Spec, rounding: str | None = None) -> list[dict[str, Any]]:
    """Each global pool of the (unconverted) net with the volume it pools at training size."""
    return _conversions(spec, rounding, "global pool")


# --------------------------------------------------------------------------- weights


class ConvertError(RunInvalid):
    """Weights that do not fit the net; the message names the parameter and both shapes."""


def convert_weights(spec: Spec, state: dict[str, Any],
                    rounding: str | None = None) -> dict[str, Any]:
    """A state dict of the original net -> the converted net's (FC weights reshaped).

    fc weight [units, D*H*W] (flattened in depth, height, width order, like PyTorch) ->
    conv weight [units, D, H, W] (OIHW): a plain reshape. Arrays already in the conv
    shape pass through, so converting twice is harmless. Everything else is copied as is.
    """
    out = dict(state)
    for fc in fc_layers(spec, rounding):
        key = f"{fc['name']}.weight"
        if key not in state:
            raise ConvertError(f"{key}: missing from the weights (the FC layer {fc['name']} "
                               f"over {fc['input']} needs [{fc['weight_from'][0]}, "
                               f"{fc['weight_from'][1]}])")
        w = state[key]
        shape = tuple(w.shape)
        if shape == tuple(fc["weight_to"]):
            continue
        if shape != tuple(fc["weight_from"]):
            raise ConvertError(
                f"{key}: expected [{', '.join(map(str, fc['weight_from']))}] (units x "
                f"D*H*W over {fc['input']}), got [{', '.join(map(str, shape))}]")
        out[key] = w.reshape(fc["weight_to"])
    return out


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Break:
    """A layer that makes one pass differ from crop-by-crop evaluation."""

    layer: str
    reason: str  # "padding" | "ceil"
    message: str
    line: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "reason": self.reason, "message": self.message,
                "line": self.line}


def equivalence(spec: Spec, trained_at: Volume,
                rounding: str | None = None) -> tuple[list[Break], list[str]]:
    """Why one pass over a big image is not the same as running every crop on its own.

    The rule (for windows `J`-aligned, J = product of strides, on an image that tiles):
    every layer maps crop position j to big-image position o/J_l + j with the same
    window weights, so values agree wherever a layer's window lies inside the crop.
    They differ when a layer's window reaches outside the crop:
      - padding P > 0 in a conv or pool: the crop's window reads zeros (or -inf for
        max) at its border; in the big image it reads the real neighbours;
      - ceil pooling that rounds up: the crop's last window hangs past the crop.
    Floor rounding that drops pixels is harmless: the crop never reads them, and the
    big image's window at the same place does not either.
    Returns (breaks, notes); no breaks means the map equals crop-by-crop evaluation.
    """
    report = analyze(spec, trained_at, rounding)
    rows = {r.name: r for r in report.rows}
    breaks: list[Break] = []
    notes: list[str] = []
    for layer in walk(spec.layers):
        window = layer.window()  # None for a global pool: it pools whatever it is given
        if window is None or layer.name not in rows:
            continue
        row = rows[layer.name]
        if window.pad != Pair(0, 0):
            breaks.append(Break(layer.name, "padding", (
                f"{layer.name}: {window.what} pads by {window.pad}; a window inside a larger "
                "image sees its real neighbours there, where the lone crop saw padding"),
                layer.line))
        if row.input is None:
            continue
        size, stride, dil = window.size, window.stride, window.dilation
        mode = window.rounding or report.rounding
        for dim, n_in, f, p, s, d in (("height", row.input.h, size.h, window.pad.h, stride.h,
                                       dil.h),
                                      ("width", row.input.w, size.w, window.pad.w, stride.w,
                                       dil.w)):
            r = window_output(n_in, f, p, s, mode, d, window.is_pool)
            if r.overhang:
                breaks.append(Break(layer.name, "ceil", (
                    f"{layer.name}: pooling rounds up ({dim} {r.formula} -> {r.out}); at the "
                    f"training size its last window hangs {r.overhang} px past the crop, but "
                    "in a larger image the same window reads real pixels, so the one-pass map "
                    "would not be the crops' scores"), layer.line))
                break
            if r.dropped_pixels:
                notes.append(f"{layer.name}: rounds down in {dim} and never reads the last "
                             f"{r.dropped_pixels} px of its input at the training size "
                             "(harmless here: the one pass skips the same pixels)")
    return breaks, notes


def _tiling(n: int, big: int, jump: int) -> tuple[bool, int, int]:
    """Does `big` tile with windows of `n` every `jump`? Also the tiling sizes around it."""
    if big < n:
        return False, n, n
    below = n + (big - n) // jump * jump
    return (big - n) % jump == 0, below, below + jump


def _pair_dict(h: int, w: int) -> dict[str, int]:
    return {"height": h, "width": w}


def _vol_dict(v: Volume | None) -> dict[str, Any] | None:
    if v is None:
        return None
    return {"width": v.w, "height": v.h, "depth": v.d, "text": str(v)}


def check_sliding(spec: Spec, trained_at: Volume, report: Report,
                  stride: int | None = None) -> dict[str, Any]:
    """Sliding-window geometry of a converted net at `report.input`, as plain data.

    `report` is `analyze(spec, image)`; `trained_at` the crop size the net was trained on
    (the window). With `stride`, windows `stride` px apart (a divisor of the net's own
    stride, evaluated by several shifted passes). The report's conv-sizing hints about
    the layers that were FC layers are dropped from `report.warnings` (they do not apply).
    """
    image = report.input
    jump = report.jump or Pair(1, 1)
    rf = report.receptive_field or Pair(1, 1)
    step = Pair(stride, stride) if stride else jump
    tile_h = _tiling(trained_at.h, image.h, step.h)
    tile_w = _tiling(trained_at.w, image.w, step.w)
    tiles = tile_h[0] and tile_w[0] and image.d == trained_at.d
    problems: list[str] = []
    if image.d != trained_at.d:
        problems.append(f"the image depth {image.d} is not the net's {trained_at.d}")
    finer = bool(stride) and not (jump.h % stride or jump.w % stride)  # type: ignore[operator]
    coarser = bool(stride) and not (stride % jump.h or stride % jump.w)  # type: ignore[operator]
    if stride and not (finer or coarser):
        tiles = False
        problems.append(f"--stride {stride} must divide the net's own window stride {jump} "
                        "(the product of its strides; several shifted passes) or be a "
                        "multiple of it (every k-th window of one pass)")
    nearest: list[str] = []
    if not tiles:
        dims = [("width", trained_at.w, image.w, step.w, tile_w[0]),
                ("height", trained_at.h, image.h, step.h, tile_h[0])]
        if dims[0][1:] == dims[1][1:]:
            dims = [("width and height", *dims[0][1:])]
        for dim, n, big, j, ok in dims:
            if big < n:
                problems.append(f"the image {dim} {big} is smaller than the window {n}")
            elif not ok:
                verb = "do" if " and " in dim else "does"
                problems.append(f"the image {dim} ({big}) {verb} not tile: ({big} - {n})/{j} = "
                                f"{(big - n) / j:g} steps of {j} px after the first window "
                                "is not whole")
        nearest = [str(Volume(w, h, trained_at.d)) for w, h in
                   dict.fromkeys(((tile_w[1], tile_h[1]), (tile_w[2], tile_h[2])))
                   if w >= trained_at.w and h >= trained_at.h]
    positions = None
    if tiles:
        positions = _pair_dict((image.h - trained_at.h) // step.h + 1,
                               (image.w - trained_at.w) // step.w + 1)
    breaks, notes = equivalence(spec, trained_at, report.rounding)
    passes = max(1, (jump.h // step.h) * (jump.w // step.w)) if tiles else None
    as_conv = []
    trained = analyze(spec, trained_at, report.rounding)
    for row in trained.layers:
        # a weighted window over its whole input: an FC layer written as a conv
        if row.weights and row.input is not None and row.output is not None \
                and (row.output.w, row.output.h) == (1, 1) and (row.input.w, row.input.h) != \
                (1, 1):
            as_conv.append({"name": row.name, "input": str(row.input),
                            "settings": row.settings})
    # The conv-sizing hints (pad 0 shrinks the volume; a big filter past the first layer)
    # are about nets as designed, not about an FC layer rewritten as a conv: drop them.
    converted_names = {c["name"] for c in as_conv}
    report.warnings[:] = [w for w in report.warnings if w.layer not in converted_names
                          or "holds" in w.message]
    context = _pair_dict(max(0, rf.h - trained_at.h), max(0, rf.w - trained_at.w))
    return {
        "trained_at": _vol_dict(trained_at),
        "image": _vol_dict(image),
        "score_map": _vol_dict(report.output),
        "window": _pair_dict(trained_at.h, trained_at.w),
        "window_stride": _pair_dict(step.h, step.w),
        "net_stride": _pair_dict(jump.h, jump.w),
        "passes": passes,
        "receptive_field": _pair_dict(rf.h, rf.w),
        "context": context,  # px the receptive field reaches past the window, both sides
        "windows": positions,
        "tiles": tiles,
        "problems": problems,
        "nearest_tiling": nearest,
        "whole_input_convs": as_conv,
        "exact": not breaks,
        "breaks": [b.as_dict() for b in breaks],
        "notes": notes,
        "usable": tiles and not any(b.reason == "ceil" for b in breaks) and report.valid,
    }


def print_sliding(console: Any, data: dict[str, Any]) -> None:
    """Render `check_sliding`'s data (a rich Console)."""
    from rich.markup import escape

    win = data["window"]
    step = data["window_stride"]
    rf = data["receptive_field"]
    console.print()
    console.print(f"[bold]sliding window[/] (FC layers as convolutions; trained on "
                  f"{data['trained_at']['text']})")
    for c in data["whole_input_convs"]:
        console.print(f"  {escape(c['name'])}: conv over all of {c['input']} "
                      f"({escape(c['settings'])}): one position per window")
    window = f"{win['width']}x{win['height']}"
    stride = f"{step['width']}" if step["width"] == step["height"] else \
        f"{step['width']}x{step['height']}"
    if data["tiles"] and data["score_map"] is not None:
        pos = data["windows"]
        console.print(f"  image {data['image']['text']} -> score map "
                      f"{data['score_map']['text']}: {pos['width']}x{pos['height']} = "
                      f"{pos['width'] * pos['height']} windows of {window} at stride {stride}")
        if data["passes"] and data["passes"] > 1:
            console.print(f"  stride {stride} is finer than the net's own "
                          f"{data['net_stride']['width']}: {data['passes']} shifted passes, "
                          "interleaved")
    else:
        console.print(f"  window {window}, window stride {stride} (product of the strides)")
    ctx = data["context"]
    rf_text = f"{rf['width']}x{rf['height']}"
    if ctx["width"] or ctx["height"]:
        console.print(f"  receptive field of one score: {rf_text}, wider than the window by "
                      f"{ctx['width']}x{ctx['height']} px (zero padding inside the net)")
    else:
        console.print(f"  receptive field of one score: {rf_text}")
    for note in data["notes"]:
        console.print(f"  [dim]note: {escape(note)}[/]")
    pads = [b for b in data["breaks"] if b["reason"] == "padding"]
    if len(pads) == 1:
        console.print(f"  [yellow]warning:[/] {escape(pads[0]['message'])}")
    elif pads:
        names = ", ".join(b["layer"] for b in pads[:6]) + (", ..." if len(pads) > 6 else "")
        console.print(f"  [yellow]warning:[/] {len(pads)} layers zero-pad ({escape(names)}); a "
                      "window inside a larger image sees its real neighbours there, where the "
                      "lone crop saw padding")
    for b in data["breaks"]:
        if b["reason"] == "ceil":
            console.print(f"  [bold red]error:[/] {escape(b['message'])}")
    if data["exact"]:
        console.print("  [green]exact: one pass gives the same scores as running the trained "
                      "net on every window separately[/]")
    elif not any(b["reason"] == "ceil" for b in data["breaks"]):
        console.print("  [yellow]not exact: each score also sees up to "
                      f"{max(ctx['width'], ctx['height']) // 2} px beyond each side of its "
                      "window, so it is not the lone crop's score (`cnncli slide --verify` "
                      "measures the difference)[/]")
    for p in data["problems"]:
        console.print(f"  [bold red]error:[/] {escape(p)}")
    if data["nearest_tiling"]:
        console.print(f"  [green]nearest image sizes that tile: "
                      f"{', '.join(data['nearest_tiling'])}[/]")
