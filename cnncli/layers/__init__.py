"""Every layer type cnncli knows, one module per family, and the registry that dispatches.

A layer type is one class holding everything about it (cnncli/layers/base.py says what):
its settings and their validation, its shape/parameter/multiply-add rule, its memory plan
and its engine forward/backward. Every room of cnncli (the spec reader, the report, the
memory plan, the engine, the sliding window, the pictures) asks the layer, never its type.
Adding a layer type: write its module, add its class to `LAYER_TYPES` below.
"""

from __future__ import annotations

from cnncli.layers.activations import ELU, LeakyReLU, PReLU, ReLU, Sigmoid, Tanh
from cnncli.layers.base import LayerSpec
from cnncli.layers.batchnorm import BatchNorm
from cnncli.layers.blocks import Concat, Repeat, Residual
from cnncli.layers.conv import Conv, Local
from cnncli.layers.dropout import Dropout
from cnncli.layers.fc import FC
from cnncli.layers.lrn import LRN
from cnncli.layers.pool import Pool

# In the order the spec format documents them (and error messages list them).
LAYER_TYPES: tuple[type[LayerSpec], ...] = (
    Conv, Local, Pool, FC, ReLU, Tanh, Sigmoid, LeakyReLU, ELU, PReLU, BatchNorm, Dropout, LRN,
    Repeat, Residual, Concat,
)
REGISTRY: dict[str, type[LayerSpec]] = {t.key: t for t in LAYER_TYPES}

__all__ = ["ELU", "FC", "LAYER_TYPES", "LRN", "REGISTRY", "BatchNorm", "Concat", "Conv",
           "Dropout", "LayerSpec", "LeakyReLU", "Local", "PReLU", "Pool", "ReLU", "Repeat",
           "Residual", "Sigmoid", "Tanh"]
