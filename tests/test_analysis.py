"""Break-even detection and conjecture verdicts on synthetic run and sweep directories."""

import itertools
import json
import math

import numpy as np
import pytest

from breakeven.analysis import (
    break_even_points,
    crossing_from_below,
    decide_verdict,
    max_column,
    maxima,
    read_runs,
    trajectory_max,
    verdicts,
)
from helpers import write_run, write_sweep


def peaked_run(
    path,
    lr,
    seed,
    status="finished",
    *,
    peak_k=None,
    peak_h=None,
    stab=None,
    acc=None,
    grow=False,
    trace_h=None,
):
    """A run directory with covariance, hessian, hessian_trace (``trace_h`` = (peak, standard
    error), the peak at step 30), stability and evaluation records."""
    cfg = {"name": "t", "train": {"model": "mlp", "lr": lr, "batch_size": 64, "init_seed": seed}}
    recs = []
    steps = [0, 10, 20, 30, 40]
    for i, s in enumerate(steps):
        ep = s / 20
        if peak_k is not None:
            k = peak_k * ((i + 1) / 5 if grow else 1 - abs(i - 2) / 4)  # peak at 40 or 20
            recs.append(
                {
                    "step": s,
                    "epoch": ep,
                    "measure": "covariance",
                    "values": {
                        "lambda_K_1": k,
                        "condition_K": 0.1 * (3 - abs(i - 2)) / lr,
                        "trace_K": 2 * k,
                    },
                }
            )
        if peak_h is not None:
            h = peak_h * (1 - abs(i - 3) / 4)  # peak at step 30
            recs.append({"step": s, "epoch": ep, "measure": "hessian", "values": {"lambda_H_1": h}})
        if trace_h is not None:
            t, se = trace_h
            values = {"trace_H": t * (1 - abs(i - 3) / 4), "trace_H_stderr": se}
            recs.append({"step": s, "epoch": ep, "measure": "hessian_trace", "values": values})
        if stab is not None:
            recs.append(
                {"step": s, "epoch": ep, "measure": "stability", "values": {"stability": stab[i]}}
            )
        if acc is not None:
            recs.append(
                {"step": s, "epoch": ep, "measure": "evaluation", "values": {"train_acc": acc[i]}}
            )
    write_run(path, recs, config=cfg, status=status)


def peaked_sweep(root, lrs, seeds, values, statuses=None, grow=False, trace=None):
    """A sweep of :func:`peaked_run` runs: ``values[(lr, seed)] = (peak_k, peak_h)``,
    ``trace[(lr, seed)] = (peak, stderr)``; ``grow``: True (every run) or the (lr, seed)
    keys whose lambda_K^1 grows to its end. Returns ``root``."""

    def one(path, lr, s):
        k, h = values[(lr, s)]
        status = (statuses or {}).get((lr, s), "finished")
        grows = grow is True or (lr, s) in (grow or ())
        trace_h = (trace or {}).get((lr, s))
        peaked_run(path, lr, s, status, peak_k=k, peak_h=h, grow=grows, trace_h=trace_h)

    write_sweep(root, lrs, seeds, one)
    return root


def test_break_even_point_peaks_and_accuracy_crossings(tmp_path):
    peaked_run(
        tmp_path / "a",
        0.1,
        0,
        peak_k=4.0,
        peak_h=8.0,
        stab=[0.5, 0.9, 1.2, 0.8, 1.5],
        acc=[0.1, 0.3, 0.6, 0.7, 0.9],
    )
    peaked_run(tmp_path / "b", 0.1, 1, peak_k=1.0, stab=[0.1] * 5, acc=[0.1] * 5)
    df = break_even_points(read_runs([tmp_path / "a", tmp_path / "b"]), thresholds=(0.5, 0.65))
    a, b = df.iloc[0], df.iloc[1]
    assert a["break_even_step"] == 20 and a["break_even_epoch"] == 1.0
    assert a["break_even_train_acc"] == pytest.approx(0.6)
    assert a["max_lambda_K_1_after_0"] == 4.0 and a["max_lambda_K_1_after_0_step"] == 20
    assert a["max_lambda_H_1_after_0"] == 8.0 and a["max_lambda_H_1_after_0_step"] == 30
    assert a["max_lambda_H_1_after_0_train_acc"] == pytest.approx(0.7)
    assert a["acc_0.5_epoch"] == 1.0 and a["acc_0.65_epoch"] == 1.5
    assert math.isnan(b["break_even_step"]) and math.isnan(b["acc_0.5_epoch"])
    assert math.isnan(b["max_lambda_H_1_after_0"])  # not tracked


