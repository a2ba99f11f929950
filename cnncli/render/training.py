"""A training run as the terminal shows it: a progress bar per epoch (loss, accuracy,
images/s, time left), one row per epoch, plain rows when the output is not a terminal."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape


class TrainDisplay:
    """Rich progress (per-batch bar with loss, accuracy, images/s, ETA) and one row per
    epoch; plain rows when stdout is not a terminal; only the final line with --quiet."""

    HEADER = (f"{'epoch':>7}  {'train loss':>10}  {'train acc':>9}  {'val loss':>9}  "
              f"{'val acc':>8}  {'lr':>9}  {'time':>7}  {'img/s':>7}")

    def __init__(self, out: Console, err: Console, quiet: bool, tty: bool):
        self.out, self.err = out, err
        self.quiet, self.tty = quiet, tty
        self.progress: Any = None
        self.task: Any = None
        self.epochs = 0
        self._loss = self._acc = 0.0
        self._images, self._seconds = 0, 0.0
        self._told_compile = False

    def line(self, text: str) -> None:
        if self.tty:
            self.out.print(escape(text), soft_wrap=True)
        else:
            print(text, flush=True)

    def note(self, text: str) -> None:
        self.err.print(escape(text), soft_wrap=True)

    def row(self, m: Any, epochs: int) -> str:
        val_loss = "-" if m.val_loss is None else f"{m.val_loss:.4f}"
        val_acc = "-" if m.val_acc is None else f"{100 * m.val_acc:.2f}%"
        mark = " *" if m.best else ""
        return (f"{m.epoch:>3}/{epochs:<3}  {m.train_loss:>10.4f}  {100 * m.train_acc:>8.2f}%  "
                f"{val_loss:>9}  {val_acc:>8}  {m.lr:>9.3g}  {m.seconds:>6.1f}s  "
                f"{m.images_per_s:>7.0f}{mark}")

    def show(self, trainer: Any, sigint: Any) -> Any:
        from cnncli.training.loop import BatchDone, EpochDone, Stopped

        self.epochs = trainer.config.epochs
        if not self.quiet:
            self.line(self.HEADER)
        stopped = None
        with sigint:
            try:
                for event in trainer.run():
                    if isinstance(event, BatchDone):
                        self._compiled(event)
                        self._batch(event)
                    elif isinstance(event, EpochDone):
                        self._close_bar()
                        if not self.quiet:
                            self.line(self.row(event.metrics, event.epochs))
                    elif isinstance(event, Stopped):
                        stopped = event
            finally:
                self._close_bar()
        assert stopped is not None
        return stopped

    def _compiled(self, e: Any) -> None:
        """Say once why a step was slow when it compiled kernels (a first run on a machine:
        they are cached on disk afterwards)."""
        if self._told_compile or self.quiet or e.compile_seconds < 1.0:
            return
        self._told_compile = True
        self._close_bar()
        self.note(f"step {e.batch + 1} of epoch {e.epoch + 1} took {e.seconds:.1f} s, "
                  f"{e.compile_seconds:.1f} s of it compiling the engine's kernels this net "
                  "uses (once per machine: numba caches them on disk); that epoch's time "
                  "and img/s include it")

    def _batch(self, e: Any) -> None:
        if self.quiet or not self.tty:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        if self.progress is None:
            self.progress = Progress(
                TextColumn(f"epoch {e.epoch + 1}/{self.epochs}"), BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.1%}  "
                           "{task.fields[ips]:.0f} img/s"), TimeRemainingColumn(),
                console=self.out, transient=True)
            self.progress.start()
            self.task = self.progress.add_task("", total=e.batches, completed=e.batch,
                                               loss=e.loss, acc=e.accuracy, ips=0.0)
            self._loss, self._acc = e.loss, e.accuracy
            self._images, self._seconds = 0, 0.0
        # loss and accuracy smoothed over the last ~10 batches; images/s over the epoch
        a = 0.1
        self._loss = (1 - a) * self._loss + a * e.loss
        self._acc = (1 - a) * self._acc + a * e.accuracy
        self._images += e.images
        self._seconds += e.seconds
        self.progress.update(self.task, completed=e.batch + 1, loss=self._loss, acc=self._acc,
                             ips=self._images / self._seconds if self._seconds > 0 else 0.0)

    def _close_bar(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
