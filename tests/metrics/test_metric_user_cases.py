r"""Metric calls that once gave silently wrong answers: a left-padded batch in
``"delete"`` mode, float32 fractions, a target out of range for the minimal
sizes, a single-logit model, the attention mask passed Captum's way, and a
switch to eval mode that reached the modules of other threads."""

from __future__ import annotations

import copy
import functools
import sys
import threading
import weakref
from typing import Optional

import numpy as np
import pytest
import torch
from effattn_testing import make_tiny_model, random_batch
from metrics_toy import CLS, PAD, SEP
from torch import nn

from captum_effattn import AttentionWeights
from captum_effattn.metrics import (
    aopc_necessity,
    minimal_necessary_size,
    minimal_sufficient_size,
    necessity,
    sufficiency,
    token_perturb_func,
    token_removal_attack,
)


def _left_padded():
    ids = torch.tensor(
        [[CLS, 4, 5, 6, 7, SEP], [PAD, PAD, CLS, 8, 9, SEP]]
    )  # fmt: skip
    mask = (ids != PAD).long()
    special = ((ids == CLS) | (ids == SEP) | (ids == PAD)).long()
    attr = torch.tensor([[0.0, 0.4, 0.3, 0.2, 0.1, 0.0], [0, 0, 0, 0.9, 0.1, 0]])
    return ids, mask, special, attr


def _order_sensitive(make_bow, pos):
    r"""A bag of words with position weights ``pos`` (deleting, which shifts
    tokens, then matters) and the left-padded batch with the metrics'
    keyword arguments."""
    ids, mask, special, attr = _left_padded()
    kw = dict(attention_mask=mask, special_tokens_mask=special)
    return make_bow(position_weights=pos), ids, attr, kw


def test_delete_keeps_a_left_padded_batch_left_padded():
    ids, mask, special, attr = _left_padded()
    (kept, kept_mask), _ = (
        token_removal_attack(
            (ids, mask), 0, attributions=attr, special_tokens_mask=special
        ),
        None,
    )
    assert torch.equal(kept, ids) and torch.equal(kept_mask, mask)  # k=0: nothing
    removed, new_mask = token_removal_attack(
        (ids, mask), 1, attributions=attr, special_tokens_mask=special
    )
    assert removed.tolist() == [[PAD, CLS, 5, 6, 7, SEP], [PAD, PAD, PAD, CLS, 9, SEP]]
    assert new_mask.tolist() == [[0, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1]]


def test_left_padded_batch_equals_examples_alone(make_bow):
    # an order-sensitive model: position weights counted from the right end,
    # as a left-padded decoder sees them
    pos = torch.linspace(0.5, 1.5, 6)
    model, ids, attr, kw = _order_sensitive(make_bow, pos)
    batch = necessity(model, ids, attr, fraction=0.5, **kw)
    assert float(sufficiency(model, ids, attr, fraction=1.0, **kw).abs().max()) == 0
    one = {k: v[1:] for k, v in kw.items()}
    alone = necessity(model, ids[1:], attr[1:], fraction=0.5, **one)
    assert torch.allclose(batch[1], alone[0])
    # a row without padding has no side of its own: it follows its batch, so
    # alone it equals the batch's answer once given one padding on the left
    left = {k: torch.cat([v[:1, :1] * 0 + (k != "attention_mask"), v[:1]], 1)
            for k, v in kw.items()}  # fmt: skip
    ids0 = torch.cat([torch.tensor([[PAD]]), ids[:1]], 1)
    attr0 = torch.cat([torch.zeros(1, 1), attr[:1]], 1)
    model0 = make_bow(position_weights=torch.cat([pos[:1], pos]))
    alone0 = necessity(model0, ids0, attr0, fraction=0.5, **left)
    assert torch.allclose(batch[0], alone0[0])


