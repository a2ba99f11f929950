"""`cnncli memory`: the notes' figures, the itemised model against the engine (what it
keeps, what a step measures), the options, the budget search and the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from typer.testing import CliRunner

from cnncli.analysis.memory import (
    OPTIMIZER_SLOTS,
    MemoryOptionError,
    estimate,
    largest_batch,
    parse_bytes,
    simulate,
)
from cnncli.analysis.report import analyze
from cnncli.cli.app import app
from cnncli.spec import catalog
from cnncli.spec.parse import Spec, load_spec, parse_spec

runner = CliRunner()
MiB, GiB = 2**20, 2**30


def spec_of(name: str) -> Spec:
    return load_spec(catalog.resolve(name))


def invoke(*args: str):  # type: ignore[no-untyped-def]
    result = runner.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"{args}: {result.exception!r}"
    return result


# Every layer type and block the engine has, small enough to run in a test.
EVERY_LAYER = {
    "name": "every layer", "input": "16x16x3", "loss": "softmax", "rounding": "floor",
    "layers": [
        {"conv": {"filters": 8, "size": 3, "pad": 1}}, "relu",
        {"lrn": {"size": 3}},
        {"pool": {"size": 2, "stride": 2, "type": "l2"}},            # 8x8x8
        "batchnorm", "leaky_relu",
        {"residual": {"layers": [{"conv": {"filters": 8, "size": 3, "pad": 1}}, "batchnorm",
                                 "tanh", {"conv": {"filters": 8, "size": 3, "pad": 1}}]}},
        "relu",
        {"residual": {"layers": [{"conv": {"filters": 16, "size": 3, "stride": 2, "pad": 1}}],
                      "shortcut": [{"conv": {"filters": 16, "size": 1, "stride": 2}}]}},
        {"concat": [[{"conv": {"filters": 4, "size": 1}}, "sigmoid"],
                    [{"pool": {"size": 3, "stride": 1, "pad": 1}},
                     {"conv": {"filters": 16, "size": 3, "pad": 1, "groups": 16}}]]},
        {"local": {"filters": 4, "size": 3}},                         # 2x2x4
        {"pool": {"size": 2, "stride": 2, "type": "avg"}},
        {"fc": 32}, "relu", {"dropout": 0.5}, {"fc": 10},
    ],
}


# --------------------------------------------------------------------------- the notes


def test_vgg16_forward_activations_are_the_notes_rows() -> None:
    r = estimate(spec_of("vgg16"), batch=1)
    forward = r.rules[0]
    # the notes' rows: input + every CONV/POOL/FC output = 15,237,608 numbers per image
    assert forward["numbers_per_image"] == 15_237_608
    assert forward["bytes"] == 15_237_608 * 4
    assert round(forward["bytes"] / MiB, 1) == 58.1
    # ...which is not the "TOTAL memory: 24M * 4 bytes ~= 93MB" of the notes' last line
    assert any("15,237,608" in n and "24M" in n and "does not match" in n for n in r.notes)


def test_notes_rules_of_thumb_sit_next_to_the_exact_items() -> None:
    r = estimate(spec_of("vgg16"), batch=64, optimizer="momentum")
    twice, thrice = r.rules[1], r.rules[2]
    assert "*2" in twice["rule"] and twice["bytes"] == 2 * 15_237_608 * 4 * 64
    assert twice["exact"] == r.item("kept").bytes + r.item("grad").bytes
    # exact is less than "x2": backward never holds every activation gradient at once
    assert twice["exact"] < twice["bytes"]
    params = 138_357_544
    assert "x3" in thrice["rule"] and thrice["bytes"] == 3 * params * 4
    assert thrice["exact"] == 3 * params * 4  # momentum: params + grads + velocity
    adam = estimate(spec_of("vgg16"), batch=64, optimizer="adam")
    assert adam.rules[2]["exact"] == 4 * params * 4  # "x3 or more"


def test_most_memory_early_most_parameters_in_the_first_fc() -> None:
    r = estimate(spec_of("vgg16"), batch=1)
    kept = sorted(r.layers, key=lambda lm: lm.kept_bytes, reverse=True)
    assert {kept[0].name, kept[1].name} == {"conv1", "conv2"}  # the two [224x224x64] convs
    assert kept[0].output == "[224x224x64]"
    fc1 = max(r.layers, key=lambda lm: lm.parameters)
    assert fc1.name == "fc1" and fc1.parameters == 102_764_544
    assert any("most parameters: fc1" in n and "74%" in n for n in r.notes)


# --------------------------------------------------------------------------- the items


def test_items_training_step() -> None:
    r = estimate(spec_of("vgg16"), batch=64)
    keys = [it.key for it in r.items]
    assert keys == ["input", "kept", "flight", "grad", "param", "pgrad", "opt", "work"]
    assert r.item("input").numbers == 64 * (224 * 224 * 3 + 1)  # images and labels
    assert r.item("input").bytes == 64 * (224 * 224 * 3 * 4 + 8)
    assert r.item("param").numbers == 138_357_544
    assert r.item("pgrad").numbers == 138_357_544
    assert r.item("opt").numbers == 138_357_544
    assert r.item("param").bytes_per_image == 0  # shared by the batch
    # per image x batch = the batch-proportional part exactly
    assert r.item("kept").bytes >= 64 * r.item("kept").bytes_per_image
    assert r.peak <= r.total
    assert sum(r.peak_parts.values()) == r.peak
    assert r.peak_where.startswith("backward of")


def test_in_place_relu_counts_once_and_pool_keeps_int32_switches() -> None:
    r = estimate(spec_of("cifar_small"), batch=1)
    rows = {lm.name: lm for lm in r.layers}
    assert rows["conv1"].kept == ["output"]  # read by relu1 (in place) and pool1: once
    assert rows["conv1"].kept_bytes == 32 * 32 * 32 * 4
    assert rows["relu1"].kept_bytes == 0
    assert sorted(rows["pool1"].kept) == ["output", "switches (int32)"]
    assert rows["pool1"].kept_bytes == 2 * 16 * 16 * 32 * 4
    f64 = estimate(spec_of("cifar_small"), batch=1, dtype="float64")
    assert {lm.name: lm for lm in f64.layers}["pool1"].kept_bytes == 16 * 16 * 32 * (8 + 4)


def test_optimizer_state_and_dtype() -> None:
    spec = spec_of("cifar_small")
    params = analyze(spec).parameters
    for name, slots in OPTIMIZER_SLOTS.items():
        assert estimate(spec, batch=8, optimizer=name).item("opt").numbers == slots * params
    f32, f64, f16 = (estimate(spec, batch=8, dtype=d) for d in ("float32", "float64", "float16"))
    assert f64.item("param").bytes == 2 * f32.item("param").bytes == 4 * f16.item("param").bytes
    assert f64.bytes_per_number == 8 and f16.bytes_per_number == 2


def test_bad_options_name_the_value() -> None:
    with pytest.raises(MemoryOptionError, match="got 'float8'"):
        estimate(spec_of("lenet5"), dtype="float8")
    with pytest.raises(MemoryOptionError, match="got 'lbfgs'"):
        estimate(spec_of("lenet5"), optimizer="lbfgs")
    with pytest.raises(MemoryOptionError, match="got 0"):
        estimate(spec_of("lenet5"), batch=0)


def test_inference_keeps_only_the_live_activations() -> None:
    spec = spec_of("vgg16")
    infer = estimate(spec, batch=1, mode="infer")
    assert [it.key for it in infer.items] == ["input", "flight", "param", "work"]
    # the notes' test-time trick: the largest pair of consecutive volumes, not the sum
    assert infer.item("flight").numbers == 2 * 224 * 224 * 64
    train = estimate(spec, batch=1)
    assert infer.peak < train.peak
    assert infer.item("flight").bytes < infer.rules[0]["bytes"] / 2


# --------------------------------------------------------------------------- the budget


def test_parse_bytes() -> None:
    assert parse_bytes("12GiB") == 12 * GiB
    assert parse_bytes("12 GB") == 12 * 10**9
    assert parse_bytes("512MiB") == 512 * MiB
    assert parse_bytes("1.5GiB") == 3 * GiB // 2
    assert parse_bytes("4096") == 4096
    for bad in ("twelve", "12XB", "0GiB", ""):
        with pytest.raises(MemoryOptionError, match="budget"):
            parse_bytes(bad)


def test_largest_batch_is_the_edge() -> None:
    spec = spec_of("cifar_small")
    report = analyze(spec)
    budget = 200 * MiB
    best, peak, nxt = largest_batch(spec, budget, threads=2)
    assert peak <= budget < nxt
    heap, _ = simulate(report, best, threads=2)
    assert heap.peak == peak
    heap, _ = simulate(report, best + 1, threads=2)
    assert heap.peak == nxt
    assert largest_batch(spec, 1024, threads=2)[0] == 0


# --------------------------------------------------------------------------- the engine


def test_plans_make_the_engines_in_place_choices() -> None:
    from cnncli.engine.network import Network

    for spec in (spec_of("resnet18"), spec_of("googlenet"), parse_spec(EVERY_LAYER)):
        net = Network(spec)
        engine = {lay.name for lay in net.layers if getattr(lay, "in_place", False)}
        _, layers = simulate(analyze(spec), 1, threads=2)
        planned = {lay.name for lay in layers if lay.in_place}
        assert planned == engine and engine


def test_activations_and_dropout_allocate_only_their_outputs_and_masks() -> None:
    """Their backward writes over dy and their forward into the output: no workspace, no
    new gradient; only sigmoid in place needs exp(-|x|) beside x."""
    spec = parse_spec({"input": "8x8x4", "layers": [
        {"conv": {"filters": 4, "size": 3, "pad": 1}}, "relu", {"leaky_relu": {}}, "tanh",
        "sigmoid", {"dropout": 0.5}, {"fc": 3}]})
    r = estimate(spec, batch=16, threads=2)
    work = {lm.name: lm.workspace_bytes for lm in r.layers}
    assert work["relu1"] == work["lrelu1"] == work["tanh1"] == work["drop1"] == 0
    assert work["sigmoid1"] == 16 * 8 * 8 * 4 * 4
    kept = {lm.name: lm.kept_bytes for lm in r.layers}
    assert kept["drop1"] == 16 * 8 * 8 * 4 * 4  # the scaled mask


def _engine_kept_bytes(net: Any) -> int:
    """Bytes of the distinct arrays the engine's layers hold for backward."""
    import numpy as np

    seen: dict[int, int] = {}

    def walk(value: Any) -> None:
        if isinstance(value, np.ndarray):
            base = value.base if isinstance(value.base, np.ndarray) else value
            seen[id(base)] = base.nbytes
        elif isinstance(value, tuple):
            for v in value:
                walk(v)

    for layer in net.layers:
        for key, value in vars(layer).items():
            if key.startswith("_saved"):
                walk(value)
    return sum(seen.values())


