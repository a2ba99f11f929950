"""The two consoles every command prints to: results on stdout, messages on stderr."""

from __future__ import annotations

import errno
import json
import os
import sys
from typing import Any

from rich.console import Console
from rich.text import Text

from cnncli.errors import naming


class _Console(Console):
    def _check_buffer(self) -> None:
        # a full disk under `> file` then says where it could not write
        with naming("standard error" if self.stderr else "standard output"):
            super()._check_buffer()

    def on_broken_pipe(self) -> None:
        # rich would exit 1 here, the code of an invalid net; the boundary ends the run
        # the way a closed pipe should end it (cnncli.cli.boundary)
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


def _tty(stream: Any) -> bool:
    return stream is not None and stream.isatty()  # None: the descriptor was closed


# Piped output is read by scripts and diffs: never cut a figure to fit 80 columns.
out = _Console(highlight=False, width=None if _tty(sys.stdout) else 240)
err = _Console(stderr=True, highlight=False, width=None if _tty(sys.stderr) else 240)


def print_json(data: Any) -> None:
    """Indented JSON on stdout, coloured on a terminal."""
    text = json.dumps(data, indent=2, allow_nan=False)  # bare NaN is not JSON
    if _tty(sys.stdout):
        out.print_json(text)
    else:
        with naming("standard output"):
            print(text)


def write(text: str) -> None:
    """Text on stdout as it is (CSV, Markdown, YAML)."""
    with naming("standard output"):
        sys.stdout.write(text)


def warn(message: str) -> None:
    """One line on stderr, printed as given (a path like '[/]' is text, not markup)."""
    err.print(Text.assemble(("warning: ", "yellow"), message), soft_wrap=True)
