"""`cnncli train`, `cnncli eval` and `cnncli export`: thin commands over `cnncli.training.loop`.

Every problem is one line on stderr (cnncli.cli.boundary): exit 2 for bad input (options,
data, spec, checkpoint), 1 for a run that failed (the loss diverged), 130 after Ctrl-C
(the run is saved first: `--resume` continues it).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.markup import escape

from cnncli.cli.options import (
    CONV_ALGO_HELP,
    ConvAlgoChoice,
    SpecArg,
    TableOrJson,
    TableOrJsonOpt,
    ThreadsOpt,
    open_spec,
    seed_callback,
    threads_callback,
)
from cnncli.cli.output import err, out, print_json, warn
from cnncli.engine.kernels.conv_algo import DEFAULT_CONV_ALGO
from cnncli.errors import InputError, RunInvalid
from cnncli.render.training import TrainDisplay
from cnncli.training.settings import CONV_ALGO_BEFORE, DEFAULTS, EVAL_BATCH, EVAL_SIZE

if TYPE_CHECKING:
    from rich.console import Console

    from cnncli.render.tables import Laid
    from cnncli.training.distributed import Comm
    from cnncli.training.loop import RunDir


def _default(name: str) -> str:
    """--help's note of a default, read from DEFAULTS. The options themselves default to
    None, so that --resume can tell an option given from one left out."""
    value = getattr(DEFAULTS, name)
    return f"\\[default: {value:g}]" if isinstance(value, float) else f"\\[default: {value}]"


def _run_directory(value: Path | None) -> Path | None:
    if value is not None and value.exists() and not value.is_dir():
        raise InputError(f"--out {value}: is a file; --out names a run directory (a folder "
                         "for spec.yaml, checkpoints and metrics)")
    return value


# --------------------------------------------------------------------------- train


def train(
    spec: SpecArg,
    data: Annotated[Optional[str], typer.Option(
        "--data", help="Training data: a file or folder (MNIST, CIFAR, .npz; see "
        "docs/data-formats.md). Default: the built-in synthetic shapes, sized to the spec.",
        show_default=False)] = None,
    val_data: Annotated[Optional[str], typer.Option(
        "--val-data", help="A separate validation/test set (a folder's test split).",
        show_default=False)] = None,
    pad_data: Annotated[Optional[bool], typer.Option(
        "--pad-data", help="Zero-pad smaller images centrally to the spec's input (as "
        "LeNet-5 took MNIST's 28x28 digits at 32x32).", show_default=False)] = None,
    val_fraction: Annotated[Optional[float], typer.Option(
        "--val-fraction", help="Part of the data held out for validation (0 for none). "
        + _default("val_fraction"), show_default=False)] = None,
    train_size: Annotated[Optional[int], typer.Option(
        "--train-size", help="Training images of the built-in dataset (plus a validation "
        "part of --val-fraction of this). " + _default("train_size"), show_default=False)]
    = None,
    epochs: Annotated[Optional[int], typer.Option(
        "--epochs", help="Epochs to train (with --resume: the new total). "
        + _default("epochs"), show_default=False)] = None,
    batch: Annotated[Optional[int], typer.Option(
        "--batch", help="Minibatch size. " + _default("batch"), show_default=False)] = None,
    lr: Annotated[Optional[float], typer.Option(
        "--lr", help="Learning rate. " + _default("lr"), show_default=False)] = None,
    optimizer: Annotated[Optional[str], typer.Option(
        "--optimizer", help="sgd | momentum | nesterov | adagrad | rmsprop | adam. "
        + _default("optimizer"), show_default=False)] = None,
    momentum: Annotated[Optional[float], typer.Option(
        "--momentum", help="Momentum (momentum, nesterov). " + _default("momentum"),
        show_default=False)] = None,
    weight_decay: Annotated[Optional[float], typer.Option(
        "--weight-decay", help="L2 regularisation strength on weights. "
        + _default("weight_decay"), show_default=False)] = None,
    schedule: Annotated[Optional[str], typer.Option(
        "--schedule", help="Learning-rate schedule: constant | step (x0.5 every 5 epochs) | "
        "exp (x0.9 per epoch) | cosine (towards 0). " + _default("schedule"),
        show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option(
        "--seed", callback=seed_callback, help="Seeds initial weights, shuffling, "
        "augmentation and dropout (>= 0). " + _default("seed"), show_default=False)] = None,
    threads: Annotated[Optional[int], typer.Option(
        "--threads", callback=threads_callback, show_default=False,
        help="Threads for the engine, at least 1 (per rank when distributed). \\[default: "
        "all cores; distributed: the rank's share of its machine's cores]")] = None,
    augment: Annotated[Optional[bool], typer.Option(
        "--augment/--no-augment", help="Random crops (padding an eighth of the side) and "
        "horizontal flips. \\[default: " + ("augment]" if DEFAULTS.augment else "no-augment]"),
        show_default=False)] = None,
    out_dir: Annotated[Optional[Path], typer.Option(
        "--out", callback=_run_directory, help="Run directory (spec, config, metrics, "
        "last.npz, best.npz). \\[default: runs/SPEC-NAME]", show_default=False)] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the run in --out from its last.npz.")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Start over in a run directory that already holds a run.")]
    = False,
    dtype: Annotated[Optional[str], typer.Option(
        "--dtype", help="float32 | float64. " + _default("dtype"), show_default=False)] = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="Only the final line.")] = False,
    distributed: Annotated[bool, typer.Option(
        "--distributed", help="Data-parallel over the ranks of `mpiexec -n N` (implied when "
        "started by mpiexec with N > 1); --batch stays the global batch. See "
        "docs/distributed.md.")] = False,
    sync_batchnorm: Annotated[Optional[bool], typer.Option(
        "--sync-batchnorm", help="Distributed: batchnorm statistics of the global batch "
        "instead of each rank's shard. \\[default: "
        + ("global batch]" if DEFAULTS.sync_batchnorm else "per rank]"), show_default=False)]
    = None,
    conv_algo: Annotated[Optional[ConvAlgoChoice], typer.Option(
        "--conv-algo", help=f"{CONV_ALGO_HELP} Saved with the run: --resume keeps it. "
        f"\\[default: {DEFAULT_CONV_ALGO}]", show_default=False)] = None,
) -> None:
    """Train a spec on a dataset; Ctrl-C stops after saving, --resume continues."""
    given = {k: v for k, v in dict(
        data=data, val_data=val_data, val_fraction=val_fraction, train_size=train_size,
        epochs=epochs, batch=batch, lr=lr, optimizer=optimizer, momentum=momentum,
        weight_decay=weight_decay, schedule=schedule, seed=seed, augment=augment,
        dtype=dtype, threads=threads, pad_data=pad_data, sync_batchnorm=sync_batchnorm,
        conv_algo=conv_algo.value if conv_algo else None).items() if v is not None}
    _train(spec, open_spec(spec), given, out_dir, resume, overwrite, quiet, distributed)


def _train(spec_arg: str, net_spec: Any, given: dict[str, Any], out_dir: Path | None,
           resume: bool, overwrite: bool, quiet: bool, distributed: bool = False) -> None:
    from cnncli.training.distributed import connect
    from cnncli.training.loop import RunDir, spec_text_of

    # distributed: rank 0 reads the run directory and speaks; errors fail every rank alike
    comm = connect(distributed)
    out.quiet = err.quiet = not comm.is_root
    quiet = quiet or not comm.is_root
    spec_text = spec_text_of(net_spec)
    run = RunDir(out_dir or Path("runs") / Path(net_spec.source).stem)
    comm.on_root(run.lock)  # one run per folder, from before it reads the folder
    try:
        _train_in(spec_arg, net_spec, spec_text, run, comm, given, resume, overwrite, quiet)
    finally:
        if comm.is_root:
            run.unlock()


def _train_in(spec_arg: str, net_spec: Any, spec_text: str, run: RunDir, comm: Comm,
              given: dict[str, Any], resume: bool, overwrite: bool, quiet: bool) -> None:
    from cnncli.config import configure_threads
    from cnncli.engine.checkpoint import check_spec, load_checkpoint
    from cnncli.engine.network import Network
    from cnncli.training.loop import TrainConfig, Trainer, load_training_data
    from cnncli.training.settings import new_run_options, resumed_options

    ckpt = None
    if resume:
        ckpt = comm.on_root(load_checkpoint, run.last)
        check_spec(ckpt, spec_text, run.last, spec_arg)
        options = resumed_options(ckpt.meta["info"], given, comm.size)
        if ckpt.epoch >= options["epochs"]:
            comm.on_root(run.recover, ckpt.meta["history"])
            out.print(f"nothing to do: {run.path} has finished {ckpt.epoch} epochs "
                      f"(pass --epochs N with N > {ckpt.epoch} to train longer)")
            return
    else:
        options = new_run_options(given, run.path, comm.on_root(run.last.exists), overwrite)
    config = TrainConfig.from_dict(options)
    config.validate()
    threads = configure_threads(comm.threads() if options.get("threads") is None
                                else options["threads"])
    net = Network(net_spec, dtype=config.dtype, seed=config.seed,
                  conv_algo=options["conv_algo"])
    train_ds, val_ds = comm.together(
        partial(load_training_data, pad=options.get("pad_data", False), warn=warn), net,
        options["data"], options["val_data"], options["val_fraction"], options["train_size"])
    info = {"options": {k: v for k, v in options.items() if k != "threads"},
            "threads": threads, **comm.info(), "data": train_ds.source,
            "val_data": val_ds.source if val_ds else None}
    trainer = Trainer(net, train_ds, val_ds, config, spec_text, run.path, info, comm)
    if ckpt is not None:
        trainer.load(ckpt)
    elif overwrite:
        comm.on_root(run.forget)
    display = TrainDisplay(out, err, quiet, sys.stdout.isatty())
    if not quiet:
        verb = f"resuming at epoch {ckpt.epoch + 1}:" if ckpt else "training"
        source = (f"the built-in synthetic shapes ({net.input})" if options["data"] is None
                  else options["data"])
        display.line(
            f"{verb} {net_spec.name} ({net.num_parameters():,} parameters) on {source}: "
            f"{len(train_ds)} training / {len(val_ds) if val_ds else 0} validation images,"
            f" {net.output.d} classes; {config.optimizer} lr {config.lr:g}, batch "
            f"{config.batch}, {config.epochs} epochs, {threads} thread(s)"
            f"{comm.summary(config.batch)}; run in {run.path}")
    if comm.size == 1:
        # a first run on this machine: the net's kernels compile side by side before the
        # first step (ranks of a distributed run compile as they go, each what it calls)
        from cnncli.cli.engine import compile_first

        compile_first(net_spec, str(net.dtype), net.conv_algo, quiet=quiet)
    with comm.abort_on_error():  # distributed: a rank failing alone takes the job down
        stopped = display.show(trainer, _sigint_stops(trainer, display))
    if stopped.reason == "diverged":
        raise RunInvalid(stopped.message)
    if stopped.reason == "interrupted":
        err.print(escape(f"{stopped.message}; continue with: "
                         f"{resume_command(spec_arg, run.path, comm.size)}"), soft_wrap=True)
        raise typer.Exit(130)
    out.print(escape(f"{stopped.message}; run saved in {run.path}"), soft_wrap=True)
    # the curves at a glance in a terminal; logs and pipes stay as they were
    if not quiet and sys.stdout.isatty():
        from cnncli.cli.pictures import print_compact_curves
        print_compact_curves(run.path)


def resume_command(spec_arg: str, run_path: Path, ranks: int) -> str:
    """The command that continues an interrupted run, launched as it was: under MPI on as
    many ranks (a resume on another count works too, with the default thread share)."""
    again = f"cnncli train {spec_arg} --out {run_path} --resume"
    return f"mpiexec -n {ranks} {again} --distributed" if ranks > 1 else again


@contextmanager
def _sigint_stops(trainer: Any, display: TrainDisplay) -> Iterator[None]:
    """First Ctrl-C: stop at the next batch boundary after saving. Second: abort now."""

    def handler(signum: int, frame: Any) -> None:
        trainer.request_stop()
        display.note("stopping after this batch and saving (Ctrl-C again to abort)")
        signal.signal(signal.SIGINT, signal.default_int_handler)

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: no signal handling
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# --------------------------------------------------------------------------- eval, export


def evaluate(
    spec: SpecArg,
    weights: Annotated[Path, typer.Option(
        "--weights", help="A checkpoint written by `cnncli train` (e.g. runs/NAME/best.npz).",
        show_default=False)],
    data: Annotated[Optional[str], typer.Option(
        "--data", help=f"Test data (a folder's test split). Default: {EVAL_SIZE} built-in "
        "synthetic images not used in training.", show_default=False)] = None,
    pad_data: Annotated[bool, typer.Option(
        "--pad-data", help="Zero-pad smaller images centrally to the spec's input.")] = False,
    fmt: TableOrJsonOpt = TableOrJson.table,
    batch: Annotated[int, typer.Option("--batch", help="Images per forward pass.",
                                       min=1)] = EVAL_BATCH,
    threads: ThreadsOpt = None,
    conv_algo: Annotated[Optional[ConvAlgoChoice], typer.Option(
        "--conv-algo", help=f"{CONV_ALGO_HELP} \\[default: the run's own]",
        show_default=False)] = None,
) -> None:
    """Loss, accuracy, per-class accuracy and the confusion matrix of a checkpoint."""
    result = _evaluate(spec, open_spec(spec), weights, data, batch, threads, pad_data,
                       conv_algo.value if conv_algo else None)
    if fmt is TableOrJson.json:
        print_json(result)
    else:
        print_eval(out, result)


def _evaluate(spec_arg: str, net_spec: Any, weights: Path, data: str | None, batch: int,
              threads: int | None, pad_data: bool,
              conv_algo: str | None = None) -> dict[str, Any]:
    from cnncli.config import configure_threads
    from cnncli.engine.checkpoint import load_checkpoint
    from cnncli.engine.network import Network
    from cnncli.training.loop import (
        builtin_dataset,
        evaluate,
        load_test_data,
        num_classes_of,
        spec_text_of,
    )

    ckpt = load_checkpoint(weights, spec_text_of(net_spec), spec_arg)
    configure_threads(threads)
    if conv_algo is None:  # what the run trained with (GEMM before --conv-algo existed)
        options = (ckpt.meta.get("info") or {}).get("options") or {}
        conv_algo = options.get("conv_algo", CONV_ALGO_BEFORE)
    net = Network(net_spec, dtype=ckpt.meta.get("dtype", "float32"), conv_algo=conv_algo)
    net.load_state_dict(ckpt.weights)
    from cnncli.cli.engine import compile_first

    compile_first(net_spec, str(net.dtype), conv_algo, training=False)
    k = num_classes_of(net)
    if data is None:
        ds = builtin_dataset(net, EVAL_SIZE, seed=1)
    else:
        ds = load_test_data(net, data, pad_data, warn=warn)
    result = evaluate(net, ds, ckpt.mean, ckpt.std, batch)
    assert result is not None
    names = ds.class_names or ckpt.meta.get("classes") or [str(i) for i in range(k)]
    names = (list(names) + [str(i) for i in range(len(names), k)])[:k]
    return {"spec": net_spec.name, "weights": str(weights), "data": ds.source,
            "images": result.images, "loss": result.loss, "accuracy": result.accuracy,
            "classes": names, "per_class_accuracy": result.per_class_accuracy,
            "per_class_images": result.confusion.sum(axis=1).tolist(),
            "confusion": result.confusion.tolist()}


def eval_layouts(r: dict[str, Any], width: int) -> dict[str, Laid]:
    """The per-class table and, up to 20 classes, the confusion matrix, laid out to `width`
    (a matrix too wide becomes one record per true class, never a cut count)."""
    from cnncli.render.tables import Column, TableRow, lay_out

    per_class: list[TableRow] = [
        ([name, str(n), "-" if acc is None else f"{100 * acc:.2f}%"], None)
        for name, n, acc in zip(r["classes"], r["per_class_images"], r["per_class_accuracy"],
                                strict=True)]
    layouts = {"per_class": lay_out("", (
        Column("class", "class"), Column("images", "images", right=True),
        Column("accuracy", "accuracy", right=True)), "bold", per_class, width, ("images",))}
    confusion = r["confusion"]
    if len(confusion) <= 20:
        columns = (Column("true", "true \\ predicted"),
                   *(Column(str(i), str(i), right=True) for i in range(len(confusion))))
        matrix: list[TableRow] = []
        for i, (name, row) in enumerate(zip(r["classes"], confusion, strict=True)):
            # the diagonal (right) in bold; a zero as a dim dot, so the errors stand out
            cells = [str(v) if v or j == i else "." for j, v in enumerate(row)]
            styles = ["bold" if j == i else None if v else "dim" for j, v in enumerate(row)]
            matrix.append(([f"{i} {name}", *cells], (None, *styles)))
        layouts["confusion"] = lay_out("", columns, "bold", matrix, width)
    return layouts


def print_eval(console: Console, r: dict[str, Any]) -> None:
    from cnncli.render.tables import print_laid

    console.print(escape(f"{r['spec']} ({r['weights']}) on {r['data']}"), soft_wrap=True)
    console.print(f"loss {r['loss']:.4f}   accuracy {100 * r['accuracy']:.2f}% "
                  f"({round(r['accuracy'] * r['images'])}/{r['images']})")
    layouts = eval_layouts(r, console.width)
    console.print()
    print_laid(console, layouts["per_class"])
    if "confusion" not in layouts:
        console.print(f"\n(confusion matrix of {len(r['confusion'])} classes: see --format json)")
        return
    console.print("\nconfusion matrix (rows: true class, columns: predicted class)")
    print_laid(console, layouts["confusion"])


def export(
    checkpoint: Annotated[Path, typer.Argument(
        metavar="CHECKPOINT", help="A checkpoint written by `cnncli train`.")],
    output: Annotated[Path, typer.Argument(
        metavar="OUTPUT", help="The .npz to write: weights only, PyTorch names and layouts.")],
    force: Annotated[bool, typer.Option(
        "--force", help="Overwrite OUTPUT even if it is a training checkpoint (never the "
                        "checkpoint being exported).")] = False,
) -> None:
    """Export a checkpoint's weights as .npz for NumPy / PyTorch (`load_state_dict`)."""
    from cnncli.engine.checkpoint import check_export_target, export_npz, load_checkpoint

    check_export_target(output, checkpoint, force)  # before the load: refuse at once
    ckpt = load_checkpoint(checkpoint)
    export_npz(ckpt, output, source=checkpoint, force=force)
    out.print(escape(f"wrote {output}: {len(ckpt.weights)} arrays of {ckpt.meta.get('spec_name')}"
                     f" (epoch {ckpt.epoch}); in PyTorch: module.load_state_dict("
                     "{k: torch.from_numpy(v) for k, v in np.load(path).items()})"),
              soft_wrap=True)


