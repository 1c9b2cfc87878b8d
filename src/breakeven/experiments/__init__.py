"""Run configs (TOML presets, scales, ``--set`` overrides), the tracked, resumable runner,
and sweeps over a grid and seeds (process pool or Ray).

The names are imported on first use: ``breakeven presets`` reads :mod:`.configs` without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:  # pragma: no cover  (for type checkers; lazy_exports says the same at run time)
    from .configs import PRESETS_DIR, list_presets, load_config
    from .runner import (
        FULL,
        RunConfig,
        RunOutcome,
        RunTerminated,
        apply_overrides,
        apply_scale,
        default_out_dir,
        list_scales,
        resolve_config,
        run,
    )
    from .sweep import (
        BACKENDS,
        SweepBusyError,
        SweepOutcome,
        SweepPlan,
        SweepRun,
        default_sweep_dir,
        parse_grid,
        plan_sweep,
        sweep,
    )

lazy_exports(
    __name__,
    {
        **dict.fromkeys(["PRESETS_DIR", "list_presets", "load_config"], ".configs"),
        **dict.fromkeys(
            [
                "FULL",
                "RunConfig",
                "RunOutcome",
                "RunTerminated",
                "apply_overrides",
                "apply_scale",
                "default_out_dir",
                "list_scales",
                "resolve_config",
                "run",
            ],
            ".runner",
        ),
        **dict.fromkeys(
            [
                "BACKENDS",
                "SweepBusyError",
                "SweepOutcome",
                "SweepPlan",
                "SweepRun",
                "default_sweep_dir",
                "parse_grid",
                "plan_sweep",
                "sweep",
            ],
            ".sweep",
        ),
    },
)

__all__ = [
    "BACKENDS",
    "FULL",
    "PRESETS_DIR",
    "RunConfig",
    "RunOutcome",
    "RunTerminated",
    "SweepBusyError",
    "SweepOutcome",
    "SweepPlan",
    "SweepRun",
    "apply_overrides",
    "apply_scale",
    "default_out_dir",
    "default_sweep_dir",
    "list_presets",
    "list_scales",
    "load_config",
    "parse_grid",
    "plan_sweep",
    "resolve_config",
    "run",
    "sweep",
]
