r"""Property-based tests (hypothesis) over a few random small models and random
inputs: rows are distributions, output equivalence (certificate and a
model-level swap), uniqueness of the answer (the problem is equivariant under
permutations of rows and keys and invariant under the choice of basis and the
batch it is solved in), padding invariance, and batch permutations."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Tuple

import torch
from effattn_testing import random_batch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

from captum_effattn import EfficientAttention, efficient_attention
from captum_effattn._core.adapters import ModelAdapter
from captum_effattn._core.solver import head_bases, min_norm_simplex_solve

# (family, seed, config overrides): head dims 8 and 16, GQA, a decoder
MODELS: List[Tuple[str, int, Dict[str, Any]]] = [
    ("bert", 0, {}),
    ("bert", 1, {"num_attention_heads": 2}),
    ("distilbert", 2, {}),
    ("gpt2", 3, {}),
    ("llama", 4, {}),
]
DECODERS = ("gpt2", "llama")

# small by default (shared CPU); raise it for a longer search, e.g.
# RELIABILITY_EXAMPLES=100 python -m pytest tests/reliability/test_properties.py
SETTINGS = settings(
    max_examples=int(os.environ.get("RELIABILITY_EXAMPLES", "6")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _absmax(t: Tensor) -> float:
    return float(t.abs().max()) if t.numel() else 0.0


def _model(tiny_model, spec):
    family, seed, overrides = spec
    return tiny_model(family, seed, **overrides)


@st.composite
def _inputs(draw, max_len: int = 20, max_batch: int = 3):
    n = draw(st.integers(1, max_len))
    b = draw(st.integers(1, max_batch))
    lengths = [n] + [draw(st.integers(1, n)) for _ in range(b - 1)]
    lengths = draw(st.permutations(lengths))
    seed = draw(st.integers(0, 2**16))
    return lengths, seed


def _batch(lengths, seed, left=False) -> Tuple[Tensor, Tensor]:
    return random_batch(
        len(lengths), max(lengths), lengths=lengths, seed=seed, left=left
    )


def _forward(model, family):
    def forward(ids, mask):
        kw = {}
        if family in DECODERS:  # positions count real tokens (left padding)
            kw["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0)
        return model(input_ids=ids, attention_mask=mask, **kw).logits

    return forward


def _kwargs(family, mask) -> Dict[str, Tensor]:
    if family in DECODERS:
        return {"position_ids": (mask.cumsum(1) - 1).clamp(min=0)}
    return {}


# --------------------------------------------- distributions, equivalence
@SETTINGS
@given(spec=st.sampled_from(MODELS), data=_inputs(max_len=18))
def test_rows_are_output_equivalent_distributions(tiny_model, spec, data):
    model = _model(tiny_model, spec)
    lengths, seed = data
    ids, mask = _batch(lengths, seed)
    e, cert = efficient_attention(model, ids, mask, return_certificate=True)
    assert cert.ok(rtol=1e-7), str(cert)
    real = mask.bool()
    rows = e.permute(1, 3, 0, 2, 4)[real]  # (real rows, layers, heads, keys)
    assert float(rows.min()) >= 0.0
    torch.testing.assert_close(
        rows.sum(-1), torch.ones_like(rows.sum(-1)), atol=1e-9, rtol=0
    )
    assert _absmax(e.permute(1, 3, 0, 2, 4)[~real]) == 0.0
    assert _absmax(e.permute(1, 4, 0, 2, 3)[~real]) == 0.0
    if spec[0] in DECODERS:
        assert float(torch.triu(e, diagonal=1).abs().max()) == 0.0
    # replacing A by E in every head of every layer changes nothing
    adapter = ModelAdapter(model)
    with torch.no_grad():
        base = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        with adapter.replace_attention(dict(enumerate(e))):
            swap = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    torch.testing.assert_close(base.logits, swap.logits, atol=1e-5, rtol=0)
    h0, h1 = base.hidden_states[-1][real], swap.hidden_states[-1][real]
    torch.testing.assert_close(h0, h1, atol=1e-4, rtol=0)


# ---------------------------------------------------- uniqueness (solver)
@st.composite
def _problem(draw):
    dh = draw(st.integers(2, 6))
    n = draw(st.integers(dh + 2, 28))
    pad = draw(st.integers(0, 3))
    m = draw(st.integers(1, 4))
    temp = draw(st.sampled_from([0.5, 2.0, 6.0]))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n + pad, dh, generator=g, dtype=torch.float64)
    w = torch.randn(dh, 3 * dh, generator=g, dtype=torch.float64)
    mask = torch.ones(n + pad, dtype=torch.bool)
    mask[n:] = False
    logits = torch.randn(m, n + pad, generator=g, dtype=torch.float64) * temp
    a = torch.softmax(logits.masked_fill(~mask, -torch.inf), -1)
    perm_keys = torch.randperm(n + pad, generator=g)
    perm_rows = torch.randperm(m, generator=g)
    return v, w, mask, a, perm_keys, perm_rows, seed


def _solve(c: Tensor, a: Tensor) -> Tensor:
    x, _, info = min_norm_simplex_solve(c[None], (a @ c)[None])
    assert bool(info.converged.all())
    return x[0]


@SETTINGS
@given(problem=_problem())
def test_solution_is_unique(problem):
    # E_i is the unique minimiser of a strictly convex problem: however the
    # solver gets there (row order, key order, basis, batch) the answer is
    # the same, permuted accordingly.
    v, w, mask, a, perm_keys, perm_rows, seed = problem
    g = torch.Generator().manual_seed(seed + 1)
    u, c, cm = head_bases(v, w, mask)
    c = c[:, cm]  # the columns in use: an orthonormal basis of col([T, 1])
    r = c.shape[1]
    q, _ = torch.linalg.qr(torch.randn(r, r, generator=g, dtype=torch.float64))
    x = _solve(c, a)
    t = v @ w
    torch.testing.assert_close(x @ t, a @ t, atol=1e-9, rtol=0)
    assert float(x.min()) >= 0.0 and _absmax(x[:, ~mask]) == 0.0
    # rows in another order
    torch.testing.assert_close(_solve(c, a[perm_rows]), x[perm_rows], atol=1e-9, rtol=0)
    # keys permuted consistently in C and in the attention rows
    xk = _solve(c[perm_keys], a[:, perm_keys])
    torch.testing.assert_close(xk, x[:, perm_keys], atol=1e-9, rtol=0)
    # another orthonormal basis of the same space (another dual path)
    torch.testing.assert_close(_solve(c @ q, a), x, atol=1e-9, rtol=0)
    # one row at a time, and in a batch of groups with an unrelated problem
    for i in range(a.shape[0]):
        torch.testing.assert_close(_solve(c, a[i : i + 1])[0], x[i], atol=1e-9, rtol=0)
    cs = torch.stack([c[perm_keys], c])
    bs = torch.stack([a[:, perm_keys] @ c[perm_keys], a @ c])
    xs, _, _ = min_norm_simplex_solve(cs, bs)
    torch.testing.assert_close(xs[0], x[:, perm_keys], atol=1e-9, rtol=0)
    torch.testing.assert_close(xs[1], x, atol=1e-9, rtol=0)


# ------------------------------------------ padding and batch composition
@SETTINGS
@given(
    spec=st.sampled_from(MODELS),
    data=_inputs(max_len=16),
    left=st.booleans(),
    extra=st.integers(0, 4),
)
def test_padding_invariance(tiny_model, spec, data, left, extra):
    family = spec[0]
    left = left and family in DECODERS  # encoders' positions start at 0
    model = _model(tiny_model, spec)
    lengths, seed = data
    n = max(lengths) + extra  # also padding on every example
    ids, mask = random_batch(len(lengths), n, lengths=lengths, seed=seed, left=left)
    batch = efficient_attention(model, ids, mask, **_kwargs(family, mask))
    explainer = EfficientAttention(_forward(model, family), model=model)
    scores = explainer.attribute(ids, additional_forward_args=(mask,), query="all")
    for i, k in enumerate(lengths):
        sl = slice(n - k, n) if left else slice(0, k)
        one_ids, one_mask = ids[i : i + 1, sl], mask[i : i + 1, sl]
        one = efficient_attention(model, one_ids, one_mask)
        torch.testing.assert_close(batch[:, i, :, sl, sl], one[:, 0], atol=1e-6, rtol=0)
        outside = torch.ones(n, dtype=torch.bool)
        outside[sl] = False
        assert _absmax(batch[:, i, :, outside]) == 0.0
        assert _absmax(batch[:, i, :, :, outside]) == 0.0
        one_scores = explainer.attribute(
            one_ids, additional_forward_args=(one_mask,), query="all"
        )
        torch.testing.assert_close(scores[i, sl], one_scores[0], atol=1e-6, rtol=0)
        assert _absmax(scores[i, outside]) == 0.0


@SETTINGS
@given(
    spec=st.sampled_from(MODELS),
    data=_inputs(max_len=16, max_batch=4),
    order=st.randoms(use_true_random=False),
)
def test_batch_and_row_permutations(tiny_model, spec, data, order):
    family = spec[0]
    model = _model(tiny_model, spec)
    lengths, seed = data
    ids, mask = _batch(lengths, seed)
    b, n = ids.shape
    perm = list(range(b))
    order.shuffle(perm)
    e = efficient_attention(model, ids, mask, layers=-1)
    ep = efficient_attention(model, ids[perm], mask[perm], layers=-1)
    # (the model's float32 forward pass may round differently per batch order)
    torch.testing.assert_close(ep, e[:, perm], atol=1e-6, rtol=0)
    # the same rows asked in another order and another batch composition
    rows = list(range(n))
    order.shuffle(rows)
    rows = rows[: max(1, n // 2)]
    er = efficient_attention(model, ids, mask, layers=-1, rows=rows)
    torch.testing.assert_close(er, e[:, :, :, rows], atol=1e-9, rtol=0)
    explainer = EfficientAttention(_forward(model, family), model=model)
    for kw in (dict(), dict(weighting="gradient", target=1)):
        s = explainer.attribute(ids, additional_forward_args=(mask,), **kw)
        sp = explainer.attribute(ids[perm], additional_forward_args=(mask[perm],), **kw)
        torch.testing.assert_close(sp, s[perm], atol=1e-6, rtol=0)
