"""Which algorithm a conv layer runs: im2col + GEMM (kernels/conv.py), Winograd minimal
filtering (kernels/winograd.py) or, for first layers, conv.py's planar kernels. Pure
Python: the engine's conv layer and its memory plan (cnncli/layers/conv.py) ask the same
function with the same shape, so `cnncli memory` counts the workspace of the algorithm the
engine will run.

Policies (`--conv-algo`):

* ``gemm``: every layer as before (im2col bands times the filter matrix).
* ``winograd``: every eligible layer with Winograd F(4x4, 3x3): forward, backward-data and
  backward-weights. Eligible: 3x3, stride 1, dilation 1, groups 1, the same zero padding
  0, 1 or 2 on every side (what winograd.py computes). Other layers run GEMM.
* ``auto``: per layer, by shape, from the measured costs below: first layers (1-3 input
  channels, stride 1, groups 1) run the planar kernels (conv.py: the band's input rows
  transposed to planes, so a tap's inputs are one contiguous run), other eligible layers
  Winograd F(4x4, 3x3), the rest GEMM. ``gemm`` and ``winograd`` never pick planar.

Measured (bench/bench_winograd.py --nets cifar_small,cifar_vgg_bn,resnet20 and its default
layers; batch 64, float32, 2 numba threads on the 2-core target, 5-7 alternating rounds,
medians; the box was shared with other jobs, load 3-5, so single cells are noisy by
+-20%). Speed-up of conv.py's time over Winograd F(4x4)'s; "bwd" is dx + dW against
conv.py's one backward pass:

    layer (HxW C->K, pad 1)   forward   dx      dW      bwd
    32x32 3->16               1.93x     0.95x   1.73x   1.39x   (first layer: no dx)
    32x32 3->32               1.56x     1.47x   0.90x   1.14x   (first layer: no dx)
    32x32 16->16              1.86-2.16 1.86-1.99 2.45  2.15-2.22
    32x32 32->32              3.3-4.3   3.2-5.4 3.0-3.4 3.1-4.4
    16x16 32->32              1.95-2.15 1.1-1.75 1.76-2.8 1.76-1.82
    16x16 32->64              2.38x     1.73x   1.96x   1.86x
    16x16 64->64              1.75-2.05 2.0-2.3 1.7-1.9 1.96-1.97
    8x8 64->64                1.52-1.64 0.90-1.35 1.60-1.66 1.28-1.47
    8x8 64->128               2.09x     1.33x   1.13x   1.22x
    8x8 128->128              1.96x     2.26x   1.37x   1.69x

First layers (bench/bench_winograd.py --small, 2026-11-29, the 2-core Xeon VM (AVX-512),
batch 64, float32, 2 threads, medians of 9 alternating rounds, load 1.0-1.1; ms forward /
dW, first layers need no dx; the Haswell run shared the cores with other jobs by its end):

    layer            OpenBLAS      im2col (conv.py)  Winograd F(4x4)  planar
    32x32 3->16      SkylakeX       4.92 / 5.81       4.07 / 4.25     2.32 / 2.93
                     Haswell       10.30 / 15.05     11.04 / 11.13    7.71 / 7.95
    32x32 3->32      SkylakeX       5.61 / 6.81       5.40 / 6.17     2.95 / 4.00
                     Haswell        8.92 / 10.31      7.35 / 10.10    5.90 / 6.49
    32x32 1->6 5x5   SkylakeX       4.95 / 5.31       (not 3x3)       1.62 / 1.69
                     Haswell        5.61 / 6.06       (not 3x3)       2.17 / 2.32

so `auto` runs planar on layers of 1-3 input channels, stride 1, groups 1, inside the
measured range (8x8 to 32x32 outputs, at most 32 filters), whatever their filter size.

Every measured eligible layer ran faster with Winograd, forward and whole backward alike
(the two cells under 1x are single products within the noise, and the whole layer still
won), so `auto` picks it inside the measured range: outputs of 8x8 to 32x32 positions
and at least 16 filters. Outside it (bigger images as in VGG/ResNet-18 at 224, fewer
filters as in the tests' tiny nets, 4x4 maps with one tile per image) nothing was
measured, and `auto` keeps GEMM rather than guess. F(2x2) was never faster than F(4x4)
by more than the noise (it does 1.8x the transforms per output), so the policies use
F(4x4); its float32 error stays near 1e-5 relative of the largest output (measured
3e-6 to 1e-5 against float64, im2col 1e-7 to 9e-7).
"""

