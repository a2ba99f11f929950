"""Winograd F(4x4, 3x3)'s transforms on 16 float32 channels at a time, in vector registers.

winograd.py's kernels call these for float32 layers whose channels come in multiples of 16
(`usable`); other layers, F(2x2) and float64 keep its row and column stages.

    in_tiles(x2, base, nrows, r0, u0, TW, C, zero, V, t0)        V[e, t0 + t] = B^T d B
    out_tiles(M, t0, TW, K, bias, y2, row, nr, OW)                y rows = A^T M A + bias
    grad_tiles(dy2, base, nrows, r0, TW, K, zero, Z, t0)          Z[e, t0 + t] = A dy A^T

One call handles a tile row (TW tiles) of one image; each tile and group of 16 channels
is one @intrinsic (LLVM vector IR, as microkernel.py's blocks): the tile's 36 (or 16)
vectors are loaded, transformed in registers and stored where the GEMMs read them (or
into y's rows). Why: winograd.py's stages are long vectorised loops over a whole tile
row, which needs a phase-layout buffer between the row and column stages and a loop per
column to fill it; at 16 channels (a row of a tile is one vector) that bookkeeping was
most of the transform's time. Loading a tile's vectors straight from the image rows and
transforming them in registers measured 1.5-2x faster for the input transform (64 images
at 32x32x16 0.54 -> 0.26 ms, 16x16x32 0.19 -> 0.11, 8x8x64 0.08 -> 0.05, 2 threads,
2026-11-29, the EPYC VM).

The arithmetic is winograd.py's, operation for operation and in the same order (rows
stage first, then columns; no fused multiply-adds): the results are bit-identical to its
stages, and tests/test_kernels_winograd.py checks that they are.

Padding: rows outside the image arrive as the address of a zero row (the caller's);
columns outside it are loaded from a clamped column and replaced by zero with a select,
so no load leaves the row.
"""

from __future__ import annotations

import numba
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from cnncli.config import JIT_OPTIONS
from cnncli.engine.kernels import sizes

LANES = sizes.WINOGRAD_VECTOR_LANES  # float32 channels per vector: one AVX-512 register

__all__ = ["usable", "in_tiles", "out_tiles", "grad_tiles"]


def usable(itemsize: int, tile: int, channels: int) -> bool:
    """Whether a transform over `channels` channels runs on these tiles: the memory plans'
    rule (sizes.winograd_vector: float32, F(4x4), a multiple of LANES channels), in
    compiled code (an @intrinsic has no plain-Python form)."""
    return sizes.winograd_vector(itemsize, tile, channels) and not numba.config.DISABLE_JIT


# ----------------------------------------------------------------------------- formulas
# Each takes and returns lists of vectors; the comments give winograd.py's scalar form.


def _bt(b, d, c):
    """B^T d over six values (winograd._in_rows / _in_cols)."""
    d0, d1, d2, d3, d4, d5 = d
    p = b.fsub(d4, b.fmul(c[4], d2))  # d4 - 4 d2
    q = b.fsub(d3, b.fmul(c[4], d1))  # d3 - 4 d1
    s = b.fsub(d4, d2)
    t = b.fmul(c[2], b.fsub(d3, d1))  # 2 (d3 - d1)
    return [b.fadd(b.fsub(b.fmul(c[4], d0), b.fmul(c[5], d2)), d4),  # 4 d0 - 5 d2 + d4
            b.fadd(p, q), b.fsub(p, q), b.fadd(s, t), b.fsub(s, t),
            b.fadd(b.fsub(b.fmul(c[4], d1), b.fmul(c[5], d3)), d5)]  # 4 d1 - 5 d3 + d5


def _at(b, m, c):
    """A^T m over six values, four out (winograd._out_cols / _out_rows without the bias)."""
    m0, m1, m2, m3, m4, m5 = m
    p = b.fadd(m1, m2)
    q = b.fsub(m1, m2)
    s = b.fadd(m3, m4)
    w = b.fsub(m3, m4)
    return [b.fadd(b.fadd(m0, p), s),  # m0 + p + s
            b.fadd(q, b.fmul(c[2], w)),  # q + 2 w
            b.fadd(p, b.fmul(c[4], s)),  # p + 4 s
            b.fadd(b.fadd(q, b.fmul(c[8], w)), m5)]  # q + 8 w + m5


