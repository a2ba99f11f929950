"""YAML spec -> a tree of layer settings, with the line of every layer kept for messages.

The format is the contract in docs/spec-format.md. This module reads the file's frame (the
top-level keys, the input, sequences of layers and their names) and hands each layer's
settings to its type (cnncli/layers/), found in the registry by its key. Shape arithmetic
lives in analysis/. No numpy, no numba: `cnncli check` must start fast.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Any

from cnncli.layers import REGISTRY
from cnncli.layers.base import LayerSpec, ParseContext
from cnncli.spec.loading import Located, plain, read_text, read_yaml, show
from cnncli.spec.reader import Reader, Scope
from cnncli.spec.types import (
    LOSSES,
    MAX_INT,
    MAX_LAYERS,
    ROUNDINGS,
    Pair,
    Problem,
    Spec,
    SpecError,
    SpecInvalid,
    Volume,
    unrolled,
    walk,
)

# what a caller of the spec reader needs, from one place
__all__ = ["LOSSES", "ROUNDINGS", "LayerSpec", "Pair", "Problem", "Spec", "SpecError",
           "SpecInvalid", "Volume", "load_spec", "parse_spec", "parse_volume", "read_yaml",
           "unrolled", "walk"]

_BLOCK_EXTRA = {"repeat": {"layers"}}  # keys a block writes beside its own (repeat: N, layers:)


def _parse_sequence(r: Reader, items: Any, line: int, scope: Scope, where: str,
                    rename: str = "") -> tuple[LayerSpec, ...]:
    if not isinstance(items, list):
        r.error(f"{where}: expected a list of layers, got {show(items)}", line)
        return ()
    nodes: list[LayerSpec] = []
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


def _parse_item(r: Reader, loc: Located, scope: Scope, where: str,
                rename: str) -> LayerSpec | None:
    value, line = loc.value, loc.line
    if isinstance(value, str):
        kind, settings_loc, explicit = value, Located(None, line), None
    elif isinstance(value, dict):
        explicit_loc = value.get("name")
        explicit = None
        if explicit_loc is not None:
            if not isinstance(explicit_loc.value, str) or not re.fullmatch(
                    r"[A-Za-z_][A-Za-z0-9_\-]*", explicit_loc.value):
                r.error(f"{where}.name: expected a word (letters, digits, _ or -), "
                        f"got {show(explicit_loc.value)}", explicit_loc.line)
            else:
                explicit = explicit_loc.value
        keys = [k for k in value if k != "name"]
        # a block may write keys beside its own (repeat: N with layers: under it)
        siblings = {s for k in keys if isinstance(k, str) and k in REGISTRY
                    for s in REGISTRY[k].sibling_keys}
        kinds = [k for k in keys if k not in siblings]
        if len(kinds) != 1:
            r.error(f"{where}: a layer is one type key ({', '.join(REGISTRY)})"
                    f" with its settings, got keys {sorted(str(k) for k in value)}", line)
            return None
        kind = kinds[0]
        settings_loc = value[kind]
        if isinstance(kind, str) and kind in REGISTRY and REGISTRY[kind].sibling_keys:
            settings_loc = Located({kind: value[kind], **{
                k: value.get(k, Located(None, line)) for k in REGISTRY[kind].sibling_keys}},
                line)
    else:
        r.error(f"{where}: expected a layer (a word like 'relu' or a mapping like "
                f"'conv: {{...}}'), got {show(value)}", line)
        return None
    if not isinstance(kind, str) or kind not in REGISTRY:
        r.error(f"{where}: unknown layer type {show(kind)} "
                f"(known: {', '.join(REGISTRY)})", line)
        return None
    layer_type = REGISTRY[kind]
    name = scope.full(explicit + rename) if explicit is not None else \
        scope.auto_name(kind, layer_type.prefix)
    if not layer_type.unrolls:  # a repeat's name is no layer's: its passes hold the layers
        if name in r.names:
            r.error(f"{where}: the name {name!r} is used twice (first at line {r.names[name]}); "
                    "names must be unique in a net", line, name)
        r.names[name] = line
    here = f"{where} ({name})"
    ctx = ParseContext(r, scope, rename, partial(_parse_sequence, r))
    return layer_type.parse(ctx, settings_loc, name, line, here)


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


def _parse_input(r: Reader, loc: Located | None) -> Volume:
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
            r.error(f"input: expected {{width: W, height: H, depth: D}}, got {show(value)}",
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
    if not isinstance(data, Located):
        data = _relocate(data)
    top = data.value
    if not isinstance(top, dict):
        raise SpecError("not a cnncli spec (expected a mapping with 'input' and "
                        f"'layers', got {type(plain(top)).__name__})", source)
    if "layers" not in top:
        raise SpecError("not a cnncli spec (no 'layers:' key; see docs/spec-format.md)", source)
    r = Reader()
    known = {"name", "input", "loss", "rounding", "layers", "description", "classes"}
    for key in top:
        if key not in known:
            r.error(f"unknown top-level key {show(key)} (known: {', '.join(sorted(known))})",
                    top[key].line)
    name_loc = top.get("name")
    name = Path(source).stem
    if name_loc is not None:
        if isinstance(name_loc.value, (dict, list)) or name_loc.value is None:
            r.error(f"name: expected text, got {show(name_loc.value)}", name_loc.line)
        else:
            name = str(name_loc.value)
    volume = _parse_input(r, top.get("input"))
    loss = None
    if "loss" in top:
        if top["loss"].value not in LOSSES:
            r.error(f"loss: expected one of {', '.join(LOSSES)}, got {show(top['loss'].value)}",
                    top["loss"].line)
        else:
            loss = top["loss"].value
    rounding = r.rounding("rounding", top.get("rounding")) or "strict"
    layers_loc = top["layers"]
    layers = _parse_sequence(r, layers_loc.value, layers_loc.line, Scope(""), "layers")
    if not layers and not r.problems:
        r.error("layers: the net has no layers", layers_loc.line)
    if r.problems:
        raise SpecInvalid(r.problems)
    return Spec(name, volume, loss, rounding, layers, source, plain(top))


def _relocate(value: Any, line: int = 0) -> Located:
    """Wrap plain Python data (a spec written as a dict) the way read_yaml does."""
    if isinstance(value, Located):
        return value
    if isinstance(value, dict):
        return Located({k: _relocate(v, line) for k, v in value.items()}, line)
    if isinstance(value, (list, tuple)):
        return Located([_relocate(v, line) for v in value], line)
    return Located(value, line)


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file; raises SpecError / SpecInvalid."""
    path = Path(path)
    source = str(path)
    try:
        text = read_text(path)
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
        return parse_spec(Located(data, 1), source)
    except RecursionError:
        raise SpecError("the layers are nested too deeply", source) from None

