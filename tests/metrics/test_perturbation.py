r"""Token-safe perturbation functions for Captum's infidelity and sensitivity."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from captum.metrics import infidelity, sensitivity_max
from metrics_toy import CLS, MASK, PAD, SEP, VOCAB

from captum_effattn.metrics import token_perturb_func

SPECIAL_IDS = [PAD, CLS, SEP, MASK]


def _batch():
    ids = torch.tensor(
        [
            [CLS, 4, 5, 6, 7, SEP, PAD, PAD],
            [CLS, 8, 9, 10, 11, 4, 5, SEP],
            [CLS, 6, SEP, PAD, PAD, PAD, PAD, PAD],
        ]
    )
    mask = (ids != PAD).long()
    special = ((ids == CLS) | (ids == SEP) | (ids == PAD)).long()
    return ids, mask, special


def _expand(t, m):
    return t.repeat_interleave(m, dim=0)


@pytest.mark.parametrize("source", ["masks", "ids", "mask+ids", "tokenizer"])
def test_infidelity_func_protects_and_indicates(source):
    ids, mask, special = _batch()
    if source == "masks":
        kwargs = dict(special_tokens_mask=special, attention_mask=mask)
    elif source == "ids":
        kwargs = dict(protected_ids=SPECIAL_IDS)
    elif source == "mask+ids":
        kwargs = dict(attention_mask=mask, protected_ids=[CLS, SEP])
    else:

        class Tok:
            all_special_ids = SPECIAL_IDS
            mask_token_id = MASK
            pad_token_id = PAD

            def __len__(self):
                return VOCAB

        kwargs = dict(tokenizer=Tok())
    kwargs.setdefault("mask_token_id", MASK)
    perturb = token_perturb_func("infidelity", probability=0.5, seed=0, **kwargs)
    assert list(inspect.signature(perturb).parameters) == ["inputs", "baselines"]
    m = 7
    big = _expand(ids, m)
    perturbation, perturbed = perturb(big)
    assert perturbed.dtype == ids.dtype and perturbed.shape == big.shape
    assert perturbation.is_floating_point() and perturbation.shape == big.shape
    changed = perturbed != big
    torch.testing.assert_close(perturbation, changed.to(perturbation.dtype))
    assert not changed[_expand(special, m).bool()].any()
    assert (perturbed[changed] == MASK).all()
    assert changed.any()
    # the copies of one example are perturbed differently
    assert not torch.equal(changed[:m], changed[:1].expand(m, -1))


def test_seeded_and_reproducible():
    ids, mask, special = _batch()
    kwargs = dict(special_tokens_mask=special, mask_token_id=MASK, probability=0.4)
    a = token_perturb_func(seed=3, **kwargs)(_expand(ids, 5))[1]
    b = token_perturb_func(seed=3, **kwargs)(_expand(ids, 5))[1]
    c = token_perturb_func(seed=4, **kwargs)(_expand(ids, 5))[1]
    assert torch.equal(a, b) and not torch.equal(a, c)
    gen = torch.Generator().manual_seed(3)
    d = token_perturb_func(generator=gen, **kwargs)(_expand(ids, 5))[1]
    assert torch.equal(a, d)


def test_n_tokens_and_pad_mode_with_tuple_inputs():
    ids, mask, special = _batch()
    perturb = token_perturb_func(
        "infidelity",
        mode="pad",
        n_tokens=2,
        protected_ids=[CLS, SEP],
        mask_index=1,
        seed=1,
    )
    (p_ids, p_mask), (new_ids, new_mask) = perturb((_expand(ids, 4), _expand(mask, 4)))
    assert p_mask.abs().sum() == 0  # the mask gets no perturbation weight
    changed = new_ids != _expand(ids, 4)
    # 2 tokens per row, or all content tokens when fewer (example 2 has one)
    assert changed.sum(1).tolist() == [2] * 8 + [1] * 4
    assert (new_ids[changed] == PAD).all() and (new_mask[changed] == 0).all()
    torch.testing.assert_close(p_ids, changed.to(p_ids.dtype))
    assert torch.equal(new_mask[~changed], _expand(mask, 4)[~changed])


def test_baselines_replace_tokens():
    ids, mask, special = _batch()
    perturb = token_perturb_func(special_tokens_mask=special, mask_token_id=MASK)
    pert, new = perturb(ids, baselines=9)
    changed = pert.bool()
    assert (new[changed] == 9).all()
    with pytest.raises(TypeError, match="integer"):
        perturb(ids, baselines=torch.zeros(1, 8))


def test_sensitivity_func_random_replacement():
    ids, mask, special = _batch()
    perturb = token_perturb_func(
        "sensitivity",
        special_tokens_mask=special,
        protected_ids=SPECIAL_IDS,
        vocab_size=VOCAB,
        n_tokens=1,
        seed=0,
    )
    # one parameter: sensitivity_max then passes no radius
    assert len(inspect.signature(perturb).parameters) == 1
    m = 200
    big = _expand(ids, m)
    new = perturb(big)
    assert isinstance(new, torch.Tensor) and new.dtype == ids.dtype
    changed = new != big
    assert changed.sum(1).eq(1).all()
    assert not changed[_expand(special, m).bool()].any()
    drawn = new[changed]
    assert ((drawn >= 4) & (drawn < VOCAB)).all()  # never a special id
    # every word id other than the original can be drawn
    assert set(drawn.tolist()) == set(range(4, VOCAB))


def test_float_ids_rejected():
    ids, mask, special = _batch()
    for kind in ("infidelity", "sensitivity"):
        perturb = token_perturb_func(
            kind, protected_ids=SPECIAL_IDS, mask_token_id=MASK, vocab_size=VOCAB
        )
        with pytest.raises(TypeError, match="integer token ids"):
            perturb(ids.float())


def test_bad_arguments():
    ids, mask, special = _batch()
    with pytest.raises(ValueError, match="protect"):
        token_perturb_func(mask_token_id=MASK)
    with pytest.raises(ValueError, match="kind"):
        token_perturb_func("lime", protected_ids=())
    with pytest.raises(ValueError, match="mask_token_id"):
        token_perturb_func(protected_ids=())
    with pytest.raises(ValueError, match="vocab_size"):
        token_perturb_func("sensitivity", protected_ids=())
    with pytest.raises(ValueError, match="Unknown mode"):
        token_perturb_func(mode="gauss", protected_ids=())
    with pytest.raises(ValueError):
        token_perturb_func(protected_ids=(), mask_token_id=MASK, probability=0.0)
    with pytest.raises(ValueError):
        token_perturb_func(
            protected_ids=(), mask_token_id=MASK, probability=0.5, n_tokens=2
        )
    with pytest.raises(ValueError):
        token_perturb_func(
            protected_ids=(), mask_token_id=MASK, seed=0, generator=torch.Generator()
        )
    perturb = token_perturb_func(special_tokens_mask=special, mask_token_id=MASK)
    with pytest.raises(ValueError, match="repetition"):
        perturb(ids[:, :5])  # not a repetition of the (3, 8) masks


def test_pad_mode_needs_the_tokenizers_padding_id():
    # a tokenizer without a pad token (GPT-2's) once gave id 0 silently
    class NoPad:
        all_special_ids = [50256]
        mask_token_id = None
        pad_token_id = None

        def __len__(self) -> int:
            return 50257

    with pytest.raises(ValueError, match="tokenizer has none"):
        token_perturb_func(tokenizer=NoPad(), mode="pad", probability=1.0)
    ids = torch.tensor([[5, 6, 50256]])
    perturb = token_perturb_func(
        tokenizer=NoPad(), mode="pad", pad_token_id=50256, probability=1.0, seed=0
    )
    _, perturbed = perturb(ids)
    assert perturbed.tolist() == [[50256, 50256, 50256]]
    # other modes never use the padding id
    token_perturb_func("sensitivity", tokenizer=NoPad(), n_tokens=1)


def _pad_to(rows, width, left=False):
    out = torch.full((len(rows), width), PAD)
    for i, row in enumerate(rows):
        if left:
            out[i, width - len(row) :] = torch.tensor(row)
        else:
            out[i, : len(row)] = torch.tensor(row)
    return out


@pytest.mark.parametrize(
    "kind, options",
    [
        ("infidelity", dict(probability=0.5)),
        ("infidelity", dict(n_tokens=2, mode="pad")),
        ("sensitivity", dict(n_tokens=1)),
        ("sensitivity", dict(probability=0.3, mode="random")),
    ],
)
@pytest.mark.parametrize("masks", [True, False])
def test_example_seeds_make_draws_independent_of_the_batch(kind, options, masks):
    # a document's perturbations depend on its seed only: not on the other
    # documents of its batch, their number, the padded width or the side,
    # nor on how Captum splits the copies into calls (max_examples_per_batch)
    doc = [CLS, 4, 5, 6, 7, 8, 9, 10, SEP]
    others = [[CLS, 11, 12, SEP], [CLS, 4, 6, 8, 10, 12, 5, 7, 9, 11, SEP]]
    m = 6

    def perturbed_doc(rows, where, seeds, width, left, split=(m,)):
        ids = _pad_to(rows, width, left)
        mask = (ids != PAD).long()
        special = ((ids == CLS) | (ids == SEP) | (ids == PAD)).long()
        given = dict(attention_mask=mask, special_tokens_mask=special)
        perturb = token_perturb_func(
            kind, mask_token_id=MASK, vocab_size=VOCAB, protected_ids=SPECIAL_IDS,
            example_seeds=seeds, **(given if masks else {}), **options,
        )  # fmt: skip
        out = []
        for _ in range(2):  # Captum calls it again for each sub-batch
            for rep in split:
                got = perturb(_expand(ids, rep))
                new = got if kind == "sensitivity" else got[1]
                rows_of_doc = new[where * rep : (where + 1) * rep]
                real = _expand(mask, rep)[where * rep : (where + 1) * rep].bool()
                out.append(rows_of_doc[real].view(rep, len(doc)))
        return torch.cat(out)

    alone = perturbed_doc([doc], 0, [7], len(doc), False)
    assert not torch.equal(alone, _expand(torch.tensor([doc]), 2 * m))
    for rows, where, seeds, width, left, split in [
        ([others[0], doc], 1, [3, 7], 12, False, (m,)),
        ([doc, others[1], others[0]], 0, [7, 1, 2], 11, True, (m,)),
        ([others[1], doc], 1, torch.tensor([5, 7]), 16, True, (m,)),
        ([doc], 0, [7], len(doc), False, (1,) * m),
        ([others[0], doc], 1, np.array([3, 7]), 12, True, (2, 1, 3)),
    ]:
        got = perturbed_doc(rows, where, seeds, width, left, split)
        assert torch.equal(got, alone), (rows, split)
    assert not torch.equal(perturbed_doc([doc], 0, [8], len(doc), False), alone)


def test_example_seeds_with_the_mask_in_the_inputs():
    ids, mask, special = _batch()
    kwargs = dict(mode="pad", n_tokens=2, protected_ids=[CLS, SEP], mask_index=1)
    perturb = token_perturb_func("infidelity", example_seeds=[1, 2, 3], **kwargs)
    _, (new_ids, new_mask) = perturb((_expand(ids, 4), _expand(mask, 4)))
    changed = new_ids != _expand(ids, 4)
    assert changed.sum(1).tolist() == [2] * 8 + [1] * 4
    assert not changed[_expand(mask, 4) == 0].any()
    # the first example alone, padded less, draws the same
    alone = token_perturb_func("infidelity", example_seeds=[1], **kwargs)
    _, (ids1, _) = alone((_expand(ids[:1, :6], 4), _expand(mask[:1, :6], 4)))
    assert torch.equal(ids1, new_ids[:4, :6])


def test_example_seeds_bad_input():
    ids, mask, special = _batch()
    kwargs = dict(special_tokens_mask=special, mask_token_id=MASK)
    with pytest.raises(ValueError, match="at most one"):
        token_perturb_func(seed=0, example_seeds=[1, 2, 3], **kwargs)
    with pytest.raises(ValueError, match="one seed per example"):
        token_perturb_func(example_seeds=[1, 2], **kwargs)
    with pytest.raises(ValueError, match="empty"):
        token_perturb_func(protected_ids=(), mask_token_id=MASK, example_seeds=[])
    with pytest.raises(TypeError, match="ints"):
        token_perturb_func(example_seeds=[1, 2.5, 3], **kwargs)
    with pytest.raises(TypeError, match="integer tensor"):
        token_perturb_func(example_seeds=torch.tensor([1.0, 2.0, 3.0]), **kwargs)
    for bad in (7, {1: 2}, (s for s in [1, 2, 3]), "123"):
        with pytest.raises(TypeError, match="one seed per example"):
            token_perturb_func(example_seeds=bad, **kwargs)
    # without masks the batch size is unknown: the rows must be groups of
    # copies of one example, as Captum repeats a batch
    perturb = token_perturb_func(
        protected_ids=SPECIAL_IDS, mask_token_id=MASK, example_seeds=[1, 2]
    )
    with pytest.raises(ValueError, match="not 2 groups of copies"):
        perturb(ids)  # 3 rows
    with pytest.raises(ValueError, match="not 2 groups of copies"):
        perturb(_expand(ids[:2], 2).repeat(2, 1))  # 4 examples, 2 copies each
    assert perturb(_expand(ids[:2], 3))[1].shape == (6, 8)
    x = _expand(ids[:2], 3)
    strided = torch.cat([x, x], 1)[:, :8]  # the same ids, not contiguous
    assert not strided.is_contiguous()
    again = token_perturb_func(
        protected_ids=SPECIAL_IDS, mask_token_id=MASK, example_seeds=[1, 2]
    )
    first = token_perturb_func(
        protected_ids=SPECIAL_IDS, mask_token_id=MASK, example_seeds=[1, 2]
    )
    assert torch.equal(again(strided)[1], first(x)[1])


def test_with_captum_infidelity(make_bow):
    # logits of a bag of words are additive: with [MASK] replacement,
    # f(x) - f(x_pert) = sum over replaced tokens of W[id, j] - W[MASK, j], so
    # those attributions have zero infidelity and random ones do not.
    model = make_bow()
    ids, mask, special = _batch()
    target = 1
    exact = (model.weights[ids, target] - model.weights[MASK, target]).float()
    exact = exact * (1 - special)
    perturb = token_perturb_func(
        special_tokens_mask=special, attention_mask=mask, mask_token_id=MASK, seed=0
    )

    def forward(ids, mask):
        return model(ids, mask).float()

    kwargs = dict(
        additional_forward_args=(mask,),
        target=target,
        n_perturb_samples=6,
        max_examples_per_batch=9,
    )
    zero = infidelity(forward, perturb, ids, exact, **kwargs)
    assert zero.shape == (3,)
    torch.testing.assert_close(zero, torch.zeros(3), atol=1e-8, rtol=0)
    rand = infidelity(forward, perturb, ids, torch.rand(3, 8), **kwargs)
    assert torch.isfinite(rand).all() and rand.sum() > 1e-3


def test_with_captum_sensitivity_max(make_bow):
    model = make_bow()
    ids, mask, special = _batch()

    def explain(ids, additional_forward_args=None, target=0):
        # like a Captum attribute method: a tuple in (sensitivity_max passes the
        # original inputs so), a tuple out
        if isinstance(ids, tuple):
            return (explain(ids[0], additional_forward_args, target),)
        (mask,) = additional_forward_args
        return model.weights[ids, target].float() * mask

    perturb = token_perturb_func(
        "sensitivity",
        special_tokens_mask=special,
        protected_ids=SPECIAL_IDS,
        vocab_size=VOCAB,
        seed=0,
    )
    sens = sensitivity_max(
        explain,
        ids,
        perturb_func=perturb,
        n_perturb_samples=5,
        max_examples_per_batch=6,
        additional_forward_args=(mask,),
        target=1,
    )
    assert sens.shape == (3,) and torch.isfinite(sens).all() and (sens > 0).all()
