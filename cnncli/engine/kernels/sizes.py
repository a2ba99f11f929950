"""How the conv kernels split their work: the constants and the integer rules built on them.

Pure Python, defined once: the kernels (conv.py, winograd.py) size their buffers with these,
and the layers' memory plans (cnncli/layers/) count the same buffers with the same rules,
so a plan cannot drift from the kernel it describes.
"""

from __future__ import annotations

# Column band target size in bytes (per chunk buffer; 2 MiB L2 per core on the target,
# 1 MiB measured best, 256 KiB 10-20% slower).
COL_BLOCK_BYTES = 1024 * 1024
# Backward dW partial sums: at least this many chunks, so results do not depend on the
# thread count (up to this many threads).
MIN_CHUNKS = 8
# Use the direct kernel when a group's GEMM would be this small (Cg * Kg).
DIRECT_MAX_CG_KG = 8


def use_direct(cg: int, kg: int, groups: int) -> bool:
    """Grouped convs whose per-group GEMM is tiny run the direct kernel instead."""
    return groups > 1 and cg * kg <= DIRECT_MAX_CG_KG


def band_rows(oh: int, ow: int, groups: int, kdim: int, itemsize: int) -> int:
    """Output rows per im2col band: as many as fit COL_BLOCK_BYTES of columns."""
    per_row = max(1, ow * groups * kdim * itemsize)
    return max(1, min(oh, COL_BLOCK_BYTES // per_row))


def planar_geometry(oh: int, ow: int, fh: int, fw: int, dh: int, dw: int, c: int,
                    itemsize: int) -> tuple[int, int, int, int]:
    """(padded plane width Wp, output rows per band rb, input rows per band, positions per
    band) of conv.py's planar kernels: a band's cols [Fh*Fw*C x rb*OW] fit COL_BLOCK_BYTES."""
    wp = ow + (fw - 1) * dw
    rb = max(1, min(oh, COL_BLOCK_BYTES // max(1, fh * fw * c * ow * itemsize)))
    return wp, rb, rb + (fh - 1) * dh, rb * ow


def chunks(n: int, threads: int) -> int:
    """Chunks of the batch whose dW partial sums are added at the end."""
    return max(1, min(n, max(threads, MIN_CHUNKS)))


# ----------------------------------------------------------------------------- Winograd
# Tiles per block, forward / dx: V and M of a block stay in L2 (alpha^2 x tiles x C).
# 16-48 measured alike on the CIFAR layers, 64 and more slower.
WINOGRAD_BLOCK_TILES = 32
# Tiles per block, dW: the tiles are the GEMMs' inner dimension, and each chunk reduces
# its sums once, so small images (few tiles per row) want longer blocks; 32-128 measured
# alike within the (heavy) noise, 256 slower.
WINOGRAD_BLOCK_TILES_DW = 64


def winograd_rows_per_block(tw: int, nrow: int, tiles: int) -> int:
    """Tile rows per block: about ``tiles`` tiles, at least one tile row."""
    return max(1, min(nrow, round(tiles / tw)))


# Transforms on 16 float32 channels at a time in vector registers (winograd_vec.py) where a
# layer's channels allow: F(4x4), float32, a multiple of 16 channels. They need no
# phase-layout buffers.
WINOGRAD_VECTOR_LANES = 16


def winograd_vector(itemsize: int, m: int, channels: int) -> bool:
    """Whether the transform over `channels` channels runs on winograd_vec.py's tiles."""
    return (itemsize == 4 and m == 4 and channels > 0
            and channels % WINOGRAD_VECTOR_LANES == 0)


def winograd_forward_work(n: int, oh: int, ow: int, cin: int, cout: int, m: int,
                          threads: int, itemsize: int) -> tuple[int, int]:
    """(threads that run, numbers each allocates) of winograd.py's forward kernel, which
    dx runs too (cin: the channels it reads, cout: those it writes): per thread V and M
    (alpha^2 blocks of tiles), a row of zeros (the rows outside the image), and unless the
    vector tiles do the transforms (winograd_vector), the row transform of a tile row of
    input in phase layout and a tile row of output between its column and row transforms."""
    alpha = m + 2
    th, tw = -(-oh // m), -(-ow // m)
    nrow = n * th
    r = winograd_rows_per_block(tw, nrow, WINOGRAD_BLOCK_TILES)
    slots = r * tw + 1
    per = alpha * alpha * slots * (cin + cout) + m * (tw + 1) * cin
    if not winograd_vector(itemsize, m, cin):
        per += alpha * m * (tw + 1) * cin
    if not winograd_vector(itemsize, m, cout):
        per += alpha * m * tw * cout
    return min(threads, -(-nrow // r)), per


def winograd_weights_chunks(n: int, oh: int, ow: int, m: int, threads: int) -> int:
    """dW partial sums of winograd.py's backward-weights kernel (MIN_CHUNKS as conv.py)."""
    tw = -(-ow // m)
    nrow = n * -(-oh // m)
    nblk = -(-nrow // winograd_rows_per_block(tw, nrow, WINOGRAD_BLOCK_TILES_DW))
    return max(1, min(nblk, max(threads, MIN_CHUNKS)))


def winograd_weights_work(n: int, oh: int, ow: int, c: int, k: int, m: int,
                          threads: int, itemsize: int) -> tuple[int, int]:
    """(threads that run, numbers each holds) of the backward-weights kernel: V and Z
    blocks, a row of zeros and (unless the vector tiles do it) the input tile row's
    transform, a row of zeros (dy's rows past the image) and (likewise) the transform of a
    tile row of dy, and one GEMM's result. The wrapper allocates them for every running
    thread before the parallel loop; the chunks' alpha^2 [C x K] sums are the wrapper's
    [chunks, alpha^2, C, K] array, not a thread's."""
    alpha = m + 2
    tw = -(-ow // m)
    nrow = n * -(-oh // m)
    r = winograd_rows_per_block(tw, nrow, WINOGRAD_BLOCK_TILES_DW)
    slots = r * tw + 1
    per = alpha * alpha * slots * (c + k) + m * (tw + 1) * c + m * tw * k + c * k
    if not winograd_vector(itemsize, m, c):
        per += alpha * m * (tw + 1) * c
    if not winograd_vector(itemsize, m, k):
        per += alpha * m * tw * k
    return min(threads, winograd_weights_chunks(n, oh, ow, m, threads)), per


# ------------------------------------------------------------------------ the own GEMM
# The im2col GEMMs (conv.py) run on kernels/microkernel.py instead of OpenBLAS where one
# group's filter matrix fits in L2 and either OpenBLAS runs an older core than numba
# compiles for (config.blas_narrower_than_jit: OPENBLAS_CORETYPE=Haswell on an AVX-512
# CPU) or numba compiles for AVX-512 and the filters fill the kernel's 16-wide blocks.
# Measured 2026-11-29 on the 2-core Xeon (AVX-512), one thread, own kernel / np.dot with
# the Haswell kernel forced: [256 x 144] by [144 x 32] (resnet20's stride-2 conv, a
# band) 3.3x, 1x1 [256 x 16] by [16 x 32] 3.1x, [512 x 288] by [288 x 64] 1.3x, the
# planar first layer [1024 x 27] by [27 x 32] 1.8x and its dW 3.1x; a VGG band
# [784 x 2304] by [2304 x 256] 0.5x (the filter matrix, 2.3 MB, streams from memory
# for every block of rows: OpenBLAS packs it). Against OpenBLAS's own AVX-512 kernel
# (2026-11-29, the EPYC VM): one thread, the stride-2 GEMMs 1.27-1.65x (forward, dW and
# dx alike), the 1x1 shortcuts 1.01-1.03x; per call (bench/ab_kernels.py --module conv,
# 2 threads) resnet20's strided convs forward 1.20-1.36x, backward 1.34-1.37x, a 3-channel
# im2col layer 1.00-1.05x; a resnet20 step 1.05x (on the Xeon, where dx stayed on np.dot,
# steps had read 0.96-1.02x). dx's product (dy @ W2^T, kdim wide) joins them where kdim
# fills the 16-wide blocks: the plain loop for leftover columns read 0.6x at 3 channels.
# The planar first layers keep the old rule: there the own kernel read 0.59-0.91x forward
# at 3 channels and 0.16x on LeNet's 1 -> 6 (6 filters: all leftover columns).
OWN_GEMM_MAX_WEIGHTS = 32 * 1024  # numbers in one group's filter matrix (128 KiB float32)
OWN_GEMM_BLOCK = 16  # float32 columns of the own kernel's narrowest block


def own_gemm(kdim: int, kg: int, itemsize: int, jit_avx512: bool,
             blas_narrower: bool) -> bool:
    """Whether a conv's im2col GEMMs (kdim x kg filter matrix per group) run on the
    engine's own kernel: float32 only (float64 stays on OpenBLAS), see above."""
    if itemsize != 4 or kdim * kg > OWN_GEMM_MAX_WEIGHTS:
        return False
    return blas_narrower or (jit_avx512 and kg % OWN_GEMM_BLOCK == 0)


def own_gemm_dx(kdim: int, kg: int, itemsize: int) -> bool:
    """Whether an own-kernel conv's dx product runs on it too (kdim fills the blocks), for
    which the wrapper lays out W2's transpose (the weights' size) before the kernel."""
    return itemsize == 4 and kdim % OWN_GEMM_BLOCK == 0 and kdim * kg <= OWN_GEMM_MAX_WEIGHTS


def own_planar(kdim: int, kg: int, itemsize: int, blas_narrower: bool) -> bool:
    """Whether a planar first layer's GEMMs run on the engine's own kernel: float32 where
    OpenBLAS runs an older core, see above."""
    return blas_narrower and itemsize == 4 and kdim * kg <= OWN_GEMM_MAX_WEIGHTS


# Winograd's tile products ([tiles x C] by [C x K], winograd.py) run on microkernel.py in
# float32 wherever numba compiles for AVX-512, whichever kernel OpenBLAS runs; float64
# (gradcheck) and AVX2-only machines stay on np.dot. Where OpenBLAS runs an older core the
# own kernel is 1.25-1.81x per call (the 2-core Xeon). With OpenBLAS's own AVX-512 kernel
# it had won only a little through gemm_into (forward 1.02-1.11x at up to 32 channels,
# 0.93-0.98x at 64, whole steps 0.99-1.00x); once the transforms ran on 16-channel vectors
# (winograd_vec.py) the products became half of a forward at 16 channels, and called
# without gemm_into's checks (microkernel.gemm_rows / gemm_cols) they measured, against
# np.dot, forward 1.12x / 1.05x / 1.01x, dx 1.11x / 1.06x / 1.03x, dW 1.10x / 1.02x /
# 1.01x at 16 / 32 / 64 channels (64 images, 2 threads, 2026-11-29, the EPYC VM).
# One rule per machine compiles one copy of each kernel (microkernel.own_gemm_variant),
# and `cnncli warmup` compiles the copy every net on that machine runs.


def own_winograd(itemsize: int, jit_avx512: bool) -> bool:
    """Whether Winograd's tile products run on the engine's own kernel: float32 where
    numba compiles for AVX-512, see above."""
    return itemsize == 4 and jit_avx512
