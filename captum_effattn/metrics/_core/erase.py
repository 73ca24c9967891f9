r"""Shared machinery of the token-level faithfulness metrics.

Everything that decides *which* tokens a metric removes and *how* it removes
them lives here, once:

- :func:`_validate_token_inputs` checks token ids, masks and attributions;
- :func:`_content_mask` says which positions may be removed and are counted
  (not padding, not special tokens);
- :func:`_rank_positions` orders the content positions by attribution, ties
  broken by position (earlier first);
- :func:`_keep_mask` turns a rank and a number ``k`` into a keep-mask for
  sufficiency (keep the top ``k``) or necessity (drop the top ``k``);
- :func:`_erase` is the one function that builds the perturbed
  ``(input_ids, attention_mask)`` from a keep-mask, for the three modes;
- :func:`_forward_rows` runs many perturbed rows through the model in chunks.

Sufficiency, necessity, AOPC and the attack for
:class:`captum.robust.MinParamPerturbation` all go through :func:`_erase`, so
they cannot disagree about which tokens were removed (ferret's two
near-identical copies once did: its sufficiency masked the rationale instead of
its complement).
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from numbers import Integral, Real
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from captum_effattn._core.adapters import check_positional_arguments
from captum_effattn._core.functional import warn_unmasked_padding

#: Target classes as Captum accepts them for 2-D outputs.

MODES = ("delete", "mask", "pad")

#: How ``forward_func``'s outputs become class probabilities (the values of
#: Hugging Face pipelines' ``function_to_apply``, with ``"auto"`` for ours).
FUNCTIONS_TO_APPLY = ("auto", "softmax", "sigmoid", "none")

#: Tolerance of ``k = ceil(fraction * n)`` against float rounding
#: (``0.07 * 100 == 7.000000000000001`` must give 7, not 8). A float32
#: fraction is first read as its shortest decimal (:func:`_snap_float32`).
_CEIL_EPS = 1e-6


def _snap_float32(fraction: float) -> float:
    r"""A fraction that is exactly a float32 value (``np.float32(0.2)``,
    ``AOPCResult.fractions`` given back) as the shortest decimal that float32
    reads as it: 0.2000000030 is 0.2. Its rounding error grows with n
    (510 x 0.2000000030 = 102.0000015, so 103 tokens), past any fixed
    tolerance; a relative one would in turn swallow a real excess at long
    lengths (0.973 x 1037 = 1009.001 must give 1010)."""
    single = np.float32(fraction)
    if float(single) != fraction:
        return fraction
    return float(str(single))


def _check_ids(input_ids: Any, name: str = "inputs") -> None:
    if not isinstance(input_ids, Tensor):
        pair = isinstance(input_ids, (tuple, list)) and len(input_ids) == 2
        hint = (
            "; pass the ids alone and the mask as attention_mask="
            if pair and all(isinstance(t, Tensor) for t in input_ids)
            else ""
        )
        raise TypeError(
            f"{name} must be a tensor of token ids of shape (batch, seq_len), "
            f"got {type(input_ids).__name__}{hint}"
        )
    if input_ids.is_floating_point() or input_ids.is_complex():
        raise TypeError(
            f"{name} must hold integer token ids, got dtype {input_ids.dtype}; "
            "pass input_ids, not embeddings or float tensors"
        )
    if input_ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got a bool tensor")
    if input_ids.dim() != 2:
        raise ValueError(
            f"{name} must have shape (batch, seq_len), got {tuple(input_ids.shape)}"
        )
    if input_ids.shape[1] == 0:
        raise ValueError(
            f"{name} has no positions (shape {tuple(input_ids.shape)}): an empty "
            "text has no tokens to rank or remove; tokenize it with its special "
            "tokens or leave it out"
        )


def _check_mask(mask: Any, input_ids: Tensor, name: str) -> Optional[Tensor]:
    r"""Check a (B, N) 0/1 mask and return it as bool (or None)."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(mask).__name__}")
    if mask.shape != input_ids.shape:
        raise ValueError(
            f"{name} must have the shape of the token ids {tuple(input_ids.shape)}, "
            f"got {tuple(mask.shape)}"
        )
    return mask.to(device=input_ids.device) != 0


