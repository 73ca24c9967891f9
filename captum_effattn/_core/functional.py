r"""Functional API: raw, effective and efficient attention matrices of a model.

:func:`efficient_attention` and :func:`effective_attention` run the model once
with hooks (see :mod:`captum_effattn._core.adapters`), then do the algebra of
:mod:`captum_effattn._core.solver` layer by layer, only on the unpadded block
of every example and only for the query rows asked for.
"""

from __future__ import annotations

import inspect
import math
import sys
import warnings
from dataclasses import dataclass, fields
from numbers import Integral
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from captum_effattn._core.adapters import ModelAdapter, check_device, expand_kv
from captum_effattn._core.solver import (
    DEFAULT_MAX_ITER,
    _default_chunk_bytes,
    head_bases,
    min_norm_simplex_solve,
)
from captum_effattn._core.sparse import caratheodory_reduce

__all__ = [
    "Certificate",
    "softmax_sum_tol",
    "efficient_attention",
    "effective_attention",
    "attention_weights",
    "solve_layer",
    "solve_layers",
    "check_token_inputs",
    "check_not_meta",
    "check_vocabulary",
    "format_target",
    "both_sides",
    "TargetLike",
    "resolve_rows",
    "user_stacklevel",
    "warn_unmasked_padding",
]

KINDS = ("raw", "effective", "efficient")
#: Objectives of efficient attention: the minimum-norm distribution, or a
#: vertex of the output-equivalent polytope (at most rank([T, 1]) non-zeros).
OBJECTIVES = ("min_norm", "sparse")


#: Default solver tolerance (KKT residual, in the coordinates of the basis)
#: per algebra dtype: float64 certifies to 1e-12; float32 rounding (eps
#: 1.2e-7) cannot go below about 1e-7, so float32 stops at 1e-6 (see
#: :meth:`Certificate.ok` for what that means for sums and outputs).
DEFAULT_TOL = {torch.float64: 1e-12, torch.float32: 1e-6}


def warn_unmasked_padding(
    ids: Tensor, pad_id: Optional[int], how: str = "attention_mask="
) -> None:
    r"""Warn when no attention mask was given but the batch looks padded:
    rows that end (or start) with runs of the padding id ``pad_id`` of
    unequal lengths. Every position then counts as a real token, padding
    included (on a real model, 65% of a short text's [CLS] attention went
    to its padding). ``how`` says how to pass the mask. The warning points
    at the first caller outside the package."""
    if pad_id is None or ids.dim() != 2 or ids.shape[0] < 2:
        return
    pad = ids == pad_id
    for run in (pad, pad.flip(1)):  # leading, then trailing padding
        length = run.long().cumprod(1).sum(1)
        if int(length.max()) > 0 and int(length.min()) < int(length.max()):
            warnings.warn(
                "no attention mask was given, but the batch looks padded (rows "
                f"end or start with runs of the padding id {pad_id}): every "
                "position counts as a real token, padding included, and the "
                f"model's prediction is that of the padded text. Pass the mask, {how}",
                stacklevel=user_stacklevel(),
            )
            return


#: Modules whose frames a warning skips to reach the user's line: this
#: package, Captum (whose wrappers call it) and the decorators' helpers.
_LIBRARY_MODULES = ("captum", "contextlib", "functools")


def user_stacklevel() -> int:
    r"""The ``stacklevel`` that makes a ``warnings.warn`` in the function
    calling this one point at the first frame outside the package (and
    Captum's and the standard decorators' frames): the user's line, however
    deep the call."""
    level, frame = 1, sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not name.split(".")[0].startswith(_LIBRARY_MODULES):
            return level + 1
        level, frame = level + 1, frame.f_back
    return level


def resolve_tol(tol: Optional[float], dtype: torch.dtype) -> float:
    r"""The solver tolerance: ``tol``, or the default of ``dtype``
    (:data:`DEFAULT_TOL`) when it is None."""
    return DEFAULT_TOL.get(dtype, 1e-6) if tol is None else tol


def check_solver_options(
    tol: Optional[float] = None,
    max_iter: int = DEFAULT_MAX_ITER,
    rtol: Optional[float] = None,
) -> None:
    r"""Raise a clear error for solver options that cannot give an answer:
    ``tol`` negative or not finite, ``max_iter`` not a positive
    integer, ``rtol`` outside (0, 1). (``tol=0`` is allowed: the solver
    then runs ``max_iter`` iterations and the certificate flags the rows.)"""
    if tol is not None and (
        isinstance(tol, bool)
        or not isinstance(tol, (int, float))
        or not math.isfinite(tol)
        or tol < 0
    ):
        raise ValueError(
            f"tol must be a non-negative number (the solver's KKT tolerance, e.g. "
            f"1e-12 in float64 or 1e-6 in float32), got {tol!r}"
        )
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(
            f"max_iter must be a positive int (default {DEFAULT_MAX_ITER}), got "
            f"{max_iter!r}"
        )
    if rtol is not None and (
        isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not 0 < rtol < 1
    ):
        raise ValueError(
            f"rtol must be a number in (0, 1) (the relative singular-value "
            f"tolerance of the numerical rank), got {rtol!r}"
        )


RowsType = Union[None, int, Sequence[int], Tensor]


def softmax_sum_tol(num_keys: Tensor, dtype: torch.dtype) -> Tensor:
    r"""How far from 1 the sum of a softmax row over ``num_keys`` keys may be
    from rounding alone, when the model computed it in ``dtype``:
    ``2 · n · eps(acc) + eps(dtype)``, with ``acc`` the precision torch
    accumulates the normaliser in (float32 for float16, bfloat16 and
    float32; float64 for float64).

    The normaliser of n terms summed in ``acc`` is off by at most about
    ``n · eps(acc) / 2`` (worst case of a sum of n positive terms), each
    probability's division adds ``eps(acc) / 2`` relative, and storing the
    probabilities in ``dtype`` ``eps(dtype) / 2`` of their total: the bound
    is four times the first term (margin for other summation orders and
    fused kernels) plus twice the last. For float32 that is 1.2e-4 at 512
    keys and 3.6e-4 at 1,500, well above what is measured (up to 9.3e-7 at
    512 tokens on MiniLM) and far below a row that misses real mass (a padded
    key given weight, a dropped key).

    Args:
        num_keys (Tensor): the number of keys of the row(s).
        dtype (torch.dtype): the dtype of the attention probabilities.

    Returns:
        Tensor: the bound, float64, of the shape of ``num_keys``.
    """
    acc = torch.promote_types(dtype, torch.float32)
    eps_acc, eps = torch.finfo(acc).eps, torch.finfo(dtype).eps
    return 2.0 * num_keys.to(torch.float64) * eps_acc + eps


