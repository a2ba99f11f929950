"""cnncli.files: every file cnncli writes is written whole or not at all, through a
temporary beside it; a symlink is written through, a FIFO or device in place. The two
ways in (an open-file writer, and a saver that takes a file name as Pillow and
matplotlib do) behave alike. A folder a run writes into has one writer at a time."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from cnncli.files import (
    FolderBusy,
    FolderLock,
    remove_stale_temporaries,
    save_atomically,
    write_atomically,
)

Write = Callable[..., object]
DISK_FULL = OSError(28, "No space left on device")


def by_open_file(path: Path, content: bytes, fail: bool = False) -> None:
    def write(fh: BinaryIO) -> None:
        fh.write(content)
        if fail:
            raise DISK_FULL
    write_atomically([(path, write)])


def by_name(path: Path, content: bytes, fail: bool = False) -> None:
    def save(name: Path) -> None:
        name.write_bytes(content)
        if fail:
            raise DISK_FULL
    save_atomically(path, save)


WAYS = pytest.mark.parametrize("write", [by_open_file, by_name], ids=["open-file", "by-name"])


@WAYS
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path,
                                                            write: Write) -> None:
    target = tmp_path / "net.svg"
    target.write_bytes(b"the old file")
    with pytest.raises(OSError, match="No space left"):
        write(target, b"half", fail=True)
    assert [p.name for p in tmp_path.iterdir()] == ["net.svg"]
    assert target.read_bytes() == b"the old file"


@WAYS
def test_a_new_file_gets_a_new_file_s_permissions_and_an_old_one_keeps_its_own(
        tmp_path: Path, write: Write) -> None:
    umask = os.umask(0)
    os.umask(umask)
    fresh, kept = tmp_path / "deep" / "fresh.png", tmp_path / "kept.png"
    kept.write_bytes(b"old")
    kept.chmod(0o640)
    write(fresh, b"new")
    write(kept, b"new")
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0o600
    assert kept.stat().st_mode & 0o777 == 0o640 and kept.read_bytes() == b"new"


@WAYS
def test_a_symlink_is_written_through_and_stays_a_link(tmp_path: Path, write: Write) -> None:
    real, link = tmp_path / "real.png", tmp_path / "link.png"
    real.write_bytes(b"old")
    link.symlink_to(real.name)
    write(link, b"new")
    assert link.is_symlink() and real.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.png", "real.png"]


@WAYS
def test_a_fifo_is_written_in_place_not_replaced(tmp_path: Path, write: Write) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader, so the write does not block
    try:
        write(fifo, b"through the pipe")
        assert os.read(reader, 100) == b"through the pipe"
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["pipe.png"]


def test_a_saver_by_name_sees_the_target_s_suffix(tmp_path: Path) -> None:
    """Pillow and matplotlib pick the format by the name's suffix: the temporary keeps it."""
    seen: list[str] = []
    save_atomically(tmp_path / "curves.pdf", lambda name: seen.append(name.name)
                    or name.write_bytes(b"%PDF"))
    assert seen[0].startswith(".curves.pdf.") and seen[0].endswith(".tmp.pdf")
    assert (tmp_path / "curves.pdf").read_bytes() == b"%PDF"


def test_stale_temporaries_of_the_named_files_only_are_removed(tmp_path: Path) -> None:
    ours = [".last.npz.k2j4h5g6.tmp", ".metrics.csv.a1b2c3d4.tmp"]
    not_ours = ["notes.txt", ".last.npz.tmp", ".photo.npz.k2j4h5g6.tmp",
                ".last.npz.k2j4h5g6.tmp.png", ".last.npz.toolong12.tmp"]
    for name in ours + not_ours:
        (tmp_path / name).write_bytes(b"left by a kill -9")
    removed = remove_stale_temporaries(tmp_path, ["last.npz", "metrics.csv"])
    assert sorted(p.name for p in removed) == sorted(ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(not_ours)


def test_files_imports_nothing_but_the_standard_library() -> None:
    code = ("import sys\n"
            "import cnncli.files\n"
            "print(sorted(m for m in ('numpy', 'numba', 'rich', 'typer') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


# Another process holding the lock, for as long as it reads lines on its stdin.
HOLDER = """
import sys
from pathlib import Path
from cnncli.files import FolderLock
lock = FolderLock(Path(sys.argv[1]))
lock.acquire()
print("held", flush=True)
sys.stdin.readline()
"""


def test_a_folder_has_one_writer_and_a_second_is_refused_without_a_change(
        tmp_path: Path) -> None:
    run = tmp_path / "runs" / "net"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        (run / "last.npz").write_bytes(b"the first run's")
        with pytest.raises(FolderBusy):
            FolderLock(run).acquire()
        assert sorted(p.name for p in run.iterdir()) == [".lock", "last.npz"]
    finally:
        holder.kill()  # as a kill -9 would: the kernel lets its lock go
        holder.wait()
    second = FolderLock(run)
    second.acquire()  # the lock file the killed holder left is free to take
    second.release()
    assert sorted(p.name for p in run.iterdir()) == ["last.npz"]


def test_a_lock_that_wrote_nothing_leaves_no_folder_it_made(tmp_path: Path) -> None:
    kept = tmp_path / "kept"
    kept.mkdir()
    for folder in (tmp_path / "runs" / "a" / "b", kept):
        lock = FolderLock(folder)
        lock.acquire()
        assert (folder / ".lock").is_file()
        lock.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]  # kept was there before
    assert list(kept.iterdir()) == []
