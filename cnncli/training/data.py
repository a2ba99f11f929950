"""Datasets for cnncli: readers for MNIST/CIFAR/npz files and a built-in synthetic set.

Run-time dependencies: numpy and the standard library only (no numba, no Pillow).

Everything returns a :class:`Dataset` whose images are NHWC (``[N, H, W, C]``, uint8 or
float32) and whose labels are int64 ``[N]``.  Every problem with a file is reported as a
:class:`DataError` carrying one line that names the file and what is wrong.

The file layouts each reader expects are described in ``docs/data-formats.md``.
"""

from __future__ import annotations

import codecs
import gzip
import importlib
import io
import math
import os
import pickle
import re
import stat
import struct
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from cnncli.errors import InputError
from cnncli.render.units import binary_bytes

__all__ = [
    "SHAPE_CLASSES",
    "DataError",
    "DataWarning",
    "Dataset",
    "channel_stats",
    "check_against_input",
    "check_finite",
    "load_cifar_bin",
    "load_cifar_pickle",
    "load_dataset",
    "load_idx_images",
    "load_idx_labels",
    "load_idx_pair",
    "load_npz",
    "normalize",
    "pad_to_input",
    "random_crop",
    "random_flip",
    "scale_warning",
    "split_validation",
    "synthetic_shapes",
]

PathLike = str | Path

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]

CIFAR_SIDE = 32
CIFAR_PIXELS = CIFAR_SIDE * CIFAR_SIDE * 3  # 3072 bytes per image
CIFAR10_RECORD = 1 + CIFAR_PIXELS  # label, pixels
CIFAR100_RECORD = 2 + CIFAR_PIXELS  # coarse label, fine label, pixels

GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGIC = b"PK\x03\x04"
NPY_MAGIC = b"\x93NUMPY"
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
_IDX_TYPES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "int16", 0x0C: "int32",
              0x0D: "float32", 0x0E: "float64"}

UNDERSTOOD_FORMATS = (
    "MNIST/Fashion-MNIST IDX files (raw or .gz), CIFAR-10/100 python pickle batches, "
    "CIFAR-10/100 binary .bin batches, .npz with arrays x and y, or a directory holding "
    "one of these as downloaded"
)


class DataError(InputError):
    """A dataset could not be read or does not fit; the message is one line naming the file."""


class DataWarning(UserWarning):
    """Data that loads but is likely not what was meant (one line, names the file)."""


Warn = Callable[[str], None]


def warn_python(message: str) -> None:
    """The library's default for a `warn` callback: a Python warning (the CLI passes one
    that prints a line on stderr)."""
    warnings.warn(message, DataWarning, stacklevel=3)


