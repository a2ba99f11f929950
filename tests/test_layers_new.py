"""Layer types added through cnncli/layers/ alone (issue #10): PReLU and ELU.

Each is checked the way the notes check a layer: its settings and their errors, its row
of the report, a float64 gradient check, PyTorch's forward and backward, the memory plan
against a measured step, and `cnncli check` on a spec that uses it."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cnncli.analysis.memory import estimate
from cnncli.analysis.report import analyze
from cnncli.cli.app import app
from cnncli.engine.gradcheck import check_network
from cnncli.engine.network import Network
from cnncli.layers import ELU, PReLU
from cnncli.spec.parse import SpecInvalid, load_spec, parse_spec
from cnncli.spec.write import spec_to_dict

runner = CliRunner()


def net_with(*activation: Any) -> dict[str, Any]:
    """conv -> ACTIVATION -> pool -> fc: small enough for a gradient check."""
    return {"name": "small", "input": "8x8x3", "layers": [
        {"conv": {"filters": 4, "size": 3, "pad": 1}}, *activation,
        {"pool": {"size": 2, "stride": 2}}, {"fc": 5}]}


def parse_problems(layer: Any) -> list[str]:
    with pytest.raises(SpecInvalid) as info:
        parse_spec(net_with(layer))
    return [p.message for p in info.value.problems]


def nchw(a: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))


# --------------------------------------------------------------------------- prelu


def test_prelu_parses_with_pytorchs_initial_slope() -> None:
    layers = parse_spec(net_with("prelu", {"prelu": 0.1}, {"prelu": {"init": 0}})).layers
    assert layers[1] == PReLU("prelu1", 0, 0.25)  # a dict has no lines
    assert [getattr(n, "init", None) for n in layers[1:4]] == [0.25, 0.1, 0.0]


@pytest.mark.parametrize("layer,message", [
    ({"prelu": 1.5}, "layers[1] (prelu1).init: expected a number in [0.0, 1.0], got 1.5"),
    ({"prelu": {"slope": 0.1}}, "layers[1] (prelu1): unknown setting 'slope' (known: init)"),
])
def test_prelu_bad_setting_is_one_clear_error(layer: Any, message: str) -> None:
    assert parse_problems(layer) == [message]


def test_prelu_row_counts_one_slope_per_channel_and_its_activations() -> None:
    report = analyze(parse_spec(net_with("prelu")))
    row = next(r for r in report.layers if r.name == "prelu1")
    assert row.settings == "init 0.25"
    assert row.weights == 4 and row.biases == 0
    assert row.params == {"prelu1.weight": (4,)}
    # it writes a new output (backward reads its input): counted, unlike ReLU's
    assert not row.in_place
    relu = analyze(parse_spec(net_with("relu")))
    assert report.parameters == relu.parameters + 4
    assert report.activations == relu.activations + 8 * 8 * 4


def test_prelu_starts_at_init_and_takes_no_weight_decay() -> None:
    net = Network.from_spec(net_with({"prelu": 0.1}))
    assert np.array_equal(net.params["prelu1.weight"], np.full(4, 0.1, np.float32))
    layer = next(lay for lay in net.layers if lay.name == "prelu1")
    assert not layer.decays


def test_prelu_passes_the_gradient_check() -> None:
    net = Network.from_spec(net_with("prelu"), dtype=np.float64, seed=0)
    # slopes away from 0.25 and one negative: the gradient must not assume a > 0
    net.set_param("prelu1.weight", np.array([0.25, -0.3, 0.7, 1.4]))
    checks = check_network(net, samples=8, seed=0)
    assert [(c.layer, c.what) for c in checks if not c.passed] == []
    assert any(c.what == "prelu1.weight" for c in checks)


@pytest.mark.torch
def test_prelu_forward_and_backward_equal_torch() -> None:
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    net = Network.from_spec({"input": "5x4x3", "layers": ["prelu"]}, dtype=np.float64)
    a = np.array([0.25, -0.5, 1.5])
    net.set_param("prelu1.weight", a)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 5, 3))
    dy = rng.standard_normal(x.shape)
    y = net.forward(x, training=True)
    dx = net.backward(dy, input_grad=True)
    assert dx is not None

    tx = nchw(x).requires_grad_()
    ta = torch.from_numpy(a).requires_grad_()
    ty = F.prelu(tx, ta)
    ty.backward(nchw(dy))
    assert np.allclose(nchw(y).numpy(), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    assert tx.grad is not None and ta.grad is not None
    assert np.allclose(nchw(dx).numpy(), tx.grad.numpy(), rtol=1e-12, atol=1e-12)
    assert np.allclose(net.grads["prelu1.weight"], ta.grad.numpy(), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- elu


def test_elu_parses_with_alpha_1_by_default() -> None:
    layers = parse_spec(net_with("elu", {"elu": 0.5}, {"elu": {"alpha": 0}})).layers
    assert layers[1] == ELU("elu1", 0, 1.0)  # a dict has no lines
    assert [getattr(n, "alpha", None) for n in layers[1:4]] == [1.0, 0.5, 0.0]


@pytest.mark.parametrize("layer,message", [
    ({"elu": -1}, "layers[1] (elu1).alpha: expected a number in [0.0, inf], got -1"),
    ({"elu": {"slope": 0.1}}, "layers[1] (elu1): unknown setting 'slope' (known: alpha)"),
])
def test_elu_bad_setting_is_one_clear_error(layer: Any, message: str) -> None:
    assert parse_problems(layer) == [message]


def test_elu_row_has_no_parameters_and_runs_in_place() -> None:
    report = analyze(parse_spec(net_with({"elu": 0.5})))
    row = next(r for r in report.layers if r.name == "elu1")
    assert row.settings == "alpha 0.5"
    assert row.params == {} and row.parameters == 0
    assert row.in_place
    relu = analyze(parse_spec(net_with("relu")))
    assert report.activations == relu.activations
    assert ELU.picture_label("alpha 1") == "ELU" and ELU.picture_label("alpha 0.5") == "ELU 0.5"


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_elu_passes_the_gradient_check(alpha: float) -> None:
    net = Network.from_spec(net_with({"elu": alpha}), dtype=np.float64, seed=0)
    checks = check_network(net, samples=8, seed=0)
    assert [(c.layer, c.what) for c in checks if not c.passed] == []
    assert any(c.layer == "elu1" for c in checks)


@pytest.mark.torch
@pytest.mark.parametrize("alpha", [1.0, 0.3, 0.0])
@pytest.mark.parametrize("in_place", [False, True])
def test_elu_forward_and_backward_equal_torch(alpha: float, in_place: bool) -> None:
    pytest.importorskip("torch")
    import torch.nn.functional as F

    # after a conv, the engine overwrites the conv's output; first, it may not
    layers: list[Any] = [{"elu": alpha}]
    if in_place:
        layers.insert(0, {"conv": {"filters": 3, "size": 1}})
    net = Network.from_spec({"input": "5x4x3", "layers": layers}, dtype=np.float64)
    if in_place:
        net.set_param("conv1.weight", np.eye(3).reshape(3, 3, 1, 1))
        net.set_param("conv1.bias", np.zeros(3))
    assert (getattr(net.layers[-1], "in_place", False)) == in_place
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 5, 3)) * 3
    dy = rng.standard_normal(x.shape)
    y = net.forward(x, training=True)
    dx = net.backward(dy, input_grad=True)
    assert dx is not None

    tx = nchw(x).requires_grad_()
    ty = F.elu(tx, alpha)
    ty.backward(nchw(dy))
    assert np.allclose(nchw(y).numpy(), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    assert tx.grad is not None
    assert np.allclose(nchw(dx).numpy(), tx.grad.numpy(), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- all of them

SPEC = """
name: new activations
input: 16x16x3
layers:
  - conv: {filters: 16, size: 3, pad: 1}
  - prelu
  - pool: {size: 2, stride: 2}
  - conv: {filters: 8, size: 3, pad: 1}
  - prelu: {init: 0.1}
  - conv: {filters: 8, size: 3, pad: 1}
  - elu
  - fc: 10
  - elu: 0.5
