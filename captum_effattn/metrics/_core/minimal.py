r"""Minimal necessary and sufficient token sets through Captum's robustness tools.

For an attribution, the *minimal necessary size* of an example is the fewest
top-ranked content tokens whose removal changes the prediction (ERASER's
"tokens to flip", after Serrano & Smith 2019); the *minimal sufficient size* is
the fewest top-ranked content tokens that alone (with the special tokens) give
the prediction. A faithful attribution makes both small.

Both are found with :class:`captum.robust.MinParamPerturbation` searching over
``k`` of :func:`token_removal_attack`, one example at a time, the perturbed
inputs of one example batched ``perturbations_per_eval`` at a time.
"""

from __future__ import annotations

from numbers import Integral
from typing import Any, Callable, Optional, Tuple

import torch
from captum.robust import MinParamPerturbation
from torch import Tensor
from tqdm.auto import tqdm

from captum_effattn._core.functional import TargetLike, format_target
from captum_effattn.metrics._core.erase import (
    _as_logits,
    _check_batch_size,
    _check_function_to_apply,
    _content_mask,
    _eval_mode,
    _format_additional_forward_args,
    _forward_rows,
    _masked_deletion,
    _padding_side,
    _per_example,
    _select_rows,
    _validate_token_inputs,
)
from captum_effattn.metrics._core.perturbation import token_removal_attack

_SEARCHES = ("linear", "binary")


def _predicts(model_out: Tensor, target: int, function_to_apply: str) -> Tensor:
    r"""Per row, whether the outputs predict class ``target``: it is the
    largest output, or with ``function_to_apply="sigmoid"`` (independent labels)
    its sigmoid exceeds 1/2."""
    if function_to_apply == "sigmoid":
        return model_out[:, target] > 0
    return model_out.argmax(dim=1) == target


def _two_sided(logit: Tensor) -> Tensor:
    r"""One sigmoid output ``z`` (B, 1) as two, ``(-z, z)``: the sigmoid of
    the first is ``1 - p``, so the default target, the larger one, is the
    predicted side, and :func:`_predicts` asks whether it still is."""
    return torch.cat([-logit, logit], dim=1)


def _prediction_kept(model_out: Tensor, target: int, function_to_apply: str) -> bool:
    r"""Captum ``correct_fn`` for necessity: "correct" while the model still
    predicts ``target``; the search stops at the first k where it does not."""
    return bool(_predicts(model_out, target, function_to_apply).all())


def _prediction_missing(model_out: Tensor, target: int, function_to_apply: str) -> bool:
    r"""Captum ``correct_fn`` for sufficiency: "correct" while the kept tokens
    do not yet give ``target``; the search stops at the first k where they do."""
    return bool((~_predicts(model_out, target, function_to_apply)).any())