# --------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images ``x`` [N, H, W, C] (uint8 0..255 or float32) and int64 labels ``y`` [N]."""

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    class_names: list[str] | None
    source: str

    def __post_init__(self) -> None:
        if self.x.ndim != 4:
            raise ValueError(f"Dataset.x must be NHWC (4-D), got shape {self.x.shape}")
        if self.x.dtype not in (np.uint8, np.float32):
            raise ValueError(f"Dataset.x must be uint8 or float32, got {self.x.dtype}")
        if self.y.ndim != 1 or self.y.dtype != np.int64:
            raise ValueError(f"Dataset.y must be int64 [N], got {self.y.dtype} {self.y.shape}")
        if len(self.x) != len(self.y):
            raise ValueError(f"Dataset has {len(self.x)} images but {len(self.y)} labels")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"Dataset has {self.num_classes} classes but {len(self.class_names)} names")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(height, width, channels)."""
        _, h, w, c = self.x.shape
        return int(h), int(w), int(c)

    def subset(self, index: np.ndarray, source: str | None = None) -> Dataset:
        """A new Dataset with the images at ``index`` (a copy)."""
        return Dataset(
            x=self.x[index], y=self.y[index], num_classes=self.num_classes,
            class_names=None if self.class_names is None else list(self.class_names),
            source=self.source if source is None else source,
        )


def _num_classes_for(y: np.ndarray, at_least: int = 0) -> int:
    return max(at_least, int(y.max()) + 1 if y.size else 0)


# --------------------------------------------------------------------------------------
# Built-in synthetic dataset
# --------------------------------------------------------------------------------------

SHAPE_CLASSES = [
    "disc", "ring", "square", "square-outline", "triangle",
    "plus", "x-cross", "h-stripes", "v-stripes", "checkerboard",
]

_SYNTH_CHUNK = 2048


def synthetic_shapes(
    n: int,
    width: int = 32,
    height: int = 32,
    depth: int = 3,
    num_classes: int = 10,
    seed: int = 0,
) -> Dataset:
    """``n`` images of ``num_classes`` shape classes (the first ones of SHAPE_CLASSES).

    Each image is a shape of random position, size and colour over a random-coloured
    background with a random brightness gradient, plus pixel noise.  Foreground and
    background colours are drawn independently of the class, so a classifier needs the
    shape (edges, corners, periodicity), not the mean colour.  Labels are balanced (the
    counts differ by at most one) and shuffled.  Deterministic: the same arguments give
    the same bytes.
    """
    if n < 0:
        raise DataError(f"synthetic: n must be >= 0, got {n}")
    if width < 12 or height < 12:
        raise DataError(f"synthetic: images must be at least 12x12, got {width}x{height}")
    if depth not in (1, 3):
        raise DataError(f"synthetic: depth must be 1 (greyscale) or 3 (RGB), got {depth}")
    if not 2 <= num_classes <= len(SHAPE_CLASSES):
        raise DataError(
            f"synthetic: num_classes must be between 2 and {len(SHAPE_CLASSES)}, "
            f"got {num_classes}")
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % num_classes).astype(np.int64)
    rng.shuffle(y)
    x = np.empty((n, height, width, depth), dtype=np.uint8)
    for start in range(0, n, _SYNTH_CHUNK):
        stop = min(n, start + _SYNTH_CHUNK)
        x[start:stop] = _draw_shapes(y[start:stop], width, height, depth, rng)
    return Dataset(
        x=x, y=y, num_classes=num_classes, class_names=SHAPE_CLASSES[:num_classes],
        source=(f"synthetic shapes (n={n}, {width}x{height}x{depth}, "
                f"{num_classes} classes, seed={seed})"),
    )


def _draw_shapes(
    labels: np.ndarray, width: int, height: int, depth: int, rng: np.random.Generator,
) -> np.ndarray:
    m = len(labels)
    f32 = np.float32
    side = min(width, height)
    # Per-image parameters (all drawn for every image, so the stream is fixed per chunk).
    radius = rng.uniform(0.22, 0.40, m) * side
    cx = rng.uniform(0.0, 1.0, m) * (width - 2 * radius - 2) + radius + 1
    cy = rng.uniform(0.0, 1.0, m) * (height - 2 * radius - 2) + radius + 1
    thick = np.maximum(1.3, radius * rng.uniform(0.22, 0.38, m))
    period = np.maximum(2.6, radius * rng.uniform(0.45, 0.75, m))
    phase = rng.uniform(0.0, 2 * np.pi, (m, 2))
    flip = rng.choice(np.array([-1.0, 1.0]), m)
    bg_level = rng.uniform(0.1, 0.9, m)
    contrast = rng.uniform(0.25, 0.6, m) * rng.choice(np.array([-1.0, 1.0]), m)
    fg_level = bg_level + contrast
    out_of_range = (fg_level < 0.0) | (fg_level > 1.0)
    fg_level[out_of_range] = bg_level[out_of_range] - contrast[out_of_range]
    bg_tint = rng.uniform(-0.2, 0.2, (m, depth))
    fg_tint = rng.uniform(-0.2, 0.2, (m, depth))
    if depth == 1:
        bg_tint[:] = 0.0
        fg_tint[:] = 0.0
    gradient = rng.uniform(-0.15, 0.15, (m, 2))
    noise_sigma = rng.uniform(0.015, 0.06, m)
    noise = rng.standard_normal((m, height, width, depth), dtype=np.float32)

    ys = np.arange(height, dtype=f32)[None, :, None] + f32(0.5)  # pixel centres
    xs = np.arange(width, dtype=f32)[None, None, :] + f32(0.5)
    px = xs - cx.astype(f32)[:, None, None]
    py = ys - cy.astype(f32)[:, None, None]
    px = np.broadcast_to(px, (m, height, width))
    py = np.broadcast_to(py, (m, height, width))
    sd = np.empty((m, height, width), dtype=f32)
    r_all = radius.astype(f32)[:, None, None]
    t_all = thick.astype(f32)[:, None, None]
    p_all = period.astype(f32)[:, None, None]
    two_pi = f32(2 * np.pi)
    for label in np.unique(labels):
        idx = np.nonzero(labels == label)[0]
        ax, ay = px[idx], py[idx]
        r, t, p = r_all[idx], t_all[idx], p_all[idx]
        name = SHAPE_CLASSES[int(label)]
        box = np.maximum(np.abs(ax), np.abs(ay))
        if name == "disc":
            d = np.hypot(ax, ay) - r
        elif name == "ring":
            d = np.abs(np.hypot(ax, ay) - 0.8 * r) - 0.5 * t
        elif name == "square":
            d = box - 0.85 * r
        elif name == "square-outline":
            d = np.abs(box - 0.85 * r) - 0.5 * t
        elif name == "triangle":
            vy = ay * flip[idx].astype(f32)[:, None, None]
            base = 0.8 * r
            norm = np.sqrt((base + r) ** 2 + r ** 2)
            edge = (np.abs(ax) * (base + r) - (vy + r) * r) / norm
            d = np.maximum(vy - base, edge)
        elif name in ("plus", "x-cross"):
            if name == "x-cross":
                ax, ay = (ax + ay) * f32(np.sqrt(0.5)), (ax - ay) * f32(np.sqrt(0.5))
            arm_a = np.maximum(np.abs(ax) - 0.5 * t, np.abs(ay) - r)
            arm_b = np.maximum(np.abs(ay) - 0.5 * t, np.abs(ax) - r)
            d = np.minimum(arm_a, arm_b)
        else:
            ph0 = phase[idx, 0].astype(f32)[:, None, None]
            ph1 = phase[idx, 1].astype(f32)[:, None, None]
            if name == "h-stripes":
                wave = np.sin(two_pi * ay / p + ph0)
            elif name == "v-stripes":
                wave = np.sin(two_pi * ax / p + ph0)
            else:  # checkerboard
                wave = np.sin(two_pi * ax / p + ph0) * np.sin(two_pi * ay / p + ph1)
            d = np.maximum(box - 0.9 * r, -wave * p / two_pi)
        sd[idx] = d
    alpha = np.clip(0.5 - sd, 0.0, 1.0)[..., None]  # 1-pixel anti-aliased edge

    ramp = (gradient[:, 0, None, None] * (xs / width - 0.5)
            + gradient[:, 1, None, None] * (ys / height - 0.5)).astype(f32)
    bg = (bg_level[:, None] + bg_tint).astype(f32)[:, None, None, :] + ramp[..., None]
    fg = (fg_level[:, None] + fg_tint).astype(f32)[:, None, None, :]
    img = bg + alpha * (fg - bg)
    img += noise * noise_sigma.astype(f32)[:, None, None, None]
    np.clip(img, 0.0, 1.0, out=img)
    result: np.ndarray = np.rint(img * f32(255.0)).astype(np.uint8)
    return result


# --------------------------------------------------------------------------------------
# Generic file helpers
# --------------------------------------------------------------------------------------


MAX_DATA_BYTES = 4 << 30
"""The most cnncli reads from one data file (after gunzip). Far above what it is meant for
(CIFAR-10's training batches are 150 MB, MNIST's 47 MB), and a bound on what a wrong
path (/dev/zero, a gzip bomb, a header that lies) can make it hold in memory."""

_HEAD_BYTES = 512  # enough to recognise every format (a tar header's magic is at 257)
_CHUNK = 1 << 24


def _too_big(path: Path, what: str) -> DataError:
    limit = binary_bytes(MAX_DATA_BYTES, short=True)
    return DataError(f"{path}: {what}, more than the {limit} cnncli reads from one data file")


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISFIFO, "a pipe"), (stat.S_ISSOCK, "a socket"))
    return next((name for is_kind, name in kinds if is_kind(mode)), "not a regular file")


def _looks_like_pickle(head: bytes) -> bool:
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _starts_like_data(head: bytes) -> bool:
    """Whether these first bytes open a format cnncli knows (a CIFAR .bin batch has no
    magic, so it is known by a regular file's length only)."""
    pickle_dict = _looks_like_pickle(head) and head[2:3] in (b"}", b"(", b"\x95")
    return (head[:3] == GZIP_MAGIC + b"\x08" or head[:4] == ZIP_MAGIC or pickle_dict
            or head[:6] == NPY_MAGIC or _looks_like_idx(head) or _is_tar(head))


def _check_declared_size(path: Path, head: bytes) -> None:
    """Refuse an IDX file whose header declares more than MAX_DATA_BYTES, before its
    body is read (the one format here whose header states its size up front)."""
    if not _looks_like_idx(head) or len(head) < 4 + 4 * head[3]:
        return
    dims = struct.unpack(f">{head[3]}I", head[4:4 + 4 * head[3]])
    if math.prod(dims) > MAX_DATA_BYTES:
        raise _too_big(path, f"its IDX header declares {'x'.join(map(str, dims))} values")


def _read_stream(path: Path, head: bytes, fh: BinaryIO) -> bytes:
    """`head` and the rest of a stream of unknown length (a pipe, a device), capped."""
    parts, total = [head], len(head)
    while total <= MAX_DATA_BYTES:
        part = fh.read(min(_CHUNK, MAX_DATA_BYTES + 1 - total))
        if not part:
            return b"".join(parts)
        parts.append(part)
        total += len(part)
    raise _too_big(path, "it gives more data than that")


def _gunzip(path: Path, source: BinaryIO) -> bytes:
    """Inflate chunk by chunk, so a gzip bomb stops at the cap instead of filling memory."""
    parts: list[bytes] = []
    total = 0
    try:
        with gzip.GzipFile(fileobj=source) as gz:
            while total <= MAX_DATA_BYTES:
                part = gz.read(_HEAD_BYTES if not parts else
                               min(_CHUNK, MAX_DATA_BYTES + 1 - total))
                if not part:
                    return b"".join(parts)
                if not parts:
                    _check_declared_size(path, part)
                parts.append(part)
                total += len(part)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from None
    raise _too_big(path, "it decompresses to more than that")


def _read_data(path: Path) -> tuple[bytes, bool]:
    """(contents, whether gzip'd): a data file's bytes, gunzipped when they start with
    the gzip magic. Never more than MAX_DATA_BYTES, checked before reading where the size
    is known: a regular file's size, an IDX header's dimensions. A device, pipe or socket
    must start like a known format (or /dev/zero would be read for ever)."""
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    with fh:
        try:
            st = os.fstat(fh.fileno())
            regular = stat.S_ISREG(st.st_mode)
            if regular and st.st_size > MAX_DATA_BYTES:
                raise _too_big(path, f"it is {binary_bytes(st.st_size, short=True)}")
            head = fh.read(_HEAD_BYTES)
            if not regular and not _starts_like_data(head):
                raise DataError(f"{path}: is {_file_kind(st.st_mode)}, not a file, and its "
                                f"first bytes match no data format; understood: "
                                f"{UNDERSTOOD_FORMATS}")
            if head[:2] == GZIP_MAGIC:
                if regular:
                    fh.seek(0)
                    return _gunzip(path, fh), True
                return _gunzip(path, io.BytesIO(_read_stream(path, head, fh))), True
            _check_declared_size(path, head)
            if not regular:
                return _read_stream(path, head, fh), False
            data = head + fh.read(st.st_size - len(head) + 1)  # +1: see if it grew
            if len(data) > MAX_DATA_BYTES:
                raise _too_big(path, "it grew while being read")
            return data, False
        except OSError as exc:
            raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _is_tar(data: bytes) -> bool:
    return len(data) >= 262 and data[257:262] == b"ustar"


# --------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)
# --------------------------------------------------------------------------------------


def _looks_like_idx(data: bytes) -> bool:
    return (len(data) >= 4 and data[0] == 0 and data[1] == 0 and data[2] in _IDX_TYPES
            and 1 <= data[3] <= 4)


def _parse_idx(path: Path, data: bytes, want_magic: int) -> np.ndarray:
    what = "image" if want_magic == IDX_IMAGES_MAGIC else "label"
    if len(data) < 4:
        raise DataError(f"{path}: too short for an IDX file ({len(data)} bytes)")
    (magic,) = struct.unpack(">I", data[:4])
    if magic != want_magic:
        found = {IDX_IMAGES_MAGIC: " (an IDX image file)",
                 IDX_LABELS_MAGIC: " (an IDX label file)"}.get(magic, "")
        if _looks_like_idx(data) and data[2] != 0x08:
            found = f" (IDX of {_IDX_TYPES[data[2]]}; only unsigned byte is supported)"
        raise DataError(
            f"{path}: not an IDX {what} file: magic is 0x{magic:08X}{found}, "
            f"expected 0x{want_magic:08X}")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(
            f"{path}: truncated IDX header: expected {header} bytes, got {len(data)}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + math.prod(dims)
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "has trailing data"
        raise DataError(
            f"{path}: {problem}: header declares {'x'.join(map(str, dims))} {what}s, "
            f"expected {expected} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def load_idx_images(path: PathLike) -> np.ndarray:
    """uint8 images [N, H, W, 1] from an IDX3 ubyte file (raw or gzip)."""
    p = Path(path)
    data, _ = _read_data(p)
    arr = _parse_idx(p, data, IDX_IMAGES_MAGIC)
    return arr[..., None].copy()


def load_idx_labels(path: PathLike) -> np.ndarray:
    """int64 labels [N] from an IDX1 ubyte file (raw or gzip)."""
    p = Path(path)
    data, _ = _read_data(p)
    return _parse_idx(p, data, IDX_LABELS_MAGIC).astype(np.int64)


def _idx_class_names(paths: list[Path], num_classes: int) -> list[str] | None:
    if num_classes != 10:
        return None
    text = " ".join(str(p.resolve()) for p in paths).lower()
    return list(FASHION_MNIST_CLASSES if "fashion" in text else MNIST_CLASSES)


def load_idx_pair(images_path: PathLike, labels_path: PathLike) -> Dataset:
    """An IDX image file and its IDX label file (each raw or gzip) as one Dataset."""
    ip, lp = Path(images_path), Path(labels_path)
    x = load_idx_images(ip)
    y = load_idx_labels(lp)
    if len(x) != len(y):
        raise DataError(f"{ip}: has {len(x)} images but {lp} has {len(y)} labels")
    num_classes = _num_classes_for(y, at_least=10)
    return Dataset(x=x, y=y, num_classes=num_classes,
                   class_names=_idx_class_names([ip, lp], num_classes),
                   source=f"IDX {ip} + {lp} ({len(x)} images)")


_IDX_PARTNER_RULES = [
    ("images-idx3", "labels-idx1"),
    ("images.idx3", "labels.idx1"),
    ("images", "labels"),
]


def _idx_partner_candidates(path: Path, is_images: bool) -> list[Path]:
    name = path.name
    stem = name.removesuffix(".gz")
    out: list[Path] = []
    for img, lab in _IDX_PARTNER_RULES:
        src, dst = (img, lab) if is_images else (lab, img)
        if src in stem:
            partner = stem.replace(src, dst)
            out += [path.with_name(partner), path.with_name(partner + ".gz")]
    return [p for i, p in enumerate(out) if p not in out[:i] and p != path]


def _load_idx_single(path: Path, data: bytes) -> Dataset:
    (magic,) = struct.unpack(">I", data[:4])
    if magic not in (IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC):
        kind = _IDX_TYPES.get(data[2], "?")
        raise DataError(
            f"{path}: IDX file with magic 0x{magic:08X} ({data[3]}-D {kind}); expected MNIST "
            f"images (0x{IDX_IMAGES_MAGIC:08X}) or labels (0x{IDX_LABELS_MAGIC:08X})")
    is_images = magic == IDX_IMAGES_MAGIC
    candidates = _idx_partner_candidates(path, is_images)
    partner = next((c for c in candidates if c.is_file()), None)
    if partner is None:
        want = "labels" if is_images else "images"
        looked = ", ".join(c.name for c in candidates) or "a name with 'images' -> 'labels'"
        raise DataError(f"{path}: IDX {'image' if is_images else 'label'} file but no "
                        f"{want} file next to it (looked for {looked})")
    return load_idx_pair(path, partner) if is_images else load_idx_pair(partner, path)


# --------------------------------------------------------------------------------------
# CIFAR pickles (restricted unpickler) and binary batches
# --------------------------------------------------------------------------------------


def _latin1_encode(obj: str, encoding: str = "utf-8") -> bytes:
    # Python-3 pickles of bytes at protocol <= 2 are `_codecs.encode(text, "latin1")`.
    if not isinstance(obj, str) or codecs.lookup(encoding).name not in ("iso8859-1", "utf-8"):
        raise pickle.UnpicklingError("_codecs.encode used with something other than text")
    return obj.encode(encoding)


def _numpy_core() -> Any:
    core = getattr(np, "_core", None)  # numpy >= 2
    return core if core is not None else importlib.import_module("numpy.core")


def _numpy_reconstruct() -> Callable[..., Any]:
    reconstruct: Callable[..., Any] = _numpy_core().multiarray._reconstruct

    def empty_then_state(subtype: Any, shape: Any, dtype: Any) -> Any:
        # numpy pickles an array as an empty one, then its state (the data itself);
        # a stated shape would allocate memory that the pickle does not hold
        if shape != (0,):
            raise pickle.UnpicklingError(f"array reconstructed with shape {shape!r}")
        return reconstruct(subtype, shape, dtype)
    return empty_then_state


def _bytearray(*args: Any) -> bytearray:
    # `bytearray(n)` would allocate n bytes that the pickle does not hold
    if args and not isinstance(args[0], (str, bytes)):
        raise pickle.UnpicklingError("bytearray built from something other than its data")
    return bytearray(*args)


def _numpy_frombuffer() -> Callable[..., Any]:
    fn: Callable[..., Any] = _numpy_core().numeric._frombuffer
    return fn


_SAFE_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
    ("builtins", "bytearray"): lambda: _bytearray,
    ("__builtin__", "bytearray"): lambda: _bytearray,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild numpy arrays, dtypes, bytes and plain containers."""

    def find_class(self, module: str, name: str) -> Any:
        factory = _SAFE_GLOBALS.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(
                f"refusing to load '{module}.{name}' (not allowed in a CIFAR batch)")
        return factory()


def _safe_unpickle(path: Path, data: bytes) -> Any:
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise DataError(f"{path}: unsafe or corrupt pickle: {exc}") from None
    except Exception as exc:  # any failure on a bad pickle is a data error
        raise DataError(f"{path}: corrupt or truncated pickle ({type(exc).__name__}: "
                        f"{str(exc)[:80]})") from None


def _str_keys(path: Path, obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DataError(f"{path}: pickle holds a {type(obj).__name__}, expected a CIFAR "
                        "batch dict")
    out: dict[str, Any] = {}
    for k, v in obj.items():
        out[k.decode("latin1") if isinstance(k, bytes) else str(k)] = v
    return out


def _label_array(path: Path, labels: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(labels)
    except (ValueError, TypeError):
        raise DataError(f"{path}: '{what}' is not a list of integers") from None
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise DataError(f"{path}: '{what}' is not a flat list of integers "
                        f"(got {arr.dtype} {arr.shape})")
    return arr.astype(np.int64)


def _planar_to_nhwc(flat: np.ndarray) -> np.ndarray:
    n = flat.shape[0]
    return np.ascontiguousarray(
        flat.reshape(n, 3, CIFAR_SIDE, CIFAR_SIDE).transpose(0, 2, 3, 1))


def _check_label_range(path: Path, y: np.ndarray, n: int, what: str) -> None:
    if y.size and (y.min() < 0 or y.max() >= n):
        raise DataError(f"{path}: {what} must be in [0, {n}), found values "
                        f"{int(y.min())}..{int(y.max())}")


def _decode_names(path: Path, names: Any, key: str) -> list[str]:
    if not isinstance(names, (list, tuple)):
        raise DataError(f"{path}: '{key}' is not a list of names")
    out = []
    for name in names:
        if isinstance(name, bytes):
            out.append(name.decode("utf-8", "replace"))
        elif isinstance(name, str):
            out.append(name)
        else:
            raise DataError(f"{path}: '{key}' holds a {type(name).__name__}, not a name")
    return out


def _parse_cifar_batch(path: Path, obj: Any, label_mode: str) -> tuple[np.ndarray, np.ndarray,
                                                                          bool]:
    """(x NHWC uint8, y int64, is_cifar100) from an unpickled batch dict."""
    d = _str_keys(path, obj)
    if "data" not in d:
        raise DataError(f"{path}: pickle has no 'data' entry (keys: "
                        f"{', '.join(sorted(d)) or 'none'}); not a CIFAR batch")
    is100 = "fine_labels" in d
    key = f"{label_mode}_labels" if is100 else "labels"
    if key not in d:
        raise DataError(f"{path}: pickle has no '{key}' entry (keys: "
                        f"{', '.join(sorted(d))}); not a CIFAR batch")
    data = d["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != CIFAR_PIXELS:
        desc = (f"{data.dtype} array {data.shape}" if isinstance(data, np.ndarray)
                else type(data).__name__)
        raise DataError(f"{path}: 'data' must be a uint8 array [N, {CIFAR_PIXELS}], "
                        f"got {desc}")
    y = _label_array(path, d[key], key)
    if len(y) != len(data):
        raise DataError(f"{path}: has {len(data)} images but {len(y)} {key}")
    limit = (100 if label_mode == "fine" else 20) if is100 else 10
    _check_label_range(path, y, limit, key)
    return _planar_to_nhwc(data), y, is100


def _check_label_mode(label_mode: str) -> None:
    if label_mode not in ("fine", "coarse"):
        raise DataError(f"label_mode must be 'fine' or 'coarse', got {label_mode!r}")


def _cifar_meta_names(folder: Path, is100: bool, label_mode: str,
                      binary: bool) -> list[str] | None:
    """Class names from the meta file next to a batch, or None when there is none."""
    if binary:
        txt = folder / (f"{label_mode}_label_names.txt" if is100 else "batches.meta.txt")
        if not txt.is_file():
            return None
        text = _read_data(txt)[0].decode("utf-8", "replace")
        lines = [ln.strip() for ln in text.splitlines()]
        return [ln for ln in lines if ln]
    meta = folder / ("meta" if is100 else "batches.meta")
    if not meta.is_file():
        return None
    d = _str_keys(meta, _safe_unpickle(meta, _read_data(meta)[0]))
    key = f"{label_mode}_label_names" if is100 else "label_names"
    if key not in d:
        raise DataError(f"{meta}: has no '{key}' entry")
    return _decode_names(meta, d[key], key)


def _cifar_dataset(paths: list[Path], xs: list[np.ndarray], ys: list[np.ndarray], is100: bool,
                   label_mode: str, binary: bool) -> Dataset:
    num_classes = (100 if label_mode == "fine" else 20) if is100 else 10
    names = _cifar_meta_names(paths[0].parent, is100, label_mode, binary)
    if names is not None and len(names) != num_classes:
        raise DataError(f"{paths[0].parent}: meta file lists {len(names)} class names, "
                        f"expected {num_classes}")
    if names is None and not is100:
        names = list(CIFAR10_CLASSES)
    x = np.concatenate(xs) if len(xs) > 1 else xs[0]
    y = np.concatenate(ys) if len(ys) > 1 else ys[0]
    kind = f"CIFAR-100 ({label_mode} labels)" if is100 else "CIFAR-10"
    where = str(paths[0]) if len(paths) == 1 else (
        f"{paths[0].parent}/{{{','.join(p.name for p in paths)}}}")
    return Dataset(x=x, y=y, num_classes=num_classes, class_names=names,
                   source=f"{kind} {'binary' if binary else 'pickle'} {where} ({len(x)} images)")


def load_cifar_pickle(paths: PathLike | list[PathLike], label_mode: str = "fine") -> Dataset:
    """One or more CIFAR-10/100 python pickle batches (class names from the meta file
    next to them).  ``label_mode`` picks CIFAR-100 'fine' (100) or 'coarse' (20) labels.
    """
    _check_label_mode(label_mode)
    plist = [Path(p) for p in (paths if isinstance(paths, list) else [paths])]
    xs, ys, kinds = [], [], set()
    for p in plist:
        data, _ = _read_data(p)
        x, y, is100 = _parse_cifar_batch(p, _safe_unpickle(p, data), label_mode)
        xs.append(x)
        ys.append(y)
        kinds.add(is100)
    if len(kinds) > 1:
        raise DataError(f"{plist[0].parent}: mixes CIFAR-10 and CIFAR-100 batches")
    return _cifar_dataset(plist, xs, ys, kinds.pop(), label_mode, binary=False)


def _guess_cifar_bin(path: Path, data: bytes) -> bool | None:
    """True for CIFAR-100 records, False for CIFAR-10, None when the length fits neither."""
    fits10 = len(data) % CIFAR10_RECORD == 0
    fits100 = len(data) % CIFAR100_RECORD == 0
    if len(data) == 0 or not (fits10 or fits100):
        return None
    if fits10 != fits100:
        return fits100
    # Length is a multiple of both (3073 * 3074 * k bytes): decide by name, then by labels.
    if "100" in str(path):
        return True
    if "cifar-10" in str(path).lower():
        return False
    labels10 = np.frombuffer(data, np.uint8)[::CIFAR10_RECORD]
    return bool(labels10.max() >= 10)


def _parse_cifar_bin(path: Path, data: bytes, is100: bool,
                     label_mode: str) -> tuple[np.ndarray, np.ndarray]:
    record = CIFAR100_RECORD if is100 else CIFAR10_RECORD
    kind = "CIFAR-100" if is100 else "CIFAR-10"
    if len(data) == 0:
        raise DataError(f"{path}: empty file")
    if len(data) % record:
        raise DataError(f"{path}: length {len(data)} is not a multiple of the {kind} record "
                        f"size {record} (truncated or not a {kind} .bin batch)")
    rec = np.frombuffer(data, np.uint8).reshape(-1, record)
    if is100:
        coarse, fine = rec[:, 0].astype(np.int64), rec[:, 1].astype(np.int64)
        _check_label_range(path, coarse, 20, "coarse labels")
        _check_label_range(path, fine, 100, "fine labels")
        y = fine if label_mode == "fine" else coarse
    else:
        y = rec[:, 0].astype(np.int64)
        _check_label_range(path, y, 10, "labels")
    return _planar_to_nhwc(rec[:, record - CIFAR_PIXELS:]), y


def load_cifar_bin(paths: PathLike | list[PathLike], label_mode: str = "fine",
                   cifar100: bool | None = None) -> Dataset:
    """One or more CIFAR binary batches.  CIFAR-10 vs CIFAR-100 is taken from ``cifar100``
    or else from the file length (records of 3073 vs 3074 bytes).
    """
    _check_label_mode(label_mode)
    plist = [Path(p) for p in (paths if isinstance(paths, list) else [paths])]
    xs, ys = [], []
    is100: bool | None = cifar100
    for p in plist:
        data, _ = _read_data(p)
        if is100 is None:
            is100 = _guess_cifar_bin(p, data)
            if is100 is None:
                raise DataError(
                    f"{p}: length {len(data)} is not a multiple of the CIFAR-10 record size "
                    f"{CIFAR10_RECORD} nor of the CIFAR-100 record size {CIFAR100_RECORD}")
        x, y = _parse_cifar_bin(p, data, is100, label_mode)
        xs.append(x)
        ys.append(y)
    return _cifar_dataset(plist, xs, ys, bool(is100), label_mode, binary=True)


# --------------------------------------------------------------------------------------
# npz
# --------------------------------------------------------------------------------------


def _check_npz_sizes(path: Path, source: io.BytesIO) -> None:
    """Refuse an .npz whose arrays declare more than MAX_DATA_BYTES, or more than their
    zip member holds, before np.load allocates them by their headers. A member that
    cannot be read is left to np.load, which names the problem."""
    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}
    try:
        with zipfile.ZipFile(source) as zf:
            for info in zf.infolist():
                with zf.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    if version not in read_header:
                        continue
                    shape, _, dtype = read_header[version](member)
                need = math.prod(shape) * dtype.itemsize
                name = info.filename.removesuffix(".npy")
                if need > MAX_DATA_BYTES:
                    raise _too_big(path, f"its array '{name}' declares {list(shape)} {dtype}")
                if need > info.file_size:
                    raise DataError(f"{path}: array '{name}' declares {list(shape)} {dtype} "
                                    f"({need} bytes) but holds {info.file_size} (corrupt .npz)")
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError):
        pass
    finally:
        source.seek(0)


def _npz_from(path: Path, source: io.BytesIO) -> Dataset:
    _check_npz_sizes(path, source)
    try:
        with np.load(source, allow_pickle=False) as npz:
            keys = list(npz.keys())
            if "x" not in keys or "y" not in keys:
                raise DataError(f"{path}: .npz must hold arrays 'x' and 'y', found "
                                f"{', '.join(keys) or 'none'}")
            x = npz["x"]
            y = npz["y"]
            names_arr = npz["class_names"] if "class_names" in keys else None
    except DataError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "pickle" in str(exc).lower():
            raise DataError(f"{path}: .npz holds object arrays (pickles), which are not "
                            "loaded; store x/y as numeric arrays and class_names as str") \
                from None
        raise DataError(f"{path}: corrupt .npz ({exc})") from None
    except Exception as exc:  # zipfile, zlib, numpy errors of a bad file
        raise DataError(f"{path}: corrupt or truncated .npz ({type(exc).__name__}: "
                        f"{str(exc)[:80]})") from None
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(f"{path}: 'x' must be NHWC [N, H, W, C] or NHW [N, H, W], "
                        f"got shape {x.shape}")
    if x.shape[1] in (1, 3) and x.shape[3] not in (1, 3, 4):
        raise DataError(f"{path}: 'x' has shape {x.shape}, which looks like NCHW; store "
                        "NHWC (np.transpose(x, (0, 2, 3, 1)))")
    if x.dtype == np.uint8:
        x = np.ascontiguousarray(x)
    elif x.dtype.kind == "f":
        x = np.ascontiguousarray(x, dtype=np.float32)
        check_finite(x, f"{path}: 'x'")
    else:
        raise DataError(f"{path}: 'x' must be uint8 or float, got {x.dtype}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or (y.size and y.dtype.kind not in "iu"):
        raise DataError(f"{path}: 'y' must be integer labels [N], got {y.dtype} {y.shape}")
    y = y.astype(np.int64)
    if len(y) != len(x):
        raise DataError(f"{path}: 'x' has {len(x)} images but 'y' has {len(y)} labels")
    if y.size and y.min() < 0:
        raise DataError(f"{path}: 'y' has negative labels (min {int(y.min())})")
    class_names: list[str] | None = None
    if names_arr is not None:
        if names_arr.ndim != 1 or names_arr.dtype.kind not in "US":
            raise DataError(f"{path}: 'class_names' must be a 1-D string array, got "
                            f"{names_arr.dtype} {names_arr.shape}")
        class_names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n)
                       for n in names_arr.tolist()]
        if y.size and int(y.max()) >= len(class_names):
            raise DataError(f"{path}: label {int(y.max())} but only {len(class_names)} "
                            "class_names")
    num_classes = len(class_names) if class_names is not None else _num_classes_for(y)
    return Dataset(x=x, y=y, num_classes=num_classes, class_names=class_names,
                   source=f"npz {path} ({len(x)} images)")


def load_npz(path: PathLike) -> Dataset:
    """A .npz with 'x' (NHWC or NHW, uint8 or float) and 'y' (int), optional 'class_names'."""
    p = Path(path)
    data, _ = _read_data(p)
    return _npz_from(p, io.BytesIO(data))


# --------------------------------------------------------------------------------------
# Entry point: detection by content
# --------------------------------------------------------------------------------------


def _load_file(path: Path, label_mode: str) -> Dataset:
    data, compressed = _read_data(path)
    if _is_tar(data):
        raise DataError(f"{path}: is a {'.tar.gz' if compressed else '.tar'} archive; "
                        f"extract it first (tar xf {path.name}) and pass the folder")
    if _looks_like_idx(data):
        return _load_idx_single(path, data)
    if data[:4] == ZIP_MAGIC:
        return _npz_from(path, io.BytesIO(data))
    if data[:6] == NPY_MAGIC:
        raise DataError(f"{path}: is a single .npy array; save images and labels together "
                        "with np.savez(path, x=images, y=labels)")
    if _looks_like_pickle(data):
        x, y, pickled100 = _parse_cifar_batch(path, _safe_unpickle(path, data), label_mode)
        return _cifar_dataset([path], [x], [y], pickled100, label_mode, binary=False)
    bin100 = _guess_cifar_bin(path, data)
    if bin100 is not None:
        x, y = _parse_cifar_bin(path, data, bin100, label_mode)
        return _cifar_dataset([path], [x], [y], bin100, label_mode, binary=True)
    if not data:
        raise DataError(f"{path}: empty file")
    if path.suffix == ".bin" or "batch" in path.name:
        raise DataError(
            f"{path}: length {len(data)} is not a multiple of the CIFAR-10 record size "
            f"{CIFAR10_RECORD} nor of the CIFAR-100 record size {CIFAR100_RECORD} "
            "(truncated CIFAR .bin batch?)")
    raise DataError(f"{path}: unrecognised data file; understood: {UNDERSTOOD_FORMATS}")


def _starts_with_pickle(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(2)
    except OSError:
        return False
    return _looks_like_pickle(head)


def _first_file(folder: Path, names: list[str]) -> Path | None:
    for name in names:
        for cand in (folder / name, folder / (name + ".gz")):
            if cand.is_file():
                return cand
    return None


def _idx_names(prefix: str, kind: str, dims: int) -> list[str]:
    return [f"{prefix}-{kind}-idx{dims}-ubyte", f"{prefix}-{kind}.idx{dims}-ubyte"]


def _numbered(folder: Path, pattern: str) -> list[Path]:
    rx = re.compile(pattern)
    found = []
    for p in folder.iterdir():
        m = rx.fullmatch(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


Loader = Callable[[], Dataset]


def _folder_layout(folder: Path, split: str, label_mode: str) -> tuple[str, Loader | None] | None:
    """(layout name, loader for the split or None when the split is missing) or None."""
    train = split == "train"
    # MNIST / Fashion-MNIST IDX
    prefixes = ["train"] if train else ["t10k", "test"]
    any_idx = any(_first_file(folder, _idx_names(p, "images", 3)) is not None
                  for p in ("train", "t10k", "test"))
    if any_idx:
        for prefix in prefixes:
            images = _first_file(folder, _idx_names(prefix, "images", 3))
            if images is not None:
                labels = _first_file(folder, _idx_names(prefix, "labels", 1))
                if labels is None:
                    raise DataError(f"{images}: no labels file next to it (expected "
                                    f"{_idx_names(prefix, 'labels', 1)[0]}[.gz])")
                return "IDX (train-/t10k-images-idx3-ubyte)", \
                    lambda i=images, l_=labels: load_idx_pair(i, l_)
        return "IDX (train-/t10k-images-idx3-ubyte)", None
    # CIFAR-10 pickles / binaries
    for suffix, binary in (("", False), (".bin", True)):
        batches = _numbered(folder, r"data_batch_(\d+)" + re.escape(suffix))
        test = folder / f"test_batch{suffix}"
        if batches or test.is_file():
            name = f"CIFAR-10 {'binary' if binary else 'python'} (data_batch_N{suffix})"
            files = batches if train else ([test] if test.is_file() else [])
            if not files:
                return name, None
            if binary:
                return name, lambda f=files: load_cifar_bin(f, label_mode, cifar100=False)
            return name, lambda f=files: load_cifar_pickle(f, label_mode)
    # CIFAR-100 pickles (train, test, meta) / binaries (train.bin, test.bin)
    present = [p for p in (folder / "train", folder / "test") if p.is_file()]
    if present and ((folder / "meta").is_file() or _starts_with_pickle(present[0])):
        name = "CIFAR-100 python (train, test, meta)"
        target = folder / split
        if not target.is_file():
            return name, None
        return name, lambda t=target: load_cifar_pickle([t], label_mode)
    if (folder / "train.bin").is_file() or (folder / "test.bin").is_file():
        name = "CIFAR binary (train.bin, test.bin)"
        target = folder / f"{split}.bin"
        if not target.is_file():
            return name, None
        # Record size (3073 vs 3074 bytes) decides, unless the CIFAR-100 names file is there.
        is100 = True if (folder / "fine_label_names.txt").is_file() else None
        return name, lambda t=target: load_cifar_bin([t], label_mode, cifar100=is100)
    # npz per split
    if (folder / "train.npz").is_file() or (folder / "test.npz").is_file():
        target = folder / f"{split}.npz"
        return "npz (train.npz, test.npz)", (lambda t=target: load_npz(t)) \
            if target.is_file() else None
    return None


def _load_folder(folder: Path, split: str, label_mode: str) -> Dataset:
    layout = _folder_layout(folder, split, label_mode)
    if layout is None:
        # One or two levels down (e.g. data/cifar-10-batches-py, data/MNIST/raw).
        found: list[tuple[Path, tuple[str, Loader | None]]] = []
        subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and p.name[0] != ".")
        for sub in subdirs:
            sub_layout = _folder_layout(sub, split, label_mode)
            if sub_layout is not None:
                found.append((sub, sub_layout))
                continue
            for subsub in sorted(p for p in sub.iterdir()
                                 if p.is_dir() and p.name[0] != "."):
                subsub_layout = _folder_layout(subsub, split, label_mode)
                if subsub_layout is not None:
                    found.append((subsub, subsub_layout))
        if len(found) > 1:
            raise DataError(f"{folder}: holds several datasets "
                            f"({', '.join(str(p) for p, _ in found)}); pass one of them")
        if not found:
            raise DataError(f"{folder}: no dataset found in this folder; understood: "
                            f"{UNDERSTOOD_FORMATS}")
        folder, layout = found[0]
    name, loader = layout
    if loader is None:
        raise DataError(f"{folder}: {name} folder has no '{split}' split")
    return loader()


def load_dataset(path: PathLike, split: str = "train", label_mode: str = "fine") -> Dataset:
    """Load a dataset file or folder, recognising the format by content.

    ``split`` ('train' or 'test') is used for folders holding both splits; a single
    file is loaded whatever ``split`` says.  ``label_mode`` ('fine' or 'coarse') only
    matters for CIFAR-100.
    """
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    _check_label_mode(label_mode)
    p = Path(path).expanduser()
    if p.is_dir():
        try:
            return _load_folder(p, split, label_mode)
        except OSError as exc:
            raise DataError(f"{p}: cannot read folder: {exc.strerror or exc}") from None
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    return _load_file(p, label_mode)


# --------------------------------------------------------------------------------------
# Helpers for the trainer
# --------------------------------------------------------------------------------------


def split_validation(ds: Dataset, fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Stratified, deterministic split into (train, validation).

    The validation set gets ``round(fraction * N)`` images (at least one when
    ``fraction > 0`` and N >= 2), spread over the classes in proportion to their counts.
    Both parts keep the original order of the images.
    """
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"validation fraction must be in [0, 1), got {fraction}")
    n = len(ds)
    n_val = round(fraction * n)
    if fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(ds.y, return_counts=True)
    quota = counts * (n_val / n) if n else counts.astype(float)
    per_class = np.floor(quota).astype(np.int64)
    short = n_val - int(per_class.sum())
    if short > 0:  # largest remainders first, ties by class order
        order = np.argsort(-(quota - per_class), kind="stable")
        per_class[order[:short]] += 1
    val_mask = np.zeros(n, dtype=bool)
    for cls, k in zip(classes, per_class, strict=True):
        idx = np.nonzero(ds.y == cls)[0]
        val_mask[rng.permutation(idx)[:k]] = True
    train_idx = np.nonzero(~val_mask)[0]
    val_idx = np.nonzero(val_mask)[0]
    return (ds.subset(train_idx, f"{ds.source} [train part: {len(train_idx)}]"),
            ds.subset(val_idx, f"{ds.source} [validation part: {len(val_idx)}]"))


def _to_unit_float(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        return x.astype(np.float32) * np.float32(1.0 / 255.0)
    return x.astype(np.float32, copy=False)


def channel_stats(x: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean[C], std[C]) as float32, on the [0, 1] scale (uint8 is divided by
    255; float data is taken as already scaled).  Accumulated in float64, chunk by chunk.
    """
    if x.ndim != 4 or len(x) == 0:
        raise DataError(f"channel_stats needs a non-empty NHWC array, got shape {x.shape}")
    c = x.shape[-1]
    total = np.zeros(c)
    total_sq = np.zeros(c)
    count = 0
    for start in range(0, len(x), chunk):
        part = _to_unit_float(x[start:start + chunk]).reshape(-1, c).astype(np.float64)
        total += part.sum(axis=0)
        total_sq += np.square(part).sum(axis=0)
        count += part.shape[0]
    mean = total / count
    var = np.maximum(total_sq / count - mean ** 2, 0.0)
    return mean.astype(np.float32), np.sqrt(var).astype(np.float32)


def normalize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """float32 ``(x01 - mean) / std`` per channel, where x01 is x on the [0, 1] scale.
    Channels whose std is below 1e-6 are only centred.
    """
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    safe = np.where(std < 1e-6, np.float32(1.0), std).astype(np.float32)
    out = _to_unit_float(x).copy() if x.dtype != np.uint8 else _to_unit_float(x)
    out -= mean
    out *= np.float32(1.0) / safe
    return out


def random_crop(x: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-pad each NHWC image by ``pad`` pixels on every side, then crop a random
    window of the original size (one offset per image).  Returns a new array.
    """
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    if pad == 0:
        return x.copy()
    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    oy: np.ndarray = rng.integers(0, 2 * pad + 1, size=(n,))
    ox: np.ndarray = rng.integers(0, 2 * pad + 1, size=(n,))
    rows = (oy[:, None] + np.arange(h)[None, :])[:, :, None]
    cols = (ox[:, None] + np.arange(w)[None, :])[:, None, :]
    result: np.ndarray = padded[np.arange(n)[:, None, None], rows, cols]
    return result


def random_flip(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mirror each NHWC image left-right with probability 1/2.  Returns a new array."""
    flip = rng.random(len(x)) < 0.5
    out = x.copy()
    out[flip] = x[flip, :, ::-1]
    return out


def _pixel_chunks(x: np.ndarray) -> Any:
    """Views of ``x`` along its first axis, ~4M values each (bounded temporaries)."""
    step = max(1, (1 << 22) // max(1, math.prod(x.shape[1:])))
    return (x[start:start + step] for start in range(0, len(x), step))


def check_finite(x: np.ndarray, where: str) -> None:
    """DataError when float pixels hold NaN or infinities: the one check of this for
    every image cnncli takes in (training and test sets, the images `slide` scores)."""
    if x.dtype.kind != "f" or x.ndim == 0:
        return
    bad = sum(int(np.count_nonzero(~np.isfinite(part))) for part in _pixel_chunks(x))
    if bad:
        raise DataError(f"{where} has {bad} NaN or infinite values (of {x.size}); pixels "
                        "must be finite numbers")


SCALE_LIMIT = 1.5
"""Float pixels are taken to be on the 0..1 scale (`normalize` divides uint8 by 255, not
float), so a float maximum above this suggests 0..255 values stored as float."""


def scale_warning(x: np.ndarray, where: str) -> str | None:
    """One line when float pixels go above SCALE_LIMIT, else None. Such images are not
    refused: a training set normalises itself, but its checkpoint's statistics are then
    on that scale, so uint8 or 0..1 images given to `eval` or `slide` later go wrong."""
    if x.dtype.kind != "f" or x.size == 0:
        return None
    high = max(float(part.max()) for part in _pixel_chunks(x) if part.size)
    if high <= SCALE_LIMIT:
        return None
    low = min(float(part.min()) for part in _pixel_chunks(x) if part.size)
    return (f"{where}: float pixels range over {low:g}..{high:g}, but cnncli takes float "
            "images on the 0..1 scale (only uint8 is divided by 255); if these are 0..255 "
            "values, divide them by 255 or store uint8")


def pad_to_input(ds: Dataset, width: int, height: int, path: PathLike) -> Dataset:
    """``ds`` with every image zero-padded centrally to ``width`` x ``height``, as LeCun
    et al. padded MNIST's 28x28 digits to LeNet-5's 32x32 input. Images of that size are
    returned as they are; smaller ones need an even margin on each axis."""
    h, w, c = ds.image_shape
    if (h, w) == (height, width):
        return ds
    dh, dw = height - h, width - w
    if dh < 0 or dw < 0:
        raise DataError(f"{path}: images are {w}x{h}x{c}, larger than the spec's input "
                        f"{width}x{height}: --pad-data only pads")
    if dh % 2 or dw % 2:
        raise DataError(f"{path}: images are {w}x{h}x{c} and the spec's input is "
                        f"{width}x{height}: --pad-data pads centrally, which needs an even "
                        f"margin, not {dw}x{dh}")
    x = np.pad(ds.x, ((0, 0), (dh // 2, dh // 2), (dw // 2, dw // 2), (0, 0)))
    return Dataset(x=x, y=ds.y, num_classes=ds.num_classes, class_names=ds.class_names,
                   source=f"{ds.source}, zero-padded to {width}x{height}")


def _padding_hint(h: int, w: int, c: int, width: int, height: int, depth: int) -> str:
    dh, dw = height - h, width - w
    if c != depth or dh < 0 or dw < 0 or dh % 2 or dw % 2:
        return ""
    by = (f"{dh // 2} px" if dh == dw
          else f"{dh // 2} px top and bottom, {dw // 2} px left and right")
    lenet = (" (as LeCun et al. did to feed MNIST to LeNet-5)"
             if (h, w, height, width) == (28, 28, 32, 32) else "")
    return f": pass --pad-data to zero-pad each image by {by}{lenet}"


def check_against_input(ds: Dataset, width: int, height: int, depth: int, num_classes: int,
                        path: PathLike) -> None:
    """Raise DataError when ``ds`` cannot feed a net with this input and class count."""
    if len(ds) == 0:
        raise DataError(f"{path}: the dataset is empty")
    h, w, c = ds.image_shape
    if (h, w, c) != (height, width, depth):
        raise DataError(f"{path}: images are {w}x{h}x{c} but the spec's input is "
                        f"{width}x{height}x{depth}"
                        + _padding_hint(h, w, c, width, height, depth))
    lo, hi = int(ds.y.min()), int(ds.y.max())
    if lo < 0 or hi >= num_classes:
        raise DataError(f"{path}: labels go from {lo} to {hi} but the spec's classifier has "
                        f"{num_classes} classes (labels must be in [0, {num_classes}))")
