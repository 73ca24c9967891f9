r"""A bag-of-words classifier whose answers can be computed by hand, for the
metric tests (imported by ``conftest.py`` and the test modules)."""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor, nn

PAD, CLS, SEP, MASK = 0, 1, 2, 3
VOCAB = 12  # ids 4 .. 11 are words


class BagOfWords(nn.Module):
    r"""logits = bias + sum_t mask_t * pos_t * W[ids_t] (+ extra_bias).

    ``W`` (V, C) gives each token id a score per class; ``pos`` (N,) optional
    position weights make the model order-sensitive, so that deleting (which
    shifts tokens) differs from padding. Counts its forward calls.
    """

    def __init__(
        self,
        weights: Tensor,
        bias: Tensor,
        position_weights: Optional[Tensor] = None,
    ) -> None:
        super().__init__()
        self.weights = weights.double()
        self.bias = bias.double()
        self.position_weights = position_weights
        self.calls = 0
        self.rows: List[int] = []

    def forward(
        self,
        ids: Tensor,
        attention_mask: Optional[Tensor] = None,
        extra_bias: Optional[Tensor] = None,
    ) -> Tensor:
        assert not ids.is_floating_point()
        self.calls += 1
        self.rows.append(ids.shape[0])
        contrib = self.weights[ids]  # (B, N, C)
        if self.position_weights is not None:
            contrib = contrib * self.position_weights[: ids.shape[1]].view(1, -1, 1)
        if attention_mask is not None:
            contrib = contrib * attention_mask.unsqueeze(-1).to(contrib.dtype)
        logits = contrib.sum(1) + self.bias
        if extra_bias is not None:
            logits = logits + extra_bias
        return logits


def hand_weights() -> Tensor:
    r"""W (12, 2): special tokens and [MASK] have weights too, so that
    removing them by mistake or masking instead of deleting shows."""
    return torch.tensor(
        [
            [5.0, -5.0],  # PAD (only visible without an attention mask)
            [0.25, 0.0],  # CLS
            [0.0, 0.5],  # SEP
            [0.3, -0.2],  # MASK
            [1.0, 0.0],  # 4
            [0.0, 2.0],  # 5
            [0.5, 0.5],  # 6
            [-1.0, 1.5],  # 7
            [2.0, -1.0],  # 8
            [0.0, 0.75],  # 9
            [1.5, 1.0],  # 10
            [-0.5, 0.0],  # 11
        ]
    )
