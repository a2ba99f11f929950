"""`cnncli check`: the notes' VGG16 table, the bundled architectures' published figures,
the command line (exit codes, formats, options) and robustness against malformed files."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cnncli.analysis.report import Report, analyze, valid_input_sizes
from cnncli.cli.app import app
from cnncli.render.tables import human, report_csv, report_markdown
from cnncli.spec import catalog
from cnncli.spec.parse import Volume, load_spec, parse_spec

runner = CliRunner()


def report_of(name: str, **kwargs) -> Report:  # type: ignore[no-untyped-def]
    return analyze(load_spec(catalog.resolve(name)), **kwargs)


def invoke(*args: str):  # type: ignore[no-untyped-def]
    result = runner.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"{args}: {result.exception!r}"
    return result


# --------------------------------------------------------------------------- the notes' VGG16

# Verbatim from the CS231n notes, "VGGNet in detail".
NOTES_VGG16 = """
INPUT: [224x224x3]      memory: 224*224*3=150K  weights: 0
CONV3-64: [224x224x64]  memory: 224*224*64=3.2M  weights: (3*3*3)*64 = 1,728
CONV3-64: [224x224x64]  memory: 224*224*64=3.2M  weights: (3*3*64)*64 = 36,864
POOL2: [112x112x64]    memory: 112*112*64=800K  weights: 0
CONV3-128: [112x112x128] memory: 112*112*128=1.6M weights: (3*3*64)*128 = 73,728
CONV3-128: [112x112x128] memory: 112*112*128=1.6M weights: (3*3*128)*128 = 147,456
POOL2: [56x56x128]     memory: 56*56*128=400K  weights: 0
CONV3-256: [56x56x256] memory: 56*56*256=800K  weights: (3*3*128)*256 = 294,912
CONV3-256: [56x56x256] memory: 56*56*256=800K  weights: (3*3*256)*256 = 589,824
CONV3-256: [56x56x256] memory: 56*56*256=800K  weights: (3*3*256)*256 = 589,824
POOL2: [28x28x256]     memory: 28*28*256=200K  weights: 0
CONV3-512: [28x28x512] memory: 28*28*512=400K  weights: (3*3*256)*512 = 1,179,648
CONV3-512: [28x28x512] memory: 28*28*512=400K  weights: (3*3*512)*512 = 2,359,296
CONV3-512: [28x28x512] memory: 28*28*512=400K  weights: (3*3*512)*512 = 2,359,296
POOL2: [14x14x512]     memory: 14*14*512=100K  weights: 0
CONV3-512: [14x14x512] memory: 14*14*512=100K  weights: (3*3*512)*512 = 2,359,296
CONV3-512: [14x14x512] memory: 14*14*512=100K  weights: (3*3*512)*512 = 2,359,296
CONV3-512: [14x14x512] memory: 14*14*512=100K  weights: (3*3*512)*512 = 2,359,296
POOL2: [7x7x512]       memory: 7*7*512=25K   weights: 0
FC: [1x1x4096]         memory: 4096  weights: 7*7*512*4096 = 102,760,448
FC: [1x1x4096]         memory: 4096  weights: 4096*4096 = 16,777,216
FC: [1x1x1000]         memory: 1000  weights: 4096*1000 = 4,096,000

TOTAL memory: 24M * 4 bytes ~= 93MB / image (only forward! ~*2 for bwd)
TOTAL params: 138M parameters
"""

_ROW = re.compile(r"(?P<kind>\w+)(-\d+)?: (?P<volume>\[\d+x\d+x\d+\])\s+memory: (?P<memory>\S+)"
                  r"\s+weights: (?P<weights>.*)")


def _notes_rows() -> list[dict[str, str]]:
    return [m.groupdict() for m in map(_ROW.match, NOTES_VGG16.strip().splitlines()) if m]


def _shown(text: str) -> float:
    """The notes' rounded figure: '3.2M' -> 3.2e6, '150K' -> 150e3, '4096' -> 4096."""
    scale = {"K": 1e3, "M": 1e6}.get(text[-1], 1)
    return float(text.rstrip("KM")) * scale


def test_vgg16_reproduces_every_row_of_the_notes_table() -> None:
    report = report_of("vgg16")
    notes = _notes_rows()
    assert len(notes) == 22
    ours = [r for r in report.layers if r.kind in ("conv", "pool", "fc")]
    assert len(ours) == len(notes) - 1  # the notes' first row is the input
    assert notes[0]["volume"] == str(report.input)
    assert report.input.size == 224 * 224 * 3
    kinds = {"CONV3": "conv", "POOL2": "pool", "FC": "fc"}
    for row, note in zip(ours, notes[1:], strict=True):
        where = f"{row.name} vs the notes' {note['kind']} {note['volume']}"
        assert kinds[note["kind"]] == row.kind, where
        assert str(row.output) == note["volume"], where
        # memory: the notes write the product and a rounded figure (224*224*64=3.2M)
        product, _, rounded = note["memory"].partition("=")
        exact = eval(product)  # e.g. 224*224*64; the notes' own arithmetic
        assert row.activations == exact, where
        assert abs(row.activations - _shown(rounded or product)) <= 0.01 * exact, where
        # weights: '(3*3*64)*128 = 73,728' or '0'
        expected = note["weights"].split("=")[-1].strip().replace(",", "")
        assert row.weights == int(expected), where
        # the notes count weights only; cnncli lists the biases beside them
        assert row.biases == (row.output.d if row.kind != "pool" else 0), where


def test_vgg16_totals() -> None:
    report = report_of("vgg16")
    totals = report.totals()
    notes_weights = sum(int(n["weights"].split("=")[-1].replace(",", "")) for n in _notes_rows())
    assert totals["weights"] == notes_weights == 138_344_128
    assert totals["biases"] == 13_416
    assert totals["parameters"] == 138_357_544  # the notes: "TOTAL params: 138M parameters"
    # The notes' "TOTAL memory: 24M" does not follow from its own rows, which add up to
    # 15,237,608 numbers (the input plus every CONV/POOL/FC output, ReLU in place): a known
    # inconsistency of the notes. cnncli pins the sum of the rows instead.
    notes_memory = sum(eval(n["memory"].split("=")[0]) for n in _notes_rows())
    assert totals["activations_per_image"] == notes_memory == 15_237_608
    assert totals["activation_bytes_per_image_float32"] == 4 * 15_237_608  # ~58 MiB, not 93 MB
    assert totals["macs"] == 15_470_264_320 and human(totals["macs"]) == "15.47G"
    assert report.output == Volume(1, 1, 1000)
    assert report.receptive_field is not None and report.receptive_field.h == 404
    assert report.row("pool5").receptive_field.h == 212  # type: ignore[union-attr]
    assert report.jump is not None and report.jump.h == 32
    heaviest = max(report.layers, key=lambda r: r.parameters)
    assert heaviest.name == "fc1" and heaviest.weights == 102_760_448  # "the first FC layer"


# --------------------------------------------------------------------------- every bundled net

# (name, input, parameters, MACs, output): published parameter counts, torchvision's MACs
BUNDLED = [
    ("alexnet", "[227x227x3]", 60_965_224, 724_406_816, "[1x1x1000]"),
    ("alexnet_torchvision", "[224x224x3]", 61_100_840, 714_188_480, "[1x1x1000]"),
    ("allconv", "[32x32x3]", 1_369_738, 270_798_336, "[1x1x10]"),
    ("cifar_small", "[32x32x3]", 113_738, 10_342_400, "[1x1x10]"),
    ("cifar_tiny", "[32x32x3]", 31_066, 362_496, "[1x1x10]"),
    ("cifar_vgg_bn", "[32x32x3]", 666_858, 29_723_136, "[1x1x10]"),
    ("googlenet", "[224x224x3]", 6_624_904, 1_498_376_192, "[1x1x1000]"),
    ("lenet5", "[32x32x1]", 61_706, 416_520, "[1x1x10]"),
    ("nin", "[32x32x3]", 966_986, 222_486_528, "[1x1x10]"),
    ("resnet18", "[224x224x3]", 11_689_512, 1_814_073_344, "[1x1x1000]"),
    ("resnet20", "[32x32x3]", 272_474, 40_813_184, "[1x1x10]"),
    ("resnet50", "[224x224x3]", 25_557_032, 4_089_184_256, "[1x1x1000]"),
    ("vgg16", "[224x224x3]", 138_357_544, 15_470_264_320, "[1x1x1000]"),
    ("vgg19", "[224x224x3]", 143_667_240, 19_632_062_464, "[1x1x1000]"),
    ("zfnet", "[224x224x3]", 62_357_608, 1_168_032_896, "[1x1x1000]"),
]


def test_every_bundled_architecture_is_pinned() -> None:
    assert sorted(b[0] for b in BUNDLED) == catalog.bundled_names()


@pytest.mark.parametrize("name, volume, parameters, macs, output", BUNDLED,
                         ids=[b[0] for b in BUNDLED])
def test_bundled_architecture_figures(name: str, volume: str, parameters: int, macs: int,
                                      output: str) -> None:
    report = report_of(name)
    assert report.valid, [e.message for e in report.errors]
    assert str(report.input) == volume
    assert report.parameters == parameters
    assert report.macs == macs
    assert str(report.output) == output
    assert report.parameters == sum(n for r in report.layers for n in
                                    [_numel(s) for s in r.params.values()])


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@pytest.mark.parametrize("name, shown", [("vgg16", "15.47G"), ("resnet50", "4.09G"),
                                         ("resnet18", "1.81G"), ("googlenet", "1.50G")])
def test_published_gmacs(name: str, shown: str) -> None:
    assert human(report_of(name).macs) == shown


# --------------------------------------------------------------------------- CIFAR-size nets


def _walk(report: Report, names: tuple[str, ...]) -> list[str]:
    return [str(report.row(name).output) for name in names]  # type: ignore[union-attr]


def test_resnet20_volumes_through_its_three_stages() -> None:
    # INPUT [32x32x3] -> CONV [32x32x16] -> stage 1 [32x32x16] -> stage 2 [16x16x32]
    # -> stage 3 [8x8x64] -> POOL (global average) [1x1x64] -> FC [1x1x10]
    report = report_of("resnet20")
    assert str(report.input) == "[32x32x3]"
    assert _walk(report, ("relu1", "relu4", "relu7", "relu10", "pool1", "fc1")) == [
        "[32x32x16]", "[32x32x16]", "[16x16x32]", "[8x8x64]", "[1x1x64]", "[1x1x10]"]
    # 6n + 2 = 20 weighted layers (n = 3), the two 1x1 projections not counted
    weighted = [r.name for r in report.layers if r.kind in ("conv", "fc")]
    assert len(weighted) == 22 and sum(".shortcut." in n for n in weighted) == 2
    assert sum(r.kind == "add" for r in report.layers) == 9  # one sum per residual block


def test_cifar_vgg_bn_volumes_halve_at_each_pool() -> None:
    # INPUT [32x32x3] -> [CONV-BN-RELU]*2 [32x32x32] -> POOL [16x16x32]
    # -> [CONV-BN-RELU]*2 [16x16x64] -> POOL [8x8x64] -> CONV-BN-RELU [8x8x128]
    # -> POOL [4x4x128] -> FC [1x1x256] -> FC [1x1x10]
    report = report_of("cifar_vgg_bn")
    assert _walk(report, ("relu2", "pool1", "relu4", "pool2", "relu5", "pool3", "fc1",
                          "fc2")) == ["[32x32x32]", "[16x16x32]", "[16x16x64]", "[8x8x64]",
                                      "[8x8x128]", "[4x4x128]", "[1x1x256]", "[1x1x10]"]
    convs = [r for r in report.layers if r.kind == "conv"]
    assert [r.output.d for r in convs] == [32, 32, 64, 64, 128]  # type: ignore[union-attr]
    assert all(r.biases == 0 for r in convs)  # batchnorm's shift is the bias


@pytest.mark.parametrize("name", ["resnet20", "cifar_vgg_bn"])
def test_cifar_batchnorm_nets_check_without_wasted_biases(name: str) -> None:
    result = invoke("check", name)
    assert result.exit_code == 0 and result.stderr == ""
    assert "right before batchnorm" not in result.stdout
    assert _bias_hints(report_of(name)) == []


def test_resnet20_check_has_no_hints_and_vgg_bn_only_the_fc_one() -> None:
    assert "hint:" not in invoke("check", "resnet20").stdout
    hints = [line for line in invoke("check", "cifar_vgg_bn").stdout.splitlines()
             if line.startswith("hint:")]
    assert len(hints) == 1 and "fc1 holds 79% of all parameters (524,544)" in hints[0]


def _torch_reference(name: str):  # type: ignore[no-untyped-def]
    """(model, rename): the hand-written torch.nn net and its names -> cnncli's."""
    pytest.importorskip("torch")
    import torch_nets as T

    if name == "resnet20":
        return T.ResNet20(option="B"), T.resnet20_name
    model = T.cifar_vgg_bn()
    return model, T.vgg_rename(model)


@pytest.mark.torch
@pytest.mark.parametrize("name", ["resnet20", "cifar_vgg_bn"])
def test_cifar_net_parameters_equal_torch_layer_by_layer(name: str) -> None:
    import torch_nets as T

    from cnncli.engine.network import Network

    model, rename = _torch_reference(name)
    net = Network.from_spec(name)
    # every parameter under the same name and PyTorch layout (OIHW, [out, in])
    assert {k: v.shape for k, v in net.params.items()} == \
        {rename(k): tuple(p.shape) for k, p in model.named_parameters()}
    # and every running statistic: the same state loads either way
    assert {k: v.shape for k, v in net.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in T.state_in_cnncli_names(model, rename).items()}
    report = report_of(name)
    assert report.parameters == sum(p.numel() for p in model.parameters()) == \
        net.num_parameters()
    # multiply-adds from torch's modules by formula: each conv's weights times its
    # output positions, each linear layer's weights
    assert report.macs == T.macs(model, 32, 32)[0]


@pytest.mark.torch
def test_resnet20_option_a_is_the_papers_count_and_option_b_adds_the_projections() -> None:
    pytest.importorskip("torch")
    import torch
    import torch.nn.functional as F
    import torch_nets as T

    report = report_of("resnet20")
    paper = T.ResNet20(option="A")  # zero-padded identity shortcuts, as section 4.2
    # the paper's "0.27M" parameters and the 40.55M multiply-adds usually quoted for
    # ResNet-20 are option A's, computed here from torch's modules
    paper_parameters = sum(p.numel() for p in paper.parameters())
    paper_macs = T.macs(paper, 32, 32)[0]
    assert (paper_parameters, paper_macs) == (269_722, 40_551_040)
    assert human(paper_macs) == "40.55M"
    # option B's two 1x1 stride-2 projections (conv + batchnorm scale and shift)
    assert report.parameters - paper_parameters == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert report.macs - paper_macs == 16 * 16 * 32 * 16 + 8 * 8 * 64 * 32
    assert (report.parameters, human(report.macs)) == (272_474, "40.81M")
    # torch's stages give the volumes of our walk-through, [D, H, W] there
    x = F.relu(paper.bn1(paper.conv1(torch.zeros(1, 3, 32, 32))))
    for stage, relu in ((paper.layer1, "relu4"), (paper.layer2, "relu7"), (paper.layer3, "relu10")):
        x = stage(x)
        v = report.row(relu).output  # type: ignore[union-attr]
        assert tuple(x.shape[1:]) == (v.d, v.h, v.w), relu  # type: ignore[union-attr]


def test_nets_written_as_pytorch_writes_them_need_floor_and_say_where() -> None:
    report = report_of("resnet50")
    assert report.rounding == "floor" and report.valid
    harmless = [p.layer for p in report.rounded if "zero-padding only (harmless)" in p.message]
    lossy = [p.layer for p in report.rounded if "real data dropped" in p.message]
    assert "conv1" in harmless and "pool1" in harmless
    # the 1x1 stride-2 projection shortcuts skip the last row and column of their input
    assert lossy and all(".shortcut." in name for name in lossy if name)
    strict = report_of("resnet50", rounding="strict")
    assert not strict.valid and strict.errors[0].layer == "conv1"


def test_alexnet_at_224_is_an_error_suggesting_227() -> None:
    report = report_of("alexnet", input_volume=Volume(224, 224, 3))
    assert not report.valid
    first = report.errors[0]
    assert first.layer == "conv1" and first.line is not None and first.line > 1
    assert "(224 - 11 + 2*0)/4 + 1 = 54.25" in first.message
    assert first.fix is not None and "227" in first.fix
    assert valid_input_sizes(report.spec, Volume(224, 224, 3))[0] == Volume(227, 227, 3)


def test_alexnet_at_224_under_floor_drops_real_pixels() -> None:
    report = report_of("alexnet", input_volume=Volume(224, 224, 3), rounding="floor")
    assert report.valid and report.output == Volume(1, 1, 1000)
    assert report.rounded[0].layer == "conv1" and "real data dropped" in report.rounded[0].message


# --------------------------------------------------------------------------- the command line


def test_check_vgg16_table() -> None:
    result = invoke("check", "vgg16")
    assert result.exit_code == 0 and result.stderr == ""
    out = result.stdout
    assert "VGG16  input [224x224x3]  rounding strict" in out
    assert re.search(r"conv1 +conv +64 filters, 3, pad 1 +\[224x224x64\] +3,211,264 +1,728 +64 ",
                     out)
    assert re.search(r"fc1 +fc +4096 units +\[1x1x4096\] +4,096 +102,760,448 +4,096 ", out)
    assert "parameters   138,357,544 (138,344,128 weights + 13,416 biases)" in out
    assert "15.47G MACs" in out
    # a lint hint from the notes, which leaves the exit code at 0
    assert "hint: line 41: fc1 holds 74% of all parameters (102,764,544)" in out
    # blocks are a tree: the repeated convs are indented under their repeat
    assert re.search(r"\nrepeat1 +repeat +x2 *\n  conv1 ", out)