@_eval_mode()  # a model in training mode: dropout off, warned once
def _minimal_size(
    keep: bool,
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    attributions: Tensor,
    target: TargetLike,
    additional_forward_args: Any,
    *,
    attention_mask: Optional[Tensor],
    special_tokens_mask: Optional[Tensor],
    mode: str,
    mask_token_id: Optional[int],
    pad_token_id: int,
    padding_side: Optional[str],
    search: str,
    perturbations_per_eval: int,
    batch_size: Optional[int],
    show_progress: bool,
    function_to_apply: str = "auto",
) -> Tuple[Tensor, Tensor]:
    ids, attributions, attention_mask, special = _validate_token_inputs(
        inputs, attributions, attention_mask, special_tokens_mask, mode,
        mask_token_id, pad_token_id, additional_forward_args,
    )  # fmt: skip
    if search not in _SEARCHES:
        raise ValueError(f"Unknown search {search!r}; expected one of {_SEARCHES}")
    if (
        isinstance(perturbations_per_eval, bool)
        or not isinstance(perturbations_per_eval, Integral)
        or perturbations_per_eval < 1
    ):
        raise ValueError(
            "perturbations_per_eval must be a positive int, got "
            f"{perturbations_per_eval!r}"
        )
    _check_batch_size(batch_size)
    _check_function_to_apply(function_to_apply)
    args = _format_additional_forward_args(additional_forward_args)
    # Without a mask, "delete" gives the model the shorter texts themselves,
    # and a text without special tokens cannot be emptied: keeping k = 0 or
    # removing k = n tokens of it is not tried (the model cannot be run on
    # an empty text).
    whole_text = attention_mask is None and mode == "delete"
    # no mask to hide new padding: "delete" drops the tokens from the text
    forward_func, attention_mask = _masked_deletion(
        forward_func, ids, attention_mask, mode, padding_side, function_to_apply, args
    )
    n_examples = ids.shape[0]
    n_content = _content_mask(ids, attention_mask, special).sum(dim=1)

    # the unperturbed logits: the predicted class, and the number of classes
    # that a given target must lie within
    logits = _forward_rows(
        forward_func,
        ids,
        attention_mask,
        torch.arange(n_examples, device=ids.device),
        args,
        n_examples,
        batch_size,
        function_to_apply=function_to_apply,
    )
    if logits.shape[1] < 2 and function_to_apply != "sigmoid":
        raise ValueError(
            "forward_func returned a single output per example: the prediction "
            "then is whether its sigmoid exceeds 1/2, so pass "
            "function_to_apply='sigmoid' with the logit"
        )
    # one sigmoid output: by default the predicted side, as two outputs
    # (-z, z) whose sigmoids are 1 - p and p (see _two_sided)
    two_sided = target is None and logits.shape[1] == 1
    if two_sided:
        logits = _two_sided(logits)
    if target is None:
        targets = logits.argmax(dim=1).cpu()
    else:
        targets = format_target(target, n_examples, n_classes=logits.shape[1])

    has_mask = attention_mask is not None
    # one padding side for the whole batch: the search sends one example at
    # a time, and the longest example of a left-padded batch has no padding
    real = attention_mask != 0 if has_mask else torch.ones_like(ids, dtype=torch.bool)
    side = _padding_side(padding_side, real)

    # Captum's search repeats every tensor of additional_forward_args once
    # per perturbation of a batch, which suits only the per-example ones
    # (one row each here): the shared ones are bound here instead, in place
    per_example = [_per_example(a, n_examples) for a in args]

    def search_forward(inp: Any, *rows: Any) -> Tensor:
        given = iter(rows)
        forward_args = tuple(next(given) if p else a for a, p in zip(args, per_example))
        if has_mask:
            out = _as_logits(forward_func(inp[0], inp[1], *forward_args))
        else:
            out = _as_logits(forward_func(inp, *forward_args))
        return _two_sided(out) if two_sided else out

    sizes = torch.full((n_examples,), float("nan"))
    for b in tqdm(
        range(n_examples),
        desc="minimal sufficient" if keep else "minimal necessary",
        disable=not show_progress,
        leave=False,
    ):
        n = int(n_content[b])
        if n == 0:
            continue
        no_empty = whole_text and n == ids.shape[1]  # every token is content
        k_min = 1 if keep and no_empty else 0
        k_max = n if not keep and no_empty else n + 1  # exclusive
        row = torch.tensor([b], device=ids.device)
        ex_ids = ids[b : b + 1]
        ex_inputs: Any = (ex_ids, attention_mask[b : b + 1]) if has_mask else ex_ids
        ex_args = tuple(
            _select_rows(a, row, n_examples) for a, p in zip(args, per_example) if p
        )
        attack_kwargs = dict(
            attributions=attributions[b : b + 1],
            keep=keep,
            special_tokens_mask=None if special is None else special[b : b + 1],
            mode=mode,
            mask_token_id=mask_token_id,
            pad_token_id=pad_token_id,
            padding_side=side,
        )
        k = None
        # A binary search that finds no k is not proof that none exists (it
        # probes O(log n) of them, and flipping need not be monotone in k):
        # the linear search then settles it.
        for how in (search, "linear") if search == "binary" else (search,):
            mpp = MinParamPerturbation(
                forward_func=search_forward,
                attack=token_removal_attack,
                arg_name="k",
                arg_min=k_min,
                arg_max=k_max,
                arg_step=1,
                mode=how,
                correct_fn=_prediction_missing if keep else _prediction_kept,
            )
            with torch.no_grad():
                _, k = mpp.evaluate(
                    ex_inputs,
                    additional_forward_args=ex_args if ex_args else None,
                    target=int(targets[b]),
                    perturbations_per_eval=int(perturbations_per_eval),
                    attack_kwargs=attack_kwargs,
                    correct_fn_kwargs={"function_to_apply": function_to_apply},
                )
            if k is not None:
                break
        if k is not None:
            sizes[b] = float(k)
    sizes = sizes.to(device=ids.device, dtype=torch.get_default_dtype())
    fractions = sizes / n_content.to(sizes.dtype)  # NaN stays NaN
    return sizes, fractions


