"""Reading a layer's settings: typed scalar readers that record a problem and go on, so
every error of a spec is reported at once. The layer types (cnncli/layers/) use them."""

from __future__ import annotations

import re
from typing import Any

from cnncli.spec.loading import Located, show
from cnncli.spec.types import MAX_INT, ROUNDINGS, Pair, Problem

# A decimal number as YAML 1.2 writes one. PyYAML follows YAML 1.1, whose floats need a dot
# and a signed exponent, so it reads 1e-5 and 1.0e5 as text; the number reader takes such a
# plain scalar as the number it looks like. A quoted one stays text, as YAML says.
_FLOAT_LITERAL = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")


class Reader:
    """Walks the YAML and collects every problem, so all errors are reported at once."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.names: dict[str, int | None] = {}
        self.layer_count = 0  # layers read so far, repeats expanded (bounded by MAX_LAYERS)

    def error(self, message: str, line: int | None, layer: str | None = None) -> None:
        self.problems.append(Problem(message, line, layer))

    # scalar readers: return a default after recording the problem, so reading goes on
    def integer(self, where: str, value: Any, line: int, minimum: int = 1) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.error(f"{where}: expected an integer >= {minimum}, got {show(value)}", line)
            return max(minimum, 1)
        if value > MAX_INT:
            self.error(f"{where}: {value} is too large (at most {MAX_INT:,})", line)
            return max(minimum, 1)
        return value

    def number(self, where: str, loc: Located, lo: float, hi: float,
               lo_open: bool = False, hi_open: bool = False) -> float:
        value, line = loc.value, loc.line
        looks_like_float = isinstance(value, str) and bool(_FLOAT_LITERAL.fullmatch(value))
        if looks_like_float and loc.plain:
            value = float(value)  # 1e-5: text to YAML 1.1, a number to YAML 1.2 and to people
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            ok = ((value > lo if lo_open else value >= lo)
                  and (value < hi if hi_open else value <= hi))
        if not ok:
            left, right = "(" if lo_open else "[", ")" if hi_open else "]"
            quoted = " (quoted, so it is text: write it without quotes)" \
                if looks_like_float and not loc.plain else ""
            self.error(f"{where}: expected a number in {left}{lo}, {hi}{right}, "
                       f"got {show(value)}{quoted}", line)
            return lo if not lo_open else (lo + hi) / 2 if hi != float("inf") else lo + 1
        return float(value)

    def boolean(self, where: str, value: Any, line: int) -> bool:
        if not isinstance(value, bool):
            self.error(f"{where}: expected true or false, got {show(value)}", line)
            return True
        return value

    def pair(self, where: str, loc: Located | None, default: int, minimum: int) -> Pair:
        if loc is None:
            return Pair(default, default)
        value = loc.value
        if isinstance(value, dict):
            unknown = set(value) - {"height", "width"}
            if unknown or len(value) != 2:
                self.error(f"{where}: expected an integer or {{height: H, width: W}}, "
                           f"got {show(value)}", loc.line)
                return Pair(default, default)
            h = self.integer(f"{where}.height", value["height"].value, loc.line, minimum)
            w = self.integer(f"{where}.width", value["width"].value, loc.line, minimum)
            return Pair(h, w)
        n = self.integer(where, value, loc.line, minimum)
        return Pair(n, n)

    def rounding(self, where: str, loc: Located | None) -> str | None:
        if loc is None:
            return None
        if not isinstance(loc.value, str) or loc.value not in ROUNDINGS:
            self.error(f"{where}: rounding must be one of {', '.join(ROUNDINGS)}, "
                       f"got {show(loc.value)}", loc.line)
            return None
        return str(loc.value)

    def settings(self, where: str, loc: Located, allowed: set[str],
                 shorthand: str | None) -> dict[str, Located]:
        """A layer's settings mapping; a scalar is the shorthand key (`fc: 4096`)."""
        value = loc.value
        if value is None:
            return {}
        if not isinstance(value, dict):
            if shorthand is None:
                self.error(f"{where}: expected a mapping of settings, got {show(value)}",
                           loc.line)
                return {}
            return {shorthand: loc}
        for key in value:
            if key not in allowed:
                self.error(f"{where}: unknown setting {show(key)} "
                           f"(known: {', '.join(sorted(allowed))})",
                           value[key].line)
        return {k: v for k, v in value.items() if k in allowed}



class Scope:
    """Automatic names within one sequence: conv1, conv2, pool1, ... prefixed by the path."""

    def __init__(self, path: str):
        self.path = path
        self.counts: dict[str, int] = {}

    def auto_name(self, kind: str, prefix: str) -> str:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return self.full(f"{prefix}{self.counts[kind]}")

    def full(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

