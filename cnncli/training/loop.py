"""The training loop: a generator of events. It never prints; `cnncli.cli.train` renders.

    >>> trainer = Trainer(net, train_ds, val_ds, TrainConfig(epochs=5), spec_text)
    >>> for event in trainer.run():
    ...     if isinstance(event, EpochDone): print(event.metrics)

Determinism: the same seed, data and thread count give the same loss curve, number for
number. Every random draw comes from a seeded numpy Generator: `shuffle` (one
permutation per epoch), `augment` (crop offsets and flips) and the network's own `rng`
(its initial weights, then dropout masks). A checkpoint stores all three states (the
shuffle state as of the start of its epoch, so a resumed epoch redraws the same order),
the position (epoch, batch) and the epoch's running sums, so a run stopped anywhere at
a batch boundary and resumed ends with the same weights as one that never stopped.

Stopping: `request_stop()` (the CLI calls it on Ctrl-C) makes the loop save `last.npz`
at the next batch boundary and yield `Stopped("interrupted")`. A loss that is NaN or
infinite yields `Stopped("diverged")` and writes nothing, so the last good checkpoint
stays.

The reported training loss is the data loss (comparable with the validation loss); the
L2 penalty of `weight_decay` is added to the gradients only.

Distributed: given an MPI `comm` (cnncli.training.distributed), each rank computes its shard of
every batch, the gradients are summed over the ranks before the step, and validation is
split across them; alone, `Comm()` changes nothing (docs/distributed.md).
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.engine.checkpoint import Checkpoint, save_checkpoint, spec_sha256
from cnncli.engine.network import Network
from cnncli.engine.optim import OPTIMIZERS, SCHEDULES, Schedule, make_optimizer
from cnncli.engine.warmup import CompileWatch
from cnncli.errors import RunInvalid
from cnncli.files import (
    FolderBusy,
    FolderLock,
    Writer,
    remove_stale_temporaries,
    write_atomically,
)
from cnncli.files import text_writer as _text_writer  # a name of its own: tests fail it
from cnncli.training import data as D
from cnncli.training.distributed import Comm
from cnncli.training.settings import DEFAULTS, EVAL_BATCH, TrainError

# --------------------------------------------------------------------------- settings


@dataclass
class TrainConfig:
    """One run's settings; what is not given is DEFAULTS (cnncli.training.settings)."""

    epochs: int = DEFAULTS.epochs
    batch: int = DEFAULTS.batch
    lr: float = DEFAULTS.lr
    optimizer: str = DEFAULTS.optimizer
    momentum: float = DEFAULTS.momentum
    weight_decay: float = DEFAULTS.weight_decay
    schedule: str = DEFAULTS.schedule
    step_size: int = 5       # epochs between decays of the step schedule
    gamma: float | None = None  # decay factor; default 0.5 (step), 0.9 per epoch (exp)
    seed: int = DEFAULTS.seed
    augment: bool = DEFAULTS.augment
    crop_pad: int = 0        # 0: an eighth of the image side (4 px at 32x32), as for CIFAR
    dtype: str = DEFAULTS.dtype
    eval_batch: int = EVAL_BATCH
    # data-parallel runs only: batchnorm statistics of the global batch, not the rank's shard
    sync_batchnorm: bool = DEFAULTS.sync_batchnorm

    def validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise TrainError(message)

        need(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        need(self.batch >= 1, f"batch size must be >= 1, got {self.batch}")
        need(math.isfinite(self.lr) and self.lr > 0, f"learning rate must be > 0, got {self.lr}")
        need(self.optimizer in OPTIMIZERS,
             f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        need(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        need(math.isfinite(self.weight_decay) and self.weight_decay >= 0,
             f"weight decay must be >= 0, got {self.weight_decay}")
        need(self.schedule in SCHEDULES,
             f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        need(self.step_size >= 1, f"step size must be >= 1 epoch, got {self.step_size}")
        need(self.gamma is None or 0 < self.gamma <= 1,
             f"decay factor gamma must be in (0, 1], got {self.gamma}")
        need(self.crop_pad >= 0, f"crop padding must be >= 0, got {self.crop_pad}")
        need(self.dtype in ("float32", "float64"),
             f"dtype must be float32 or float64, got {self.dtype!r}")
        need(self.eval_batch >= 1, f"eval batch size must be >= 1, got {self.eval_batch}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class BatchDone:
    epoch: int          # 0-based
    batch: int          # 0-based within the epoch
    batches: int        # batches per epoch
    loss: float         # this batch's data loss
    accuracy: float     # this batch's training accuracy
    images: int         # images in this batch
    seconds: float      # wall time of this batch
    lr: float
    compile_seconds: float = 0.0  # of `seconds`, compiling kernels (a first run on a machine)


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int                    # 1-based: epochs completed
    train_loss: float
    train_acc: float
    val_loss: float | None
    val_acc: float | None
    lr: float
    seconds: float                # training time of the epoch (without validation)
    images_per_s: float
    val_seconds: float
    best: bool                    # the best result so far (saved as best.npz)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EpochDone:
    metrics: EpochMetrics
    epochs: int


@dataclass(frozen=True)
class CheckpointSaved:
    path: Path
    kind: str           # "last" | "best"
    epoch: int          # epochs completed
    batch: int          # batches done in the epoch after that (mid-epoch after Ctrl-C)


@dataclass(frozen=True)
class Stopped:
    reason: str         # "finished" | "interrupted" | "diverged"
    message: str
    epoch: int
    batch: int


Event = BatchDone | EpochDone | CheckpointSaved | Stopped


# --------------------------------------------------------------------------- evaluation


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    confusion: np.ndarray   # [true, predicted] counts, int64 [K, K]
    images: int

    @property
    def per_class_accuracy(self) -> list[float | None]:
        totals = self.confusion.sum(axis=1)
        return [float(self.confusion[k, k] / t) if t else None for k, t in enumerate(totals)]


def evaluate(net: Network, ds: D.Dataset, mean: np.ndarray, std: np.ndarray,
             batch: int = EVAL_BATCH, should_stop: Callable[[], bool] | None = None,
             ) -> EvalResult | None:
    """Loss, accuracy and confusion matrix in evaluation mode (None if stopped)."""
    k = net.output.d
    confusion = np.zeros((k, k), dtype=np.int64)
    loss_sum = 0.0
    for start in range(0, len(ds), batch):
        if should_stop is not None and should_stop():
            return None
        x = D.normalize(ds.x[start:start + batch], mean, std)
        y = ds.y[start:start + batch]
        scores = net.forward(x, training=False).reshape(len(y), -1)
        loss, _ = net.loss(scores, y)
        loss_sum += loss * len(y)
        np.add.at(confusion, (y, scores.argmax(axis=1)), 1)
    n = len(ds)
    return EvalResult(loss=loss_sum / max(1, n),
                      accuracy=float(np.trace(confusion) / max(1, n)),
                      confusion=confusion, images=n)


# --------------------------------------------------------------------------- data


def spec_text_of(spec: Any) -> str:
    """The spec's text as used: the file's text, or YAML of a spec given as a dict."""
    import yaml

    source = Path(getattr(spec, "source", "<memory>"))
    try:
        if source.is_file():
            return source.read_text(encoding="utf-8")
    except OSError:
        pass
    return str(yaml.safe_dump(getattr(spec, "raw", {}), sort_keys=False))


def num_classes_of(net: Network) -> int:
    out = net.output
    if (out.w, out.h) != (1, 1):
        raise TrainError(f"{net.spec.name}: training needs a classifier ending in [1x1xK], "
                         f"but the net ends in {out}")
    return int(out.d)


def builtin_dataset(net: Network, n: int, seed: int = 0) -> D.Dataset:
    """The built-in synthetic shapes, sized to the net's input and class count."""
    v, k = net.input, num_classes_of(net)
    if not 2 <= k <= len(D.SHAPE_CLASSES):
        raise TrainError(f"the built-in dataset has 2 to {len(D.SHAPE_CLASSES)} classes but "
                         f"{net.spec.name} has {k}; pass --data")
    if v.d not in (1, 3) or v.w < 12 or v.h < 12:
        raise TrainError(f"the built-in dataset draws images of at least 12x12 with depth 1 "
                         f"or 3, not {v}; pass --data")
    return D.synthetic_shapes(n, width=v.w, height=v.h, depth=v.d, num_classes=k, seed=seed)


def load_training_data(net: Network, data: str | None, val_data: str | None,
                       val_fraction: float, train_size: int, split_seed: int = 0,
                       pad: bool = False, warn: D.Warn = D.warn_python,
                       ) -> tuple[D.Dataset, D.Dataset | None]:
    """(train, validation or None). Without `data`: the built-in set, `train_size`
    training images plus a validation part of round(train_size * val_fraction).
    `pad`: zero-pad smaller images to the net's input (`data.pad_to_input`); `warn`
    gets one line per data set whose float pixels look like the 0..255 scale."""
    if not 0 <= val_fraction < 1:
        raise TrainError(f"validation fraction must be in [0, 1), got {val_fraction}")
    if data is None:
        if train_size < 1:
            raise TrainError(f"train size must be >= 1, got {train_size}")
        n_val = 0 if val_data else round(train_size * val_fraction)
        full = builtin_dataset(net, train_size + n_val)
        if n_val == 0:
            train, val = full, None
        else:
            train, val = D.split_validation(full, n_val / (train_size + n_val), split_seed)
    else:
        full = _load_fitting(net, data, "train", pad, warn)
        if val_data is None and val_fraction > 0:
            train, val = D.split_validation(full, val_fraction, split_seed)
            if len(val) == 0:
                val = None
        else:
            train, val = full, None
    if val_data is not None:
        val = _load_fitting(net, val_data, "test", pad, warn)
    return train, val


def load_test_data(net: Network, data: str, pad: bool = False,
                   warn: D.Warn = D.warn_python) -> D.Dataset:
    """A test set (a folder's test split) checked against the net, as `eval` takes it."""
    return _load_fitting(net, data, "test", pad, warn)


def _load_fitting(net: Network, path: str, split: str, pad: bool, warn: D.Warn) -> D.Dataset:
    ds = D.load_dataset(path, split=split)
    v = net.input
    if pad and len(ds):
        ds = D.pad_to_input(ds, v.w, v.h, path)
    D.check_against_input(ds, v.w, v.h, v.d, num_classes_of(net), path)
    note = D.scale_warning(ds.x, path)
    if note:
        warn(note)
    return ds


# --------------------------------------------------------------------------- run directory


class RunDir:
    """A run's folder: spec.yaml, config.json, metrics.jsonl/.csv, last.npz, best.npz.

    The metrics files are the history that last.npz carries, written with it in one
    atomic save (`save_checkpoint(..., also=...)`), so they never get ahead of it or
    lose rows; `recover` rewrites them from the checkpoint when the run starts again,
    in case a kill fell between the renames.
    """

    FILES = ("spec.yaml", "config.json", "metrics.jsonl", "metrics.csv", "last.npz",
             "best.npz")

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.last = self.path / "last.npz"
        self.best = self.path / "best.npz"
        self.jsonl = self.path / "metrics.jsonl"
        self.csv = self.path / "metrics.csv"
        self._lock = FolderLock(self.path)

    def lock(self) -> None:
        """Be the one run writing here until `unlock` (files.FolderLock), before anything
        in the folder is read: a second `cnncli train` into it would clear this run's
        temporaries as stale and interleave its saves with this run's."""
        try:
            self._lock.acquire()
        except FolderBusy:
            raise RunInvalid(f"{self.path} is in use by another cnncli train; wait for it "
                             "to finish, or train into another --out") from None

    def unlock(self) -> None:
        """Let the folder go (and remove it, if the run stopped before writing to it)."""
        self._lock.release()

    def start(self, spec_text: str, config: dict[str, Any],
              history: list[dict[str, Any]]) -> None:
        """Write spec.yaml (the spec as used) and config.json (everything about the run);
        `recover` what an earlier kill may have left."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.recover(history)
        write_atomically([
            (self.path / "spec.yaml", _text_writer(spec_text)),
            (self.path / "config.json", _text_writer(json.dumps(config, indent=2) + "\n"))])

    def forget(self) -> None:
        """--overwrite: the old run's checkpoints and metrics go before the new run starts
        (its spec.yaml and config.json the new run writes anew)."""
        for old in (self.last, self.best, self.jsonl, self.csv):
            old.unlink(missing_ok=True)

    def recover(self, history: list[dict[str, Any]]) -> None:
        """Remove the temporaries of a save that was killed, and rewrite the metrics from
        `history`, the one in last.npz (a resumed run keeps exactly the epochs its
        checkpoint has)."""
        remove_stale_temporaries(self.path, self.FILES)
        self.write_metrics(history)

    def metrics_files(self, history: list[dict[str, Any]]) -> list[tuple[Path, Writer]]:
        """(path, writer) of both metrics files for this history, for `write_atomically`."""
        jsonl = "".join(json.dumps(row) + "\n" for row in history)
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=[f.name for f in fields(EpochMetrics)])
        writer.writeheader()
        writer.writerows(history)
        return [(self.jsonl, _text_writer(jsonl)), (self.csv, _text_writer(table.getvalue()))]

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """Rewrite both metrics files from the whole history, atomically."""
        write_atomically(self.metrics_files(history))


# --------------------------------------------------------------------------- the loop


def _state(rng: np.random.Generator) -> dict[str, Any]:
    return dict(rng.bit_generator.state)


def _set_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    rng.bit_generator.state = state


@dataclass
class _Progress:
    """Where the run is, and the running sums of the current epoch."""

    epoch: int = 0                  # epochs completed
    batch: int = 0                  # batches done in the current epoch
    loss_sum: float = 0.0           # sum over images of the data loss
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None


class Trainer:
    def __init__(self, net: Network, train: D.Dataset, val: D.Dataset | None,
                 config: TrainConfig, spec_text: str, run_dir: str | Path | None = None,
                 info: dict[str, Any] | None = None, comm: Comm | None = None):
        config.validate()
        if np.dtype(config.dtype) != net.dtype:
            raise TrainError(f"config dtype {config.dtype} but the net is {net.dtype}")
        if len(train) == 0:
            raise TrainError("the training set is empty")
        self.net, self.train_ds, self.val_ds, self.config = net, train, val, config
        self.spec_text = spec_text
        self.info = dict(info or {})
        # distributed (cnncli.training.distributed): each rank computes its shard of every batch and
        # validates its part of the validation set; only rank 0 writes the run directory
        self.comm = comm or Comm()
        self.comm.check_batch(config.batch)
        self.comm.attach(net, config.sync_batchnorm)
        self.val_part = self.comm.part_of(val) if val is not None else None
        self.run_dir = RunDir(run_dir) if run_dir is not None and self.comm.is_root else None
        self.mean, self.std = D.channel_stats(train.x)
        self.optimizer = make_optimizer(config.optimizer, net.params, config.lr, config.momentum)
        gamma = config.gamma or (0.9 if config.schedule == "exp" else 0.5)
        self.schedule = Schedule(config.schedule, config.lr, config.epochs, config.step_size,
                                 gamma)
        self.shuffle_rng = np.random.default_rng([config.seed, 1])
        self.augment_rng = np.random.default_rng([config.seed, 2])
        self.augment_draws = self.comm.batch_draws(self.augment_rng)
        self._epoch_shuffle_state = _state(self.shuffle_rng)
        self.progress = _Progress()
        self._stop = False
        h, w, _ = train.image_shape
        self.crop_pad = config.crop_pad or max(1, min(h, w) // 8)

    # ------------------------------------------------------------ control
    def request_stop(self) -> None:
        """Stop at the next batch boundary, after saving last.npz (safe from a signal)."""
        self._stop = True

    @property
    def batches_per_epoch(self) -> int:
        return -(-len(self.train_ds) // self.config.batch)

    # ------------------------------------------------------------ checkpoints
    def checkpoint(self) -> Checkpoint:
        p = self.progress
        opt_state = self.optimizer.state_dict()
        meta = {
            "spec_sha256": spec_sha256(self.spec_text),
            "spec_name": self.net.spec.name,
            "spec_text": self.spec_text,
            "config": asdict(self.config),
            "info": self.info,
            "dtype": str(self.net.dtype),
            "classes": self.train_ds.class_names,
            "position": {"epoch": p.epoch, "batch": p.batch},
            "epoch_sums": {"loss_sum": p.loss_sum, "correct": p.correct, "seen": p.seen,
                           "seconds": p.seconds},
            "rng": {"shuffle_epoch_start": self._epoch_shuffle_state,
                    "augment": _state(self.augment_rng), "net": _state(self.net.rng)},
            "optimizer": {"name": self.optimizer.name, "t": opt_state.pop("t"),
                          "lr": opt_state.pop("lr")},
            "history": p.history,
            "best": p.best,
        }
        return Checkpoint(weights=self.net.state_dict(), optimizer=opt_state,
                          mean=self.mean, std=self.std, meta=meta)

    def load(self, ckpt: Checkpoint) -> None:
        """Continue from a checkpoint of this run (same spec, data and config)."""
        meta = ckpt.meta
        try:
            self.net.load_state_dict(ckpt.weights)
            opt_meta = meta["optimizer"]
            if opt_meta["name"] != self.optimizer.name:
                raise TrainError(f"the checkpoint's optimizer is {opt_meta['name']}, "
                                 f"not {self.optimizer.name}")
            self.optimizer.load_state_dict(dict(ckpt.optimizer, t=opt_meta["t"],
                                                lr=opt_meta["lr"]))
            self.mean = np.asarray(ckpt.mean, dtype=np.float32)
            self.std = np.asarray(ckpt.std, dtype=np.float32)
            rng = meta["rng"]
            self._epoch_shuffle_state = rng["shuffle_epoch_start"]
            _set_state(self.shuffle_rng, rng["shuffle_epoch_start"])
            _set_state(self.augment_rng, rng["augment"])
            _set_state(self.net.rng, rng["net"])
            sums = meta["epoch_sums"]
            self.progress = _Progress(
                epoch=int(meta["position"]["epoch"]), batch=int(meta["position"]["batch"]),
                loss_sum=float(sums["loss_sum"]), correct=int(sums["correct"]),
                seen=int(sums["seen"]), seconds=float(sums["seconds"]),
                history=list(meta["history"]), best=meta["best"])
        except (KeyError, TypeError, ValueError) as exc:
            raise TrainError(f"the checkpoint does not fit this run: {exc}") from None
        if self.progress.batch > self.batches_per_epoch:
            raise TrainError(f"the checkpoint stopped at batch {self.progress.batch} but an "
                             f"epoch has {self.batches_per_epoch}: the data or batch size "
                             "changed")

    def _save(self, kind: str) -> Iterator[CheckpointSaved]:
        if self.run_dir is None:
            return
        path = self.run_dir.last if kind == "last" else self.run_dir.best
        # the metrics files are last.npz's history: written with it, they agree with it
        also = self.run_dir.metrics_files(self.progress.history) if kind == "last" else []
        save_checkpoint(path, self.checkpoint(), also=also)
        yield CheckpointSaved(path, kind, self.progress.epoch, self.progress.batch)

    # ------------------------------------------------------------ the loop
    def _batch_images(self, idx: np.ndarray) -> np.ndarray:
        x = self.train_ds.x[idx]
        if self.config.augment:
            x = D.random_crop(x, self.crop_pad, self.augment_draws)
            x = D.random_flip(x, self.augment_draws)
        return D.normalize(x, self.mean, self.std)

    def _stopping(self) -> bool:
        # distributed: only once every rank has seen the request, so all stop together
        return self.comm.should_stop(self._stop)

    def _interrupted(self) -> Iterator[Event]:
        yield from self._save("last")
        p = self.progress
        where = f"epoch {p.epoch + 1}, batch {p.batch}/{self.batches_per_epoch}"
        saved = f"; saved {self.run_dir.last}" if self.run_dir else ""
        yield Stopped("interrupted", f"stopped at {where}{saved}", p.epoch, p.batch)

    def run_config(self) -> dict[str, Any]:
        """What config.json records: spec, data, settings, normalisation."""
        return {"spec": str(self.net.spec.source), "spec_name": self.net.spec.name,
                "spec_sha256": spec_sha256(self.spec_text), **self.info,
                "train_images": len(self.train_ds),
                "val_images": len(self.val_ds) if self.val_ds is not None else 0,
                "config": asdict(self.config),
                "normalisation": {"mean": self.mean.tolist(), "std": self.std.tolist()}}

    def run(self) -> Iterator[Event]:
        # kernels compile the first time a step calls them (numba caches them on disk): the
        # watch tells the display how much of a slow first step that was
        with CompileWatch() as watch:
            yield from self._run(watch)

    def _run(self, watch: CompileWatch) -> Iterator[Event]:
        cfg, net, p = self.config, self.net, self.progress
        if self.run_dir is not None:
            self.run_dir.start(self.spec_text, self.run_config(), p.history)
        n = len(self.train_ds)
        batches = self.batches_per_epoch
        while p.epoch < cfg.epochs:
            lr = self.schedule(p.epoch)
            self.optimizer.lr = lr
            _set_state(self.shuffle_rng, self._epoch_shuffle_state)
            order = self.shuffle_rng.permutation(n)
            for b in range(p.batch, batches):
                if self._stopping():
                    yield from self._interrupted()
                    return
                t0, compiled = time.perf_counter(), watch.seconds
                idx = order[b * cfg.batch:(b + 1) * cfg.batch]
                part = self.comm.shard(len(idx))  # this rank's images of the batch (alone: all)
                idx = idx[part.local]
                x, y = self._batch_images(idx), self.train_ds.y[idx]
                with np.errstate(over="ignore", invalid="ignore"):  # a NaN is handled below
                    scores = net.forward(x, training=True)
                    loss, dscores = net.loss(scores, y)
                    net.backward(part.weigh(dscores))
                correct = int((scores.reshape(len(y), -1).argmax(axis=1) == y).sum())
                # distributed: gradients summed over the ranks; the batch's loss over all
                loss, correct, images = self.comm.reduce_step(net, part, loss, correct,
                                                              self._stop)
                if not math.isfinite(loss):
                    yield self._diverged(loss, lr, b)
                    return
                net.weight_decay(cfg.weight_decay)
                self.optimizer.step(net.grads)
                dt = time.perf_counter() - t0
                p.batch, p.loss_sum = b + 1, p.loss_sum + loss * images
                p.correct, p.seen, p.seconds = p.correct + correct, p.seen + images, p.seconds + dt
                yield BatchDone(p.epoch, b, batches, loss, correct / images, images, dt, lr,
                                watch.seconds - compiled)
            if self._stopping():
                yield from self._interrupted()
                return
            t0 = time.perf_counter()
            result = None
            if self.val_part is not None:
                result = evaluate(net, self.val_part, self.mean, self.std, cfg.eval_batch,
                                  self._stopping)
                if result is None:
                    yield from self._interrupted()
                    return
                result = self.comm.reduce_eval(result)
            yield from self._end_epoch(lr, result, time.perf_counter() - t0)
        yield Stopped("finished", self._summary(), p.epoch, p.batch)

    def _end_epoch(self, lr: float, result: EvalResult | None,
                   val_seconds: float) -> Iterator[Event]:
        p = self.progress
        train_loss = p.loss_sum / max(1, p.seen)
        # best: highest validation accuracy (ties: lower loss); without validation, lowest
        # training loss
        key = ([result.accuracy, -result.loss] if result is not None else [-train_loss])
        best = p.best is None or key > p.best["key"]
        m = EpochMetrics(
            epoch=p.epoch + 1, train_loss=train_loss, train_acc=p.correct / max(1, p.seen),
            val_loss=None if result is None else result.loss,
            val_acc=None if result is None else result.accuracy, lr=lr, seconds=p.seconds,
            images_per_s=p.seen / p.seconds if p.seconds > 0 else 0.0,
            val_seconds=val_seconds, best=best)
        p.history.append(m.as_dict())
        if best:
            p.best = {"epoch": m.epoch, "key": key, "val_acc": m.val_acc, "val_loss": m.val_loss,
                      "train_loss": m.train_loss}
        self._epoch_shuffle_state = _state(self.shuffle_rng)
        p.epoch, p.batch = p.epoch + 1, 0
        p.loss_sum, p.correct, p.seen, p.seconds = 0.0, 0, 0, 0.0
        if best:
            yield from self._save("best")
        yield from self._save("last")
        yield EpochDone(m, self.config.epochs)

    def _diverged(self, loss: float, lr: float, batch: int) -> Stopped:
        p = self.progress
        if self.run_dir is not None and self.run_dir.last.exists():
            kept = f"the last good checkpoint {self.run_dir.last} (epoch {p.epoch}) is kept"
        else:
            kept = "no checkpoint was written"
        return Stopped(
            "diverged",
            f"loss is {loss} at epoch {p.epoch + 1}, batch {batch + 1} (lr {lr:g}): training "
            f"diverged; {kept}. Try a lower learning rate (e.g. --lr {lr / 10:g}), a smaller "
            "--weight-decay, or another --optimizer", p.epoch, batch)

    def _summary(self) -> str:
        best = self.progress.best
        if not best:
            return "finished"
        if best.get("val_acc") is not None:
            return (f"finished {self.progress.epoch} epochs; best validation accuracy "
                    f"{100 * best['val_acc']:.2f}% at epoch {best['epoch']}")
        return (f"finished {self.progress.epoch} epochs; best training loss "
                f"{best['train_loss']:.4f} at epoch {best['epoch']}")
