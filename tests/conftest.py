r"""Shared fixtures: tiny random-weight models of each supported family, the
offline MiniLM model and real documents. Tests marked ``slow`` (real model,
examples, end-to-end runs) are skipped unless ``--runslow`` or ``-m slow`` is
given; CI runs them (see ``.ci/run``)."""

from __future__ import annotations

import os
from typing import Callable, Dict, List, Tuple

import pytest
import torch
from effattn_testing import make_tiny_model, real_documents

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


#: Set to ``cpu`` to run the ``gpu`` tests on the CPU (a dry run of the GPU
#: checks before a GPU is at hand; they then compare the CPU with itself).
GPU_TESTS_DEVICE_ENV = "CAPTUM_EFFATTN_GPU_TESTS_DEVICE"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--runslow", action="store_true", default=False, help="also run slow tests"
    )


def _slow_requested(config: pytest.Config) -> bool:
    if config.getoption("--runslow"):
        return True
    markexpr = config.getoption("-m", default="") or ""
    return "slow" in markexpr and "not slow" not in markexpr


def pytest_collection_modifyitems(
    config: pytest.Config, items: List[pytest.Item]
) -> None:
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    dry_run = os.environ.get(GPU_TESTS_DEVICE_ENV) == "cpu"
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow or -m slow")
    slow = _slow_requested(config)
    for item in items:
        if "gpu" in item.keywords and not (torch.cuda.is_available() or dry_run):
            item.add_marker(skip_gpu)
        if "slow" in item.keywords and not slow:
            item.add_marker(skip_slow)


@pytest.fixture
def gpu_device() -> torch.device:
    r"""The device of the ``gpu`` tests: CUDA, or the CPU for a dry run
    (``CAPTUM_EFFATTN_GPU_TESTS_DEVICE=cpu``)."""
    return torch.device(os.environ.get(GPU_TESTS_DEVICE_ENV) or "cuda")


@pytest.fixture(scope="session")
def tiny_model() -> Callable[..., torch.nn.Module]:
    cache: Dict[Tuple, torch.nn.Module] = {}

    def get(family: str = "bert", seed: int = 0, **kw) -> torch.nn.Module:
        key = (family, seed, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = make_tiny_model(family, seed, **kw)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def minilm():
    from captum_effattn.benchmark.models import load_model

    model, tokenizer = load_model()
    return model, tokenizer


@pytest.fixture(scope="session")
def real_batch(minilm):
    _, tok = minilm
    enc = tok(
        real_documents(2), return_tensors="pt", padding=True, truncation=True,
        max_length=128,
    )  # fmt: skip
    return enc["input_ids"], enc["attention_mask"]
