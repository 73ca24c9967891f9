r"""Necessity and sufficiency at the attention level.

Per head and query row, the tokens that efficient attention puts weight on
form a set ``S`` that is *sufficient at the head level by construction*: the
head's output is reproduced from the value vectors of ``S`` alone (that is
the certificate's output residual). :func:`attention_support_test` checks
this and measures, at the model level, how much of the prediction survives
when every layer's raw attention is restricted to ``S`` (sufficiency) or to
its complement (necessity), complementing the token-deletion metrics of
:mod:`captum_effattn.metrics`, which act on the input instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from captum_effattn._core.adapters import ModelAdapter
from captum_effattn._core.functional import (
    Certificate,
    attention_weights,
    efficient_attention,
)

__all__ = ["attention_support_test", "SupportTestResult"]


@dataclass
class SupportTestResult:
    r"""Result of :func:`attention_support_test` (one value per example
    unless said otherwise).

    Attributes:
        target (Tensor): the class whose probability is tracked.
        p_full (Tensor): its probability with the model's own attention.
        p_efficient (Tensor): with efficient attention swapped into every
                    layer (equals ``p_full``: output equivalence).
        p_support (Tensor): with the raw attention of every layer restricted
                    to the support of efficient attention and renormalised
                    (sufficiency: close to ``p_full`` is good).
        p_complement (Tensor): restricted to the complement of the support
                    (necessity: far from ``p_full`` is good).
        sufficiency (Tensor): ``p_full − p_support`` (lower is better).
        necessity (Tensor): ``p_full − p_complement`` (higher is better).
        support_fraction (Tensor): mean fraction of real keys in the support.
        certificate (Certificate): head-level check; its ``output_residual``
                    is the head-level sufficiency residual of the support.
    """

    target: Tensor
    p_full: Tensor
    p_efficient: Tensor
    p_support: Tensor
    p_complement: Tensor
    sufficiency: Tensor
    necessity: Tensor
    support_fraction: Tensor
    certificate: Certificate


def _restrict(a: Tensor, keep: Tensor) -> Tensor:
    kept = a * keep
    total = kept.sum(-1, keepdim=True)
    # a row whose kept set is empty keeps the original row (nothing to renormalise)
    return torch.where(total > 0, kept / total.clamp_min(1e-300), a)


def attention_support_test(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Optional[Tensor] = None,
    *,
    target: Optional[Union[int, Sequence[int], Tensor]] = None,
    objective: str = "min_norm",
    **options: Any,
) -> SupportTestResult:
    r"""Attention-level necessity and sufficiency of efficient attention's
    support, in every layer at once.

    Args:
        model (nn.Module): a supported classifier (eager attention) returning
                    ``.logits``.
        input_ids (Tensor): token ids (batch, seq).
        attention_mask (Tensor, optional): (batch, seq). Default: all ones.
        target (int, list or Tensor, optional): class per example.
                    Default: the predicted class.
        objective (str, optional): ``"min_norm"`` or ``"sparse"`` efficient
                    attention. Default: ``"min_norm"``
        **options: further options of :func:`efficient_attention` (``dtype``,
                    ``tol``...).

    Returns:
        :class:`SupportTestResult`.

    Examples::

        >>> from captum_effattn import attention_support_test
        >>> res = attention_support_test(model, ids, mask, objective="sparse")
        >>> res.sufficiency, res.necessity
    """
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    e, cert = efficient_attention(
        model, input_ids, mask, return_certificate=True, objective=objective, **options
    )
    raw = attention_weights(model, input_ids, mask, dtype=e.dtype)
    adapter = ModelAdapter(model)
    model = adapter.model  # without a DataParallel wrapper
    layers = range(e.shape[0])

    def probs(matrices: Optional[Tensor]) -> Tensor:
        with torch.no_grad():
            if matrices is None:
                logits = model(input_ids=input_ids, attention_mask=mask).logits
            else:
                with adapter.replace_attention({i: matrices[i] for i in layers}):
                    logits = model(input_ids=input_ids, attention_mask=mask).logits
        return torch.softmax(logits.double(), -1)

    p0 = probs(None)
    if target is None:
        tgt = p0.argmax(-1)
    else:
        tgt = torch.as_tensor(target, device=p0.device).long().expand(p0.shape[0])
    rows = torch.arange(p0.shape[0], device=p0.device)
    support = (e > 0).to(e.dtype)
    real = mask.bool().to(e.device)
    keys = real[None, :, None, None, :].to(e.dtype)
    complement = (1.0 - support) * keys
    p_full = p0[rows, tgt]
    p_eff = probs(e)[rows, tgt]
    p_sup = probs(_restrict(raw, support))[rows, tgt]
    p_comp = probs(_restrict(raw, complement))[rows, tgt]
    qmask = real[None, :, None, :].to(e.dtype)  # (1, B, 1, N) real query rows
    frac = support.sum(-1) / keys.sum(-1)  # (L, B, H, N)
    count = qmask.sum((0, 2, 3)) * e.shape[0] * e.shape[2]
    frac = (frac * qmask).sum((0, 2, 3)) / count
    return SupportTestResult(
        target=tgt,
        p_full=p_full,
        p_efficient=p_eff,
        p_support=p_sup,
        p_complement=p_comp,
        sufficiency=p_full - p_sup,
        necessity=p_full - p_comp,
        support_fraction=frac,
        certificate=cert,
    )
