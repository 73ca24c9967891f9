r"""The fast paths of the solver give the same answers as the plain ones:
row compaction and blocks of mixed sizes, chunking, float32 iterations with a
float64 polish (and the hand-over to float64), the active-set corrections of
the polish on degenerate rows (supports smaller than r), and unconverged or
broken rows are flagged, never hidden."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from captum_effattn._core import solver
from captum_effattn._core.solver import head_bases, min_norm_simplex_solve


def _bases(groups: int, n: int, dh: int, seed: int, pad: int = 0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(groups, n, dh, generator=g, dtype=torch.float64)
    w = torch.randn(groups, dh, 3 * dh, generator=g, dtype=torch.float64)
    mask = torch.ones(groups, n, dtype=torch.bool)
    if pad:
        mask[:, n - pad :] = False
    _, c, cm = head_bases(v, w, mask)
    return c, cm, mask, g


def _rows(mask: Tensor, m: int, g: torch.Generator, temp: float) -> Tensor:
    logits = torch.randn(mask.shape[0], m, mask.shape[1], generator=g).double() * temp
    return torch.softmax(logits.masked_fill(~mask[:, None], -torch.inf), -1)


def _check_kkt(c: Tensor, b: Tensor, x: Tensor, lam: Tensor, tol: float) -> None:
    # from scratch: feasibility, x = max(0, C λ) (stationarity on the
    # support, dual feasibility off it)
    y = lam @ c.transpose(-1, -2)
    assert float(x.min()) >= 0.0
    assert float((x @ c - b).abs().max()) <= tol
    on = x > 0
    assert float((x - y)[on].abs().max()) <= tol
    real = (c.abs().amax(-1) > 0).expand_as(on)
    off = ~on & real
    if bool(off.any()):
        assert float(torch.relu(y[off]).max()) <= tol


def _solve_each(c: Tensor, b: Tensor, cm: Tensor, **kw) -> Tensor:
    out = torch.zeros(b.shape[0], b.shape[1], c.shape[1], dtype=c.dtype)
    for i in range(b.shape[0]):
        for j in range(b.shape[1]):
            out[i, j] = min_norm_simplex_solve(
                c[i : i + 1], b[i : i + 1, j : j + 1], cm[i : i + 1], **kw
            )[0][0, 0]
    return out


def test_blocks_of_mixed_sizes_and_chunks_match_rows_alone():
    # bases with 1, 3, 5, ... unfinished rows (uniform rows are closed-form),
    # so the blocks have different power-of-two sizes
    c, cm, mask, g = _bases(5, 40, 6, seed=0, pad=3)
    a = _rows(mask, 9, g, temp=4.0)
    for i in range(5):
        a[i, 1 + 2 * i :] = mask[i].double() / mask[i].sum()
    b = a @ c
    x, lam, info = min_norm_simplex_solve(c, b, cm)
    assert bool(info.converged.all())
    assert int(info.iterations[a.amax(-1) > 0.5].min()) >= 0
    alone = _solve_each(c, b, cm)
    torch.testing.assert_close(x, alone, atol=1e-10, rtol=0)
    tiny, _, info_t = min_norm_simplex_solve(c, b, cm, max_chunk_bytes=1)
    torch.testing.assert_close(tiny, x, atol=1e-10, rtol=0)
    assert bool(info_t.converged.all())
    for i in range(5):
        _check_kkt(c[i], b[i], x[i], lam[i], 1e-10)
        assert float(x[i, :, ~mask[i]].abs().max()) == 0.0


@pytest.mark.parametrize("seed", range(3))
def test_float32_iterations_match_float64_iterations(seed):
    c, cm, mask, g = _bases(3, 64, 8, seed=seed)
    b = _rows(mask, 16, g, temp=6.0) @ c
    x32, _, i32 = min_norm_simplex_solve(c, b, cm)  # default: float32 iterations
    x64, _, i64 = min_norm_simplex_solve(c, b, cm, work_dtype=torch.float64)
    assert bool(i32.converged.all()) and bool(i64.converged.all())
    assert x32.dtype == torch.float64
    torch.testing.assert_close(x32, x64, atol=1e-10, rtol=0)
    assert float(i32.kkt_residual.max()) <= 1e-12


def test_degenerate_peaked_rows_converge():
    # attention that is almost one-hot: the minimum-norm distribution has
    # entries from 1 down to 1e-15 and fewer than r non-zeros, where a
    # support guess misses tiny entries and the dual is not unique
    c, cm, mask, g = _bases(2, 64, 32, seed=3)
    a = _rows(mask, 12, g, temp=25.0)
    b = a @ c
    x, lam, info = min_norm_simplex_solve(c, b, cm, max_iter=100)
    assert bool(info.converged.all()), info.kkt_residual
    for i in range(2):
        _check_kkt(c[i], b[i], x[i], lam[i], 1e-11)
    support = (x > 0).sum(-1)
    assert int(support.min()) < int(cm.sum(-1).min())  # really degenerate


def test_hand_over_to_float64(monkeypatch):
    # force every row through the float32 -> float64 hand-over
    monkeypatch.setattr(solver, "SWITCH_ITERS", 1)
    c, cm, mask, g = _bases(2, 48, 8, seed=4)
    b = _rows(mask, 10, g, temp=5.0) @ c
    x, lam, info = min_norm_simplex_solve(c, b, cm)
    ref, _, _ = min_norm_simplex_solve(c, b, cm, work_dtype=torch.float64)
    assert bool(info.converged.all())
    torch.testing.assert_close(x, ref, atol=1e-10, rtol=0)


def test_float32_input():
    c, cm, mask, g = _bases(2, 50, 8, seed=5)
    b = _rows(mask, 10, g, temp=5.0) @ c
    x, lam, info = min_norm_simplex_solve(c.float(), b.float(), cm, tol=1e-6)
    ref, _, _ = min_norm_simplex_solve(c, b, cm)
    assert x.dtype == torch.float32
    assert bool(info.converged.all())
    torch.testing.assert_close(x.double(), ref, atol=1e-4, rtol=0)
    with pytest.raises(TypeError, match="work_dtype"):
        min_norm_simplex_solve(c, b, cm, work_dtype=torch.float16)


def test_unconverged_and_broken_rows_are_flagged():
    c, cm, mask, g = _bases(2, 40, 6, seed=6)
    b = _rows(mask, 6, g, temp=5.0) @ c
    x, _, info = min_norm_simplex_solve(c, b, cm, max_iter=2)
    assert int(info.iterations.max()) <= 2
    assert not bool(info.converged.all())
    torch.testing.assert_close(info.converged, info.kkt_residual <= 1e-12)
    bad = b.clone()
    bad[0, 2] = torch.nan
    x, _, info = min_norm_simplex_solve(c, bad, cm)
    assert not bool(info.converged[0, 2])
    keep = torch.ones_like(info.converged)
    keep[0, 2] = False
    assert bool(info.converged[keep].all())  # the other rows are unaffected
    ref, _, _ = min_norm_simplex_solve(c, b, cm)
    torch.testing.assert_close(x[keep], ref[keep], atol=1e-10, rtol=0)


# ---------------------------------------- guards from the mutation audit
# Each test below kills a mutant of the solver that the tests above let
# through (see tests/core/test_mutation_guards.py).
def _kkt_from_scratch(c: Tensor, b: Tensor, x: Tensor, lam: Tensor) -> Tensor:
    # per row: max(|x - max(0, C λ)|, |Cᵀx - b|), zero exactly at the optimum
    y = lam @ c.transpose(-1, -2)
    return torch.maximum((x - torch.relu(y)).abs().amax(-1), (x @ c - b).abs().amax(-1))


@pytest.mark.parametrize("tol", [1e-3, 1e-6])
def test_rows_called_converged_meet_the_kkt_conditions_at_any_budget(tol):
    # Mutant: the KKT residual without its stationarity term. An interior
    # point after a few iterations is nearly feasible but not optimal; with a
    # loose tolerance and a small budget it was called converged.
    c, cm, mask, g = _bases(3, 40, 6, seed=0)
    b = _rows(mask, 16, g, temp=4.0) @ c
    for max_iter in range(1, 7):
        x, lam, info = min_norm_simplex_solve(c, b, cm, tol=tol, max_iter=max_iter)
        kkt = _kkt_from_scratch(c, b, x, lam)
        assert float(x.min()) >= 0.0
        assert bool((kkt[info.converged] <= tol).all()), max_iter


def test_polish_finishes_generic_rows_exactly():
    # Mutants: the polish skipped, or its dual correction with the wrong
    # sign. The rows still converge (the float64 continuation certifies
    # them), but only to the tolerance and in twice the iterations (16 on
    # average instead of 8); the exact re-solve on the support lands at
    # rounding level.
    c, cm, mask, g = _bases(3, 64, 8, seed=1)
    b = _rows(mask, 16, g, temp=6.0) @ c
    x, lam, info = min_norm_simplex_solve(c, b, cm)
    assert int(info.iterations.min()) > 0  # no row had a closed form
    assert float(_kkt_from_scratch(c, b, x, lam).max()) <= 1e-13
    assert float(info.iterations.double().mean()) <= 12.0


@pytest.mark.parametrize("seed", [0, 1])
def test_degenerate_rows_of_wide_heads_converge(seed):
    # Mutant: the dual variables advanced with the primal step length. Peaked
    # rows of a d_h = 32 head then stalled at KKT residuals of 7e-12 and
    # 2e-9 after 100 iterations (36 and 41 are enough).
    c, cm, mask, g = _bases(3, 64, 32, seed=seed)
    logits = torch.randn(3, 16, 64, generator=g, dtype=torch.float64)
    b = torch.softmax(logits * 25.0, -1) @ c
    x, lam, info = min_norm_simplex_solve(c, b, cm)
    assert bool(info.converged.all())
    assert float(_kkt_from_scratch(c, b, x, lam).max()) <= 1e-12


def _far_short_polishes(monkeypatch) -> list:
    # rows of every polish whose support guess is more than 2 entries short
    # of the rank
    counts = []
    polish, most = solver._polish, 2

    def spy(bases, grp, support, *args):
        rank = (~bases.unused[grp]).sum(-1)
        counts.append(int((rank - support.sum(-1) > most).sum()))
        return polish(bases, grp, support, *args)

    monkeypatch.setattr(solver, "_polish", spy)
    return counts


def test_changing_guesses_far_short_of_the_rank_are_not_polished(monkeypatch):
    # Near one-hot rows (temperature 25, as in a first layer that attends to
    # itself) have vertex answers with entries down to 1e-12, which the
    # interior point resolves late: its guesses miss many of them and change
    # at every iteration, and polishing each one took about a fifth of
    # MiniLM's first-layer solve for nothing. They wait until a guess repeats; the
    # answers and the iterations stay the same.
    c, cm, mask, g = _bases(2, 128, 32, seed=3)
    b = _rows(mask, 16, g, temp=25.0) @ c
    counts = _far_short_polishes(monkeypatch)
    x, lam, info = min_norm_simplex_solve(c, b, cm)
    ruled = sum(counts)
    assert bool(info.converged.all())
    assert float(_kkt_from_scratch(c, b, x, lam).max()) <= 1e-12
    counts.clear()
    monkeypatch.setattr(solver, "POLISH_MAX_DEFICIT", 10**6)  # every guess
    ref, _, ref_info = min_norm_simplex_solve(c, b, cm)
    assert ruled <= 0.75 * sum(counts), (ruled, sum(counts))  # measured 146, 238
    torch.testing.assert_close(x, ref, atol=1e-11, rtol=0)
    mean, ref_mean = (
        info.iterations.double().mean(),
        ref_info.iterations.double().mean(),
    )
    assert float(mean) <= 1.02 * float(ref_mean)


def test_one_hot_rows_are_polished_on_their_one_key():
    # Mutant: guesses far short of the rank never polished. A one-hot row is
    # its own answer (|S| = 1, far below r = 17); its guess stops changing
    # after a few iterations and its polish gives it exactly. Unpolished,
    # it took 11 to 19 iterations and ended 5e-12 off.
    c, cm, mask, g = _bases(2, 64, 16, seed=7)
    a = torch.zeros(2, 8, 64, dtype=torch.float64)
    for i in range(2):
        for j in range(8):
            a[i, j, 5 * j + i] = 1.0
    x, lam, info = min_norm_simplex_solve(c, a @ c, cm)
    assert bool(info.converged.all())
    assert int(info.iterations.max()) <= 8  # measured 6
    torch.testing.assert_close(x, a, atol=1e-15, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("doc, layer, head, row", [(3, 1, 11, 119)])
def test_real_rows_that_fail_with_separate_step_lengths(minilm, doc, layer, head, row):
    # Mutant: the primal and dual step lengths kept apart to the end. On
    # this 512-token document of the speed benchmark's memory run (found by
    # solving all rows of 12 documents both ways) the row then ends at the
    # iteration limit unconverged, KKT residual 4.9; with one step length
    # after 10 iterations every row of the 12 documents converges. (Row 198
    # of head 8 in layer 3 of document 5 cycled with the interior point's
    # earlier start, and row 288 of head 2 in layer 0 of the same document
    # before near one-hot rows left float32 early; both converge now.)
    c, b, cm = _real_layer_problems(minilm, doc, 512, 200, layer)
    c, b, cm = c[head : head + 1], b[head : head + 1], cm[head : head + 1]
    x, lam, info = min_norm_simplex_solve(c, b, cm)
    assert bool(info.converged.all()), info.kkt_residual.max()
    assert float(_kkt_from_scratch(c, b, x, lam).max()) <= 1e-12
    assert int(info.iterations[0, row]) < solver.DEFAULT_MAX_ITER


def _real_layer_problems(minilm, doc: int, length: int, offset: int, layer: int):
    # one layer's problems (c, b, col_mask; one basis per head) of document
    # ``doc`` of the speed benchmark's real documents
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "speed.py"
    speed = runpy.run_path(str(script), run_name="speed_under_test")
    model, tok = minilm
    ids, mask = speed["real_token_batch"](tok, doc + 1, length, offset=offset)
    return speed["layer_problems"](model, ids[doc:], mask[doc:], [layer])[0]


@pytest.mark.slow
def test_near_one_hot_rows_leave_float32_early(minilm):
    # Mutant: no PEAK_SWITCH (such rows stay in float32 until the gap or
    # iteration limit). Head 2 of MiniLM's first layer is a previous-token
    # head: every row's answer is a vertex with one entry of about 0.9995
    # and 32 down to 1e-9, which float32 cannot resolve. Measured on this
    # document: 21.6 iterations per row on average with the rule, 28.4
    # without (four documents: 21.6-22.2 against 28.4-29.2).
    c, b, cm = _real_layer_problems(minilm, 0, 128, 0, 0)
    c, b, cm = c[2:3], b[2:3], cm[2:3]
    x, lam, info = min_norm_simplex_solve(c, b, cm)
    assert bool(info.converged.all())
    assert float(_kkt_from_scratch(c, b, x, lam).max()) <= 1e-12
    assert float(x.amax(-1).median()) > 0.99  # the rows the rule is about
    assert float(info.iterations.double().mean()) < 25.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("with_rebuild", [True, False])
def test_cholesky_in_place_retries_failed_rows_on_their_original_matrices(
    dtype, with_rebuild
):
    # Mutant: the in-place factorisation retrying the failed rows from what
    # is left in place (partial factors) instead of the rebuilt matrices,
    # or overwriting the caller's matrix when no rebuild is given.
    g = torch.Generator().manual_seed(3)
    a = torch.randn(7, 6, 9, generator=g, dtype=torch.float64)
    mats = a @ a.mT / 9
    q = torch.linalg.qr(torch.randn(2, 6, 6, generator=g, dtype=torch.float64))[0]
    low = -1e-9 if dtype == torch.float64 else -1e-5  # well below rounding
    eig = torch.tensor([1.0, 0.5, 0.3, 0.2, 0.1, low], dtype=torch.float64)
    mats[[2, 5]] = q @ torch.diag(eig) @ q.mT  # PSD up to rounding: fails
    mats = mats.to(dtype)
    orig = mats.clone()
    asked = []

    def rebuild(idx):
        asked.append(idx.tolist())
        return orig[idx]

    eps = torch.finfo(dtype).eps
    ridge = 10 * eps
    work = mats.clone()
    chol = solver._cholesky(work, ridge, rebuild if with_rebuild else None)
    assert asked == ([[2, 5]] if with_rebuild else [])
    if not with_rebuild:  # the caller's matrices, ridge and all, untouched
        torch.testing.assert_close(work, orig, rtol=0, atol=0)
    assert bool(torch.isfinite(chol).all())
    torch.testing.assert_close(chol, chol.tril(), rtol=0, atol=0)
    prod = chol @ chol.mT
    good = [0, 1, 3, 4, 6]
    eye = torch.eye(6, dtype=dtype)
    torch.testing.assert_close(
        prod[good], orig[good] + ridge * eye, rtol=0, atol=50 * eps
    )
    # the failed rows: their own matrix plus a small ridge
    shift = (prod[[2, 5]] - orig[[2, 5]]).diagonal(dim1=-2, dim2=-1)
    assert float(shift.min()) > 0 and float(shift.max()) < 1e-2
    off = prod[[2, 5]] - orig[[2, 5]] - torch.diag_embed(shift)
    assert float(off.abs().max()) <= 50 * eps


def test_step_length_is_the_largest_feasible_step_up_to_one():
    g = torch.Generator().manual_seed(4)
    v = torch.rand(50, 12, generator=g, dtype=torch.float64) + 1e-3
    dv = torch.randn(50, 12, generator=g, dtype=torch.float64)
    dv[:10] = dv[:10].abs()  # no decreasing entry: the full step
    v[:, -3:], dv[:, -3:] = 1.0, 0.0  # padding
    step = solver._step_length(v, dv)
    ratio = torch.where(dv < 0, -v / dv, torch.inf)
    torch.testing.assert_close(step, ratio.amin(-1).clamp(max=1.0))
    assert bool((step[:10] == 1.0).all())
    assert float((v + step[:, None] * dv).min()) >= -1e-15


@pytest.mark.parametrize(
    "free, expected",
    [
        (140 * 2**30, 16 * 2**30),  # an H200: the cap
        (40 * 2**30, 5 * 2**30),  # an eighth of the free memory
        (1 * 2**30, 256 * 2**20),  # never below the CPU's budget
    ],
)
def test_chunk_budget_on_cuda(monkeypatch, free, expected):
    # fewer chunks are faster on a GPU (each runs the whole loop of kernel
    # launches), within an eighth of the free memory
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free, 2 * free))
    assert solver._default_chunk_bytes(torch.device("cuda")) == expected
    assert solver._default_chunk_bytes(torch.device("cpu")) == 256 * 2**20


def test_chunks_charge_outer_products_only_where_they_are_built():
    # a decoder has one basis per query row, whose block never builds the
    # packed outer products (OUTER_MIN_ROWS); charging them anyway split
    # 1,788 rows of a 512-token GPT-2 layer into 224 chunks, each a whole
    # run of the interior-point loop
    from captum_effattn._core.solver import CHUNK_BYTES, OUTER_MIN_ROWS, _chunks

    n, r = 512, 65
    rows = torch.arange(1792)
    one_each = _chunks(rows, 1, n, r, 8, CHUNK_BYTES)
    assert len(one_each) <= 20
    assert torch.equal(torch.cat(one_each), rows)
    # bases with blocks of OUTER_MIN_ROWS rows build them, and pay for them
    built = _chunks(rows, OUTER_MIN_ROWS, n, r, 8, CHUNK_BYTES)
    not_built = _chunks(rows, OUTER_MIN_ROWS // 2, n, r, 8, CHUNK_BYTES)
    assert len(built) > 3 * len(not_built)


def test_outer_products_are_built_for_the_large_blocks_only(monkeypatch):
    # one basis with a block of 16 rows among one-row bases: the outer
    # products were built for every basis of the chunk (and sliced), which
    # the chunks' memory estimate does not charge for
    from captum_effattn._core import solver

    torch.manual_seed(0)
    g, n, r, m = 12, 64, 8, 16
    ones = torch.ones(g, n, 1, dtype=torch.float64)
    rest = torch.randn(g, n, r - 1, dtype=torch.float64)
    c = torch.linalg.qr(torch.cat([ones, rest], -1))[0]
    a = torch.full((g, m, n), 1.0 / n, dtype=torch.float64)  # closed form
    peaked = torch.distributions.Dirichlet(torch.full((n,), 0.05))
    a[0] = peaked.sample((m,)).double()  # basis 0: every row iterates
    a[1:, 0] = peaked.sample((g - 1,)).double()  # the others: one row each
    built = []
    original = solver._Bases.outer

    def spy(self, dtype, gs):
        out = original(self, dtype, gs)
        built.append(out.shape[0])
        return out

    monkeypatch.setattr(solver._Bases, "outer", spy)
    x, _, info = solver.min_norm_simplex_solve(c, a @ c)
    assert bool(info.converged.all()) and int((info.iterations > 0).sum()) > m
    assert built and max(built) == 1  # basis 0 alone
