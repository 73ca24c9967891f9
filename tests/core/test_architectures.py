r"""Every supported architecture on a random-weight model from a small config
(sequences longer than the head dimension 8): efficient attention rows are
distributions, output-equivalent at the model level, zero on future keys for
decoders, padding-invariant (right padding, and left padding for decoders), and the
attribution classes run with Captum's interface."""

from __future__ import annotations

import pytest
import torch
from effattn_testing import random_batch

from captum_effattn import (
    AttentionRollout,
    EffectiveAttention,
    EfficientAttention,
    attention_weights,
    efficient_attention,
    supported_architectures,
)
from captum_effattn._core.adapters import ModelAdapter

ENCODERS = ["bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert"]
DECODERS = ["gpt2", "llama", "mistral", "qwen2"]
PAD = {"roberta": 1, "xlm-roberta": 1, "camembert": 1}


def _inputs(family, lengths, n=28, left=False, seed=0):
    ids, mask = random_batch(len(lengths), n, lengths=lengths, seed=seed, left=left)
    ids = ids + (mask == 0).long() * PAD.get(family, 0)
    kwargs = {}
    if family in DECODERS:
        # positions count real tokens only, so left padding changes nothing
        kwargs["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0)
    return ids, mask, kwargs


def test_every_family_in_the_table_is_tested():
    assert set(ENCODERS + DECODERS) == set(supported_architectures())


@pytest.mark.parametrize("family", ENCODERS + DECODERS)
def test_distribution_equivalence_causality(tiny_model, family):
    model = tiny_model(family)
    ids, mask, kw = _inputs(family, [28, 19])
    e, cert = efficient_attention(model, ids, mask, return_certificate=True, **kw)
    assert cert.ok(rtol=1e-6), str(cert)
    a = attention_weights(model, ids, mask, **kw)
    assert float((e - a).abs().max()) > 1e-2  # n > d_h + 1: they differ
    if family in DECODERS:
        assert float(torch.triu(e, diagonal=1).abs().max()) == 0.0
    adapter = ModelAdapter(model)
    with torch.no_grad():
        base = model(input_ids=ids, attention_mask=mask, **kw).logits
        with adapter.replace_attention({i: e[i] for i in range(e.shape[0])}):
            swapped = model(input_ids=ids, attention_mask=mask, **kw).logits
    assert torch.allclose(base, swapped, atol=1e-5)


@pytest.mark.parametrize(
    "family, left",
    [(f, False) for f in ENCODERS]
    + [(f, side) for f in DECODERS for side in (False, True)],
)
def test_padding_invariance(tiny_model, family, left):
    model = tiny_model(family)
    lengths = [24, 15]
    ids, mask, kw = _inputs(family, lengths, n=24, left=left, seed=1)
    batch = efficient_attention(model, ids, mask, **kw)
    for i, n in enumerate(lengths):
        sl = slice(24 - n, 24) if left else slice(0, n)
        one = efficient_attention(model, ids[i : i + 1, sl], mask[i : i + 1, sl])
        assert torch.allclose(batch[:, i, :, sl, sl], one[:, 0], atol=1e-6)


@pytest.mark.parametrize("family", ENCODERS + DECODERS)
def test_attribution_classes_run(tiny_model, family):
    model = tiny_model(family)
    ids, mask, kw = _inputs(family, [28, 19], left=family in DECODERS)

    def forward(i, m):
        pos = (m.cumsum(1) - 1).clamp(min=0)
        extra = {"position_ids": pos} if family in DECODERS else {}
        return model(input_ids=i, attention_mask=m, **extra).logits

    for cls in (EfficientAttention, EffectiveAttention, AttentionRollout):
        out = cls(forward, model=model).attribute(
            ids, target=0, additional_forward_args=(mask,)
        )
        assert out.shape == ids.shape and bool(torch.isfinite(out).all())
        assert float(out[mask == 0].abs().sum()) == 0.0
    scores, res = EfficientAttention(forward, model=model).attribute(
        ids, additional_forward_args=(mask,), return_matrices=True
    )
    if family in DECODERS:
        # default query: the last real token
        last = torch.where(mask.bool(), torch.arange(28), -1).amax(1)
        assert res.rows[:, 0].tolist() == last.tolist()
    else:
        assert res.rows[:, 0].tolist() == [0, 0]
    assert torch.allclose(scores.sum(1), torch.ones(2), atol=1e-5)
