r"""More guards from a second mutation audit.

The audit changed the sparse objective (``_core/sparse.py`` and its wiring in
``_core/functional.py``), the certificate, input validation and the support
test one small, realistic mistake at a time, as in ``test_mutation_guards.py``.
Each test here kills at least one mutant that the suite let through; the
mutant is named in the test's comment. They check documented properties
against computations of their own: residuals from ``T = V W_O`` directly,
tolerances from the documented formula, the walk's objective from the
module docstring of ``_core/sparse.py``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from effattn_testing import random_batch

import captum_effattn._core.functional as F
from captum_effattn import attention_weights, efficient_attention
from captum_effattn._core.functional import _certificate, solve_layer
from captum_effattn._core.solver import head_bases, min_norm_simplex_solve
from captum_effattn._core.sparse import caratheodory_reduce

EPS64 = torch.finfo(torch.float64).eps


def _jitter(n: int, a: torch.Tensor) -> torch.Tensor:
    # the walk's tie-breaker, as the module docstring of _core/sparse.py
    # defines it: 1e-3 · cos(1.618 · position) · max(a), positions counting
    # the row's real keys (all keys here: no padding)
    pos = torch.arange(n, dtype=torch.float64)
    return 1e-3 * torch.cos(1.618 * pos) * a.amax(-1, keepdim=True)


def _small_head(seed: int, n: int = 10, dh: int = 3):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, dh, generator=g, dtype=torch.float64)
    w = torch.randn(dh, 6, generator=g, dtype=torch.float64)
    _, c, cm = head_bases(v, w, torch.ones(n, dtype=torch.bool))
    return g, v @ w, c, cm


# ------------------------------------------------------ the sparse walk
@pytest.mark.parametrize("seed", range(3))
def test_walk_follows_the_tie_breaker_where_attention_is_in_the_span(seed):
    # Mutant: the walk's direction projected from a - jitter instead of
    # a + jitter. For a row in col([T, 1]) the projection of a onto the null
    # space vanishes, the tie-breaker alone moves the row, and the walk must
    # increase <a + jitter, x> (here: <jitter, x>, as <a, x> stays fixed).
    _, t, c, _ = _small_head(seed)
    n = t.shape[0]
    a = 1.0 + 0.2 * t[:, 0] / t[:, 0].abs().max()  # ones + a column of T
    a = (a / a.sum())[None]
    assert float(a.min()) > 0  # a distribution: the min-norm point is a itself
    xs, size = caratheodory_reduce(a, c[None], a)
    assert int(size) < n  # the walk moved
    torch.testing.assert_close(xs @ t, a @ t, atol=1e-12, rtol=0)
    assert abs(float(xs.sum()) - 1.0) < 1e-12 and float(xs.min()) >= 0.0
    gain = float(xs[0] @ _jitter(n, a)[0] - a[0] @ _jitter(n, a)[0])
    assert gain > 1e-5


@pytest.mark.parametrize("seed", [16, 36])
def test_walk_stopped_early_keeps_the_row_output_equivalent(seed):
    # Mutant: the final solve on the support accepted with entries down to
    # -1e-3 (instead of -1e-12) and then clipped at 0. A walk stopped before
    # a vertex (max_steps) has a support on which the equality system has
    # many solutions; its minimum-norm one can be slightly negative, and
    # clipping it changed the head output by 3e-4. The docstring promises
    # the input's Cᵀx and non-negative entries for any max_steps.
    g, t, c, cm = _small_head(seed, n=12)
    rows = 4
    a = torch.softmax(torch.randn(rows, 12, generator=g, dtype=torch.float64) * 2, -1)
    x, _, _ = min_norm_simplex_solve(c[None], (a @ c)[None], cm[None])
    for steps in (1, 2, 3):
        xs, _ = caratheodory_reduce(x[0], c.expand(rows, -1, -1), a, max_steps=steps)
        assert float(xs.min()) >= 0.0
        torch.testing.assert_close(xs @ t, a @ t, atol=1e-12, rtol=0)
        torch.testing.assert_close(xs.sum(-1), a.sum(-1), atol=1e-12, rtol=0)


def test_sparse_rows_agree_more_with_the_raw_attention(tiny_model):
    # Mutant: the walk started from the minimum-norm rows with the
    # minimum-norm rows as the attention to agree with
    # (caratheodory_reduce(out, c, out) in _finish): a vertex still, exact
    # and sparse, but one that moves away from the raw attention (in 190 of
    # 408 rows here). The documented walk increases <a + jitter, x> from
    # the minimum-norm point, a the raw attention row.
    model = tiny_model("bert")
    ids, mask = random_batch(1, 30, seed=3)
    a = attention_weights(model, ids, mask)
    a = a / a.sum(-1, keepdim=True)
    dense = efficient_attention(model, ids, mask)
    sparse = efficient_attention(model, ids, mask, objective="sparse")
    goal = a + _jitter(30, a)
    gain = (goal * sparse).sum(-1) - (goal * dense).sum(-1)
    assert float(gain.min()) >= -1e-12
    assert float(gain.max()) > 1e-2  # the walk did move


def test_sparse_certificate_measures_the_vertex(monkeypatch):
    # Mutant: the KKT residual of the sparse objective left at the
    # minimum-norm solver's, without the vertex's own primal residual
    # ‖Cᵀx − Cᵀa‖∞: a walk that lost equivalence still read converged. A
    # walk that lands 1e-6 off is simulated; its primal residual, in any
    # orthonormal basis C of col([T, 1]) (r columns), is at least
    # ‖P(x − a)‖ / sqrt(r) >= |Σ(x − a)| / sqrt(n r).
    probs, values, w_out, key_mask, rows = _layer_problem()
    reduce = F.caratheodory_reduce

    def off(x, c, a, **kw):
        out, size = reduce(x, c, a, **kw)
        return (
            out.index_add(-1, torch.tensor([0]), torch.full_like(out[..., :1], 1e-6)),
            size,
        )

    monkeypatch.setattr(F, "caratheodory_reduce", off)
    _, cert = solve_layer(
        "efficient", probs, values, w_out, key_mask, rows, objective="sparse"
    )
    n, r = probs.shape[-1], values.shape[-1] + 1
    assert float(cert.kkt_residual.min()) >= 1e-6 / (n * r) ** 0.5
    assert not bool(cert.converged.any())


def _layer_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    b, h, n, dh = 2, 3, 24, 4
    key_mask = torch.ones(b, n, dtype=torch.bool)
    key_mask[1, n - 6 :] = False
    logits = torch.randn(b, h, n, n, generator=g, dtype=torch.float64) * 3
    probs = torch.softmax(logits.masked_fill(~key_mask[:, None, None], -torch.inf), -1)
    values = torch.randn(b, h, n, dh, generator=g, dtype=torch.float64)
    w_out = torch.randn(h, dh, 10, generator=g, dtype=torch.float64)
    return probs, values, w_out, key_mask, torch.arange(n).expand(b, n)


# ---------------------------------------------------------- certificate
def test_cancelling_row_is_scaled_by_its_real_keys_only():
    # Mutant: the fallback scale of a row whose output cancels,
    # sqrt(eps) max_j ‖t_j‖, taken over padded keys too: a padded key with a
    # large value vector (whatever the model computed there) inflated it and
    # shrank the residual of a wrong answer by its size.
    v = torch.tensor([[0.0], [1.0], [-1.0], [2.0], [-3.0], [1e3]], dtype=torch.float64)
    w = torch.ones(1, 1, 1, dtype=torch.float64)
    keys = torch.tensor([[True] * 5 + [False]])
    a = torch.tensor([0.0, 0.5, 0.5, 0.0, 0.0, 0.0], dtype=torch.float64)
    probs = a.expand(6, 6)[None, None].clone()
    bad = probs.clone()
    bad[0, 0, :5] = torch.tensor([0.0, 0.6, 0.4, 0.0, 0.0, 0.0], dtype=torch.float64)
    fkeys = keys[:, None, None].to(torch.float64)
    zero = torch.zeros(1, 1, dtype=torch.float64)
    rows_real = keys.clone()
    cert = _certificate(
        bad, probs, v[None, None], w, fkeys, rows_real, zero, zero.long(),
        zero.long(), 1e-12,
    )  # fmt: skip
    # ‖(x − a) T‖ / max(‖a T‖, sqrt(eps) max over the real keys of |t_j|)
    t = v[:5, 0]
    want = abs(float((bad[0, 0, 0, :5] - a[:5]) @ t)) / (EPS64**0.5 * 3.0)
    assert float((a[:5] @ t).abs()) == 0.0
    torch.testing.assert_close(float(cert.output_residual), want, rtol=1e-9, atol=0.0)
    assert not cert.ok()


# ------------------------------------------- raw attention's sum bounds
@pytest.mark.parametrize(
    "family, model_dtype, rows",
    [
        ("bert", torch.float32, None),
        ("bert", torch.float16, None),
        ("gpt2", torch.float32, [3, 5]),
    ],
)
def test_raw_row_sum_bound_is_the_documented_formula(
    tiny_model, family, model_dtype, rows
):
    # Mutants: the bound computed with eps of the model's dtype for the
    # accumulation (float16 accumulates in float32: eps(float16) made it 8000
    # times looser, 2.0 at 1,000 keys); the number of keys counted over the
    # padded width instead of the example's real keys (in a decoder: the
    # keys of the widest solved row). Documented: 2 · n · eps(acc) +
    # eps(dtype), acc the wider of dtype and float32.
    model = copy.deepcopy(tiny_model(family)).to(model_dtype)
    ids, mask = random_batch(2, 40, lengths=[40, 17], seed=2)
    _, cert = attention_weights(model, ids, mask, rows=rows, return_certificate=True)
    real = mask.sum(1).double()
    keys = real if rows is None else torch.full_like(real, max(rows) + 1.0)
    eps32 = torch.finfo(torch.float32).eps
    want = 2.0 * keys * eps32 + torch.finfo(model_dtype).eps
    torch.testing.assert_close(
        cert.row_sum_tol, want[None, :, None].expand_as(cert.row_sum_tol)
    )
    assert cert.ok(), str(cert)


# ------------------------------------------------------- causal chunks
def test_causal_rows_that_differ_per_example_across_key_steps():
    # Mutant: the keys of a chunk of causal rows sized from the smallest
    # row position over the batch (rows.amin(0)) instead of the largest: a
    # column holding row 5 of one example and row 60 of the other got 32
    # keys, too few for row 60. Per-example rows must give the rows of the
    # full solve.
    from captum_effattn._core.functional import solve_layers

    g = torch.Generator().manual_seed(0)
    b, h, n, dh = 2, 2, 70, 4
    key_mask = torch.ones(b, n, dtype=torch.bool)
    key_mask[1, 66:] = False
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    keys = key_mask[:, None, None, :] & causal
    logits = torch.randn(b, h, n, n, generator=g, dtype=torch.float64) * 3
    probs = torch.softmax(logits.masked_fill(~keys, -torch.inf), -1)
    values = torch.randn(b, h, n, dh, generator=g, dtype=torch.float64)
    w_out = torch.randn(h, dh, 8, generator=g, dtype=torch.float64)
    rows = torch.tensor([[5, 60, 33], [60, 5, 64]])
    for kind in ("efficient", "effective"):
        everything = torch.arange(n).expand(b, n)
        ((full, _),) = solve_layers(
            kind, [(probs, values, w_out, key_mask, everything)], causal=True
        )
        ((got, _),) = solve_layers(
            kind, [(probs, values, w_out, key_mask, rows)], causal=True
        )
        want = full.gather(2, rows[:, None, :, None].expand(b, h, 3, n))
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


# ---------------------------------------------------- input validation
def test_row_positions_at_the_bounds(tiny_model):
    # Mutants: row n accepted (and read as row n % n = 0); row -n refused.
    # resolve_rows documents [-n, n): -n is the first row, n is out of range.
    model = tiny_model("bert")
    ids, mask = random_batch(1, 12, seed=1)
    with pytest.raises(ValueError, match="row positions must lie"):
        attention_weights(model, ids, mask, rows=[12])
    first = attention_weights(model, ids, mask, rows=[-12])
    torch.testing.assert_close(
        first, attention_weights(model, ids, mask)[:, :, :, :1], atol=0, rtol=0
    )


def test_the_last_id_of_the_vocabulary_is_the_bound(tiny_model):
    # Mutant: an id equal to the vocabulary size accepted (> instead of >=),
    # which the embedding then refused with an IndexError.
    model = tiny_model("bert")
    vocab = model.get_input_embeddings().weight.shape[0]
    ids, mask = random_batch(1, 6, seed=1)
    ids[0, 3] = vocab - 1
    attention_weights(model, ids, mask)
    ids[0, 3] = vocab
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        attention_weights(model, ids, mask)


def test_equal_runs_of_the_padding_id_are_not_padding(tiny_model):
    # Mutant: the warning about a batch that looks padded raised when every
    # row ends with the same run of the padding id (runs of equal lengths:
    # no padding, as documented), not only when the runs differ.
    import warnings

    model = tiny_model("gpt2")  # pad_token_id 0
    pad = model.config.pad_token_id
    ids, _ = random_batch(2, 10, seed=1)
    ids[:, -2:] = pad
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attention_weights(model, ids)
    ids[1, -3] = pad  # unequal runs: looks padded
    with pytest.warns(UserWarning, match="looks padded"):
        attention_weights(model, ids)


# ------------------------------------------------ attention_support_test
def test_support_cutoff_follows_the_tolerance_passed(tiny_model):
    # Mutant: the support cutoff computed from the dtype's default tolerance
    # whatever tol= the test was given. Documented: an entry is in the
    # support above 100 times the solver tolerance (at most 1e-4) in heads
    # whose rows the solver iterated on.
    from captum_effattn import attention_support_test

    model = tiny_model("bert")
    ids, mask = random_batch(2, 30, lengths=[30, 21], seed=4)
    tol = 1e-5
    res = attention_support_test(model, ids, mask, tol=tol)
    e, cert = efficient_attention(model, ids, mask, tol=tol, return_certificate=True)
    cutoff = min(100 * tol, 1e-4)
    assert bool(((e > 1e-10) & (e <= cutoff)).any())  # entries the cutoff drops
    iterated = (cert.iterations > 0)[..., None, None]
    support = torch.where(iterated, e > cutoff, e > 0)
    real = mask.bool()
    keys = real[None, :, None, None, :]
    frac = (support & keys).sum(-1) / real.sum(1)[None, :, None, None]
    count = real.sum(1) * e.shape[0] * e.shape[2]
    frac = (frac * real[None, :, None, :]).sum((0, 2, 3)) / count
    torch.testing.assert_close(res.support_fraction, frac.double())


def test_support_size_counts_the_non_zeros_of_effective_attention(tiny_model):
    # Mutant (and the code until 2026-11-28): support_size counted the
    # positive entries, while the docs call it the non-zeros; effective
    # attention has negative entries, which it left out.
    from captum_effattn import effective_attention

    model = tiny_model("bert")
    ids, mask = random_batch(1, 30, seed=3)
    eff, cert = effective_attention(model, ids, mask, rows=0, return_certificate=True)
    assert bool((eff < 0).any())  # not vacuous
    want = (eff != 0).sum(-1).amax(-1)  # (L, B, H)
    assert torch.equal(cert.support_size.reshape(want.shape), want)
