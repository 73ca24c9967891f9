r"""``function_to_apply``: how the metrics turn ``forward_func``'s outputs into
probabilities (softmax, sigmoid for multi-label and single-logit models, or
none), checked against values computed by hand on the bag-of-words model."""

from __future__ import annotations

import math

import pytest
import torch
from metrics_toy import CLS, PAD, SEP, BagOfWords

from captum_effattn.metrics import (
    aopc_necessity,
    aopc_sufficiency,
    minimal_necessary_size,
    minimal_sufficient_size,
    necessity,
    sufficiency,
)


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# three independent labels; word ids 4..7
LABEL_WEIGHTS = torch.tensor(
    [
        [0.0, 0.0, 0.0],  # PAD
        [0.0, 0.0, 0.0],  # CLS
        [0.0, 0.0, 0.0],  # SEP
        [0.0, 0.0, 0.0],  # MASK
        [2.0, -1.0, 0.5],  # 4
        [1.0, 1.5, 0.0],  # 5
        [-0.5, 1.0, 1.0],  # 6
        [0.25, 0.0, -2.0],  # 7
    ]
)
LABEL_BIAS = torch.tensor([-1.0, 0.5, 0.0])


@pytest.fixture
def labels():
    ids = torch.tensor([[CLS, 4, 5, 6, 7, SEP], [CLS, 6, 5, 7, SEP, PAD]])
    mask = (ids != PAD).long()
    special = (ids == CLS) | (ids == SEP) | (ids == PAD)
    attr = torch.tensor(
        [[0.0, 4.0, 3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 3.0, 2.0, 0.0, 0.0]]
    )
    model = BagOfWords(LABEL_WEIGHTS, LABEL_BIAS)
    return dict(model=model, ids=ids, mask=mask, special=special, attr=attr)


def _call(metric, data, **kwargs):
    return metric(
        data["model"],
        data["ids"],
        data["attr"],
        attention_mask=data["mask"],
        special_tokens_mask=data["special"],
        **kwargs,
    )


def _logit(words, label):
    return float(LABEL_BIAS[label] + sum(LABEL_WEIGHTS[w, label] for w in words))


def test_sigmoid_multi_label_by_hand(labels):
    # fraction 0.5: example 0 has words (4, 5, 6, 7) ranked 4, 5, 6, 7 -> top
    # 2 = {4, 5}; example 1 has (6, 5, 7) ranked 5, 7, 6 -> k = 2: {5, 7}
    for label in range(3):
        nec = _call(
            necessity, labels, target=label, fraction=0.5, function_to_apply="sigmoid"
        )
        suff = _call(
            sufficiency, labels, target=label, fraction=0.5, function_to_apply="sigmoid"
        )
        full = [_logit([4, 5, 6, 7], label), _logit([6, 5, 7], label)]
        without = [_logit([6, 7], label), _logit([6], label)]
        only = [_logit([4, 5], label), _logit([5, 7], label)]
        expected_nec = [sig(f) - sig(w) for f, w in zip(full, without)]
        expected_suff = [sig(f) - sig(o) for f, o in zip(full, only)]
        torch.testing.assert_close(nec, torch.tensor(expected_nec, dtype=nec.dtype))
        torch.testing.assert_close(suff, torch.tensor(expected_suff, dtype=suff.dtype))
        # the default reads the same outputs as a softmax over the labels
        soft = _call(necessity, labels, target=label, fraction=0.5)
        assert not torch.allclose(soft, nec)


def test_sigmoid_aopc_matches_single_fractions(labels):
    res = _call(
        aopc_necessity,
        labels,
        target=1,
        fractions=(0.25, 0.5, 1.0),
        function_to_apply="sigmoid",
    )
    for f, frac in enumerate((0.25, 0.5, 1.0)):
        one = _call(
            necessity, labels, target=1, fraction=frac, function_to_apply="sigmoid"
        )
        torch.testing.assert_close(res.curve[:, f], one)
    suff = _call(aopc_sufficiency, labels, target=2, function_to_apply="sigmoid")
    assert torch.isfinite(suff.aopc).all()