def test_train_accuracy_is_interpolated_between_evaluations(tmp_path):
    peaked_run(
        tmp_path / "a", 0.1, 0, peak_k=4.0, stab=[0, 0, 0, 1.0, 0], acc=[0, 0.2, 0.4, 0.5, 0.8]
    )
    peaked_run(tmp_path / "b", 0.1, 0, stab=[0, 0, 0, 1.0, 0], acc=None)
    df = break_even_points(read_runs([tmp_path / "a", tmp_path / "b"]))
    assert df.iloc[0]["max_lambda_K_1_after_0_train_acc"] == pytest.approx(0.4)
    assert df.iloc[0]["break_even_train_acc"] == pytest.approx(0.5)
    assert math.isnan(df.iloc[1]["break_even_train_acc"])  # no evaluations


LRS = [0.01, 0.1]


def test_verdicts_supported_when_every_pair_orders_as_predicted(tmp_path):
    values = {(0.01, s): (10.0 + s, 50.0 + s) for s in range(3)}
    values.update({(0.1, s): (3.0 + s, 20.0 + s) for s in range(3)})
    runs = read_runs(peaked_sweep(tmp_path, LRS, [0, 1, 2], values))
    assert runs.swept == ["lr"]
    v = verdicts(runs).set_index("quantity")
    assert v.loc["lambda_K^1", "pairs"] == 9 and v.loc["lambda_K^1", "ordered"] == 1.0
    assert v.loc["lambda_K^1", "verdict"] == "supported"
    assert v.loc["lambda_H^1", "verdict"] == "supported"
    assert v.loc["Tr(K)", "verdict"] == "supported"
    # the conditioning (0.1 (3 - |i - 2|) / lr, max 0.3 / lr) is higher for the smaller lr
    assert v.loc["lambda_K^*/lambda_K^1", "verdict"] == "contradicted"
    assert v.loc["lambda_K^*/lambda_K^1", "ordered"] == 0.0
    assert "lr=0.01: 11 ± 1 (n=3)" in v.loc["lambda_K^1", "max_after_0"]
    m = maxima(runs)
    assert m.set_index("run").loc["lr=0.1_seed=2", "max_lambda_K_1_after_0"] == 5.0


def test_maxima_leave_out_the_initial_point(tmp_path):
    peaked_run(tmp_path / "a", 0.1, 0, peak_k=4.0)
    recs = (tmp_path / "a" / "records.jsonl").read_text().splitlines()
    first = json.loads(recs[0])
    first["values"]["lambda_K_1"] = 100.0  # the largest value, at step 0
    recs[0] = json.dumps(first)
    (tmp_path / "a" / "records.jsonl").write_text("\n".join(recs) + "\n")
    assert maxima(read_runs(tmp_path / "a"))["max_lambda_K_1_after_0"].iloc[0] == 4.0


def test_a_maximum_at_the_last_measurement_makes_the_verdict_inconclusive(tmp_path):
    values = {(0.01, s): (10.0 + s, 50.0 + s) for s in range(2)}
    values.update({(0.1, s): (3.0 + s, 20.0 + s) for s in range(2)})
    runs = read_runs(peaked_sweep(tmp_path, LRS, [0, 1], values, grow=True))
    m = maxima(runs).set_index("run")
    assert m["max_lambda_K_1_after_0_at_end"].all() and not m["max_lambda_H_1_after_0_at_end"].any()
    v = verdicts(runs).set_index("quantity")
    assert (
        v.loc["lambda_K^1", "ordered"] == 1.0 and v.loc["lambda_K^1", "verdict"] == "inconclusive"
    )
    assert v.loc["lambda_K^1", "at_end"].count("seed=") == 4
    assert v.loc["lambda_H^1", "verdict"] == "supported" and v.loc["lambda_H^1", "at_end"] == ""


