"""The typer app and `main()`, the `cnncli` entry point.

A leaf: it imports every command module, and nothing in cnncli imports it (only the
entry point and `python -m cnncli`), so any command module can be imported first.
Errors reach cnncli.cli.boundary, which prints one line and picks the exit code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from cnncli.cli import check, engine, listing, memory, pictures, slide, train
from cnncli.cli.boundary import Command, Group

app = typer.Typer(
    cls=Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="The CS231n ConvNet notes as a tool: check, size, train and slide CNNs.")


def _print_version(value: bool) -> None:
    if value:
        from cnncli import __version__

        print(f"cnncli {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_print_version,
        help="Print cnncli's version and exit.")] = False,
) -> None:
    """The CS231n ConvNet notes as a tool: check, size, train and slide CNNs."""


COMMANDS: tuple[tuple[str, Callable[..., Any]], ...] = (
    ("check", check.check),
    ("list", listing.list_architectures),
    ("gradcheck", engine.gradcheck),
    ("warmup", engine.warmup),
    ("bench", engine.bench),
    ("memory", memory.memory),
    ("train", train.train),
    ("eval", train.evaluate),
    ("export", train.export),
    ("convert", slide.convert),
    ("slide", slide.slide),
    ("draw", pictures.draw),
    ("plot", pictures.plot),
    ("filters", pictures.filters),
    ("activations", pictures.activations),
)
for _name, _function in COMMANDS:
    app.command(_name, cls=Command)(_function)


def main() -> None:
    try:
        app()
    except SystemExit as exc:
        from cnncli.training.distributed import exiting

        exiting(exc.code)  # under mpiexec: a rank failing early lets the others know
        raise


if __name__ == "__main__":
    main()
