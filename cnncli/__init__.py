"""cnncli: the CS231n ConvNet notes as a command-line tool.

Analyzer modules (spec, shapes, stats, render) never import numba, so
`cnncli check` and `cnncli memory` answer in a fraction of a second.
"""

__version__ = "0.1.0"
