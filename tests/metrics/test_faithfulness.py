r"""Sufficiency, necessity and AOPC against hand-computed answers."""

from __future__ import annotations

import math

import pytest
import torch
from metrics_toy import CLS, MASK, PAD, SEP, VOCAB

from captum_effattn.metrics import (
    AOPCResult,
)
from captum_effattn.metrics import __all__ as metrics_all
from captum_effattn.metrics import (
    aopc_necessity,
    aopc_sufficiency,
    comprehensiveness,
    necessity,
    sufficiency,
    token_removal_attack,
)

M = MASK


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# perturbed inputs of the hand batch at fraction 0.5 (k = 2 of 4 and 3 of 6;
# example 1 keeps the earlier three of the four tied tokens)
EXPECTED = {
    ("necessity", "delete"): (
        [[CLS, 4, 7, SEP, PAD, PAD, PAD, PAD], [CLS, 8, 11, 5, SEP, PAD, PAD, PAD]],
        [[1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0]],
    ),
    ("necessity", "mask"): (
        [[CLS, 4, M, M, 7, SEP, PAD, PAD], [CLS, 8, M, M, 11, M, 5, SEP]],
        [[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]],
    ),
    ("necessity", "pad"): (
        [[CLS, 4, PAD, PAD, 7, SEP, PAD, PAD], [CLS, 8, PAD, PAD, 11, PAD, 5, SEP]],
        [[1, 1, 0, 0, 1, 1, 0, 0], [1, 1, 0, 0, 1, 0, 1, 1]],
    ),
    ("sufficiency", "delete"): (
        [[CLS, 5, 6, SEP, PAD, PAD, PAD, PAD], [CLS, 9, 10, 4, SEP, PAD, PAD, PAD]],
        [[1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0]],
    ),
    ("sufficiency", "mask"): (
        [[CLS, M, 5, 6, M, SEP, PAD, PAD], [CLS, M, 9, 10, M, 4, M, SEP]],
        [[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]],
    ),
    ("sufficiency", "pad"): (
        [[CLS, PAD, 5, 6, PAD, SEP, PAD, PAD], [CLS, PAD, 9, 10, PAD, 4, PAD, SEP]],
        [[1, 0, 1, 1, 0, 1, 0, 0], [1, 0, 1, 1, 0, 1, 0, 1]],
    ),
}

# closed form for the position-independent model (see conftest.hand_weights):
# example 0 predicts class 1 with margin 3.75, example 1 class 0 with margin 1.
HAND_VALUES = {
    ("necessity", "delete"): [sig(3.75) - sig(1.75), sig(1.0) - sig(0.25)],
    ("necessity", "pad"): [sig(3.75) - sig(1.75), sig(1.0) - sig(0.25)],
    ("necessity", "mask"): [sig(3.75) - sig(0.75), sig(1.0) - sig(1.75)],
    ("sufficiency", "delete"): [sig(3.75) - sig(2.25), sig(1.0) - sig(0.5)],
    ("sufficiency", "pad"): [sig(3.75) - sig(2.25), sig(1.0) - sig(0.5)],
    ("sufficiency", "mask"): [sig(3.75) - sig(1.25), sig(1.0) - sig(2.0)],
}

METRICS = {"necessity": necessity, "sufficiency": sufficiency}
MODES = ("delete", "mask", "pad")


def test_public_names():
    assert sorted(metrics_all) == sorted(
        [
            "sufficiency",
            "necessity",
            "comprehensiveness",
            "aopc_sufficiency",
            "aopc_necessity",
            "token_perturb_func",
            "token_removal_attack",
            "minimal_necessary_size",
            "minimal_sufficient_size",
            "AOPCResult",
        ]
    )
    assert comprehensiveness is necessity
    assert necessity.higher_is_better and not sufficiency.higher_is_better


@pytest.mark.parametrize("metric", ["necessity", "sufficiency"])
@pytest.mark.parametrize("mode", MODES)
def test_perturbed_inputs_by_hand(hand_batch, metric, mode):
    ids, mask = token_removal_attack(
        (hand_batch["ids"], hand_batch["mask"]),
        fraction=0.5,
        attributions=hand_batch["attr"],
        keep=metric == "sufficiency",
        special_tokens_mask=hand_batch["special"],
        mode=mode,
        mask_token_id=MASK,
        pad_token_id=PAD,
    )
    exp_ids, exp_mask = EXPECTED[(metric, mode)]
    assert ids.dtype == hand_batch["ids"].dtype
    assert ids.tolist() == exp_ids
    assert mask.tolist() == exp_mask


