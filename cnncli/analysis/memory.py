"""Where the memory of a training step (or an inference pass) goes: the itemised answer.

`estimate(spec, batch=64)` replays one step of the engine on a *simulated heap*: every
array the engine would allocate (layer outputs, what each layer keeps for backward,
gradients, kernel work buffers, temporaries, optimizer state) is a `_Buf` whose bytes are
added when it is created and removed when its last reference goes. The replay mirrors
`cnncli/engine/network.py`, `cnncli/engine/layers.py`, `cnncli/engine/kernels/*` and
`cnncli/engine/optim.py` call for call, so CPython's reference counting frees each `_Buf`
at the moment the engine's array would be freed. What comes out is plain data (`MemoryReport`):

- items, each at its own peak: the input batch; activations kept for backward; activations
  in flight (outputs not kept, alive until the next layer is done); gradients of the
  activations (the live set at the worst moment of backward, not "x2"); parameters;
  parameter gradients; optimizer state; workspace (im2col bands, dW partial sums, weight
  copies, masks and temporaries);
- the total of the items (each at its own peak: an upper bound), and the peak: the most
  bytes alive at one moment, with where it happens and what is alive then;
- per layer: what it keeps and where its workspace peaks.

Steady state: parameter gradients of the previous step are alive when a step starts (the
engine keeps `layer.grads` between steps), as they are in every step after the first.
Pure Python, no numpy and no numba: `cnncli memory` answers in a fraction of a second.

Bytes: float32 = 4, float64 = 8, float16 = 2 per number (the engine itself runs float32
and float64); max-pool switches are int32, batchnorm's saved statistics float64, and the
kernels' bias partial sums float64 whatever the dtype, as in the engine. Binary units:
1 MiB = 2**20 bytes, 1 GiB = 2**30 bytes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from cnncli.analysis.inplace import in_place_activations
from cnncli.analysis.report import Report, Row, analyze
from cnncli.errors import InputError
from cnncli.spec import parse as S
from cnncli.spec.parse import SpecInvalid, Volume

DTYPES = {"float16": 2, "float32": 4, "float64": 8}
# Per-parameter state arrays each optimizer keeps (cnncli/engine/optim.py `slots`): the notes'
# "x3 or more" for parameters is params + gradients + this.
OPTIMIZER_SLOTS = {"sgd": 0, "momentum": 1, "nesterov": 1, "adagrad": 1, "rmsprop": 1,
                   "adam": 2}
# Parameter-sized temporaries alive at once inside `optimizer.step` for one parameter
# (numpy reuses a temporary operand of >= 256 KiB in place, see _ELIDE_BYTES, but only
# for an array operand or a scalar that casts safely: `sqrt(c) + eps` with a Python float
# reuses the temporary at float64, not at float32). Measured with tracemalloc:
#   sgd       lr*g
#   momentum  lr*g                                    (v *= mu; v -= lr*g; p += v)
#   nesterov  v_prev, -mu*v_prev, (1+mu)*v            (the sum reuses -mu*v_prev)
#   adagrad   lr*g, sqrt(cache), (+eps at float32)    (the quotient reuses lr*g)
#   rmsprop   as adagrad
#   adam      m_hat, v_hat, lr*m_hat, sqrt(v_hat), (+eps at float32)
OPTIMIZER_TEMPS = {"sgd": 1, "momentum": 1, "nesterov": 3, "adagrad": 2, "rmsprop": 2,
                   "adam": 4}
_EPS_TEMP = ("adagrad", "rmsprop", "adam")  # one more at float32 (and float16)
MODES = ("train", "infer")

# Engine constants (cnncli/engine/kernels/conv.py); re-read them there when kernels change.
COL_BLOCK_BYTES = 1024 * 1024
MIN_CHUNKS = 8
DIRECT_MAX_CG_KG = 8
# numpy reuses a temporary operand in place for `a * b + c` when it has at least this
# many bytes (NPY_MIN_ELIDE_BYTES); smaller temporaries get a fresh array.
_ELIDE_BYTES = 256 * 1024
_INT32, _INT64, _FLOAT64, _BOOL = 4, 8, 8, 1
# A ufunc that casts an operand (bool -> float) does so through a buffer of this many
# elements (numpy's default buffer size), whatever the array size.
_UFUNC_BUFSIZE = 8192

# What each category is called in reports, in display order.
ITEMS = {
    "input": "input batch (images, int64 labels)",
    "kept": "activations kept for backward",
    "flight": "activations in flight (not kept)",
    "grad": "gradients of activations",
    "param": "parameters (+ batchnorm running statistics)",
    "pgrad": "parameter gradients",
    "opt": "optimizer state",
    "work": "workspace (im2col bands, partial sums, temporaries)",
}
SHORT = {"input": "input", "kept": "kept", "flight": "in flight", "grad": "activation grads",
         "param": "parameters", "pgrad": "parameter grads", "opt": "optimizer state",
         "work": "workspace", "allreduce": "allreduce buffer"}  # the last: --ranks only


class MemoryOptionError(InputError, ValueError):
    """A bad memory option (dtype, optimizer, budget, batch), with the value in the message."""


def default_threads() -> int:
    """The engine's default: all cores, capped by NUMBA_NUM_THREADS (cnncli.config)."""
    from cnncli.config import available_threads

    return available_threads()


