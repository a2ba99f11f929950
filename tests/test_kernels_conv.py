"""Tests for cnncli.engine.kernels.conv against tests/naive.py and torch.nn.functional.conv2d.

Tests whose name contains ``small`` only use tiny shapes and also pass (slowly) with
``NUMBA_DISABLE_JIT=1``:

    NUMBA_DISABLE_JIT=1 .venv/bin/python -m pytest tests/test_kernels_conv.py -q -k small
"""

from __future__ import annotations

import numpy as np
import pytest

from cnncli.engine.kernels import conv, sizes

try:
    from tests import naive
except ImportError:  # plain `pytest` without the repo root on sys.path
    import naive  # type: ignore[no-redef]

TOL = 1e-10


def _out(H, F, s, p, d):
    return (H + 2 * p - (d * (F - 1) + 1)) // s + 1


def _make(rng, N, H, W, C, K, Fh, Fw, groups, dtype=np.float64):
    x = rng.standard_normal((N, H, W, C)).astype(dtype)
    w = rng.standard_normal((K, C // groups, Fh, Fw)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    return x, w, b


# (N, H, W, C, K, Fh, Fw, stride, pad, dilation, groups)
SMALL_CASES = [
    (2, 5, 5, 3, 4, 3, 3, (1, 1), (1, 1), (1, 1), 1),  # plain 3x3 "same"
    (2, 7, 6, 4, 6, 3, 2, (1, 2), (1, 0), (1, 1), 2),  # rectangular kernel/stride, groups
    (3, 9, 8, 4, 4, 3, 3, (2, 1), (2, 1), (2, 1), 4),  # depthwise, dilation, stride
    (2, 6, 6, 4, 8, 3, 3, (1, 1), (1, 1), (1, 1), 4),  # depthwise multiplier 2
    (1, 5, 7, 6, 6, 1, 1, (1, 1), (0, 0), (1, 1), 1),  # 1x1
    (2, 8, 5, 3, 5, 2, 3, (2, 2), (0, 1), (1, 2), 1),  # window runs past the end
    (1, 6, 9, 8, 4, 3, 3, (3, 2), (2, 2), (1, 1), 2),  # pad > needed, stride 3
    (2, 4, 4, 2, 3, 4, 4, (1, 1), (3, 3), (1, 1), 1),  # kernel == input, big pad
]


@pytest.mark.parametrize("case", SMALL_CASES, ids=lambda c: "x".join(map(str, c[:7])))
@pytest.mark.parametrize("bias", [True, False])
def test_conv_small_vs_naive(case, bias):
    N, H, W, C, K, Fh, Fw, s, p, d, g = case
    rng = np.random.default_rng(hash(case) % 2**32)
    x, w, b = _make(rng, N, H, W, C, K, Fh, Fw, g)
    b = b if bias else None
    ohw = (_out(H, Fh, s[0], p[0], d[0]), _out(W, Fw, s[1], p[1], d[1]))
    y = conv.conv2d_forward(x, w, b, s, p, d, g, ohw)
    np.testing.assert_allclose(y, naive.naive_conv2d(x, w, b, s, p, d, g, ohw), 0, TOL)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = conv.conv2d_backward(x, w, dy, s, p, d, g)
    rdx, rdw, rdb = naive.naive_conv2d_backward(x, w, dy, s, p, d, g)
    np.testing.assert_allclose(dx, rdx, 0, TOL)
    np.testing.assert_allclose(dw, rdw, 0, TOL)
    np.testing.assert_allclose(db, rdb, 0, TOL)
    dx2, dw2, db2 = conv.conv2d_backward(x, w, dy, s, p, d, g, need_dx=False)
    assert dx2 is None
    np.testing.assert_array_equal(dw2, dw)
    np.testing.assert_array_equal(db2, db)
    # a bias-free layer's backward: no db, the same dx and dW (the GEMM kernel skips its
    # sums over dy; the direct kernel sums them anyway)
    dx3, dw3, db3 = conv.conv2d_backward(x, w, dy, s, p, d, g, need_db=False)
    assert db3 is None
    np.testing.assert_array_equal(dx3, dx)
    np.testing.assert_array_equal(dw3, dw)


def test_conv_small_rounded_up_output():
    # out_hw rounded up ("ceil mode"): the last window runs past the input and reads zeros
    rng = np.random.default_rng(1)
    x, w, b = _make(rng, 2, 6, 7, 3, 4, 3, 3, 1)
    s, p, d = (2, 2), (0, 0), (1, 1)
    ohw = (3, 4)  # floor would give (2, 3)
    y = conv.conv2d_forward(x, w, b, s, p, d, 1, ohw)
    np.testing.assert_allclose(y, naive.naive_conv2d(x, w, b, s, p, d, 1, ohw), 0, TOL)
    dy = rng.standard_normal(y.shape)
    got = conv.conv2d_backward(x, w, dy, s, p, d, 1)
    for a, r in zip(got, naive.naive_conv2d_backward(x, w, dy, s, p, d, 1), strict=True):
        np.testing.assert_allclose(a, r, 0, TOL)


def test_conv_multi_band(monkeypatch):
    # force several row bands per image so band boundaries are exercised (the band size
    # is sizes.band_rows', read from sizes' COL_BLOCK_BYTES)
    from cnncli.engine.kernels import sizes

    rng = np.random.default_rng(2)
    x, w, b = _make(rng, 3, 11, 9, 5, 6, 3, 3, 1)
    s, p, d = (1, 1), (1, 1), (1, 1)
    ohw = (11, 9)
    monkeypatch.setattr(sizes, "COL_BLOCK_BYTES", 1)  # one output row per band
    assert sizes.band_rows(11, 9, 1, 45, 8) == 1
    y = conv.conv2d_forward(x, w, b, s, p, d, 1, ohw)
    dy = rng.standard_normal(y.shape)
    got = conv.conv2d_backward(x, w, dy, s, p, d, 1)
    np.testing.assert_allclose(y, naive.naive_conv2d(x, w, b, s, p, d, 1, ohw), 0, TOL)
    for a, r in zip(got, naive.naive_conv2d_backward(x, w, dy, s, p, d, 1), strict=True):
        np.testing.assert_allclose(a, r, 0, TOL)


# --- torch -------------------------------------------------------------------------


def _random_config(rng):
    groups = int(rng.integers(0, 4))  # 0: depthwise
    Fh, Fw = (int(v) for v in rng.integers(1, 5, 2))
    s = tuple(int(v) for v in rng.integers(1, 4, 2))
    d = tuple(int(v) for v in rng.integers(1, 3, 2))
    p = tuple(int(v) for v in rng.integers(0, 3, 2))
    H = int(rng.integers((Fh - 1) * d[0] + 1, 14))
    W = int(rng.integers((Fw - 1) * d[1] + 1, 14))
    if groups == 0:  # depthwise, channel multiplier 1 or 2
        C = int(rng.integers(1, 9))
        g, K = C, C * int(rng.integers(1, 3))
    else:
        g = groups
        C = g * int(rng.integers(1, 6))
        K = g * int(rng.integers(1, 6))
    N = int(rng.integers(1, 5))
    return N, H, W, C, K, Fh, Fw, s, p, d, g


@pytest.mark.torch
@pytest.mark.parametrize("seed", range(30))
def test_conv_vs_torch(seed):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(100 + seed)
    N, H, W, C, K, Fh, Fw, s, p, d, g = _random_config(rng)
    x, w, b = _make(rng, N, H, W, C, K, Fh, Fw, g)
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, bt, s, p, d, g)
    ohw = tuple(yt.shape[2:])
    y = conv.conv2d_forward(x, w, b, s, p, d, g, ohw)
    np.testing.assert_allclose(y, yt.detach().numpy().transpose(0, 2, 3, 1), 0, TOL)
    dy = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(dy.transpose(0, 3, 1, 2)))
    dx, dw, db = conv.conv2d_backward(x, w, dy, s, p, d, g)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), 0, TOL)
    np.testing.assert_allclose(dw, wt.grad.numpy(), 0, TOL)
    np.testing.assert_allclose(db, bt.grad.numpy(), 0, TOL)


