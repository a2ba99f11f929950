"""Learned filters and activation maps as grids of small tiles, as the notes show them.

- Filters: the first conv layer's filters, one colour tile each (its weights over the
  three input channels read as RGB), like Krizhevsky's 96 first-layer filters in the
  notes; a deeper layer's filters one grey tile per (filter, input channel), since their
  input channels are not colours. Each tile is normalised on its own (its smallest weight
  black, its largest white), so the pattern shows whatever its scale, and upscaled by an
  integer factor with nearest-neighbour, so every weight is a visible square.
- Activations: one image through the net, each volume's depth slices tiled, one band per
  volume of the architecture drawing (a layer with the elementwise layers after it). A
  volume is normalised as a whole, so maps that stay dark are weak or dead (the notes:
  "activation maps that are all zero for many inputs can indicate dead filters").

Grids are numpy arrays; Pillow (the `images` extra) writes them and the captions.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.render.pictures import PictureError, need_pillow

GAP = 3              # pixels between tiles: each filter reads as a tile of its own
BACKGROUND = 255     # the page between tiles
TILE = 48            # the side a filter tile is scaled up towards
MAX_FILTERS = 32     # deeper layers: rows (filters) and columns (input channels) shown
MAX_SLICES = 32      # activation maps shown per volume
MAP_MIN, MAP_MAX = 28, 96  # the side of an activation tile after scaling
FC_CELL = 12         # pixels per unit of a [1x1xK] volume
FC_ROW = 64          # units per row of a [1x1xK] volume


def _normalise(a: np.ndarray) -> np.ndarray:
    """To [0, 1] by the array's own range; a constant array is mid-grey."""
    a = a.astype(np.float64)
    low, high = float(a.min()), float(a.max())
    if high - low < 1e-12:
        return np.full(a.shape, 0.5)
    return (a - low) / (high - low)


