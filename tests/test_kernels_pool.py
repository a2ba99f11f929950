"""Pooling kernels vs naive loops, PyTorch, finite differences; determinism.

Cases whose id contains ``small`` are tiny enough for
``NUMBA_DISABLE_JIT=1 pytest -k small``.
"""

from __future__ import annotations

import naive_pool as ref
import numpy as np
import pytest

from cnncli.engine.kernels import pool

# (id, N, H, W, C, size, stride, pad, ceil)
CASES = [
    ("small_rect", 2, 5, 7, 3, (2, 3), (1, 2), (0, 1), False),
    ("small_ceil_pad", 1, 6, 7, 2, (3, 2), (2, 2), (1, 1), True),
    ("small_global", 2, 4, 5, 3, (4, 5), (1, 1), (0, 0), False),
    ("alexnet_3x3s2", 2, 13, 13, 4, (3, 3), (2, 2), (0, 0), False),
    ("alexnet_3x3s2_ceil", 2, 12, 10, 3, (3, 3), (2, 2), (0, 0), True),
    ("stride_gt_size", 2, 10, 11, 3, (2, 2), (3, 3), (0, 0), False),
    ("stride_gt_size_ceil", 1, 10, 12, 2, (2, 3), (3, 4), (0, 1), True),
    ("pad_rect_ceil", 2, 9, 6, 5, (3, 4), (2, 3), (1, 2), True),
    ("2x2s2", 3, 8, 6, 4, (2, 2), (2, 2), (0, 0), False),
]
IDS = [c[0] for c in CASES]
NOPAD = [c for c in CASES if c[7] == (0, 0)]


def _out_hw(H, W, size, stride, pad, ceil):
    return (
        ref.out_size(H, size[0], stride[0], pad[0], ceil),
        ref.out_size(W, size[1], stride[1], pad[1], ceil),
    )


def _setup(case, seed=0, dtype=np.float64):
    _, N, H, W, C, size, stride, pad, ceil = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, H, W, C)).astype(dtype)
    out_hw = _out_hw(H, W, size, stride, pad, ceil)
    dy = rng.standard_normal((N,) + out_hw + (C,)).astype(dtype)
    return x, dy, size, stride, pad, out_hw, ceil




def test_small_cases_cover_ceil_overhang():
    # at least one ceil case really has a last window hanging past the padded edge
    hang = 0
    for _, _n, H, W, _c, size, stride, pad, ceil in CASES:
        if ceil:
            oh, ow = _out_hw(H, W, size, stride, pad, True)
            hang += (oh - 1) * stride[0] - pad[0] + size[0] > H + pad[0]
            hang += (ow - 1) * stride[1] - pad[1] + size[1] > W + pad[1]
    assert hang >= 3


# ---------------------------------------------------------------- naive


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_max_pool_vs_naive(case):
    x, dy, size, stride, pad, out_hw, _ = _setup(case)
    y, sw = pool.max_pool_forward(x, size, stride, pad, out_hw)
    y_ref, sw_ref = ref.max_pool(x, size, stride, pad, out_hw)
    assert sw.dtype in (np.int32, np.int64)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(sw, sw_ref)
    dx = pool.max_pool_backward(dy, sw, x.shape[1:3])
    np.testing.assert_allclose(dx, ref.max_pool_backward(dy, sw_ref, x.shape[1:3]), 1e-14, 1e-14)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_avg_pool_vs_naive(case):
    x, dy, size, stride, pad, out_hw, _ = _setup(case)
    y = pool.avg_pool_forward(x, size, stride, pad, out_hw)
    np.testing.assert_allclose(y, ref.avg_pool(x, size, stride, pad, out_hw), 1e-12, 1e-12)
    dx = pool.avg_pool_backward(dy, size, stride, pad, x.shape[1:3])
    dx_ref = ref.avg_pool_backward(dy, size, stride, pad, x.shape[1:3])
    np.testing.assert_allclose(dx, dx_ref, 1e-12, 1e-12)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_l2_pool_vs_naive(case):
    x, dy, size, stride, pad, out_hw, _ = _setup(case)
    y = pool.l2_pool_forward(x, size, stride, pad, out_hw)
    np.testing.assert_allclose(y, ref.l2_pool(x, size, stride, pad, out_hw), 1e-12, 1e-12)
    dx = pool.l2_pool_backward(x, y, dy, size, stride, pad)
    dx_ref = ref.l2_pool_backward(x, y, dy, size, stride, pad)
    np.testing.assert_allclose(dx, dx_ref, 1e-12, 1e-12)