@pytest.mark.torch
def test_conv_vs_torch_larger_float32():
    # a realistic layer (several bands, many chunks) in float32 against torch
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    x, w, b = _make(rng, 9, 20, 20, 16, 24, 3, 3, 1, np.float32)
    s, p, d = (1, 1), (1, 1), (1, 1)
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, bt, s, p, d, 1)
    y = conv.conv2d_forward(x, w, b, s, p, d, 1, (20, 20))
    np.testing.assert_allclose(y, yt.detach().numpy().transpose(0, 2, 3, 1), 1e-4, 1e-4)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    yt.backward(torch.tensor(dy.transpose(0, 3, 1, 2)))
    dx, dw, db = conv.conv2d_backward(x, w, dy, s, p, d, 1)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), 1e-4, 1e-3)
    np.testing.assert_allclose(dw, wt.grad.numpy(), 1e-4, 1e-2)
    np.testing.assert_allclose(db, bt.grad.numpy(), 1e-4, 1e-3)


# --- locally connected --------------------------------------------------------------

# (N, H, W, C, K, Fh, Fw, stride, pad, dilation)
LOCAL_CASES = [
    (2, 5, 5, 3, 4, 3, 3, (1, 1), (1, 1), (1, 1)),
    (2, 6, 5, 3, 4, 3, 2, (1, 2), (1, 1), (1, 1)),
    (3, 8, 7, 2, 3, 2, 2, (2, 1), (0, 1), (2, 2)),
    (1, 4, 6, 5, 2, 1, 1, (1, 1), (0, 0), (1, 1)),
]


