"""Synchronous data-parallel training over MPI, the way Horovod and classic HPC codes do it.

    mpiexec -n 4 cnncli train cifar_small --batch 256 --distributed

Every rank builds the same net from the same seed and reads the same data. `--batch` is
the global minibatch, the one the optimizer sees: each rank computes a contiguous shard
of it, one `Allreduce` sums the gradients of all parameters (packed into one buffer,
reduced in place, no pickling), and every rank takes the same optimizer step. Each
rank's loss gradient is weighted by its share of the batch, so the sum is the gradient
of the global batch's mean loss: the same command on 1 or N ranks trains the same model
up to the order of float summation (docs/distributed.md).

What else must agree for that to hold, and how:

- random draws (augmentation, dropout masks) are made for the whole batch on every rank
  and each keeps its rows (`_BatchDraws`), so the generators stay in step with a single
  process and with each other;
- batchnorm normalises with each rank's own shard statistics by default (Horovod's
  default; a shard of 32 behaves like a batch of 32), or with the global batch's when
  asked (`sync_batchnorm`: one small Allreduce per layer forward and backward); the
  per-rank running statistics are averaged every step in the gradient buffer, so every
  rank holds the same ones at every moment;
- a stop (Ctrl-C, which mpiexec forwards to every rank) takes effect at the first batch
  boundary after all ranks have seen it: the flag travels in the per-step reduction.

Only rank 0 writes the run directory. Setup errors fail on every rank with the same
message (`together`, `on_root`); a rank that fails alone during training calls
MPI_Abort, which ends the job (`abort_on_error` and the uncaught-exception hook), and a
watchdog aborts a rank that has waited in a collective longer than CNNCLI_MPI_TIMEOUT
seconds (a peer that hangs without dying, which MPI cannot tell).

The single-process `Comm` has the same methods, each the identity, so the training loop
has one path. Nothing here imports numpy or mpi4py at module level: `check` and
`memory` use the sizing helpers at the bottom.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from cnncli.errors import InputError

if TYPE_CHECKING:
    import numpy as np

    from cnncli.analysis.memory import MemoryReport
    from cnncli.engine.network import Network
    from cnncli.training.data import Dataset

T = TypeVar("T")

INSTALL_HINT = "pip install 'cnncli[mpi]'"
# Seconds a rank may wait inside one collective before it concludes a peer is hung.
TIMEOUT_ENV = "CNNCLI_MPI_TIMEOUT"
DEFAULT_TIMEOUT = 600.0
# Seconds between saying why a job aborts and ending it, so the launcher forwards the line.
ABORT_GRACE = 1.0
# World sizes set by launchers in every process they start: Open MPI, MPICH's and Intel
# MPI's Hydra (also `srun --mpi=pmi2`), MVAPICH.
_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
# PMIx launchers (Open MPI 5's prterun, `srun --mpi=pmix`) set a rank but no size.
_RANK_ONLY_VARS = ("PMIX_RANK",)


class DistributedError(InputError):
    """A distributed run cannot start or go on (one line)."""


def launched_size() -> int | None:
    """The world size an MPI launcher gave this process, from its environment (None when
    not started by one; 0 when started by one that says only the rank)."""
    for var in _SIZE_VARS:
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    if any(var in os.environ for var in _RANK_ONLY_VARS):
        return 0
    return None


def _import_mpi() -> Any:
    """mpi4py's MPI module (importing it initialises MPI)."""
    import mpi4py

    mpi4py.rc.thread_level = "multiple"  # the watchdog thread may call MPI_Abort
    from mpi4py import MPI

    return MPI


def connect(requested: bool = False) -> Comm:
    """The communicator for this process: MPI's world when asked (`--distributed`) or when
    an MPI launcher started more than one rank, else the single-process `Comm`."""
    size = launched_size()
    if not requested and (size is None or size == 1):
        return Comm()
    try:
        MPI = _import_mpi()
    except ImportError as exc:
        why = ("--distributed:" if requested
               else f"started under MPI with {size or 'several'} ranks:")
        missing = "mpi4py is not installed" if exc.name == "mpi4py" else f"mpi4py fails ({exc})"
        raise DistributedError(f"{why} training over MPI needs mpi4py and an MPI library, but "
                               f"{missing}: {INSTALL_HINT}") from None
    except (RuntimeError, OSError) as exc:  # mpi4py is there, its MPI library is not
        raise DistributedError(f"mpi4py cannot start MPI ({exc}): {INSTALL_HINT} brings an "
                               "MPI library") from None
    comm = MpiComm(MPI, implied=not requested)
    if comm.size == 1 and not requested:
        return Comm()
    return comm


