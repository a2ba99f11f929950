"""Checkpoints as `.npz` files (no pickle), written atomically.

A checkpoint holds everything a run needs to continue bit for bit:

| npz entry            | what                                                           |
|----------------------|----------------------------------------------------------------|
| `weights/NAME`       | parameters and buffers, PyTorch names and layouts              |
| `optim/SLOT/NAME`    | optimizer state arrays (velocity, caches, moments)             |
| `norm/mean`, `norm/std` | per-channel normalisation of the training set, [C] float32  |
| `meta`               | one JSON string (below)                                        |

`meta` holds the format and version, the spec's sha256 and text, the training config,
the position (epochs completed, batches into the next), the RNG states, the optimizer's
step count and lr, the metric history and the best result so far.

It is written as every file cnncli writes (cnncli.files): to a temporary in the same
directory (`.last.npz.XXXXXXXX.tmp`), flushed and fsync'd, then `os.replace`d over the old
one, so a kill at any moment leaves either the old or the new checkpoint, never half of
one. Loading checks the format and, when asked, that the checkpoint was trained on the
same spec text (sha256).

`export_npz` writes the weights alone (`NAME` -> array, PyTorch layouts: conv
[K, D/groups, Fh, Fw], fc [units, D*H*W] over a (depth, height, width) flattening), so

    sd = {k: torch.from_numpy(v) for k, v in np.load("w.npz").items()}
    module.load_state_dict(sd)

works for a torch module whose attributes carry the same names (e.g. `conv1`, `fc1`).
BatchNorm layers also get PyTorch's `NAME.num_batches_tracked` (the training step count),
so a strict `load_state_dict` accepts them.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from cnncli.errors import InputError
from cnncli.files import Writer, write_atomically

FORMAT = "cnncli-checkpoint"
VERSION = 1


class CheckpointError(InputError):
    """A checkpoint cannot be read or does not fit; the message is one line naming the file."""


def spec_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class Checkpoint:
    weights: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]
    mean: np.ndarray
    std: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def epoch(self) -> int:
        """Epochs completed."""
        return int(self.meta.get("position", {}).get("epoch", 0))


def npz_writer(arrays: dict[str, np.ndarray]) -> Writer:
    """A `Writer` of these arrays as an (uncompressed) .npz."""

    def write(fh: BinaryIO) -> None:
        np.savez(fh, **arrays)  # type: ignore[arg-type]
    return write


def save_checkpoint(path: str | Path, ckpt: Checkpoint,
                    also: Sequence[tuple[Path, Writer]] = ()) -> Path:
    """Write `ckpt` atomically; `also`: files derived from it (a run's metrics), written
    with it and renamed right after it, so they never disagree with it after an error."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {f"weights/{k}": v for k, v in ckpt.weights.items()}
    arrays.update({f"optim/{k}": v for k, v in ckpt.optimizer.items()})
    arrays["norm/mean"] = np.asarray(ckpt.mean, dtype=np.float32)
    arrays["norm/std"] = np.asarray(ckpt.std, dtype=np.float32)
    meta = dict(ckpt.meta, format=FORMAT, version=VERSION)
    arrays["meta"] = np.array(json.dumps(meta))
    write_atomically([(path, npz_writer(arrays)), *also])
    return path


def load_checkpoint(path: str | Path, spec_text: str | None = None,
                    spec_source: str = "the spec") -> Checkpoint:
    """Read a checkpoint; with `spec_text`, refuse one trained on another spec."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory; pass a checkpoint file such as "
                              f"{path / 'last.npz'}")
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if magic != b"PK\x03\x04":
        raise CheckpointError(f"{path}: not a checkpoint (not an .npz archive: it does not "
                              "start with a zip header)")
    try:
        with np.load(path, allow_pickle=False) as z:
            entries = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated .npz: "
                              f"{exc})") from None
    if "meta" not in entries:
        hint = " (an exported weights file? eval needs a training checkpoint)" if any(
            "." in k for k in entries) else ""
        raise CheckpointError(f"{path}: not a cnncli checkpoint (no 'meta' entry){hint}")
    try:
        meta = json.loads(str(entries.pop("meta")))
    except ValueError as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a cnncli checkpoint (format is "
                              f"{meta.get('format') if isinstance(meta, dict) else meta!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {meta.get('version')} is not "
                              f"supported (this cnncli reads version {VERSION})")
    if "norm/mean" not in entries or "norm/std" not in entries:
        raise CheckpointError(f"{path}: checkpoint has no normalisation statistics")
    ckpt = Checkpoint(
        weights={k[len("weights/"):]: v for k, v in entries.items() if k.startswith("weights/")},
        optimizer={k[len("optim/"):]: v for k, v in entries.items() if k.startswith("optim/")},
        mean=entries["norm/mean"], std=entries["norm/std"], meta=meta)
    if spec_text is not None:
        check_spec(ckpt, spec_text, path, spec_source)
    return ckpt


def check_spec(ckpt: Checkpoint, spec_text: str, path: str | Path, spec_source: str) -> None:
    want = ckpt.meta.get("spec_sha256", "")
    got = spec_sha256(spec_text)
    if want != got:
        raise CheckpointError(
            f"{path}: this checkpoint belongs to another spec: it was trained on "
            f"'{ckpt.meta.get('spec_name', '?')}' (spec sha256 {want[:12]}), but {spec_source} "
            f"has sha256 {got[:12]}; pass the spec the run used (saved as spec.yaml in its "
            "run directory)")


def is_training_checkpoint(path: str | Path) -> bool:
    """Whether `path` holds a training checkpoint, told by its content: a `meta` entry,
    which exported weights files never have."""
    try:
        with zipfile.ZipFile(path) as z:
            return "meta.npy" in z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def check_export_target(path: str | Path, source: str | Path | None = None,
                        force: bool = False) -> None:
    """Refuse an export that would destroy a run: over the checkpoint being exported (ever),
    over any other training checkpoint (unless `force`), or onto a directory."""
    out = Path(path)
    if out.is_dir():
        raise CheckpointError(f"{out}: is a directory; name the .npz to write, e.g. "
                              f"{out / 'weights.npz'}")
    if (source is not None and out.exists() and Path(source).exists()
            and os.path.samefile(source, out)):
        raise CheckpointError(f"{out}: is the checkpoint being exported; writing the weights "
                              "alone over it would lose the run (name another output file)")
    if not force and is_training_checkpoint(out):
        raise CheckpointError(f"{out}: is a training checkpoint; exporting over it would "
                              "replace it with the weights alone (name another output file, "
                              "or pass --force to overwrite it)")


def export_npz(ckpt: Checkpoint | str | Path, path: str | Path, *,
               source: str | Path | None = None, force: bool = False) -> Path:
    """Weights and buffers only, `NAME` -> array in PyTorch names and layouts (atomic).

    `source` is the checkpoint's file when `ckpt` is already loaded; see
    `check_export_target` for what is refused."""
    if not isinstance(ckpt, Checkpoint):
        source = ckpt
        ckpt = load_checkpoint(ckpt)
    out = Path(path)
    check_export_target(out, source, force)
    arrays = {k: np.ascontiguousarray(v) for k, v in ckpt.weights.items()}
    steps = int(ckpt.meta.get("optimizer", {}).get("t", 0))
    for k in list(arrays):
        if k.endswith(".running_mean"):  # PyTorch's BatchNorm keeps a step counter too
            arrays[k[:-len("running_mean")] + "num_batches_tracked"] = np.array(steps, np.int64)
    write_atomically([(out, npz_writer(arrays))])
    return out
