"""Do a sweep's runs order as Conjectures 1 and 2 predict?

Paper Sec. 3: along a trajectory, a larger learning rate eta or a smaller batch size S
(more SGD noise) gives

- Conjecture 1: a lower max lambda_K^1 and a lower max lambda_H^1;
- Conjecture 2: a higher max lambda_K^*/lambda_K^1, a lower max Tr(K) and a lower max Tr(H).

Under Adam and AdamW (beyond the paper; Cohen et al. 2022) the same is predicted in Adam's
geometry: a lower max preconditioned sharpness lambda_1(P^-1 H) and a lower max
lambda_1(P^-1 K) (``preconditioned_sharpness`` and ``preconditioned_covariance``), beside the
lambda_K^1 clause, which applies to any optimizer. A clause whose quantity no run recorded
gets no row, so an SGD sweep shows none of these and an Adam sweep the ones it tracked.

Momentum beta acts like a larger learning rate (eta / (1 - beta), paper App. F), so a
larger beta is predicted to order as a larger eta.

Each run contributes its maximum of the quantity along its trajectory, over the measured
steps after the first SGD update (step >= 1; :func:`~breakeven.analysis.trajectory_max`, the
convention of every table, named ``max_<key>_after_0``). For a swept key with a predicted
direction, every pair of runs with different values of that key (and equal values of the
other swept keys; every seed of one value against every seed of the other) is one
comparison; it "orders as predicted" when the run with more noise has the strictly lower
(or, for the conditioning, strictly higher) maximum. Equal maxima are ties, and so are, for
a stochastic estimate with a standard error (Tr(H), Hutchinson's), maxima within
:data:`NOISE_TIE` combined standard errors of each other (|a - b| <= 2 sqrt(se_a^2 + se_b^2),
each se at its run's maximum; a NaN se never makes a tie): ties count for neither side. (The
maximum of noisy estimates is biased upwards by about their noise, alike for every run of a
sweep with the same number of measurements; the band is a per-pair check, not a correction.)
Diverged, failed and unfinished runs are left out, and said so in the table.

The verdict rule is :func:`decide_verdict`: with at least ``min_pairs`` untied comparisons,
*supported* when a fraction >= ``support`` of them order as predicted, *contradicted* when a
fraction >= ``support`` order the other way, *inconclusive* otherwise or with fewer
comparisons. A maximum at a run's last measurement is censored: the run may have stopped
before its maximum (e.g. a small learning rate at a quick scale), so its true maximum is
only known to be at least the measured one. Such runs are named in ``at_end``, and a pair
whose *lower* maximum is censored is *open*: its order could still flip (a pair whose higher
maximum is censored cannot flip: that maximum can only grow). A verdict holds in the worst
case: supported only when the pairs ordered as predicted reach ``support`` with every open
one of them counted against, and likewise for contradicted.

Not tested: Conjecture 2's lambda_H^*/lambda_H^1, lambda_H^* being "the smallest non-zero
eigenvalue" of H. For K it is well defined (K is positive semi-definite with L - 1 non-zero
eigenvalues from L batches: the (L-1)-th of the Gram). H is indefinite along the trajectory:
its spectrum is a bulk around 0 with negative eigenvalues, so its smallest non-zero
eigenvalue is either negative (the ratio is then no conditioning) or, taken as the smallest
positive one, an eigenvalue inside the bulk arbitrarily close to 0, whose value is set by
the estimator's resolution rather than by the network. Lanczos from the top converges to
the extremes of the spectrum; an eigenvalue next to 0 in the bulk is reached only after
resolving the whole bulk (about as many matrix-vector products as parameters). A ratio read
from the SLQ density (:func:`breakeven.hessian_density`) is set by its Gaussian width and
its number of Lanczos steps near 0, so it is not reliable either. Nothing is offered in
its place; the Tr(H) clause is tested.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._core.checks import check_int
from .._core.formatting import fmt
from ..records import key_symbol
from .breakeven import FIRST_STEP, max_column, series, trajectory_max
from .runs import Runs

__all__ = [
    "CLAUSES",
    "NOISE_DIRECTION",
    "NOISE_TIE",
    "RULE",
    "VERDICTS",
    "Clause",
    "decide_verdict",
    "maxima",
    "no_verdict_reason",
    "verdicts",
]


@dataclass(frozen=True)
class Clause:
    """One prediction: ``quantity`` (a record key of ``measure``; None: as
    :func:`~breakeven.analysis.series` picks it) has a lower (``sign`` -1) or higher (+1)
    maximum with more SGD noise. ``stderr``: the key (same measure) of the estimate's
    standard error, for estimates that have one; maxima closer than :data:`NOISE_TIE`
    combined standard errors are then ties within noise."""

    conjecture: int
    quantity: str
    measure: str | None
    label: str
    sign: int
    stderr: str | None = None

    @property
    def prediction(self) -> str:
        return f"max {self.label} {'higher' if self.sign > 0 else 'lower'} with more noise"


def _clause(
    conjecture: int, quantity: str, measure: str | None, sign: int, stderr: str | None = None
) -> Clause:
    """A clause labelled with its quantity's plain-text symbol from the key catalogue."""
    return Clause(conjecture, quantity, measure, key_symbol(quantity), sign, stderr)


