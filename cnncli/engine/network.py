"""A spec -> a network of layers; forward/backward through sequences and blocks.

The Python API (usable from a notebook):

    >>> net = Network.from_spec("cifar_small")            # a file, a bundled name or a dict
    >>> scores = net.forward(x, training=True)             # x: [N, H, W, D] (NHWC), float
    >>> loss, dscores = net.loss(scores, labels)
    >>> net.backward(dscores)                              # fills net.grads, returns None
    >>> dx = net.backward(dscores, input_grad=True)        # ... and returns d loss / d x
    >>> net.params["conv1.weight"].shape                   # (32, 3, 3, 3): PyTorch's OIHW

Layouts: inputs and activations are NHWC (images as they lie on disk; measured faster
than NCHW on this CPU for every layer with more than 3 input channels). Parameters use
PyTorch's layouts and names (`conv1.weight` [K, D/groups, F, F], `fc1.weight`
[units, D*H*W] with the input flattened in (depth, height, width) order), so a
`state_dict` moves between cnncli and PyTorch with `np.transpose` of inputs only.
`forward` returns the last volume as [N, H, W, K]: [N, 1, 1, classes] for a classifier,
a map of class scores for a net whose FC layers were converted to convolutions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cnncli.analysis.inplace import (
    fused_activations,
    fused_in_evaluation,
    in_place_activations,
)
from cnncli.analysis.report import Report, analyze
from cnncli.config import ensure_configured
from cnncli.engine.kernels.conv_algo import CONV_ALGOS
from cnncli.engine.losses import LOSSES
from cnncli.layers.base import EngineLayer, LayerSpec
from cnncli.layers.blocks import Sequence
from cnncli.spec import catalog
from cnncli.spec import parse as S
from cnncli.spec.parse import SpecInvalid, Volume
from cnncli.spec.types import unrolled


class _Builder:
    """Each layer type builds its own engine layer (cnncli/layers/, `engine`); blocks build
    their sequences through `sequence`. `conv_algo` is the --conv-algo policy each conv
    layer applies to its own shape (cnncli/engine/kernels/conv_algo.py)."""

    def __init__(self, report: Report, rng: np.random.Generator, dtype: np.dtype,
                 conv_algo: str = "gemm", fuse: bool = True):
        self.rows = {r.name: r for r in report.rows}
        self.in_place = in_place_activations(report.spec.layers)
        self.fuse = fuse  # False: each layer in its own passes (blocks ask too)
        self.fused = fused_activations(report.spec.layers) if fuse else {}
        self.fused_eval = fused_in_evaluation(report.spec.layers) if fuse else {}
        self.rng = rng
        self.dtype = dtype
        self.conv_algo = conv_algo

    def sequence(self, nodes: tuple[LayerSpec, ...]) -> Sequence:
        """The engine layers of `nodes`; where an activation is fused (analysis/inplace.py
        decides, the producer's type says it can), the layer before absorbs it."""
        items: list[Any] = []
        for node in unrolled(nodes):
            item = node.engine(self.rows[node.name], self)
            if node.name in self.fused:
                producer = items[-1]
                producer.absorb(item)
                producer.fused_with, item.fused_into = node.name, producer.output_row
            if node.name in self.fused_eval:
                items[-1].absorb_in_evaluation(item)
            items.append(item)
        return Sequence(items)


class Network:
    """A built net: layers, named parameters, forward/backward, loss."""

    def __init__(self, spec: S.Spec, input_volume: Volume | None = None,
                 dtype: Any = np.float32, seed: int = 0, rounding: str | None = None,
                 conv_algo: str = "gemm", fuse: bool = True):
        ensure_configured()  # the thread policy holds from the start, not from the first conv
        report = analyze(spec, input_volume, rounding)
        if report.errors:
            # a spec that `cnncli check` rejects cannot be built
            raise SpecInvalid(report.errors)
        self.spec = spec
        self.report = report
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        self.input = report.input
        assert report.output is not None
        self.output = report.output
        if conv_algo not in CONV_ALGOS:
            raise ValueError(f"conv_algo must be one of {', '.join(CONV_ALGOS)}, "
                             f"got {conv_algo!r}")
        self.conv_algo = conv_algo
        self.rng = np.random.default_rng(seed)
        # fuse=False: every layer in its own passes (the same numbers, bit for bit; tests
        # and benchmarks compare the two)
        self.body = _Builder(report, self.rng, self.dtype, conv_algo, fuse).sequence(
            spec.layers)
        self.layers: list[EngineLayer] = list(self.body.leaves())
        # nothing upstream of the first layer needs a gradient: it skips that work (for a
        # conv, a third of its backward) unless `backward` is asked for the input's gradient
        first = self.body.items[0] if self.body.items else None
        self._skips_dx = first if isinstance(first, EngineLayer) else None
        if self._skips_dx is not None:
            self._skips_dx.need_dx = False
        self.loss_name = spec.loss or "softmax"

    # ------------------------------------------------------------ construction
    @classmethod
    def from_spec(cls, source: str | Path | dict[str, Any] | S.Spec, **kwargs: Any) -> Network:
        """Build from a spec file, a bundled architecture's name, a dict, or a Spec."""
        if isinstance(source, S.Spec):
            spec = source
        elif isinstance(source, dict):
            spec = S.parse_spec(source)
        else:
            spec = S.load_spec(catalog.resolve(str(source)))
        return cls(spec, **kwargs)

    # ------------------------------------------------------------ parameters
    @property
    def params(self) -> dict[str, np.ndarray]:
        """Live parameter arrays by name (PyTorch layouts); assign with `set_param`."""
        return {k: v for layer in self.layers for k, v in layer.params.items()}

    @property
    def grads(self) -> dict[str, np.ndarray]:
        return {k: v for layer in self.layers for k, v in layer.grads.items()}

    @property
    def buffers(self) -> dict[str, np.ndarray]:
        return {k: v for layer in self.layers for k, v in layer.buffers.items()}

    def _owner(self, name: str) -> EngineLayer:
        for layer in self.layers:
            if name in layer.params or name in layer.buffers:
                return layer
        raise KeyError(f"no parameter or buffer named {name!r}")

    def set_param(self, name: str, value: np.ndarray) -> None:
        layer = self._owner(name)
        store = layer.params if name in layer.params else layer.buffers
        value = np.asarray(value)
        if value.shape != store[name].shape:
            raise ValueError(f"{name}: expected shape {store[name].shape}, got {value.shape}")
        store[name][...] = value.astype(self.dtype)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and buffers (batchnorm running statistics), copied."""
        state = {k: v.copy() for k, v in self.params.items()}
        state.update({k: v.copy() for k, v in self.buffers.items()})
        return state

    def load_state_dict(self, state: dict[str, np.ndarray], strict: bool = True) -> None:
        expected = set(self.params) | set(self.buffers)
        missing, unexpected = expected - set(state), set(state) - expected
        if strict and (missing or unexpected):
            raise ValueError(f"state does not match the net: missing {sorted(missing)}, "
                             f"unexpected {sorted(unexpected)}")
        for name in expected & set(state):
            self.set_param(name, state[name])

    def num_parameters(self) -> int:
        return sum(v.size for v in self.params.values())

    # ------------------------------------------------------------ running
    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """x: [N, H, W, D] NHWC -> the last volume [N, H', W', K]."""
        x = np.asarray(x)
        if x.ndim != 4 or x.shape[1:] != (self.input.h, self.input.w, self.input.d):
            raise ValueError(f"input must be [N, {self.input.h}, {self.input.w}, "
                             f"{self.input.d}] (NHWC) for {self.spec.name}, got {x.shape}")
        x = np.ascontiguousarray(x, dtype=self.dtype)
        y = self.body.forward(x, training)
        if not training:
            for layer in self.layers:
                layer.release()
        return y

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Class scores [N, K] in evaluation mode (for a net that ends in [1x1xK])."""
        y = self.forward(x, training=False)
        return y.reshape(y.shape[0], -1)

    def backward(self, dy: np.ndarray, input_grad: bool = False) -> np.ndarray | None:
        """Gradient of the output -> parameter gradients in `grads`. Returns None, or with
        `input_grad=True` the gradient of the input, [N, H, W, D] like the input.

        Training needs no input gradient, and the first layer's is the costliest one to
        compute, so it is computed only when asked for."""
        if self.body.consumes_dy():  # the last layer writes over dy: not over the caller's
            dy = np.array(dy, dtype=self.dtype, order="C")
        else:
            dy = np.ascontiguousarray(np.asarray(dy, dtype=self.dtype))
        if dy.ndim == 2:
            dy = dy.reshape(dy.shape[0], 1, 1, -1)
        first = self._skips_dx if input_grad else None
        if first is not None:
            first.need_dx = True
        try:
            dx = self.body.backward(dy)
        finally:
            if first is not None:
                first.need_dx = False
        return dx if input_grad else None

    def loss(self, scores: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
        """Data loss (the spec's `loss`, softmax by default) and d loss / d scores."""
        flat = scores.reshape(scores.shape[0], -1)
        return LOSSES[self.loss_name](flat, np.asarray(labels))

    def weight_decay(self, reg: float) -> float:
        """Add the L2 penalty 0.5*reg*sum(W^2) over weights (not biases, not batchnorm)
        to the gradients; return the penalty to add to the loss."""
        if reg == 0:
            return 0.0
        penalty = 0.0
        for layer in self.layers:
            if not layer.decays:
                continue
            for name, w in layer.params.items():
                if name.endswith(".weight"):
                    penalty += 0.5 * reg * float(np.vdot(w, w))
                    if name in layer.grads:
                        layer.grads[name] = layer.grads[name] + reg * w
        return penalty
