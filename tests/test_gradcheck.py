"""The gradient check's verdicts: the notes' relative error, floored at the finite
difference's own rounding noise, so that a gradient that is truly zero (a conv bias right
before batchnorm) passes and a wrong backward still fails."""

from __future__ import annotations

import numpy as np
import pytest

from cnncli.engine.gradcheck import THRESHOLD, Check, check_network, rel_error, rounding_noise
from cnncli.engine.network import Network

# conv (with its default bias) -> batchnorm, as users write it: batchnorm subtracts each
# channel's mean, so the conv bias has no effect and its true gradient is exactly 0
CONV_BN = {"input": "6x6x2", "layers": [
    {"conv": {"filters": 3, "size": 3, "pad": 1}}, "batchnorm", "relu",
    {"conv": {"filters": 4, "size": 3, "pad": 1}}, "batchnorm", "relu",
    {"fc": 3}]}


def conv_bn_net() -> Network:
    return Network.from_spec(CONV_BN, dtype=np.float64, seed=0)


def failed(checks: list[Check]) -> list[tuple[str, str]]:
    return [(c.layer, c.what) for c in checks if not c.passed]


def test_conv_with_bias_before_batchnorm_passes_the_gradient_check() -> None:
    checks = check_network(conv_bn_net(), samples=6, seed=0)
    assert failed(checks) == []
    # the cancelled biases are where the old ratio was noise over noise (~1)
    cancelled = [c for c in checks if c.layer == "(net)" and c.what.endswith("conv1.bias")]
    assert len(cancelled) == 1 and cancelled[0].numeric_all_zero
    assert cancelled[0].max_rel_error <= THRESHOLD


def test_a_backward_that_returns_zeros_still_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    net = conv_bn_net()
    conv2 = next(layer for layer in net.layers if layer.name == "conv2")
    backward = conv2.backward

    def zeros(dy: np.ndarray) -> np.ndarray:
        dx = backward(dy)
        for key in conv2.grads:
            conv2.grads[key] = np.zeros_like(conv2.grads[key])
        return np.zeros_like(dx)
    monkeypatch.setattr(conv2, "backward", zeros)
    checks = check_network(net, samples=6, seed=0)
    bad = failed(checks)
    assert ("conv2", "input") in bad and ("conv2", "conv2.weight") in bad
    assert ("(net)", "conv2.weight") in bad and ("(net)", "conv1.weight") in bad
    weight = next(c for c in checks if (c.layer, c.what) == ("conv2", "conv2.weight"))
    assert weight.analytic_all_zero and not weight.numeric_all_zero
    # the bias is cancelled by batchnorm: a zero gradient for it is right, and passes
    assert ("(net)", "conv2.bias") not in bad


def test_a_backward_off_by_a_small_scale_still_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    net = conv_bn_net()
    conv1 = next(layer for layer in net.layers if layer.name == "conv1")
    backward = conv1.backward

    def scaled(dy: np.ndarray) -> np.ndarray:
        dx = backward(dy)
        conv1.grads["conv1.weight"] = conv1.grads["conv1.weight"] * 1.001
        return dx * 1.001
    monkeypatch.setattr(conv1, "backward", scaled)
    checks = check_network(net, samples=6, seed=0)
    bad = failed(checks)
    assert ("conv1", "input") in bad and ("conv1", "conv1.weight") in bad
    assert ("(net)", "conv1.weight") in bad
    worst = max(c.max_rel_error for c in checks if (c.layer, c.what) == ("conv1", "input"))
    assert worst == pytest.approx(0.001 / 1.001, rel=1e-3)


def test_a_bias_gradient_never_computed_fails_where_the_bias_matters(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # without batchnorm after it, the conv bias moves the loss: an all-zero gradient is a bug
    net = Network.from_spec({"input": "6x6x2", "layers": [
        {"conv": {"filters": 3, "size": 3, "pad": 1}}, "tanh", {"fc": 3}]},
        dtype=np.float64, seed=0)
    conv1 = next(layer for layer in net.layers if layer.name == "conv1")
    backward = conv1.backward

    def no_bias(dy: np.ndarray) -> np.ndarray:
        dx = backward(dy)
        conv1.grads["conv1.bias"] = np.zeros_like(conv1.grads["conv1.bias"])
        return dx
    monkeypatch.setattr(conv1, "backward", no_bias)
    checks = check_network(net, samples=6, seed=0)
    bias = [c for c in checks if c.what == "conv1.bias"]
    assert len(bias) == 2 and not any(c.passed for c in bias)
    assert all(c.analytic_all_zero and not c.numeric_all_zero for c in bias)


def test_the_noise_floor_follows_the_step_and_the_objective_scale() -> None:
    eps = np.finfo(np.float64).eps
    assert rounding_noise(20.0) == pytest.approx(10 * eps * 20.0 / 1e-5)
    assert rounding_noise(40.0) == pytest.approx(2 * rounding_noise(20.0))
    level = rounding_noise(20.0)  # ~9e-9
    # both gradients at rounding level: within the noise, so they agree
    assert rel_error(np.array([4e-16]), np.array([3e-11]), level) <= THRESHOLD
    # a numeric gradient clearly above the noise against an analytic 0 does not
    assert rel_error(np.array([0.0]), np.array([1e-5]), level) > THRESHOLD
    # large gradients keep the plain relative error
    assert rel_error(np.array([1.0]), np.array([1.0 + 1e-5]), level) == pytest.approx(
        1e-5 / (1 + 1e-5))


def test_an_analytic_gradient_that_is_all_zero_fails_unless_the_numeric_is_noise() -> None:
    def check(numeric_all_zero: bool) -> Check:
        return Check("conv1", "conv1.bias", (3,), 3, 0.0, analytic_all_zero=True,
                     numeric_all_zero=numeric_all_zero)
    assert not check(numeric_all_zero=False).passed
    assert check(numeric_all_zero=True).passed
