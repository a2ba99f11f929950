"""Pure integer arithmetic of the notes: output sizes, rounding, receptive fields, fixes.

Every conv/pool/local output size in cnncli (the report, the engine, the sliding
window) comes from `window_output`, so they can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class WindowOutput:
    """The output length of a sliding window along one dimension.

    `exact` is (W - F_eff + 2P)/S + 1 as a fraction; `out` is what the layer produces
    under its rounding rule (None when strict rounding rejects a fraction).
    """

    size_in: int
    f_eff: int
    pad: int
    stride: int
    exact: Fraction
    out: int | None
    rounding: str
    # Under floor: pixels of the padded input that no window covers (the remainder).
    remainder: int = 0
    # How many of those are real input pixels (beyond the right/bottom padding).
    dropped_pixels: int = 0
    # Under ceil: how far the last window hangs past the padded input.
    overhang: int = 0

    @property
    def formula(self) -> str:
        """The notes' formula with the numbers put in: (224 - 11 + 2*0)/4 + 1 = 54.25."""
        value = self.exact
        shown = str(value.numerator) if value.denominator == 1 else f"{float(value):g}"
        return (f"({self.size_in} - {self.f_eff} + 2*{self.pad})/{self.stride} + 1 = {shown}")

    @property
    def whole(self) -> bool:
        return self.exact.denominator == 1 and self.exact >= 1

    @property
    def changed(self) -> bool:
        """Did rounding change the result (the report lists each such layer)?"""
        return self.out is not None and Fraction(self.out) != self.exact


def effective_size(size: int, dilation: int) -> int:
    """F_eff = dilation*(F - 1) + 1: a dilated filter spans this many input pixels."""
    return dilation * (size - 1) + 1


def window_output(size_in: int, size: int, pad: int, stride: int, rounding: str,
                  dilation: int = 1, is_pool: bool = False) -> WindowOutput:
    """Output length of a conv/pool/local window along one dimension.

    Rounding rules (docs/spec-format.md):
    - strict: (W - F_eff + 2P)/S + 1 must be whole, else `out` is None;
    - floor (PyTorch): round down; the remainder of the padded input is never seen;
    - ceil (Caffe): pools round up, convs round down; a last window that would start
      entirely inside the right padding is dropped (PyTorch's ceil_mode does the same).
    """
    f_eff = effective_size(size, dilation)
    span = size_in + 2 * pad - f_eff
    exact = Fraction(span, stride) + 1
    floor_out = span // stride + 1
    remainder = span % stride
    if (rounding == "ceil" and is_pool and remainder and floor_out >= 0
            and floor_out * stride < size_in + pad):
        # round up: one more window, hanging past the padded input. Caffe and PyTorch do
        # this even for a window wider than the whole padded input (span < 0): one output.
        out = floor_out + 1
        overhang = (out - 1) * stride + f_eff - (size_in + 2 * pad)
        return WindowOutput(size_in, f_eff, pad, stride, exact, out, rounding, overhang=overhang)
    if span < 0:
        return WindowOutput(size_in, f_eff, pad, stride, exact, None, rounding)
    if remainder == 0:
        return WindowOutput(size_in, f_eff, pad, stride, exact, floor_out, rounding)
    if rounding == "strict":
        return WindowOutput(size_in, f_eff, pad, stride, exact, None, rounding)
    # floor, a conv under ceil, or a ceil pool whose extra window would start entirely
    # inside the right padding (dropped, as Caffe and PyTorch's ceil_mode drop it): round down
    dropped = max(0, remainder - pad)  # the right/bottom padding absorbs up to P of it
    return WindowOutput(size_in, f_eff, pad, stride, exact, floor_out, rounding,
                        remainder=remainder, dropped_pixels=dropped)


def rounding_note(dim: str, r: WindowOutput) -> str:
    """One line saying what rounding did, telling harmless from lossy."""
    if r.overhang:
        return (f"{dim}: {r.formula} rounded up to {r.out}; the last window hangs {r.overhang} "
                "px past the padded input (read as padding)")
    if r.dropped_pixels:
        lost = "pixel is" if r.dropped_pixels == 1 else f"{r.dropped_pixels} pixels are"
        return (f"{dim}: {r.formula} rounded down to {r.out}; the last input {lost} "
                "never seen by this layer (real data dropped)")
    return (f"{dim}: {r.formula} rounded down to {r.out}; the {r.remainder} unused "
            f"px fall on zero-padding only (harmless)")


def whole_paddings(size_in: int, f_eff: int, stride: int, pad: int, count: int = 2) -> list[int]:
    """The paddings nearest to `pad` that make the output whole."""
    found = [p for p in range(0, pad + 2 * stride + 1)
             if (size_in + 2 * p - f_eff) >= 0 and (size_in + 2 * p - f_eff) % stride == 0]
    return sorted(found, key=lambda p: (abs(p - pad), p))[:count]


def whole_strides(size_in: int, f_eff: int, pad: int, stride: int, count: int = 2) -> list[int]:
    span = size_in + 2 * pad - f_eff
    if span < 0:
        return []
    found = [s for s in range(1, max(f_eff, stride) + 1) if span % s == 0 and s != stride]
    return sorted(found, key=lambda s: (abs(s - stride), s))[:count]


def whole_inputs(size_in: int, f_eff: int, pad: int, stride: int) -> list[int]:
    """The input sizes just below and above `size_in` that make this layer whole."""
    below = size_in - ((size_in + 2 * pad - f_eff) % stride)
    above = below + stride
    return [w for w in (below, above) if w >= max(1, f_eff - 2 * pad) and w != size_in]


@dataclass(frozen=True)
class Field:
    """Receptive field along one dimension: `size` input pixels, windows `jump` apart.

    `jump` is the cumulative stride (the product of strides so far): moving one
    position in this layer's output moves the window by `jump` input pixels.
    """

    size: int = 1
    jump: int = 1

    def through(self, f_eff: int, stride: int) -> Field:
        # Each new window spans (F_eff - 1) more positions of the previous layer,
        # each of which is `jump` input pixels apart.
        return Field(self.size + (f_eff - 1) * self.jump, self.jump * stride)

    @staticmethod
    def widest(fields: list[Field]) -> Field:
        return Field(max(f.size for f in fields), max(f.jump for f in fields))
