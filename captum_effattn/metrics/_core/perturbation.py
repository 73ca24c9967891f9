r"""Token-level perturbations for Captum's metrics and robustness tools.

- :func:`token_perturb_func` builds the ``perturb_func`` that
  :func:`captum.metrics.infidelity` and :func:`captum.metrics.sensitivity_max`
  call. Their default perturbations add float noise, which turns token ids
  into meaningless floats; these replace a few whole tokens instead, never
  touch special tokens or padding, and keep the ids' integer dtype.
- :func:`token_removal_attack` removes, masks or keeps the top-k tokens of an
  attribution. It is the attack that :class:`captum.robust.MinParamPerturbation`
  searches over (``arg_name="k"``) and it can be added to
  :class:`captum.robust.AttackComparator`.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from captum_effattn.metrics._core.erase import (
    _check_attributions,
    _check_fraction,
    _check_ids,
    _check_mask,
    _check_mode,
    _content_mask,
    _erase,
    _keep_mask,
    _num_tokens,
    _rank_positions,
)

TokenInputs = Union[Tensor, Tuple[Tensor, ...]]

_KINDS = ("infidelity", "sensitivity")
_PERTURB_MODES = ("mask", "pad", "random")


def token_perturb_func(
    kind: str = "infidelity",
    *,
    mode: Optional[str] = None,
    n_tokens: Optional[int] = None,
    probability: Optional[float] = None,
    special_tokens_mask: Optional[Tensor] = None,
    attention_mask: Optional[Tensor] = None,
    protected_ids: Optional[Iterable[int]] = None,
    tokenizer: Any = None,
    mask_token_id: Optional[int] = None,
    pad_token_id: Optional[int] = None,
    vocab_size: Optional[int] = None,
    ids_index: int = 0,
    mask_index: Optional[int] = None,
    seed: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    example_seeds: Optional[Union[Sequence[int], Tensor]] = None,
) -> Callable[..., Any]:
    r"""
    Build a token-safe ``perturb_func`` for :func:`captum.metrics.infidelity`
    (``kind="infidelity"``) or :func:`captum.metrics.sensitivity_max`
    (``kind="sensitivity"``) on token-id inputs.

    Captum calls ``perturb_func`` on the inputs repeated
    ``n_perturb_samples`` times with ``repeat_interleave`` (rows
    ``b*m ... b*m+m-1`` are copies of example b); the function built here
    chooses, per row, content tokens at random and replaces them:

    - ``kind="infidelity"``: the function has the signature
      ``perturb(inputs, baselines=None)`` and returns
      ``(perturbation, perturbed_inputs)``, where ``perturbation`` is a float
      tensor shaped like the ids, 1 at the replaced tokens and 0 elsewhere.
      Infidelity then compares ``sum(attributions * perturbation)`` with
      ``f(x) - f(perturbed x)``: the attribution of a set of tokens should
      predict the effect of removing them (Yeh et al. 2019,
      https://arxiv.org/abs/1901.09392, with a binary perturbation). When
      Captum passes ``baselines`` (token ids: an int or a tensor that
      broadcasts to the ids), the replaced tokens take the baseline ids.
    - ``kind="sensitivity"``: the function has the signature
      ``perturb(inputs)`` (so ``sensitivity_max`` passes no radius) and
      returns the perturbed inputs only.

    Special tokens and padding are never touched: they are read from
    ``special_tokens_mask`` / ``attention_mask`` (the (B, N) masks of the
    unexpanded batch; the function infers the repetition factor), from
    ``protected_ids`` (ids never replaced, e.g. ``tokenizer.all_special_ids``),
    and from the attention mask inside ``inputs`` when ``mask_index`` is set.
    At least one of them (or ``tokenizer``) must be given; pass
    ``protected_ids=()`` for a model without special tokens.

    Args:
        kind (str, optional): ``"infidelity"`` or ``"sensitivity"``.
                    Default: ``"infidelity"``
        mode (str, optional): what replaces a chosen token: ``"mask"``
                    (``mask_token_id``), ``"pad"`` (``pad_token_id``, and
                    attention mask 0 when the mask is part of ``inputs``, see
                    ``mask_index``) or ``"random"`` (a random vocabulary id that
                    differs from the original and is not protected; needs
                    ``vocab_size``). Default: ``"mask"`` for infidelity,
                    ``"random"`` for sensitivity
        n_tokens (int, optional): replace exactly this many content tokens per
                    row (all of them when fewer). Exclusive with
                    ``probability``. Default: 1 for sensitivity
        probability (float, optional): replace each content token
                    independently with this probability. Default: 0.2 for
                    infidelity
        special_tokens_mask (Tensor, optional): (B, N) mask of special tokens
                    of the batch given to the Captum metric. Default: None
        attention_mask (Tensor, optional): (B, N) attention mask of that batch;
                    its zeros (padding) are protected. Default: None
        protected_ids (iterable of int, optional): ids that are never replaced
                    (and never drawn by ``"random"``). Default: None, or
                    ``tokenizer.all_special_ids`` when ``tokenizer`` is given
        tokenizer (optional): a Hugging Face tokenizer from which
                    ``protected_ids``, ``mask_token_id``, ``pad_token_id`` and
                    ``vocab_size`` default. Default: None
        mask_token_id (int, optional): the [MASK] id. Default: None
        pad_token_id (int, optional): the padding id.
                    Default: ``tokenizer.pad_token_id`` when given (for
                    ``mode="pad"``, a tokenizer without one is an error),
                    else 0
        vocab_size (int, optional): number of ids for ``"random"``.
                    Default: None
        ids_index (int, optional): when Captum's ``inputs`` is a tuple, the
                    position of the token ids in it; other elements are returned
                    unchanged (with zero perturbation). Default: 0
        mask_index (int, optional): when ``inputs`` is a tuple that also holds
                    the attention mask, its position: its zeros are protected
                    and ``"pad"`` sets it to 0 at replaced tokens.
                    Default: None
        seed (int, optional): seed of a private ``torch.Generator``, so that
                    the sequence of perturbations is reproducible.
                    Default: None
        generator (torch.Generator, optional): a generator to draw from instead
                    (exclusive with ``seed``). With neither, torch's global
                    random state is used. Default: None
        example_seeds (sequence of int or Tensor, optional): one seed per
                    example of the (unexpanded) batch, exclusive with ``seed``
                    and ``generator``. Each example then draws from its own
                    generator, over its own content tokens (those not
                    protected), one copy after the other, so that its
                    perturbations do not depend on which other examples
                    share its batch, on the batch size, on how far and on
                    which side the batch is padded, or on how Captum splits
                    the copies into calls (``max_examples_per_batch``): the
                    benchmark seeds every document this way. Captum's
                    inputs must then be copies of the batch's examples, each
                    repeated in a row, as its metrics make them.
                    Default: None

    Returns:
        Callable: the ``perturb_func`` described above.

    Examples::

        >>> from captum.metrics import infidelity, sensitivity_max
        >>> from captum_effattn.metrics import token_perturb_func
        >>> def forward(ids, mask):
        ...     return model(input_ids=ids, attention_mask=mask).logits
        >>> perturb = token_perturb_func("infidelity", tokenizer=tokenizer,
        ...                              attention_mask=mask, seed=0)
        >>> infid = infidelity(forward, perturb, ids, attr,
        ...                    additional_forward_args=(mask,), target=0,
        ...                    n_perturb_samples=8)
        >>> resample = token_perturb_func("sensitivity", tokenizer=tokenizer,
        ...                               attention_mask=mask, seed=0)
        >>> sens = sensitivity_max(explain, ids, perturb_func=resample,
        ...                        additional_forward_args=(mask,), target=0)
    """
    if kind not in _KINDS:
        raise ValueError(f"Unknown kind {kind!r}; expected one of {_KINDS}")
    if sum(x is not None for x in (seed, generator, example_seeds)) > 1:
        raise ValueError("give at most one of seed, generator and example_seeds")
    if tokenizer is not None:
        if protected_ids is None:
            protected_ids = getattr(tokenizer, "all_special_ids", None)
        if mask_token_id is None:
            mask_token_id = getattr(tokenizer, "mask_token_id", None)
        if pad_token_id is None:
            pad_token_id = getattr(tokenizer, "pad_token_id", None)
        if vocab_size is None:
            try:
                vocab_size = len(tokenizer)
            except TypeError:
                vocab_size = getattr(tokenizer, "vocab_size", None)
    if mode is None:
        mode = "mask" if kind == "infidelity" else "random"
    if mode not in _PERTURB_MODES:
        raise ValueError(f"Unknown mode {mode!r}; expected one of {_PERTURB_MODES}")
    if pad_token_id is None:
        if mode == "pad" and tokenizer is not None:
            raise ValueError(
                'mode="pad" needs a padding id, and the tokenizer has none '
                "(GPT-2's): set one, e.g. tokenizer.pad_token = "
                "tokenizer.eos_token, or pass pad_token_id="
            )
        pad_token_id = 0
    if mode == "mask" and mask_token_id is None:
        raise ValueError('mode="mask" needs mask_token_id (or a tokenizer)')
    if mode == "random":
        if vocab_size is None:
            raise ValueError('mode="random" needs vocab_size (or a tokenizer)')
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, Integral):
            raise TypeError(f"vocab_size must be an int, got {vocab_size!r}")
    if n_tokens is not None and probability is not None:
        raise ValueError("give either n_tokens or probability, not both")
    if n_tokens is None and probability is None:
        if kind == "infidelity":
            probability = 0.2
        else:
            n_tokens = 1
    if n_tokens is not None:
        if isinstance(n_tokens, bool) or not isinstance(n_tokens, Integral):
            raise TypeError(f"n_tokens must be an int, got {n_tokens!r}")
        if n_tokens < 1:
            raise ValueError(f"n_tokens must be at least 1, got {n_tokens}")
    if probability is not None:
        if isinstance(probability, bool) or not isinstance(probability, Real):
            raise TypeError(f"probability must be a number, got {probability!r}")
        if not 0.0 < float(probability) <= 1.0:
            raise ValueError(f"probability must lie in (0, 1], got {probability}")
    if (
        special_tokens_mask is None
        and attention_mask is None
        and protected_ids is None
        and mask_index is None
    ):
        raise ValueError(
            "token_perturb_func needs to know which tokens to protect: give "
            "special_tokens_mask, attention_mask, protected_ids or a tokenizer "
            "(protected_ids=() for a model without special tokens)"
        )
    for name, m in (
        ("special_tokens_mask", special_tokens_mask),
        ("attention_mask", attention_mask),
    ):
        if m is not None and (not isinstance(m, Tensor) or m.dim() != 2):
            raise ValueError(f"{name} must be a (batch, seq_len) tensor")
    if special_tokens_mask is not None and attention_mask is not None:
        if special_tokens_mask.shape != attention_mask.shape:
            raise ValueError(
                "special_tokens_mask and attention_mask must have the same shape, "
                f"got {tuple(special_tokens_mask.shape)} and "
                f"{tuple(attention_mask.shape)}"
            )
    protected = torch.tensor(
        sorted({int(i) for i in (protected_ids or ())}), dtype=torch.long
    )
    # (B, N) positions never touched: special tokens and padding of the batch
    base_protect: Optional[Tensor] = None
    if special_tokens_mask is not None:
        base_protect = special_tokens_mask != 0
    if attention_mask is not None:
        padding = attention_mask == 0
        if base_protect is not None:
            padding = padding.to(base_protect.device) | base_protect
        base_protect = padding
    candidates: Optional[Tensor] = None
    if mode == "random":
        all_ids = torch.arange(int(vocab_size), dtype=torch.long)  # type: ignore
        candidates = all_ids[~torch.isin(all_ids, protected)]
        if candidates.numel() < 2:
            raise ValueError("the vocabulary has fewer than 2 replaceable ids")
    if seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    example_gens = _example_generators(example_seeds, base_protect)

    def uniform(ids: Tensor, content: Tensor) -> Tuple[Tensor, Tensor]:
        # Two (rows, seq_len) uniform draws on the ids' device: the one that
        # chooses the tokens and the one that draws random ids.
        rows, seq_len = ids.shape
        if example_gens is None:
            gen_device = (
                generator.device if generator is not None else torch.device("cpu")
            )
            draw = [
                torch.rand((rows, seq_len), generator=generator, device=gen_device)
                for _ in range(2 if mode == "random" else 1)
            ]
            return draw[0].to(ids.device), draw[-1].to(ids.device)
        # Per example: each row (one of Captum's copies of it) takes both
        # draws over its content tokens in order, in one piece, so that they
        # do not depend on padding, batch mates, the mode or on how Captum
        # splits the copies into calls.
        n_ex = len(example_gens)
        rep = rows // n_ex
        if rows % n_ex != 0 or not bool(
            (ids.reshape(n_ex, rep, seq_len) == ids[::rep, None]).all()
        ):
            raise ValueError(
                f"perturb_func got {rows} rows of token ids, which are not "
                f"{n_ex} groups of copies of one example each (Captum's "
                f"repetition of a batch of {n_ex}): give one example_seeds "
                "entry per example of the batch"
            )
        noise = torch.ones(2, rows, seq_len)
        cont = content.cpu()
        for b, gen in enumerate(example_gens):
            keep = cont[b * rep]
            got = torch.rand((rep, 2, int(keep.sum())), generator=gen)
            part = noise[:, b * rep : (b + 1) * rep]
            part[:, :, keep] = got.transpose(0, 1)
        return noise[0].to(ids.device), noise[1].to(ids.device)

    def _perturb(inputs: TokenInputs, baselines: Any = None) -> Tuple[Any, Any]:
        is_tuple = isinstance(inputs, tuple)
        parts = list(inputs) if is_tuple else [inputs]
        if not 0 <= ids_index < len(parts):
            raise ValueError(f"ids_index {ids_index} is out of range for the inputs")
        ids = parts[ids_index]
        _check_ids(ids, "the token ids given to perturb_func")
        device = ids.device
        rows, seq_len = ids.shape

        protect = torch.isin(ids, protected.to(device))
        if base_protect is not None:
            n_ex = base_protect.shape[0]
            if base_protect.shape[1] != seq_len or rows % n_ex != 0:
                raise ValueError(
                    f"perturb_func got ids of shape {tuple(ids.shape)}, which is "
                    "not a repetition of the (batch, seq_len) masks "
                    f"{tuple(base_protect.shape)} it was built with"
                )
            protect = protect | base_protect.to(device).repeat_interleave(
                rows // n_ex, dim=0
            )
        in_mask: Optional[Tensor] = None
        if mask_index is not None:
            if not is_tuple or not 0 <= mask_index < len(parts):
                raise ValueError(
                    f"mask_index {mask_index} needs tuple inputs that hold the mask"
                )
            in_mask = parts[mask_index]
            protect = protect | (in_mask == 0)
        content = ~protect

        # choose the tokens
        noise, u = uniform(ids, content)
        if probability is not None:
            chosen = (noise < float(probability)) & content
        else:
            ranks = _rank_positions(noise, content)
            chosen = (ranks < int(n_tokens)) & content  # type: ignore[arg-type]

        # replacement ids
        if baselines is not None and kind == "infidelity":
            fill = _baseline_ids(baselines, ids, ids_index, is_tuple)
        elif mode == "mask":
            fill = torch.full_like(ids, int(mask_token_id))  # type: ignore[arg-type]
        elif mode == "pad":
            fill = torch.full_like(ids, int(pad_token_id))  # type: ignore[arg-type]
        else:
            fill = _random_ids(ids, candidates, u)  # type: ignore[arg-type]
        new_ids = torch.where(chosen, fill, ids)
        out_parts = list(parts)
        out_parts[ids_index] = new_ids
        if mode == "pad" and in_mask is not None and mask_index is not None:
            out_parts[mask_index] = in_mask.masked_fill(chosen, 0)
        perturbed: Any = tuple(out_parts) if is_tuple else new_ids
        if kind == "sensitivity":
            return perturbed
        dtype = torch.get_default_dtype()
        perturbation_parts = [
            torch.zeros(p.shape, dtype=dtype, device=p.device) for p in parts
        ]
        perturbation_parts[ids_index] = chosen.to(dtype)
        perturbation: Any = (
            tuple(perturbation_parts) if is_tuple else perturbation_parts[0]
        )
        return perturbation, perturbed

    if kind == "sensitivity":

        def sensitivity_perturb_func(inputs: TokenInputs) -> Any:
            return _perturb(inputs)

        return sensitivity_perturb_func

    def infidelity_perturb_func(inputs: TokenInputs, baselines: Any = None) -> Any:
        if isinstance(baselines, Real) and not isinstance(baselines, Integral):
            # sensitivity_max passes its perturb_radius to a two-argument
            # perturb_func; infidelity passes token ids or nothing
            raise TypeError(
                f"this perturb_func was built for captum.metrics.infidelity "
                f"(kind='infidelity', the default) and got {baselines!r} as "
                "baselines, the perturb_radius that sensitivity_max passes; "
                "for sensitivity_max build it with "
                "token_perturb_func('sensitivity', ...)"
            )
        return _perturb(inputs, baselines)

    return infidelity_perturb_func


def _baseline_ids(
    baselines: Any, ids: Tensor, ids_index: int, is_tuple: bool
) -> Tensor:
    r"""Replacement ids from Captum's ``baselines`` (an int or an id tensor)."""
    if is_tuple and isinstance(baselines, tuple):
        baselines = baselines[ids_index]
    if isinstance(baselines, Tensor):
        if baselines.is_floating_point():
            raise TypeError("baselines for token ids must hold integer ids")
        return baselines.to(device=ids.device, dtype=ids.dtype).expand_as(ids)
    if isinstance(baselines, Integral) and not isinstance(baselines, bool):
        return torch.full_like(ids, int(baselines))
    raise TypeError(
        "baselines for token ids must be an int or an integer tensor, got "
        f"{baselines!r}"
    )


def _example_generators(
    example_seeds: Optional[Union[Sequence[int], Tensor]],
    base_protect: Optional[Tensor],
) -> Optional[List[torch.Generator]]:
    r"""One seeded CPU generator per example, after checking the seeds."""
    if example_seeds is None:
        return None
    if isinstance(example_seeds, (Tensor, np.ndarray)):
        t = torch.as_tensor(example_seeds)
        if t.dim() != 1 or t.is_floating_point() or t.dtype == torch.bool:
            raise TypeError("example_seeds must be a 1-D integer tensor or a list")
        seeds = t.tolist()
    elif isinstance(example_seeds, (list, tuple, range)):
        seeds = list(example_seeds)
    else:
        raise TypeError(
            "example_seeds must be a list, tuple or 1-D integer tensor with one "
            f"seed per example, got {type(example_seeds).__name__}"
        )
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, Integral):
            raise TypeError(f"example_seeds must hold ints, got {s!r}")
    if not seeds:
        raise ValueError("example_seeds is empty: give one seed per example")
    if base_protect is not None and base_protect.shape[0] != len(seeds):
        raise ValueError(
            f"example_seeds has {len(seeds)} seeds for a batch of "
            f"{base_protect.shape[0]} examples (the masks' first dimension): "
            "give one seed per example"
        )
    return [torch.Generator().manual_seed(int(s) % 2**63) for s in seeds]


