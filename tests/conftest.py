"""Shared test set-up: every test starts from the same RNG state; ``one_thread`` for tests that opt in."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


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