def _local_setup(case, dtype=np.float64, seed=0):
    N, H, W, C, K, Fh, Fw, s, p, d = case
    rng = np.random.default_rng(seed)
    ohw = (_out(H, Fh, s[0], p[0], d[0]), _out(W, Fw, s[1], p[1], d[1]))
    x = rng.standard_normal((N, H, W, C)).astype(dtype)
    w = rng.standard_normal((K, *ohw, C, Fh, Fw)).astype(dtype)
    b = rng.standard_normal((K, *ohw)).astype(dtype)
    return rng, x, w, b, s, p, d, ohw


@pytest.mark.parametrize("case", LOCAL_CASES, ids=lambda c: "x".join(map(str, c[:7])))
@pytest.mark.parametrize("bias", [True, False])
def test_local_small_vs_naive(case, bias):
    rng, x, w, b, s, p, d, ohw = _local_setup(case)
    b = b if bias else None
    y = conv.local2d_forward(x, w, b, s, p, d, ohw)
    np.testing.assert_allclose(y, naive.naive_local2d(x, w, b, s, p, d, ohw), 0, TOL)
    dy = rng.standard_normal(y.shape)
    got = conv.local2d_backward(x, w, dy, s, p, d)
    for a, r in zip(got, naive.naive_local2d_backward(x, w, dy, s, p, d), strict=True):
        np.testing.assert_allclose(a, r, 0, TOL)
    dx, dw, db = conv.local2d_backward(x, w, dy, s, p, d, need_dx=False)
    assert dx is None
    np.testing.assert_array_equal(dw, got[1])
    np.testing.assert_array_equal(db, got[2])


@pytest.mark.parametrize("case", LOCAL_CASES[:3], ids=lambda c: "x".join(map(str, c[:7])))
def test_local_small_shared_weights_equal_conv(case):
    N, H, W, C, K, Fh, Fw, s, p, d = case
    rng, x, _, _, _, _, _, ohw = _local_setup(case, seed=3)
    wc = rng.standard_normal((K, C, Fh, Fw))
    bc = rng.standard_normal(K)
    wl = np.ascontiguousarray(np.broadcast_to(wc[:, None, None], (K, *ohw, C, Fh, Fw)))
    bl = np.ascontiguousarray(np.broadcast_to(bc[:, None, None], (K, *ohw)))
    y = conv.conv2d_forward(x, wc, bc, s, p, d, 1, ohw)
    np.testing.assert_allclose(conv.local2d_forward(x, wl, bl, s, p, d, ohw), y, 0, TOL)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = conv.conv2d_backward(x, wc, dy, s, p, d, 1)
    ldx, ldw, ldb = conv.local2d_backward(x, wl, dy, s, p, d)
    np.testing.assert_allclose(ldx, dx, 0, TOL)
    np.testing.assert_allclose(ldw.sum(axis=(1, 2)), dw, 0, TOL)  # shared weight = sum
    np.testing.assert_allclose(ldb.sum(axis=(1, 2)), db, 0, TOL)