def test_verdicts_inconclusive_on_mixed_orders_or_too_few_pairs(tmp_path):
    values = {
        (0.01, 0): (10.0, 1.0),
        (0.01, 1): (2.0, 1.0),
        (0.1, 0): (5.0, 1.0),
        (0.1, 1): (1.0, 1.0),
    }
    v = verdicts(read_runs(peaked_sweep(tmp_path / "a", LRS, [0, 1], values))).set_index("quantity")
    # pairs: (10 vs 5) yes, (10 vs 1) yes, (2 vs 5) no, (2 vs 1) yes: 3/4 < 0.8
    assert (
        v.loc["lambda_K^1", "ordered"] == 0.75 and v.loc["lambda_K^1", "verdict"] == "inconclusive"
    )
    # equal maxima are ties: no untied pair, no verdict
    assert v.loc["lambda_H^1", "ties"] == 4 and v.loc["lambda_H^1", "pairs"] == 0
    assert v.loc["lambda_H^1", "verdict"] == "inconclusive"
    one = {(0.01, 0): (10.0, 1.0), (0.1, 0): (5.0, 1.0)}
    v1 = verdicts(read_runs(peaked_sweep(tmp_path / "b", LRS, [0], one)))
    assert set(v1["verdict"]) == {"inconclusive"} and set(v1["pairs"] + v1["ties"]) == {1}


def test_diverged_runs_are_left_out_and_named(tmp_path):
    values = {(lr, s): (10.0 / lr, 1.0) for lr in LRS for s in (0, 1)}
    values[(0.1, 1)] = (math.nan, math.nan)
    root = peaked_sweep(tmp_path, LRS, [0, 1], values, statuses={(0.1, 1): "diverged"})
    v = verdicts(read_runs(root)).set_index("quantity")
    assert v.loc["lambda_K^1", "pairs"] == 2
    assert v.loc["lambda_K^1", "left_out"] == "lr=0.1_seed=1 (diverged)"


def test_verdict_needs_a_valid_rule(tmp_path):
    values = {(lr, 0): (1.0, 1.0) for lr in LRS}
    with pytest.raises(ValueError, match="support"):
        verdicts(read_runs(peaked_sweep(tmp_path, LRS, [0], values)), support=0.4)


def test_one_measurement_per_run_is_at_its_end(tmp_path):
    def one(path, lr, seed):
        cfg = {"train": {"model": "mlp", "lr": lr, "batch_size": 64, "init_seed": seed}}
        rec = {"step": 5, "epoch": 0.1, "measure": "covariance", "values": {"lambda_K_1": 1 / lr}}
        write_run(path, [rec], config=cfg)

    write_sweep(tmp_path, LRS, [0], one, name="lr{lr}")
    m = maxima(read_runs(tmp_path))
    assert m["max_lambda_K_1_after_0_at_end"].all()


def test_list_valued_grids_are_grouped(tmp_path):
    values = {(lr, 0): (1.0 / lr, 1.0) for lr in LRS}
    root = peaked_sweep(tmp_path, LRS, [0], values)
    spec = json.loads((root / "sweep.json").read_text())
    spec["grid"]["train.model_kwargs.hidden"] = [[8], [16]]
    for r in spec["runs"]:
        r["params"]["train.model_kwargs.hidden"] = [8]
    (root / "sweep.json").write_text(json.dumps(spec))
    runs = read_runs(root)
    assert list(runs.table["hidden"]) == [(8,), (8,)]
    assert len(verdicts(runs)) == 4  # no TypeError: unhashable list


# ----------------------------------------------------------------- one convention for maxima


def test_trajectory_max_is_over_steps_after_0_against_brute_force():
    import pandas as pd

    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(0, 7))
        steps = np.sort(rng.choice(np.arange(0, 12), size=n, replace=False))
        values = rng.choice([1.0, 2.0, 3.0, math.nan], size=n)  # repeats: ties, NaN: gaps
        df = pd.DataFrame({"step": steps, "epoch": steps / 4, "value": values})
        kept = [(v, s) for v, s in zip(values, steps) if s >= 1 and np.isfinite(v)]
        m = trajectory_max(df)
        if not kept:
            assert m is None
            continue
        top = max(v for v, _ in kept)
        first = min(s for v, s in kept if v == top)
        assert (m.value, m.step, m.epoch) == (top, first, first / 4)
        assert m.at_end == (first == max(s for _, s in kept))