def _check_mode(mode: Any, mask_token_id: Any, modes: Sequence[str] = MODES) -> None:
    if mode not in modes:
        raise ValueError(f"Unknown mode {mode!r}; expected one of {tuple(modes)}")
    if mode == "mask" and mask_token_id is None:
        raise ValueError(
            'mode="mask" needs mask_token_id (e.g. tokenizer.mask_token_id)'
        )
    if mask_token_id is not None and not isinstance(mask_token_id, Integral):
        raise TypeError(
            f"mask_token_id must be an int, got {type(mask_token_id).__name__}"
        )


def _check_fraction(fraction: Any, name: str = "fraction") -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, Real):
        raise TypeError(f"{name} must be a number in (0, 1], got {fraction!r}")
    value = float(fraction)
    if not (0.0 < value <= 1.0):
        raise ValueError(f"{name} must lie in (0, 1], got {fraction!r}")
    return value


def _check_batch_size(batch_size: Any) -> None:
    if batch_size is None:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, Integral):
        raise TypeError(
            f"batch_size must be a positive int or None, got {batch_size!r}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size}")


def _check_attributions(attributions: Any, input_ids: Tensor) -> Tensor:
    r"""Return attributions as a floating tensor on the ids' device."""
    if isinstance(attributions, tuple) and len(attributions) == 1:
        attributions = attributions[0]
    if not isinstance(attributions, Tensor):
        raise TypeError(
            "attributions must be a tensor of shape (batch, seq_len), got "
            f"{type(attributions).__name__}"
        )
    if attributions.shape != input_ids.shape:
        hint = ""
        if attributions.dim() == 3 and attributions.shape[:2] == input_ids.shape:
            hint = (
                "; embedding-level attributions (e.g. from LayerIntegratedGradients) "
                "must be summed over the last dimension first: attributions.sum(-1)"
            )
        raise ValueError(
            "attributions must have the shape of the token ids "
            f"{tuple(input_ids.shape)}, got {tuple(attributions.shape)}{hint}"
        )
    attributions = attributions.detach().to(device=input_ids.device)
    if not attributions.is_floating_point():
        attributions = attributions.to(torch.float64)
    return attributions


def _format_additional_forward_args(args: Any) -> Tuple[Any, ...]:
    r"""Captum's convention: None -> (), a tuple stays, anything else -> (x,)."""
    if args is None:
        return ()
    if isinstance(args, tuple):
        return args
    return (args,)


def _looks_like_mask(arg: Any, input_ids: Tensor) -> bool:
    r"""A (B, N) tensor of 0 and 1 whose zeros look like padding: in every
    row a block at one end, holding one and the same token id across the
    batch (the padding id, whatever it is). Token type ids of sentence
    pairs (zeros over [CLS] and the first segment) do not qualify."""
    if not isinstance(arg, Tensor) or arg.shape != input_ids.shape:
        return False
    arg = arg.to(input_ids.device)
    zero = arg == 0
    if not bool((zero | (arg == 1)).all()) or not bool(zero.any()):
        return False
    if input_ids[zero].unique().numel() != 1:
        return False
    n = zero.shape[1]
    count = zero.sum(1, keepdim=True)
    pos = torch.arange(n, device=zero.device).expand_as(zero)
    left = zero == (pos < count)
    right = zero == (pos >= n - count)
    return bool((left.all(1) | right.all(1)).all())


def _per_position(arg: Any, input_ids: Tensor) -> bool:
    r"""A (B, N) tensor that varies along the positions of some row."""
    if not isinstance(arg, Tensor) or arg.shape != input_ids.shape:
        return False
    return bool((arg != arg[:, :1]).any())


