"""Convolution and its unshared cousin, the locally connected layer.

The notes' conv layer: K filters of F x F x D slide over the input with stride S and zero
padding P, so the output is ((W - F + 2P)/S + 1) x ((H - F + 2P)/S + 1) x K, with F*F*D
weights per filter (D/groups with groups) and one bias each. Dilation spreads a filter's
taps, which then span F_eff = dilation*(F - 1) + 1 pixels. A locally connected layer has
the same geometry but one weight set per output position (no parameter sharing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cnncli.analysis.memory import FLOAT64, Buf, Heap, PlanLayer
from cnncli.analysis.shapes import effective_size
from cnncli.engine.kernels import sizes
from cnncli.engine.kernels.conv_algo import (
    GEMM,
    PLANAR,
    WINOGRAD,
    ConvAlgo,
    choose,
    planar_eligible,
    winograd_eligible,
)
from cnncli.engine.kernels.sizes import band_rows, chunks, use_direct
from cnncli.layers.activations import absorbed_relu_backward
from cnncli.layers.base import EngineLayer, LayerSpec, ParseContext, Window
from cnncli.spec.types import Pair, Problem, Volume

if TYPE_CHECKING:
    import numpy as np

    from cnncli.analysis.report import Row, Walker
    from cnncli.layers.base import RF
    from cnncli.spec.loading import Located

_KEYS = {"filters", "size", "stride", "pad", "dilation", "bias", "groups", "rounding"}


class _Windowed(LayerSpec):
    """What conv and local share: the window, the filters, the bias (the fields are each
    class's own, so a Conv is built as it always was: ..., dilation, groups, bias, ...)."""

    if TYPE_CHECKING:
        filters: int
        size: Pair
        stride: Pair
        pad: Pair
        dilation: Pair
        bias: bool
        rounding: str | None
        pad_same: bool

    family = "conv"
    windowed = True

    @property
    def depth_groups(self) -> int:
        return 1

    # ------------------------------------------------------------------ the spec file
    @classmethod
    def read(cls, ctx: ParseContext, loc: Located, name: str, line: int,
             where: str, local: bool) -> dict[str, Any]:
        r = ctx.reader
        keys = set(_KEYS) - ({"groups"} if local else set())
        s = r.settings(where, loc, keys, None)
        for required in ("filters", "size"):
            if required not in s:
                r.error(f"{where}: '{required}' is required", line, name)
        filters = r.integer(f"{where}.filters", s["filters"].value, s["filters"].line) \
            if "filters" in s else 1
        size = r.pair(f"{where}.size", s.get("size"), 1, 1)
        stride = r.pair(f"{where}.stride", s.get("stride"), 1, 1)
        dilation_loc = s.get("dilation")
        if dilation_loc is not None and type(dilation_loc.value) is int \
                and dilation_loc.value == 0:
            r.error(f"{where}.dilation: 0 is not allowed; dilation 1 is an ordinary "
                    "convolution (the CS231n notes call that 'dilation 0')", dilation_loc.line,
                    name)
            dilation_loc = None
        dilation = r.pair(f"{where}.dilation", dilation_loc, 1, 1)
        pad_loc, pad_same = s.get("pad"), False
        if pad_loc is not None and isinstance(pad_loc.value, str) and pad_loc.value == "same":
            pad_same = True
            odd = size.h % 2 == 1 and size.w % 2 == 1
            if not odd or stride.h != 1 or stride.w != 1:
                r.error(f"{where}.pad: 'same' needs an odd size and stride 1 "
                        f"(size {size}, stride {stride}); write the padding as a number",
                        pad_loc.line, name)
            pad = Pair(dilation.h * (size.h - 1) // 2, dilation.w * (size.w - 1) // 2)
        else:
            pad = r.pair(f"{where}.pad", pad_loc, 0, 0)
        bias = r.boolean(f"{where}.bias", s["bias"].value, s["bias"].line) \
            if "bias" in s else True
        rounding = r.rounding(f"{where}.rounding", s.get("rounding"))
        settings: dict[str, Any] = dict(filters=filters, size=size, stride=stride, pad=pad,
                                        dilation=dilation, bias=bias, rounding=rounding,
                                        pad_same=pad_same)
        if not local:
            groups = r.integer(f"{where}.groups", s["groups"].value, s["groups"].line) \
                if "groups" in s else 1
            if filters % groups:
                r.error(f"{where}: filters ({filters}) must be divisible by groups ({groups})",
                        line, name)
            settings["groups"] = groups
        return settings

    def to_yaml(self, scope: str, write_sequence: Any) -> Any:
        s: dict[str, Any] = {"filters": self.filters, "size": self.size.to_yaml()}
        if self.stride != Pair(1, 1):
            s["stride"] = self.stride.to_yaml()
        if self.pad_same:
            s["pad"] = "same"
        elif self.pad != Pair(0, 0):
            s["pad"] = self.pad.to_yaml()
        if self.dilation != Pair(1, 1):
            s["dilation"] = self.dilation.to_yaml()
        if self.depth_groups != 1:
            s["groups"] = self.depth_groups
        if not self.bias:
            s["bias"] = False
        if self.rounding:
            s["rounding"] = self.rounding
        return s

    # ------------------------------------------------------------------ analysis
    def settings_text(self) -> str:
        parts = [f"{self.filters} filters", f"{self.size}"
                 + (f"/{self.stride}" if self.stride != Pair(1, 1) else "")]
        if self.pad != Pair(0, 0):
            parts.append(f"pad {'same' if self.pad_same else self.pad}")
        if self.dilation != Pair(1, 1):
            parts.append(f"dilation {self.dilation}")
        if self.depth_groups > 1:
            parts.append(f"groups {self.depth_groups}")
        if not self.bias:
            parts.append("no bias")
        return ", ".join(parts)

    def analyze(self, w: Walker, vol: Volume, rf: RF, depth: int) -> tuple[Volume, RF]:
        groups = self.depth_groups
        if vol.d % groups:
            w.errors.append(Problem(
                f"{self.name}: the input depth {vol.d} is not divisible by groups ({groups})",
                self.line, self.name, f"use groups that divide {vol.d}"))
        oh, ow, notes = w.windows(self, vol, self.size, self.stride, self.pad, self.dilation,
                                  is_pool=False)
        out = Volume(ow, oh, self.filters)
        d_in = vol.d // groups if vol.d % groups == 0 else vol.d
        f_eff = (effective_size(self.size.h, self.dilation.h),
                 effective_size(self.size.w, self.dilation.w))
        new_rf = (rf[0].through(f_eff[0], self.stride.h), rf[1].through(f_eff[1], self.stride.w))
        row = w.row(self.name, self.kind, depth, self.settings_text(), vol, out, new_rf,
                    self.line)
        row.notes = notes
        per_filter = d_in * self.size.h * self.size.w
        self.count_parameters(row, vol, oh, ow, per_filter)
        row.macs = oh * ow * self.filters * per_filter
        w.add(row)
        self._lint(w, vol, out)
        return out, new_rf

    def count_parameters(self, row: Row, vol: Volume, oh: int, ow: int,
                         per_filter: int) -> None:
        raise NotImplementedError

    def training_macs(self, row: Row, first: bool) -> tuple[int, int, int]:
        # backward to the input and to the weights are each one more product of the same size
        return row.macs, 0 if first else row.macs, row.macs

    def _lint(self, w: Walker, vol: Volume, out: Volume) -> None:
        first = not w.first_conv_seen
        w.first_conv_seen = True
        if self.stride == Pair(1, 1):
            keep = Pair(self.dilation.h * (self.size.h - 1) // 2,
                        self.dilation.w * (self.size.w - 1) // 2)
            odd = self.size.h % 2 == 1 and self.size.w % 2 == 1
            if odd and self.pad != keep:
                # more padding than (F-1)/2 grows the volume, less shrinks it
                if out.w <= vol.w and out.h <= vol.h:
                    change = "shrinks the volume"
                elif out.w >= vol.w and out.h >= vol.h:
                    change = f"grows the volume to {out.w}x{out.h}"
                else:
                    change = f"changes the volume to {out.w}x{out.h}"
                w.warnings.append(Problem(
                    f"{self.name}: stride-1 conv with pad {self.pad} {change}; "
                    f"pad (F-1)/2 = {keep} keeps {vol.w}x{vol.h} (the notes' sizing pattern)",
                    self.line, self.name))
        if not first and max(self.size.h, self.size.w) > 5:
            w.warnings.append(Problem(
                f"{self.name}: a {self.size} filter beyond the first layer; the notes prefer "
                "stacks of 3x3 (fewer parameters, more non-linearity)", self.line, self.name))

    def window(self) -> Window:
        return Window(self.size, self.stride, self.pad, self.dilation, False, self.rounding,
                      "conv")



@dataclass(frozen=True)
class Conv(_Windowed):
    """y = w * x + b, one filter bank shared by every position (OIHW weights)."""

    filters: int
    size: Pair
    stride: Pair
    pad: Pair
    dilation: Pair
    groups: int
    bias: bool
    rounding: str | None
    pad_same: bool = False

    key = "conv"
    prefix = "conv"
    draws_filters = True
    absorbs = frozenset({"relu"})  # clamped as each output band is written, dy masked first
    # in evaluation, the batchnorm after it too: applied to each band as it is written
    absorbs_in_evaluation = frozenset({"batchnorm"})

    @property
    def depth_groups(self) -> int:
        return self.groups

    def wasted_by_mean_subtraction(self) -> int:
        return self.filters if self.bias else 0

    @classmethod
    def parse(cls, ctx: ParseContext, loc: Located, name: str, line: int,
              where: str) -> Conv:
        return cls(name, line, **cls.read(ctx, loc, name, line, where, local=False))

    def count_parameters(self, row: Row, vol: Volume, oh: int, ow: int,
                         per_filter: int) -> None:
        row.weights = self.filters * per_filter
        row.biases = self.filters if self.bias else 0
        row.params[f"{self.name}.weight"] = (self.filters, per_filter // (self.size.h
                                             * self.size.w), self.size.h, self.size.w)
        if self.bias:
            row.params[f"{self.name}.bias"] = (self.filters,)

    def algorithm(self, row: Row, policy: str) -> ConvAlgo:
        """What this layer runs under the builder's --conv-algo policy (engine and plan
        alike: cnncli/engine/kernels/conv_algo.py)."""
        assert row.output is not None and row.input is not None
        stride = (self.stride.h, self.stride.w)
        eligible = winograd_eligible((self.size.h, self.size.w), stride,
                                     (self.dilation.h, self.dilation.w), self.groups,
                                     (self.pad.h, self.pad.w))
        planar = planar_eligible(row.input.d, stride, self.groups)
        return choose(policy, eligible, row.output.h, row.output.w, self.filters, planar)

    def plan(self, heap: Heap, row: Row, threads: int, ctx: Any) -> PlanLayer:
        algo = self.algorithm(row, getattr(ctx, "conv_algo", GEMM.name))
        if algo.winograd:
            return WinogradPlan(heap, row, threads, self, algo.tile)
        if algo.planar:
            return PlanarPlan(heap, row, threads, self)
        return ConvPlan(heap, row, threads, self)

    def engine(self, row: Row, ctx: Any) -> EngineLayer:
        return ConvEngine(self, row, ctx.rng, ctx.dtype,
                          self.algorithm(row, getattr(ctx, "conv_algo", GEMM.name)))


@dataclass(frozen=True)
class Local(_Windowed):
    """The notes' locally connected layer: a conv without parameter sharing
    (weights [K, OH, OW, D, Fh, Fw], bias [K, OH, OW])."""

    filters: int
    size: Pair
    stride: Pair
    pad: Pair
    dilation: Pair
    bias: bool
    rounding: str | None
    pad_same: bool = False

    key = "local"
    prefix = "local"
    family = "local"

    @classmethod
    def parse(cls, ctx: ParseContext, loc: Located, name: str, line: int,
              where: str) -> Local:
        return cls(name, line, **cls.read(ctx, loc, name, line, where, local=True))

    def count_parameters(self, row: Row, vol: Volume, oh: int, ow: int,
                         per_filter: int) -> None:
        # no sharing: one weight set (and one bias) per output position
        positions = oh * ow
        row.weights = positions * self.filters * per_filter
        row.biases = positions * self.filters if self.bias else 0
        row.params[f"{self.name}.weight"] = (self.filters, oh, ow, vol.d, self.size.h,
                                             self.size.w)
        if self.bias:
            row.params[f"{self.name}.bias"] = (self.filters, oh, ow)

    def sliding_problem(self) -> Problem:
        return Problem(f"{self.name}: a locally-connected layer has one weight set per "
                       "output position, so it cannot slide over a larger image",
                       self.line, self.name,
                       "write it as a conv (shared weights) to evaluate windows in one pass")

    def plan(self, heap: Heap, row: Row, threads: int, ctx: Any) -> PlanLayer:
        return LocalPlan(heap, row, threads, self)

    def engine(self, row: Row, ctx: Any) -> EngineLayer:
        return LocalEngine(self, row, ctx.rng, ctx.dtype)


# ----------------------------------------------------------------------------- memory plans
# What the engine below and its kernels (engine/kernels/conv.py) allocate, in the same
# scopes: the output, the input kept for backward, the im2col bands one per thread, the
# relaid weights, the dW partial sums of each chunk.


def _keep_gradients(plan: PlanLayer, dw: Buf, db: Buf | None, bias: bool) -> None:
    """This step's weight (and bias) gradients become the layer's, freeing last step's; a
    bias-free layer's db, where it is summed anyway, is not kept."""
    grads = {f"{plan.name}.weight": dw}
    if bias:
        assert db is not None
        grads[f"{plan.name}.bias"] = db
    plan.new_grads(grads)


class ConvPlan(PlanLayer):
    def __init__(self, heap: Heap, row: Row, threads: int, node: Conv):
        super().__init__(heap, row, threads)
        assert row.input is not None and row.output is not None
        self.vin, self.vout = row.input, row.output
        self.groups = node.groups
        self.k = node.filters
        self.cg = row.input.d // node.groups
        self.kdim = node.size.h * node.size.w * self.cg
        self.wsize = math.prod(row.params[f"{self.name}.weight"])
        self.bias = node.bias
        self.direct = use_direct(self.cg, node.filters // node.groups, node.groups)
        self.algorithm = "direct" if self.direct else GEMM.name  # as ConvEngine names it

    def im2col(self) -> tuple[int, int] | None:
        if self.direct:
            return None
        return self.vout.h * self.vout.w * self.kdim * self.groups, self._band()[0]

    def _band(self) -> tuple[int, int]:
        """Rows per im2col band and bands per image."""
        oh = self.vout.h
        rb = band_rows(oh, self.vout.w, self.groups, self.kdim, self.heap.itemsize)
        return rb, -(-oh // rb)

    def forward(self, x: Buf, training: bool) -> Buf:
        if training:
            self.keep(x)
        n, g, kg = self.heap.batch, self.groups, self.k // self.groups
        y = self.out(self.vout)
        bias = None if self.bias else self.work(0, self.k)  # np.zeros(K) stands in
        wcopy = self.work(0, self.wsize)  # _gemm_weights / _direct_weights: a relaid copy
        if self.direct:
            bands = [self.work(0, kg * g) for _ in range(min(self.threads, n * self.vout.h))]
        else:
            rb, nblk = self._band()
            per = g * rb * self.vout.w * self.kdim + rb * self.vout.w * kg  # cols + tmp
            bands = [self.work(0, per) for _ in range(min(self.threads, n * nblk))]
        del bands, wcopy, bias
        return y

    def backward(self, dy: Buf) -> Buf:
        n, g, kg = self.heap.batch, self.groups, self.k // self.groups
        x = self.saved[0]
        dx = self.grad(self.vin) if self.need_dx else self.work(0, 1)
        nchunk = chunks(n, self.threads)
        # db's float64 partials: a bias-free layer's GEMM kernel sums none
        summed = self.bias or self.direct
        dbp = self.work(0, nchunk * self.k if summed else 0, FLOAT64)
        wcopy = self.work(0, self.wsize)
        partials = self.work(0, nchunk * self.wsize)
        # W2's transpose, for dx's product on the own kernel (kernels/sizes.own_gemm_dx)
        transposed = self.work(0, self.wsize if not self.direct and self.need_dx
                               and sizes.own_gemm_dx(self.kdim, kg, self.heap.itemsize)
                               else 0)
        if self.direct:
            chunk = [self.work(0, kg * g) for _ in range(min(self.threads, nchunk))]
        else:
            rb, _ = self._band()
            band = rb * self.vout.w
            per = 2 * g * band * self.kdim + band * kg + self.kdim * kg  # cols, dcols, dyg, tw
            chunk = [self.work(0, per) for _ in range(min(self.threads, nchunk))]
        del chunk
        freed = [partials, wcopy, transposed], [dbp, x]
        del partials, wcopy, transposed, dbp, x
        self._weight_gradients(*freed, db_summed=summed)
        return dx

    def _weight_gradients(self, after_dw: list[Buf], after_db: list[Buf],
                          db_summed: bool = True) -> None:
        """How every conv algorithm's backward ends (kernels/conv.py and winograd.py): the
        chunks' partial dW summed (a copy of the first, added to) and transposed back to
        OIHW, then db summed in float64 and cast (`db_summed`: a bias-free layer skips it,
        except on the direct kernel); the step's gradients replace the last's. The lists
        hold the caller's last references: `after_dw` are freed once dW exists, `after_db`
        once db does (emptied here, so the timeline is the kernels')."""
        summed = self.work(0, self.wsize)
        dw = self.work(0, self.wsize)
        del summed
        after_dw.clear()
        db = None
        if db_summed:
            db64 = self.work(0, self.k, FLOAT64)
            db = self.work(0, self.k)
            del db64
        after_db.clear()
        _keep_gradients(self, dw, db, self.bias)
        del dw, db
        self.drop()


class WinogradPlan(ConvPlan):
    """What kernels/winograd.py allocates (see its wrappers): forward transforms the
    filters (U, through float64 copies), then each thread holds its V/M blocks; dx runs
    the same forward kernel on dy with the flipped filters' U; dW holds per-chunk alpha^2
    [C x K] sums and per-thread V/Z blocks."""

    def __init__(self, heap: Heap, row: Row, threads: int, node: Conv, tile: int):
        super().__init__(heap, row, threads, node)
        self.m = tile
        self.c = self.vin.d
        self.a2 = (tile + 2) ** 2
        self.algorithm = WINOGRAD.name

    def im2col(self) -> tuple[int, int] | None:
        return None  # no im2col bands: the memory report's im2col note skips this layer

    def _filter_transform(self) -> Buf:
        u = self.work(0, self.a2 * self.c * self.k)
        wt = self.work(0, 9 * self.c * self.k)  # w transposed to [3, 3, C x K]
        rows64 = self.work(0, 3 * self.c * self.k, FLOAT64)  # G g, one row of G at a time
        del wt, rows64
        return u

    def _forward_kernel(self, out: Volume, cin: int, cout: int, dx: bool) -> Buf:
        m = self.m
        y = self.grad(out) if dx else self.out(out)
        itemsize = self.heap.itemsize
        # the bias: tiled over a tile row for the phase-layout transform, else as it is
        # (a bias-free layer's zeros, or dx's)
        bias = self.work(0, cout if sizes.winograd_vector(itemsize, m, cout)
                         else m * -(-out.w // m) * cout)
        threads, per = sizes.winograd_forward_work(self.heap.batch, out.h, out.w, cin, cout,
                                                   m, self.threads, itemsize)
        blocks = [self.work(0, per) for _ in range(threads)]
        del blocks, bias
        return y

    def forward(self, x: Buf, training: bool) -> Buf:
        if training:
            self.keep(x)
        u = self._filter_transform()
        y = self._forward_kernel(self.vout, self.c, self.k, dx=False)
        del u
        return y

    def backward(self, dy: Buf) -> Buf:
        n, m, c, k = self.heap.batch, self.m, self.c, self.k
        x = self.saved[0]
        dx = None
        if self.need_dx:
            u = self._filter_transform()
            dx = self._forward_kernel(self.vin, k, c, dx=True)
            del u
        oh, ow = self.vout.h, self.vout.w
        nchunk = sizes.winograd_weights_chunks(n, oh, ow, m, self.threads)
        # each chunk's alpha^2 [C x K] sums, added up in place into the first; G's
        # products then make them dW (np.dot's [9, C x K], `summed` below)
        partials = self.work(0, nchunk * self.a2 * c * k)
        # the bias gradient's float64 partials, summed in the kernel (a bias-free layer's
        # stand-in is one number)
        dbp = self.work(0, nchunk * k if self.bias else 1, FLOAT64)
        threads, per = sizes.winograd_weights_work(n, oh, ow, c, k, m, self.threads,
                                                   self.heap.itemsize)
        blocks = [self.work(0, per) for _ in range(threads)]
        del blocks
        freed = [partials], [dbp, x]
        del partials, dbp, x
        self._weight_gradients(*freed, db_summed=self.bias)
        return dx if dx is not None else self.work(0, 0)


class PlanarPlan(ConvPlan):
    """What conv.py's planar kernels allocate (see conv2d_forward_planar and
    conv2d_backward_planar): per thread one band's input planes and its columns; backward
    adds one band's dW product."""

    def __init__(self, heap: Heap, row: Row, threads: int, node: Conv):
        super().__init__(heap, row, threads, node)
        self.algorithm = PLANAR.name
        c = self.vin.d
        wp, self.rb, nr, positions = sizes.planar_geometry(
            self.vout.h, self.vout.w, node.size.h, node.size.w, node.dilation.h,
            node.dilation.w, c, heap.itemsize)
        self.per = c * nr * wp + self.kdim * positions

    def im2col(self) -> tuple[int, int] | None:
        return None  # its columns are planar bands, not the NHWC im2col this note counts

    def forward(self, x: Buf, training: bool) -> Buf:
        if training:
            self.keep(x)
        bias = None if self.bias else self.work(0, self.k)  # np.zeros(K) stands in
        y = self.out(self.vout)
        wcopy = self.work(0, self.wsize)  # _gemm_weights: a relaid copy
        tasks = self.heap.batch * -(-self.vout.h // self.rb)
        bands = [self.work(0, self.per) for _ in range(min(self.threads, tasks))]
        del bands, wcopy, bias
        return y

    def backward(self, dy: Buf) -> Buf:
        n = self.heap.batch
        x = self.saved[0]
        dx = self.grad(self.vin) if self.need_dx else self.work(0, 1)
        nchunk = chunks(n, self.threads)
        dbp = self.work(0, nchunk * self.k if self.bias else 0, FLOAT64)  # db's partials
        partials = self.work(0, nchunk * self.wsize)
        wcopy = self.work(0, self.wsize)
        per = self.per + self.k * self.kdim  # + tw, one band's dW
        chunk = [self.work(0, per) for _ in range(min(self.threads, nchunk))]
        del chunk, wcopy
        freed = [partials], [dbp, x]
        del partials, dbp, x
        self._weight_gradients(*freed, db_summed=self.bias)
        return dx


class LocalPlan(PlanLayer):
    def __init__(self, heap: Heap, row: Row, threads: int, node: Local):
        super().__init__(heap, row, threads)
        assert row.input is not None and row.output is not None
        self.vin, self.vout = row.input, row.output
        self.k = node.filters
        self.kdim = node.size.h * node.size.w * row.input.d
        self.wsize = math.prod(row.params[f"{self.name}.weight"])
        self.bias = node.bias

    def forward(self, x: Buf, training: bool) -> Buf:
        if training:
            self.keep(x)
        n = self.heap.batch
        bias = None if self.bias else self.work(0, 1)
        y = self.out(self.vout)
        per = n * self.kdim + self.k * self.kdim + n * self.k  # patch, Wt, out
        bands = [self.work(0, per) for _ in range(min(self.threads, self.vout.h * self.vout.w))]
        del bands, bias
        return y

    def backward(self, dy: Buf) -> Buf:
        n = self.heap.batch
        x = self.saved[0]
        dw = self.work(0, self.wsize)
        positions = self.vout.h * self.vout.w
        db64 = self.work(0, self.k * positions, FLOAT64)
        dx = self.grad(self.vin) if self.need_dx else None
        per = n * self.kdim + n * self.k + self.k * self.kdim  # patch, d, g
        bands = [self.work(0, per) for _ in range(min(self.threads, positions))]
        del bands
        if dx is not None:
            nchunk = max(1, min(n, self.threads))
            m = -(-n // nchunk)
            per = m * self.k + m * self.kdim + self.k * self.kdim  # d, dp, Wt
            bands = [self.work(0, per) for _ in range(nchunk)]
            del bands
        db = self.work(0, self.k * positions)
        del db64, x
        _keep_gradients(self, dw, db, self.bias)
        del dw, db
        self.drop()
        return dx if dx is not None else self.work(0, 0)


# ----------------------------------------------------------------------------- engine


def he_normal(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int,
              dtype: np.dtype) -> np.ndarray:
    """He initialisation (std sqrt(2/fan_in)), the notes' advice for ReLU nets."""
    import numpy as np

    return (rng.standard_normal(shape) * np.sqrt(2.0 / max(1, fan_in))).astype(dtype)


class _WindowedEngine(EngineLayer):
    """The window geometry, He-initialised weights and an optional bias (shapes from the
    report), the input kept for backward."""

    def __init__(self, layer: Conv | Local, row: Row, rng: np.random.Generator,
                 dtype: np.dtype, fan_in: int):
        import numpy as np

        super().__init__(layer.name)
        self.stride = (layer.stride.h, layer.stride.w)
        self.pad = (layer.pad.h, layer.pad.w)
        self.dilation = (layer.dilation.h, layer.dilation.w)
        assert row.output is not None
        self.out_hw = (row.output.h, row.output.w)
        self.weight_key = f"{self.name}.weight"
        self.params[self.weight_key] = he_normal(rng, row.params[self.weight_key], fan_in, dtype)
        self.bias_key = f"{self.name}.bias" if layer.bias else None
        if self.bias_key:
            self.params[self.bias_key] = np.zeros(row.params[self.bias_key], dtype)
        self._saved_x: np.ndarray | None = None

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        self._saved_x = x if training else None
        b = self.params[self.bias_key] if self.bias_key else None
        return self._forward(x, self.params[self.weight_key], b)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        assert self._saved_x is not None, f"{self.name}: backward without a training forward"
        dx, dw, db = self._backward(self._saved_x, self.params[self.weight_key], dy)
        self.grads[self.weight_key] = dw
        if self.bias_key:
            self.grads[self.bias_key] = db
        self._saved_x = None
        return dx

    def _forward(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    def _backward(self, x: np.ndarray, w: np.ndarray,
                  dy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError


class ConvEngine(_WindowedEngine):
    """im2col + GEMM (kernels/conv.py), or Winograd F(4x4, 3x3) (kernels/winograd.py) or
    conv.py's planar kernels where the --conv-algo policy chose them for this layer's shape."""

    def __init__(self, layer: Conv, row: Row, rng: np.random.Generator, dtype: np.dtype,
                 algo: ConvAlgo = GEMM):
        shape = row.params[f"{layer.name}.weight"]
        super().__init__(layer, row, rng, dtype, fan_in=math.prod(shape[1:]))
        self.groups = layer.groups
        self.algo = algo
        self._relu: Any = None  # the absorbed ReLU's engine (ActivationEngine)
        self._saved_relu_y: np.ndarray | None = None  # the clamped output, for the mask
        self._norm: Any = None  # the batchnorm after it (BatchNormEngine), in evaluation
        self._affine: tuple[np.ndarray, ...] | None = None  # its (m, a, b), this forward

    def absorb_in_evaluation(self, norm: EngineLayer) -> None:
        """The batchnorm after the conv, in evaluation: (y - m) * a + b with its running
        statistics, then the ReLU it absorbed, applied by the conv's kernel to each output
        band as it is written; the batchnorm then hands the array on. One pass over the
        activation instead of two, and no second array; the same numbers, bit for bit."""
        self._norm = norm

    def absorb(self, activation: EngineLayer) -> None:
        """The ReLU after the conv: every algorithm's kernel clamps each output band as it
        writes it (while it is in cache, instead of a pass of its own over y), and backward
        applies the mask to dy before the conv's kernels read it."""
        self._relu = activation

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        norm = None if training else self._norm
        self._affine = None if norm is None else norm.evaluation_affine(x.dtype)
        try:
            y = super().forward(x, training)
        finally:
            self._affine = None
        if norm is not None:
            norm.producer_ran(y)
        if self._relu is not None:
            self._saved_relu_y = y if training else None
            self._relu.producer_ran(y)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        relu_y, self._saved_relu_y = self._saved_relu_y, None
        absorbed_relu_backward(dy, relu_y)
        del relu_y  # before the conv's gradients come, as after the ReLU's backward
        return super().backward(dy)

    def adds_into_dx(self) -> bool:
        # Winograd's dx kernel adds it to each output row while the row is in cache
        return self.algo.winograd and self.need_dx

    @property
    def algorithm(self) -> str:
        """gemm, winograd, planar, or direct (grouped convs whose per-group GEMM is tiny)."""
        k, cg = self.params[self.weight_key].shape[:2]
        if self.algo == GEMM and use_direct(cg, k // self.groups, self.groups):
            return "direct"
        return self.algo.name

    def matrices(self) -> str:
        """The products this layer computes, as the notes write them: im2col's X_col (one
        column of F*F*C numbers per output position) times W_row (one row per filter), or
        Winograd's alpha^2 GEMMs per block of tiles."""
        k, cg, fh, fw = self.params[self.weight_key].shape
        oh, ow = self.out_hw
        algorithm = self.algorithm
        if algorithm == "winograd":
            m = self.algo.tile
            tiles = -(-oh // m) * -(-ow // m)
            return (f"F({m}x{m},3x3): {tiles} tiles/image, {(m + 2) ** 2} GEMMs of "
                    f"[tiles x {cg}] x [{cg} x {k}]")
        g, kdim = self.groups, fh * fw * cg
        if algorithm == "planar":
            return (f"planar: X_col [{kdim} x {oh * ow}] per image from input planes, "
                    f"W_row [{k} x {kdim}]")
        if algorithm == "direct":
            return f"direct: {g} groups of {k // g} filters [{kdim}], no GEMM"
        if g > 1:
            return (f"X_col [{kdim} x {oh * ow}] per image and group, W_row [{k // g} x "
                    f"{kdim}], {g} groups")
        return f"X_col [{kdim} x {oh * ow}] per image, W_row [{k} x {kdim}]"

    def _forward(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
        affine = self._affine
        # the ReLU after it, or (in evaluation, with `affine`) the one its batchnorm absorbed
        relu = self._relu is not None or (affine is not None and self._norm.relu_absorbed)
        if self.algo.winograd:
            from cnncli.engine.kernels import winograd as wg

            # U = G g G^T once per forward: the weights change every step. dx cannot reuse
            # it: the flipped filter's transform is not a permutation of U with these
            # interpolation points (2 and -2 have no reciprocals among them)
            u = wg.winograd_filter_transform(w, self.algo.tile)
            return wg.winograd_conv_forward(x, w, b, self.pad[0], self.algo.tile, u=u,
                                            relu=relu, affine=affine)
        from cnncli.engine.kernels import conv as conv_k

        if self.algo.planar:
            return conv_k.conv2d_forward_planar(x, w, b, self.pad, self.dilation, self.out_hw,
                                                relu=relu, affine=affine)
        return conv_k.conv2d_forward(x, w, b, self.stride, self.pad, self.dilation,
                                     self.groups, self.out_hw, relu=relu, affine=affine)

    def _backward(self, x: np.ndarray, w: np.ndarray,
                  dy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.algo.winograd:
            return self._winograd_backward(x, w, dy)
        from cnncli.engine.kernels import conv as conv_k

        # the bias gradient's float64 sums over dy only where there is a bias
        need_db = self.bias_key is not None
        if self.algo.planar:
            return conv_k.conv2d_backward_planar(x, w, dy, self.pad, self.dilation,
                                                 need_dx=self.need_dx, need_db=need_db)
        return conv_k.conv2d_backward(x, w, dy, self.stride, self.pad, self.dilation,
                                      self.groups, need_dx=self.need_dx, need_db=need_db)

    def _winograd_backward(self, x: np.ndarray, w: np.ndarray,
                           dy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from cnncli.engine.kernels import winograd as wg

        pad, tile = self.pad[0], self.algo.tile
        addend, self.dx_addend = self.dx_addend, None
        dx = wg.winograd_conv_backward_data(dy, w, pad, tile, add=addend) \
            if self.need_dx else None
        # the bias gradient (float64 sums, as conv.py's) only where there is a bias: summed
        # apart it cost a bias-free ResNet conv as much as its whole dW
        dw, db = wg.winograd_conv_backward_params(x, dy, pad, tile,
                                                   need_db=self.bias_key is not None)
        return dx, dw, db  # type: ignore[return-value]


class LocalEngine(_WindowedEngine):
    def __init__(self, layer: Local, row: Row, rng: np.random.Generator, dtype: np.dtype):
        shape = row.params[f"{layer.name}.weight"]
        super().__init__(layer, row, rng, dtype, fan_in=shape[3] * shape[4] * shape[5])

    def _forward(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
        from cnncli.engine.kernels import conv as conv_k

        return conv_k.local2d_forward(x, w, b, self.stride, self.pad, self.dilation,
                                      self.out_hw)

    def _backward(self, x: np.ndarray, w: np.ndarray,
                  dy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from cnncli.engine.kernels import conv as conv_k

        return conv_k.local2d_backward(x, w, dy, self.stride, self.pad, self.dilation,
                                       need_dx=self.need_dx)
