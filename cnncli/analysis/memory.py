"""Where the memory of a training step (or an inference pass) goes: the itemised answer.

`estimate(spec, batch=64)` replays one step of the engine on a *simulated heap*: every
array the engine allocates (layer outputs, what each layer keeps for backward, gradients,
kernel work buffers, optimizer state) is a `Buf` whose bytes are added when it is created
and removed when its last reference goes. Each layer type declares the buffers it
allocates in its plan (cnncli/layers/, next to its engine half, whose kernels write into
exactly those buffers: no hidden numpy temporaries); this module walks the step's
schedule over the plans (network.py's order, then cnncli/engine/optim.py), so CPython's
reference counting frees each `Buf` at the moment the engine's array is freed. What comes
out is plain data (`MemoryReport`):

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
from typing import TYPE_CHECKING, Any

from cnncli.analysis.inplace import fused_in_evaluation, in_place_activations
from cnncli.analysis.report import Report, Row, analyze
from cnncli.errors import InputError
from cnncli.render.units import binary_bytes
from cnncli.spec.types import Spec, SpecInvalid, Volume, unrolled

if TYPE_CHECKING:
    from cnncli.layers.base import LayerSpec

DTYPES = {"float16": 2, "float32": 4, "float64": 8}
# Per-parameter state arrays each optimizer keeps (cnncli/engine/optim.py `slots`): the notes'
# "x3 or more" for parameters is params + gradients + this.
OPTIMIZER_SLOTS = {"sgd": 0, "momentum": 1, "nesterov": 1, "adagrad": 1, "rmsprop": 1,
                   "adam": 2}
# Parameter-sized temporaries alive at once inside `optimizer.step` for one parameter
# (numpy reuses a temporary operand of >= 256 KiB in place, but only for an array operand
# or a scalar that casts safely: `sqrt(c) + eps` with a Python float reuses the temporary
# at float64, not at float32). Measured with tracemalloc:
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

# Kernel work splits (band sizes, chunk counts) are read from engine/kernels/sizes.py by
# the layers' plans, the same module the kernels read them from.
INT32, INT64, FLOAT64, BOOL = 4, 8, 8, 1

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


class Heap:
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

    def add(self, cat: str, buf: Buf, sign: int) -> None:
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


class Buf:
    """One simulated array: its bytes count while a reference to it exists."""

    __slots__ = ("heap", "per_image", "fixed", "itemsize", "base", "owner", "what", "saves",
                 "numbers", "nbytes")

    def __init__(self, heap: Heap, per_image: int, fixed: int = 0, itemsize: int | None = None,
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


# ----------------------------------------------------------------------------- plans
# Each layer type's plan (cnncli/layers/, `plan`) keeps what the engine's layer keeps
# (`self.saved`) and allocates what its forward/backward and kernels allocate, in the same
# scopes; this is the vocabulary they write it in, and the walk over them.


class PlanLayer:
    """A layer's memory in a step: its parameters, and (in `forward`/`backward`, written by
    each layer type) its outputs, what it keeps for backward, its workspace, its gradients."""

    in_place = False  # an activation that overwrites its input allocates no output
    # What runs, where a layer type has a choice that decides its workspace (a conv: the
    # algorithm `cnncli bench` names, gemm, direct, winograd or planar); None elsewhere
    algorithm: str | None = None

    def __init__(self, heap: Heap, row: Row, threads: int):
        self.heap, self.row, self.name, self.threads = heap, row, row.name, threads
        self.saved: list[Buf] = []
        self.need_dx = True
        # the residual block whose sum this layer's training forward writes in place of
        # its own output (`adds_sum`, the engine layer's rule; blocks.py sets it)
        self.sum_owner: str | None = None
        self.params: dict[str, Buf] = {}
        self.grads: dict[str, Buf] = {}
        for key, shape in row.params.items():
            self.params[key] = Buf(heap, 0, math.prod(shape), base="param", owner=self.name)
        for key, shape in row.buffers.items():
            self.params[key] = Buf(heap, 0, math.prod(shape), base="param", owner=self.name)
        self.trainable = list(row.params)

    # what forward keeps, what backward drops
    def keep(self, *bufs: Buf) -> None:
        for b in bufs:
            b.save()
        self.saved = list(bufs)

    def drop(self) -> None:
        for b in self.saved:
            b.unsave()
        self.saved = []

    def adds_sum(self) -> bool:
        """The engine layer's `adds_sum`: can its training forward write a residual block's
        sum (and the ReLU after it) instead of its own output?"""
        return False

    def out(self, vol: Volume, what: str = "output") -> Buf:
        return Buf(self.heap, vol.size, base="act", owner=self.name, what=what)

    def grad(self, vol: Volume) -> Buf:
        return Buf(self.heap, vol.size, base="grad", owner=self.name)

    def work(self, per_image: int, fixed: int = 0, itemsize: int | None = None) -> Buf:
        return Buf(self.heap, per_image, fixed, itemsize, base="work", owner=self.name)

    def new_grads(self, bufs: dict[str, Buf]) -> None:
        for key, buf in bufs.items():
            self.grads[key] = buf  # frees last step's gradient
            # computed as workspace (next to the old gradient), kept as the gradient
            buf.base = "pgrad"
            self.heap.add("work", buf, -1)
            self.heap.add("pgrad", buf, +1)

    def steady_grads(self) -> None:
        """The gradients left from the previous step (alive through this one)."""
        for key in self.trainable:
            self.grads[key] = Buf(self.heap, 0, self.params[key].numbers, base="pgrad",
                                   owner=self.name)

    def im2col(self) -> tuple[int, int] | None:
        """For a layer that lowers its windows to a GEMM: the numbers per image of a
        whole-image im2col matrix, and the output rows it builds at a time instead."""
        return None

    def forward(self, x: Buf, training: bool) -> Buf:
        raise NotImplementedError

    def backward(self, dy: Buf) -> Buf:
        raise NotImplementedError

    def consumes_dy(self) -> bool:
        """As the engine layer's `consumes_dy`: backward writes over dy or hands it back."""
        return False


