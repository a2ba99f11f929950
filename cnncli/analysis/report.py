"""Walk a spec: every layer's volumes, parameters, multiply-adds and receptive field.

Plain data out (`Report`), rendered elsewhere; no numpy, no numba.
Units: one multiply-add = 1 MAC = 2 FLOPs. MACs count conv, local and fc layers
(the convention behind the published figures: VGG16 15.47 GMACs); pooling,
normalisation and activations are not counted as MACs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from cnncli.analysis.shapes import (
    Field,
    WindowOutput,
    rounding_note,
    whole_inputs,
    whole_paddings,
    whole_strides,
    window_output,
)
from cnncli.spec.types import Pair, Problem, Spec, Volume, unrolled

if TYPE_CHECKING:
    from cnncli.layers.base import LayerSpec

BYTES_FLOAT32 = 4


@dataclass
class Row:
    """One line of the notes' table: a layer, or a block heading/merge."""

    name: str
    kind: str
    depth: int  # nesting level, for the tree display
    settings: str
    input: Volume | None
    output: Volume | None
    activations: int = 0  # the notes' "memory" column: numbers in the output volume
    in_place: bool = False  # elementwise layers overwrite their input: no new memory
    weights: int = 0
    biases: int = 0
    macs: int = 0
    receptive_field: Pair | None = None
    jump: Pair | None = None  # cumulative stride
    line: int | None = None
    notes: list[str] = field(default_factory=list)
    params: dict[str, tuple[int, ...]] = field(default_factory=dict)
    buffers: dict[str, tuple[int, ...]] = field(default_factory=dict)
    is_block: bool = False  # a heading row (repeat/residual/concat/branch): no figures

    @property
    def parameters(self) -> int:
        return self.weights + self.biases

    def as_dict(self) -> dict[str, Any]:
        # a shallow copy: asdict() deep-copies every field and is the slow part of --format json
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["notes"] = list(self.notes)
        for key in ("input", "output"):
            vol = getattr(self, key)
            d[key] = None if vol is None else {"width": vol.w, "height": vol.h, "depth": vol.d,
                                               "text": str(vol)}
        for key in ("receptive_field", "jump"):
            pair = getattr(self, key)
            d[key] = None if pair is None else {"height": pair.h, "width": pair.w}
        d["params"] = {k: list(v) for k, v in self.params.items()}
        d["buffers"] = {k: list(v) for k, v in self.buffers.items()}
        d["parameters"] = self.parameters
        return d


@dataclass
class Report:
    spec: Spec
    input: Volume
    rounding: str
    rows: list[Row]
    output: Volume | None
    errors: list[Problem]
    warnings: list[Problem]
    rounded: list[Problem]  # layers where floor/ceil changed the result
    receptive_field: Pair | None = None
    jump: Pair | None = None

    @property
    def valid(self) -> bool:
        return not self.errors

    @property
    def layers(self) -> list[Row]:
        return [r for r in self.rows if not r.is_block]

    @property
    def parameters(self) -> int:
        return sum(r.parameters for r in self.layers)

    @property
    def weights(self) -> int:
        return sum(r.weights for r in self.layers)

    @property
    def biases(self) -> int:
        return sum(r.biases for r in self.layers)

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.layers)

    @property
    def activations(self) -> int:
        """Numbers held per image in a forward pass, the notes' TOTAL memory:
        the input plus every layer's output, elementwise layers counting once (in place)."""
        return self.input.size + sum(r.activations for r in self.layers if not r.in_place)

    def row(self, name: str) -> Row:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    def totals(self) -> dict[str, Any]:
        return {
            "parameters": self.parameters, "weights": self.weights, "biases": self.biases,
            "macs": self.macs, "flops": 2 * self.macs,
            "activations_per_image": self.activations,
            "activation_bytes_per_image_float32": self.activations * BYTES_FLOAT32,
            "parameter_bytes_float32": self.parameters * BYTES_FLOAT32,
        }

    def as_dict(self) -> dict[str, Any]:
        rf, jump = self.receptive_field, self.jump
        return {
            "name": self.spec.name, "source": self.spec.source,
            "input": {"width": self.input.w, "height": self.input.h, "depth": self.input.d,
                      "text": str(self.input)},
            "output": None if self.output is None else {
                "width": self.output.w, "height": self.output.h, "depth": self.output.d,
                "text": str(self.output)},
            "rounding": self.rounding, "valid": self.valid,
            "units": {"macs": "multiply-adds (1 MAC = 2 FLOPs); conv, local and fc layers",
                      "activations": "numbers (multiply by bytes per number)"},
            "totals": self.totals(),
            "receptive_field": None if rf is None else {"height": rf.h, "width": rf.w},
            "total_stride": None if jump is None else {"height": jump.h, "width": jump.w},
            "layers": [r.as_dict() for r in self.rows],
            "errors": [p.as_dict() for p in self.errors],
            "warnings": [p.as_dict() for p in self.warnings],
            "rounded": [p.as_dict() for p in self.rounded],
        }


