r"""Determinism on CPU: the same inputs give bit-identical matrices,
certificates and attributions on every run, in between other calls, on a copy
of the model, and (slow) in a fresh process. (The benchmark's determinism is
tested in tests/benchmark.)"""

from __future__ import annotations

import copy
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from effattn_testing import random_batch

from captum_effattn import (
    Certificate,
    EfficientAttention,
    effective_attention,
    efficient_attention,
)

TESTS = Path(__file__).resolve().parents[1]


def _assert_identical(x, y) -> None:
    assert x.dtype == y.dtype and x.shape == y.shape
    assert torch.equal(x, y), float((x - y).abs().max())


def _assert_same_certificate(c1: Certificate, c2: Certificate) -> None:
    for f in fields(Certificate):
        _assert_identical(getattr(c1, f.name), getattr(c2, f.name))


def _forward(model):
    return lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("family", ["bert", "gpt2"])
@pytest.mark.parametrize("objective", ["min_norm", "sparse"])
def test_functional_is_bit_identical(tiny_model, family, objective):
    model = tiny_model(family)
    ids, mask = random_batch(2, 16, lengths=[16, 12], seed=21)
    other_ids, other_mask = random_batch(2, 12, lengths=[12, 9], seed=22)
    kw = dict(layers=-1, return_certificate=True, objective=objective)
    e1, c1 = efficient_attention(model, ids, mask, **kw)
    # another call in between must not leave state behind (warm starts, caches)
    efficient_attention(model, other_ids, other_mask, **kw)
    e2, c2 = efficient_attention(model, ids, mask, **kw)
    e3, c3 = efficient_attention(copy.deepcopy(model), ids, mask, **kw)
    assert c1.ok(), str(c1)
    for e, c in ((e2, c2), (e3, c3)):
        _assert_identical(e1, e)
        _assert_same_certificate(c1, c)
    eff1 = effective_attention(model, ids, mask, layers=-1)
    _assert_identical(eff1, effective_attention(model, ids, mask, layers=-1))


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize(
    "options",
    [
        dict(weighting="gradient"),
        dict(weighting="gradient", query="all", heads="max"),
        dict(layer="gradient_rollout"),
    ],
    ids=["gradient", "gradient-all-max", "gradient-rollout"],
)
def test_attribution_is_bit_identical(tiny_model, family, options):
    model = tiny_model(family)
    ids, mask = random_batch(3, 18, lengths=[18, 11, 15], seed=23)
    target = torch.tensor([0, 1, 1])
    explainer = EfficientAttention(_forward(model), model=model)

    def run():
        return explainer.attribute(
            ids, target=target, additional_forward_args=(mask,),
            return_matrices=True, **options,
        )  # fmt: skip

    s1, r1 = run()
    s2, r2 = run()
    s3, r3 = EfficientAttention(_forward(model), model=model).attribute(
        ids, target=target, additional_forward_args=(mask,), return_matrices=True,
        **options,
    )  # fmt: skip
    assert bool(torch.isfinite(s1).all()) and float(s1.abs().max()) > 0
    for s, r in ((s2, r2), (s3, r3)):
        _assert_identical(s1, s)
        assert list(r1.matrices) == list(r.matrices)
        for idx in r1.matrices:
            _assert_identical(r1.matrices[idx], r.matrices[idx])
        _assert_identical(r1.rows, r.rows)
        _assert_same_certificate(r1.certificate, r.certificate)


_SCRIPT = r"""
import sys, hashlib
sys.path.insert(0, {tests!r})
import torch
from effattn_testing import make_tiny_model, random_batch
from captum_effattn import EfficientAttention, efficient_attention
model = make_tiny_model("bert")
ids, mask = random_batch(2, 20, lengths=[20, 14], seed=21)
e = efficient_attention(model, ids, mask)
s = EfficientAttention(model).attribute(
    ids, target=1, additional_forward_args=(mask,), weighting="gradient"
)
h = hashlib.sha256()
for t in (e, s):
    h.update(t.contiguous().numpy().tobytes())
print(h.hexdigest())
"""


@pytest.mark.slow
def test_bit_identical_across_processes():
    script = _SCRIPT.format(tests=str(TESTS))
    digests = {
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    }
    assert len(digests) == 1, digests