def _validate_token_inputs(
    inputs: Any,
    attributions: Any,
    attention_mask: Any,
    special_tokens_mask: Any,
    mode: Any,
    mask_token_id: Any,
    pad_token_id: Any = 0,
    additional_forward_args: Any = None,
) -> Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
    r"""Common checks of the metrics; returns (ids, attributions, mask, special).

    Also checks ``pad_token_id`` (an int, and the id the padding holds in
    the modes that write padding) and the tensors of
    ``additional_forward_args``: none may be the attention mask when no
    ``attention_mask`` is given (Captum's way of passing it: the metrics
    would count padding as content and not rebuild it; in the modes that
    write padding, an all-ones tensor counts as a mask) or a second copy of
    it, and in ``"delete"`` mode none may vary along the positions (it would
    no longer line up with the re-packed ids)."""
    if isinstance(inputs, tuple) and len(inputs) == 1:
        inputs = inputs[0]  # Captum's form of a single input
    _check_ids(inputs)
    if inputs.shape[0] == 0:
        raise ValueError("inputs is an empty batch: pass at least one example")
    _check_mode(mode, mask_token_id)
    if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, Integral):
        raise TypeError(
            f"pad_token_id must be an int, got {pad_token_id!r}; a tokenizer "
            "without a pad token (GPT-2) needs one, e.g. tokenizer.pad_token = "
            "tokenizer.eos_token, then pass tokenizer.pad_token_id"
        )
    extra = _format_additional_forward_args(additional_forward_args)
    for arg in extra:
        if attention_mask is None and _looks_like_mask(arg, inputs):
            raise ValueError(
                "additional_forward_args holds the attention mask (0 and 1, the "
                "0s a padding block); pass it as attention_mask= instead: the "
                "metrics call forward_func(ids, attention_mask, *rest), never "
                "remove or count padding, and rebuild the mask for every "
                "perturbed input"
            )
        if (
            attention_mask is None
            and mode in ("delete", "pad")
            and isinstance(arg, Tensor)
            and arg.shape == inputs.shape
            and bool((arg == 1).all())
        ):
            raise ValueError(
                "additional_forward_args holds a (batch, seq) tensor of ones: an "
                f'attention mask of a batch without padding? mode="{mode}" writes '
                "padding, which such a mask would not hide from the model; pass "
                "it as attention_mask= (the metrics rebuild it for every "
                "perturbed input). If it is something else, bind it inside "
                "forward_func"
            )
        if (
            isinstance(attention_mask, Tensor)
            and isinstance(arg, Tensor)
            and arg.shape == attention_mask.shape
            and bool(torch.equal(arg.to(attention_mask.device), attention_mask))
        ):
            raise ValueError(
                "the attention mask is given twice, as attention_mask= and in "
                "additional_forward_args; the metrics pass attention_mask to "
                "forward_func themselves: leave it out of additional_forward_args"
            )
        if mode == "delete" and _per_position(arg, inputs):
            raise ValueError(
                "additional_forward_args holds a (batch, seq) tensor that varies "
                "along the positions (position_ids, token type ids of pairs?); "
                'mode="delete" shifts the tokens, so it would no longer line up. '
                "Compute it inside forward_func from the ids and mask (e.g. "
                'position_ids = mask.cumsum(-1) - 1), or use mode="mask" or '
                '"pad"'
            )
    attributions = _check_attributions(attributions, inputs)
    if attention_mask is not None:
        if not isinstance(attention_mask, Tensor):
            raise TypeError(
                "attention_mask must be a tensor, got "
                f"{type(attention_mask).__name__}"
            )
        if attention_mask.shape != inputs.shape:
            raise ValueError(
                "attention_mask must have the shape of the token ids "
                f"{tuple(inputs.shape)}, got {tuple(attention_mask.shape)}"
            )
        attention_mask = attention_mask.to(device=inputs.device)
    special = _check_mask(special_tokens_mask, inputs, "special_tokens_mask")
    if attention_mask is None and mode == "pad":
        raise ValueError(
            'mode="pad" hides the removed tokens through the attention mask, '
            "and no attention_mask was given, so the model would read the new "
            "padding tokens as text; pass attention_mask= (torch.ones_like(ids) "
            "for a batch without padding) with a forward_func(ids, mask, ...), "
            'or use mode="delete" (which then drops the tokens) or "mask"'
        )
    if attention_mask is not None and mode in ("delete", "pad"):
        padded = inputs[attention_mask == 0].unique()
        if padded.numel() == 1 and int(padded) != int(pad_token_id):
            raise ValueError(
                f"the padding positions hold token id {int(padded)} but "
                f"pad_token_id is {int(pad_token_id)}; pass "
                "pad_token_id=tokenizer.pad_token_id, the id new padding gets"
            )
    if attention_mask is None:  # after the errors that say more
        warn_unmasked_padding(
            inputs,
            int(pad_token_id),
            "as attention_mask= (torch.ones_like(ids) where the batch has no "
            "padding and the id is a real token, such as GPT-2's '!')",
        )
    return inputs, attributions, attention_mask, special


def _content_mask(
    input_ids: Tensor,
    attention_mask: Optional[Tensor],
    special_tokens_mask: Optional[Tensor],
) -> Tensor:
    r"""(B, N) bool: positions that may be removed and that are counted.

    Padding (``attention_mask == 0``) and special tokens are excluded. Without an
    attention mask every position is real.
    """
    content = torch.ones_like(input_ids, dtype=torch.bool)
    if attention_mask is not None:
        content &= attention_mask != 0
    if special_tokens_mask is not None:
        content &= ~(special_tokens_mask != 0)
    return content


