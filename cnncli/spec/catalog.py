"""The bundled architectures: found by name (`cnncli check vgg16`) from any directory."""

from __future__ import annotations

from pathlib import Path

from cnncli.spec.parse import SpecError


def bundled_dir() -> Path:
    """Installed wheels carry the specs inside the package; a source checkout has them at
    the top level (`architectures/`), which is what an editable install sees."""
    package = Path(__file__).resolve().parent.parent
    inside = package / "architectures"
    if inside.is_dir():
        return inside
    return package.parent / "architectures"


def bundled_names() -> list[str]:
    d = bundled_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def resolve(name_or_path: str) -> Path:
    """A file that exists wins; then a bundled architecture's name; a folder named like a
    bundled net (`mkdir vgg16`) does not hide the net, since a folder is never a spec."""
    path = Path(name_or_path)
    try:
        is_dir = path.is_dir()
        if path.exists() and not is_dir:
            return path
    except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL byte
        reason = getattr(exc, "strerror", None) or exc
        raise SpecError(f"{name_or_path[:80]!r}: not a readable path ({reason})") from None
    stem = path.name[:-5] if path.name.endswith(".yaml") else path.name
    candidate = bundled_dir() / f"{stem}.yaml"
    if path.parent == Path(".") and candidate.is_file():
        return candidate
    names = ", ".join(bundled_names()) or "none"
    if is_dir:
        raise SpecError(f"{name_or_path}: is a directory, not a spec file, and not a bundled "
                        f"architecture (bundled: {names})")
    raise SpecError(f"{name_or_path}: no such file, and not a bundled architecture "
                    f"(bundled: {names})")
