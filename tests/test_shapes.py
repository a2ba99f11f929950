"""The notes' arithmetic: (W - F + 2P)/S + 1, rounding rules, receptive fields, fixes.

Each test states an example from the CS231n ConvNet notes and checks cnncli gives the
number the notes give.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest

from cnncli.analysis.report import Report, analyze
from cnncli.analysis.shapes import (
    Field,
    rounding_note,
    whole_inputs,
    whole_paddings,
    whole_strides,
    window_output,
)
from cnncli.spec.parse import Pair, Volume, parse_spec


def net(input: str, *layers: dict, rounding: str = "strict") -> Report:  # type: ignore[type-arg]
    return analyze(parse_spec({"input": input, "rounding": rounding, "layers": list(layers)}))


def out(w: int, f: int, p: int, s: int, rounding: str = "strict", pool: bool = False) -> int | None:
    return window_output(w, f, p, s, rounding, is_pool=pool).out


# --------------------------------------------------------------------------- spatial arrangement


def test_7x7_input_3x3_filter_stride_1_gives_5_and_stride_2_gives_3() -> None:
    assert out(7, 3, 0, 1) == 5
    assert out(7, 3, 0, 2) == 3


def test_the_figure_with_w5_f3_p1_gives_5_and_3_and_refuses_stride_3() -> None:
    assert out(5, 3, 1, 1) == 5
    assert out(5, 3, 1, 2) == 3
    r = window_output(5, 3, 1, 3, "strict")
    assert r.out is None and r.exact == Fraction(7, 3)  # (5 - 3 + 2) = 4 is not divisible by 3
    assert whole_paddings(5, 3, 3, 1) == [2, 5]
    assert whole_strides(5, 3, 1, 3) == [2, 1]
    assert whole_inputs(5, 3, 1, 3) == [4, 7]


def test_w10_f3_p0_s2_gives_4_5_and_is_rejected_with_the_formula_and_fixes() -> None:
    r = window_output(10, 3, 0, 2, "strict")
    assert r.out is None and r.exact == Fraction(9, 2)
    assert r.formula == "(10 - 3 + 2*0)/2 + 1 = 4.5"
    report = net("10x10x1", {"conv": {"filters": 1, "size": 3, "stride": 2}})
    [error] = report.errors
    assert error.layer == "conv1" and error.line == 0
    assert error.message == "conv1: output height and width (10 - 3 + 2*0)/2 + 1 = 4.5 is not a " \
                            "whole number"
    # no padding can help (7 + 2P is odd); stride 1 or an input of 9 or 11 can
    assert error.fix == ("stride 1 (-> 8); an input height and width of 9 or 11 to this layer; "
                         "or rounding: floor / ceil to accept it")
    assert not report.valid and report.output is None


def test_krizhevsky_227_input_11x11_stride_4_gives_55x55x96() -> None:
    report = net("227x227x3", {"conv": {"filters": 96, "size": 11, "stride": 4}})
    assert report.valid and report.output == Volume(55, 55, 96)
    assert window_output(227, 11, 0, 4, "strict").formula == "(227 - 11 + 2*0)/4 + 1 = 55"


def test_alexnet_first_layer_at_224_is_an_error_that_suggests_227() -> None:
    report = net("224x224x3", {"conv": {"filters": 96, "size": 11, "stride": 4}})
    [error] = report.errors
    assert "(224 - 11 + 2*0)/4 + 1 = 54.25 is not a whole number" in error.message
    assert error.fix is not None and "an input height and width of 223 or 227" in error.fix
    assert whole_paddings(224, 11, 4, 0) == []  # 213 + 2P is always odd


def test_11x11x4_input_f5_s2_gives_4() -> None:
    report = net("11x11x4", {"conv": {"filters": 1, "size": 5, "stride": 2}})
    assert report.output == Volume(4, 4, 1)


def test_convolution_demo_5x5x3_k2_f3_s2_p1_gives_3x3x2() -> None:
    report = net("5x5x3", {"conv": {"filters": 2, "size": 3, "stride": 2, "pad": 1}})
    row = report.row("conv1")
    assert row.output == Volume(3, 3, 2)
    assert (row.weights, row.biases) == (2 * 3 * 3 * 3, 2)
    assert row.params == {"conv1.weight": (2, 3, 3, 3), "conv1.bias": (2,)}


def test_zero_padding_p_equals_f_minus_1_over_2_keeps_the_size() -> None:
    for w, f in itertools.product((5, 7, 32, 224), (1, 3, 5, 7)):
        assert out(w, f, (f - 1) // 2, 1) == w


def test_pooling_2x2_stride_2_halves_and_3x3_stride_2_overlaps() -> None:
    assert out(224, 2, 0, 2, pool=True) == 112
    assert out(55, 3, 0, 2, pool=True) == 27
    assert out(32, 2, 0, 2, pool=True) == 16


def test_dilation_widens_the_filter() -> None:
    r = window_output(7, 3, 0, 1, "strict", dilation=2)
    assert r.f_eff == 5 and r.out == 3


def test_window_larger_than_the_padded_input_is_an_error_naming_both() -> None:
    report = net("2x2x1", {"conv": {"filters": 1, "size": 3}}, rounding="floor")
    [error] = report.errors
    assert error.message.startswith("conv1: the height and width 2 (padded to 2) is smaller than "
                                    "the window 3")


def test_ceil_pool_wider_than_its_padded_input_gives_one_output_as_caffe_and_pytorch() -> None:
    r = window_output(1, 2, 0, 2, "ceil", is_pool=True)
    assert (r.out, r.overhang) == (1, 1)
    assert window_output(1, 2, 0, 2, "floor", is_pool=True).out is None
    assert window_output(1, 4, 0, 2, "ceil", is_pool=True).out is None  # ceil(-3/2) + 1 = 0
    assert window_output(1, 2, 0, 2, "ceil", is_pool=False).out is None  # convs round down


def test_rectangular_settings_are_checked_per_dimension() -> None:
    report = net("12x9x1", {"conv": {"filters": 1, "size": {"height": 3, "width": 5},
                                     "stride": {"height": 2, "width": 1}}})
    assert report.output == Volume(8, 4, 1)  # width (12-5)/1+1 = 8, height (9-3)/2+1 = 4
    report = net("12x10x1", {"conv": {"filters": 1, "size": 3, "stride": 3}})
    [error] = report.errors  # the width is whole, (12 - 3)/3 + 1 = 4; the height is not
    assert error.message.startswith("conv1: output height (10 - 3 + 2*0)/3 + 1 = 3.33333")


# --------------------------------------------------------------------------- parameters


def test_32x32x3_input_5x5_receptive_field_has_75_weights_and_1_bias() -> None:
    row = net("32x32x3", {"conv": {"filters": 1, "size": 5}}).row("conv1")
    assert (row.weights, row.biases) == (5 * 5 * 3, 1) == (75, 1)


def test_16x16x20_input_3x3_receptive_field_has_180_connections() -> None:
    row = net("16x16x20", {"conv": {"filters": 1, "size": 3, "pad": 1}}).row("conv1")
    assert row.weights == 3 * 3 * 20 == 180


def test_alexnet_first_layer_without_parameter_sharing_has_105_705_600_parameters() -> None:
    local = net("227x227x3", {"local": {"filters": 96, "size": 11, "stride": 4}}).row("local1")
    # 55*55*96 = 290,400 neurons, each with 11*11*3 = 363 weights and 1 bias
    assert local.output == Volume(55, 55, 96)
    assert (local.weights, local.biases) == (290_400 * 363, 290_400)
    assert local.parameters == 105_705_600
    shared = net("227x227x3", {"conv": {"filters": 96, "size": 11, "stride": 4}}).row("conv1")
    assert (shared.weights, shared.biases) == (34_848, 96)
    assert shared.parameters == 34_944
    assert local.macs == shared.macs == 290_400 * 363  # sharing saves parameters, not compute


def test_fc_over_7x7x512_as_a_7x7_conv_gives_1x1x4096_with_the_same_parameters() -> None:
    fc = net("7x7x512", {"fc": 4096}).row("fc1")
    conv = net("7x7x512", {"conv": {"filters": 4096, "size": 7}}).row("conv1")
    assert fc.output == conv.output == Volume(1, 1, 4096)
    assert fc.weights == conv.weights == 7 * 7 * 512 * 4096 == 102_760_448
    assert fc.biases == conv.biases == 4096
    assert fc.macs == conv.macs


def test_three_stacked_3x3_convs_see_7x7_with_27c2_parameters_against_49c2() -> None:
    c = 64
    conv3 = {"conv": {"filters": c, "size": 3, "pad": 1, "bias": False}}
    stack = net(f"32x32x{c}", conv3, "relu", conv3, "relu", conv3, "relu")
    single = net(f"32x32x{c}", {"conv": {"filters": c, "size": 7, "pad": 3, "bias": False}})
    assert stack.receptive_field == single.receptive_field == Pair(7, 7)
    assert [r.receptive_field for r in stack.rows if r.kind == "conv"] == \
        [Pair(3, 3), Pair(5, 5), Pair(7, 7)]
    assert stack.parameters == 27 * c * c
    assert single.parameters == 49 * c * c


# --------------------------------------------------------------------------- receptive field


def test_receptive_field_and_cumulative_stride() -> None:
    report = net("227x227x3", {"conv": {"filters": 96, "size": 11, "stride": 4}},
                 {"pool": {"size": 3, "stride": 2}},
                 {"conv": {"filters": 8, "size": 3, "dilation": 2, "pad": 2}})
    assert report.row("conv1").receptive_field == Pair(11, 11)
    assert report.row("conv1").jump == Pair(4, 4)
    assert report.row("pool1").receptive_field == Pair(11 + 2 * 4, 11 + 2 * 4)
    assert report.row("pool1").jump == Pair(8, 8)
    assert report.row("conv2").receptive_field == Pair(19 + 4 * 8, 19 + 4 * 8)
    assert report.jump == Pair(8, 8)
    assert Field().through(3, 1).through(3, 1) == Field(5, 1)


# --------------------------------------------------------------------------- rounding


def test_floor_remainder_on_padding_only_is_harmless() -> None:
    # ResNet's stem at 224: (224 - 7 + 2*3)/2 + 1 = 112.5 -> 112, the unused pixel is padding
    r = window_output(224, 7, 3, 2, "floor")
    assert (r.out, r.remainder, r.dropped_pixels) == (112, 1, 0)
    assert rounding_note("height and width", r) == (
        "height and width: (224 - 7 + 2*3)/2 + 1 = 112.5 rounded down to 112; the 1 unused px "
        "fall on zero-padding only (harmless)")


def test_floor_remainder_that_drops_real_pixels_says_so() -> None:
    # AlexNet's first layer at 224 without padding: the last input column is never seen
    r = window_output(224, 11, 0, 4, "floor")
    assert (r.out, r.remainder, r.dropped_pixels) == (54, 1, 1)
    assert "the last input pixel is never seen by this layer (real data dropped)" in \
        rounding_note("width", r)
    r = window_output(10, 2, 0, 4, "floor")  # (10 - 2)/4 + 1 = 3: whole, nothing to report
    assert not r.changed
    r = window_output(11, 2, 0, 4, "floor")
    assert (r.out, r.dropped_pixels) == (3, 1)
    r = window_output(15, 2, 1, 4, "floor")  # span 15: 3 unused px, 1 of them padding
    assert (r.out, r.remainder, r.dropped_pixels) == (4, 3, 2)
    assert "the last input 2 pixels are never seen" in rounding_note("width", r)


def test_strict_is_the_default_and_floor_reports_every_rounded_layer() -> None:
    layers = ({"conv": {"filters": 96, "size": 11, "stride": 4}},
              {"pool": {"size": 3, "stride": 2}})
    strict = net("224x224x3", *layers)
    assert strict.rounding == "strict" and len(strict.errors) == 2
    floor = net("224x224x3", *layers, rounding="floor")
    assert floor.valid and floor.output == Volume(26, 26, 96)
    assert [p.layer for p in floor.rounded] == ["conv1", "pool1"]
    assert floor.row("conv1").notes == [
        "height and width: (224 - 11 + 2*0)/4 + 1 = 54.25 rounded down to 54; the last input "
        "pixel is never seen by this layer (real data dropped)"]
    # the --rounding override beats the file's setting
    assert analyze(strict.spec, rounding="ceil").output == Volume(27, 27, 96)


def test_ceil_rounds_pools_up_and_convs_down() -> None:
    pool = window_output(112, 3, 0, 2, "ceil", is_pool=True)  # GoogLeNet's first pool
    assert pool.out == 56 and pool.overhang == 1
    assert rounding_note("width", pool) == (
        "width: (112 - 3 + 2*0)/2 + 1 = 55.5 rounded up to 56; the last window hangs 1 px past "
        "the padded input (read as padding)")
    conv = window_output(224, 7, 3, 2, "ceil", is_pool=False)
    assert conv.out == 112 and conv.overhang == 0


def test_ceil_drops_a_last_window_that_would_start_inside_the_padding() -> None:
    # W=4, F=2, S=3, P=1: the padded input is 6 px; a third window would start at 6,
    # past the real pixels and the left padding, so Caffe and PyTorch drop it
    r = window_output(4, 2, 1, 3, "ceil", is_pool=True)
    assert r.exact == Fraction(7, 3) and r.out == 2 and r.overhang == 0
    note = rounding_note("width", r)
    assert "rounded down to 2" in note and "zero-padding only (harmless)" in note


def test_per_layer_rounding_overrides_the_file() -> None:
    report = net("10x10x1", {"pool": {"size": 3, "stride": 2, "rounding": "ceil"}},
                 {"pool": {"size": 2, "stride": 2, "rounding": "floor"}})
    assert report.row("pool1").output == Volume(5, 5, 1)  # 4.5 up
    assert report.row("pool2").output == Volume(2, 2, 1)  # 2.5 down
    assert len(report.rounded) == 2 and not report.errors


@pytest.mark.torch
def test_floor_and_ceil_match_pytorch_pooling() -> None:
    torch = pytest.importorskip("torch")
    pool1d = torch.nn.functional.max_pool1d
    checked = 0
    for w, f, s, p in itertools.product(range(1, 14), range(1, 6), range(1, 5), range(0, 3)):
        if p > f // 2:
            continue  # PyTorch needs pad <= F/2
        for ceil in (False, True):
            try:
                expected = pool1d(torch.zeros(1, 1, w), f, s, p, ceil_mode=ceil).shape[-1]
            except RuntimeError:  # "Output size is too small"
                expected = None
            assert out(w, f, p, s, "ceil" if ceil else "floor", pool=True) == expected, \
                (w, f, s, p, ceil)
            checked += 1
    assert checked > 1000


# --------------------------------------------------------------------------- errors and fixes


def test_all_errors_are_reported_and_later_ones_point_at_the_first() -> None:
    report = net("224x224x3", {"conv": {"filters": 96, "size": 11, "stride": 4}},
                 {"pool": {"size": 3, "stride": 2}}, {"pool": {"size": 3, "stride": 2}})
    assert [e.layer for e in report.errors] == ["conv1", "pool1", "pool2"]
    assert report.errors[1].message.endswith(
        "(sizes from conv1 on were rounded down to go on; this may resolve once conv1 is fixed)")


def test_fix_suggestions_each_make_the_layer_whole() -> None:
    for w, f, s, p in itertools.product(range(3, 40), (1, 2, 3, 5, 7, 11), (2, 3, 4), (0, 1, 2)):
        if (w + 2 * p - f) % s == 0 or w + 2 * p < f:
            continue
        for pad in whole_paddings(w, f, s, p):
            assert window_output(w, f, pad, s, "strict").out is not None
        for stride in whole_strides(w, f, p, s):
            assert window_output(w, f, p, stride, "strict").out is not None
        inputs = whole_inputs(w, f, p, s)
        assert inputs and all(window_output(i, f, p, s, "strict").out is not None
                              for i in inputs)
        assert min(abs(i - w) for i in inputs) < s  # the nearest whole input on each side


def test_lint_hints_never_change_validity() -> None:
    report = net("30x30x3", {"conv": {"filters": 4, "size": 3}},
                 {"conv": {"filters": 4, "size": 7, "pad": 3}},
                 {"pool": {"size": 4, "stride": 4}})
    assert report.valid and not report.errors
    messages = " | ".join(w.message for w in report.warnings)
    assert "input width 30 can be halved only 1 time" in messages
    assert "conv1: stride-1 conv with pad 0 shrinks the volume; pad (F-1)/2 = 1 keeps" in messages
    assert "conv2: a 7 filter beyond the first layer" in messages
    assert "pool1: pooling window 4 is larger than 3" in messages


def _hints(report: Report) -> str:
    return " | ".join(w.message for w in report.warnings)


def test_conv_pad_2_at_stride_1_grows_the_volume_not_shrinks_it() -> None:
    # the notes: pad (F-1)/2 keeps the size; a 3x3 conv with pad 2 gives (8 - 3 + 4)/1 + 1 = 10
    report = net("8x8x3", {"conv": {"filters": 4, "size": 3, "pad": 2}})
    assert report.output == Volume(10, 10, 4)
    assert "shrinks" not in _hints(report)
    assert ("conv1: stride-1 conv with pad 2 grows the volume to 10x10; pad (F-1)/2 = 1 keeps "
            "8x8 (the notes' sizing pattern)") in _hints(report)


def test_conv_pad_that_grows_one_side_and_shrinks_the_other_says_so() -> None:
    report = net("8x8x3", {"conv": {"filters": 4, "size": 3,
                                    "pad": {"height": 2, "width": 0}}})
    assert "conv1: stride-1 conv with pad 2x0 changes the volume to 6x10" in _hints(report)


def test_conv_pad_same_gives_no_sizing_hint() -> None:
    assert "stride-1 conv" not in _hints(net("8x8x3", {"conv": {"filters": 4, "size": 3,
                                                                "pad": 1}}))


@pytest.mark.parametrize("pool_type", ["avg", "max"])
def test_a_pool_over_the_whole_volume_is_global_pooling_not_too_destructive(
        pool_type: str) -> None:
    # the notes recommend global average pooling in place of big FC layers: a 7x7 window over
    # a [7x7x512] volume is exactly that, as is a 9x9 window with pad 1 over 7x7
    for window in ({"size": 7}, {"size": 9, "pad": 1}):
        report = net("7x7x512", {"pool": {**window, "type": pool_type}}, {"fc": 10})
        assert report.row("pool1").output == Volume(1, 1, 512)
        assert "too destructive" not in _hints(report)


def test_a_pool_window_over_3_that_is_not_global_is_still_too_destructive() -> None:
    # a 4x4/4 pool over 16x16 leaves 4x4 outputs: the notes' warning applies
    assert "pool1: pooling window 4 is larger than 3" in _hints(
        net("16x16x8", {"pool": {"size": 4, "type": "avg"}}))
    # one window that misses some of the input (7x7 over 8x8, stride 7) is not global either
    assert "pool1: pooling window 7 is larger than 3" in _hints(
        net("8x8x8", {"pool": {"size": 7}}, rounding="floor"))