def _spike_at_step_0(path, key, measure, value):
    """Replace ``key`` of ``measure``'s step-0 record by ``value``."""
    lines = (path / "records.jsonl").read_text().splitlines()
    for i, line in enumerate(lines):
        rec = json.loads(line)
        if rec["step"] == 0 and rec["measure"] == measure:
            rec["values"][key] = value
            lines[i] = json.dumps(rec)
    (path / "records.jsonl").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("spike", [0.5606, 100.0, 4.0])
def test_break_even_table_and_verdicts_share_one_maximum(tmp_path, spike):
    # the printout that showed lambda_K^1 = 0.5606 in one table and 0.5023 in the other
    values = {(lr, s): (0.5023 / lr / 10 + s, 8.0 / lr + s) for lr in LRS for s in (0, 1)}
    root = peaked_sweep(tmp_path, LRS, [0, 1], values)
    for name in ("lr=0.01_seed=0", "lr=0.1_seed=1"):
        _spike_at_step_0(root / "runs" / name, "lambda_K_1", "covariance", spike)
        _spike_at_step_0(root / "runs" / name, "lambda_H_1", "hessian", spike * 1000)
    runs = read_runs(root)
    points = break_even_points(runs).set_index("run")
    table = maxima(runs).set_index("run")
    for key in ("lambda_K_1", "lambda_H_1"):
        col = max_column(key)
        assert col == f"max_{key}_after_0"
        assert points[col].to_dict() == table[col].to_dict()
        assert points[f"{col}_step"].to_dict() == table[f"{col}_step"].to_dict()
        assert (points[f"{col}_step"] >= 1).all()
    want = {(lr, s): values[(lr, s)][0] for lr in LRS for s in (0, 1)}
    got = {(r.lr, r.seed): r.max_lambda_K_1_after_0 for r in points.reset_index().itertuples()}
    assert got == want


# ------------------------------------------------------------------------- the break-even point

NAN = math.nan


@pytest.mark.parametrize(
    ("stab", "want"),
    [
        # unstable at init (lr 0.1: eta lambda_H^1 = 2.46), stable at 20, crossing in (30, 40]
        ([2.46, 1.5, 0.8, 0.9, 1.2], (True, 20, 30, 40, 2.0)),
        ([2.46, 1.5, 1.2, 1.1, 1.0], (True, NAN, NAN, NAN, NAN)),  # never stable
        ([2.46, 0.5, 0.7, 0.9, 0.2], (True, 10, NAN, NAN, NAN)),  # stable, never crosses back
        ([1.0, 0.5, 0.7, 1.0, 0.2], (True, 10, 20, 30, 1.5)),  # exactly 1 is not below
        ([0.5, 0.9, 1.2, 0.8, 1.5], (False, 0, 10, 20, 1.0)),
        ([0.5, None, None, 1.2, 0.8], (False, 0, 0, 30, 1.5)),  # unmeasured steps skipped
        ([0.1] * 5, (False, 0, NAN, NAN, NAN)),
        ([None, 2.0, 0.3, 3.0, 3.0], (True, 20, 20, 30, 1.5)),  # the first finite measurement
    ],
)
def test_break_even_is_the_first_crossing_of_1_from_below(tmp_path, stab, want):
    acc = [0.1, 0.2, 0.3, 0.4, 0.5]
    peaked_run(tmp_path / "a", 0.1, 0, peak_k=1.0, stab=stab, acc=acc)
    row = break_even_points(read_runs(tmp_path / "a")).iloc[0]
    got = (
        row["unstable_at_init"],
        row["first_stable_step"],
        row["break_even_after_step"],
        row["break_even_step"],
        row["break_even_epoch"],
    )
    assert got[0] == want[0] and isinstance(got[0], (bool, np.bool_))
    assert np.allclose(got[1:], want[1:], equal_nan=True)
    if not math.isnan(want[3]):
        assert row["break_even_train_acc"] == pytest.approx(0.1 + want[3] / 100)
    else:
        assert math.isnan(row["break_even_train_acc"])