@dataclass
class Certificate:
    r"""Exactness certificate of attention matrices, one value per
    (layer, example, head), each the worst over that head's solved rows.

    Attributes:
        output_residual (Tensor): max over rows of ``‖(M_i − A_i) T‖ / ‖A_i T‖``,
                    the relative change of the head's output (for a row
                    whose output nearly cancels, ``‖A_i T‖`` below
                    ``sqrt(eps) · max_j ‖t_j‖``, relative to the latter).
        min_entry (Tensor): smallest entry (negative means not a distribution).
        row_sum_error (Tensor): max ``|Σ_j M_ij − 1|``.
        kkt_residual (Tensor): the largest violation of the optimality (KKT)
                    conditions of a row: primal ``‖Cᵀx − b‖∞``, dual
                    feasibility off the support and stationarity on it;
                    efficient attention only, 0 for the others.
        iterations (Tensor): max interior-point iterations of a row
                    (efficient only).
        converged (Tensor): bool, every row met the solver tolerance.
        rank (Tensor): numerical rank of ``[T, 1]`` (``T`` alone for effective;
                    0 for raw attention, which needs no basis).
        support_size (Tensor): max number of non-zero entries of a row.
        row_sum_tol (Tensor, optional): the rounding that the row sums may
                    carry from the model, which :meth:`ok` allows by
                    default: ``2 · n · eps(acc) + eps(dtype)`` for raw
                    attention rows of n keys computed in ``dtype``, where
                    ``acc`` is the wider of ``dtype`` and float32 (the
                    softmax's accumulation). They are
                    the model's softmax as it computed it, whose sums drift
                    with the number of keys (up to 9.3e-7 measured at 512
                    tokens on MiniLM in float32), so a fixed bound would
                    fail on longer inputs. 0 for efficient attention
                    (renormalised in the algebra's dtype) and effective
                    attention (not a distribution). Default: None (a
                    certificate built by hand: the fixed bounds of
                    :meth:`ok` alone)

    A head of an example none of whose solved rows is a real token (e.g.
    ``rows=[20]`` for a 15-token example) has nothing to certify: its
    ``min_entry`` is the dtype's largest value and the other fields are 0.
    """

    output_residual: Tensor
    min_entry: Tensor
    row_sum_error: Tensor
    kkt_residual: Tensor
    iterations: Tensor
    converged: Tensor
    rank: Tensor
    support_size: Tensor
    row_sum_tol: Optional[Tensor] = None

    @staticmethod
    def stack(certs: Sequence["Certificate"]) -> "Certificate":
        r"""Stack per-layer certificates along a new first (layer) dimension."""
        out: Dict[str, Any] = {}
        for f in fields(Certificate):
            values = [getattr(c, f.name) for c in certs]
            missing = any(v is None for v in values)
            out[f.name] = None if missing else torch.stack(values)
        return Certificate(**out)

    @staticmethod
    def merge(certs: Sequence["Certificate"]) -> "Certificate":
        r"""The certificate of the same heads from those of parts of their
        rows (a causal layer's chunks of rows): each field the worst over the
        parts, head by head."""
        if len(certs) == 1:
            return certs[0]
        stacked = Certificate.stack(certs)
        out: Dict[str, Any] = {}
        for f in fields(Certificate):
            value = getattr(stacked, f.name)
            if value is None:
                out[f.name] = None
            elif f.name == "min_entry":
                out[f.name] = value.amin(0)
            elif f.name == "converged":
                out[f.name] = value.all(0)
            else:
                out[f.name] = value.amax(0)
        return Certificate(**out)

    def worst(self) -> Dict[str, float]:
        r"""The worst value of each field over all layers, examples and heads."""
        return {
            "output_residual": float(self.output_residual.max()),
            "min_entry": float(self.min_entry.min()),
            "row_sum_error": float(self.row_sum_error.max()),
            "kkt_residual": float(self.kkt_residual.max()),
            "max_iterations": int(self.iterations.max()),
            "all_converged": bool(self.converged.all()),
            "max_support": int(self.support_size.max()),
        }

    def ok(
        self,
        rtol: Optional[float] = None,
        atol: float = 1e-9,
        sum_tol: Optional[float] = None,
    ) -> bool:
        r"""True when every head is output-equivalent within ``rtol``, is a
        probability distribution within ``atol`` (entries) and ``sum_tol``
        (row sums), and the solver converged.

        The defaults follow the algebra's dtype. In float64: ``rtol`` 1e-6
        and ``sum_tol`` 1e-6. In float32, whose solver tolerance is 1e-6 on
        the basis coordinates, a row sum is off by up to ``sqrt(n)`` times
        that and a head output by more where it is small: ``rtol`` 1e-3 and
        ``sum_tol`` 1e-4 (measured on 107 to 158-token MiniLM documents:
        output residuals up to 1.1e-4, row sums within 1.3e-5; 8.3e-5 and
        2.4e-5 at 512 tokens). So a float32 certificate cannot tell an exact
        answer from one changed by about 1e-4 (moving 1e-4 of a row's weight
        between two keys passed in 362 of 576 trials at 512 tokens, against
        1 of 576 in float64): certify at that level with float64 algebra.
        Entries can differ from the float64 answer by much more where a
        head's value map has singular values below float32's rank tolerance
        (about ``max(n, d_h) · 1.2e-7`` of the largest): float32 drops them,
        and solves a problem of lower rank, whose answer is another
        output-equivalent distribution (entries apart by up to 0.95 in a
        constructed case with singular values of 1e-6; the smallest relative
        singular value of a real MiniLM head is 2.3e-3).
        With the default ``sum_tol``, a head whose ``row_sum_tol`` is larger (raw
        attention of long inputs, or of a float16 model) is held to that
        instead: the rounding of the model's own softmax, which grows with
        the number of keys.

        Args:
            rtol (float, optional): bound on the relative output residual.
                        Default: 1e-6 in float64, 1e-3 in float32
            atol (float, optional): bound on negative entries. Default: 1e-9
            sum_tol (float, optional): bound on ``|row sum - 1|``, for every
                        head. Default: 1e-6 in float64, 1e-4 in float32, or
                        the head's ``row_sum_tol`` where that is larger
        """
        wide = self.output_residual.dtype == torch.float64
        rtol = (1e-6 if wide else 1e-3) if rtol is None else rtol
        scaled = sum_tol is None and self.row_sum_tol is not None
        sum_tol = (1e-6 if wide else 1e-4) if sum_tol is None else sum_tol
        bound: Any = sum_tol  # atol bounds the entries, not the sums
        if scaled:
            assert self.row_sum_tol is not None
            bound = self.row_sum_tol.to(self.row_sum_error.dtype).clamp_min(bound)
        w = self.worst()
        return (
            w["all_converged"]
            and w["output_residual"] <= rtol
            and w["min_entry"] >= -atol
            and bool((self.row_sum_error <= bound).all())
        )

    def __str__(self) -> str:
        w = self.worst()
        return (  # + 0.0: an exact zero entry prints as 0, not -0
            f"max output residual {w['output_residual']:.2e}, min entry "
            f"{w['min_entry'] + 0.0:.2e}, max |row sum - 1| {w['row_sum_error']:.2e}, "
            f"max KKT residual {w['kkt_residual']:.2e}, max iterations "
            f"{w['max_iterations']}, all converged: {w['all_converged']}"
        )


TargetLike = Union[None, int, Sequence[int], Tensor]


