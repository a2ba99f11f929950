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


def chunks(n: int, threads: int) -> int:
    """Chunks of the batch whose dW partial sums are added at the end."""
    return max(1, min(n, max(threads, MIN_CHUNKS)))