def _random_ids(ids: Tensor, candidates: Tensor, u: Tensor) -> Tensor:
    r"""A uniformly random candidate id different from each original id, from
    uniform draws ``u`` shaped like ``ids``."""
    n_cand = candidates.numel()
    cand = candidates.to(ids.device)
    # position of the original id among the candidates (n_cand if absent)
    pos = torch.searchsorted(cand, ids.long().clamp(min=0))
    present = (pos < n_cand) & (cand[pos.clamp(max=n_cand - 1)] == ids.long())
    pos = torch.where(present, pos, torch.full_like(pos, n_cand))
    # uniform over the candidates other than the original id
    limit = n_cand - present.long()
    draw = torch.minimum((u * limit).long(), limit - 1)
    draw = draw + (draw >= pos).long()  # skip the original id
    return cand[draw.clamp(max=n_cand - 1)].to(ids.dtype)


def token_removal_attack(
    inputs: TokenInputs,
    k: Optional[Union[int, Tensor]] = None,
    *,
    attributions: Tensor,
    fraction: Optional[float] = None,
    keep: bool = False,
    special_tokens_mask: Optional[Tensor] = None,
    mode: str = "delete",
    mask_token_id: Optional[int] = None,
    pad_token_id: int = 0,
    padding_side: Optional[str] = None,
) -> TokenInputs:
    r"""
    Remove (``keep=False``) or keep only (``keep=True``) the ``k`` top-ranked
    content tokens of an attribution: the attack that
    :class:`captum.robust.MinParamPerturbation` searches over to find the
    minimal necessary set (fewest top tokens whose removal flips the
    prediction, ERASER's "tokens to flip" after Serrano & Smith 2019) and the
    minimal sufficient set (fewest top tokens that alone keep it). See
    :func:`minimal_necessary_size` and :func:`minimal_sufficient_size`, which
    wrap the search.

    Tokens are ranked like in :func:`sufficiency` / :func:`necessity` (ties by
    position, earlier first); special tokens and padding are never removed and
    always kept. The tokens are removed by the same erase function as those
    metrics.

    Args:
        inputs (Tensor or tuple of Tensor): token ids (B, N), or a tuple
                    ``(ids, attention_mask)`` for models that take a mask; the
                    result has the same form. With ids alone there is no
                    padding, and ``"delete"`` fills the freed positions with
                    ``pad_token_id`` that the model will see.
        k (int or Tensor, optional): how many top tokens, per example as a (B,)
                    tensor or the same for all; clipped to [0, content tokens].
                    ``k=0`` removes nothing (``keep=False``) or keeps only the
                    special tokens (``keep=True``). Give ``k`` or ``fraction``.
                    Default: None
        attributions (Tensor): scores of shape (B, N).
        fraction (float, optional): instead of ``k``: k = ceil(fraction x
                    content tokens), at least 1, as in the metrics.
                    Default: None
        keep (bool, optional): keep only the top tokens instead of removing
                    them. Default: False
        special_tokens_mask (Tensor, optional): (B, N), positions that are
                    never removed. Default: None
        mode (str, optional): ``"delete"``, ``"mask"`` or ``"pad"``, as in
                    :func:`necessity`. Default: ``"delete"``
        mask_token_id (int, optional): required for ``"mask"``. Default: None
        pad_token_id (int, optional): the padding id. Default: 0
        padding_side (str, optional): ``"right"`` or ``"left"``, where
                    ``mode="delete"`` puts the new padding. Default:
                    inferred from the batch (``"left"`` when a non-empty row starts
                    with padding, else ``"right"``); pass
                    ``tokenizer.padding_side`` for a batch without padding.

    Returns:
        Tensor or tuple of Tensor: the perturbed ids (B, N), or
        ``(ids, attention_mask)`` when ``inputs`` was a tuple.

    Examples::

        >>> from captum.robust import MinParamPerturbation
        >>> from captum_effattn.metrics import token_removal_attack
        >>> def forward(inp):                    # inp = (ids, attention_mask)
        ...     return model(input_ids=inp[0], attention_mask=inp[1]).logits
        >>> n = int(((mask == 1) & (special == 0)).sum())  # one example
        >>> search = MinParamPerturbation(
        ...     forward, token_removal_attack, arg_name="k", arg_min=0,
        ...     arg_max=n + 1, arg_step=1, mode="binary")
        >>> perturbed, k = search.evaluate(
        ...     (ids, mask), target=label,
        ...     attack_kwargs=dict(attributions=attr,
        ...                        special_tokens_mask=special))
    """
    is_tuple = isinstance(inputs, tuple)
    if is_tuple:
        if len(inputs) != 2:
            raise ValueError(
                "tuple inputs must be (input_ids, attention_mask), got "
                f"{len(inputs)} elements"
            )
        ids, attention_mask = inputs
        _check_ids(ids)
        if not isinstance(attention_mask, Tensor) or attention_mask.shape != ids.shape:
            raise ValueError("the attention mask must have the shape of the ids")
    else:
        ids, attention_mask = inputs, None
        _check_ids(ids)
    _check_mode(mode, mask_token_id)
    attributions = _check_attributions(attributions, ids)
    special = _check_mask(special_tokens_mask, ids, "special_tokens_mask")
    content = _content_mask(ids, attention_mask, special)
    n_content = content.sum(dim=1)
    if (k is None) == (fraction is None):
        raise ValueError("give exactly one of k and fraction")
    if fraction is not None:
        k_t = _num_tokens(_check_fraction(fraction), n_content)
    else:
        if isinstance(k, Tensor):
            if k.is_floating_point() and not torch.equal(k, k.round()):
                raise ValueError(f"k must be integer, got {k}")
            k_t = k.to(device=ids.device).round().long().reshape(-1)
            if k_t.numel() == 1:
                k_t = k_t.expand(ids.shape[0])
            if k_t.numel() != ids.shape[0]:
                raise ValueError("a tensor k needs one value per example")
        elif isinstance(k, Real) and not isinstance(k, bool) and float(k).is_integer():
            k_t = torch.full((ids.shape[0],), int(k), device=ids.device)
        else:
            raise TypeError(f"k must be a whole number or a tensor, got {k!r}")
        if (k_t < 0).any():
            raise ValueError(f"k must not be negative, got {k}")
        k_t = torch.minimum(k_t, n_content)
    ranks = _rank_positions(attributions, content)
    keep_mask = _keep_mask(ranks, k_t, content, keep_top=keep)
    new_ids, new_mask = _erase(
        ids,
        attention_mask,
        keep_mask,
        mode=mode,
        mask_token_id=mask_token_id,
        pad_token_id=pad_token_id,
        padding_side=padding_side,
    )
    if is_tuple:
        return new_ids, new_mask  # type: ignore[return-value]
    return new_ids
