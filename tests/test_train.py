"""Training: optimizers, schedules, the loop (determinism, resume, NaN, Ctrl-C),
checkpoints (atomic writes, spec check, export to PyTorch) and the train/eval/export CLI.

Small nets at 12x12 and a few hundred images keep the file fast; the one end-to-end
accuracy run on cifar_small is marked slow.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cnncli.cli.app import app
from cnncli.engine import checkpoint as C
from cnncli.engine import optim
from cnncli.engine.network import Network
from cnncli.render.training import TrainDisplay
from cnncli.training import data as D
from cnncli.training.loop import (
    BatchDone,
    CheckpointSaved,
    EpochDone,
    Stopped,
    TrainConfig,
    Trainer,
    TrainError,
    load_training_data,
    spec_text_of,
)
from cnncli.training.settings import (
    DEFAULTS,
    EVAL_BATCH,
    TrainDefaults,
    new_run_options,
    resumed_options,
)

try:
    from tests.datafiles import write_npz
except ImportError:  # plain `pytest` without the repo root on sys.path
    from datafiles import write_npz  # type: ignore[no-redef]

runner = CliRunner()

TINY: dict[str, Any] = {
    "name": "tiny", "input": "12x12x3", "loss": "softmax",
    "layers": [
        {"conv": {"filters": 6, "size": 3, "pad": 1}}, "relu", {"pool": {"size": 2}},
        {"dropout": 0.25},
        {"fc": 3},
    ],
}


@pytest.fixture(scope="module")
def shapes() -> D.Dataset:
    return D.synthetic_shapes(200, width=12, height=12, depth=3, num_classes=3, seed=0)


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY, sort_keys=False), encoding="utf-8")
    return path


def make_trainer(ds: D.Dataset, run_dir: Path | None = None, **cfg: Any) -> Trainer:
    config = TrainConfig(**{"epochs": 2, "batch": 50, "lr": 0.05, "augment": True, **cfg})
    net = Network.from_spec(TINY, seed=config.seed, dtype=config.dtype)
    train, val = D.split_validation(ds, 0.2, seed=0)
    return Trainer(net, train, val, config, spec_text_of(net.spec), run_dir)


def run_all(trainer: Trainer, stop_after: int | None = None) -> list[Any]:
    """All events; with stop_after, request a stop after that many batches."""
    events = []
    for e in trainer.run():
        events.append(e)
        if isinstance(e, BatchDone) and stop_after is not None:
            stop_after -= 1
            if stop_after == 0:
                trainer.request_stop()
    return events


def losses(events: list[Any]) -> list[float]:
    return [e.loss for e in events if isinstance(e, BatchDone)]


def untimed(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    timing = ("seconds", "images_per_s", "val_seconds")
    return [{k: v for k, v in row.items() if k not in timing} for row in history]


def one_line_error(result: Any, code: int, *fragments: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# --------------------------------------------------------------------------- optimizers

P0 = np.array([1.0, -2.0])
G = np.array([0.5, 0.25])

# Two steps with the same gradient, worked by hand from the notes' update rules (lr 0.1).
HAND = {
    # x += -lr*dx
    "sgd": ([0.95, -2.025], [0.9, -2.05]),
    # v = 0.9v - 0.1dx: v1 = (-0.05, -0.025), v2 = (-0.095, -0.0475)
    "momentum": ([0.95, -2.025], [0.855, -2.0725]),
    # x += -0.9 v_prev + 1.9 v: 1.9*v1 = (-0.095, -0.0475); -0.9*v1 + 1.9*v2 = (-0.1355, -0.06775)
    "nesterov": ([0.905, -2.0475], [0.7695, -2.11525]),
    # cache = dx^2, then 2dx^2: steps of 0.1 and 0.1/sqrt(2)
    "adagrad": ([0.9, -2.1], [0.9 - 0.1 / np.sqrt(2), -2.1 - 0.1 / np.sqrt(2)]),
    # cache = 0.01dx^2: step 0.1/0.1 = 1; then cache = 0.0199dx^2: step 0.1/sqrt(0.0199)
    "rmsprop": ([0.0, -3.0], [-0.1 / np.sqrt(0.0199), -3.0 - 0.1 / np.sqrt(0.0199)]),
    # bias-corrected moments of a constant gradient are dx and dx^2: steps of exactly lr
    "adam": ([0.9, -2.1], [0.8, -2.2]),
}


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_optimizer_rules_match_hand_computed_steps(name: str) -> None:
    params = {"w": P0.copy()}
    opt = optim.make_optimizer(name, params, lr=0.1, momentum=0.9)
    first, second = HAND[name]
    opt.step({"w": G.copy()})
    np.testing.assert_allclose(params["w"], first, rtol=1e-7, atol=1e-6)  # eps shifts by ~1e-7
    opt.step({"w": G.copy()})
    np.testing.assert_allclose(params["w"], second, rtol=1e-7, atol=1e-6)  # eps shifts by ~1e-7


def test_optimizer_updates_in_place_and_skips_params_without_grads() -> None:
    w, b = np.ones(3, np.float32), np.ones(2, np.float32)
    opt = optim.Adam({"w": w, "b": b}, lr=0.1)
    opt.step({"w": np.ones(3, np.float32)})
    assert w.dtype == np.float32 and np.allclose(w, 0.9)
    assert np.array_equal(b, np.ones(2))


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_optimizer_state_round_trip(name: str) -> None:
    rng = np.random.default_rng(0)
    grads = [{"w": rng.standard_normal(4)} for _ in range(4)]
    a = {"w": np.zeros(4)}
    opt_a = optim.make_optimizer(name, a, lr=0.01)
    for g in grads[:2]:
        opt_a.step(g)
    b = {"w": a["w"].copy()}
    opt_b = optim.make_optimizer(name, b, lr=0.5)
    opt_b.load_state_dict(opt_a.state_dict())
    for g in grads[2:]:
        opt_a.step(g)
        opt_b.step(g)
    assert np.array_equal(a["w"], b["w"]) and opt_b.lr == 0.01


@pytest.mark.parametrize("make, message", [
    (lambda p: optim.SGD(p, lr=-1), "learning rate must be > 0, got -1"),
    (lambda p: optim.SGD(p, lr=float("nan")), "learning rate must be > 0, got nan"),
    (lambda p: optim.Momentum(p, lr=0.1, momentum=1.5), "momentum must be in [0, 1), got 1.5"),
    (lambda p: optim.Adam(p, lr=0.1, beta2=1.0), "beta2 must be in [0, 1), got 1.0"),
    (lambda p: optim.RMSProp(p, lr=0.1, eps=0), "eps must be > 0, got 0"),
    (lambda p: optim.make_optimizer("lbfgs", p, 0.1), "got 'lbfgs'"),
])
def test_bad_optimizer_arguments_fail_early_with_the_value(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)")):
        make({"w": np.zeros(2)})


def test_schedules() -> None:
    lrs = lambda s: [s(e) for e in range(5)]  # noqa: E731
    assert lrs(optim.Schedule("constant", 0.1)) == [0.1] * 5
    assert lrs(optim.Schedule("step", 0.1, step_size=2, gamma=0.5)) == pytest.approx(
        [0.1, 0.1, 0.05, 0.05, 0.025])
    assert lrs(optim.Schedule("exp", 0.1, gamma=0.5)) == pytest.approx(
        [0.1, 0.05, 0.025, 0.0125, 0.00625])
    cosine = lrs(optim.Schedule("cosine", 0.1, epochs=4))
    assert cosine == pytest.approx([0.1, 0.1 * (1 + np.cos(np.pi / 4)) / 2, 0.05,
                                    0.1 * (1 + np.cos(3 * np.pi / 4)) / 2, 0.0])
    with pytest.raises(ValueError, match="schedule must be one of"):
        optim.Schedule("linear", 0.1)
    with pytest.raises(ValueError, match="gamma must be in"):
        optim.Schedule("step", 0.1, gamma=0)


# --------------------------------------------------------------------------- the loop


def test_training_is_deterministic(shapes: D.Dataset) -> None:
    a, b = make_trainer(shapes), make_trainer(shapes)
    ea, eb = run_all(a), run_all(b)
    assert losses(ea) == losses(eb) and len(losses(ea)) == 8
    for k, v in a.net.state_dict().items():
        assert np.array_equal(v, b.net.state_dict()[k]), k
    c = run_all(make_trainer(shapes, seed=1))
    assert losses(c) != losses(ea)


def test_events_and_run_directory(shapes: D.Dataset, tmp_path: Path) -> None:
    events = run_all(make_trainer(shapes, tmp_path / "run"))
    epochs = [e for e in events if isinstance(e, EpochDone)]
    assert [e.metrics.epoch for e in epochs] == [1, 2]
    m = epochs[-1].metrics
    assert m.val_acc is not None and 0 <= m.val_acc <= 1 and m.images_per_s > 0
    assert {e.kind for e in events if isinstance(e, CheckpointSaved)} == {"last", "best"}
    assert isinstance(events[-1], Stopped) and events[-1].reason == "finished"
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert (run / "metrics.csv").read_text().splitlines()[0].startswith("epoch,train_loss")
    ckpt = C.load_checkpoint(run / "last.npz", spec_text=spec_text_of(Network.from_spec(TINY)
                                                                        .spec))
    assert ckpt.epoch == 2 and ckpt.mean.shape == (3,) and ckpt.meta["history"] == rows


@pytest.mark.parametrize("stop_after", [3, 4, 6])  # mid-epoch, at the boundary, mid-epoch 2
def test_stopped_and_resumed_run_ends_with_the_same_weights(
        shapes: D.Dataset, tmp_path: Path, stop_after: int) -> None:
    cfg = dict(optimizer="adam", lr=0.01, weight_decay=1e-3)
    straight = make_trainer(shapes, **cfg)
    full = run_all(straight)

    first = make_trainer(shapes, tmp_path / "run", **cfg)
    part1 = run_all(first, stop_after=stop_after)
    assert part1[-1].reason == "interrupted"
    second = make_trainer(shapes, tmp_path / "run", **cfg)
    second.load(C.load_checkpoint(tmp_path / "run" / "last.npz"))
    part2 = run_all(second)
    assert losses(part1) + losses(part2) == losses(full)
    for k, v in straight.net.state_dict().items():
        assert np.array_equal(v, second.net.state_dict()[k]), k
    assert untimed(second.progress.history) == untimed(straight.progress.history)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(shapes: D.Dataset,
                                                           tmp_path: Path) -> None:
    trainer = make_trainer(shapes, tmp_path / "run", epochs=3)
    events = []
    for e in trainer.run():
        events.append(e)
        if isinstance(e, EpochDone) and e.metrics.epoch == 1:
            good = trainer.net.state_dict()
            trainer.net.params["fc1.weight"][0, 0] = np.inf  # the next batch's loss is NaN
    stop = events[-1]
    assert isinstance(stop, Stopped) and stop.reason == "diverged"
    assert "loss is nan at epoch 2, batch 1" in stop.message
    assert "lower learning rate" in stop.message and "last.npz (epoch 1) is kept" in stop.message
    ckpt = C.load_checkpoint(tmp_path / "run" / "last.npz")
    assert ckpt.epoch == 1
    for k, v in good.items():
        assert np.array_equal(ckpt.weights[k], v)


def test_config_and_data_are_checked(shapes: D.Dataset) -> None:
    with pytest.raises(TrainError, match="batch size must be >= 1, got 0"):
        make_trainer(shapes, batch=0)
    with pytest.raises(TrainError, match="optimizer must be one of .* got 'foo'"):
        make_trainer(shapes, optimizer="foo")
    net = Network.from_spec(TINY)
    with pytest.raises(TrainError, match="validation fraction must be in"):
        load_training_data(net, None, None, 1.5, 100)
    train, val = load_training_data(net, None, None, 0.25, 40)
    assert (len(train), len(val or [])) == (40, 10) and train.image_shape == (12, 12, 3)


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_write_is_atomic(shapes: D.Dataset, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = make_trainer(shapes)
    path = tmp_path / "last.npz"
    before = trainer.checkpoint()
    C.save_checkpoint(path, before)
    run_all(trainer)  # the weights move on

    def crash(src: str, dst: str) -> None:
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        C.save_checkpoint(path, trainer.checkpoint())
    monkeypatch.undo()
    loaded = C.load_checkpoint(path)
    for k, v in before.weights.items():
        assert np.array_equal(loaded.weights[k], v)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.npz"]  # no temp file left


def test_checkpoint_checks_its_spec_and_format(shapes: D.Dataset, tmp_path: Path) -> None:
    trainer = make_trainer(shapes)
    path = C.save_checkpoint(tmp_path / "c.npz", trainer.checkpoint())
    with pytest.raises(C.CheckpointError, match="belongs to another spec"):
        C.load_checkpoint(path, spec_text="name: other\n", spec_source="other.yaml")
    truncated = tmp_path / "t.npz"
    truncated.write_bytes(path.read_bytes()[:300])
    with pytest.raises(C.CheckpointError, match="corrupt or truncated"):
        C.load_checkpoint(truncated)
    with pytest.raises(C.CheckpointError, match="no such checkpoint"):
        C.load_checkpoint(tmp_path / "missing.npz")
    exported = C.export_npz(path, tmp_path / "w.npz")
    with pytest.raises(C.CheckpointError, match="exported weights file"):
        C.load_checkpoint(exported)


def test_export_loads_into_a_torch_module(shapes: D.Dataset, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    trainer = make_trainer(shapes, epochs=1)
    run_all(trainer)
    path = C.export_npz(trainer.checkpoint(), tmp_path / "w.npz")

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = torch.nn.Conv2d(3, 6, 3, padding=1)
            self.fc1 = torch.nn.Linear(6 * 6 * 6, 3)

        def forward(self, x: Any) -> Any:
            x = torch.nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
            return self.fc1(torch.flatten(x, 1))

    module = Tiny()
    module.load_state_dict({k: torch.from_numpy(v) for k, v in np.load(path).items()})
    x = D.normalize(shapes.x[:16], trainer.mean, trainer.std)
    ours = trainer.net.scores(x)
    theirs = module.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).detach().numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- CLI


def cli_train(spec_file: Path, out: Path, *extra: str) -> Any:
    return runner.invoke(app, ["train", str(spec_file), "--train-size", "160", "--batch", "40",
                               "--lr", "0.05", "--augment", "--out", str(out), *extra])


def test_cli_train_resume_matches_an_uninterrupted_run(spec_file: Path, tmp_path: Path) -> None:
    straight = cli_train(spec_file, tmp_path / "a", "--epochs", "2")
    assert straight.exit_code == 0, straight.output
    assert "epoch" in straight.stdout and "finished 2 epochs" in straight.stdout
    assert cli_train(spec_file, tmp_path / "b", "--epochs", "1").exit_code == 0
    resumed = runner.invoke(app, ["train", str(spec_file), "--out", str(tmp_path / "b"),
                                  "--resume", "--epochs", "2"])
    assert resumed.exit_code == 0, resumed.output
    a = C.load_checkpoint(tmp_path / "a" / "last.npz")
    b = C.load_checkpoint(tmp_path / "b" / "last.npz")
    for k, v in a.weights.items():
        assert np.array_equal(v, b.weights[k]), k
    for name in ("spec.yaml", "config.json", "metrics.jsonl", "metrics.csv", "best.npz"):
        assert (tmp_path / "b" / name).is_file()
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 2
    # a second start in the same directory is refused; --resume with other settings too
    one_line_error(cli_train(spec_file, tmp_path / "b", "--epochs", "3"), 2,
                   "already holds a run", "--resume")
    one_line_error(runner.invoke(app, ["train", str(spec_file), "--out", str(tmp_path / "b"),
                                       "--resume", "--epochs", "3", "--lr", "0.5"]), 2,
                   "--lr 0.5 differs from the run's 0.05")


def test_cli_ctrl_c_saves_and_exits_130(spec_file: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    shown = TrainDisplay._batch

    def batch_then_ctrl_c(self: Any, event: Any) -> None:
        shown(self, event)
        if event.epoch == 0 and event.batch == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(TrainDisplay, "_batch", batch_then_ctrl_c)
    result = cli_train(spec_file, tmp_path / "run", "--epochs", "2")
    assert result.exit_code == 130, result.output
    assert "--resume" in result.stderr
    ckpt = C.load_checkpoint(tmp_path / "run" / "last.npz")
    assert (ckpt.epoch, ckpt.meta["position"]["batch"]) == (0, 2)
    monkeypatch.undo()
    resumed = runner.invoke(app, ["train", str(spec_file), "--out", str(tmp_path / "run"),
                                  "--resume"])
    assert resumed.exit_code == 0, resumed.output
    straight = cli_train(spec_file, tmp_path / "straight", "--epochs", "2")
    assert straight.exit_code == 0
    a = C.load_checkpoint(tmp_path / "straight" / "last.npz")
    b = C.load_checkpoint(tmp_path / "run" / "last.npz")
    assert all(np.array_equal(v, b.weights[k]) for k, v in a.weights.items())


def test_cli_nan_exits_1_with_advice(spec_file: Path, tmp_path: Path) -> None:
    result = cli_train(spec_file, tmp_path / "run", "--epochs", "5", "--lr", "1e30",
                       "--optimizer", "sgd")
    one_line_error(result, 1, "training diverged", "lower learning rate")


def test_cli_data_errors_are_one_line(spec_file: Path, tmp_path: Path) -> None:
    mnist_like = D.Dataset(x=np.zeros((20, 28, 28, 1), np.uint8), y=np.arange(20) % 3,
                           num_classes=3, class_names=None, source="m")
    write_npz(tmp_path / "mnist.npz", mnist_like)
    one_line_error(cli_train(spec_file, tmp_path / "r1", "--data", str(tmp_path / "mnist.npz")),
                   2, "images are 28x28x1 but the spec's input is 12x12x3")
    labels = D.Dataset(x=np.zeros((20, 12, 12, 3), np.uint8), y=np.arange(20) % 5,
                       num_classes=5, class_names=None, source="l")
    write_npz(tmp_path / "labels.npz", labels)
    one_line_error(cli_train(spec_file, tmp_path / "r2", "--data", str(tmp_path / "labels.npz")),
                   2, "labels go from 0 to 4", "3 classes")
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")
    one_line_error(cli_train(spec_file, tmp_path / "r3", "--data", str(tmp_path / "corrupt.npz")),
                   2, "corrupt.npz")
    one_line_error(cli_train(spec_file, tmp_path / "r4", "--data", str(tmp_path / "none")),
                   2, "no such file")
    assert not (tmp_path / "r1").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--lr", "-1"], "learning rate must be > 0, got -1.0"),
    (["--batch", "0"], "batch size must be >= 1, got 0"),
    (["--epochs", "0"], "epochs must be >= 1, got 0"),
    (["--optimizer", "foo"], "optimizer must be one of sgd, momentum"),
    (["--schedule", "linear"], "schedule must be one of constant"),
    (["--dtype", "float16"], "dtype must be float32 or float64"),
    (["--val-fraction", "1"], "validation fraction must be in [0, 1), got 1.0"),
    (["--momentum", "2"], "momentum must be in [0, 1), got 2.0"),
])
def test_cli_bad_option_values(spec_file: Path, tmp_path: Path, args: list[str],
                               fragment: str) -> None:
    one_line_error(cli_train(spec_file, tmp_path / "run", *args), 2, fragment)


def test_cli_eval_and_export(spec_file: Path, tmp_path: Path) -> None:
    assert cli_train(spec_file, tmp_path / "run", "--epochs", "1").exit_code == 0
    best = tmp_path / "run" / "best.npz"
    table = runner.invoke(app, ["eval", str(spec_file), "--weights", str(best)])
    assert table.exit_code == 0, table.output
    for text in ("accuracy", "disc", "square", "confusion matrix", "true \\ predicted"):
        assert text in table.stdout
    js = runner.invoke(app, ["eval", str(spec_file), "--weights", str(best), "-f", "json"])
    r = json.loads(js.stdout)
    assert r["images"] == 2000 and np.array(r["confusion"]).sum() == 2000
    assert r["accuracy"] == pytest.approx(np.trace(np.array(r["confusion"])) / 2000)
    assert len(r["per_class_accuracy"]) == 3 and r["classes"][0] == "disc"

    one_line_error(runner.invoke(app, ["eval", str(spec_file), "--weights",
                                       str(tmp_path / "nope.npz")]), 2, "no such checkpoint")
    other = tmp_path / "other.yaml"
    other.write_text(spec_file.read_text().replace("filters: 6", "filters: 7"))
    one_line_error(runner.invoke(app, ["eval", str(other), "--weights", str(best)]), 2,
                   "belongs to another spec")

    exported = runner.invoke(app, ["export", str(best), str(tmp_path / "w.npz")])
    assert exported.exit_code == 0, exported.output
    with np.load(tmp_path / "w.npz") as z:
        assert sorted(z.files) == ["conv1.bias", "conv1.weight", "fc1.bias", "fc1.weight"]
        assert z["conv1.weight"].shape == (6, 3, 3, 3) and z["fc1.weight"].shape == (3, 216)


# --------------------------------------------------------------------------- defaults, run policy


def test_train_config_defaults_are_the_library_defaults() -> None:
    config, shared = TrainConfig(), 0
    for f in fields(TrainDefaults):
        if hasattr(config, f.name):
            assert getattr(config, f.name) == getattr(DEFAULTS, f.name), f.name
            shared += 1
    assert shared >= 10  # epochs, batch, lr, optimizer, momentum, ... all come from DEFAULTS
    assert config.eval_batch == EVAL_BATCH


def test_train_help_reads_its_defaults_from_the_library() -> None:
    """The CLI writes no default of its own: other DEFAULTS, other --help."""
    code = ("import dataclasses\n"
            "from cnncli.training import settings\n"
            "settings.DEFAULTS = dataclasses.replace(settings.DEFAULTS, lr=0.5, epochs=3,\n"
            "                                        optimizer='adam', augment=True)\n"
            "from typer.testing import CliRunner\n"
            "from cnncli.cli.app import app\n"
            "print(CliRunner().invoke(app, ['train', '--help'], env={'COLUMNS': '240'}).stdout)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60)
    rows = {line.split()[1]: line for line in result.stdout.splitlines()
            if len(line.split()) > 1 and line.split()[1].startswith("--")}
    assert "[default: 0.5]" in rows["--lr"]
    assert "[default: 3]" in rows["--epochs"]
    assert "[default: adam]" in rows["--optimizer"]
    assert "[default: augment]" in rows["--augment"]
    assert "[default: 64]" in rows["--batch"]  # the rest as they are


def test_training_page_states_the_library_defaults() -> None:
    """docs/training.md's option table is the third place the defaults are written."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "training.md").read_text()
    shown: dict[str, str] = {}
    for line in page.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`--"):
            names = re.findall(r"`--([a-z-]+)", cells[0])
            for name, value in zip(names, cells[1].split(", "), strict=False):
                shown[name.replace("-", "_")] = value
    words = {("sync_batchnorm", False): "per rank"}
    for f in fields(TrainDefaults):
        value = getattr(DEFAULTS, f.name)
        expected = words.get((f.name, value)) or (
            ("on" if value else "off") if isinstance(value, bool)
            else f"{value:g}" if isinstance(value, float) else str(value))
        assert shown.get(f.name) == expected, (f.name, shown.get(f.name), expected)