def test_no_stability_records_no_break_even(tmp_path):
    peaked_run(tmp_path / "a", 0.1, 0, peak_k=1.0)
    row = break_even_points(read_runs(tmp_path / "a")).iloc[0]
    assert row["unstable_at_init"] is None
    assert math.isnan(row["first_stable_step"]) and math.isnan(row["break_even_step"])


def test_crossing_from_below_against_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(500):
        v = rng.choice([0.5, 1.0, 1.5, math.nan], size=int(rng.integers(0, 8)))
        want = next((j for j in range(len(v)) if v[j] >= 1 and (v[:j] < 1).any()), None)
        assert crossing_from_below(v) == want
        assert crossing_from_below(v * 3, level=3.0) == want


# ------------------------------------------------------------------------- the verdict rule


@pytest.mark.parametrize(
    ("ordered", "pairs", "options", "want"),
    [
        (3, 3, {}, "supported"),
        (4, 5, {}, "supported"),  # exactly 80%
        (8, 10, {}, "supported"),
        (1, 5, {}, "contradicted"),  # exactly 20% (1 - 0.8 is 0.19999... in floats)
        (2, 10, {}, "contradicted"),
        (0, 3, {}, "contradicted"),
        (3, 5, {}, "inconclusive"),
        (2, 2, {}, "inconclusive"),  # too few untied pairs
        (0, 0, {}, "inconclusive"),
        (2, 2, {"min_pairs": 2}, "supported"),
        (9, 9, {"open_ordered": 2}, "inconclusive"),  # 7/9 < 80% if both flipped
        (9, 9, {"open_ordered": 1}, "supported"),  # 8/9 even if it flipped
        (0, 9, {"open_against": 2}, "inconclusive"),
        (2, 10, {"open_ordered": 2}, "contradicted"),  # flips would only help the prediction
        (8, 10, {"support": 0.9}, "inconclusive"),
        (1, 10, {"support": 0.9}, "contradicted"),
    ],
)
def test_decide_verdict(ordered, pairs, options, want):
    assert decide_verdict(ordered, pairs, **options) == want


@pytest.mark.parametrize(
    ("ordered", "pairs", "options", "want"),
    [
        (8, 10, {"open_against": 2}, "supported"),  # open pairs against cannot hurt it
        (9, 10, {"open_ordered": 1}, "supported"),  # 8/10 even if it flipped
        (9, 10, {"open_ordered": 2}, "inconclusive"),
        (1, 10, {"open_against": 1}, "contradicted"),  # 2/10 even if it flipped
        (1, 10, {"open_against": 2}, "inconclusive"),
        (3, 3, {"open_ordered": 3}, "inconclusive"),  # every pair open: nothing settled
        (0, 3, {"open_against": 3}, "inconclusive"),
        (3, 3, {"open_ordered": 3, "min_pairs": 4}, "inconclusive"),
    ],
)
def test_decide_verdict_with_open_pairs(ordered, pairs, options, want):
    assert decide_verdict(ordered, pairs, **options) == want


def test_decide_verdict_with_open_pairs_holds_for_every_way_they_could_flip():
    # supported (contradicted) with open pairs exactly when the rule without open pairs says
    # so after every flip of any number of them; inconclusive otherwise
    for pairs in range(8):
        for ordered in range(pairs + 1):
            for oo, oa in itertools.product(range(ordered + 1), range(pairs - ordered + 1)):
                flipped = {
                    decide_verdict(ordered - i + j, pairs)
                    for i in range(oo + 1)
                    for j in range(oa + 1)
                }
                want = flipped.pop() if len(flipped) == 1 else "inconclusive"
                got = decide_verdict(ordered, pairs, open_ordered=oo, open_against=oa)
                assert got == want, (ordered, pairs, oo, oa)


@pytest.mark.parametrize(
    "options", [{"open_ordered": 4}, {"open_against": 2}, {"open_ordered": -1}]
)
def test_decide_verdict_refuses_open_counts_outside_their_pairs(options):
    with pytest.raises(ValueError, match="open_ordered"):
        decide_verdict(3, 4, **options)


