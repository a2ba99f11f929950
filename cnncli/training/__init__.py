"""Training: data formats and the built-in set, the loop with its run directory, and
data-parallel training over MPI."""