def test_resume_refuses_an_option_that_would_make_it_another_run(tmp_path: Path) -> None:
    info = {"options": new_run_options({"lr": 0.05}, tmp_path, False, False), "threads": 2}
    with pytest.raises(TrainError, match=r"--lr 0.5 differs from the run's 0.05; --resume"):
        resumed_options(info, {"lr": 0.5}, ranks=1)
    with pytest.raises(TrainError, match="--weight-decay 0.1 differs from the run's 0.0"):
        resumed_options(info, {"weight_decay": 0.1}, ranks=1)
    # the run's own value again is no change; --epochs is the new total
    options = resumed_options(info, {"lr": 0.05, "epochs": 20}, ranks=1)
    assert options == {**info["options"], "epochs": 20, "threads": 2}


def test_resume_keeps_the_runs_threads_on_as_many_ranks_only(tmp_path: Path) -> None:
    info = {"options": new_run_options({}, tmp_path, False, False), "threads": 2, "ranks": 2}
    assert resumed_options(info, {}, ranks=2)["threads"] == 2
    assert resumed_options(info, {}, ranks=4)["threads"] is None  # the default share
    assert resumed_options(info, {"threads": 1}, ranks=2)["threads"] == 1


def test_new_run_refuses_a_directory_holding_a_run_unless_overwrite(tmp_path: Path) -> None:
    with pytest.raises(TrainError, match=f"{tmp_path} already holds a run .*--overwrite"):
        new_run_options({}, tmp_path, holds_a_run=True, overwrite=False)
    options = new_run_options({"lr": 0.1}, tmp_path, holds_a_run=True, overwrite=True)
    assert options == {**asdict(DEFAULTS), "lr": 0.1, "threads": None, "data": None,
                       "val_data": None}
    with pytest.raises(TrainError, match="--val-fraction and --val-data exclude each other"):
        new_run_options({"val_data": "d", "val_fraction": 0.1}, tmp_path, False, False)


