import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from cases import CASES, Case, make_case
from helpers import write_cifar, write_fashion, write_tiny_npz

# The tests use tiny tensors: one thread is as fast, and on a shared 2-core machine two
# OpenMP threads fighting another process made them up to 50x slower (measured).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test starts with one torch thread: a library may set the count for the whole
    process (Lightning's launcher sets it to the number of CPUs)."""
    torch.set_num_threads(1)
    yield


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "examples(n): the number of examples of the `case` fixture's data (default 12)"
    )


@pytest.fixture(params=CASES, ids=CASES)
def case(request) -> Case:
    """Each tiny float64 curvature case of the catalogue (cases.py): ``case.model``,
    ``case.loss_fn``, ``case.data``, ``case.name``; a fresh copy for every test.
    ``@pytest.mark.examples(n)`` sets the number of examples, and
    ``@pytest.mark.parametrize("case", [...], indirect=True)`` a subset of the cases."""
    marker = request.node.get_closest_marker("examples")
    return make_case(request.param, **({"n": marker.args[0]} if marker else {}))


@pytest.fixture
def tiny_npz(tmp_path) -> Path:
    """``tmp_path/tiny.npz``: the tiny dataset of :func:`helpers.write_tiny_npz`."""
    return write_tiny_npz(tmp_path / "tiny.npz")


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> Path:
    """Only ``tmp_path/data`` is searched for datasets: no $BREAKEVEN_DATA, user or system
    folders."""
    import breakeven.data as bdata

    monkeypatch.delenv("BREAKEVEN_DATA", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(bdata._base, "SYSTEM_DATA_DIRS", [tmp_path / "system"])
    (tmp_path / "data").mkdir()
    return tmp_path / "data"


@pytest.fixture
def fashion_mnist(isolated) -> Path:
    """The isolated data root holding tiny FashionMNIST IDX files (40 training, 10 test
    images; :func:`helpers.write_fashion`)."""
    write_fashion(isolated / "fashion-mnist")
    return isolated


@pytest.fixture
def cifar10(isolated) -> Path:
    """The isolated data root holding tiny CIFAR-10 python batches (8 images each;
    :func:`helpers.write_cifar`)."""
    write_cifar(isolated / "cifar-10-batches-py")
    return isolated