def _rank_positions(attributions: Tensor, content: Tensor) -> Tensor:
    r"""Rank of every position by decreasing attribution (0 = most important).

    Content positions come first (ranks ``0 .. n-1``); ties break by position,
    earlier first; non-content positions get the ranks after them. NaN scores on
    content positions are rejected.
    """
    if torch.isnan(attributions[content]).any():
        raise ValueError("attributions contain NaN at content positions")
    order = torch.sort(attributions, dim=1, descending=True, stable=True).indices
    non_content = (~content).gather(1, order).to(torch.uint8)
    order = order.gather(1, torch.sort(non_content, dim=1, stable=True).indices)
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def _num_tokens(fraction: float, n_content: Tensor) -> Tensor:
    r"""k = ceil(fraction * n), at least 1, at most n (0 when n == 0)."""
    x = n_content.to(torch.float64) * _snap_float32(fraction)
    k = torch.ceil(x - _CEIL_EPS).long()
    k = torch.maximum(k, torch.ones_like(k))
    return torch.minimum(k, n_content.long())


def _keep_mask(ranks: Tensor, k: Tensor, content: Tensor, keep_top: bool) -> Tensor:
    r"""Keep-mask (B, N): the top ``k`` content tokens (``keep_top``) or all but
    them; special tokens and padding are always kept."""
    top = (ranks < k.to(ranks.device).view(-1, 1)) & content
    return ~content | top if keep_top else ~top


PADDING_SIDES = ("right", "left")


def _padding_side(padding_side: Optional[str], real: Tensor) -> str:
    r"""``padding_side``, or the side inferred from the real-token mask:
    ``"left"`` when some non-empty row starts with padding, else
    ``"right"`` (a row that is all padding says nothing about the side)."""
    if padding_side is None:
        return "left" if bool((~real[:, 0] & real.any(1)).any()) else "right"
    if padding_side not in PADDING_SIDES:
        raise ValueError(
            f"padding_side must be 'right', 'left' or None, got {padding_side!r}"
        )
    return padding_side


def _erase(
    input_ids: Tensor,
    attention_mask: Optional[Tensor],
    keep: Tensor,
    *,
    mode: str,
    mask_token_id: Optional[int] = None,
    pad_token_id: int = 0,
    padding_side: Optional[str] = None,
) -> Tuple[Tensor, Optional[Tensor]]:
    r"""Remove the tokens where ``keep`` is False: the one erase function.

    Args:
        input_ids (Tensor): token ids (B, N).
        attention_mask (Tensor or None): 1 for real tokens, 0 for padding (B, N).
        keep (Tensor): bool (B, N), True for tokens that stay. Padding positions
                    are always left alone whatever ``keep`` says.
        mode (str): ``"delete"``: drop the tokens and re-pack each row (kept
                    tokens shift left in their order, new padding with
                    ``pad_token_id`` and mask 0 on the right, the width N is
                    kept; in a left-padded batch they shift right and the
                    padding stays on the left);
                    ``"mask"``: replace them by ``mask_token_id``;
                    ``"pad"``: replace them by ``pad_token_id`` with attention
                    mask 0.
        mask_token_id (int, optional): needed for ``"mask"``.
        pad_token_id (int, optional): id of the padding token. Default: 0
        padding_side (str, optional): ``"right"`` or ``"left"``: where
                    ``"delete"`` puts new padding. Default: ``"left"`` when a
                    non-empty row of the batch starts with padding, else
                    ``"right"``.

    Returns:
        (ids, attention_mask): the perturbed ids (same dtype) and mask (same
        dtype as the given mask; None when no mask was given).
    """
    real = torch.ones_like(keep) if attention_mask is None else attention_mask != 0
    erase = ~keep & real
    if mode == "delete":
        kept = real & ~erase
        n = input_ids.shape[1]
        positions = torch.arange(n, device=input_ids.device).expand_as(input_ids)
        count = kept.sum(dim=1, keepdim=True)
        # A left-padded batch (some non-empty row starts with padding; a
        # right-padded one never does) stays left-padded, so that the
        # positions of the kept tokens are those the tokenizer would give the
        # shorter text.
        if _padding_side(padding_side, real) == "left":
            # kept tokens last, in their order; everything else before them
            order = torch.argsort(positions + kept.long() * n, dim=1)
            new_real = positions >= n - count
        else:
            # kept tokens first, in their order; everything else after them
            order = torch.argsort(positions + (~kept).long() * n, dim=1)
            new_real = positions < count
        pad = torch.full_like(input_ids, pad_token_id)
        ids = torch.where(new_real, input_ids.gather(1, order), pad)
        if attention_mask is None:
            return ids, None
        return ids, new_real.to(attention_mask.dtype)
    if mode == "mask":
        fill = torch.full_like(input_ids, int(mask_token_id))  # type: ignore[arg-type]
        ids = torch.where(erase, fill, input_ids)
        return ids, None if attention_mask is None else attention_mask.clone()
    if mode == "pad":
        ids = torch.where(erase, torch.full_like(input_ids, pad_token_id), input_ids)
        if attention_mask is None:
            return ids, None
        new_mask = attention_mask.masked_fill(erase, 0)
        return ids, new_mask
    raise ValueError(f"Unknown mode {mode!r}; expected one of {MODES}")


