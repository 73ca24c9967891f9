r"""Erasure-based faithfulness: sufficiency, necessity (comprehensiveness), AOPC.

For an example x with target class j, softmax probabilities p and the top-k
tokens of an attribution r (k = ceil(fraction x number of content tokens)):

- sufficiency = p(x)_j - p(x with only the top-k content tokens)_j
  (lower is better: the explanation alone keeps the prediction);
- necessity = p(x)_j - p(x without the top-k tokens)_j
  (higher is better: removing the explanation destroys the prediction).
  :func:`comprehensiveness` is the same function: ERASER's name for it.
- AOPC ("area over the perturbation curve") averages either of them over
  several fractions and keeps the curve.

Where we follow and where we differ from the two reference implementations:

ERASER (DeYoung et al., ACL 2020; github.com/jayded/eraserbenchmark,
``rationale_benchmark/metrics.py``):

- *Follow*: the definitions comprehensiveness = m(x)_j - m(x \ r)_j and
  sufficiency = m(x)_j - m(r)_j on class probabilities; ``j`` defaults to the
  predicted class of the unperturbed input, as ERASER's ``classification``
  field; the AOPC bins (0.01, 0.05, 0.1, 0.2, 0.5) (``--aopc_thresholds``); AOPC
  is the plain mean over the bins (no k = 0 term), per example and then over
  examples (ERASER notes that the orders of averaging agree); tokens are
  *deleted* (``mode="delete"``, the default).
- *Differ*: ERASER's scorer only reads probabilities that the user computed
  with their own removal code; it does not say how k is rounded. We fix
  k = ceil(fraction x n), at least 1, computed with a 1e-6 tolerance against
  float rounding (a float32 fraction read as its shortest decimal), and n
  counts only content tokens: special tokens ([CLS], [SEP], ... as given by
  ``special_tokens_mask``) and padding are never removed and never counted,
  and they stay
  in the sufficiency input (ERASER's m(r) is the rationale alone). We return
  one value per example (ERASER reports dataset means), and ``target`` may
  name another class, as in Captum.

ferret (Attanasio et al., EACL 2023 demo; github.com/g8a9/ferret,
``ferret/evaluators/faithfulness_measures.py``):

- *Follow*: the same probability differences; the optional grid 0.1, 0.2, ...,
  1.0 (``fractions="ferret"``, ferret's default ``np.arange(0.1, 1.1, 0.1)``
  with ``based_on="perc"``); deletion by default, [MASK] replacement as an
  option; [CLS]/[SEP] marked in ``special_tokens_mask`` are never removed
  (ferret's ``remove_first_last``).
- *Differ*: ferret decodes the perturbed ids to text and re-tokenizes, which
  can shift token boundaries; we perturb ``input_ids`` and ``attention_mask``
  directly. ferret evaluates one text at a time; we batch. ferret's two
  evaluators were near-copies, and in mask mode its sufficiency masked the
  rationale instead of everything else; here both metrics call the one erase
  function with complementary keep-masks. ferret rounds k down
  (``int(fraction * n)``) and skips fractions that give k = 0 or repeat the
  previous rationale, so its AOPC averages over a varying number of points;
  we round up (k >= 1) and always use every fraction, so all examples share
  the same curve abscissa. ferret removes only positively scored tokens by
  default (``only_pos``); we rank all content tokens, signs included. ferret's
  "first and last token" rule assumes [CLS] ... [SEP] without padding; we
  read a ``special_tokens_mask`` and the ``attention_mask`` instead.

Ties in the attributions break by position (earlier first).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from captum_effattn._core.functional import TargetLike, both_sides, format_target
from captum_effattn.metrics._core.erase import (
    _check_batch_size,
    _check_fraction,
    _check_function_to_apply,
    _content_mask,
    _erase,
    _format_additional_forward_args,
    _forward_rows,
    _keep_mask,
    _masked_deletion,
    _num_tokens,
    _padding_side,
    _probabilities,
    _rank_positions,
    _validate_token_inputs,
)

#: ERASER's AOPC bins (``--aopc_thresholds`` of ``rationale_benchmark/metrics.py``).
ERASER_FRACTIONS: Tuple[float, ...] = (0.01, 0.05, 0.1, 0.2, 0.5)
#: ferret's default grid 0.1, 0.2, ..., 1.0.
FERRET_FRACTIONS: Tuple[float, ...] = tuple(i / 10 for i in range(1, 11))

_NAMED_FRACTIONS = {"eraser": ERASER_FRACTIONS, "ferret": FERRET_FRACTIONS}

#: Default number of rows (original and perturbed inputs) per forward call.
DEFAULT_BATCH_SIZE = 64


class AOPCResult(NamedTuple):
    r"""Result of :func:`aopc_sufficiency` and :func:`aopc_necessity`.

    Attributes:
        aopc (Tensor): one value per example, shape (B,): the mean of ``curve``
                    over the fractions.
        curve (Tensor): shape (B, F): sufficiency or necessity at each fraction,
                    ``curve[:, f]`` equals ``sufficiency(..., fraction=fractions[f])``
                    (resp. ``necessity``).
        fractions (Tensor): shape (F,): the fractions, in the order used.
    """

    aopc: Tensor
    curve: Tensor
    fractions: Tensor


def _resolve_fractions(fractions: Union[str, Sequence[float]]) -> Tuple[float, ...]:
    if isinstance(fractions, str):
        key = fractions.lower()
        if key not in _NAMED_FRACTIONS:
            raise ValueError(
                f"Unknown fractions {fractions!r}; use 'eraser', 'ferret' or a "
                "sequence of numbers in (0, 1]"
            )
        return _NAMED_FRACTIONS[key]
    if isinstance(fractions, Tensor):
        fractions = fractions.reshape(-1).tolist()
    try:
        values = tuple(fractions)
    except TypeError:
        raise TypeError(
            "fractions must be 'eraser', 'ferret' or a sequence of numbers in (0, 1]"
        ) from None
    if len(values) == 0:
        raise ValueError("fractions must not be empty")
    return tuple(_check_fraction(f, "every fraction") for f in values)


def _erasure_curve(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    attributions: Tensor,
    target: TargetLike,
    additional_forward_args: Any,
    *,
    attention_mask: Optional[Tensor],
    special_tokens_mask: Optional[Tensor],
    fractions: Tuple[float, ...],
    keep_top: bool,
    mode: str,
    mask_token_id: Optional[int],
    pad_token_id: int,
    padding_side: Optional[str],
    batch_size: Optional[int],
    show_progress: bool,
    function_to_apply: str = "auto",
) -> Tensor:
    r"""p(x)_j - p(perturbed x)_j for every example and fraction: (B, F).

    ``keep_top=True`` keeps only the top-k tokens (sufficiency), ``False``
    removes them (necessity). Examples without content tokens give NaN.
    """
    ids, attributions, attention_mask, special = _validate_token_inputs(
        inputs, attributions, attention_mask, special_tokens_mask, mode,
        mask_token_id, pad_token_id, additional_forward_args,
    )  # fmt: skip
    _check_batch_size(batch_size)
    _check_function_to_apply(function_to_apply)
    real = torch.ones_like(ids, dtype=torch.bool)
    side = _padding_side(
        padding_side, real if attention_mask is None else real & (attention_mask != 0)
    )
    args = _format_additional_forward_args(additional_forward_args)
    # no mask to hide new padding: "delete" drops the tokens from the text
    forward_func, attention_mask = _masked_deletion(
        forward_func, ids, attention_mask, mode, padding_side, function_to_apply, args
    )
    n_examples, seq_len = ids.shape
    n_fracs = len(fractions)

    content = _content_mask(ids, attention_mask, special)
    ranks = _rank_positions(attributions, content)
    n_content = content.sum(dim=1)

    keep = torch.cat(
        [
            _keep_mask(ranks, _num_tokens(f, n_content), content, keep_top)
            for f in fractions
        ],
        dim=0,
    )
    repeated_mask = (
        None if attention_mask is None else attention_mask.repeat(n_fracs, 1)
    )
    pert_ids, pert_mask = _erase(
        ids.repeat(n_fracs, 1),
        repeated_mask,
        keep,
        mode=mode,
        mask_token_id=mask_token_id,
        pad_token_id=pad_token_id,
        padding_side=side,
    )

    # the original inputs go through the model with the perturbed ones
    all_ids = torch.cat([ids, pert_ids], dim=0)
    all_mask = (
        None if attention_mask is None else torch.cat([attention_mask, pert_mask])
    )
    example_index = torch.arange(n_examples, device=ids.device).repeat(n_fracs + 1)
    logits = _forward_rows(
        forward_func,
        all_ids,
        all_mask,
        example_index,
        args,
        n_examples,
        batch_size,
        show_progress=show_progress,
        desc="sufficiency" if keep_top else "necessity",
        function_to_apply=function_to_apply,
    )
    probs = _probabilities(logits, function_to_apply)
    if target is None and probs.shape[1] == 1:
        # one sigmoid output: by default follow the predicted side, 1 - p for
        # an example predicted negative, as the predicted class of a softmax
        probs = both_sides(probs)
    n_classes = probs.shape[1]
    p_orig = probs[:n_examples]
    if target is None:
        tgt = p_orig.argmax(dim=1)
    else:
        tgt = format_target(target, n_examples, n_classes).to(probs.device)
    p_pert = probs[n_examples:].view(n_fracs, n_examples, n_classes)
    p0 = p_orig.gather(1, tgt.view(-1, 1))  # (B, 1)
    pk = p_pert.gather(2, tgt.view(1, -1, 1).expand(n_fracs, -1, 1)).squeeze(2)
    curve = p0 - pk.transpose(0, 1)  # (B, F)
    no_content = (n_content == 0).to(curve.device).view(-1, 1)
    return curve.masked_fill(no_content, float("nan"))


def sufficiency(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    attributions: Tensor,
    target: TargetLike = None,
    additional_forward_args: Any = None,
    *,
    attention_mask: Optional[Tensor] = None,
    special_tokens_mask: Optional[Tensor] = None,
    fraction: float = 0.2,
    mode: str = "delete",
    mask_token_id: Optional[int] = None,
    pad_token_id: int = 0,
    padding_side: Optional[str] = None,
    batch_size: Optional[int] = DEFAULT_BATCH_SIZE,
    show_progress: bool = False,
    function_to_apply: str = "auto",
) -> Tensor:
    r"""
    Sufficiency of the top-ranked tokens (ERASER, DeYoung et al. 2020,
    https://arxiv.org/abs/1911.03429): how much the probability of the target
    class drops when the model sees only the top-k tokens of the attribution,

    .. math::
        \mathrm{suff}(x) = p(x)_j - p(x_{\text{top-}k})_j,

    with k = ceil(``fraction`` x number of content tokens), at least 1. Special
    tokens (``special_tokens_mask``) and padding are never removed and never
    counted; ties in the
    attributions break by position (earlier first). Lower is better; the value
    is negative when the top tokens alone make the model surer.

    Args:
        forward_func (Callable): the model or a function of it that returns
                    logits of shape (B, classes) (of a Hugging Face model's
                    output, its ``.logits``); probabilities are their softmax.
                    An output that already is probabilities (every row
                    non-negative and summing to 1, e.g. ``logits.softmax(-1)``)
                    is taken as it is, not passed through softmax again.
                    It is called as ``forward_func(ids, attention_mask,
                    *additional_forward_args)`` when ``attention_mask`` is given
                    (both rebuilt for the perturbed input) and as
                    ``forward_func(ids, *additional_forward_args)`` otherwise.
        inputs (Tensor): token ids of shape (B, N), integer dtype, exactly as
                    passed to ``LayerIntegratedGradients``.
        attributions (Tensor): one score per token, shape (B, N), e.g.
                    ``LayerIntegratedGradients(...).attribute(...).sum(-1)`` or
                    ``EfficientAttention(...).attribute(...)``. Higher means
                    more important.
        target (int, list, or Tensor, optional): the class j whose probability is
                    compared: an int for all examples, or one per example (list
                    or tensor), as in Captum. ``None`` takes the class that the
                    model predicts for the unperturbed input.
                    Default: None
        additional_forward_args (Any, optional): further arguments of
                    ``forward_func`` after the ids (and mask); a tuple for
                    several. Tensors whose first dimension is B are taken per
                    example. Default: None
        attention_mask (Tensor, optional): (B, N), 1 for tokens and 0 for
                    padding. Padding is never removed nor counted. Without
                    it, ``"delete"`` calls ``forward_func(ids)`` on the
                    shorter texts themselves (one call per length) and
                    ``"pad"`` is refused. Default: None
        special_tokens_mask (Tensor, optional): (B, N) bool or 0/1, as a Hugging
                    Face tokenizer returns it with
                    ``return_special_tokens_mask=True``: those positions are
                    never removed nor counted. Default: None
        fraction (float, optional): share of the content tokens that is
                    kept, in (0, 1]. Default: 0.2
        mode (str, optional): ``"delete"`` removes the tokens and re-packs the
                    row (ERASER; remaining tokens shift left, new padding with
                    ``pad_token_id`` and mask 0 on the right, or on the left in
                    a left-padded batch); ``"mask"`` replaces
                    them by ``mask_token_id``; ``"pad"`` replaces them by
                    ``pad_token_id`` with attention mask 0.
                    Default: ``"delete"``
        mask_token_id (int, optional): the [MASK] id, required for
                    ``mode="mask"``. Default: None
        pad_token_id (int, optional): the padding id. Default: 0
        padding_side (str, optional): ``"right"`` or ``"left"``, where
                    ``mode="delete"`` puts the new padding. Default:
                    inferred from the batch (``"left"`` when a non-empty row starts
                    with padding, else ``"right"``); pass
                    ``tokenizer.padding_side`` for a batch without padding.
        batch_size (int, optional): at most this many rows (original and
                    perturbed inputs together) per forward call; ``None`` sends
                    all at once. Default: 64
        show_progress (bool, optional): show a tqdm bar over the forward calls.
                    Default: False
        function_to_apply (str, optional): how the outputs of
                    ``forward_func`` become class probabilities, as in Hugging
                    Face's text-classification pipeline: ``"auto"`` takes
                    their softmax unless they already are probabilities (as
                    above); ``"softmax"`` always takes it; ``"sigmoid"``
                    takes the sigmoid of each output, for multi-label models
                    (``problem_type="multi_label_classification"``) and
                    single-logit binary models; ``"none"`` takes the outputs
                    as they are (``forward_func`` returns probabilities of
                    its own). ``target=None`` takes the largest output (of a
                    multi-label model, its most probable label).
                    Default: ``"auto"``

    Returns:
        Tensor: shape (B,), one value per example (NaN for an example without
        content tokens).

    Examples::

        >>> from captum.attr import LayerIntegratedGradients
        >>> from captum_effattn.metrics import sufficiency, necessity
        >>> def forward(ids, mask):
        ...     return model(input_ids=ids, attention_mask=mask).logits
        >>> enc = tokenizer(texts, padding=True, return_tensors="pt",
        ...                 return_special_tokens_mask=True)
        >>> ids, mask = enc["input_ids"], enc["attention_mask"]
        >>> lig = LayerIntegratedGradients(forward, model.bert.embeddings)
        >>> attr = lig.attribute(ids, additional_forward_args=(mask,),
        ...                      target=0).sum(-1)
        >>> suff = sufficiency(forward, ids, attr, target=0,
        ...                    attention_mask=mask,
        ...                    special_tokens_mask=enc["special_tokens_mask"])
        >>> suff.shape  # one value per text
        torch.Size([2])
    """
    fraction = _check_fraction(fraction)
    return _erasure_curve(
        forward_func,
        inputs,
        attributions,
        target,
        additional_forward_args,
        attention_mask=attention_mask,
        special_tokens_mask=special_tokens_mask,
        fractions=(fraction,),
        keep_top=True,
        mode=mode,
        mask_token_id=mask_token_id,
        pad_token_id=pad_token_id,
        padding_side=padding_side,
        batch_size=batch_size,
        show_progress=show_progress,
        function_to_apply=function_to_apply,
    )[:, 0]


def necessity(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    attributions: Tensor,
    target: TargetLike = None,
    additional_forward_args: Any = None,
    *,
    attention_mask: Optional[Tensor] = None,
    special_tokens_mask: Optional[Tensor] = None,
    fraction: float = 0.2,
    mode: str = "delete",
    mask_token_id: Optional[int] = None,
    pad_token_id: int = 0,
    padding_side: Optional[str] = None,
    batch_size: Optional[int] = DEFAULT_BATCH_SIZE,
    show_progress: bool = False,
    function_to_apply: str = "auto",
) -> Tensor:
    r"""
    Necessity of the top-ranked tokens, ERASER's *comprehensiveness* (DeYoung
    et al. 2020, https://arxiv.org/abs/1911.03429): how much the probability
    of the target class drops when the top-k tokens of the attribution are
    removed,

    .. math::
        \mathrm{nec}(x) = p(x)_j - p(x \setminus x_{\text{top-}k})_j,

    with k = ceil(``fraction`` x number of content tokens), at least 1. Special
    tokens (``special_tokens_mask``) and padding are never removed and never
    counted; ties in the
    attributions break by position (earlier first). Higher is better.
    :func:`comprehensiveness` is this same function.

    Args:
        forward_func (Callable): the model or a function of it that returns
                    logits of shape (B, classes) (of a Hugging Face model's
                    output, its ``.logits``); probabilities are their softmax.
                    An output that already is probabilities (every row
                    non-negative and summing to 1, e.g. ``logits.softmax(-1)``)
                    is taken as it is, not passed through softmax again.
                    It is called as ``forward_func(ids, attention_mask,
                    *additional_forward_args)`` when ``attention_mask`` is given
                    (both rebuilt for the perturbed input) and as
                    ``forward_func(ids, *additional_forward_args)`` otherwise.
        inputs (Tensor): token ids of shape (B, N), integer dtype, exactly as
                    passed to ``LayerIntegratedGradients``.
        attributions (Tensor): one score per token, shape (B, N), e.g.
                    ``LayerIntegratedGradients(...).attribute(...).sum(-1)`` or
                    ``EfficientAttention(...).attribute(...)``. Higher means
                    more important.
        target (int, list, or Tensor, optional): the class j whose probability is
                    compared: an int for all examples, or one per example (list
                    or tensor), as in Captum. ``None`` takes the class that the
                    model predicts for the unperturbed input.
                    Default: None
        additional_forward_args (Any, optional): further arguments of
                    ``forward_func`` after the ids (and mask); a tuple for
                    several. Tensors whose first dimension is B are taken per
                    example. Default: None
        attention_mask (Tensor, optional): (B, N), 1 for tokens and 0 for
                    padding. Padding is never removed nor counted. Without
                    it, ``"delete"`` calls ``forward_func(ids)`` on the
                    shorter texts themselves (one call per length) and
                    ``"pad"`` is refused. Default: None
        special_tokens_mask (Tensor, optional): (B, N) bool or 0/1, as a Hugging
                    Face tokenizer returns it with
                    ``return_special_tokens_mask=True``: those positions are
                    never removed nor counted. Default: None
        fraction (float, optional): share of the content tokens that is
                    removed, in (0, 1]. Default: 0.2
        mode (str, optional): ``"delete"`` removes the tokens and re-packs the
                    row (ERASER; remaining tokens shift left, new padding with
                    ``pad_token_id`` and mask 0 on the right, or on the left in
                    a left-padded batch); ``"mask"`` replaces
                    them by ``mask_token_id``; ``"pad"`` replaces them by
                    ``pad_token_id`` with attention mask 0.
                    Default: ``"delete"``
        mask_token_id (int, optional): the [MASK] id, required for
                    ``mode="mask"``. Default: None
        pad_token_id (int, optional): the padding id. Default: 0
        padding_side (str, optional): ``"right"`` or ``"left"``, where
                    ``mode="delete"`` puts the new padding. Default:
                    inferred from the batch (``"left"`` when a non-empty row starts
                    with padding, else ``"right"``); pass
                    ``tokenizer.padding_side`` for a batch without padding.
        batch_size (int, optional): at most this many rows (original and
                    perturbed inputs together) per forward call; ``None`` sends
                    all at once. Default: 64
        show_progress (bool, optional): show a tqdm bar over the forward calls.
                    Default: False
        function_to_apply (str, optional): ``"auto"``, ``"softmax"``,
                    ``"sigmoid"`` (multi-label and single-logit models) or
                    ``"none"``, as in :func:`sufficiency`. Default: ``"auto"``

    Returns:
        Tensor: shape (B,), one value per example (NaN for an example without
        content tokens).

    Examples::

        >>> from captum_effattn.metrics import necessity
        >>> def forward(ids, mask):
        ...     return model(input_ids=ids, attention_mask=mask).logits
        >>> nec = necessity(forward, ids, attr, attention_mask=mask,
        ...                 special_tokens_mask=special, fraction=0.1,
        ...                 mode="mask", mask_token_id=tokenizer.mask_token_id)
    """
    fraction = _check_fraction(fraction)
    return _erasure_curve(
        forward_func,
        inputs,
        attributions,
        target,
        additional_forward_args,
        attention_mask=attention_mask,
        special_tokens_mask=special_tokens_mask,
        fractions=(fraction,),
        keep_top=False,
        mode=mode,
        mask_token_id=mask_token_id,
        pad_token_id=pad_token_id,
        padding_side=padding_side,
        batch_size=batch_size,
        show_progress=show_progress,
        function_to_apply=function_to_apply,
    )[:, 0]


#: ERASER's name for :func:`necessity`; the same function object.
comprehensiveness = necessity


def _aopc(
    keep_top: bool,
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    attributions: Tensor,
    target: TargetLike,
    additional_forward_args: Any,
    **kwargs: Any,
) -> AOPCResult:
    fractions = _resolve_fractions(kwargs.pop("fractions"))
    curve = _erasure_curve(
        forward_func,
        inputs,
        attributions,
        target,
        additional_forward_args,
        fractions=fractions,
        keep_top=keep_top,
        **kwargs,
    )
    grid = torch.tensor(fractions, dtype=curve.dtype, device=curve.device)
    return AOPCResult(aopc=curve.mean(dim=1), curve=curve, fractions=grid)


def aopc_sufficiency(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    attributions: Tensor,
    target: TargetLike = None,
    additional_forward_args: Any = None,
    *,
    attention_mask: Optional[Tensor] = None,
    special_tokens_mask: Optional[Tensor] = None,
    fractions: Union[str, Sequence[float]] = ERASER_FRACTIONS,
    mode: str = "delete",
    mask_token_id: Optional[int] = None,
    pad_token_id: int = 0,
    padding_side: Optional[str] = None,
    batch_size: Optional[int] = DEFAULT_BATCH_SIZE,
    show_progress: bool = False,
    function_to_apply: str = "auto",
) -> AOPCResult:
    r"""
    AOPC sufficiency: the mean of :func:`sufficiency` over several fractions
    (ERASER's "area over the perturbation curve", DeYoung et al. 2020,
    https://arxiv.org/abs/1911.03429), computed in one batched pass: the
    original and all perturbed inputs go through ``forward_func`` in chunks of
    ``batch_size`` rows. Lower is better.

    Args:
        forward_func (Callable): the model or a function of it that returns
                    logits of shape (B, classes) (of a Hugging Face model's
                    output, its ``.logits``); probabilities are their softmax.
                    An output that already is probabilities (every row
                    non-negative and summing to 1, e.g. ``logits.softmax(-1)``)
                    is taken as it is, not passed through softmax again.
                    It is called as ``forward_func(ids, attention_mask,
                    *additional_forward_args)`` when ``attention_mask`` is given
                    (both rebuilt for the perturbed input) and as
                    ``forward_func(ids, *additional_forward_args)`` otherwise.
        inputs (Tensor): token ids of shape (B, N), integer dtype, exactly as
                    passed to ``LayerIntegratedGradients``.
        attributions (Tensor): one score per token, shape (B, N), e.g.
                    ``LayerIntegratedGradients(...).attribute(...).sum(-1)`` or
                    ``EfficientAttention(...).attribute(...)``. Higher means
                    more important.
        target (int, list, or Tensor, optional): the class j whose probability is
                    compared: an int for all examples, or one per example (list
                    or tensor), as in Captum. ``None`` takes the class that the
                    model predicts for the unperturbed input.
                    Default: None
        additional_forward_args (Any, optional): further arguments of
                    ``forward_func`` after the ids (and mask); a tuple for
                    several. Tensors whose first dimension is B are taken per
                    example. Default: None
        attention_mask (Tensor, optional): (B, N), 1 for tokens and 0 for
                    padding. Padding is never removed nor counted. Without
                    it, ``"delete"`` calls ``forward_func(ids)`` on the
                    shorter texts themselves (one call per length) and
                    ``"pad"`` is refused. Default: None
        special_tokens_mask (Tensor, optional): (B, N) bool or 0/1, as a Hugging
                    Face tokenizer returns it with
                    ``return_special_tokens_mask=True``: those positions are
                    never removed nor counted. Default: None
        fractions (str or sequence of float, optional): the fractions of
                    content tokens, each in (0, 1]: ``"eraser"`` for
                    (0.01, 0.05, 0.1, 0.2, 0.5), ``"ferret"`` for
                    (0.1, 0.2, ..., 1.0), or any sequence.
                    Default: (0.01, 0.05, 0.1, 0.2, 0.5)
        mode (str, optional): ``"delete"`` removes the tokens and re-packs the
                    row (ERASER; remaining tokens shift left, new padding with
                    ``pad_token_id`` and mask 0 on the right, or on the left in
                    a left-padded batch); ``"mask"`` replaces
                    them by ``mask_token_id``; ``"pad"`` replaces them by
                    ``pad_token_id`` with attention mask 0.
                    Default: ``"delete"``
        mask_token_id (int, optional): the [MASK] id, required for
                    ``mode="mask"``. Default: None
        pad_token_id (int, optional): the padding id. Default: 0
        padding_side (str, optional): ``"right"`` or ``"left"``, where
                    ``mode="delete"`` puts the new padding. Default:
                    inferred from the batch (``"left"`` when a non-empty row starts
                    with padding, else ``"right"``); pass
                    ``tokenizer.padding_side`` for a batch without padding.
        batch_size (int, optional): at most this many rows (original and
                    perturbed inputs together) per forward call; ``None`` sends
                    all at once. Default: 64
        show_progress (bool, optional): show a tqdm bar over the forward calls.
                    Default: False
        function_to_apply (str, optional): ``"auto"``, ``"softmax"``,
                    ``"sigmoid"`` (multi-label and single-logit models) or
                    ``"none"``, as in :func:`sufficiency`. Default: ``"auto"``

    Returns:
        AOPCResult: a named tuple ``(aopc, curve, fractions)`` with ``aopc`` of
        shape (B,), ``curve`` of shape (B, F) (the sufficiency at each fraction, for
        plots) and ``fractions`` of shape (F,). NaN rows for examples without
        content tokens.

    Examples::

        >>> from captum_effattn.metrics import aopc_sufficiency
        >>> res = aopc_sufficiency(forward, ids, attr, attention_mask=mask,
        ...                  special_tokens_mask=special, fractions="ferret")
        >>> res.aopc.mean()                      # one number for the batch
        >>> plt.plot(res.fractions, res.curve.nanmean(0))
    """
    return _aopc(
        True,
        forward_func,
        inputs,
        attributions,
        target,
        additional_forward_args,
        attention_mask=attention_mask,
        special_tokens_mask=special_tokens_mask,
        fractions=fractions,
        mode=mode,
        mask_token_id=mask_token_id,
        pad_token_id=pad_token_id,
        padding_side=padding_side,
        batch_size=batch_size,
        show_progress=show_progress,
        function_to_apply=function_to_apply,
    )


def aopc_necessity(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    attributions: Tensor,
    target: TargetLike = None,
    additional_forward_args: Any = None,
    *,
    attention_mask: Optional[Tensor] = None,
    special_tokens_mask: Optional[Tensor] = None,
    fractions: Union[str, Sequence[float]] = ERASER_FRACTIONS,
    mode: str = "delete",
    mask_token_id: Optional[int] = None,
    pad_token_id: int = 0,
    padding_side: Optional[str] = None,
    batch_size: Optional[int] = DEFAULT_BATCH_SIZE,
    show_progress: bool = False,
    function_to_apply: str = "auto",
) -> AOPCResult:
    r"""
    AOPC necessity, ERASER's AOPC comprehensiveness: the mean of
    :func:`necessity` over several fractions (ERASER's "area over the
    perturbation curve", DeYoung et al. 2020,
    https://arxiv.org/abs/1911.03429), computed in one batched pass: the
    original and all perturbed inputs go through ``forward_func`` in chunks of
    ``batch_size`` rows. Higher is better.

    Args:
        forward_func (Callable): the model or a function of it that returns
                    logits of shape (B, classes) (of a Hugging Face model's
                    output, its ``.logits``); probabilities are their softmax.
                    An output that already is probabilities (every row
                    non-negative and summing to 1, e.g. ``logits.softmax(-1)``)
                    is taken as it is, not passed through softmax again.
                    It is called as ``forward_func(ids, attention_mask,
                    *additional_forward_args)`` when ``attention_mask`` is given
                    (both rebuilt for the perturbed input) and as
                    ``forward_func(ids, *additional_forward_args)`` otherwise.
        inputs (Tensor): token ids of shape (B, N), integer dtype, exactly as
                    passed to ``LayerIntegratedGradients``.
        attributions (Tensor): one score per token, shape (B, N), e.g.
                    ``LayerIntegratedGradients(...).attribute(...).sum(-1)`` or
                    ``EfficientAttention(...).attribute(...)``. Higher means
                    more important.
        target (int, list, or Tensor, optional): the class j whose probability is
                    compared: an int for all examples, or one per example (list
                    or tensor), as in Captum. ``None`` takes the class that the
                    model predicts for the unperturbed input.
                    Default: None
        additional_forward_args (Any, optional): further arguments of
                    ``forward_func`` after the ids (and mask); a tuple for
                    several. Tensors whose first dimension is B are taken per
                    example. Default: None
        attention_mask (Tensor, optional): (B, N), 1 for tokens and 0 for
                    padding. Padding is never removed nor counted. Without
                    it, ``"delete"`` calls ``forward_func(ids)`` on the
                    shorter texts themselves (one call per length) and
                    ``"pad"`` is refused. Default: None
        special_tokens_mask (Tensor, optional): (B, N) bool or 0/1, as a Hugging
                    Face tokenizer returns it with
                    ``return_special_tokens_mask=True``: those positions are
                    never removed nor counted. Default: None
        fractions (str or sequence of float, optional): the fractions of
                    content tokens, each in (0, 1]: ``"eraser"`` for
                    (0.01, 0.05, 0.1, 0.2, 0.5), ``"ferret"`` for
                    (0.1, 0.2, ..., 1.0), or any sequence.
                    Default: (0.01, 0.05, 0.1, 0.2, 0.5)
        mode (str, optional): ``"delete"`` removes the tokens and re-packs the
                    row (ERASER; remaining tokens shift left, new padding with
                    ``pad_token_id`` and mask 0 on the right, or on the left in
                    a left-padded batch); ``"mask"`` replaces
                    them by ``mask_token_id``; ``"pad"`` replaces them by
                    ``pad_token_id`` with attention mask 0.
                    Default: ``"delete"``
        mask_token_id (int, optional): the [MASK] id, required for
                    ``mode="mask"``. Default: None
        pad_token_id (int, optional): the padding id. Default: 0
        padding_side (str, optional): ``"right"`` or ``"left"``, where
                    ``mode="delete"`` puts the new padding. Default:
                    inferred from the batch (``"left"`` when a non-empty row starts
                    with padding, else ``"right"``); pass
                    ``tokenizer.padding_side`` for a batch without padding.
        batch_size (int, optional): at most this many rows (original and
                    perturbed inputs together) per forward call; ``None`` sends
                    all at once. Default: 64
        show_progress (bool, optional): show a tqdm bar over the forward calls.
                    Default: False
        function_to_apply (str, optional): ``"auto"``, ``"softmax"``,
                    ``"sigmoid"`` (multi-label and single-logit models) or
                    ``"none"``, as in :func:`sufficiency`. Default: ``"auto"``

    Returns:
        AOPCResult: a named tuple ``(aopc, curve, fractions)`` with ``aopc`` of
        shape (B,), ``curve`` of shape (B, F) (the necessity at each fraction, for
        plots) and ``fractions`` of shape (F,). NaN rows for examples without
        content tokens.

    Examples::

        >>> from captum_effattn.metrics import aopc_necessity
        >>> res = aopc_necessity(forward, ids, attr, attention_mask=mask,
        ...                  special_tokens_mask=special, fractions="ferret")
        >>> res.aopc.mean()                      # one number for the batch
        >>> plt.plot(res.fractions, res.curve.nanmean(0))
    """
    return _aopc(
        False,
        forward_func,
        inputs,
        attributions,
        target,
        additional_forward_args,
        attention_mask=attention_mask,
        special_tokens_mask=special_tokens_mask,
        fractions=fractions,
        mode=mode,
        mask_token_id=mask_token_id,
        pad_token_id=pad_token_id,
        padding_side=padding_side,
        batch_size=batch_size,
        show_progress=show_progress,
        function_to_apply=function_to_apply,
    )


# ferret-style metadata, so that a benchmark can build its tables generically.
for _func, _higher in (
    (sufficiency, False),
    (necessity, True),
    (aopc_sufficiency, False),
    (aopc_necessity, True),
):
    _func.higher_is_better = _higher  # type: ignore[attr-defined]
del _func, _higher