from __future__ import annotations

from dataclasses import dataclass

CONV_ALGOS = ("auto", "gemm", "winograd")  # policies (planar: only auto picks it)
# What train/bench/gradcheck/memory run without --conv-algo (eval: the run's own). Measured
# by bench/bench_algo.py (whole training steps, batch 64, 2 threads, medians of 3
# alternating subprocess rounds): auto over gemm 1.52x / 1.37x / 1.45x and 1.12x / 1.70x /
# 1.53x on cifar_small / cifar_vgg_bn / resnet20 in two runs at load 0.6-1.6; one run at
# load 3.5 (other jobs on both cores) gave 1.08x / 1.07x / 0.96x, inside its noise.
DEFAULT_CONV_ALGO = "auto"
WINOGRAD_PADS = (0, 1, 2)
TILE = 4  # F(4x4, 3x3): the only tile the policies pick (F(2x2) stays in the kernels)
# auto: the measured range (see above): output positions per side, and filters
AUTO_SIDES = (8, 32)
AUTO_MIN_FILTERS = 16
# auto: planar for inputs of at most this many channels and at most this many filters
PLANAR_MAX_CHANNELS = 3
PLANAR_MAX_FILTERS = 32


@dataclass(frozen=True)
class ConvAlgo:
    """What one conv layer runs: forward, backward-data and backward-weights alike (measured
    Winograd dW was faster wherever its forward and dx were, so they are not split)."""

    name: str = "gemm"  # "gemm" | "winograd" | "planar"
    tile: int = TILE  # Winograd: m of F(m x m, 3 x 3)

    @property
    def winograd(self) -> bool:
        return self.name == "winograd"

    @property
    def planar(self) -> bool:
        return self.name == "planar"

    @property
    def label(self) -> str:
        if self.winograd:
            return f"winograd F({self.tile}x{self.tile},3x3)"
        return "planar im2col+gemm" if self.planar else "im2col+gemm"


GEMM = ConvAlgo()
WINOGRAD = ConvAlgo("winograd")
PLANAR = ConvAlgo("planar")


def winograd_eligible(size: tuple[int, int], stride: tuple[int, int],
                      dilation: tuple[int, int], groups: int, pad: tuple[int, int]) -> bool:
    """What kernels/winograd.py computes: 3x3, stride 1, dilation 1, groups 1, one zero
    padding of 0, 1 or 2 on every side."""
    return (size == (3, 3) and stride == (1, 1) and dilation == (1, 1) and groups == 1
            and pad[0] == pad[1] and pad[0] in WINOGRAD_PADS)


def planar_eligible(channels: int, stride: tuple[int, int], groups: int) -> bool:
    """A first layer the planar kernels take (conv.py: stride 1, groups 1, any size,
    padding and dilation) and that auto considers: at most PLANAR_MAX_CHANNELS inputs."""
    return channels <= PLANAR_MAX_CHANNELS and stride == (1, 1) and groups == 1


def choose(policy: str, eligible: bool, out_h: int, out_w: int, filters: int,
           planar: bool = False) -> ConvAlgo:
    """The algorithm a layer runs under `policy` (one of CONV_ALGOS): `eligible` from
    winograd_eligible, `planar` from planar_eligible; out_h x out_w: its output
    positions; filters: K."""
    if policy not in CONV_ALGOS:
        raise ValueError(f"conv algorithm must be one of {', '.join(CONV_ALGOS)}, "
                         f"got {policy!r}")
    if policy == "gemm":
        return GEMM
    if policy == "winograd":
        return WINOGRAD if eligible else GEMM
    lo, hi = AUTO_SIDES
    sides = lo <= out_h <= hi and lo <= out_w <= hi
    if planar and sides and filters <= PLANAR_MAX_FILTERS:
        return PLANAR
    return WINOGRAD if eligible and sides and filters >= AUTO_MIN_FILTERS else GEMM