def test_cli_overwrite_starts_the_run_over(spec_file: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    one_step = ["--train-size", "40", "--batch", "40", "--val-fraction", "0"]
    assert cli_train(spec_file, run, *one_step, "--epochs", "2").exit_code == 0
    result = cli_train(spec_file, run, *one_step, "--epochs", "1", "--overwrite")
    assert result.exit_code == 0, result.output
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert C.load_checkpoint(run / "last.npz").epoch == 1
    assert json.loads((run / "config.json").read_text())["options"]["epochs"] == 1


def test_cli_train_into_a_folder_another_run_is_using_is_refused(spec_file: Path,
                                                                   tmp_path: Path) -> None:
    from cnncli.files import FolderLock

    run = tmp_path / "run"
    one_step = ["--train-size", "40", "--batch", "40", "--val-fraction", "0", "--epochs", "1"]
    assert cli_train(spec_file, run, *one_step).exit_code == 0
    assert ".lock" not in {p.name for p in run.iterdir()}  # a finished run lets it go
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    other = FolderLock(run)  # another `cnncli train` in the middle of its run
    other.acquire()
    try:
        for again in ([], ["--overwrite"], ["--resume", "--epochs", "2"]):
            one_line_error(cli_train(spec_file, run, *one_step, *again), 1,
                           f"{run} is in use by another cnncli train")
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"} == before
    finally:
        other.release()
    assert cli_train(spec_file, run, *one_step, "--overwrite").exit_code == 0


def test_cli_train_that_fails_before_writing_leaves_no_folder(spec_file: Path,
                                                              tmp_path: Path) -> None:
    one_line_error(cli_train(spec_file, tmp_path / "runs" / "new", "--data",
                             str(tmp_path / "missing.npz")), 2, "missing.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == [spec_file.name]  # no runs/new


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_cifar_small_learns_the_builtin_dataset(tmp_path: Path) -> None:
    """The demo's claim (`make demo` trains 3 epochs), in 2 epochs: cifar_small on the
    built-in 10-class shapes (8000 training / 1600 validation images) beats 90%."""
    result = runner.invoke(app, ["train", "cifar_small", "--epochs", "2",
                                 "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    best = C.load_checkpoint(tmp_path / "run" / "best.npz").meta["best"]
    assert best["val_acc"] >= 0.90, best


def test_cli_val_data_and_eval_data(spec_file: Path, tmp_path: Path) -> None:
    train = D.synthetic_shapes(120, width=12, height=12, num_classes=3, seed=5)
    test = D.synthetic_shapes(30, width=12, height=12, num_classes=3, seed=6)
    write_npz(tmp_path / "train.npz", train)
    write_npz(tmp_path / "test.npz", test)
    result = cli_train(spec_file, tmp_path / "run", "--epochs", "1", "--data",
                       str(tmp_path / "train.npz"), "--val-data", str(tmp_path / "test.npz"))
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["train_images"], config["val_images"]) == (120, 30)
    js = runner.invoke(app, ["eval", str(spec_file), "--weights", str(tmp_path / "run" /
                                                                      "last.npz"),
                             "--data", str(tmp_path / "test.npz"), "--format", "json"])
    assert json.loads(js.stdout)["images"] == 30
    grey = D.synthetic_shapes(10, width=12, height=12, depth=1, num_classes=3)
    write_npz(tmp_path / "grey.npz", grey)
    one_line_error(runner.invoke(app, ["eval", str(spec_file), "--weights",
                                       str(tmp_path / "run" / "last.npz"),
                                       "--data", str(tmp_path / "grey.npz")]),
                   2, "images are 12x12x1 but the spec's input is 12x12x3")
    one_line_error(cli_train(spec_file, tmp_path / "r2", "--val-fraction", "0.1",
                             "--val-data", str(tmp_path / "test.npz")), 2, "exclude each other")


# --------------------------------------------------------------------------- run directory


def metrics_agree_with_last_checkpoint(run: Path) -> int:
    """metrics.csv and metrics.jsonl hold exactly last.npz's history; its length."""
    import csv

    history = C.load_checkpoint(run / "last.npz").meta["history"]
    with (run / "metrics.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [h["epoch"] for h in history]
    assert [float(r["train_loss"]) for r in rows] == [h["train_loss"] for h in history]
    jsonl = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert jsonl == history
    return len(history)


def temporaries(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("failure", ["metrics writer", "checkpoint rename", "metrics rename"])
def test_metrics_csv_agrees_with_last_npz_after_a_failed_save_and_a_resume(
        shapes: D.Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        failure: str) -> None:
    """metrics.csv used to be rewritten in place after the checkpoint: a kill there left
    it cut short (0 rows beside a last.npz at epoch 994). Now the metrics are written with
    last.npz in one atomic save; the save of epoch 2 fails here at three points."""
    from cnncli.training import loop as T

    run = tmp_path / "run"
    trainer = make_trainer(shapes, run, epochs=3)
    epoch_2 = lambda: trainer.progress.epoch == 2  # noqa: E731 (saving epoch 2)
    text_writer, replace = T._text_writer, os.replace

    def half_then_disk_full(text: str) -> Any:
        write = text_writer(text)
        if not (text.startswith("epoch,") and epoch_2()):
            return write

        def fail(fh: Any) -> None:
            fh.write(text[: len(text) // 2].encode())
            raise OSError(28, "No space left on device")
        return fail

    def rename_fails(src: str, dst: str) -> None:
        target = "last.npz" if failure == "checkpoint rename" else "metrics.csv"
        if Path(dst).name == target and epoch_2():
            raise OSError(5, "Input/output error")
        replace(src, dst)

    if failure == "metrics writer":
        monkeypatch.setattr(T, "_text_writer", half_then_disk_full)
    else:
        monkeypatch.setattr(os, "replace", rename_fails)
    with pytest.raises(OSError):
        run_all(trainer)
    monkeypatch.undo()
    assert temporaries(run) == []
    if failure == "metrics rename":
        # last.npz (and metrics.jsonl) renamed, metrics.csv not: the one window left,
        # closed when the run starts again
        assert C.load_checkpoint(run / "last.npz").epoch == 2
    else:
        assert metrics_agree_with_last_checkpoint(run) == 1

    resumed = make_trainer(shapes, run, epochs=3)
    resumed.load(C.load_checkpoint(run / "last.npz"))
    events = resumed.run()
    next(events)  # started: the run directory is recovered before the first batch
    assert metrics_agree_with_last_checkpoint(run) == resumed.progress.epoch
    list(events)
    assert metrics_agree_with_last_checkpoint(run) == 3


def test_resume_of_a_finished_run_repairs_metrics_cut_short(spec_file: Path,
                                                            tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert cli_train(spec_file, run, "--epochs", "2").exit_code == 0
    (run / "metrics.csv").write_text("epoch,train_loss\n")  # killed mid-write, old style
    (run / "metrics.jsonl").write_text("")
    result = runner.invoke(app, ["train", str(spec_file), "--out", str(run), "--resume"])
    assert result.exit_code == 0, result.output
    assert "nothing to do" in result.stdout
    assert metrics_agree_with_last_checkpoint(run) == 2


def test_atomic_writes_give_files_the_usual_permissions_not_owner_only(tmp_path: Path) -> None:
    """mkstemp makes its temporaries 0o600; metrics and configs written through them
    became unreadable to others, unlike before the writes were atomic."""
    umask = os.umask(0o022)
    os.umask(umask)
    fresh, kept = tmp_path / "metrics.csv", tmp_path / "config.json"
    kept.write_text("{}")
    kept.chmod(0o640)
    C.write_atomically([(fresh, lambda fh: fh.write(b"epoch\n")),
                        (kept, lambda fh: fh.write(b"{}\n"))])
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~umask
    assert kept.stat().st_mode & 0o777 == 0o640 and kept.read_text() == "{}\n"


STALE = [".last.npz.k2j4h5g6.tmp", ".best.npz.zz_9yy88.tmp", ".metrics.csv.a1b2c3d4.tmp",
         ".metrics.jsonl.qwertyui.tmp", ".config.json.0o0o0o0o.tmp", ".spec.yaml.abcdefgh.tmp"]
NOT_OURS = ["notes.txt", ".last.npz.tmp", "last.npz.k2j4h5g6.tmp", ".photo.npz.k2j4h5g6.tmp",
            ".last.npz.k2j4h5g6.tmp.bak", ".last.npz.toolong12.tmp"]


def plant(run: Path, names: list[str]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    for name in names:
        (run / name).write_bytes(b"left by a kill -9" * 100)


@pytest.mark.parametrize("resume", [False, True])
def test_stale_checkpoint_temporaries_are_removed_when_the_run_starts_again(
        spec_file: Path, tmp_path: Path, resume: bool) -> None:
    run = tmp_path / "run"
    one_step = ["--train-size", "40", "--batch", "40", "--val-fraction", "0", "--epochs", "1"]
    if resume:
        assert cli_train(spec_file, run, *one_step).exit_code == 0
    plant(run, STALE + NOT_OURS)
    if resume:  # the run has finished: `--resume` has nothing to train, and still tidies
        result = runner.invoke(app, ["train", str(spec_file), "--out", str(run), "--resume"])
    else:
        result = cli_train(spec_file, run, *one_step)
    assert result.exit_code == 0, result.output
    left = sorted(p.name for p in run.iterdir())
    assert not set(STALE) & set(left)
    assert set(NOT_OURS) <= set(left)
    assert all((run / name).read_bytes() == b"left by a kill -9" * 100 for name in NOT_OURS)
    assert C.load_checkpoint(run / "last.npz").epoch == 1


# --------------------------------------------------------------------------- data checks


def test_train_refuses_nan_data_in_one_line(spec_file: Path, tmp_path: Path) -> None:
    x = np.full((20, 12, 12, 3), 0.5, np.float32)
    x[3, 4, 5, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=np.arange(20) % 3)
    one_line_error(cli_train(spec_file, tmp_path / "run", "--data", str(tmp_path / "nan.npz")),
                   2, "nan.npz: 'x' has 1 NaN or infinite values (of 8640)")
    assert not (tmp_path / "run").exists()


def test_train_warns_about_float_data_on_the_0_255_scale(spec_file: Path,
                                                        tmp_path: Path) -> None:
    ds = D.synthetic_shapes(40, width=12, height=12, num_classes=3)
    np.savez(tmp_path / "f255.npz", x=ds.x.astype(np.float32), y=ds.y)
    result = cli_train(spec_file, tmp_path / "run", "--data", str(tmp_path / "f255.npz"),
                       "--epochs", "1", "--quiet")
    assert result.exit_code == 0, result.output
    warning = [line for line in result.stderr.splitlines() if "warning:" in line]
    assert len(warning) == 1 and "f255.npz: float pixels range over" in warning[0]
    assert "divide them by 255" in warning[0]
    np.savez(tmp_path / "f01.npz", x=ds.x.astype(np.float32) / 255, y=ds.y)
    result = cli_train(spec_file, tmp_path / "run2", "--data", str(tmp_path / "f01.npz"),
                       "--epochs", "1", "--quiet")
    assert result.exit_code == 0 and "warning" not in result.stderr


def write_idx_digits(folder: Path, prefix: str, n: int) -> None:
    """`n` 28x28 'digits' (a bright bar whose row is the label) as IDX files, by hand."""
    import struct

    images = np.zeros((n, 28, 28), np.uint8)
    labels = np.arange(n) % 10
    for i, label in enumerate(labels):
        images[i, 4 + 2 * label, 6:22] = 255
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
        struct.pack(">IIII", 0x00000803, n, 28, 28) + images.tobytes())
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
        struct.pack(">II", 0x00000801, n) + labels.astype(np.uint8).tobytes())


def test_lenet5_trains_on_28x28_mnist_digits_with_pad_data(tmp_path: Path) -> None:
    """docs/training.md's MNIST example: LeNet-5 takes 32x32, MNIST is 28x28."""
    mnist = tmp_path / "mnist"
    write_idx_digits(mnist, "train", 16)
    write_idx_digits(mnist, "t10k", 10)
    run = tmp_path / "run"
    args = ["train", "lenet5", "--data", str(mnist), "--val-data", str(mnist), "--epochs", "1",
            "--batch", "8", "--optimizer", "adam", "--lr", "1e-3", "--out", str(run)]
    one_line_error(runner.invoke(app, args), 2,
                   "images are 28x28x1 but the spec's input is 32x32x1: pass --pad-data",
                   "by 2 px (as LeCun et al. did to feed MNIST to LeNet-5)")
    result = runner.invoke(app, [*args, "--pad-data"])
    assert result.exit_code == 0, result.output
    ckpt = C.load_checkpoint(run / "last.npz")
    assert ckpt.epoch == 1 and ckpt.meta["optimizer"]["t"] == 2  # two steps of 8 images
    assert ckpt.meta["info"]["data"].endswith("zero-padded to 32x32")
    evaluated = runner.invoke(app, ["eval", "lenet5", "--weights", str(run / "last.npz"),
                                    "--data", str(mnist), "--pad-data", "-f", "json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["images"] == 10
