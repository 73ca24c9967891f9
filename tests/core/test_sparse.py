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


def test_sparse_vertex_does_not_move_with_left_padding(tiny_model):
    # the walk's tie-breaker counted positions over the padded width, so
    # left padding shifted it and ended some rows at another vertex (0.25
    # apart in an audit's case); it now counts the row's real keys
    model = tiny_model("bert")
    g = torch.Generator().manual_seed(1)
    n, pad = 40, 9
    differ = 0
    for _ in range(3):
        ids1 = torch.randint(3, 120, (1, n), generator=g)
        mask1 = torch.ones_like(ids1)
        zeros = torch.zeros(1, pad, dtype=torch.long)
        ids = torch.cat([torch.randint(3, 120, (1, n + pad), generator=g),
                         torch.cat([zeros, ids1], 1)])  # fmt: skip
        mask = torch.cat([torch.ones(1, n + pad, dtype=torch.long),
                          torch.cat([zeros, mask1], 1)])  # fmt: skip
        # positions that count real tokens: the same attention as alone
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        got = efficient_attention(
            model, ids, mask, objective="sparse", position_ids=pos
        )[:, 1, :, pad:, pad:]
        alone = efficient_attention(model, ids1, mask1, objective="sparse")[:, 0]
        differ += int(((got > 0) != (alone > 0)).any(-1).sum())
        torch.testing.assert_close(got, alone, rtol=0, atol=1e-5)
    assert differ == 0


def test_support_test_is_the_same_alone_and_in_a_batch(minilm, real_batch):
    # Entries of efficient attention within solver noise of 0 (1e-13, which
    # a solve beside other rows moves) counted as support and decided which
    # rows had a complement: necessity of one real document differed alone
    # and in a right-padded batch (0.0037 against 0.0031) with bit-identical
    # raw attention
    model, tok = minilm
    ids, mask = real_batch[0][:, :60].clone(), real_batch[1][:, :60].clone()
    ids[:, 59] = tok.sep_token_id
    mask[1, 45:] = 0
    ids[1, 45:] = tok.pad_token_id
    ids[1, 44] = tok.sep_token_id
    for objective in ("min_norm", "sparse"):
        both = attention_support_test(model, ids, mask, objective=objective)
        alone = attention_support_test(
            model, ids[1:, :45], mask[1:, :45], objective=objective
        )
        for name in ("necessity", "sufficiency", "support_fraction"):
            torch.testing.assert_close(
                getattr(both, name)[1:], getattr(alone, name), rtol=0, atol=1e-6
            )
    with pytest.raises(ValueError, match="always returns its certificate"):
        attention_support_test(model, ids, mask, return_certificate=True)


def test_final_solve_of_the_walk_holds_no_n_by_n_matrix_per_row():
    # the exact solve on the final support formed C_S C_Sᵀ, an n x n matrix
    # per row: memory grew with n³ per head (about 13 GB per copy for all
    # rows of one layer of a 512-token MiniLM input); the r x r system gives
    # the same vertex
    from torch.overrides import TorchFunctionMode

    class Largest(TorchFunctionMode):
        most = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, tuple) else (out,):
                if isinstance(t, torch.Tensor):
                    Largest.most = max(Largest.most, t.numel())
            return out

    g = torch.Generator().manual_seed(0)
    rows, n, r = 6, 96, 7
    c = torch.linalg.qr(torch.randn(rows, n, r, generator=g, dtype=torch.float64))[0]
    a = torch.softmax(3 * torch.randn(rows, n, generator=g, dtype=torch.float64), -1)
    x, _, _ = min_norm_simplex_solve(c, (a.unsqueeze(-2) @ c))
    x = x.squeeze(-2)  # (rows, 1, n): one row per basis
    with Largest():
        v, support = caratheodory_reduce(x, c, a)
    assert Largest.most < rows * n * n // 4  # nothing of (rows, n, n)
    assert bool((support <= r).all()) and bool((v >= 0).all())
    torch.testing.assert_close(
        v.unsqueeze(-2) @ c, a.unsqueeze(-2) @ c, atol=1e-12, rtol=0
    )
