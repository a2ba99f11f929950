"""The engine as a whole: every layer type gradient-checked in float64, and whole nets
compared with PyTorch (weights copied across, as tinygrad's tests do)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from cnncli.cli.app import app
from cnncli.engine.gradcheck import check_network
from cnncli.engine.network import Network
from cnncli.layers.activations import ActivationEngine
from cnncli.layers.batchnorm import BatchNormEngine
from cnncli.layers.blocks import ConcatBlock, ResidualBlock, Sequence
from cnncli.layers.conv import ConvEngine
from cnncli.layers.fc import FCEngine
from cnncli.layers.lrn import LRNEngine
from cnncli.layers.pool import PoolEngine
from cnncli.spec.parse import SpecInvalid, Volume

# the engine's layer classes, by the name of their layer type (each in its own module)
L = SimpleNamespace(Conv=ConvEngine, FC=FCEngine, Pool=PoolEngine, Activation=ActivationEngine,
                    BatchNorm=BatchNormEngine, LRN=LRNEngine)

# Every layer type and block of the contract, small enough to check in seconds.
EVERY_LAYER = {
    "name": "every layer",
    "input": "10x8x3",
    "loss": "softmax",
    "layers": [
        {"conv": {"filters": 8, "size": 3, "pad": 1}},
        "relu",
        {"conv": {"filters": 8, "size": {"height": 3, "width": 1}, "pad": {"height": 1,
                                                                           "width": 0},
                  "groups": 2, "bias": False}},
        {"batchnorm": {}},
        "tanh",
        {"lrn": {"size": 3, "alpha": 0.1, "beta": 0.75, "k": 2.0}},
        {"residual": {"layers": [{"conv": {"filters": 8, "size": 3, "pad": 2, "dilation": 2}},
                                 {"leaky_relu": {"slope": 0.1}}]}},
        {"concat": [
            [{"conv": {"filters": 4, "size": 1}}, "sigmoid"],
            [{"pool": {"size": 3, "stride": 1, "pad": 1, "type": "avg"}}],
            [{"pool": {"size": 3, "stride": 1, "pad": 1, "type": "l2"}}],
        ]},
        {"pool": {"size": 2, "stride": 2}},
        {"repeat": 2, "layers": [{"conv": {"filters": 6, "size": 1}}, "relu"]},
        {"local": {"filters": 4, "size": 2, "stride": 1}},
        {"residual": {"layers": [{"conv": {"filters": 5, "size": 1}}],
                      "shortcut": [{"conv": {"filters": 5, "size": 1, "bias": False}}]}},
        {"dropout": 0.3},
        {"fc": 7},
        "relu",
        {"fc": 3},
    ],
}


def test_small_every_layer_type_passes_the_gradient_check():
    net = Network.from_spec(EVERY_LAYER, dtype=np.float64, seed=3)
    checks = check_network(net, batch=2, samples=6, seed=1)
    kinds = {c.layer for c in checks}
    assert len(kinds) > 20
    bad = [(c.layer, c.what, c.max_rel_error) for c in checks if not c.passed]
    assert not bad
    assert max(c.max_rel_error for c in checks) < 1e-6


def test_small_global_pool_and_svm_gradient_check():
    spec = {"input": "8x8x2", "loss": "svm", "layers": [
        {"conv": {"filters": 4, "size": 3, "pad": 1}}, "relu",
        {"pool": {"global": True, "type": "avg"}}, {"fc": 3}]}
    checks = check_network(Network.from_spec(spec, dtype=np.float64), samples=8)
    assert all(c.passed for c in checks)
    assert any(c.layer == "(loss svm)" for c in checks)


def test_small_backward_in_place_never_overwrites_a_dy_read_again():
    """Activations and dropout write their gradient over dy. A residual body ending in one
    gets a copy (the identity shortcut adds dy afterwards), each concat branch its own
    slice, and the caller's dy of a net ending in one is left as it was."""
    spec = {"input": "6x6x2", "layers": [
        {"conv": {"filters": 3, "size": 3, "pad": 1}},
        {"residual": {"layers": [{"conv": {"filters": 3, "size": 3, "pad": 1}}, "relu"]}},
        {"residual": {"layers": [{"conv": {"filters": 3, "size": 1}}, "tanh"],
                      "shortcut": [{"dropout": 0.5}]}},
        {"concat": [["sigmoid"], [{"dropout": 0.5}]]},
        {"fc": 4}, {"leaky_relu": {"slope": 0.2}}]}
    net = Network.from_spec(spec, dtype=np.float64, seed=0)
    assert net.body.consumes_dy()
    checks = check_network(net, batch=2, samples=8, seed=0)
    assert [(c.layer, c.what) for c in checks if not c.passed] == []
    x = np.random.default_rng(1).standard_normal((2, 6, 6, 2))
    net.forward(x, training=True)
    dy = np.ones((2, 4))
    net.backward(dy, input_grad=True)
    assert (dy == 1).all()