def test_small_max_pool_ties_take_first():
    x = np.zeros((1, 3, 4, 2))
    x[0, 1, 1, 0] = x[0, 1, 2, 0] = x[0, 2, 1, 0] = 5.0  # several maxima in one window
    y, sw = pool.max_pool_forward(x, (3, 3), (1, 1), (0, 0), (1, 2))
    assert y[0, 0, 0, 0] == 5.0 and sw[0, 0, 0, 0] == 1 * 4 + 1
    assert sw[0, 0, 0, 1] == 0  # all zero: first position of the window
    assert sw[0, 0, 1, 1] == 1
    _, sw_ref = ref.max_pool(x, (3, 3), (1, 1), (0, 0), (1, 2))
    np.testing.assert_array_equal(sw, sw_ref)


def test_small_l2_pool_zero_window_gradient():
    x = np.zeros((1, 4, 4, 2))
    x[0, 0, 0, 1] = 3.0
    y = pool.l2_pool_forward(x, (2, 2), (2, 2), (0, 0), (2, 2))
    dx = pool.l2_pool_backward(x, y, np.ones_like(y), (2, 2), (2, 2), (0, 0))
    assert np.all(np.isfinite(dx))
    assert dx[0, 0, 0, 1] == 1.0 and np.count_nonzero(dx) == 1


def test_small_float32_matches_float64():
    x, dy, size, stride, pad, out_hw, _ = _setup(CASES[1])
    x32, dy32 = x.astype(np.float32), dy.astype(np.float32)
    y32, sw32 = pool.max_pool_forward(x32, size, stride, pad, out_hw)
    y64, sw64 = pool.max_pool_forward(x32.astype(np.float64), size, stride, pad, out_hw)
    assert y32.dtype == np.float32
    np.testing.assert_array_equal(sw32, sw64)
    np.testing.assert_array_equal(y32, y64)
    for fwd in (pool.avg_pool_forward, pool.l2_pool_forward):
        a = fwd(x32, size, stride, pad, out_hw)
        b = fwd(x, size, stride, pad, out_hw)
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, 1e-5, 1e-6)
    a = pool.avg_pool_backward(dy32, size, stride, pad, x.shape[1:3])
    assert a.dtype == np.float32
    np.testing.assert_allclose(
        a, pool.avg_pool_backward(dy, size, stride, pad, x.shape[1:3]), 1e-5, 1e-6
    )


def test_small_validation():
    x = np.zeros((1, 4, 4, 2), dtype=np.int64)
    with pytest.raises(TypeError):
        pool.max_pool_forward(x, 2, 2, 0, (2, 2))
    with pytest.raises(ValueError):
        pool.avg_pool_forward(np.zeros((4, 4, 2)), 2, 2, 0, (2, 2))
    with pytest.raises(ValueError):
        pool.avg_pool_forward(np.zeros((1, 4, 4, 2)), (0, 2), 2, 0, (2, 2))


# ---------------------------------------------------------------- finite differences


@pytest.mark.parametrize("case", CASES[:2] + CASES[4:5], ids=IDS[:2] + IDS[4:5])
def test_pool_gradcheck(case):
    x, dy, size, stride, pad, out_hw, _ = _setup(case, seed=1)
    y, sw = pool.max_pool_forward(x, size, stride, pad, out_hw)
    num = ref.numeric_gradient(
        lambda t: pool.max_pool_forward(t, size, stride, pad, out_hw)[0], x, dy)
    assert ref.rel_error(pool.max_pool_backward(dy, sw, x.shape[1:3]), num) < 1e-6

    num = ref.numeric_gradient(lambda t: pool.avg_pool_forward(t, size, stride, pad, out_hw), x, dy)
    assert ref.rel_error(pool.avg_pool_backward(dy, size, stride, pad, x.shape[1:3]), num) < 1e-6

    y = pool.l2_pool_forward(x, size, stride, pad, out_hw)
    num = ref.numeric_gradient(lambda t: pool.l2_pool_forward(t, size, stride, pad, out_hw), x, dy)
    assert ref.rel_error(pool.l2_pool_backward(x, y, dy, size, stride, pad), num) < 1e-6