CLAUSES = (
    _clause(1, "lambda_K_1", "covariance", -1),
    _clause(1, "lambda_H_1", None, -1),
    _clause(2, "condition_K", "covariance", +1),
    _clause(2, "trace_K", "covariance", -1),
    _clause(2, "trace_H", "hessian_trace", -1, stderr="trace_H_stderr"),
    # Adam/AdamW (Cohen et al. 2022): Conjecture 1 in Adam's geometry
    _clause(1, "precond_lambda_H_1", "preconditioned_sharpness", -1),
    _clause(1, "precond_lambda_K_1", "preconditioned_covariance", -1),
)
#: +1: a larger value of the key means more SGD noise; -1: less.
NOISE_DIRECTION = {"lr": +1, "batch_size": -1, "momentum": +1}
#: Two maxima with standard errors se_a, se_b tie within noise when
#: |a - b| <= NOISE_TIE * sqrt(se_a^2 + se_b^2).
NOISE_TIE = 2.0
VERDICTS = ("supported", "contradicted", "inconclusive")
RULE = (
    "maxima over steps >= 1; supported if >= {support:.0%} of at least {min_pairs} untied "
    "run pairs order as predicted, contradicted if <= {against:.0%} do, inconclusive otherwise; "
    "a pair whose lower maximum is its run's last measurement is open (it could still flip) "
    "and counts against either verdict; equal maxima, and maxima within {noise:g} combined "
    "standard errors (Tr(H)), are ties"
)
ENDED_OK = "finished"


def decide_verdict(
    ordered: int,
    pairs: int,
    *,
    open_ordered: int = 0,
    open_against: int = 0,
    support: float = 0.8,
    min_pairs: int = 3,
) -> str:
    """The verdict rule: ``ordered`` of ``pairs`` untied comparisons order as predicted;
    ``open_ordered`` of the ordered ones and ``open_against`` of the others are open (their
    lower maximum is its run's last measurement, so their order could still flip).

    ``"inconclusive"`` when ``pairs < min_pairs``; else ``"supported"`` when
    ``(ordered - open_ordered) / pairs >= support``, ``"contradicted"`` when
    ``(pairs - ordered - open_against) / pairs >= support`` (the ordered fraction is <= 1 -
    ``support``, compared without rounding error, even if every open pair flipped), else
    ``"inconclusive"``. ``support`` must be in (0.5, 1] and ``min_pairs`` >= 1.
    """
    if not 0.5 < support <= 1:
        raise ValueError(f"support must be in (0.5, 1], got {support!r}")
    check_int(min_pairs, "min_pairs")
    if not 0 <= ordered <= pairs:
        raise ValueError(f"ordered must be in [0, pairs={pairs}], got {ordered!r}")
    if not (0 <= open_ordered <= ordered and 0 <= open_against <= pairs - ordered):
        raise ValueError(
            f"open_ordered must be in [0, ordered={ordered}] and open_against in "
            f"[0, pairs - ordered={pairs - ordered}], got {open_ordered!r}, {open_against!r}"
        )
    if pairs < min_pairs:
        return "inconclusive"
    if ordered - open_ordered >= support * pairs:
        return "supported"
    if pairs - ordered - open_against >= support * pairs:
        return "contradicted"
    return "inconclusive"