# --- dtypes, determinism, validation -----------------------------------------------


def test_float32_matches_float64():
    rng = np.random.default_rng(11)
    for g in (1, 2, 8):
        x, w, b = _make(rng, 4, 12, 10, 8, 16, 3, 3, g)
        args = ((2, 1), (1, 1), (1, 1), g, (_out(12, 3, 2, 1, 1), _out(10, 3, 1, 1, 1)))
        y64 = conv.conv2d_forward(x, w, b, *args)
        y32 = conv.conv2d_forward(x.astype(np.float32), w.astype(np.float32),
                                  b.astype(np.float32), *args)
        assert y32.dtype == np.float32
        np.testing.assert_allclose(y32, y64, 1e-5, 1e-5 * np.abs(y64).max())
        dy = rng.standard_normal(y64.shape)
        g64 = conv.conv2d_backward(x, w, dy, *args[:4])
        g32 = conv.conv2d_backward(x.astype(np.float32), w.astype(np.float32),
                                   dy.astype(np.float32), *args[:4])
        for a, r in zip(g32, g64, strict=True):
            assert a.dtype == np.float32
            np.testing.assert_allclose(a, r, 1e-5, 1e-5 * np.abs(r).max())
    case = LOCAL_CASES[0]
    _, x, w, b, s, p, d, ohw = _local_setup(case)
    y64 = conv.local2d_forward(x, w, b, s, p, d, ohw)
    y32 = conv.local2d_forward(x.astype(np.float32), w.astype(np.float32),
                               b.astype(np.float32), s, p, d, ohw)
    np.testing.assert_allclose(y32, y64, 1e-5, 1e-5 * np.abs(y64).max())


@pytest.mark.parametrize("g", [1, 4, 16])
def test_deterministic(g):
    rng = np.random.default_rng(5)
    x, w, b = _make(rng, 19, 14, 14, 16, 32, 3, 3, g, np.float32)
    args = ((1, 1), (1, 1), (1, 1), g)
    dy = rng.standard_normal((19, 14, 14, 32)).astype(np.float32)
    runs = [(conv.conv2d_forward(x, w, b, *args, (14, 14)),
             *conv.conv2d_backward(x, w, dy, *args)) for _ in range(3)]
    for other in runs[1:]:
        for a, r in zip(other, runs[0], strict=True):
            np.testing.assert_array_equal(a, r)
    _, xl, wl, bl, s, p, d, ohw = _local_setup((17, 7, 7, 4, 5, 3, 3, (1, 1), (1, 1), (1, 1)),
                                               np.float32)
    dyl = rng.standard_normal((17, *ohw, 5)).astype(np.float32)
    lr = [(conv.local2d_forward(xl, wl, bl, s, p, d, ohw),
           *conv.local2d_backward(xl, wl, dyl, s, p, d)) for _ in range(3)]
    for other in lr[1:]:
        for a, r in zip(other, lr[0], strict=True):
            np.testing.assert_array_equal(a, r)


def test_deterministic_across_thread_counts():
    numba = pytest.importorskip("numba")
    if numba.config.NUMBA_NUM_THREADS < 2 or numba.config.DISABLE_JIT:
        pytest.skip("needs a numba thread pool of at least 2 threads")
    rng = np.random.default_rng(6)
    x, w, b = _make(rng, 16, 10, 10, 8, 16, 3, 3, 1, np.float32)
    dy = rng.standard_normal((16, 10, 10, 16)).astype(np.float32)
    args = ((1, 1), (1, 1), (1, 1), 1)
    old = numba.get_num_threads()
    res = []
    try:
        for n in (1, 2):
            numba.set_num_threads(n)
            res.append((conv.conv2d_forward(x, w, b, *args, (10, 10)),
                        *conv.conv2d_backward(x, w, dy, *args)))
    finally:
        numba.set_num_threads(old)
    for a, r in zip(res[0], res[1], strict=True):
        np.testing.assert_array_equal(a, r)