def test_an_all_padding_row_leaves_a_right_padded_batch_right_padded(make_bow):
    # an empty text (all padding) starts with padding too, but says nothing
    # about the side: the other rows must still be re-packed to the left
    model = make_bow(position_weights=torch.linspace(0.5, 1.5, 6))
    ids = torch.tensor([[CLS, 4, 5, 6, 7, SEP], [CLS, 8, 9, SEP, PAD, PAD]])
    attr = torch.tensor([[0.0, 0.4, 0.3, 0.2, 0.1, 0.0], [0, 0.9, 0.1, 0, 0, 0]])
    empty = torch.full((1, 6), PAD)
    with_empty = torch.cat([ids, empty]), torch.cat([attr, torch.zeros(1, 6)])
    removed = token_removal_attack(
        (with_empty[0], (with_empty[0] != PAD).long()), 1,
        attributions=with_empty[1],
        special_tokens_mask=(with_empty[0] <= SEP).long(),
    )[0]  # fmt: skip
    assert removed[:2].tolist() == [
        [CLS, 5, 6, 7, SEP, PAD],
        [CLS, 9, SEP, PAD, PAD, PAD],
    ]
    outs = []
    for batch_ids, batch_attr in ((ids, attr), with_empty):
        mask = (batch_ids != PAD).long()
        special = (batch_ids <= SEP).long()
        outs.append(
            necessity(model, batch_ids, batch_attr, fraction=0.5,
                      attention_mask=mask, special_tokens_mask=special)
        )  # fmt: skip
    assert torch.equal(outs[1][:2], outs[0]) and torch.isnan(outs[1][2])


@pytest.mark.parametrize(
    "fraction", [0.2, np.float32(0.2), torch.tensor(0.2, dtype=torch.float32).item()]
)
@pytest.mark.parametrize("n", [10, 510])  # 510: BERT's 512 less [CLS], [SEP]
def test_float32_fractions_remove_as_many_tokens_as_their_decimal(
    make_bow, fraction, n
):
    # a fixed tolerance held for short texts only: a float32 0.2 is
    # 0.2000000030, and 510 of it is 102.0000015, which removed 103 tokens
    model = make_bow()
    ids = (2 + torch.arange(n) % 10).view(1, n)  # content tokens, no specials
    attr = torch.arange(n, 0, -1).double().view(1, n)
    removed = token_removal_attack(ids, None, attributions=attr, fraction=fraction)
    assert int((removed == PAD).sum()) == n // 5
    want = necessity(model, ids, attr, fraction=0.2)
    assert torch.equal(necessity(model, ids, attr, fraction=fraction), want)
    curve = aopc_necessity(
        model, ids, attr, fractions=torch.tensor([0.2, 0.3], dtype=torch.float32)
    )
    assert torch.allclose(
        curve.curve, aopc_necessity(model, ids, attr, fractions=[0.2, 0.3]).curve
    )