def test_single_logit_model(labels):
    # one logit z: "sigmoid" reads p = sigmoid(z), the same as the softmax of
    # the two-logit model [-z/2, z/2] at class 1
    one = BagOfWords(LABEL_WEIGHTS[:, :1], LABEL_BIAS[:1])
    two = BagOfWords(
        torch.cat([-LABEL_WEIGHTS[:, :1], LABEL_WEIGHTS[:, :1]], 1) / 2,
        torch.cat([-LABEL_BIAS[:1], LABEL_BIAS[:1]]) / 2,
    )
    for metric in (necessity, sufficiency):
        with pytest.raises(ValueError, match="function_to_apply='sigmoid'"):
            _call(metric, dict(labels, model=one), target=0)
        got = _call(
            metric, dict(labels, model=one), target=0, function_to_apply="sigmoid"
        )
        want = _call(metric, dict(labels, model=two), target=1)
        torch.testing.assert_close(got, want)


def test_none_takes_outputs_as_they_are(labels):
    model = labels["model"]

    def probabilities(ids, mask):
        return torch.sigmoid(model(ids, mask))

    data = dict(labels, model=probabilities)
    got = _call(necessity, data, target=0, function_to_apply="none")
    want = _call(necessity, labels, target=0, function_to_apply="sigmoid")
    torch.testing.assert_close(got, want)
    # "auto" sees rows that do not sum to 1 and takes their softmax
    auto = _call(necessity, data, target=0)
    assert not torch.allclose(auto, want)
    # logits are no probabilities
    with pytest.raises(ValueError, match="are they logits"):
        _call(necessity, labels, target=0, function_to_apply="none")


