"""Batch normalization: each channel normalised by its batch mean and variance, then
scaled and shifted by learned gamma and beta.

Parameters: gamma (`NAME.weight`) and beta (`NAME.bias`), one per channel; buffers: the
running mean and variance that evaluation uses (updated with `momentum`, the variance
unbiased, as PyTorch does). A bias just before it is wasted: it subtracts the mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cnncli.analysis.memory import FLOAT64, Buf, Heap, PlanLayer
from cnncli.layers.base import EngineLayer, LayerSpec, ParseContext
from cnncli.spec.types import Volume

if TYPE_CHECKING:
    import numpy as np

    from cnncli.analysis.report import Row, Walker
    from cnncli.spec.loading import Located


@dataclass(frozen=True)
class BatchNorm(LayerSpec):
    eps: float
    momentum: float

    key = "batchnorm"
    prefix = "bn"
    label = "BN"
    elementwise = True
    family = "norm"
    subtracts_mean = True
    absorbs = frozenset({"relu"})  # clamps as it writes y, masks dy in its sums pass

    @classmethod
    def parse(cls, ctx: ParseContext, loc: Located, name: str, line: int,
              where: str) -> BatchNorm:
        r = ctx.reader
        s = r.settings(where, loc, {"eps", "momentum"}, None)
        eps = r.number(f"{where}.eps", s["eps"], 0.0, 1.0, lo_open=True) \
            if "eps" in s else 1e-5
        momentum = r.number(f"{where}.momentum", s["momentum"], 0.0, 1.0) \
            if "momentum" in s else 0.1
        return cls(name, line, eps, momentum)

    def to_yaml(self, scope: str, write_sequence: Any) -> Any:
        return {"eps": self.eps, "momentum": self.momentum}

    def settings_text(self) -> str:
        return f"eps {self.eps:g}"

    def describe(self, row: Row, vol: Volume, w: Walker) -> None:
        row.weights, row.biases = vol.d, vol.d  # gamma (scale) and beta (shift)
        row.params = {f"{self.name}.weight": (vol.d,), f"{self.name}.bias": (vol.d,)}
        row.buffers = {f"{self.name}.running_mean": (vol.d,),
                       f"{self.name}.running_var": (vol.d,)}

    def plan(self, heap: Heap, row: Row, threads: int, ctx: Any) -> PlanLayer:
        return BatchNormPlan(heap, row, threads, applied_by_conv=row.name in ctx.fused_eval)

    def engine(self, row: Row, ctx: Any) -> EngineLayer:
        return BatchNormEngine(self, row, ctx.dtype)


# ----------------------------------------------------------------------------- memory plan


class BatchNormPlan(PlanLayer):
    def __init__(self, heap: Heap, row: Row, threads: int, applied_by_conv: bool = False):
        super().__init__(heap, row, threads)
        assert row.output is not None
        self.vol = row.output
        self.c = row.output.d
        self.applied_by_conv = applied_by_conv  # in evaluation (analysis/inplace.py)

    def forward(self, x: Buf, training: bool) -> Buf:
        c = self.c
        vectors = self.work(0, 2 * c, FLOAT64)  # gamma, beta as float64
        if not training and self.applied_by_conv:
            # the conv's kernels wrote (x - m) * a + b into x: only the vectors, and the
            # [3, C] stack the kernels read
            stats = self.work(0, 5 * c, FLOAT64)
            post = self.work(0, 3 * c)
            del stats, vectors, post
            return x
        if not training:
            stats = self.work(0, 5 * c, FLOAT64)
            y = self.out(self.vol)
            del stats, vectors
            return y
        # the statistics kernel: [chunks, 2, C] partial sums, the [C] shift, and each
        # running chunk's two [C] sums (norm.py's _bn_stats)
        chunks = min(64, self.heap.batch * self.vol.h * self.vol.w)
        partial = self.work(0, (chunks * 2 + 1 + 2 * min(self.threads, chunks)) * c, FLOAT64)
        stats = Buf(self.heap, 0, 2 * c, FLOAT64, base="act", owner=self.name,
                    what="mean, inv_std (float64)")
        del partial
        # a residual block's sum in place of its own output (`adds_sum`)
        y = self.out(self.vol) if self.sum_owner is None else \
            Buf(self.heap, self.vol.size, base="act", owner=self.sum_owner, what="sum")
        self.keep(x, stats)
        del stats, vectors
        return y

    def adds_sum(self) -> bool:
        return True  # last in a residual body, it has no ReLU of its own after it

    def backward(self, dy: Buf) -> Buf:
        c = self.c
        vectors = self.work(0, 12 * c, FLOAT64)  # gamma, partial sums, a, q, r, ...
        dx = self.grad(self.vol)
        del vectors
        grads = {f"{self.name}.weight": self.work(0, c), f"{self.name}.bias": self.work(0, c)}
        self.new_grads(grads)
        del grads
        self.drop()
        return dx


# ----------------------------------------------------------------------------- engine


class BatchNormEngine(EngineLayer):
    """Batch statistics in training, running statistics in evaluation.

    With a ReLU absorbed (`absorb`), forward writes max(y, 0) in its own pass and backward
    applies the ReLU's mask to dy in its sums pass; the ReLU then passes its arrays through.
    The output it keeps for the mask is the ReLU's own (in place): nothing more is kept,
    and it is let go before dx is allocated, as the ReLU's backward would have."""

    batch_statistics = True

    def __init__(self, layer: BatchNorm, row: Row, dtype: np.dtype):
        import numpy as np

        super().__init__(layer.name)
        assert row.output is not None
        c = row.output.d
        self.decays = False  # gamma is a scale, not a weight the notes regularise
        self.eps, self.momentum = layer.eps, layer.momentum
        self.params[f"{self.name}.weight"] = np.ones(c, dtype)
        self.params[f"{self.name}.bias"] = np.zeros(c, dtype)
        self.buffers[f"{self.name}.running_mean"] = np.zeros(c, dtype)
        self.buffers[f"{self.name}.running_var"] = np.ones(c, dtype)
        self._saved: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._saved_relu_y: np.ndarray | None = None  # the clamped output, for the mask
        self._relu: Any = None  # the absorbed activation's engine (ActivationEngine)
        self._handed: np.ndarray | None = None  # in evaluation, the conv before applied it

    def evaluation_affine(self, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(m, a, b): this layer in evaluation is (x - m) * a + b per channel, the vectors
        its own kernel would use; the conv before it applies them as it writes its output
        (engine/network.py decides), then the ReLU this layer absorbed, if any."""
        from cnncli.engine.kernels import norm as norm_k

        return norm_k.batchnorm_eval_affine(
            self.params[f"{self.name}.weight"], self.params[f"{self.name}.bias"],
            self.buffers[f"{self.name}.running_mean"],
            self.buffers[f"{self.name}.running_var"], self.eps, dtype)

    @property
    def relu_absorbed(self) -> bool:
        return self._relu is not None

    def producer_ran(self, y: np.ndarray) -> None:
        """The conv before computed this layer's evaluation output, `y` (the array itself is
        the token, as for an absorbed activation)."""
        self._handed = y

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        from cnncli.engine.kernels import norm as norm_k

        gamma = self.params[f"{self.name}.weight"]
        beta = self.params[f"{self.name}.bias"]
        rm = self.buffers[f"{self.name}.running_mean"]
        rv = self.buffers[f"{self.name}.running_var"]
        relu = self._relu is not None
        handed, self._handed = self._handed, None
        addend, self.sum_addend = self.sum_addend, None
        if not training and x is handed:  # the conv before wrote (x - m) * a + b (and ReLU)
            y = x
        elif not training:
            y = norm_k.batchnorm_forward_eval(x, gamma, beta, rm, rv, self.eps, relu=relu)
        else:
            # with `addend`, a residual block's sum and the ReLU after it (`adds_sum`)
            short, clamp = addend if addend is not None else (None, relu)
            y, mean, inv_std, _ = norm_k.batchnorm_forward_train(x, gamma, beta, self.eps,
                                                                  relu=clamp, add=short)
            self.update_running(mean, inv_std ** -2 - self.eps, x.size // x.shape[-1])
            self._saved = (x, mean, inv_std)
            self._saved_relu_y = y if relu else None
        if self._relu is not None:
            self._relu.producer_ran(y)
        return y

    def absorb(self, activation: EngineLayer) -> None:
        self._relu = activation

    def adds_sum(self) -> bool:
        # the apply pass adds the shortcut and clamps (a ReLU it absorbed would come first)
        return self._relu is None

    def masks_dy(self) -> bool:
        # its sums pass masks dy as it reads it (as for a ReLU it absorbed); the
        # synchronised batchnorm (training/distributed.py), whose passes are its own, says no
        return self._relu is None

    def update_running(self, mean: np.ndarray, var: np.ndarray, m: float) -> None:
        """Move the running statistics towards this batch's (`m` numbers per channel): by
        `momentum`, the variance unbiased, as PyTorch does."""
        rm = self.buffers[f"{self.name}.running_mean"]
        rv = self.buffers[f"{self.name}.running_var"]
        unbiased = var * m / max(1, m - 1)
        rm *= 1 - self.momentum
        rm += (self.momentum * mean).astype(rm.dtype)
        rv *= 1 - self.momentum
        rv += (self.momentum * unbiased).astype(rv.dtype)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        from cnncli.engine.kernels import norm as norm_k

        assert self._saved is not None, f"{self.name}: backward without a training forward"
        x, mean, inv_std = self._saved
        relu_y, self._saved, self._saved_relu_y = self._saved_relu_y, None, None
        if self.dy_mask is not None:  # a residual block's ReLU (`masks_dy`)
            relu_y, self.dy_mask = self.dy_mask, None
        sums = norm_k.batchnorm_backward_sums(dy, x, mean, inv_std, relu_y)
        del relu_y  # the ReLU's output goes before dx comes, as it would after its backward
        dx, dgamma, dbeta = norm_k.batchnorm_backward_dx(sums, self.params[f"{self.name}.weight"])
        self.grads[f"{self.name}.weight"] = dgamma
        self.grads[f"{self.name}.bias"] = dbeta
        return dx

    def kinks(self) -> bytes | None:
        import numpy as np

        if self._saved_relu_y is not None:  # the absorbed ReLU's signs
            return np.packbits(self._saved_relu_y > 0).tobytes()
        return None