def test_k_is_the_ceiling_of_fraction_times_n_for_long_texts():
    # a tolerance relative to fraction x n swallowed real excesses at long
    # lengths (0.973 x 1037 = 1009.001 gave 1009); every 3-decimal fraction
    # at every n up to 4096 against integer arithmetic
    from captum_effattn.metrics._core.erase import _num_tokens

    ns = torch.arange(1, 4097)
    for i in range(1, 1000):
        want = torch.minimum(torch.clamp(-((-ns * i) // 1000), min=1), ns)
        assert torch.equal(_num_tokens(i / 1000, ns), want), i / 1000
        single = float(np.float32(i / 1000))  # also read as its decimal
        assert torch.equal(_num_tokens(single, ns), want), single


@pytest.mark.parametrize("fn", [minimal_necessary_size, minimal_sufficient_size])
def test_minimal_sizes_check_the_target(make_bow, hand_batch, fn):
    model = make_bow()
    with pytest.raises(ValueError, match="target classes must lie in"):
        fn(model, hand_batch["ids"], hand_batch["attr"], target=7,
           attention_mask=hand_batch["mask"])  # fmt: skip


def test_targets_in_every_captum_form_agree(make_bow, hand_batch):
    # one target check serves the metrics, the gradient modes and the support
    # test: numpy arrays and (B, 1) tensors as the (B,) tensor; bools refused
    model = make_bow()
    ids, mask, attr = hand_batch["ids"], hand_batch["mask"], hand_batch["attr"]
    want = necessity(model, ids, attr, target=torch.tensor([1, 0]), attention_mask=mask)
    for target in (np.array([1, 0]), torch.tensor([[1], [0]]), [(1,), (0,)]):
        got = necessity(model, ids, attr, target=target, attention_mask=mask)
        assert torch.equal(got, want)
    with pytest.raises(TypeError, match="integer class indices"):
        necessity(model, ids, attr, target=torch.tensor([True, False]),
                  attention_mask=mask)  # fmt: skip
    # a tuple of two is one index into a 3-d output for Captum, not classes
    with pytest.raises(ValueError, match="tuple of 2 indices"):
        necessity(model, ids, attr, target=(1, 0), attention_mask=mask)
    assert torch.equal(
        necessity(model, ids, attr, target=(1,), attention_mask=mask),
        necessity(model, ids, attr, target=1, attention_mask=mask),
    )


def test_single_logit_model_is_refused(hand_batch):
    w = torch.randn(12, 1, dtype=torch.float64)

    def one_logit(ids, mask):
        return (w[ids] * mask.unsqueeze(-1)).sum(1)

    with pytest.raises(ValueError, match="at least 2 classes"):
        necessity(one_logit, hand_batch["ids"], hand_batch["attr"],
                  attention_mask=hand_batch["mask"])  # fmt: skip


def test_attention_mask_passed_the_captum_way_is_refused(make_bow, hand_batch):
    model = make_bow()
    ids, mask, attr = hand_batch["ids"], hand_batch["mask"], hand_batch["attr"]
    with pytest.raises(ValueError, match="pass it as attention_mask="):
        necessity(model, ids, attr, additional_forward_args=(mask,))
    # recognised whatever the padding id (here 1, and pad_token_id not given)
    ids1 = torch.where(mask == 0, torch.ones_like(ids), ids + 1)
    with pytest.raises(ValueError, match="pass it as attention_mask="):
        necessity(model, ids1, attr, additional_forward_args=(mask,))
    with pytest.raises(ValueError, match="given twice"):
        necessity(
            lambda i, m, m2: model(i, m), ids, attr, attention_mask=mask,
            additional_forward_args=(mask,),
        )  # fmt: skip
    necessity(model, ids, attr, attention_mask=mask)


def test_all_ones_mask_passed_the_captum_way_is_refused(make_bow, hand_batch):
    # a batch without padding: its all-ones mask does not look like padding,
    # yet delete and pad modes write padding that it would not hide
    model = make_bow()
    ids, attr = hand_batch["ids"], hand_batch["attr"]
    ones = torch.ones_like(ids)
    for mode in ("delete", "pad"):
        with pytest.raises(ValueError, match="tensor of ones.*attention_mask="):
            necessity(model, ids, attr, additional_forward_args=(ones,), mode=mode)
    # replacing by a mask token writes no padding: nothing to hide (but
    # this batch is padded, and its mask was not given: that is warned of)
    with pytest.warns(UserWarning, match="looks padded"):
        necessity(model, ids, attr, additional_forward_args=(ones,), mode="mask",
                  mask_token_id=3)  # fmt: skip


def test_per_position_arguments_in_delete_mode(make_bow, hand_batch):
    model = make_bow()
    ids, mask, attr = hand_batch["ids"], hand_batch["mask"], hand_batch["attr"]
    segments = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1, 1]])

    def fwd(i, m, s):
        return model(i, m)

    kw = dict(attention_mask=mask, additional_forward_args=(segments,))
    with pytest.raises(ValueError, match="varies along the positions"):
        necessity(fwd, ids, attr, **kw)
    # not a mask (the zeros hold different ids): passed through in the
    # modes that keep positions, and constant rows are fine in delete mode
    assert necessity(fwd, ids, attr, mode="pad", **kw).shape == (2,)
    zeros = dict(kw, additional_forward_args=(torch.zeros_like(ids),))
    assert necessity(fwd, ids, attr, **zeros).shape == (2,)


