"""Batch norm and LRN kernels vs naive loops, PyTorch, finite differences;
determinism. Cases whose id contains ``small`` suit
``NUMBA_DISABLE_JIT=1 pytest -k small``."""

from __future__ import annotations

import naive_pool as ref
import numpy as np
import pytest

from cnncli.engine.kernels import norm

BN_SHAPES = [
    pytest.param((3, 4, 5, 3), id="small_nhwc"),
    pytest.param((6, 4), id="small_fc"),
    pytest.param((4, 7, 6, 10), id="nhwc"),
    pytest.param((130, 5), id="fc_many_rows"),
]
# (size, alpha, beta, k, C)
LRN_CASES = [
    pytest.param(5, 1e-2, 0.75, 2.0, 7, id="small_alexnet_like"),
    pytest.param(4, 0.5, 0.6, 1.0, 6, id="small_even_size"),
    pytest.param(9, 0.3, 0.5, 1.0, 4, id="small_size_gt_channels"),
    pytest.param(3, 1.0, 1.0, 0.5, 12, id="many_channels"),
]
EPS = 1e-5




def _bn_data(shape, seed=0, offset=0.0):
    rng = np.random.default_rng(seed)
    C = shape[-1]
    x = offset + rng.standard_normal(shape) * rng.uniform(0.5, 2.0, C)
    gamma = rng.uniform(0.5, 1.5, C)
    beta = rng.standard_normal(C)
    dy = rng.standard_normal(shape)
    return x, gamma, beta, dy


# ---------------------------------------------------------------- batch norm


@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batchnorm_vs_naive(shape):
    x, gamma, beta, dy = _bn_data(shape)
    y, mean, inv_std, xhat = norm.batchnorm_forward_train(x, gamma, beta, EPS)
    assert xhat is None
    y_ref, m_ref, v_ref = ref.batchnorm_train(x, gamma, beta, EPS)
    np.testing.assert_allclose(y, y_ref, 1e-11, 1e-12)
    np.testing.assert_allclose(mean, m_ref, 1e-12, 1e-12)
    np.testing.assert_allclose(inv_std, 1 / np.sqrt(v_ref + EPS), 1e-11)

    dx, dgamma, dbeta = norm.batchnorm_backward(dy, x, gamma, mean, inv_std)
    dx_r, dg_r, db_r = ref.batchnorm_backward(dy, x, gamma, EPS)
    np.testing.assert_allclose(dx, dx_r, 1e-9, 1e-11)
    np.testing.assert_allclose(dgamma, dg_r, 1e-11, 1e-12)
    np.testing.assert_allclose(dbeta, db_r, 1e-11, 1e-12)

    rv = np.linspace(0.5, 2.0, shape[-1])
    y = norm.batchnorm_forward_eval(x, gamma, beta, m_ref, rv, EPS)
    np.testing.assert_allclose(y, ref.batchnorm_eval(x, gamma, beta, m_ref, rv, EPS), 1e-12, 1e-12)


def test_small_batchnorm_xhat_path():
    x, gamma, beta, dy = _bn_data((3, 2, 4, 5), seed=1)
    y, mean, inv_std, xhat = norm.batchnorm_forward_train(x, gamma, beta, EPS, keep_xhat=True)
    np.testing.assert_allclose(xhat, (x - mean) * inv_std, 1e-12, 1e-12)
    a = norm.batchnorm_backward(dy, x, gamma, mean, inv_std)
    b = norm.batchnorm_backward(dy, xhat, gamma, None, inv_std)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_allclose(u, v, 1e-10, 1e-12)


