r"""The solver against independent references: scipy's SLSQP on small cases,
numpy's SVD for the bases, and the KKT conditions checked from scratch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import orth
from scipy.optimize import minimize

from captum_effattn._core.solver import head_bases, min_norm_simplex_solve


def _problem(n=24, dh=4, d=12, rows=5, seed=0, temp=3.0, pad=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, dh, generator=g, dtype=torch.float64)
    w = torch.randn(dh, d, generator=g, dtype=torch.float64)
    mask = torch.ones(n, dtype=torch.bool)
    if pad:
        mask[n - pad :] = False
    logits = torch.randn(rows, n, generator=g, dtype=torch.float64) * temp
    a = torch.softmax(logits.masked_fill(~mask, -torch.inf), -1)
    return v, w, mask, a


def _scipy_min_norm(t: np.ndarray, a: np.ndarray) -> np.ndarray:
    q = orth(np.concatenate([t, np.ones((t.shape[0], 1))], 1))
    cons = [{"type": "eq", "fun": lambda z: q.T @ (z - a), "jac": lambda z: q.T}]
    res = minimize(
        lambda z: 0.5 * z @ z, a, jac=lambda z: z, constraints=cons,
        bounds=[(0, None)] * len(a), method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 2000},
    )  # fmt: skip
    assert res.success, res.message
    return res.x


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("temp", [1.0, 6.0])
def test_matches_scipy_reference(seed, temp):
    v, w, mask, a = _problem(seed=seed, temp=temp, pad=3)
    u, c, cm = head_bases(v, w, mask)
    x, _, info = min_norm_simplex_solve(c[None], (a @ c)[None], cm[None])
    n = int(mask.sum())
    t = (v @ w).numpy()[:n]
    assert bool(info.converged.all())
    for i in range(a.shape[0]):
        ref = _scipy_min_norm(t, a[i, :n].numpy())
        np.testing.assert_allclose(x[0, i, :n].numpy(), ref, atol=1e-7)
        assert float(x[0, i, n:].abs().max()) == 0.0  # padding stays exactly 0


def test_kkt_conditions_from_scratch():
    v, w, mask, a = _problem(n=40, dh=5, rows=8, seed=3, temp=5.0)
    u, c, cm = head_bases(v, w, mask)
    x, lam, info = min_norm_simplex_solve(c[None], (a @ c)[None], cm[None])
    x, lam = x[0], lam[0]
    y = lam @ c.T
    support = x > 0
    # primal feasibility: same head output, a distribution
    t = v @ w
    assert torch.allclose(x @ t, a @ t, atol=1e-10)
    assert torch.allclose(x.sum(-1), torch.ones(8, dtype=x.dtype), atol=1e-12)
    assert float(x.min()) >= 0.0
    # stationarity on the support, dual feasibility off it: x = max(0, C λ)
    assert float((x - y)[support].abs().max()) < 1e-9
    assert float(y[~support].max()) < 1e-9
    # not trivially the raw attention: the solution moved
    assert float((x - a).abs().max()) > 1e-3


def test_bases_match_numpy_svd():
    v, w, mask, _ = _problem(n=30, dh=6, d=10, seed=1, pad=4)
    u, c, cm = head_bases(v, w, mask)
    n = int(mask.sum())
    t = (v @ w).numpy()[:n]
    ut, s, _ = np.linalg.svd(t, full_matrices=False)
    k = int((s > s[0] * 1e-12).sum())
    p_ref = ut[:, :k] @ ut[:, :k].T
    p = (u @ u.T).numpy()
    np.testing.assert_allclose(p[:n, :n], p_ref, atol=1e-10)
    assert np.abs(p[n:]).max() == 0.0
    # C spans col([T, 1]) and is orthonormal
    q = orth(np.concatenate([t, np.ones((n, 1))], 1))
    pc = (c @ c.T).numpy()[:n, :n]
    np.testing.assert_allclose(pc, q @ q.T, atol=1e-10)
    cc = c[:, cm]
    np.testing.assert_allclose((cc.T @ cc).numpy(), np.eye(int(cm.sum())), atol=1e-12)


def test_bases_of_a_batch_mixing_full_and_deficient_ranks():
    # full-rank heads take Q of the QR as their basis, the others the SVD's
    # leading singular vectors: in one batch each head spans its own col(T)
    heads = [_problem(n=18, dh=5, d=12, seed=s, pad=s) for s in range(4)]
    v = torch.stack([h[0] for h in heads])
    w = torch.stack([h[1] for h in heads]).clone()
    mask = torch.stack([h[2] for h in heads])
    w[1, 3:] = 0.0  # rank 3 < d_h
    # rank 4, with the first column of M = V Rᵀ (W_Oᵀ = Q R) zero, so that
    # the first column of the QR's Q lies outside col(T)
    r_out = torch.linalg.qr(w[2].T, mode="r")[1]
    m = v[2].clone()
    m[:, 0] = 0.0
    v[2] = torch.linalg.solve(r_out, m.T).T
    mask[3, 4:] = False  # 4 keys < d_h
    u, c, cm = head_bases(v, w, mask)
    assert cm[:, :-1].sum(-1).tolist() == [5, 3, 4, 4]
    # one key mask for every head (it broadcasts), rank-deficient heads too
    _, _, every = head_bases(v, w, torch.ones(18, dtype=torch.bool))
    assert every[:, :-1].sum(-1).tolist() == [5, 3, 4, 5]
    for g in range(4):
        n = int(mask[g].sum())
        t = (v[g] @ w[g]).numpy()[mask[g].numpy()]
        ut, sv, _ = np.linalg.svd(t, full_matrices=False)
        k = int((sv > sv[0] * 1e-12).sum())
        p = (u[g] @ u[g].T).numpy()[mask[g].numpy()][:, mask[g].numpy()]
        np.testing.assert_allclose(p, ut[:, :k] @ ut[:, :k].T, atol=1e-10)
        cc = c[g][:, cm[g]]
        eye = np.eye(int(cm[g].sum()))
        np.testing.assert_allclose((cc.T @ cc).numpy(), eye, atol=1e-12)
        assert n == int(c[g].abs().amax(-1).gt(0).sum())


def test_rank_tolerance_counts_real_keys_not_padding():
    # the default tolerance max(k, d_h) eps is that of the real k x d_h
    # matrix, so padding the keys (or, for a decoder, solving a row with
    # longer ones) does not drop a direction: a singular value of 60 eps
    # is kept for 40 keys (tolerance 40 eps) padded to 40 or to 128 keys,
    # where the padded length (128 eps) once dropped it
    g = torch.Generator().manual_seed(3)
    k, dh = 40, 4
    q1, _ = torch.linalg.qr(torch.randn(k, dh, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(dh, dh, generator=g, dtype=torch.float64))
    eps = torch.finfo(torch.float64).eps
    s = torch.tensor([1.0, 0.5, 0.25, 60 * eps], dtype=torch.float64)
    v = q1 @ torch.diag(s) @ q2.T
    w = torch.eye(dh, dtype=torch.float64)
    ranks = []
    for n in (k, 128):
        vp = torch.cat([v, torch.randn(n - k, dh, generator=g, dtype=torch.float64)])
        mask = torch.arange(n) < k
        _, _, cm = head_bases(vp, w, mask)
        ranks.append(int(cm[:-1].sum()))
    assert ranks == [4, 4]
    _, _, cm = head_bases(v, w, torch.ones(k, dtype=torch.bool), rtol=100 * eps)
    assert int(cm[:-1].sum()) == 3  # an explicit rtol still decides


def test_rank_deficient_output_projection():
    # W_O of rank 2 < d_h: col(T) is smaller than col(V); no full-rank assumption.
    v, w, mask, a = _problem(n=20, dh=5, d=12, seed=2)
    w = w.clone()
    w[2:] = 0.0
    u, c, cm = head_bases(v, w, mask)
    assert int(cm[:-1].sum()) == 2
    x, _, info = min_norm_simplex_solve(c[None], (a @ c)[None], cm[None])
    t = v @ w
    assert bool(info.converged.all())
    assert torch.allclose(x[0] @ t, a @ t, atol=1e-10)


def test_zero_head_gives_uniform():
    v, w, mask, a = _problem(n=10, dh=3, d=6, seed=4, pad=2)
    u, c, cm = head_bases(v, torch.zeros_like(w), mask)
    x, _, _ = min_norm_simplex_solve(c[None], (a @ c)[None], cm[None])
    expected = mask.double() / mask.sum()
    assert torch.allclose(x[0], expected.expand_as(x[0]), atol=1e-12)


def test_nonnegative_projection_needs_no_iteration():
    # a = uniform is itself the min-norm distribution: answered in closed form
    v, w, mask, _ = _problem(n=16, dh=3, d=6, seed=5)
    a = torch.full((2, 16), 1 / 16, dtype=torch.float64)
    u, c, cm = head_bases(v, w, mask)
    x, _, info = min_norm_simplex_solve(c[None], (a @ c)[None], cm[None])
    assert int(info.iterations.max()) == 0
    assert torch.allclose(x[0], a, atol=1e-14)


def test_full_rank_basis_answers_tiny_weights_in_closed_form():
    # rank([T, 1]) = n: the feasible set is {a}, and C Cᵀ = I. Real attention
    # has weights of 1e-30 and below, which C Cᵀ a rounds to tiny negatives;
    # they used to send the row through 10-20 interior-point iterations and
    # came back 4e-13 away from a (MiniLM, n <= 33: up to 1.9e-12).
    g = torch.Generator().manual_seed(0)
    v = torch.randn(10, 12, generator=g, dtype=torch.float64)
    w = torch.randn(12, 24, generator=g, dtype=torch.float64)
    a = torch.softmax(torch.randn(6, 10, generator=g, dtype=torch.float64) * 30, -1)
    assert float(a.min()) < 1e-30
    u, c, cm = head_bases(v, w, torch.ones(10, dtype=torch.bool))
    assert int(cm.sum()) == 10
    x, _, info = min_norm_simplex_solve(c[None], (a @ c)[None], cm[None])
    assert int(info.iterations.max()) == 0 and bool(info.converged.all())
    assert float(x.min()) >= 0.0
    torch.testing.assert_close(x[0], a, atol=1e-15, rtol=0)


def test_bad_shapes():
    with pytest.raises(ValueError, match="expected c"):
        min_norm_simplex_solve(torch.zeros(2, 3), torch.zeros(2, 3))


# ---------------------------------------- guards from the mutation audit
# Each test below kills a mutant of head_bases that the tests above let
# through (see tests/core/test_mutation_guards.py).
def _orthonormal(rows: int, cols: int, g: torch.Generator) -> torch.Tensor:
    big, small = max(rows, cols), min(rows, cols)
    q, _ = torch.linalg.qr(torch.randn(big, small, generator=g, dtype=torch.float64))
    return q if rows >= cols else q.T


@pytest.mark.parametrize("factor, full", [(20.0, True), (0.05, False)])
def test_default_rank_tolerance_is_numpys(factor, full):
    # Mutant: the default rtol 100 times larger. The documented default,
    # max(n, d_h) eps, is numpy.linalg.matrix_rank's: a singular value 20
    # times above it counts, one 20 times below does not.
    n, dh, d = 30, 5, 12
    g = torch.Generator().manual_seed(0)
    eps = torch.finfo(torch.float64).eps
    s = torch.tensor([1.0, 0.7, 0.5, 0.3, factor * max(n, dh) * eps]).double()
    v = _orthonormal(n, dh, g) @ torch.diag(s) @ _orthonormal(dh, dh, g)
    w = _orthonormal(dh, d, g)  # orthonormal rows: T = V W has singular values s
    t = (v @ w).numpy()
    rank = np.linalg.matrix_rank(t)
    assert rank == (dh if full else dh - 1)
    _, _, cm = head_bases(v, w, torch.ones(n, dtype=torch.bool))
    assert int(cm[:-1].sum()) == rank
    with_ones = np.concatenate([t, np.ones((n, 1))], 1)
    assert int(cm.sum()) == np.linalg.matrix_rank(with_ones)


def test_bases_orthonormal_when_the_values_are_dominated_by_a_bias():
    # Mutant: no second Gram-Schmidt pass for the ones column. A value
    # dimension that is nearly constant (a large bias b_V) puts the ones
    # vector nearly in col(T); one pass then leaves C off orthonormal by 3e-10.
    g = torch.Generator().manual_seed(1)
    n, dh, d = 40, 4, 12
    v = torch.randn(n, dh, generator=g, dtype=torch.float64)
    v[:, 0] = 50.0 + 1e-5 * v[:, 0]
    w = torch.randn(dh, d, generator=g, dtype=torch.float64)
    _, c, cm = head_bases(v, w, torch.ones(n, dtype=torch.bool))
    assert bool(cm.all())  # 1 is not exactly in col(T)
    eye = np.eye(int(cm.sum()))
    np.testing.assert_allclose((c.T @ c).numpy(), eye, atol=1e-12)
    q = orth(np.concatenate([(v @ w).numpy(), np.ones((n, 1))], 1))
    np.testing.assert_allclose((c @ c.T).numpy(), q @ q.T, atol=1e-9)


def test_masked_rows_of_the_bases_are_exactly_zero_anywhere():
    # Mutant: U's masked rows not zeroed after the QR. Masked rows at the end
    # (as in the tests above) come out of Householder QR exactly 0; masked
    # rows among the first d_h (left padding) do not, by rounding.
    g = torch.Generator().manual_seed(2)
    n, dh, d = 24, 6, 12
    v = torch.randn(n, dh, generator=g, dtype=torch.float64)
    w = torch.randn(dh, d, generator=g, dtype=torch.float64)
    mask = torch.ones(n, dtype=torch.bool)
    mask[:5] = False
    mask[11] = False
    u, c, _ = head_bases(v, w, mask)
    assert float(u[~mask].abs().max()) == 0.0
    assert float(c[~mask].abs().max()) == 0.0


@pytest.mark.slow
def test_real_minilm_rows_match_scipy(minilm, real_batch):
    # Real attention rows of a 100+ token document against SLSQP, with
    # T = V_h W_O,h built from the model's own value outputs and weights (not
    # through the package's adapter). Measured on the fine-tuned MiniLM
    # (45 rows, 128 and 256 tokens): max |x - x_scipy| 3.2e-15, and the
    # package's norm at most 4.4e-16 above scipy's.
    from captum_effattn import efficient_attention

    model, _ = minilm
    ids, mask = real_batch
    n = int(mask[0].sum())
    ids, mask = ids[:1, :n], mask[:1, :n]
    layers = [0, 3, 5]
    values = {}
    hooks = [
        model.bert.encoder.layer[i].attention.self.value.register_forward_hook(
            lambda _m, _a, out, i=i: values.__setitem__(i, out.detach())
        )
        for i in layers
    ]
    try:
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    e = efficient_attention(model, ids, mask, layers=layers)
    cases = [(0, 3, 0), (0, 10, n // 2), (3, 1, 3), (3, 7, n - 1), (5, 2, 0)]
    for layer, head, row in cases + [(5, 9, 40)]:
        li = layers.index(layer)
        dh = values[layer].shape[-1] // out.attentions[layer].shape[1]
        cols = slice(head * dh, (head + 1) * dh)
        w_o = model.bert.encoder.layer[layer].attention.output.dense.weight
        t = values[layer][0, :, cols].double() @ w_o[:, cols].detach().double().T
        a = out.attentions[layer][0, head, row].double()
        a = (a / a.sum()).numpy()
        q = orth(np.concatenate([t.numpy(), np.ones((n, 1))], 1))
        ref = minimize(
            lambda z: 0.5 * z @ z, a, jac=lambda z: z, method="SLSQP",
            constraints=[{"type": "eq", "fun": lambda z: q.T @ (z - a),
                          "jac": lambda z: q.T}],
            bounds=[(0, None)] * n, options={"ftol": 1e-16, "maxiter": 500},
        ).x  # fmt: skip
        assert np.abs(q.T @ (ref - a)).max() < 1e-9 and ref.min() > -1e-12
        x = e[li, 0, head, row].numpy()
        np.testing.assert_allclose(x, ref, atol=1e-8, err_msg=str((layer, head, row)))
        assert np.linalg.norm(x) <= np.linalg.norm(ref) + 1e-12
    # not vacuous: n > rank([T, 1]), so efficient differs from raw attention
    assert float((e[0, 0] - out.attentions[0][0].double()).abs().max()) > 0.01
