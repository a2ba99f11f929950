"""Numba kernels: arrays and integers in, arrays out. No Python objects, no I/O.

Activations are NHWC inside the engine (measured faster than NCHW on this CPU
for every layer with more than 3 input channels); weights arrive in PyTorch's
layouts (conv OIHW) and each kernel wrapper documents what it takes.
"""