class Walker:
    """Walks a spec's tree, asking each layer for its row (cnncli/layers/: `analyze`).

    Layers add rows, errors and warnings here; the window arithmetic every windowed layer
    shares (output sizes under a rounding rule, the fixes for a fraction) lives here too.
    """

    def __init__(self, spec: Spec, rounding: str):
        self.spec = spec
        self.rounding = rounding
        self.rows: list[Row] = []
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []
        self.rounded: list[Problem] = []
        self.first_conv_seen = False
        self.first_fraction: str | None = None

    def sequence(self, nodes: tuple[LayerSpec, ...], vol: Volume, rf: tuple[Field, Field],
                 depth: int) -> tuple[Volume, tuple[Field, Field]]:
        for node in nodes:
            vol, rf = node.analyze(self, vol, rf, depth)
        return vol, rf

    def add(self, row: Row) -> None:
        self.rows.append(row)

    def row(self, name: str, kind: str, depth: int, settings: str, vin: Volume, vout: Volume,
            rf: tuple[Field, Field], line: int | None) -> Row:
        """A layer's row with its output, activations and receptive field filled in."""
        return Row(name, kind, depth, settings, vin, vout, activations=vout.size,
                   receptive_field=Pair(rf[0].size, rf[1].size),
                   jump=Pair(rf[0].jump, rf[1].jump), line=line)

    @staticmethod
    def heading(name: str, kind: str, depth: int, settings: str, vin: Volume,
                line: int | None) -> Row:
        """A block's heading row (repeat, residual, shortcut, concat, branch): no figures."""
        return Row(name, kind, depth, settings, vin, None, line=line, is_block=True)

    def windows(self, layer: LayerSpec, vol: Volume, size: Pair, stride: Pair,
                 pad: Pair, dilation: Pair, is_pool: bool) -> tuple[int, int, list[str]]:
        """Output height and width, recording errors (strict) or rounding notes."""
        rounding = getattr(layer, "rounding", None) or self.rounding  # its own, or the net's
        notes: list[str] = []
        outs = []
        dims = (("height", vol.h, size.h, pad.h, stride.h, dilation.h),
                ("width", vol.w, size.w, pad.w, stride.w, dilation.w))
        results = [window_output(n_in, f, p, s, rounding, d, is_pool)
                   for _, n_in, f, p, s, d in dims]
        same = results[0] == results[1]  # a square case is said once, not twice
        for (dim, *_), r in zip(dims, results, strict=True):
            dim = "height and width" if same else dim
            if r.out is None:
                self.fraction_error(layer, dim, r)
                outs.append(max(1, int(r.exact)))
            else:
                if r.changed:
                    note = rounding_note(dim, r)
                    notes.append(note)
                    self.rounded.append(Problem(f"{layer.name}: {note}", layer.line, layer.name))
                outs.append(r.out)
            if same:
                outs.append(outs[0])
                break
        return outs[0], outs[1], notes

    def fraction_error(self, layer: LayerSpec, dim: str, r: WindowOutput) -> None:
        if r.size_in + 2 * r.pad < r.f_eff:
            self.errors.append(Problem(
                f"{layer.name}: the {dim} {r.size_in} (padded to {r.size_in + 2 * r.pad}) is "
                f"smaller than the window {r.f_eff}: {r.formula}", layer.line, layer.name,
                f"use a smaller size or more padding, or a larger input {dim}"))
            return
        fixes = []
        pads = [p for p in whole_paddings(r.size_in, r.f_eff, r.stride, r.pad) if p != r.pad]
        if pads:
            fixes.append("pad " + " or ".join(
                f"{p} (-> {(r.size_in + 2 * p - r.f_eff) // r.stride + 1})" for p in pads))
        strides = whole_strides(r.size_in, r.f_eff, r.pad, r.stride)
        if strides:
            fixes.append("stride " + " or ".join(
                f"{s} (-> {(r.size_in + 2 * r.pad - r.f_eff) // s + 1})" for s in strides))
        inputs = whole_inputs(r.size_in, r.f_eff, r.pad, r.stride)
        if inputs:
            fixes.append(f"an input {dim} of " + " or ".join(str(i) for i in inputs) +
                         " to this layer")
        fixes.append("or rounding: floor / ceil to accept it")
        after = ""
        if self.first_fraction is not None:
            after = (f" (sizes from {self.first_fraction} on were rounded down to go on; this "
                     f"may resolve once {self.first_fraction} is fixed)")
        else:
            self.first_fraction = layer.name
        self.errors.append(Problem(
            f"{layer.name}: output {dim} {r.formula} is not a whole number{after}", layer.line,
            layer.name, "; ".join(fixes)))