"""


def write_spec(tmp_path: Path) -> Path:
    path = tmp_path / "net.yaml"
    path.write_text(textwrap.dedent(SPEC).lstrip(), encoding="utf-8")
    return path


def test_check_accepts_a_spec_using_the_new_layers(tmp_path: Path) -> None:
    result = runner.invoke(app, ["check", str(write_spec(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "init 0.25" in result.output and "init 0.1" in result.output
    assert "alpha 1" in result.output and "alpha 0.5" in result.output


def test_spec_with_the_new_layers_round_trips_through_yaml(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path))
    again = parse_spec(yaml.safe_load(yaml.safe_dump(spec_to_dict(spec))))
    settings = [(n.name, n.kind, n.settings_text()) for n in spec.layers]
    assert [(n.name, n.kind, n.settings_text()) for n in again.layers] == settings


@pytest.mark.parametrize("layer", ["prelu", "elu"])
@pytest.mark.parametrize("batch", [16, 64])
def test_memory_plan_is_within_1_percent_of_the_measured_peak(layer: str, batch: int) -> None:
    """conv -> LAYER -> pool -> fc, the step's peak at the new layer's backward."""
    from cnncli.engine.measure import measure

    spec = parse_spec({"name": layer, "input": "16x16x3", "layers": [
        {"conv": {"filters": 16, "size": 3, "pad": 1}}, layer,
        {"pool": {"size": 2, "stride": 2}}, {"fc": 10}]})
    measured = measure(spec, batch, threads=2)["peak_bytes"]
    estimated = estimate(spec, batch=batch, threads=2).peak
    assert abs(estimated / measured - 1) < 0.01, (estimated, measured)