def test_gradient_check_catches_a_broken_backward(monkeypatch):
    monkeypatch.setattr(L.Activation, "backward", lambda self, dy: dy)  # relu' forgotten
    spec = {"input": "6x6x1", "layers": [{"conv": {"filters": 2, "size": 3}}, "relu",
                                         {"fc": 2}]}
    net = Network.from_spec(spec, dtype=np.float64)
    net.params["conv1.bias"][:] = -0.5  # make sure some units are off
    assert not all(c.passed for c in check_network(net, samples=10))


def test_a_spec_that_check_rejects_cannot_be_built():
    with pytest.raises(SpecInvalid, match="54.25"):
        Network.from_spec({"input": "224x224x3",
                           "layers": [{"conv": {"filters": 96, "size": 11, "stride": 4}}]})


def test_parameters_have_pytorch_names_and_layouts():
    net = Network.from_spec("cifar_small")
    shapes = {k: v.shape for k, v in net.params.items()}
    assert shapes["conv1.weight"] == (32, 3, 3, 3)
    assert shapes["fc1.weight"] == (10, 4 * 4 * 128)
    assert net.num_parameters() == 113_738 == net.report.parameters


def test_small_state_dict_round_trip_and_shape_errors():
    a = Network.from_spec("cifar_tiny", seed=1)
    b = Network.from_spec("cifar_tiny", seed=2)
    b.load_state_dict(a.state_dict())
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(a.scores(x), b.scores(x))
    with pytest.raises(ValueError, match="expected shape"):
        b.set_param("conv1.weight", np.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match="NHWC"):
        a.forward(np.zeros((2, 3, 32, 32), np.float32))


def test_float32_and_float64_agree():
    x = np.random.default_rng(0).standard_normal((4, 32, 32, 3))
    n64 = Network.from_spec("cifar_small", dtype=np.float64, seed=0)
    n32 = Network.from_spec("cifar_small", dtype=np.float32, seed=0)
    n32.load_state_dict(n64.state_dict())
    s64, s32 = n64.scores(x), n32.scores(x.astype(np.float32))
    np.testing.assert_allclose(s32, s64, rtol=1e-4, atol=1e-4 * np.abs(s64).max())


def test_training_steps_are_deterministic():
    def run() -> list[float]:
        net = Network.from_spec(EVERY_LAYER, seed=5)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((6, 8, 10, 3)).astype(np.float32)
        y = rng.integers(0, 3, 6)
        losses = []
        for _ in range(3):
            loss, d = net.loss(net.forward(x, training=True), y)
            net.backward(d)
            for k, g in net.grads.items():
                net.params[k] -= 0.01 * g
            losses.append(loss)
        return losses
    assert run() == run()


def test_gradcheck_command(tmp_path):
    result = CliRunner().invoke(app, ["gradcheck", "cifar_tiny", "--samples", "4"])
    assert result.exit_code == 0, result.output
    assert "threshold 1e-06" in result.output
    result = CliRunner().invoke(app, ["gradcheck", "cifar_tiny", "--format", "json",
                                      "--samples", "2"])
    assert result.exit_code == 0
    import json
    data = json.loads(result.output)
    assert data["passed"] and all(c["max_rel_error"] < 1e-6 for c in data["checks"])


def test_bench_command_prints_every_layer():
    result = CliRunner().invoke(app, ["bench", "cifar_tiny", "--batch", "4", "--iterations",
                                      "1"])
    assert result.exit_code == 0, result.output
    for name in ("conv1", "relu1", "pool1", "fc1", "images/s"):
        assert name in result.output


# ----------------------------------------------------------------------------- PyTorch


