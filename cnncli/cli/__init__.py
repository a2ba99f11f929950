"""The command line: `app` (the typer app, a leaf module nothing here imports), one module
per command or family of commands, shared options, and the one error boundary.

Each command parses its options, calls the library, renders, and lets errors through to
cnncli.cli.boundary. Heavy imports (numpy, numba, the engine) happen inside the commands,
so `check`, `list` and `memory` start in a fraction of a second.
"""
