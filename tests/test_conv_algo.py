"""--conv-algo: which layers run Winograd F(4x4, 3x3), that they compute what im2col + GEMM
computes (within float32 rounding, and to float64's digits), that the gradient check still
passes, and that train/bench/memory carry the choice through."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cnncli.analysis.memory import estimate
from cnncli.cli.app import app
from cnncli.engine.gradcheck import check_network
from cnncli.engine.kernels.conv_algo import (
    GEMM,
    PLANAR,
    WINOGRAD,
    choose,
    planar_eligible,
    winograd_eligible,
)
from cnncli.engine.network import Network
from cnncli.engine.profile import profile_layers
from cnncli.layers.conv import ConvEngine
from cnncli.render.tables import bench_layout
from cnncli.spec import catalog
from cnncli.spec.parse import load_spec

runner = CliRunner()

# every padding Winograd takes (pad 0 shrinks, pad 2 grows: check warns, the engine runs)
PADS: dict[str, Any] = {
    "name": "pads", "input": "14x14x3",
    "layers": [
        {"conv": {"filters": 8, "size": 3, "pad": 1}}, "relu",
        {"conv": {"filters": 12, "size": 3, "bias": False}}, {"batchnorm": {}}, "relu",
        {"conv": {"filters": 8, "size": 3, "pad": 2}}, {"pool": {"size": 2}},
        {"conv": {"filters": 6, "size": 3, "stride": 2}},  # not eligible: stays GEMM
        {"fc": 5},
    ],
}


# test_train.py's tiny net: its 6 filters are below auto's range, so only --conv-algo
# winograd runs Winograd on it
TINY: dict[str, Any] = {
    "name": "tiny", "input": "12x12x3", "loss": "softmax",
    "layers": [{"conv": {"filters": 6, "size": 3, "pad": 1}}, "relu", {"pool": {"size": 2}},
               {"fc": 3}],
}


def conv_algorithms(net: Network) -> dict[str, str]:
    return {layer.name: layer.algorithm for layer in net.layers
            if isinstance(layer, ConvEngine)}


# --------------------------------------------------------------------------- the policy


def test_eligible_layers_are_3x3_stride_1_undilated_ungrouped_with_pad_0_to_2() -> None:
    ok = dict(size=(3, 3), stride=(1, 1), dilation=(1, 1), groups=1, pad=(1, 1))
    assert winograd_eligible(**ok)  # type: ignore[arg-type]
    for change in (dict(size=(5, 5)), dict(stride=(2, 2)), dict(dilation=(2, 2)),
                   dict(groups=2), dict(pad=(1, 0)), dict(pad=(3, 3))):
        assert not winograd_eligible(**{**ok, **change}), change  # type: ignore[arg-type]
    assert all(winograd_eligible(**{**ok, "pad": (p, p)}) for p in (0, 1, 2))  # type: ignore


def test_auto_picks_winograd_by_shape_inside_the_measured_range() -> None:
    # measured faster on every eligible CIFAR / ResNet-20 layer: 8x8..32x32, 16+ filters
    assert choose("auto", True, 32, 32, 16) == WINOGRAD
    assert choose("auto", True, 8, 8, 128) == WINOGRAD
    # outside what was measured, GEMM: big images, few filters, tiny maps
    assert choose("auto", True, 224, 224, 64) == GEMM
    assert choose("auto", True, 12, 12, 6) == GEMM
    assert choose("auto", True, 4, 4, 256) == GEMM
    # an ineligible layer never runs Winograd; the forced policies do what they say
    assert choose("auto", False, 32, 32, 32) == GEMM
    assert choose("winograd", False, 32, 32, 32) == GEMM
    assert choose("winograd", True, 4, 4, 6) == WINOGRAD
    assert choose("gemm", True, 32, 32, 32) == GEMM
    with pytest.raises(ValueError, match="fast"):
        choose("fast", True, 32, 32, 32)


def test_auto_runs_first_layers_planar_inside_the_measured_range() -> None:
    # 1-3 input channels, stride 1, groups 1: CIFAR's 3->16 / 3->32 and LeNet's 1->6 5x5
    assert planar_eligible(3, (1, 1), 1) and planar_eligible(1, (1, 1), 1)
    assert not planar_eligible(4, (1, 1), 1)
    assert not planar_eligible(3, (2, 2), 1)
    assert not planar_eligible(3, (1, 1), 3)
    assert choose("auto", True, 32, 32, 16, planar=True) == PLANAR
    assert choose("auto", True, 32, 32, 32, planar=True) == PLANAR
    assert choose("auto", False, 28, 28, 6, planar=True) == PLANAR
    # outside what was measured: Winograd or GEMM as before
    assert choose("auto", True, 32, 32, 64, planar=True) == WINOGRAD
    assert choose("auto", True, 224, 224, 64, planar=True) == GEMM
    # the forced policies keep their meaning
    assert choose("winograd", True, 32, 32, 16, planar=True) == WINOGRAD
    assert choose("winograd", False, 28, 28, 6, planar=True) == GEMM
    assert choose("gemm", True, 32, 32, 16, planar=True) == GEMM
    assert (PLANAR.label, WINOGRAD.label, GEMM.label) == (
        "planar im2col+gemm", "winograd F(4x4,3x3)", "im2col+gemm")


def test_the_policy_is_pure_python() -> None:
    code = ("import sys, cnncli.engine.kernels.conv_algo, cnncli.analysis.memory; "
            "print('numpy' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"


def test_bundled_cifar_nets_run_winograd_on_every_eligible_conv_under_auto() -> None:
    net = Network.from_spec("resnet20", conv_algo="auto")
    algos = conv_algorithms(net)
    assert algos["conv1"] == "planar"  # 3 input channels
    assert algos["res1.conv1"] == "winograd"
    assert algos["res4.conv1"] == "gemm"  # 3x3 stride 2
    assert algos["res4.shortcut.conv1"] == "gemm"  # 1x1
    assert sum(a == "winograd" for a in algos.values()) == 16


# --------------------------------------------------------------------------- the engine


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-4), (np.float64, 1e-12)])
def test_winograd_net_computes_what_the_gemm_net_computes(dtype: Any, tol: float) -> None:
    gemm = Network.from_spec(PADS, dtype=dtype, seed=2, conv_algo="gemm")
    wino = Network.from_spec(PADS, dtype=dtype, seed=2, conv_algo="winograd")
    assert conv_algorithms(wino) == {"conv1": "winograd", "conv2": "winograd",
                                     "conv3": "winograd", "conv4": "gemm"}
    assert set(conv_algorithms(gemm).values()) == {"gemm"}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 14, 14, 3)).astype(dtype)
    labels = rng.integers(0, 5, size=5)

    def rel(a: np.ndarray, ref: np.ndarray) -> float:
        return float(np.abs(a - ref).max() / np.abs(ref).max())

    results = []
    for net in (gemm, wino):
        scores = net.forward(x, training=True)
        _, d = net.loss(scores, labels)
        dx = net.backward(d, input_grad=True)
        assert dx is not None
        results.append((scores, dx, net.grads))
    (s_g, dx_g, g_g), (s_w, dx_w, g_w) = results
    assert rel(s_w, s_g) < tol
    assert rel(dx_w, dx_g) < tol
    assert set(g_w) == set(g_g)
    for name in g_g:
        assert rel(g_w[name], g_g[name]) < tol, name
    eval_g, eval_w = gemm.forward(x), wino.forward(x)
    assert rel(eval_w, eval_g) < tol


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-4), (np.float64, 1e-12)])
def test_auto_net_with_a_planar_first_layer_computes_what_the_gemm_net_computes(
        dtype: Any, tol: float) -> None:
    gemm = Network.from_spec(PADS, dtype=dtype, seed=2, conv_algo="gemm")
    auto = Network.from_spec(PADS, dtype=dtype, seed=2, conv_algo="auto")
    # conv1: 3 channels -> planar; conv2, conv3: 12 and 8 filters, under Winograd's range
    assert conv_algorithms(auto) == {"conv1": "planar", "conv2": "gemm", "conv3": "gemm",
                                     "conv4": "gemm"}
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 14, 14, 3)).astype(dtype)
    labels = rng.integers(0, 5, size=5)
    results = []
    for net in (gemm, auto):
        scores = net.forward(x, training=True)
        _, d = net.loss(scores, labels)
        dx = net.backward(d, input_grad=True)  # the first layer's dx too
        assert dx is not None
        results.append((scores, dx, net.grads))
    for got, ref in zip(results[1][:2], results[0][:2], strict=True):
        assert np.abs(got - ref).max() <= tol * np.abs(ref).max()
    for name, ref in results[0][2].items():
        assert np.abs(results[1][2][name] - ref).max() <= tol * np.abs(ref).max(), name


def test_float64_gradient_check_passes_with_a_planar_first_layer() -> None:
    net = Network.from_spec(PADS, dtype=np.float64, seed=3, conv_algo="auto")
    assert conv_algorithms(net)["conv1"] == "planar"
    checks = check_network(net, batch=2, samples=6, seed=1)
    bad = [(c.layer, c.what, c.max_rel_error) for c in checks if not c.passed]
    assert not bad
    assert "conv1" in {c.layer for c in checks}


def test_float64_gradient_check_passes_with_winograd() -> None:
    net = Network.from_spec(PADS, dtype=np.float64, seed=3, conv_algo="winograd")
    assert conv_algorithms(net)["conv2"] == "winograd"
    checks = check_network(net, batch=2, samples=6, seed=1)
    bad = [(c.layer, c.what, c.max_rel_error) for c in checks if not c.passed]
    assert not bad
    assert {"conv1", "conv2", "conv3"} <= {c.layer for c in checks}


@pytest.mark.torch
@pytest.mark.parametrize("pad", [0, 1, 2])
def test_winograd_layer_matches_torch_conv2d(pad: int) -> None:
    import torch

    spec = {"name": "one", "input": "11x9x4",
            "layers": [{"conv": {"filters": 5, "size": 3, "pad": pad}}]}
    net = Network.from_spec(spec, dtype=np.float64, seed=1, conv_algo="winograd")
    assert conv_algorithms(net) == {"conv1": "winograd"}
    x = np.random.default_rng(pad).standard_normal((3, 9, 11, 4))
    y = net.forward(x, training=True)
    dy = np.random.default_rng(9).standard_normal(y.shape)
    dx = net.backward(dy, input_grad=True)
    assert dx is not None
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
    w = torch.from_numpy(net.params["conv1.weight"]).requires_grad_()
    b = torch.from_numpy(net.params["conv1.bias"]).requires_grad_()
    yt = torch.nn.functional.conv2d(xt, w, b, padding=pad)
    yt.backward(torch.from_numpy(dy.transpose(0, 3, 1, 2).copy()))
    np.testing.assert_allclose(y, yt.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-10,
                               atol=1e-12)
    assert xt.grad is not None and w.grad is not None and b.grad is not None
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(net.grads["conv1.weight"], w.grad.numpy(), rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(net.grads["conv1.bias"], b.grad.numpy(), rtol=1e-10)


# --------------------------------------------------------------------------- the commands


def test_train_conv_algo_winograd_runs_an_epoch_and_resume_keeps_it(tmp_path: Path) -> None:
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(TINY, sort_keys=False), encoding="utf-8")
    run = tmp_path / "run"
    args = ["train", str(spec_file), "--train-size", "80", "--batch", "40", "--out", str(run)]
    result = runner.invoke(app, [*args, "--epochs", "1", "--conv-algo", "winograd"])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert "winograd" in json.dumps(config)
    # a resume runs what the run ran; asking for another algorithm is refused
    changed = runner.invoke(app, [*args, "--epochs", "2", "--resume", "--conv-algo", "gemm"])
    assert changed.exit_code == 2
    assert changed.stderr.strip().startswith("error: --conv-algo gemm differs from the run's "
                                             "winograd")
    resumed = runner.invoke(app, [*args, "--epochs", "2", "--resume"])
    assert resumed.exit_code == 0, resumed.output


def test_bad_conv_algo_is_one_line_and_exit_2() -> None:
    result = runner.invoke(app, ["bench", "cifar_tiny", "--conv-algo", "fast"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "fast" in result.stderr


def test_bench_shows_alexnet_conv1_as_im2col_matrices() -> None:
    # the notes: conv1 of AlexNet stretches 11x11x3 patches into X_col [363 x 3025]
    # (55*55 positions) and the 96 filters into W_row [96 x 363]
    result = runner.invoke(app, ["bench", "alexnet", "--batch", "1", "--iterations", "1"])
    assert result.exit_code == 0, result.output
    conv1 = next(line for line in result.stdout.splitlines() if line.startswith("conv1 "))
    assert "gemm" in conv1
    assert "X_col [363 x 3025] per image, W_row [96 x 363]" in conv1


def test_bench_shows_which_layers_ran_winograd_and_their_tiles() -> None:
    spec = load_spec(catalog.resolve("cifar_small"))
    result = json.loads(json.dumps(profile_layers(spec, None, 2, 1, None, "winograd")))
    assert result["conv_algo"] == "winograd"
    rows = {r["name"]: r for r in result["layers"]}
    assert rows["conv1"]["algorithm"] == "winograd + relu1"  # the ReLU after it, fused
    # 32x32 outputs in 4x4 tiles: 8 x 8 tiles per image; 6x6 = 36 products per tile block
    assert rows["conv1"]["matrices"] == ("F(4x4,3x3): 64 tiles/image, 36 GEMMs of "
                                         "[tiles x 3] x [3 x 32]")
    assert rows["fc1"]["algorithm"] is None
    wide = [line for line, _ in bench_layout(result, 240).lines]
    assert any("winograd" in line and "64 tiles/image" in line for line in wide)
    # at 100 columns the layer, its algorithm and its times stay; nothing is cut
    narrow = bench_layout(result, 100)
    assert all(len(line) <= 100 for line, _ in narrow.lines)
    assert not narrow.records
    assert any(line.startswith("conv1 ") and "winograd" in line for line, _ in narrow.lines)


# cifar_vgg_bn's conv5 (8x8 maps) has a single dW chunk at batch 16: numba's parallel loop
# then allocates one more Z and S block than the running thread's (sizes.py)
@pytest.mark.parametrize("name", ["cifar_small", "cifar_vgg_bn"])
def test_memory_estimate_with_winograd_is_within_1_percent_of_the_measured_peak(
        name: str) -> None:
    from cnncli.engine.measure import measure

    spec = load_spec(catalog.resolve(name))
    measured = measure(spec, 16, threads=2, conv_algo="winograd")["peak_bytes"]
    estimated = estimate(spec, batch=16, threads=2, conv_algo="winograd").peak
    assert abs(estimated / measured - 1) < 0.01, (estimated, measured)
    # Winograd's workspace is not im2col's: the plan follows the algorithm
    assert estimated != estimate(spec, batch=16, threads=2, conv_algo="gemm").peak


@pytest.mark.parametrize("name", ["cifar_small", "lenet5"])
def test_memory_estimate_with_a_planar_first_layer_is_within_1_percent_of_the_measured_peak(
        name: str) -> None:
    from cnncli.engine.measure import measure

    spec = load_spec(catalog.resolve(name))
    for mode in ("train", "infer"):
        measured = measure(spec, 16, mode=mode, threads=2, conv_algo="auto")["peak_bytes"]
        estimated = estimate(spec, batch=16, mode=mode, threads=2, conv_algo="auto").peak
        assert abs(estimated / measured - 1) < 0.01, (mode, estimated, measured)


def test_bench_shows_the_planar_first_layer_and_its_matrices() -> None:
    spec = load_spec(catalog.resolve("cifar_small"))
    result = json.loads(json.dumps(profile_layers(spec, None, 2, 1, None, "auto")))
    conv1 = next(r for r in result["layers"] if r["name"] == "conv1")
    assert conv1["algorithm"] == "planar + relu1"
    # 32x32 positions, 3x3x3 taps, 32 filters
    assert conv1["matrices"] == ("planar: X_col [27 x 1024] per image from input planes, "
                                 "W_row [32 x 27]")


def test_memory_command_counts_the_workspace_of_the_chosen_algorithm() -> None:
    def conv1_workspace(algo: str) -> int:
        result = runner.invoke(app, ["memory", "cifar_small", "--threads", "2",
                                     "--conv-algo", algo, "-f", "json"])
        assert result.exit_code == 0, result.output
        layers = json.loads(result.stdout)["layers"]
        return int(next(r for r in layers if r["name"] == "conv1")["workspace_bytes"])

    spec = load_spec(catalog.resolve("cifar_small"))
    wino = estimate(spec, threads=2, conv_algo="winograd")
    assert conv1_workspace("winograd") == wino.layers[0].workspace_bytes
    assert conv1_workspace("winograd") != conv1_workspace("gemm")


@pytest.mark.parametrize("policy", ["auto", "gemm", "winograd"])
@pytest.mark.parametrize("name", ["resnet20", "alexnet", "googlenet"])
def test_memory_names_the_algorithm_each_conv_runs_as_the_engine_does(name: str,
                                                                      policy: str) -> None:
    """The plan and the engine ask the same question: `cnncli memory` names, per conv, the
    algorithm whose workspace it counts, in `cnncli bench`'s words; other layers name none."""
    spec = load_spec(catalog.resolve(name))
    report = estimate(spec, threads=2, conv_algo=policy)
    named = {lm.name: lm.algorithm for lm in report.layers}
    assert conv_algorithms(Network.from_spec(name, conv_algo=policy)) == {
        n: a for n, a in named.items() if a is not None}
    assert all(lm.algorithm is None for lm in report.layers if lm.kind != "conv")


def test_memory_table_and_json_show_the_algorithm() -> None:
    result = runner.invoke(app, ["memory", "resnet20", "-f", "json"])
    assert result.exit_code == 0, result.output
    layers = {r["name"]: r["algorithm"] for r in json.loads(result.stdout)["layers"]}
    assert (layers["conv1"], layers["res1.conv1"], layers["res4.conv1"], layers["bn1"]) == (
        "planar", "winograd", "gemm", None)
    result = runner.invoke(app, ["memory", "resnet20"], env={"COLUMNS": "220"})
    row = next(line for line in result.stdout.splitlines() if "res1.conv1" in line)
    assert row.split()[:3] == ["res1.conv1", "conv", "winograd"]
