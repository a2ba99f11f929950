"""What a training run does when not told, and what a run directory allows: the one place
`cnncli train`'s defaults are written, and the policy for --resume and --overwrite.

Pure Python (no numpy): the CLI reads DEFAULTS for its options' help when it starts, and
every command starts with it, `check` and `memory` included.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cnncli.engine.kernels.conv_algo import DEFAULT_CONV_ALGO
from cnncli.errors import InputError


class TrainError(InputError):
    """Bad training settings or data that does not fit the net (one line)."""


@dataclass(frozen=True)
class TrainDefaults:
    # the data
    val_fraction: float = 0.2   # held out of --data (or drawn beside the built-in set)
    train_size: int = 8000      # training images of the built-in dataset
    pad_data: bool = False
    # the optimisation
    epochs: int = 10
    batch: int = 64
    lr: float = 0.01
    optimizer: str = "momentum"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    seed: int = 0
    augment: bool = False
    dtype: str = "float32"
    # data-parallel runs only: batchnorm statistics of each rank's shard, as Horovod
    sync_batchnorm: bool = False
    # how each conv layer runs (im2col + GEMM, or Winograd): engine/kernels/conv_algo.py
    conv_algo: str = DEFAULT_CONV_ALGO


CONV_ALGO_BEFORE = "gemm"
"""A run saved before --conv-algo existed ran every conv as im2col + GEMM."""


DEFAULTS = TrainDefaults()

EVAL_BATCH = 256
"""Images per forward pass when evaluating: validation in training, and `cnncli eval`."""

EVAL_SIZE = 2000
"""Built-in images `cnncli eval` tests on without --data (seed 1: unseen in training)."""

RESUME_MAY_CHANGE = frozenset({"epochs", "threads", "quiet"})
"""Options a resumed run may change: how long it goes on and how it is shown. Any other
would make the resumed run a different run from the one its checkpoint continues."""

def new_run_options(given: dict[str, Any], run_path: Path, holds_a_run: bool,
                    overwrite: bool) -> dict[str, Any]:
    """A new run's options: DEFAULTS, then what was `given` (options by name, None left
    out). A directory that already holds a run is refused unless told to `overwrite`."""
    if "val_data" in given and "val_fraction" in given:
        raise TrainError("--val-fraction and --val-data exclude each other: the "
                         "validation set is either held out of --data or given")
    if holds_a_run and not overwrite:
        raise TrainError(f"{run_path} already holds a run (last.npz); pass --resume "
                         "to continue it, --overwrite to start over, or another --out")
    return {**asdict(DEFAULTS), "threads": None, "data": None, "val_data": None, **given}


def resumed_options(info: dict[str, Any], given: dict[str, Any], ranks: int,
                    ) -> dict[str, Any]:
    """A resumed run's options: its own, as its checkpoint's `info` records them, with
    only RESUME_MAY_CHANGE taken from `given`. An option given with another value is
    refused, not ignored.

    Threads: the run's own count unless told otherwise, so it goes on with the same
    numbers; on another number of ranks than it had, the default share applies instead.
    """
    stored = dict(info["options"])
    stored.setdefault("conv_algo", CONV_ALGO_BEFORE)
    for key, value in given.items():
        if key not in RESUME_MAY_CHANGE and stored.get(key) != value:
            raise TrainError(
                f"--{key.replace('_', '-')} {value} differs from the run's "
                f"{stored.get(key)}; --resume continues a run with its own settings "
                "(drop the option, or start a new run with another --out)")
    same_ranks = info.get("ranks", 1) == ranks
    options = dict(stored, threads=info.get("threads") if same_ranks else None)
    options.update({k: v for k, v in given.items() if k in RESUME_MAY_CHANGE})
    return options