def test_padding_id_must_match_the_padding(make_bow, hand_batch):
    model = make_bow()
    ids, mask, attr = hand_batch["ids"], hand_batch["mask"], hand_batch["attr"]
    ids1 = torch.where(mask == 0, torch.full_like(ids, 3), ids)
    with pytest.raises(ValueError, match="hold token id 3 but pad_token_id is 0"):
        necessity(model, ids1, attr, attention_mask=mask)
    out = necessity(model, ids1, attr, attention_mask=mask, pad_token_id=3)
    assert out.shape == (2,)


def test_pad_token_id_and_empty_batch(make_bow, hand_batch):
    model = make_bow()
    ids, mask, attr = hand_batch["ids"], hand_batch["mask"], hand_batch["attr"]
    with pytest.raises(TypeError, match="pad_token_id must be an int"):
        necessity(model, ids, attr, attention_mask=mask, pad_token_id=None)
    with pytest.raises(TypeError, match="pad_token_id must be an int"):
        necessity(model, ids, attr, attention_mask=mask, pad_token_id=0.5)
    with pytest.raises(ValueError, match="empty batch"):
        necessity(model, ids[:0], attr[:0], attention_mask=mask[:0])
    with pytest.raises(ValueError, match="empty batch"):
        minimal_necessary_size(model, ids[:0], attr[:0], attention_mask=mask[:0])


def test_padding_side_for_examples_without_padding(make_bow):
    pos = torch.linspace(0.5, 1.5, 6)
    model, ids, attr, kw = _order_sensitive(make_bow, pos)
    batch = necessity(model, ids, attr, fraction=0.5, **kw)
    one = {k: v[:1] for k, v in kw.items()}  # row 0 has no padding
    inferred = necessity(model, ids[:1], attr[:1], fraction=0.5, **one)
    left = necessity(model, ids[:1], attr[:1], fraction=0.5, padding_side="left", **one)
    assert torch.allclose(left[0], batch[0])
    assert not torch.allclose(inferred[0], batch[0])  # re-padded on the right
    with pytest.raises(ValueError, match="padding_side must be"):
        necessity(model, ids, attr, padding_side="middle", **kw)


@pytest.mark.parametrize("fn", [minimal_necessary_size, minimal_sufficient_size])
def test_minimal_sizes_keep_the_batch_padding_side(make_bow, fn):
    # the search runs one example at a time: the unpadded row of a
    # left-padded batch must still be re-padded on the left
    pos = torch.linspace(3.0, 0.2, 6)
    model, ids, attr, kw = _order_sensitive(make_bow, pos)
    batch, _ = fn(model, ids, attr, **kw)
    one = {k: v[:1] for k, v in kw.items()}
    left, _ = fn(model, ids[:1], attr[:1], padding_side="left", **one)
    right, _ = fn(model, ids[:1], attr[:1], padding_side="right", **one)
    assert bool(torch.isfinite(batch[:1]).all()) and torch.equal(batch[:1], left)
    assert not torch.equal(right, left)  # the side matters to this model


# ------------------------------------------------ eval mode, model by model
# The metrics switch forward_func's model to eval mode (dropout off) while
# they run, with a process-wide forward pre-hook (they see only
# forward_func). It once also switched every module called meanwhile in
# other threads, such as another model training there.
def _forward(model: nn.Module):
    return lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits


def _dropout_bert() -> nn.Module:
    model = copy.deepcopy(make_tiny_model("bert", hidden_dropout_prob=0.5))
    with torch.no_grad():
        model.classifier.weight.mul_(50.0)  # probabilities far from 1/2
    return model


def _bert_batch():
    ids, mask = random_batch(2, 12, lengths=[12, 9], seed=3)
    attr = torch.randn(ids.shape, generator=torch.Generator().manual_seed(4))
    return ids, mask, attr


