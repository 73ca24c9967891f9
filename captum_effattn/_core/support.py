r"""Necessity and sufficiency at the attention level.

Per head and query row, the tokens that efficient attention puts weight on
form a set ``S`` that is *sufficient at the head level by construction*: the
head's output is reproduced from the value vectors of ``S`` alone (that is
the certificate's output residual).
:func:`~captum_effattn.attention_support_test` checks
this and measures, at the model level, how much of the prediction survives
when every layer's raw attention is restricted to ``S`` (sufficiency) or to
its complement (necessity), complementing the token-deletion metrics of
:mod:`captum_effattn.metrics`, which act on the input instead.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from captum_effattn._core.adapters import ModelAdapter, eval_mode, holding_model_lock
from captum_effattn._core.functional import (
    Certificate,
    attention_weights,
    both_sides,
    efficient_attention,
    format_target,
    resolve_tol,
    warn_unmasked_padding,
)

__all__ = ["attention_support_test", "SupportTestResult"]


@dataclass
class SupportTestResult:
    r"""Result of :func:`attention_support_test` (one value per example
    unless said otherwise).

    Attributes:
        target (Tensor): the class whose probability is tracked.
        p_full (Tensor): its probability with the model's own attention
                    (softmax; sigmoid for a multi-label model).
        p_efficient (Tensor): with efficient attention swapped into every
                    layer tested, at the real query rows (equals ``p_full``:
                    output equivalence).
        p_support (Tensor): with the raw attention of every layer restricted
                    to the support of efficient attention and renormalised
                    (sufficiency: close to ``p_full`` is good).
        p_complement (Tensor): restricted to the complement of the support
                    (necessity: far from ``p_full`` is good). A row whose
                    support holds all its keys has no complement and keeps
                    its raw attention (every row of a text of at most
                    ``rank([T, 1])`` tokens, a decoder's first row), so such
                    a text has necessity 0.
        sufficiency (Tensor): ``p_full − p_support`` (lower is better).
        necessity (Tensor): ``p_full − p_complement`` (higher is better).
        support_fraction (Tensor): the share of the keys a row sees (the
                    real ones; in a decoder only those up to the row) that
                    are in the support, averaged over the layers tested,
                    heads and real query rows.
        certificate (Certificate): head-level check, one entry per layer
                    tested; its ``output_residual`` is the head-level
                    sufficiency residual of the support.
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


#: An entry of efficient attention is in the support when it exceeds this
#: many times the solver tolerance (1e-10 in float64, 1e-4 in float32), at
#: most ``SUPPORT_MAX_CUTOFF``, in heads whose rows the solver iterated on.
SUPPORT_TOL_FACTOR = 100.0
SUPPORT_MAX_CUTOFF = 1e-4


def _restrict(a: Tensor, keep: Tensor) -> Tensor:
    kept = a * keep
    total = kept.sum(-1, keepdim=True)
    # a row whose kept set is empty keeps the original row (nothing to renormalise)
    return torch.where(total > 0, kept / total.clamp_min(1e-300), a)


#: Keyword options that :func:`attention_support_test` hands to
#: :func:`efficient_attention`; any other keyword is a model input.
_SOLVER_OPTIONS = frozenset(inspect.signature(efficient_attention).parameters) - {
    "model",
    "input_ids",
    "attention_mask",
    "model_kwargs",
}


def _class_probabilities(output: Any, multi_label: bool = False) -> Tensor:
    r"""Class probabilities, in float64, of a classifier's (batch, classes)
    logits: their softmax, or with ``multi_label`` their sigmoid (each label
    on its own); a clear error for any other output."""
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
    if multi_label:
        return torch.sigmoid(logits.double())
    if logits.shape[-1] < 2:
        raise ValueError(
            "attention_support_test compares softmax probabilities, and a "
            "softmax over one output is always 1, so a single-logit model "
            f"(num_labels=1, logits of shape {tuple(logits.shape)}) would score "
            "0 everywhere; use a model with 2 or more classes (or, for "
            "independent labels, config.problem_type="
            "'multi_label_classification', whose probabilities are sigmoids)"
        )
    return torch.softmax(logits.double(), -1)


@holding_model_lock
def attention_support_test(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Optional[Tensor] = None,
    *,
    target: Optional[Union[int, Sequence[int], Tensor]] = None,
    objective: str = "min_norm",
    layers: Optional[Union[int, Sequence[int]]] = None,
    **options: Any,
) -> SupportTestResult:
    r"""Attention-level necessity and sufficiency of efficient attention's
    support, in every layer at once (or in the layers named).

    Only the real (unpadded) query rows are replaced; padded rows keep the
    model's own attention, so that a left-padded encoder, whose classifier
    may read position 0, keeps its prediction under efficient attention.

    The probabilities are the softmax of the logits, except for a
    multi-label model (``config.problem_type ==
    "multi_label_classification"``, as Hugging Face's loss reads it), whose
    labels are independent: there each label's probability is the sigmoid
    of its logit, and ``target`` picks a label.

    Args:
        model (nn.Module): a supported classifier (eager attention) returning
                    ``.logits``.
        input_ids (Tensor): token ids (batch, seq).
        attention_mask (Tensor, optional): (batch, seq). Default: all ones.
        target (int, list or Tensor, optional): class per example (one int
                    for all). Default: the predicted class (for a
                    multi-label model, the most probable label).
        objective (str, optional): ``"min_norm"`` or ``"sparse"`` efficient
                    attention. Default: ``"min_norm"``
        layers (int or list of int, optional): the layers whose attention is
                    replaced or restricted; the others keep the model's
                    attention. Default: all layers.
        **options: further options of :func:`efficient_attention` (``dtype``,
                    ``tol``...; not ``rows``: every row of a layer is
                    replaced, so every row is solved) and further keyword
                    inputs of the model (``token_type_ids``,
                    ``position_ids``...), which every forward pass of the test
                    receives.

    Returns:
        :class:`SupportTestResult`; its ``certificate`` has one entry per
        layer tested, in the order of ``layers``.

    Raises:
        TypeError: the model's output has no (batch, classes) ``logits``, or
                    ``target`` holds no integer classes.
        ValueError: ``rows`` given, ``target`` out of range or not one class
                    per example, a model with a single output
                    (``num_labels=1``), whose softmax is always 1, unless it
                    is multi-label, or a regression model
                    (``config.problem_type == "regression"``), whose outputs
                    are no probabilities.

    Examples::

        >>> from captum_effattn import attention_support_test
        >>> res = attention_support_test(model, ids, mask, objective="sparse")
        >>> res.sufficiency, res.necessity
    """
    if "rows" in options:
        raise ValueError(
            "attention_support_test replaces whole attention matrices, so it "
            "solves every query row: rows= is not supported (use "
            "efficient_attention(..., rows=...) for selected rows)"
        )
    if "return_certificate" in options:
        raise ValueError(
            "attention_support_test always returns its certificate (the "
            "result's .certificate): return_certificate= is not an option here"
        )
    model_kwargs: Dict[str, Any] = {
        k: v for k, v in options.items() if k not in _SOLVER_OPTIONS
    }
    adapter = ModelAdapter(model)
    mask = attention_mask
    if mask is None and isinstance(input_ids, Tensor):  # else refused below
        pad_id = getattr(adapter.model.config, "pad_token_id", None)
        warn_unmasked_padding(input_ids, pad_id, "attention_mask=")
        mask = torch.ones_like(input_ids)
    problem = getattr(adapter.model.config, "problem_type", None)
    if problem == "regression":
        raise ValueError(
            "attention_support_test compares class probabilities, and a "
            "regression model (config.problem_type='regression') outputs "
            "values, not logits; use a classifier"
        )
    multi_label = problem == "multi_label_classification"
    idx = adapter.layer_indices(layers)
    e, cert = efficient_attention(
        model,
        input_ids,
        mask,
        layers=idx,
        return_certificate=True,
        objective=objective,
        **options,
    )
    raw = attention_weights(
        model,
        input_ids,
        mask,
        layers=idx,
        dtype=e.dtype,
        device=e.device,
        **model_kwargs,
    )
    model = adapter.model  # without a DataParallel wrapper
    real = mask.bool().to(e.device)
    # the model's own passes on its device, whatever device= the algebra took
    model_device = next(model.parameters()).device
    input_ids, mask = input_ids.to(model_device), mask.to(model_device)

    def probs(matrices: Optional[Tensor]) -> Tensor:
        # the same inputs (token_type_ids, position_ids...) and eval mode as
        # the pass that efficient attention was computed from
        with torch.no_grad(), eval_mode(model):
            if matrices is None:
                out = model(input_ids=input_ids, attention_mask=mask, **model_kwargs)
            else:
                replaced = {layer: matrices[i] for i, layer in enumerate(idx)}
                with adapter.replace_attention(replaced, query_mask=real):
                    out = model(
                        input_ids=input_ids, attention_mask=mask, **model_kwargs
                    )
        return _class_probabilities(out, multi_label)

    p0 = probs(None)
    # one sigmoid output: by default the predicted side (1 - p for an
    # example predicted negative), as in the metrics
    two_sided = target is None and p0.shape[1] == 1

    def side(p: Tensor) -> Tensor:
        return both_sides(p) if two_sided else p

    p0 = side(p0)
    tgt = _targets(target, p0)
    batch = torch.arange(p0.shape[0], device=p0.device)
    # Entries within a few solver tolerances of 0 are not resolved by the
    # interior point (a solve of the same row with other rows beside it moves
    # them by 1e-12): counted as support, they made the complement of a row,
    # and so necessity, follow rounding noise. Heads whose rows all had a
    # closed form (a text of at most rank([T, 1]) tokens, where efficient
    # attention is the raw attention) keep every positive entry.
    cutoff = min(
        SUPPORT_TOL_FACTOR * resolve_tol(options.get("tol"), e.dtype),
        SUPPORT_MAX_CUTOFF,
    )
    iterated = (cert.iterations > 0)[..., None, None].to(e.device)  # (L, B, H)
    support = torch.where(iterated, e > cutoff, e > 0).to(e.dtype)
    # the keys each query row sees: the real ones (and j <= i in a decoder)
    keys = real[None, :, None, None, :].to(e.dtype)
    if adapter.causal:
        n = real.shape[1]
        keys = keys * torch.ones(n, n, device=e.device, dtype=e.dtype).tril()
    complement = (1.0 - support) * keys
    p_full = p0[batch, tgt]
    p_eff = side(probs(e))[batch, tgt]
    p_sup = side(probs(_restrict(raw, support)))[batch, tgt]
    p_comp = side(probs(_restrict(raw, complement)))[batch, tgt]
    qmask = real[None, :, None, :].to(e.dtype)  # (1, B, 1, N) real query rows
    frac = support.sum(-1) / keys.sum(-1).clamp_min(1.0)  # (L, B, H, N)
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


def _targets(
    target: Optional[Union[int, Sequence[int], Tensor]], probs: Tensor
) -> Tensor:
    r"""One class index per example: the predicted class when ``target`` is
    None, else ``target`` (one int for all, or one per example), checked."""
    b, classes = probs.shape
    if target is None:
        return probs.argmax(-1)
    return format_target(target, b, classes).to(probs.device)