def format_target(
    target: Any, n_examples: int, n_classes: Optional[int] = None
) -> Tensor:
    r"""Target classes as a ``(n_examples,)`` long tensor on the CPU, from
    Captum's forms: an int (numpy integers too) for every example, a list of
    ints, an integer tensor or numpy array of one class or one per example
    (``(B,)`` or ``(B, 1)``), a tuple of one index ``(j,)`` (class ``j`` of
    every example) or a list of such tuples. A tuple of several indices,
    which Captum reads as one index into an output of more dimensions, is
    refused. ``n_classes=None`` checks only
    that they are not negative. The one check of a target of ``(batch,
    classes)`` outputs: the attribution classes' gradient modes, the metrics
    and :func:`~captum_effattn.attention_support_test`.

    Raises:
        TypeError: a float, bool or other non-integer target.
        ValueError: a number of classes that is neither 1 nor ``n_examples``,
                    or a class outside ``[0, n_classes)``.
    """
    shown = target
    if isinstance(target, tuple):
        if len(target) != 1:
            # Captum reads a tuple as one index into the output's dimensions
            # after the batch, the same for every example
            raise ValueError(
                f"target {target!r} is a tuple of {len(target)} indices, which "
                "Captum reads as one index into an output of more than two "
                "dimensions, not as one class per example; for (batch, "
                "classes) outputs pass a list or tensor of classes, or a "
                "tuple of one index"
            )
        target = target[0]
    elif isinstance(target, list):
        target = [x[0] if isinstance(x, tuple) and len(x) == 1 else x for x in target]
    if isinstance(target, np.ndarray):
        target = torch.from_numpy(target)
    if isinstance(target, bool):
        raise TypeError("target must be an int, a list of ints or a tensor")
    if isinstance(target, Integral):
        t = torch.full((n_examples,), int(target), dtype=torch.long)
    elif isinstance(target, Tensor):
        if (
            target.is_floating_point()
            or target.is_complex()
            or (target.dtype == torch.bool)
        ):
            raise TypeError(
                f"target must hold integer class indices, got {target.dtype}"
            )
        t = target.reshape(-1).long().cpu()
        if t.numel() == 1:
            t = t.expand(n_examples).clone()
    elif isinstance(target, list):
        if not all(isinstance(x, Integral) and not isinstance(x, bool) for x in target):
            raise TypeError("a target list must hold ints (one class per example)")
        t = torch.tensor([int(x) for x in target], dtype=torch.long)
    else:
        raise TypeError(
            "target must be None, an int, a list of ints or a tensor, got "
            f"{type(target).__name__}"
        )
    if t.numel() != n_examples:
        raise ValueError(
            f"target gives {t.numel()} classes for a batch of {n_examples} "
            "examples; give one per example, or one for all"
        )
    if (t < 0).any() or (n_classes is not None and (t >= n_classes).any()):
        classes = f"{n_classes} classes" if n_classes is not None else "classes"
        raise ValueError(
            f"target {shown!r} out of range for {classes}: target classes must "
            f"lie in [0, {n_classes if n_classes is not None else 'classes'})"
        )
    return t


def both_sides(probs: Tensor) -> Tensor:
    r"""The probability ``p`` of a single sigmoid output ``(batch, 1)`` as
    two columns ``(1 - p, p)``, so that the default target (the larger one)
    is the predicted side, as the predicted class of a softmax: the
    convention of the metrics and :func:`~captum_effattn.attention_support_test`
    for a model with one output."""
    return torch.cat([1.0 - probs, probs], dim=1)


def check_vocabulary(top_id: int, vocab_size: Optional[int]) -> None:
    r"""Raise a clear ``ValueError`` when token id ``top_id`` is beyond the
    ``vocab_size`` rows of the model's input embedding table (see
    :func:`~captum_effattn._core.adapters.embedding_rows`; None: unknown, no
    check), instead of the embedding's ``IndexError``."""
    if vocab_size is not None and top_id >= vocab_size:
        raise ValueError(
            f"input_ids contains id {top_id}, outside the model's vocabulary of "
            f"{vocab_size} (the rows of its input embedding table); was it "
            "tokenized for this model? A tokenizer with added tokens needs "
            "model.resize_token_embeddings(len(tokenizer))"
        )


def check_not_meta(named: Sequence[Tuple[str, Any]]) -> None:
    r"""Raise a ``ValueError`` for the first tensor of ``(name, value)``
    pairs that is on the meta device (shapes without values)."""
    for name, t in named:
        if isinstance(t, Tensor) and t.device.type == "meta":
            raise ValueError(
                f"{name} is on the meta device, which holds no values: create it "
                "on the CPU (or the model's device)"
            )


def check_token_inputs(
    adapter: ModelAdapter,
    input_ids: Any,
    attention_mask: Optional[Any] = None,
    check_window: bool = True,
) -> Tuple[Tensor, Tensor]:
    r"""Validate token ids and mask; return ``(ids, bool mask)``.

    With ``check_window=False`` the real lengths are not compared with a
    sliding attention window (a check of the ids before the mask is known,
    which would count padding as tokens).

    Raises:
        TypeError: ids not an integer tensor.
        ValueError: empty batch or sequence, wrong shapes, ids outside the
                    vocabulary, too long, or an example that is all padding.
    """
    if not isinstance(input_ids, Tensor):
        raise TypeError(
            f"input_ids must be a torch.Tensor of token ids, got {type(input_ids)}; "
            "use tokenizer(texts, return_tensors='pt', padding=True)['input_ids']"
        )
    if (
        input_ids.is_floating_point()
        or input_ids.is_complex()
        or input_ids.dtype == torch.bool
    ):
        raise TypeError(
            "input_ids must hold integer token ids (torch.long), got "
            f"{input_ids.dtype}. To attribute to embeddings use "
            "LayerIntegratedGradients; to perturb tokens use "
            "captum_effattn.metrics.token_perturb_func. (Captum's NoiseTunnel "
            "adds Gaussian noise to the inputs, which token ids cannot take: "
            "average attribute() over inputs perturbed by "
            "token_perturb_func('sensitivity', ...) instead.)"
        )
    if input_ids.dtype not in (torch.long, torch.int32):
        raise TypeError(
            f"input_ids must be torch.long (or torch.int32) token ids, got "
            f"{input_ids.dtype}; convert them with input_ids.long()"
        )
    if input_ids.dim() != 2:
        raise ValueError(
            f"input_ids must have shape (batch, seq), got {tuple(input_ids.shape)}; "
            "add a batch dimension with input_ids.unsqueeze(0)"
        )
    check_not_meta([("input_ids", input_ids), ("attention_mask", attention_mask)])
    b, n = input_ids.shape
    if b == 0:
        raise ValueError(
            "empty batch: input_ids has 0 examples; pass at least one example"
        )
    if n == 0:
        raise ValueError(
            f"zero-length sequences: input_ids has shape ({b}, 0); every example "
            "needs at least one token (tokenize with add_special_tokens=True)"
        )
    if int(input_ids.min()) < 0:
        raise ValueError(
            f"input_ids contains negative token ids (min {int(input_ids.min())}); "
            "pad with the tokenizer's pad_token_id, not -100 or -1 (label values)"
        )
    check_vocabulary(int(input_ids.max()), adapter.vocab_size)
    if adapter.max_positions is not None and n > adapter.max_positions:
        raise ValueError(
            f"sequence length {n} exceeds the model's {adapter.max_positions} "
            "positions; tokenize with truncation=True, "
            f"max_length={adapter.max_positions}"
        )
    if attention_mask is None:
        mask = torch.ones_like(input_ids, dtype=torch.bool)
    else:
        if not isinstance(attention_mask, Tensor):
            raise TypeError(
                f"attention_mask must be a tensor, got {type(attention_mask)}; "
                "use the tokenizer's return_tensors='pt' output"
            )
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but "
                f"input_ids has shape {tuple(input_ids.shape)}; they must match"
            )
        if attention_mask.is_floating_point():
            bad = ~((attention_mask == 0) | (attention_mask == 1))
            if bool(bad.any()):
                raise ValueError(
                    "attention_mask must contain only 0 and 1 (1 for real tokens)"
                )
        mask = attention_mask.to(device=input_ids.device) != 0
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"example(s) {empty} are all padding (attention_mask all 0); remove "
            "them from the batch"
        )
    window = adapter.sliding_window if check_window else None
    if window is not None:
        # the span from the first to the last real token, not their number:
        # the window counts positions, and a mask may have holes
        pos = torch.arange(mask.shape[1], device=mask.device)
        first = torch.where(mask, pos, mask.shape[1]).amin(1)
        last = torch.where(mask, pos, -1).amax(1)
        longest = int((last - first + 1).max())
        if longest > window:
            raise ValueError(
                f"an example spans {longest} positions from its first to its "
                f"last real token, more than the model's sliding attention "
                f"window of {window}: sliding-window attention is not "
                f"supported (row i would be allowed keys outside its window); "
                f"truncate the inputs to {window} tokens"
            )
    return input_ids, mask


