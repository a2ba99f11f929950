"""The errors library code raises for a person to fix: one line and an exit code.

Library modules raise these (or subclasses); only the command line's boundary
(cnncli.cli.boundary) turns them into `error: MESSAGE` on stderr and the exit code:
2 the input cannot be read or an option is wrong, 1 the net or the run is invalid.
This module imports nothing, so the analyzer (`check`, `memory`) stays light.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class UserError(Exception):
    """A problem the user can fix; `str()` is the one line to show, `code` the exit code."""

    code = 2

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class InputError(UserError):
    """An input cannot be read, or an option or a file does not fit (exit 2)."""

    code = 2


class RunInvalid(UserError):
    """The net or the run is invalid: it cannot work as given (exit 1)."""

    code = 1


@contextmanager
def naming(path: object) -> Iterator[None]:
    """Name `path` in an OSError raised inside that names no file.

    A failed write on an open file (the disk is full, a quota) says only "No space left
    on device"; the message needs the file the user can go and look at.
    """
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise
