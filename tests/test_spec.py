"""The YAML loader against the contract in docs/spec-format.md.

Two kinds of failure, two exit codes: SpecError (exit 2) when the file cannot be read or
is not a spec at all; SpecInvalid (exit 1) carrying every problem found in a spec.
Every message is one line and names the place (key path and line).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cnncli.cli.app import app
from cnncli.layers import FC, LRN, BatchNorm, Concat, Conv, Dropout, Local, Pool, Repeat, Residual
from cnncli.layers.activations import Activation
from cnncli.spec import loading as loading_module
from cnncli.spec import parse as spec_module
from cnncli.spec.parse import (
    Pair,
    SpecError,
    SpecInvalid,
    Volume,
    load_spec,
    parse_spec,
    parse_volume,
    walk,
)
from cnncli.spec.types import MAX_INT, MAX_SPEC_BYTES

runner = CliRunner()


def write(tmp_path: Path, text: str, name: str = "net.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    return load_spec(write(tmp_path, text))


def problems(tmp_path: Path, text: str) -> list:  # type: ignore[type-arg]
    with pytest.raises(SpecInvalid) as info:
        load(tmp_path, text)
    return info.value.problems


def one_problem(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    found = problems(tmp_path, text)
    assert len(found) == 1, [p.message for p in found]
    assert "\n" not in found[0].message
    return found[0]


def spec_error(tmp_path: Path, text: str | bytes) -> str:
    path = tmp_path / "net.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- every layer type

EVERY_TYPE = """
name: every type
input: 32x24x3
loss: svm
rounding: floor
layers:
  - name: stem
    conv: {filters: 8, size: {height: 3, width: 5}, stride: 1, pad: {height: 1, width: 2},
           dilation: 1, bias: false, groups: 1, rounding: strict}
  - relu
  - tanh
  - sigmoid
  - leaky_relu: 0.2
  - batchnorm: {eps: 0.001, momentum: 0.01}
  - lrn: {size: 3, alpha: 0.0002, beta: 0.5, k: 2}
  - pool: {size: 2, type: avg, rounding: ceil}
  - local: {filters: 4, size: 3, pad: 1}
  - dropout: 0.25
  - repeat: 2
    layers:
      - conv: {filters: 4, size: 3, pad: same}
      - relu
  - residual:
      layers: [{conv: {filters: 4, size: 3, pad: 1}}]
      shortcut: [{conv: {filters: 4, size: 1}}]
  - concat:
      - [{conv: {filters: 2, size: 1}}]
      - [{pool: {size: 3, stride: 1, pad: 1, type: max}}]
  - pool: {global: true, type: avg}
  - fc: {units: 10, bias: false}