def _side_module() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 32), nn.Dropout(0.5)).train()


def test_metric_leaves_a_module_of_another_thread_alone():
    model = _dropout_bert()
    ids, mask, attr = _bert_batch()
    other = _side_module()
    inside, release = threading.Event(), threading.Event()
    seen = []

    def forward(ids, mask):
        if not inside.is_set():  # the first call waits for the other thread
            inside.set()
            release.wait(timeout=60)
        return model(input_ids=ids, attention_mask=mask).logits

    def train_step():
        inside.wait(timeout=60)
        out = other(torch.ones(64, 32))
        seen.append((other.training, other[1].training, bool((out == 0).any())))
        release.set()

    thread = threading.Thread(target=train_step)
    thread.start()
    try:
        necessity(forward, ids, attr, attention_mask=mask)
    finally:
        release.set()
        thread.join(timeout=60)
    assert seen == [(True, True, True)]  # training, dropout on, during the metric


_GLOBAL_MODEL: Optional[nn.Module] = None


def _forward_of_the_global(ids, mask):
    return _GLOBAL_MODEL(input_ids=ids, attention_mask=mask).logits


class _Pipeline:
    def __init__(self, model):
        self.model = model

    def scores(self, ids, mask):
        return self.model(input_ids=ids, attention_mask=mask).logits


class _Wrapper(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids, mask):
        return self.model(input_ids=ids, attention_mask=mask).logits


def _with_kwargs(ids, mask, *, model):
    return model(input_ids=ids, attention_mask=mask).logits


FORWARD_STYLES = [
    pytest.param(lambda m: _forward(m), id="closure"),
    pytest.param(lambda m: (lambda i, k: _forward(m)(i, k).softmax(-1)), id="nested"),
    pytest.param(lambda m: functools.partial(_with_kwargs, model=m), id="partial"),
    pytest.param(lambda m: _Pipeline(m).scores, id="bound-method"),
    pytest.param(lambda m: _Wrapper(m), id="module-wrapper"),
    pytest.param(lambda m: _forward_of_the_global, id="global"),
    pytest.param(lambda m: _forward_through(weakref.ref(m)), id="weakref"),
]  # fmt: skip


