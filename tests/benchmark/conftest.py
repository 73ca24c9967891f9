r"""Shared fixtures of the benchmark tests; ``slow`` tests here are skipped
unless asked for with ``-m slow`` or ``--runslow``."""

from __future__ import annotations

from pathlib import Path
from typing import List

import pytest

HERE = Path(__file__).resolve().parent


def _slow_requested(config: pytest.Config) -> bool:
    if config.getoption("--runslow", default=False):
        return True
    markexpr = config.getoption("-m", default="") or ""
    return "slow" in markexpr and "not slow" not in markexpr


def pytest_collection_modifyitems(
    config: pytest.Config, items: List[pytest.Item]
) -> None:
    if _slow_requested(config):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow or --runslow")
    for item in items:
        if "slow" in item.keywords and HERE in Path(item.path).resolve().parents:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # the tests never reach the network, and never write to the user's cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CAPTUM_EFFATTN_CACHE", str(tmp_path / "cache"))