def test_small_batchnorm_float32_large_mean():
    # float32 activations far from zero: float64 statistics keep the result accurate
    x, gamma, beta, dy = _bn_data((8, 3, 3, 4), seed=2, offset=300.0)
    x32, dy32 = x.astype(np.float32), dy.astype(np.float32)
    y32, m32, s32, _ = norm.batchnorm_forward_train(
        x32, gamma.astype(np.float32), beta.astype(np.float32), EPS
    )
    y64, m64, s64, _ = norm.batchnorm_forward_train(x32.astype(np.float64), gamma, beta, EPS)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(s32, s64, 1e-10)
    np.testing.assert_allclose(y32, y64, 0, 2e-4)
    dx32, dg32, db32 = norm.batchnorm_backward(dy32, x32, gamma.astype(np.float32), m32, s32)
    dx64, dg64, db64 = norm.batchnorm_backward(
        dy32.astype(np.float64), x32.astype(np.float64), gamma, m64, s64
    )
    assert dx32.dtype == np.float32 and dg32.dtype == np.float32
    np.testing.assert_allclose(dx32, dx64, 0, 2e-4)
    np.testing.assert_allclose(dg32, dg64, 1e-5, 1e-4)
    np.testing.assert_allclose(db32, db64, 1e-5, 1e-4)


@pytest.mark.parametrize("shape", BN_SHAPES[:2])
def test_batchnorm_gradcheck(shape):
    x, gamma, beta, dy = _bn_data(shape, seed=3)
    _, mean, inv_std, _ = norm.batchnorm_forward_train(x, gamma, beta, EPS)
    dx, dgamma, dbeta = norm.batchnorm_backward(dy, x, gamma, mean, inv_std)

    def fwd(x_=x, g_=gamma, b_=beta):
        return norm.batchnorm_forward_train(x_, g_, b_, EPS)[0]

    assert ref.rel_error(dx, ref.numeric_gradient(lambda t: fwd(x_=t), x, dy)) < 1e-6
    assert ref.rel_error(dgamma, ref.numeric_gradient(lambda t: fwd(g_=t), gamma.copy(), dy)) < 1e-6
    assert ref.rel_error(dbeta, ref.numeric_gradient(lambda t: fwd(b_=t), beta.copy(), dy)) < 1e-6


@pytest.mark.torch
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batchnorm_vs_torch(shape):
    torch = pytest.importorskip("torch")
    x, gamma, beta, dy = _bn_data(shape, seed=4)
    perm = (0, 3, 1, 2) if x.ndim == 4 else (0, 1)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(perm))).requires_grad_(True)
    gt = torch.from_numpy(gamma).requires_grad_(True)
    bt = torch.from_numpy(beta).requires_grad_(True)
    yt = torch.nn.functional.batch_norm(xt, None, None, gt, bt, training=True, eps=EPS)
    yt.backward(torch.from_numpy(np.ascontiguousarray(dy.transpose(perm))))
    inv = np.argsort(perm)

    y, mean, inv_std, _ = norm.batchnorm_forward_train(x, gamma, beta, EPS)
    np.testing.assert_allclose(y, yt.detach().numpy().transpose(inv), 1e-10, 1e-11)
    dx, dgamma, dbeta = norm.batchnorm_backward(dy, x, gamma, mean, inv_std)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(inv), 1e-9, 1e-11)
    np.testing.assert_allclose(dgamma, gt.grad.numpy(), 1e-10, 1e-11)
    np.testing.assert_allclose(dbeta, bt.grad.numpy(), 1e-10, 1e-11)

    rm = torch.from_numpy(mean * 0.5)
    rv = torch.from_numpy(np.linspace(0.3, 3.0, shape[-1]))
    yt = torch.nn.functional.batch_norm(
        xt.detach(), rm, rv, gt.detach(), bt.detach(), training=False, eps=EPS
    )
    y = norm.batchnorm_forward_eval(x, gamma, beta, rm.numpy(), rv.numpy(), EPS)
    np.testing.assert_allclose(y, yt.numpy().transpose(inv), 1e-10, 1e-11)


# ---------------------------------------------------------------- LRN


def _lrn_data(C, seed=0, shape=(2, 3, 2)):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape + (C,)) * 2.0
    dy = rng.standard_normal(shape + (C,))
    return x, dy