def test_small_validation_errors():
    x = np.zeros((1, 4, 4, 4))
    w = np.zeros((4, 2, 3, 3))
    with pytest.raises(ValueError):
        conv.conv2d_forward(x, w, None, (1, 1), (1, 1), (1, 1), 3, (4, 4))  # bad groups
    with pytest.raises(TypeError):
        conv.conv2d_forward(x, w.astype(np.float32), None, (1, 1), (1, 1), (1, 1), 2, (4, 4))
    with pytest.raises(TypeError):
        conv.conv2d_forward(x.astype(np.int32), w, None, (1, 1), (1, 1), (1, 1), 2, (4, 4))
    with pytest.raises(ValueError):
        conv.conv2d_forward(x, w, np.zeros(3), (1, 1), (1, 1), (1, 1), 2, (4, 4))
    with pytest.raises(ValueError):
        conv.conv2d_forward(x, w, None, (0, 1), (1, 1), (1, 1), 2, (4, 4))
    with pytest.raises(ValueError):
        conv.local2d_forward(x, np.zeros((2, 3, 3, 4, 2, 2)), None, (1, 1), (0, 0), (1, 1),
                             (4, 4))


def test_small_non_contiguous_inputs():
    rng = np.random.default_rng(9)
    xt = rng.standard_normal((2, 3, 6, 5))  # NCHW, transposed to a non-contiguous NHWC view
    x = xt.transpose(0, 2, 3, 1)
    w = rng.standard_normal((3, 2, 3, 3)).transpose(1, 0, 2, 3)  # non-contiguous OIHW
    y = conv.conv2d_forward(x, w, None, (1, 1), (1, 1), (1, 1), 1, (6, 5))
    ref = naive.naive_conv2d(np.ascontiguousarray(x), np.ascontiguousarray(w), None,
                             (1, 1), (1, 1), (1, 1), 1, (6, 5))
    np.testing.assert_allclose(y, ref, 0, TOL)


def test_small_config_threads():
    numba = pytest.importorskip("numba")
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from cnncli import config

    def blas_threads():
        return {d["num_threads"] for d in threadpoolctl.threadpool_info()
                if d["user_api"] == "blas"}

    old = numba.get_num_threads()
    try:
        assert config.configure_threads(1) == 1
        assert numba.get_num_threads() == 1
        assert blas_threads() == {1}
        with config.blas_threads(2) as n:
            assert n == 2
            assert blas_threads() == {2}
        assert blas_threads() == {1}
        assert config.configure_threads(10**6) == numba.config.NUMBA_NUM_THREADS
    finally:
        config.configure_threads(old)


def test_small_blas_limits_go_through_one_lookup_of_the_libraries(monkeypatch):
    # threadpool_limits() looks every loaded library up again (2.2 ms a call): a big FC
    # layer's GEMM lends BLAS the cores twice a step through the one controller instead
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from cnncli import config

    config.ensure_configured()
    controller = config._blas()
    assert controller.lib_controllers  # numpy's OpenBLAS at least

    def no_lookup(*args, **kwargs):
        raise AssertionError("BLAS libraries looked up again")

    monkeypatch.setattr(threadpoolctl, "ThreadpoolController", no_lookup)
    monkeypatch.setattr(threadpoolctl, "threadpool_limits", no_lookup)
    with config.blas_threads(2):
        assert {lib.num_threads for lib in controller.lib_controllers} == {2}
    assert {lib.num_threads for lib in controller.lib_controllers} == {1}
    assert config._blas() is controller


# --- planar kernels (first layers: few channels, stride 1) ---------------------------

# (N, H, W, C, K, Fh, Fw, pad, dilation)
PLANAR_CASES = [
    (2, 5, 5, 3, 4, 3, 3, (1, 1), (1, 1)),  # a CIFAR first layer, tiny
    (2, 8, 8, 1, 6, 5, 5, (0, 0), (1, 1)),  # LeNet's 5x5 on one channel
    (2, 6, 7, 2, 5, 3, 2, (2, 1), (1, 2)),  # rectangular, pad > needed, dilation
    (1, 7, 5, 3, 3, 3, 3, (1, 0), (2, 1)),  # no right padding: the window runs out
    (2, 4, 4, 4, 2, 4, 4, (3, 3), (1, 1)),  # kernel == input, big pad, 4 channels
]


def _planar_case(case, dtype=np.float64):
    N, H, W, C, K, Fh, Fw, p, d = case
    rng = np.random.default_rng(hash(case) % 2**32)
    x, w, b = _make(rng, N, H, W, C, K, Fh, Fw, 1, dtype)
    ohw = (_out(H, Fh, 1, p[0], d[0]), _out(W, Fw, 1, p[1], d[1]))
    dy = rng.standard_normal((N, *ohw, K)).astype(dtype)
    return x, w, b, dy, p, d, ohw


