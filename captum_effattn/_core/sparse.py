r"""Sparse efficient attention: a vertex of the output-equivalent polytope.

The rows that are output-equivalent to an attention row ``a`` and are
probability distributions form the polytope
``P = {x ≥ 0 : Cᵀx = Cᵀa}`` (``C`` an orthonormal basis of ``col([T, 1])``).
Its vertices have at most ``rank([T, 1])`` non-zeros (Carathéodory).
:func:`caratheodory_reduce` walks from any point of ``P`` (we start from the
minimum-norm efficient attention) to a vertex: while the columns of
``C_Sᵀ`` on the support ``S`` are linearly dependent there is a direction
``d`` supported on ``S`` with ``C_Sᵀ d = 0``; moving along it until a
coordinate reaches zero keeps the row in ``P`` and shrinks the support by at
least one. The direction is the projection of the raw attention onto that
null space (plus a fixed tie-breaking jitter of 1e-3 · max(a)), so every
step increases ``⟨a + jitter, x⟩``, the agreement with the raw attention up
to that jitter. After the walk the support is fixed and the equality system is
solved once more on it, so the result is exact to rounding.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

__all__ = ["caratheodory_reduce"]


def _project_out(g: Tensor, c: Tensor, s: Tensor, ridge: float) -> Tensor:
    # d = g_S − C_S (C_Sᵀ C_S)⁺ C_Sᵀ g_S, supported on S, with C_Sᵀ d = 0.
    cs = c * s.unsqueeze(-1)
    gs = g * s
    mat = cs.transpose(-1, -2) @ cs
    eye = torch.eye(mat.shape[-1], dtype=mat.dtype, device=mat.device)
    chol = torch.linalg.cholesky(mat + ridge * eye)
    rhs = (gs.unsqueeze(-2) @ cs).transpose(-1, -2)
    coef = torch.cholesky_solve(rhs, chol)
    for _ in range(2):  # refinement: converges to the pseudo-inverse solution
        coef = coef + torch.cholesky_solve(rhs - mat @ coef, chol)
    return gs - (cs @ coef).squeeze(-1)


def caratheodory_reduce(
    x: Tensor,
    c: Tensor,
    a: Tensor,
    *,
    max_steps: int | None = None,
    zero_tol: float = 1e-12,
) -> Tuple[Tensor, Tensor]:
    r"""Reduce feasible rows to vertices of the output-equivalent polytope.

    Args:
        x (Tensor): feasible rows (..., n): ``x ≥ 0`` and ``Cᵀx = b``.
        c (Tensor): orthonormal bases (..., n, r) (zero rows at padding).
        a (Tensor): raw attention rows (..., n); the walk increases
                    ``⟨a + jitter, x⟩`` (see the module docstring).
        max_steps (int, optional): reduction steps at most. Default: n,
                    enough to reach a vertex (every step removes at least one
                    key). A walk stopped earlier is not at a vertex: its rows
                    may have more than ``rank(C)`` non-zeros.
        zero_tol (float, optional): entries below ``zero_tol · max(x)`` count
                    as zero. Default: 1e-12

    Returns:
        (vertices (..., n), support sizes (...)) in the dtype of ``x``. Every
        returned row has the same ``Cᵀx`` as the input row (up to rounding),
        is non-negative, and, with the default ``max_steps``, has at most
        ``rank(C)`` non-zeros. The walk runs
        in float64 whatever the input dtype: its ridges and thresholds are
        below float32's rounding, where the Cholesky factorisations of
        rank-deficient ``C_Sᵀ C_S`` fail.
    """
    out_dtype = x.dtype
    x, c, a = x.double(), c.double(), a.double()
    n = x.shape[-1]
    dtype = x.dtype
    ridge = 1e-12
    steps = n if max_steps is None else max_steps
    x = x.clone()
    s = (x > zero_tol * x.amax(-1, keepdim=True)).to(dtype)
    x = x * s
    b = (x.unsqueeze(-2) @ c).squeeze(-2)
    # A fixed, position-dependent tie-breaker makes the direction well defined
    # when the raw attention lies in col(C_S) (then its projection vanishes).
    # Positions count the row's real keys (non-zero rows of C), so that left
    # padding, which shifts them, does not move the vertex.
    real = c.abs().amax(-1) > 0
    pos = (real.cumsum(-1) - 1).clamp_min(0).to(dtype)
    jitter = 1e-3 * torch.cos(pos * 1.618) * a.amax(-1, keepdim=True)
    for _ in range(steps):
        d = _project_out(a + jitter, c, s, ridge)
        scale = d.abs().amax(-1, keepdim=True)
        moving = scale.squeeze(-1) > 1e-9 * x.amax(-1)
        if not bool(moving.any()):
            break
        d = torch.where(moving.unsqueeze(-1), d / scale.clamp_min(1e-300), 0.0)
        neg = (d < 0) & (s > 0)
        ratio = torch.where(neg, x / torch.where(neg, -d, 1.0), torch.inf)
        t, hit = ratio.min(-1)
        t = torch.where(moving & torch.isfinite(t), t, torch.zeros_like(t))
        x = torch.clamp(x + t.unsqueeze(-1) * d, min=0.0)
        hit = hit.unsqueeze(-1)
        kept = torch.where(moving.unsqueeze(-1), 0.0, x.gather(-1, hit))
        x = x.scatter(-1, hit, kept)  # the blocking coordinate is exactly 0
        s = s * (x > zero_tol * x.amax(-1, keepdim=True)).to(dtype)
        x = x * s
    # Exact solve on the final support: C_Sᵀ x_S = b has a unique solution
    # (the rows of C on a vertex's support are independent): x = C_S y with
    # (C_Sᵀ C_S) y = b, solved as in _project_out. The r x r system, not the
    # n x n one of C_S C_Sᵀ, which held an n x n matrix per row (13 GB per
    # copy for all rows of one layer of a 512-token MiniLM input).
    cs = c * s.unsqueeze(-1)
    mat = cs.transpose(-1, -2) @ cs  # (..., r, r)
    eye = torch.eye(mat.shape[-1], dtype=dtype, device=x.device)
    chol = torch.linalg.cholesky(mat + ridge * eye)
    rhs = b.unsqueeze(-1)
    coef = torch.cholesky_solve(rhs, chol)
    for _ in range(2):  # refinement: converges to the pseudo-inverse solution
        coef = coef + torch.cholesky_solve(rhs - mat @ coef, chol)
    sol = (cs @ coef).squeeze(-1) * s
    better = (sol.min(-1).values >= -1e-12) & (
        ((sol.unsqueeze(-2) @ c).squeeze(-2) - b).abs().amax(-1)
        <= ((x.unsqueeze(-2) @ c).squeeze(-2) - b).abs().amax(-1) + 1e-15
    )
    x = torch.where(better.unsqueeze(-1), torch.clamp(sol, min=0.0), x)
    return x.to(out_dtype), (x > 0).sum(-1)