@pytest.mark.parametrize("size,alpha,beta,k,C", LRN_CASES)
def test_lrn_vs_naive(size, alpha, beta, k, C):
    x, dy = _lrn_data(C)
    y, scale = norm.lrn_forward(x, size, alpha, beta, k)
    y_ref, s_ref = ref.lrn(x, size, alpha, beta, k)
    np.testing.assert_allclose(scale, s_ref, 1e-13, 1e-13)
    np.testing.assert_allclose(y, y_ref, 1e-12, 1e-13)
    dx = norm.lrn_backward(x, y, scale, dy, size, alpha, beta)
    np.testing.assert_allclose(dx, ref.lrn_backward(x, dy, size, alpha, beta, k), 1e-11, 1e-12)


@pytest.mark.parametrize("size,alpha,beta,k,C", LRN_CASES[:3])
def test_lrn_gradcheck(size, alpha, beta, k, C):
    x, dy = _lrn_data(C, seed=1)
    y, scale = norm.lrn_forward(x, size, alpha, beta, k)
    dx = norm.lrn_backward(x, y, scale, dy, size, alpha, beta)
    num = ref.numeric_gradient(lambda t: norm.lrn_forward(t, size, alpha, beta, k)[0], x, dy)
    assert ref.rel_error(dx, num) < 1e-6


@pytest.mark.torch
@pytest.mark.parametrize("size,alpha,beta,k,C", LRN_CASES)
def test_lrn_vs_torch(size, alpha, beta, k, C):
    torch = pytest.importorskip("torch")
    x, dy = _lrn_data(C, seed=2, shape=(2, 3, 4))
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).requires_grad_(True)
    yt = torch.nn.functional.local_response_norm(xt, size, alpha, beta, k)
    yt.backward(torch.from_numpy(np.ascontiguousarray(dy.transpose(0, 3, 1, 2))))
    y, scale = norm.lrn_forward(x, size, alpha, beta, k)
    np.testing.assert_allclose(y, yt.detach().numpy().transpose(0, 2, 3, 1), 1e-12, 1e-13)
    dx = norm.lrn_backward(x, y, scale, dy, size, alpha, beta)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), 1e-10, 1e-12)


def test_small_lrn_float32():
    x, dy = _lrn_data(6, seed=3)
    y64, s64 = norm.lrn_forward(x, 5, 1e-2, 0.75, 2.0)
    x32 = x.astype(np.float32)
    y32, s32 = norm.lrn_forward(x32, 5, 1e-2, 0.75, 2.0)
    assert y32.dtype == np.float32 and s32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, 1e-5, 1e-6)
    dx32 = norm.lrn_backward(x32, y32, s32, dy.astype(np.float32), 5, 1e-2, 0.75)
    dx64 = norm.lrn_backward(x, y64, s64, dy, 5, 1e-2, 0.75)
    assert dx32.dtype == np.float32
    np.testing.assert_allclose(dx32, dx64, 1e-4, 1e-5)


# ---------------------------------------------------------------- determinism


def test_norm_deterministic():
    import numba

    rng = np.random.default_rng(5)
    x = (rng.standard_normal((6, 11, 9, 16)) + 3).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, 16).astype(np.float32)
    beta = rng.standard_normal(16).astype(np.float32)
    nthreads = numba.config.NUMBA_NUM_THREADS
    outs = []
    for threads in (nthreads, 1, nthreads):
        numba.set_num_threads(threads)
        try:
            y, m, s, _ = norm.batchnorm_forward_train(x, gamma, beta, EPS)
            res = [y, m, s, *norm.batchnorm_backward(dy, x, gamma, m, s)]
            yl, sl = norm.lrn_forward(x, 5, 1e-3, 0.75, 2.0)
            res += [yl, sl, norm.lrn_backward(x, yl, sl, dy, 5, 1e-3, 0.75)]
            outs.append(res)
        finally:
            numba.set_num_threads(nthreads)
    for other in outs[1:]:
        for a, b in zip(outs[0], other, strict=True):
            assert a.tobytes() == b.tobytes()