@pytest.mark.parametrize("case", PLANAR_CASES, ids=lambda c: "x".join(map(str, c[:7])))
@pytest.mark.parametrize("bias", [True, False])
def test_planar_small_vs_naive(case, bias):
    x, w, b, dy, p, d, ohw = _planar_case(case)
    b = b if bias else None
    y = conv.conv2d_forward_planar(x, w, b, p, d, ohw)
    np.testing.assert_allclose(y, naive.naive_conv2d(x, w, b, (1, 1), p, d, 1, ohw), 0, TOL)
    dx, dw, db = conv.conv2d_backward_planar(x, w, dy, p, d)
    for a, r in zip((dx, dw, db), naive.naive_conv2d_backward(x, w, dy, (1, 1), p, d, 1),
                    strict=True):
        np.testing.assert_allclose(a, r, 0, TOL)
    dx2, dw2, db2 = conv.conv2d_backward_planar(x, w, dy, p, d, need_dx=False)
    assert dx2 is None
    np.testing.assert_array_equal(dw2, dw)
    np.testing.assert_array_equal(db2, db)
    dx3, dw3, db3 = conv.conv2d_backward_planar(x, w, dy, p, d, need_db=False)
    assert db3 is None  # a bias-free first layer: no sums over dy
    np.testing.assert_array_equal(dx3, dx)
    np.testing.assert_array_equal(dw3, dw)


def test_planar_small_one_output_row_per_band(monkeypatch):
    # bands of one output row: each band re-reads its halo rows, dx adds them back
    from cnncli.engine.kernels import sizes

    monkeypatch.setattr(sizes, "COL_BLOCK_BYTES", 1)
    assert sizes.planar_geometry(5, 5, 3, 3, 1, 1, 3, 8)[1] == 1
    x, w, b, dy, p, d, ohw = _planar_case((2, 5, 6, 3, 4, 3, 3, (1, 1), (1, 1)))
    y = conv.conv2d_forward_planar(x, w, b, p, d, ohw)
    np.testing.assert_allclose(y, naive.naive_conv2d(x, w, b, (1, 1), p, d, 1, ohw), 0, TOL)
    got = conv.conv2d_backward_planar(x, w, dy, p, d)
    for a, r in zip(got, naive.naive_conv2d_backward(x, w, dy, (1, 1), p, d, 1), strict=True):
        np.testing.assert_allclose(a, r, 0, TOL)


@pytest.mark.torch
@pytest.mark.parametrize("C,K,F,P", [(3, 16, 3, 1), (3, 32, 3, 1), (1, 6, 5, 0)])
def test_planar_first_layers_float32_match_torch_and_float64(C, K, F, P):
    # CIFAR's first layers and LeNet's: float32 within 1e-4 of float64 (relative to the
    # largest value), and what torch.nn.functional.conv2d computes
    import torch

    rng = np.random.default_rng(C * K)
    x, w, b = _make(rng, 9, 32, 32, C, K, F, F, 1)
    ohw = (32 + 2 * P - F + 1,) * 2
    dy = rng.standard_normal((9, *ohw, K))
    geo = ((1, 1), (P, P), (1, 1), 1)
    ref = (conv.conv2d_forward(x, w, b, *geo, ohw), *conv.conv2d_backward(x, w, dy, *geo))
    f32 = [a.astype(np.float32) for a in (x, w, b, dy)]
    got = (conv.conv2d_forward_planar(*f32[:3], (P, P), (1, 1), ohw),
           *conv.conv2d_backward_planar(f32[0], f32[1], f32[3], (P, P), (1, 1)))
    for a, r in zip(got, ref, strict=True):
        assert a.dtype == np.float32
        assert np.abs(a - r).max() <= 1e-4 * np.abs(r).max()
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
    wt = torch.from_numpy(w).requires_grad_()
    yt = torch.nn.functional.conv2d(xt, wt, torch.from_numpy(b), padding=P)
    yt.backward(torch.from_numpy(dy.transpose(0, 3, 1, 2).copy()))
    y64 = conv.conv2d_forward_planar(x, w, b, (P, P), (1, 1), ohw)
    dx64, dw64, _ = conv.conv2d_backward_planar(x, w, dy, (P, P), (1, 1))
    np.testing.assert_allclose(y64, yt.detach().numpy().transpose(0, 2, 3, 1), 1e-10, 1e-10)
    assert xt.grad is not None and wt.grad is not None
    np.testing.assert_allclose(dx64, xt.grad.numpy().transpose(0, 2, 3, 1), 1e-10, 1e-10)
    np.testing.assert_allclose(dw64, wt.grad.numpy(), 1e-10, 1e-9)


