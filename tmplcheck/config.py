"""Configuration from ``[tool.tmplcheck]`` in pyproject.toml or from tmplcheck.toml; command-line flags win."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

KNOWN = {
    "template", "tokenizer", "max_length", "format", "select", "ignore", "exit_zero", "max_findings",
    "input_format", "max_line_bytes", "group", "jobs", "add_special_tokens",
}


class ConfigError(ValueError):
    pass


def find_config(start: Path | None = None) -> tuple[Path, dict[str, Any]] | None:
    """Search from ``start`` upwards for tmplcheck.toml or a pyproject.toml with [tool.tmplcheck]."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        own = d / "tmplcheck.toml"
        if own.is_file():
            return own, _load(own, tool_table=False)
        py = d / "pyproject.toml"
        if py.is_file():
            data = _load(py, tool_table=True)
            if data is not None:
                return py, data
    return None


def settings_for(data: str | Path | None = None, explicit: str | Path | None = None) -> dict[str, Any]:
    """The settings for a run on DATA: the ``explicit`` file if given, else the nearest tmplcheck.toml or
    ``[tool.tmplcheck]`` from DATA's folder upwards, else from the working directory; {} when there is none."""
    if explicit:
        p = Path(explicit)
        return _load(p, tool_table=p.name == "pyproject.toml") or {}
    found = (find_config(Path(data).resolve().parent) if data else None) or find_config()
    return found[1] if found else {}


def _load(path: Path, tool_table: bool) -> dict[str, Any] | None:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: {e}") from e
    if tool_table:
        data = data.get("tool", {}).get("tmplcheck")
        if data is None:
            return None
    out = {}
    for k, v in data.items():
        key = k.replace("-", "_")
        if key not in KNOWN:
            raise ConfigError(f"{path}: unknown setting {k!r} (known: {', '.join(sorted(KNOWN))})")
        out[key] = v
    for k in ("select", "ignore"):
        if k in out and isinstance(out[k], str):
            out[k] = [s.strip() for s in out[k].split(",") if s.strip()]
    return out