def run_planned(item: Any, method: str, *args: Any) -> Buf:
    """Call a layer or block, noting where the heap is (for the peak's 'where')."""
    heap: Heap = item.heap
    before = heap.where, heap.layer
    if isinstance(item, PlanLayer):
        heap.where, heap.layer = f"{method} of {item.name}", item.name
    result: Buf = getattr(item, method)(*args)
    heap.where, heap.layer = before
    return result


class PlanBuilder:
    """The engine's builder (engine/network.py), over plans: each layer type builds its own
    plan; the in-place decisions come from the same rule as the engine's."""

    def __init__(self, heap: Heap, report: Report, threads: int, conv_algo: str = "gemm"):
        self.heap, self.threads = heap, threads
        self.conv_algo = conv_algo  # --conv-algo: each conv plans what its engine runs
        self.rows = {r.name: r for r in report.rows}
        self.in_place = in_place_activations(report.spec.layers)  # the engine's own rule
        # the batchnorms a conv applies in evaluation (the engine's rule too): no output
        self.fused_eval = fused_in_evaluation(report.spec.layers)

    def sequence(self, nodes: tuple[LayerSpec, ...]) -> Any:
        from cnncli.layers.blocks import PlanSequence

        return PlanSequence([node.plan(self.heap, self.rows[node.name], self.threads,
                                       self) for node in unrolled(nodes)])

    def end_depth(self, branch: tuple[LayerSpec, ...]) -> int:
        """The depth a concat branch ends with (the output of its last layer or block)."""
        out = self.rows[unrolled(branch)[-1].output_row].output
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
    algorithm: str | None = None  # PlanLayer.algorithm: what the workspace is for

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
             mode: str = "train", threads: int | None = None,
             conv_algo: str = "gemm") -> tuple[Heap, list[PlanLayer]]:
    """Replay one step on the simulated heap; returns the heap (its peaks, and `kept`: what
    each layer's forward allocated that backward reads) and the mirrored layers."""
    threads = threads or default_threads()
    heap = Heap(batch, DTYPES[dtype])
    spec = report.spec
    net = PlanBuilder(heap, report, threads, conv_algo).sequence(spec.layers)
    layers = net.leaves()
    if net.items and isinstance(net.items[0], PlanLayer):
        net.items[0].need_dx = False
    training = mode == "train"
    state: list[Buf] = []
    if training:
        for layer in layers:
            layer.steady_grads()
            for key in layer.trainable:
                numbers = layer.params[key].numbers
                state += [Buf(heap, 0, numbers, base="opt", owner=layer.name)
                          for _ in range(OPTIMIZER_SLOTS[optimizer])]
    x = Buf(heap, report.input.size, base="input", owner="input", what="images")
    labels = Buf(heap, 1, itemsize=INT64, base="input", owner="input", what="labels")
    heap.where = heap.phase = "forward"
    scores = net.forward(x, training)
    kept = _kept_by_layer(layers, x) if training else {}
    if training:
        classes = max(1, scores.per_image)
        heap.where, heap.layer, heap.phase = "loss", "", "loss"
        loss_temps = [Buf(heap, classes) for _ in range(4)]
        dscores = Buf(heap, classes, base="grad", owner="loss")
        del loss_temps
        heap.where = heap.phase = "backward"
        # a net whose last layer writes over dy gets a copy of the caller's (network.py)
        dx = net.backward(Buf(heap, classes, base="grad", owner="loss")
                          if net.consumes_dy() else dscores)
        del dx
        heap.where = heap.phase = "optimizer step"
        largest = max((lay.params[k].numbers for lay in layers for k in lay.trainable),
                      default=0)
        count = OPTIMIZER_TEMPS[optimizer] + (optimizer in _EPS_TEMP and dtype != "float64")
        temps = [Buf(heap, 0, largest) for _ in range(count)]
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