def _input_warnings(vol: Volume) -> list[Problem]:
    out = []
    for dim, n in (("width", vol.w), ("height", vol.h)):
        halvings = (n & -n).bit_length() - 1  # times n divides by 2
        if halvings < 2 and n > 8:
            out.append(Problem(
                f"input {dim} {n} can be halved only {halvings} time{'s' if halvings != 1 else ''};"
                " the notes advise sizes divisible by 2 many times (32, 64, 96, 224, 384, 512)",
                None, None))
    return out


def analyze(spec: Spec, input_volume: Volume | None = None, rounding: str | None = None) -> Report:
    """The per-layer report of a spec (optionally at another input size or rounding)."""
    vol = input_volume or spec.input
    mode = rounding or spec.rounding
    walker = Walker(spec, mode)
    out, rf = walker.sequence(spec.layers, vol, (Field(), Field()), 0)
    report = Report(spec, vol, mode, walker.rows, out, walker.errors,
                    _input_warnings(vol) + walker.warnings, walker.rounded,
                    Pair(rf[0].size, rf[1].size), Pair(rf[0].jump, rf[1].jump))
    if report.errors:
        report.output = None
    _parameter_hint(report)
    _bias_before_batchnorm_hint(report)
    return report


def _parameter_hint(report: Report) -> None:
    total = report.parameters
    if not total:
        return
    heaviest = max(report.layers, key=lambda r: r.parameters)
    share = heaviest.parameters / total
    if share > 0.5 and heaviest.macs > 0 and len(report.layers) > 2:  # a dot-product layer
        report.warnings.append(Problem(
            f"{heaviest.name} holds {share:.0%} of all parameters ({heaviest.parameters:,}); "
            "the notes: most parameters sit in the first FC layer, and replacing it by "
            "global average pooling removes most of them", heaviest.line, heaviest.name))


