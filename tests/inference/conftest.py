"""One torch thread while these tests run: the problems are tiny, and on a shared 2-core machine a
second intra-op thread costs far more in contention than it gains. Restored after each test."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread) -> None:
    """Every test in this folder gets tests/conftest.py's ``one_thread``."""