_joined = False  # this process has taken part in the start-up handshake (MpiComm)


def exiting(code: object) -> None:
    """The process is exiting with `code` (cnncli.cli.main calls this). A rank of an MPI
    job that fails before it connects (its spec missing on its host, say) would leave the
    others waiting for it in MPI's start-up forever; it joins the start-up handshake with
    its exit status instead, so they learn of it and stop too."""
    global _joined
    size = launched_size()
    if code in (0, None) or _joined or size is None or size == 1:
        return
    try:
        MPI = _import_mpi()
    except Exception:  # no MPI on this host: nothing can reach the others
        return
    _joined = True
    status = code if isinstance(code, int) else 1
    MPI.COMM_WORLD.allgather((status, MPI.Get_processor_name()))


@dataclass(frozen=True)
class Shard:
    """This rank's part of one global minibatch: images `start:stop` of `batch`.

    `images` is how many of them count: 0 on a rank left without any (a last batch
    smaller than the number of ranks), which then computes image 0 with weight 0 so that
    it still takes part in every collective. `share` = images / batch weights this rank's
    mean loss in the batch's mean loss.
    """

    start: int
    stop: int
    batch: int
    images: int
    share: float

    @property
    def local(self) -> slice:
        return slice(self.start, self.stop)

    def weigh(self, dscores: np.ndarray) -> np.ndarray:
        """d(batch mean loss)/d(scores) from d(this shard's mean loss)/d(scores)."""
        if self.share == 1.0:
            return dscores
        return dscores * dscores.dtype.type(self.share)


def shard_of(n: int, rank: int, size: int) -> Shard:
    """Rank `rank` of `size`: images [rank*n//size, (rank+1)*n//size) of a batch of `n`
    (contiguous; the sizes differ by at most one)."""
    start, stop = rank * n // size, (rank + 1) * n // size
    if stop == start:  # nothing left for this rank: image 0, weighted 0
        return Shard(0, 1, n, 0, 0.0)
    return Shard(start, stop, n, stop - start, (stop - start) / n)


# --------------------------------------------------------------------------- one process


