"""Break-even detection and conjecture verdicts on synthetic run and sweep directories."""

import json
import math

import pytest

from breakeven.analysis import break_even_points, maxima, read_runs, verdicts


def write_run(
    path, lr, seed, status="finished", *, peak_k=None, peak_h=None, stab=None, acc=None, grow=False
):
    """A run directory with covariance, hessian, stability and evaluation records."""
    path.mkdir(parents=True)
    cfg = {"name": "t", "train": {"model": "mlp", "lr": lr, "batch_size": 64, "init_seed": seed}}
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "status").write_text(status)
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
        if stab is not None:
            recs.append(
                {"step": s, "epoch": ep, "measure": "stability", "values": {"stability": stab[i]}}
            )
        if acc is not None:
            recs.append(
                {"step": s, "epoch": ep, "measure": "evaluation", "values": {"train_acc": acc[i]}}
            )
    (path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def write_sweep(root, lrs, seeds, values, statuses=None, grow=False):
    """``values[(lr, seed)] = (peak_k, peak_h)``."""
    runs = []
    for lr in lrs:
        for s in seeds:
            name = f"lr={lr}_seed={s}"
            k, h = values[(lr, s)]
            status = (statuses or {}).get((lr, s), "finished")
            write_run(root / "runs" / name, lr, s, status, peak_k=k, peak_h=h, grow=grow)
            runs.append({"name": name, "params": {"train.lr": lr}, "seed": s})
    spec = {"kind": "sweep", "preset": "p", "grid": {"train.lr": lrs}, "seeds": seeds, "runs": runs}
    (root / "sweep.json").write_text(json.dumps(spec))
    return root


def test_break_even_point_peaks_and_accuracy_crossings(tmp_path):
    write_run(
        tmp_path / "a",
        0.1,
        0,
        peak_k=4.0,
        peak_h=8.0,
        stab=[0.5, 0.9, 1.2, 0.8, 1.5],
        acc=[0.1, 0.3, 0.6, 0.7, 0.9],
    )
    write_run(tmp_path / "b", 0.1, 1, peak_k=1.0, stab=[0.1] * 5, acc=[0.1] * 5)
    df = break_even_points(read_runs([tmp_path / "a", tmp_path / "b"]), thresholds=(0.5, 0.65))
    a, b = df.iloc[0], df.iloc[1]
    assert a["break_even_step"] == 20 and a["break_even_epoch"] == 1.0
    assert a["break_even_train_acc"] == pytest.approx(0.6)
    assert a["peak_lambda_K_1"] == 4.0 and a["peak_lambda_K_1_step"] == 20
    assert a["peak_lambda_H_1"] == 8.0 and a["peak_lambda_H_1_step"] == 30
    assert a["peak_lambda_H_1_train_acc"] == pytest.approx(0.7)
    assert a["acc_0.5_epoch"] == 1.0 and a["acc_0.65_epoch"] == 1.5
    assert math.isnan(b["break_even_step"]) and math.isnan(b["acc_0.5_epoch"])
    assert math.isnan(b["peak_lambda_H_1"])  # not tracked


def test_train_accuracy_is_interpolated_between_evaluations(tmp_path):
    write_run(
        tmp_path / "a", 0.1, 0, peak_k=4.0, stab=[0, 0, 0, 1.0, 0], acc=[0, 0.2, 0.4, 0.5, 0.8]
    )
    write_run(tmp_path / "b", 0.1, 0, stab=[0, 0, 0, 1.0, 0], acc=None)
    df = break_even_points(read_runs([tmp_path / "a", tmp_path / "b"]))
    assert df.iloc[0]["peak_lambda_K_1_train_acc"] == pytest.approx(0.4)
    assert df.iloc[0]["break_even_train_acc"] == pytest.approx(0.5)
    assert math.isnan(df.iloc[1]["break_even_train_acc"])  # no evaluations


LRS = [0.01, 0.1]


def test_verdicts_supported_when_every_pair_orders_as_predicted(tmp_path):
    values = {(0.01, s): (10.0 + s, 50.0 + s) for s in range(3)}
    values.update({(0.1, s): (3.0 + s, 20.0 + s) for s in range(3)})
    runs = read_runs(write_sweep(tmp_path, LRS, [0, 1, 2], values))
    assert runs.swept == ["lr"]
    v = verdicts(runs).set_index("quantity")
    assert v.loc["lambda_K^1", "pairs"] == 9 and v.loc["lambda_K^1", "ordered"] == 1.0
    assert v.loc["lambda_K^1", "verdict"] == "supported"
    assert v.loc["lambda_H^1", "verdict"] == "supported"
    assert v.loc["Tr(K)", "verdict"] == "supported"
    # the conditioning (0.1 (3 - |i - 2|) / lr, max 0.3 / lr) is higher for the smaller lr
    assert v.loc["lambda_K^*/lambda_K^1", "verdict"] == "contradicted"
    assert v.loc["lambda_K^*/lambda_K^1", "ordered"] == 0.0
    assert "lr=0.01: 11 ± 1 (n=3)" in v.loc["lambda_K^1", "maxima"]
    m = maxima(runs)
    assert m.set_index("run").loc["lr=0.1_seed=2", "lambda_K_1"] == 5.0


def test_maxima_leave_out_the_initial_point(tmp_path):
    write_run(tmp_path / "a", 0.1, 0, peak_k=4.0)
    recs = (tmp_path / "a" / "records.jsonl").read_text().splitlines()
    first = json.loads(recs[0])
    first["values"]["lambda_K_1"] = 100.0  # the largest value, at step 0
    recs[0] = json.dumps(first)
    (tmp_path / "a" / "records.jsonl").write_text("\n".join(recs) + "\n")
    assert maxima(read_runs(tmp_path / "a"))["lambda_K_1"].iloc[0] == 4.0


def test_a_maximum_at_the_last_measurement_makes_the_verdict_inconclusive(tmp_path):
    values = {(0.01, s): (10.0 + s, 50.0 + s) for s in range(2)}
    values.update({(0.1, s): (3.0 + s, 20.0 + s) for s in range(2)})
    runs = read_runs(write_sweep(tmp_path, LRS, [0, 1], values, grow=True))
    m = maxima(runs).set_index("run")
    assert m["lambda_K_1_at_end"].all() and not m["lambda_H_1_at_end"].any()
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
    v = verdicts(read_runs(write_sweep(tmp_path / "a", LRS, [0, 1], values))).set_index("quantity")
    # pairs: (10 vs 5) yes, (10 vs 1) yes, (2 vs 5) no, (2 vs 1) yes: 3/4 < 0.8
    assert (
        v.loc["lambda_K^1", "ordered"] == 0.75 and v.loc["lambda_K^1", "verdict"] == "inconclusive"
    )
    # equal maxima are ties: no untied pair, no verdict
    assert v.loc["lambda_H^1", "ties"] == 4 and v.loc["lambda_H^1", "pairs"] == 0
    assert v.loc["lambda_H^1", "verdict"] == "inconclusive"
    one = {(0.01, 0): (10.0, 1.0), (0.1, 0): (5.0, 1.0)}
    v1 = verdicts(read_runs(write_sweep(tmp_path / "b", LRS, [0], one)))
    assert set(v1["verdict"]) == {"inconclusive"} and set(v1["pairs"] + v1["ties"]) == {1}


def test_diverged_runs_are_left_out_and_named(tmp_path):
    values = {(lr, s): (10.0 / lr, 1.0) for lr in LRS for s in (0, 1)}
    values[(0.1, 1)] = (math.nan, math.nan)
    root = write_sweep(tmp_path, LRS, [0, 1], values, statuses={(0.1, 1): "diverged"})
    v = verdicts(read_runs(root)).set_index("quantity")
    assert v.loc["lambda_K^1", "pairs"] == 2
    assert v.loc["lambda_K^1", "left_out"] == "lr=0.1_seed=1 (diverged)"


def test_verdict_needs_a_valid_rule(tmp_path):
    values = {(lr, 0): (1.0, 1.0) for lr in LRS}
    with pytest.raises(ValueError, match="support"):
        verdicts(read_runs(write_sweep(tmp_path, LRS, [0], values)), support=0.4)


def test_one_measurement_per_run_is_at_its_end(tmp_path):
    for lr in LRS:
        path = tmp_path / f"lr{lr}"
        path.mkdir()
        cfg = {"train": {"model": "mlp", "lr": lr, "batch_size": 64, "init_seed": 0}}
        (path / "config.json").write_text(json.dumps(cfg))
        (path / "status").write_text("finished")
        rec = {"step": 5, "epoch": 0.1, "measure": "covariance", "values": {"lambda_K_1": 1 / lr}}
        (path / "records.jsonl").write_text(json.dumps(rec) + "\n")
    runs = [{"name": f"lr{lr}", "params": {"train.lr": lr}, "seed": 0} for lr in LRS]
    (tmp_path / "sweep.json").write_text(json.dumps({"grid": {"train.lr": LRS}, "runs": runs}))
    import shutil

    for lr in LRS:  # a sweep's runs live under runs/
        (tmp_path / "runs").mkdir(exist_ok=True)
        shutil.move(str(tmp_path / f"lr{lr}"), str(tmp_path / "runs" / f"lr{lr}"))
    m = maxima(read_runs(tmp_path))
    assert m["lambda_K_1_at_end"].all()


def test_list_valued_grids_are_grouped(tmp_path):
    values = {(lr, 0): (1.0 / lr, 1.0) for lr in LRS}
    root = write_sweep(tmp_path, LRS, [0], values)
    spec = json.loads((root / "sweep.json").read_text())
    spec["grid"]["train.model_kwargs.hidden"] = [[8], [16]]
    for r in spec["runs"]:
        r["params"]["train.model_kwargs.hidden"] = [8]
    (root / "sweep.json").write_text(json.dumps(spec))
    runs = read_runs(root)
    assert list(runs.table["hidden"]) == [(8,), (8,)]
    assert len(verdicts(runs)) == 4  # no TypeError: unhashable list
