r"""Guards against mutations of the metrics that the other tests let through.

A mutation audit changed ``captum_effattn/metrics/_core`` one small,
realistic mistake at a time (an off-by-one in k, a lost mask, per-example
arguments mixed up with the batch...) and ran the tests. Each test here kills
at least one mutant that survived them (or that only a slow benchmark test
caught); the mutant is named in the test's comment. Expected values come from
the toy bag-of-words model evaluated by hand here, never from the package.
"""

from __future__ import annotations

import math
from typing import List

import pytest
import torch
from metrics_toy import CLS, PAD, SEP, hand_weights

from captum_effattn.metrics import (
    minimal_necessary_size,
    minimal_sufficient_size,
    necessity,
    sufficiency,
    token_removal_attack,
)


def _probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.double(), dim=-1)


def _bow_logits(ids: List[int], extra: torch.Tensor) -> torch.Tensor:
    r"""Logits of the toy model (zero bias, no position weights) on the real
    tokens ``ids``, written out independently of ``BagOfWords``."""
    w = hand_weights().double()
    out = extra.double().clone()
    for t in ids:
        out = out + w[t]
    return out


# ------------------------------------------------------------------ k >= 1
@pytest.mark.parametrize("fraction", [1e-7, 1e-9])
def test_a_tiny_fraction_still_removes_one_token(make_bow, fraction):
    # Mutant: _num_tokens without ``k = max(k, 1)``: for fraction * n below the
    # 1e-6 rounding tolerance, k = ceil(x - 1e-6) is 0 and nothing is removed
    # (necessity 0, sufficiency keeps only the special tokens), against the
    # documented "k = ceil(fraction x n), at least 1".
    model = make_bow()
    row = [CLS, 4, 5, 6, 7, SEP]
    ids = torch.tensor([row])
    special = torch.tensor([[1, 0, 0, 0, 0, 1]])
    attr = torch.tensor([[0.0, 0.1, 0.9, 0.5, 0.3, 0.0]])  # token 5 ranks first
    mask = torch.ones_like(ids)
    kwargs = dict(attention_mask=mask, special_tokens_mask=special)
    kwargs.update(fraction=fraction, mode="pad")

    zero = torch.zeros(2)
    p0 = _probs(_bow_logits(row, zero))
    target = int(p0.argmax())
    p_without = _probs(_bow_logits([CLS, 4, 6, 7, SEP], zero))
    p_only = _probs(_bow_logits([CLS, 5, SEP], zero))
    nec = necessity(model, ids, attr, **kwargs)
    suf = sufficiency(model, ids, attr, **kwargs)
    torch.testing.assert_close(
        nec, torch.tensor([p0[target] - p_without[target]]).to(nec)
    )
    torch.testing.assert_close(suf, torch.tensor([p0[target] - p_only[target]]).to(suf))
    assert abs(float(nec)) > 0.1  # not vacuous

    _, new_mask = token_removal_attack(
        (ids, mask), fraction=fraction, attributions=attr, special_tokens_mask=special
    )
    assert int(mask.sum() - new_mask.sum()) == 1