def test_softmax_is_applied_even_to_probabilities(labels):
    model = labels["model"]

    def probabilities(ids, mask):
        return torch.softmax(model(ids, mask), -1)

    data = dict(labels, model=probabilities)
    auto = _call(necessity, data, target=0)
    plain = _call(necessity, labels, target=0)
    torch.testing.assert_close(auto, plain)  # auto: not a second softmax
    twice = _call(necessity, data, target=0, function_to_apply="softmax")
    assert not torch.allclose(twice, plain)
    torch.testing.assert_close(
        _call(necessity, labels, target=0, function_to_apply="softmax"), plain
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_auto_takes_half_precision_probabilities_as_they_are(labels, dtype):
    # a bfloat16 softmax (eps 7.8e-3) misses a sum tolerance of 1e-3 in
    # about 40% of its rows: "auto" took the softmax of the probabilities
    model = labels["model"]

    def probabilities(ids, mask):
        return torch.softmax(model(ids, mask), -1).to(dtype)

    data = dict(labels, model=probabilities)
    auto = _call(necessity, data, target=0)
    none = _call(necessity, data, target=0, function_to_apply="none")
    torch.testing.assert_close(auto, none)
    torch.testing.assert_close(
        auto, _call(necessity, labels, target=0).to(auto), atol=2e-2, rtol=0
    )


def test_auto_tolerance_does_not_grow_with_the_number_of_classes():
    # a tolerance of C x eps passed 200 bfloat16 scores summing to about 2
    # as probabilities (and bfloat16 logits [0.449, 0.559] for 2 classes)
    from captum_effattn.metrics._core.erase import _probabilities

    scores = torch.full((1, 200), 2.0 / 200).to(torch.bfloat16)
    assert not torch.allclose(_probabilities(scores), scores.float())
    logits = torch.tensor([[0.449, 0.559]]).to(torch.bfloat16)
    assert not torch.allclose(_probabilities(logits), logits.float())
    probs = torch.softmax(
        torch.randn(64, 200, generator=torch.Generator().manual_seed(0)), -1
    )
    half = probs.to(torch.bfloat16)
    torch.testing.assert_close(_probabilities(half), half.float())  # as they are


@pytest.mark.parametrize("bad", ["probabilities", "Sigmoid", None, 1])
def test_bad_function_to_apply(labels, bad):
    for metric in (necessity, aopc_sufficiency, minimal_necessary_size):
        with pytest.raises(ValueError, match="function_to_apply"):
            _call(metric, labels, target=0, function_to_apply=bad)


def _label_on(words, label):
    return _logit(words, label) > 0


def test_minimal_sizes_with_sigmoid(labels):
    # brute force over k for each label: a label is predicted while its
    # sigmoid exceeds 1/2, whatever the other labels do
    orders = [[4, 5, 6, 7], [5, 7, 6]]
    for label in range(3):
        nec, _ = _call(
            minimal_necessary_size, labels, target=label, function_to_apply="sigmoid"
        )
        suff, _ = _call(
            minimal_sufficient_size, labels, target=label, function_to_apply="sigmoid"
        )
        for b, order in enumerate(orders):
            flips = [
                not _label_on([w for w in order if w not in order[:k]], label)
                for k in range(len(order) + 1)
            ]
            gives = [_label_on(order[:k], label) for k in range(len(order) + 1)]
            want_nec = float(flips.index(True)) if any(flips) else math.nan
            want_suff = float(gives.index(True)) if any(gives) else math.nan
            assert float(nec[b]) == want_nec or (
                math.isnan(want_nec) and math.isnan(float(nec[b]))
            )
            assert float(suff[b]) == want_suff or (
                math.isnan(want_suff) and math.isnan(float(suff[b]))
            )


def test_minimal_single_output_needs_sigmoid(labels):
    one = BagOfWords(LABEL_WEIGHTS[:, :1], LABEL_BIAS[:1])
    data = dict(labels, model=one)
    for fn in ("auto", "softmax", "none"):
        with pytest.raises(ValueError, match="function_to_apply='sigmoid'"):
            _call(minimal_necessary_size, data, target=0, function_to_apply=fn)
    nec, _ = _call(minimal_necessary_size, data, target=0, function_to_apply="sigmoid")
    # example 0: z = -1 + 2 + 1 - 0.5 + 0.25 = 1.75 > 0; removing word 4 gives
    # -0.25, so one token flips it. Example 1: z = -1 - 0.5 + 1 + 0.25 < 0:
    # label 0 is off from the start, and k = 0 already "flips" it
    assert nec.tolist() == [1.0, 0.0]


def test_integer_outputs_are_refused(labels):
    model = labels["model"]

    def predicted_labels(ids, mask):
        return (model(ids, mask) > 0).long()

    with pytest.raises(TypeError, match="floating-point logits"):
        _call(necessity, dict(labels, model=predicted_labels), target=0)


def test_single_logit_default_target_is_the_predicted_side(labels):
    # one sigmoid output z, target=None: the predicted side, as the predicted
    # class of a softmax. It read p = sigmoid(z) for every example, so an
    # example predicted negative had its necessity's sign flipped and a
    # minimal necessary size of 0 (k = 0 "flipped" a prediction never made)
    for label in range(3):  # label 0 is negative on the second text
        one = BagOfWords(
            LABEL_WEIGHTS[:, label : label + 1], LABEL_BIAS[label : label + 1]
        )
        data = dict(labels, model=one)
        z = one(labels["ids"], labels["mask"])[:, 0]
        positive = z > 0
        for metric in (necessity, sufficiency):
            auto = _call(metric, data, fraction=0.5, function_to_apply="sigmoid")
            on_p = _call(
                metric, data, target=0, fraction=0.5, function_to_apply="sigmoid"
            )
            torch.testing.assert_close(auto, torch.where(positive, on_p, -on_p))
        nec, _ = _call(minimal_necessary_size, data, function_to_apply="sigmoid")
        suff, _ = _call(minimal_sufficient_size, data, function_to_apply="sigmoid")
        orders = [[4, 5, 6, 7], [5, 7, 6]]
        for b, order in enumerate(orders):
            sign = 1.0 if bool(positive[b]) else -1.0

            def on_side(words):  # z = 0 (p = 1/2) predicts neither side
                return sign * _logit(words, label) > 0

            flips = [
                not on_side([w for w in order if w not in order[:k]])
                for k in range(len(order) + 1)
            ]
            gives = [on_side(order[:k]) for k in range(len(order) + 1)]
            want_nec = float(flips.index(True)) if any(flips) else math.nan
            want_suff = float(gives.index(True)) if any(gives) else math.nan
            assert want_nec != 0.0
            got_nec, got_suff = float(nec[b]), float(suff[b])
            assert got_nec == want_nec or (math.isnan(want_nec) and math.isnan(got_nec))
            assert got_suff == want_suff or (
                math.isnan(want_suff) and math.isnan(got_suff)
            )
    assert not bool((one(labels["ids"], labels["mask"]) > 0).all())  # a negative seen


def test_minimal_sizes_of_a_multi_label_model_that_predicts_no_label():
    # the default target is the largest logit's label, as documented: where
    # no label's sigmoid exceeds 1/2, removing nothing already "flips" it
    # and keeping everything never gives it
    weights = torch.zeros(12, 3)
    weights[4:8] = torch.tensor([0.5, 0.2, 0.1])
    model = BagOfWords(weights, torch.tensor([-5.0, -6.0, -7.0]))
    ids = torch.tensor([[4, 5, 6, 7]])
    kw = dict(function_to_apply="sigmoid", attention_mask=torch.ones_like(ids))
    attr = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    assert float(minimal_necessary_size(model, ids, attr, **kw)[0]) == 0
    assert math.isnan(float(minimal_sufficient_size(model, ids, attr, **kw)[0]))