def maxima(runs: Runs) -> Any:
    """Each run's maximum of each clause's quantity along its trajectory (over steps >= 1,
    :func:`~breakeven.analysis.trajectory_max`): columns ``run``, the swept keys, ``seed``,
    ``status``, and per quantity ``max_<quantity>_after_0`` (NaN where it was not tracked),
    ``max_<quantity>_after_0_step``, ``max_<quantity>_after_0_at_end`` (True when the
    maximum is the run's last measurement of it: still growing, the trajectory may not have
    reached its maximum), ``max_<quantity>_after_0_unresolved`` (its measurements at steps
    >= 1 recorded as NaN, not resolved: lambda_K^* below the resolution of K's gradients;
    they never make a maximum) and, for a clause with a standard error,
    ``max_<quantity>_after_0_stderr`` (the standard error recorded at that step)."""
    import pandas as pd

    rec = runs.records
    rows = []
    for _, info in runs.table.iterrows():
        r = rec[rec["run"] == info["run"]]
        row = {"run": info["run"], **{k: info[k] for k in runs.swept}}
        row.update(seed=info["seed"], status=info["status"])
        for c in CLAUSES:
            s = series(r, c.quantity, c.measure, dropna=False)
            m = trajectory_max(s)
            col = max_column(c.quantity)
            row[col] = m.value if m else math.nan
            row[f"{col}_step"] = m.step if m else math.nan
            row[f"{col}_at_end"] = bool(m and m.at_end)
            after = s[s["step"] >= FIRST_STEP]["value"].to_numpy(dtype=float)
            row[f"{col}_unresolved"] = int(np.isnan(after).sum())
            if c.stderr is not None:
                se = series(r, c.stderr, c.measure)
                at = se["value"][se["step"] == m.step] if m else se["value"][:0]
                row[f"{col}_stderr"] = float(at.iloc[-1]) if len(at) else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def no_verdict_reason(runs: Runs) -> str:
    """Why :func:`verdicts` of ``runs`` is empty (call it only then), in one sentence: no swept
    key with a predicted direction, no run that finished, or no clause quantity recorded in
    the finished runs (naming what to track)."""
    keys = [k for k in runs.swept if k in NOISE_DIRECTION]
    if not keys:
        return f"the sweep varies no key with a predicted direction ({', '.join(NOISE_DIRECTION)})"
    table = maxima(runs)
    if not (table["status"] == ENDED_OK).any():
        return f"no run has ended {ENDED_OK!r} yet"
    wanted = ", ".join(f"{c.quantity} ({c.measure})" if c.measure else c.quantity for c in CLAUSES)
    return (
        f"the finished runs vary {', '.join(keys)} but hold none of the clauses' quantities "
        f"at a step >= {FIRST_STEP}: {wanted}; track covariance, hessian and hessian_trace"
    )