def _upscale(tile: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour: every value a factor x factor square."""
    return np.repeat(np.repeat(tile, factor, axis=0), factor, axis=1)


def _columns(n: int) -> int:
    """A pleasing number of columns: a divisor of n a little above sqrt(n) (96 -> 12x8),
    else the ceiling of sqrt(n)."""
    root = math.sqrt(n)
    for cols in range(math.ceil(root), int(2 * root) + 1):
        if n % cols == 0 and cols <= 1.6 * root:
            return cols
    return math.ceil(root)


def grid(tiles: list[np.ndarray], cols: int, gap: int = GAP) -> np.ndarray:
    """Tiles (all [h, w, 3] uint8 of one size) in rows of `cols`, `gap` pixels apart."""
    h, w = tiles[0].shape[:2]
    rows = math.ceil(len(tiles) / cols)
    out = np.full((rows * (h + gap) + gap, cols * (w + gap) + gap, 3), BACKGROUND, np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        y, x = gap + r * (h + gap), gap + c * (w + gap)
        out[y:y + h, x:x + w] = tile
    return out


def _rgb(unit: np.ndarray) -> np.ndarray:
    """[h, w] or [h, w, 3] in [0, 1] -> [h, w, 3] uint8."""
    if unit.ndim == 2:
        unit = np.repeat(unit[:, :, None], 3, axis=2)
    return np.clip(np.round(unit * 255), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- filters


def first_conv(state: dict[str, np.ndarray], meta: dict[str, Any]) -> str:
    """The name of the net's first conv layer: from the spec a training checkpoint carries,
    else the first 4-D weight in the file (state dicts keep the layers' order)."""
    text = meta.get("spec_text")
    if isinstance(text, str):
        from cnncli.spec.parse import SpecError, SpecInvalid, parse_spec, read_yaml, walk
        try:
            spec = parse_spec(read_yaml(text, "the checkpoint's spec"))
            for layer in walk(spec.layers):
                if layer.draws_filters and f"{layer.name}.weight" in state:
                    return str(layer.name)
        except (SpecError, SpecInvalid):
            pass
    for key, value in state.items():
        if key.endswith(".weight") and value.ndim == 4:
            return key[:-len(".weight")]
    raise PictureError("the weights hold no conv layer (no 4-D NAME.weight)", 1)


def conv_weight(state: dict[str, np.ndarray], layer: str) -> np.ndarray:
    key = f"{layer}.weight"
    if key not in state:
        convs = [k[:-len(".weight")] for k, v in state.items()
                 if k.endswith(".weight") and v.ndim == 4]
        raise PictureError(f"no conv layer named {layer!r} in the weights (conv layers: "
                           f"{', '.join(convs[:12]) or 'none'}"
                           f"{', ...' if len(convs) > 12 else ''})")
    w = state[key]
    if w.ndim != 4:
        raise PictureError(f"{layer} is not a conv layer (its weight is {w.ndim}-D, not "
                           "[filters, depth, height, width])")
    return w


def filter_tiles(w: np.ndarray, colour: bool) -> tuple[np.ndarray, str]:
    """The grid of a conv weight [K, D, Fh, Fw] and what it shows. Colour: one RGB tile per
    filter (D == 3). Grey: one tile per (filter, input channel), a row per filter."""
    k, d, fh, fw = w.shape
    factor = max(1, round(TILE / max(fh, fw)))
    if colour or d == 1:  # one tile per filter (a greyscale input's filters: grey tiles)
        tiles = [_rgb(_upscale(_normalise(f.transpose(1, 2, 0) if colour else f[0]), factor))
                 for f in w]
        what = (f"{k} filters of {fw}x{fh}x{d}, one {'RGB' if colour else 'grey'} tile each, "
                f"normalised per filter, x{factor}")
        return grid(tiles, _columns(k)), what
    rows, cols = min(k, MAX_FILTERS), min(d, MAX_FILTERS)
    tiles = [_rgb(_upscale(_normalise(w[i, j]), factor)) for i in range(rows)
             for j in range(cols)]
    cut = ""
    if rows < k or cols < d:
        cut = f" (the first {rows} of {k} filters x {cols} of {d} channels)"
    what = (f"{k} filters of {fw}x{fh}x{d}: a row per filter, a grey tile per input "
            f"channel{cut}, normalised per tile, x{factor}")
    return grid(tiles, cols), what


def filters_picture(state: dict[str, np.ndarray], meta: dict[str, Any],
                    layer: str | None = None) -> tuple[Any, str]:
    """A captioned PIL image of a conv layer's filters (default: the first conv layer) and
    its caption. A layer with three input channels is drawn in colour."""
    name = layer or first_conv(state, meta)
    w = conv_weight(state, name)
    colour = w.shape[1] == 3
    pixels, what = filter_tiles(np.asarray(w, dtype=np.float64), colour)
    spec = meta.get("spec_name")
    epoch = meta.get("position", {}).get("epoch") if isinstance(meta.get("position"),
                                                                 dict) else None
    head = f"{name}" + (f" of {spec}" if spec else "") + (f", epoch {epoch}" if epoch else "")
    caption = f"{head}: {what}"
    return _captioned(pixels, [head, what]), caption


# --------------------------------------------------------------------------- activations


def _record(net: Any) -> tuple[dict[str, np.ndarray], list[tuple[Any, str]]]:
    """Make every layer and block of a built net keep a copy of its output (image 0) under
    the report's row name; returns the store and what to undo."""
    from cnncli.layers.blocks import Sequence
    from cnncli.spec.types import unrolled

    store: dict[str, np.ndarray] = {}
    patched: list[tuple[Any, str]] = []

    def keep(obj: Any, name: str) -> None:
        inner = obj.forward

        def forward(x: np.ndarray, training: bool) -> np.ndarray:
            y = inner(x, training)
            store[name] = np.array(y[0], dtype=np.float32)  # a copy: ReLUs write in place
            return y

        obj.forward = forward
        patched.append((obj, "forward"))

    def walk(nodes: tuple[Any, ...], seq: Sequence) -> None:
        for node, item in zip(unrolled(nodes), seq.items, strict=True):
            # a block's sequences pair with its spec's; its output is its report row's
            for sequence, b_seq in zip(node.children(), getattr(item, "sequences", list)(),
                                       strict=True):
                walk(sequence, b_seq)
            keep(item, node.output_row)

    walk(net.spec.layers, net.body)
    return store, patched


def _volume_band(name: str, a: np.ndarray) -> tuple[np.ndarray, str]:
    """One volume [H, W, D] as tiles of its depth slices (or cells of a [1x1xK] vector),
    normalised together."""
    h, w, d = a.shape
    unit = _normalise(a)
    if (h, w) == (1, 1):
        cells = [_rgb(_upscale(unit[0, 0, k:k + 1].reshape(1, 1), FC_CELL)) for k in range(d)]
        return grid(cells, min(d, FC_ROW), gap=0), f"{d} units"
    shown = min(d, MAX_SLICES)
    side = max(h, w)
    if side < MAP_MIN:
        tiles = [_rgb(_upscale(unit[:, :, k], math.ceil(MAP_MIN / side)))
                 for k in range(shown)]
    elif side > MAP_MAX:
        Image: Any = need_pillow("drawing activations")
        size = (max(1, round(w * MAP_MAX / side)), max(1, round(h * MAP_MAX / side)))
        tiles = [np.asarray(Image.fromarray(_rgb(unit[:, :, k])).resize(size, Image.BOX))
                 for k in range(shown)]
    else:
        tiles = [_rgb(unit[:, :, k]) for k in range(shown)]
    what = f"{d} maps" if shown == d else f"the first {shown} of {d} maps"
    return grid(tiles, min(shown, 16)), what


def activations_picture(net: Any, image: np.ndarray, mean: np.ndarray | None,
                        std: np.ndarray | None) -> Any:
    """A PIL image: the input, then one band per volume of the drawing with its depth
    slices; `image` is [H, W, D] (uint8, or float in [0, 1]) at the net's input size."""
    from cnncli.render.pictures.netdraw import Box, Fork, Item, build
    from cnncli.training.data import normalize

    v = net.input
    if image.shape != (v.h, v.w, v.d):
        got = f"[{image.shape[1]}x{image.shape[0]}x{image.shape[2]}]"
        raise PictureError(f"the image is {got} (WxHxD) but {net.spec.name} takes {v}; "
                           "resize it first")
    d = image.shape[2]
    m = mean if mean is not None else np.zeros(d, np.float32)
    s = std if std is not None else np.ones(d, np.float32)
    x = normalize(image[None], m, s)
    store, patched = _record(net)
    try:
        net.forward(x, training=False)
    finally:
        for obj, attr in patched:
            delattr(obj, attr)

    bands: list[tuple[str, np.ndarray]] = []
    shown = image.astype(np.float64) / (255.0 if image.dtype == np.uint8 else 1.0)
    side = max(v.h, v.w)
    factor = max(1, math.ceil(MAP_MAX / side)) if side < MAP_MAX else 1
    pixels = _rgb(_upscale(np.clip(shown if d == 3 else shown[:, :, 0], 0, 1), factor))
    bands.append((f"input {v}", pixels))

    def visit(items: list[Item]) -> None:
        for it in items:
            if isinstance(it, Fork):
                for lane in it.lanes:
                    visit(lane)
                if it.merge is not None:
                    visit([it.merge])
                continue
            assert isinstance(it, Box)
            if it.kind == "input":
                continue
            last = it.rows[-1]
            if last not in store:
                continue
            tiles, what = _volume_band(last, store[last])
            folded = "".join(" +" + f for f in it.folded)
            bands.append((f"{it.name}{folded} {it.volume}: {what}", tiles))

    visit(build(net.report))
    title = f"activations of {net.spec.name}, one image; each volume normalised as a whole"
    return _stacked(title, bands)


# --------------------------------------------------------------------------- captions

PAD = 10        # around the picture
TITLE_H = 22    # the title line
CAPTION_H = 16  # each caption line
SPACING = 8     # between bands


def _font(size: int) -> Any:
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _captioned(pixels: np.ndarray, lines: list[str]) -> Any:
    """The grid under a title and a caption, on white."""
    return _stacked(lines[0], [("\n".join(lines[1:]), pixels)])


def band_origins(bands: list[tuple[str, np.ndarray]]) -> list[tuple[int, int]]:
    """Where each band's pixels start (x, y) in `_stacked`'s picture: fixed line heights,
    so the layout does not depend on the font."""
    y = PAD + TITLE_H
    out = []
    for caption, pixels in bands:
        y += SPACING + (caption.count("\n") + 1) * CAPTION_H if caption else SPACING
        out.append((PAD, y))
        y += pixels.shape[0]
    return out


def _stacked(title: str, bands: list[tuple[str, np.ndarray]]) -> Any:
    """A title, then each band's caption above its pixels, left-aligned on white."""
    Image: Any = need_pillow("drawing tiles")
    from PIL import ImageDraw

    font, bold = _font(12), _font(14)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_w(text: str, f: Any) -> int:
        left, _, right, _ = probe.multiline_textbbox((0, 0), text, font=f)
        return int(right - left)

    origins = band_origins(bands)
    width = max([text_w(title, bold) + 2 * PAD]
                + [max(text_w(c, font) if c else 0, p.shape[1]) + 2 * PAD for c, p in bands])
    height = (origins[-1][1] + bands[-1][1].shape[0] if bands else PAD + TITLE_H) + PAD
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((PAD, PAD), title, fill=(20, 20, 20), font=bold)
    for (caption, pixels), (x, y) in zip(bands, origins, strict=True):
        if caption:
            lines = caption.count("\n") + 1
            draw.multiline_text((x, y - lines * CAPTION_H - 2), caption, fill=(60, 60, 60),
                                font=font, spacing=CAPTION_H - 12)
        canvas.paste(Image.fromarray(pixels), (x, y))
    return canvas


def save_png(picture: Any, out: str | Path) -> Path:
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise PictureError(f"{out}: tiles are written as .png")
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out, optimize=True)
    return out
