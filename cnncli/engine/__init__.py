"""Running a net: the network of layers, the Numba kernels, optimizers, checkpoints,
gradient checks and profiling."""