def resolve_rows(rows: RowsType, mask: Tensor) -> Tensor:
    r"""Query rows to solve, as a (batch, m) long tensor.

    ``None``: all positions; an int or list of ints: those positions for every
    example (negative counts from the end of the padded sequence); a tensor of
    shape (batch, m) or (m,): per-example positions.
    """
    b, n = mask.shape
    device = mask.device
    if rows is None:
        return torch.arange(n, device=device).expand(b, n)
    if isinstance(rows, (list, tuple)) and len(rows) == 0:
        raise ValueError("rows is empty: name at least one query position, or None")
    t = torch.as_tensor(rows, device=device)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"rows must be integer positions, got {rows!r}")
    if t.dim() == 0:  # an int, a numpy or a 0-d torch integer
        t = t.reshape(1)
    t = t.long()
    if t.dim() == 1:
        t = t.expand(b, -1)
    if t.dim() != 2 or t.shape[0] != b:
        raise ValueError(
            f"rows must be an int, a list or a (batch, m) tensor, got {tuple(t.shape)}"
        )
    if t.numel() == 0:
        raise ValueError("rows is empty: name at least one query position, or None")
    if bool(((t < -n) | (t >= n)).any()):
        raise ValueError(f"row positions must lie in [-{n}, {n}), got {t.tolist()}")
    return t % n


@dataclass
class _Prepared:
    r"""One layer's problem after the bases: everything ``_finish`` needs."""

    a: Tensor  # (B, H, m, N) attention rows in ``dtype``, zero off the keys
    v: Tensor
    w: Tensor
    fkeys: Tensor
    row_real: Tensor
    rank: Tensor
    out: Optional[Tensor] = None  # raw / effective: the answer already
    c: Optional[Tensor] = None  # efficient: bases (B, H, [m,] N, r)
    col_mask: Optional[Tensor] = None
    sum_tol: Optional[Tensor] = None  # raw: the rounding of the model's sums

    def problem(self) -> Tuple[Tensor, Tensor, Tensor]:
        r"""The solver's ``(c (G, N, r), b (G, m', r), col_mask (G, r))``."""
        assert self.c is not None and self.col_mask is not None
        b, h, m, n = self.a.shape
        r = self.c.shape[-1]
        if self.c.dim() == 5:  # causal: one basis per (example, head, row)
            cg = self.c.reshape(b * h * m, n, r)
            bg = (self.a.unsqueeze(-2) @ self.c).reshape(b * h * m, 1, r)
            return cg, bg, self.col_mask.reshape(b * h * m, r)
        cg = self.c.reshape(b * h, n, r)
        return cg, (self.a @ self.c).reshape(b * h, m, r), self.col_mask.reshape(-1, r)