def _forward_through(ref):
    return lambda ids, mask: ref()(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("make_forward", FORWARD_STYLES)
def test_metric_eval_mode_whatever_forward_func_is(make_forward, monkeypatch):
    model = _dropout_bert()
    monkeypatch.setattr(sys.modules[__name__], "_GLOBAL_MODEL", model)
    ids, mask, attr = _bert_batch()
    forward = make_forward(model)
    want = necessity(forward, ids, attr, attention_mask=mask)  # eval mode
    model.train()
    model.classifier.eval()  # mixed flags come back as they were
    with pytest.warns(UserWarning, match="training mode"):
        got = necessity(forward, ids, attr, attention_mask=mask)
    assert torch.equal(got, want)
    assert model.training and model.bert.training and not model.classifier.training
    with pytest.warns(UserWarning, match="training mode"):
        minimal_necessary_size(forward, ids, attr, attention_mask=mask)
    assert not nn.modules.module._global_forward_pre_hooks
    assert not any(m._forward_pre_hooks for m in model.modules())


# ---------------------------------------------- perturb_func of the wrong kind
def test_infidelity_perturb_func_given_to_sensitivity_max_says_so():
    # kind="infidelity" is the default, and sensitivity_max passes its
    # perturb_radius (0.02) as the second argument: the user saw "baselines
    # for token ids must be an int or an integer tensor, got 0.02"
    from captum.metrics import sensitivity_max

    model = make_tiny_model("bert")
    ids, mask = random_batch(2, 10, lengths=[10, 7], seed=4)

    def forward(ids, mask):
        return model(input_ids=ids, attention_mask=mask).logits

    explain = AttentionWeights(forward, model=model).attribute
    perturb = token_perturb_func(attention_mask=mask, protected_ids=(), mask_token_id=3)
    with pytest.raises(TypeError, match=r"token_perturb_func\('sensitivity'"):
        sensitivity_max(
            explain, ids, perturb_func=perturb, additional_forward_args=(mask,),
            n_perturb_samples=2,
        )  # fmt: skip
    # Captum's own token baselines still work
    chosen, perturbed = perturb(ids, 3)
    assert torch.equal(perturbed[chosen.bool()], torch.full_like(ids, 3)[chosen.bool()])


# ------------------------------------------- "delete" without an attention mask
def _shorter_texts_necessity(model, ids, attr, special, fraction, keep_top):
    r"""p(x) - p(x') by hand, x' the text with the tokens dropped (no padding)."""
    out = []
    for i in range(ids.shape[0]):
        content = special[i] == 0
        n = int(content.sum())
        k = max(1, int(np.ceil(fraction * n - 1e-6)))
        order = sorted(
            (p for p in range(ids.shape[1]) if content[p]),
            key=lambda p: (-float(attr[i, p]), p),
        )
        top = set(order[:k])
        kept = [
            p for p in range(ids.shape[1]) if not content[p] or ((p in top) == keep_top)
        ]
        with torch.no_grad():
            p0 = model(ids[i : i + 1]).logits.softmax(-1)
            p1 = model(ids[i : i + 1, kept]).logits.softmax(-1)
        target = int(p0.argmax())
        out.append(float(p0[0, target] - p1[0, target]))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("side", [None, "right", "left"])
def test_delete_without_mask_gives_the_model_the_shorter_text(side):
    # forward_func(ids) alone, the common Captum style for one unpadded text:
    # the removed tokens were once replaced by PAD ids that the model read
    # (a necessity of 0.020 instead of 0.033 on the fine-tuned MiniLM)
    model = make_tiny_model("bert", seed=3)
    ids, _ = random_batch(2, 14, seed=5)
    ids[:, 0], ids[:, -1] = 101, 102
    special = torch.zeros_like(ids)
    special[:, [0, -1]] = 1
    special[1, 5] = 1  # the second text has one content token fewer
    attr = torch.randn(ids.shape, generator=torch.Generator().manual_seed(1))

    def forward(i):
        return model(i).logits

    for fraction in (0.2, 0.5):
        for keep_top, metric in ((False, necessity), (True, sufficiency)):
            got = metric(
                forward, ids, attr, special_tokens_mask=special,
                fraction=fraction, padding_side=side,
            )  # fmt: skip
            want = _shorter_texts_necessity(
                model, ids, attr, special, fraction, keep_top
            )
            torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=0)
    # a per-position argument that is the same everywhere (token type ids)
    # is cut to the kept positions with the ids
    tt = torch.zeros_like(ids)
    got = necessity(
        lambda i, t: model(i, token_type_ids=t).logits, ids, attr,
        additional_forward_args=(tt,), special_tokens_mask=special,
        fraction=0.5, padding_side=side,
    )  # fmt: skip
    want = _shorter_texts_necessity(model, ids, attr, special, 0.5, False)
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=0)


def test_minimal_size_without_mask_searches_the_shorter_texts(make_bow):
    # class 1 (3.25 against 1.25); removing 9 leaves class 1 (2.5), removing
    # 9 and 5 flips it (0.5): size 2. The PAD ids that a deletion once left
    # (weights 5, -5) flipped it at size 1.
    model = make_bow()
    ids = torch.tensor([[CLS, 9, 5, 4, SEP]])
    special = torch.tensor([[1, 0, 0, 0, 1]])
    attr = torch.tensor([[0.0, 0.9, 0.5, 0.1, 0.0]])
    for search in ("linear", "binary"):
        sizes, fractions = minimal_necessary_size(
            model, ids, attr, special_tokens_mask=special, search=search
        )
        assert sizes.tolist() == [2.0]
        assert fractions.tolist() == pytest.approx([2 / 3])


