r"""Properties of the one erase path (through the public token_removal_attack)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from metrics_toy import CLS, MASK, PAD, SEP

from captum_effattn.metrics import necessity, token_removal_attack


@st.composite
def batches(draw):
    n_ex = draw(st.integers(1, 4))
    n_tok = draw(st.integers(2, 10))
    rows, masks, specials = [], [], []
    for _ in range(n_ex):
        length = draw(st.integers(2, n_tok))
        words = draw(
            st.lists(st.integers(4, 11), min_size=length - 2, max_size=length - 2)
        )
        row = [CLS] + words + [SEP] + [PAD] * (n_tok - length)
        rows.append(row)
        masks.append([1] * length + [0] * (n_tok - length))
        specials.append([1] + [0] * (length - 2) + [1] * (n_tok - length + 1))
    # few distinct values, so that ties are common
    attr = draw(
        st.lists(
            st.lists(
                st.sampled_from([-1.0, 0.0, 0.5, 1.0]), min_size=n_tok, max_size=n_tok
            ),
            min_size=n_ex,
            max_size=n_ex,
        )
    )
    k = draw(st.integers(0, n_tok))
    return (
        torch.tensor(rows),
        torch.tensor(masks),
        torch.tensor(specials),
        torch.tensor(attr),
        k,
    )


def _top_positions(ids, mask, special, attr, k):
    content = [t for t in range(ids.shape[0]) if mask[t] and not special[t]]
    order = sorted(content, key=lambda t: (-float(attr[t]), t))
    return content, set(order[:k])


@settings(max_examples=60, deadline=None)
@given(batches(), st.sampled_from(["delete", "mask", "pad"]), st.booleans())
def test_removal_properties(batch, mode, keep):
    ids, mask, special, attr, k = batch
    new_ids, new_mask = token_removal_attack(
        (ids, mask),
        k,
        attributions=attr,
        keep=keep,
        special_tokens_mask=special,
        mode=mode,
        mask_token_id=MASK,
    )
    assert new_ids.dtype == ids.dtype and new_ids.shape == ids.shape
    assert new_mask.dtype == mask.dtype and new_mask.shape == mask.shape
    for b in range(ids.shape[0]):
        content, top = _top_positions(ids[b], mask[b], special[b], attr[b], k)
        removed = (set(content) - top) if keep else top
        real = [t for t in range(ids.shape[1]) if mask[b, t]]
        if mode == "delete":
            kept = [int(ids[b, t]) for t in real if t not in removed]
            n = len(kept)
            assert new_ids[b, :n].tolist() == kept
            assert new_mask[b].tolist() == [1] * n + [0] * (ids.shape[1] - n)
            assert (new_ids[b, n:] == PAD).all()
            continue
        for t in range(ids.shape[1]):
            if t in removed:
                assert int(new_ids[b, t]) == (MASK if mode == "mask" else PAD)
                assert int(new_mask[b, t]) == (1 if mode == "mask" else 0)
            else:  # special tokens, padding and kept tokens are untouched
                assert new_ids[b, t] == ids[b, t] and new_mask[b, t] == mask[b, t]


def test_progress_bar_and_full_removal(make_bow, hand_batch):
    model = make_bow()
    val = necessity(
        model,
        hand_batch["ids"],
        hand_batch["attr"],
        attention_mask=hand_batch["mask"],
        special_tokens_mask=hand_batch["special"],
        fraction=1.0,
        batch_size=1,
        show_progress=True,
    )
    specials_only = torch.tensor([[CLS, SEP, PAD], [CLS, SEP, PAD]])
    p = torch.softmax(model(hand_batch["ids"], hand_batch["mask"]), -1)
    q = torch.softmax(model(specials_only, torch.tensor([[1, 1, 0]] * 2)), -1)
    j = p.argmax(1, keepdim=True)
    torch.testing.assert_close(
        val, (p.gather(1, j) - q.gather(1, j)).squeeze(1).to(val)
    )