def _deleting_forward(
    forward_func: Callable[..., Any],
    side: str,
    function_to_apply: str,
    per_example: Sequence[bool],
) -> Callable[..., Tensor]:
    r"""``forward_func`` for ``"delete"`` mode without an attention mask.

    The metrics then run with a mask of ones of their own, so that
    :func:`_erase` marks the new padding; the returned function, called as
    ``(ids, mask, *rest)``, drops that padding instead of showing it to a
    model that takes no mask: it calls ``forward_func(ids', *rest')`` once
    per text length on the rows of that length, with ``ids'`` their kept
    tokens only (the shorter text itself, ERASER's deletion) and the
    per-position tensors of ``rest`` cut to the same positions.

    ``per_example`` says which of ``rest`` were per-example tensors of
    ``additional_forward_args`` (:func:`_per_example`), now given row by
    row: those are split with the rows. The others are shared by all rows,
    whatever their first dimension (a ``(classes,)`` bias of the length of
    a chunk of rows is not split), and only a ``(1, N, ...)`` one is cut to
    the kept positions.
    """

    def forward(ids: Tensor, mask: Tensor, *rest: Any) -> Tensor:
        n = ids.shape[1]
        lengths = (mask != 0).sum(dim=1)
        if bool((lengths == 0).any()):
            raise ValueError(
                'mode="delete" removed every token of a text, and without an '
                "attention mask the model cannot be given an empty text; pass "
                "special_tokens_mask= (special tokens are never removed), "
                "fractions below 1, or attention_mask= with a "
                "forward_func(ids, mask, ...)"
            )
        out: Optional[Tensor] = None
        for length in torch.unique(lengths).tolist():
            rows = (lengths == length).nonzero().flatten()
            cols = (
                torch.arange(n - length, n) if side == "left" else torch.arange(length)
            )
            cols = cols.to(ids.device)

            def cut(arg: Any, per_row: bool) -> Any:
                if not isinstance(arg, Tensor) or arg.dim() == 0:
                    return arg
                if per_row:
                    arg = arg.index_select(0, rows.to(arg.device))
                elif arg.shape[0] != 1:  # shared; (1, N, ...) broadcasts: cut
                    return arg
                if arg.dim() >= 2 and arg.shape[1] == n:  # per position
                    arg = arg.index_select(1, cols.to(arg.device))
                return arg

            flags = tuple(per_example) + (False,) * (len(rest) - len(per_example))
            sub_ids = cut(ids, True)
            sub_rest = tuple(cut(a, f) for a, f in zip(rest, flags))
            check_positional_arguments(forward_func, (sub_ids,), sub_rest)
            res = _check_logits(
                forward_func(sub_ids, *sub_rest), rows.numel(), function_to_apply
            )
            if out is None:
                out = res.new_empty((ids.shape[0],) + res.shape[1:])
            out[rows.to(out.device)] = res
        assert out is not None  # ids has at least one row
        return out

    return forward


