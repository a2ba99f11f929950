"""The engine's own small float32 GEMM, for the products inside its kernels (Winograd's
tile products; the small im2col GEMMs where OpenBLAS runs an older core, see sizes.py), so
their speed does not hinge on which kernel OpenBLAS picks.

    gemm_into(A, B, out, accumulate)     out[M, N] (+)= A[M, K] @ B[K, N]   (@njit, float32)

A may be any 2-d view (a transposed one too: only its strides are used); B and out must
have unit stride along N. Called from other @njit kernels; `small_gemm` is the checked
Python entry the tests use.

A kernel that can run its products either way (np.dot or gemm_into) branches on the
global ``OWN_GEMM``, never on an argument, and ``own_gemm_variant`` compiles a copy of it
in which that global is True. numba reads globals as constants and drops the branch not
taken before typing, so each copy compiles and links only the product it calls, and a run
compiles only the copy it uses: each side alone compiled in 9.5 and 10.2 s where the
kernel with both took 15-20 s (the planar forward, 2-core VM, 2026-11-29; numba re-links
and re-optimises a helper's code in every kernel, and a parallel kernel twice more).

Why not np.dot: inside a kernel, np.dot is a call into OpenBLAS for each product. At
Winograd's sizes ([32 tiles x 16] by [16 x 16] in ResNet-20's first stage) its fixed cost
dominates (0.6-0.7 us for 8 K multiply-adds, 25 GFLOP/s on one core of the 2-core Xeon),
and with OPENBLAS_CORETYPE=Haswell (how this workplace runs an old OpenBLAS) the AVX2
kernel ran the same products at 10-16 GFLOP/s, against PyTorch's convolutions, which do
not use OpenBLAS at all.

Why not numba loops: LLVM does not vectorise them into a register-blocked kernel
(measured 2026-11-29, numba 0.68.1 and its LLVM):
* scalar accumulators (4 rows x 16 columns, unrolled in the source) stay scalar: the SLP
  vectoriser does not combine them, 2-3 GFLOP/s;
* with fastmath the loop vectoriser vectorises the reduction instead, 64 vector
  accumulators that spill to the stack;
* a loop over the 16 columns into an array is unrolled to scalar code, since numba's
  arrays carry no no-alias information (winograd.py's docstring: 2-5x slower than np.dot).

So the block is written as LLVM vector IR (a numba @intrinsic): MR rows of the result
held in MR vector registers of NR float32 lanes, and for each step r of the reduction one
vector load of B's row r, MR scalar loads of A broadcast to a vector, MR fused multiply-
adds. LLVM lowers `<16 x float>` to one AVX-512 register where the CPU has AVX-512 (numba
compiles for the host CPU), to two AVX2 registers where it has AVX2, and to SSE below
that: correct everywhere, as fast as the host allows. Measured against np.dot on one core
(36 products of a Winograd block, medians of 7 rounds; cnncli/engine/kernels/winograd.py
has the layer figures): [32 x 16] by [16 x 16] 1.3x faster than OpenBLAS's own
(SkylakeX) kernel, 2.2-3.0x faster than its Haswell one; at 32 and 64 channels level with
the SkylakeX kernel and 2.1-3.8x faster than the Haswell one.

Rounding: each output is a fused multiply-add chain over r in order, so results differ
from np.dot's in the last bits (relative error ~1e-7, as np.dot's against float64), and
are the same run to run and for any thread count.
"""

from __future__ import annotations

import types as pytypes

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from cnncli.config import JIT_OPTIONS, jit_has_avx512

# Kernels branch on this, not on an argument: see the module docstring.
OWN_GEMM = False

__all__ = ["gemm_into", "small_gemm"]

# Block shapes (rows x float32 lanes), measured on the 2-core Xeon (AVX-512), 36 products
# of [32 x C] by [C x C], one core, GFLOP/s against np.dot's (SkylakeX kernel):
#   C = 16: 8x16 47, 4x16 40, 6x16 39 (np.dot 29); C = 32: 8x32 54, 4x32 52, 8x16 45 (50);
#   C = 64: 8x32 53-56, 8x16 46 (64); C = 128: 8x32 51, 8x16 43 (45).
# 8x32 holds 16 accumulators of 512 bits; on an AVX2 CPU the same block would need 32
# 256-bit registers of 16, so there the blocks are 6 x 16 (12 accumulators, as OpenBLAS's
# Haswell sgemm kernel).
WIDE = jit_has_avx512()
BLOCK_ROWS = 8 if WIDE else 6  # MR: rows of the result per block
BLOCK_COLS = 16  # NR: float32 lanes per vector
WIDE_COLS = 32  # NR for results whose width is a multiple of it (AVX-512 only)


