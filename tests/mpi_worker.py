"""The MPI side of tests/test_distributed.py: `mpiexec -n N python tests/mpi_worker.py CASE
OUT [ARGS]` trains under MPI and leaves each rank's results in OUT; the test compares them
with a single process it runs itself. Not a test module (pytest collects test_*.py).

Cases:
  train   NET:DTYPE...: for each, 3 steps, then a whole epoch (its last batch has 1 image:
          one rank computes a stand-in with weight 0); each rank's weights in
          OUT/NET-DTYPE-{steps,epoch}-rankR.npz
  resume  NET: 2 epochs straight, and stopped after batch 2 then resumed from rank 0's
          checkpoint; both runs' weights per rank
  slow    3 epochs into OUT/run; from the second batch of epoch 2 on, each rank has
          written OUT/rankR.pid and sleeps 1 s per batch (the test kills a rank meanwhile)
  finish  resume OUT/run from its last.npz and finish it; each rank's weights
  raise   rank 1 raises after its first batch
  hang    rank 1 stops itself (SIGSTOP) after its first batch
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.engine.checkpoint import load_checkpoint
from cnncli.engine.network import Network
from cnncli.training import data as D
from cnncli.training.distributed import Comm, connect
from cnncli.training.loop import BatchDone, TrainConfig, Trainer, spec_text_of

CONV = {"conv": {"filters": 4, "size": 3, "pad": 1}}
NETS: dict[str, dict[str, Any]] = {
    "plain": {"layers": [CONV, "relu", {"pool": {"size": 2}}, {"fc": 3}]},
    "bn": {"layers": [CONV, "batchnorm", "relu", {"pool": {"size": 2}}, {"fc": 3}]},
    "syncbn": {"layers": [CONV, "batchnorm", "relu", {"pool": {"size": 2}}, {"fc": 3}]},
    # dropout masks and augmentation draw per image: every rank draws the whole batch's
    "dropout": {"layers": [CONV, "relu", {"pool": {"size": 2}}, {"dropout": 0.3}, {"fc": 3}]},
}
BATCH = 64
# 3 batches of 64, then one of a single image: with 2 ranks, one of them has none
TRAIN_SIZE, VAL_SIZE = 3 * BATCH + 1, 40


def spec(net: str) -> dict[str, Any]:
    return {"name": net, "input": "12x12x3", "loss": "softmax", **NETS[net]}


def datasets() -> tuple[D.Dataset, D.Dataset]:
    ds = D.synthetic_shapes(TRAIN_SIZE + VAL_SIZE, width=12, height=12, depth=3,
                            num_classes=3, seed=0)
    return D.split_validation(ds, VAL_SIZE / (TRAIN_SIZE + VAL_SIZE), seed=0)


def trainer(net_name: str, dtype: str, comm: Comm, epochs: int = 1,
            run_dir: Path | None = None) -> Trainer:
    config = TrainConfig(epochs=epochs, batch=BATCH, lr=0.05, dtype=dtype, seed=3,
                         augment=net_name == "dropout", sync_batchnorm=net_name == "syncbn")
    net = Network.from_spec(spec(net_name), seed=config.seed, dtype=dtype)
    train, val = datasets()
    return Trainer(net, train, val, config, spec_text_of(net.spec), run_dir, comm=comm)


def weights(t: Trainer) -> dict[str, np.ndarray]:
    return t.net.state_dict()


def steps(t: Trainer, n: int) -> Trainer:
    """Train `n` batches and leave the loop there (nothing saved)."""
    done = 0
    for event in t.run():
        done += isinstance(event, BatchDone)
        if done == n:
            break
    return t


def run(t: Trainer, stop_after: int | None = None) -> list[Any]:
    events = []
    for event in t.run():
        events.append(event)
        if isinstance(event, BatchDone) and len(events) == stop_after:
            t.request_stop()
    return events


def main() -> None:
    case, out = sys.argv[1], Path(sys.argv[2])
    comm = connect(requested=True)
    rank = comm.rank
    tag = f"rank{rank}"
    if case == "train":
        for net, dtype in (arg.split(":") for arg in sys.argv[3:]):
            few = steps(trainer(net, dtype, comm), 3)
            epoch = trainer(net, dtype, comm)
            events = run(epoch)
            np.savez(out / f"{net}-{dtype}-steps-{tag}.npz", **weights(few))
            np.savez(out / f"{net}-{dtype}-epoch-{tag}.npz", **weights(epoch),
                     metrics=np.array([[m["train_loss"], m["train_acc"], m["val_loss"],
                                        m["val_acc"]] for m in epoch.progress.history]),
                     images=np.array([e.images for e in events if isinstance(e, BatchDone)]))
    elif case == "resume":
        net = sys.argv[3]
        straight = trainer(net, "float64", comm, epochs=2, run_dir=out / "straight")
        run(straight)
        first = trainer(net, "float64", comm, epochs=2, run_dir=out / "stopped")
        stopped = run(first, stop_after=2)[-1]
        again = trainer(net, "float64", comm, epochs=2, run_dir=out / "stopped")
        again.load(comm.on_root(load_checkpoint, out / "stopped" / "last.npz"))
        run(again)
        np.savez(out / f"straight-{tag}.npz", **weights(straight))
        np.savez(out / f"resumed-{tag}.npz", **weights(again),
                 stopped_at=np.array([stopped.epoch, stopped.batch]))
    elif case == "slow":
        t = trainer("plain", "float64", comm, epochs=3, run_dir=out / "run")
        for event in t.run():
            if isinstance(event, BatchDone) and event.epoch >= 1:
                if event.batch == 1:
                    (out / f"{tag}.pid").write_text(str(os.getpid()))
                time.sleep(1.0)
    elif case == "finish":
        t = trainer("plain", "float64", comm, epochs=3, run_dir=out / "run")
        t.load(comm.on_root(load_checkpoint, out / "run" / "last.npz"))
        run(t)
        np.savez(out / f"finished-{tag}.npz", **weights(t))
    elif case in ("raise", "hang"):
        t = trainer("plain", "float32", comm, epochs=50)
        for event in t.run():
            if isinstance(event, BatchDone) and rank == 1:
                if case == "raise":
                    raise RuntimeError("a rank failing on purpose")
                os.kill(os.getpid(), signal.SIGSTOP)
    else:
        raise SystemExit(f"unknown case {case!r}")


if __name__ == "__main__":
    main()
