"""Pictures of a net, its training and its filters, as the notes draw them.

- `netdraw`: the architecture as SVG boxes, from the analyzer's report alone (pure Python:
  no numpy, so `cnncli draw` and `cnncli check --format html` start as fast as `check`);
- `curves`: loss, accuracy and learning rate per epoch from a run's metrics (matplotlib for
  files, a character chart for the terminal that needs nothing);
- `tiles`: first-layer filters and one image's activation maps as grids of tiles (Pillow);
- `html`: one self-contained page with the drawing, the per-layer table and the memory.
"""

from __future__ import annotations

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
