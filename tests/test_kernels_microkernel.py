"""Tests for cnncli.engine.kernels.microkernel: the engine's own float32 GEMM against
float64 matrix products, at Winograd's tile-product shapes and at every remainder the
blocks leave (rows not a multiple of the block, columns not a multiple of 16 or 32).

Tests whose name contains ``small`` also pass with ``NUMBA_DISABLE_JIT=1`` (there the
kernel is numpy's product: the vector block exists only compiled).
"""

from __future__ import annotations

import numpy as np
import pytest

from cnncli.engine.kernels import microkernel as mk

REL = 2e-6  # float32 sums of at most 128 products against float64, relative to max |ref|

# (M, K, N): ResNet-20's Winograd products ([32 tiles x C] by [C x K] at 16, 32, 64
# channels), the dW form's long reduction, and shapes that leave rows, columns or both
SHAPES = [(32, 16, 16), (32, 32, 32), (32, 64, 64), (64, 128, 128), (16, 64, 32),
          (33, 16, 16), (7, 16, 32), (9, 16, 96), (13, 128, 128), (17, 64, 48),
          (3, 7, 33), (1, 5, 16), (7, 3, 5), (9, 16, 17), (5, 1, 1)]


def _rel(out, ref):
    scale = max(np.abs(ref).max(initial=0.0), 1e-30)
    return np.abs(out.astype(np.float64) - ref).max(initial=0.0) / scale


@pytest.mark.parametrize("M,K,N", SHAPES)
def test_small_product_matches_float64(M, K, N):
    rng = np.random.default_rng(M * 1000 + K * 10 + N)
    A = rng.standard_normal((M, K), dtype=np.float32)
    B = rng.standard_normal((K, N), dtype=np.float32)
    out = mk.small_gemm(A, B)
    assert out.dtype == np.float32 and out.shape == (M, N)
    assert _rel(out, A.astype(np.float64) @ B.astype(np.float64)) < REL


@pytest.mark.parametrize("M,K,N", [(32, 16, 16), (16, 64, 64), (9, 32, 48), (3, 5, 7)])
def test_small_transposed_a_as_the_weight_gradient_reads_it(M, K, N):
    # dW's products read V[tiles, C] as its transpose [C x tiles]: A with unit stride down
    # its columns, rows apart by one element
    rng = np.random.default_rng(7)
    V = rng.standard_normal((K, M + 3), dtype=np.float32)[:, :M]  # rows apart by M + 3
    A = V.T
    B = rng.standard_normal((K, N), dtype=np.float32)
    assert A.strides[0] == 4
    out = mk.small_gemm(A, B)
    assert _rel(out, A.astype(np.float64) @ B.astype(np.float64)) < REL


def test_small_accumulate_adds_into_out_and_leaves_what_is_beside_it():
    rng = np.random.default_rng(3)
    A = rng.standard_normal((10, 24), dtype=np.float32)
    B = rng.standard_normal((24, 40), dtype=np.float32)
    big = rng.standard_normal((12, 48), dtype=np.float32)  # out is a window of it
    before = big.copy()
    out = big[1:11, 4:44]
    mk.small_gemm(A, B, out, accumulate=True)
    ref = before[1:11, 4:44].astype(np.float64) + A.astype(np.float64) @ B
    assert _rel(out, ref) < REL
    outside = np.ones(big.shape, bool)
    outside[1:11, 4:44] = False
    assert np.array_equal(big[outside], before[outside])


def test_small_rows_of_b_and_out_apart_like_winograd_blocks():
    # Winograd's V, U and M: slices of bigger per-thread buffers, one spare tile row each
    rng = np.random.default_rng(5)
    V = rng.standard_normal((36, 33, 16), dtype=np.float32)
    U = rng.standard_normal((36, 16, 32), dtype=np.float32)
    M = np.full((36, 33, 32), np.nan, dtype=np.float32)
    for e in range(36):
        mk.small_gemm(V[e, :29], U[e], M[e, :29])
    ref = np.einsum("etc,eck->etk", V[:, :29].astype(np.float64), U.astype(np.float64))
    assert _rel(M[:, :29], ref) < REL
    assert np.isnan(M[:, 29:]).all()  # the spare rows are not written


def test_small_empty_reduction_gives_zeros_or_leaves_out():
    A = np.ones((5, 0), np.float32)
    B = np.ones((0, 16), np.float32)
    assert np.array_equal(mk.small_gemm(A, B), np.zeros((5, 16), np.float32))
    out = np.full((5, 16), 2.0, np.float32)
    mk.small_gemm(A, B, out, accumulate=True)
    assert (out == 2.0).all()
    assert mk.small_gemm(np.ones((0, 4), np.float32), np.ones((4, 16), np.float32)).shape == (0, 16)


def test_small_same_bits_run_to_run():
    rng = np.random.default_rng(11)
    A = rng.standard_normal((37, 64), dtype=np.float32)
    B = rng.standard_normal((64, 64), dtype=np.float32)
    assert np.array_equal(mk.small_gemm(A, B), mk.small_gemm(A, B))