# ----------------------------------------------------- padding never counted
def test_padding_is_not_counted_when_the_special_mask_leaves_it_out():
    # Mutant: _content_mask ignores the attention mask, so padding counts as
    # content: with a special tokens mask that flags only [CLS]/[SEP] (not
    # padding), n grows by the padding and k = ceil(f * n) with it, while the
    # highly scored padding uses up ranks. In tests/ only a benchmark test
    # caught it (the hand batch's padding is flagged special, and the one
    # test without that flag removes a token that weighs the same for both
    # classes).
    ids = torch.tensor([[CLS, 4, 5, 6, 7, 8, 9, SEP, PAD, PAD, PAD, PAD]])
    mask = (ids != PAD).long()
    special = ((ids == CLS) | (ids == SEP)).long()
    attr = torch.tensor([[0.0, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0, 9, 9, 9, 9]])
    for fraction in (0.25, 0.5, 1.0):
        n = 6  # real content tokens
        k = math.ceil(fraction * n)
        for keep in (False, True):
            new_ids, new_mask = token_removal_attack(
                (ids, mask),
                fraction=fraction,
                attributions=attr,
                special_tokens_mask=special,
                keep=keep,
                mode="pad",
            )
            removed = int(mask.sum() - new_mask.sum())
            assert removed == (n - k if keep else k)
            # the top-ranked content tokens are positions 1, 2, ... in order
            top = set(range(1, k + 1))
            gone = {t for t in range(1, 7) if not bool(new_mask[0, t])}
            assert gone == (set(range(1, 7)) - top if keep else top)
            assert new_mask[0, 8:].tolist() == [0, 0, 0, 0]
            assert int(new_mask[0, 0]) == int(new_mask[0, 7]) == 1


# ------------------------------------- per-example arguments in the search
def _first_success(row: List[int], order: List[int], extra, target, keep) -> float:
    r"""Brute force over k = 0..n, independent of the package: the first k
    for which removing (keeping only) the top-k content positions of ``row``
    flips (gives) ``target`` on the toy model, "pad" mode."""
    content = [t for t in range(len(row)) if row[t] not in (CLS, SEP, PAD)]
    for k in range(len(content) + 1):
        top = set(order[:k])
        kept = [
            row[t]
            for t in range(len(row))
            if row[t] != PAD and (t not in content or (t in top) == keep)
        ]
        pred = int(_bow_logits(kept, extra).argmax())
        if (pred == target) if keep else (pred != target):
            return float(k)
    return math.nan


@pytest.mark.parametrize("fn", [minimal_necessary_size, minimal_sufficient_size])
@pytest.mark.parametrize("per_eval", [1, 3])
def test_minimal_sizes_give_each_example_its_own_extra_argument(make_bow, fn, per_eval):
    # Mutant: the search's forward gave every example the whole batch's
    # per-example tensor of additional_forward_args instead of its own row
    # (`next(given) if p else a` -> `a`). The existing test of per-example
    # arguments has a batch of one, where the two agree.
    model = make_bow()
    ids = torch.tensor(
        [
            [CLS, 4, 5, 6, 7, SEP, PAD],
            [CLS, 8, 9, 10, 11, 4, SEP],
            [CLS, 5, 7, 9, SEP, PAD, PAD],
        ]
    )
    mask = (ids != PAD).long()
    special = ((ids == CLS) | (ids == SEP) | (ids == PAD)).long()
    attr = torch.tensor(
        [
            [0.0, 0.1, 0.9, 0.5, 0.3, 0.0, 0.0],
            [0.0, 0.8, 0.1, 0.6, 0.2, 0.4, 0.0],
            [0.0, 0.3, 0.9, 0.1, 0.0, 0.0, 0.0],
        ]
    )
    # per-example biases that move each decision differently
    extra = torch.tensor([[3.0, 0.0], [0.0, 0.0], [1.0, 0.0]]).double()
    keep = fn is minimal_sufficient_size
    expected = []
    for b in range(ids.shape[0]):
        row = ids[b].tolist()
        content = [t for t in range(len(row)) if not special[b, t]]
        order = sorted(content, key=lambda t: (-float(attr[b, t]), t))
        real = [t for t in row if t != PAD]
        target = int(_bow_logits(real, extra[b]).argmax())  # the prediction
        expected.append(_first_success(row, order, extra[b], target, keep))
    sizes, _ = fn(
        model,
        ids,
        attr,
        None,
        (extra,),
        attention_mask=mask,
        special_tokens_mask=special,
        mode="pad",
        perturbations_per_eval=per_eval,
    )
    torch.testing.assert_close(sizes, torch.tensor(expected).to(sizes), equal_nan=True)
    # not vacuous: the examples' answers differ and are not all NaN
    assert len({e for e in expected if not math.isnan(e)}) >= 2
