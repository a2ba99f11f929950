"""Centred finite differences in float64, layer by layer and for the whole net.

For each layer alone, with a random input and a random upstream gradient R, the scalar
L = sum(R * layer(x)) has dL/dx = layer.backward(R); we compare that, and every
parameter's gradient, with (L(v + h) - L(v - h)) / 2h at sampled coordinates. The whole
net is then checked the same way through its loss. Plain data out; the CLI renders it.

The comparison is the notes' relative error (CS231n, "Gradient checks": |a - n| / max(|a|,
|n|), in double precision), with the notes' caution about values near the limits of
floating point: where both gradients are as small as the finite difference's own rounding
(their "roughly 1e-10 and smaller in absolute value is worrying"), the ratio measures noise
against noise and is about 1 whatever the code does. A conv bias right before batchnorm is
such a case: batchnorm removes the bias, so its true gradient is 0, the analytic one ~1e-16
and the numeric one ~1e-10. Gradients that small are compared absolutely (see `rounding_noise`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cnncli.engine.losses import LOSSES
from cnncli.engine.network import Network
from cnncli.layers.base import EngineLayer

THRESHOLD = 1e-6
STEP = 1e-5
# Rounding noise of a centred difference, in units of eps * scale / STEP (`rounding_noise`).
# Measured: a bias cancelled by batchnorm (true gradient 0) gives numeric gradients of at
# most 0.85 unit, in nets of 1 to 6 conv + batchnorm layers of 4 to 64 channels; 10 units
# leave a margin for deeper nets.
NOISE_UNITS = 10.0


@dataclass
class Check:
    layer: str
    what: str  # "input" or a parameter name
    shape: tuple[int, ...]
    samples: int
    max_rel_error: float
    analytic_all_zero: bool
    numeric_all_zero: bool  # zero as far as finite differences tell: all within `noise`
    kinks: int = 0  # sampled entries dropped because the +-h evaluations crossed a kink
    noise: float = 0.0  # the numeric gradient's rounding noise (absolute)

    @property
    def passed(self) -> bool:
        if self.analytic_all_zero and not self.numeric_all_zero:
            return False  # a gradient that is never computed is a bug, whatever the error
        return self.max_rel_error <= THRESHOLD

    def as_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "what": self.what, "shape": list(self.shape),
                "samples": self.samples, "max_rel_error": self.max_rel_error,
                "analytic_all_zero": self.analytic_all_zero, "kinks_skipped": self.kinks,
                "noise": self.noise, "passed": self.passed}


def rounding_noise(scale: float) -> float:
    """How far rounding alone moves a centred difference of an objective whose terms add
    up to `scale` in absolute value (sum |R * y|).

    Each evaluation of the objective is exact to about eps * scale, and the difference of
    two of them is divided by 2h: eps * scale / h, times NOISE_UNITS for the rounding inside
    the layers. With h = 1e-5 and scale ~10 that is ~2e-9: the notes' "1e-10 and smaller is
    worrying", scaled to this objective."""
    return NOISE_UNITS * float(np.finfo(np.float64).eps) * scale / STEP


def rel_error(a: np.ndarray, n: np.ndarray, noise: float = 0.0) -> float:
    """The notes' max |a - n| / max(|a|, |n|), over the sampled entries, with two floors.

    The absolute one, noise / THRESHOLD: below it the finite difference cannot resolve an
    entry to THRESHOLD, so such entries pass when |a - n| is within the noise (a ratio of
    noise to noise would be ~1). And, as before, 1e-4 of the largest sampled magnitude: an
    entry 10,000x smaller than its neighbours is compared absolutely (float64 cancellation)."""
    if not a.size:
        return 0.0
    scale = max(float(np.max(np.abs(a))), float(np.max(np.abs(n))))
    floor = max(1e-4 * scale, noise / THRESHOLD, 1e-12)
    denom = np.maximum(np.maximum(np.abs(a), np.abs(n)), floor)
    return float(np.max(np.abs(a - n) / denom))


def _sample(rng: np.random.Generator, size: int, k: int) -> np.ndarray:
    return rng.choice(size, size=min(k, size), replace=False)