@pytest.mark.parametrize("name", ["cifar_small", "every_layer"])
def test_kept_activations_are_what_the_engine_keeps(name: str) -> None:
    import numpy as np

    from cnncli.engine.network import Network

    spec = parse_spec(EVERY_LAYER) if name == "every_layer" else spec_of(name)
    batch = 3
    net = Network(spec)
    v = net.input
    x = np.random.default_rng(0).standard_normal((batch, v.h, v.w, v.d), dtype=np.float32)
    net.forward(x, training=True)
    r = estimate(spec, batch=batch, threads=2)
    # the first conv keeps the input batch itself (its own item)
    assert _engine_kept_bytes(net) == r.item("kept").bytes + x.nbytes


@pytest.mark.parametrize("name,mode,batch", [("every_layer", "train", 32),
                                             ("cifar_small", "train", 8),
                                             ("lenet5", "infer", 64)])
def test_estimate_is_within_10_percent_of_the_measured_peak(name: str, mode: str,
                                                            batch: int) -> None:
    from cnncli.engine.measure import measure

    spec = parse_spec(EVERY_LAYER) if name == "every_layer" else spec_of(name)
    measured = measure(spec, batch, mode=mode, threads=2)["peak_bytes"]
    estimated = estimate(spec, batch=batch, mode=mode, threads=2).peak
    assert abs(estimated / measured - 1) < 0.10, (estimated, measured)


