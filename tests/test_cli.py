"""The command line's conventions: one error boundary, one line per error, exit codes
(0 ok, 1 invalid net or run, 2 bad input or usage, 130 interrupted, 141 closed pipe), the
options every command shares, and a package any of whose modules can be imported first."""

from __future__ import annotations

import errno
import json
import os
import pkgutil
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import cnncli
from cnncli.cli.app import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent

TINY = {"name": "tiny", "input": "12x12x3", "layers": [
    {"conv": {"filters": 4, "size": 3, "pad": 1}}, "relu", {"pool": {"size": 2}}, {"fc": 3}]}


def invoke(*args: str) -> Any:
    result = runner.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"{args}: {result.exception!r}"
    return result


def one_line_error(result: Any, code: int, *fragments: str) -> str:
    """The run failed with `code` and exactly one stderr line holding every fragment."""
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return str(lines[0])


def cnncli_process(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cnncli", *args], capture_output=True,
                          text=True, timeout=120, **kwargs)


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY, sort_keys=False), encoding="utf-8")
    return path


def write_checkpoint(path: Path) -> Path:
    """A small training checkpoint, written the way `cnncli train` writes one."""
    import numpy as np

    from cnncli.engine.checkpoint import Checkpoint, save_checkpoint

    weights = {"fc1.weight": np.ones((3, 8), np.float32), "fc1.bias": np.zeros(3, np.float32)}
    return save_checkpoint(path, Checkpoint(
        weights=weights, optimizer={f"velocity/{k}": np.zeros_like(v) for k, v in weights.items()},
        mean=np.zeros(3), std=np.ones(3), meta={"spec_name": "tiny"}))


# --------------------------------------------------------------------------- the package


def test_every_module_can_be_imported_first_in_a_fresh_interpreter() -> None:
    names = [m.name for m in pkgutil.walk_packages(cnncli.__path__, "cnncli.")
             if not m.name.endswith("__main__")]  # that one runs the app: below
    assert "cnncli.cli.app" in names and "cnncli.cli.train" in names

    def import_first(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True,
                              text=True, timeout=300)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for name, result in zip(names, pool.map(import_first, names), strict=True):
            assert result.returncode == 0, f"import {name} first:\n{result.stderr}"


def test_nothing_in_cnncli_imports_the_app_module() -> None:
    """The app is the leaf: command modules never import it, so none can cycle through it."""
    for path in (ROOT / "cnncli").rglob("*.py"):
        if path.name == "__main__.py":
            continue
        text = path.read_text(encoding="utf-8")
        assert "cnncli.cli.app" not in text and "from cnncli.cli import app" not in text, path


def test_python_dash_m_cnncli_prints_the_version() -> None:
    result = cnncli_process("--version")
    assert (result.returncode, result.stdout, result.stderr) == (0, "cnncli 0.1.0\n", "")


def test_version_is_the_package_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert cnncli.__version__ == project["version"]
    assert project["scripts"]["cnncli"] == "cnncli.cli.app:main"
    result = invoke("--version")
    assert (result.exit_code, result.stdout) == (0, f"cnncli {cnncli.__version__}\n")


@pytest.mark.parametrize("args", [["-h"], ["check", "-h"], ["train", "-h"], ["export", "-h"]],
                         ids=" ".join)
def test_dash_h_is_help_on_the_app_and_every_command(args: list[str]) -> None:
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "Usage" in result.stdout and result.stdout == invoke(*args[:-1], "--help").stdout


USAGE = {"check": "SPEC", "list": "", "gradcheck": "SPEC", "warmup": "[SPEC...]", "bench": "SPEC",
         "memory": "SPEC", "train": "SPEC", "eval": "SPEC", "export": "CHECKPOINT OUTPUT",
         "convert": "SPEC", "slide": "SPEC IMAGE...", "draw": "SPEC", "plot": "RUN_DIR",
         "filters": "CHECKPOINT", "activations": "SPEC IMAGE"}


def test_usage_names_positional_arguments_in_capitals() -> None:
    """typer writes a required argument as `{spec}`; our usage lines say SPEC, as the
    README and the error messages (`missing argument SPEC`) do."""
    from cnncli.cli.app import COMMANDS

    assert set(USAGE) == {name for name, _ in COMMANDS}
    for name, arguments in USAGE.items():
        result = invoke(name, "-h")
        usage = next(line for line in result.stdout.splitlines() if "Usage:" in line)
        assert usage.split("[OPTIONS]")[1].strip() == arguments, usage
    assert "missing argument IMAGE" in invoke("slide", "cifar_tiny").stderr
    assert "missing argument OUTPUT" in invoke("export", "last.npz").stderr


# --------------------------------------------------------------------------- the boundary


@pytest.mark.parametrize("raised, code, line", [
    (KeyboardInterrupt(), 130, "interrupted"),
    (MemoryError(), 1, "error: out of memory"),
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), 2,
     f"error: {os.strerror(errno.ENOSPC)}"),
    # os.replace(temporary, target): the target is the file the user named
    (IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), "runs/.w.npz.x1.tmp", None,
                       "runs/w.npz"), 2, f"error: runs/w.npz: {os.strerror(errno.EISDIR)}"),
], ids=["ctrl-c", "memory", "disk", "rename"])
def test_the_boundary_maps_each_error_to_one_line_and_its_code(
        raised: BaseException, code: int, line: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from cnncli.cli import check

    def fails(name: str) -> None:
        raise raised

    monkeypatch.setattr(check, "open_spec", fails)
    result = invoke("check", "vgg16")
    assert result.exit_code == code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), lines


def test_a_bug_is_not_hidden_behind_an_error_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from cnncli.cli import check

    def fails(name: str) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(check, "open_spec", fails)
    result = runner.invoke(app, ["check", "vgg16"])
    assert isinstance(result.exception, ZeroDivisionError)


# --------------------------------------------------------------------------- closed pipe


@pytest.mark.parametrize("args", [["check", "vgg16"], ["memory", "vgg16"], ["--help"]],
                         ids=" ".join)
