r"""Minimal necessary / sufficient sets through captum.robust, against brute force."""

from __future__ import annotations

import math
from typing import List

import pytest
import torch
from captum.robust import AttackComparator, MinParamPerturbation
from metrics_toy import CLS, MASK, PAD, SEP, VOCAB

from captum_effattn.metrics import (
    minimal_necessary_size,
    minimal_sufficient_size,
    token_removal_attack,
)


def _random_batch(seed: int, n_ex: int = 14, n_tok: int = 11):
    gen = torch.Generator().manual_seed(seed)
    weights = torch.randn(VOCAB, 2, generator=gen).double()
    weights[[PAD, CLS, SEP]] = 0.0
    bias = torch.randn(2, generator=gen).double()
    ids = torch.randint(4, VOCAB, (n_ex, n_tok), generator=gen)
    lengths = torch.randint(3, n_tok + 1, (n_ex,), generator=gen)
    mask = (torch.arange(n_tok).view(1, -1) < lengths.view(-1, 1)).long()
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, PAD))
    ids[:, 0] = CLS
    ids[torch.arange(n_ex), lengths - 1] = SEP
    special = (ids == CLS) | (ids == SEP) | (mask == 0)
    return gen, weights, bias, ids, mask, special


def _successes(weights, bias, ids, mask, special, attr, target, keep, mode):
    r"""Brute force, written independently of the package: for k = 0..n, does
    removing (keeping only) the top-k tokens flip (give) the target?"""
    real = [t for t in range(ids.shape[0]) if mask[t]]
    content = [t for t in real if not special[t]]
    order = sorted(content, key=lambda t: (-float(attr[t]), t))
    flags: List[bool] = []
    for k in range(len(content) + 1):
        top = set(order[:k])
        if keep:
            removed = [t for t in content if t not in top]
        else:
            removed = sorted(top)
        logits = bias.clone()
        for t in real:
            if t not in removed:
                logits += weights[ids[t]]
            elif mode == "mask":
                logits += weights[MASK]
        pred = int(logits.argmax())
        flags.append(pred == target if keep else pred != target)
    return flags


def _first(flags: List[bool]) -> float:
    return float(flags.index(True)) if True in flags else math.nan


def _bisection_sees(flags: List[bool]) -> List[bool]:
    r"""The flags of the k that a bisection over k = 0..n probes (it assumes
    monotone flags: once True, True for every larger k)."""
    lo, hi, seen = 0, len(flags), []
    while lo < hi:
        mid = (lo + hi) // 2
        seen.append(flags[mid])
        lo, hi = (lo, mid) if flags[mid] else (mid + 1, hi)
    return seen


def _monotone(flags: List[bool]) -> bool:
    return all(flags[i:] == [True] * (len(flags) - i) for i, f in enumerate(flags) if f)


@pytest.mark.parametrize("mode", ["delete", "mask", "pad"])
def test_minimal_sizes_equal_brute_force(make_bow, mode):
    gen, weights, bias, ids, mask, special = _random_batch(seed=1)
    model = make_bow(weights=weights, bias=bias)
    target = model(ids, mask).argmax(1)
    margin = (weights[:, 0] - weights[:, 1])[ids]
    perfect = margin * torch.where(target == 0, 1.0, -1.0).double().view(-1, 1)
    n_content = (mask.bool() & ~special).sum(1)
    n_monotone = n_missed = 0
    for attr in (perfect, torch.randn(ids.shape, generator=gen), -perfect):
        for keep, func in (
            (False, minimal_necessary_size),
            (True, minimal_sufficient_size),
        ):
            flags = [
                _successes(
                    weights,
                    bias,
                    ids[b],
                    mask[b],
                    special[b],
                    attr[b],
                    int(target[b]),
                    keep,
                    mode,
                )
                for b in range(ids.shape[0])
            ]
            expected = torch.tensor([_first(f) for f in flags])
            kwargs = dict(
                attention_mask=mask,
                special_tokens_mask=special,
                mode=mode,
                mask_token_id=MASK,
            )
            for search in ("linear", "binary"):
                sizes, fracs = func(
                    model,
                    ids,
                    attr,
                    search=search,
                    perturbations_per_eval=4,
                    **kwargs,
                )
                assert sizes.shape == fracs.shape == (ids.shape[0],)
                torch.testing.assert_close(
                    fracs, sizes / n_content.to(sizes), equal_nan=True
                )
                if search == "linear":
                    torch.testing.assert_close(
                        sizes, expected.to(sizes), equal_nan=True
                    )
                    continue
                for b, f in enumerate(flags):
                    got, want = float(sizes[b]), float(expected[b])
                    # NaN only where no k flips it (a linear search checks a
                    # binary search that found none), else a k that flips it
                    assert math.isnan(got) == math.isnan(want)
                    assert math.isnan(got) or f[int(got)]
                    n_missed += any(f) and not any(_bisection_sees(f))
                    if _monotone(f):
                        n_monotone += 1
                        assert got == want or (math.isnan(got) and math.isnan(want))
    assert n_monotone > 20
    assert n_missed > 0  # examples where a bisection alone finds no flip