# ----------------------------------------------------------------------------- the heap


class _Heap:
    """Bytes alive per category, their peaks, and the moment of the overall peak."""

    def __init__(self, batch: int, itemsize: int):
        self.batch = batch
        self.itemsize = itemsize
        self.now = {c: [0, 0, 0] for c in ITEMS}  # bytes, per-image bytes, numbers
        self.top = {c: [0, 0, 0] for c in ITEMS}
        self.total = 0
        self.peak = 0
        self.peak_parts: dict[str, int] = {}
        self.peak_where = ""
        self.where = "start"
        self.layer = ""
        self.layer_work: dict[str, int] = {}
        self.phase = "setup"
        self.kept: dict[str, list[_Kept]] = {}
        self.phase_peak: dict[str, int] = {}

    def add(self, cat: str, buf: _Buf, sign: int) -> None:
        cur = self.now[cat]
        cur[0] += sign * buf.nbytes
        cur[1] += sign * buf.per_image * buf.itemsize
        cur[2] += sign * buf.numbers
        self.total += sign * buf.nbytes
        if sign > 0:
            if cur[0] > self.top[cat][0]:
                self.top[cat] = list(cur)
            if cat == "work" and self.layer:
                self.layer_work[self.layer] = max(self.layer_work.get(self.layer, 0), cur[0])
            if self.total > self.phase_peak.get(self.phase, 0):
                self.phase_peak[self.phase] = self.total
            if self.total > self.peak:
                self.peak = self.total
                self.peak_parts = {c: v[0] for c, v in self.now.items()}
                self.peak_where = self.where


class _Buf:
    """One simulated array: its bytes count while a reference to it exists."""

    __slots__ = ("heap", "per_image", "fixed", "itemsize", "base", "owner", "what", "saves",
                 "numbers", "nbytes")

    def __init__(self, heap: _Heap, per_image: int, fixed: int = 0, itemsize: int | None = None,
                 base: str = "work", owner: str = "", what: str = ""):
        self.heap = heap
        self.per_image, self.fixed = per_image, fixed
        self.itemsize = heap.itemsize if itemsize is None else itemsize
        self.base, self.owner, self.what = base, owner, what
        self.saves = 0
        self.numbers = per_image * heap.batch + fixed
        self.nbytes = self.numbers * self.itemsize
        heap.add(self.cat, self, +1)

    @property
    def cat(self) -> str:
        if self.base == "act":
            return "kept" if self.saves else "flight"
        return self.base

    def save(self) -> None:
        if self.base == "act" and not self.saves:
            self.heap.add("flight", self, -1)
            self.heap.add("kept", self, +1)
        self.saves += 1

    def unsave(self) -> None:
        self.saves -= 1
        if self.base == "act" and not self.saves:
            self.heap.add("kept", self, -1)
            self.heap.add("flight", self, +1)

    def __del__(self) -> None:
        self.heap.add(self.cat, self, -1)


def _elides(buf: _Buf) -> bool:
    return buf.nbytes >= _ELIDE_BYTES


# ----------------------------------------------------------------------------- layers
# Each mirror class keeps what the engine's layer keeps (`self.saved`) and allocates what
# the engine's forward/backward and kernel wrappers allocate, in the same scopes.


class _Layer:
    def __init__(self, heap: _Heap, row: Row, threads: int):
        self.heap, self.row, self.name, self.threads = heap, row, row.name, threads
        self.saved: list[_Buf] = []
        self.need_dx = True
        self.params: dict[str, _Buf] = {}
        self.grads: dict[str, _Buf] = {}
        for key, shape in row.params.items():
            self.params[key] = _Buf(heap, 0, math.prod(shape), base="param", owner=self.name)
        for key, shape in row.buffers.items():
            self.params[key] = _Buf(heap, 0, math.prod(shape), base="param", owner=self.name)
        self.trainable = list(row.params)

    # what forward keeps, what backward drops
    def keep(self, *bufs: _Buf) -> None:
        for b in bufs:
            b.save()
        self.saved = list(bufs)

    def drop(self) -> None:
        for b in self.saved:
            b.unsave()
        self.saved = []

    def out(self, vol: Volume, what: str = "output") -> _Buf:
        return _Buf(self.heap, vol.size, base="act", owner=self.name, what=what)

    def grad(self, vol: Volume) -> _Buf:
        return _Buf(self.heap, vol.size, base="grad", owner=self.name)

    def work(self, per_image: int, fixed: int = 0, itemsize: int | None = None) -> _Buf:
        return _Buf(self.heap, per_image, fixed, itemsize, base="work", owner=self.name)

    def new_grads(self, bufs: dict[str, _Buf]) -> None:
        for key, buf in bufs.items():
            self.grads[key] = buf  # frees last step's gradient
            # computed as workspace (next to the old gradient), kept as the gradient
            buf.base = "pgrad"
            self.heap.add("work", buf, -1)
            self.heap.add("pgrad", buf, +1)

    def steady_grads(self) -> None:
        """The gradients left from the previous step (alive through this one)."""
        for key in self.trainable:
            self.grads[key] = _Buf(self.heap, 0, self.params[key].numbers, base="pgrad",
                                   owner=self.name)

    def forward(self, x: _Buf, training: bool) -> _Buf:
        raise NotImplementedError

    def backward(self, dy: _Buf) -> _Buf:
        raise NotImplementedError