@pytest.mark.parametrize("metric", ["necessity", "sufficiency"])
@pytest.mark.parametrize("mode", MODES)
def test_values_by_hand(make_bow, hand_batch, metric, mode):
    model = make_bow()
    values = METRICS[metric](
        model,
        hand_batch["ids"],
        hand_batch["attr"],
        attention_mask=hand_batch["mask"],
        special_tokens_mask=hand_batch["special"],
        fraction=0.5,
        mode=mode,
        mask_token_id=MASK,
    )
    assert values.shape == (2,)
    expected = torch.tensor(HAND_VALUES[(metric, mode)], dtype=values.dtype)
    torch.testing.assert_close(values, expected)


@pytest.mark.parametrize("metric", ["necessity", "sufficiency"])
@pytest.mark.parametrize("mode", MODES)
def test_values_order_sensitive_model(make_bow, hand_batch, metric, mode):
    # position weights: deleting (shifting) differs from padding in place
    model = make_bow(position_weights=torch.linspace(1.0, 0.3, 8).double())
    exp_ids, exp_mask = EXPECTED[(metric, mode)]
    ids, mask = hand_batch["ids"], hand_batch["mask"]
    p_orig = torch.softmax(model(ids, mask), -1)
    p_pert = torch.softmax(model(torch.tensor(exp_ids), torch.tensor(exp_mask)), -1)
    target = p_orig.argmax(1)
    expected = (p_orig - p_pert).gather(1, target.view(-1, 1)).squeeze(1)
    values = METRICS[metric](
        model,
        ids,
        hand_batch["attr"],
        attention_mask=mask,
        special_tokens_mask=hand_batch["special"],
        fraction=0.5,
        mode=mode,
        mask_token_id=MASK,
    )
    torch.testing.assert_close(values, expected.to(values.dtype))


def test_special_mask_without_padding_flags(make_bow, hand_batch):
    # a special tokens mask that does not flag padding gives the same answer:
    # the attention mask alone keeps padding out
    model = make_bow()
    special = hand_batch["special"].clone()
    special[0, 6:] = 0
    kwargs = dict(attention_mask=hand_batch["mask"], fraction=0.5)
    a = necessity(model, hand_batch["ids"], hand_batch["attr"], **kwargs)
    b = necessity(
        model,
        hand_batch["ids"],
        hand_batch["attr"],
        special_tokens_mask=special.bool(),
        **kwargs,
    )
    c = necessity(
        model,
        hand_batch["ids"],
        hand_batch["attr"],
        special_tokens_mask=hand_batch["special"],
        **kwargs,
    )
    torch.testing.assert_close(b, c)
    assert not torch.allclose(a, c)  # without any special mask [CLS] can go


def test_explicit_target_and_additional_args(make_bow, hand_batch):
    model = make_bow()
    extra = torch.tensor([[0.5, -0.5], [-2.0, 0.0]]).double()
    kwargs = dict(
        attention_mask=hand_batch["mask"],
        special_tokens_mask=hand_batch["special"],
        fraction=0.5,
        mode="pad",
    )
    values = necessity(
        model, hand_batch["ids"], hand_batch["attr"], [0, 0], (extra,), **kwargs
    )
    # example 0, class 0: margins shift by (0.5 - -0.5) = 1 in favour of class 0
    p = [sig(-3.75 + 1.0), sig(1.0 - 2.0)]
    q = [sig(-1.75 + 1.0), sig(0.25 - 2.0)]
    expected = torch.tensor([p[0] - q[0], p[1] - q[1]], dtype=values.dtype)
    torch.testing.assert_close(values, expected)
    # per-example extra arguments survive any chunking
    for batch_size in (1, 3, None):
        chunked = necessity(
            model,
            hand_batch["ids"],
            hand_batch["attr"],
            torch.tensor([0, 0]),
            extra,
            batch_size=batch_size,
            **kwargs,
        )
        torch.testing.assert_close(chunked, values)


def test_without_attention_mask(make_bow):
    # forward_func(ids) only; no padding, [CLS]/[SEP] protected by the mask
    model = make_bow()
    ids = torch.tensor([[CLS, 4, 5, 6, 7, SEP]])
    special = torch.tensor([[1, 0, 0, 0, 0, 1]])
    attr = torch.tensor([[0.0, 0.1, 0.5, 0.3, 0.2, 0.0]])
    nec = necessity(
        model,
        ids,
        attr,
        special_tokens_mask=special,
        fraction=0.5,
        mode="mask",
        mask_token_id=MASK,
    )
    torch.testing.assert_close(nec, torch.tensor([sig(3.75) - sig(0.75)]).to(nec))
    # delete without a mask gives the model the shorter text itself, not PAD
    # ids that it would read (they weigh -10 each here)
    nec = necessity(model, ids, attr, special_tokens_mask=special, fraction=0.5)
    torch.testing.assert_close(nec, torch.tensor([sig(3.75) - sig(1.75)]).to(nec))


