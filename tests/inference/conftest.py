"""One torch thread while these tests run: the problems are tiny, and on a shared 2-core machine a
second intra-op thread costs far more in contention than it gains. Restored after each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