def test_planar_deterministic_across_runs_and_thread_counts():
    numba = pytest.importorskip("numba")
    x, w, b, dy, p, d, ohw = _planar_case((19, 12, 12, 3, 16, 3, 3, (1, 1), (1, 1)),
                                          np.float32)
    old = numba.get_num_threads()
    threads = (1, 2) if numba.config.NUMBA_NUM_THREADS >= 2 else (1, 1)
    res = []
    try:
        for n in (*threads, threads[-1]):
            numba.set_num_threads(n)
            res.append((conv.conv2d_forward_planar(x, w, b, p, d, ohw),
                        *conv.conv2d_backward_planar(x, w, dy, p, d)))
    finally:
        numba.set_num_threads(old)
    for other in res[1:]:
        for a, r in zip(other, res[0], strict=True):
            np.testing.assert_array_equal(a, r)


def test_planar_small_validation_errors():
    x = np.zeros((1, 4, 4, 3))
    with pytest.raises(ValueError, match="groups"):
        conv.conv2d_forward_planar(x, np.zeros((2, 2, 3, 3)), None, (1, 1), (1, 1), (4, 4))
    with pytest.raises(TypeError, match="dtype"):
        conv.conv2d_forward_planar(x, np.zeros((2, 3, 3, 3), np.float32), None, (1, 1),
                                   (1, 1), (4, 4))
    with pytest.raises(ValueError, match="dy"):
        conv.conv2d_backward_planar(x, np.zeros((2, 3, 3, 3)), np.zeros((1, 4, 4, 5)),
                                    (1, 1), (1, 1))


# --- the own GEMM (microkernel.py): on AVX-512 for filters in 16s, or an older OpenBLAS ---

F32_REL = 2e-5  # float32 against float64, relative to the largest |value|


