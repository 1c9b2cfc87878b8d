"""Run configs from TOML files and the bundled presets.

This module imports neither torch nor the rest of :mod:`breakeven.experiments`, so that
``breakeven presets`` and code that only reads configs stay light; :mod:`.runner` validates
the configs and runs them.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["PRESETS_DIR", "list_presets", "load_config"]

PRESETS_DIR = Path(__file__).parent / "presets"
FULL = "full"  # the scale of a preset's own values (the paper's)


def list_presets() -> list[str]:
    """Names of the bundled presets (``experiments/presets/*.toml``), sorted."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def list_scales(config: Mapping[str, Any]) -> list[str]:
    """The scales a config offers: ``"full"`` (its own values) and its ``[scale.*]`` tables."""
    scales = config.get("scale", {})
    if not isinstance(scales, Mapping) or not all(isinstance(v, Mapping) for v in scales.values()):
        raise ConfigError("scale is invalid: must hold tables such as [scale.quick]")
    return [FULL, *scales]


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from e


def load_config(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """The raw config from a TOML file path, a preset name, or a mapping (copied).

    The ``name`` defaults to the file's or preset's stem (``"run"`` for a mapping)."""
    if isinstance(source, Mapping):
        cfg = json.loads(json.dumps(source))  # a deep, plain copy
        cfg.setdefault("name", "run")
        return cfg
    path = Path(source)
    if not path.is_file():
        if str(source) in list_presets():
            path = PRESETS_DIR / f"{source}.toml"
        else:
            raise ConfigError(
                f"{source!r} is neither a TOML file nor a preset; presets: {list_presets()}"
            )
    cfg = _read_toml(path)
    cfg.setdefault("name", path.stem)
    return cfg


def _parse_value(text: str) -> Any:
    """A ``--set`` value as TOML (``0.1``, ``true``, ``[1, 2]``, ``"x"``), else the raw string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
