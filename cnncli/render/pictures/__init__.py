"""Pictures of a net, its training and its filters, as the notes draw them.

- `netdraw`: the architecture as SVG boxes, from the analyzer's report alone (pure Python:
  no numpy, so `cnncli draw` and `cnncli check --format html` start as fast as `check`);
- `curves`: loss, accuracy and learning rate per epoch from a run's metrics (matplotlib for
  files, a character chart for the terminal that needs nothing);
- `tiles`: first-layer filters and one image's activation maps as grids of tiles (Pillow);
- `html`: one self-contained page with the drawing, the per-layer table and the memory.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from cnncli.errors import UserError


class PictureError(UserError):
    """A picture cannot be made; the message is one line. `code` is the exit code:
    2 for unreadable input or a missing extra, 1 for a net or run that is invalid."""


def need_pillow(what: str) -> object:
    """The PIL.Image module, or one line saying how to install the `images` extra."""
    try:
        from PIL import Image
    except ImportError:
        raise PictureError(f"{what} needs Pillow: pip install 'cnncli[images]'") from None
    return Image


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` writes the picture under a temporary name in the target's folder (same
    suffix, so writers that go by it pick the right format); it is renamed over the target
    only once complete, so a failure leaves neither a half picture nor a lost old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the writer creates the file itself, so it gets the permissions of any new file
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