def test_pad_and_deleting_everything_without_mask_are_refused():
    model = make_tiny_model("bert", seed=3)
    ids, _ = random_batch(1, 12, seed=5)
    attr = torch.randn(ids.shape, generator=torch.Generator().manual_seed(1))

    def forward(i):
        return model(i).logits

    with pytest.raises(ValueError, match='mode="pad" hides the removed tokens'):
        necessity(forward, ids, attr, mode="pad", fraction=0.5)
    # no special tokens marked: fraction 1 deletes the whole text
    with pytest.raises(ValueError, match="removed every token of a text"):
        necessity(forward, ids, attr, fraction=1.0)
    # with a mask both work (the model gets the mask)
    mask = torch.ones_like(ids)
    necessity(
        lambda i, m: model(i, attention_mask=m).logits, ids, attr,
        attention_mask=mask, mode="pad", fraction=1.0,
    )  # fmt: skip


def test_a_broadcast_per_position_argument_is_cut_with_the_text():
    # Without a mask, "delete" cuts per-position arguments to the kept
    # tokens; one given once for the whole batch, (1, N), must be cut too.
    model = make_tiny_model("bert", seed=1)
    ids, _ = random_batch(3, 10, seed=2)
    attr = torch.randn(ids.shape, generator=torch.Generator().manual_seed(3))
    special = torch.zeros_like(ids)
    special[:, [0, -1]] = 1

    def forward(i, token_type_ids):
        return model(input_ids=i, token_type_ids=token_type_ids).logits

    kw = dict(special_tokens_mask=special, fraction=0.3)
    per_example = necessity(forward, ids, attr, None, (torch.zeros_like(ids),), **kw)
    once = necessity(forward, ids, attr, None, (torch.zeros_like(ids[:1]),), **kw)
    torch.testing.assert_close(once, per_example)


@pytest.mark.parametrize("search", ["linear", "binary"])
@pytest.mark.parametrize("per_eval", [1, 2, 16])
def test_minimal_sizes_without_a_mask_never_empty_a_text(make_bow, search, per_eval):
    # No mask and no special tokens: "delete" runs the model on the shorter
    # texts, so the searches leave out the one size that empties the text
    # (they used to try it, and raised, whenever it was in their batch).
    model = make_bow()
    ids = torch.tensor([[4, 5, 6, 7, 8]])  # logits (2.5, 3.0): class 1
    attr = torch.tensor([[0.1, 0.5, 0.3, 0.2, 0.9]])
    kw = dict(search=search, perturbations_per_eval=per_eval)
    # removing 8, 5, 6 keeps class 1; also 7 leaves (1, 0): 4 flip it, and
    # keeping 8 alone, then 5, then 6 gives class 0: 4 are sufficient
    for fn in (minimal_necessary_size, minimal_sufficient_size):
        size, frac = fn(lambda i: model(i), ids, attr, **kw)
        assert size.tolist() == [4.0] and frac.tolist() == pytest.approx([0.8])
        with_mask = fn(model, ids, attr, attention_mask=torch.ones_like(ids), **kw)
        assert with_mask[0].tolist() == [4.0]
    # two class-1 words: only removing both would flip, which is no text
    two = torch.tensor([[5, 9]])
    size, _ = minimal_necessary_size(lambda i: model(i), two, attr[:, :2], **kw)
    assert torch.isnan(size).all()
    size, _ = minimal_sufficient_size(lambda i: model(i), two, attr[:, :2], **kw)
    assert size.tolist() == [1.0]