def _block_intrinsic(rows: int, cols: int):
    """An @intrinsic computing one rows x cols block of the result:

        C[i, j] (+)= sum_r A[i * a_rs + r * a_ks] * B[r * ldb + j],  C at c + i * ldc + j

    on float32 pointers passed as integers, strides and the reduction length in elements;
    `acc` (0 or 1) adds to what C holds. The block reads C either way (its own output:
    allocated) and a select drops it, so one compiled form serves both.
    """

    @intrinsic
    def block(typingctx, a, a_rs, a_ks, b, ldb, c, ldc, depth, acc):
        sig = types.void(types.uintp, types.intp, types.intp, types.uintp, types.intp,
                         types.uintp, types.intp, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            a, a_rs, a_ks, b, ldb, c, ldc, depth, acc = args
            f32 = ir.FloatType()
            i64 = ir.IntType(64)
            vec = ir.VectorType(f32, cols)
            A = builder.inttoptr(a, f32.as_pointer())
            B = builder.inttoptr(b, f32.as_pointer())
            C = builder.inttoptr(c, f32.as_pointer())
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fma.v{cols}f32")
            zero = ir.Constant(vec, [0.0] * cols)
            lanes0 = ir.Constant(ir.VectorType(ir.IntType(32), cols), [0] * cols)
            undef = ir.Constant(vec, ir.Undefined)
            c_rows = [builder.gep(C, [builder.mul(ir.Constant(i64, i), ldc)])
                      for i in range(rows)]
            a_rows = [builder.gep(A, [builder.mul(ir.Constant(i64, i), a_rs)])
                      for i in range(rows)]
            adding = builder.icmp_signed("!=", acc, ir.Constant(i64, 0))
            start = [builder.select(adding,
                                    builder.load(builder.bitcast(p, vec.as_pointer()), align=4),
                                    zero)
                     for p in c_rows]
            entry = builder.block
            loop = builder.append_basic_block("block.loop")
            done = builder.append_basic_block("block.done")
            builder.cbranch(builder.icmp_signed(">", depth, ir.Constant(i64, 0)), loop, done)

            builder.position_at_end(loop)
            r = builder.phi(i64)
            acc = [builder.phi(vec) for _ in range(rows)]  # phis first in the block
            r.add_incoming(ir.Constant(i64, 0), entry)
            for i in range(rows):
                acc[i].add_incoming(start[i], entry)
            brow = builder.gep(B, [builder.mul(r, ldb)])
            bv = builder.load(builder.bitcast(brow, vec.as_pointer()), align=4)
            ak = builder.mul(r, a_ks)
            nxt = []
            for i in range(rows):
                av = builder.load(builder.gep(a_rows[i], [ak]), align=4)
                splat = builder.shuffle_vector(
                    builder.insert_element(undef, av, ir.Constant(ir.IntType(32), 0)),
                    undef, lanes0)
                nxt.append(builder.call(fma, [splat, bv, acc[i]]))
            r1 = builder.add(r, ir.Constant(i64, 1))
            r.add_incoming(r1, loop)
            for i in range(rows):
                acc[i].add_incoming(nxt[i], loop)
            builder.cbranch(builder.icmp_signed("<", r1, depth), loop, done)

            builder.position_at_end(done)
            res = [builder.phi(vec) for _ in range(rows)]
            for i in range(rows):
                res[i].add_incoming(start[i], entry)
                res[i].add_incoming(nxt[i], loop)
            for i in range(rows):
                builder.store(res[i], builder.bitcast(c_rows[i], vec.as_pointer()), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return block


_block = _block_intrinsic(BLOCK_ROWS, BLOCK_COLS)
_row = _block_intrinsic(1, BLOCK_COLS)
_wide = _block_intrinsic(BLOCK_ROWS, WIDE_COLS)
_wide_row = _block_intrinsic(1, WIDE_COLS)


@njit(**JIT_OPTIONS)
def _gemm_blocks(a, a_rs, a_ks, b, ldb, c, ldc, M, K, N, wide, acc):
    """The vector blocks of gemm_into on raw pointers and element strides: integers only,
    so numba compiles it once (per process or from its cache) whatever the arrays'
    layouts; the 8 block forms it inlines made each caller ~2 s slower to compile."""
    step = WIDE_COLS if wide else BLOCK_COLS
    nfull = N - N % step
    i = 0
    while i < M:
        ai = a + 4 * i * a_rs
        full = i + BLOCK_ROWS <= M
        for j in range(0, nfull, step):
            ci = c + 4 * (i * ldc + j)
            if full and wide:
                _wide(ai, a_rs, a_ks, b + 4 * j, ldb, ci, ldc, K, acc)
            elif full:
                _block(ai, a_rs, a_ks, b + 4 * j, ldb, ci, ldc, K, acc)
            elif wide:
                _wide_row(ai, a_rs, a_ks, b + 4 * j, ldb, ci, ldc, K, acc)
            else:
                _row(ai, a_rs, a_ks, b + 4 * j, ldb, ci, ldc, K, acc)
        i += BLOCK_ROWS if full else 1


@njit(**JIT_OPTIONS)
def gemm_into(A, B, out, accumulate):
    """out[M, N] = A[M, K] @ B[K, N] (or += with `accumulate`), float32 arrays.

    A: any 2-d view; B and out: unit stride along N (their rows may be apart). Blocks of
    BLOCK_ROWS rows through the vector kernel (WIDE_COLS columns when N is a multiple of
    it and the CPU has AVX-512, else BLOCK_COLS), leftover rows one at a time through
    its one-row form, leftover columns (N % BLOCK_COLS) in a plain loop.
    """
    if A.itemsize != 4 or B.itemsize != 4 or out.itemsize != 4:
        raise ValueError("gemm_into takes float32 arrays")
    M, K = A.shape
    N = B.shape[1]
    wide = WIDE and N % WIDE_COLS == 0
    _gemm_blocks(A.ctypes.data, A.strides[0] // 4, A.strides[1] // 4, B.ctypes.data,
                 B.strides[0] // 4, out.ctypes.data, out.strides[0] // 4, M, K, N, wide,
                 1 if accumulate else 0)
    nfull = N - N % BLOCK_COLS
    if nfull < N:
        for i in range(M):
            for j in range(nfull, N):
                s = out[i, j] if accumulate else np.float32(0.0)
                for r in range(K):
                    s += A[i, r] * B[r, j]
                out[i, j] = s


@njit(**JIT_OPTIONS)
def gemm_rows(a, lda, b, c, M, K, N, accumulate):
    """C[M, N] (+)= A[M, K] @ B[K, N] on row-major float32 arrays given by address (A's
    rows lda apart, B's and C's N apart), N a multiple of BLOCK_COLS: gemm_into's blocks
    without its checks and leftover columns, for kernels whose shapes guarantee them
    (Winograd's tile products with 16-channel vectors: 1.05-1.12x np.dot's forward at 16-32
    channels, against gemm_into's 1.03-1.06x)."""
    _gemm_blocks(a, lda, 1, b, N, c, N, M, K, N, WIDE and N % WIDE_COLS == 0,
                 1 if accumulate else 0)


@njit(**JIT_OPTIONS)
def gemm_cols(a, lda, b, c, M, K, N, accumulate):
    """gemm_rows with A read transposed: C[M, N] (+)= A^T @ B for A[K, M] (rows lda
    apart), as Winograd's dW products S += V^T Z."""
    _gemm_blocks(a, 1, lda, b, N, c, N, M, K, N, WIDE and N % WIDE_COLS == 0,
                 1 if accumulate else 0)


if numba.config.DISABLE_JIT:  # kernels as plain Python: an @intrinsic exists only compiled

    def gemm_into(A, B, out, accumulate):  # noqa: F811  (the same contract, through numpy)
        if A.itemsize != 4 or B.itemsize != 4 or out.itemsize != 4:
            raise ValueError("gemm_into takes float32 arrays")
        if accumulate:
            out += A @ B
        else:
            np.matmul(A, B, out=out)


def own_gemm_variant(kernel, options, **swap):
    """`kernel` (an @njit kernel whose body branches on OWN_GEMM) again, compiled with
    `options` and with OWN_GEMM True, named as its module names it: its name + "_own" (so
    that numba caches it in files of its own, and cnncli.engine.warmup finds it).

    `swap`: other globals the copy sees instead (the own variants of serial helpers it
    calls). The copy sees the module's globals as they are when this is called: call it
    after everything the kernel refers to is defined."""
    py_func = getattr(kernel, "py_func", kernel)  # under NUMBA_DISABLE_JIT: the function
    names = dict(py_func.__globals__)
    names.update(OWN_GEMM=True, **swap)
    name = py_func.__name__ + "_own"
    copy = pytypes.FunctionType(py_func.__code__, names, name, py_func.__defaults__,
                                py_func.__closure__)
    copy.__qualname__ = name
    copy.__doc__ = py_func.__doc__
    copy.__module__ = py_func.__module__
    return njit(**options)(copy)


def small_gemm(A, B, out=None, accumulate=False):
    """Checked entry to gemm_into: float32 A[M, K], B[K, N] with unit stride along N,
    out[M, N] likewise (new when None). Returns out."""
    A = np.asarray(A)
    B = np.asarray(B)
    if A.dtype != np.float32 or B.dtype != np.float32:
        raise TypeError(f"A and B must be float32, got {A.dtype} and {B.dtype}")
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[0]:
        raise ValueError(f"A [M, K] and B [K, N] do not fit: {A.shape} and {B.shape}")
    if B.size and B.shape[1] > 1 and B.strides[1] != 4:
        raise ValueError("B must have unit stride along its columns")
    shape = (A.shape[0], B.shape[1])
    if out is None:
        if accumulate:
            raise ValueError("accumulate needs an out array")
        out = np.empty(shape, dtype=np.float32)
    elif (out.dtype != np.float32 or out.shape != shape
          or (out.size and shape[1] > 1 and out.strides[1] != 4)):
        raise ValueError(f"out must be float32 {shape} with unit stride along its columns")
    if out.size and min(A.strides + B.strides + out.strides) < 0:
        raise ValueError("negative strides are not supported")
    if out.size:
        gemm_into(A, B, out, bool(accumulate))
    return out