def _numeric(fn: Any, array: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Centred differences of fn() (a float, or (float, kink signature)) at flat `index`.

    Where fn also returns a signature of its kinks (which ReLUs are on, which max-pool
    inputs win), an entry whose +h or -h evaluation changes the signature straddles a kink:
    its finite difference measures the jump, not the gradient, and comes back as NaN."""
    flat = array.reshape(-1)
    out = np.empty(len(index))
    base = fn()
    for j, i in enumerate(index):
        old = flat[i]
        flat[i] = old + STEP
        plus = fn()
        flat[i] = old - STEP
        minus = fn()
        flat[i] = old
        if isinstance(base, tuple):
            crossed = plus[1] != base[1] or minus[1] != base[1]
            out[j] = np.nan if crossed else (plus[0] - minus[0]) / (2 * STEP)
        else:
            out[j] = (plus - minus) / (2 * STEP)
    return out


def _compare(layer: str, what: str, analytic: np.ndarray, index: np.ndarray,
             numeric: np.ndarray, scale: float) -> Check:
    """One Check; `scale` is sum |terms| of the objective, which sets its `rounding_noise`."""
    a = analytic.reshape(-1)[index]
    keep = ~np.isnan(numeric)
    level = rounding_noise(scale)
    return Check(layer, what, analytic.shape, int(keep.sum()),
                 rel_error(a[keep], numeric[keep], level), not np.any(analytic),
                 bool(np.all(np.abs(numeric[keep]) <= level)), kinks=int((~keep).sum()),
                 noise=level)


def kink_signature(layers: list[EngineLayer]) -> int:
    """A hash of every non-differentiable choice a training forward made: the sign pattern
    of each ReLU / leaky ReLU and the winners of each max pool (read from what the layers
    saved for backward, before they are released)."""
    return hash(tuple(k for layer in layers if (k := layer.kinks()) is not None))


def _freeze_random(layer: EngineLayer, seed: int) -> None:
    layer.freeze(seed)  # a layer that draws random numbers draws the same ones each time


def check_layer(layer: EngineLayer, in_shape: tuple[int, ...], rng: np.random.Generator,
                samples: int) -> list[Check]:
    x = rng.standard_normal(in_shape)
    _freeze_random(layer, 1)
    y = layer.forward(x.copy(), True)
    upstream = rng.standard_normal(y.shape)
    scale = float(np.sum(np.abs(upstream * y)))
    need_dx = layer.need_dx
    layer.need_dx = True
    dx = layer.backward(upstream.copy())
    layer.need_dx = need_dx
    grads = {k: v.copy() for k, v in layer.grads.items()}

    def objective() -> tuple[float, int]:
        _freeze_random(layer, 1)
        out = float(np.sum(upstream * layer.forward(x.copy(), True)))
        kinks = kink_signature([layer])
        layer.release()
        return out, kinks

    idx = _sample(rng, x.size, samples)
    checks = [_compare(layer.name, "input", dx, idx, _numeric(objective, x, idx), scale)]
    for name, p in layer.params.items():
        idx = _sample(rng, p.size, samples)
        checks.append(_compare(layer.name, name, grads[name], idx,
                               _numeric(objective, p, idx), scale))
    return checks


# Batch statistics over a handful of numbers are degenerate (with 2 samples x-hat is +-1
# whatever x is, and its gradient is float64 noise): batchnorm checks see at least this
# many numbers per channel.
BATCHNORM_MIN_COUNT = 64


def check_network(net: Network, batch: int = 2, samples: int = 12,
                  seed: int = 0) -> list[Check]:
    """Every layer alone, then the whole net. `net` must be float64.

    Entries whose +-h evaluations flip a ReLU or a max-pool winner anywhere in the net
    ("kinks", the notes' warning about gradient checks) are dropped and counted."""
    if net.dtype != np.float64:
        raise ValueError("gradient checks need a float64 network")
    rng = np.random.default_rng(seed)
    rows = {r.name: r for r in net.report.rows}
    checks: list[Check] = []
    bn_areas = []
    for layer in net.layers:
        vin = rows[layer.name].input
        assert vin is not None
        n = batch
        if layer.batch_statistics:
            bn_areas.append(vin.h * vin.w)
            n = max(batch, -(-BATCHNORM_MIN_COUNT // (vin.h * vin.w)))
        checks.extend(check_layer(layer, (n, vin.h, vin.w, vin.d), rng, samples))
    if bn_areas:
        batch = max(batch, -(-16 // min(bn_areas)))

    # the whole net: L = sum(R * net(x)) for a random R, so a saturated softmax cannot hide
    # an error behind tiny gradients; the losses are checked on their own below
    x = rng.standard_normal((batch, net.input.h, net.input.w, net.input.d))
    upstream = rng.standard_normal((batch, net.output.h, net.output.w, net.output.d))

    def objective() -> tuple[float, int]:
        for layer in net.layers:
            _freeze_random(layer, 2)
        value = float(np.sum(upstream * net.forward(x, training=True)))
        kinks = kink_signature(net.layers)
        for layer in net.layers:
            layer.release()
        return value, kinks

    for layer in net.layers:
        _freeze_random(layer, 2)
    scale = float(np.sum(np.abs(upstream * net.forward(x, training=True))))
    dx = net.backward(upstream, input_grad=True)
    assert dx is not None
    grads = {k: v.copy() for k, v in net.grads.items()}
    idx = _sample(rng, x.size, samples)
    checks.append(_compare("(net)", "input", dx, idx, _numeric(objective, x, idx), scale))
    for name, p in net.params.items():
        idx = _sample(rng, p.size, samples)
        checks.append(_compare("(net)", name, grads[name], idx, _numeric(objective, p, idx),
                               scale))
    checks.extend(check_losses(rng, 2, max(2, min(10, net.output.size))))
    return checks


def check_losses(rng: np.random.Generator, batch: int, classes: int) -> list[Check]:
    """Softmax cross-entropy and the multiclass SVM, on random scores."""
    checks = []
    for name, fn in LOSSES.items():
        scores = rng.standard_normal((batch, classes))
        labels = rng.integers(0, classes, batch)
        _, grad = fn(scores, labels)
        idx = np.arange(scores.size)
        num = _numeric(lambda s=scores, f=fn, y=labels: f(s, y)[0], scores, idx)
        # the loss is a mean over the images of terms computed from their scores
        checks.append(_compare(f"(loss {name})", "scores", grad, idx, num,
                               float(np.sum(np.abs(scores))) / batch))
    return checks
