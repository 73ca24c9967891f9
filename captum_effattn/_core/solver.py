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
``x = max(0, Cλ)``. :func:`min_norm_simplex_solve` runs a damped semismooth
Newton method on that dual, batched over rows and heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "head_bases",
    "min_norm_simplex_solve",
    "SolverInfo",
]


def _default_rtol(n: int, k: int, dtype: torch.dtype) -> float:
    # The usual numerical-rank tolerance (as in numpy.linalg.matrix_rank).
    return max(n, k) * torch.finfo(dtype).eps


def head_bases(
    values: Tensor,
    w_out: Tensor,
    key_mask: Tensor,
    rtol: Optional[float] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    r"""Orthonormal bases of ``col(T)`` and ``col([T, 1])`` for every head.

    ``T = V_h W_O,h`` is never formed: with the thin SVD
    ``W_O,h = P Σ Qᵀ`` one has ``T = (V_h P Σ) Qᵀ`` and ``Q`` has orthonormal
    columns, so ``M = V_h P Σ`` (n x d_h) has exactly the singular values and
    left singular vectors of ``T``. This needs no full-rank assumption on
    ``W_O,h`` and works on a matrix d/d_h times narrower than ``T``.

    Args:
        values (Tensor): value vectors, shape ``(..., n, d_h)``.
        w_out (Tensor): per-head output projections, shape ``(..., d_h, d)``,
                    broadcastable against ``values``' leading dimensions.
        key_mask (Tensor): bool ``(..., n)``, True for real tokens. Rows of the
                    bases at masked positions are exactly zero.
        rtol (float, optional): relative tolerance on singular values for the
                    numerical rank. Default: ``max(n, d_h) * eps(dtype)``.

    Returns:
        (U, C, col_mask): ``U`` ``(..., n, d_h)`` orthonormal basis of
        ``col(T)`` padded with zero columns, ``C`` ``(..., n, d_h + 1)`` the
        basis of ``col([T, 1])`` (``U`` plus the normalised part of the
        ones vector outside ``col(T)``), and ``col_mask`` ``(..., d_h + 1)``
        bool, True for the columns of ``C`` that are in use.
    """
    dtype = values.dtype
    mask = key_mask.to(dtype).unsqueeze(-1)
    p, sigma, _ = torch.linalg.svd(w_out, full_matrices=False)
    m = (values * mask) @ (p * sigma.unsqueeze(-2))
    u, s, _ = torch.linalg.svd(m, full_matrices=False)
    n, dh = m.shape[-2], m.shape[-1]
    tol = rtol if rtol is not None else _default_rtol(n, dh, dtype)
    keep = s > tol * s[..., :1].clamp_min(torch.finfo(dtype).tiny)
    u = u * keep.unsqueeze(-2).to(dtype) * mask
    ones = key_mask.to(dtype)
    resid = ones - (u @ (u.transpose(-1, -2) @ ones.unsqueeze(-1))).squeeze(-1)
    resid = resid - (u @ (u.transpose(-1, -2) @ resid.unsqueeze(-1))).squeeze(-1)
    norm = resid.norm(dim=-1, keepdim=True)
    count = ones.sum(-1, keepdim=True).clamp_min(1.0)
    has_one = norm > (tol if rtol is not None else 1e3 * torch.finfo(dtype).eps) * count.sqrt()
    u_one = torch.where(has_one, resid / norm.clamp_min(torch.finfo(dtype).tiny), 0.0)
    c = torch.cat([u, u_one.unsqueeze(-1)], dim=-1)
    col_mask = torch.cat([keep, has_one], dim=-1)
    return u, c, col_mask


@dataclass
class SolverInfo:
    r"""Per-row diagnostics of :func:`min_norm_simplex_solve`.

    Attributes:
        kkt_residual (Tensor): the largest violation of the KKT conditions of
                    the returned point: primal ``‖Cᵀx − b‖∞``, dual
                    feasibility ``max_j∉S (Cλ)_j⁺`` on the zero set, and
                    stationarity ``max_j∈S |x_j − (Cλ)_j|`` on the support.
        iterations (Tensor): interior-point iterations of each row (0 when
                    the projection was already non-negative).
        converged (Tensor): bool, ``kkt_residual <= tol``.
    """

    kkt_residual: Tensor
    iterations: Tensor
    converged: Tensor


def min_norm_simplex_solve(
    c: Tensor,
    b: Tensor,
    col_mask: Optional[Tensor] = None,
    *,
    tol: float = 1e-12,
    max_iter: int = 60,
    max_chunk_bytes: int = 256 * 2**20,
) -> Tuple[Tensor, Tensor, SolverInfo]:
    r"""Solve ``min ½‖x‖² s.t. Cᵀx = b, x ≥ 0`` for many rows sharing bases.

    Rows whose projection ``C b`` is already non-negative are done at once.
    The others go through a batched primal-dual interior-point method
    (Mehrotra predictor-corrector). Its normal matrix ``Cᵀ D C`` with
    ``D = diag(x / (x + z))`` is positive definite because ``C`` has
    orthonormal columns, so the method is robust to the degenerate rows
    (support smaller than ``r``) that trip up a semismooth Newton method on
    the dual. It is formed for all rows of a group as one matrix product with
    the outer products ``c_j c_jᵀ``. The interior point is then *polished*:
    the support ``S = {x_j > z_j}`` is fixed, the equality-constrained
    minimum-norm problem on ``S`` is solved directly, which gives exact zeros
    off the support, and the polished point is kept whenever its KKT
    residual is smaller.

    Positions with ``c_j = 0`` (padding) get ``x_j = 0``.

    Args:
        c (Tensor): orthonormal bases, shape ``(G, n, r)``; zero columns are
                    allowed when ``col_mask`` marks them.
        b (Tensor): right-hand sides, shape ``(G, m, r)`` (``m`` rows per basis).
        col_mask (Tensor, optional): bool ``(G, r)``, columns of ``c`` in use.
                    Default: all.
        tol (float, optional): target KKT residual. Default: 1e-12
        max_iter (int, optional): interior-point iterations at most.
                    Default: 60
        max_chunk_bytes (int, optional): memory budget of one chunk of
                    groups. Default: 256 MiB

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
    if col_mask is None:
        col_mask = torch.ones(g, r, dtype=torch.bool, device=c.device)
    b = b * col_mask.unsqueeze(-2).to(b.dtype)
    lam = b.clone()
    x = lam @ c.transpose(-1, -2)
    res = torch.where(x.amin(-1) >= 0, 0.0, torch.inf)
    x = torch.relu(x)
    res = torch.maximum(res, (x @ c - b).abs().amax(-1))
    iters = torch.zeros(g, m, dtype=torch.long, device=c.device)
    todo = (res > tol).any(-1).nonzero().flatten()
    per_group = c.element_size() * (n * r * r + 3 * m * r * r + 12 * m * n + 12 * m * r)
    chunk = max(1, int(max_chunk_bytes // max(per_group, 1)))
    for start in range(0, todo.numel(), chunk):
        idx = todo[start : start + chunk]
        x_c, lam_c, res_c, it_c = _interior_point(
            c[idx], b[idx], col_mask[idx], tol=tol, max_iter=max_iter
        )
        # Rows already exact at the start keep their closed-form answer.
        done = (res[idx] <= tol).unsqueeze(-1)
        x[idx] = torch.where(done, x[idx], x_c)
        lam[idx] = torch.where(done, lam[idx], lam_c)
        res[idx] = torch.where(done.squeeze(-1), res[idx], res_c)
        iters[idx] = torch.where(done.squeeze(-1), iters[idx], it_c)
    info = SolverInfo(kkt_residual=res, iterations=iters, converged=res <= tol)
    return x, lam, info


def _kkt(x: Tensor, lam: Tensor, c: Tensor, b: Tensor, support: Tensor) -> Tensor:
    y = lam @ c.transpose(-1, -2)
    primal = (x @ c - b).abs().amax(-1)
    dual = torch.where(support, 0.0, torch.relu(y)).amax(-1)
    station = torch.where(support, (x - y).abs(), 0.0).amax(-1)
    negative = torch.relu(-x).amax(-1)
    return torch.maximum(torch.maximum(primal, dual), torch.maximum(station, negative))


def _ridge_solve(mat: Tensor, rhs: Tensor, ridge: float = 1e-11) -> Tensor:
    r"""Minimum-norm-like solution of ``mat λ = rhs`` for symmetric PSD
    ``mat`` with eigenvalues in [0, 1], possibly singular: a ridge Cholesky
    factorisation plus iterative refinement, which converges to the
    pseudo-inverse solution on the range of ``mat`` (much faster than a
    batched least-squares solver)."""
    eye = torch.eye(mat.shape[-1], dtype=mat.dtype, device=mat.device)
    chol = torch.linalg.cholesky(mat + ridge * eye)
    rhs = rhs.unsqueeze(-1)
    sol = torch.cholesky_solve(rhs, chol)
    for _ in range(3):
        sol = sol + torch.cholesky_solve(rhs - mat @ sol, chol)
    return sol.squeeze(-1)


def _interior_point(
    c: Tensor, b: Tensor, col_mask: Tensor, *, tol: float, max_iter: int
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    k, n, r = c.shape
    m = b.shape[1]
    dtype = c.dtype
    ct = c.transpose(-1, -2)
    outer = (c.unsqueeze(-1) * c.unsqueeze(-2)).reshape(k, n, r * r)
    real = (c.abs().amax(-1) > 0).unsqueeze(-2).to(dtype)  # (k, 1, n)
    count = real.sum(-1, keepdim=True).clamp_min(1.0)  # (k, 1, 1)
    unused = torch.diag_embed(1.0 - col_mask.to(dtype)).unsqueeze(1)  # (k,1,r,r)
    eps = torch.finfo(dtype).eps
    # Starting point: the projection shifted into the interior.
    x0 = b @ ct
    shift = torch.clamp(-1.5 * x0.amin(-1, keepdim=True), min=0.0) + 1.0 / count
    x = (x0 + shift) * real
    z = torch.full_like(x, 1.0) / count * real
    lam = torch.zeros_like(b)
    iters = torch.zeros(k, m, dtype=torch.long, device=c.device)
    tiny = torch.finfo(dtype).tiny

    def newton_dir(dmat_chol, dvec, rd, rp, rc):
        # Solve: dx - C dl - dz = -rd ; C^T dx = -rp ; z dx + x dz = -rc
        xs = torch.where(real > 0, x, 1.0)
        t = rd + rc / xs
        rhs = -rp + ((dvec * t) @ c)
        dl = torch.cholesky_solve(rhs.unsqueeze(-1), dmat_chol).squeeze(-1)
        dx = dvec * ((dl @ ct) - t)
        dz = (-rc - z * dx) / xs * real
        return dx, dl, dz

    def step_len(v: Tensor, dv: Tensor) -> Tensor:
        ratio = torch.where(dv < 0, -v / torch.where(dv < 0, dv, -1.0), torch.inf)
        return torch.clamp(ratio.amin(-1), max=1.0)

    best_x = x * real
    best_lam = lam.clone()
    best_kkt = torch.full((k, m), torch.inf, dtype=dtype, device=c.device)

    def polish() -> None:
        # Fix a support guess, solve the equality-constrained problem on it
        # exactly (least squares handles rank-deficient supports); keep the
        # candidate with the smallest KKT residual. Weakly active coordinates
        # (x_j and z_j both ~ sqrt(mu)) make "x > z" ambiguous, hence a second,
        # more conservative guess.
        for support in (x > z, x > 1e3 * z):
            support = support & (real > 0)
            s = support.to(dtype)
            mat = (s @ outer).reshape(k, m, r, r) + unused
            lam_p = _ridge_solve(mat, b)
            x_p = torch.clamp((lam_p @ ct) * s, min=0.0)
            kkt_p = _kkt(x_p, lam_p, c, b, support)
            take = kkt_p < best_kkt
            best_kkt.copy_(torch.where(take, kkt_p, best_kkt))
            best_x.copy_(torch.where(take.unsqueeze(-1), x_p, best_x))
            best_lam.copy_(torch.where(take.unsqueeze(-1), lam_p, best_lam))

    for it in range(max_iter):
        rd = (x - lam @ ct - z) * real
        rp = x @ c - b
        mu = (x * z).sum(-1) / count.squeeze(-1)
        if it % 2 == 0 and bool((mu < 1e-6).any()):
            polish()
        active = best_kkt > tol
        if not bool(active.any()):
            break
        iters += active.long()
        dvec = torch.where(real > 0, x / (x + z).clamp_min(tiny), 0.0)
        mat = (dvec @ outer).reshape(k, m, r, r) + unused
        mat = mat + torch.eye(r, dtype=dtype, device=c.device) * (eps * 10)
        chol, info = torch.linalg.cholesky_ex(mat)
        if not bool((info == 0).all()):  # pragma: no cover - numerically lost rows
            mat = mat + torch.eye(r, dtype=dtype, device=c.device) * 1e-10
            chol = torch.linalg.cholesky(mat)
        # Predictor.
        dx, dl, dz = newton_dir(chol, dvec, rd, rp, x * z)
        ap = step_len(x, dx)
        ad = step_len(z, dz)
        mu_aff = ((x + ap.unsqueeze(-1) * dx) * (z + ad.unsqueeze(-1) * dz)).sum(-1)
        mu_aff = mu_aff / count.squeeze(-1)
        sigma = (mu_aff / mu.clamp_min(tiny)).clamp(0.0, 1.0) ** 3
        # Corrector.
        rc = (x * z + dx * dz - (sigma * mu).unsqueeze(-1)) * real
        dx, dl, dz = newton_dir(chol, dvec, rd, rp, rc)
        ap = (0.995 * step_len(x, dx)).clamp(max=1.0)
        ad = (0.995 * step_len(z, dz)).clamp(max=1.0)
        act = active.to(dtype)
        x = x + (act * ap).unsqueeze(-1) * dx
        z = z + (act * ad).unsqueeze(-1) * dz
        lam = lam + (act * ad).unsqueeze(-1) * dl
        x = torch.clamp(x, min=0.0) * real
        z = torch.clamp(z, min=0.0) * real
    polish()
    return best_x, best_lam, best_kkt, iters
