r"""Gradient weighting earns faithfulness on a tiny *trained* model (issue 12):
a 2-layer BERT learns that one key token decides the class; the
gradient-weighted efficient attention of the first layer (every query row)
must then beat random scores on necessity, and rank the key token first."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from captum_effattn import EfficientAttention
from captum_effattn.metrics import aopc_necessity

KEY, N = 3, 16


def _data(count: int, gen: torch.Generator):
    ids = torch.randint(5, 40, (count, N), generator=gen)
    ids[:, 0] = 1  # [CLS]-like first token, never removed
    labels = torch.randint(0, 2, (count,), generator=gen)
    pos = torch.randint(1, N, (count,), generator=gen)
    ids[labels == 1, pos[labels == 1]] = KEY
    return ids, labels


def _trained_model() -> BertForSequenceClassification:
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
    for _ in range(150):
        ids, labels = _data(32, gen)
        loss = model(ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.xfail(
    strict=True,
    reason="open (issue 12): this model saturates (accuracy 1.0, probabilities "
    "~1): every removal but the key's leaves p unchanged, and the first-order "
    "gradient term gives the key token a small *negative* score (-3e-6 against "
    "+5e-8 for the others), so it is ranked last; the gradient-saturation "
    "failure that Integrated Gradients was designed for. A non-saturated "
    "trained model is still to be built for this test",
)
def test_gradient_weighting_beats_random_on_a_trained_model():
    model = _trained_model()
    ids, labels = _data(64, torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = True
    with torch.no_grad():
        pred = model(ids, attention_mask=mask).logits.argmax(-1)
    assert float((pred == labels).float().mean()) > 0.9  # it learnt the task

    def forward(i, m):
        return model(i, attention_mask=m).logits

    scores = EfficientAttention(forward, model=model).attribute(
        ids, target=pred, additional_forward_args=(mask,),
        layer="mean", query="all", weighting="gradient",
    )  # fmt: skip
    random = torch.rand(ids.shape, generator=torch.Generator().manual_seed(2))
    kw = dict(attention_mask=mask, special_tokens_mask=special, fractions=(0.1,))
    nec = aopc_necessity(forward, ids, scores, pred, **kw).aopc
    nec_random = aopc_necessity(forward, ids, random, pred, **kw).aopc
    assert float(nec.mean()) > float(nec_random.mean()) + 0.2
    # where the key decides the class, it is the top-ranked content token
    has_key = (labels == 1) & (pred == 1)
    top = scores.masked_fill(special, -torch.inf).argmax(-1)
    assert float((ids[has_key, top[has_key]] == KEY).float().mean()) > 0.9