def test_k_rounding_and_minimum(make_bow, hand_batch):
    ids, mask = token_removal_attack(
        (hand_batch["ids"], hand_batch["mask"]),
        fraction=0.01,  # ceil(0.04) = ceil(0.06) = 1
        attributions=hand_batch["attr"],
        special_tokens_mask=hand_batch["special"],
        mode="pad",
    )
    assert (hand_batch["mask"].sum(1) - mask.sum(1)).tolist() == [1, 1]
    # 0.7 * 10 = 7.000000000000001 must remove 7 tokens, not 8
    ids = torch.tensor([[CLS] + [4] * 10 + [SEP]])
    out = token_removal_attack(
        (ids, torch.ones_like(ids)),
        fraction=0.7,
        attributions=torch.arange(12.0).view(1, -1),
        special_tokens_mask=torch.tensor([[1] + [0] * 10 + [1]]),
        mode="pad",
    )
    assert int(out[1].sum()) == 12 - 7


def test_aopc_matches_single_fractions(make_bow, hand_batch):
    model = make_bow(position_weights=torch.linspace(1.0, 0.5, 8).double())
    kwargs = dict(
        attention_mask=hand_batch["mask"],
        special_tokens_mask=hand_batch["special"],
    )
    for aopc, single in ((aopc_sufficiency, sufficiency), (aopc_necessity, necessity)):
        res = aopc(model, hand_batch["ids"], hand_batch["attr"], **kwargs)
        assert isinstance(res, AOPCResult)
        assert res.curve.shape == (2, 5) and res.aopc.shape == (2,)
        torch.testing.assert_close(
            res.fractions, torch.tensor([0.01, 0.05, 0.1, 0.2, 0.5]).to(res.fractions)
        )
        cols = [
            single(model, hand_batch["ids"], hand_batch["attr"], fraction=f, **kwargs)
            for f in res.fractions.tolist()
        ]
        torch.testing.assert_close(res.curve, torch.stack(cols, 1))
        torch.testing.assert_close(res.aopc, res.curve.mean(1))
    res = aopc_necessity(
        model, hand_batch["ids"], hand_batch["attr"], fractions="ferret", **kwargs
    )
    assert res.curve.shape == (2, 10)
    assert res.fractions.tolist() == pytest.approx([i / 10 for i in range(1, 11)])
    # removing every content token: p(x) - p(specials only)
    res2 = aopc_necessity(
        model, hand_batch["ids"], hand_batch["attr"], fractions=[1.0], **kwargs
    )
    torch.testing.assert_close(res.curve[:, -1], res2.curve[:, 0])


def test_batched_forward_calls(make_bow, hand_batch):
    model = make_bow()
    kwargs = dict(
        attention_mask=hand_batch["mask"],
        special_tokens_mask=hand_batch["special"],
    )
    aopc_sufficiency(
        model, hand_batch["ids"], hand_batch["attr"], batch_size=None, **kwargs
    )
    assert model.calls == 1 and model.rows == [2 * 6]
    model.calls, model.rows = 0, []
    aopc_sufficiency(
        model, hand_batch["ids"], hand_batch["attr"], batch_size=5, **kwargs
    )
    assert model.rows == [5, 5, 2]


