"""The bundled architectures: found by name (`cnncli check vgg16`) from any directory."""

from __future__ import annotations

from pathlib import Path

from cnncli.spec import SpecError


def bundled_dir() -> Path:
    """Installed wheels carry the specs inside the package; a source checkout has them at
    the top level (`architectures/`), which is what an editable install sees."""
    inside = Path(__file__).resolve().parent / "architectures"
    if inside.is_dir():
        return inside
    return Path(__file__).resolve().parent.parent / "architectures"


def bundled_names() -> list[str]:
    d = bundled_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def resolve(name_or_path: str) -> Path:
    """A path that exists wins; otherwise a bundled architecture's name."""
    path = Path(name_or_path)
    try:
        if path.exists():
            return path
    except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL byte
        reason = getattr(exc, "strerror", None) or exc
        raise SpecError(f"{name_or_path[:80]!r}: not a readable path ({reason})") from None
    stem = path.name[:-5] if path.name.endswith(".yaml") else path.name
    candidate = bundled_dir() / f"{stem}.yaml"
    if path.parent == Path(".") and candidate.is_file():
        return candidate
    names = bundled_names()
    raise SpecError(f"{name_or_path}: no such file, and not a bundled architecture "
                    f"(bundled: {', '.join(names) or 'none'})")
