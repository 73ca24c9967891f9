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

import contextlib
import inspect
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Sequence, Union

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


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    r"""Run the block with ``model`` in eval mode (no dropout), then give every
    submodule back its own training flag."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


#: Keyword options that :func:`attention_support_test` hands to
#: :func:`efficient_attention`; any other keyword is a model input.
_SOLVER_OPTIONS = frozenset(inspect.signature(efficient_attention).parameters) - {
    "model",
    "input_ids",
    "attention_mask",
    "model_kwargs",
}


def _class_probabilities(output: Any) -> Tensor:
    r"""Softmax probabilities, in float64, of a classifier's (batch, classes)
    logits; a clear error for any other output."""
    logits = getattr(output, "logits", output)
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        got = (
            f"logits of shape {tuple(logits.shape)}"
            if isinstance(logits, Tensor)
            else f"a {type(output).__name__} without .logits"
        )
        raise TypeError(
            "attention_support_test needs a classifier whose output has "
            "(batch, classes) .logits, e.g. AutoModelForSequenceClassification; "
            f"got {got}"
        )
    if logits.shape[-1] < 2:
        raise ValueError(
            "attention_support_test compares softmax probabilities, and a "
            "softmax over one output is always 1, so a single-logit model "
            f"(num_labels=1, logits of shape {tuple(logits.shape)}) would score "
            "0 everywhere; use a model with 2 or more classes"
        )
    return torch.softmax(logits.double(), -1)


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
                    ``tol``...) and further keyword inputs of the model
                    (``token_type_ids``, ``position_ids``...), which every
                    forward pass of the test receives.

    Returns:
        :class:`SupportTestResult`.

    Raises:
        TypeError: the model's output has no (batch, classes) ``logits``, or
                    ``layers``/``rows`` were given.
        ValueError: the model has a single output (``num_labels=1``), whose
                    softmax is always 1.

    Examples::

        >>> from captum_effattn import attention_support_test
        >>> res = attention_support_test(model, ids, mask, objective="sparse")
        >>> res.sufficiency, res.necessity
    """
    for name in ("layers", "rows"):
        if name in options:
            raise TypeError(
                f"attention_support_test swaps efficient attention into every "
                f"row of every layer; it takes no {name}= option"
            )
    model_kwargs: Dict[str, Any] = {
        k: v for k, v in options.items() if k not in _SOLVER_OPTIONS
    }
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    e, cert = efficient_attention(
        model, input_ids, mask, return_certificate=True, objective=objective, **options
    )
    raw = attention_weights(
        model, input_ids, mask, dtype=e.dtype, device=e.device, **model_kwargs
    )
    adapter = ModelAdapter(model)
    model = adapter.model  # without a DataParallel wrapper
    layers = range(e.shape[0])

    def probs(matrices: Optional[Tensor]) -> Tensor:
        # the same inputs (token_type_ids, position_ids...) and eval mode as
        # the pass that efficient attention was computed from
        with torch.no_grad(), _eval_mode(model):
            if matrices is None:
                out = model(input_ids=input_ids, attention_mask=mask, **model_kwargs)
            else:
                with adapter.replace_attention({i: matrices[i] for i in layers}):
                    out = model(
                        input_ids=input_ids, attention_mask=mask, **model_kwargs
                    )
        return _class_probabilities(out)

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
