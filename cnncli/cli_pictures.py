"""`cnncli draw`, `plot`, `filters` and `activations`: pictures of a net, a run and its
weights (cnncli.pictures). `draw` is pure Python like `check`; the others import numpy,
matplotlib or Pillow inside the command."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer
from rich.text import Text

from cnncli import catalog
from cnncli.cli import InputOpt, RoundingOpt, SpecArg, err, fail, input_override, out
from cnncli.spec import SpecError

COLOURS = ("cyan", "yellow")  # training, validation in the terminal charts


def _picture_error(exc: Exception) -> NoReturn:
    fail(str(exc), getattr(exc, "code", 2))


def _written(path: Path, what: str) -> None:
    out.print(Text(f"wrote {path}: {what}"))


def print_compact_curves(run_dir: Path) -> None:
    """The sparklines of a run's metrics (after `cnncli train` in a terminal); silent when
    the run has no metrics to show."""
    from cnncli.pictures import PictureError
    from cnncli.pictures.curves import read_metrics, sparklines

    try:
        epochs = read_metrics(run_dir)
    except PictureError:
        return
    for line in sparklines(epochs):
        out.print(Text(line))


def _print_charts(epochs: Any, width: int) -> None:
    from cnncli.pictures.curves import terminal_charts

    tty = sys.stdout.isatty()
    for text, runs in terminal_charts(epochs, width):
        if not tty:
            print(text)
            continue
        line = Text()
        for chunk, who in runs:
            line.append(chunk, style=COLOURS[who] if who in (0, 1) else None)
        out.print(line)


def register(app: typer.Typer) -> None:
    @app.command()
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
        from cnncli.pictures import write_text
        from cnncli.pictures.netdraw import draw as draw_net
        from cnncli.render import problem_text

        if output is not None and output.suffix.lower() != ".svg":
            fail(f"{output}: the drawing is written as .svg", 2)
        try:
            drawing = draw_net(catalog.resolve(spec), input_override(input),
                               rounding.value if rounding else None, vertical)
        except SpecError as exc:
            fail(str(exc), 2)
        if output is None:
            sys.stdout.write(drawing.svg)
        else:
            try:
                write_text(output, drawing.svg)
            except OSError as exc:
                fail(f"{output}: cannot write ({exc.strerror or exc})", 2)
            state = "valid" if drawing.valid else "drawn up to its failing layer"
            _written(output, f"{drawing.boxes} volumes, {state}")
        for p in drawing.problems:
            err.print(problem_text(p, "error"))
        if not drawing.valid:
            n = len(drawing.problems)
            err.print(Text(f"{n} error{'s' if n > 1 else ''}: {spec} is not a valid net"))
            raise typer.Exit(1)

    @app.command()
    def plot(
        run: Annotated[Path, typer.Argument(
            help="A run directory of `cnncli train` (or its metrics.csv).")],
        output: Annotated[Optional[Path], typer.Option(
            "--out", "-o", help="Write the curves to a .png, .svg or .pdf (needs "
                                "matplotlib); default: charts in the terminal.",
            show_default=False)] = None,
        width: Annotated[int, typer.Option(
            help="Terminal chart width in characters.", min=16, max=400)] = 60,
    ) -> None:
        """Loss and accuracy per epoch (training against validation) and the learning rate,
        over the run's whole history, resumes included."""
        from cnncli.pictures import PictureError, write_atomic
        from cnncli.pictures.curves import SUFFIXES, read_metrics, run_title, write_plot

        try:
            epochs = read_metrics(run)
        except PictureError as exc:
            _picture_error(exc)
        if output is None:
            _print_charts(epochs, width)
            return
        if output.suffix.lower() not in SUFFIXES:
            fail(f"{output}: write curves as {', '.join(SUFFIXES)} (by the file's suffix)", 2)
        title = run_title(run, epochs)
        try:
            write_atomic(output, lambda tmp: write_plot(epochs, tmp, title))
        except PictureError as exc:
            _print_charts(epochs, width)  # the fallback: the curves, in the terminal
            _picture_error(exc)
        except OSError as exc:
            fail(f"{output}: cannot write ({exc.strerror or exc})", 2)
        _written(output, f"loss, accuracy and learning rate over {len(epochs)} epochs")

    @app.command()
    def filters(
        checkpoint: Annotated[Path, typer.Argument(
            help="A checkpoint of `cnncli train` (or an exported weights .npz).")],
        output: Annotated[Path, typer.Option(
            "--out", "-o", help="The .png to write.", show_default=False)],
        layer: Annotated[Optional[str], typer.Option(
            "--layer", help="A conv layer's name (default: the first conv layer, in "
                            "colour); a deeper layer is drawn per input channel in grey.",
            show_default=False)] = None,
    ) -> None:
        """The learned filters as a grid of small tiles, like Krizhevsky's first layer."""
        from cnncli.pictures import PictureError, write_atomic
        from cnncli.pictures.tiles import filters_picture
        from cnncli.slide import SlideError, load_weights

        if output.suffix.lower() != ".png":
            fail(f"{output}: tiles are written as .png", 2)
        try:
            weights = load_weights(checkpoint)
            picture, caption = filters_picture(weights.state, weights.meta, layer)
            write_atomic(output, lambda tmp: picture.save(tmp, optimize=True))
        except (PictureError, SlideError) as exc:
            _picture_error(exc)
        except OSError as exc:
            fail(f"{output}: cannot write ({exc.strerror or exc})", 2)
        _written(output, f"{caption} ({picture.width}x{picture.height} px)")

    @app.command()
    def activations(
        spec: SpecArg,
        image: Annotated[Path, typer.Argument(
            help="An image at the net's input size: .png/.jpg (Pillow) or .npy (HxWxC).")],
        weights: Annotated[Path, typer.Option(
            "--weights", help="A checkpoint of `cnncli train` on this spec (or an exported "
                              "weights .npz).", show_default=False)],
        output: Annotated[Path, typer.Option(
            "--out", "-o", help="The .png to write.", show_default=False)],
    ) -> None:
        """One image's activation maps through the net: each volume's depth slices tiled."""
        from cnncli.cli import open_spec
        from cnncli.pictures import PictureError, write_atomic

        if output.suffix.lower() != ".png":
            fail(f"{output}: tiles are written as .png", 2)
        net_spec = open_spec(spec)
        from cnncli.checkpoint import CheckpointError, check_spec
        from cnncli.network import Network
        from cnncli.pictures.tiles import activations_picture
        from cnncli.slide import SlideError, load_image, load_weights
        from cnncli.spec import SpecInvalid
        from cnncli.train import spec_text_of

        try:
            w = load_weights(weights)
            if "spec_sha256" in w.meta:
                check_spec(w, spec_text_of(net_spec), weights, spec)  # type: ignore[arg-type]
            pixels = load_image(image)
            try:
                net = Network(net_spec)
            except SpecInvalid as exc:
                fail(f"{spec} is not valid: {exc.problems[0].message} (see `cnncli check`)",
                     1)
            try:
                net.load_state_dict(w.state)
            except ValueError as exc:
                fail(f"{weights}: the weights do not fit {spec}: {exc}", 2)
            picture = activations_picture(net, pixels, w.mean, w.std)
            write_atomic(output, lambda tmp: picture.save(tmp, optimize=True))
        except (PictureError, SlideError, CheckpointError) as exc:
            _picture_error(exc)
        except OSError as exc:
            fail(f"{output}: cannot write ({exc.strerror or exc})", 2)
        _written(output, f"the activations of {len(net.layers)} layers "
                         f"({picture.width}x{picture.height} px)")