# --------------------------------------------------------------------------- the command


def test_cli_table() -> None:
    result = invoke("memory", "vgg16", "--batch", "64")
    assert result.exit_code == 0, result.output
    text = result.output
    for needle in ("VGG16 [224x224x3]: training step, batch 64, float32 (4 bytes per number)",
                   "activations kept for backward", "gradients of activations",
                   "parameter gradients", "optimizer state (momentum: 1x parameters)",
                   "workspace", "total (each item at its own peak)", "peak (most alive",
                   "GiB", "MiB", "138,357,544", "rules of thumb", "15,237,608"):
        assert needle in text, needle


def test_cli_json_and_options() -> None:
    result = invoke("memory", "cifar_small", "--batch", "16", "--optimizer", "adam",
                    "--dtype", "float64", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["batch"] == 16 and data["dtype"] == "float64" and data["bytes_per_number"] == 8
    items = {it["item"]: it for it in data["items"]}
    assert items["opt"]["numbers"] == 2 * 113_738
    assert data["peak_bytes"] <= data["total_bytes"]
    infer = json.loads(invoke("memory", "cifar_small", "--mode", "infer", "-f", "json").output)
    assert infer["optimizer"] is None and "opt" not in {it["item"] for it in infer["items"]}


def test_cli_budget() -> None:
    result = invoke("memory", "vgg16", "--budget", "12GiB", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    best = data["budget"]["largest_batch"]
    assert best > 1 and data["batch"] == best
    assert data["peak_bytes"] <= 12 * GiB < data["budget"]["next_batch_peak_bytes"]
    text = invoke("memory", "vgg16", "--budget", "12GiB").output
    assert f"largest batch that fits in 12GiB (12.00 GiB): {best}" in text
    small = invoke("memory", "vgg16", "--budget", "100MiB")
    assert small.exit_code == 1 and "does not fit" in small.output


def test_cli_errors() -> None:
    assert invoke("memory", "vgg16", "--budget", "lots").exit_code == 2
    assert invoke("memory", "vgg16", "--dtype", "int8").exit_code == 2
    assert invoke("memory", "no-such-net").exit_code == 2
    bad = invoke("memory", "alexnet_torchvision", "--rounding", "strict")
    assert bad.exit_code == 1
    f16 = invoke("memory", "lenet5", "--dtype", "float16", "--measure")
    assert f16.exit_code == 2 and "float32 and float64 only" in f16.output


def test_memory_does_not_import_numba() -> None:
    """`memory` answers at once because it walks the plans in pure Python: what it loads
    is the test (a stopwatch would fail on a loaded machine), numpy and numba never."""
    code = ("import sys\n"
            "from typer.testing import CliRunner\n"
            "from cnncli.cli.app import app\n"
            "for args in (['memory', 'vgg16', '--batch', '64'],\n"
            "             ['memory', 'resnet50', '--budget', '12GiB'],\n"
            "             ['memory', 'googlenet', '--mode', 'infer', '-f', 'json']):\n"
            "    r = CliRunner().invoke(app, args)\n"
            "    assert r.exit_code == 0, (args, r.output)\n"
            "print(sorted(m for m in ('numba', 'numpy', 'scipy', 'torch') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout
