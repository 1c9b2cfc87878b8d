"""The public API: ``breakeven.__all__`` grouped by purpose, one import path per public
name, no duplicated result types."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re

import pytest

import breakeven as be

#: Exceptions re-exported where they are raised, as breakeven/errors.py says (so that
#: ``except breakeven.train.ConfigError`` works beside ``except breakeven.ConfigError``).
RAISED_WHERE_REEXPORTED = {"ConfigError", "CorruptDatasetError", "DatasetNotFoundError"}


def _modules():
    out = {}
    for info in pkgutil.walk_packages(be.__path__, "breakeven."):
        if info.name.startswith("breakeven.integrations") or info.name.endswith("__main__"):
            continue  # the integrations need lightning / transformers
        out[info.name] = importlib.import_module(info.name)
    return out


def test_all_is_grouped_by_purpose_as_the_docstring_says():
    source = open(be.__file__).read()
    block = source[source.index("__all__ = [") :]
    sections = re.findall(r"    # -- (.+)", block)
    assert [s.split(":")[0] for s in sections] == [
        "measure in your own loop",
        "write your own measure",
        "quantities, one call each, and their results",
        "building blocks",
        "records and run directories",
        "reproduce the paper",
        "analysis",
    ]
    for title in ("Measure in your own loop", "Building blocks", "Reproduce the paper"):
        assert f"**{title}**" in be.__doc__
    assert len(be.__all__) == len(set(be.__all__))
    assert set(be.__all__) - {"__version__"} == set(be._EXPORTS)
    for name in ("per_example_gradients", "covariance_from_gradients", "export_run"):
        assert name in be.__all__


def test_each_public_name_has_one_import_path():
    """No module or package lists a public name in its ``__all__`` except the module that
    defines it and the packages above that module."""
    modules = _modules()
    extra = []
    for name in be.__all__:
        obj = getattr(be, name)
        home = getattr(obj, "__module__", None)
        if not isinstance(home, str) or name in RAISED_WHERE_REEXPORTED:
            continue
        allowed = {home.rsplit(".", i)[0] for i in range(home.count(".") + 1)}
        extra += [
            f"{module}.{name}"
            for module, m in modules.items()
            if module not in allowed and name in getattr(m, "__all__", ())
        ]
    assert extra == []
    # the aliases of the readers and the registry are gone
    import breakeven.measures.tracked
    import breakeven.records
    import breakeven.tracking
    import breakeven.tracking.store

    for module, names in [
        (breakeven.tracking, ["export", "load_run", "read_records", "MEASURES", "Measure"]),
        (breakeven.tracking.store, ["export", "load_run", "read_records"]),
        (breakeven.records, ["export"]),
    ]:
        assert [n for n in names if hasattr(module, n)] == [], module.__name__
    assert "MEASURES" not in breakeven.measures.tracked.__dict__.get("__all__", [])
    assert be.export_run is breakeven.records.export_run


def test_eigen_result_extends_lanczos_result_without_repeating_its_fields():
    lanczos = [f.name for f in dataclasses.fields(be.LanczosResult)]
    eigen = [f.name for f in dataclasses.fields(be.EigenResult)]
    assert issubclass(be.EigenResult, be.LanczosResult)
    assert eigen[: len(lanczos)] == lanczos
    assert set(be.EigenResult.__annotations__) == {
        "seconds",
        "bn_mode",
        "chunk_size",
        "num_examples",
    }
    assert not set(be.EigenResult.__annotations__) & set(lanczos)


def test_hessian_eigenvalues_returns_the_lanczos_result_of_the_hessian():
    from cases import make_case

    c = make_case("mlp_ce")
    res = be.hessian_eigenvalues(c.model, c.loss_fn, c.data, k=2, tol=1e-8)
    assert isinstance(res, be.LanczosResult) and res.num_examples == len(c.y)
    ref = be.lanczos(be.HessianOperator(c.model, c.loss_fn, c.data), 2, tol=1e-8)
    assert res.eigenvalues.tolist() == pytest.approx(ref.eigenvalues.tolist(), rel=1e-8)
