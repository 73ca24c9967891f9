r"""Fixtures of the metric tests: a bag-of-words classifier whose answers can be
computed by hand. (``slow`` tests are handled by ``tests/conftest.py``.)"""

from __future__ import annotations

from typing import Callable, Optional

import pytest
import torch
from metrics_toy import CLS, PAD, SEP, BagOfWords, hand_weights
from torch import Tensor


@pytest.fixture
def make_bow() -> Callable[..., BagOfWords]:
    def make(
        weights: Optional[Tensor] = None,
        bias: Optional[Tensor] = None,
        position_weights: Optional[Tensor] = None,
    ) -> BagOfWords:
        w = hand_weights() if weights is None else weights
        b = torch.zeros(w.shape[1]) if bias is None else bias
        return BagOfWords(w, b, position_weights)

    return make


@pytest.fixture
def hand_batch() -> dict:
    r"""Two examples of mixed lengths, padded, with a HF-style special tokens
    mask (padding marked special too) and attributions with ties."""
    ids = torch.tensor(
        [
            [CLS, 4, 5, 6, 7, SEP, PAD, PAD],
            [CLS, 8, 9, 10, 11, 4, 5, SEP],
        ]
    )
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    special = torch.tensor([[1, 0, 0, 0, 0, 1, 1, 1], [1, 0, 0, 0, 0, 0, 0, 1]])
    # specials and padding score highest: they must still never be removed;
    # example 1 ties four tokens at 2.0: earlier positions win
    attr = torch.tensor(
        [
            [9.0, 0.1, 0.5, 0.3, 0.2, 9.0, 9.0, 9.0],
            [9.0, 1.0, 2.0, 2.0, 0.5, 2.0, 2.0, 9.0],
        ]
    )
    return dict(ids=ids, mask=mask, special=special, attr=attr)
