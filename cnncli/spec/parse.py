"""YAML spec -> frozen dataclasses, with the line of every layer kept for messages.

The format is the contract in docs/spec-format.md. This module only reads and
validates keys, types and ranges; shape arithmetic lives in `shapes.py`.
No numpy, no numba: `cnncli check` must start fast.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

ROUNDINGS = ("strict", "floor", "ceil")
LOSSES = ("softmax", "svm")
POOL_TYPES = ("max", "avg", "l2")
ACTIVATIONS = ("relu", "tanh", "sigmoid", "leaky_relu")
MAX_SPEC_BYTES = 4 * 2**20  # the largest bundled spec is 10 KB; anything near this is not a spec
MAX_YAML_NODES = 200_000  # values written in the file: bounds the loader's time and memory
MAX_ALIAS_NODES = 200_000  # values repeated by aliases: a "billion laughs" expands past this
MAX_LAYERS = 100_000  # layers after expanding `repeat`; nested repeats can multiply past any memory
MAX_INT = 2**31 - 1  # sizes beyond int32 are typos, and overflow float formatting downstream
_COLLECTION_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


class SpecError(Exception):
    """The file cannot be read or is not a spec at all (exit code 2).

    The file is kept apart from the message and named once in front of it, however many
    layers of the loader see the error go by (`str(exc)` is "net.yaml: the file is empty").
    """

    def __init__(self, message: str, source: str | None = None):
        super().__init__(message)
        self.message = message
        self.source = source

    def __str__(self) -> str:
        return f"{self.source}: {self.message}" if self.source else self.message


@dataclass(frozen=True)
class Problem:
    """One error or warning, tied to a place in the file."""

    message: str
    line: int | None = None
    layer: str | None = None
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"message": self.message, "line": self.line, "layer": self.layer, "fix": self.fix}


class SpecInvalid(Exception):
    """The file is a spec but the net it describes is invalid (exit code 1)."""

    def __init__(self, problems: list[Problem]):
        super().__init__("; ".join(p.message for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class Pair:
    """A setting that may differ between height and width."""

    h: int
    w: int

    def __str__(self) -> str:
        return str(self.h) if self.h == self.w else f"{self.h}x{self.w}"


@dataclass(frozen=True)
class Volume:
    """A W x H x D volume, printed as the notes print it: [55x55x96]."""

    w: int
    h: int
    d: int

    def __str__(self) -> str:
        return f"[{self.w}x{self.h}x{self.d}]"

    @property
    def size(self) -> int:
        return self.w * self.h * self.d


@dataclass(frozen=True)
class Layer:
    name: str
    line: int | None

    @property
    def kind(self) -> str:
        return type(self).__name__.lower()


@dataclass(frozen=True)
class Conv(Layer):
    filters: int
    size: Pair
    stride: Pair
    pad: Pair
    dilation: Pair
    groups: int
    bias: bool
    rounding: str | None
    pad_same: bool = False


@dataclass(frozen=True)
class Local(Layer):
    filters: int
    size: Pair
    stride: Pair
    pad: Pair
    dilation: Pair
    bias: bool
    rounding: str | None
    pad_same: bool = False


@dataclass(frozen=True)
class Pool(Layer):
    size: Pair | None  # None only for global pooling
    stride: Pair | None
    pad: Pair
    type: str
    is_global: bool
    rounding: str | None


@dataclass(frozen=True)
class FC(Layer):
    units: int
    bias: bool


@dataclass(frozen=True)
class Activation(Layer):
    function: str  # relu | tanh | sigmoid | leaky_relu
    slope: float = 0.01

    @property
    def kind(self) -> str:
        return self.function


@dataclass(frozen=True)
class BatchNorm(Layer):
    eps: float
    momentum: float


@dataclass(frozen=True)
class Dropout(Layer):
    p: float


@dataclass(frozen=True)
class LRN(Layer):
    size: int
    alpha: float
    beta: float
    k: float


@dataclass(frozen=True)
class Repeat(Layer):
    """[CONV -> RELU]*N: the copies are expanded at load time, one tuple per pass."""

    count: int
    passes: tuple[tuple[Node, ...], ...]


@dataclass(frozen=True)
class Residual(Layer):
    """out = body(x) + shortcut(x); an empty shortcut is the identity."""

    body: tuple[Node, ...]
    shortcut: tuple[Node, ...]


@dataclass(frozen=True)
class Concat(Layer):
    """Depth concatenation of branches that all see the same input (Inception)."""

    branches: tuple[tuple[Node, ...], ...]


Node = Union[Conv, Local, Pool, FC, Activation, BatchNorm, Dropout, LRN, Repeat, Residual, Concat]
PARAM_LAYERS = (Conv, Local, FC, BatchNorm)


@dataclass(frozen=True)
class Spec:
    name: str
    input: Volume
    loss: str | None
    rounding: str
    layers: tuple[Node, ...]
    source: str = "<memory>"
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


# --------------------------------------------------------------------------- YAML with lines

_MERGE_TAG = "tag:yaml.org,2002:merge"
_TOO_LARGE = f"larger than {MAX_SPEC_BYTES // 2**20} MiB; a spec is a small YAML file"
_READ_CHUNK = 2**16


class _Loader(yaml.SafeLoader):
    """The safe loader; tags other than YAML's own are refused by SafeLoader itself.

    It also bounds what it builds: the values written in the file (counted as they are
    composed, before any is kept) and the values that aliases repeat (counted as the tree is
    converted). And it remembers how many pairs of each mapping came from `<<:` merges, so
    that a key written twice is told apart from a key that overrides a merged one.
    """

    def __init__(self, stream: str):
        super().__init__(stream)
        self.composed = 0
        self.converted: set[int] = set()  # ids of the nodes converted so far
        self.repeated = 0  # conversions of a node met before: copies made by aliases
        self.merged: dict[int, int] = {}  # id(mapping node) -> merged pairs at its front

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self.composed += 1
        if self.composed > MAX_YAML_NODES:
            raise SpecError(f"the file holds more than {MAX_YAML_NODES:,} YAML values; "
                            "a spec is a small file")
        return super().compose_node(parent, index)

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        if id(node) in self.merged:  # flattened already, when an alias meets it again
            return
        written = sum(1 for key, _ in node.value if key.tag != _MERGE_TAG)
        super().flatten_mapping(node)  # merged pairs go in front of the written ones
        self.merged[id(node)] = len(node.value) - written


@dataclass
class _Located:
    """A YAML value with the 1-based line it starts on."""

    value: Any
    line: int
    plain: bool = False  # written as a plain (unquoted) scalar; see _Reader.number


def _is_plain_scalar(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.style is None


def _duplicate_key(key: Any, node: yaml.Node, first: yaml.Node) -> str:
    here, there = node.start_mark, first.start_mark
    if here.line == there.line:  # a flow mapping on one line: the columns tell them apart
        return (f"duplicate key {_show(key)} at line {here.line + 1}, column "
                f"{here.column + 1} (first at column {there.column + 1})")
    return f"duplicate key {_show(key)} at line {here.line + 1} (first at line {there.line + 1})"


def _to_python(node: yaml.Node, loader: _Loader) -> Any:
    """Convert a composed node tree to plain data, wrapping mappings' values with lines.

    A node converted a second time is a copy made by an alias; counting those copies bounds
    alias expansion ("billion laughs"), which the file's size alone does not.
    """
    if id(node) in loader.converted:
        loader.repeated += 1
        if loader.repeated > MAX_ALIAS_NODES:
            raise SpecError(f"its aliases expand the YAML by more than {MAX_ALIAS_NODES:,} "
                            "nodes (an alias bomb?)")
    else:
        loader.converted.add(id(node))
    if isinstance(node, yaml.CollectionNode) and node.tag not in _COLLECTION_TAGS:
        # SafeLoader refuses unknown tags only when it constructs; we build collections ourselves
        tag = node.tag.replace("tag:yaml.org,2002:", "!!")
        raise SpecError(f"line {node.start_mark.line + 1}: the YAML tag {tag} is not "
                        "allowed in a spec")
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        merged = loader.merged[id(node)]
        out: dict[Any, Any] = {}
        written: dict[Any, yaml.Node] = {}  # keys written in this mapping, not merged in
        for index, (key_node, value_node) in enumerate(node.value):
            key = _to_python(key_node, loader)
            if isinstance(key, _Located):
                key = key.value
            if isinstance(key, (dict, list)):
                raise SpecError(f"line {key_node.start_mark.line + 1}: a key must be a plain word")
            if index >= merged:
                # YAML says keys are unique; PyYAML keeps the last, which would silently
                # drop a whole `layers:` list or a setting written twice
                if key in written:
                    raise SpecError(_duplicate_key(key, key_node, written[key]))
                written[key] = key_node
            out[key] = _Located(_to_python(value_node, loader), value_node.start_mark.line + 1,
                                _is_plain_scalar(value_node))
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_Located(_to_python(item, loader), item.start_mark.line + 1,
                         _is_plain_scalar(item))
                for item in node.value]
    return loader.construct_object(node, deep=True)


def _plain(value: Any) -> Any:
    """Strip line wrappers (for error messages and for the raw spec kept in reports)."""
    if isinstance(value, _Located):
        return _plain(value.value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def read_yaml(text: str, source: str) -> Any:
    """YAML text -> plain data whose values carry their lines; raises SpecError."""
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError(_TOO_LARGE, source)
    try:
        loader = _Loader(text)  # a str is checked for unprintable characters right here
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, max(0, exc.position)) + 1
        raise SpecError(f"not valid YAML at line {line}: {str(exc).splitlines()[0]}",
                        source) from None
    try:
        node = loader.get_single_node()
        if node is None:
            raise SpecError("the file is empty")
        return _to_python(node, loader)
    except yaml.constructor.ConstructorError as exc:
        where = f" (line {exc.problem_mark.line + 1})" if exc.problem_mark else ""
        raise SpecError(f"{exc.problem}{where}", source) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"not valid YAML{where}: {problem}", source) from None
    except RecursionError:
        raise SpecError("the YAML is nested too deeply", source) from None
    except SpecError as exc:  # raised above without the file, which is named here, once
        exc.source = exc.source or source
        raise
    finally:
        loader.dispose()


def _show(value: Any, limit: int = 60) -> str:
    """A value as a message shows it: plain data, one line, cut short if long."""
    text = repr(_plain(value))
    return text if len(text) <= limit else text[:limit - 3] + "..."


# --------------------------------------------------------------------------- validation

# A decimal number as YAML 1.2 writes one. PyYAML follows YAML 1.1, whose floats need a dot
# and a signed exponent, so it reads 1e-5 and 1.0e5 as text; the number reader takes such a
# plain scalar as the number it looks like. A quoted one stays text, as YAML says.
_FLOAT_LITERAL = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")


class _Reader:
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
            self.error(f"{where}: expected an integer >= {minimum}, got {_show(value)}", line)
            return max(minimum, 1)
        if value > MAX_INT:
            self.error(f"{where}: {value} is too large (at most {MAX_INT:,})", line)
            return max(minimum, 1)
        return value

    def number(self, where: str, loc: _Located, lo: float, hi: float,
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
                       f"got {_show(value)}{quoted}", line)
            return lo if not lo_open else (lo + hi) / 2 if hi != float("inf") else lo + 1
        return float(value)

    def boolean(self, where: str, value: Any, line: int) -> bool:
        if not isinstance(value, bool):
            self.error(f"{where}: expected true or false, got {_show(value)}", line)
            return True
        return value

    def pair(self, where: str, loc: _Located | None, default: int, minimum: int) -> Pair:
        if loc is None:
            return Pair(default, default)
        value = loc.value
        if isinstance(value, dict):
            unknown = set(value) - {"height", "width"}
            if unknown or len(value) != 2:
                self.error(f"{where}: expected an integer or {{height: H, width: W}}, "
                           f"got {_show(value)}", loc.line)
                return Pair(default, default)
            h = self.integer(f"{where}.height", value["height"].value, loc.line, minimum)
            w = self.integer(f"{where}.width", value["width"].value, loc.line, minimum)
            return Pair(h, w)
        n = self.integer(where, value, loc.line, minimum)
        return Pair(n, n)

    def rounding(self, where: str, loc: _Located | None) -> str | None:
        if loc is None:
            return None
        if not isinstance(loc.value, str) or loc.value not in ROUNDINGS:
            self.error(f"{where}: rounding must be one of {', '.join(ROUNDINGS)}, "
                       f"got {_show(loc.value)}", loc.line)
            return None
        return str(loc.value)

    def settings(self, where: str, loc: _Located, allowed: set[str],
                 shorthand: str | None) -> dict[str, _Located]:
        """A layer's settings mapping; a scalar is the shorthand key (`fc: 4096`)."""
        value = loc.value
        if value is None:
            return {}
        if not isinstance(value, dict):
            if shorthand is None:
                self.error(f"{where}: expected a mapping of settings, got {_show(value)}",
                           loc.line)
                return {}
            return {shorthand: loc}
        for key in value:
            if key not in allowed:
                self.error(f"{where}: unknown setting {_show(key)} "
                           f"(known: {', '.join(sorted(allowed))})",
                           value[key].line)
        return {k: v for k, v in value.items() if k in allowed}