def test_json_csv_markdown_carry_the_same_figures() -> None:
    as_json = json.loads(invoke("check", "resnet18", "--format", "json").stdout)
    as_csv = list(csv.DictReader(io.StringIO(invoke("check", "resnet18", "-f", "csv").stdout)))
    markdown = invoke("check", "resnet18", "-f", "markdown").stdout
    assert as_json["valid"] is True and as_json["totals"]["parameters"] == 11_689_512
    assert as_json["totals"]["macs"] == 1_814_073_344
    assert as_json["output"] == {"width": 1, "height": 1, "depth": 1000, "text": "[1x1x1000]"}
    assert len(as_json["layers"]) == len(as_csv)
    md_rows = {line.split(" | ")[0].strip("| *"): line.split(" | ")
               for line in markdown.splitlines() if line.startswith("| ")}
    for layer, row in zip(as_json["layers"], as_csv, strict=True):
        assert row["name"] == layer["name"] and row["kind"] == layer["kind"]
        for key in ("weights", "biases", "parameters", "macs", "activations"):
            assert int(row[key]) == layer[key], (layer["name"], key)
        assert layer["parameters"] == layer["weights"] + layer["biases"]
        cells = md_rows[layer["name"]]
        if layer["output"] is not None:
            assert row["output"] == cells[3] == layer["output"]["text"]
            assert cells[5] == (f"{layer['weights']:,}" if layer["weights"] else "")
            assert cells[7] == (f"{layer['macs']:,}" if layer["macs"] else "")
    assert sum(int(r["parameters"]) for r in as_csv) == 11_689_512
    assert "| **total** | | | [1x1x1000] | 6,072,808 | 11,683,712 | 5,800 | 1,814,073,344 |" \
        in markdown
    conv1 = as_json["layers"][0]
    assert conv1["params"] == {"conv1.weight": [64, 3, 7, 7]}
    assert conv1["receptive_field"] == {"height": 7, "width": 7}
    assert conv1["jump"] == {"height": 2, "width": 2}
    assert conv1["notes"] and "harmless" in conv1["notes"][0]
    assert {r["layer"] for r in as_json["rounded"]} >= {"conv1", "pool1"}