def test_a_censored_maximum_that_is_already_the_higher_one_settles_its_pairs(tmp_path):
    # lr 0.01's lambda_K^1 still grows at its end, but is already above lr 0.1's: it can only
    # grow, so every pair is settled (the paper's small learning rate, stopped early)
    values = {(0.01, s): (10.0 + s, 5.0) for s in range(2)}
    values.update({(0.1, s): (3.0 + s, 2.0) for s in range(2)})
    grow = {(0.01, 0), (0.01, 1)}
    v = verdicts(read_runs(peaked_sweep(tmp_path / "a", LRS, [0, 1], values, grow=grow)))
    row = v.set_index("quantity").loc["lambda_K^1"]
    assert (row["pairs"], row["open"], row["verdict"]) == (4, 0, "supported")
    assert row["at_end"] == "lr=0.01_seed=0, lr=0.01_seed=1"
    # the same runs with the *lower* run censored: every pair open, no verdict
    grow = {(0.1, 0), (0.1, 1)}
    v = verdicts(read_runs(peaked_sweep(tmp_path / "b", LRS, [0, 1], values, grow=grow)))
    row = v.set_index("quantity").loc["lambda_K^1"]
    assert (row["pairs"], row["open"], row["verdict"]) == (4, 4, "inconclusive")


# Seeds 0-4 (`make test`) hold every case the family has: both trends, one and two censored
# runs, supported and inconclusive verdicts; seeds 5-7 (inconclusive) in `make test-slow`.
@pytest.mark.parametrize(
    "seed", [*range(5), *(pytest.param(s, marks=pytest.mark.slow) for s in (5, 6, 7))]
)
def test_a_verdict_with_censored_maxima_holds_for_every_completion(tmp_path, seed):
    # a censored maximum is a lower bound; whatever the censored runs' true maxima, the plain
    # rule on the completed (uncensored) sweep gives the same supported/contradicted verdict
    rng = np.random.default_rng(seed)
    lrs, seeds = [0.01, 0.03, 0.1], [0, 1]
    keys = [(lr, s) for lr in lrs for s in seeds]
    trend = rng.choice([-1.0, 1.0])  # mostly as predicted, or mostly against
    values = {
        (lr, s): (float(np.exp(trend * -np.log(lr) + rng.normal(0, 0.6))), 1.0) for lr, s in keys
    }
    censored = [keys[i] for i in rng.choice(len(keys), size=rng.integers(1, 3), replace=False)]
    got = verdicts(read_runs(peaked_sweep(tmp_path / "c", lrs, seeds, values, grow=set(censored))))
    got = got.set_index("quantity").loc["lambda_K^1"]
    assert got["at_end"].count("seed=") == len(censored)
    for i, raised in enumerate(itertools.product([1.0, 1.4, 1e3], repeat=len(censored))):
        done = dict(values)
        for key, factor in zip(censored, raised):
            done[key] = (values[key][0] * factor, 1.0)
        plain = verdicts(read_runs(peaked_sweep(tmp_path / f"d{i}", lrs, seeds, done)))
        plain = plain.set_index("quantity").loc["lambda_K^1"]
        assert plain["open"] == 0 and plain["at_end"] == ""
        if got["verdict"] != "inconclusive":
            assert plain["verdict"] == got["verdict"], (values, censored, raised)


def test_decide_verdict_equals_the_rule_in_exact_arithmetic():
    from fractions import Fraction

    for support in ("0.8", "0.75", "0.9", "1"):
        s = Fraction(support)
        for pairs in range(13):
            for ordered in range(pairs + 1):
                f = Fraction(ordered, pairs) if pairs else None
                if pairs < 3:
                    want = "inconclusive"
                elif f >= s:
                    want = "supported"
                elif f <= 1 - s:
                    want = "contradicted"
                else:
                    want = "inconclusive"
                assert decide_verdict(ordered, pairs, support=float(support)) == want


@pytest.mark.parametrize(
    ("args", "options", "match"),
    [
        ((1, 2), {"support": 0.5}, "support"),
        ((1, 2), {"support": 1.01}, "support"),
        ((1, 2), {"min_pairs": 0}, "min_pairs"),
        ((1, 2), {"min_pairs": 2.5}, "min_pairs"),
        ((3, 2), {}, "ordered"),
        ((-1, 2), {}, "ordered"),
    ],
)
def test_decide_verdict_refuses_an_invalid_rule(args, options, match):
    with pytest.raises(ValueError, match=match):
        decide_verdict(*args, **options)


