"""Batchnorm + ReLU and residual add + ReLU in one pass each (issue #11): the engine fuses
an in-place ReLU into the layer before it when that layer's type says it can, and the
numbers stay what the layers apart compute, bit for bit: outputs, every gradient, the
running statistics, the input's gradient, in float32 and float64, training and eval."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cnncli.analysis.inplace import fused_activations, fused_in_evaluation
from cnncli.engine.gradcheck import check_network
from cnncli.engine.network import Network
from cnncli.engine.profile import profile_layers
from cnncli.spec import catalog
from cnncli.spec.parse import load_spec, parse_spec

# cifar_vgg_bn's pattern, small: [conv -> bn -> relu]*2, pool, conv -> bn -> relu, fc
VGG_BN = {"input": "8x8x3", "layers": [
    {"repeat": 2, "layers": [{"conv": {"filters": 4, "size": 3, "pad": 1, "bias": False}},
                             "batchnorm", "relu"]},
    {"pool": {"size": 2, "stride": 2}},
    {"conv": {"filters": 6, "size": 3, "pad": 1, "bias": False}}, "batchnorm", "relu",
    {"fc": 5}, "relu", {"fc": 3}]}
# resnet20's pattern, small: identity and projection blocks, each followed by a ReLU
RESNET = {"input": "8x8x3", "rounding": "floor", "layers": [
    {"conv": {"filters": 4, "size": 3, "pad": 1, "bias": False}}, "batchnorm", "relu",
    {"residual": {"layers": [
        {"conv": {"filters": 4, "size": 3, "pad": 1, "bias": False}}, "batchnorm", "relu",
        {"conv": {"filters": 4, "size": 3, "pad": 1, "bias": False}}, "batchnorm"]}},
    "relu",
    {"residual": {"layers": [
        {"conv": {"filters": 6, "size": 3, "stride": 2, "pad": 1, "bias": False}},
        "batchnorm", "relu",
        {"conv": {"filters": 6, "size": 3, "pad": 1, "bias": False}}, "batchnorm"],
        "shortcut": [{"conv": {"filters": 6, "size": 1, "stride": 2, "bias": False}},
                     "batchnorm"]}},
    "relu",
    {"pool": {"global": True, "type": "avg"}}, {"fc": 3}]}
# the notes' pattern, [conv -> relu]*n -> pool, with every conv algorithm: a planar first
# layer (3 input channels), Winograd and im2col 3x3 convs, a strided conv, a grouped conv
# small enough for the direct kernel, a conv without bias
CONV_RELU = {"input": "10x10x3", "rounding": "floor", "layers": [
    {"conv": {"filters": 6, "size": 3, "pad": 1}}, "relu",
    {"conv": {"filters": 8, "size": 3, "pad": 1}}, "relu",
    {"conv": {"filters": 8, "size": 3, "stride": 2, "pad": 1, "bias": False}}, "relu",
    {"conv": {"filters": 8, "size": 3, "pad": 1, "groups": 8}}, "relu",
    {"pool": {"size": 2, "stride": 2}},
    {"conv": {"filters": 4, "size": 1}}, "relu", {"fc": 3}]}
# conv -> batchnorm after every conv algorithm, with and without the ReLU after: in
# evaluation each conv applies its batchnorm (and that batchnorm's ReLU) as it writes
CONV_BN = {"input": "10x10x3", "rounding": "floor", "layers": [
    {"conv": {"filters": 6, "size": 3, "pad": 1}}, "batchnorm", "relu",
    {"conv": {"filters": 8, "size": 3, "pad": 1, "bias": False}}, "batchnorm",
    {"conv": {"filters": 8, "size": 3, "stride": 2, "pad": 1}}, "batchnorm", "relu",
    {"conv": {"filters": 8, "size": 3, "pad": 1, "groups": 8}}, "batchnorm", "relu",
    {"pool": {"size": 2, "stride": 2}}, {"fc": 3}]}
NETS = [pytest.param(VGG_BN, id="vgg_bn"), pytest.param(RESNET, id="resnet"),
        pytest.param(CONV_RELU, id="conv_relu"), pytest.param(CONV_BN, id="conv_bn")]
ALGOS = ["gemm", "winograd", "auto"]
DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]


def _pair(spec: dict[str, Any], dtype: Any,
          conv_algo: str = "gemm") -> tuple[Network, Network]:
    return (Network.from_spec(spec, dtype=dtype, seed=3, fuse=True, conv_algo=conv_algo),
            Network.from_spec(spec, dtype=dtype, seed=3, fuse=False, conv_algo=conv_algo))


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


@pytest.mark.parametrize("conv_algo", ALGOS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", NETS)
def test_fused_net_is_bit_identical_to_the_layers_apart(spec: dict[str, Any], dtype: Any,
                                                        conv_algo: str) -> None:
    fused, apart = _pair(spec, dtype, conv_algo)
    assert any(layer.fused_into for layer in fused.layers)
    assert not any(layer.fused_into for layer in apart.layers)
    rng = np.random.default_rng(0)
    v = fused.input
    for _ in range(2):  # twice: the running statistics move twice, gradients are replaced
        x = rng.standard_normal((4, v.h, v.w, v.d)).astype(dtype)
        y = fused.forward(x, training=True)
        assert np.array_equal(y, apart.forward(x, training=True))
        dy = rng.standard_normal(y.shape).astype(dtype)
        dx = fused.backward(dy, input_grad=True)
        assert dx is not None and np.array_equal(dx, apart.backward(dy, input_grad=True))
        _same(fused.grads, apart.grads)
        _same(fused.buffers, apart.buffers)
    x = rng.standard_normal((3, v.h, v.w, v.d)).astype(dtype)
    assert np.array_equal(fused.forward(x), apart.forward(x))  # eval: running statistics


def test_residual_blocks_passes_are_done_by_the_first_and_last_layers_of_the_body() -> None:
    # every block's sum (and the ReLU after it) is written by its last batchnorm, which
    # also masks dy with that ReLU in its sums pass, and an identity block's dx_body + dy
    # is computed by its first conv's Winograd dx kernel as it writes dx (fuse=False
    # keeps the block's own passes: the test above compares the two)
    from cnncli.layers.blocks import ResidualBlock

    fused, apart = _pair(RESNET, np.float32, "winograd")
    blocks = [item for item in fused.body.items if isinstance(item, ResidualBlock)]
    identity = [b for b in blocks if not b.shortcut.items]
    assert len(blocks) == 2 and len(identity) == 1 and all(b.fuse for b in blocks)
    assert identity[0].body.items[0].adds_into_dx()
    assert all(b.body.items[-1].masks_dy() and b.body.items[-1].adds_sum() for b in blocks)
    assert not any(b.fuse for b in apart.body.items if isinstance(b, ResidualBlock))
    seen: list[str] = []

    def spy(layer: Any, method: str, what: str) -> None:
        run = getattr(layer, method)

        def wrapped(*args: Any) -> Any:
            if getattr(layer, what) is not None:
                seen.append(f"{layer.name}.{what}")
            return run(*args)

        setattr(layer, method, wrapped)

    spy(identity[0].body.items[0], "_winograd_backward", "dx_addend")
    for b in blocks:
        spy(b.body.items[-1], "backward", "dy_mask")
        spy(b.body.items[-1], "forward", "sum_addend")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 8, 8, 3)).astype(np.float32)
    y = fused.forward(x, training=True)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = fused.backward(dy, input_grad=True)
    apart.forward(x, training=True)
    assert sorted(seen) == sorted(
        [f"{b.body.items[-1].name}.{what}" for b in blocks for what in ("dy_mask", "sum_addend")]
        + [f"{identity[0].body.items[0].name}.dx_addend"])
    assert all(layer.dx_addend is None and layer.dy_mask is None
               and layer.sum_addend is None for layer in fused.layers)
    assert dx is not None and np.array_equal(dx, apart.backward(dy, input_grad=True))
    _same(fused.grads, apart.grads)


def test_what_a_block_hands_a_layer_is_taken_back_when_the_call_fails() -> None:
    # a backward that fails inside the body leaves no mask or addend behind for a later
    # call to apply to other arrays
    from cnncli.layers.blocks import ResidualBlock

    net = Network.from_spec(RESNET, dtype=np.float32, seed=3, conv_algo="winograd")
    block = next(b for b in net.body.items if isinstance(b, ResidualBlock)
                 and not b.shortcut.items)
    first, last = block.body.items[0], block.body.items[-1]
    x = np.random.default_rng(2).standard_normal((4, 8, 8, 3)).astype(np.float32)
    y = net.forward(x, training=True)
    first._saved_x = None  # its backward now fails, after the mask was applied
    with pytest.raises(AssertionError, match="backward without a training forward"):
        net.backward(np.ones_like(y))
    assert first.dx_addend is None and last.dy_mask is None and last.sum_addend is None


def test_only_the_synchronised_batchnorm_leaves_the_blocks_passes_to_the_block() -> None:
    # distributed training swaps the engine's batchnorm class (training/distributed.py's
    # attach): per-rank statistics run the engine's passes, synchronised ones their own
    from cnncli.layers.batchnorm import BatchNormEngine
    from cnncli.layers.blocks import ResidualBlock
    from cnncli.training.distributed import _batchnorm_classes

    rank_bn, sync_bn = _batchnorm_classes()
    net = Network.from_spec(RESNET, dtype=np.float32, seed=3, conv_algo="winograd")
    block = next(b for b in net.body.items if isinstance(b, ResidualBlock))
    last = block.body.items[-1]
    assert isinstance(last, BatchNormEngine) and block.sum_writer() is last
    last.__class__ = rank_bn
    assert last.adds_sum() and last.masks_dy() and block.sum_writer() is last
    last.__class__ = sync_bn
    assert not last.adds_sum() and not last.masks_dy() and block.sum_writer() is None


def test_every_conv_algorithm_absorbs_the_relu_after_it() -> None:
    """The notes' conv -> relu: each algorithm's kernel clamps what it writes, and the
    layers that ran say which kernel and which ReLU (bench's algorithm column)."""
    ran = set()
    for policy in ("auto", "winograd"):  # auto: planar conv1; winograd: every 3x3 stride 1
        net = Network.from_spec(CONV_RELU, seed=0, conv_algo=policy)
        convs = [layer for layer in net.layers if hasattr(layer, "algo")]
        assert len(convs) == 5 and all(c.fused_with for c in convs)
        ran |= {c.algorithm for c in convs}
    assert ran == {"planar", "winograd", "gemm", "direct"}
    result = profile_layers(parse_spec(CONV_RELU), None, 2, 1, None, "auto")
    rows = {r["name"]: r for r in result["layers"]}
    assert rows["conv1"]["algorithm"] == "planar + relu1"
    assert rows["relu1"]["algorithm"] == "fused into conv1"
    assert rows["conv4"]["algorithm"] == "direct + relu4"


@pytest.mark.parametrize("conv_algo", ["auto", "winograd"])
def test_in_evaluation_each_conv_applies_the_batchnorm_after_it(conv_algo: str,
                                                                monkeypatch: Any) -> None:
    """No pass of batchnorm's own in evaluation: the conv's kernel writes (y - m) * a + b
    (and the ReLU) with the running statistics, bit for bit what the two layers compute
    apart; in training nothing changes."""
    from cnncli.engine.kernels import norm

    fused, apart = _pair(CONV_BN, np.float32, conv_algo)
    rng = np.random.default_rng(5)
    for _ in range(3):  # running statistics away from their start (0 and 1)
        x = rng.standard_normal((8, 10, 10, 3)).astype(np.float32)
        fused.forward(x, training=True)
        apart.forward(x, training=True)
    _same(fused.buffers, apart.buffers)
    x = rng.standard_normal((5, 10, 10, 3)).astype(np.float32)
    expected = apart.forward(x)

    def no_pass(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("batchnorm ran a pass of its own in evaluation")

    monkeypatch.setattr(norm, "batchnorm_forward_eval", no_pass)
    assert np.array_equal(fused.forward(x), expected)
    algorithms = {layer.algorithm for layer in fused.layers if hasattr(layer, "algo")}
    assert "direct" in algorithms and len(algorithms) >= 2
    assert fused_in_evaluation(parse_spec(CONV_BN).layers) == {
        "bn1": "conv1", "bn2": "conv2", "bn3": "conv3", "bn4": "conv4"}


@pytest.mark.parametrize("name", ["cifar_vgg_bn", "resnet20"])
def test_evaluation_peak_without_batchnorm_outputs_is_what_the_plan_says(name: str) -> None:
    """The plan counts no output for a batchnorm its conv applies in evaluation, and a
    measured inference pass agrees within 1%; it is below the plan of the layers apart."""
    from cnncli.analysis.memory import estimate
    from cnncli.engine.measure import measure

    spec = load_spec(catalog.resolve(name))
    measured = measure(spec, 16, mode="infer", threads=2, conv_algo="auto")["peak_bytes"]
    planned = estimate(spec, batch=16, mode="infer", threads=2, conv_algo="auto").peak
    assert abs(planned / measured - 1) < 0.01, (planned, measured)


def test_resnet20_and_cifar_vgg_bn_fuse_every_relu_after_batchnorm_or_an_add() -> None:
    resnet = load_spec(catalog.resolve("resnet20"))
    fused = fused_activations(resnet.layers)
    assert len(fused) == 19  # 10 after a batchnorm (the stem and each body), 9 after an add
    assert sum(p.endswith("bn1") for p in fused.values()) == 10
    assert fused["relu2"] == "res1" and fused["res1.relu1"] == "res1.bn1"
    vgg = load_spec(catalog.resolve("cifar_vgg_bn"))
    # the five conv-bn-relu; the relu after fc1 follows an fc, which absorbs nothing
    assert sorted(fused_activations(vgg.layers).values()) == [f"bn{i}" for i in range(1, 6)]


def test_only_a_relu_that_runs_in_place_after_an_absorbing_layer_is_fused() -> None:
    spec = parse_spec({"input": "4x4x2", "layers": [
        "batchnorm", {"leaky_relu": {}},  # leaky ReLU: batchnorm absorbs only ReLU
        {"pool": {"size": 1, "stride": 1}}, "relu",  # a pool absorbs nothing
        {"residual": {"layers": ["relu", "batchnorm"]}},  # reads the block's input: not in place
        "batchnorm", {"lrn": {"size": 3}}, "relu",
        "batchnorm", "relu",
        {"conv": {"filters": 2, "size": 1}}, "relu",
        {"local": {"filters": 2, "size": 1}}, "relu"]})  # a conv absorbs it, a local layer not
    assert fused_activations(spec.layers) == {"relu3": "bn3", "relu4": "conv1"}


def test_a_producer_that_does_not_fuse_leaves_the_relu_its_own_work() -> None:
    """A distributed run swaps batchnorm's engine class for its own forward (synchronised
    statistics), which computes no ReLU: the ReLU sees no output handed over and runs."""
    from cnncli.layers.batchnorm import BatchNormEngine

    class Plain(BatchNormEngine):
        def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
            relu, self._relu = self._relu, None
            try:
                return super().forward(x, training)
            finally:
                self._relu = relu

    fused, apart = _pair(VGG_BN, np.float64)
    for layer in fused.layers:
        if isinstance(layer, BatchNormEngine):
            layer.__class__ = Plain
    x = np.random.default_rng(1).standard_normal((4, 8, 8, 3))
    y = fused.forward(x, training=True)
    assert np.array_equal(y, apart.forward(x, training=True))
    dx = fused.backward(np.ones_like(y), input_grad=True)
    assert dx is not None and np.array_equal(dx, apart.backward(np.ones_like(y),
                                                                input_grad=True))
    _same(fused.grads, apart.grads)


@pytest.mark.parametrize("spec", NETS)
def test_gradient_check_passes_on_fused_nets(spec: dict[str, Any]) -> None:
    net = Network.from_spec(spec, dtype=np.float64, seed=0)
    assert any(layer.fused_into for layer in net.layers)
    checks = check_network(net, samples=6, seed=0)
    assert checks and all(c.passed for c in checks), [c for c in checks if not c.passed]


def test_bench_shows_the_fused_relu_in_its_producers_row() -> None:
    result = profile_layers(parse_spec(RESNET), None, 2, 1, None)
    rows = {r["name"]: r for r in result["layers"]}
    assert rows["relu1"]["algorithm"] == "fused into bn1"
    assert rows["bn1"]["algorithm"] == "+ relu1"
    assert rows["relu2"]["algorithm"] == "fused into res1.add"
    # the block's sum is written by its last batchnorm, whose row says so
    assert rows["res1.add"]["algorithm"] == "in res1.bn2 + relu2"
    assert rows["res1.bn2"]["algorithm"] == "+ res1.add"
    # the fused ReLU keeps its own (hand-over) time, so the rows still add up
    assert result["total_ms"] == pytest.approx(
        sum(r["forward_ms"] + r["backward_ms"] for r in rows.values() if not r["block"]))
    apart = profile_layers(parse_spec(RESNET), None, 2, 1, None, fuse=False)
    assert all(r["algorithm"] in (None, "gemm") or "fused" not in r["algorithm"]
               for r in apart["layers"]) and not apart["fused"]
    assert {r["algorithm"] for r in apart["layers"] if r["name"].endswith((".add", ".bn2"))} \
        == {None}


@pytest.mark.parametrize("name", ["cifar_vgg_bn", "resnet20"])
def test_fused_net_peaks_at_what_the_plan_says(name: str) -> None:
    """The fused pair allocates and keeps what the two layers apart do: the plan, which
    knows nothing of fusion, stays within 1% of a measured step."""
    from cnncli.analysis.memory import estimate
    from cnncli.engine.measure import measure

    spec = load_spec(catalog.resolve(name))
    measured = measure(spec, 8, threads=2)["peak_bytes"]
    planned = estimate(spec, batch=8, threads=2).peak
    assert abs(planned / measured - 1) < 0.01, (planned, measured)
