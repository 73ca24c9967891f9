r"""Sparse efficient attention (vertices of the output-equivalent polytope) and
the attention-level necessity/sufficiency test."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from effattn_testing import random_batch
from scipy.optimize import linprog

from captum_effattn import (
    EfficientAttention,
    attention_support_test,
    efficient_attention,
)
from captum_effattn._core.solver import head_bases, min_norm_simplex_solve
from captum_effattn._core.sparse import caratheodory_reduce


def _min_support(c: np.ndarray, b: np.ndarray, rank: int) -> int:
    # exhaustive search over subsets: the smallest feasible support
    n = c.shape[0]
    for k in range(1, rank + 1):
        for subset in itertools.combinations(range(n), k):
            s = list(subset)
            res = linprog(
                np.zeros(k), A_eq=c[s].T, b_eq=b, bounds=[(0, None)] * k,
                method="highs",
            )  # fmt: skip
            if res.status == 0 and np.abs(c[s].T @ res.x - b).max() < 1e-9:
                return k
    return n


def _small(seed: int, sparse_row: bool):
    g = torch.Generator().manual_seed(seed)
    n, dh = 10, 3
    v = torch.randn(n, dh, generator=g, dtype=torch.float64)
    w = torch.randn(dh, 6, generator=g, dtype=torch.float64)
    a = torch.softmax(torch.randn(3, n, generator=g, dtype=torch.float64) * 2, -1)
    if sparse_row:  # a row that is itself supported on two tokens
        a[0] = 0.0
        a[0, 2], a[0, 7] = 0.3, 0.7
    u, c, cm = head_bases(v, w, torch.ones(n, dtype=torch.bool))
    return v @ w, a, c, cm


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("sparse_row", [False, True])
def test_vertex_against_exhaustive_minimum(seed, sparse_row):
    t, a, c, cm = _small(seed, sparse_row)
    x, _, _ = min_norm_simplex_solve(c[None], (a @ c)[None], cm[None])
    xs, size = caratheodory_reduce(x[0], c.expand(3, -1, -1), a)
    rank = int(cm.sum())
    assert float(xs.min()) >= 0.0
    assert torch.allclose(xs.sum(-1), torch.ones(3, dtype=xs.dtype), atol=1e-12)
    assert torch.allclose(xs @ t, a @ t, atol=1e-10)
    gaps = []
    for i in range(3):
        best = _min_support(c.numpy(), (a[i] @ c).numpy(), rank)
        assert best <= int(size[i]) <= rank
        gaps.append(int(size[i]) - best)
        # every step moved towards the raw attention
        assert float(xs[i] @ a[i]) >= float(x[0, i] @ a[i]) - 1e-12
    if not sparse_row:
        assert gaps == [0, 0, 0]  # generic rows: the minimum is the rank
    print("support gap to the exhaustive minimum:", gaps)


def test_sparse_objective_on_a_model(tiny_model):
    model = tiny_model("bert")
    ids, mask = random_batch(2, 30, lengths=[30, 21], seed=3)
    e, cert = efficient_attention(
        model, ids, mask, objective="sparse", return_certificate=True
    )
    dense = efficient_attention(model, ids, mask)
    assert cert.ok(rtol=1e-6), str(cert)
    assert bool((cert.support_size <= cert.rank).all())
    assert int(cert.support_size.max()) < int((dense > 0).sum(-1).max())
    # the attribution class takes the objective too
    scores = EfficientAttention(model, objective="sparse").attribute(
        ids, additional_forward_args=(mask,)
    )
    assert torch.allclose(scores.double(), e[-1, :, :, 0].mean(1), atol=1e-6)
    with pytest.raises(ValueError, match="objective"):
        EfficientAttention(model, objective="densest")
    # float32 algebra: the walk's Cholesky factorisations once failed there
    e32, cert32 = efficient_attention(
        model, ids, mask, objective="sparse", dtype=torch.float32,
        return_certificate=True,
    )  # fmt: skip
    assert e32.dtype == torch.float32 and cert32.ok(), str(cert32)
    assert bool((cert32.support_size <= cert32.rank).all())
    torch.testing.assert_close(e32.double(), e, atol=1e-5, rtol=0)
    scores = EfficientAttention(model, objective="sparse", dtype=torch.float32)
    scores.attribute(ids, additional_forward_args=(mask,))


@pytest.mark.parametrize("objective", ["min_norm", "sparse"])
def test_support_test_head_and_model_level(tiny_model, objective):
    model = tiny_model("bert")
    ids, mask = random_batch(2, 30, lengths=[30, 21], seed=4)
    res = attention_support_test(model, ids, mask, objective=objective)
    # head level: the support reproduces the head output exactly
    assert float(res.certificate.output_residual.max()) < 1e-10
    # model level: swapping efficient attention in changes nothing
    assert torch.allclose(res.p_efficient, res.p_full, atol=1e-6)
    assert bool(((res.support_fraction > 0) & (res.support_fraction <= 1)).all())
    assert torch.allclose(res.sufficiency, res.p_full - res.p_support)
    if objective == "sparse":
        assert float(res.support_fraction.max()) < 0.9


def test_support_test_of_a_short_text_keeps_its_attention(tiny_model):
    # at most rank([T, 1]) tokens: efficient attention is the raw attention,
    # whose support holds every key, so no row has a complement to restrict
    # to, every row keeps its attention and the necessity is 0 (as documented)
    model = tiny_model("bert")
    ids, mask = random_batch(2, 8, lengths=[8, 6], seed=4)  # head dim 8
    res = attention_support_test(model, ids, mask)
    assert res.support_fraction.tolist() == [1.0, 1.0]
    assert res.necessity.tolist() == [0.0, 0.0]
    assert res.sufficiency.abs().max() < 1e-6


@pytest.mark.slow
def test_support_test_real_model(minilm, real_batch):
    model, _ = minilm
    ids, mask = real_batch
    res = attention_support_test(model, ids[:1, :64], mask[:1, :64], objective="sparse")
    assert torch.allclose(res.p_efficient, res.p_full, atol=1e-5)
    assert bool(torch.isfinite(res.necessity).all())
    assert float(res.support_fraction.max()) < 1.0
