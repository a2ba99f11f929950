"""Reading a net: safe YAML loading, validation into frozen layer settings, the bundled
architectures, and writing a spec back. No numpy, no numba."""