class _Conv(_Layer):
    def __init__(self, heap: _Heap, row: Row, threads: int, node: S.Conv):
        super().__init__(heap, row, threads)
        assert row.input is not None and row.output is not None
        self.vin, self.vout = row.input, row.output
        self.groups = node.groups
        self.k = node.filters
        self.cg = row.input.d // node.groups
        self.kdim = node.size.h * node.size.w * self.cg
        self.weight = row.params[f"{self.name}.weight"]
        self.wsize = math.prod(self.weight)
        self.bias = node.bias
        self.direct = node.groups > 1 and self.cg * (node.filters // node.groups) \
            <= DIRECT_MAX_CG_KG

    def _band(self) -> tuple[int, int]:
        """Rows per im2col band and bands per image (kernels/conv.py `_band_rows`)."""
        oh, ow = self.vout.h, self.vout.w
        per_row = max(1, ow * self.groups * self.kdim * self.heap.itemsize)
        rb = max(1, min(oh, COL_BLOCK_BYTES // per_row))
        return rb, -(-oh // rb)

    def forward(self, x: _Buf, training: bool) -> _Buf:
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

    def backward(self, dy: _Buf) -> _Buf:
        n, g, kg = self.heap.batch, self.groups, self.k // self.groups
        x = self.saved[0]
        dx = self.grad(self.vin) if self.need_dx else self.work(0, 1)
        nchunk = max(1, min(n, max(self.threads, MIN_CHUNKS)))
        dbp = self.work(0, nchunk * self.k, _FLOAT64)
        wcopy = self.work(0, self.wsize)
        partials = self.work(0, nchunk * self.wsize)
        if self.direct:
            chunk = [self.work(0, kg * g) for _ in range(min(self.threads, nchunk))]
        else:
            rb, _ = self._band()
            band = rb * self.vout.w
            per = 2 * g * band * self.kdim + band * kg + self.kdim * kg  # cols, dcols, dyg, tw
            chunk = [self.work(0, per) for _ in range(min(self.threads, nchunk))]
        del chunk
        summed = self.work(0, self.wsize)  # _sum_chunks: parts[0].copy() += ...
        dw = self.work(0, self.wsize)  # the transpose back to OIHW
        del summed, partials, wcopy
        db64 = self.work(0, self.k, _FLOAT64)
        db = self.work(0, self.k)
        del db64, dbp, x
        grads = {f"{self.name}.weight": dw}
        if self.bias:
            grads[f"{self.name}.bias"] = db
        del dw, db
        self.new_grads(grads)
        del grads
        self.drop()
        return dx


class _Local(_Layer):
    def __init__(self, heap: _Heap, row: Row, threads: int, node: S.Local):
        super().__init__(heap, row, threads)
        assert row.input is not None and row.output is not None
        self.vin, self.vout = row.input, row.output
        self.k = node.filters
        self.kdim = node.size.h * node.size.w * row.input.d
        self.wsize = math.prod(row.params[f"{self.name}.weight"])
        self.bias = node.bias

    def forward(self, x: _Buf, training: bool) -> _Buf:
        if training:
            self.keep(x)
        n = self.heap.batch
        bias = None if self.bias else self.work(0, 1)
        y = self.out(self.vout)
        per = n * self.kdim + self.k * self.kdim + n * self.k  # patch, Wt, out
        bands = [self.work(0, per) for _ in range(min(self.threads, self.vout.h * self.vout.w))]
        del bands, bias
        return y

    def backward(self, dy: _Buf) -> _Buf:
        n = self.heap.batch
        x = self.saved[0]
        dw = self.work(0, self.wsize)
        positions = self.vout.h * self.vout.w
        db64 = self.work(0, self.k * positions, _FLOAT64)
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
        grads = {f"{self.name}.weight": dw}
        if self.bias:
            grads[f"{self.name}.bias"] = db
        del dw, db
        self.new_grads(grads)
        del grads
        self.drop()
        return dx if dx is not None else self.work(0, 0)


class _FC(_Layer):
    def __init__(self, heap: _Heap, row: Row, threads: int, node: S.FC):
        super().__init__(heap, row, threads)
        assert row.input is not None and row.output is not None
        self.vin, self.vout = row.input, row.output
        self.units = node.units
        self.bias = node.bias
        self.flat_view = row.input.w == row.input.h == 1

    def forward(self, x: _Buf, training: bool) -> _Buf:
        # NHWC -> (D, H, W) order: a view when H = W = 1, else a contiguous copy
        flat = x if self.flat_view else self.out(self.vin, "input flattened in (D,H,W) order")
        if training:
            self.keep(flat)
        y = self.out(self.vout)
        del flat
        return y

    def backward(self, dy: _Buf) -> _Buf:
        flat = self.saved[0]
        grads = {f"{self.name}.weight": self.work(0, self.units * self.vin.size)}
        bias = self.work(0, self.units) if self.bias else None
        if bias is not None:
            grads[f"{self.name}.bias"] = bias
        del bias
        # the engine assigns the weight gradient before computing the bias gradient
        self.new_grads(grads)
        del grads, flat
        self.drop()
        if not self.need_dx:
            return self.work(0, 0)
        dflat = self.grad(self.vin)
        if self.flat_view:
            return dflat
        return self.grad(self.vin)  # transposed back to NHWC: a second copy, briefly


class _Pool(_Layer):
    def __init__(self, heap: _Heap, row: Row, threads: int, node: S.Pool):
        super().__init__(heap, row, threads)
        assert row.input is not None and row.output is not None
        self.vin, self.vout = row.input, row.output
        self.type = node.type
        self.is_global = node.is_global

    def forward(self, x: _Buf, training: bool) -> _Buf:
        if self.is_global and self.type == "avg":
            mean64 = self.work(self.vout.size, itemsize=_FLOAT64)
            y = self.out(self.vout)
            del mean64
            self.saved = []
            return y
        y = self.out(self.vout)
        if self.type == "max":
            switches = _Buf(self.heap, self.vout.size, itemsize=_INT32, base="act",
                            owner=self.name, what="switches (int32)")
            if training:
                self.keep(switches)
            del switches
        elif self.type == "l2" and training:
            self.keep(x, y)
        return y

    def backward(self, dy: _Buf) -> _Buf:
        if self.is_global and self.type == "avg":
            scaled = self.work(self.vout.size)
            dx = self.grad(self.vin)
            del scaled
            return dx
        if self.type == "max":
            dx = self.grad(self.vin)
            self.drop()
            return dx
        if self.type == "avg":
            return self.grad(self.vin)
        g = self.work(self.vout.size)
        nonzero = self.work(self.vout.size, itemsize=_BOOL)
        del nonzero
        dx = self.grad(self.vin)
        del g
        self.drop()
        return dx


class _Activation(_Layer):
    def __init__(self, heap: _Heap, row: Row, threads: int, node: S.Activation, in_place: bool):
        super().__init__(heap, row, threads)
        assert row.output is not None
        self.vol = row.output
        self.function = node.function
        self.in_place = in_place

    def forward(self, x: _Buf, training: bool) -> _Buf:
        f, v = self.function, self.vol.size
        if f in ("relu", "tanh"):
            y = x if self.in_place else self.out(self.vol)
        elif f == "leaky_relu":  # np.where(x > 0, x, x*slope), copied into x when in place
            mask, scaled = self.work(v, itemsize=_BOOL), self.work(v)
            y = self.out(self.vol)
            del mask, scaled
            if self.in_place:
                y = x
        else:  # sigmoid: e, x >= 0, 1/(1+e), e/(1+e) and its (1+e), np.where, astype
            e = self.work(v)
            parts = [self.work(v, itemsize=_BOOL), self.work(v), self.work(v), self.work(v)]
            del parts[-1]
            where = self.work(v)
            del parts
            y = self.out(self.vol)
            del where, e
            if self.in_place:
                y = x
        if training:
            self.keep(y)
        return y

    def backward(self, dy: _Buf) -> _Buf:
        f, v = self.function, self.vol.size
        if f == "relu":  # dy * (y > 0); the ufunc casts the bools through a buffer
            mask = self.work(v, itemsize=_BOOL)
            cast = self.work(0, _UFUNC_BUFSIZE)
            dx = self.grad(self.vol)
            del mask, cast
        elif f == "leaky_relu":  # np.where(y > 0, dy, dy*slope)
            mask, scaled = self.work(v, itemsize=_BOOL), self.work(v)
            dx = self.grad(self.vol)
            del mask, scaled
        elif f == "tanh":  # dy * (1 - y*y): y*y goes once 1 - y*y exists
            square = self.work(v)
            one_minus = self.work(v)
            del square
            dx = self._product_into(one_minus)
            del one_minus
        else:  # sigmoid: dy * y * (1 - y): both factors alive for the last product
            dy_y, one_minus = self.work(v), self.work(v)
            dx = self._product_into(dy_y)
            del dy_y, one_minus
        self.drop()
        return dx


    def _product_into(self, temp: _Buf) -> _Buf:
        """The last product: numpy writes it into the temporary operand when that is big
        enough, else into a new array."""
        if _elides(temp):
            temp.base = "grad"
            self.heap.add("work", temp, -1)
            self.heap.add("grad", temp, +1)
            return temp
        return self.grad(self.vol)


class _Dropout(_Layer):
    def __init__(self, heap: _Heap, row: Row, threads: int, node: S.Dropout):
        super().__init__(heap, row, threads)
        assert row.output is not None
        self.vol = row.output
        self.p = node.p

    def forward(self, x: _Buf, training: bool) -> _Buf:
        if not training or self.p == 0:
            return x
        v = self.vol.size
        uniform = self.work(v, itemsize=4)  # rng.random(..., dtype=float32)
        keep = self.work(v, itemsize=_BOOL)
        del uniform
        mask = _Buf(self.heap, v, base="act", owner=self.name, what="mask (scaled)")
        del keep
        self.keep(mask)
        del mask
        return self.out(self.vol)

    def backward(self, dy: _Buf) -> _Buf:
        if not self.saved:
            return dy
        dx = self.grad(self.vol)
        self.drop()
        return dx


class _BatchNorm(_Layer):
    def __init__(self, heap: _Heap, row: Row, threads: int, node: S.BatchNorm):
        super().__init__(heap, row, threads)
        assert row.output is not None
        self.vol = row.output
        self.c = row.output.d

    def forward(self, x: _Buf, training: bool) -> _Buf:
        c = self.c
        vectors = self.work(0, 2 * c, _FLOAT64)  # gamma, beta as float64
        if not training:
            stats = self.work(0, 5 * c, _FLOAT64)
            y = self.out(self.vol)
            del stats, vectors
            return y
        partial = self.work(0, (min(64, self.heap.batch * self.vol.h * self.vol.w) * 2 + 1)
                            * c, _FLOAT64)
        stats = _Buf(self.heap, 0, 2 * c, _FLOAT64, base="act", owner=self.name,
                     what="mean, inv_std (float64)")
        del partial
        y = self.out(self.vol)
        self.keep(x, stats)
        del stats, vectors
        return y

    def backward(self, dy: _Buf) -> _Buf:
        c = self.c
        vectors = self.work(0, 12 * c, _FLOAT64)  # gamma, partial sums, a, q, r, ...
        dx = self.grad(self.vol)
        del vectors
        grads = {f"{self.name}.weight": self.work(0, c), f"{self.name}.bias": self.work(0, c)}
        self.new_grads(grads)
        del grads
        self.drop()
        return dx


class _LRN(_Layer):
    def __init__(self, heap: _Heap, row: Row, threads: int, node: S.LRN):
        super().__init__(heap, row, threads)
        assert row.output is not None
        self.vol = row.output

    def forward(self, x: _Buf, training: bool) -> _Buf:
        y = self.out(self.vol)
        scale = _Buf(self.heap, self.vol.size, base="act", owner=self.name, what="scale")
        if training:
            self.keep(x, y, scale)
        del scale
        return y

    def backward(self, dy: _Buf) -> _Buf:
        dx = self.grad(self.vol)
        self.drop()
        return dx


# ----------------------------------------------------------------------------- containers


class _Sequence:
    def __init__(self, items: list[Any]):
        self.items = items

    def forward(self, x: _Buf, training: bool) -> _Buf:
        for item in self.items:
            x = _run(item, "forward", x, training)
        return x

    def backward(self, dy: _Buf) -> _Buf:
        for item in reversed(self.items):
            dy = _run(item, "backward", dy)
        return dy

    def leaves(self) -> list[_Layer]:
        out: list[_Layer] = []
        for item in self.items:
            out.extend([item] if isinstance(item, _Layer) else item.leaves())
        return out


class _Residual:
    def __init__(self, heap: _Heap, row: Row, body: _Sequence, shortcut: _Sequence):
        self.heap, self.vol = heap, row.output
        self.name = row.name
        self.body, self.shortcut = body, shortcut

    def forward(self, x: _Buf, training: bool) -> _Buf:
        out = self.body.forward(x, training)
        short = self.shortcut.forward(x, training) if self.shortcut.items else x
        assert self.vol is not None
        total = _Buf(self.heap, self.vol.size, base="act", owner=self.name, what="sum")
        del out, short
        return total

    def backward(self, dy: _Buf) -> _Buf:
        assert self.vol is not None
        dx = self.body.backward(dy)
        if self.shortcut.items:
            part = self.shortcut.backward(dy)
            if _elides(part):  # dx + temporary: numpy adds into the temporary
                return part
            total = _Buf(self.heap, self.vol.size, base="grad", owner=self.name)
            del part, dx
            return total
        return _Buf(self.heap, self.vol.size, base="grad", owner=self.name)

    def leaves(self) -> list[_Layer]:
        return self.body.leaves() + self.shortcut.leaves()


class _Concat:
    def __init__(self, heap: _Heap, row: Row, branches: list[_Sequence], depths: list[int]):
        self.heap, self.vol, self.name = heap, row.output, row.name
        self.branches, self.depths = branches, depths

    def forward(self, x: _Buf, training: bool) -> _Buf:
        outs = [b.forward(x, training) for b in self.branches]
        assert self.vol is not None
        total = _Buf(self.heap, self.vol.size, base="act", owner=self.name, what="concatenation")
        del outs
        return total

    def backward(self, dy: _Buf) -> _Buf:
        assert self.vol is not None
        plane = self.vol.w * self.vol.h
        dx = None
        part = None
        for branch, depth in zip(self.branches, self.depths, strict=True):
            part = branch.backward(_Buf(self.heap, plane * depth, base="grad", owner=self.name))
            dx = part if dx is None else _Buf(self.heap, part.per_image, base="grad",
                                               owner=self.name)
        del part
        assert dx is not None
        return dx

    def leaves(self) -> list[_Layer]:
        return [leaf for b in self.branches for leaf in b.leaves()]


def _run(item: Any, method: str, *args: Any) -> _Buf:
    """Call a layer or block, noting where the heap is (for the peak's 'where')."""
    heap: _Heap = item.heap
    before = heap.where, heap.layer
    if isinstance(item, _Layer):
        heap.where, heap.layer = f"{method} of {item.name}", item.name
    result: _Buf = getattr(item, method)(*args)
    heap.where, heap.layer = before
    return result


class _Builder:
    """network._Builder, mirrored; the in-place decisions come from the same rule."""

    def __init__(self, heap: _Heap, report: Report, threads: int):
        self.heap, self.threads = heap, threads
        self.rows = {r.name: r for r in report.rows}
        self.in_place = in_place_activations(report.spec.layers)  # the engine's own rule

    def sequence(self, nodes: tuple[S.Node, ...]) -> _Sequence:
        return _Sequence([self.node(node) for node in S.unrolled(nodes)])

    def node(self, node: S.Node) -> Any:
        if isinstance(node, S.Residual):
            return _Residual(self.heap, self.rows[f"{node.name}.add"],
                             self.sequence(node.body), self.sequence(node.shortcut))
        if isinstance(node, S.Concat):
            return _Concat(self.heap, self.rows[f"{node.name}.out"],
                           [self.sequence(b) for b in node.branches],
                           [self._end_depth(b) for b in node.branches])
        row, h, t = self.rows[node.name], self.heap, self.threads
        if isinstance(node, S.Conv):
            return _Conv(h, row, t, node)
        if isinstance(node, S.Local):
            return _Local(h, row, t, node)
        if isinstance(node, S.FC):
            return _FC(h, row, t, node)
        if isinstance(node, S.Pool):
            return _Pool(h, row, t, node)
        if isinstance(node, S.Activation):
            return _Activation(h, row, t, node, in_place=node.name in self.in_place)
        if isinstance(node, S.Dropout):
            return _Dropout(h, row, t, node)
        if isinstance(node, S.BatchNorm):
            return _BatchNorm(h, row, t, node)
        if isinstance(node, S.LRN):
            return _LRN(h, row, t, node)
        raise TypeError(f"no memory model for {type(node).__name__}")  # pragma: no cover

    def _end_depth(self, branch: tuple[S.Node, ...]) -> int:
        """The depth a concat branch ends with (its last leaf's output)."""
        node = branch[-1]
        while True:
            if isinstance(node, S.Repeat):
                node = node.passes[-1][-1]
            elif isinstance(node, S.Residual):
                out = self.rows[f"{node.name}.add"].output
                assert out is not None
                return out.d
            elif isinstance(node, S.Concat):
                out = self.rows[f"{node.name}.out"].output
                assert out is not None
                return out.d
            else:
                out = self.rows[node.name].output
                assert out is not None
                return out.d


# ----------------------------------------------------------------------------- the report


@dataclass
class Item:
    key: str
    label: str
    numbers: int  # at the whole batch
    bytes_per_image: int  # the part that grows with the batch
    bytes: int  # the whole batch

    def as_dict(self) -> dict[str, Any]:
        return {"item": self.key, "label": self.label, "numbers": self.numbers,
                "bytes_per_image": self.bytes_per_image, "bytes": self.bytes}


@dataclass
class LayerMemory:
    name: str
    kind: str
    output: str
    kept: list[str]  # what this layer's forward allocates and something keeps
    kept_numbers_per_image: int
    kept_bytes_per_image: int
    kept_bytes: int  # whole batch
    parameters: int
    parameter_bytes: int  # parameters + gradients + optimizer state
    workspace_bytes: int  # this layer's peak workspace (forward or backward)
    depth: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class MemoryReport:
    name: str
    input: str
    mode: str
    batch: int
    dtype: str
    bytes_per_number: int
    optimizer: str | None
    threads: int
    items: list[Item]
    total: int  # every item at its own peak: an upper bound
    peak: int  # the most bytes alive at one moment
    peak_where: str
    peak_parts: dict[str, int]
    layers: list[LayerMemory]
    phase_peaks: dict[str, int] = field(default_factory=dict)  # forward, backward, ...
    rules: list[dict[str, Any]] = field(default_factory=list)  # the notes' rules of thumb
    notes: list[str] = field(default_factory=list)

    def item(self, key: str) -> Item:
        for it in self.items:
            if it.key == key:
                return it
        raise KeyError(key)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "input": self.input, "mode": self.mode, "batch": self.batch,
            "dtype": self.dtype, "bytes_per_number": self.bytes_per_number,
            "optimizer": self.optimizer, "threads": self.threads,
            "units": "bytes (1 KiB = 1024, 1 MiB = 2**20, 1 GiB = 2**30); numbers = elements",
            "items": [it.as_dict() for it in self.items],
            "total_bytes": self.total,
            "peak_bytes": self.peak, "peak_at": self.peak_where,
            "peak_parts": self.peak_parts, "peak_by_phase": self.phase_peaks,
            "layers": [lm.as_dict() for lm in self.layers],
            "rules_of_thumb": self.rules, "notes": self.notes,
        }


def _check_options(batch: int, dtype: str, optimizer: str, mode: str, threads: int) -> None:
    if batch < 1:
        raise MemoryOptionError(f"batch must be >= 1, got {batch}")
    if dtype not in DTYPES:
        raise MemoryOptionError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if optimizer not in OPTIMIZER_SLOTS:
        raise MemoryOptionError(f"optimizer must be one of {', '.join(OPTIMIZER_SLOTS)}, "
                           f"got {optimizer!r}")
    if mode not in MODES:
        raise MemoryOptionError(f"mode must be train or infer, got {mode!r}")
    if threads < 1:
        raise MemoryOptionError(f"threads must be >= 1, got {threads}")


def simulate(report: Report, batch: int, dtype: str = "float32", optimizer: str = "momentum",
             mode: str = "train", threads: int | None = None) -> tuple[_Heap, list[_Layer]]:
    """Replay one step on the simulated heap; returns the heap (its peaks, and `kept`: what
    each layer's forward allocated that backward reads) and the mirrored layers."""
    threads = threads or default_threads()
    heap = _Heap(batch, DTYPES[dtype])
    spec = report.spec
    net = _Builder(heap, report, threads).sequence(spec.layers)
    layers = net.leaves()
    if net.items and isinstance(net.items[0], _Layer):
        net.items[0].need_dx = False
    training = mode == "train"
    state: list[_Buf] = []
    if training:
        for layer in layers:
            layer.steady_grads()
            for key in layer.trainable:
                numbers = layer.params[key].numbers
                state += [_Buf(heap, 0, numbers, base="opt", owner=layer.name)
                          for _ in range(OPTIMIZER_SLOTS[optimizer])]
    x = _Buf(heap, report.input.size, base="input", owner="input", what="images")
    labels = _Buf(heap, 1, itemsize=_INT64, base="input", owner="input", what="labels")
    heap.where = heap.phase = "forward"
    scores = net.forward(x, training)
    kept = _kept_by_layer(layers, x) if training else {}
    if training:
        classes = max(1, scores.per_image)
        heap.where, heap.layer, heap.phase = "loss", "", "loss"
        loss_temps = [_Buf(heap, classes) for _ in range(4)]
        dscores = _Buf(heap, classes, base="grad", owner="loss")
        del loss_temps
        heap.where = heap.phase = "backward"
        dx = net.backward(dscores)
        del dx
        heap.where = heap.phase = "optimizer step"
        largest = max((lay.params[k].numbers for lay in layers for k in lay.trainable),
                      default=0)
        count = OPTIMIZER_TEMPS[optimizer] + (optimizer in _EPS_TEMP and dtype != "float64")
        temps = [_Buf(heap, 0, largest) for _ in range(count)]
        del temps, dscores
    del scores, labels, x, state
    heap.kept = kept
    return heap, layers


@dataclass
class _Kept:
    what: str
    per_image: int  # numbers per image
    per_image_bytes: int
    nbytes: int  # whole batch


def _kept_by_layer(layers: list[_Layer], x: _Buf) -> dict[str, list[_Kept]]:
    """At the end of forward: every kept buffer (once), by the layer that allocated it.
    Plain data: holding the buffers themselves would keep them alive."""
    seen: dict[int, _Buf] = {}
    for layer in layers:
        for b in layer.saved:
            if b is not x and b.base == "act":
                seen[id(b)] = b
    by_owner: dict[str, list[_Kept]] = {}
    for b in seen.values():
        by_owner.setdefault(b.owner, []).append(
            _Kept(b.what, b.per_image, b.per_image * b.itemsize, b.nbytes))
    return by_owner


def estimate(spec: S.Spec, batch: int = 64, dtype: str = "float32", optimizer: str = "momentum",
             mode: str = "train", threads: int | None = None, input_volume: Volume | None = None,
             rounding: str | None = None) -> MemoryReport:
    """The itemised memory of one training step (or one inference pass) of `spec`."""
    threads = threads or default_threads()
    _check_options(batch, dtype, optimizer, mode, threads)
    report = analyze(spec, input_volume, rounding)
    if report.errors:
        raise SpecInvalid(report.errors)
    heap, layers = simulate(report, batch, dtype, optimizer, mode, threads)
    training = mode == "train"
    items = []
    for key, label in ITEMS.items():
        if not training and key in ("kept", "grad", "pgrad", "opt"):
            continue
        top = heap.top[key]
        if key == "opt":
            label = f"optimizer state ({optimizer}: {OPTIMIZER_SLOTS[optimizer]}x parameters)"
        if not training and key == "flight":
            label = "live activations (only the current layers' volumes)"
        items.append(Item(key, label, top[2], top[1], top[0]))
    size = DTYPES[dtype]
    kept = heap.kept
    per_layer = []
    owned = {lay.name: lay for lay in layers}
    slots = 1 + (1 + OPTIMIZER_SLOTS[optimizer] if training else 0)
    for row in report.rows:
        if row.is_block:
            continue
        bufs = kept.get(row.name, [])
        layer = owned.get(row.name)
        what = [b.what for b in bufs]
        if isinstance(layer, _Activation) and layer.in_place and training:
            what = ["output: in place, counted where it was allocated"]
        n_params = row.parameters
        per_layer.append(LayerMemory(
            name=row.name, kind=row.kind, output=str(row.output), kept=what,
            kept_numbers_per_image=sum(b.per_image for b in bufs),
            kept_bytes_per_image=sum(b.per_image_bytes for b in bufs),
            kept_bytes=sum(b.nbytes for b in bufs),
            parameters=n_params, parameter_bytes=n_params * size * slots,
            workspace_bytes=heap.layer_work.get(row.name, 0), depth=row.depth))
    result = MemoryReport(
        name=spec.name, input=str(report.input), mode=mode, batch=batch, dtype=dtype,
        bytes_per_number=size, optimizer=optimizer if training else None, threads=threads,
        items=items, total=sum(it.bytes for it in items), peak=heap.peak,
        peak_where=heap.peak_where, peak_parts=heap.peak_parts, layers=per_layer,
        phase_peaks={k: v for k, v in heap.phase_peak.items() if k != "setup"})
    result.rules, result.notes = _rules(report, result, heap, layers)
    return result


def _rules(report: Report, result: MemoryReport, heap: _Heap,
           layers: list[_Layer]) -> tuple[list[dict[str, Any]], list[str]]:
    """The notes' rules of thumb next to the exact items, and what the notes say."""
    size, n = result.bytes_per_number, result.batch
    forward = report.activations  # input + every layer's output, elementwise in place
    rules: list[dict[str, Any]] = [{
        "rule": "forward activations (the notes' table: input + every output, ReLU in place)",
        "numbers_per_image": forward, "bytes": forward * size * n}]
    notes = []
    if result.mode == "train":
        exact_act = result.item("kept").bytes + result.item("grad").bytes
        rules.append({"rule": "the notes' \"~*2 for bwd\": 2 x forward activations",
                      "bytes": 2 * forward * size * n,
                      "exact": exact_act,
                      "exact_is": "activations kept + gradients of activations at their peak"})
        params = report.parameters
        exact_params = sum(result.item(k).bytes for k in ("param", "pgrad", "opt"))
        rules.append({"rule": "the notes' \"x3 or more\" for parameters: 3 x parameters",
                      "bytes": 3 * params * size, "exact": exact_params,
                      "exact_is": "parameters + gradients + optimizer state"})
    if report.spec.name == "VGG16" and report.input == Volume(224, 224, 3):
        notes.append("the notes' VGG16 table: its rows sum to 15,237,608 numbers per image "
                     "(58.1 MiB at float32); its \"TOTAL memory: 24M * 4 bytes ~= 93MB\" line "
                     "does not match its own rows")
    convs = [lay for lay in layers if isinstance(lay, _Conv) and not lay.direct]
    if convs:
        big = max(convs, key=lambda c: c.vout.h * c.vout.w * c.kdim * c.groups)
        full = n * big.vout.h * big.vout.w * big.kdim * big.groups * size
        band, _ = big._band()
        notes.append(f"a whole-batch im2col for {big.name} would take {_fmt(full)} (the notes' "
                     f"warning); the engine builds {band} output row(s) at a time per thread "
                     "(~1 MiB per band)")
    act = [lm for lm in result.layers if lm.kept_bytes]
    if act:
        top = max(act, key=lambda lm: lm.kept_bytes)
        share = top.kept_bytes / max(1, sum(lm.kept_bytes for lm in act))
        notes.append(f"most activation memory kept: {top.name} {top.output} ({share:.0%} of "
                     "the kept activations)")
    with_params = [lm for lm in result.layers if lm.parameters]
    if with_params:
        top = max(with_params, key=lambda lm: lm.parameters)
        share = top.parameters / max(1, report.parameters)
        notes.append(f"most parameters: {top.name} ({top.parameters:,}, {share:.0%})")
    return rules, notes


def _fmt(n: float) -> str:
    for factor, suffix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(n) >= factor:
            return f"{n / factor:.2f} {suffix}"
    return f"{n:.0f} B"


# ----------------------------------------------------------------------------- budgets

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3,
          "gb": 1000**3, "t": 1000**4, "tb": 1000**4, "kib": 2**10, "mib": 2**20,
          "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """'12GiB' -> 12 * 2**30; '12GB' -> 12e9 (decimal, as disks say); '512MiB'; '4096'."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        raise MemoryOptionError(f"--budget: expected a size such as 12GiB, 512MiB or 8GB, "
                           f"got {text!r}")
    value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise MemoryOptionError(f"--budget must be more than 0 bytes, got {text!r}")
    return value


def peak_bytes(report: Report, batch: int, dtype: str, optimizer: str, mode: str,
               threads: int) -> int:
    heap, _ = simulate(report, batch, dtype, optimizer, mode, threads)
    return heap.peak


def largest_batch(spec: S.Spec, budget: int, dtype: str = "float32",
                  optimizer: str = "momentum", mode: str = "train", threads: int | None = None,
                  input_volume: Volume | None = None, rounding: str | None = None,
                  limit: int = 1 << 24) -> tuple[int, int, int]:
    """The largest batch whose peak fits in `budget` bytes: (batch, its peak, the peak of
    one image more). Batch 0 when not even one image fits."""
    threads = threads or default_threads()
    _check_options(1, dtype, optimizer, mode, threads)
    report = analyze(spec, input_volume, rounding)
    if report.errors:
        raise SpecInvalid(report.errors)

    def peak(b: int) -> int:
        return peak_bytes(report, b, dtype, optimizer, mode, threads)

    if peak(1) > budget:
        return 0, 0, peak(1)
    lo, hi = 1, 2
    while hi <= limit and peak(hi) <= budget:  # the peak grows with the batch
        lo, hi = hi, hi * 2
    if hi > limit:
        return lo, peak(lo), 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if peak(mid) <= budget:
            lo = mid
        else:
            hi = mid
    return lo, peak(lo), peak(hi)
