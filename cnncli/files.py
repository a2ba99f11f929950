"""Every file cnncli writes is written whole or not at all. Pure Python: no numpy, so a
command that writes only text (`convert` without weights, `check -o`, `draw`) stays light.

A file goes to a temporary beside its target, `.TARGET.XXXXXXXX.tmp` (tempfile's 8 random
characters; one written by name keeps the target's suffix after that, `.tmp.png`, for
writers that go by it), flushed and fsync'd, then `os.replace`d over the target. A kill
at any moment leaves the old file or the new one, never half of one, and at worst the
temporary, which `remove_stale_temporaries` clears when a run starts again. A folder that
one process writes a run into is locked while it does (`FolderLock`), so a second run
cannot clear the first one's temporaries or interleave its saves with it.

What a rename would break is written otherwise: a symlink is written through (the file
it names is replaced, the link stays), and a target that is no file at all (a device, a
FIFO, a socket, an open descriptor such as /dev/stdout) is written in place.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

from cnncli.errors import naming

_TEMP_PREFIX, _TEMP_SUFFIX = ".", ".tmp"
_TEMP_RANDOM = r"[a-z0-9_]{8}"

Writer = Callable[[BinaryIO], None]
"""Writes a file's content to the open (binary) file it is given."""


def write_atomically(files: Sequence[tuple[Path, Writer]]) -> None:
    """Write each file to a temporary beside it (flushed, fsync'd), then rename them all
    over their targets, in order.

    A failure while writing leaves every target as it was and no temporary behind, so
    files that must agree (a checkpoint and the metrics derived from it) change together
    or not at all; only a kill (or a failed rename) between two renames leaves the later
    ones behind.
    """
    pending: list[tuple[str, Path]] = []
    replaced: list[Path] = []
    try:
        for target, write in files:
            path = _replaced(target)
            if path is None:
                with naming(target), open(target, "wb") as fh:
                    write(fh)
                continue
            replaced.append(path)
            tmp, fd = _temporary(path)
            pending.append((tmp, path))
            # a full disk names the file, not the temporary
            with naming(target), os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), _mode_for(path))
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
        while pending:
            tmp, path = pending[0]
            os.replace(tmp, path)
            pending.pop(0)
    except BaseException:
        for tmp, _ in pending:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    _sync_folders(path.parent for path in replaced)


def text_writer(text: str) -> Writer:
    """A `Writer` of `text` as UTF-8."""

    def write(fh: BinaryIO) -> None:
        fh.write(text.encode("utf-8"))
    return write


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path`, atomically."""
    path = Path(path)
    write_atomically([(path, text_writer(text))])
    return path


def save_atomically(path: str | Path, save: Callable[[Path], object]) -> Path:
    """`save(name)` writes the file itself, given a file name rather than an open file
    (Pillow's `save`, matplotlib's `savefig`: both pick the format by the suffix, which the
    temporary's name keeps). The temporary then gets a new file's permissions (or the
    target's) and is renamed over the target only once complete, so a failure leaves
    neither a half picture nor a lost old one."""
    path = Path(path)
    target = _replaced(path)
    if target is None:
        with naming(path):
            save(path)
        return path
    tmp, fd = _temporary(target, path.suffix)
    os.close(fd)
    try:
        with naming(path):
            save(Path(tmp))
            os.chmod(tmp, _mode_for(target))
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _sync_folders([target.parent])
    return path


def remove_stale_temporaries(folder: Path, names: Iterable[str]) -> list[Path]:
    """Delete the temporaries that a killed `write_atomically` left for these target
    names in `folder` (only files named like cnncli's own, `.NAME.XXXXXXXX.tmp`)."""
    pattern = re.compile(rf"{re.escape(_TEMP_PREFIX)}(?:{'|'.join(map(re.escape, names))})"
                         rf"\.{_TEMP_RANDOM}{re.escape(_TEMP_SUFFIX)}")
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except FileNotFoundError:
        return removed
    for entry in entries:
        if pattern.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    return removed


def _temporary(path: Path, suffix: str = "") -> tuple[str, int]:
    """A new temporary beside `path`, named for it: (its name, an open descriptor)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{_TEMP_PREFIX}{path.name}.",
                               suffix=_TEMP_SUFFIX + suffix)
    return tmp, fd


def _replaced(path: Path) -> Path | None:
    """The file a write to `path` replaces: `path`, or the file its symlink points at; None
    for a device, FIFO or socket (renaming a file over /dev/full would replace the device)
    and for an open descriptor (/dev/stdout, /dev/fd/1: the file a shell redirected)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # no such file yet (or a path that cannot be one: the write will say)
        mode = 0
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return None
    if not os.path.islink(path):
        return path
    hop = os.path.abspath(path)
    for _ in range(40):  # the kernel's own limit on a chain of links
        if hop.startswith(("/proc/", "/dev/fd/")):
            return None
        if not os.path.islink(hop):
            break
        hop = os.path.normpath(os.path.join(os.path.dirname(hop), os.readlink(hop)))
    return Path(os.path.realpath(path))


def _mode_for(path: Path) -> int:
    """The target's permissions if it exists, else those of a new file (0o666 less the
    umask), not mkstemp's owner-only 0o600."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0o022)  # read the umask (setting it back at once)
        os.umask(umask)
        return 0o666 & ~umask


def _sync_folders(folders: Iterable[Path]) -> None:
    """Make the renames themselves durable (best effort: not every file system allows it)."""
    for folder in dict.fromkeys(folders):
        with contextlib.suppress(OSError):
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


class FolderBusy(Exception):
    """Another process holds the folder's lock (`FolderLock`)."""


class FolderLock:
    """One writer per folder: an exclusive `flock` on `FOLDER/.lock`, held until `release`.

    The kernel drops a flock when its holder exits, however it exits, so a lock file that a
    killed run left is free to take: nothing goes stale. `release` removes the lock file,
    and the folder (with the parents `acquire` made for it) if it is empty then, so a run
    that stopped before writing anything leaves the disk as it found it. Where `fcntl` is
    missing (Windows) the lock is not taken and only the cleanup happens.
    """

    NAME = ".lock"

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / self.NAME
        self._fd: int | None = None
        self._made: list[Path] = []  # the folders acquire created, deepest first

    def acquire(self) -> None:
        """Take the lock, creating the folder if need be; FolderBusy if another process
        holds it (and then nothing is created or changed)."""
        missing = []
        for folder in (self.folder, *self.folder.parents):
            if folder.exists():
                break
            missing.append(folder)
        with naming(self.folder):
            self.folder.mkdir(parents=True, exist_ok=True)
        self._made = [folder for folder in missing if folder.is_dir()]
        try:
            self._fd = self._take()
        except BaseException:
            self._forget_folders()
            raise

    def _take(self) -> int | None:
        try:
            import fcntl
        except ImportError:  # no flock here: one writer is the user's to keep
            return None
        while True:
            with naming(self.path):
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise FolderBusy(str(self.folder)) from None
            except OSError:  # a file system without flock (some network mounts): go on
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
                return None
            try:  # the holder before may have removed the file between our open and flock
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    def release(self) -> None:
        """Remove the lock file and let the lock go; then the folders acquire made, where
        empty."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # while held: no one else can hold this file now
            os.close(self._fd)
            self._fd = None
        self._forget_folders()

    def _forget_folders(self) -> None:
        for folder in self._made:
            try:
                folder.rmdir()
            except OSError:  # not empty (the run wrote something), or gone: it stays
                break
        self._made = []
