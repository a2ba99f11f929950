"""Tests for cnncli.training.data: readers (by content), writers, synthetic set, helpers."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from cnncli.training.data import (
    SHAPE_CLASSES,
    DataError,
    Dataset,
    channel_stats,
    check_against_input,
    load_cifar_bin,
    load_cifar_pickle,
    load_dataset,
    load_idx_pair,
    load_npz,
    normalize,
    random_crop,
    random_flip,
    split_validation,
    synthetic_shapes,
)

try:
    from tests.datafiles import write_cifar_bin, write_cifar_pickle, write_idx, write_npz
except ImportError:  # plain `pytest` without the repo root on sys.path
    from datafiles import (  # type: ignore[no-redef]
        write_cifar_bin,
        write_cifar_pickle,
        write_idx,
        write_npz,
    )

RNG = np.random.default_rng(1234)


def _images(n: int, h: int = 28, w: int = 28, c: int = 1) -> np.ndarray:
    return RNG.integers(0, 256, (n, h, w, c), dtype=np.uint8)


def _labels(n: int, k: int = 10) -> np.ndarray:
    return RNG.integers(0, k, n).astype(np.int64)


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and msg
    return msg


# ------------------------------------------------------------------ synthetic


def test_synthetic_shape_dtype_names():
    ds = synthetic_shapes(200, 32, 24, 3, num_classes=8, seed=0)
    assert ds.x.shape == (200, 24, 32, 3) and ds.x.dtype == np.uint8
    assert ds.y.shape == (200,) and ds.y.dtype == np.int64
    assert ds.num_classes == 8 and ds.class_names == SHAPE_CLASSES[:8]
    assert ds.image_shape == (24, 32, 3)
    assert "synthetic" in ds.source


def test_synthetic_deterministic_and_seeded():
    a = synthetic_shapes(300, 16, 16, 3, seed=7)
    b = synthetic_shapes(300, 16, 16, 3, seed=7)
    c = synthetic_shapes(300, 16, 16, 3, seed=8)
    assert a.x.tobytes() == b.x.tobytes() and np.array_equal(a.y, b.y)
    assert a.x.tobytes() != c.x.tobytes()
    assert not np.array_equal(a.y, c.y)


def test_synthetic_balanced_and_varied():
    ds = synthetic_shapes(1003, 12, 12, 1, num_classes=10, seed=3)
    counts = np.bincount(ds.y, minlength=10)
    assert counts.max() - counts.min() <= 1
    assert ds.x.shape == (1003, 12, 12, 1)
    # Mean brightness is not a giveaway: per-class means overlap heavily.
    means = ds.x.reshape(len(ds), -1).mean(axis=1)
    per_class = np.array([means[ds.y == k].mean() for k in range(10)])
    assert per_class.std() < 0.25 * means.std()
    assert ds.x.min() < 40 and ds.x.max() > 215


def test_synthetic_errors():
    assert "12x12" in _error(synthetic_shapes, 10, 11, 32, 3)
    assert "depth" in _error(synthetic_shapes, 10, 32, 32, 2)
    assert "num_classes" in _error(synthetic_shapes, 10, 32, 32, 3, num_classes=11)
    assert len(synthetic_shapes(0, 12, 12, 1)) == 0


# ------------------------------------------------------------------ IDX


def _write_mnist_dir(folder: Path, gz: bool, n_train: int = 20, n_test: int = 7):
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x, y = _images(n), _labels(n)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", x)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", y)
        out[prefix] = (x, y)
    return out


@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory_round_trip(tmp_path, gz):
    written = _write_mnist_dir(tmp_path / "mnist", gz)
    if gz:
        raw = (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").read_bytes()
        assert raw[:2] == b"\x1f\x8b"
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds = load_dataset(tmp_path / "mnist", split)
        x, y = written[prefix]
        assert ds.x.dtype == np.uint8 and ds.x.shape == x.shape
        assert np.array_equal(ds.x, x) and np.array_equal(ds.y, y)
        assert ds.num_classes == 10 and ds.class_names == [str(i) for i in range(10)]


def test_idx_fashion_names_and_nested_raw_folder(tmp_path):
    written = _write_mnist_dir(tmp_path / "FashionMNIST" / "raw", gz=True)
    ds = load_dataset(tmp_path)  # two levels up, like torchvision's layout
    assert np.array_equal(ds.x, written["train"][0])
    assert ds.class_names is not None and ds.class_names[9] == "Ankle boot"


def test_idx_single_files_find_their_partner(tmp_path):
    written = _write_mnist_dir(tmp_path, gz=False)
    x, y = written["t10k"]
    for p in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        ds = load_dataset(tmp_path / p)
        assert np.array_equal(ds.x, x) and np.array_equal(ds.y, y)
    ds = load_idx_pair(tmp_path / "train-images-idx3-ubyte", tmp_path / "train-labels-idx1-ubyte")
    assert np.array_equal(ds.y, written["train"][1])


def test_idx_detected_by_content_not_name(tmp_path):
    x, y = _images(5, 9, 11), _labels(5)
    write_idx(tmp_path / "foo.dat", x, compress=True)  # gzip content, odd name
    write_idx(tmp_path / "bar.bin", y, compress=False)
    ds = load_idx_pair(tmp_path / "foo.dat", tmp_path / "bar.bin")
    assert np.array_equal(ds.x, x) and np.array_equal(ds.y, y)
    write_idx(tmp_path / "shapes-images.dat", x, compress=True)
    write_idx(tmp_path / "shapes-labels.dat", y, compress=True)
    ds = load_dataset(tmp_path / "shapes-images.dat")
    assert ds.x.shape == (5, 9, 11, 1) and np.array_equal(ds.y, y)


def test_idx_hand_written_bytes(tmp_path):
    """Written with struct, not write_idx, so a symmetric writer/reader bug shows."""
    pixels = bytes(range(2 * 3 * 4))  # 2 images of 3 rows x 4 columns
    images = struct.pack(">IIII", 0x00000803, 2, 3, 4) + pixels
    labels = struct.pack(">II", 0x00000801, 2) + bytes([7, 3])
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(labels)
    ds = load_dataset(tmp_path)
    assert ds.x.shape == (2, 3, 4, 1)
    assert ds.x[1, 2, 3, 0] == 23 and ds.x[0, 1, 0, 0] == 4 and ds.x[1, 0, 0, 0] == 12
    assert ds.y.tolist() == [7, 3]


def test_idx_errors(tmp_path):
    x, y = _images(4), _labels(4)
    write_idx(tmp_path / "a-images-idx3-ubyte", x)
    write_idx(tmp_path / "a-labels-idx1-ubyte", y)
    good = (tmp_path / "a-images-idx3-ubyte").read_bytes()
    # truncated
    (tmp_path / "t-images").write_bytes(good[:-10])
    msg = _error(load_idx_pair, tmp_path / "t-images", tmp_path / "a-labels-idx1-ubyte")
    assert "t-images" in msg and f"expected {len(good)} bytes, got {len(good) - 10}" in msg
    # trailing data
    (tmp_path / "long-images").write_bytes(good + b"\0")
    assert "trailing" in _error(load_idx_pair, tmp_path / "long-images",
                                tmp_path / "a-labels-idx1-ubyte")
    # wrong magic: labels given as images
    msg = _error(load_idx_pair, tmp_path / "a-labels-idx1-ubyte",
                 tmp_path / "a-labels-idx1-ubyte")
    assert "0x00000801" in msg and "0x00000803" in msg
    # count mismatch
    write_idx(tmp_path / "b-labels-idx1-ubyte", _labels(5))
    msg = _error(load_idx_pair, tmp_path / "a-images-idx3-ubyte", tmp_path / "b-labels-idx1-ubyte")
    assert "4 images" in msg and "5 labels" in msg
    # truncated gzip stream
    gz = gzip.compress(good)
    (tmp_path / "c-images-idx3-ubyte.gz").write_bytes(gz[: len(gz) // 2])
    assert "gzip" in _error(load_dataset, tmp_path / "c-images-idx3-ubyte.gz")
    # image file without a labels file next to it
    write_idx(tmp_path / "lonely.idx", x)
    assert "no labels file" in _error(load_dataset, tmp_path / "lonely.idx")
    # float IDX is recognised but refused
    (tmp_path / "f.idx").write_bytes(struct.pack(">IIIII", 0x00000D03, 1, 1, 1, 0))
    assert "float32" in _error(load_idx_pair, tmp_path / "f.idx", tmp_path / "a-labels-idx1-ubyte")


def test_idx_folder_without_test_split(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", _images(3))
    write_idx(tmp_path / "train-labels-idx1-ubyte", _labels(3))
    assert len(load_dataset(tmp_path, "train")) == 3
    assert "no 'test' split" in _error(load_dataset, tmp_path, "test")


# ------------------------------------------------------------------ CIFAR


def _cifar_images(n: int) -> np.ndarray:
    return _images(n, 32, 32, 3)


def test_cifar10_pickle_directory(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    parts = []
    for i in (1, 2, 10):  # numeric, not lexical, order
        x, y = _cifar_images(6), _labels(6)
        write_cifar_pickle(folder / f"data_batch_{i}", x, y)
        parts.append((x, y))
    xt, yt = _cifar_images(4), _labels(4)
    write_cifar_pickle(folder / "test_batch", xt, yt)
    names = [f"c{i}" for i in range(10)]
    (folder / "batches.meta").write_bytes(pickle.dumps(
        {b"label_names": [n.encode() for n in names], b"num_vis": 3072}, protocol=2))
    ds = load_dataset(tmp_path)  # parent folder: found one level down
    assert np.array_equal(ds.x, np.concatenate([p[0] for p in parts]))
    assert np.array_equal(ds.y, np.concatenate([p[1] for p in parts]))
    assert ds.num_classes == 10 and ds.class_names == names
    test = load_dataset(folder, "test")
    assert np.array_equal(test.x, xt) and np.array_equal(test.y, yt)
    single = load_dataset(folder / "test_batch")
    assert np.array_equal(single.x, xt) and single.class_names == names


def test_cifar100_pickle_fine_and_coarse(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    x, fine, coarse = _cifar_images(8), _labels(8, 100), _labels(8, 20)
    write_cifar_pickle(folder / "train", x, fine, coarse=coarse)
    write_cifar_pickle(folder / "test", x[:3], fine[:3], coarse=coarse[:3])
    (folder / "meta").write_bytes(pickle.dumps({
        b"fine_label_names": [f"f{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"c{i}".encode() for i in range(20)]}, protocol=2))
    ds = load_dataset(folder)
    assert np.array_equal(ds.x, x) and np.array_equal(ds.y, fine)
    assert ds.num_classes == 100 and ds.class_names is not None and ds.class_names[5] == "f5"
    ds = load_dataset(folder, "test", label_mode="coarse")
    assert np.array_equal(ds.y, coarse[:3]) and ds.num_classes == 20
    assert "CIFAR-100" in ds.source


def _py2_cifar_pickle(flat: bytes, labels: list[int], module: str) -> bytes:
    """Opcode by opcode, the way Python 2's cPickle wrote the CIFAR-10 batches."""

    def s(b: bytes) -> bytes:  # SHORT_BINSTRING: a Python 2 str
        return b"U" + bytes([len(b)]) + b

    n = len(labels)
    out = b"\x80\x02}(" + s(b"batch_label") + s(b"testing batch 1 of 1")
    out += s(b"labels") + b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    out += s(b"data") + b"c" + module.encode() + b"\n_reconstruct\ncnumpy\nndarray\n"
    out += b"K\x00\x85" + s(b"b") + b"\x87R"
    out += b"(K\x01K" + bytes([n]) + b"M" + struct.pack("<H", 3072) + b"\x86"
    out += b"cnumpy\ndtype\n" + s(b"u1") + b"K\x00K\x01\x87R"
    out += b"(K\x03" + s(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    out += b"\x89T" + struct.pack("<I", len(flat)) + flat + b"tb"
    return out + b"u."


@pytest.mark.parametrize("module", ["numpy.core.multiarray", "numpy._core.multiarray"])
def test_cifar_python2_pickle_hand_written(tmp_path, module):
    n = 3
    flat = RNG.integers(0, 256, n * 3072, dtype=np.uint8)
    (tmp_path / "data_batch_1").write_bytes(_py2_cifar_pickle(flat.tobytes(), [9, 0, 4], module))
    ds = load_dataset(tmp_path / "data_batch_1")
    planes = flat.reshape(n, 3, 32, 32)
    assert ds.y.tolist() == [9, 0, 4]
    assert ds.x.shape == (3, 32, 32, 3)
    assert ds.x[2, 5, 7, 0] == planes[2, 0, 5, 7] and ds.x[1, 31, 0, 2] == planes[1, 2, 31, 0]
    assert np.array_equal(ds.x, planes.transpose(0, 2, 3, 1))
    assert ds.class_names is not None and ds.class_names[0] == "airplane"


def test_cifar_bin_hand_written_records(tmp_path):
    """Records built byte by byte: label, 1024 R, 1024 G, 1024 B (row-major)."""
    img = np.zeros((32, 32, 3), np.uint8)
    img[0, 1, 0] = 10  # R at row 0 col 1
    img[2, 0, 1] = 20  # G at row 2 col 0
    img[31, 31, 2] = 30  # B at the last pixel
    rec = bytearray(3073)
    rec[0] = 6
    rec[1 + 1] = 10
    rec[1 + 1024 + 2 * 32] = 20
    rec[1 + 2048 + 1023] = 30
    (tmp_path / "batch.bin").write_bytes(bytes(rec) * 2)
    ds = load_dataset(tmp_path / "batch.bin")
    assert ds.y.tolist() == [6, 6] and np.array_equal(ds.x[1], img)
    rec100 = bytes([3, 77]) + bytes(rec[1:])
    (tmp_path / "c100.bin").write_bytes(rec100)
    ds = load_dataset(tmp_path / "c100.bin")
    assert ds.y.tolist() == [77] and ds.num_classes == 100 and np.array_equal(ds.x[0], img)
    assert load_dataset(tmp_path / "c100.bin", label_mode="coarse").y.tolist() == [3]


def test_cifar10_bin_directory(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    x1, y1, x2, y2 = _cifar_images(5), _labels(5), _cifar_images(3), _labels(3)
    write_cifar_bin(folder / "data_batch_1.bin", x1, y1)
    write_cifar_bin(folder / "data_batch_2.bin", x2, y2)
    write_cifar_bin(folder / "test_batch.bin", x2, y2)
    (folder / "batches.meta.txt").write_text("\n".join(f"n{i}" for i in range(10)) + "\n\n")
    ds = load_dataset(folder)
    assert np.array_equal(ds.x, np.concatenate([x1, x2])) and ds.y.tolist() == [*y1, *y2]
    assert ds.class_names == [f"n{i}" for i in range(10)]
    assert np.array_equal(load_dataset(folder, "test").x, x2)
    assert np.array_equal(load_cifar_bin(folder / "data_batch_1.bin").y, y1)


def test_cifar100_bin_directory(tmp_path):
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    x, fine, coarse = _cifar_images(4), _labels(4, 100), _labels(4, 20)
    write_cifar_bin(folder / "train.bin", x, fine, coarse=coarse)
    write_cifar_bin(folder / "test.bin", x[:2], fine[:2], coarse=coarse[:2])
    (folder / "fine_label_names.txt").write_text("\n".join(f"f{i}" for i in range(100)))
    (folder / "coarse_label_names.txt").write_text("\n".join(f"c{i}" for i in range(20)))
    ds = load_dataset(folder)
    assert np.array_equal(ds.x, x) and np.array_equal(ds.y, fine)
    assert ds.class_names is not None and ds.class_names[99] == "f99"
    ds = load_dataset(folder, "test", label_mode="coarse")
    assert np.array_equal(ds.y, coarse[:2]) and ds.class_names == [f"c{i}" for i in range(20)]


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": _Evil(marker), b"labels": [1]}, protocol=2)
    (tmp_path / "data_batch_1").write_bytes(evil)
    msg = _error(load_dataset, tmp_path / "data_batch_1")
    assert "refusing" in msg and "system" in msg and "data_batch_1" in msg
    msg = _error(load_dataset, tmp_path)  # through the folder layout too
    assert "refusing" in msg
    assert not marker.exists()
    # eval via builtins, and a protocol-4 pickle, are refused as well
    (tmp_path / "x").write_bytes(b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1\x85R.")
    assert "builtins.eval" in _error(load_dataset, tmp_path / "x")
    (tmp_path / "y").write_bytes(pickle.dumps(_Evil(marker), protocol=4))
    assert "refusing" in _error(load_cifar_pickle, tmp_path / "y")
    assert not marker.exists()


def test_cifar_errors(tmp_path):
    x, y = _cifar_images(2), _labels(2)
    write_cifar_bin(tmp_path / "good.bin", x, y)
    good = (tmp_path / "good.bin").read_bytes()
    (tmp_path / "short.bin").write_bytes(good[:-5])
    msg = _error(load_dataset, tmp_path / "short.bin")
    assert "short.bin" in msg and "multiple" in msg
    assert "multiple of the CIFAR-10 record size 3073" in _error(
        load_cifar_bin, tmp_path / "short.bin", cifar100=False)
    bad = bytearray(good)
    bad[0] = 12
    (tmp_path / "badlabel.bin").write_bytes(bytes(bad))
    assert "[0, 10)" in _error(load_cifar_bin, tmp_path / "badlabel.bin", cifar100=False)
    # pickles: truncated, wrong structure, wrong shapes, label count
    write_cifar_pickle(tmp_path / "p", x, y)
    raw = (tmp_path / "p").read_bytes()
    (tmp_path / "trunc").write_bytes(raw[: len(raw) // 2])
    assert "truncated" in _error(load_dataset, tmp_path / "trunc")
    (tmp_path / "list").write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    assert "list" in _error(load_dataset, tmp_path / "list")
    (tmp_path / "shape").write_bytes(pickle.dumps(
        {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, protocol=2))
    assert "3072" in _error(load_dataset, tmp_path / "shape")
    (tmp_path / "count").write_bytes(pickle.dumps(
        {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, protocol=2))
    assert "2 images but 1 labels" in _error(load_dataset, tmp_path / "count")
    (tmp_path / "nokeys").write_bytes(pickle.dumps({b"images": 1}, protocol=2))
    assert "no 'data'" in _error(load_dataset, tmp_path / "nokeys")


def test_cifar_pickle_protocol5_numpy2(tmp_path):
    x, y = _cifar_images(3), _labels(3)
    flat = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(3, 3072)
    (tmp_path / "b").write_bytes(pickle.dumps({"data": flat, "labels": y.tolist()}, protocol=5))
    ds = load_cifar_pickle(tmp_path / "b")
    assert np.array_equal(ds.x, x) and np.array_equal(ds.y, y)


# ------------------------------------------------------------------ npz


def test_npz_round_trips(tmp_path):
    x, y = _images(6, 10, 12, 3), _labels(6, 4)
    ds = Dataset(x=x, y=y, num_classes=4, class_names=["a", "b", "c", "d"], source="t")
    write_npz(tmp_path / "d.npz", ds)
    back = load_dataset(tmp_path / "d.npz")
    assert np.array_equal(back.x, x) and np.array_equal(back.y, y)
    assert back.class_names == ["a", "b", "c", "d"] and back.num_classes == 4
    # greyscale NHW, float images, odd file name (detected by content)
    xf = RNG.random((5, 8, 8)).astype(np.float64)
    np.savez(tmp_path / "grey.npz", x=xf, y=np.array([0, 1, 2, 1, 0], np.int32))
    (tmp_path / "grey.npz").rename(tmp_path / "grey.bin")
    back = load_dataset(tmp_path / "grey.bin")
    assert back.x.shape == (5, 8, 8, 1) and back.x.dtype == np.float32
    assert np.allclose(back.x[..., 0], xf) and back.num_classes == 3 and back.class_names is None
    # folder with train.npz / test.npz
    (tmp_path / "f").mkdir()
    write_npz(tmp_path / "f" / "train.npz", ds)
    write_npz(tmp_path / "f" / "test.npz", ds.subset(np.arange(2)))
    assert len(load_dataset(tmp_path / "f", "test")) == 2
    assert np.array_equal(load_npz(tmp_path / "f" / "train.npz").x, x)


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "a.npz", images=np.zeros((2, 4, 4), np.uint8))
    assert "'x' and 'y'" in _error(load_dataset, tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", x=np.zeros((2, 4, 4), np.uint8), y=np.array([0, 1, 2]))
    assert "2 images" in _error(load_dataset, tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", x=np.zeros((2, 3, 8, 8), np.uint8), y=np.array([0, 1]))
    assert "NCHW" in _error(load_dataset, tmp_path / "c.npz")
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 4, 4), np.uint8),
             y=np.array([{"a": 1}, None], dtype=object))
    assert "pickle" in _error(load_dataset, tmp_path / "d.npz")
    np.savez(tmp_path / "e.npz", x=np.zeros((2, 4, 4), np.uint8), y=np.array([0.5, 1.0]))
    assert "integer" in _error(load_dataset, tmp_path / "e.npz")
    raw = (tmp_path / "b.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(raw[: len(raw) // 2])
    assert "t.npz" in _error(load_dataset, tmp_path / "t.npz")


# ------------------------------------------------------------------ dispatch


def test_unknown_and_missing(tmp_path):
    (tmp_path / "notes.txt").write_text("hello world, not a dataset\n")
    msg = _error(load_dataset, tmp_path / "notes.txt")
    assert "notes.txt" in msg and "IDX" in msg and "CIFAR" in msg and ".npz" in msg
    (tmp_path / "empty").write_bytes(b"")
    assert "empty" in _error(load_dataset, tmp_path / "empty")
    assert "no such" in _error(load_dataset, tmp_path / "nope")
    (tmp_path / "d").mkdir()
    assert "no dataset found" in _error(load_dataset, tmp_path / "d")
    assert "split" in _error(load_dataset, tmp_path / "d", "val")
    np.save(tmp_path / "a.npy", np.zeros(3))
    assert "np.savez" in _error(load_dataset, tmp_path / "a.npy")


def test_tarball_gets_extract_hint(tmp_path):
    (tmp_path / "data_batch_1").write_bytes(b"x" * 10)
    with tarfile.open(tmp_path / "cifar.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "data_batch_1", arcname="cifar-10-batches-py/data_batch_1")
    assert "extract" in _error(load_dataset, tmp_path / "cifar.tar.gz")


def test_several_datasets_in_one_folder(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        write_idx(tmp_path / name / "train-images-idx3-ubyte", _images(2))
        write_idx(tmp_path / name / "train-labels-idx1-ubyte", _labels(2))
    assert "several datasets" in _error(load_dataset, tmp_path)


# ------------------------------------------------------------------ helpers


def test_split_validation_stratified_and_deterministic():
    y = np.repeat(np.arange(4), [40, 30, 20, 10]).astype(np.int64)
    ds = Dataset(x=np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1), y=y, num_classes=4,
                 class_names=None, source="s")
    tr, va = split_validation(ds, 0.2, seed=5)
    assert len(tr) == 80 and len(va) == 20
    assert np.bincount(va.y, minlength=4).tolist() == [8, 6, 4, 2]
    ids = np.concatenate([tr.x.ravel(), va.x.ravel()])
    assert sorted(ids.tolist()) == list(range(100))
    _, va2 = split_validation(ds, 0.2, seed=5)
    assert np.array_equal(va.x, va2.x)
    _, va3 = split_validation(ds, 0.2, seed=6)
    assert not np.array_equal(va.x, va3.x)
    tr0, va0 = split_validation(ds, 0.0, seed=0)
    assert len(tr0) == 100 and len(va0) == 0
    assert "fraction" in _error(split_validation, ds, 1.0, 0)


def test_channel_stats_and_normalize():
    x = _images(50, 6, 7, 3)
    mean, std = channel_stats(x, chunk=7)
    ref = x.astype(np.float64) / 255
    assert mean.dtype == np.float32 and mean.shape == (3,)
    assert np.allclose(mean, ref.mean(axis=(0, 1, 2)), atol=1e-6)
    assert np.allclose(std, ref.std(axis=(0, 1, 2)), atol=1e-6)
    z = normalize(x, mean, std)
    assert z.dtype == np.float32 and z.shape == x.shape
    assert np.allclose(z.mean(axis=(0, 1, 2)), 0, atol=1e-4)
    assert np.allclose(z.std(axis=(0, 1, 2)), 1, atol=1e-4)
    xf = (x / 255).astype(np.float32)
    assert np.allclose(normalize(xf, mean, std), z, atol=1e-5)
    assert np.array_equal(xf, (x / 255).astype(np.float32))  # input untouched
    flat = np.full((2, 2, 2, 1), 7, np.uint8)
    m, s = channel_stats(flat)
    assert s[0] == 0 and np.all(normalize(flat, m, s) == 0)


def test_random_crop():
    x = _images(16, 8, 9, 3)
    a = random_crop(x, 2, np.random.default_rng(0))
    b = random_crop(x, 2, np.random.default_rng(0))
    assert a.shape == x.shape and a.dtype == x.dtype and np.array_equal(a, b)
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    for i in range(len(x)):  # every output is some window of its own padded image
        windows = [padded[i, r:r + 8, c:c + 9] for r in range(5) for c in range(5)]
        assert any(np.array_equal(a[i], w) for w in windows)
    assert not all(np.array_equal(a[i], x[i]) for i in range(len(x)))
    assert np.array_equal(random_crop(x, 0, np.random.default_rng(0)), x)


def test_random_flip():
    x = _images(32, 5, 6, 3)
    a = random_flip(x, np.random.default_rng(1))
    assert np.array_equal(a, random_flip(x, np.random.default_rng(1)))
    flipped = [np.array_equal(a[i], x[i, :, ::-1]) for i in range(len(x))]
    same = [np.array_equal(a[i], x[i]) for i in range(len(x))]
    assert all(f or s for f, s in zip(flipped, same, strict=True))
    assert 0 < sum(flipped) < len(x)


def test_check_against_input():
    ds = Dataset(x=_images(4), y=np.array([0, 1, 2, 9]), num_classes=10, class_names=None,
                 source="t")
    msg = _error(check_against_input, ds, 32, 32, 3, 10, "data/mnist")
    assert msg == "data/mnist: images are 28x28x1 but the spec's input is 32x32x3"
    check_against_input(ds, 28, 28, 1, 10, "data/mnist")
    assert "9" in _error(check_against_input, ds, 28, 28, 1, 5, "d")
    assert "empty" in _error(check_against_input, ds.subset(np.arange(0)), 28, 28, 1, 10, "d")


def test_dataset_validates_arrays():
    with pytest.raises(ValueError):
        Dataset(x=np.zeros((2, 3, 3), np.uint8), y=np.zeros(2, np.int64), num_classes=1,
                class_names=None, source="")
    with pytest.raises(ValueError):
        Dataset(x=np.zeros((2, 3, 3, 1), np.uint8), y=np.zeros(3, np.int64), num_classes=1,
                class_names=None, source="")


def test_module_does_not_import_numba():
    code = "import sys, cnncli.training.data; assert 'numba' not in sys.modules, 'numba imported'"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env)


def test_writers_reject_bad_input(tmp_path):
    with pytest.raises(ValueError):
        write_cifar_bin(tmp_path / "a.bin", _images(2), _labels(2))  # 28x28x1 is not CIFAR
    with pytest.raises(ValueError):
        write_idx(tmp_path / "a", np.zeros((2, 3, 3, 3), np.uint8))


# ------------------------------------------------------------------ size caps, odd files


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_train_data_from_a_device_is_refused_without_reading_it(device):
    """/dev/zero used to be read whole: memory grew until the machine gave out."""
    msg = _error(load_dataset, device)
    assert msg.startswith(f"{device}: is a character device, not a file")
    assert "understood:" in msg


def _through_fifo(tmp_path: Path, payload: bytes) -> Path:
    """A named pipe that a thread fills with `payload` (like `--data <(zcat data.gz)`)."""
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def feed() -> None:
        try:
            with fifo.open("wb") as fh:
                fh.write(payload)
        except BrokenPipeError:  # the reader refused the stream after its first bytes
            pass

    threading.Thread(target=feed, daemon=True).start()
    return fifo


def test_data_from_a_pipe_is_read_when_it_starts_like_a_format(tmp_path):
    x, y = _images(5, 8, 8, 3), _labels(5, 3)
    write_npz(tmp_path / "d.npz", Dataset(x=x, y=y, num_classes=3, class_names=None, source=""))
    ds = load_dataset(_through_fifo(tmp_path, gzip.compress((tmp_path / "d.npz").read_bytes())))
    assert np.array_equal(ds.x, x) and np.array_equal(ds.y, y)
    (tmp_path / "pipe").unlink()
    msg = _error(load_dataset, _through_fifo(tmp_path, b"\0" * 100_000))
    assert "is a pipe, not a file" in msg


def test_data_file_over_the_size_cap_is_refused_before_reading(tmp_path, monkeypatch):
    import cnncli.training.data as D

    monkeypatch.setattr(D, "MAX_DATA_BYTES", 1000)
    (tmp_path / "big.bin").write_bytes(bytes(3073))
    msg = _error(load_dataset, tmp_path / "big.bin")
    assert msg == (f"{tmp_path / 'big.bin'}: it is 3 KiB, more than the 1000 bytes cnncli "
                   "reads from one data file")


def test_gzip_bomb_stops_at_the_size_cap(tmp_path, monkeypatch):
    import cnncli.training.data as D

    monkeypatch.setattr(D, "MAX_DATA_BYTES", 1 << 16)
    (tmp_path / "bomb.gz").write_bytes(gzip.compress(bytes(1 << 20)))  # 1 MiB of zeros
    assert "decompresses to more than" in _error(load_dataset, tmp_path / "bomb.gz")


@pytest.mark.parametrize("gz", [False, True])
def test_idx_header_declaring_more_than_the_cap_is_refused_before_reading(tmp_path, gz):
    header = struct.pack(">IIII", 0x00000803, 1_000_000, 100, 100)  # 10 GB of pixels
    payload = header + bytes(1000)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(gzip.compress(payload) if gz
                                                       else payload)
    msg = _error(load_dataset, tmp_path / "train-images-idx3-ubyte")
    assert "its IDX header declares 1000000x100x100 values, more than the 4 GiB" in msg


def _npz_with_header(path: Path, shape: tuple[int, ...]) -> None:
    """An .npz whose x.npy header declares `shape` but whose data is 100 bytes."""
    import io
    import zipfile

    x = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        x, {"descr": "|u1", "fortran_order": False, "shape": shape})
    y = io.BytesIO()
    np.save(y, np.zeros(2, np.int64))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", x.getvalue() + bytes(100))
        zf.writestr("y.npy", y.getvalue())


def test_npz_array_declaring_more_than_it_holds_is_refused_before_loading(tmp_path):
    _npz_with_header(tmp_path / "lies.npz", (1000, 1000, 1000, 1))  # 1 GB declared
    msg = _error(load_dataset, tmp_path / "lies.npz")
    assert "array 'x' declares [1000, 1000, 1000, 1] uint8 (1000000000 bytes)" in msg
    assert "corrupt .npz" in msg
    _npz_with_header(tmp_path / "huge.npz", (100_000, 1000, 1000, 1))  # 100 GB declared
    assert "more than the 4 GiB" in _error(load_dataset, tmp_path / "huge.npz")


@pytest.mark.parametrize("payload, fragment", [
    # bytearray(1 GiB): a length, not data
    (b"\x80\x02c__builtin__\nbytearray\nJ\x00\x00\x00\x40\x85R.", "bytearray"),
    # an array of 10^9 elements reconstructed from its shape alone
    (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
     b"J\x00\xca\x9a\x3b\x85U\x01b\x87R.", "shape (1000000000,)"),
])
def test_pickle_cannot_allocate_memory_it_does_not_hold(tmp_path, payload, fragment):
    (tmp_path / "data_batch_1").write_bytes(payload)
    msg = _error(load_dataset, tmp_path / "data_batch_1")
    assert "unsafe or corrupt pickle" in msg and fragment in msg


# ------------------------------------------------------------------ pixels: finite, scale


def test_check_finite_is_the_one_nan_check_for_data(tmp_path):
    from cnncli.training.data import check_finite

    x = np.ones((3, 4, 4, 1), np.float32)
    check_finite(x, "ok")
    check_finite(_images(2), "uint8 is always finite")
    x[1, 2, 3, 0] = np.nan
    x[2, 0, 0, 0] = -np.inf
    assert _error(check_finite, x, "d.npz: 'x'") == (
        "d.npz: 'x' has 2 NaN or infinite values (of 48); pixels must be finite numbers")
    np.savez(tmp_path / "nan.npz", x=x, y=np.zeros(3, np.int64))
    assert "has 2 NaN or infinite values" in _error(load_dataset, tmp_path / "nan.npz")


def test_scale_warning_for_float_pixels_on_the_0_255_scale():
    from cnncli.training.data import scale_warning

    unit = RNG.random((4, 6, 6, 3)).astype(np.float32)
    assert scale_warning(unit, "d") is None
    assert scale_warning(_images(2), "d") is None  # uint8 is divided by 255
    note = scale_warning(unit * 255, "d.npz")
    assert note is not None and "\n" not in note
    assert note.startswith("d.npz: float pixels range over") and "0..255" in note


# ------------------------------------------------------------------ padding (LeNet-5 on MNIST)


def test_pad_to_input_zero_pads_each_image_centrally():
    from cnncli.training.data import pad_to_input

    ds = Dataset(x=_images(3), y=_labels(3), num_classes=10, class_names=None, source="m")
    padded = pad_to_input(ds, 32, 32, "m")
    assert padded.image_shape == (32, 32, 1) and padded.source == "m, zero-padded to 32x32"
    assert np.array_equal(padded.x[:, 2:30, 2:30], ds.x)
    assert padded.x.sum() == ds.x.sum()  # only zeros added
    assert pad_to_input(ds, 28, 28, "m") is ds
    assert "margin, not 5x5" in _error(pad_to_input, ds, 33, 33, "m")
    assert "only pads" in _error(pad_to_input, ds, 24, 24, "m")


def test_size_mismatch_suggests_pad_data_when_padding_fits():
    ds = Dataset(x=_images(2), y=_labels(2), num_classes=10, class_names=None, source="m")
    assert _error(check_against_input, ds, 32, 32, 1, 10, "data/mnist") == (
        "data/mnist: images are 28x28x1 but the spec's input is 32x32x1: pass --pad-data to "
        "zero-pad each image by 2 px (as LeCun et al. did to feed MNIST to LeNet-5)")
    assert _error(check_against_input, ds, 32, 30, 1, 10, "d").endswith(
        "by 1 px top and bottom, 2 px left and right")
    assert "--pad-data" not in _error(check_against_input, ds, 31, 31, 1, 10, "d")
