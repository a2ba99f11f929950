"""Sliding-window evaluation: score every window of a large image in one forward pass.

    >>> sn = SlidingNet.build(load_spec("net.yaml"), state)     # the trained net's weights
    >>> scores = sn.score_map(image)             # [H', W', K]: one score vector per window
    >>> fine = sn.score_map(image, stride=4)     # windows 4 px apart (shifted passes)
    >>> crops = sn.crop_by_crop(image, stride=4) # the same windows, one forward each

`image` is HxWxC float, already normalised the way the net was trained. The net's FC
layers are rewritten as convolutions (`convert.fc_to_conv_spec`) and their weights
reshaped (`convert.convert_weights`). Finer strides than the net's own (the product of
its strides, J) follow the notes: one pass per shift (dy, dx) in multiples of the
stride below J, each on the image cropped at that shift, the maps interleaved.
Whether the map equals crop-by-crop evaluation is decided by `convert.equivalence`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.analysis.report import analyze
from cnncli.engine.network import Network
from cnncli.errors import InputError
from cnncli.sliding.convert import (
    check_sliding,
    convert_weights,
    equivalence,
    fc_layers,
    fc_to_conv_spec,
)
from cnncli.spec.parse import Pair, Spec, Volume

VERIFY_TOLERANCE = 1e-4  # float32, largest |one pass - crop by crop| over all scores


class SlideError(InputError):
    """An image, a weights file or an option that cannot be used; one line, names the file.
    `code` is the CLI's exit code: 2 a file cannot be read, 1 the net cannot slide over it."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- weights


@dataclass
class Weights:
    """A state dict (PyTorch names and layouts) and the normalisation it was trained with."""

    state: dict[str, np.ndarray]
    mean: np.ndarray | None = None  # per channel, on the [0, 1] scale; None: not normalised
    std: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = ""


def load_weights(path: str | Path) -> Weights:
    """A training checkpoint (`cnncli train`) or a plain weights `.npz` (NAME -> array)."""
    import zipfile

    path = Path(path)
    if path.is_dir():
        raise SlideError(f"{path}: is a directory, not a weights file")
    if not path.is_file():
        raise SlideError(f"{path}: no such weights file")
    try:
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            plain = "meta" not in names and not any(n.startswith("weights/") for n in names)
            arrays = {k: z[k] for k in names} if plain else {}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise SlideError(f"{path}: not a readable .npz of weights ({exc})") from None
    if plain:
        # an exported weights file; PyTorch's BatchNorm step counter is not a parameter
        state = {k: v for k, v in arrays.items() if not k.endswith(".num_batches_tracked")}
        return Weights(state, source=str(path))
    from cnncli.engine.checkpoint import CheckpointError, load_checkpoint

    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:
        raise SlideError(str(exc)) from None
    return Weights(dict(ckpt.weights), ckpt.mean, ckpt.std, ckpt.meta, str(path))


