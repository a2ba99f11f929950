"""A spec written back as YAML: every layer named explicitly, repeat blocks written out, so
that reading the file back gives the same net with the same parameter names. Each layer type
writes its own settings (`to_yaml`)."""

from __future__ import annotations

from typing import Any

from cnncli.layers.base import LayerSpec
from cnncli.spec.types import Spec


def _local_name(name: str, scope: str) -> str:
    """Names inside blocks carry their path (res1.conv1); the file gives only the last part."""
    return name[len(scope) + 1:] if scope and name.startswith(scope + ".") else name


def write_sequence(nodes: tuple[LayerSpec, ...], scope: str) -> list[dict[str, Any]]:
    """A sequence as YAML items (a repeat is written out pass by pass: names stay exact)."""
    items: list[dict[str, Any]] = []
    for node in nodes:
        if node.unrolls:
            for one_pass in node.children():
                items += write_sequence(one_pass, scope)
        else:
            items.append({"name": _local_name(node.name, scope),
                          node.kind: node.to_yaml(scope, write_sequence)})
    return items


def spec_to_dict(spec: Spec, description: str | None = None) -> dict[str, Any]:
    """A spec as YAML data that `parse_spec` reads back to the same net and parameter names
    (every layer named explicitly; repeat blocks written out)."""
    data: dict[str, Any] = {"name": spec.name}
    if description:
        data["description"] = description
    data["input"] = f"{spec.input.w}x{spec.input.h}x{spec.input.d}"
    if spec.loss:
        data["loss"] = spec.loss
    if spec.rounding != "strict":
        data["rounding"] = spec.rounding
    if isinstance(spec.raw.get("classes"), list):
        data["classes"] = spec.raw["classes"]
    data["layers"] = write_sequence(spec.layers, "")
    return data


def spec_yaml(spec: Spec) -> str:
    """The spec as YAML text (spec.raw when it came from `fc_to_conv_spec`)."""
    import yaml

    data = spec.raw if spec.raw.get("layers") and "description" in spec.raw \
        else spec_to_dict(spec)
    return str(yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100))


