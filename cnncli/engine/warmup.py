"""Compile every kernel once (numba caches the machine code on disk, `cache=True`), so a
user's first `cnncli train` does not spend seconds compiling. `make install` runs this."""

from __future__ import annotations

import time

import numpy as np

# One small net that reaches every kernel: conv (GEMM and direct/grouped paths, dilation),
# local, every pooling type (global average included), batchnorm, lrn, every activation,
# dropout, and the blocks.
WARMUP_SPEC = {
    "name": "warm-up",
    "input": "12x12x3",
    "layers": [
        {"conv": {"filters": 8, "size": 3, "pad": 1}},
        "relu",
        {"conv": {"filters": 8, "size": 3, "pad": 1, "groups": 8}},
        {"batchnorm": {}},
        {"lrn": {"size": 3}},
        {"residual": {"layers": [{"conv": {"filters": 8, "size": 3, "pad": 2, "dilation": 2}},
                                 "tanh"]}},
        {"concat": [[{"pool": {"size": 3, "stride": 1, "pad": 1, "type": "avg"}}],
                    [{"pool": {"size": 3, "stride": 1, "pad": 1, "type": "l2"}}]]},
        {"pool": {"size": 2, "stride": 2}},
        {"local": {"filters": 4, "size": 3}},
        "sigmoid",
        {"leaky_relu": {}},
        {"dropout": 0.5},
        {"pool": {"global": True, "type": "avg"}},
        {"fc": 3},
    ],
}


def warm_up() -> float:
    """Run one training step in float32 and float64, with im2col and with Winograd (the
    first conv is eligible); return the seconds it took."""
    from cnncli.engine.network import Network

    started = time.perf_counter()
    for dtype, conv_algo in ((np.float32, "gemm"), (np.float64, "gemm"),
                             (np.float32, "winograd"), (np.float64, "winograd")):
        net = Network.from_spec(WARMUP_SPEC, dtype=dtype, conv_algo=conv_algo)
        x = np.zeros((2, 12, 12, 3), dtype)
        loss, d = net.loss(net.forward(x, training=True), np.array([0, 1]))
        net.backward(d)
        net.forward(x, training=False)
    return time.perf_counter() - started