def minimal_necessary_size(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    attributions: Tensor,
    target: TargetLike = None,
    additional_forward_args: Any = None,
    *,
    attention_mask: Optional[Tensor] = None,
    special_tokens_mask: Optional[Tensor] = None,
    mode: str = "delete",
    mask_token_id: Optional[int] = None,
    pad_token_id: int = 0,
    padding_side: Optional[str] = None,
    search: str = "linear",
    perturbations_per_eval: int = 16,
    batch_size: Optional[int] = 64,
    show_progress: bool = False,
    function_to_apply: str = "auto",
) -> Tuple[Tensor, Tensor]:
    r"""
    Size of the minimal necessary set of an attribution, per example: the
    fewest top-ranked content tokens whose removal makes the model stop
    predicting the target class (ERASER's "tokens to flip", after Serrano &
    Smith 2019, https://arxiv.org/abs/1906.03731). Smaller is better.

    For each example, :class:`captum.robust.MinParamPerturbation` searches
    ``k`` in 0, 1, ..., n (n = number of content tokens: not special, not
    padding) over :func:`token_removal_attack` with ``keep=False``. With the
    default target (the predicted class; for a single sigmoid output, the
    predicted side) k = 0 never flips, so the result is at least 1. With
    several sigmoid outputs (``function_to_apply="sigmoid"``, multi-label)
    the default target is the label of the largest logit, which the model
    predicts only where its sigmoid exceeds 1/2: where no label is
    predicted the result is 0; pass ``target`` to track a given label.

    Args:
        forward_func (Callable): returns logits (B, classes) (of a Hugging
                    Face model's output, its ``.logits``); called as
                    ``forward_func(ids, attention_mask, *additional_forward_args)``
                    when ``attention_mask`` is given, else
                    ``forward_func(ids, *additional_forward_args)``.
        inputs (Tensor): token ids (B, N), integer dtype.
        attributions (Tensor): scores (B, N); higher is more important.
        target (int, list, or Tensor, optional): the class whose prediction is
                    tracked, as in Captum; ``None`` takes the class predicted
                    for the unperturbed input. Default: None
        additional_forward_args (Any, optional): further arguments of
                    ``forward_func``; tensors whose first dimension is B are
                    taken per example. Default: None
        attention_mask (Tensor, optional): (B, N), 0 at padding. Without it,
                    ``"delete"`` searches on the shorter texts themselves, as
                    :func:`necessity` does; k = n is then not tried for an
                    example without special tokens, which it would leave
                    empty. Default: None
        special_tokens_mask (Tensor, optional): (B, N), positions never removed
                    nor counted. Default: None
        mode (str, optional): ``"delete"``, ``"mask"`` or ``"pad"``, as in
                    :func:`necessity`. Default: ``"delete"``
        mask_token_id (int, optional): required for ``"mask"``. Default: None
        pad_token_id (int, optional): the padding id. Default: 0
        padding_side (str, optional): ``"right"`` or ``"left"``, where
                    ``mode="delete"`` puts the new padding. Default:
                    inferred from the batch (``"left"`` when a non-empty row starts
                    with padding, else ``"right"``); pass
                    ``tokenizer.padding_side`` for a batch without padding.
        search (str, optional): ``"linear"`` (exact: the first k that flips)
                    or ``"binary"`` (fewer forward calls; exact only when the
                    prediction stays flipped once flipped, i.e. when flipping is
                    monotone in k; where it finds no k, a linear search
                    checks, so NaN always means that no k flips it).
                    Default: ``"linear"``
        perturbations_per_eval (int, optional): perturbed inputs of one example
                    per forward call in the linear search (Captum's argument).
                    Default: 16
        batch_size (int, optional): rows per forward call when predicting the
                    default target. Default: 64
        show_progress (bool, optional): tqdm bar over the examples.
                    Default: False
        function_to_apply (str, optional): as in :func:`necessity`; here
                    it says what "predicts class j" means: ``"sigmoid"``
                    (multi-label or single-logit models) reads label j as
                    predicted while its sigmoid exceeds 1/2, every other
                    value while output j is the largest. Default: ``"auto"``

    Returns:
        (sizes, fractions): two tensors of shape (B,): ``sizes`` the minimal k
        (float, integer-valued) and ``fractions`` = k / n. Both are **NaN**
        where no k flips the prediction (not even removing every content
        token, or all but one when the text cannot be emptied: see
        ``attention_mask``) and where an example has no content tokens.

    Examples::

        >>> from captum_effattn.metrics import minimal_necessary_size
        >>> def forward(ids, mask):
        ...     return model(input_ids=ids, attention_mask=mask).logits
        >>> k, frac = minimal_necessary_size(
        ...     forward, ids, attr, attention_mask=mask,
        ...     special_tokens_mask=special, search="binary")
        >>> frac.nanmean()   # mean share of tokens needed to flip
    """
    return _minimal_size(
        False,
        forward_func,
        inputs,
        attributions,
        target,
        additional_forward_args,
        attention_mask=attention_mask,
        special_tokens_mask=special_tokens_mask,
        mode=mode,
        mask_token_id=mask_token_id,
        pad_token_id=pad_token_id,
        padding_side=padding_side,
        search=search,
        perturbations_per_eval=perturbations_per_eval,
        batch_size=batch_size,
        show_progress=show_progress,
        function_to_apply=function_to_apply,
    )


