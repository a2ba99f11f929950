"""Elementwise kernels vs the numpy expressions they replace, bit for bit, in float32 and
float64; in place where they say so. Cases whose id contains ``small`` suit
``NUMBA_DISABLE_JIT=1 pytest -k small``."""

from __future__ import annotations

import numpy as np
import pytest

from cnncli.engine.kernels import elementwise as K

DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]
SHAPES = [pytest.param((2, 3, 4, 5), id="small"), pytest.param((8, 16, 16, 32), id="large")]


def _same(a: np.ndarray, b: np.ndarray) -> None:
    """Equal bit for bit, NaNs included."""
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.array_equal(a.view(np.uint8), b.view(np.uint8))


def _data(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    x.flat[:6] = [0.0, -0.0, np.nan, np.inf, -np.inf, 40.0]  # the edges of every branch
    dy = rng.standard_normal(shape).astype(dtype)
    return x, dy


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_relu_is_numpy_maximum_and_its_mask_product(shape, dtype):
    x, dy = _data(shape, dtype)
    y = np.maximum(x, 0)
    _same(K.relu_forward(x), y)
    inplace = x.copy()
    assert K.relu_forward(inplace, out=inplace) is inplace
    _same(inplace, y)
    d = dy.copy()
    assert K.relu_backward(d, y) is d  # written over dy
    _same(d, dy * (y > 0))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_leaky_relu_is_numpy_where(shape, dtype):
    x, dy = _data(shape, dtype)
    slope = 0.1
    y = np.where(x > 0, x, x * x.dtype.type(slope))
    _same(K.leaky_relu_forward(x, slope), y)
    inplace = x.copy()
    _same(K.leaky_relu_forward(inplace, slope, out=inplace), y)
    d = dy.copy()
    assert K.leaky_relu_backward(d, y, slope) is d
    _same(d, np.where(y > 0, dy, dy * dy.dtype.type(slope)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_tanh_backward_is_dy_times_one_minus_y_squared(shape, dtype):
    x, dy = _data(shape, dtype)
    y = np.tanh(x)
    d = dy.copy()
    assert K.tanh_backward(d, y) is d
    _same(d, dy * (1 - y * y))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_sigmoid_is_the_stable_two_branch_formula(shape, dtype):
    x, dy = _data(shape, dtype)
    e = np.exp(-np.abs(x))
    y = np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)
    _same(K.sigmoid_forward(x), y)
    inplace = x.copy()
    assert K.sigmoid_forward(inplace, out=inplace, work=np.empty_like(x)) is inplace
    _same(inplace, y)
    d = dy.copy()
    assert K.sigmoid_backward(d, y) is d
    _same(d, dy * y * (1 - y))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_dropout_mask_keeps_the_random_stream(shape, dtype):
    """The mask from the same float32 draws, as (u < keep).astype(dtype) / keep; float32
    draws straight into a float32 mask give the same numbers as a fresh array."""
    keep = 1 - 0.3
    expected = (np.random.default_rng(5).random(shape, dtype=np.float32) < keep).astype(dtype)
    expected /= dtype(keep)
    rng = np.random.default_rng(5)
    mask = np.empty(shape, dtype)
    if dtype == np.float32:
        rng.random(dtype=np.float32, out=mask)
        uniform = mask
    else:
        uniform = rng.random(shape, dtype=np.float32)
    assert K.dropout_mask(uniform, keep, mask) is mask
    _same(mask, expected)
    x, dy = _data(shape, dtype)
    with np.errstate(invalid="ignore"):  # inf * 0, as numpy itself
        _same(K.multiply_into(x, mask), x * mask)
    d = dy.copy()
    assert K.multiply_into(d, mask, out=d) is d
    _same(d, dy * mask)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [pytest.param((3, 2, 5, 4), id="small"),
                                   pytest.param((16, 7, 9, 64), id="large")])
def test_global_avg_pool_is_numpy_mean_in_float64(shape, dtype):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 100 + 50).astype(dtype)  # sums that round
    y = K.global_avg_pool_forward(x)
    _same(y, x.mean(axis=(1, 2), keepdims=True, dtype=np.float64).astype(dtype))
    n, h, w, c = shape
    dy = rng.standard_normal((n, 1, 1, c)).astype(dtype)
    _same(K.global_avg_pool_backward(dy, (h, w)),
          np.broadcast_to(dy / (h * w), shape).copy())


def test_small_kernels_refuse_strided_arrays():
    """A flat view of a strided array is a copy: writing into it would be lost."""
    x = np.zeros((4, 6), np.float32)[:, ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        K.relu_backward(x, x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_add_relu_is_numpy_sum_then_maximum(shape, dtype):
    a, b = _data(shape, dtype)
    _same(K.add_relu(a, b), np.maximum(a + b, 0))
    out = np.empty_like(a)
    assert K.add_relu(a, b, out=out) is out
    with pytest.raises(ValueError, match="must match"):
        K.add_relu(a, b[..., :1])
