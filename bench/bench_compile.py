"""A user's first minute, cold: how long commands take on a machine that has compiled
nothing yet, an older commit against the working tree, taking turns.

    .venv/bin/python bench/bench_compile.py --rev a2dc96b [--rounds 2]

Each command runs in a fresh process with an empty numba cache (`NUMBA_CACHE_DIR` a new
temporary folder), under `PYTHONPATH` of the side it measures: a `git worktree` of REV
(made in a temporary folder, removed at the end) or this checkout. Three commands:

* demo: `cnncli train cifar_small --epochs 3` (what `make demo` runs after installing),
  with the seconds it said it spent compiling and its best validation accuracy;
* warmup: `cnncli warmup` (every kernel, float32);
* nets: `cnncli warmup cifar_small resnet20 cifar_vgg_bn`.

The host's steal time (/proc/stat) over each side's commands is printed with them: on a
shared VM the same command's time moves with it.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {
    "demo": ["train", "cifar_small", "--epochs", "3", "--overwrite"],
    "warmup": ["warmup"],
    "nets": ["warmup", "cifar_small", "resnet20", "cifar_vgg_bn"],
}
SAID = re.compile(r"compiled in [0-9.]+ s|compiled and cached in [0-9.]+ s"
                  r"|best validation accuracy [0-9.]+%")


def steal() -> int:
    """Jiffies the host has taken from this VM's cores so far (0 off Linux)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[8])
    except (OSError, IndexError, ValueError):
        return 0


def run(name: str, source: Path, scratch: Path) -> tuple[float, str]:
    """One command cold: (wall seconds, what it said about compiling and accuracy)."""
    args = list(COMMANDS[name])
    if name == "demo":
        args += ["--out", str(scratch / "run")]
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=str(source))
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "cnncli", *args], env=env, cwd=scratch,
                              capture_output=True, text=True, check=True)
        wall = time.perf_counter() - started
    return wall, "; ".join(SAID.findall(done.stdout + done.stderr))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", required=True, help="the older commit")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", choices=sorted(COMMANDS), action="append",
                        help="run only these commands (repeatable)")
    args = parser.parse_args()
    names = args.only or list(COMMANDS)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        old = scratch / "old"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), args.rev], cwd=ROOT,
                       check=True, capture_output=True)
        try:
            sides = [(args.rev, old), ("working tree", ROOT)]
            for r in range(args.rounds):
                for label, source in sides if r % 2 == 0 else sides[::-1]:
                    before = steal()
                    for name in names:
                        wall, said = run(name, source, scratch)
                        print(f"round {r + 1}  {label:>12}  {name:6}  {wall:6.1f} s  {said}",
                              flush=True)
                    print(f"round {r + 1}  {label:>12}  host steal {steal() - before} jiffies",
                          flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT,
                           check=False, capture_output=True)


if __name__ == "__main__":
    main()