def minimal_sufficient_size(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    attributions: Tensor,
    target: TargetLike = None,
    additional_forward_args: Any = None,
    *,
    attention_mask: Optional[Tensor] = None,
    special_tokens_mask: Optional[Tensor] = None,
    mode: str = "delete",
    mask_token_id: Optional[int] = None,
    pad_token_id: int = 0,
    padding_side: Optional[str] = None,
    search: str = "linear",
    perturbations_per_eval: int = 16,
    batch_size: Optional[int] = 64,
    show_progress: bool = False,
    function_to_apply: str = "auto",
) -> Tuple[Tensor, Tensor]:
    r"""
    Size of the minimal sufficient set of an attribution, per example: the
    fewest top-ranked content tokens that alone (with the special tokens) make
    the model predict the target class. Smaller is better.

    For each example, :class:`captum.robust.MinParamPerturbation` searches
    ``k`` in 0, 1, ..., n (n = number of content tokens) over
    :func:`token_removal_attack` with ``keep=True``. ``k = 0`` (only the
    special tokens) is a valid answer when the model already predicts the
    target from them; with the default target (the predicted class) ``k = n``
    always succeeds, so the result is never NaN for an example with content
    tokens. With several sigmoid outputs (multi-label) the default target is
    the label of the largest logit: where the model predicts no label at
    all, no k gives it and the result is NaN; pass ``target`` to track a
    given label.

    Args:
        forward_func (Callable): returns logits (B, classes) (of a Hugging
                    Face model's output, its ``.logits``); called as
                    ``forward_func(ids, attention_mask, *additional_forward_args)``
                    when ``attention_mask`` is given, else
                    ``forward_func(ids, *additional_forward_args)``.
        inputs (Tensor): token ids (B, N), integer dtype.
        attributions (Tensor): scores (B, N); higher is more important.
        target (int, list, or Tensor, optional): the class whose prediction is
                    sought, as in Captum; ``None`` takes the class predicted
                    for the unperturbed input. Default: None
        additional_forward_args (Any, optional): further arguments of
                    ``forward_func``; tensors whose first dimension is B are
                    taken per example. Default: None
        attention_mask (Tensor, optional): (B, N), 0 at padding. Without it,
                    ``"delete"`` searches on the shorter texts themselves, as
                    :func:`sufficiency` does; k = 0 is then not tried for an
                    example without special tokens, which it would leave
                    empty. Default: None
        special_tokens_mask (Tensor, optional): (B, N), positions never removed
                    nor counted. Default: None
        mode (str, optional): ``"delete"``, ``"mask"`` or ``"pad"``, as in
                    :func:`sufficiency`. Default: ``"delete"``
        mask_token_id (int, optional): required for ``"mask"``. Default: None
        pad_token_id (int, optional): the padding id. Default: 0
        padding_side (str, optional): ``"right"`` or ``"left"``, where
                    ``mode="delete"`` puts the new padding. Default:
                    inferred from the batch (``"left"`` when a non-empty row starts
                    with padding, else ``"right"``); pass
                    ``tokenizer.padding_side`` for a batch without padding.
        search (str, optional): ``"linear"`` (exact) or ``"binary"`` (exact
                    only when sufficiency is monotone in k; where it finds no
                    k, a linear search checks). Default: ``"linear"``
        perturbations_per_eval (int, optional): perturbed inputs of one example
                    per forward call in the linear search. Default: 16
        batch_size (int, optional): rows per forward call when predicting the
                    default target. Default: 64
        show_progress (bool, optional): tqdm bar over the examples.
                    Default: False
        function_to_apply (str, optional): as in :func:`necessity`; here
                    it says what "predicts class j" means: ``"sigmoid"``
                    (multi-label or single-logit models) reads label j as
                    predicted while its sigmoid exceeds 1/2, every other
                    value while output j is the largest. Default: ``"auto"``

    Returns:
        (sizes, fractions): two tensors of shape (B,): ``sizes`` the minimal k
        (float, integer-valued) and ``fractions`` = k / n. Both are **NaN**
        where no k gives the target class (possible only for a target other
        than the prediction) and where an example has no content tokens.

    Examples::

        >>> from captum_effattn.metrics import minimal_sufficient_size
        >>> k, frac = minimal_sufficient_size(
        ...     forward, ids, attr, attention_mask=mask,
        ...     special_tokens_mask=special)
    """
    return _minimal_size(
        True,
        forward_func,
        inputs,
        attributions,
        target,
        additional_forward_args,
        attention_mask=attention_mask,
        special_tokens_mask=special_tokens_mask,
        mode=mode,
        mask_token_id=mask_token_id,
        pad_token_id=pad_token_id,
        padding_side=padding_side,
        search=search,
        perturbations_per_eval=perturbations_per_eval,
        batch_size=batch_size,
        show_progress=show_progress,
        function_to_apply=function_to_apply,
    )