_CONV_KEYS = {"filters", "size", "stride", "pad", "dilation", "bias", "groups", "rounding"}
_POOL_KEYS = {"size", "stride", "pad", "type", "global", "rounding"}
_LAYER_TYPES = ("conv", "local", "pool", "fc", "relu", "tanh", "sigmoid", "leaky_relu",
                "batchnorm", "dropout", "lrn")
_BLOCK_TYPES = ("repeat", "residual", "concat")
_PREFIX = {"conv": "conv", "local": "local", "pool": "pool", "fc": "fc", "relu": "relu",
           "tanh": "tanh", "sigmoid": "sigmoid", "leaky_relu": "lrelu", "batchnorm": "bn",
           "dropout": "drop", "lrn": "lrn", "repeat": "repeat", "residual": "res",
           "concat": "concat"}


class _Scope:
    """Automatic names within one sequence: conv1, conv2, pool1, ... prefixed by the path."""

    def __init__(self, path: str):
        self.path = path
        self.counts: dict[str, int] = {}

    def auto_name(self, kind: str) -> str:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return self.full(f"{_PREFIX[kind]}{self.counts[kind]}")

    def full(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name


def _parse_sequence(r: _Reader, items: Any, line: int, scope: _Scope, where: str,
                    rename: str = "") -> tuple[Node, ...]:
    if not isinstance(items, list):
        r.error(f"{where}: expected a list of layers, got {_show(items)}", line)
        return ()
    nodes: list[Node] = []
    for index, item in enumerate(items):
        r.layer_count += 1
        if r.layer_count > MAX_LAYERS:
            if r.layer_count == MAX_LAYERS + 1:  # said once; every enclosing sequence stops
                r.error(f"{where}[{index}]: the net expands to more than {MAX_LAYERS:,} layers "
                        "(repeats expanded)", item.line)
            return tuple(nodes)
        node = _parse_item(r, item, scope, f"{where}[{index}]", rename)
        if node is not None:
            nodes.append(node)
    return tuple(nodes)


def _parse_item(r: _Reader, loc: _Located, scope: _Scope, where: str,
                rename: str) -> Node | None:
    value, line = loc.value, loc.line
    if isinstance(value, str):
        kind, settings_loc, explicit = value, _Located(None, line), None
    elif isinstance(value, dict):
        explicit_loc = value.get("name")
        explicit = None
        if explicit_loc is not None:
            if not isinstance(explicit_loc.value, str) or not re.fullmatch(
                    r"[A-Za-z_][A-Za-z0-9_\-]*", explicit_loc.value):
                r.error(f"{where}.name: expected a word (letters, digits, _ or -), "
                        f"got {_show(explicit_loc.value)}", explicit_loc.line)
            else:
                explicit = explicit_loc.value
        kinds = [k for k in value if k != "name"]
        block_extra = {"layers"} if "repeat" in kinds else set()
        kinds = [k for k in kinds if k not in block_extra]
        if len(kinds) != 1:
            r.error(f"{where}: a layer is one type key ({', '.join(_LAYER_TYPES + _BLOCK_TYPES)})"
                    f" with its settings, got keys {sorted(str(k) for k in value)}", line)
            return None
        kind = kinds[0]
        settings_loc = value[kind]
        if kind == "repeat":
            settings_loc = _Located({"count": value["repeat"],
                                     "layers": value.get("layers", _Located(None, line))}, line)
    else:
        r.error(f"{where}: expected a layer (a word like 'relu' or a mapping like "
                f"'conv: {{...}}'), got {_show(value)}", line)
        return None
    if not isinstance(kind, str) or kind not in _LAYER_TYPES + _BLOCK_TYPES:
        r.error(f"{where}: unknown layer type {_show(kind)} "
                f"(known: {', '.join(_LAYER_TYPES + _BLOCK_TYPES)})", line)
        return None
    if explicit is not None:
        name = scope.full(explicit + rename)
    elif kind == "repeat":
        name = scope.full(f"repeat{scope.counts.get('repeat', 0) + 1}")
        scope.counts["repeat"] = scope.counts.get("repeat", 0) + 1
    else:
        name = scope.auto_name(kind)
    if kind != "repeat":
        if name in r.names:
            r.error(f"{where}: the name {name!r} is used twice (first at line {r.names[name]}); "
                    "names must be unique in a net", line, name)
        r.names[name] = line
    here = f"{where} ({name})"
    return _LAYER_PARSERS[kind](r, settings_loc, name, line, here, scope, rename)


def _conv_like(r: _Reader, loc: _Located, name: str, line: int, where: str,
               local: bool) -> Conv | Local:
    keys = set(_CONV_KEYS) - ({"groups"} if local else set())
    s = r.settings(where, loc, keys, None)
    for required in ("filters", "size"):
        if required not in s:
            r.error(f"{where}: '{required}' is required", line, name)
    filters = r.integer(f"{where}.filters", s["filters"].value, s["filters"].line) \
        if "filters" in s else 1
    size = r.pair(f"{where}.size", s.get("size"), 1, 1)
    stride = r.pair(f"{where}.stride", s.get("stride"), 1, 1)
    dilation_loc = s.get("dilation")
    if dilation_loc is not None and type(dilation_loc.value) is int and dilation_loc.value == 0:
        r.error(f"{where}.dilation: 0 is not allowed; dilation 1 is an ordinary convolution "
                "(the CS231n notes call that 'dilation 0')", dilation_loc.line, name)
        dilation_loc = None
    dilation = r.pair(f"{where}.dilation", dilation_loc, 1, 1)
    pad_loc, pad_same = s.get("pad"), False
    if pad_loc is not None and isinstance(pad_loc.value, str) and pad_loc.value == "same":
        pad_same = True
        odd = size.h % 2 == 1 and size.w % 2 == 1
        if not odd or stride.h != 1 or stride.w != 1:
            r.error(f"{where}.pad: 'same' needs an odd size and stride 1 "
                    f"(size {size}, stride {stride}); write the padding as a number", pad_loc.line,
                    name)
        pad = Pair(dilation.h * (size.h - 1) // 2, dilation.w * (size.w - 1) // 2)
    else:
        pad = r.pair(f"{where}.pad", pad_loc, 0, 0)
    bias = r.boolean(f"{where}.bias", s["bias"].value, s["bias"].line) if "bias" in s else True
    rounding = r.rounding(f"{where}.rounding", s.get("rounding"))
    if local:
        return Local(name, line, filters, size, stride, pad, dilation, bias, rounding, pad_same)
    groups = r.integer(f"{where}.groups", s["groups"].value, s["groups"].line) \
        if "groups" in s else 1
    if filters % groups:
        r.error(f"{where}: filters ({filters}) must be divisible by groups ({groups})", line, name)
    return Conv(name, line, filters, size, stride, pad, dilation, groups, bias, rounding, pad_same)


def _parse_conv(r, loc, name, line, where, scope, rename):  # type: ignore[no-untyped-def]
    return _conv_like(r, loc, name, line, where, local=False)


def _parse_local(r, loc, name, line, where, scope, rename):  # type: ignore[no-untyped-def]
    return _conv_like(r, loc, name, line, where, local=True)


def _parse_pool(r: _Reader, loc: _Located, name: str, line: int, where: str, scope: _Scope,
                rename: str) -> Pool:
    s = r.settings(where, loc, _POOL_KEYS, None)
    is_global = r.boolean(f"{where}.global", s["global"].value, s["global"].line) \
        if "global" in s else False
    pool_type = "max"
    if "type" in s:
        if not isinstance(s["type"].value, str) or s["type"].value not in POOL_TYPES:
            r.error(f"{where}.type: expected one of {', '.join(POOL_TYPES)}, "
                    f"got {_show(s['type'].value)}", s["type"].line, name)
        else:
            pool_type = s["type"].value
    rounding = r.rounding(f"{where}.rounding", s.get("rounding"))
    if is_global:
        for key in ("size", "stride", "pad"):
            if key in s:
                r.error(f"{where}: '{key}' has no meaning with global: true", s[key].line, name)
        return Pool(name, line, None, None, Pair(0, 0), pool_type, True, rounding)
    if "size" not in s:
        r.error(f"{where}: 'size' is required (or global: true)", line, name)
    size = r.pair(f"{where}.size", s.get("size"), 2, 1)
    stride = r.pair(f"{where}.stride", s["stride"], 1, 1) if "stride" in s else size
    pad = r.pair(f"{where}.pad", s.get("pad"), 0, 0)
    return Pool(name, line, size, stride, pad, pool_type, False, rounding)


def _parse_fc(r: _Reader, loc: _Located, name: str, line: int, where: str, scope: _Scope,
              rename: str) -> FC:
    s = r.settings(where, loc, {"units", "bias"}, "units")
    if "units" not in s:
        r.error(f"{where}: 'units' is required (or write fc: 4096)", line, name)
    units = r.integer(f"{where}.units", s["units"].value, s["units"].line) if "units" in s else 1
    bias = r.boolean(f"{where}.bias", s["bias"].value, s["bias"].line) if "bias" in s else True
    return FC(name, line, units, bias)


def _make_activation(function: str):  # type: ignore[no-untyped-def]
    def parse(r: _Reader, loc: _Located, name: str, line: int, where: str, scope: _Scope,
              rename: str) -> Activation:
        allowed = {"slope"} if function == "leaky_relu" else set()
        s = r.settings(where, loc, allowed, "slope" if allowed else None)
        slope = r.number(f"{where}.slope", s["slope"], 0.0, 1.0) \
            if "slope" in s else 0.01
        return Activation(name, line, function, slope)
    return parse


def _parse_batchnorm(r: _Reader, loc: _Located, name: str, line: int, where: str,
                     scope: _Scope, rename: str) -> BatchNorm:
    s = r.settings(where, loc, {"eps", "momentum"}, None)
    eps = r.number(f"{where}.eps", s["eps"], 0.0, 1.0, lo_open=True) \
        if "eps" in s else 1e-5
    momentum = r.number(f"{where}.momentum", s["momentum"], 0.0, 1.0) \
        if "momentum" in s else 0.1
    return BatchNorm(name, line, eps, momentum)


def _parse_dropout(r: _Reader, loc: _Located, name: str, line: int, where: str, scope: _Scope,
                   rename: str) -> Dropout:
    s = r.settings(where, loc, {"p"}, "p")
    p = r.number(f"{where}.p", s["p"], 0.0, 1.0, hi_open=True) \
        if "p" in s else 0.5
    return Dropout(name, line, p)


def _parse_lrn(r: _Reader, loc: _Located, name: str, line: int, where: str, scope: _Scope,
               rename: str) -> LRN:
    s = r.settings(where, loc, {"size", "alpha", "beta", "k"}, None)
    size = r.integer(f"{where}.size", s["size"].value, s["size"].line) if "size" in s else 5
    inf = float("inf")
    alpha = r.number(f"{where}.alpha", s["alpha"], 0.0, inf) \
        if "alpha" in s else 1e-4
    beta = r.number(f"{where}.beta", s["beta"], 0.0, inf) \
        if "beta" in s else 0.75
    k = r.number(f"{where}.k", s["k"], 0.0, inf) if "k" in s else 1.0
    return LRN(name, line, size, alpha, beta, k)


def _parse_repeat(r: _Reader, loc: _Located, name: str, line: int, where: str, scope: _Scope,
                  rename: str) -> Repeat:
    if not isinstance(loc.value, dict):  # a bare `- repeat`
        r.error(f"{where}: write a repeat block as 'repeat: N' with 'layers:' beside it",
                line, name)
        return Repeat(name, line, 1, ())
    count_loc, layers_loc = loc.value["count"], loc.value["layers"]
    count = r.integer(f"{where}.repeat", count_loc.value, count_loc.line)
    if layers_loc.value is None:
        r.error(f"{where}: a repeat block needs 'layers:' beside 'repeat: N'", line, name)
        return Repeat(name, line, count, ())
    # The copies continue the enclosing sequence's numbering (VGG's conv1..conv13);
    # an explicit name inside gets the pass number appended (name_1, name_2, ...).
    passes: list[tuple[Node, ...]] = []
    for i in range(count):
        passes.append(_parse_sequence(r, layers_loc.value, layers_loc.line, scope,
                                      f"{where}.layers", rename=f"{rename}_{i + 1}"))
        if r.layer_count > MAX_LAYERS:
            break  # reported by _parse_sequence
    return Repeat(name, line, count, tuple(passes))


def _parse_residual(r: _Reader, loc: _Located, name: str, line: int, where: str, scope: _Scope,
                    rename: str) -> Residual:
    s = r.settings(where, loc, {"layers", "shortcut"}, None)
    if "layers" not in s:
        r.error(f"{where}: a residual block needs 'layers:' (its body)", line, name)
        return Residual(name, line, (), ())
    body = _parse_sequence(r, s["layers"].value, s["layers"].line, _Scope(name),
                           f"{where}.layers")
    shortcut: tuple[Node, ...] = ()
    if "shortcut" in s and s["shortcut"].value is not None:
        shortcut = _parse_sequence(r, s["shortcut"].value, s["shortcut"].line,
                                   _Scope(f"{name}.shortcut"), f"{where}.shortcut")
    return Residual(name, line, body, shortcut)


def _parse_concat(r: _Reader, loc: _Located, name: str, line: int, where: str, scope: _Scope,
                  rename: str) -> Concat:
    if not isinstance(loc.value, list) or len(loc.value) < 2:
        r.error(f"{where}: concat takes a list of two or more branches, each a list of layers",
                line, name)
        return Concat(name, line, ())
    branches = tuple(
        _parse_sequence(r, branch.value, branch.line, _Scope(f"{name}.b{i + 1}"),
                        f"{where}[{i}]")
        for i, branch in enumerate(loc.value))
    return Concat(name, line, branches)


_LAYER_PARSERS: dict[str, Any] = {
    "conv": _parse_conv, "local": _parse_local, "pool": _parse_pool, "fc": _parse_fc,
    "batchnorm": _parse_batchnorm, "dropout": _parse_dropout, "lrn": _parse_lrn,
    "repeat": _parse_repeat, "residual": _parse_residual, "concat": _parse_concat,
    **{a: _make_activation(a) for a in ACTIVATIONS},
}


def parse_volume(text: str, where: str = "input") -> Volume:
    """'224x224x3' (WIDTH x HEIGHT x DEPTH) -> Volume; raises ValueError with a message."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*[xX×]\s*(\d+)\s*", str(text))
    if not m:
        raise ValueError(f"{where}: expected WIDTHxHEIGHTxDEPTH like 224x224x3, got {text!r}")
    w, h, d = (int(g) for g in m.groups())
    if min(w, h, d) < 1:
        raise ValueError(f"{where}: every size must be >= 1, got {text!r}")
    if max(w, h, d) > MAX_INT:
        raise ValueError(f"{where}: every size must be at most {MAX_INT:,}, got {text!r}")
    return Volume(w, h, d)


def _parse_input(r: _Reader, loc: _Located | None) -> Volume:
    if loc is None:
        r.error("input: required (e.g. input: 224x224x3, WIDTH x HEIGHT x DEPTH)", None)
        return Volume(1, 1, 1)
    value = loc.value
    if isinstance(value, list):
        r.error("input: a bare list is ambiguous (readers disagree on its order); write "
                "224x224x3 (WIDTH x HEIGHT x DEPTH) or {width: W, height: H, depth: D}", loc.line)
        return Volume(1, 1, 1)
    if isinstance(value, dict):
        missing = {"width", "height", "depth"} - set(value)
        extra = set(value) - {"width", "height", "depth"}
        if missing or extra:
            r.error(f"input: expected {{width: W, height: H, depth: D}}, got {_show(value)}",
                    loc.line)
            return Volume(1, 1, 1)
        w, h, d = (r.integer(f"input.{k}", value[k].value, value[k].line)
                   for k in ("width", "height", "depth"))
        return Volume(w, h, d)
    try:
        return parse_volume(value)
    except ValueError as exc:
        r.error(str(exc), loc.line)
        return Volume(1, 1, 1)


def parse_spec(data: Any, source: str = "<memory>") -> Spec:
    """Validate YAML data (from `read_yaml`, or plain dicts) into a Spec.

    Raises SpecError if it is not a spec at all, SpecInvalid with every problem found.
    """
    if not isinstance(data, _Located):
        data = _relocate(data)
    top = data.value
    if not isinstance(top, dict):
        raise SpecError("not a cnncli spec (expected a mapping with 'input' and "
                        f"'layers', got {type(_plain(top)).__name__})", source)
    if "layers" not in top:
        raise SpecError("not a cnncli spec (no 'layers:' key; see docs/spec-format.md)", source)
    r = _Reader()
    known = {"name", "input", "loss", "rounding", "layers", "description", "classes"}
    for key in top:
        if key not in known:
            r.error(f"unknown top-level key {_show(key)} (known: {', '.join(sorted(known))})",
                    top[key].line)
    name_loc = top.get("name")
    name = Path(source).stem
    if name_loc is not None:
        if isinstance(name_loc.value, (dict, list)) or name_loc.value is None:
            r.error(f"name: expected text, got {_show(name_loc.value)}", name_loc.line)
        else:
            name = str(name_loc.value)
    volume = _parse_input(r, top.get("input"))
    loss = None
    if "loss" in top:
        if top["loss"].value not in LOSSES:
            r.error(f"loss: expected one of {', '.join(LOSSES)}, got {_show(top['loss'].value)}",
                    top["loss"].line)
        else:
            loss = top["loss"].value
    rounding = r.rounding("rounding", top.get("rounding")) or "strict"
    layers_loc = top["layers"]
    layers = _parse_sequence(r, layers_loc.value, layers_loc.line, _Scope(""), "layers")
    if not layers and not r.problems:
        r.error("layers: the net has no layers", layers_loc.line)
    if r.problems:
        raise SpecInvalid(r.problems)
    return Spec(name, volume, loss, rounding, layers, source, _plain(top))


def _relocate(value: Any, line: int = 0) -> _Located:
    """Wrap plain Python data (a spec written as a dict) the way read_yaml does."""
    if isinstance(value, _Located):
        return value
    if isinstance(value, dict):
        return _Located({k: _relocate(v, line) for k, v in value.items()}, line)
    if isinstance(value, (list, tuple)):
        return _Located([_relocate(v, line) for v in value], line)
    return _Located(value, line)


def _read_text(path: Path) -> str:
    """The file as text, read in chunks: /dev/zero, a FIFO or a huge file is refused once it
    passes MAX_SPEC_BYTES (before any parsing), binary data where it stops being UTF-8."""
    source = str(path)
    decoder = codecs.getincrementaldecoder("utf-8")()
    raw: list[bytes] = []
    text: list[str] = []
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(min(_READ_CHUNK, MAX_SPEC_BYTES + 1 - size)):
            if size + len(chunk) > MAX_SPEC_BYTES:
                raise SpecError(_TOO_LARGE, source)
            pending = len(decoder.getstate()[0])  # bytes of a character cut by the last chunk
            raw.append(chunk)
            try:
                text.append(decoder.decode(chunk))
            except UnicodeDecodeError as exc:
                raise _not_text(b"".join(raw), size - pending + exc.start, source) from None
            size += len(chunk)
        try:
            text.append(decoder.decode(b"", final=True))
        except UnicodeDecodeError as exc:  # the file ends inside a character
            pending = len(exc.object)
            raise _not_text(b"".join(raw), size - pending + exc.start, source) from None
    return "".join(text)


def _not_text(data: bytes, at: int, source: str) -> SpecError:
    line = data.count(b"\n", 0, at) + 1
    return SpecError(f"not a text/YAML file (byte 0x{data[at]:02x} at line {line} is not "
                     "UTF-8)", source)


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file; raises SpecError / SpecInvalid."""
    path = Path(path)
    source = str(path)
    try:
        text = _read_text(path)
    except FileNotFoundError:
        raise SpecError("no such file", source) from None
    except IsADirectoryError:
        raise SpecError("is a directory, not a spec file", source) from None
    except OSError as exc:
        raise SpecError(f"cannot read ({exc.strerror})", source) from None
    except ValueError as exc:  # e.g. a NUL byte in the path
        raise SpecError(f"cannot read ({exc})", repr(source)) from None
    data = read_yaml(text, source)
    if not isinstance(data, dict):
        raise SpecError("not a cnncli spec (expected a mapping with 'input' and 'layers')",
                        source)
    try:
        return parse_spec(_Located(data, 1), source)
    except RecursionError:
        raise SpecError("the layers are nested too deeply", source) from None


def unrolled(nodes: tuple[Node, ...]) -> list[Node]:
    """A sequence with its `repeat` blocks written out (other blocks kept as they are)."""
    out: list[Node] = []
    for node in nodes:
        if isinstance(node, Repeat):
            for one_pass in node.passes:
                out.extend(unrolled(one_pass))
        else:
            out.append(node)
    return out


def walk(nodes: tuple[Node, ...]):  # type: ignore[no-untyped-def]
    """Every leaf layer in execution order (blocks expanded)."""
    for node in nodes:
        if isinstance(node, Repeat):
            for one_pass in node.passes:
                yield from walk(one_pass)
        elif isinstance(node, Residual):
            yield from walk(node.body)
            yield from walk(node.shortcut)
        elif isinstance(node, Concat):
            for branch in node.branches:
                yield from walk(branch)
        else:
            yield node