class Comm:
    """A world of one process: every collective is the identity.

    `MpiComm` overrides each method for N ranks; the training loop calls them all the
    same way, so a single-process run computes exactly what it did without them.
    """

    rank = 0
    size = 1
    local_size = 1
    is_root = True

    def shard(self, n: int) -> Shard:
        """This rank's part of a global batch of `n` images."""
        return Shard(0, n, n, n, 1.0)

    def attach(self, net: Network, sync_batchnorm: bool = False) -> None:
        """Prepare `net` for data-parallel steps (gradient buffer, batchnorm, dropout)."""

    def batch_draws(self, rng: np.random.Generator) -> Any:
        """A generator whose draws for this rank's shard are the whole batch's draws."""
        return rng

    def reduce_step(self, net: Network, part: Shard, loss: float, correct: int,
                    stop: bool) -> tuple[float, int, int]:
        """Sum the gradients over ranks; (batch mean loss, correct, images) of the batch."""
        return loss, correct, part.images

    def should_stop(self, requested: bool) -> bool:
        """Whether to stop now; under MPI, only once every rank has heard of the request."""
        return requested

    def part_of(self, ds: Dataset) -> Dataset:
        """This rank's contiguous part of a dataset (validation is split across ranks)."""
        return ds

    def reduce_eval(self, result: Any) -> Any:
        """An evaluation over the whole set from each rank's result on its part."""
        return result

    def check_batch(self, batch: int) -> None:
        """Refuse a global batch that does not split evenly across the ranks."""

    def together(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on every rank; if it fails on any, it fails on all alike."""
        return fn(*args)

    def on_root(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on rank 0, its result (or its exception) on every rank."""
        return fn(*args)

    def threads(self) -> int | None:
        """Engine threads for this rank by default (None: the single-process default)."""
        return None

    def abort_on_error(self) -> Any:
        """Around the training loop: a rank failing alone ends the whole job."""
        return nullcontext()

    def summary(self, batch: int) -> str:
        """What the start-of-training line says about the ranks."""
        return ""

    def info(self) -> dict[str, Any]:
        """What a run's config and checkpoints record about the ranks."""
        return {}


# --------------------------------------------------------------------------- MPI


def _cores() -> set[int]:
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def nearest_batches(batch: int, ranks: int) -> tuple[int, int]:
    """The global batch sizes divisible by `ranks` just below (0: none) and above `batch`."""
    below = batch - batch % ranks
    return below, below + ranks


def per_rank_batch(batch: int, ranks: int) -> int:
    """The images each rank computes of a global `batch`; one line when it does not split."""
    if ranks < 1:
        raise DistributedError(f"ranks must be >= 1, got {ranks}")
    if batch % ranks:
        below, above = nearest_batches(batch, ranks)
        near = f"{below} or {above}" if below else f"{above}"
        raise DistributedError(
            f"batch size {batch} does not split evenly over {ranks} ranks (the batch is the "
            f"global minibatch, divided among them): use {near}")
    return batch // ranks


class _BatchDraws:
    """Stands in for a numpy Generator in the code that draws per image (augmentation,
    dropout masks): draws for the whole global batch, as a single process does, and
    returns this rank's rows, so the generator's state stays identical on every rank."""

    def __init__(self, rng: np.random.Generator, comm: MpiComm):
        self.rng, self.comm = rng, comm

    def _rows(self, full: np.ndarray, n: int) -> np.ndarray:
        start = self.comm.part.start
        return full[start:start + n]

    def random(self, size: int | tuple[int, ...], dtype: Any = None) -> np.ndarray:
        shape = (size,) if isinstance(size, int) else tuple(size)
        kwargs = {} if dtype is None else {"dtype": dtype}
        full = self.rng.random((self.comm.part.batch, *shape[1:]), **kwargs)
        return self._rows(full, shape[0])

    def integers(self, low: int, high: int, size: int | tuple[int, ...]) -> np.ndarray:
        shape = (size,) if isinstance(size, int) else tuple(size)
        full = self.rng.integers(low, high, size=(self.comm.part.batch, *shape[1:]))
        return self._rows(full, shape[0])


class MpiComm(Comm):
    """MPI's world: rank 0 writes, every rank computes its shard of each batch."""

    def __init__(self, MPI: Any, implied: bool = False):
        import numpy as np

        global _joined
        _joined = True
        self.MPI = MPI
        self.np = np
        self.world = MPI.COMM_WORLD
        self.rank, self.size = self.world.Get_rank(), self.world.Get_size()
        self.is_root = self.rank == 0
        self.implied = implied  # started under mpiexec without --distributed
        self.host = MPI.Get_processor_name()
        # The start-up handshake, the first collective of every rank: one that failed
        # before it joins through `exiting` with its exit status.
        for rank, (status, host) in enumerate(self.world.allgather((0, self.host))):
            if status:
                if not self.is_root:
                    raise SystemExit(2)  # rank 0 says why, once
                raise DistributedError(f"rank {rank} ({host}) stopped before training started "
                                       f"(exit status {status}); its error is above")
        node = self.world.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_size = node.Get_size()
        own = _cores()
        # ranks a launcher bound to their own cores (Open MPI does by default) use them
        # all; ranks that may all run anywhere on the machine (MPICH's default) share it
        peers = node.allgather(sorted(own))
        node.Free()
        seen: set[int] = set()
        self.bound = True
        for cores in peers:
            self.bound = self.bound and not (seen & set(cores))
            seen |= set(cores)
        self.cores = len(own)
        self.part = Shard(0, 1, 1, 1, 1.0)
        self._stop = False
        self._layout: list[tuple[Any, str, int, int]] = []
        self._averaged: list[tuple[np.ndarray, int, int]] = []
        self._buffer: np.ndarray | None = None
        self.timeout = _timeout()
        self._waiting: tuple[float, str] | None = None
        self._aborting = threading.Lock()
        sys.excepthook = self._excepthook
        if self.timeout > 0:
            threading.Thread(target=self._watchdog, name="cnncli-mpi-watchdog",
                             daemon=True).start()

    # ------------------------------------------------------------ failures
    def abort(self, message: str, code: int = 1) -> None:
        """Say why on stderr, then end every rank of the job (MPI_Abort)."""
        if self._aborting.acquire(blocking=False):
            stream = sys.__stderr__ or sys.stderr  # not a console that rank > 0 silenced
            stream.write(f"error: rank {self.rank} of {self.size} ({self.host}): {message}; "
                         f"aborting all {self.size} ranks\n")
            stream.flush()
            # mpiexec forwards each rank's output asynchronously and MPI_Abort tears the
            # job down at once: without a moment for the launcher to pass the line on,
            # the job could end with its reason unsaid (seen in CI-like runs)
            time.sleep(ABORT_GRACE)
            self.world.Abort(code)

    def _excepthook(self, kind: type[BaseException], value: BaseException, tb: Any) -> None:
        import traceback

        traceback.print_exception(kind, value, tb, file=sys.__stderr__)
        self.abort(f"uncaught {kind.__name__}: {value}", 1)

    @contextmanager
    def abort_on_error(self) -> Iterator[None]:
        try:
            yield
        except SystemExit as exc:
            if exc.code not in (0, None):
                self.abort(f"exited with status {exc.code}", exc.code
                           if isinstance(exc.code, int) else 1)
            raise
        except KeyboardInterrupt:
            self.abort("interrupted", 130)
            raise
        except Exception as exc:
            where = f"{exc.filename}: " if isinstance(exc, OSError) and exc.filename else ""
            text = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc))
            self.abort(f"{where}{text or type(exc).__name__}", 1)
            raise

    @contextmanager
    def _watch(self, what: str) -> Iterator[None]:
        """Mark a collective the watchdog times."""
        self._waiting = (time.monotonic(), what)
        try:
            yield
        finally:
            self._waiting = None

    def _watchdog(self) -> None:
        tick = min(5.0, self.timeout / 4)
        while True:
            time.sleep(tick)
            waiting = self._waiting
            if waiting is not None and time.monotonic() - waiting[0] > self.timeout:
                self.abort(f"waited more than {self.timeout:g} s in the {waiting[1]}: another "
                           "rank stopped answering (hung, stopped or unreachable; a rank that "
                           f"died is reported by mpiexec). {TIMEOUT_ENV} sets the wait", 1)

    # ------------------------------------------------------------ setup
    def together(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            result, error = fn(*args), None
        except Exception as exc:
            result, error = None, _picklable(exc)
        with self._watch("setup (every rank loading its data)"):
            outcomes = self.world.allgather((error, self.host))
        for rank, (failed, host) in enumerate(outcomes):
            if failed is not None:
                raise _from_rank(failed, rank, host)
        return result  # type: ignore[return-value]

    def on_root(self, fn: Callable[..., T], *args: Any) -> T:
        outcome: tuple[bool, Any] = (True, None)
        if self.is_root:
            try:
                outcome = (True, fn(*args))
            except Exception as exc:
                outcome = (False, _picklable(exc))
        with self._watch("setup (rank 0 reading the run directory)"):
            ok, value = self.world.bcast(outcome, root=0)
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def check_batch(self, batch: int) -> None:
        per_rank_batch(batch, self.size)

    def threads(self) -> int:
        from cnncli.config import rank_threads

        return rank_threads(self.cores, self.local_size, self.bound)

    def summary(self, batch: int) -> str:
        how = (" (started by an MPI launcher, so --distributed is implied)" if self.implied
               else "")
        ranks = f"{self.size} rank{'s' if self.size > 1 else ''}"
        return (f"; data-parallel over {ranks}{how}, {batch // self.size} images each per "
                f"batch of {batch}")

    def info(self) -> dict[str, Any]:
        return {"ranks": self.size}

    # ------------------------------------------------------------ the net
    def attach(self, net: Network, sync_batchnorm: bool = False) -> None:
        layout: list[tuple[Any, str, int, int]] = []
        averaged: list[tuple[Any, int, int]] = []
        offset = 0
        for layer in net.layers:
            for name, p in layer.params.items():
                layout.append((layer, name, offset, p.size))
                offset += p.size
        for layer in net.layers:
            if getattr(layer, "rng", None) is not None:  # dropout: draws for the whole batch
                layer.rng = _BatchDraws(layer.rng, self)  # type: ignore[attr-defined]
            if layer.batch_statistics:
                layer.__class__ = _bn_class(sync_batchnorm)
                layer.comm = self  # type: ignore[attr-defined]
                if not sync_batchnorm:
                    for buf in layer.buffers.values():
                        averaged.append((buf, offset, buf.size))
                        offset += buf.size
        self._layout, self._averaged = layout, averaged
        self._stop = False  # a new run (a trainer per run) starts without a stop request
        self._buffer = self.np.zeros(offset, dtype=net.dtype)

    def shard(self, n: int) -> Shard:
        self.part = shard_of(n, self.rank, self.size)
        return self.part

    def batch_draws(self, rng: np.random.Generator) -> Any:
        return _BatchDraws(rng, self)

    def reduce_step(self, net: Network, part: Shard, loss: float, correct: int,
                    stop: bool) -> tuple[float, int, int]:
        np, buf = self.np, self._buffer
        assert buf is not None, "attach(net) first"
        for layer, name, offset, size in self._layout:
            g = layer.grads.get(name)
            buf[offset:offset + size] = 0 if g is None else g.reshape(-1)
        for array, offset, size in self._averaged:
            buf[offset:offset + size] = array.reshape(-1)
        counted = part.images > 0
        stats = np.array([loss * part.images if counted else 0.0,
                          correct if counted else 0, part.images, float(stop)])
        with self._watch("gradient allreduce"):
            self.world.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
            self.world.Allreduce(self.MPI.IN_PLACE, stats, op=self.MPI.SUM)
        for layer, name, offset, size in self._layout:  # the gradients are views of buf
            layer.grads[name] = buf[offset:offset + size].reshape(layer.params[name].shape)
        for array, offset, size in self._averaged:
            array[...] = (buf[offset:offset + size] * buf.dtype.type(1 / self.size)
                          ).reshape(array.shape)
        self._stop = bool(stats[3])
        images = int(stats[2])
        return float(stats[0] / images), int(stats[1]), images

    def should_stop(self, requested: bool) -> bool:
        return self._stop

    def part_of(self, ds: Dataset) -> Dataset:
        np = self.np
        n = len(ds)
        start, stop = self.rank * n // self.size, (self.rank + 1) * n // self.size
        return ds.subset(np.arange(start, stop))

    def reduce_eval(self, result: Any) -> Any:
        np = self.np
        confusion = result.confusion
        buf = np.empty(1 + confusion.size)
        buf[0] = result.loss * result.images
        buf[1:] = confusion.reshape(-1)
        with self._watch("validation allreduce"):
            self.world.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        total = np.rint(buf[1:]).astype(np.int64).reshape(confusion.shape)
        images = int(total.sum())
        return replace(result, loss=float(buf[0]) / max(1, images),
                       accuracy=float(np.trace(total) / max(1, images)), confusion=total,
                       images=images)

    def allreduce(self, array: np.ndarray, what: str = "allreduce") -> np.ndarray:
        """Sum `array` over ranks in place (one collective) and return it."""
        with self._watch(what):
            self.world.Allreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM)
        return array