def save_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write arrays to `.npz` atomically (a temporary file renamed over the target)."""
    from cnncli.engine.checkpoint import npz_writer
    from cnncli.files import write_atomically

    path = Path(path)
    write_atomically([(path, npz_writer(arrays))])
    return path


# --------------------------------------------------------------------------- images


def load_image(path: str | Path) -> np.ndarray:
    """An image as HxWxC: `.npy` / `.npz` (one array) as stored, other files via Pillow."""
    path = Path(path)
    if path.is_dir():
        raise SlideError(f"{path}: is a directory, not an image")
    if not path.is_file():
        raise SlideError(f"{path}: no such image")
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):
        import zipfile
        try:
            loaded = np.load(path, allow_pickle=False)
            if suffix == ".npz":
                with loaded as z:
                    if len(z.files) != 1:
                        raise SlideError(f"{path}: expected one array (HxWxC) in the .npz, "
                                         f"found {len(z.files)}: {', '.join(z.files[:5])}")
                    loaded = z[z.files[0]]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise SlideError(f"{path}: not a readable NumPy array ({exc})") from None
        array = np.asarray(loaded)
    else:
        try:
            from PIL import Image
        except ImportError:
            raise SlideError(f"{path}: reading {suffix or 'this'} images needs Pillow "
                             "(pip install 'cnncli[images]'), or save the image as a .npy "
                             "array HxWxC") from None
        try:
            with Image.open(path) as im:
                array = np.asarray(im.convert("L" if im.mode in ("L", "I", "F", "1")
                                              else "RGB"))
        except OSError as exc:
            raise SlideError(f"{path}: not a readable image ({exc})") from None
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise SlideError(f"{path}: expected an image HxWxC, got an array of shape "
                         f"{list(array.shape)}")
    if array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.floating):
        raise SlideError(f"{path}: expected uint8 or float pixels, got {array.dtype}")
    return array


# --------------------------------------------------------------------------- the engine


class _WindowDot:
    """A converted FC layer run as what it is: the FC weight applied to every window.

    The engine's conv reorders an OIHW weight for its GEMM on every call, which for
    VGG16's fc1 (4096 x 25088) costs more than the rest of the 384 px pass. Here the
    windows are gathered in (depth, height, width) order, as the FC layer flattens its
    input, and multiplied with the FC weight as stored: one GEMM, no weight copy.
    """

    def __init__(self, layer: Any):
        self.name = layer.name
        self.weight = layer.params[f"{layer.name}.weight"]  # [K, D, Fh, Fw], shared
        self.bias = layer.params.get(f"{layer.name}.bias")
        self.size = self.weight.shape[2:]

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        n, h, w, d = x.shape
        fh, fw = self.size
        k = self.weight.shape[0]
        if (fh, fw) == (1, 1):
            cols = x.reshape(-1, d)
            oh, ow = h, w
        else:
            # view [N, OH, OW, D, Fh, Fw]: each window flattened (depth, height, width)
            windows = np.lib.stride_tricks.sliding_window_view(x, (fh, fw), axis=(1, 2))
            oh, ow = windows.shape[1], windows.shape[2]
            cols = windows.reshape(n * oh * ow, d * fh * fw)
        y = cols @ self.weight.reshape(k, -1).T
        if self.bias is not None:
            y += self.bias
        return y.reshape(n, oh, ow, k)


def _window_dots(items: list[Any], names: set[str]) -> None:
    """Swap the engine's conv for `_WindowDot` on the converted FC layers (in place)."""
    from cnncli.layers.base import EngineLayer

    for i, item in enumerate(items):
        if isinstance(item, EngineLayer):
            if item.name in names:
                items[i] = _WindowDot(item)
        else:  # a block: the layers of each of its sequences
            for sequence in item.sequences():
                _window_dots(sequence.items, names)


