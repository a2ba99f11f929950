"""The data losses at the end of a classifier: softmax cross-entropy and the multiclass SVM,
each returning the mean loss over the batch and its gradient with respect to the scores."""

from __future__ import annotations

import numpy as np


def softmax_cross_entropy(scores: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of softmax(scores) and its gradient; scores [N, K]."""
    n = scores.shape[0]
    shifted = scores - scores.max(axis=1, keepdims=True)  # exp never overflows
    log_z = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_p = shifted - log_z
    loss = -float(log_p[np.arange(n), labels].mean())
    grad = np.exp(log_p)
    grad[np.arange(n), labels] -= 1
    return loss, (grad / n).astype(scores.dtype)


def svm_hinge(scores: np.ndarray, labels: np.ndarray,
              margin: float = 1.0) -> tuple[float, np.ndarray]:
    """The notes' multiclass SVM: mean over images of sum_j!=y max(0, s_j - s_y + margin)."""
    n = scores.shape[0]
    correct = scores[np.arange(n), labels][:, None]
    margins = np.maximum(0, scores - correct + margin)
    margins[np.arange(n), labels] = 0
    loss = float(margins.sum() / n)
    grad = (margins > 0).astype(scores.dtype)
    grad[np.arange(n), labels] = -grad.sum(axis=1)
    return loss, grad / n


LOSSES = {"softmax": softmax_cross_entropy, "svm": svm_hinge}