def test_no_flip_is_nan(make_bow):
    # the bias alone decides: nothing flips class 0, so the necessary size is NaN;
    # k = 0 (only [CLS]/[SEP]) already suffices
    model = make_bow(bias=torch.tensor([50.0, 0.0]).double())
    ids = torch.tensor([[CLS, 5, 5, 7, SEP], [CLS, 9, SEP, PAD, PAD]])
    mask = (ids != PAD).long()
    special = (ids == CLS) | (ids == SEP) | (ids == PAD)
    attr = torch.rand(ids.shape)
    kwargs = dict(attention_mask=mask, special_tokens_mask=special)
    sizes, fracs = minimal_necessary_size(model, ids, attr, **kwargs)
    assert torch.isnan(sizes).all() and torch.isnan(fracs).all()
    sizes, fracs = minimal_sufficient_size(model, ids, attr, **kwargs)
    assert sizes.tolist() == [0.0, 0.0] and fracs.tolist() == [0.0, 0.0]
    # a target the model never reaches: no sufficient set either
    sizes, _ = minimal_sufficient_size(model, ids, attr, target=1, **kwargs)
    assert torch.isnan(sizes).all()


def test_hand_example_and_additional_args(make_bow):
    # example of conftest.hand_weights: [CLS] 4 5 6 7 [SEP] predicts class 1
    # (logits 0.75 vs 4.5); the attribution ranks 5 > 6 > 7 > 4.
    model = make_bow()
    ids = torch.tensor([[CLS, 4, 5, 6, 7, SEP]])
    mask = torch.ones_like(ids)
    special = torch.tensor([[1, 0, 0, 0, 0, 1]])
    attr = torch.tensor([[0.0, 0.1, 0.9, 0.5, 0.3, 0.0]])
    kwargs = dict(attention_mask=mask, special_tokens_mask=special, mode="pad")
    # removing 5 -> (0.75, 2.5); 5, 6 -> (0.25, 2.0); 5, 6, 7 -> (1.25, 0.5): k = 3
    k, frac = minimal_necessary_size(model, ids, attr, **kwargs)
    assert k.tolist() == [3.0] and frac.tolist() == [0.75]
    # [CLS] and [SEP] alone give (0.25, 0.5): class 1 needs no content token
    k, frac = minimal_sufficient_size(model, ids, attr, **kwargs)
    assert k.tolist() == [0.0] and frac.tolist() == [0.0]
    # class 0 with 4 ranked first: keeping only 4 gives (1.25, 0.5)
    attr0 = torch.tensor([[0.0, 0.9, 0.1, 0.2, 0.3, 0.0]])
    k, frac = minimal_sufficient_size(model, ids, attr0, 0, **kwargs)
    assert k.tolist() == [1.0] and frac.tolist() == [0.25]
    # an extra per-example argument reaches the model in every search step
    extra = torch.tensor([[2.0, 0.0]]).double()
    # logits (2.75, 4.5); removing 5 gives (2.75, 2.5): k = 1
    for ppe in (1, 16):
        k, _ = minimal_necessary_size(
            model, ids, attr, None, (extra,), perturbations_per_eval=ppe, **kwargs
        )
        assert k.tolist() == [1.0]


