r"""Fixtures of the benchmark tests: offline, with a cache folder of their own.
(``slow`` tests are handled by ``tests/conftest.py``.)"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # the tests never reach the network, and never write to the user's cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CAPTUM_EFFATTN_CACHE", str(tmp_path / "cache"))
