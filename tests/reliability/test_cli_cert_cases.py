r"""User cases of the ``explain``, ``finetune`` and ``datasets`` commands, of
:class:`~captum_effattn.Certificate` and of
:func:`~captum_effattn.attention_support_test`: usage errors exit with code 2
and a clear message before any work, and the attention-level test measures
what its docs say (the layers asked for, padded rows untouched, the keys a
decoder's row can see)."""

from __future__ import annotations

import pytest
import torch
from effattn_testing import random_batch

from captum_effattn import (
    attention_support_test,
    attention_weights,
    efficient_attention,
)
from captum_effattn._core.adapters import ModelAdapter


# ------------------------------------------------------------ Certificate
def test_certificate_prints_no_negative_zero(tiny_model):
    model = tiny_model("bert")
    ids, mask = random_batch(2, 30, lengths=[30, 22])
    _, cert = efficient_attention(model, ids, mask, return_certificate=True)
    assert cert.ok() and float(cert.min_entry.min()) == 0.0  # exact zeros
    assert "min entry 0.00e+00" in str(cert) and "-0.00" not in str(cert)


# ------------------------------------------------ attention_support_test
def test_support_test_of_some_layers(tiny_model):
    model = tiny_model("bert")  # 2 layers
    ids, mask = random_batch(2, 24, lengths=[24, 18])
    res = attention_support_test(model, ids, mask, layers=-1)
    # the last layer's efficient attention went into the last layer
    assert torch.allclose(res.p_efficient, res.p_full, atol=1e-6)
    assert res.certificate.output_residual.shape[0] == 1
    # only the last layer was restricted to its support
    e = efficient_attention(model, ids, mask, layers=-1)
    raw = attention_weights(model, ids, mask, layers=-1)
    kept = raw * (e > 0)
    kept = kept / kept.sum(-1, keepdim=True).clamp_min(1e-300)
    with torch.no_grad(), ModelAdapter(model).replace_attention({1: kept[0]}):
        probs = torch.softmax(model(ids, attention_mask=mask).logits.double(), -1)
    expected = probs[torch.arange(2), res.target]
    assert torch.allclose(res.p_support, expected, atol=1e-6)


def test_support_test_refuses_rows_and_bad_targets(tiny_model):
    model = tiny_model("bert")
    ids, mask = random_batch(2, 12)
    with pytest.raises(ValueError, match="rows"):
        attention_support_test(model, ids, mask, rows=0)
    with pytest.raises(ValueError, match="out of range"):
        attention_support_test(model, ids, mask, target=5)
    with pytest.raises(ValueError, match="one per example"):
        attention_support_test(model, ids, mask, target=[0, 1, 1])
    res = attention_support_test(model, ids, mask, target=[1, 0])
    assert res.target.tolist() == [1, 0]


@pytest.mark.parametrize("objective", ["min_norm", "sparse"])
def test_support_test_left_padded_encoder_keeps_its_prediction(tiny_model, objective):
    # BERT's classifier reads position 0, a padded row under left padding:
    # efficient attention must leave the padded rows as the model had them
    model = tiny_model("bert")
    ids, mask = random_batch(2, 24, lengths=[24, 17], left=True)
    res = attention_support_test(model, ids, mask, objective=objective)
    assert res.certificate.ok()
    assert torch.allclose(res.p_efficient, res.p_full, atol=1e-6)


def test_support_fraction_of_a_decoder_counts_visible_keys(tiny_model):
    model = tiny_model("gpt2")
    ids, mask = random_batch(2, 20, lengths=[20, 14])
    res = attention_support_test(model, ids, mask)
    e = efficient_attention(model, ids, mask)
    for b in range(2):
        n = int(mask[b].sum())
        rows = e[:, b, :, :n, :n]  # (L, H, n, n), causal
        visible = torch.arange(1, n + 1, dtype=rows.dtype)  # row i sees i + 1
        expected = ((rows > 0).sum(-1) / visible).mean()
        assert abs(float(res.support_fraction[b]) - float(expected)) < 1e-12
    assert torch.allclose(res.p_efficient, res.p_full, atol=1e-6)