def test_min_param_perturbation_directly(make_bow):
    # the documented direct use of token_removal_attack with Captum
    model = make_bow()
    ids = torch.tensor([[CLS, 4, 5, 6, 7, SEP]])
    mask = torch.ones_like(ids)
    special = torch.tensor([[1, 0, 0, 0, 0, 1]])
    attr = torch.tensor([[0.0, 0.1, 0.9, 0.5, 0.3, 0.0]])
    for search in ("linear", "binary"):
        mpp = MinParamPerturbation(
            forward_func=lambda inp: model(inp[0], inp[1]),
            attack=token_removal_attack,
            arg_name="k",
            arg_min=0,
            arg_max=5,
            arg_step=1,
            mode=search,
        )
        (new_ids, new_mask), k = mpp.evaluate(
            (ids, mask),
            target=1,
            attack_kwargs=dict(attributions=attr, special_tokens_mask=special),
        )
        assert k == 3
        assert new_ids.tolist() == [[CLS, 4, SEP, PAD, PAD, PAD]]
        assert new_mask.tolist() == [[1, 1, 1, 0, 0, 0]]


def test_attack_comparator_runs(make_bow):
    gen, weights, bias, ids, mask, special = _random_batch(seed=2, n_ex=6)
    model = make_bow(weights=weights, bias=bias)
    targets = model(ids, mask).argmax(1)
    attr = torch.randn(ids.shape, generator=gen)

    def accuracy(model_out, targets, **_):
        return (model_out.argmax(1) == targets).float()

    comparator = AttackComparator(
        forward_func=lambda inp: model(inp[0], inp[1]), metric=accuracy
    )
    names = ["attributions", "special_tokens_mask"]
    comparator.add_attack(
        token_removal_attack,
        name="remove top 20%",
        attack_kwargs=dict(fraction=0.2, mode="pad"),
        additional_attack_arg_names=names,
    )
    comparator.add_attack(
        token_removal_attack,
        name="keep top 20%",
        attack_kwargs=dict(fraction=0.2, keep=True),
        additional_attack_arg_names=names,
    )
    results = comparator.evaluate(
        (ids, mask),
        perturbations_per_eval=3,
        attributions=attr,
        special_tokens_mask=special,
        targets=targets,
    )
    assert set(results) == {"Original", "remove top 20%", "keep top 20%"}
    # per-example metrics (the comparator averages over batches, not examples)
    assert results["Original"].tolist() == [1.0] * 6
    removed = token_removal_attack(
        (ids, mask),
        fraction=0.2,
        attributions=attr,
        special_tokens_mask=special,
        mode="pad",
    )
    expected = accuracy(model(*removed), targets)
    torch.testing.assert_close(
        results["remove top 20%"]["mean"].double(), expected.double()
    )


def test_bad_arguments(make_bow):
    model = make_bow()
    ids = torch.tensor([[CLS, 4, 5, SEP]])
    attr = torch.zeros(1, 4)
    with pytest.raises(ValueError, match="search"):
        minimal_necessary_size(model, ids, attr, search="ternary")
    with pytest.raises(ValueError, match="perturbations_per_eval"):
        minimal_sufficient_size(model, ids, attr, perturbations_per_eval=0)
    with pytest.raises(ValueError, match="shape"):
        minimal_sufficient_size(model, ids, attr[:, :3])
    with pytest.raises(TypeError, match="integer token ids"):
        minimal_necessary_size(model, ids.double(), attr)
    with pytest.raises(ValueError, match="mask_token_id"):
        minimal_necessary_size(model, ids, attr, mode="mask")
    with pytest.raises(ValueError, match="exactly one"):
        token_removal_attack(ids, 1, attributions=attr, fraction=0.5)
    with pytest.raises(ValueError, match="exactly one"):
        token_removal_attack(ids, attributions=attr)
    with pytest.raises(TypeError, match="whole number"):
        token_removal_attack(ids, 1.5, attributions=attr)
    with pytest.raises(ValueError, match="negative"):
        token_removal_attack(ids, -1, attributions=attr)
    with pytest.raises(ValueError, match="attention_mask|attention mask"):
        token_removal_attack((ids, torch.ones(1, 3)), 1, attributions=attr)