# ------------------------------------------------------------------ Conjecture 2's Tr(H) clause


def _trace_sweep(root, trace, seeds=(0, 1)):
    values = {(lr, s): (10.0 / lr + s, 5.0 / lr + s) for lr in LRS for s in seeds}
    return read_runs(peaked_sweep(root, LRS, list(seeds), values, trace=trace))


def test_trace_h_clause_orders_the_maxima(tmp_path):
    # more noise (lr 0.1), lower max Tr(H): supported; the standard errors are small
    trace = {(0.01, s): (100.0 + s, 0.5) for s in range(3)}
    trace.update({(0.1, s): (50.0 + s, 0.5) for s in range(3)})
    runs = _trace_sweep(tmp_path, trace, seeds=(0, 1, 2))
    v = verdicts(runs).set_index("quantity")
    row = v.loc["Tr(H)"]
    assert row["conjecture"] == 2 and row["prediction"] == "max Tr(H) lower with more noise"
    assert (row["pairs"], row["ties"], row["ties_within_noise"]) == (9, 0, 0)
    assert row["verdict"] == "supported" and "lr=0.01: 101 ± 1 (n=3)" in row["max_after_0"]
    assert math.isnan(v.loc["lambda_K^1", "ties_within_noise"])  # no standard error for K
    m = maxima(runs).set_index("run")
    assert m.loc["lr=0.1_seed=2", "max_trace_H_after_0"] == 52.0
    assert m.loc["lr=0.1_seed=2", "max_trace_H_after_0_step"] == 30
    assert m.loc["lr=0.1_seed=2", "max_trace_H_after_0_stderr"] == 0.5


@pytest.mark.parametrize(
    ("gap", "se", "tied"),
    [
        (2.0, 1.0, True),  # 2 <= 2 sqrt(2)
        (2.8, 1.0, True),
        (2.9, 1.0, False),  # 2.9 > 2 sqrt(2) = 2.83
        (10.0, 4.0, True),
        (10.0, 3.0, False),
        (0.1, math.nan, False),  # no standard error: no tie within noise
    ],
)
def test_trace_h_pairs_within_noise_are_ties(tmp_path, gap, se, tied):
    trace = {(0.01, s): (100.0 + gap, se) for s in (0, 1)}
    trace.update({(0.1, s): (100.0, se) for s in (0, 1)})
    row = verdicts(_trace_sweep(tmp_path, trace)).set_index("quantity").loc["Tr(H)"]
    assert row["ties_within_noise"] == (4 if tied else 0)
    assert row["pairs"] == (0 if tied else 4) and row["ties"] == 0
    assert row["verdict"] == ("inconclusive" if tied else "supported")


def test_trace_h_noise_is_the_standard_error_at_each_runs_maximum(tmp_path):
    trace = {(0.01, s): (103.0, 0.1) for s in (0, 1)}
    trace.update({(0.1, s): (100.0, 0.1) for s in (0, 1)})
    runs = _trace_sweep(tmp_path, trace)
    for path in (tmp_path / "runs").iterdir():  # a large standard error away from the maximum
        lines = (path / "records.jsonl").read_text().splitlines()
        for i, line in enumerate(lines):
            rec = json.loads(line)
            if rec["measure"] == "hessian_trace" and rec["step"] != 30:
                rec["values"]["trace_H_stderr"] = 50.0
                lines[i] = json.dumps(rec)
        (path / "records.jsonl").write_text("\n".join(lines) + "\n")
    runs = read_runs(tmp_path)
    assert set(maxima(runs)["max_trace_H_after_0_stderr"]) == {0.1}
    row = verdicts(runs).set_index("quantity").loc["Tr(H)"]
    assert (row["pairs"], row["ties_within_noise"]) == (4, 0)