# ---------------------------------------------------------------- PyTorch


def _nchw(a):
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


def _nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


@pytest.mark.torch
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_max_avg_pool_vs_torch(case):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, dy, size, stride, pad, out_hw, ceil = _setup(case, seed=2)
    dyt = torch.from_numpy(_nchw(dy))

    xt = torch.from_numpy(_nchw(x)).requires_grad_(True)
    yt, it = F.max_pool2d(xt, size, stride, pad, ceil_mode=ceil, return_indices=True)
    yt.backward(dyt)
    y, sw = pool.max_pool_forward(x, size, stride, pad, out_hw)
    np.testing.assert_array_equal(y, _nhwc(yt))
    np.testing.assert_array_equal(sw, _nhwc(it))
    np.testing.assert_allclose(
        pool.max_pool_backward(dy, sw, x.shape[1:3]), _nhwc(xt.grad), 1e-14, 1e-14
    )

    xt = torch.from_numpy(_nchw(x)).requires_grad_(True)
    yt = F.avg_pool2d(xt, size, stride, pad, ceil_mode=ceil, count_include_pad=True)
    yt.backward(dyt)
    y = pool.avg_pool_forward(x, size, stride, pad, out_hw)
    np.testing.assert_allclose(y, _nhwc(yt), 1e-12, 1e-12)
    np.testing.assert_allclose(
        pool.avg_pool_backward(dy, size, stride, pad, x.shape[1:3]), _nhwc(xt.grad), 1e-12, 1e-12
    )


@pytest.mark.torch
@pytest.mark.parametrize("case", NOPAD, ids=[c[0] for c in NOPAD])
def test_l2_pool_vs_torch(case):
    # torch's lp_pool2d has no padding, and in ceil mode it rescales partial
    # windows (avg * kh*kw), so compare floor mode without padding only.
    torch = pytest.importorskip("torch")
    x, dy, size, stride, pad, _, _ = _setup(case, seed=3)
    H, W = x.shape[1:3]
    out_hw = _out_hw(H, W, size, stride, (0, 0), False)
    dy = dy[:, : out_hw[0], : out_hw[1]]
    xt = torch.from_numpy(_nchw(x)).requires_grad_(True)
    yt = torch.nn.functional.lp_pool2d(xt, 2, size, stride)
    yt.backward(torch.from_numpy(_nchw(dy)))
    y = pool.l2_pool_forward(x, size, stride, 0, out_hw)
    np.testing.assert_allclose(y, _nhwc(yt), 1e-12, 1e-12)
    np.testing.assert_allclose(
        pool.l2_pool_backward(x, y, dy, size, stride, 0), _nhwc(xt.grad), 1e-10, 1e-12
    )


# ---------------------------------------------------------------- determinism


def test_pool_deterministic():
    import numba

    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 17, 15, 9)).astype(np.float32)
    args = ((3, 3), (2, 2), (1, 1), (9, 8))
    outs = []
    for threads in (numba.config.NUMBA_NUM_THREADS, 1, numba.config.NUMBA_NUM_THREADS):
        numba.set_num_threads(threads)
        try:
            y, sw = pool.max_pool_forward(x, *args)
            dy = np.cos(y)
            a = pool.avg_pool_forward(x, *args)
            l2 = pool.l2_pool_forward(x, *args)
            outs.append(
                (
                    y,
                    sw,
                    pool.max_pool_backward(dy, sw, x.shape[1:3]),
                    a,
                    pool.avg_pool_backward(dy, *args[:3], x.shape[1:3]),
                    l2,
                    pool.l2_pool_backward(x, l2, dy, *args[:3]),
                )
            )
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    for other in outs[1:]:
        for a, b in zip(outs[0], other, strict=True):
            assert a.tobytes() == b.tobytes()


def test_small_max_pool_batch1_channel_blocks():
    # batch 1 splits the backward scatter over channel blocks
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 6, 6, 7))
    y, sw = pool.max_pool_forward(x, 3, 2, 1, (3, 3))
    dy = rng.standard_normal(y.shape)
    np.testing.assert_array_equal(
        pool.max_pool_backward(dy, sw, (6, 6)), ref.max_pool_backward(dy, sw, (6, 6))
    )
