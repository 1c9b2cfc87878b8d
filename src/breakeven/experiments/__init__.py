"""Run configs (TOML presets, ``--set`` overrides) and the tracked, resumable runner."""

from .runner import (
    PRESETS_DIR,
    RunConfig,
    RunOutcome,
    apply_overrides,
    default_out_dir,
    list_presets,
    load_config,
    resolve_config,
    run,
)

__all__ = [
    "PRESETS_DIR",
    "RunConfig",
    "RunOutcome",
    "apply_overrides",
    "default_out_dir",
    "list_presets",
    "load_config",
    "resolve_config",
    "run",
]
