"""Safe YAML loading with lines: every value keeps the line it starts on, for messages.

Bounded before anything is built: the file's bytes (read in chunks), the YAML values written,
and the copies aliases make. Duplicate keys are errors (PyYAML would keep the last).
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cnncli.spec.types import MAX_ALIAS_NODES, MAX_SPEC_BYTES, MAX_YAML_NODES, SpecError

_COLLECTION_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")
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
class Located:
    """A YAML value with the 1-based line it starts on."""

    value: Any
    line: int
    plain: bool = False  # written as a plain (unquoted) scalar; see _Reader.number


def _is_plain_scalar(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.style is None


def _duplicate_key(key: Any, node: yaml.Node, first: yaml.Node) -> str:
    here, there = node.start_mark, first.start_mark
    if here.line == there.line:  # a flow mapping on one line: the columns tell them apart
        return (f"duplicate key {show(key)} at line {here.line + 1}, column "
                f"{here.column + 1} (first at column {there.column + 1})")
    return f"duplicate key {show(key)} at line {here.line + 1} (first at line {there.line + 1})"


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
            if isinstance(key, Located):
                key = key.value
            if isinstance(key, (dict, list)):
                raise SpecError(f"line {key_node.start_mark.line + 1}: a key must be a plain word")
            if index >= merged:
                # YAML says keys are unique; PyYAML keeps the last, which would silently
                # drop a whole `layers:` list or a setting written twice
                if key in written:
                    raise SpecError(_duplicate_key(key, key_node, written[key]))
                written[key] = key_node
            out[key] = Located(_to_python(value_node, loader), value_node.start_mark.line + 1,
                                _is_plain_scalar(value_node))
        return out
    if isinstance(node, yaml.SequenceNode):
        return [Located(_to_python(item, loader), item.start_mark.line + 1,
                         _is_plain_scalar(item))
                for item in node.value]
    return loader.construct_object(node, deep=True)


def plain(value: Any) -> Any:
    """Strip line wrappers (for error messages and for the raw spec kept in reports)."""
    if isinstance(value, Located):
        return plain(value.value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
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


def show(value: Any, limit: int = 60) -> str:
    """A value as a message shows it: plain data, one line, cut short if long."""
    text = repr(plain(value))
    return text if len(text) <= limit else text[:limit - 3] + "..."



def read_text(path: Path) -> str:
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