def _bias_before_batchnorm_hint(report: Report) -> None:
    """Batchnorm subtracts each channel's batch mean, so a constant added to a channel just
    before it (a conv's or fc's bias) is removed again, and its own shift (beta) takes that
    role: the bias parameters learn nothing (their gradient is zero)."""
    layers = _biases_into_batchnorm(report.spec.layers)
    if not layers:
        return
    wasted = sum(layer.wasted_by_mean_subtraction() for layer in layers)
    names = ", ".join(layer.name for layer in layers[:3])
    if len(layers) > 3:
        names += f" and {len(layers) - 3} more"
    report.warnings.append(Problem(
        f"{names} {'has a bias' if len(layers) == 1 else 'have biases'} right before "
        f"batchnorm, which subtracts each channel's mean and adds its own shift: {wasted:,} "
        "parameters that learn nothing; write bias: false", layers[0].line, layers[0].name))


def _biases_into_batchnorm(nodes: tuple[LayerSpec, ...]) -> list[LayerSpec]:
    """Layers with a bias whose output goes into batchnorm unchanged per channel: directly,
    or as the end of a residual body or shortcut (an added constant) or of a concat branch
    (its own channels), when the block is followed by batchnorm."""
    found: list[LayerSpec] = []
    sequence = unrolled(nodes)  # a repeat's passes follow one another
    for index, node in enumerate(sequence):
        if index + 1 < len(sequence) and sequence[index + 1].subtracts_mean:
            found += _last_biases(node)
        for child in node.children():
            found += _biases_into_batchnorm(child)
    return found


def _last_biases(node: LayerSpec) -> list[LayerSpec]:
    """The biased layers whose output is (part of) this node's output, unchanged."""
    if node.wasted_by_mean_subtraction():
        return [node]
    found: list[LayerSpec] = []
    for nodes in node.children():
        sequence = unrolled(nodes)
        if sequence:
            found += _last_biases(sequence[-1])
    return found


def valid_input_sizes(spec: Spec, near: Volume, rounding: str | None = None,
                      count: int = 2, reach: int = 64) -> list[Volume]:
    """Network input sizes nearest to `near` (same aspect handling per dimension) for which
    every layer's output is whole: the fix when a deep layer rejects a fraction."""
    found: list[tuple[int, Volume]] = []
    for delta in range(1, reach + 1):
        for sign in (-1, 1):
            w, h = near.w + sign * delta, near.h + sign * delta
            if min(w, h) < 1:
                continue
            candidate = Volume(w, h, near.d)
            if analyze(spec, candidate, rounding).valid:
                found.append((delta, candidate))
        if len(found) >= count:
            break
    return [v for _, v in sorted(found, key=lambda t: (t[0], t[1].w))][:count]


def training_costs(report: Report) -> dict[str, Any]:
    """Multiply-adds of one training step per layer, which no summary tool reports: the
    forward pass, the backward pass to the layer's input (dL/dx, which the net's first layer
    never computes: nothing upstream needs it) and to its weights (dL/dW). Each layer type
    gives its own (`training_macs`); layers that are not dot products count none, as in the
    published figures. The same counts `cnncli bench` divides its times by."""
    from cnncli.spec.types import walk

    layers = {node.name: node for node in walk(report.spec.layers)}
    first = report.spec.layers[0] if report.spec.layers else None
    skips_dx = first.name if first is not None and not first.is_block else None
    rows: list[dict[str, Any]] = []
    totals = {"forward": 0, "backward_data": 0, "backward_weights": 0}
    for row in report.layers:
        node = layers.get(row.name)
        if node is None:  # a block's merge (add, concat): no multiply-adds
            continue
        forward, data, weights = node.training_macs(row, row.name == skips_dx)
        rows.append({"name": row.name, "kind": row.kind, "depth": row.depth,
                     "forward": forward, "backward_data": data, "backward_weights": weights,
                     "total": forward + data + weights})
        totals["forward"] += forward
        totals["backward_data"] += data
        totals["backward_weights"] += weights
    totals["total"] = sum(totals.values())
    return {"units": "multiply-adds (1 MAC = 2 FLOPs) per image", "layers": rows,
            "totals": totals}
