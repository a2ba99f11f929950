"""Walk a spec: every layer's volumes, parameters, multiply-adds and receptive field.

Plain data out (`Report`), rendered elsewhere; no numpy, no numba.
Units: one multiply-add = 1 MAC = 2 FLOPs. MACs count conv, local and fc layers
(the convention behind the published figures: VGG16 15.47 GMACs); pooling,
normalisation and activations are not counted as MACs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from cnncli.analysis.shapes import (
    Field,
    WindowOutput,
    effective_size,
    rounding_note,
    whole_inputs,
    whole_paddings,
    whole_strides,
    window_output,
)
from cnncli.spec.parse import (
    FC,
    LRN,
    Activation,
    BatchNorm,
    Concat,
    Conv,
    Dropout,
    Local,
    Node,
    Pair,
    Pool,
    Problem,
    Repeat,
    Residual,
    Spec,
    Volume,
    unrolled,
)

BYTES_FLOAT32 = 4
IN_PLACE = (Activation, Dropout)  # computed in place: no new activation memory


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


class _Walker:
    def __init__(self, spec: Spec, rounding: str):
        self.spec = spec
        self.rounding = rounding
        self.rows: list[Row] = []
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []
        self.rounded: list[Problem] = []
        self.first_conv_seen = False
        self.first_fraction: str | None = None

    # ------------------------------------------------------------------ sequences and blocks
    def sequence(self, nodes: tuple[Node, ...], vol: Volume, rf: tuple[Field, Field],
                 depth: int) -> tuple[Volume, tuple[Field, Field]]:
        for node in nodes:
            vol, rf = self.node(node, vol, rf, depth)
        return vol, rf

    def node(self, node: Node, vol: Volume, rf: tuple[Field, Field],
             depth: int) -> tuple[Volume, tuple[Field, Field]]:
        if isinstance(node, Repeat):
            self.rows.append(Row(node.name, "repeat", depth, f"x{node.count}", vol, None,
                                 line=node.line, is_block=True))
            for one_pass in node.passes:
                vol, rf = self.sequence(one_pass, vol, rf, depth + 1)
            return vol, rf
        if isinstance(node, Residual):
            return self.residual(node, vol, rf, depth)
        if isinstance(node, Concat):
            return self.concat(node, vol, rf, depth)
        return self.leaf(node, vol, rf, depth)

    def residual(self, node: Residual, vol: Volume, rf: tuple[Field, Field],
                 depth: int) -> tuple[Volume, tuple[Field, Field]]:
        self.rows.append(Row(node.name, "residual", depth, "body + shortcut", vol, None,
                             line=node.line, is_block=True))
        body_vol, body_rf = self.sequence(node.body, vol, rf, depth + 1)
        short_vol, short_rf = vol, rf
        if node.shortcut:
            self.rows.append(Row(f"{node.name}.shortcut", "shortcut", depth + 1, "", vol, None,
                                 line=node.line, is_block=True))
            short_vol, short_rf = self.sequence(node.shortcut, vol, rf, depth + 2)
        if body_vol != short_vol:
            self.errors.append(Problem(
                f"{node.name}: the body ends in {body_vol} but the shortcut "
                f"{'ends in' if node.shortcut else '(identity) is'} {short_vol}; they must match "
                "to be added", node.line, node.name,
                "give the shortcut a 1x1 conv with the body's filters and stride"
                if body_vol.d != short_vol.d or body_vol.w != short_vol.w else None))
        out_rf = (Field.widest([body_rf[0], short_rf[0]]), Field.widest([body_rf[1], short_rf[1]]))
        self.rows.append(self._row(f"{node.name}.add", "add", depth + 1, "body + shortcut",
                                   body_vol, body_vol, out_rf, node.line))
        return body_vol, out_rf

    def concat(self, node: Concat, vol: Volume, rf: tuple[Field, Field],
               depth: int) -> tuple[Volume, tuple[Field, Field]]:
        self.rows.append(Row(node.name, "concat", depth, f"{len(node.branches)} branches", vol,
                             None, line=node.line, is_block=True))
        ends: list[tuple[Volume, tuple[Field, Field]]] = []
        for i, branch in enumerate(node.branches):
            self.rows.append(Row(f"{node.name}.b{i + 1}", "branch", depth + 1, "", vol, None,
                                 line=node.line, is_block=True))
            ends.append(self.sequence(branch, vol, rf, depth + 2))
        sizes = {(v.w, v.h) for v, _ in ends}
        if len(sizes) > 1:
            shown = ", ".join(f"b{i + 1} {v}" for i, (v, _) in enumerate(ends))
            self.errors.append(Problem(
                f"{node.name}: branches must end with the same width and height to be "
                f"concatenated in depth; they end in {shown}", node.line, node.name))
        first = ends[0][0]
        out = Volume(first.w, first.h, sum(v.d for v, _ in ends))
        out_rf = (Field.widest([r[0] for _, r in ends]), Field.widest([r[1] for _, r in ends]))
        self.rows.append(self._row(f"{node.name}.out", "concat", depth + 1, "depth concat",
                                   vol, out, out_rf, node.line))
        return out, out_rf

    # ------------------------------------------------------------------ leaves
    def _row(self, name: str, kind: str, depth: int, settings: str, vin: Volume, vout: Volume,
             rf: tuple[Field, Field], line: int | None) -> Row:
        return Row(name, kind, depth, settings, vin, vout, activations=vout.size,
                   receptive_field=Pair(rf[0].size, rf[1].size),
                   jump=Pair(rf[0].jump, rf[1].jump), line=line)

    def _windows(self, layer: Conv | Local | Pool, vol: Volume, size: Pair, stride: Pair,
                 pad: Pair, dilation: Pair, is_pool: bool) -> tuple[int, int, list[str]]:
        """Output height and width, recording errors (strict) or rounding notes."""
        rounding = layer.rounding or self.rounding
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
                self._fraction_error(layer, dim, r)
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

    def _fraction_error(self, layer: Conv | Local | Pool, dim: str, r: WindowOutput) -> None:
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

    def leaf(self, layer: Node, vol: Volume, rf: tuple[Field, Field],
             depth: int) -> tuple[Volume, tuple[Field, Field]]:
        if isinstance(layer, (Conv, Local)):
            return self.conv_like(layer, vol, rf, depth)
        if isinstance(layer, Pool):
            return self.pool(layer, vol, rf, depth)
        if isinstance(layer, FC):
            n_in = vol.size
            out = Volume(1, 1, layer.units)
            # an FC neuron sees the whole input volume: the receptive field grows to cover it
            new_rf = (rf[0].through(vol.h, 1), rf[1].through(vol.w, 1))
            row = self._row(layer.name, "fc", depth, f"{layer.units} units"
                            + ("" if layer.bias else ", no bias"), vol, out, new_rf, layer.line)
            row.weights = layer.units * n_in
            row.biases = layer.units if layer.bias else 0
            row.macs = layer.units * n_in
            row.params[f"{layer.name}.weight"] = (layer.units, n_in)
            if layer.bias:
                row.params[f"{layer.name}.bias"] = (layer.units,)
            self.rows.append(row)
            return out, new_rf
        row = self._row(layer.name, layer.kind, depth, self._settings(layer), vol, vol, rf,
                        layer.line)
        if isinstance(layer, IN_PLACE):
            row.in_place = True
        if isinstance(layer, BatchNorm):
            row.weights, row.biases = vol.d, vol.d  # gamma (scale) and beta (shift)
            row.params = {f"{layer.name}.weight": (vol.d,), f"{layer.name}.bias": (vol.d,)}
            row.buffers = {f"{layer.name}.running_mean": (vol.d,),
                           f"{layer.name}.running_var": (vol.d,)}
        if isinstance(layer, LRN) and layer.size > vol.d:
            self.warnings.append(Problem(
                f"{layer.name}: the LRN window ({layer.size}) is wider than the depth ({vol.d})",
                layer.line, layer.name))
        self.rows.append(row)
        return vol, rf

    @staticmethod
    def _settings(layer: Node) -> str:
        if isinstance(layer, Activation):
            return f"slope {layer.slope:g}" if layer.function == "leaky_relu" else ""
        if isinstance(layer, BatchNorm):
            return f"eps {layer.eps:g}"
        if isinstance(layer, Dropout):
            return f"p {layer.p:g}"
        if isinstance(layer, LRN):
            return f"size {layer.size}, alpha {layer.alpha:g}, beta {layer.beta:g}, k {layer.k:g}"
        return ""

    def conv_like(self, layer: Conv | Local, vol: Volume, rf: tuple[Field, Field],
                  depth: int) -> tuple[Volume, tuple[Field, Field]]:
        groups = layer.groups if isinstance(layer, Conv) else 1
        if vol.d % groups:
            self.errors.append(Problem(
                f"{layer.name}: the input depth {vol.d} is not divisible by groups ({groups})",
                layer.line, layer.name, f"use groups that divide {vol.d}"))
        oh, ow, notes = self._windows(layer, vol, layer.size, layer.stride, layer.pad,
                                      layer.dilation, is_pool=False)
        out = Volume(ow, oh, layer.filters)
        d_in = vol.d // groups if vol.d % groups == 0 else vol.d
        kernel = layer.size.h * layer.size.w
        f_eff = (effective_size(layer.size.h, layer.dilation.h),
                 effective_size(layer.size.w, layer.dilation.w))
        new_rf = (rf[0].through(f_eff[0], layer.stride.h), rf[1].through(f_eff[1], layer.stride.w))
        parts = [f"{layer.filters} filters", f"{layer.size}"
                 + (f"/{layer.stride}" if layer.stride != Pair(1, 1) else "")]
        if layer.pad != Pair(0, 0):
            parts.append(f"pad {'same' if layer.pad_same else layer.pad}")
        if layer.dilation != Pair(1, 1):
            parts.append(f"dilation {layer.dilation}")
        if groups > 1:
            parts.append(f"groups {groups}")
        if not layer.bias:
            parts.append("no bias")
        row = self._row(layer.name, layer.kind, depth, ", ".join(parts), vol, out, new_rf,
                        layer.line)
        row.notes = notes
        per_filter = d_in * kernel
        if isinstance(layer, Local):
            # no sharing: one weight set (and one bias) per output position
            positions = oh * ow
            row.weights = positions * layer.filters * per_filter
            row.biases = positions * layer.filters if layer.bias else 0
            row.params[f"{layer.name}.weight"] = (layer.filters, oh, ow, vol.d, layer.size.h,
                                                  layer.size.w)
            if layer.bias:
                row.params[f"{layer.name}.bias"] = (layer.filters, oh, ow)
        else:
            row.weights = layer.filters * per_filter
            row.biases = layer.filters if layer.bias else 0
            row.params[f"{layer.name}.weight"] = (layer.filters, d_in, layer.size.h, layer.size.w)
            if layer.bias:
                row.params[f"{layer.name}.bias"] = (layer.filters,)
        row.macs = oh * ow * layer.filters * per_filter
        self.rows.append(row)
        self._lint_conv(layer, vol, out)
        return out, new_rf

    def pool(self, layer: Pool, vol: Volume, rf: tuple[Field, Field],
             depth: int) -> tuple[Volume, tuple[Field, Field]]:
        if layer.is_global:
            out = Volume(1, 1, vol.d)
            new_rf = (rf[0].through(vol.h, 1), rf[1].through(vol.w, 1))
            row = self._row(layer.name, "pool", depth, f"{layer.type}, global", vol, out, new_rf,
                            layer.line)
            self.rows.append(row)
            return out, new_rf
        assert layer.size is not None and layer.stride is not None
        oh, ow, notes = self._windows(layer, vol, layer.size, layer.stride, layer.pad, Pair(1, 1),
                                      is_pool=True)
        out = Volume(ow, oh, vol.d)
        new_rf = (rf[0].through(layer.size.h, layer.stride.h),
                  rf[1].through(layer.size.w, layer.stride.w))
        settings = f"{layer.type} {layer.size}/{layer.stride}"
        if layer.pad != Pair(0, 0):
            settings += f", pad {layer.pad}"
        if layer.rounding:
            settings += f", {layer.rounding}"
        row = self._row(layer.name, "pool", depth, settings, vol, out, new_rf, layer.line)
        row.notes = notes
        self.rows.append(row)
        # a window over the whole volume is global pooling, which the notes recommend in
        # place of big FC layers; only windows > 3 that leave several outputs are destructive
        covers_all = (oh == ow == 1 and layer.size.h - layer.pad.h >= vol.h
                      and layer.size.w - layer.pad.w >= vol.w)
        if max(layer.size.h, layer.size.w) > 3 and not covers_all:
            self.warnings.append(Problem(
                f"{layer.name}: pooling window {layer.size} is larger than 3; the notes warn "
                "such pooling is too destructive (2x2/2 or 3x3/2 are the usual choices)",
                layer.line, layer.name))
        return out, new_rf

    def _lint_conv(self, layer: Conv | Local, vol: Volume, out: Volume) -> None:
        first = not self.first_conv_seen
        self.first_conv_seen = True
        if layer.stride == Pair(1, 1):
            keep = Pair(layer.dilation.h * (layer.size.h - 1) // 2,
                        layer.dilation.w * (layer.size.w - 1) // 2)
            odd = layer.size.h % 2 == 1 and layer.size.w % 2 == 1
            if odd and layer.pad != keep:
                # more padding than (F-1)/2 grows the volume, less shrinks it
                if out.w <= vol.w and out.h <= vol.h:
                    change = "shrinks the volume"
                elif out.w >= vol.w and out.h >= vol.h:
                    change = f"grows the volume to {out.w}x{out.h}"
                else:
                    change = f"changes the volume to {out.w}x{out.h}"
                self.warnings.append(Problem(
                    f"{layer.name}: stride-1 conv with pad {layer.pad} {change}; "
                    f"pad (F-1)/2 = {keep} keeps {vol.w}x{vol.h} (the notes' sizing pattern)",
                    layer.line, layer.name))
        if not first and max(layer.size.h, layer.size.w) > 5:
            self.warnings.append(Problem(
                f"{layer.name}: a {layer.size} filter beyond the first layer; the notes prefer "
                "stacks of 3x3 (fewer parameters, more non-linearity)", layer.line, layer.name))


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
    walker = _Walker(spec, mode)
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
    if share > 0.5 and heaviest.kind in ("fc", "conv", "local") and len(report.layers) > 2:
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
    wasted = sum(layer.filters if isinstance(layer, Conv) else layer.units for layer in layers)
    names = ", ".join(layer.name for layer in layers[:3])
    if len(layers) > 3:
        names += f" and {len(layers) - 3} more"
    report.warnings.append(Problem(
        f"{names} {'has a bias' if len(layers) == 1 else 'have biases'} right before "
        f"batchnorm, which subtracts each channel's mean and adds its own shift: {wasted:,} "
        "parameters that learn nothing; write bias: false", layers[0].line, layers[0].name))


def _biases_into_batchnorm(nodes: tuple[Node, ...]) -> list[Conv | FC]:
    """Conv and fc layers with a bias whose output goes into batchnorm unchanged per channel:
    directly, or as the end of a residual body or shortcut (an added constant) or of a
    concat branch (its own channels), when the block is followed by batchnorm."""
    found: list[Conv | FC] = []
    sequence = unrolled(nodes)  # a repeat's passes follow one another
    for index, node in enumerate(sequence):
        if index + 1 < len(sequence) and isinstance(sequence[index + 1], BatchNorm):
            found += _last_biases(node)
        if isinstance(node, Residual):
            found += _biases_into_batchnorm(node.body) + _biases_into_batchnorm(node.shortcut)
        elif isinstance(node, Concat):
            for branch in node.branches:
                found += _biases_into_batchnorm(branch)
    return found


def _last_biases(node: Node) -> list[Conv | FC]:
    """The biased conv/fc layers whose output is (part of) this node's output, unchanged."""
    if isinstance(node, (Conv, FC)):
        return [node] if node.bias else []
    ends = [node.body, node.shortcut] if isinstance(node, Residual) else \
        list(node.branches) if isinstance(node, Concat) else []
    found: list[Conv | FC] = []
    for nodes in ends:
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