def verdicts(runs: Runs, *, support: float = 0.8, min_pairs: int = 3) -> Any:
    """The conjecture verdicts of a sweep: one row per (clause, swept key with a predicted
    direction).

    Columns: ``conjecture``, ``quantity``, ``prediction``, ``key`` (the swept key),
    ``max_after_0`` (each run's maximum over steps >= 1, per swept value: mean +- standard
    deviation over seeds, and the number of runs); how sure it is: ``pairs`` (untied
    comparisons), ``ties`` (equal maxima), ``ties_within_noise`` (maxima within
    :data:`NOISE_TIE` combined standard errors; NaN for quantities without a standard
    error), ``ordered`` (the fraction of ``pairs`` ordered as predicted), ``open`` (the pairs
    whose lower maximum is its run's last measurement: their order could still flip),
    ``unresolved`` (measurements at steps >= 1 recorded as NaN, not resolved, in the finished
    runs; a run with none resolved has no maximum and takes no part), ``at_end`` (the runs
    whose maximum is their last measurement, comma-separated); ``verdict``
    (:func:`decide_verdict`), ``rule``, ``left_out`` (runs not used, with their status). Keys swept
    without a predicted direction get no row. See the module docstring for the rule.
    """
    import pandas as pd

    decide_verdict(0, 0, support=support, min_pairs=min_pairs)  # check the rule before reading
    table = maxima(runs)
    ok = table[table["status"] == ENDED_OK]
    left_out = "; ".join(
        f"{r.run} ({r.status})" for r in table[table["status"] != ENDED_OK].itertuples()
    )
    rule = RULE.format(support=support, min_pairs=min_pairs, against=1 - support, noise=NOISE_TIE)
    rows = []
    keys = [k for k in runs.swept if k in NOISE_DIRECTION]
    for c, key in itertools.product(CLAUSES, keys):
        col = max_column(c.quantity)
        data = ok[np.isfinite(ok[col].to_numpy(dtype=float))]
        if data.empty:
            continue
        n = _count_pairs(data, c, key, [k for k in runs.swept if k != key])
        rows.append(
            {
                "conjecture": c.conjecture,
                "quantity": c.label,
                "prediction": c.prediction,
                "key": key,
                "max_after_0": _maxima_by_value(data, key, col),
                "pairs": n.pairs,
                "ties": n.ties,
                "ties_within_noise": n.noise_ties if c.stderr is not None else math.nan,
                "ordered": n.ordered / n.pairs if n.pairs else math.nan,
                "open": n.open_ordered + n.open_against,
                "unresolved": int(ok[f"{col}_unresolved"].sum()),
                "verdict": decide_verdict(
                    n.ordered,
                    n.pairs,
                    open_ordered=n.open_ordered,
                    open_against=n.open_against,
                    support=support,
                    min_pairs=min_pairs,
                ),
                "at_end": ", ".join(data.loc[data[f"{col}_at_end"], "run"]),
                "rule": rule,
                "left_out": left_out,
            }
        )
    return pd.DataFrame(rows, columns=_VERDICT_COLUMNS)


_VERDICT_COLUMNS = [
    "conjecture",
    "quantity",
    "prediction",
    "key",
    "max_after_0",
    "pairs",
    "ties",
    "ties_within_noise",
    "ordered",
    "open",
    "unresolved",
    "verdict",
    "at_end",
    "rule",
    "left_out",
]


def _maxima_by_value(data: Any, key: str, col: str) -> str:
    """``key=<value>: <mean> ± <sd> (n=<runs>)`` of the maxima ``col``, per value of ``key``
    in increasing order, joined by ``; ``."""
    summary = []
    for value, g in data.groupby(key, sort=True):
        v = g[col].to_numpy(dtype=float)
        spread = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        summary.append(f"{key}={value:g}: {fmt(v.mean())} ± {fmt(spread)} (n={len(v)})")
    return "; ".join(summary)


@dataclass
class _PairCounts:
    """The comparisons of one clause along one swept key (see :func:`verdicts`)."""

    pairs: int = 0  # untied
    ordered: int = 0  # of pairs, ordered as predicted
    ties: int = 0  # equal maxima
    noise_ties: int = 0  # maxima within NOISE_TIE combined standard errors
    open_ordered: int = 0  # of ordered, open (lower maximum censored)
    open_against: int = 0  # of pairs - ordered, open


def _count_pairs(data: Any, c: Clause, key: str, others: list[str]) -> _PairCounts:
    """Compare every pair of runs of ``data`` (one row per run with a finite maximum) with
    different values of ``key`` and equal values of the ``others`` swept keys."""
    col = max_column(c.quantity)
    n = _PairCounts()
    groups = data.groupby(others, sort=False) if others else [((), data)]
    for _, g in groups:
        for a, b in itertools.combinations(g.to_dict("records"), 2):
            if a[key] == b[key]:
                continue
            if NOISE_DIRECTION[key] * (b[key] - a[key]) < 0:
                a, b = b, a  # b is the run with more noise
            qa, qb = a[col], b[col]
            if qa == qb:
                n.ties += 1
            elif c.stderr is not None and abs(qa - qb) <= NOISE_TIE * math.hypot(
                a[f"{col}_stderr"], b[f"{col}_stderr"]
            ):
                n.noise_ties += 1
            else:
                n.pairs += 1
                agrees = bool(c.sign * (qb - qa) > 0)
                n.ordered += agrees
                lower = a if qa < qb else b
                if lower[f"{col}_at_end"]:  # censored: its maximum may lie beyond
                    n.open_ordered += agrees
                    n.open_against += not agrees
    return n
