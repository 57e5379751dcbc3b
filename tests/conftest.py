"""Shared test set-up: every test starts from the same RNG state; ``device`` runs a test on each device;
``one_thread`` for tests that opt in."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
"""cpu everywhere, cuda where torch sees a GPU: on a CPU-only machine a test only gains the [cpu] id."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the CUDA instances of ``device`` tests ``cuda``: `pytest -m cuda` runs exactly those."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("device") == "cuda":
            item.add_marker(pytest.mark.cuda)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> Iterator[str]:
    """A device for tests of device-independent math. Inputs are drawn on the CPU and moved, so both
    devices see the same numbers. On CUDA, torch's deterministic algorithms are on (warn-only) for the
    test: atomic adds would otherwise make two runs of the same sparse step differ in the last bit,
    and some tests compare paths bit for bit."""
    if request.param != "cuda":
        yield request.param
        return
    before, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield request.param
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test, restored after it. Tiny matrices gain nothing from threads, and on
    a busy 2-core machine OpenMP spin-waiting makes them up to a thousand times slower. A module opts in
    with ``pytestmark = pytest.mark.usefixtures("one_thread")``, a folder with an autouse fixture in its
    conftest.py that requests this one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