def test_closed_pipe_ends_quietly_with_141_not_the_invalid_net_code(args: list[str]) -> None:
    """`cnncli check vgg16 | head -1`: the reader left. Its read end is closed here before
    cnncli writes anything, so every run meets the closed pipe (no race with `head`)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "cnncli", *args], stdout=write_end,
                                stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (141, "")


def test_closed_stdout_is_no_crash() -> None:
    result = subprocess.run([sys.executable, "-m", "cnncli", "check", "vgg16"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            timeout=120, close_fds=True,
                            preexec_fn=lambda: os.close(1))
    assert (result.returncode, result.stderr) == (0, "")


# --------------------------------------------------------------------------- --threads


@pytest.mark.parametrize("command", [
    ["train", "tiny.yaml"], ["eval", "tiny.yaml", "--weights", "w.npz"], ["bench", "lenet5"],
    ["memory", "lenet5"], ["slide", "lenet5", "image.npy", "--random-weights"]],
    ids=lambda c: c[0])
@pytest.mark.parametrize("threads", ["0", "-1"])
def test_threads_below_one_is_an_error_naming_the_option(command: list[str],
                                                         threads: str) -> None:
    one_line_error(invoke(*command, "--threads", threads), 2, "--threads", f"got {threads}")


def test_threads_above_the_cores_runs_with_a_one_line_warning() -> None:
    from cnncli.config import available_threads

    cores = available_threads()
    result = invoke("memory", "lenet5", "--threads", str(cores + 7))
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().splitlines() == [
        f"warning: --threads {cores + 7} is more than the {cores} "
        f"core{'s' if cores > 1 else ''} the engine can use here; it runs {cores}"]
    assert f"{cores} threads" in result.stdout.splitlines()[0]


def test_the_thread_rule_is_one_function_in_config() -> None:
    from cnncli.config import available_threads, check_threads
    from cnncli.errors import InputError

    assert check_threads(None) is None and check_threads(1) is None
    assert check_threads(available_threads()) is None
    with pytest.raises(InputError, match="--threads: expected a thread count >= 1, got 0"):
        check_threads(0)
    assert "more than" in str(check_threads(available_threads() + 1))


# --------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize("args, line", [
    (["train", "tiny.yaml", "--epochs", "abc"], "error: --epochs: 'abc' is not an integer"),
    (["train", "tiny.yaml", "--lr", "fast"], "error: --lr: 'fast' is not a number"),
    (["check"], "error: missing argument SPEC"),
    (["eval", "tiny.yaml"], "error: missing option --weights"),
    (["check", "vgg16", "--bogus"], "error: no such option: --bogus"),
    (["check", "vgg16", "--formt", "json"],
     "error: no such option: --formt (did you mean --format"),
    (["check", "vgg16", "-f", "xml"],
     "error: --format: 'xml' is not one of 'table', 'json', 'csv', 'markdown', 'html'"),
    (["memory", "vgg16", "--batch", "0"], "error: --batch: expected 1 or more, got 0"),
    (["chek", "vgg16"], "error: no such command 'chek'"),
    (["gradcheck", "lenet5", "--json"], "error: no such option: --json"),
], ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_usage_errors_are_one_line_and_exit_2(args: list[str], line: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().startswith(line), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "╭" not in result.output


# --------------------------------------------------------------------------- messages


@pytest.mark.parametrize("command", [["train", "tiny.yaml"], ["gradcheck", "lenet5"],
                                     ["slide", "lenet5", "image.npy", "--random-weights"]],
                         ids=lambda c: c[0])
def test_seed_below_zero_names_the_option(command: list[str]) -> None:
    one_line_error(invoke(*command, "--seed", "-1"), 2, "--seed", "got -1")


def test_train_out_naming_a_file_says_so(spec_file: Path, tmp_path: Path) -> None:
    taken = tmp_path / "notes.txt"
    taken.write_text("mine\n", encoding="utf-8")
    one_line_error(invoke("train", str(spec_file), "--out", str(taken)), 2,
                   f"--out {taken}: is a file", "run directory")
    assert taken.read_text(encoding="utf-8") == "mine\n"


def test_a_folder_named_like_a_bundled_net_does_not_hide_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vgg16").mkdir()
    result = invoke("check", "vgg16")
    assert result.exit_code == 0 and "VGG16" in result.stdout, result.output
    (tmp_path / "mynet").mkdir()
    one_line_error(invoke("check", "mynet"), 2, "mynet: is a directory",
                   "not a bundled architecture")


def test_a_spec_error_is_printed_as_the_library_words_it(tmp_path: Path) -> None:
    """The CLI adds nothing to the message (no second copy of the file name)."""
    from cnncli.spec.parse import SpecError, load_spec

    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(SpecError) as raised:
        load_spec(empty)
    assert one_line_error(invoke("check", str(empty)), 2) == f"error: {raised.value}"


def test_slide_on_a_directory_says_it_is_a_directory(tmp_path: Path) -> None:
    one_line_error(invoke("slide", "lenet5", str(tmp_path), "--random-weights"), 2,
                   f"{tmp_path}: is a directory, not an image")


def test_pillow_hint_prints_the_pip_command_literally(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)  # Pillow missing: `import PIL` fails
    png = tmp_path / "photo.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    line = one_line_error(invoke("slide", "lenet5", str(png), "--random-weights"), 2,
                          "needs Pillow", "pip install 'cnncli[images]'")
    assert "\\" not in line


def test_convert_on_a_full_disk_names_the_file() -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    one_line_error(invoke("convert", "vgg16", "--fc-to-conv", "-o", "/dev/full"), 2,
                   "/dev/full: No space left on device")


# --------------------------------------------------------------------------- export


def test_export_over_its_own_checkpoint_is_refused(tmp_path: Path) -> None:
    from cnncli.engine.checkpoint import is_training_checkpoint

    best = write_checkpoint(tmp_path / "r" / "best.npz")
    before = best.read_bytes()
    for force in ([], ["--force"]):
        one_line_error(invoke("export", str(best), str(best), *force), 2,
                       "is the checkpoint being exported")
        one_line_error(invoke("export", str(best), str(tmp_path / "r" / ".." / "r" / "best.npz"),
                              *force), 2, "is the checkpoint being exported")
    assert best.read_bytes() == before and is_training_checkpoint(best)


def test_export_over_another_training_checkpoint_needs_force(tmp_path: Path) -> None:
    import numpy as np

    from cnncli.engine.checkpoint import is_training_checkpoint

    best = write_checkpoint(tmp_path / "best.npz")
    last = write_checkpoint(tmp_path / "last.npz")
    one_line_error(invoke("export", str(best), str(last)), 2, "is a training checkpoint",
                   "--force")
    assert is_training_checkpoint(last)
    result = invoke("export", str(best), str(last), "--force")
    assert result.exit_code == 0, result.output
    assert not is_training_checkpoint(last)
    with np.load(last) as z:
        assert sorted(z.files) == ["fc1.bias", "fc1.weight"]
    # an exported weights file is no checkpoint: writing over it again needs nothing
    assert invoke("export", str(best), str(last)).exit_code == 0


def test_export_to_a_directory_names_no_temporary_file(tmp_path: Path) -> None:
    best = write_checkpoint(tmp_path / "best.npz")
    out = tmp_path / "weights"
    out.mkdir()
    line = one_line_error(invoke("export", str(best), str(out)), 2, f"{out}: is a directory")
    assert ".tmp" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.npz", "weights"]


def test_export_on_a_full_disk_names_the_output_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    best = write_checkpoint(tmp_path / "best.npz")

    def full_disk(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", full_disk)
    out = tmp_path / "w.npz"
    one_line_error(invoke("export", str(best), str(out)), 2,
                   f"{out}: {os.strerror(errno.ENOSPC)}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.npz"]


# --------------------------------------------------------------------------- --format


def test_memory_format_json_on_an_invalid_net_prints_the_errors_like_check(
        tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: 32x32x3\nlayers:\n  - conv: {filters: 8, size: 3, stride: 0}\n",
                   encoding="utf-8")
    check = invoke("check", str(bad), "-f", "json")
    memory = invoke("memory", str(bad), "-f", "json")
    assert check.exit_code == memory.exit_code == 1
    assert json.loads(memory.stdout) == json.loads(check.stdout)
    data = json.loads(memory.stdout)
    assert data["source"] == str(bad) and data["valid"] is False and data["errors"]
    assert set(data["errors"][0]) == {"message", "line", "layer", "fix"}


def test_memory_format_json_on_a_net_invalid_at_its_input_prints_the_errors() -> None:
    result = invoke("memory", "alexnet_torchvision", "--rounding", "strict", "-f", "json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert (data["source"], data["valid"]) == ("alexnet_torchvision", False)
    assert data["errors"] and "error" in result.stderr


def test_bench_takes_format_json(spec_file: Path) -> None:
    result = invoke("bench", str(spec_file), "--batch", "2", "--iterations", "1",
                    "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [r["name"] for r in data["layers"]] and data["total_ms"] > 0