def _a(b, y, c):
    """A y over four values, six out (winograd._grad_rows / _grad_cols)."""
    y0, y1, y2, y3 = y
    p = b.fadd(y0, y2)
    q = b.fadd(y1, y3)
    s = b.fadd(y0, b.fmul(c[4], y2))  # y0 + 4 y2
    w = b.fadd(b.fmul(c[2], y1), b.fmul(c[8], y3))  # 2 y1 + 8 y3
    return [y0, b.fadd(p, q), b.fsub(p, q), b.fadd(s, w), b.fsub(s, w), y3]


def _setup(builder):
    f32 = ir.FloatType()
    vec = ir.VectorType(f32, LANES)
    consts = {k: ir.Constant(vec, [float(k)] * LANES) for k in (0, 2, 4, 5, 8)}
    return f32, vec, consts


def _column(builder, u, width):
    """(in range, clamped column) for column u of a row `width` columns wide."""
    i64 = ir.IntType(64)
    zero = ir.Constant(i64, 0)
    last = builder.sub(width, ir.Constant(i64, 1))
    inside = builder.and_(builder.icmp_signed(">=", u, zero),
                          builder.icmp_signed("<", u, width))
    clamped = builder.select(builder.icmp_signed("<", u, zero), zero,
                             builder.select(builder.icmp_signed(">", u, last), last, u))
    return inside, clamped


def _load(builder, vec, base, offset):
    return builder.load(builder.bitcast(builder.gep(base, [offset]), vec.as_pointer()), align=4)


def _store(builder, vec, value, base, offset):
    builder.store(value, builder.bitcast(builder.gep(base, [offset]), vec.as_pointer()), align=4)


# ----------------------------------------------------------------------------- intrinsics


def _tile_intrinsic(n, formula):
    """An @intrinsic for a separable transform of an n x n tile into 6 x 6, 16 channels:

        tile(r0, r1, r2, r3, r4, r5, coff, u0, width, stride, dst, estride)

    the tile's n rows at addresses r0 .. r(n-1) (the rest unused), its channel group
    `coff` floats in, its first column u0 (columns outside [0, width) read as zero),
    `stride` floats from one column to the next; `formula` (n values -> 6) down each
    column, then along each row; the 36 vectors go to dst + e * estride floats."""

    @intrinsic
    def tile(typingctx, r0, r1, r2, r3, r4, r5, coff, u0, width, stride, dst, estride):
        sig = types.void(*[types.uintp] * 6, types.intp, types.intp, types.intp, types.intp,
                         types.uintp, types.intp)

        def codegen(context, builder, signature, args):
            coff, u0, width, stride, dst, estride = args[6:]
            f32, vec, c = _setup(builder)
            i64 = ir.IntType(64)
            ptrs = [builder.inttoptr(r, f32.as_pointer()) for r in args[:n]]
            down = []  # down[j]: the formula down column j (the rows stage)
            for j in range(n):
                inside, col = _column(builder, builder.add(u0, ir.Constant(i64, j)), width)
                off = builder.add(builder.mul(col, stride), coff)
                d = [builder.select(inside, _load(builder, vec, p, off), c[0]) for p in ptrs]
                down.append(formula(builder, d, c))
            out = builder.inttoptr(dst, f32.as_pointer())
            for a in range(6):
                row = formula(builder, [down[j][a] for j in range(n)], c)
                for b in range(6):
                    _store(builder, vec, row[b], out,
                           builder.mul(ir.Constant(i64, a * 6 + b), estride))
            return context.get_dummy_value()

        return sig, codegen

    return tile


# V[a * 6 + b] = (B^T d B)[a, b] of one 6x6 input tile
_in_tile = _tile_intrinsic(6, _bt)
# Z[a * 6 + b] = (A dy A^T)[a, b] of one 4x4 tile of dy (its rows r4, r5 go unread)
_grad_tile = _tile_intrinsic(4, _a)