def test_verdicts_name_the_runs_whose_maximum_is_the_last_measurement(tmp_path):
    values = {(lr, s): (10.0 / lr + s, 5.0 / lr + s) for lr in LRS for s in (0, 1, 2)}
    root = peaked_sweep(tmp_path, LRS, [0, 1, 2], values)
    path = root / "runs" / "lr=0.1_seed=1"  # its lambda_H^1 grows to its last measurement
    lines = (path / "records.jsonl").read_text().splitlines()
    rec = json.loads(lines[-1])
    rec["values"]["lambda_H_1"] = 1e3
    lines[-1] = json.dumps(rec)
    (path / "records.jsonl").write_text("\n".join(lines) + "\n")
    v = verdicts(read_runs(root)).set_index("quantity")
    assert v.loc["lambda_H^1", "at_end"] == "lr=0.1_seed=1"
    assert v.loc["lambda_H^1", "verdict"] == "inconclusive"
    assert v.loc["lambda_K^1", "at_end"] == "" and v.loc["lambda_K^1", "verdict"] == "supported"
    cols = ["pairs", "ties", "ties_within_noise", "ordered", "verdict", "at_end"]
    assert set(cols) <= set(v.columns)


def test_verdicts_count_unresolved_measurements_and_never_use_them(tmp_path):
    values = {(lr, s): (10.0 / lr + s, 5.0 / lr + s) for lr in LRS for s in (0, 1)}
    root = peaked_sweep(tmp_path, LRS, [0, 1], values)
    before = verdicts(read_runs(root)).set_index("quantity").loc["lambda_K^*/lambda_K^1"]
    # below K's resolution at steps 0, 10 and 40 (not at its peak, step 20); step 0 is
    # not counted: maxima are over steps >= 1
    path = root / "runs" / "lr=0.01_seed=0" / "records.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    for rec in recs:
        if rec["measure"] == "covariance" and rec["step"] in (0, 10, 40):
            rec["values"]["condition_K"] = None
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    m = maxima(read_runs(root)).set_index("run")
    assert m.loc["lr=0.01_seed=0", "max_condition_K_after_0_unresolved"] == 2
    assert m.loc["lr=0.1_seed=0", "max_condition_K_after_0_unresolved"] == 0
    row = verdicts(read_runs(root)).set_index("quantity").loc["lambda_K^*/lambda_K^1"]
    assert row["unresolved"] == 2 and before["unresolved"] == 0
    assert (row["pairs"], row["verdict"]) == (before["pairs"], before["verdict"])


def _sharpness_only(path, lr, seed, status="finished"):
    """A run that tracked only the sharpness measure (no clause quantity)."""
    cfg = {"name": "t", "train": {"model": "mlp", "lr": lr, "batch_size": 64, "init_seed": seed}}
    recs = [
        {"step": s, "epoch": None, "measure": "sharpness", "values": {"sharpness": 1.0 + s}}
        for s in (0, 1, 2)
    ]
    return write_run(path, recs, config=cfg, status=status)


@pytest.mark.parametrize(
    ("status", "lrs", "writer", "reason"),
    [
        ("finished", [0.1, 0.01], _sharpness_only, "hold none of the clauses' quantities"),
        ("running", [0.1, 0.01], peaked_run, "no run has ended"),
        ("finished", None, peaked_run, "varies no key with a predicted direction"),
    ],
)
def test_the_command_line_says_why_there_is_no_verdict(
    tmp_path, capsys, status, lrs, writer, reason
):
    """`breakeven verdict` names the reason a sweep gets no verdict: the sweep of lr that
    recorded no clause quantity is not told that it "varies no key"."""
    from breakeven.analysis.verdicts import no_verdict_reason
    from breakeven.cli import main

    kw = {} if writer is _sharpness_only else {"peak_k": 1.0}
    write_sweep(
        tmp_path, lrs or [0.1, 0.01], [0, 1], lambda p, lr, s: writer(p, lr, s, status=status, **kw)
    )
    if lrs is None:  # a sweep of a key without a predicted direction
        spec = (tmp_path / "sweep.json").read_text().replace("train.lr", "train.weight_decay")
        (tmp_path / "sweep.json").write_text(spec)
    assert verdicts(read_runs([tmp_path])).empty
    assert reason in no_verdict_reason(read_runs([tmp_path]))
    assert main(["verdict", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"No verdicts: {no_verdict_reason(read_runs([tmp_path]))}" in out
    assert reason in out