def _timeout() -> float:
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        raise DistributedError(f"{TIMEOUT_ENV} must be a number of seconds (0: wait forever), "
                               f"got {text!r}") from None
    return max(0.0, value)


def _picklable(exc: Exception) -> Exception:
    """The exception itself if it can travel to the other ranks, else its text."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return DistributedError(f"{type(exc).__name__}: {exc}")
    return exc


def _from_rank(exc: BaseException, rank: int, host: str) -> BaseException:
    """Rank 0's own errors as they are; another rank's with where it happened."""
    if rank == 0:
        return exc
    where = f"rank {rank} ({host})"
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    if isinstance(exc, OSError) and exc.filename:
        text = f"{exc.filename}: {text}"
    try:
        return type(exc)(f"on {where}: {text}")
    except Exception:  # an exception type that wants other arguments
        return DistributedError(f"on {where}: {type(exc).__name__}: {text}")


# --------------------------------------------------------------------------- batchnorm


def _batchnorm_classes() -> tuple[type, type]:
    from cnncli.layers.batchnorm import BatchNormEngine

    class RankBatchNorm(BatchNormEngine):
        """Per-rank statistics (Horovod's default); a rank computing a weight-0 stand-in
        image leaves its running statistics alone."""

        comm: MpiComm

        def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
            if not training or self.comm.part.images:
                return super().forward(x, training)
            kept = [b.copy() for b in self.buffers.values()]
            y = super().forward(x, training)
            for b, old in zip(self.buffers.values(), kept, strict=True):
                b[...] = old
            return y

    class SyncBatchNorm(BatchNormEngine):
        """Statistics of the global batch: per layer one Allreduce of the shard's count and
        sums in forward and of sum(dy), sum(dy * xhat) in backward, then the notes'
        batchnorm formulas with the global M. Equal to batchnorm over the whole batch in
        one process, up to summation order."""

        comm: MpiComm

        # Its forward and backward are its own, so a residual block adds and masks in its
        # own passes. (The memory plan counts the engine's batchnorm, which writes the sum:
        # while this one's output and the sum are both alive, one activation more is.)
        def adds_sum(self) -> bool:
            return False

        def masks_dy(self) -> bool:
            return False

        def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
            if not training:
                return super().forward(x, training)
            import numpy as np

            gamma = self.params[f"{self.name}.weight"]
            beta = self.params[f"{self.name}.bias"]
            rm = self.buffers[f"{self.name}.running_mean"]
            c, dt = x.shape[-1], x.dtype
            x2 = x.reshape(-1, c)
            # sums shifted by the running mean (the same on every rank): little cancellation
            shift = rm.astype(np.float64)
            sums = np.zeros(1 + 2 * c)
            if self.comm.part.images:
                d = x2.astype(np.float64) - shift
                sums[0] = x2.shape[0]
                sums[1:1 + c] = d.sum(axis=0)
                sums[1 + c:] = np.einsum("ij,ij->j", d, d)
            self.comm.allreduce(sums, f"synchronised batchnorm of {self.name} (forward)")
            m = sums[0]
            centre = sums[1:1 + c] / m
            mean = shift + centre
            var = np.maximum(sums[1 + c:] / m - centre * centre, 0.0)
            inv_std = 1.0 / np.sqrt(var + float(self.eps))
            y = (x2 - mean.astype(dt)) * (gamma * inv_std).astype(dt) + beta.astype(dt)
            self.update_running(mean, var, m)
            self._saved = (x, mean, inv_std)
            return y.reshape(x.shape)

        def backward(self, dy: np.ndarray) -> np.ndarray:
            import numpy as np

            assert self._saved is not None, f"{self.name}: backward without a training forward"
            x, mean, inv_std = self._saved
            self._saved = None
            gamma = self.params[f"{self.name}.weight"]
            c, dt = dy.shape[-1], dy.dtype
            dy2, x2 = dy.reshape(-1, c), x.reshape(-1, c)
            sums = np.zeros(1 + 2 * c)
            if self.comm.part.images:
                xhat = (x2.astype(np.float64) - mean) * inv_std
                sums[0] = x2.shape[0]
                sums[1:1 + c] = dy2.sum(axis=0, dtype=np.float64)
                sums[1 + c:] = np.einsum("ij,ij->j", dy2.astype(np.float64), xhat)
            local = sums.copy()
            self.comm.allreduce(sums, f"synchronised batchnorm of {self.name} (backward)")
            m, dbeta, dgamma = sums[0], sums[1:1 + c], sums[1 + c:]
            # this shard's parts; the gradient Allreduce adds up the others'
            self.grads[f"{self.name}.weight"] = local[1 + c:].astype(gamma.dtype)
            self.grads[f"{self.name}.bias"] = local[1:1 + c].astype(gamma.dtype)
            if not self.comm.part.images:
                return np.zeros_like(dy)
            a = gamma.astype(np.float64) * inv_std
            q = -a * inv_std * dgamma / m
            r = -a * dbeta / m
            dx = (a.astype(dt) * dy2 + q.astype(dt) * (x2 - mean.astype(dt)) + r.astype(dt))
            return dx.reshape(dy.shape)

    return RankBatchNorm, SyncBatchNorm


_classes: tuple[type, type] | None = None


def _bn_class(sync: bool) -> type:
    """The batchnorm subclass a distributed run swaps in (built once, on first use: it
    derives from the engine's layer, which only training imports)."""
    global _classes
    if _classes is None:
        _classes = _batchnorm_classes()
    return _classes[1 if sync else 0]


# --------------------------------------------------------------------------- sizing


GBIT = 1e9 / 8  # bytes per second in one Gbit/s


@dataclass(frozen=True)
class AllreducePlan:
    """What one step's gradient Allreduce moves, for `check --ranks` and `memory --ranks`."""

    ranks: int
    parameters: int
    bytes_per_number: int

    @property
    def buffer_bytes(self) -> int:
        """The fused gradient buffer every rank holds (and MPI reduces in place)."""
        return self.parameters * self.bytes_per_number

    @property
    def ring_bytes(self) -> float:
        """Bytes each rank sends (and receives) in a ring allreduce: 2(N-1)/N x buffer
        (a reduce-scatter then an allgather, each moving (N-1)/N of it)."""
        return 2 * (self.ranks - 1) / self.ranks * self.buffer_bytes

    def seconds_at(self, gbit_per_s: float) -> float:
        """The bandwidth term alone on a link of that speed (no latency, no overlap)."""
        return self.ring_bytes / (gbit_per_s * GBIT)

    def as_dict(self) -> dict[str, Any]:
        return {"ranks": self.ranks, "parameters": self.parameters,
                "bytes_per_number": self.bytes_per_number,
                "allreduce_buffer_bytes": self.buffer_bytes,
                "ring_bytes_per_rank_per_step": self.ring_bytes,
                "seconds_per_step_at_10_gbit": self.seconds_at(10),
                "seconds_per_step_at_100_gbit": self.seconds_at(100)}

    def text(self, size: Callable[[float], str]) -> str:
        """One line for `check --ranks` and `memory --ranks`."""
        if self.ranks == 1:
            return (f"1 rank: no allreduce (the {self.parameters:,} gradients, "
                    f"{size(self.buffer_bytes)}, stay where they are)")
        return (f"data-parallel over {self.ranks} ranks: each step allreduces every "
                f"parameter's gradient, one buffer of {self.parameters:,} numbers = "
                f"{size(self.buffer_bytes)} per rank; a ring allreduce sends 2(N-1)/N x that = "
                f"{size(self.ring_bytes)} per rank per step: at least "
                f"{1e3 * self.seconds_at(10):.1f} ms on 10 Gbit/s, "
                f"{1e3 * self.seconds_at(100):.1f} ms on 100 Gbit/s")


def size_rank(report: MemoryReport, ranks: int, global_batch: int) -> dict[str, Any]:
    """`cnncli memory --ranks N`: add to one rank's step (estimated at its share of the
    global batch) the fused gradient buffer it allreduces; return the plan as data.

    The buffer holds every parameter's gradient (and, with per-rank batchnorm, the
    running statistics averaged with them): the report's `param` numbers. It lives for
    the whole run, and after the first step the gradients are views of it, so a rank holds
    at most one buffer more than a single process (at the end of backward, when the new
    gradients and the buffer both exist): that is what the peak adds. MPI's own scratch
    inside the call is not counted (measured: half the buffer with 2 ranks, MPICH 5.0 and
    Open MPI 5.0).
    """
    from cnncli.analysis.memory import Item

    numbers = report.item("param").numbers
    plan = AllreducePlan(ranks, numbers, report.bytes_per_number)
    report.items.append(Item("allreduce", "allreduce buffer (all gradients, fused; per rank)",
                             numbers, 0, plan.buffer_bytes))
    report.total += plan.buffer_bytes
    report.peak += plan.buffer_bytes
    report.peak_parts["allreduce"] = plan.buffer_bytes
    return {"global_batch": global_batch, "batch_per_rank": report.batch, **plan.as_dict()}


def rank_text(sized: dict[str, Any]) -> str:
    """The line `memory --ranks` prints above one rank's table."""
    from cnncli.render.units import binary_bytes

    plan = AllreducePlan(sized["ranks"], sized["parameters"], sized["bytes_per_number"])
    return (f"one rank of {plan.ranks}: batch {sized['batch_per_rank']} of the global "
            f"{sized['global_batch']}; " + plan.text(binary_bytes))