def _masked_deletion(
    forward_func: Callable[..., Any],
    input_ids: Tensor,
    attention_mask: Optional[Tensor],
    mode: str,
    padding_side: Optional[str],
    function_to_apply: str,
    additional_forward_args: Tuple[Any, ...],
) -> Tuple[Callable[..., Any], Optional[Tensor]]:
    r"""``(forward_func, attention_mask)`` for the metrics: as given, except
    in ``"delete"`` mode without a mask, where the metrics run with a mask of
    ones and :func:`_deleting_forward` gives the model the shorter texts."""
    if attention_mask is not None or mode != "delete":
        return forward_func, attention_mask
    side = _padding_side(padding_side, torch.ones_like(input_ids, dtype=torch.bool))
    n_examples = input_ids.shape[0]
    per_example = [_per_example(a, n_examples) for a in additional_forward_args]
    forward = _deleting_forward(forward_func, side, function_to_apply, per_example)
    return forward, torch.ones_like(input_ids)


def _per_example(arg: Any, n_examples: int) -> bool:
    r"""Whether ``arg`` of ``additional_forward_args`` holds one row per
    example (a tensor whose first dimension is the batch's): the metrics
    give such tensors row by row and pass every other argument unchanged."""
    return isinstance(arg, Tensor) and arg.dim() > 0 and arg.shape[0] == n_examples


def _select_rows(arg: Any, index: Tensor, n_examples: int) -> Any:
    r"""Rows ``index`` of a per-example tensor argument (first dim == batch);
    anything else is passed through unchanged."""
    if _per_example(arg, n_examples):
        return arg.index_select(0, index.to(arg.device))
    return arg


def _as_logits(out: Any) -> Any:
    r"""The ``.logits`` of a Hugging Face model output (so that the model itself
    can be ``forward_func``); anything else as it is."""
    logits = getattr(out, "logits", None)
    return logits if isinstance(logits, Tensor) and not isinstance(out, Tensor) else out


def _check_function_to_apply(function_to_apply: Any) -> str:
    if (
        not isinstance(function_to_apply, str)
        or function_to_apply not in FUNCTIONS_TO_APPLY
    ):
        raise ValueError(
            f"Unknown function_to_apply {function_to_apply!r}; expected one of "
            f"{FUNCTIONS_TO_APPLY}: 'sigmoid' for a multi-label or single-logit "
            "model, 'none' when forward_func returns probabilities of its own"
        )
    return function_to_apply


def _check_logits(out: Any, rows: int, function_to_apply: str = "auto") -> Tensor:
    out = _as_logits(out)
    if not isinstance(out, Tensor):
        raise TypeError(
            "forward_func must return a tensor of logits of shape (batch, classes), "
            f"got {type(out).__name__}; for a Hugging Face model use e.g. "
            "`lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits`"
        )
    if out.dim() != 2 or out.shape[0] != rows:
        raise ValueError(
            "forward_func must return logits of shape (batch, classes); for a batch "
            f"of {rows} it returned {tuple(out.shape)}"
        )
    if out.shape[1] < 2 and function_to_apply in ("auto", "softmax"):
        raise ValueError(
            "forward_func must return logits of at least 2 classes (the metrics "
            "compare softmax probabilities, and a softmax over one class is "
            f"always 1), got shape {tuple(out.shape)}; for a single-logit binary "
            "model pass function_to_apply='sigmoid' (or return torch.cat([-z, z], "
            "dim=1) / 2, the same sigmoid)"
        )
    if not out.is_floating_point():
        raise TypeError(
            f"forward_func must return floating-point logits, got {out.dtype}"
        )
    return out


