"""`cnncli draw`, `plot`, `filters` and `activations`: pictures of a net, a run and its
weights (cnncli.render.pictures). `draw` is pure Python like `check`; the others import numpy,
matplotlib or Pillow inside the command. Errors go to the boundary (cnncli.cli.boundary)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.text import Text

from cnncli.cli.options import InputOpt, RoundingOpt, SpecArg, input_override, open_spec
from cnncli.cli.output import err, out, write
from cnncli.errors import InputError
from cnncli.spec import catalog

COLOURS = ("cyan", "yellow")  # training, validation in the terminal charts


def _written(path: Path, what: str) -> None:
    out.print(Text(f"wrote {path}: {what}"))


def _suffix(output: Path, allowed: tuple[str, ...], what: str) -> None:
    if output.suffix.lower() not in allowed:
        raise InputError(f"{output}: {what} written as {', '.join(allowed)} "
                         "(by the file's suffix)")


def print_compact_curves(run_dir: Path) -> None:
    """The sparklines of a run's metrics (after `cnncli train` in a terminal); silent when
    the run has no metrics to show."""
    from cnncli.render.pictures import PictureError
    from cnncli.render.pictures.curves import read_metrics, sparklines

    try:
        epochs = read_metrics(run_dir)
    except PictureError:
        return
    for line in sparklines(epochs):
        out.print(Text(line))


def _print_charts(epochs: Any, width: int) -> None:
    from cnncli.render.pictures.curves import terminal_charts

    tty = sys.stdout.isatty()
    for text, runs in terminal_charts(epochs, width):
        if not tty:
            write(text + "\n")
            continue
        line = Text()
        for chunk, who in runs:
            line.append(chunk, style=COLOURS[who] if who in (0, 1) else None)
        out.print(line)


def draw(
    spec: SpecArg,
    output: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="The .svg to write (default: the SVG on stdout).",
        show_default=False)] = None,
    input: InputOpt = None,
    rounding: RoundingOpt = None,
    vertical: Annotated[bool, typer.Option(
        "--vertical", help="Flow from top to bottom (for tall nets) instead of left to "
                           "right.")] = False,
) -> None:
    """Draw the architecture as the notes do: volumes as boxes, layers between them.

    An invalid spec is drawn up to its failing layer, which carries the error; the
    file is written and the command exits 1."""
    from cnncli.files import write_text
    from cnncli.render.pictures.netdraw import draw as draw_net
    from cnncli.render.tables import problem_text

    if output is not None:
        _suffix(output, (".svg",), "the drawing is")
    drawing = draw_net(catalog.resolve(spec), input_override(input),
                       rounding.value if rounding else None, vertical)
    if output is None:
        write(drawing.svg)
    else:
        write_text(output, drawing.svg)
        state = "valid" if drawing.valid else "drawn up to its failing layer"
        _written(output, f"{drawing.boxes} volumes, {state}")
    for p in drawing.problems:
        err.print(problem_text(p, "error"))
    if not drawing.valid:
        n = len(drawing.problems)
        err.print(Text(f"{n} error{'s' if n > 1 else ''}: {spec} is not a valid net"))
        raise typer.Exit(1)


def plot(
    run: Annotated[Path, typer.Argument(
        help="A run directory of `cnncli train` (or its metrics.csv).", metavar="RUN_DIR",
        show_default=False)],
    output: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Write the curves to a .png, .svg or .pdf (needs "
                            "matplotlib); default: charts in the terminal.",
        show_default=False)] = None,
    width: Annotated[int, typer.Option(
        help="Terminal chart width in characters.", min=16, max=400)] = 60,
) -> None:
    """Loss and accuracy per epoch (training against validation) and the learning rate,
    over the run's whole history, resumes included."""
    from cnncli.files import save_atomically
    from cnncli.render.pictures import PictureError
    from cnncli.render.pictures.curves import SUFFIXES, read_metrics, run_title, write_plot

    epochs = read_metrics(run)
    if output is None:
        _print_charts(epochs, width)
        return
    _suffix(output, tuple(SUFFIXES), "curves are")
    title = run_title(run, epochs)
    try:
        save_atomically(output, lambda tmp: write_plot(epochs, tmp, title))
    except PictureError:
        _print_charts(epochs, width)  # the fallback: the curves, in the terminal
        raise
    _written(output, f"loss, accuracy and learning rate over {len(epochs)} epochs")


def filters(
    checkpoint: Annotated[Path, typer.Argument(
        help="A checkpoint of `cnncli train` (or an exported weights .npz).",
        metavar="CHECKPOINT", show_default=False)],
    output: Annotated[Path, typer.Option(
        "--out", "-o", help="The .png to write.", show_default=False)],
    layer: Annotated[Optional[str], typer.Option(
        "--layer", help="A conv layer's name (default: the first conv layer, in "
                        "colour); a deeper layer is drawn per input channel in grey.",
        show_default=False)] = None,
) -> None:
    """The learned filters as a grid of small tiles, like Krizhevsky's first layer."""
    from cnncli.files import save_atomically
    from cnncli.render.pictures.tiles import filters_picture
    from cnncli.sliding.slide import load_weights

    _suffix(output, (".png",), "tiles are")
    weights = load_weights(checkpoint)
    picture, caption = filters_picture(weights.state, weights.meta, layer)
    save_atomically(output, lambda tmp: picture.save(tmp, optimize=True))
    _written(output, f"{caption} ({picture.width}x{picture.height} px)")


def activations(
    spec: SpecArg,
    image: Annotated[Path, typer.Argument(
        help="An image at the net's input size: .png/.jpg (Pillow) or .npy (HxWxC).",
        metavar="IMAGE", show_default=False)],
    weights: Annotated[Path, typer.Option(
        "--weights", help="A checkpoint of `cnncli train` on this spec (or an exported "
                          "weights .npz).", show_default=False)],
    output: Annotated[Path, typer.Option(
        "--out", "-o", help="The .png to write.", show_default=False)],
) -> None:
    """One image's activation maps through the net: each volume's depth slices tiled."""
    from cnncli.files import save_atomically

    _suffix(output, (".png",), "tiles are")
    net_spec = open_spec(spec)
    from cnncli.engine.checkpoint import check_spec
    from cnncli.engine.network import Network
    from cnncli.render.pictures.tiles import activations_picture
    from cnncli.sliding.slide import load_image, load_weights
    from cnncli.training.loop import spec_text_of

    w = load_weights(weights)
    if "spec_sha256" in w.meta:
        check_spec(w, spec_text_of(net_spec), weights, spec)  # type: ignore[arg-type]
    pixels = load_image(image)
    net = Network(net_spec)  # an invalid spec raises SpecInvalid: the boundary lists it
    try:
        net.load_state_dict(w.state)
    except ValueError as exc:
        raise InputError(f"{weights}: the weights do not fit {spec}: {exc}") from None
    picture = activations_picture(net, pixels, w.mean, w.std)
    save_atomically(output, lambda tmp: picture.save(tmp, optimize=True))
    _written(output, f"the activations of {len(net.layers)} layers "
                     f"({picture.width}x{picture.height} px)")