"""


def test_every_layer_type_and_block_parses(tmp_path: Path) -> None:
    spec = load(tmp_path, EVERY_TYPE)
    assert spec.name == "every type"
    assert spec.input == Volume(32, 24, 3)  # WIDTH x HEIGHT x DEPTH
    assert spec.loss == "svm" and spec.rounding == "floor"
    kinds = [type(n).__name__ for n in spec.layers]
    assert kinds == ["Conv", "ReLU", "Tanh", "Sigmoid", "LeakyReLU", "BatchNorm",
                     "LRN", "Pool", "Local", "Dropout", "Repeat", "Residual", "Concat", "Pool",
                     "FC"]
    stem = spec.layers[0]
    assert stem == Conv("stem", 6, 8, Pair(3, 5), Pair(1, 1), Pair(1, 2), Pair(1, 1), 1, False,
                        "strict")
    assert [a.function for a in spec.layers[1:5]] == ["relu", "tanh", "sigmoid", "leaky_relu"]
    assert spec.layers[4].slope == 0.2
    assert spec.layers[5] == BatchNorm("bn1", 13, 0.001, 0.01)
    assert spec.layers[6] == LRN("lrn1", 14, 3, 0.0002, 0.5, 2.0)
    assert spec.layers[7] == Pool("pool1", 15, Pair(2, 2), Pair(2, 2), Pair(0, 0), "avg", False,
                                  "ceil")
    assert isinstance(spec.layers[8], Local) and spec.layers[8].pad == Pair(1, 1)
    assert spec.layers[9] == Dropout("drop1", 17, 0.25)
    repeat = spec.layers[10]
    assert isinstance(repeat, Repeat) and repeat.count == 2 and len(repeat.passes) == 2
    # copies continue the enclosing numbering, as VGG's conv1..conv13
    assert [n.name for p in repeat.passes for n in p] == ["conv1", "relu2", "conv2", "relu3"]
    assert repeat.passes[0][0].pad == Pair(1, 1) and repeat.passes[0][0].pad_same
    residual = spec.layers[11]
    assert isinstance(residual, Residual)
    assert [n.name for n in residual.body] == ["res1.conv1"]
    assert [n.name for n in residual.shortcut] == ["res1.shortcut.conv1"]
    concat = spec.layers[12]
    assert isinstance(concat, Concat)
    assert [[n.name for n in b] for b in concat.branches] == [["concat1.b1.conv1"],
                                                              ["concat1.b2.pool1"]]
    assert spec.layers[13].is_global and spec.layers[13].type == "avg"
    assert spec.layers[14] == FC("fc1", 29, 10, False)
    assert len(list(walk(spec.layers))) == 20


def test_defaults(tmp_path: Path) -> None:
    spec = load(tmp_path, """
        input: 8x8x1
        layers:
          - conv: {filters: 2, size: 3}
          - pool: {size: 2}
          - leaky_relu
          - batchnorm
          - dropout
          - lrn
          - fc: 3
        """)
    conv, pool, leaky, bn, drop, lrn, fc = spec.layers
    assert spec.name == "net" and spec.loss is None and spec.rounding == "strict"
    assert conv == Conv("conv1", 3, 2, Pair(3, 3), Pair(1, 1), Pair(0, 0), Pair(1, 1), 1, True,
                        None)
    assert pool.stride == Pair(2, 2) and pool.type == "max" and pool.pad == Pair(0, 0)
    assert isinstance(leaky, Activation) and leaky.slope == 0.01
    assert (bn.eps, bn.momentum) == (1e-5, 0.1)
    assert drop.p == 0.5
    assert (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (5, 1e-4, 0.75, 1.0)
    assert fc.units == 3 and fc.bias


def test_batchnorm_eps_1e_minus_5_without_a_dot_is_a_number(tmp_path: Path) -> None:
    """YAML 1.1 (PyYAML) reads 1e-5 and 1.0e5 as text; a real-valued setting takes any
    plain scalar that spells a number, as YAML 1.2 does."""
    spec = load(tmp_path, """
        input: 8x8x4
        layers:
          - batchnorm: {eps: 1e-5, momentum: +1E-1}
          - dropout: 5e-1
          - leaky_relu: {slope: 2.5e-2}
          - lrn: {alpha: 1e-4, beta: 75e-2, k: 2e0}
        """)
    bn, drop, leaky, lrn = spec.layers
    assert (bn.eps, bn.momentum) == (1e-5, 0.1)
    assert drop.p == 0.5 and leaky.slope == 0.025
    assert (lrn.alpha, lrn.beta, lrn.k) == (1e-4, 0.75, 2.0)
    assert all(type(v) is float for v in (bn.eps, bn.momentum, drop.p, lrn.k))


def test_quoted_1e_minus_5_is_text_and_the_message_says_so(tmp_path: Path) -> None:
    p = one_problem(tmp_path, 'input: 8x8x4\nlayers:\n  - batchnorm: {eps: "1e-5"}\n')
    assert p.message == ("layers[0] (bn1).eps: expected a number in (0.0, 1.0], got '1e-5' "
                         "(quoted, so it is text: write it without quotes)")
    # a plain number out of range, or a word, is not told to drop quotes it does not have
    for value in ("2e0", "tiny"):
        p = one_problem(tmp_path, f"input: 8x8x4\nlayers:\n  - batchnorm: {{eps: {value}}}\n")
        assert "quoted" not in p.message and "expected a number in (0.0, 1.0]" in p.message
    # integer settings still take YAML integers only
    p = one_problem(tmp_path, "input: 8x8x4\nlayers:\n  - fc: 1e3\n")
    assert "expected an integer >= 1, got '1e3'" in p.message


def test_pad_same_is_half_the_effective_filter(tmp_path: Path) -> None:
    spec = load(tmp_path, """
        input: 8x8x1
        layers:
          - conv: {filters: 2, size: 5, pad: same}
          - conv: {filters: 2, size: 3, dilation: 2, pad: same}
        """)
    assert spec.layers[0].pad == Pair(2, 2)
    assert spec.layers[1].pad == Pair(2, 2)  # F_eff = 2*(3-1)+1 = 5


@pytest.mark.parametrize("settings", ["{filters: 2, size: 4, pad: same}",
                                      "{filters: 2, size: 3, stride: 2, pad: same}"])
def test_pad_same_needs_odd_size_and_stride_1(tmp_path: Path, settings: str) -> None:
    p = one_problem(tmp_path, f"input: 8x8x1\nlayers:\n  - conv: {settings}\n")
    assert "'same' needs an odd size and stride 1" in p.message and p.line == 3


def test_dilation_0_is_an_error_that_explains_the_notes_convention(tmp_path: Path) -> None:
    p = one_problem(tmp_path, "input: 8x8x1\nlayers:\n  - conv: {filters: 2, size: 3, "
                              "dilation: 0}\n")
    assert p.message.startswith("layers[0] (conv1).dilation: 0 is not allowed")
    assert "dilation 1 is an ordinary convolution" in p.message and "'dilation 0'" in p.message
    assert p.line == 3


# --------------------------------------------------------------------------- input


def test_input_forms(tmp_path: Path) -> None:
    assert load(tmp_path, "input: 300x200x3\nlayers: [relu]\n").input == Volume(300, 200, 3)
    spec = load(tmp_path, "input: {width: 300, height: 200, depth: 3}\nlayers: [relu]\n")
    assert spec.input == Volume(300, 200, 3)
    assert str(spec.input) == "[300x200x3]"
    assert parse_volume(" 7 X 5 x 1 ") == Volume(7, 5, 1)


def test_bare_list_input_is_rejected_because_its_order_is_ambiguous(tmp_path: Path) -> None:
    p = one_problem(tmp_path, "input: [224, 224, 3]\nlayers: [relu]\n")
    assert p.line == 1 and "bare list is ambiguous" in p.message
    assert "WIDTH x HEIGHT x DEPTH" in p.message


@pytest.mark.parametrize("value, expected", [
    ("224x224", "expected WIDTHxHEIGHTxDEPTH like 224x224x3, got '224x224'"),
    ("0x224x3", "every size must be >= 1"),
    ("{width: 2, height: 2}", "expected {width: W, height: H, depth: D}"),
    ("{width: 2, height: 2, depth: 0}", "input.depth: expected an integer >= 1, got 0"),
    ("{width: two, height: 2, depth: 1}", "input.width: expected an integer >= 1, got 'two'"),
])
def test_bad_input(tmp_path: Path, value: str, expected: str) -> None:
    p = one_problem(tmp_path, f"input: {value}\nlayers: [relu]\n")
    assert expected in p.message and p.line == 1


def test_missing_input(tmp_path: Path) -> None:
    assert "input: required" in one_problem(tmp_path, "layers: [relu]\n").message


# --------------------------------------------------------------------------- wrong keys and values


@pytest.mark.parametrize("layer, line, message", [
    ("- conv: {filters: two, size: 3}", 3,
     "layers[0] (conv1).filters: expected an integer >= 1, got 'two'"),
    ("- conv: {filters: 2, size: 3, stride: 0}", 3,
     "layers[0] (conv1).stride: expected an integer >= 1, got 0"),
    ("- conv: {filters: 2, size: 3, pad: -1}", 3,
     "layers[0] (conv1).pad: expected an integer >= 0, got -1"),
    ("- conv: {filters: 2.5, size: 3}", 3,
     "layers[0] (conv1).filters: expected an integer >= 1, got 2.5"),
    ("- conv: {filters: true, size: 3}", 3,
     "layers[0] (conv1).filters: expected an integer >= 1, got True"),
    ("- conv: {filters: [1, 2], size: 3}", 3,
     "layers[0] (conv1).filters: expected an integer >= 1, got [1, 2]"),
    ("- conv: {filters: 2, size: {height: 3}}", 3,
     "layers[0] (conv1).size: expected an integer or {height: H, width: W}, got {'height': 3}"),
    ("- conv: {filters: 2, size: 3, bias: 'no'}", 3,
     "layers[0] (conv1).bias: expected true or false, got 'no'"),
    ("- conv: {filters: 2, size: 3, rounding: up}", 3,
     "layers[0] (conv1).rounding: rounding must be one of strict, floor, ceil, got 'up'"),
    ("- conv: {filters: 3, size: 3, groups: 2}", 3,
     "layers[0] (conv1): filters (3) must be divisible by groups (2)"),
    ("- conv: {size: 3}", 3, "layers[0] (conv1): 'filters' is required"),
    ("- conv: {filters: 2, size: 3, padding: 1}", 3,
     "layers[0] (conv1): unknown setting 'padding' (known: bias, dilation, filters, groups, "
     "pad, rounding, size, stride)"),
    ("- local: {filters: 2, size: 3, groups: 2}", 3, "unknown setting 'groups'"),
    ("- pool: {size: 2, type: median}", 3,
     "layers[0] (pool1).type: expected one of max, avg, l2, got 'median'"),
    ("- pool: {stride: 2}", 3, "layers[0] (pool1): 'size' is required (or global: true)"),
    ("- pool: {global: true, size: 2}", 3, "'size' has no meaning with global: true"),
    ("- fc: {bias: false}", 3, "layers[0] (fc1): 'units' is required (or write fc: 4096)"),
    ("- fc: 0", 3, "layers[0] (fc1).units: expected an integer >= 1, got 0"),
    ("- dropout: 1.0", 3, "layers[0] (drop1).p: expected a number in [0.0, 1.0), got 1.0"),
    ("- dropout: .nan", 3, "layers[0] (drop1).p: expected a number in [0.0, 1.0), got nan"),
    ("- batchnorm: {eps: 0}", 3, "layers[0] (bn1).eps: expected a number in (0.0, 1.0], got 0"),
    ("- leaky_relu: {slope: -1}", 3, "layers[0] (lrelu1).slope: expected a number in [0.0, 1.0]"),
    ("- relu: {slope: 1}", 3, "layers[0] (relu1): unknown setting 'slope' (known: )"),
    ("- conv2d: {filters: 2}", 3, "layers[0]: unknown layer type 'conv2d' (known: conv, local"),
    ("- {conv: {filters: 2, size: 3}, relu: null}", 3,
     "layers[0]: a layer is one type key"),
    ("- 42", 3, "layers[0]: expected a layer (a word like 'relu' or a mapping like "
                "'conv: {...}'), got 42"),
    ("- name: 'conv 1'\n    conv: {filters: 2, size: 3}", 3,
     "layers[0].name: expected a word (letters, digits, _ or -), got 'conv 1'"),
    ("- repeat: 2", 3, "layers[0] (repeat1): a repeat block needs 'layers:' beside 'repeat: N'"),
    ("- repeat: 0\n    layers: [relu]", 3,
     "layers[0] (repeat1).repeat: expected an integer >= 1, got 0"),
    ("- residual: {shortcut: [relu]}", 3, "a residual block needs 'layers:' (its body)"),
    ("- concat: [[relu]]", 3, "concat takes a list of two or more branches"),
    ("- concat: [[relu], relu]", 3, "layers[0] (concat1)[1]: expected a list of layers, "
                                    "got 'relu'"),
])
def test_wrong_values_name_the_place(tmp_path: Path, layer: str, line: int, message: str) -> None:
    p = one_problem(tmp_path, f"input: 8x8x4\nlayers:\n  {layer}\n")
    assert message in p.message
    assert p.line == line


def test_top_level_problems(tmp_path: Path) -> None:
    found = problems(tmp_path, """
        name: [a, b]
        input: 8x8x1
        loss: hinge
        rounding: nearest
        optimizer: sgd
        layers: relu
        """)
    messages = sorted(p.message for p in found)
    assert messages == sorted([
        "name: expected text, got ['a', 'b']",
        "loss: expected one of softmax, svm, got 'hinge'",
        "rounding: rounding must be one of strict, floor, ceil, got 'nearest'",
        "unknown top-level key 'optimizer' (known: classes, description, input, layers, loss, "
        "name, rounding)",
        "layers: expected a list of layers, got 'relu'",
    ])
    assert next(p.line for p in found if "optimizer" in p.message) == 5
    assert next(p.line for p in found if p.message.startswith("layers:")) == 6


def test_empty_layer_list(tmp_path: Path) -> None:
    assert one_problem(tmp_path, "input: 8x8x1\nlayers: []\n").message == \
        "layers: the net has no layers"


def test_all_errors_at_once(tmp_path: Path) -> None:
    found = problems(tmp_path, """
        input: 8x8x1
        layers:
          - conv: {filters: 0, size: 3}
          - pool: {size: x}
          - fc: -1
          - dropout: 2
        """)
    assert [p.line for p in found] == [3, 4, 5, 6]


def test_values_are_bounded(tmp_path: Path) -> None:
    p = one_problem(tmp_path, f"input: 8x8x1\nlayers:\n  - fc: {MAX_INT + 1}\n")
    assert "is too large" in p.message
    with pytest.raises(ValueError, match="at most"):
        parse_volume(f"{10 ** 40}x1x1")


def test_duplicate_names(tmp_path: Path) -> None:
    p = one_problem(tmp_path, """
        input: 8x8x1
        layers:
          - name: features
            conv: {filters: 2, size: 3, pad: 1}
          - relu
          - name: features
            conv: {filters: 2, size: 3, pad: 1}
        """)
    assert p.message == ("layers[2]: the name 'features' is used twice (first at line "
                         "3); names must be unique in a net")
    assert p.line == 6


def test_names_inside_repeats_get_the_pass_number(tmp_path: Path) -> None:
    spec = load(tmp_path, """
        input: 8x8x1
        layers:
          - repeat: 2
            layers:
              - name: block
                conv: {filters: 2, size: 3, pad: 1}
        """)
    assert [n.name for n in walk(spec.layers)] == ["block_1", "block_2"]


def test_repeat_that_would_exhaust_memory_is_refused_quickly(tmp_path: Path) -> None:
    found = problems(tmp_path, """
        input: 8x8x1
        layers:
          - repeat: 100000
            layers:
              - repeat: 100000
                layers: [relu]
        """)
    assert any("the net expands to more than 100,000 layers" in p.message for p in found)


def test_parse_spec_accepts_plain_python_data() -> None:
    spec = parse_spec({"input": "5x5x3", "layers": [{"conv": {"filters": 2, "size": 3}}]})
    assert spec.input == Volume(5, 5, 3) and spec.layers[0].filters == 2
    with pytest.raises(SpecInvalid, match="filters: expected an integer"):
        parse_spec({"input": "5x5x3", "layers": [{"conv": {"filters": "x", "size": 3}}]})


# --------------------------------------------------------------------------- not a spec (exit 2)


def test_yaml_python_tags_are_refused(tmp_path: Path) -> None:
    message = spec_error(tmp_path, "!!python/object/apply:os.system ['echo pwned']\n")
    assert "!!python/object/apply:os.system is not allowed" in message
    message = spec_error(tmp_path, "input: !!python/object:os.system {a: 1}\nlayers: [relu]\n")
    assert "line 1: the YAML tag !!python/object:os.system is not allowed" in message
    message = spec_error(tmp_path, "input: !!python/name:os.system ''\nlayers: [relu]\n")
    assert "python/name:os.system" in message


def test_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    message = spec_error(tmp_path, "\n".join(lines) + "\nlayers: *a8\n")
    assert message.endswith("its aliases expand the YAML by more than 200,000 nodes "
                            "(an alias bomb?)")


def test_deeply_nested_yaml_is_refused(tmp_path: Path) -> None:
    message = spec_error(tmp_path, "input: 8x8x1\nlayers: " + "[" * 5000 + "]" * 5000 + "\n")
    assert message.endswith("the YAML is nested too deeply")


@pytest.mark.parametrize("content, expected", [
    ("", "the file is empty"),
    ("# only a comment\n", "the file is empty"),
    ("- relu\n- relu\n", "not a cnncli spec (expected a mapping with 'input' and 'layers')"),
    ("just words\n", "not a cnncli spec"),
    ("input: 8x8x1\n", "not a cnncli spec (no 'layers:' key; see docs/spec-format.md)"),
    ("input: [8, 8\n", "not valid YAML"),
    ("a: 1\n---\nb: 2\n", "not valid YAML"),
    ("a: b: c\n", "not valid YAML at line 1"),
    (b"input: 8x8x1\nlayers: [relu]\n\xff\xfe\n",
     "not a text/YAML file (byte 0xff at line 3 is not UTF-8)"),
    (b"input: 8x8x1\nlayers: [relu]\n# caf\xc3", "not a text/YAML file (byte 0xc3 at line 3"),
    ("input: 8x8x1\nlayers: [relu]\n\x00\n",
     "not valid YAML at line 3: unacceptable character #x0000"),
])
def test_not_a_spec(tmp_path: Path, content: str | bytes, expected: str) -> None:
    assert expected in spec_error(tmp_path, content)


# Every kind of file error, each written so that it names the file in its message.
FILE_ERRORS = [
    ("empty", ""),
    ("tag", "input: !!python/name:os.system ''\nlayers: [relu]\n"),
    ("key not a word", "input: 8x8x1\nlayers: [{? [a, b] : 1}]\n"),
    ("duplicate key", "input: 8x8x1\nlayers: [relu]\nlayers: [tanh]\n"),
    ("not yaml", "input: [8, 8\n"),
    ("unprintable", "input: 8x8x1\nlayers: [relu]\n\x00\n"),
    ("not a mapping", "- relu\n"),
    ("no layers", "input: 8x8x1\n"),
    ("nested too deeply", "layers: " + "[" * 5000 + "]" * 5000 + "\n"),
    ("binary", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff"),
]


@pytest.mark.parametrize("content", [c[1] for c in FILE_ERRORS], ids=[c[0] for c in FILE_ERRORS])
def test_every_file_error_names_the_file_once(tmp_path: Path, content: str | bytes) -> None:
    message = spec_error(tmp_path, content)
    path = str(tmp_path / "net.yaml")
    assert message.startswith(f"{path}: ") and message.count(path) == 1, message


def test_an_empty_file_is_named_once(tmp_path: Path) -> None:
    path = write(tmp_path, "", "empty.yaml")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}: the file is empty"  # not "empty.yaml: empty.yaml: ..."


def test_a_file_over_4_mib_is_refused_by_size_before_it_is_parsed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    line = b"  - relu\n"
    path = tmp_path / "big.yaml"
    path.write_bytes(b"input: 8x8x1\nlayers:\n" + line * (MAX_SPEC_BYTES // len(line)))
    assert path.stat().st_size > MAX_SPEC_BYTES == 4 * 2**20

    def parse(*args: object) -> None:
        raise AssertionError("an oversize file reached the YAML parser")
    monkeypatch.setattr(spec_module, "read_yaml", parse)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}: larger than 4 MiB; a spec is a small YAML file"


def test_a_file_of_exactly_the_size_cap_is_read(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "input: 8x8x1\nlayers: [relu]\n")
    monkeypatch.setattr(loading_module, "MAX_SPEC_BYTES", path.stat().st_size)
    assert load_spec(path).input == Volume(8, 8, 1)
    monkeypatch.setattr(loading_module, "MAX_SPEC_BYTES", path.stat().st_size - 1)
    with pytest.raises(SpecError, match="larger than"):
        load_spec(path)


def test_many_plain_values_are_too_many_values_not_an_alias_bomb(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading_module, "MAX_YAML_NODES", 50)
    message = spec_error(tmp_path, "input: 8x8x1\nlayers: [" + "relu, " * 60 + "]\n")
    assert message.endswith("the file holds more than 50 YAML values; a spec is a small file")
    assert "alias" not in message


def test_the_alias_bomb_guard_counts_only_copies_made_by_aliases(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading_module, "MAX_ALIAS_NODES", 50)
    # 60 layers written out: no alias, so no alias bomb however many values there are
    assert len(load(tmp_path, "input: 8x8x1\nlayers: [" + "relu, " * 60 + "]\n").layers) == 60
    # a few aliases that repeat a few values are an ordinary use of YAML
    few = ("input: 8x8x1\nlayers: &five [relu, relu, relu, relu, relu]\n"
           "description: [*five, *five]\n")
    assert len(load(tmp_path, few).layers) == 5
    many = few.replace("[*five, *five]", "[" + ", ".join(["*five"] * 20) + "]")
    assert spec_error(tmp_path, many).endswith(
        "its aliases expand the YAML by more than 50 nodes (an alias bomb?)")


# --------------------------------------------------------------------------- duplicate keys


def test_duplicate_layers_key_is_an_error_with_both_lines(tmp_path: Path) -> None:
    # PyYAML keeps the last one: the first list of layers would vanish without a word
    message = spec_error(tmp_path, "input: 8x8x1\nlayers:\n  - relu\nname: net\n"
                                   "layers:\n  - tanh\n")
    assert message.endswith(": duplicate key 'layers' at line 5 (first at line 2)")


def test_duplicate_setting_in_a_flow_mapping_is_an_error(tmp_path: Path) -> None:
    # {filters: 8, size: 3, filters: 16} would silently give 16 filters
    message = spec_error(tmp_path, "input: 8x8x1\nlayers:\n"
                                   "  - conv: {filters: 8, size: 3, filters: 16}\n")
    assert message.endswith(": duplicate key 'filters' at line 3, column 33 (first at column 12)")


def test_duplicate_setting_in_a_block_mapping_names_both_lines(tmp_path: Path) -> None:
    message = spec_error(tmp_path, textwrap.dedent("""\
        input: 8x8x1
        layers:
          - relu
          - conv:
              filters: 8
              size: 3
              filters: 16
        """))
    assert message.endswith(": duplicate key 'filters' at line 7 (first at line 5)")


def test_a_merge_key_may_be_overridden_without_a_duplicate(tmp_path: Path) -> None:
    # `<<: *base` then `filters: 16` is YAML's way to override a merged key, not a duplicate;
    # the third layer meets the already merged mapping again through its alias
    spec = load(tmp_path, """
        input: 8x8x1
        layers:
          - conv: &base {filters: 8, size: 3, pad: 1}
          - conv: &wide {<<: *base, filters: 16}
          - conv: *wide
        """)
    assert [n.filters for n in spec.layers] == [8, 16, 16]  # type: ignore[union-attr]


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="is a directory"):
        load_spec(tmp_path)


def test_utf8_bom_is_read(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_text("input: 8x8x1\nlayers: [relu]\n", encoding="utf-8-sig")
    assert load_spec(path).input == Volume(8, 8, 1)


# --------------------------------------------------------------------------- exit codes via the CLI

EXIT_CASES = [
    ("valid", "input: 8x8x1\nlayers: [relu]\n", 0),
    ("invalid net", "input: 10x10x1\nlayers:\n  - conv: {filters: 1, size: 3, stride: 2}\n", 1),
    ("bad value", "input: 8x8x1\nlayers:\n  - conv: {filters: x, size: 3}\n", 1),
    ("bare list input", "input: [8, 8, 1]\nlayers: [relu]\n", 1),
    ("empty", "", 2),
    ("a list", "[1, 2]\n", 2),
    ("not yaml", "input: [\n", 2),
    ("tag", "!!python/object/apply:os.system ['true']\n", 2),
    ("duplicate key", "input: 8x8x1\nlayers: [relu]\nlayers: [tanh]\n", 2),
]


@pytest.mark.parametrize("content, code", [c[1:] for c in EXIT_CASES],
                         ids=[c[0] for c in EXIT_CASES])
def test_exit_codes(tmp_path: Path, content: str, code: int) -> None:
    path = tmp_path / "net.yaml"
    path.write_text(content, encoding="utf-8")
    result = runner.invoke(app, ["check", str(path)])
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    if code == 2:
        assert result.stdout == ""
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


def test_exit_2_for_missing_file_and_directory(tmp_path: Path) -> None:
    for target in (str(tmp_path / "nope.yaml"), str(tmp_path)):
        result = runner.invoke(app, ["check", target])
        assert result.exit_code == 2 and "Traceback" not in result.output


# --------------------------------------------------------------------------- not specs at all
# Run as a user runs them: a fresh process under a memory limit, so that reading without
# bound would end in a MemoryError traceback here.


def cnncli_check(target: str | Path) -> subprocess.CompletedProcess[str]:
    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-m", "cnncli", "check", str(target)],
                          capture_output=True, text=True, timeout=120, env=env,
                          preexec_fn=limit_memory)


def assert_one_line_exit_2(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr == f"error: {message}\n"


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_check_dev_zero_is_larger_than_a_spec() -> None:
    assert_one_line_exit_2(cnncli_check("/dev/zero"),
                           "/dev/zero: larger than 4 MiB; a spec is a small YAML file")


@pytest.mark.skipif(not Path("/dev/urandom").exists(), reason="needs /dev/urandom")
def test_check_dev_urandom_is_not_a_text_file() -> None:
    result = cnncli_check("/dev/urandom")
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.startswith("error: /dev/urandom: not a text/YAML file (byte 0x")
    assert result.stderr.count("\n") == 1


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
@pytest.mark.parametrize("endless", [False, True], ids=["a spec", "endless"])
def test_check_reads_a_fifo_up_to_the_size_cap(tmp_path: Path, endless: bool) -> None:
    fifo = tmp_path / "net.yaml"
    os.mkfifo(fifo)
    feed = textwrap.dedent(f"""
        try:
            with open({str(fifo)!r}, "wb") as f:
                f.write(b"input: 8x8x1\\nlayers: [relu]\\n")
                while {endless}:
                    f.write(b"# more\\n" * 4096)
        except OSError:  # the reader closed the pipe
            pass
        """)
    writer = subprocess.Popen([sys.executable, "-c", feed])
    try:
        result = cnncli_check(fifo)
    finally:
        writer.kill()
        writer.wait()
    if endless:
        assert_one_line_exit_2(result, f"{fifo}: larger than 4 MiB; a spec is a small YAML file")
    else:
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("content", [c[1] for c in FILE_ERRORS], ids=[c[0] for c in FILE_ERRORS])
def test_check_on_each_file_error_prints_one_line_and_exits_2(tmp_path: Path,
                                                              content: str | bytes) -> None:
    path = tmp_path / "net.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = runner.invoke(app, ["check", str(path)])
    assert result.exit_code == 2 and result.stdout == "", result.output
    assert result.stderr.startswith(f"error: {path}: ") and result.stderr.count("\n") == 1


BAD_FILES = [
    ("empty", b"", "the file is empty"),
    ("two layers keys", b"input: 8x8x1\nlayers: [relu]\nlayers: [tanh]\n",
     "duplicate key 'layers' at line 3 (first at line 2)"),
    ("a setting twice", b"input: 8x8x1\nlayers:\n  - conv: {filters: 8, size: 3, filters: 16}\n",
     "duplicate key 'filters' at line 3, column 33 (first at column 12)"),
    ("plain but huge", b"input: 8x8x1\nlayers:\n" + b"  - relu\n" * (MAX_SPEC_BYTES // 9 + 1),
     "larger than 4 MiB; a spec is a small YAML file"),
    ("binary", b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)),
     "not a text/YAML file (byte 0x80 at line 2 is not UTF-8)"),  # 0x0a comes first
]


@pytest.mark.parametrize("content, message", [c[1:] for c in BAD_FILES],
                         ids=[c[0] for c in BAD_FILES])
def test_check_on_a_bad_file_prints_one_line_naming_it_once(tmp_path: Path, content: bytes,
                                                            message: str) -> None:
    path = tmp_path / "net.yaml"
    path.write_bytes(content)
    assert_one_line_exit_2(cnncli_check(path), f"{path}: {message}")
