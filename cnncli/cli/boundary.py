"""The one place that turns an error into a message and an exit code.

Library code raises (cnncli.errors, SpecError, SpecInvalid, OSError, ...); commands let
it through; `report` prints one line on stderr (every problem, for an invalid net) and
picks the exit code:

    0    success
    1    the net or the run is invalid (SpecInvalid, RunInvalid); out of memory
    2    an input cannot be read or written, an option is wrong, a usage error
    130  interrupted (Ctrl-C): 128 + SIGINT, as a shell reports it
    141  stdout closed early (`cnncli check vgg16 | head -1`): 128 + SIGPIPE, what a shell
         reports for a program the closed pipe killed. Nothing is printed: the reader
         left on purpose. Never 1, which would say the net is invalid.

`Group` and `Command` route every error of the typer app through `report`: `Command`
while the command's parameters are known (an invalid net is also printed as JSON when
`--format json` was asked for), `Group` for what fails before (parsing, usage errors).
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
from typing import Any

from rich.text import Text
from typer import Abort, Exit
from typer.core import TyperArgument, TyperCommand, TyperGroup

from cnncli.cli.output import err
from cnncli.errors import UserError, naming
from cnncli.spec.parse import SpecError, SpecInvalid

try:  # typer 0.2x carries its own copy of click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer runs on click itself
    from click import exceptions as click_errors  # type: ignore[no-redef]

INVALID, INPUT, INTERRUPTED, CLOSED_PIPE = 1, 2, 130, 141


def report(exc: BaseException, params: dict[str, Any] | None = None) -> int | None:
    """Tell the user about `exc` on stderr and return the exit code; None for an exception
    that is a bug in cnncli (the caller re-raises it: its traceback is the report)."""
    if _closed_pipe(exc):
        _stdout_to_devnull()
        return CLOSED_PIPE
    if isinstance(exc, KeyboardInterrupt):
        err.print("interrupted")
        return INTERRUPTED
    if isinstance(exc, SpecInvalid):
        _invalid_net(exc, params or {})
        return INVALID
    if isinstance(exc, SpecError):
        error_line(str(exc))
        return INPUT
    if isinstance(exc, UserError):
        error_line(str(exc))
        return exc.code
    if isinstance(exc, click_errors.NoArgsIsHelpError):
        return INPUT  # the help is already printed: `cnncli` alone asks for it
    if isinstance(exc, click_errors.UsageError):
        error_line(usage_line(exc))
        return INPUT
    if isinstance(exc, Abort):
        error_line("aborted")
        return INVALID
    if isinstance(exc, MemoryError):
        error_line("out of memory (a smaller --batch needs less; `cnncli memory` itemises "
                   "what a step needs)")
        return INVALID
    if isinstance(exc, OSError):
        # a rename's target is the file the user named; its source is a hidden temporary
        where = exc.filename2 or exc.filename
        if where in (None, "standard output"):  # e.g. > /dev/full: the last flush would fail
            _stdout_to_devnull()
        error_line(f"{where}: {exc.strerror or exc}" if where else str(exc.strerror or exc))
        return INPUT
    return None


def _closed_pipe(exc: BaseException | None) -> bool:
    return isinstance(exc, BrokenPipeError) or (isinstance(exc, OSError)
                                                and exc.errno == errno.EPIPE)


def error_line(message: str) -> None:
    """`error: MESSAGE` on stderr, printed as given (a path like '[/]' is text, not markup;
    a hint like `pip install 'cnncli[images]'` keeps its brackets)."""
    err.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)


def _invalid_net(exc: SpecInvalid, params: dict[str, Any]) -> None:
    """Every problem on stderr, a count; with --format json also the problems as JSON on
    stdout, so a script reading stdout sees why there is no report."""
    from cnncli.render.tables import problem_text

    source = params.get("spec")
    if source is not None and str(params.get("fmt")) == "json":
        print(json.dumps({"source": source, "valid": False,
                          "errors": [p.as_dict() for p in exc.problems]}, indent=2))
    for p in exc.problems:
        err.print(problem_text(p, "error"), soft_wrap=True)
    if source is not None:
        n = len(exc.problems)
        err.print(Text(f"{n} error{'s' if n != 1 else ''} in {source}"), soft_wrap=True)


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of what is still
    buffered cannot fail again (Python's docs, "Note on SIGPIPE")."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (tests capture stdout)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


# click's wording for its own value checks -> ours ("expected ..., got ...")
_REWORDED = (
    (re.compile(r"^(.*) is not a valid (int|integer)\.?$"), r"\1 is not an integer"),
    (re.compile(r"^(.*) is not a valid float\.?$"), r"\1 is not a number"),
    (re.compile(r"^(\S+) is not in the range x>=(\S+?)\.?$"), r"expected \2 or more, got \1"),
)


def usage_line(exc: Any) -> str:
    """A click usage error as one line: `--epochs: 'abc' is not an integer`,
    `missing argument SPEC`, `no such option: --epoch (did you mean --epochs?)`."""
    param = getattr(exc, "param", None)
    if isinstance(exc, click_errors.BadParameter) and param is not None:
        if param.param_type_name == "option":
            name = max(param.opts, key=len)  # --format rather than -f
        else:
            name = argument_metavar(param)
        if isinstance(exc, click_errors.MissingParameter):
            return f"missing {param.param_type_name} {name}"
        message = " ".join(exc.message.split())
        for pattern, replacement in _REWORDED:
            message = pattern.sub(replacement, message)
        return f"{name}: {message.rstrip('.')}"
    if isinstance(exc, click_errors.NoSuchOption) and exc.possibilities:
        return (f"no such option: {exc.option_name} (did you mean "
                f"{' or '.join(sorted(exc.possibilities))}?)")
    message = " ".join(exc.format_message().split()).rstrip(".")
    return message[:1].lower() + message[1:]


def argument_metavar(param: Any) -> str:
    """A positional argument as usage lines and messages name it: SPEC, CHECKPOINT."""
    return str(param.metavar or (param.name or "").upper())


class Command(TyperCommand):
    """A typer command whose errors go through `report` with its parameters known."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        # typer writes a required argument as `{spec}`; a usage line says `SPEC`, and
        # `IMAGE...` for one that takes several, `[NAME]` for an optional one
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if not isinstance(param, TyperArgument):
                pieces.extend(param.get_usage_pieces(ctx))
                continue
            piece = argument_metavar(param) + ("..." if param.nargs != 1 else "")
            pieces.append(piece if param.required else f"[{piece}]")
        return pieces

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (Exit, Abort, click_errors.ClickException):
            raise
        except (Exception, KeyboardInterrupt) as exc:
            code = report(exc, ctx.params)
            if code is None:
                raise
            raise Exit(code) from None


class Group(TyperGroup):
    """The app: whatever escapes a command, or fails before one runs, goes through
    `report`; the process ends with its code."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        # errors come back here instead of being printed as click's boxes
        standalone_mode = kwargs.pop("standalone_mode", True)
        kwargs["standalone_mode"] = False
        try:
            result = super().main(*args, **kwargs)
            code = result if isinstance(result, int) else 0
            if sys.stdout is not None:  # a closed pipe or a full disk shows here when the
                with naming("standard output"):  # output fit one buffer
                    sys.stdout.flush()
        except SystemExit as exc:
            # rich and typer end a run whose stdout closed early (e.g. `--help | head -1`)
            # with sys.exit(1), the code of an invalid net; give it the closed pipe's code
            if not _closed_pipe(exc.__context__):
                raise
            code = report(exc.__context__) or CLOSED_PIPE  # type: ignore[arg-type]
        except (Exception, KeyboardInterrupt) as exc:
            reported = report(exc)
            if reported is None:
                raise
            code = reported
        if standalone_mode:
            sys.exit(code)
        return code