def _rel(a, ref):
    return float(np.abs(a.astype(np.float64) - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("case", [c for c in SMALL_CASES if c[3] // c[10] * c[4] // c[10] > 8]
                         + [(2, 9, 9, 16, 32, 3, 3, (2, 2), (1, 1), (1, 1), 1),  # resnet20's
                            (2, 8, 8, 16, 32, 1, 1, (2, 2), (0, 0), (1, 1), 1),  # s2, 1x1
                            # 1x1 without im2col on the own kernel: odd sizes, stride 1,
                            # unequal strides, two channel groups of 16
                            (2, 9, 7, 16, 16, 1, 1, (2, 3), (0, 0), (1, 1), 1),
                            (1, 5, 6, 32, 48, 1, 1, (1, 1), (0, 0), (1, 1), 1)],
                         ids=lambda c: "x".join(map(str, c[:7])))
def test_gemm_small_float32_on_own_kernel_vs_float64(case, monkeypatch):
    # which GEMM runs depends on the machine (sizes.own_gemm); forced both ways here. dx's
    # product joins the own kernel where kdim fills its blocks, else stays on np.dot
    N, H, W, C, K, Fh, Fw, s, p, d, g = case
    rng = np.random.default_rng(hash(case) % 2**32)
    x, w, b = _make(rng, N, H, W, C, K, Fh, Fw, g, np.float32)
    x64, w64, b64 = (a.astype(np.float64) for a in (x, w, b))
    ohw = (_out(H, Fh, s[0], p[0], d[0]), _out(W, Fw, s[1], p[1], d[1]))
    dy = rng.standard_normal((N, *ohw, K)).astype(np.float32)
    ref_y = naive.naive_conv2d(x64, w64, b64, s, p, d, g, ohw)
    ref = naive.naive_conv2d_backward(x64, w64, dy.astype(np.float64), s, p, d, g)
    got = {}
    for own in (True, False):
        monkeypatch.setattr(conv, "_own_gemm", lambda kdim, kg, x, v=own: v)
        y = conv.conv2d_forward(x, w, b, s, p, d, g, ohw)
        grads = conv.conv2d_backward(x, w, dy, s, p, d, g)
        assert _rel(y, ref_y) < F32_REL
        for a, r in zip(grads, ref, strict=True):
            assert a.dtype == np.float32 and _rel(a, r) < F32_REL
        got[own] = (y, *grads)
    if (Fh * Fw * C // g) % sizes.OWN_GEMM_BLOCK:  # dx: np.dot either way
        np.testing.assert_array_equal(got[True][1], got[False][1])


@pytest.mark.parametrize("case", PLANAR_CASES[:3], ids=lambda c: "x".join(map(str, c[:7])))
def test_planar_small_float32_on_own_kernel_vs_float64(case, monkeypatch):
    x, w, b, dy, p, d, ohw = _planar_case(case, np.float32)
    x64, w64, b64, dy64 = (a.astype(np.float64) for a in (x, w, b, dy))
    monkeypatch.setattr(conv, "blas_narrower_than_jit", lambda: True)
    y = conv.conv2d_forward_planar(x, w, b, p, d, ohw)
    assert _rel(y, naive.naive_conv2d(x64, w64, b64, (1, 1), p, d, 1, ohw)) < F32_REL
    got = conv.conv2d_backward_planar(x, w, dy, p, d)
    for a, r in zip(got, naive.naive_conv2d_backward(x64, w64, dy64, (1, 1), p, d, 1),
                    strict=True):
        assert _rel(a, r) < F32_REL


def test_own_gemm_rule_float32_small_filter_matrices_on_avx512_or_an_older_blas():
    # own_gemm(kdim, kg, itemsize, numba compiles for AVX-512, OpenBLAS on an older core)
    assert sizes.own_gemm(144, 32, 4, True, False)  # resnet20's stride-2 conv
    assert sizes.own_gemm(288, 64, 4, True, False)
    assert sizes.own_gemm(16, 32, 4, True, False)  # its 1x1 shortcut
    assert not sizes.own_gemm(75, 6, 4, True, False)  # 6 filters: all leftover columns
    assert sizes.own_gemm(75, 6, 4, True, True)  # ... but an AVX2 OpenBLAS is slower still
    assert not sizes.own_gemm(144, 32, 4, False, False)  # an AVX2-only CPU: OpenBLAS
    assert not sizes.own_gemm(2304, 256, 4, True, True)  # VGG's 3x3 256 -> 256: OpenBLAS packs
    assert not sizes.own_gemm(144, 32, 8, True, True)  # float64 (gradcheck) stays on OpenBLAS
    assert sizes.own_gemm_dx(144, 32, 4) and not sizes.own_gemm_dx(27, 16, 4)
    assert not sizes.own_gemm_dx(144, 32, 8)
    assert sizes.own_planar(27, 16, 4, True) and not sizes.own_planar(27, 16, 4, False)


@pytest.mark.parametrize("avx512,cores,narrower", [
    (True, ["Haswell"], True),  # OPENBLAS_CORETYPE=Haswell on an AVX-512 CPU
    (True, ["SkylakeX", "SkylakeX"], False),  # numpy's and scipy's OpenBLAS, own kernel
    (True, ["SkylakeX", "Haswell"], True),  # either copy on the older core
    (False, ["Haswell"], False),  # an AVX2 CPU: OpenBLAS's Haswell kernel is its best
    (True, [], False),  # no OpenBLAS (another BLAS): nothing known to be narrower
])
def test_blas_narrower_than_jit_reads_openblas_cores(avx512, cores, narrower, monkeypatch):
    import threadpoolctl

    from cnncli import config

    libs = [{"internal_api": "openblas", "architecture": c} for c in cores]
    libs.append({"internal_api": "openmp", "architecture": None})
    monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda: libs)
    monkeypatch.setattr(config, "jit_has_avx512", lambda: avx512)
    monkeypatch.setattr(config, "_blas_narrower", None)
    assert config.blas_narrower_than_jit() is narrower
    monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda: 1 / 0)
    assert config.blas_narrower_than_jit() is narrower  # asked once per process