def test_no_content_gives_nan(make_bow):
    model = make_bow()
    ids = torch.tensor([[CLS, SEP, PAD], [CLS, 4, SEP]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    special = torch.tensor([[1, 1, 1], [1, 0, 1]])
    attr = torch.zeros(2, 3)
    val = sufficiency(
        model, ids, attr, attention_mask=mask, special_tokens_mask=special
    )
    assert math.isnan(val[0]) and math.isfinite(val[1])


def test_perfect_beats_random_beats_reversed(make_bow):
    # bag of words, 2 classes, no position effect: removing the top-k tokens by
    # their own logit-margin contribution is the best possible removal of k
    # tokens and the bottom-k the worst, for every example and every k.
    gen = torch.Generator().manual_seed(0)
    weights = torch.randn(VOCAB, 2, generator=gen).double()
    weights[[PAD, CLS, SEP, MASK]] = 0.0
    model = make_bow(weights=weights)
    n_ex, n_tok = 24, 14
    ids = torch.randint(4, VOCAB, (n_ex, n_tok), generator=gen)
    lengths = torch.randint(3, n_tok + 1, (n_ex,), generator=gen)
    positions = torch.arange(n_tok).view(1, -1)
    mask = (positions < lengths.view(-1, 1)).long()
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, PAD))
    ids[:, 0] = CLS
    ids[torch.arange(n_ex), lengths - 1] = SEP
    special = (ids == CLS) | (ids == SEP) | (mask == 0)
    target = model(ids, mask).argmax(1)
    margin = weights[:, 0] - weights[:, 1]
    perfect = margin[ids] * torch.where(target == 0, 1.0, -1.0).double().view(-1, 1)
    kwargs = dict(attention_mask=mask, special_tokens_mask=special, fractions="ferret")
    for mode in ("delete", "pad"):
        nec = {}
        suf = {}
        for name, attr in (
            ("perfect", perfect),
            ("random", torch.rand(n_ex, n_tok, generator=gen)),
            ("reversed", -perfect),
        ):
            nec[name] = aopc_necessity(model, ids, attr, mode=mode, **kwargs).curve
            suf[name] = aopc_sufficiency(model, ids, attr, mode=mode, **kwargs).curve
        tol = 1e-6
        assert (nec["perfect"] >= nec["random"] - tol).all()
        assert (nec["random"] >= nec["reversed"] - tol).all()
        assert (suf["perfect"] <= suf["random"] + tol).all()
        assert (suf["random"] <= suf["reversed"] + tol).all()
        assert nec["perfect"].mean() > nec["random"].mean() > nec["reversed"].mean()
        assert suf["perfect"].mean() < suf["random"].mean() < suf["reversed"].mean()


# ---------------------------------------------------------------- bad input


@pytest.fixture
def call(make_bow, hand_batch):
    model = make_bow()

    def run(func=necessity, **overrides):
        kwargs = dict(
            forward_func=model,
            inputs=hand_batch["ids"],
            attributions=hand_batch["attr"],
            attention_mask=hand_batch["mask"],
            special_tokens_mask=hand_batch["special"],
        )
        kwargs.update(overrides)
        return func(**kwargs)

    return run


@pytest.mark.parametrize("func", [sufficiency, necessity])
def test_bad_attribution_shape(call, hand_batch, func):
    with pytest.raises(ValueError, match="shape"):
        call(func, attributions=hand_batch["attr"][:, :5])
    with pytest.raises(ValueError, match=r"sum\(-1\)"):
        call(func, attributions=torch.zeros(2, 8, 4))
    with pytest.raises(TypeError):
        call(func, attributions=[[0.0] * 8] * 2)


@pytest.mark.parametrize("fraction", [0, 0.0, -0.1, 1.5, float("nan")])
def test_fraction_out_of_range(call, fraction):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        call(fraction=fraction)


def test_fraction_wrong_type(call):
    with pytest.raises(TypeError):
        call(fraction="0.2")
    with pytest.raises(TypeError):
        call(fraction=True)


def test_bad_fractions(call):
    with pytest.raises(ValueError):
        call(aopc_necessity, fractions="foo")
    with pytest.raises(ValueError):
        call(aopc_necessity, fractions=[0.1, 0.0])
    with pytest.raises(ValueError):
        call(aopc_sufficiency, fractions=[])


def test_bad_mode(call):
    with pytest.raises(ValueError, match="Unknown mode"):
        call(mode="remove")
    with pytest.raises(ValueError, match="mask_token_id"):
        call(mode="mask")
    with pytest.raises(ValueError, match="mask_token_id"):
        call(aopc_sufficiency, mode="mask")


def test_float_ids(call, hand_batch):
    with pytest.raises(TypeError, match="integer token ids"):
        call(inputs=hand_batch["ids"].float())


def test_bad_masks(call, hand_batch):
    with pytest.raises(ValueError, match="attention_mask"):
        call(attention_mask=hand_batch["mask"][:, :7])
    with pytest.raises(ValueError, match="special_tokens_mask"):
        call(special_tokens_mask=hand_batch["special"][:1])
    with pytest.raises(ValueError, match="shape"):
        call(inputs=hand_batch["ids"][0])


def test_bad_target_and_batch_size(call):
    with pytest.raises(ValueError, match="target"):
        call(target=5)
    with pytest.raises(ValueError, match="target"):
        call(target=[0, 1, 1])
    with pytest.raises(ValueError, match="batch_size"):
        call(batch_size=0)


def test_forward_func_must_return_logits(hand_batch):
    def bad(ids, mask):
        return {"logits": torch.zeros(ids.shape[0], 2)}

    with pytest.raises(TypeError, match="logits"):
        necessity(
            bad,
            hand_batch["ids"],
            hand_batch["attr"],
            attention_mask=hand_batch["mask"],
        )