def _kept_by_layer(layers: list[PlanLayer], x: Buf) -> dict[str, list[_Kept]]:
    """At the end of forward: every kept buffer (once), by the layer that allocated it.
    Plain data: holding the buffers themselves would keep them alive."""
    seen: dict[int, Buf] = {}
    for layer in layers:
        for b in layer.saved:
            if b is not x and b.base == "act":
                seen[id(b)] = b
    by_owner: dict[str, list[_Kept]] = {}
    for b in seen.values():
        by_owner.setdefault(b.owner, []).append(
            _Kept(b.what, b.per_image, b.per_image * b.itemsize, b.nbytes))
    return by_owner


def estimate(spec: Spec, batch: int = 64, dtype: str = "float32", optimizer: str = "momentum",
             mode: str = "train", threads: int | None = None, input_volume: Volume | None = None,
             rounding: str | None = None, conv_algo: str = "gemm") -> MemoryReport:
    """The itemised memory of one training step (or one inference pass) of `spec`."""
    threads = threads or default_threads()
    _check_options(batch, dtype, optimizer, mode, threads)
    report = analyze(spec, input_volume, rounding)
    if report.errors:
        raise SpecInvalid(report.errors)
    heap, layers = simulate(report, batch, dtype, optimizer, mode, threads, conv_algo)
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
        if layer is not None and layer.in_place and training:
            what = ["output: in place, counted where it was allocated"]
        n_params = row.parameters
        per_layer.append(LayerMemory(
            name=row.name, kind=row.kind, output=str(row.output), kept=what,
            kept_numbers_per_image=sum(b.per_image for b in bufs),
            kept_bytes_per_image=sum(b.per_image_bytes for b in bufs),
            kept_bytes=sum(b.nbytes for b in bufs),
            parameters=n_params, parameter_bytes=n_params * size * slots,
            workspace_bytes=heap.layer_work.get(row.name, 0), depth=row.depth,
            algorithm=layer.algorithm if layer is not None else None))
    result = MemoryReport(
        name=spec.name, input=str(report.input), mode=mode, batch=batch, dtype=dtype,
        bytes_per_number=size, optimizer=optimizer if training else None, threads=threads,
        items=items, total=sum(it.bytes for it in items), peak=heap.peak,
        peak_where=heap.peak_where, peak_parts=heap.peak_parts, layers=per_layer,
        phase_peaks={k: v for k, v in heap.phase_peak.items() if k != "setup"})
    result.rules, result.notes = _rules(report, result, heap, layers)
    return result


def _rules(report: Report, result: MemoryReport, heap: Heap,
           layers: list[PlanLayer]) -> tuple[list[dict[str, Any]], list[str]]:
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
    im2cols = [(lay, cols) for lay in layers if (cols := lay.im2col()) is not None]
    if im2cols:
        big, (per_image, band) = max(im2cols, key=lambda c: c[1][0])
        full = n * per_image * size
        notes.append(f"a whole-batch im2col for {big.name} would take {binary_bytes(full)} "
                     f"(the notes' warning); the engine builds {band} output row(s) at a time "
                     "per thread (~1 MiB per band)")
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
               threads: int, conv_algo: str = "gemm") -> int:
    heap, _ = simulate(report, batch, dtype, optimizer, mode, threads, conv_algo)
    return heap.peak


def largest_batch(spec: Spec, budget: int, dtype: str = "float32",
                  optimizer: str = "momentum", mode: str = "train", threads: int | None = None,
                  input_volume: Volume | None = None, rounding: str | None = None,
                  limit: int = 1 << 24, conv_algo: str = "gemm") -> tuple[int, int, int]:
    """The largest batch whose peak fits in `budget` bytes: (batch, its peak, the peak of
    one image more). Batch 0 when not even one image fits."""
    threads = threads or default_threads()
    _check_options(1, dtype, optimizer, mode, threads)
    report = analyze(spec, input_volume, rounding)
    if report.errors:
        raise SpecInvalid(report.errors)

    def peak(b: int) -> int:
        return peak_bytes(report, b, dtype, optimizer, mode, threads, conv_algo)

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