def _torch_module(net: Network):  # type: ignore[no-untyped-def]
    """The same net in torch.nn, weights copied from ours (a chain or residual/concat)."""
    torch = pytest.importorskip("torch")

    class Residual(torch.nn.Module):
        def __init__(self, body, shortcut):  # type: ignore[no-untyped-def]
            super().__init__()
            self.body, self.shortcut = body, shortcut

        def forward(self, x):  # type: ignore[no-untyped-def]
            return self.body(x) + (self.shortcut(x) if len(self.shortcut) else x)

    class Concat(torch.nn.Module):
        def __init__(self, branches):  # type: ignore[no-untyped-def]
            super().__init__()
            self.branches = torch.nn.ModuleList(branches)

        def forward(self, x):  # type: ignore[no-untyped-def]
            return torch.cat([b(x) for b in self.branches], dim=1)

    params = net.params
    buffers = net.buffers

    def t(a):  # type: ignore[no-untyped-def]
        return torch.nn.Parameter(torch.from_numpy(np.array(a, dtype=np.float64)))

    def convert(item):  # type: ignore[no-untyped-def]
        if isinstance(item, Sequence):
            return torch.nn.Sequential(*[convert(i) for i in item.items])
        if isinstance(item, ResidualBlock):
            return Residual(convert(item.body), convert(item.shortcut))
        if isinstance(item, ConcatBlock):
            return Concat([convert(b) for b in item.branches])
        name = item.name
        if isinstance(item, L.Conv):
            w = params[f"{name}.weight"]
            m = torch.nn.Conv2d(w.shape[1] * item.groups, w.shape[0], w.shape[2:],
                                stride=item.stride, padding=item.pad, dilation=item.dilation,
                                groups=item.groups, bias=item.bias_key is not None)
            m.weight = t(w)
            if item.bias_key:
                m.bias = t(params[item.bias_key])
            return m.double()
        if isinstance(item, L.FC):
            w = params[f"{name}.weight"]
            m = torch.nn.Linear(w.shape[1], w.shape[0], bias=item.bias_key is not None)
            m.weight = t(w)
            if item.bias_key:
                m.bias = t(params[item.bias_key])
            return torch.nn.Sequential(torch.nn.Flatten(), m.double(),
                                       torch.nn.Unflatten(1, (w.shape[0], 1, 1)))
        if isinstance(item, L.Pool):
            if item.type == "max":
                return torch.nn.MaxPool2d(item.size, item.stride, item.pad)
            return torch.nn.AvgPool2d(item.size, item.stride, item.pad)
        if isinstance(item, L.Activation):
            return {"relu": torch.nn.ReLU(), "tanh": torch.nn.Tanh(),
                    "sigmoid": torch.nn.Sigmoid(),
                    "leaky_relu": torch.nn.LeakyReLU(getattr(item.layer, "slope", 0.01)),
                    }[item.function]
        if isinstance(item, L.BatchNorm):
            m = torch.nn.BatchNorm2d(len(params[f"{name}.weight"]), eps=item.eps,
                                     momentum=item.momentum).double()
            m.weight = t(params[f"{name}.weight"])
            m.bias = t(params[f"{name}.bias"])
            m.running_mean.copy_(torch.from_numpy(buffers[f"{name}.running_mean"].astype(float)))
            m.running_var.copy_(torch.from_numpy(buffers[f"{name}.running_var"].astype(float)))
            return m
        if isinstance(item, L.LRN):
            return torch.nn.LocalResponseNorm(item.size, item.alpha, item.beta, item.k)
        raise TypeError(type(item))

    return convert(net.body)


RESNET_LIKE = {
    "input": "16x16x3", "rounding": "floor", "layers": [
        {"conv": {"filters": 8, "size": 3, "stride": 2, "pad": 1, "bias": False}},
        {"batchnorm": {}}, "relu",
        {"pool": {"size": 3, "stride": 2, "pad": 1}},
        {"residual": {"layers": [{"conv": {"filters": 16, "size": 3, "stride": 2, "pad": 1}},
                                 {"batchnorm": {}}, "relu",
                                 {"conv": {"filters": 16, "size": 3, "pad": 1}}],
                      "shortcut": [{"conv": {"filters": 16, "size": 1, "stride": 2}},
                                   {"batchnorm": {}}]}},
        "relu",
        {"concat": [[{"conv": {"filters": 4, "size": 1}}],
                    [{"pool": {"size": 3, "stride": 1, "pad": 1}}]]},
        {"pool": {"global": True, "type": "avg"}},
        {"fc": 5}]}


@pytest.mark.parametrize("source", ["cifar_small", "lenet5", RESNET_LIKE], ids=str)
@pytest.mark.parametrize("training", [False, True])
def test_forward_and_backward_match_pytorch(source, training):
    torch = pytest.importorskip("torch")
    net = Network.from_spec(source, dtype=np.float64, seed=0)
    # random, non-trivial batchnorm parameters and running statistics
    rng = np.random.default_rng(1)
    for name, b in net.buffers.items():
        b[...] = (rng.uniform(0.5, 1.5, b.shape) if name.endswith("var")
                  else rng.normal(size=b.shape))
    for name, p in net.params.items():
        if ".bias" in name:
            p[...] = rng.normal(scale=0.1, size=p.shape)
        elif p.ndim == 1:  # batchnorm scale: random, so every parameter is unique
            p[...] = rng.uniform(0.5, 1.5, p.shape)
    module = _torch_module(net)
    module.train(training)
    x = rng.standard_normal((3, net.input.h, net.input.w, net.input.d))
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    yt = module(xt)
    y = net.forward(x, training=training)
    np.testing.assert_allclose(y.transpose(0, 3, 1, 2), yt.detach().numpy(), rtol=1e-9,
                               atol=1e-10)
    if not training:
        return
    upstream = rng.standard_normal(y.shape)
    yt.backward(torch.from_numpy(upstream.transpose(0, 3, 1, 2).copy()))
    dx = net.backward(upstream, input_grad=True)
    assert dx is not None
    np.testing.assert_allclose(dx.transpose(0, 3, 1, 2), xt.grad.numpy(), rtol=1e-8,
                               atol=1e-10)
    ours = net.grads
    # match parameters by value: each torch parameter was made from one of ours
    for name, value in net.params.items():
        match = [m for m in module.modules() for pn, p in m.named_parameters(recurse=False)
                 if p.shape == value.shape and np.array_equal(p.detach().numpy(), value)]
        assert match, name
        pn = "weight" if name.endswith("weight") else "bias"
        np.testing.assert_allclose(ours[name], getattr(match[0], pn).grad.numpy(), rtol=1e-8,
                                   atol=1e-10, err_msg=name)