def test_small_nan_and_inf_propagate_as_in_a_product():
    A = np.ones((8, 16), np.float32)
    B = np.ones((16, 32), np.float32)
    A[2, 3] = np.nan
    B[5, 7] = np.inf
    out = mk.small_gemm(A, B)
    ref = A.astype(np.float64) @ B.astype(np.float64)
    assert np.array_equal(np.isnan(out), np.isnan(ref))
    assert np.array_equal(np.isinf(out), np.isinf(ref))


def test_small_refuses_what_it_cannot_compute():
    f32 = np.ones((4, 4), np.float32)
    with pytest.raises(TypeError, match="float32"):
        mk.small_gemm(f32.astype(np.float64), f32)
    with pytest.raises(ValueError, match="do not fit"):
        mk.small_gemm(np.ones((4, 3), np.float32), f32)
    with pytest.raises(ValueError, match="unit stride"):
        mk.small_gemm(f32, np.ones((4, 8), np.float32)[:, ::2])
    with pytest.raises(ValueError, match="out must be"):
        mk.small_gemm(f32, f32, np.ones((4, 5), np.float32))
    with pytest.raises(ValueError, match="accumulate needs"):
        mk.small_gemm(f32, f32, accumulate=True)


# A kernel that runs its product either way branches on the global OWN_GEMM; its `_own`
# copy (own_gemm_variant) sees it True. Defined here as the engine's kernels are.
OWN_GEMM = mk.OWN_GEMM
gemm_into = mk.gemm_into


def _either_product(A, B, out):
    if OWN_GEMM:
        gemm_into(A, B, out, False)
    else:
        np.dot(A, B, out)


def test_small_own_gemm_variant_is_a_named_copy_with_the_branch_taken():
    from numba import njit

    blas = njit(cache=False)(_either_product)
    own = mk.own_gemm_variant(blas, {"cache": False})
    copy = getattr(own, "py_func", own)
    assert copy.__name__ == copy.__qualname__ == "_either_product_own"
    assert copy.__module__ == __name__ and copy.__doc__ == _either_product.__doc__
    assert OWN_GEMM is False  # the module's own global is left alone
    rng = np.random.default_rng(3)
    A = rng.standard_normal((9, 16), dtype=np.float32)
    B = rng.standard_normal((16, 32), dtype=np.float32)
    ref = A.astype(np.float64) @ B.astype(np.float64)
    for kernel in (blas, own):
        out = np.empty((9, 32), np.float32)
        kernel(A, B, out)
        assert _rel(out, ref) < REL


def test_each_copy_compiles_and_links_only_the_product_it_calls():
    # numba reads the global as a constant and drops the branch not taken before typing:
    # the plain kernel's machine code never mentions gemm_into, the copy's calls it
    from numba import njit

    blas = njit(cache=False)(_either_product)
    own = mk.own_gemm_variant(blas, {"cache": False})
    A = np.ones((8, 16), np.float32)
    B = np.ones((16, 16), np.float32)
    out = np.empty((8, 16), np.float32)
    blas(A, B, out)
    own(A, B, out)
    (blas_ir,) = blas.inspect_llvm().values()
    (own_ir,) = own.inspect_llvm().values()
    assert "gemm_into" not in blas_ir and "gemm_into" in own_ir


@pytest.mark.parametrize("M,K,N", [(32, 16, 16), (33, 32, 32), (7, 64, 64), (64, 16, 48)])
def test_rows_and_cols_forms_as_winograd_calls_them(M, K, N):
    # Winograd's products with 16-channel vectors: A's rows lda apart (a block's V[e] has
    # a spare row), B and C rows N apart; gemm_cols reads A transposed, as dW's V^T Z
    rng = np.random.default_rng(M + K + N)
    V = rng.standard_normal((M + 1, K), dtype=np.float32)
    U = rng.standard_normal((K, N), dtype=np.float32)
    out = np.full((M, N), 7.0, np.float32)
    mk.gemm_rows(V.ctypes.data, K, U.ctypes.data, out.ctypes.data, M, K, N, False)
    assert _rel(out, V[:M].astype(np.float64) @ U.astype(np.float64)) < REL
    mk.gemm_rows(V.ctypes.data, K, U.ctypes.data, out.ctypes.data, M, K, N, True)
    assert _rel(out, 2 * (V[:M].astype(np.float64) @ U.astype(np.float64))) < REL
    Z = rng.standard_normal((M + 1, N), dtype=np.float32)
    S = np.full((K, N), 3.0, np.float32)
    mk.gemm_cols(V.ctypes.data, K, Z.ctypes.data, S.ctypes.data, K, M, N, True)
    ref = 3.0 + V[:M].T.astype(np.float64) @ Z[:M].astype(np.float64)
    assert _rel(S, ref) < REL
