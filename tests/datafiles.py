"""Writers of the data formats cnncli reads, for the tests: each writes a file the way
the format's originals are laid out (docs/data-formats.md), so a reader can be checked on
files made to measure. cnncli itself only reads these formats, so they live here.

A test that must catch a bug shared by a writer and its reader builds its bytes with
struct instead (test_data.py's hand-made IDX files).
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.training.data import CIFAR_PIXELS, CIFAR_SIDE, Dataset

PathLike = str | Path


def _write_maybe_gzip(path: Path, payload: bytes, compress: bool | None) -> None:
    if compress is None:
        compress = path.name.endswith(".gz")
    if compress:
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)


def write_idx(path: PathLike, array: np.ndarray, compress: bool | None = None) -> None:
    """Write a uint8 array (images [N, H, W] or [N, H, W, 1], labels [N]) as an IDX ubyte
    file; gzip-compressed when ``compress`` is True or, by default, when the name ends .gz.
    """
    arr = np.asarray(array)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (1, 3):
        raise ValueError(f"write_idx takes labels [N] or images [N, H, W(, 1)], got {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError("write_idx: values must fit in an unsigned byte")
    header = struct.pack(">I", 0x0800 | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    _write_maybe_gzip(Path(path), header + arr.astype(np.uint8).tobytes(), compress)


def _cifar_planar(x: np.ndarray) -> np.ndarray:
    if x.shape[1:] != (CIFAR_SIDE, CIFAR_SIDE, 3) or x.dtype != np.uint8:
        raise ValueError(f"CIFAR writers take uint8 [N, 32, 32, 3], got {x.dtype} {x.shape}")
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(len(x), CIFAR_PIXELS)


def write_cifar_bin(path: PathLike, x: np.ndarray, y: np.ndarray,
                    coarse: np.ndarray | None = None) -> None:
    """Write a CIFAR-10 .bin batch (label byte + 3072 planar pixel bytes per image), or a
    CIFAR-100 one (coarse byte, fine byte, pixels) when ``coarse`` labels are given.
    """
    flat = _cifar_planar(x)
    cols = [np.asarray(y, np.uint8)[:, None], flat]
    if coarse is not None:
        cols.insert(0, np.asarray(coarse, np.uint8)[:, None])
    Path(path).write_bytes(np.concatenate(cols, axis=1).tobytes())


def write_cifar_pickle(path: PathLike, x: np.ndarray, y: np.ndarray,
                       coarse: np.ndarray | None = None, batch_label: str = "cnncli batch",
                       ) -> None:
    """Write a CIFAR-10 python batch (dict with b'data' [N, 3072] uint8 planar, b'labels'),
    or a CIFAR-100 one (b'fine_labels' = y, b'coarse_labels') when ``coarse`` is given.
    Pickle protocol 2 with bytes keys, like the originals.
    """
    flat = _cifar_planar(x)
    d: dict[bytes, Any] = {b"batch_label": batch_label.encode(), b"data": flat,
                           b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(x))]}
    if coarse is None:
        d[b"labels"] = [int(v) for v in y]
    else:
        d[b"fine_labels"] = [int(v) for v in y]
        d[b"coarse_labels"] = [int(v) for v in coarse]
    Path(path).write_bytes(pickle.dumps(d, protocol=2))


def write_npz(path: PathLike, ds: Dataset) -> None:
    """Write a Dataset as .npz (x, y and, when known, class_names) for load_npz."""
    arrays: dict[str, np.ndarray] = {"x": ds.x, "y": ds.y}
    if ds.class_names is not None:
        arrays["class_names"] = np.array(ds.class_names, dtype=str)
    with Path(path).open("wb") as fh:
        np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