@pytest.mark.torch
@pytest.mark.parametrize("name", ["resnet20", "cifar_vgg_bn"])
def test_bundled_cifar_net_forward_equals_torch_in_eval_mode(name):
    """The hand-written torch.nn net (tests/torch_nets.py), its weights and batchnorm
    running statistics loaded into ours by name: the same class scores at test time."""
    torch = pytest.importorskip("torch")
    import torch_nets as T

    torch.manual_seed(0)
    model = T.ResNet20(option="B") if name == "resnet20" else T.cifar_vgg_bn()
    rename = T.resnet20_name if name == "resnet20" else T.vgg_rename(model)
    model = model.double().eval()
    with torch.no_grad():  # batchnorm far from its identity start, so a mix-up shows
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    net = Network.from_spec(name, dtype=np.float64)
    net.load_state_dict({k: v.numpy() for k, v in T.state_in_cnncli_names(model, rename).items()})
    x = np.random.default_rng(0).standard_normal((3, 32, 32, 3))  # NHWC
    with torch.no_grad():
        expected = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    scores = net.scores(x)
    assert scores.shape == (3, 10) and np.ptp(expected) > 0.1
    np.testing.assert_allclose(scores, expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("first", [
    {"fc": 3}, {"conv": {"filters": 3, "size": 3, "pad": 1}}, {"local": {"filters": 2, "size": 2}},
    "relu", {"residual": {"layers": [{"conv": {"filters": 2, "size": 1}}]}},
], ids=["fc", "conv", "local", "relu", "residual"])
def test_backward_returns_the_input_gradient_only_when_asked(first):
    """Training skips the first layer's input gradient, so plain `backward` returns None
    whatever the first layer is; `input_grad=True` returns d loss / d x, checked along a
    random direction by centred differences (float64)."""
    net = Network.from_spec({"input": "5x4x2", "layers": [first, "tanh", {"fc": 3}]},
                            dtype=np.float64, seed=1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 5, 2))
    upstream = rng.standard_normal((2, 3))

    def loss(at):  # L = sum(R * net(x)): its gradient in x is backward(R)
        return float(np.sum(upstream * net.scores(at)))

    net.forward(x, training=True)
    assert net.backward(upstream) is None
    grads = {k: v.copy() for k, v in net.grads.items()}
    net.forward(x, training=True)
    dx = net.backward(upstream, input_grad=True)
    assert dx is not None and dx.shape == x.shape
    for name, g in net.grads.items():  # asking for dx changes nothing else
        np.testing.assert_array_equal(g, grads[name], err_msg=name)
    v = rng.standard_normal(x.shape)
    h = 1e-6
    numeric = (loss(x + h * v) - loss(x - h * v)) / (2 * h)
    assert np.vdot(dx, v) == pytest.approx(numeric, rel=1e-6)
    net.forward(x, training=True)
    assert net.backward(upstream) is None  # and the next training step skips it again
    assert all(layer.need_dx for layer in net.layers[1:])


def test_network_at_another_input_size():
    net = Network.from_spec("allconv", input_volume=Volume(64, 64, 3))
    assert net.forward(np.zeros((1, 64, 64, 3), np.float32)).shape == (1, 1, 1, 10)


def test_in_place_rule_is_what_the_engine_builds():
    from cnncli.analysis.inplace import in_place_activations

    net = Network.from_spec(EVERY_LAYER)
    built = {x.name for x in net.layers if isinstance(x, L.Activation) and x.in_place}
    assert built == in_place_activations(net.spec.layers)
    # after a conv / a batchnorm: in place (their backward reads their input, not output)
    assert "relu1" in built and "tanh1" in built
    # the caller's array is never overwritten
    x = np.random.default_rng(0).standard_normal((2, 8, 10, 3)).astype(np.float32)
    copy = x.copy()
    net.forward(x, training=True)
    np.testing.assert_array_equal(x, copy)