def test_invalid_net_exits_1_with_errors_on_stderr_and_a_fix() -> None:
    result = invoke("check", "alexnet", "--input", "224x224x3", "--format", "json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["valid"] is False and data["output"] is None
    assert data["errors"][0]["fix"].count("227") == 1
    err = result.stderr
    assert "error: line 20: conv1: output height and width (224 - 11 + 2*0)/4 + 1 = 54.25 is not " \
           "a whole number" in err
    assert "input sizes near [224x224x3] for which every layer is whole: [227x227x3]" in err
    assert re.search(r"4 errors: \S+alexnet.yaml is not a valid net at \[224x224x3\]", err)


def test_table_format_prints_errors_on_stderr() -> None:
    result = invoke("check", "alexnet", "--input", "224x224x3")
    assert result.exit_code == 1
    assert "54.25" in result.stderr and "54.25" not in result.stdout


def test_rounding_option_accepts_the_net_and_lists_rounded_layers() -> None:
    result = invoke("check", "alexnet", "--input", "224x224x3", "--rounding", "floor")
    assert result.exit_code == 0
    assert "AlexNet  input [224x224x3]  rounding floor" in result.stdout
    assert "rounding (floor): line 20: conv1: height and width: (224 - 11 + 2*0)/4 + 1 = 54.25 " \
           "rounded down to 54; the last input pixel is never seen by this layer (real data " \
           "dropped)" in result.stdout


def test_input_option_checks_another_size() -> None:
    result = invoke("check", "vgg16", "--input", "384x384x3", "-f", "json")
    data = json.loads(result.stdout)
    assert result.exit_code == 0 and data["input"]["text"] == "[384x384x3]"
    assert data["layers"][-1]["name"] == "fc3"
    pool5 = next(r for r in data["layers"] if r["name"] == "pool5")
    assert pool5["output"]["text"] == "[12x12x512]"
    fc1 = next(r for r in data["layers"] if r["name"] == "fc1")
    assert fc1["weights"] == 12 * 12 * 512 * 4096


@pytest.mark.parametrize("args, fragment", [
    (["check", "vgg16", "--input", "224x224"], "--input: expected WIDTHxHEIGHTxDEPTH"),
    (["check", "vgg16", "--input", "0x224x3"], "every size must be >= 1"),
    (["check", "vgg16", "--rounding", "nearest"], "nearest"),
    (["check", "vgg16", "--format", "xml"], "xml"),
    (["check", "no_such_net"], "no such file, and not a bundled architecture"),
    (["check", "a" * 300], "not a readable path"),
    (["check", "vgg16", "--input", "99999999999x1x1"], "every size must be at most"),
])
def test_usage_and_file_errors_exit_2(args: list[str], fragment: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2
    assert fragment in result.stderr and "Traceback" not in result.output


def test_markup_in_a_path_is_printed_verbatim() -> None:
    result = runner.invoke(app, ["check", "[/]"])
    assert result.exit_code == 2 and "[/]" in result.stderr


def test_markup_in_a_spec_name_is_printed_verbatim(tmp_path: Path) -> None:
    path = tmp_path / "net.yaml"
    path.write_text("name: '[/] [bold]net'\ninput: 8x8x1\nlayers: [relu]\n")
    result = invoke("check", str(path))
    assert result.exit_code == 0 and "[/] [bold]net  input [8x8x1]" in result.stdout


def test_list() -> None:
    result = invoke("list")
    assert result.exit_code == 0
    for name, volume, parameters, _, output in BUNDLED:
        assert re.search(rf"\n{name} .* {re.escape(volume)} +{parameters:,} .* "
                         rf"{re.escape(output)}\n", result.stdout)
    rows = json.loads(invoke("list", "--format", "json").stdout)
    assert [(r["name"], r["input"], r["parameters"], r["macs"], r["output"]) for r in rows] == \
        BUNDLED
    assert all(r["valid"] for r in rows)


# --------------------------------------------------------------------------- hints

CONV_BN = """\
name: conv bn
input: 16x16x3
layers:
  - conv: {filters: 8, size: 3, pad: 1}
  - batchnorm
  - relu
  - conv: {filters: 16, size: 3, pad: 1}
  - batchnorm
  - relu
  - pool: {global: true, type: avg}
  - fc: 10
"""


def _bias_hints(report: Report) -> list[str]:
    return [w.message for w in report.warnings if "right before batchnorm" in w.message]


def test_conv_bias_right_before_batchnorm_is_hinted_with_the_parameters_it_wastes(
        tmp_path: Path) -> None:
    path = tmp_path / "conv_bn.yaml"
    path.write_text(CONV_BN, encoding="utf-8")
    result = invoke("check", str(path))
    assert result.exit_code == 0  # a hint never changes the exit code
    assert ("hint: line 4: conv1, conv2 have biases right before batchnorm, which subtracts "
            "each channel's mean and adds its own shift: 24 parameters that learn nothing; "
            "write bias: false") in result.stdout
    fixed = CONV_BN.replace("pad: 1}", "pad: 1, bias: false}")
    path.write_text(fixed, encoding="utf-8")
    assert _bias_hints(analyze(load_spec(path))) == []


def test_resnet18_writes_bias_false_before_batchnorm_so_no_bias_hint() -> None:
    report = report_of("resnet18")
    assert _bias_hints(report) == []
    assert sum(r.kind == "batchnorm" for r in report.layers) == 20


@pytest.mark.parametrize("layers, hinted", [
    # an fc layer's bias is one per unit, and batchnorm over [1x1xunits] removes it too
    ([{"fc": 6}, "batchnorm"], ["fc1 has a bias", "6 parameters"]),
    # the last conv of one repeat pass meets the first batchnorm of the next
    ([{"repeat": 2, "layers": ["batchnorm", {"conv": {"filters": 4, "size": 1}}]}],
     ["conv1 has a bias", "4 parameters"]),
    # a residual adds its body's bias to the sum that batchnorm then centres
    ([{"residual": {"layers": [{"conv": {"filters": 3, "size": 1}}]}}, "batchnorm"],
     ["res1.conv1 has a bias", "3 parameters"]),
    # a concat branch's channels go into batchnorm as they are
    ([{"concat": [[{"conv": {"filters": 2, "size": 1}}], [{"conv": {"filters": 5, "size": 1,
                                                                     "bias": False}}]]},
      "batchnorm"], ["concat1.b1.conv1 has a bias", "2 parameters"]),
    # more than three layers are counted, not all named
    ([{"repeat": 5, "layers": [{"conv": {"filters": 2, "size": 1}}, "batchnorm"]}],
     ["conv1, conv2, conv3 and 2 more have biases", "10 parameters"]),
])
def test_bias_before_batchnorm_is_found_through_blocks(layers: list, hinted: list[str]) -> None:  # type: ignore[type-arg]
    found = _bias_hints(analyze(parse_spec({"input": "4x4x3", "layers": layers})))
    assert len(found) == 1 and all(h in found[0] for h in hinted), found


@pytest.mark.parametrize("layers", [
    [{"conv": {"filters": 4, "size": 1}}, "relu", "batchnorm"],  # a ReLU in between: kept
    [{"conv": {"filters": 4, "size": 1, "bias": False}}, "batchnorm"],
    # a locally-connected bias differs per position; batchnorm removes only its mean
    [{"local": {"filters": 4, "size": 1}}, "batchnorm"],
    [{"residual": {"layers": [{"conv": {"filters": 3, "size": 1}}, "relu"]}}, "batchnorm"],
])
def test_no_bias_hint_where_batchnorm_does_not_cancel_the_bias(layers: list) -> None:  # type: ignore[type-arg]
    assert _bias_hints(analyze(parse_spec({"input": "4x4x3", "layers": layers}))) == []


# --------------------------------------------------------------------------- golden output


def _strip_paths(text: str) -> str:
    return text.replace(str(catalog.bundled_dir()), "<bundled>")


@pytest.mark.parametrize("name", ["vgg16", "resnet18", "googlenet"])
def test_golden_markdown(name: str, golden) -> None:  # type: ignore[no-untyped-def]
    result = invoke("check", name, "--format", "markdown")
    assert result.exit_code == 0
    golden(f"{name}.md", result.stdout)
    assert result.stdout == report_markdown(report_of(name))


def test_golden_csv(golden) -> None:  # type: ignore[no-untyped-def]
    text = invoke("check", "alexnet", "-f", "csv").stdout
    golden("alexnet.csv", text)
    assert text == report_csv(report_of("alexnet"))


@pytest.mark.parametrize("name", ["resnet18", "googlenet"])
def test_golden_table_at_240_columns(name: str, golden) -> None:  # type: ignore[no-untyped-def]
    # piped output is laid out at 240 columns (cli.out): scripts and diffs read it
    result = invoke("check", name)
    assert result.exit_code == 0
    golden(f"{name}.txt", result.stdout)


def test_golden_errors(golden) -> None:  # type: ignore[no-untyped-def]
    result = invoke("check", "alexnet", "--input", "224x224x3", "-f", "csv")
    assert result.exit_code == 1
    golden("alexnet_224.stderr", _strip_paths(result.stderr))


# --------------------------------------------------------------------------- robustness

MALFORMED = [
    "", "\n\n", "~", "null", "42", "'a string'", "[]", "{}", "- relu", "[input, layers]",
    "layers:", "layers: ~", "layers: 5", "layers: {conv: 1}", "input: 8x8x1\nlayers: [[]]",
    "input: 8x8x1\nlayers: [~]", "input: 8x8x1\nlayers: [{}]", "input: 8x8x1\nlayers: [[relu]]",
    "input: 8x8x1\nlayers: [{conv: ~}]", "input: 8x8x1\nlayers: [{conv: [1, 2]}]",
    "input: 8x8x1\nlayers: [{conv: {filters: 2, size: {height: 3, width: x}}}]",
    "input: 8x8x1\nlayers: [{pool: {size: 9}}]",
    "input: 8x8x1\nlayers: [{pool: {global: 1}}]",
    "input: 8x8x1\nlayers: [{residual: {layers: [{conv: {filters: 3, size: 1}}]}}]",
    "input: 8x8x1\nlayers: [{residual: []}]",
    "input: 8x8x1\nlayers: [{concat: [[{pool: {size: 2}}], [relu]]}]",
    "input: 8x8x1\nlayers: [{concat: {a: 1}}]",
    "input: 8x8x1\nlayers: [{repeat: x, layers: [relu]}]",
    "input: 8x8x1\nlayers: [{repeat: 2, layers: relu}]",
    "input: 8x8x1\nlayers: [{name: ~, relu: ~}]",
    "input: 8x8x1\nlayers: [{name: [x], relu: ~}]",
    "input: 8x8x1\nlayers: [{? [a, b] : 1}]",
    "input: 8x8x1\nlayers: [{1: 2}]",
    "input: 8x8x1\nlayers: [{conv: {filters: 2, size: 3, groups: 0}}]",
    "input: 8x8x3\nlayers: [{conv: {filters: 2, size: 3, groups: 2}}]",
    "input: 8x8x1\nlayers: [{fc: 1e999}]",
    "input: 8x8x1\nlayers: [{fc: .inf}]",
    "input: 8x8x1\nlayers: [{dropout: .nan}]",
    "input: 8x8x1\nlayers: [{lrn: {size: 0}}]",
    "input: 2001-01-01\nlayers: [relu]",
    "input: !!binary aGVsbG8=\nlayers: [relu]",
    "input: {width: 8, height: 8, depth: 1, extra: 2}\nlayers: [relu]",
    "input: 8x8x1\nrounding: [floor]\nlayers: [relu]",
    "input: &a [*a]\nlayers: [relu]",
    "input: 8x8x1\nlayers: [relu]\n<<: {a: 1}",
    "input: 8x8x1\nlayers: [relu]\n<<: 3",
    "input: 8x8x1\nlayers: [relu]\n\tbad: tab",
    "input: 8x8x1\nlayers: [repeat]",
    "input: 8x8x1\nlayers: [!!set {relu}]",
    "input: 8x8x1\nlayers: !!omap [a: 1]",
    "input: 8x8x1\nlayers: [relu]\n---\nmore: 1",
    "input: 8x8x1\nlayers: [{conv: {filters: 2147483648, size: 1}}]",
    "input: 99999999999x1x1\nlayers: [relu]",
]


def _check_file(text: str, *extra: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "net.yaml"
        path.write_text(text, encoding="utf-8")
        result = runner.invoke(app, ["check", str(path), *extra])
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"{text!r}: {result.exception!r}"
    assert "Traceback" not in result.output
    return result.exit_code


@pytest.mark.parametrize("text", MALFORMED)
def test_malformed_files_exit_1_or_2_without_a_traceback(text: str) -> None:
    assert _check_file(text) in (1, 2)


_words = st.sampled_from(["input", "layers", "name", "conv", "pool", "fc", "relu", "local",
                          "filters", "size", "stride", "pad", "dilation", "groups", "bias",
                          "global", "type", "repeat", "residual", "shortcut", "concat",
                          "rounding", "floor", "ceil", "strict", "same", "max", "avg",
                          "dropout", "batchnorm", "lrn", "units", "height", "width", "depth",
                          "8x8x3", "32x32x3"])
_scalars = st.one_of(st.integers(-3, 40), _words, st.booleans(), st.none(),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(_words, inner, max_size=4)), max_leaves=20)
_layers = st.lists(st.one_of(_words, st.dictionaries(_words, _values, min_size=1, max_size=2)),
                   max_size=6)


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(input=st.one_of(st.sampled_from(["8x8x3", "32x32x3", "7x9x2"]), _values),
       layers=_layers, rounding=st.sampled_from([None, "strict", "floor", "ceil"]),
       chop=st.integers(0, 400))
def test_random_specs_never_give_a_traceback(input, layers, rounding, chop) -> None:  # type: ignore[no-untyped-def]
    doc = {"input": input, "layers": layers}
    if rounding:
        doc["rounding"] = rounding
    text = yaml.safe_dump(doc, default_flow_style=True)
    assert _check_file(text) in (0, 1, 2)
    assert _check_file(text[:chop]) in (0, 1, 2)  # cut anywhere: broken YAML as well


# --------------------------------------------------------------------------- speed


def test_check_does_not_import_numba() -> None:
    code = ("import sys\n"
            "from typer.testing import CliRunner\n"
            "from cnncli.cli.app import app\n"
            "for args in (['check', 'vgg16'], ['check', 'resnet50', '-f', 'json'],\n"
            "             ['check', 'alexnet', '--input', '224x224x3'], ['list']):\n"
            "    CliRunner().invoke(app, args)\n"
            "print(sorted(m for m in ('numba', 'numpy', 'scipy', 'torch') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_check_training_counts_each_layers_forward_and_both_backward_products() -> None:
    """The first layer computes no input gradient; every other conv/fc layer's two backward
    products are each as large as its forward one (AlexNet conv1: 105.42M MACs per image)."""
    result = runner.invoke(app, ["check", "alexnet", "--training", "--format", "json"])
    assert result.exit_code == 0, result.output
    costs = json.loads(result.stdout)["training"]
    rows = {r["name"]: r for r in costs["layers"]}
    assert rows["conv1"]["forward"] == 55 * 55 * 96 * 11 * 11 * 3
    assert rows["conv1"]["backward_data"] == 0
    assert rows["conv1"]["backward_weights"] == rows["conv1"]["forward"]
    assert rows["conv2"]["backward_data"] == rows["conv2"]["forward"]
    assert rows["relu1"]["total"] == 0  # not a dot product: counted as none, as published
    totals = costs["totals"]
    assert totals["forward"] == sum(r["forward"] for r in costs["layers"])
    assert totals["backward_data"] == totals["forward"] - rows["conv1"]["forward"]
    assert totals["total"] == 3 * totals["forward"] - rows["conv1"]["forward"]
    table = runner.invoke(app, ["check", "alexnet", "--training"], terminal_width=120)
    assert "backward dL/dW" in table.stdout and "2.07G" in table.stdout