@intrinsic
def _out_tile(typingctx, src, estride, bias, dst, ldy, stride, nr, nc):
    """y[i, b] = (A^T M A)[i, b] + bias of one tile, 16 channels, for rows i < nr and
    columns b < nc: M[e] at src + e * estride floats, the bias vector at `bias`, y's row i
    column b at dst + i * ldy + b * stride floats."""
    sig = types.void(types.uintp, types.intp, types.uintp, types.uintp, types.intp,
                     types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        src, estride, bias, dst, ldy, stride, nr, nc = args
        f32, vec, c = _setup(builder)
        i64 = ir.IntType(64)
        m = builder.inttoptr(src, f32.as_pointer())
        across = []  # across[a]: M A along row a (the columns stage)
        for a in range(6):
            vals = [_load(builder, vec, m, builder.mul(ir.Constant(i64, a * 6 + nu), estride))
                    for nu in range(6)]
            across.append(_at(builder, vals, c))
        bv = _load(builder, vec, builder.inttoptr(bias, f32.as_pointer()), ir.Constant(i64, 0))
        out = builder.inttoptr(dst, f32.as_pointer())
        for b in range(4):
            col = _at(builder, [across[a][b] for a in range(6)], c)
            for i in range(4):
                keep = builder.and_(builder.icmp_signed("<", ir.Constant(i64, i), nr),
                                    builder.icmp_signed("<", ir.Constant(i64, b), nc))
                with cgutils.if_likely(builder, keep):
                    off = builder.add(builder.mul(ir.Constant(i64, i), ldy),
                                      builder.mul(ir.Constant(i64, b), stride))
                    _store(builder, vec, builder.fadd(col[i], bv), out, off)
        return context.get_dummy_value()

    return sig, codegen


# ----------------------------------------------------------------------------- tile rows


@njit(**JIT_OPTIONS)
def _row_address(x2, r, nrows, base, zero):
    return x2[base + r].ctypes.data if 0 <= r < nrows else zero.ctypes.data


@njit(**JIT_OPTIONS)
def _transform_tiles(x2, base, nrows, r0, u0, TW, C, zero, V, t0, grad):
    """V[e, t0 + t, :] = the transform of the TW tiles whose rows start at row r0 and
    columns at u0 + 4 t (x2: rows base .. base + nrows, each W * C long; rows and columns
    outside read as zero; `zero` a zero row at least W * C long): with grad A dy A^T of
    4x4 tiles, else B^T d B of 6x6 ones."""
    W = x2.shape[1] // C
    a0 = _row_address(x2, r0, nrows, base, zero)
    a1 = _row_address(x2, r0 + 1, nrows, base, zero)
    a2 = _row_address(x2, r0 + 2, nrows, base, zero)
    a3 = _row_address(x2, r0 + 3, nrows, base, zero)
    a4 = _row_address(x2, r0 + 4, nrows, base, zero)
    a5 = _row_address(x2, r0 + 5, nrows, base, zero)
    estride = V.shape[1] * C
    out = V.ctypes.data + 4 * t0 * C
    for c0 in range(0, C, LANES):
        for t in range(TW):
            if grad:
                _grad_tile(a0, a1, a2, a3, a4, a5, c0, u0 + 4 * t, W, C,
                           out + 4 * (t * C + c0), estride)
            else:
                _in_tile(a0, a1, a2, a3, a4, a5, c0, u0 + 4 * t, W, C,
                         out + 4 * (t * C + c0), estride)


@njit(**JIT_OPTIONS)
def in_tiles(x2, base, nrows, r0, u0, TW, C, zero, V, t0):
    """V[e, t0 + t, :] = B^T d B of the TW tiles whose input rows start at image row r0
    and column u0 + 4 t (x2: image rows base .. base + nrows, each W * C long; rows and
    columns outside the image read as zero; `zero` a zero row at least W * C long)."""
    _transform_tiles(x2, base, nrows, r0, u0, TW, C, zero, V, t0, False)


@njit(**JIT_OPTIONS)
def out_tiles(M, t0, TW, K, bias, y2, row, nr, OW):
    """y2[row + i, (4 t + b) * K + k] = (A^T M A)[i, b] + bias[k] of the TW tiles at
    M[e, t0 + t, :], for i < nr and output columns 4 t + b < OW."""
    estride = M.shape[1] * K
    src = M.ctypes.data + 4 * t0 * K
    dst = y2[row].ctypes.data
    ldy = y2.shape[1]
    for k0 in range(0, K, LANES):
        for t in range(TW):
            _out_tile(src + 4 * (t * K + k0), estride, bias.ctypes.data + 4 * k0,
                      dst + 4 * (4 * t * K + k0), ldy, K, nr, min(4, OW - 4 * t))


@njit(**JIT_OPTIONS)
def grad_tiles(dy2, base, nrows, r0, TW, K, zero, Z, t0):
    """Z[e, t0 + t, :] = A dy A^T of the TW tiles of dy whose rows start at r0 and columns
    at 4 t (dy2: rows base .. base + nrows, each OW * K long; rows and columns past the
    image read as zero: their gradient is zero; `zero` at least OW * K long)."""
    _transform_tiles(dy2, base, nrows, r0, 0, TW, K, zero, Z, t0, True)
