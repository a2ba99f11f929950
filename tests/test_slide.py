"""Sliding-window evaluation: FC -> conv conversion, its geometry, and one pass versus
crop-by-crop evaluation (exact where the rule says so, honestly different where not)."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cnncli.analysis.report import analyze
from cnncli.cli.app import app
from cnncli.engine.network import Network
from cnncli.layers import FC, Conv, Pool
from cnncli.sliding.convert import (
    ConvertError,
    check_sliding,
    convert_weights,
    equivalence,
    fc_to_conv_spec,
    spec_to_dict,
    spec_yaml,
)
from cnncli.spec import catalog
from cnncli.spec.parse import (
    Pair,
    SpecInvalid,
    Volume,
    load_spec,
    parse_spec,
    walk,
)

runner = CliRunner()


def invoke(*args: str):  # type: ignore[no-untyped-def]
    result = runner.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"{args}: {result.exception!r}"
    return result


def bundled(name: str):  # type: ignore[no-untyped-def]
    return load_spec(catalog.resolve(name))


def vgg_like(widths: tuple[int, ...], fc: int, pad: int, convs: int, size: int,
             classes: int = 10) -> dict[str, Any]:
    """VGG's pattern, narrow: [CONV3 -> RELU]*convs -> POOL2, five times, then 3 FC."""
    layers: list[Any] = []
    for w in widths:
        layers.append({"repeat": convs, "layers": [
            {"conv": {"filters": w, "size": 3, "pad": pad}}, "relu"]})
        layers.append({"pool": {"size": 2, "stride": 2}})
    layers += [{"fc": fc}, "relu", {"dropout": 0.5}, {"fc": fc}, "relu", {"fc": classes}]
    return {"name": "VGG-like", "input": f"{size}x{size}x3", "layers": layers}


# Every conv unpadded ("valid"): one pass equals crop-by-crop. 32 -> 28 -> 14 -> 12 -> 6
# -> 4 -> 2: cifar_small's window (32) and stride (8).
CIFAR_VALID = {"name": "cifar valid", "input": "32x32x3", "layers": [
    {"conv": {"filters": 8, "size": 5}}, "relu", {"pool": {"size": 2}},
    {"conv": {"filters": 16, "size": 3}}, "relu", {"pool": {"size": 2}},
    {"conv": {"filters": 16, "size": 3}}, "relu", {"pool": {"size": 2}},
    {"fc": 24}, "relu", {"fc": 10}]}