def _prepare(
    kind: str,
    probs: Tensor,
    values: Tensor,
    w_out: Tensor,
    key_mask: Tensor,
    rows: Tensor,
    causal: bool,
    dtype: torch.dtype,
    rtol: Optional[float],
) -> _Prepared:
    b, h, n, _ = probs.shape
    m = rows.shape[1]
    key_mask = key_mask.bool()  # a tokenizer's 0/1 mask works too
    v = expand_kv(values, h).to(dtype)
    w = w_out.to(device=v.device, dtype=dtype)
    a = probs.gather(2, rows[:, None, :, None].expand(b, h, m, n)).to(dtype)
    row_real = key_mask.gather(1, rows)  # (B, m)
    if causal:
        pos = torch.arange(n, device=key_mask.device)
        keys = key_mask[:, None, :] & (pos[None, None, :] <= rows[:, :, None])
    else:
        keys = key_mask[:, None, :]  # (B, 1, N)
    fkeys = keys[:, None].to(dtype)  # (B, 1, m|1, N)
    # padded query rows are never read: zero rows are closed-form (x = 0), so
    # the solver spends nothing on them; ``where``, not a product, so that
    # whatever the model put there (even NaN) stays out
    live = keys[:, None] & row_real[:, None, :, None]  # (B, 1, m, N)
    a = torch.where(live, a, 0.0)
    rank = torch.zeros(b, h, dtype=torch.long, device=v.device)
    prep = _Prepared(a=a, v=v, w=w, fkeys=fkeys, row_real=row_real, rank=rank)
    if kind == "raw":
        # the model's softmax rows as they are: their sums carry its
        # rounding, which grows with the number of keys of the widest row
        widest = torch.where(row_real, keys.sum(-1).expand(b, m), 0).amax(-1)
        prep.sum_tol = softmax_sum_tol(widest, probs.dtype)[:, None].expand(b, h)
        prep.out = a
        return prep
    if causal:
        # Every row has its own key set: one basis per (example, head, row).
        u, c, col_mask = head_bases(
            v.unsqueeze(2), w[None, :, None], keys[:, None].expand(b, h, m, n), rtol
        )  # (B, H, m, N, r)
    else:
        u, c, col_mask = head_bases(v, w[None], keys.expand(b, h, n), rtol)
    if kind == "effective":
        rank = col_mask[..., :-1].sum(-1)
        prep.rank = rank.amax(-1) if causal else rank
        if causal:
            coef = (a.unsqueeze(-2) @ u).squeeze(-2)
            prep.out = (coef.unsqueeze(-2) @ u.transpose(-1, -2)).squeeze(-2)
        else:
            prep.out = (a @ u) @ u.transpose(-1, -2)
        return prep
    rank = col_mask.sum(-1)
    prep.rank = rank.amax(-1) if causal else rank
    # The softmax ran in the model's precision: renormalise the rows in
    # ``dtype`` so that the answer is an exact distribution. The certificate
    # is then measured against these rows.
    prep.a = a / a.sum(-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    prep.c, prep.col_mask = c, col_mask
    return prep


def _finish(
    kind: str,
    prep: _Prepared,
    solved: Optional[Tuple[Tensor, Tensor, Tensor]],
    tol: float,
    objective: str,
) -> Tuple[Tensor, Certificate]:
    a, fkeys, row_real = prep.a, prep.fkeys, prep.row_real
    b, h, m, n = a.shape
    kkt = torch.zeros(b, h, dtype=a.dtype, device=a.device)
    iters = torch.zeros(b, h, dtype=torch.long, device=a.device)
    if kind == "efficient":
        assert solved is not None and prep.c is not None
        x, kkt_rows, its = solved
        out = x.reshape(b, h, m, n)
        kkt_rows = kkt_rows.reshape(b, h, m)
        if objective == "sparse":
            c = prep.c
            cr = c if c.dim() == 5 else c.unsqueeze(2).expand(b, h, m, n, c.shape[-1])
            out, _ = caratheodory_reduce(out, cr, a)
            bb = (a.unsqueeze(-2) @ cr).squeeze(-2)
            resid = ((out.unsqueeze(-2) @ cr).squeeze(-2) - bb).abs().amax(-1)
            kkt_rows = torch.maximum(kkt_rows, resid)
        rr = row_real[:, None, :].expand(b, h, m)
        kkt = torch.where(rr, kkt_rows, 0.0).amax(-1)
        iters = torch.where(rr, its.reshape(b, h, m), 0).amax(-1)
    else:
        assert prep.out is not None
        out = prep.out
    live = fkeys.bool() & row_real[:, None, :, None]
    out = torch.where(live, out, 0.0)
    cert = _certificate(
        out, a, prep.v, prep.w, fkeys, row_real, kkt, iters, prep.rank, tol
    )
    sum_tol = prep.sum_tol if prep.sum_tol is not None else torch.zeros_like(kkt)
    cert.row_sum_tol = sum_tol.to(device=kkt.device, dtype=kkt.dtype)
    if kind == "efficient" and objective == "sparse":
        # the sparse vertex is exact to rounding, not to the IPM tolerance
        cert.converged = kkt <= max(tol, 1e-10)
    return out, cert


#: One layer's inputs to :func:`solve_layers`: ``(probs, values, w_out,
#: key_mask, rows)`` as for :func:`solve_layer`.
LayerInputs = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


#: Copies of a causal layer's per-row bases that building and certifying
#: them hold at once (the masked values, their QR factor, the bases, the
#: temporaries), for the memory estimate of :func:`_causal_row_chunks`.
CAUSAL_COPIES = 8
#: A chunk of causal rows works on a multiple of this many keys.
CAUSAL_KEY_STEP = 32


def _causal_bytes_per_row(inputs: LayerInputs, dtype: torch.dtype, keys: int) -> int:
    probs, values = inputs[0], inputs[1]
    b, h = probs.shape[:2]
    item = torch.empty((), dtype=dtype).element_size()
    return b * h * keys * (values.shape[-1] + 1) * item * CAUSAL_COPIES


def _causal_row_chunks(
    inputs: LayerInputs, dtype: torch.dtype
) -> List[Tuple[Tensor, int]]:
    r"""A causal layer's query rows (columns of ``rows``) in chunks whose
    bases fit the solver's memory budget (256 MiB on CPU), each with the
    number of keys it works on.

    Every row of a causal model has a basis of its own, ``(B, H, keys,
    d_h + 1)``: for all rows of one 1,024-token GPT-2 input with all keys
    that is 6.5 GiB per copy in float64. Row ``i`` needs the keys up to
    ``i``; a chunk works on the multiple of ``CAUSAL_KEY_STEP`` (at most all
    keys) above its rows' last key, which about halves the work. Rows are
    grouped by that number, so the shapes a row is computed in, and so its
    rounding, depend on its own position only, not on which other rows are
    solved with it or on the budget."""
    probs, _, _, _, rows = inputs
    n = probs.shape[-1]
    last = rows.amax(0) + 1  # keys each column needs, over the batch
    step = CAUSAL_KEY_STEP
    keys = torch.clamp(
        torch.div(last + step - 1, step, rounding_mode="floor") * step, max=n
    )
    budget = _default_chunk_bytes(probs.device)
    chunks = []
    for e in torch.unique(keys).tolist():
        cols = (keys == e).nonzero().flatten()
        size = max(1, budget // _causal_bytes_per_row(inputs, dtype, e))
        chunks += [(cols[i : i + size], e) for i in range(0, cols.numel(), size)]
    return chunks


def _joint_by_default(device: torch.device) -> bool:
    r"""Whether :func:`solve_layers` solves all layers in one call on
    ``device`` by default: on CUDA, where a solve costs launches per
    iteration; not on CPU, where one layer at a time keeps memory low."""
    return device.type == "cuda"


def solve_layers(
    kind: str,
    layers: Sequence[LayerInputs],
    *,
    causal: bool = False,
    dtype: torch.dtype = torch.float64,
    rtol: Optional[float] = None,
    tol: Optional[float] = None,
    max_iter: int = DEFAULT_MAX_ITER,
    objective: str = "min_norm",
    joint: Optional[bool] = None,
) -> List[Tuple[Tensor, Certificate]]:
    r"""Raw, effective or efficient attention rows of several layers.

    Same as :func:`solve_layer` on each layer, except that with ``joint``
    the efficient-attention rows of all layers go through the solver in one
    call: on GPU, where a solve costs kernel launches and synchronisations
    per interior-point iteration whatever the number of rows, this runs the
    iterations once instead of once per layer. On CPU the layers are solved
    one after the other, which keeps one layer's work in memory at a time.

    Args:
        kind (str): ``"raw"``, ``"effective"`` or ``"efficient"``.
        layers (sequence of tuples): ``(probs, values, w_out, key_mask, rows)``
                    per layer, as the arguments of :func:`solve_layer`.
        joint (bool, optional): solve all layers together. Default: True on
                    CUDA, False otherwise.
        causal, dtype, rtol, tol, max_iter, objective: as for
                    :func:`solve_layer`.

    Returns:
        list of ``(rows, certificate)``, one per layer, as :func:`solve_layer`.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if not layers:
        return []
    tol = resolve_tol(tol, dtype)
    if joint is None:
        joint = _joint_by_default(layers[0][0].device)
    unmet = [0, 0.0]  # rows that missed tol, their largest KKT residual

    def solve(preps: Sequence[_Prepared]) -> List[Tuple[Tensor, Tensor, Tensor]]:
        problems = [p.problem() for p in preps]
        if len({(pr[0].shape[1:], pr[1].shape[1:]) for pr in problems}) > 1:
            return [out for p in preps for out in solve([p])]  # unequal shapes
        if len(problems) == 1:
            cg, bg, cm = problems[0]
        else:
            cg, bg, cm = (torch.cat(parts) for parts in zip(*problems))
        x, _, info = min_norm_simplex_solve(cg, bg, cm, tol=tol, max_iter=max_iter)
        missed = ~info.converged
        if bool(missed.any()):
            unmet[0] += int(missed.sum())
            unmet[1] = max(unmet[1], float(info.kkt_residual[missed].max()))
        sizes = [pr[1].shape[0] * pr[1].shape[1] for pr in problems]
        parts = (
            x.reshape(-1, x.shape[-1]).split(sizes),
            info.kkt_residual.reshape(-1).split(sizes),
            info.iterations.reshape(-1).split(sizes),
        )
        return list(zip(*parts))

    results = []
    joint = joint and kind == "efficient"

    def fits() -> bool:  # all rows of all layers in one go
        # the joint solve holds every layer's bases at once (and their
        # concatenation): their sum, not each layer's, must fit the budget
        total = sum(
            _causal_bytes_per_row(i, dtype, i[0].shape[-1]) * i[4].shape[1]
            for i in layers
        )
        return total <= _default_chunk_bytes(layers[0][0].device)

    if causal and kind != "raw" and not (joint and fits()):
        # Each row of a causal model has a basis of its own: one layer at a
        # time, in chunks of rows whose bases fit the memory budget, each on
        # the keys its rows need (see _causal_row_chunks).
        for inputs in layers:
            probs, values, w_out, key_mask, rows = inputs
            b, h, n, _ = probs.shape
            certs = []
            out = probs.new_zeros(b, h, rows.shape[1], n, dtype=dtype)
            for cols, e in _causal_row_chunks(inputs, dtype):
                prep = _prepare(
                    kind, probs[:, :, :e, :e], values[..., :e, :], w_out,
                    key_mask[:, :e], rows[:, cols], causal, dtype, rtol,
                )  # fmt: skip
                solved = solve([prep])[0] if kind == "efficient" else None
                got, cert = _finish(kind, prep, solved, tol, objective)
                out[:, :, cols, :e] = got
                certs.append(cert)
                del prep, got
            results.append((out, Certificate.merge(certs)))
    elif joint:
        preps = [
            _prepare(kind, *inputs, causal=causal, dtype=dtype, rtol=rtol)
            for inputs in layers
        ]
        for prep, solved in zip(preps, solve(preps)):
            results.append(_finish(kind, prep, solved, tol, objective))
    else:
        for inputs in layers:
            prep = _prepare(kind, *inputs, causal=causal, dtype=dtype, rtol=rtol)
            solved = solve([prep])[0] if kind == "efficient" else None
            results.append(_finish(kind, prep, solved, tol, objective))
            del prep
    if unmet[0]:
        warnings.warn(
            f"efficient attention: {unmet[0]} attention row(s) did not reach the "
            f"tolerance tol={tol:g} within max_iter={max_iter} iterations "
            f"(largest KKT residual {unmet[1]:.3g}); they hold an approximate "
            "point (the checked candidate with the smallest KKT residual, else "
            "the last iterate), which may not be a distribution "
            "output-equivalent to the attention. Raise max_iter (default "
            f"{DEFAULT_MAX_ITER}) or tol, and check the certificate "
            "(return_certificate=True)",
            RuntimeWarning,
            stacklevel=3,
        )
    return results


def solve_layer(
    kind: str,
    probs: Tensor,
    values: Tensor,
    w_out: Tensor,
    key_mask: Tensor,
    rows: Tensor,
    *,
    causal: bool = False,
    dtype: torch.dtype = torch.float64,
    rtol: Optional[float] = None,
    tol: Optional[float] = None,
    max_iter: int = DEFAULT_MAX_ITER,
    objective: str = "min_norm",
) -> Tuple[Tensor, Certificate]:
    r"""Raw, effective or efficient attention rows of one layer.

    Args:
        kind (str): ``"raw"``, ``"effective"`` or ``"efficient"``.
        probs (Tensor): attention probabilities (B, H, N, N).
        values (Tensor): value vectors (B, H_kv, N, d_h).
        w_out (Tensor): per-head output projections (H, d_h, d).
        key_mask (Tensor): bool (B, N), real tokens.
        rows (Tensor): long (B, m), query positions to return.
        causal (bool, optional): row i may only use keys j <= i. Default: False
        dtype (torch.dtype, optional): dtype of the algebra. Default: float64
        rtol (float, optional): relative tolerance of the numerical rank.
        tol (float, optional): solver tolerance on the KKT residual.
                    Default: 1e-12 in float64, 1e-6 in float32
        max_iter (int, optional): solver iterations at most; rows that miss
                    ``tol`` within them raise a ``RuntimeWarning``. Default: 100
        objective (str, optional): ``"min_norm"`` or ``"sparse"`` (efficient
                    attention only). Default: ``"min_norm"``

    Returns:
        (rows (B, H, m, N) in ``dtype``, per-(example, head) :class:`Certificate`).
        Rows at padded query positions and columns at padded keys are 0.
    """
    return solve_layers(
        kind,
        [(probs, values, w_out, key_mask, rows)],
        causal=causal,
        dtype=dtype,
        rtol=rtol,
        tol=tol,
        max_iter=max_iter,
        objective=objective,
    )[0]


def _certificate(
    out: Tensor,
    a: Tensor,
    v: Tensor,
    w: Tensor,
    fkeys: Tensor,
    row_real: Tensor,
    kkt: Tensor,
    iters: Tensor,
    rank: Tensor,
    tol: float,
) -> Certificate:
    rr = row_real[:, None, :].expand(out.shape[:3])  # (B, H, m)
    ref = ((a @ v) @ w[None]).norm(dim=-1)
    # A row whose output cancels (‖A_i T‖ = 0, e.g. all its weight on a key
    # whose value maps to 0) has no relative scale of its own: below
    # sqrt(eps) times its largest ‖t_j‖, measure against that instead, the
    # size that rounding of the entries can reach.
    # ‖t_j‖² = v_j (W Wᵀ) v_jᵀ through the small (d_h x d_h) Gram matrix: T
    # itself, (B, H, N, d), costs more than the rest of the certificate
    gram = w @ w.transpose(-1, -2)  # (H, d_h, d_h)
    t_norm = ((v @ gram[None]) * v).sum(-1).clamp_min(0.0).sqrt().unsqueeze(2)
    t_max = torch.where(fkeys.bool(), t_norm, 0.0).amax(-1)  # (B, H, m|1)
    ref = torch.maximum(ref, t_max * torch.finfo(out.dtype).eps ** 0.5)
    diff = (((out - a) @ v) @ w[None]).norm(dim=-1)
    rel = torch.where(diff == 0, torch.zeros_like(diff), diff / ref.clamp_min(1e-300))
    inf = torch.finfo(out.dtype).max
    entries = torch.where(fkeys.bool().expand_as(out), out, torch.full_like(out, inf))
    min_entry = torch.where(rr, entries.amin(-1), torch.full_like(rel, inf)).amin(-1)
    sums = (out.sum(-1) - 1.0).abs()
    # the support: the non-zeros (effective attention has negative entries)
    support = torch.where(rr, (out != 0).sum(-1), 0).amax(-1)
    return Certificate(
        output_residual=torch.where(rr, rel, 0.0).amax(-1),
        min_entry=min_entry,
        row_sum_error=torch.where(rr, sums, 0.0).amax(-1),
        kkt_residual=kkt,
        iterations=iters,
        converged=kkt <= tol,
        rank=rank,
        support_size=support,
    )


def run_with_capture(
    adapter: ModelAdapter,
    call: Any,
    layers: List[int],
    *,
    grad: bool = False,
) -> Tuple[Any, Dict[int, Dict[str, Tensor]], Optional[Any]]:
    r"""Run ``call()`` with hooks on ``layers``; return (output, captures,
    bound arguments of the model's forward call)."""
    with adapter.capture(layers, grad=grad) as rec:
        with torch.set_grad_enabled(grad):
            output = call()
    # forward_func may call model.forward(...) directly, which skips the
    # model's hooks but still calls its base model
    log = rec.model if rec.model.count or not rec.base.count else rec.base
    calls, call_args = log.count, log.args
    if calls == 0 and (rec.model.others or rec.base.others):
        raise ValueError(
            "forward_func ran the model in another thread (a thread pool, a "
            "queue...): the attention is read from the forward pass of the "
            "thread that calls attribute, so that other threads' passes of the "
            "same model cannot mix in; run the model in forward_func itself"
        )
    if calls == 0:
        raise ValueError(
            "forward_func never called the model whose attention is read; pass "
            "model= the Hugging Face model that forward_func runs (a deep copy "
            "of an explainer copies its model but not the model that its "
            "forward_func calls). A torch.compile'd model that has already run "
            "skips the hooks that read the attention: call the uncompiled model "
            "(compiled._orig_mod) in forward_func"
        )
    if calls > 1:
        raise ValueError(
            f"forward_func called the model {calls} times; attention "
            "attribution needs exactly one forward pass per call: make "
            "forward_func run the model once, e.g. "
            "lambda ids, mask: model(ids, attention_mask=mask).logits"
        )
    for idx in layers:
        got = rec.layers.get(idx, {})
        if "weights" not in got or "values" not in got:
            raise ValueError(
                f"layer {idx} produced no attention (captured: {sorted(got)}): "
                "the hooks that read it did not run. A torch.compile'd model "
                "that has already run skips hooks added after compilation: "
                "call the uncompiled model (compiled._orig_mod) in forward_func"
            )
        queries, keys = got["weights"].shape[-2:]
        if queries != keys or got["values"].shape[-2] != keys:
            # a key/value cache (``cache=``, ``past_key_values=``) gives rows
            # over past and new keys, and values of the new tokens only
            raise ValueError(
                f"layer {idx} attended from {queries} positions to {keys} keys "
                f"with values for {got['values'].shape[-2]}: the attention is "
                "not square over the input tokens, as with a key/value cache "
                "from an earlier forward pass. Attention attribution needs one "
                "forward pass over the whole sequence: pass all the tokens and "
                "no cache (cache=None, past_key_values=None)"
            )
        if not bool(torch.isfinite(got["weights"]).all()):
            raise ValueError(
                f"the model produced NaN or inf attention in layer {idx}; check the "
                "inputs and the model's dtype (float16 overflow?)"
            )
        # NaN values or output weights would otherwise surface as an SVD failure
        if not bool(torch.isfinite(got["values"]).all()) or not bool(
            torch.isfinite(adapter.output_weights(idx)).all()
        ):
            raise ValueError(
                f"the model produced NaN or inf value vectors or has NaN or inf "
                f"output-projection weights in layer {idx}; check the model's "
                "weights (torch.isfinite(p).all() for p in model.parameters()) "
                "and its dtype (float16 overflow?)"
            )
    return output, rec.layers, call_args


def check_algebra_dtype(dtype: Any) -> None:
    r"""Raise a ``TypeError`` unless ``dtype`` can carry the algebra (the SVDs
    and solves need float32 or float64, whatever the model's own dtype)."""
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"dtype {dtype} cannot be used for the algebra: use torch.float64 "
            "(default) or torch.float32. A float16/bfloat16 model is fine; its "
            "attention is converted to this dtype"
        )


#: Keyword arguments of the public functions themselves (a misspelling of
#: one would otherwise reach the model's ``**kwargs`` and vanish there).
_OWN_OPTIONS = (
    "layers", "rows", "dtype", "rtol", "tol", "max_iter", "device",
    "return_certificate", "objective", "show_progress",
)  # fmt: skip


#: Keyword arguments by which Hugging Face models take a key/value cache.
_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value", "layer_past")


def _check_model_kwargs(model: nn.Module, model_kwargs: Dict[str, Any]) -> None:
    r"""Refuse keyword arguments that are neither our options nor named
    parameters of ``model.forward``: Hugging Face models take ``**kwargs``
    and would silently ignore a misspelled option (``max_chunk_bytes``,
    ``rowz``)."""
    if not model_kwargs:
        return
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return
    named = [
        name
        for name, p in params.items()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]
    cached = sorted(k for k in model_kwargs if k in _CACHE_KWARGS)
    if any(model_kwargs[k] is not None for k in cached):
        raise ValueError(
            f"{', '.join(cached)}: a key/value cache from an earlier forward "
            "pass is not supported (the attention would cover keys whose "
            "values this pass never computes); pass the whole sequence as "
            "input_ids and no cache"
        )
    unknown = sorted(k for k in model_kwargs if k not in named)
    if unknown:
        raise TypeError(
            f"unknown keyword argument(s) {unknown}: neither an option of the "
            f"attention functions ({', '.join(_OWN_OPTIONS)}) nor a named "
            f"argument of {type(model).__name__}.forward ({', '.join(named)}), "
            "to which "
            "the other keyword arguments go"
        )


def _matrices(
    kind: str,
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Optional[Tensor],
    layers: Optional[Sequence[int]],
    rows: RowsType,
    dtype: torch.dtype,
    rtol: Optional[float],
    tol: Optional[float],
    max_iter: int,
    device: Optional[Union[str, torch.device]],
    return_certificate: bool,
    model_kwargs: Dict[str, Any],
    objective: str = "min_norm",
    show_progress: bool = False,
) -> Union[Tensor, Tuple[Tensor, Certificate]]:
    check_algebra_dtype(dtype)
    if device is not None:  # before the model runs
        device = check_device(device)
    adapter = ModelAdapter(model)
    model = adapter.model  # without a DataParallel wrapper
    ids, mask = check_token_inputs(adapter, input_ids, attention_mask)
    if attention_mask is None:
        pad_id = getattr(model.config, "pad_token_id", None)
        warn_unmasked_padding(ids, pad_id, "attention_mask=")
    model_device = next(model.parameters()).device
    ids, mask = ids.to(model_device), mask.to(model_device)
    idx = adapter.layer_indices(layers)
    row_idx = resolve_rows(rows, mask)
    _check_model_kwargs(model, model_kwargs)

    def call() -> Any:
        return model(input_ids=ids, attention_mask=mask.long(), **model_kwargs)

    _, caps, _ = run_with_capture(adapter, call, idx)
    device = device if device is not None else model_device
    result: Optional[Tensor] = None
    certs = []
    # On CUDA the efficient rows of all layers are solved together (one run
    # of the interior-point loop); on CPU layer by layer, freeing each
    # layer's capture once it is used.
    joint = kind == "efficient" and _joint_by_default(device)
    groups = [list(idx)] if joint else [[layer] for layer in idx]
    pos = 0
    # a step per layer on CPU; one step for all layers on CUDA (solved jointly)
    steps = tqdm(
        groups, desc=f"{kind} attention", disable=not show_progress, leave=False
    )
    for group in steps:
        inputs = []
        for layer in group:
            got = caps.pop(layer)
            inputs.append(
                (
                    got["weights"].detach().to(device),
                    got["values"].detach().to(device),
                    adapter.output_weights(layer).detach().to(device),
                    mask.to(device),
                    row_idx.to(device),
                )
            )
            del got
        outs = solve_layers(
            kind,
            inputs,
            causal=adapter.causal,
            dtype=dtype,
            rtol=rtol,
            tol=tol,
            max_iter=max_iter,
            objective=objective,
            joint=joint,
        )
        del inputs
        for out, cert in outs:
            if result is None:  # filled layer by layer: no second copy by stacking
                result = out.new_empty((len(idx),) + tuple(out.shape))
            result[pos] = out
            pos += 1
            certs.append(cert)
        del outs
    assert result is not None
    if return_certificate:
        return result, Certificate.stack(certs)
    return result


_COMMON_DOC = r"""
    Args:
        model (nn.Module): a Hugging Face transformers model of a supported
                    family, loaded with ``attn_implementation="eager"``.
        input_ids (Tensor): token ids (batch, seq), integer dtype.
        attention_mask (Tensor, optional): (batch, seq), 1 for real tokens.
                    Default: all ones.
        layers (int or list of int, optional): the layers to return (negative
                    indices allowed). Default: all layers.
        rows (int, list of int or Tensor, optional): the query rows to solve,
                    e.g. ``0`` for [CLS]; a (batch, m) tensor gives per-example
                    positions. Default: all rows, giving (seq, seq) matrices.
        dtype (torch.dtype, optional): dtype of the algebra and of the result.
                    Default: ``torch.float64``
        rtol (float, optional): relative singular-value tolerance of the
                    numerical rank. Default: ``max(n, d_h) * eps(dtype)``,
                    ``n`` the keys of the row (its example's real tokens,
                    up to the row itself for a decoder); ``eps`` of the
                    algebra's dtype, so the rounding of a float32 model's
                    values counts as rank (pass about 1e-5 to discard it)
        tol (float, optional): solver tolerance on the KKT residual
                    (efficient attention only). Default: 1e-12 in float64,
                    1e-6 in float32
        max_iter (int, optional): solver iterations at most; rows that miss
                    ``tol`` within them raise a ``RuntimeWarning``. Default: 100
        device (str or torch.device, optional): where the algebra runs
                    (``"cpu"``, ``"cuda"``, ``"cuda:K"``; a clear
                    ``ValueError`` for ``"meta"``, which holds no values, and
                    for CUDA on a machine without it). Default: the model's
                    device.
        return_certificate (bool, optional): also return a
                    :class:`~captum_effattn.Certificate`. Default: False
        **model_kwargs: further keyword arguments of the model's forward
                    (e.g. ``token_type_ids``).

    Returns:
        Tensor of shape (layers, batch, heads, rows, seq), zero at padded
        positions; with ``return_certificate=True`` a tuple
        ``(matrices, certificate)``.
"""


#: The parts of :data:`_COMMON_DOC` that only the solved kinds have.
_SOLVER_DOC = """        tol (float, optional): solver tolerance on the KKT residual
                    (efficient attention only). Default: 1e-12 in float64,
                    1e-6 in float32
        max_iter (int, optional): solver iterations at most; rows that miss
                    ``tol`` within them raise a ``RuntimeWarning``. Default: 100
"""
_RTOL_DOC = _COMMON_DOC[
    _COMMON_DOC.index("        rtol (float") : _COMMON_DOC.index("        tol (float")
]


def efficient_attention(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Optional[Tensor] = None,
    *,
    layers: Optional[Union[int, Sequence[int]]] = None,
    rows: RowsType = None,
    dtype: torch.dtype = torch.float64,
    rtol: Optional[float] = None,
    tol: Optional[float] = None,
    max_iter: int = DEFAULT_MAX_ITER,
    device: Optional[Union[str, torch.device]] = None,
    return_certificate: bool = False,
    objective: str = "min_norm",
    show_progress: bool = False,
    **model_kwargs: Any,
) -> Union[Tensor, Tuple[Tensor, Certificate]]:
    check_solver_options(tol, max_iter, rtol)
    return _matrices(
        "efficient", model, input_ids, attention_mask, layers, rows, dtype, rtol,
        tol, max_iter, device, return_certificate, model_kwargs, objective,
        show_progress,
    )  # fmt: skip


efficient_attention.__doc__ = (
    r"""Efficient attention: for every head and query row, the minimum-norm
    probability distribution with the same head output as the raw attention
    row (``argmin ‖x‖ s.t. x T = A_i T, x >= 0, Σx = 1``).

    This is this package's precise construction of the efficient attention
    of Naim & Asher (ECAI 2024); see the docs' *Mathematics* page. With
    ``objective="sparse"`` each row is instead a vertex of the polytope of
    output-equivalent distributions (at most ``rank([T, 1])`` non-zeros),
    reached from the minimum-norm solution by Carathéodory reduction steps
    that increase the agreement with the raw attention.
"""
    + _COMMON_DOC.replace(
        "        **model_kwargs:",
        '        objective (str, optional): ``"min_norm"`` or ``"sparse"``.\n'
        '                    Default: ``"min_norm"``\n'
        "        show_progress (bool, optional): show a tqdm bar, one step\n"
        "                    per layer on CPU (one step on CUDA, where the\n"
        "                    layers are solved together): all rows of all\n"
        "                    layers of long inputs take minutes on a CPU.\n"
        "                    Default: False\n"
        "        **model_kwargs:",
    )
    + r"""
    Examples::

        >>> from captum_effattn import efficient_attention
        >>> enc = tokenizer(["a long review ..."], return_tensors="pt")
        >>> E, cert = efficient_attention(model, enc["input_ids"],
        ...                               enc["attention_mask"],
        ...                               return_certificate=True)
        >>> E.shape[0] == model.config.num_hidden_layers  # (L, B, H, N, N)
        True
        >>> cert.ok()  # distributions, output-equivalent, converged
        True
"""
)


def effective_attention(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Optional[Tensor] = None,
    *,
    layers: Optional[Union[int, Sequence[int]]] = None,
    rows: RowsType = None,
    dtype: torch.dtype = torch.float64,
    rtol: Optional[float] = None,
    device: Optional[Union[str, torch.device]] = None,
    return_certificate: bool = False,
    **model_kwargs: Any,
) -> Union[Tensor, Tuple[Tensor, Certificate]]:
    check_solver_options(rtol=rtol)
    return _matrices(
        "effective", model, input_ids, attention_mask, layers, rows, dtype, rtol,
        0.0, 0, device, return_certificate, model_kwargs,
    )  # fmt: skip


effective_attention.__doc__ = (
    r"""Effective attention (Brunner et al., ICLR 2020): ``A P`` with ``P`` the
    orthogonal projector onto ``col(T)``, ``T = V_h W_O,h``. Output-equivalent
    to ``A`` but in general not a probability distribution.
"""
    + _COMMON_DOC.replace(_SOLVER_DOC, "")
    + r"""
    Examples::

        >>> from captum_effattn import effective_attention
        >>> A_eff = effective_attention(model, ids, mask, layers=-1)
"""
)


def attention_weights(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Optional[Tensor] = None,
    *,
    layers: Optional[Union[int, Sequence[int]]] = None,
    rows: RowsType = None,
    dtype: torch.dtype = torch.float64,
    device: Optional[Union[str, torch.device]] = None,
    return_certificate: bool = False,
    **model_kwargs: Any,
) -> Union[Tensor, Tuple[Tensor, Certificate]]:
    return _matrices(
        "raw", model, input_ids, attention_mask, layers, rows, dtype, None,
        0.0, 0, device, return_certificate, model_kwargs,
    )  # fmt: skip


attention_weights.__doc__ = (
    r"""The raw attention probabilities, in the same layout as
    :func:`efficient_attention` (zero at padded positions); the certificate
    checks that their rows sum to one within the rounding of the model's
    softmax.
"""
    + _COMMON_DOC.replace(_SOLVER_DOC, "").replace(_RTOL_DOC, "")
    + r"""
    Examples::

        >>> from captum_effattn import attention_weights
        >>> A = attention_weights(model, ids, mask)
"""
)