def test_one_tuple_inputs_and_empty_texts(make_bow, hand_batch):
    b = hand_batch
    kw = dict(attention_mask=b["mask"], special_tokens_mask=b["special"])
    model = make_bow()
    want = necessity(model, b["ids"], b["attr"], **kw)
    # Captum's tuple form of a single input, as the attributions allow
    torch.testing.assert_close(necessity(model, (b["ids"],), (b["attr"],), **kw), want)
    sizes = minimal_sufficient_size(model, (b["ids"],), b["attr"], **kw)[0]
    torch.testing.assert_close(
        sizes, minimal_sufficient_size(model, b["ids"], b["attr"], **kw)[0]
    )
    empty = torch.zeros(1, 0, dtype=torch.long)
    with pytest.raises(ValueError, match="has no positions"):
        necessity(model, empty, torch.zeros(1, 0), attention_mask=empty)
    with pytest.raises(ValueError, match="has no positions"):
        token_removal_attack(empty, 1, attributions=torch.zeros(1, 0))


def test_tuple_inputs_say_where_the_mask_goes(make_bow, hand_batch):
    # attribute() takes (ids, mask) as inputs; the metrics take the mask as
    # attention_mask=, and their error now says so
    model = make_bow()
    ids, mask, attr = hand_batch["ids"], hand_batch["mask"], hand_batch["attr"]
    with pytest.raises(TypeError, match="mask as attention_mask="):
        necessity(model, (ids, mask), attr)
    with pytest.raises(TypeError, match="got Tensor|got str") as info:
        necessity(model, "ids", attr)
    assert "attention_mask=" not in str(info.value)


# ------------------------------------ shared tensors in additional_forward_args
# Only tensors whose first dimension is the batch's are per example; a
# shared one, here a (classes,) bias, is passed whole whatever its length.
def _shared_bias_case(make_bow, n_examples):
    model = make_bow()
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(4, 12, (n_examples, 6), generator=gen)
    attr = torch.rand(ids.shape, generator=gen, dtype=torch.float64)
    bias = torch.tensor([0.4, -0.4], dtype=torch.float64)
    assert bias.shape[0] != n_examples
    return model, ids, attr, bias


@pytest.mark.parametrize("fn", [necessity, sufficiency])
def test_delete_without_mask_passes_a_shared_tensor_whole(make_bow, fn):
    # the no-mask "delete" path took any tensor as long as a chunk of rows
    # (here 2: one example, one fraction and the original) for per-row
    model, ids, attr, bias = _shared_bias_case(make_bow, 1)
    kw = dict(fraction=0.2, additional_forward_args=(bias,))
    no_mask = fn(lambda i, b: model(i, None, b), ids, attr, **kw)
    mask = torch.ones_like(ids)
    ones = fn(lambda i, m, b: model(i, m, b), ids, attr, attention_mask=mask, **kw)
    assert torch.allclose(no_mask, ones, atol=1e-12)
    # and by hand: the bias shifts every row's logits alike
    probs = lambda i: torch.softmax(model(i, None, bias), -1)  # noqa: E731
    j = int(probs(ids).argmax())
    order = attr[0].argsort(descending=True)
    kept = order[2:] if fn is necessity else order[:2]
    want = probs(ids)[0, j] - probs(ids[:, kept.sort().values])[0, j]
    assert torch.allclose(no_mask[0], want, atol=1e-12)


@pytest.mark.parametrize("fn", [minimal_necessary_size, minimal_sufficient_size])
@pytest.mark.parametrize("with_mask", [False, True])
def test_minimal_sizes_pass_a_shared_tensor_whole(make_bow, fn, with_mask):
    # Captum's search repeated every tensor argument once per perturbation
    # of a batch: a shared (classes,) bias became (8,) and the model failed
    model, ids, attr, bias = _shared_bias_case(make_bow, 3)
    if with_mask:
        fwd, kw = (lambda i, m, b: model(i, m, b)), {
            "attention_mask": torch.ones_like(ids)
        }
    else:
        fwd, kw = (lambda i, b: model(i, None, b)), {}
    one = fn(
        fwd, ids, attr, additional_forward_args=(bias,), perturbations_per_eval=1, **kw
    )
    four = fn(
        fwd, ids, attr, additional_forward_args=(bias,), perturbations_per_eval=4, **kw
    )
    assert torch.allclose(one[0], four[0], equal_nan=True)
    assert bool(torch.isfinite(one[0]).any())
