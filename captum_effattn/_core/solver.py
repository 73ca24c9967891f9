r"""The linear algebra of efficient and effective attention.

Everything here works on plain tensors with leading batch dimensions, so the
same code runs on CPU and GPU. Notation (see the docs' *Mathematics* page):
for one head and one example with ``n`` tokens,

* ``T = V_h W_O,h`` (n x d) is the head's transformed value matrix; a row ``a``
  of attention contributes ``a T`` to the layer output;
* ``U`` (n x k) is an orthonormal basis of ``col(T)``; effective attention
  (Brunner et al., 2020) is ``A U Uᵀ``;
* ``C = [U, u]`` (n x r) is an orthonormal basis of ``col([T, 1])``;
* efficient attention of row ``a`` is the minimum-norm probability vector ``x``
  with ``Cᵀ x = Cᵀ a`` (same head output, sums to one).

The minimum-norm problem ``min ½‖x‖² s.t. Cᵀx = b, x ≥ 0`` has the dual
``min_λ φ(λ) = ½‖max(0, Cλ)‖² − λᵀb`` whose minimiser gives
``x = max(0, Cλ)``. :func:`min_norm_simplex_solve` solves it with a batched
interior-point method plus an exact polish on the identified support.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = [
    "head_bases",
    "min_norm_simplex_solve",
    "SolverInfo",
]


#: Interior-point iterations at most (both precisions together), the default
#: of every entry point. Most rows need under 10; near-degenerate rows of
#: long inputs have needed up to about 80.
DEFAULT_MAX_ITER = 100


def _default_rtol(n: Tensor, k: int, dtype: torch.dtype) -> Tensor:
    # The usual numerical-rank tolerance (as in numpy.linalg.matrix_rank) of
    # n x k matrices, for a tensor of n.
    return n.clamp_min(k).to(dtype) * torch.finfo(dtype).eps


def head_bases(
    values: Tensor,
    w_out: Tensor,
    key_mask: Tensor,
    rtol: Optional[float] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    r"""Orthonormal bases of ``col(T)`` and ``col([T, 1])`` for every head.

    ``T = V_h W_O,h`` is never formed: with the thin QR factorisation
    ``W_O,hᵀ = Q R`` one has ``T = (V_h Rᵀ) Qᵀ`` and ``Q`` has orthonormal
    columns, so ``M = V_h Rᵀ`` (n x d_h) has exactly the singular values and
    left singular vectors of ``T``. This needs no full-rank assumption on
    ``W_O,h`` and works on a matrix d/d_h times narrower than ``T``.

    Args:
        values (Tensor): value vectors, shape ``(..., n, d_h)``.
        w_out (Tensor): per-head output projections, shape ``(..., d_h, d)``,
                    broadcastable against ``values``' leading dimensions.
        key_mask (Tensor): bool ``(..., n)``, True for real tokens. Rows of the
                    bases at masked positions are exactly zero.
        rtol (float, optional): relative tolerance on singular values for the
                    numerical rank. Default: ``max(k, d_h) * eps(dtype)`` for
                    a matrix of ``k`` real keys (its ``key_mask``), so that
                    padding does not change the rank.

    Returns:
        (U, C, col_mask): ``U`` ``(..., n, d_h)`` orthonormal basis of
        ``col(T)`` padded with zero columns, ``C`` ``(..., n, d_h + 1)`` the
        basis of ``col([T, 1])`` (``U`` plus the normalised part of the
        ones vector outside ``col(T)``), and ``col_mask`` ``(..., d_h + 1)``
        bool, True for the columns of ``C`` that are in use.
    """
    dtype = values.dtype
    mask = key_mask.to(dtype).unsqueeze(-1)
    r_out = torch.linalg.qr(w_out.transpose(-1, -2), mode="r")[1]
    # masking rows commutes with the product: one product per head, however
    # many key masks (a causal model's rows) share its values
    m = (values @ r_out.transpose(-1, -2)) * mask
    # The singular values of the small triangular factor of M = Q_M R_M are
    # those of M. Where M has full column rank, Q_M is already an
    # orthonormal basis of col(M); elsewhere the SVD of R_M gives, through
    # Q_M, the left singular vectors, whose leading columns span col(M).
    q_m, r_m = torch.linalg.qr(m)
    dh = m.shape[-1]
    tiny = torch.finfo(dtype).tiny
    keys = key_mask.sum(-1)
    if rtol is not None:
        tol = torch.full(keys.shape, float(rtol), dtype=dtype, device=m.device)
    else:
        # numpy's matrix_rank convention for the real (keys x d_h) matrix:
        # neither the padding nor, for a causal model, the length up to
        # which the rows are solved together moves a row's rank
        tol = _default_rtol(keys, dh, dtype)

    def kept(s: Tensor, t: Tensor) -> Tensor:
        return s > t.unsqueeze(-1) * s[..., :1].clamp_min(tiny)

    sv = torch.linalg.svdvals(r_m)
    tol = tol.expand(sv.shape[:-1])  # key_mask may broadcast against values
    keep = kept(sv, tol)
    u = q_m
    short = ~keep.all(-1)
    if bool(short.any()):
        u = q_m.clone()
        keep = keep.clone()
        u_r, s, _ = torch.linalg.svd(r_m[short], full_matrices=False)
        u[short] = q_m[short] @ u_r
        keep[short] = kept(s, tol[short])
    u = u * keep.unsqueeze(-2).to(dtype) * mask
    ones = key_mask.to(dtype)
    resid = ones - (u @ (u.transpose(-1, -2) @ ones.unsqueeze(-1))).squeeze(-1)
    resid = resid - (u @ (u.transpose(-1, -2) @ resid.unsqueeze(-1))).squeeze(-1)
    norm = resid.norm(dim=-1, keepdim=True)
    count = ones.sum(-1, keepdim=True).clamp_min(1.0)
    has_one = (
        norm
        > (rtol if rtol is not None else 1e3 * torch.finfo(dtype).eps) * count.sqrt()
    )
    u_one = torch.where(has_one, resid / norm.clamp_min(torch.finfo(dtype).tiny), 0.0)
    c = torch.cat([u, u_one.unsqueeze(-1)], dim=-1)
    col_mask = torch.cat([keep, has_one], dim=-1)
    return u, c, col_mask


@dataclass
class SolverInfo:
    r"""Per-row diagnostics of :func:`min_norm_simplex_solve`.

    Attributes:
        kkt_residual (Tensor): the largest violation of the KKT conditions of
                    the returned point, in the input dtype: primal
                    ``‖Cᵀx − b‖∞``, dual feasibility ``max_j∉S (Cλ)_j⁺`` on
                    the zero set, and stationarity ``max_j∈S |x_j − (Cλ)_j|``
                    on the support.
        iterations (Tensor): interior-point iterations of each row, both
                    precisions together (0 when ``max(0, C b)``, the
                    projection's positive part, met the tolerance).
        converged (Tensor): bool, ``kkt_residual <= tol``.
    """

    kkt_residual: Tensor
    iterations: Tensor
    converged: Tensor


#: Polish a new support guess once the scaled gap ``mean(x z) n²`` (1 for
#: the uniform distribution with ``z = x``) is below this.
POLISH_GAP = 1e-3
#: Active-set corrections of a polished support guess that misses the
#: tolerance.
POLISH_STEPS = 1
#: A support guess with more than this many entries fewer than the rank
#: ``r`` of the row's basis is polished only once it is the same as the last
#: iteration's. A row whose answer is a vertex with entries of 1e-12 (the
#: near one-hot rows of a first layer) shows the interior point a new guess
#: short of many of those entries at every iteration until late, and such
#: polishes almost never certify at float64 tolerances (on MiniLM's first
#: layer 6 of 1,566 did, all within 2 of the rank) while they took about a
#: fifth of that layer's solve. Degenerate answers with fewer entries than
#: ``r`` (a one-hot row) give a guess that stops changing, which is polished.
POLISH_MAX_DEFICIT = 2
IPM_RIDGE = 0.0
#: Iterations after which a row takes one step length for x, z and λ (the
#: smaller of the primal and dual ones). Separate lengths, the linear
#: programming practice, are faster early on, but here the dual residual
#: ``x - Cλ - z`` involves x: a step of length a_p on x and a_d on (λ, z)
#: leaves ``(1 - a_d) r_d + (a_p - a_d) dx`` of it, so unequal lengths can
#: keep it from vanishing. On all rows of 12 MiniLM documents of 512 tokens,
#: a row then ended unconverged at the iteration limit with a KKT residual
#: of 4.9; with one length every row converges.
COMMON_STEP_AFTER = 10
#: The interior point starts from x = the projection ``C b`` shifted into the
#: interior, λ = b and z = (x − C b) + START_DUAL · x: z is the shift, which
#: would make the start dual feasible, plus a multiple of x that centres it.
#: On MiniLM (all rows of 128- and 256-token documents) the previous start,
#: z = x and λ = 0, took 5% more iterations and sent twice as many rows on
#: to float64 (308 against 651 of 18,432); 4 was the best of 0 to 16.
START_DUAL = 4.0
#: Iterations in the low-precision working dtype stop below this scaled gap
#: or after this many iterations; the row continues in the answer's dtype.
SWITCH_GAP = 1e-9
SWITCH_ITERS = 15
#: They also stop, once the row has a restart point (``SNAPSHOT_GAP``), when
#: the iterate puts more than this on one key. Such a near one-hot row has
#: a vertex answer with entries down to 1e-12 that float32 cannot resolve,
#: so its further float32 iterations were wasted. On MiniLM's first layer,
#: whose slow rows are one previous-token head, this cut the mean
#: iterations from 6.1 to 5.5, the most from 37 to 28, and the layer's solve
#: time by 10%.
PEAK_SWITCH = 0.99
#: The continuation restarts from the last low-precision iterate whose
#: scaled gap was above this (closer to the end, float32 rounding has pushed
#: the iterate off the central path).
SNAPSHOT_GAP = 1e-3


def _work_dtype(dtype: torch.dtype, work_dtype: Optional[torch.dtype]) -> torch.dtype:
    if work_dtype is None:
        return torch.float32 if dtype == torch.float64 else dtype
    if work_dtype not in (torch.float32, torch.float64):
        raise TypeError(f"work_dtype must be float32 or float64, got {work_dtype}")
    # never iterate in a higher precision than the answer's
    finer = torch.finfo(work_dtype).eps < torch.finfo(dtype).eps
    return dtype if finer else work_dtype


def min_norm_simplex_solve(
    c: Tensor,
    b: Tensor,
    col_mask: Optional[Tensor] = None,
    *,
    tol: float = 1e-12,
    max_iter: int = DEFAULT_MAX_ITER,
    max_chunk_bytes: Optional[int] = None,
    work_dtype: Optional[torch.dtype] = None,
) -> Tuple[Tensor, Tensor, SolverInfo]:
    r"""Solve ``min ½‖x‖² s.t. Cᵀx = b, x ≥ 0`` for many rows sharing bases.

    Rows whose projection ``C b`` is already non-negative (up to entries that
    only rounding makes negative: ``max(0, C b)`` meets the tolerance) are
    done at once.
    The others go through a batched primal-dual interior-point method
    (Mehrotra predictor-corrector). Its normal matrix ``Cᵀ D C`` with
    ``D = diag(x / (x + z))`` is positive definite because ``C`` has
    orthonormal columns, so the method is robust to the degenerate rows
    (vertices of the polytope with entries of 1e-12, supports smaller than
    ``r``) that stall a semismooth Newton method on the dual. Its first
    iterations take separate primal and dual step lengths, the later ones a
    common length (``COMMON_STEP_AFTER``), without which the dual residual
    can cycle. Once the gap is small, every new support guess
    ``S = {x_j > z_j}`` of a row is *polished* (one far short of the rank
    only once it repeats, ``POLISH_MAX_DEFICIT``): the equality-constrained
    minimum-norm problem on ``S`` is solved directly in the input dtype,
    which gives exact zeros off the support, and the row is finished when
    that candidate meets the KKT tolerance.

    What makes it fast:

    * finished rows leave the batch; the others are regrouped by basis into
      padded blocks of power-of-two sizes, so every product with a basis is a
      batched matrix product over blocks (no loop over rows or bases; the
      same code runs on GPU);
    * the normal matrices ``Σ_j d_j c_j c_jᵀ`` of all rows of a basis with
      many unfinished rows are one matrix product with the packed
      upper-triangular outer products;
    * for float64 input the interior-point iterations run in float32
      (``work_dtype``) while the polish and the KKT residuals stay float64;
      rows that need more (a vertex with tiny entries, a float32 failure)
      continue in float64 from their last well-centred float32 iterate.

    Positions with ``c_j = 0`` (padding) get ``x_j = 0``.

    Args:
        c (Tensor): orthonormal bases, shape ``(G, n, r)``; zero columns are
                    allowed when ``col_mask`` marks them.
        b (Tensor): right-hand sides, shape ``(G, m, r)`` (``m`` rows per basis).
        col_mask (Tensor, optional): bool ``(G, r)``, columns of ``c`` in use.
                    Default: all.
        tol (float, optional): target KKT residual. Default: 1e-12
        max_iter (int, optional): interior-point iterations at most, both
                    precisions together. Default: 100
        max_chunk_bytes (int, optional): memory budget of one chunk of bases
                    solved together. Default: 256 MiB on CPU; on CUDA an
                    eighth of the free device memory, between 256 MiB and
                    16 GiB (fewer, larger batches: the GPU's cost is in the
                    number of kernel launches, not in their size).
        work_dtype (torch.dtype, optional): dtype of the interior-point
                    iterations. Default: float32 for float64 input, else the
                    input dtype.

    Returns:
        (x, lam, info): primal solutions ``(G, m, n)``, dual points
        ``(G, m, r)`` and a :class:`SolverInfo`.
    """
    if (
        c.dim() != 3
        or b.dim() != 3
        or c.shape[0] != b.shape[0]
        or c.shape[2] != b.shape[2]
    ):
        raise ValueError(
            f"expected c (G, n, r) and b (G, m, r), got {tuple(c.shape)} and "
            f"{tuple(b.shape)}"
        )
    g, n, r = c.shape
    m = b.shape[1]
    dtype = c.dtype
    wdt = _work_dtype(dtype, work_dtype)
    if col_mask is None:
        col_mask = torch.ones(g, r, dtype=torch.bool, device=c.device)
    if max_chunk_bytes is None:
        max_chunk_bytes = _default_chunk_bytes(c.device)
    b = b.to(dtype) * col_mask.unsqueeze(-2).to(dtype)
    # Closed form: x = max(0, C b) (λ = b) meets every KKT condition but the
    # primal one by construction, so it is the answer wherever Cᵀx = b holds
    # within tol: where C b >= 0, and where C b only rounds below 0 (e.g.
    # rank([T, 1]) = n, where C Cᵀ = I and x is A_i itself).
    lam = b.clone()
    y = lam @ c.transpose(-1, -2)
    x = torch.relu(y)
    res = (x @ c - b).abs().amax(-1)
    iters = torch.zeros(g, m, dtype=torch.long, device=c.device)
    todo = (res > tol).flatten().nonzero().flatten()  # sorted by basis
    if todo.numel() > 0 and max_iter > 0:
        xf, lf = x.view(g * m, n), lam.view(g * m, r)
        rf, itf, bf = res.view(-1), iters.view(-1), b.view(g * m, r)
        for rows in _chunks(todo, m, n, r, c.element_size(), max_chunk_bytes):
            bases, loc = torch.unique(rows // m, return_inverse=True)
            out = _solve_rows(
                c[bases], col_mask[bases], bf[rows], loc,
                tol=tol, max_iter=max_iter, wdt=wdt,
            )  # fmt: skip
            xf[rows], lf[rows], rf[rows], itf[rows] = out
    return x, lam, SolverInfo(kkt_residual=res, iterations=iters, converged=res <= tol)


#: Memory budget of one chunk on CPU (and the least on CUDA).
CHUNK_BYTES = 256 * 2**20
#: The most on CUDA. Every chunk runs the whole interior-point loop, whose
#: cost on a GPU is kernel launches, so fewer chunks are faster: on an H200,
#: all rows of 16 MiniLM documents of 128 tokens took 3.7 s in 6 chunks
#: (4 GiB) and 1.5 s in 2 (16 GiB, peak 5.1 GiB of GPU memory; 64 documents
#: 3.6 s in 6 chunks, peak 7.5 GiB). The budget overestimates the memory
#: used, by about 3x there.
CHUNK_BYTES_CUDA_MAX = 16 * 2**30


def _default_chunk_bytes(device: torch.device) -> int:
    if device.type != "cuda":
        return CHUNK_BYTES
    free, _ = torch.cuda.mem_get_info(device)
    return int(min(max(free // 8, CHUNK_BYTES), CHUNK_BYTES_CUDA_MAX))


def _chunks(
    rows: Tensor, m: int, n: int, r: int, size: int, budget: int
) -> List[Tensor]:
    r"""Split ``rows`` (flat, sorted by basis) into chunks of whole bases of
    about ``budget`` bytes of working memory each."""
    p = r * (r + 1) // 2
    per_basis = 6 * n * r * size  # block copies
    # outer products, built only for a basis of a block of OUTER_MIN_ROWS
    # rows or more (a power of two above the count): not for the one-row
    # bases of a decoder, which they made split into 15 times more chunks
    outer = 6 * n * p * size
    per_row = (48 * n + 8 * r * r + 4 * p) * size  # iterates, matrices
    bases, counts = torch.unique_consecutive(rows // m, return_counts=True)
    cost = per_basis + (counts > OUTER_MIN_ROWS // 2) * outer + counts * per_row
    start = torch.cumsum(cost, 0) - cost
    chunk = torch.div(start, max(1, budget), rounding_mode="floor")
    row_chunk = torch.repeat_interleave(chunk, counts)
    return [rows[row_chunk == i] for i in torch.unique(chunk).tolist()]


#: Blocks with at least this many rows per basis form their normal matrices
#: from the basis' outer products (one matrix product for all rows); smaller
#: blocks multiply ``(C ∘ w)ᵀ C`` row by row, which needs no outer products.
OUTER_MIN_ROWS = 16


class _Bases:
    r"""Per-basis data of one chunk: the bases in the answer's dtype and in
    the working dtype, their packed outer products (built when first needed)
    and masks."""

    def __init__(self, c: Tensor, col_mask: Tensor, wdt: torch.dtype) -> None:
        k, n, r = c.shape
        self.dtype, self.n, self.r = c.dtype, n, r
        iu = torch.triu_indices(r, r, device=c.device)
        full = torch.empty(r, r, dtype=torch.long, device=c.device)
        pos = torch.arange(iu.shape[1], device=c.device)
        full[iu[0], iu[1]] = pos
        full[iu[1], iu[0]] = pos
        self.unpack = full.reshape(-1)
        self.c = {c.dtype: c, wdt: c.to(wdt)}
        self._outer: Dict[torch.dtype, Tuple[Tensor, Tensor]] = {}
        self.real = c.abs().amax(-1) > 0  # (k, n)
        self.unused = ~col_mask  # (k, r)

    def outer(self, dtype: torch.dtype, gs: Tensor) -> Tensor:
        r"""Packed outer products ``c_j c_jᵀ`` (upper triangle) of the bases
        ``gs`` (sorted indices), ``(len(gs), n, p)``. Built for those bases
        only, which :func:`_chunks` charges for, and kept: later blocks of
        the chunk (fewer rows left, or a polish) ask for a subset of them."""
        cached = self._outer.get(dtype)
        if cached is not None:
            have, values = cached
            if have.numel() == gs.numel() and bool((have == gs).all()):
                return values
            pos = torch.searchsorted(have, gs).clamp_max(have.numel() - 1)
            if bool((have[pos] == gs).all()):
                return values[pos]
        c = self.c[dtype][gs]
        values = torch.cat([c[..., i : i + 1] * c[..., i:] for i in range(self.r)], -1)
        self._outer[dtype] = (gs, values)
        return values


class _Blocks:
    r"""Rows sorted by basis, packed into one padded block per basis whose
    size is a power of two; blocks of one size form one batched product."""

    def __init__(
        self,
        grp: Tensor,
        bases: _Bases,
        dtypes: Sequence[torch.dtype],
        gram_dtype: Optional[torch.dtype],
    ) -> None:
        n_rows = grp.shape[0]
        k = bases.real.shape[0]
        self.n_rows, self.n, self.r = n_rows, bases.n, bases.r
        self.unpack = bases.unpack
        counts = torch.bincount(grp, minlength=k)
        starts = torch.cumsum(counts, 0) - counts
        caps = torch.zeros_like(counts)
        nz = counts > 0
        caps[nz] = 2 ** torch.ceil(torch.log2(counts[nz].double())).long()
        self.blocks = []
        # the outer products of every basis of a large block, built at once
        big = (caps >= OUTER_MIN_ROWS).nonzero().flatten()
        outer_big: Optional[Tensor] = None
        where = torch.zeros_like(caps)
        if gram_dtype is not None and big.numel() > 0:
            outer_big = bases.outer(gram_dtype, big)
            where[big] = torch.arange(big.numel(), device=big.device)
        for cap in torch.unique(caps[nz]).tolist():
            gs = (caps == cap).nonzero().flatten()
            t = torch.arange(cap, device=grp.device)
            ridx = torch.where(t < counts[gs, None], starts[gs, None] + t, n_rows)
            whole = gs.numel() == k  # every basis, in order: no copies
            cs = {d: bases.c[d] if whole else bases.c[d][gs] for d in dtypes}
            outer = None
            if outer_big is not None and cap >= OUTER_MIN_ROWS:
                same = gs.numel() == big.numel()  # all large blocks: no copy
                outer = outer_big if same else outer_big[where[gs]]
            self.blocks.append((ridx, cs, outer))
        # every basis has the same power-of-two number of rows: plain views
        self.dense = len(self.blocks) == 1 and bool((counts == caps.max()).all())

    def _apply(self, v: Tensor, width: int, fn: Callable[..., Tensor]) -> Tensor:
        if self.dense:
            ridx, cs, outer = self.blocks[0]
            shape = ridx.shape + (v.shape[-1],)
            return fn(v.view(shape), cs, outer).reshape(self.n_rows, width)
        vp = torch.cat([v, v.new_zeros(1, v.shape[1])])
        out = v.new_empty(self.n_rows + 1, width)
        for ridx, cs, outer in self.blocks:
            res = fn(vp[ridx], cs, outer).reshape(-1, width)
            out.index_copy_(0, ridx.flatten(), res)
        return out[: self.n_rows]

    def left(self, lam: Tensor) -> Tensor:
        r"""``C λ`` of every row: (N, r) -> (N, n)."""
        return self._apply(
            lam, self.n, lambda v, cs, o: v @ cs[v.dtype].transpose(-1, -2)
        )

    def right(self, y: Tensor) -> Tensor:
        r"""``Cᵀ y`` of every row: (N, n) -> (N, r)."""
        return self._apply(y, self.r, lambda v, cs, o: v @ cs[v.dtype])

    def gram(self, w: Tensor, unused: Tensor) -> Tensor:
        r"""``Cᵀ diag(w) C`` of every row, (N, n) -> (N, r, r), plus 1 on the
        diagonal of the unused columns."""
        r = self.r

        def fn(v: Tensor, cs: Dict[torch.dtype, Tensor], o: Optional[Tensor]) -> Tensor:
            if o is not None:
                packed = (v @ o).reshape(-1, o.shape[-1])
                if packed.dtype == torch.float64:
                    # gather: index_select of 8-byte elements along the last
                    # dimension took 3x as long on CPU (torch 2.13)
                    idx = self.unpack.expand(packed.shape[0], -1)
                    return torch.gather(packed, 1, idx)
                # (index_select along the last dim is much faster in 2-D)
                return packed.index_select(1, self.unpack)
            c = cs[v.dtype].unsqueeze(1)  # (bases, 1, n, r)
            return (v.unsqueeze(-1) * c).transpose(-1, -2) @ c

        mat = self._apply(w, r * r, fn).view(-1, r, r)
        mat.diagonal(dim1=-2, dim2=-1).add_(unused.to(mat.dtype))
        return mat


def _chol_solve(chol: Tensor, rhs: Tensor) -> Tensor:
    # two triangular solves: several times faster than cholesky_solve on CPU
    y = torch.linalg.solve_triangular(chol, rhs.unsqueeze(-1), upper=False)
    sol = torch.linalg.solve_triangular(chol.transpose(-1, -2), y, upper=True)
    return sol.squeeze(-1)


def _cholesky(
    mat: Tensor,
    ridge: float,
    rebuild: Optional[Callable[[Tensor], Tensor]] = None,
) -> Tensor:
    r"""Cholesky factor of ``mat + ridge I``; rows that fail get larger ridges
    (the matrices are PSD up to rounding, with eigenvalues at most 1).

    With ``rebuild`` (a function of row indices that returns those rows of
    ``mat`` again), ``mat`` is the caller's to give up: on CPU it is
    overwritten by the factor, and the rows that fail are rebuilt for their
    second try. A factorisation in place skips the new output tensor, whose
    first writes (fresh pages) cost about as much as the factorisation
    itself: 9,216 matrices of 33 x 33 in float32 took 29 instead of 52 ms.
    Without ``rebuild``, ``mat`` is left as it is."""
    in_place = rebuild is not None and mat.device.type == "cpu"
    work = mat if rebuild is not None else mat.clone()
    work.diagonal(dim1=-2, dim2=-1).add_(ridge)
    if in_place:
        # mat is symmetric: its transpose is the same matrix in the
        # column-major layout that LAPACK factors in place
        chol = work.mT
        info = torch.empty(work.shape[:-2], dtype=torch.int32, device=work.device)
        torch.linalg.cholesky_ex(chol, out=(chol, info))
    else:
        chol, info = torch.linalg.cholesky_ex(work)
    bad = (info != 0).nonzero().flatten()
    if bad.numel() == 0:
        return chol
    # in place, work holds partial factors now
    orig = rebuild(bad) if in_place and rebuild is not None else mat[bad]
    extra = max(ridge, torch.finfo(mat.dtype).eps)
    eye = torch.eye(mat.shape[-1], dtype=mat.dtype, device=mat.device)
    while bad.numel() > 0:
        extra *= 100.0
        if extra > 1.0:  # not a number: give up on these rows
            chol[bad] = eye
            break
        fix, info = torch.linalg.cholesky_ex(orig + extra * eye)
        chol[bad] = fix
        bad, orig = bad[info != 0], orig[info != 0]
    return chol


def _ridge_solve(mat: Tensor, rhs: Tensor, ridge: float) -> Tensor:
    r"""Minimum-norm-like solution of ``mat λ = rhs`` for symmetric PSD
    ``mat`` with eigenvalues in [0, 1], possibly singular: a ridge Cholesky
    factorisation plus iterative refinement, which converges to the
    pseudo-inverse solution on the range of ``mat``."""
    chol = _cholesky(mat, ridge)
    sol = _chol_solve(chol, rhs)
    for _ in range(3):
        sol = sol + _chol_solve(chol, rhs - (mat @ sol.unsqueeze(-1)).squeeze(-1))
    return sol


def _kkt(blocks: _Blocks, x: Tensor, y: Tensor, b: Tensor, support: Tensor) -> Tensor:
    primal = (blocks.right(x) - b).abs().amax(-1)
    dual = torch.where(support, 0.0, torch.relu(y)).amax(-1)
    station = torch.where(support, (x - y).abs(), 0.0).amax(-1)
    negative = torch.relu(-x).amax(-1)
    return torch.maximum(torch.maximum(primal, dual), torch.maximum(station, negative))


def _polish(
    bases: _Bases,
    grp: Tensor,
    support: Tensor,
    b: Tensor,
    lam0: Tensor,
    tol: float,
) -> Tuple[Tensor, Tensor, Tensor]:
    r"""Fix the support, solve ``C_Sᵀ C_S λ = b`` and return
    ``(x = (C λ)⁺ on S, λ, KKT residual)``, all in the answer's dtype.

    ``λ`` is the interior point's ``lam0`` plus the minimum-norm correction:
    when ``|S| < r`` the system is singular and its solutions differ along
    ``null(C_S)``, where the interior point's dual keeps ``(C λ)_j ≤ 0`` off
    the support (the pseudo-inverse solution need not). A guess that misses
    the tolerance ``tol`` is corrected by up to ``POLISH_STEPS`` active-set steps
    ``S ← {(C λ)_j > 0}`` (semismooth Newton steps on the dual from the
    polished point): a support guess from the interior point typically
    misses a few entries of 1e-10 or below, which these steps add."""
    dtype = bases.dtype
    unused_all = bases.unused[grp]
    lam0 = torch.where(unused_all, 0.0, lam0.to(dtype))
    best_x = torch.zeros_like(support, dtype=dtype)
    best_lam = lam0.clone()
    best_kkt = torch.full_like(b[:, 0], torch.inf)
    idx = torch.arange(grp.numel(), device=grp.device)
    for step in range(1 + POLISH_STEPS):
        blocks = _Blocks(grp[idx], bases, (dtype,), dtype)
        s = support.to(dtype)
        unused = unused_all[idx]
        mat = blocks.gram(s, unused)
        rhs = b[idx] - (mat @ lam0.unsqueeze(-1)).squeeze(-1)
        lam = lam0 + _ridge_solve(mat, rhs, ridge=1e3 * torch.finfo(dtype).eps)
        y = blocks.left(lam)
        x = torch.clamp(y * s, min=0.0)
        kkt = _kkt(blocks, x, y, b[idx], support)
        take = kkt < best_kkt[idx]
        put = idx[take]
        best_x[put], best_lam[put], best_kkt[put] = x[take], lam[take], kkt[take]
        new = (y > 0) & bases.real[grp[idx]]
        again = (best_kkt[idx] > tol) & (new != support).any(-1)
        if step == POLISH_STEPS or not bool(again.any()):
            break
        idx, support, lam0 = idx[again], new[again], lam[again]
    return best_x, best_lam, best_kkt


def _solve_rows(
    c: Tensor,
    col_mask: Tensor,
    b: Tensor,
    grp: Tensor,
    *,
    tol: float,
    max_iter: int,
    wdt: torch.dtype,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Interior-point solve of the rows ``b`` (N, r) with bases ``c[grp]``
    (rows sorted by ``grp``): (x, λ, KKT residual, iterations) per row."""
    n_rows = b.shape[0]
    n, r = c.shape[1], c.shape[2]
    dtype = c.dtype
    bases = _Bases(c, col_mask, wdt)
    out = (
        b.new_zeros(n_rows, n),
        b.new_zeros(n_rows, r),
        torch.full((n_rows,), torch.inf, dtype=dtype, device=c.device),
        torch.zeros(n_rows, dtype=torch.long, device=c.device),
    )
    rows = torch.arange(n_rows, device=c.device)
    start: Optional[Dict[str, Tensor]] = None
    for phase in (wdt, dtype) if wdt != dtype else (dtype,):
        handoff = _ipm(
            bases, b, grp, rows, start, phase, out,
            tol=tol, max_iter=max_iter, final=phase == dtype,
        )  # fmt: skip
        if handoff is None:
            break
        rows, start = handoff
    return out


def _ipm(
    bases: _Bases,
    b_all: Tensor,
    grp_all: Tensor,
    rows: Tensor,
    start: Optional[Dict[str, Tensor]],
    wdt: torch.dtype,
    out: Tuple[Tensor, Tensor, Tensor, Tensor],
    *,
    tol: float,
    max_iter: int,
    final: bool,
) -> Optional[Tuple[Tensor, Dict[str, Tensor]]]:
    r"""Mehrotra predictor-corrector iterations in ``wdt`` on ``rows`` (indices
    into ``b_all``, ``grp_all`` and the outputs ``out``), polishing in the
    answer's dtype. Unless ``final``, returns the rows to continue in the
    answer's dtype with their restart points, or None."""
    out_x, out_lam, out_kkt, out_it = out
    dtype = bases.dtype
    tiny = torch.finfo(wdt).tiny
    grp = grp_all[rows]
    real = bases.real[grp]
    st: Dict[str, Tensor] = {
        "rows": rows,
        "grp": grp,
        "b64": b_all[rows],
        "real": real,
        "unused": bases.unused[grp],
        "count": real.sum(-1).clamp_min(1).to(wdt),
    }
    st["b"] = st["b64"].to(wdt)
    st["rank"] = (~st["unused"]).sum(-1)
    blocks = _Blocks(grp, bases, (wdt, dtype), wdt)
    # Start (START_DUAL): x the projection C b shifted into the interior,
    # λ = b (so C λ is that projection) and z the shift plus a multiple of x.
    realw, count = real.to(wdt), st["count"][:, None]
    x0 = blocks.left(st["b"])
    x_start = x0 + torch.clamp(-1.5 * x0.amin(-1, keepdim=True), min=0.0)
    x_start = (x_start + 1.0 / count) * realw
    z_start = x_start - x0 + START_DUAL * x_start  # x0 is 0 on padding
    if start is None:
        st["x"], st["z"], st["lam"] = x_start, z_start, st["b"].clone()
        st["its"] = torch.zeros_like(rows)
    else:
        ok = start["ok"][:, None]
        st["x"] = torch.where(ok, start["x"].to(wdt), x_start)
        st["z"] = torch.where(ok, start["z"].to(wdt), z_start)
        st["lam"] = torch.where(ok, start["lam"].to(wdt), st["b"])
        st["its"] = start["its"]
    st["it0"] = st["its"].clone()
    st["tried"] = torch.zeros_like(real)  # the last polished support
    st["last"] = torch.zeros_like(real)  # the last iteration's support guess
    st["frozen"] = torch.zeros_like(rows, dtype=torch.bool)
    if not final:
        for key in ("x", "z", "lam"):
            st["snap_" + key] = st[key].clone()
        st["snapped"] = torch.zeros_like(st["frozen"])
    leaving: List[Dict[str, Tensor]] = []
    n_built = rows.numel()

    def retire(st: Dict[str, Tensor], gone: Tensor) -> None:
        # Rows leave the batch: frozen ones continue in the next phase; the
        # others that never met the tolerance keep their best polished
        # point, or, never polished, the last iterate.
        hand = gone & st["frozen"]
        if bool(hand.any()):
            leaving.append(
                {
                    "rows": st["rows"][hand],
                    "x": st["snap_x"][hand],
                    "z": st["snap_z"][hand],
                    "lam": st["snap_lam"][hand],
                    "ok": st["snapped"][hand],
                    "its": st["its"][hand],
                }
            )
        unmet = gone & ~st["frozen"] & (out_kkt[st["rows"]] > tol)
        if not bool(unmet.any()):
            return
        idx = unmet.nonzero().flatten()
        o = st["rows"][idx]
        out_it[o] = st["its"][idx]
        fresh = ~torch.isfinite(out_kkt[o])
        if bool(fresh.any()):  # never polished: the interior point itself
            idx, o = idx[fresh], o[fresh]
            blk = _Blocks(st["grp"][idx], bases, (dtype,), None)
            xi, li = st["x"][idx].to(dtype), st["lam"][idx].to(dtype)
            out_x[o], out_lam[o] = xi, li
            out_kkt[o] = _kkt(blk, xi, blk.left(li), st["b64"][idx], xi > 0)

    while True:
        x, z, lam, real = st["x"], st["z"], st["lam"], st["real"]
        realw, count = real.to(wdt), st["count"][:, None]
        y = blocks.left(lam)
        rd = (x - y - z) * realw
        rp = blocks.right(x) - st["b"]
        mu = (x * z).sum(-1) / st["count"]
        gap = mu * st["count"] ** 2
        live = (out_kkt[st["rows"]] > tol) & ~st["frozen"]
        # Polish every new support guess once the gap is small; one far
        # short of the rank (POLISH_MAX_DEFICIT) only once it is the same as
        # the last iteration's.
        support = (x > z) & real
        cand = live & (gap < POLISH_GAP) & (support != st["tried"]).any(-1)
        far = st["rank"] - support.sum(-1) > POLISH_MAX_DEFICIT
        cand = cand & ~(far & (support != st["last"]).any(-1))
        st["last"] = support
        if bool(cand.any()):
            idx = cand.nonzero().flatten()
            xp, lp, kp = _polish(
                bases, st["grp"][idx], support[idx], st["b64"][idx], lam[idx], tol
            )
            st["tried"][idx] = support[idx]
            o = st["rows"][idx]
            better = (kp < out_kkt[o]).nonzero().flatten()
            o = o[better]
            out_x[o], out_lam[o], out_kkt[o] = xp[better], lp[better], kp[better]
            out_it[o] = st["its"][idx[better]]
            live = (out_kkt[st["rows"]] > tol) & ~st["frozen"]
        if wdt == dtype:
            # The iterate itself, cut to its support: on degenerate rows
            # (|S| < r, entries of 1e-14) it certifies where the polish's
            # re-solve is ill-conditioned.
            cand = live & (gap < POLISH_GAP)
            if bool(cand.any()):
                idx = cand.nonzero().flatten()
                sup, yi = support[idx], y[idx]
                xi = torch.where(sup, torch.clamp(yi, min=0.0), 0.0)
                blk = _Blocks(st["grp"][idx], bases, (dtype,), None)
                ki = _kkt(blk, xi, yi, st["b64"][idx], sup)
                o = st["rows"][idx]
                better = (ki < out_kkt[o]).nonzero().flatten()
                o = o[better]
                out_x[o], out_lam[o], out_kkt[o] = (
                    xi[better],
                    lam[idx[better]],
                    ki[better],
                )
                out_it[o] = st["its"][idx[better]]
                live = (out_kkt[st["rows"]] > tol) & ~st["frozen"]
        finite = torch.isfinite(x).all(-1) & torch.isfinite(z).all(-1)
        finite = finite & torch.isfinite(lam).all(-1) & torch.isfinite(mu)
        budget = st["its"] < max_iter
        if not final:
            # keep the last iterate that float32 still follows well
            take = ~st["snapped"] & finite & (gap >= SNAPSHOT_GAP)
            for key, val in (("x", x), ("z", z), ("lam", lam)):
                st["snap_" + key] = torch.where(take[:, None], val, st["snap_" + key])
            st["snapped"] = st["snapped"] | (finite & (gap < SNAPSHOT_GAP))
            leave = ~finite | (gap < SWITCH_GAP)
            leave = leave | (st["its"] - st["it0"] >= SWITCH_ITERS)
            # near one-hot rows: on to float64 from their restart point
            leave = leave | (st["snapped"] & (x.amax(-1) > PEAK_SWITCH))
            st["frozen"] = st["frozen"] | (live & budget & leave)
        active = live & budget & finite & ~st["frozen"]
        if not bool(active.any()):
            break
        if int(active.sum()) < 0.75 * n_built:
            retire(st, ~active)
            keep = active.nonzero().flatten()
            st = {key: val[keep] for key, val in st.items()}
            x, z, lam, real = st["x"], st["z"], st["lam"], st["real"]
            realw, count = real.to(wdt), st["count"][:, None]
            y, rd, rp, mu = y[keep], rd[keep], rp[keep], mu[keep]
            active = active[keep]
            blocks = _Blocks(st["grp"], bases, (wdt, dtype), wdt)
            n_built = keep.numel()
        # Newton system (Cᵀ D C) dλ = Cᵀ D t − rp with D = x / (x + z).
        dvec = torch.where(real, x / (x + z).clamp_min(tiny), 0.0)
        mat = blocks.gram(dvec, st["unused"])

        def rebuild(idx: Tensor) -> Tensor:
            blk = _Blocks(st["grp"][idx], bases, (wdt,), None)
            return blk.gram(dvec[idx], st["unused"][idx])

        chol = _cholesky(mat, IPM_RIDGE * torch.finfo(wdt).eps, rebuild)
        xs = torch.where(real, x.clamp_min(tiny), 1.0)
        zs = torch.where(real, z.clamp_min(tiny), 1.0)

        def direction(rc: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
            t = rd + rc / xs
            dl = _chol_solve(chol, blocks.right(dvec * t) - rp)
            dx = dvec * (blocks.left(dl) - t)
            dz = (-rc - z * dx) / xs * realw
            return dx, dl, dz

        dx, dl, dz = direction(x * z)  # predictor
        ap, ad = _step_length(xs, dx), _step_length(zs, dz)
        mu_aff = ((x + ap[:, None] * dx) * (z + ad[:, None] * dz)).sum(-1)
        sigma = (mu_aff / st["count"] / mu.clamp_min(tiny)).clamp(0.0, 1.0) ** 3
        dx, dl, dz = direction((x * z + dx * dz - (sigma * mu)[:, None]) * realw)
        act = active.to(wdt)
        ap = act * (0.995 * _step_length(xs, dx))
        ad = act * (0.995 * _step_length(zs, dz))
        # one step length for all variables after COMMON_STEP_AFTER iterations
        late = st["its"] >= COMMON_STEP_AFTER
        both = torch.minimum(ap, ad)
        ap, ad = torch.where(late, both, ap), torch.where(late, both, ad)
        # rounding must never take a coordinate to 0
        st["x"] = torch.maximum(x + ap[:, None] * dx, 1e-3 * x) * realw
        st["z"] = torch.maximum(z + ad[:, None] * dz, 1e-3 * z) * realw
        st["lam"] = lam + ad[:, None] * dl
        st["its"] = st["its"] + active.long()
    retire(st, torch.ones_like(st["frozen"]))
    if not leaving:
        return None
    handoff = {key: torch.cat([d[key] for d in leaving]) for key in leaving[0]}
    order = torch.argsort(handoff["rows"])  # keep the rows sorted by basis
    handoff = {key: val[order] for key, val in handoff.items()}
    return handoff.pop("rows"), handoff


def _step_length(v: Tensor, dv: Tensor) -> Tensor:
    r"""The largest step ``a <= 1`` with ``v + a dv >= 0``, per row, for
    ``v > 0`` (padding: ``v = 1``, ``dv = 0``): ``1 / max(1, max_j -dv_j/v_j)``,
    two passes over the rows instead of the five of a masked ratio test."""
    return 1.0 / torch.clamp(-(dv / v).amin(-1), min=1.0)