def test_small_norm_validation():
    with pytest.raises(TypeError):
        norm.batchnorm_forward_train(np.zeros((2, 3), np.int32), np.ones(3), np.zeros(3), EPS)
    with pytest.raises(ValueError):
        norm.batchnorm_forward_train(np.zeros((2, 3)), np.ones(4), np.zeros(3), EPS)
    with pytest.raises(ValueError):
        norm.lrn_forward(np.zeros((2, 3)), 0, 1e-4, 0.75, 2.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batchnorm_relu_is_batchnorm_then_relu_bit_for_bit(shape, dtype):
    """relu=True: the same numbers as batchnorm then relu_forward, and in backward as
    relu_backward's mask over dy, then batchnorm's backward."""
    from cnncli.engine.kernels.elementwise import relu_backward, relu_forward

    x, gamma, beta, dy = _bn_data(shape, seed=4)
    x, dy = x.astype(dtype), dy.astype(dtype)
    y, mean, inv_std, _ = norm.batchnorm_forward_train(x, gamma, beta, EPS)
    relu_forward(y, out=y)
    y_f, mean_f, inv_f, _ = norm.batchnorm_forward_train(x, gamma, beta, EPS, relu=True)
    assert np.array_equal(y_f, y) and np.array_equal(mean_f, mean)
    assert np.array_equal(inv_f, inv_std)
    masked = relu_backward(dy.copy(), y)
    expected = norm.batchnorm_backward(masked, x, gamma, mean, inv_std)
    d = dy.copy()
    got = norm.batchnorm_backward(d, x, gamma, mean, inv_std, relu_y=y_f)
    assert np.array_equal(d, masked)  # the mask is written over dy
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    rv = np.linspace(0.5, 2.0, shape[-1])
    e = norm.batchnorm_forward_eval(x, gamma, beta, mean, rv, EPS)
    assert np.array_equal(norm.batchnorm_forward_eval(x, gamma, beta, mean, rv, EPS, relu=True),
                          relu_forward(e))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batchnorm_add_is_batchnorm_then_a_residual_sum_bit_for_bit(shape, dtype):
    """add=: ResNet's second batchnorm writes the block's sum, then its ReLU: the numbers
    of batchnorm, then numpy's `out + short` (and add_relu's max(out + short, 0))."""
    from cnncli.engine.kernels.elementwise import add_relu

    x, gamma, beta, _ = _bn_data(shape, seed=5)
    x = x.astype(dtype)
    short = np.random.default_rng(6).standard_normal(shape).astype(dtype)
    kept = short.copy()
    y, mean, inv_std, _ = norm.batchnorm_forward_train(x, gamma, beta, EPS)
    for relu, want in ((False, y + short), (True, add_relu(y, short))):
        got, mean_f, inv_f, _ = norm.batchnorm_forward_train(x, gamma, beta, EPS, relu=relu,
                                                             add=short)
        assert got.dtype == want.dtype and np.array_equal(got, want)
        assert np.array_equal(mean_f, mean) and np.array_equal(inv_f, inv_std)
    assert np.array_equal(short, kept)  # read, not written
    for bad in (short[:1], short.astype(np.float16), np.asfortranarray(short), short.tolist()):
        with pytest.raises(ValueError, match="add must be"):
            norm.batchnorm_forward_train(x, gamma, beta, EPS, add=bad)


def test_small_batchnorm_relu_wants_a_contiguous_dy():
    x, gamma, beta, dy = _bn_data((3, 4, 5, 3))
    y, mean, inv_std, _ = norm.batchnorm_forward_train(x, gamma, beta, EPS, relu=True)
    with pytest.raises(ValueError, match="C-contiguous"):
        norm.batchnorm_backward(np.asfortranarray(dy), x, gamma, mean, inv_std, relu_y=y)
