r"""Every registered benchmark method on a tiny random BERT: (B, N) finite
scores, 0 at padding, the same for an example alone and in a padded batch."""

from __future__ import annotations

from typing import Tuple

import pytest
import torch

from captum_effattn.benchmark.methods import (
    METHODS,
    attribute,
    default_methods,
    method_names,
    parse_methods,
)

LENGTHS = [16, 11, 13]


def _batch() -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n = max(LENGTHS)
    ids = torch.randint(5, 120, (len(LENGTHS), n), generator=g)
    mask = torch.zeros_like(ids)
    special = torch.zeros_like(ids, dtype=torch.bool)
    for b, length in enumerate(LENGTHS):
        mask[b, :length] = 1
        ids[b, 0], ids[b, length - 1] = 2, 3  # [CLS] ... [SEP]
        special[b, 0] = special[b, length - 1] = True
    return ids * mask, mask, special


@pytest.fixture(scope="module")
def setup(tiny_model):
    model = tiny_model("bert")

    def forward(ids, mask):
        return model(input_ids=ids, attention_mask=mask).logits

    ids, mask, special = _batch()
    with torch.no_grad():
        target = forward(ids, mask).argmax(-1)
    ctx = dict(special_tokens_mask=special, pad_token_id=0, mask_token_id=4, seed=0)
    return model, forward, ids, mask, target, ctx


@pytest.mark.parametrize("name", method_names())
def test_method_shape_finite_zero_padding(setup, name):
    model, forward, ids, mask, target, ctx = setup
    extra = {"lime_samples": 40, "ig_steps": 8}
    scores = attribute(name, model, forward, ids, mask, target, **ctx, **extra)
    assert scores.shape == ids.shape
    assert scores.dtype == torch.get_default_dtype()
    assert torch.isfinite(scores).all()
    assert (scores[mask == 0] == 0).all()
    assert scores[mask != 0].abs().sum() > 0
    if METHODS[name].family == "perturbation":  # special tokens never removed
        assert (scores[ctx["special_tokens_mask"]] == 0).all()


def test_non_finite_scores_count_as_zero_with_a_warning(setup, monkeypatch):
    # they became 0 silently: ties broken by position in every metric
    import dataclasses

    model, forward, ids, mask, target, ctx = setup

    def broken(model, forward_func, ids, mask, target, **ctx):
        scores = torch.rand(ids.shape, generator=torch.Generator().manual_seed(0))
        scores[1, 2:4] = float("nan")
        scores[1, -1] = float("inf")  # padding: 0 anyway, not counted
        return scores

    spec = dataclasses.replace(METHODS["random"], fn=broken)
    monkeypatch.setitem(METHODS, "random", spec)
    with pytest.warns(RuntimeWarning, match="2 non-finite score.*1 of 3 example"):
        scores = attribute("random", model, forward, ids, mask, target, **ctx)
    assert bool(torch.isfinite(scores).all()) and bool((scores[1, 2:4] == 0).all())


@pytest.mark.parametrize("name", ["efficient", "ablation", "random", "ig"])
def test_method_batch_equals_single(setup, name):
    model, forward, ids, mask, target, ctx = setup
    full = attribute(name, model, forward, ids, mask, target, **ctx, ig_steps=8)
    b, n = 1, LENGTHS[1]
    one_ctx = dict(ctx, special_tokens_mask=ctx["special_tokens_mask"][b : b + 1, :n])
    one = attribute(
        name,
        model,
        forward,
        ids[b : b + 1, :n],
        mask[b : b + 1, :n],
        target[b : b + 1],
        **one_ctx,
        ig_steps=8,
    )
    torch.testing.assert_close(full[b, :n], one[0], rtol=1e-4, atol=1e-5)


def test_random_scores_do_not_depend_on_the_padding_side(setup):
    model, forward, ids, mask, target, ctx = setup
    right = attribute("random", model, forward, ids, mask, target, **ctx)
    # the same rows padded on the left: the real tokens get the same scores
    shift = [ids.shape[1] - length for length in LENGTHS]
    left_ids = torch.stack([row.roll(s) for row, s in zip(ids, shift)])
    left_mask = torch.stack([row.roll(s) for row, s in zip(mask, shift)])
    left = attribute("random", model, forward, left_ids, left_mask, target, **ctx)
    for b, s in enumerate(shift):
        torch.testing.assert_close(left[b].roll(-s), right[b], rtol=0, atol=0)


def test_registry_and_parsing():
    assert set(default_methods()) <= set(METHODS)
    assert "efficient-rollout" not in default_methods()
    assert {"efficient", "ig", "lime", "random"} <= set(default_methods())
    for spec in METHODS.values():
        assert spec.label and spec.description and spec.family
    assert parse_methods("efficient, ig,efficient") == ["efficient", "ig"]
    assert parse_methods(None) == default_methods()
    assert parse_methods("all") == method_names()
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        parse_methods("efficient,nope")
