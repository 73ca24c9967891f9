r"""Gradient weighting earns faithfulness on tiny *trained* models (issue 12).

Two 2-layer BERTs are trained from scratch on synthetic tasks:

* *evidence*: up to three positive and three negative words among neutral
  ones, the class is "more positive than negative words" (the evidence is
  spread over several tokens, as in sentiment). Gradient-weighted efficient
  attention must beat random scores on AOPC necessity by a wide margin, and
  beat the unweighted attention of the same layer.
* *single key*: one token decides the class. Here the first-order
  attention-times-gradient term fails (a recorded limitation, strict xfail):
  see the test's reason and the docs' *Mathematics* page, "When
  first-order weighting fails".
"""

from __future__ import annotations

from typing import Callable, Tuple

import pytest
import torch
from torch import Tensor
from transformers import BertConfig, BertForSequenceClassification

from captum_effattn import AttentionWeights, EfficientAttention
from captum_effattn.metrics import aopc_necessity

N = 16  # tokens per sequence; position 0 is a [CLS]-like token, never removed
KEY = 3


def _evidence_data(count: int, gen: torch.Generator) -> Tuple[Tensor, Tensor]:
    ids = torch.randint(15, 40, (count, N), generator=gen)  # neutral words
    ids[:, 0] = 1
    labels = torch.zeros(count, dtype=torch.long)
    for r in range(count):
        p, n = 0, 0
        while p == n:
            p, n = torch.randint(0, 4, (2,), generator=gen).tolist()
        where = torch.randperm(N - 1, generator=gen)[: p + n] + 1
        words = torch.cat(
            [
                torch.randint(5, 10, (p,), generator=gen),  # positive words
                torch.randint(10, 15, (n,), generator=gen),  # negative words
            ]
        )
        ids[r, where] = words
        labels[r] = int(p > n)
    return ids, labels


def _key_data(count: int, gen: torch.Generator) -> Tuple[Tensor, Tensor]:
    ids = torch.randint(5, 40, (count, N), generator=gen)
    ids[:, 0] = 1
    labels = torch.randint(0, 2, (count,), generator=gen)
    pos = torch.randint(1, N, (count,), generator=gen)
    ids[labels == 1, pos[labels == 1]] = KEY
    return ids, labels


def _train(
    data: Callable[[int, torch.Generator], Tuple[Tensor, Tensor]], steps: int
) -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=48, max_position_embeddings=32, num_labels=2,
        attn_implementation="eager",
    )  # fmt: skip
    model = BertForSequenceClassification(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        ids, labels = data(32, gen)
        loss = model(ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _setup(data, steps: int):
    model = _train(data, steps)
    ids, labels = data(64, torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = True
    with torch.no_grad():
        pred = model(ids, attention_mask=mask).logits.argmax(-1)
    assert float((pred == labels).float().mean()) > 0.9  # it learnt the task

    def forward(i, m):
        return model(i, attention_mask=m).logits

    def necessity(scores: Tensor) -> float:
        kw = dict(attention_mask=mask, special_tokens_mask=special, fractions=(0.1,))
        return float(aopc_necessity(forward, ids, scores, pred, **kw).aopc.mean())

    random = torch.rand(ids.shape, generator=torch.Generator().manual_seed(2))
    return model, forward, ids, labels, mask, special, pred, necessity, random


@pytest.fixture(scope="module")
def evidence():
    return _setup(_evidence_data, steps=300)


@pytest.mark.parametrize("cls", [EfficientAttention, AttentionWeights])
@pytest.mark.parametrize(
    "layer, query",
    [(0, "all"), ("mean", "all"), (-1, None)],
    ids=["first-all-rows", "mean-all-rows", "last-cls-row"],
)
def test_gradient_weighting_beats_random_and_unweighted(evidence, cls, layer, query):
    model, forward, ids, _, mask, _, pred, necessity, random = evidence
    explainer = cls(forward, model=model)

    def scores(weighting: str) -> Tensor:
        return explainer.attribute(
            ids, target=pred, additional_forward_args=(mask,),
            layer=layer, query=query, weighting=weighting,
        )  # fmt: skip

    nec_grad, nec_plain, nec_random = (
        necessity(scores("gradient")),
        necessity(scores("none")),
        necessity(random),
    )
    # measured (10% bin; the toy training depends on the thread count): one
    # thread gradient 0.65-0.67, unweighted 0.42-0.53, random 0.04; two
    # threads 0.47-0.64, 0.40-0.49, 0.07
    assert nec_grad > nec_random + 0.2
    assert nec_grad > nec_plain


def test_gradient_rollout_beats_random(evidence):
    model, forward, ids, _, mask, _, pred, necessity, random = evidence
    scores = EfficientAttention(forward, model=model).attribute(
        ids, target=pred, additional_forward_args=(mask,), layer="gradient_rollout"
    )
    assert necessity(scores) > necessity(random) + 0.2


@pytest.mark.xfail(
    strict=True,
    reason="recorded limitation (issue 12): when one token decides the class "
    "and the attention rows concentrate on it, the first-order term "
    "A_ij dy/dA_ij gives that token a small negative score (-3e-6 against "
    "+5e-8 for the others), so it is ranked last and necessity is ~0 against "
    "0.11 for random scores. It is not saturation: the same happens with "
    "label smoothing 0.2 (probabilities ~0.90). Unweighted attention ranks "
    "the key first on this model (necessity 0.40-0.50)",
)
def test_gradient_weighting_on_a_single_deciding_token():
    model, forward, ids, labels, mask, special, pred, necessity, random = _setup(
        _key_data, steps=150
    )
    scores = EfficientAttention(forward, model=model).attribute(
        ids, target=pred, additional_forward_args=(mask,),
        layer="mean", query="all", weighting="gradient",
    )  # fmt: skip
    assert necessity(scores) > necessity(random) + 0.2
    # where the key decides the class, it is the top-ranked content token
    has_key = (labels == 1) & (pred == 1)
    top = scores.masked_fill(special, -torch.inf).argmax(-1)
    assert float((ids[has_key, top[has_key]] == KEY).float().mean()) > 0.9