def random_image(h: int, w: int, d: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((h, w, d)).astype(np.float32)


def sliding_net(spec_data: Any, seed: int = 0):  # type: ignore[no-untyped-def]
    from cnncli.sliding.slide import SlidingNet

    spec = spec_data if not isinstance(spec_data, (dict, str)) else (
        bundled(spec_data) if isinstance(spec_data, str) else parse_spec(spec_data))
    net = Network(spec, seed=seed)
    # non-zero biases, so a wrongly placed bias or padding cannot hide
    rng = np.random.default_rng(seed + 1)
    for name, value in net.params.items():
        if name.endswith(".bias"):
            net.set_param(name, rng.standard_normal(value.shape) * 0.1)
    return SlidingNet(spec, net.state_dict())


# --------------------------------------------------------------------------- the notes' VGG16


def test_notes_vgg16_geometry_through_check() -> None:
    """224 -> [7x7x512]; fc1 becomes F=7 over it, fc2/fc3 1x1; 384 -> [6x6x1000]."""
    r = invoke("check", "vgg16", "--input", "384x384x3", "--fc-to-conv", "-f", "json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    rows = {row["name"]: row for row in data["layers"]}
    assert rows["fc1"]["kind"] == "conv"
    assert rows["fc1"]["input"]["text"] == "[12x12x512]"
    assert rows["fc1"]["params"]["fc1.weight"] == [4096, 512, 7, 7]
    assert rows["fc2"]["params"]["fc2.weight"] == [4096, 4096, 1, 1]
    assert rows["fc3"]["output"]["text"] == "[6x6x1000]"
    s = data["sliding_window"]
    assert s["score_map"]["text"] == "[6x6x1000]"
    assert s["windows"] == {"height": 6, "width": 6}
    assert s["window"] == {"height": 224, "width": 224}
    assert s["window_stride"] == {"height": 32, "width": 32}  # 2*2*2*2*2
    assert s["whole_input_convs"][0]["name"] == "fc1"
    assert s["whole_input_convs"][0]["input"] == "[7x7x512]"
    assert s["tiles"] and s["usable"]
    # VGG pads every conv: each score sees 90 px beyond its window on each side
    assert s["receptive_field"] == {"height": 404, "width": 404}
    assert not s["exact"] and len(s["breaks"]) == 13
    assert {b["reason"] for b in s["breaks"]} == {"padding"}


def test_notes_vgg16_table_output() -> None:
    r = invoke("check", "vgg16", "--input", "384x384x3", "--fc-to-conv")
    assert r.exit_code == 0, r.output
    assert "score map [6x6x1000]: 6x6 = 36 windows of 224x224 at stride 32" in r.stdout
    assert "fc1: conv over all of [7x7x512]" in r.stdout
    assert "not exact" in r.stdout
    # the conv-sizing hints do not apply to a converted FC layer
    assert "fc1: a 7 filter beyond the first layer" not in r.output


def test_check_rejects_sizes_that_do_not_tile() -> None:
    r = invoke("check", "vgg16", "--input", "400x400x3", "--fc-to-conv")
    assert r.exit_code == 1
    assert "do not tile" in r.stdout
    assert "(400 - 224)/32 = 5.5" in r.stdout
    assert "[384x384x3], [416x416x3]" in r.stdout


def test_check_fc_to_conv_at_training_size_is_one_window() -> None:
    r = invoke("check", "vgg16", "--fc-to-conv", "-f", "json")
    assert r.exit_code == 0
    s = json.loads(r.stdout)["sliding_window"]
    assert s["score_map"]["text"] == "[1x1x1000]" and s["windows"] == {"height": 1, "width": 1}


def test_fc_to_conv_spec_keeps_names_and_parameter_counts() -> None:
    spec = bundled("vgg16")
    conv = fc_to_conv_spec(spec)
    fcs = {n.name: n for n in walk(conv.layers) if n.name.startswith("fc")}
    assert all(isinstance(n, Conv) for n in fcs.values())
    assert fcs["fc1"].size == Pair(7, 7) and fcs["fc1"].filters == 4096
    assert fcs["fc2"].size == Pair(1, 1) and fcs["fc3"].size == Pair(1, 1)
    before, after = analyze(spec), analyze(conv)
    assert after.parameters == before.parameters == 138_357_544
    assert after.output == before.output == Volume(1, 1, 1000)
    assert after.macs == before.macs


@pytest.mark.parametrize("name", catalog.bundled_names())
def test_spec_to_dict_round_trips(name: str) -> None:
    """The converted spec is printed as YAML: it must read back to the same net."""
    spec = bundled(name)
    again = parse_spec(yaml.safe_load(yaml.safe_dump(spec_to_dict(spec))))
    a, b = analyze(spec), analyze(again)
    assert [(r.name, r.params, r.output) for r in a.layers] == \
        [(r.name, r.params, r.output) for r in b.layers]
    try:
        conv = fc_to_conv_spec(spec)
    except SpecInvalid:
        return
    text = spec_yaml(conv)
    reread = parse_spec(yaml.safe_load(text))
    assert [(r.name, r.params) for r in analyze(reread).layers] == \
        [(r.name, r.params) for r in analyze(conv).layers]


def test_global_pool_becomes_a_window() -> None:
    conv = fc_to_conv_spec(bundled("nin"))
    last_pool = [n for n in walk(conv.layers) if isinstance(n, Pool)][-1]
    assert not last_pool.is_global and last_pool.size is not None
    assert last_pool.stride == Pair(1, 1)


def test_locally_connected_layer_cannot_slide() -> None:
    spec = parse_spec({"input": "8x8x1", "layers": [
        {"local": {"filters": 2, "size": 3}}, {"fc": 3}]})
    with pytest.raises(SpecInvalid, match="locally-connected"):
        fc_to_conv_spec(spec)


# --------------------------------------------------------------------------- weights


def test_fc_weight_reshape_matches_pytorch_flattening() -> None:
    """cnncli's fc weight flattens (depth, height, width): a plain reshape is the conv filter."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 7, 7)).astype(np.float32)  # NCHW
    w = rng.standard_normal((4, 5 * 7 * 7)).astype(np.float32)
    linear = torch.nn.functional.linear(torch.from_numpy(x).flatten(1), torch.from_numpy(w))
    conv = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w.reshape(4, 5, 7, 7)))
    assert np.allclose(linear.numpy(), conv.numpy().reshape(2, 4), atol=1e-5)


@pytest.mark.parametrize("name", ["cifar_small", "lenet5", "cifar_tiny"])
def test_converted_weights_give_identical_scores_at_training_size(name: str) -> None:
    sn = sliding_net(name)
    x = random_image(sn.trained_at.h, sn.trained_at.w, sn.trained_at.d, seed=3)
    original = sn.original().forward(x[None]).ravel()
    one_pass = sn.one_pass(x).ravel()
    assert one_pass.shape == original.shape
    assert np.abs(one_pass - original).max() <= 1e-5


def test_convert_weights_errors_name_the_parameter() -> None:
    spec = bundled("cifar_small")
    state = Network(spec).state_dict()
    assert convert_weights(spec, state)["fc1.weight"].shape == (10, 128, 4, 4)
    # converting twice is harmless
    twice = convert_weights(spec, convert_weights(spec, state))
    assert twice["fc1.weight"].shape == (10, 128, 4, 4)
    bad = dict(state, **{"fc1.weight": np.zeros((10, 100), np.float32)})
    with pytest.raises(ConvertError, match=r"fc1.weight: expected \[10, 2048\]"):
        convert_weights(spec, bad)
    del state["fc1.weight"]
    with pytest.raises(ConvertError, match="missing"):
        convert_weights(spec, state)


# --------------------------------------------------------------------------- equivalence


def test_lenet5_one_pass_equals_crop_by_crop() -> None:
    """LeNet-5 pads nowhere: the one-pass map is exactly every crop's scores."""
    sn = sliding_net("lenet5")
    assert sn.exact
    image = random_image(64, 64, 1)
    v = sn.verify(image)
    assert v["windows"] == 81 and v["expected_exact"]
    assert v["max_abs_diff"] <= 1e-4 and v["passed"]


def test_valid_cifar_net_on_128_equals_crop_by_crop_and_finer_strides() -> None:
    sn = sliding_net(CIFAR_VALID)
    assert sn.exact and sn.net_stride == Pair(8, 8)
    image = random_image(128, 128)
    scores = sn.score_map(image)
    assert scores.shape == (13, 13, 10)
    assert np.abs(scores - sn.crop_by_crop(image)).max() <= 1e-4
    for stride in (4, 2):
        fine = sn.score_map(image, stride)
        assert fine.shape == ((128 - 32) // stride + 1,) * 2 + (10,)
        assert np.abs(fine - sn.crop_by_crop(image, stride)).max() <= 1e-4
        # the shift-0 pass is the one-pass map
        assert np.array_equal(fine[::8 // stride, ::8 // stride], scores)


def test_finer_stride_on_a_non_square_image() -> None:
    sn = sliding_net(CIFAR_VALID)
    image = random_image(48, 72, seed=5)
    fine = sn.score_map(image, 4)
    assert fine.shape == (5, 11, 10)
    assert np.abs(fine - sn.crop_by_crop(image, 4)).max() <= 1e-4
    every = sn.score_map(image, 1)  # every window: 64 passes, interleaved
    assert every.shape == (17, 41, 10)
    assert np.abs(every - sn.crop_by_crop(image, 1)).max() <= 1e-4


def test_cifar_small_pads_so_one_pass_is_not_crop_by_crop() -> None:
    """cifar_small pads every conv: the rule says not exact, and the numbers agree."""
    sn = sliding_net("cifar_small")
    assert not sn.exact
    assert [b.layer for b in sn.breaks] == ["conv1", "conv2", "conv3"]
    image = random_image(128, 128)
    v = sn.verify(image)
    assert v["windows"] == 169 and v["passed"] is None
    assert v["max_abs_diff"] > 1e-2  # a real difference, reported rather than hidden
    # where the window is the whole image, one pass and the crop agree exactly
    small = image[:32, :32]
    assert np.abs(sn.one_pass(small).ravel()
                  - sn.original().forward(small[None]).ravel()).max() <= 1e-5


@pytest.mark.torch
def test_cifar_small_one_pass_matches_pytorch() -> None:
    """The padded net's one-pass map, checked against PyTorch running the same weights."""
    torch = pytest.importorskip("torch")
    sn = sliding_net("cifar_small")
    s = {k: torch.from_numpy(v) for k, v in sn.converted_state.items()}
    x = torch.from_numpy(random_image(128, 128)).permute(2, 0, 1)[None]
    F = torch.nn.functional
    for i in (1, 2, 3):
        x = F.max_pool2d(F.relu(F.conv2d(x, s[f"conv{i}.weight"], s[f"conv{i}.bias"],
                                         padding=1)), 2)
    x = F.conv2d(x, s["fc1.weight"], s["fc1.bias"])
    ours = sn.score_map(random_image(128, 128))
    assert np.abs(ours - x[0].permute(1, 2, 0).numpy()).max() <= 1e-4


def test_vgg_like_at_the_notes_sizes() -> None:
    """A narrow VGG: 224 crops, 384 image, 6x6 windows. Padded like VGG, so not exact."""
    sn = sliding_net(vgg_like((4, 8, 8, 16, 16), 16, pad=1, convs=1, size=224))
    image = random_image(384, 384)
    scores = sn.score_map(image)
    assert scores.shape == (6, 6, 10)
    assert not sn.exact
    v = sn.verify(image, scores)
    assert v["windows"] == 36 and v["max_abs_diff"] > 1e-4


def test_unpadded_vgg_like_equals_crop_by_crop() -> None:
    """VGG's pattern without padding: 286 -> [7x7] after five stages, 446 -> 6x6 windows."""
    sn = sliding_net(vgg_like((4, 8, 8, 16, 16), 16, pad=0, convs=1, size=286))
    assert sn.exact and sn.net_stride == Pair(32, 32)
    image = random_image(446, 446)
    v = sn.verify(image)
    assert v["windows"] == 36 and v["max_abs_diff"] <= 1e-4


def test_no_window_size_with_valid_convs_matches_the_notes_224() -> None:
    """Why the notes' VGG needs padding: with stride 32 and a [7x7] last volume, a 224 crop
    leaves each unit a receptive field of exactly 32 px, so any 3x3 conv must pad."""
    spec = parse_spec(vgg_like((4, 4, 4, 4, 4), 8, pad=0, convs=1, size=224))
    with pytest.raises(SpecInvalid):
        fc_to_conv_spec(spec)


def test_ceil_pooling_is_detected() -> None:
    spec = parse_spec({"input": "30x30x1", "rounding": "ceil", "layers": [
        {"conv": {"filters": 2, "size": 3}}, "relu",        # 28
        {"pool": {"size": 3, "stride": 2}},                 # (28-3)/2+1 = 13.5 -> 14
        {"fc": 3}]})
    conv = fc_to_conv_spec(spec)
    breaks, _ = equivalence(conv, spec.input, "ceil")
    assert [b.reason for b in breaks] == ["ceil"] and breaks[0].layer == "pool1"
    report = analyze(conv, Volume(34, 34, 1), "ceil")
    data = check_sliding(conv, spec.input, report)
    assert data["tiles"] and not data["usable"]


def test_floor_rounding_that_drops_pixels_stays_exact() -> None:
    """Pixels a floor-rounded layer never reads are skipped by the one pass as well."""
    spec_data = {"input": "34x34x1", "rounding": "floor", "layers": [
        {"conv": {"filters": 3, "size": 3, "stride": 2}}, "relu",  # (34-3)/2+1 = 16.5 -> 16
        {"pool": {"size": 2}},                                      # 8
        {"fc": 4}]}
    sn = sliding_net(spec_data)
    assert sn.exact and "never reads the last 1 px" in sn.notes[0]
    image = random_image(34 + 3 * 4, 34 + 2 * 4, 1)
    v = sn.verify(image)
    assert v["max_abs_diff"] <= 1e-4 and v["windows"] == 4 * 3


# --------------------------------------------------------------------------- the CLI


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "img128.npy", (rng.random((128, 128, 3)) * 255).astype(np.uint8))
    np.save(tmp_path / "img130.npy", (rng.random((130, 130, 3)) * 255).astype(np.uint8))
    np.save(tmp_path / "lenet.npy", rng.random((48, 48, 1)).astype(np.float32))
    state = Network(bundled("cifar_small")).state_dict()
    np.savez(tmp_path / "w.npz", **state)
    np.savez(tmp_path / "lenet_w.npz", **Network(bundled("lenet5"), seed=2).state_dict())
    return {p.stem: p for p in tmp_path.iterdir()}


def test_slide_refuses_without_weights(files: dict[str, Path]) -> None:
    r = invoke("slide", "cifar_small", str(files["img128"]))
    assert r.exit_code == 2
    assert "--weights" in r.output and "--random-weights" in r.output


def test_slide_prints_a_grid_and_the_average(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "map.npy"
    r = invoke("slide", "cifar_small", str(files["img128"]), "--weights", str(files["w"]),
               "--average", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "13x13 windows of 32x32 at stride 8" in r.stdout
    assert "average over 169 windows" in r.stdout
    assert "zero-pads inside" in r.output  # the honest warning
    scores = np.load(out)
    assert scores.shape == (13, 13, 10)
    # the same map from the library with the same weights
    from cnncli.sliding.slide import SlidingNet, load_image, load_weights
    w = load_weights(files["w"])
    sn = SlidingNet(bundled("cifar_small"), w.state)
    assert np.abs(sn.score_map(sn.prepare(load_image(files["img128"]), w)) - scores).max() < 1e-6


def test_slide_verify_on_an_exact_net(files: dict[str, Path]) -> None:
    r = invoke("slide", "lenet5", str(files["lenet"]), "--weights", str(files["lenet_w"]),
               "--verify", "--stride", "2")
    assert r.exit_code == 0, r.output
    assert "verify: 81 crops" in r.stdout and ": ok (tolerance 0.0001)" in r.stdout


def test_slide_verify_on_a_padded_net_reports_the_difference(files: dict[str, Path]) -> None:
    r = invoke("slide", "cifar_small", str(files["img128"]), "--random-weights", "--verify",
               "-f", "json")
    assert r.exit_code == 0, r.output
    v = json.loads(r.stdout)["images"][0]["verify"]
    assert v["expected_exact"] is False and v["max_abs_diff"] > 1e-4


def test_slide_rejects_an_image_that_does_not_tile(files: dict[str, Path]) -> None:
    r = invoke("slide", "cifar_small", str(files["img130"]), "--random-weights")
    assert r.exit_code == 1
    assert "do not tile" in r.output and "[128x128x3], [136x136x3]" in r.output


def test_slide_rejects_a_stride_that_does_not_divide(files: dict[str, Path]) -> None:
    r = invoke("slide", "cifar_small", str(files["img128"]), "--random-weights", "--stride", "3")
    assert r.exit_code == 1
    assert "must divide" in r.output


def test_slide_refuses_ceil_pooling(tmp_path: Path) -> None:
    spec = tmp_path / "ceil.yaml"
    spec.write_text(yaml.safe_dump({"input": "30x30x1", "rounding": "ceil", "layers": [
        {"conv": {"filters": 2, "size": 3}}, {"pool": {"size": 3, "stride": 2}}, {"fc": 3}]}))
    np.save(tmp_path / "img.npy", np.zeros((34, 34, 1), np.float32))
    r = invoke("slide", str(spec), str(tmp_path / "img.npy"), "--random-weights")
    assert r.exit_code == 1 and "rounds up" in r.output
    r = invoke("check", str(spec), "--fc-to-conv", "--input", "34x34x1")
    assert r.exit_code == 1 and "rounds up" in r.stdout


def test_slide_file_errors_exit_2(files: dict[str, Path], tmp_path: Path) -> None:
    r = invoke("slide", "cifar_small", str(tmp_path / "nope.npy"), "--random-weights")
    assert r.exit_code == 2 and "no such image" in r.output
    r = invoke("slide", "cifar_small", str(files["img128"]), "--weights", str(tmp_path / "x.npz"))
    assert r.exit_code == 2 and "no such weights file" in r.output
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    r = invoke("slide", "cifar_small", str(files["img128"]), "--weights", str(tmp_path / "bad.npz"))
    assert r.exit_code == 2
    r = invoke("slide", "cifar_small", str(files["img128"]), "--weights", str(files["lenet_w"]))
    assert r.exit_code == 1 and "do not fit" in r.output


def test_convert_prints_a_spec_that_reads_back() -> None:
    r = invoke("convert", "vgg16", "--fc-to-conv")
    assert r.exit_code == 0, r.output
    assert "fc1: FC over [7x7x512] -> conv F=7" in r.stdout
    spec = parse_spec(yaml.safe_load(r.stdout))
    fc1 = [n for n in walk(spec.layers) if n.name == "fc1"][0]
    assert isinstance(fc1, Conv) and fc1.size == Pair(7, 7)
    assert not any(isinstance(n, FC) for n in walk(spec.layers))
    assert analyze(spec, Volume(384, 384, 3)).output == Volume(6, 6, 1000)


def test_convert_of_a_spec_alone_imports_neither_numpy_nor_numba(tmp_path: Path) -> None:
    """A spec is text: writing it (atomically, as every output) needs no numpy."""
    out = tmp_path / "x.yaml"
    code = ("import sys\n"
            "from typer.testing import CliRunner\n"
            "from cnncli.cli.app import app\n"
            f"args = ['convert', 'vgg16', '--fc-to-conv', '-o', {str(out)!r}]\n"
            "assert CliRunner().invoke(app, args).exit_code == 0\n"
            "print(sorted(m for m in ('numba', 'numpy') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
    assert "fc1: FC over [7x7x512] -> conv F=7" in out.read_text()


def test_convert_weights_cli(files: dict[str, Path], tmp_path: Path) -> None:
    r = invoke("convert", "cifar_small", "--fc-to-conv", "--weights", str(files["w"]))
    assert r.exit_code == 2 and "-o OUT.npz" in r.output
    out, spec_out = tmp_path / "conv.npz", tmp_path / "conv.yaml"
    r = invoke("convert", "cifar_small", "--fc-to-conv", "--weights", str(files["w"]),
               "-o", str(out), "--spec-out", str(spec_out))
    assert r.exit_code == 0, r.output
    assert "fc1.weight [10, 2048] -> [10, 128, 4, 4]" in r.output
    with np.load(out) as z:
        assert z["fc1.weight"].shape == (10, 128, 4, 4)
        original = np.load(files["w"])["fc1.weight"]
        assert np.array_equal(z["fc1.weight"].reshape(10, -1), original)
    # the converted spec with the converted weights slides the same way
    r = invoke("slide", str(spec_out), str(files["img128"]), "--weights", str(out), "-f", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["images"][0]["score_map"] == [13, 13, 10]
    r = invoke("convert", "cifar_small")
    assert r.exit_code == 2 and "--fc-to-conv" in r.output


def test_slide_reads_a_training_checkpoint_with_its_normalisation(
        files: dict[str, Path], tmp_path: Path) -> None:
    from cnncli.engine.checkpoint import Checkpoint, save_checkpoint, spec_sha256
    from cnncli.sliding.slide import SlidingNet, load_image
    from cnncli.training.data import normalize
    from cnncli.training.loop import spec_text_of

    spec = bundled("cifar_small")
    state = dict(np.load(files["w"]))
    mean = np.array([0.5, 0.4, 0.3], np.float32)
    std = np.array([0.2, 0.25, 0.3], np.float32)
    names = [f"class{i}" for i in range(10)]
    ckpt = tmp_path / "best.npz"
    save_checkpoint(ckpt, Checkpoint(state, {}, mean, std, meta={
        "spec_sha256": spec_sha256(spec_text_of(spec)), "spec_name": spec.name,
        "classes": names}))
    r = invoke("slide", "cifar_small", str(files["img128"]), "--weights", str(ckpt),
               "-f", "json", "--average")
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)["images"][0]
    assert got["classes"] == names and got["average"][0]["name"].startswith("class")
    expected = SlidingNet(spec, state).score_map(normalize(load_image(files["img128"]), mean, std))
    assert np.array_equal(np.array(got["top_class"]), expected.argmax(-1))
    r = invoke("slide", "cifar_small", str(files["img128"]), "--weights", str(ckpt))
    assert r.exit_code == 0 and "class" in r.stdout


def test_image_files_need_pillow_or_read_with_it(tmp_path: Path) -> None:
    png = tmp_path / "photo.png"
    try:
        from PIL import Image
    except ImportError:
        png.write_bytes(b"\x89PNG\r\n\x1a\n")  # never opened: Pillow is missing
        r = invoke("slide", "cifar_small", str(png), "--random-weights")
        assert r.exit_code == 2 and "needs Pillow" in r.output and ".npy" in r.output
        return
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(png)
    r = invoke("slide", "cifar_small", str(png), "--random-weights", "-f", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["images"][0]["score_map"] == [2, 2, 10]


def test_a_stride_coarser_than_the_nets_is_every_kth_window_of_one_pass():
    from cnncli.sliding.slide import SlidingNet
    from cnncli.spec import catalog
    from cnncli.spec.parse import load_spec

    sliding = SlidingNet.build(load_spec(catalog.resolve("lenet5")))
    image = np.random.default_rng(0).random((64, 64, 1)).astype(np.float32)
    own = sliding.score_map(image)                # stride 4, the net's own
    coarse = sliding.score_map(image, stride=8)   # every 2nd window of the same pass
    np.testing.assert_array_equal(coarse, own[::2, ::2])
    np.testing.assert_allclose(coarse, sliding.crop_by_crop(image, stride=8), atol=1e-4)


# --------------------------------------------------------------------------- images checked


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real training checkpoint: cifar_tiny, one epoch of 20 built-in images."""
    run = tmp_path_factory.mktemp("cifar_tiny_run")
    r = invoke("train", "cifar_tiny", "--train-size", "20", "--batch", "20", "--epochs", "1",
               "--val-fraction", "0", "--out", str(run), "--quiet")
    assert r.exit_code == 0, r.output
    return run / "best.npz"


def one_line(r: Any, code: int, *fragments: str) -> None:
    """One error line (after the net's own warnings, if any), the exit code, no output."""
    assert r.exit_code == code, (r.exit_code, r.output)
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: "), r.stderr
    assert all(line.startswith("warning: ") for line in lines[:-1]), r.stderr
    assert "Traceback" not in r.output and r.stdout == ""
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])


@pytest.mark.parametrize("shape, fragment", [
    ((64, 64), "the image has 1 channel but CIFAR-10 tiny (CS231n notes) takes 3: convert "
               "the greyscale image to RGB"),
    ((64, 64, 1), "the image has 1 channel but CIFAR-10 tiny (CS231n notes) takes 3"),
    ((64, 64, 4), "the image has 4 channels but CIFAR-10 tiny (CS231n notes) takes 3: drop "
                  "the alpha channel"),
    ((3, 64, 64), "the array's shape [3, 64, 64] looks like channels first (CxHxW)"),
    ((2, 64, 64, 3), "expected an image HxWxC, got an array of shape [2, 64, 64, 3]"),
])
def test_slide_gray_image_with_training_checkpoint_says_channels(
        tiny_run: Path, tmp_path: Path, shape: tuple[int, ...], fragment: str) -> None:
    """Used to be `ValueError: non-broadcastable output operand`: the checkpoint's
    3-channel normalisation ran before the channel check."""
    image = tmp_path / "gray.npy"
    np.save(image, np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8))
    for weights in (["--weights", str(tiny_run)], ["--random-weights"]):
        one_line(invoke("slide", "cifar_tiny", *weights, str(image)), 2, f"{image}: {fragment}")


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_slide_nan_image_is_refused_in_one_line(tiny_run: Path, tmp_path: Path,
                                                fmt: str) -> None:
    """An all-NaN image used to print NaN scores, and bare NaN in JSON (not JSON)."""
    image = tmp_path / "nan.npy"
    np.save(image, np.full((64, 64, 3), np.nan, np.float32))
    one_line(invoke("slide", "cifar_tiny", "--weights", str(tiny_run), str(image), "-f", fmt,
                    "--out", str(tmp_path / "map.json")),
             2, f"{image} has 12288 NaN or infinite values (of 12288)")
    assert not (tmp_path / "map.json").exists()


def test_slide_nan_weights_never_print_nan_in_json(files: dict[str, Path],
                                                   tmp_path: Path) -> None:
    state = dict(np.load(files["w"]))
    state["fc1.bias"] = np.full_like(state["fc1.bias"], np.nan)
    np.savez(tmp_path / "nan_w.npz", **state)
    r = invoke("slide", "cifar_small", str(files["img128"]), "--weights",
               str(tmp_path / "nan_w.npz"), "-f", "json", "--out", str(tmp_path / "map.json"))
    one_line(r, 1, "1690 of 1690 scores are NaN or infinite")
    assert not (tmp_path / "map.json").exists()


def test_slide_warns_about_a_float_image_on_the_0_255_scale(tiny_run: Path,
                                                            tmp_path: Path) -> None:
    image = tmp_path / "f255.npy"
    np.save(image, np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.float32))
    r = invoke("slide", "cifar_tiny", "--weights", str(tiny_run), str(image), "-f", "json")
    assert r.exit_code == 0, r.output
    assert r.stderr.strip().splitlines() == [
        f"warning: {image}: float pixels range over 0..255, but cnncli takes float images on "
        "the 0..1 scale (only uint8 is divided by 255); if these are 0..255 values, divide "
        "them by 255 or store uint8"]
    json.loads(r.stdout)
    np.save(image, np.random.default_rng(0).random((64, 64, 3)).astype(np.float32))
    r = invoke("slide", "cifar_tiny", "--weights", str(tiny_run), str(image), "-f", "json")
    assert r.exit_code == 0 and r.stderr == ""


@pytest.mark.parametrize("command", [
    ["slide", "cifar_tiny", "--weights", "RUN", "IMAGE", "--out", "OUT/map.npy"],
    ["slide", "cifar_tiny", "--weights", "RUN", "IMAGE", "--out", "OUT/map.npz"],
    ["slide", "cifar_tiny", "--weights", "RUN", "IMAGE", "--out", "OUT/map.json"],
    ["convert", "cifar_tiny", "--fc-to-conv", "-o", "OUT/conv.yaml"],
    ["convert", "cifar_tiny", "--fc-to-conv", "--weights", "RUN", "-o", "OUT/conv.npz"],
    ["export", "RUN", "OUT/weights.npz"],
], ids=["slide-npy", "slide-npz", "slide-json", "convert-spec", "convert-weights", "export"])
def test_an_output_file_is_never_left_cut_when_writing_it_fails(
        command: list[str], tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file slide, convert and export write goes to a temporary beside it, renamed
    over it once whole: when that fails, the old file is as it was and no temporary stays
    behind (a direct write would have left the new file cut wherever it stopped)."""
    image = tmp_path / "img.npy"
    np.save(image, np.zeros((36, 36, 3), np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    args = [a.replace("RUN", str(tiny_run)).replace("IMAGE", str(image))
            .replace("OUT", str(out)) for a in command]
    target = Path(args[-1])
    target.write_bytes(b"the old file")
    replace = os.replace

    def failing_replace(src: Any, dst: Any) -> None:
        if Path(src).parent == out:  # only the renames of the command's temporaries
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src), None, str(dst))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    r = invoke(*args)
    assert r.exit_code == 2, r.output
    assert r.stderr.strip().splitlines()[-1] == f"error: {target}: {os.strerror(errno.ENOSPC)}"
    assert [p.name for p in out.iterdir()] == [target.name]
    assert target.read_bytes() == b"the old file"
    monkeypatch.setattr(os, "replace", replace)
    r = invoke(*args)  # and when nothing fails, the file is written whole
    assert r.exit_code == 0, r.output
    assert [p.name for p in out.iterdir()] == [target.name]
    assert target.read_bytes() != b"the old file"


def test_an_output_that_is_a_symlink_fifo_or_descriptor_is_written_through_not_replaced(
        tmp_path: Path) -> None:
    """A rename replaces a directory entry: over a symlink it would break the link, over a
    FIFO or /dev/full it would put a file where the device was, and over /dev/fd/N (or
    /dev/stdout) a file that a shell redirected. The file a symlink names is replaced;
    the others are written in place."""
    real, link = tmp_path / "real.yaml", tmp_path / "link.yaml"
    real.write_text("old\n")
    link.symlink_to(real.name)
    r = invoke("convert", "cifar_tiny", "--fc-to-conv", "-o", str(link))
    assert r.exit_code == 0, r.output
    assert link.is_symlink() and "fc1" in real.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.yaml", "real.yaml"]

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader, so the write does not block
    try:
        r = invoke("convert", "cifar_tiny", "--fc-to-conv", "-o", str(fifo))
        assert r.exit_code == 0, r.output
        assert b"fc1" in os.read(reader, 2**16)  # the spec is a few hundred bytes
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(fifo.stat().st_mode)

    opened = tmp_path / "redirected.yaml"
    with opened.open("wb") as fh:
        inode = os.fstat(fh.fileno()).st_ino
        r = invoke("convert", "cifar_tiny", "--fc-to-conv", "-o", f"/dev/fd/{fh.fileno()}")
        assert r.exit_code == 0, r.output
    assert opened.stat().st_ino == inode and "fc1" in opened.read_text()


def test_slide_compiles_ahead_what_its_nets_evaluate(files: dict[str, Path],
                                                      monkeypatch: Any) -> None:
    # a machine without the kernels: the converted net (and, verifying, the original)
    # are compiled before the first image, evaluation only
    from cnncli.engine import warmup

    asked: list[tuple[list[str], bool]] = []

    def cold(steps: Any, training: bool = True, announce: Any = None) -> warmup.AheadOfRun:
        asked.append(([spec.name for spec, _, _ in steps], training))
        # the dry run the real compile_ahead makes must reach the converted net's kernels
        calls: dict[Any, set[Any]] = {}
        with warmup._recording(calls):
            for spec, dtype, policy in steps:
                warmup._step(spec, dtype, policy, training=training)
        assert "_conv_fwd_gemm" in {d.py_func.__name__.removesuffix("_own") for d in calls}
        return warmup.AheadOfRun(kernels=0, processes=0, seconds=0.0)

    monkeypatch.setattr(warmup, "compile_ahead", cold)
    r = invoke("slide", "lenet5", str(files["lenet"]), "--weights", str(files["lenet_w"]),
               "--verify", "--stride", "2")
    assert r.exit_code == 0, r.output
    assert len(asked) == 1 and asked[0][1] is False and len(asked[0][0]) == 2
