"""Tests for cnncli.engine.kernels.winograd against tests/naive.py, direct convolution
(cnncli.engine.kernels.conv in float64) and torch.nn.functional.

Tests whose name contains ``small`` only use tiny shapes and also pass (slowly) with
``NUMBA_DISABLE_JIT=1``:

    NUMBA_DISABLE_JIT=1 .venv/bin/python -m pytest tests/test_kernels_winograd.py -q -k small
"""

from __future__ import annotations

import numpy as np
import pytest

from cnncli.engine.kernels import conv, microkernel, sizes
from cnncli.engine.kernels import winograd as wg
from cnncli.engine.kernels import winograd_vec as vec

try:
    from tests import naive
except ImportError:  # plain `pytest` without the repo root on sys.path
    import naive  # type: ignore[no-redef]

TOL = 1e-10
F32_REL = 1e-4  # float32 Winograd vs float64 direct, relative to the largest |value|
TILES = [4, 2]


def _make(rng, N, H, W, C, K, dtype=np.float64):
    x = rng.standard_normal((N, H, W, C)).astype(dtype)
    w = rng.standard_normal((K, C, 3, 3)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    return x, w, b


def _naive(x, w, b, pad):
    OH, OW = x.shape[1] + 2 * pad - 2, x.shape[2] + 2 * pad - 2
    return naive.naive_conv2d(x, w, b, (1, 1), (pad, pad), (1, 1), 1, (OH, OW))


def _naive_backward(x, w, dy, pad):
    return naive.naive_conv2d_backward(x, w, dy, (1, 1), (pad, pad), (1, 1), 1)


def _rel_err(a, ref):
    return float(np.abs(a.astype(np.float64) - ref).max() / np.abs(ref).max())


# --- the transform matrices --------------------------------------------------------


def _toom_cook(m, points):
    """(A^T, G, B^T) of F(m, 3) built from m + 1 finite points and infinity, as the
    derivation in cnncli/engine/kernels/winograd.py describes (no rescaling)."""
    alpha = m + 2
    pts = np.asarray(points, dtype=np.float64)
    A = np.zeros((alpha, m))
    G = np.zeros((alpha, 3))
    Vd = np.zeros((alpha, alpha))
    A[:-1] = pts[:, None] ** np.arange(m)
    G[:-1] = pts[:, None] ** np.arange(3)
    Vd[:-1] = pts[:, None] ** np.arange(alpha)
    A[-1, -1] = G[-1, -1] = Vd[-1, -1] = 1.0  # the point at infinity: leading coefficients
    L = np.linalg.inv(Vd)
    return A.T, G, L.T


def _correlate_1d(d, g, m):
    return np.array([sum(g[k] * d[i + k] for k in range(3)) for i in range(m)])


@pytest.mark.parametrize("tile, points", [(2, [0, 1, -1]), (4, [0, 1, -1, 2, -2])])
def test_transform_matrices_small_compute_correlation_like_toom_cook_from_points(tile,
                                                                                 points):
    rng = np.random.default_rng(tile)
    alpha = tile + 2
    built = _toom_cook(tile, points)
    for AT, G, BT in (built, wg.transform_matrices(tile)):
        for _ in range(5):
            d = rng.standard_normal(alpha)
            g = rng.standard_normal(3)
            y = AT @ ((G @ g) * (BT @ d))
            np.testing.assert_allclose(y, _correlate_1d(d, g, tile), 0, 1e-12)
        d2 = rng.standard_normal((alpha, alpha))
        g2 = rng.standard_normal((3, 3))
        y2 = AT @ ((G @ g2 @ G.T) * (BT @ d2 @ BT.T)) @ AT.T
        ref = np.array([[np.sum(g2 * d2[i:i + 3, j:j + 3]) for j in range(tile)]
                        for i in range(tile)])
        np.testing.assert_allclose(y2, ref, 0, 1e-12)
    # the hand matrices are the built ones with point j's column of A^T scaled by sa_j,
    # its row of G by sg_j and its row of B^T by 1 / (sa_j sg_j)
    AT, G, BT = wg.transform_matrices(tile)
    bAT, bG, bBT = built
    sa = np.array([AT[:, j] @ bAT[:, j] / (bAT[:, j] @ bAT[:, j]) for j in range(alpha)])
    sg = np.array([G[j] @ bG[j] / (bG[j] @ bG[j]) for j in range(alpha)])
    np.testing.assert_allclose(AT, bAT * sa, 0, 1e-12)
    np.testing.assert_allclose(G, bG * sg[:, None], 0, 1e-12)
    np.testing.assert_allclose(BT, bBT / (sa * sg)[:, None], 0, 1e-12)


# --- float64 against the plain reference --------------------------------------------

# (N, H, W, C, K, pad)
SMALL_CASES = [
    (2, 5, 5, 3, 4, 1),  # "same" conv, output 5x5: partial edge tiles for both tiles
    (1, 7, 9, 2, 3, 0),  # "valid", output 5x7
    (3, 6, 4, 3, 2, 1),  # N=3, output narrower than one F(4x4) tile row is wide
    (1, 3, 3, 1, 1, 0),  # one output pixel
    (2, 5, 6, 2, 3, 2),  # pad 2 (what backward-data of a pad-0 layer uses)
    (1, 8, 8, 4, 5, 1),  # output a whole number of tiles
]


def _ids(c):
    return "N{}_{}x{}_{}to{}_pad{}".format(*c)


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", SMALL_CASES, ids=_ids)
def test_forward_small_vs_naive(case, bias, tile):
    N, H, W, C, K, pad = case
    rng = np.random.default_rng(sum(case))
    x, w, b = _make(rng, N, H, W, C, K)
    b = b if bias else None
    y = wg.winograd_conv_forward(x, w, b, pad, tile)
    np.testing.assert_allclose(y, _naive(x, w, b, pad), 0, TOL)


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("case", SMALL_CASES, ids=_ids)
def test_backward_small_vs_naive(case, tile):
    N, H, W, C, K, pad = case
    rng = np.random.default_rng(sum(case) + 1)
    x, w, _ = _make(rng, N, H, W, C, K)
    dy = rng.standard_normal((N, H + 2 * pad - 2, W + 2 * pad - 2, K))
    rdx, rdw, _ = _naive_backward(x, w, dy, pad)
    dx = wg.winograd_conv_backward_data(dy, w, pad, tile)
    assert dx.shape == x.shape
    np.testing.assert_allclose(dx, rdx, 0, TOL)
    np.testing.assert_allclose(wg.winograd_conv_backward_weights(x, dy, pad, tile), rdw, 0,
                               TOL)


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("case", SMALL_CASES, ids=_ids)
def test_backward_params_small_bias_gradient_vs_naive(case, tile):
    # db is summed inside the dW kernel from the dy rows it transforms: every output
    # position once, the ragged last tile row and column included, none twice
    N, H, W, C, K, pad = case
    rng = np.random.default_rng(sum(case) + 2)
    x, w, _ = _make(rng, N, H, W, C, K)
    dy = rng.standard_normal((N, H + 2 * pad - 2, W + 2 * pad - 2, K))
    _, rdw, rdb = _naive_backward(x, w, dy, pad)
    dw, db = wg.winograd_conv_backward_params(x, dy, pad, tile)
    np.testing.assert_allclose(dw, rdw, 0, TOL)
    np.testing.assert_allclose(db, rdb, 0, TOL)
    np.testing.assert_allclose(db, dy.sum(axis=(0, 1, 2)), 0, TOL)
    dw_only, none = wg.winograd_conv_backward_params(x, dy, pad, tile, need_db=False)
    assert none is None
    np.testing.assert_array_equal(dw_only, dw)


# float32 runs its tile products through microkernel.py where numba compiles for AVX-512
# (float64 always through np.dot), forced both ways here: the blocks of 16 and 32 filters,
# a remainder of columns, and tile counts that leave rows
F32_SMALL_CASES = [
    (2, 9, 7, 3, 16, 1),  # 16 filters: the 16-wide block; 2 x 3 x 2 = 12 tiles per block
    (1, 6, 10, 5, 32, 1),  # 32 filters: the 32-wide block on AVX-512
    (2, 5, 6, 4, 21, 0),  # 21 filters: one 16-wide block and 5 columns in the plain loop
    (1, 3, 3, 2, 3, 0),  # one output pixel, 3 filters: the plain loop only
]


@pytest.mark.parametrize("own", [True, False])
@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("case", F32_SMALL_CASES, ids=_ids)
def test_float32_small_on_either_gemm_forward_dx_dw_vs_naive(case, tile, own, monkeypatch):
    monkeypatch.setattr(wg, "_own_gemm", lambda x: own and x.itemsize == 4)
    N, H, W, C, K, pad = case
    rng = np.random.default_rng(sum(case) + 3)
    x, w, b = _make(rng, N, H, W, C, K, np.float32)
    dy = rng.standard_normal((N, H + 2 * pad - 2, W + 2 * pad - 2, K)).astype(np.float32)
    x64, w64, b64, dy64 = (a.astype(np.float64) for a in (x, w, b, dy))
    ref = _naive(x64, w64, b64, pad)
    rdx, rdw, rdb = _naive_backward(x64, w64, dy64, pad)
    y = wg.winograd_conv_forward(x, w, b, pad, tile)
    dx = wg.winograd_conv_backward_data(dy, w, pad, tile)
    dw, db = wg.winograd_conv_backward_params(x, dy, pad, tile)
    assert y.dtype == dx.dtype == dw.dtype == db.dtype == np.float32
    assert _rel_err(y, ref) < F32_REL
    assert _rel_err(dx, rdx) < F32_REL
    assert _rel_err(dw, rdw) < F32_REL
    assert _rel_err(db, rdb) < F32_REL


@pytest.mark.parametrize("own", [True, False])
def test_float32_64_channels_on_either_gemm_vs_float64_direct(own, monkeypatch):
    # 64 x 64 channels: the own kernel (the 32-wide block on AVX-512, called without
    # gemm_into's checks) or np.dot; forced both ways here
    monkeypatch.setattr(wg, "_own_gemm", lambda x: own and x.itemsize == 4)
    rng = np.random.default_rng(21)
    x, w, b = _make(rng, 8, 8, 8, 64, 64, np.float32)
    dy = rng.standard_normal((8, 8, 8, 64)).astype(np.float32)
    x64, w64, b64, dy64 = (a.astype(np.float64) for a in (x, w, b, dy))
    ref = conv.conv2d_forward(x64, w64, b64, (1, 1), (1, 1), (1, 1), 1, (8, 8))
    rdx, rdw, rdb = conv.conv2d_backward(x64, w64, dy64, (1, 1), (1, 1), (1, 1), 1)
    assert _rel_err(wg.winograd_conv_forward(x, w, b, 1), ref) < F32_REL
    assert _rel_err(wg.winograd_conv_backward_data(dy, w, 1), rdx) < F32_REL
    dw, db = wg.winograd_conv_backward_params(x, dy, 1)
    assert _rel_err(dw, rdw) < F32_REL and _rel_err(db, rdb) < F32_REL


def test_own_winograd_rule_float32_where_numba_compiles_for_avx512():
    assert sizes.own_winograd(4, True)  # whichever kernel OpenBLAS runs
    assert not sizes.own_winograd(4, False)  # an AVX2-only CPU: np.dot
    assert not sizes.own_winograd(8, True)  # float64 (gradcheck): np.dot
    assert wg._own_gemm(np.zeros(1, np.float32)) is microkernel.WIDE


# float32 F(4x4) layers with channels in multiples of 16 transform their tiles on 16
# channels at a time in vector registers (winograd_vec.py); the same operations in the same
# order as the phase-layout stages, so the results must be theirs bit for bit. Cases: pads
# 0-2, images that leave the last tile row and column short, 16 and 32 channels on either
# side, a channel count the vectors do not take on the other side, several blocks.
VECTOR_CASES = [
    (2, 9, 7, 16, 16, 1),  # a short last tile row and column
    (3, 8, 8, 32, 16, 1),  # ResNet's shape, two channel groups in
    (1, 10, 11, 16, 32, 0),  # no padding: tiles stop short of the right edge
    (2, 6, 5, 16, 16, 2),  # pad 2: two rows and columns of zeros around the image
    (2, 7, 9, 16, 24, 1),  # 24 filters: vector input transform, phase-layout output
    (2, 7, 9, 12, 32, 1),  # 12 channels: phase-layout input, vector output transform
    (9, 12, 12, 16, 16, 1),  # 27 tile rows: several blocks per thread
    (2, 3, 3, 16, 16, 0),  # one output pixel: a tile of one row and one column
    (1, 4, 9, 32, 48, 2),  # pad 2 on a short image, three channel groups out
]


def _vector_ids(c):
    return "N{}_{}x{}_{}to{}_pad{}".format(*c)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("case", VECTOR_CASES, ids=_vector_ids)
def test_vector_tiles_bit_identical_to_phase_layout_stages(case, relu, monkeypatch):
    N, H, W, C, K, pad = case
    rng = np.random.default_rng(sum(case))
    x, w, b = _make(rng, N, H, W, C, K, np.float32)
    dy = rng.standard_normal((N, H + 2 * pad - 2, W + 2 * pad - 2, K)).astype(np.float32)

    def run():
        return (wg.winograd_conv_forward(x, w, b, pad, relu=relu),
                wg.winograd_conv_forward(x, w, None, pad),
                wg.winograd_conv_backward_data(dy, w, pad),
                *wg.winograd_conv_backward_params(x, dy, pad))

    vector = run()
    assert vec.usable(4, 4, 16) and (vec.usable(4, 4, C) or vec.usable(4, 4, K))
    monkeypatch.setattr(wg, "usable", lambda itemsize, tile, channels: False)
    stages = run()
    for got, want in zip(vector, stages, strict=True):
        np.testing.assert_array_equal(got, want)
    x64, w64, b64 = (a.astype(np.float64) for a in (x, w, b))
    ref = _naive(x64, w64, b64, pad)
    assert _rel_err(vector[0], np.maximum(ref, 0) if relu else ref) < F32_REL


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", VECTOR_CASES[:6], ids=_vector_ids)
def test_backward_data_adds_an_array_as_numpy_adds_it(case, dtype):
    # a residual block's identity shortcut: dx + dy in the kernel's output pass, the same
    # bits as np.add after it (vector and phase-layout output transforms, both dtypes)
    N, H, W, C, K, pad = case
    rng = np.random.default_rng(sum(case))
    _, w, _ = _make(rng, N, H, W, C, K, dtype)
    dy = rng.standard_normal((N, H + 2 * pad - 2, W + 2 * pad - 2, K)).astype(dtype)
    addend = rng.standard_normal((N, H, W, C)).astype(dtype)
    kept = addend.copy()
    got = wg.winograd_conv_backward_data(dy, w, pad, add=addend)
    want = np.add(wg.winograd_conv_backward_data(dy, w, pad), addend)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(addend, kept)  # read, not written
    for bad in (addend[:, :-1], addend.astype(np.float16), np.asfortranarray(addend)):
        with pytest.raises(ValueError, match="add must be"):
            wg.winograd_conv_backward_data(dy, w, pad, add=bad)


def test_vector_tiles_rule_float32_f4_multiples_of_16_channels():
    assert sizes.winograd_vector(4, 4, 16) and sizes.winograd_vector(4, 4, 64)
    assert not sizes.winograd_vector(4, 4, 24)  # not a whole number of vectors
    assert not sizes.winograd_vector(4, 2, 16)  # F(2x2): the phase-layout stages
    assert not sizes.winograd_vector(8, 4, 16)  # float64 (gradcheck)
    assert not sizes.winograd_vector(4, 4, 0)


def test_backward_params_float32_bias_gradient_summed_in_float64():
    # a float32 running sum over 64 x 32 x 32 positions would drift; the float64 partials
    # match numpy's float64 sum to float32 rounding
    rng = np.random.default_rng(11)
    x = rng.standard_normal((64, 32, 32, 16)).astype(np.float32)
    dy = (rng.standard_normal((64, 32, 32, 16)) + 0.3).astype(np.float32)
    _, db = wg.winograd_conv_backward_params(x, dy, 1)
    assert db.dtype == np.float32
    ref = dy.sum(axis=(0, 1, 2), dtype=np.float64)
    np.testing.assert_allclose(db, ref, rtol=1e-6)


@pytest.mark.parametrize("tile", TILES)
def test_gradcheck_small_float64_finite_differences(tile):
    # loss = sum(r * conv(x, w)); central differences at a few entries of x and w
    rng = np.random.default_rng(3)
    x, w, b = _make(rng, 2, 5, 6, 3, 2)
    pad = 1
    r = rng.standard_normal((2, 5, 6, 2))

    def loss(x, w):
        return float(np.sum(r * wg.winograd_conv_forward(x, w, b, pad, tile)))

    dx = wg.winograd_conv_backward_data(r, w, pad, tile)
    dw = wg.winograd_conv_backward_weights(x, r, pad, tile)
    assert np.abs(dx).max() > 0 and np.abs(dw).max() > 0
    h = 1e-6
    for idx in [(0, 0, 0, 0), (1, 4, 5, 2), (0, 2, 3, 1)]:
        e = np.zeros_like(x)
        e[idx] = h
        num = (loss(x + e, w) - loss(x - e, w)) / (2 * h)
        assert abs(num - dx[idx]) <= 1e-6 * max(1.0, abs(num))
    for idx in [(0, 0, 0, 0), (1, 2, 2, 2), (1, 1, 0, 2)]:
        e = np.zeros_like(w)
        e[idx] = h
        num = (loss(x, w + e) - loss(x, w - e)) / (2 * h)
        assert abs(num - dw[idx]) <= 1e-6 * max(1.0, abs(num))


def test_forward_small_with_precomputed_filter_transform():
    rng = np.random.default_rng(4)
    x, w, b = _make(rng, 2, 6, 5, 3, 4)
    for tile in TILES:
        u = wg.winograd_filter_transform(w, tile)
        assert u.shape == ((tile + 2) ** 2, 3, 4)
        np.testing.assert_array_equal(wg.winograd_conv_forward(x, w, b, 1, tile, u=u),
                                      wg.winograd_conv_forward(x, w, b, 1, tile))


def test_small_empty_batch():
    x = np.zeros((0, 5, 5, 3))
    w = np.ones((4, 3, 3, 3))
    assert wg.winograd_conv_forward(x, w, None, 1).shape == (0, 5, 5, 4)
    assert wg.winograd_conv_backward_data(np.zeros((0, 5, 5, 4)), w, 1).shape == (0, 5, 5, 3)
    dw = wg.winograd_conv_backward_weights(x, np.zeros((0, 5, 5, 4)), 1)
    assert dw.shape == (4, 3, 3, 3) and not dw.any()


# --- blocks, chunks and edge tiles on bigger shapes (compiled only) -----------------


@pytest.mark.parametrize("tile", TILES)
def test_many_blocks_and_chunks_match_direct(tile, monkeypatch):
    # one tile row per block, so images span blocks and dW has several chunks
    rng = np.random.default_rng(5)
    x, w, b = _make(rng, 5, 11, 13, 6, 7)
    dy = rng.standard_normal((5, 11, 13, 7))
    ref = conv.conv2d_forward(x, w, b, (1, 1), (1, 1), (1, 1), 1, (11, 13))
    rdx, rdw, _ = conv.conv2d_backward(x, w, dy, (1, 1), (1, 1), (1, 1), 1)
    for tiles in (1, 1000):
        monkeypatch.setattr(sizes, "WINOGRAD_BLOCK_TILES", tiles)
        monkeypatch.setattr(sizes, "WINOGRAD_BLOCK_TILES_DW", tiles)
        np.testing.assert_allclose(wg.winograd_conv_forward(x, w, b, 1, tile), ref, 0, TOL)
        np.testing.assert_allclose(wg.winograd_conv_backward_data(dy, w, 1, tile), rdx, 0,
                                   TOL)
        np.testing.assert_allclose(wg.winograd_conv_backward_weights(x, dy, 1, tile), rdw,
                                   0, TOL)


# --- float32 error on real layer sizes ------------------------------------------------

# (N, H, W, C, K): CIFAR layer sizes, then odd ones
F32_CASES = [
    (4, 32, 32, 16, 16),
    (4, 16, 16, 32, 32),
    (4, 8, 8, 64, 64),
    (3, 7, 7, 16, 24),
    (1, 5, 9, 8, 8),
    (1, 7, 7, 64, 32),
]


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("case", F32_CASES, ids=lambda c: "N{}_{}x{}_{}to{}".format(*c))
def test_float32_error_within_1e4th_of_float64_direct(case, tile):
    N, H, W, C, K = case
    rng = np.random.default_rng(sum(case))
    x, w, b = _make(rng, N, H, W, C, K)
    w *= np.sqrt(2.0 / (9 * C))  # He-initialised weights, as in training
    dy = rng.standard_normal((N, H, W, K))
    args = ((1, 1), (1, 1), (1, 1), 1)
    ref = conv.conv2d_forward(x, w, b, *args, (H, W))
    rdx, rdw, _ = conv.conv2d_backward(x, w, dy, *args)
    x32, w32, b32, dy32 = (a.astype(np.float32) for a in (x, w, b, dy))
    y = wg.winograd_conv_forward(x32, w32, b32, 1, tile)
    dx = wg.winograd_conv_backward_data(dy32, w32, 1, tile)
    dw = wg.winograd_conv_backward_weights(x32, dy32, 1, tile)
    for got in (y, dx, dw):
        assert got.dtype == np.float32
    assert _rel_err(y, ref) <= F32_REL
    assert _rel_err(dx, rdx) <= F32_REL
    assert _rel_err(dw, rdw) <= F32_REL


# --- determinism ---------------------------------------------------------------------


@pytest.mark.parametrize("tile", TILES)
def test_deterministic_bit_identical_run_to_run(tile):
    rng = np.random.default_rng(6)
    x, w, b = _make(rng, 19, 14, 14, 16, 32, np.float32)
    dy = rng.standard_normal((19, 14, 14, 32)).astype(np.float32)
    runs = [(wg.winograd_conv_forward(x, w, b, 1, tile),
             wg.winograd_conv_backward_data(dy, w, 1, tile),
             wg.winograd_conv_backward_weights(x, dy, 1, tile)) for _ in range(3)]
    for other in runs[1:]:
        for a, r in zip(other, runs[0], strict=True):
            np.testing.assert_array_equal(a, r)


def test_deterministic_across_thread_counts():
    numba = pytest.importorskip("numba")
    if numba.config.NUMBA_NUM_THREADS < 2 or numba.config.DISABLE_JIT:
        pytest.skip("needs a numba thread pool of at least 2 threads")
    rng = np.random.default_rng(7)
    x, w, b = _make(rng, 16, 10, 10, 8, 16, np.float32)
    dy = rng.standard_normal((16, 10, 10, 16)).astype(np.float32)
    old = numba.get_num_threads()
    res = []
    try:
        for n in (1, 2):
            numba.set_num_threads(n)
            res.append((wg.winograd_conv_forward(x, w, b, 1),
                        wg.winograd_conv_backward_data(dy, w, 1),
                        *wg.winograd_conv_backward_params(x, dy, 1)))
    finally:
        numba.set_num_threads(old)
    for a, r in zip(res[0], res[1], strict=True):
        np.testing.assert_array_equal(a, r)


# --- validation ----------------------------------------------------------------------


def test_small_validation_errors_name_the_bad_value():
    x = np.zeros((1, 5, 5, 3))
    w = np.zeros((4, 3, 3, 3))
    with pytest.raises(ValueError, match="pad must be 0, 1 or 2"):
        wg.winograd_conv_forward(x, w, None, 3)
    with pytest.raises(ValueError, match="tile must be 2 or 4"):
        wg.winograd_conv_forward(x, w, None, 1, tile=3)
    with pytest.raises(ValueError, match=r"w must be OIHW \[K, C=3, 3, 3\]"):
        wg.winograd_conv_forward(x, np.zeros((4, 3, 5, 5)), None, 1)
    with pytest.raises(TypeError, match="float32"):
        wg.winograd_conv_forward(x, w.astype(np.float32), None, 1)
    with pytest.raises(TypeError, match="float32 or float64"):
        wg.winograd_conv_forward(x.astype(np.int32), w, None, 1)
    with pytest.raises(ValueError, match=r"b must have shape \(4,\)"):
        wg.winograd_conv_forward(x, w, np.zeros(3), 1)
    with pytest.raises(ValueError, match="leaves no 3x3 window"):
        wg.winograd_conv_forward(np.zeros((1, 2, 5, 3)), w, None, 0)
    with pytest.raises(ValueError, match="u must have shape"):
        wg.winograd_conv_forward(x, w, None, 1, tile=2, u=np.zeros((36, 3, 4)))
    with pytest.raises(ValueError, match="dy must have shape"):
        wg.winograd_conv_backward_weights(x, np.zeros((1, 4, 4, 4)), 1)
    with pytest.raises(ValueError, match=r"w must be OIHW \[K=4"):
        wg.winograd_conv_backward_data(np.zeros((1, 5, 5, 4)), np.zeros((3, 3, 3, 3)), 1)


# --- torch ---------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("seed", range(6))
def test_vs_torch_conv2d_conv_transpose2d_and_grad(seed, tile):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(200 + seed)
    N = int(rng.integers(1, 4))
    H, W = (int(v) for v in rng.integers(3, 14, 2))
    C, K = (int(v) for v in rng.integers(1, 9, 2))
    pad = int(rng.integers(0, 2))
    x, w, b = _make(rng, N, H, W, C, K)
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    yt = F.conv2d(xt, wt, torch.tensor(b), padding=pad)
    y = wg.winograd_conv_forward(x, w, b, pad, tile)
    np.testing.assert_allclose(y, yt.detach().numpy().transpose(0, 2, 3, 1), 0, TOL)
    dy = rng.standard_normal(y.shape)
    dyt = torch.tensor(dy.transpose(0, 3, 1, 2))
    gx, gw = torch.autograd.grad(yt, (xt, wt), dyt)
    dx = wg.winograd_conv_backward_data(dy, w, pad, tile)
    np.testing.assert_allclose(dx, gx.numpy().transpose(0, 2, 3, 1), 0, TOL)
    tx = F.conv_transpose2d(dyt, torch.tensor(w), padding=pad)  # dx is this, by definition
    np.testing.assert_allclose(dx, tx.numpy().transpose(0, 2, 3, 1), 0, TOL)
    np.testing.assert_allclose(wg.winograd_conv_backward_weights(x, dy, pad, tile),
                               gw.numpy(), 0, TOL)


@pytest.mark.torch
@pytest.mark.parametrize("tile", TILES)
def test_vs_torch_float32_cifar_layer(tile):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    x, w, b = _make(rng, 8, 16, 16, 32, 32, np.float32)
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, torch.tensor(b), padding=1)
    ref = yt.detach().numpy().transpose(0, 2, 3, 1)
    y = wg.winograd_conv_forward(x, w, b, 1, tile)
    assert _rel_err(y, ref) <= F32_REL
    dy = rng.standard_normal(y.shape).astype(np.float32)
    gx, gw = torch.autograd.grad(yt, (xt, wt), torch.tensor(dy.transpose(0, 3, 1, 2)))
    assert _rel_err(wg.winograd_conv_backward_data(dy, w, 1, tile),
                    gx.numpy().transpose(0, 2, 3, 1)) <= F32_REL
    assert _rel_err(wg.winograd_conv_backward_weights(x, dy, 1, tile), gw.numpy()) <= F32_REL