class SlidingNet:
    """A trained net and its FC-as-conv twin, with networks built per image size."""

    def __init__(self, spec: Spec, state: dict[str, np.ndarray], dtype: Any = np.float32,
                 rounding: str | None = None):
        self.spec = spec
        self.rounding = rounding
        self.dtype = np.dtype(dtype)
        self.converted = fc_to_conv_spec(spec, rounding)
        self.trained_at = spec.input
        self.state = state
        self.converted_state = convert_weights(spec, state, rounding)
        self._nets: dict[tuple[int, int], Network] = {}
        self._original: Network | None = None
        self._jump: Pair | None = None
        self.fc_names = {fc["name"] for fc in fc_layers(spec, rounding)}
        self.breaks, self.notes = equivalence(self.converted, self.trained_at,
                                              self.converted.rounding)

    @classmethod
    def build(cls, spec: Spec, state: dict[str, np.ndarray] | None = None,
              dtype: Any = np.float32, seed: int = 0, rounding: str | None = None) -> SlidingNet:
        """From trained weights, or (state None) from the engine's random initialisation."""
        if state is None:
            original = Network(spec, dtype=dtype, seed=seed, rounding=rounding)
            sn = cls(spec, original.state_dict(), dtype, rounding)
            sn._original = original
            return sn
        return cls(spec, state, dtype, rounding)

    @property
    def exact(self) -> bool:
        return not self.breaks

    @property
    def net_stride(self) -> Pair:
        """J, the product of the strides: the windows' spacing in one pass."""
        if self._jump is None:
            self._jump = analyze(self.converted, self.trained_at, self.converted.rounding).jump
        assert self._jump is not None
        return self._jump

    def geometry(self, height: int, width: int, stride: int | None = None) -> dict[str, Any]:
        """`convert.check_sliding` for an image of this size."""
        image = Volume(width, height, self.trained_at.d)
        report = analyze(self.converted, image, self.converted.rounding)
        return check_sliding(self.converted, self.trained_at, report, stride)

    def original(self) -> Network:
        """The unconverted net at the training size, with the same weights."""
        if self._original is None:
            net = Network(self.spec, dtype=self.dtype, rounding=self.rounding)
            net.load_state_dict(self.state)
            self._original = net
        return self._original

    def converted_net(self, height: int, width: int) -> Network:
        key = (height, width)
        if key not in self._nets:
            net = Network(self.converted, Volume(width, height, self.trained_at.d),
                          dtype=self.dtype, rounding=self.converted.rounding)
            net.load_state_dict(self.converted_state)
            _window_dots(net.body.items, self.fc_names)
            self._nets[key] = net
        return self._nets[key]

    # ------------------------------------------------------------ evaluation
    def check_layout(self, image: np.ndarray) -> None:
        """SlideError (exit code 2) unless `image` is HxWxC with the net's channels: the
        one check of an image's layout, made before anything reads its pixels."""
        d, name = self.trained_at.d, self.spec.name
        if image.ndim != 3:
            raise SlideError(f"expected an image HxWxC, got an array of shape "
                             f"{list(image.shape)}")
        h, _, c = image.shape
        if c == d:
            return
        if h == d and c > 4:
            raise SlideError(f"the array's shape {list(image.shape)} looks like channels "
                             f"first (CxHxW); {name} takes HxWx{d}: store "
                             "np.transpose(image, (1, 2, 0))")
        hint = {(4, 3): ": drop the alpha channel (image[..., :3])",
                (1, 3): ": convert the greyscale image to RGB (np.repeat(image, 3, axis=2))",
                (3, 1): ": convert it to greyscale"}.get((c, d), "")
        raise SlideError(f"the image has {c} channel{'s' if c != 1 else ''} but {name} "
                         f"takes {d}{hint}")

    def prepare(self, image: np.ndarray, weights: Weights | None, where: str = "the image",
                warn: Callable[[str], None] | None = None) -> np.ndarray:
        """The image as the net takes it: its layout checked (`check_layout`), its pixels
        finite (SlideError otherwise; float pixels that look like the 0..255 scale get a
        line to `warn`), uint8 -> [0, 1], then the checkpoint's per-channel normalisation,
        if it has one."""
        from cnncli.training import data as D

        self.check_layout(image)
        try:
            D.check_finite(image, where)
        except D.DataError as exc:
            raise SlideError(str(exc)) from None
        note = D.scale_warning(image, where)
        if note:
            (warn or D.warn_python)(note)
        if weights is not None and weights.mean is not None and weights.std is not None:
            return D.normalize(image, weights.mean, weights.std)
        d = image.shape[-1]
        return D.normalize(image, np.zeros(d, np.float32), np.ones(d, np.float32))

    def check_image(self, image: np.ndarray, stride: int | None = None) -> dict[str, Any]:
        """The geometry for this image; SlideError (exit code 1) if the net cannot slide
        over it exactly as asked (size does not tile, stride does not divide, ceil pools)."""
        self.check_layout(image)
        geo = self.geometry(image.shape[0], image.shape[1], stride)
        if any(b["reason"] == "ceil" for b in geo["breaks"]):
            raise SlideError("; ".join(b["message"] for b in geo["breaks"]
                                       if b["reason"] == "ceil"), 1)
        if not geo["tiles"] or not geo["usable"]:
            near = f"; nearest sizes that tile: {', '.join(geo['nearest_tiling'])}" \
                if geo["nearest_tiling"] else ""
            raise SlideError(f"image {image.shape[1]}x{image.shape[0]}: "
                             f"{'; '.join(geo['problems']) or 'does not tile'}{near}", 1)
        return geo

    def _passes(self, height: int, width: int,
                stride: int | None) -> list[tuple[int, int, int, int]]:
        """(dy, dx, h, w) of each pass: the shifts below the net's stride (just (0, 0, H, W)
        at the net's own stride), each cropped to a size that tiles."""
        jump = self.net_stride
        step_h = step_w = stride or 0
        if not stride or stride % jump.h == 0 and stride % jump.w == 0:
            step_h, step_w = jump.h, jump.w  # coarser strides subsample the one pass
        n_h, n_w = self.trained_at.h, self.trained_at.w
        passes = []
        for dy in range(0, jump.h, step_h):
            for dx in range(0, jump.w, step_w):
                k_h, k_w = (height - n_h - dy) // jump.h, (width - n_w - dx) // jump.w
                if k_h >= 0 and k_w >= 0:  # else no window starts at this shift
                    passes.append((dy, dx, n_h + k_h * jump.h, n_w + k_w * jump.w))
        return passes

    def warm(self, shape: tuple[int, ...], stride: int | None = None,
             crops: bool = False) -> None:
        """Build (and cache) every network the passes need, outside any timing."""
        for _, _, h, w in self._passes(shape[0], shape[1], stride):
            self.converted_net(h, w)
        if crops:
            self.original()

    def one_pass(self, image: np.ndarray) -> np.ndarray:
        """[H', W', K]: the converted net on the whole image (which must tile)."""
        net = self.converted_net(image.shape[0], image.shape[1])
        return net.forward(image[None])[0]

    def score_map(self, image: np.ndarray, stride: int | None = None) -> np.ndarray:
        """[P_h, P_w, K] scores of the windows at `stride` (default: the net's own)."""
        geo = self.check_image(image, stride)
        jump = self.net_stride
        passes = self._passes(image.shape[0], image.shape[1], stride)
        if len(passes) == 1:
            scores = self.one_pass(image)
            if stride and stride > jump.h:  # a multiple of the net's stride: every k-th window
                scores = scores[::stride // jump.h, ::stride // jump.w]
            return _finite(scores)
        # The notes' method: for each shift (dy, dx), a multiple of the stride below the
        # net's own, one pass over the image cropped there; its windows are every q-th of
        # the fine grid, starting at (dy, dx) / stride.
        assert stride is not None
        q_h, q_w = jump.h // stride, jump.w // stride
        out: np.ndarray | None = None
        for dy, dx, h, w in passes:
            scores = self.one_pass(image[dy:dy + h, dx:dx + w])
            if out is None:
                out = np.empty((geo["windows"]["height"], geo["windows"]["width"],
                                scores.shape[-1]), scores.dtype)
            out[dy // stride::q_h, dx // stride::q_w] = scores
        assert out is not None
        return _finite(out)

    def crop_by_crop(self, image: np.ndarray, stride: int | None = None,
                     batch: int = 16) -> np.ndarray:
        """[P_h, P_w, K]: the original net run on every window separately (the reference)."""
        geo = self.check_image(image, stride)
        step = geo["window_stride"]
        rows, cols = geo["windows"]["height"], geo["windows"]["width"]
        n_h, n_w = self.trained_at.h, self.trained_at.w
        net = self.original()
        offsets = [(i * step["height"], j * step["width"]) for i in range(rows)
                   for j in range(cols)]
        chunks = []
        for start in range(0, len(offsets), batch):
            crops = np.stack([image[y:y + n_h, x:x + n_w]
                              for y, x in offsets[start:start + batch]])
            chunks.append(net.forward(crops).reshape(len(crops), -1))
        return _finite(np.concatenate(chunks).reshape(rows, cols, -1))

    def verify(self, image: np.ndarray, scores: np.ndarray | None = None,
               stride: int | None = None, batch: int = 16) -> dict[str, Any]:
        """Crop every window, run the original net on each, compare with the one-pass map."""
        self.warm(image.shape, stride, crops=True)
        started = time.perf_counter()
        if scores is None:
            scores = self.score_map(image, stride)
        one_pass_s = time.perf_counter() - started
        started = time.perf_counter()
        reference = self.crop_by_crop(image, stride, batch)
        crops_s = time.perf_counter() - started
        diff = np.abs(scores.astype(np.float64) - reference)
        per_window = diff.max(axis=-1)
        worst = np.unravel_index(int(np.argmax(per_window)), per_window.shape)
        return {
            "windows": int(per_window.size),
            "max_abs_diff": float(diff.max()),
            "mean_abs_diff": float(diff.mean()),
            "worst_window": {"row": int(worst[0]), "column": int(worst[1])},
            "score_scale": float(np.abs(reference).max()),
            "tolerance": VERIFY_TOLERANCE,
            "expected_exact": self.exact,
            "passed": (float(diff.max()) <= VERIFY_TOLERANCE) if self.exact else None,
            "one_pass_seconds": one_pass_s,
            "crop_by_crop_seconds": crops_s,
            "top_class_agreement": float(np.mean(scores.argmax(-1) == reference.argmax(-1))),
        }


def _finite(scores: np.ndarray) -> np.ndarray:
    """`scores`, or SlideError (exit code 1) when some are NaN or infinite: the input was
    checked, so the weights hold such values or overflow; nothing reports a NaN score."""
    bad = int(np.count_nonzero(~np.isfinite(scores)))
    if bad:
        raise SlideError(f"{bad} of {scores.size} scores are NaN or infinite (the weights "
                         "hold NaN/infinite values, or overflow)", 1)
    return scores


def average(scores: np.ndarray, top: int = 5) -> list[tuple[int, float]]:
    """The notes' averaging: the mean of every window's scores; the best `top` classes."""
    mean = scores.reshape(-1, scores.shape[-1]).astype(np.float64).mean(axis=0)
    order = np.argsort(-mean, kind="stable")[:top]
    return [(int(k), float(mean[k])) for k in order]