def _probabilities(outputs: Tensor, function_to_apply: str = "auto") -> Tensor:
    r"""Class probabilities from ``forward_func``'s outputs (B, classes), in
    float32 or wider, as ``function_to_apply`` says (see
    :data:`FUNCTIONS_TO_APPLY`).

    ``"auto"`` takes their softmax, unless they already are probabilities
    (every row non-negative and summing to 1 within rounding, as
    ``logits.softmax(-1)`` returns them), which are taken as they are: a
    second softmax would silently squeeze every difference toward 0 (two
    classes: ``softmax(p)_j = sigmoid(2 p_j - 1)``, about half the change).
    ``"softmax"`` always takes the softmax, ``"sigmoid"`` the sigmoid of each
    output (independent labels) and ``"none"`` the outputs themselves."""
    out = outputs.to(torch.promote_types(outputs.dtype, torch.float32))
    if function_to_apply == "sigmoid":
        return torch.sigmoid(out)
    if function_to_apply == "none":
        tol = 1e-3 if outputs.dtype in (torch.float16, torch.bfloat16) else 1e-6
        if not bool(((out >= -tol) & (out <= 1 + tol)).all()):
            raise ValueError(
                "function_to_apply='none' takes forward_func's outputs as "
                "probabilities, but they lie outside [0, 1] (from "
                f"{float(out.min()):.3g} to {float(out.max()):.3g}): are they "
                "logits? Use 'softmax' (classes) or 'sigmoid' (independent labels)"
            )
        return out
    if function_to_apply == "auto":
        # the rounding of probabilities in the outputs' dtype: a bfloat16
        # softmax (eps 7.8e-3) missed a fixed 1e-3 in about 40% of its rows;
        # their sum (in float32) is off by at most the unit roundoff eps/2
        # (each p_j by eps/2 of itself) whatever the number of classes (2.9e-3
        # measured in bfloat16, 3.7e-4 in float16)
        tol = 1e-3 if outputs.dtype in (torch.float16, torch.bfloat16) else 1e-4
        if outputs.is_floating_point():
            tol = max(tol, torch.finfo(outputs.dtype).eps / 2)
        if (
            bool(torch.isfinite(out).all())
            and bool((out >= 0).all())
            and bool(((out.sum(dim=1) - 1).abs() <= tol).all())
        ):
            return out
    return torch.softmax(out, dim=-1)


@contextlib.contextmanager
def _eval_mode() -> Iterator[None]:
    r"""Run the forward calls inside in eval mode: a module that
    ``forward_func`` calls while in training mode is switched to eval mode,
    with all its submodules, and every flag is restored on exit. The metrics
    see only ``forward_func``, not the model, so a process-wide forward
    pre-hook finds the modules; it acts only on the forward calls of the
    metric's own thread, so a model trained in another thread meanwhile
    keeps its mode (a module that a user's hook calls on the side, in this
    thread, is switched too). When the switch turned off dropout or batch
    statistics (which would make every probability random), a warning says
    so, as the attribution classes do; a module without them (a plain
    ``nn.Module`` is in training mode from birth) changes nothing."""
    switched: List[Tuple[nn.Module, bool]] = []
    thread = threading.get_ident()

    def hook(module: nn.Module, _args: Any) -> None:
        # The first module called switches its whole subtree, so replicas
        # that DataParallel runs in worker threads are copies of eval modules.
        if module.training and threading.get_ident() == thread:
            switched.extend((m, m.training) for m in module.modules())
            module.eval()

    handle = nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()
        for module, training in reversed(switched):
            module.training = training
        if any(_random_in_training(m) for m, training in switched if training):
            warnings.warn(
                "forward_func ran the model in training mode (dropout on); the "
                "metric switched it to eval mode for its forward passes and "
                "back afterwards. Call model.eval() to silence this warning.",
                stacklevel=4,
            )


def _random_in_training(module: nn.Module) -> bool:
    r"""Whether ``module`` behaves differently in training mode: dropout with
    a positive rate, or batch normalisation."""
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return module.p > 0
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def _forward_rows(
    forward_func: Callable[..., Tensor],
    input_ids: Tensor,
    attention_mask: Optional[Tensor],
    example_index: Tensor,
    additional_forward_args: Tuple[Any, ...],
    n_examples: int,
    batch_size: Optional[int],
    show_progress: bool = False,
    desc: str = "forward",
    function_to_apply: str = "auto",
) -> Tensor:
    r"""Logits of many rows, at most ``batch_size`` rows per forward call.

    Row ``r`` belongs to example ``example_index[r]``: per-example tensors of
    ``additional_forward_args`` (first dimension == ``n_examples``) are indexed
    accordingly, so they need not be repeated in memory.
    """
    rows = input_ids.shape[0]
    step = rows if batch_size is None else max(1, int(batch_size))
    outputs: List[Tensor] = []
    starts = range(0, rows, step)
    with torch.no_grad(), _eval_mode():
        for start in tqdm(starts, desc=desc, disable=not show_progress, leave=False):
            chunk = slice(start, start + step)
            index = example_index[chunk]
            args = tuple(
                _select_rows(a, index, n_examples) for a in additional_forward_args
            )
            if attention_mask is not None:
                args = (attention_mask[chunk],) + args
            if start == 0:
                check_positional_arguments(forward_func, (input_ids[chunk],), args)
            out = forward_func(input_ids[chunk], *args)
            outputs.append(
                _check_logits(out, index.shape[0], function_to_apply).detach()
            )
    return torch.cat(outputs, dim=0)
