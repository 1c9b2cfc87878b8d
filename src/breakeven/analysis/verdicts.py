"""Do a sweep's runs order as Conjectures 1 and 2 predict?

Paper Sec. 3: along a trajectory, a larger learning rate eta or a smaller batch size S
(more SGD noise) gives

- Conjecture 1: a lower max lambda_K^1 and a lower max lambda_H^1;
- Conjecture 2: a higher max lambda_K^*/lambda_K^1 and a lower max Tr(K).

Momentum beta acts like a larger learning rate (eta / (1 - beta), paper App. F), so a
larger beta is predicted to order as a larger eta.

Each run contributes its maximum of the quantity along its trajectory, over the measured
steps after the first SGD update (step >= 1): the initial point is the same for every
learning rate of a seed, so it says nothing about SGD's effect (and K's conditioning is often
highest there). For a swept key with a predicted direction, every pair of runs with
different values of that key (and equal values of the other swept keys; every seed of one
value against every seed of the other) is one comparison; it "orders as predicted" when the
run with more noise has the strictly lower (or, for the conditioning, strictly higher)
maximum. Equal maxima are ties and count for neither side. Diverged, failed and unfinished
runs are left out, and said so in the table.

The verdict rule (:data:`RULE`): with at least ``min_pairs`` comparisons that are not ties,
*supported* when a fraction >= ``support`` of them order as predicted, *contradicted* when
<= 1 - ``support`` do, *inconclusive* otherwise, with fewer comparisons, or when some run's
maximum is its last measurement (the run may have stopped before its maximum, e.g. a small
learning rate at a quick scale; such runs are named in ``at_end``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .breakeven import series
from .runs import Runs

__all__ = ["CLAUSES", "NOISE_DIRECTION", "RULE", "Clause", "maxima", "verdicts"]


@dataclass(frozen=True)
class Clause:
    """One prediction: ``quantity`` (a record key of ``measure``) has a lower (``sign`` -1)
    or higher (+1) maximum with more SGD noise."""

    conjecture: int
    quantity: str
    measure: str
    label: str
    sign: int

    @property
    def prediction(self) -> str:
        return f"max {self.label} {'higher' if self.sign > 0 else 'lower'} with more noise"


CLAUSES = (
    Clause(1, "lambda_K_1", "covariance", "lambda_K^1", -1),
    Clause(1, "lambda_H_1", "hessian", "lambda_H^1", -1),
    Clause(2, "condition_K", "covariance", "lambda_K^*/lambda_K^1", +1),
    Clause(2, "trace_K", "covariance", "Tr(K)", -1),
)
#: +1: a larger value of the key means more SGD noise; -1: less.
NOISE_DIRECTION = {"lr": +1, "batch_size": -1, "momentum": +1}
RULE = (
    "maxima over steps >= 1; supported if >= {support:.0%} of at least {min_pairs} untied "
    "run pairs order as predicted, contradicted if <= {against:.0%} do, inconclusive otherwise "
    "or when a run's maximum is its last measurement"
)
FIRST_STEP = 1  # maxima are taken over steps >= 1 (after the first update)
ENDED_OK = "finished"


def maxima(runs: Runs) -> Any:
    """Each run's maximum of each clause's quantity over steps >= 1: columns ``run``, the
    swept keys, ``seed``, ``status``, one column per quantity (NaN where it was not
    tracked), and ``<quantity>_at_end``: True when the maximum is the run's last measurement
    of it (still growing: the trajectory may not have reached its maximum)."""
    import pandas as pd

    rows = []
    for _, info in runs.table.iterrows():
        rec = runs.records
        r = rec[(rec["run"] == info["run"]) & (rec["step"] >= FIRST_STEP)]
        row = {"run": info["run"], **{k: info[k] for k in runs.swept}}
        row.update(seed=info["seed"], status=info["status"])
        for c in CLAUSES:
            s = series(r, c.quantity, c.measure)
            row[c.quantity] = float(s["value"].max()) if len(s) else math.nan
            row[f"{c.quantity}_at_end"] = bool(
                len(s) > 0
                and s["step"].iloc[int(s["value"].to_numpy().argmax())] == s["step"].max()
            )
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def verdicts(runs: Runs, *, support: float = 0.8, min_pairs: int = 3) -> Any:
    """The conjecture verdicts of a sweep: one row per (clause, swept key with a predicted
    direction).

    Columns: ``conjecture``, ``quantity``, ``prediction``, ``key`` (the swept key),
    ``maxima`` (per swept value: mean +- standard deviation over seeds, and the number of
    runs), ``pairs`` (untied comparisons), ``ties``, ``ordered`` (the fraction of ``pairs``
    ordered as predicted), ``at_end`` (runs whose maximum is their last measurement),
    ``verdict``, ``rule``, ``left_out`` (runs not used, with their status). Keys swept
    without a predicted direction get no row. See the module docstring for the rule.
    """
    import pandas as pd

    if not 0.5 < support <= 1:
        raise ValueError(f"support must be in (0.5, 1], got {support!r}")
    table = maxima(runs)
    ok = table[table["status"] == ENDED_OK]
    left_out = "; ".join(
        f"{r.run} ({r.status})" for r in table[table["status"] != ENDED_OK].itertuples()
    )
    rule = RULE.format(support=support, min_pairs=min_pairs, against=1 - support)
    rows = []
    keys = [k for k in runs.swept if k in NOISE_DIRECTION]
    for c, key in itertools.product(CLAUSES, keys):
        others = [k for k in runs.swept if k != key]
        data = ok[np.isfinite(ok[c.quantity].to_numpy(dtype=float))]
        if data.empty:
            continue
        summary = []
        for value, g in data.groupby(key, sort=True):
            v = g[c.quantity].to_numpy(dtype=float)
            spread = float(v.std(ddof=1)) if len(v) > 1 else 0.0
            summary.append(f"{key}={value:g}: {_fmt(v.mean())} ± {_fmt(spread)} (n={len(v)})")
        pairs = ordered = ties = 0
        groups = data.groupby(others, sort=False) if others else [((), data)]
        for _, g in groups:
            for a, b in itertools.combinations(g.itertuples(index=False), 2):
                va, vb = getattr(a, key), getattr(b, key)
                if va == vb:
                    continue
                if NOISE_DIRECTION[key] * (vb - va) < 0:
                    a, b = b, a  # b is the run with more noise
                qa, qb = getattr(a, c.quantity), getattr(b, c.quantity)
                if qa == qb:
                    ties += 1
                    continue
                pairs += 1
                ordered += bool(c.sign * (qb - qa) > 0)
        fraction = ordered / pairs if pairs else math.nan
        at_end = ", ".join(data.loc[data[f"{c.quantity}_at_end"], "run"])
        if pairs < min_pairs or at_end:
            verdict = "inconclusive"
        elif fraction >= support:
            verdict = "supported"
        elif fraction <= 1 - support:
            verdict = "contradicted"
        else:
            verdict = "inconclusive"
        rows.append(
            {
                "conjecture": c.conjecture,
                "quantity": c.label,
                "prediction": c.prediction,
                "key": key,
                "maxima": "; ".join(summary),
                "pairs": pairs,
                "ties": ties,
                "ordered": fraction,
                "verdict": verdict,
                "at_end": at_end,
                "rule": rule,
                "left_out": left_out,
            }
        )
    columns = [
        "conjecture",
        "quantity",
        "prediction",
        "key",
        "maxima",
        "pairs",
        "ties",
        "ordered",
        "verdict",
        "at_end",
        "rule",
        "left_out",
    ]
    return pd.DataFrame(rows, columns=columns)
