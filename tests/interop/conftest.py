"""Session fixtures for the interop tests: the peer environment, built when absent."""

from __future__ import annotations

import pytest
from peers import ensure_peer_env


@pytest.fixture(scope="session")
def peer_python():
    python, note = ensure_peer_env()
    if python is None:
        pytest.skip(f"peer environment unavailable: {note}")
    print(f"peer environment: {note}")
    return python
