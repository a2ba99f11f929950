"""What a net costs without running it: shapes, the per-layer report, the memory of a step.
Pure Python: `check`, `list` and `memory` import neither numpy nor numba."""
