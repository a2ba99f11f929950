"""Optimizers and learning-rate schedules from the CS231n notes ("Neural Networks 3").

An optimizer holds the network's live parameter arrays (`net.params`, updated in place)
and one `step(grads)` that applies the notes' update rule to every parameter that has a
gradient. Per-parameter state (velocity, caches, moments) is kept in dicts of arrays, so
`state_dict()` is plain arrays and numbers that a checkpoint stores without pickle.

    >>> opt = make_optimizer("momentum", net.params, lr=0.01, momentum=0.9)
    >>> opt.step(net.grads)

The rules, with x a parameter, dx its gradient (the notes' code, vectorised):

    sgd        x += -lr * dx
    momentum   v = mu * v - lr * dx;  x += v
    nesterov   v_prev = v;  v = mu * v - lr * dx;  x += -mu * v_prev + (1 + mu) * v
    adagrad    cache += dx**2;  x += -lr * dx / (sqrt(cache) + eps)
    rmsprop    cache = decay * cache + (1 - decay) * dx**2;  x += -lr * dx / (sqrt(cache) + eps)
    adam       m = b1*m + (1-b1)*dx;  v = b2*v + (1-b2)*dx**2
               x += -lr * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)

The notes' momentum keeps `lr` inside the velocity; PyTorch's SGD(momentum=mu) keeps it
outside (v = mu*v + dx; x -= lr*v). Both give the same steps while `lr` is constant.
L2 weight decay is not here: `Network.weight_decay(reg)` adds it to the gradients.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam")
SCHEDULES = ("constant", "step", "exp", "cosine")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _check_lr(lr: float) -> None:
    _check(math.isfinite(lr) and lr > 0, f"learning rate must be > 0, got {lr}")


class Optimizer:
    """Base class: `lr` may be changed between steps (the schedule does so)."""

    name = "sgd"
    slots: tuple[str, ...] = ()  # per-parameter state arrays, e.g. ("velocity",)

    def __init__(self, params: dict[str, np.ndarray], lr: float):
        _check_lr(lr)
        self.params = params
        self.lr = float(lr)
        self.t = 0  # steps taken
        self.state: dict[str, dict[str, np.ndarray]] = {
            slot: {k: np.zeros_like(p) for k, p in params.items()} for slot in self.slots}

    def step(self, grads: dict[str, np.ndarray]) -> None:
        self.t += 1
        for name, p in self.params.items():
            g = grads.get(name)
            if g is not None:
                self._update(name, p, g.astype(p.dtype, copy=False))

    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        p -= p.dtype.type(self.lr) * g

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """{'t': steps, 'lr': lr, '<slot>/<param>': array...}, arrays copied."""
        state: dict[str, Any] = {"t": self.t, "lr": self.lr}
        for slot, arrays in self.state.items():
            state.update({f"{slot}/{k}": v.copy() for k, v in arrays.items()})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.t = int(state["t"])
        self.lr = float(state["lr"])
        for slot, arrays in self.state.items():
            for k, v in arrays.items():
                key = f"{slot}/{k}"
                if key not in state:
                    raise ValueError(f"optimizer state has no {key!r} ({self.name})")
                src = np.asarray(state[key])
                if src.shape != v.shape:
                    raise ValueError(f"optimizer state {key!r}: expected shape {v.shape}, "
                                     f"got {src.shape}")
                v[...] = src


class SGD(Optimizer):
    name = "sgd"


class Momentum(Optimizer):
    name = "momentum"
    slots = ("velocity",)

    def __init__(self, params: dict[str, np.ndarray], lr: float, momentum: float = 0.9):
        _check(0 <= momentum < 1, f"momentum must be in [0, 1), got {momentum}")
        super().__init__(params, lr)
        self.mu = float(momentum)

    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        v = self.state["velocity"][name]
        v *= self.mu
        v -= p.dtype.type(self.lr) * g
        p += v


class Nesterov(Momentum):
    name = "nesterov"

    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        v = self.state["velocity"][name]
        v_prev = v.copy()
        v *= self.mu
        v -= p.dtype.type(self.lr) * g
        p += -self.mu * v_prev + (1 + self.mu) * v


class Adagrad(Optimizer):
    name = "adagrad"
    slots = ("cache",)

    def __init__(self, params: dict[str, np.ndarray], lr: float, eps: float = 1e-8):
        _check(eps > 0, f"eps must be > 0, got {eps}")
        super().__init__(params, lr)
        self.eps = float(eps)

    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        cache = self.state["cache"][name]
        cache += g * g
        p -= self.lr * g / (np.sqrt(cache) + self.eps)


class RMSProp(Optimizer):
    name = "rmsprop"
    slots = ("cache",)

    def __init__(self, params: dict[str, np.ndarray], lr: float, decay: float = 0.99,
                 eps: float = 1e-8):
        _check(0 <= decay < 1, f"decay rate must be in [0, 1), got {decay}")
        _check(eps > 0, f"eps must be > 0, got {eps}")
        super().__init__(params, lr)
        self.decay, self.eps = float(decay), float(eps)

    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        cache = self.state["cache"][name]
        cache *= self.decay
        cache += (1 - self.decay) * g * g
        p -= self.lr * g / (np.sqrt(cache) + self.eps)


class Adam(Optimizer):
    name = "adam"
    slots = ("m", "v")

    def __init__(self, params: dict[str, np.ndarray], lr: float, beta1: float = 0.9,
                 beta2: float = 0.999, eps: float = 1e-8):
        _check(0 <= beta1 < 1, f"beta1 must be in [0, 1), got {beta1}")
        _check(0 <= beta2 < 1, f"beta2 must be in [0, 1), got {beta2}")
        _check(eps > 0, f"eps must be > 0, got {eps}")
        super().__init__(params, lr)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)

    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        m, v = self.state["m"][name], self.state["v"][name]
        m *= self.beta1
        m += (1 - self.beta1) * g
        v *= self.beta2
        v += (1 - self.beta2) * g * g
        m_hat = m / (1 - self.beta1 ** self.t)  # bias correction: the moments start at 0
        v_hat = v / (1 - self.beta2 ** self.t)
        p -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


def make_optimizer(name: str, params: dict[str, np.ndarray], lr: float,
                   momentum: float = 0.9) -> Optimizer:
    """An optimizer by name (see OPTIMIZERS); `momentum` is used by momentum and nesterov."""
    if name == "sgd":
        return SGD(params, lr)
    if name == "momentum":
        return Momentum(params, lr, momentum)
    if name == "nesterov":
        return Nesterov(params, lr, momentum)
    if name == "adagrad":
        return Adagrad(params, lr)
    if name == "rmsprop":
        return RMSProp(params, lr)
    if name == "adam":
        return Adam(params, lr)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


class Schedule:
    """The learning rate for each epoch (0-based), from the notes' "annealing" section.

    constant  lr
    step      lr * gamma ** (epoch // step_size)      (e.g. halve every 5 epochs)
    exp       lr * gamma ** epoch                     (the notes' exponential decay)
    cosine    min_lr + (lr - min_lr) * (1 + cos(pi * epoch / epochs)) / 2
    """

    def __init__(self, kind: str, lr: float, epochs: int = 1, step_size: int = 5,
                 gamma: float = 0.5, min_lr: float = 0.0):
        _check(kind in SCHEDULES,
               f"schedule must be one of {', '.join(SCHEDULES)}, got {kind!r}")
        _check_lr(lr)
        _check(epochs >= 1, f"epochs must be >= 1, got {epochs}")
        _check(step_size >= 1, f"step size must be >= 1 epoch, got {step_size}")
        _check(0 < gamma <= 1, f"decay factor gamma must be in (0, 1], got {gamma}")
        _check(0 <= min_lr <= lr, f"min_lr must be in [0, lr], got {min_lr}")
        self.kind, self.lr, self.epochs = kind, float(lr), int(epochs)
        self.step_size, self.gamma, self.min_lr = int(step_size), float(gamma), float(min_lr)

    def __call__(self, epoch: int) -> float:
        if self.kind == "step":
            return self.lr * self.gamma ** (epoch // self.step_size)
        if self.kind == "exp":
            return self.lr * self.gamma ** epoch
        if self.kind == "cosine":
            frac = min(epoch, self.epochs) / self.epochs
            return self.min_lr + (self.lr - self.min_lr) * (1 + math.cos(math.pi * frac)) / 2
        return self.lr
