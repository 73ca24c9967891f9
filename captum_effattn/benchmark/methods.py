r"""The attribution methods that ``captum-effattn bench`` compares, by name.

Every method is a :class:`MethodSpec` in :data:`METHODS`; the CLI's
``--methods`` choices, its help text and the docs are generated from this
registry, so they cannot disagree. A method's ``fn`` has the signature

    ``fn(model, forward_func, ids, mask, target, **ctx) -> Tensor``

where ``forward_func(ids, mask)`` returns logits, ``ids`` and ``mask`` are
(B, N), ``target`` is a (B,) tensor of class indices (the benchmark passes
the class the model **predicts** for the unperturbed input, as ERASER does),
and ``ctx`` holds ``special_tokens_mask`` ((B, N) bool), ``pad_token_id``,
``mask_token_id`` and ``seed`` (and optionally ``lime_samples`` and
``ig_steps``, default 500 and 50). It returns (B, N) float scores, higher
meaning more important for the target class; :func:`attribute` checks the
shape, replaces non-finite values and sets padding to 0.

Families and costs per example of N tokens (one forward pass = F):

=========================  ==============================================
method                     cost
=========================  ==============================================
attention, efficient, ...  1 F (+1 backward for ``-grad``); the efficient
                           solve of the [CLS] rows is a few ms
rollout                    1 F
``efficient-grad-first``   1 F + 1 backward + an efficient solve of every
                           row of the first layer (14x ``efficient-grad``)
input-grad                 1 F + 1 backward
``efficient-rollout``      1 F + a full n x n efficient solve per layer
                           (slow: not in the default list)
ig                         50 F + 50 backward (LayerIntegratedGradients)
lime                       500 F (Captum Lime, Ridge surrogate)
ablation                   N F (one token removed at a time)
random                     none
=========================  ==============================================

Removal in ``lime`` and ``ablation`` replaces a token by ``[PAD]`` *and* sets
its attention mask to 0 (the model no longer sees it; the ``"pad"`` mode of
:mod:`captum_effattn.metrics`); special tokens are never removed. Their
forward function returns the softmax probability of the target class, the
quantity the faithfulness metrics measure.

Examples::

    >>> from captum_effattn.benchmark.methods import METHODS, attribute
    >>> sorted(m for m, spec in METHODS.items() if spec.default)[:3]
    ['ablation', 'attention', 'attention-grad']
    >>> scores = attribute("efficient", model, forward, ids, mask, target,
    ...                    special_tokens_mask=special, pad_token_id=0)
    >>> scores.shape == ids.shape
    True
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "MethodSpec",
    "METHODS",
    "method_names",
    "default_methods",
    "parse_methods",
    "attribute",
]

MethodFn = Callable[..., Tensor]

#: Integrated Gradients settings.
IG_STEPS = 50
IG_INTERNAL_BATCH = 50
#: Lime settings.
LIME_SAMPLES = 500
LIME_PER_EVAL = 50
#: Feature ablation: perturbed rows per forward call.
ABLATION_PER_EVAL = 32


@dataclass(frozen=True)
class MethodSpec:
    r"""A registered attribution method.

    Args:
        name (str): the name used by ``--methods`` and in the outputs.
        label (str): a human-readable name for tables and plots.
        family (str): ``"attention"``, ``"gradient"``, ``"perturbation"`` or
                    ``"baseline"``.
        description (str): one line for ``--help`` and the docs.
        fn (callable): ``fn(model, forward_func, ids, mask, target, **ctx)``
                    returning (B, N) scores.
        default (bool): whether ``bench`` runs it when ``--methods`` is not
                    given (the cheap ones).
        cost (str): forward/backward passes per example, for the docs.
        expensive (bool): tens of passes or more per example; the benchmark
                    then skips ``sensitivity`` (which re-runs the method)
                    unless asked for.
    """

    name: str
    label: str
    family: str
    description: str
    fn: MethodFn
    default: bool = True
    cost: str = ""
    expensive: bool = False


# ----------------------------------------------------------------------------
# helpers


def _special(ctx: Dict[str, Any], ids: Tensor) -> Tensor:
    special = ctx.get("special_tokens_mask")
    if special is None:
        return torch.zeros_like(ids, dtype=torch.bool)
    return special.to(ids.device).bool()


def _removal_baseline(ids: Tensor, mask: Tensor, ctx: Dict[str, Any]) -> Tensor:
    r"""[PAD] at content tokens; special tokens and padding keep their ids."""
    keep = _special(ctx, ids) | (mask == 0)
    pad = int(ctx.get("pad_token_id") or 0)
    return torch.where(keep, ids, torch.full_like(ids, pad))


def _removal_forward(
    forward_func: Callable[..., Tensor], pad_token_id: int
) -> Callable[..., Tensor]:
    r"""A forward of probabilities in which [PAD]-replaced content tokens are
    also masked out: ``f(ids, mask, protected)``; ``protected`` (special
    tokens) keep mask 1 even when their id is the pad id (GPT-2 style)."""

    def forward(ids: Tensor, mask: Tensor, protected: Tensor) -> Tensor:
        seen = (ids != pad_token_id) | protected.bool()
        new_mask = mask * seen.to(mask.dtype)
        return torch.softmax(forward_func(ids, new_mask), dim=-1)

    return forward


def _embedding_layer(model: nn.Module) -> nn.Module:
    base = getattr(model, "base_model", model)
    layer = getattr(base, "embeddings", None)
    if isinstance(layer, nn.Module):
        return layer
    return model.get_input_embeddings()


def _attention(
    cls_name: str,
    *,
    layer: Any = -1,
    weighting: str = "none",
    query: Any = None,
    **options: Any,
) -> MethodFn:
    def fn(
        model: nn.Module,
        forward_func: Callable[..., Tensor],
        ids: Tensor,
        mask: Tensor,
        target: Tensor,
        **ctx: Any,
    ) -> Tensor:
        import captum_effattn

        explainer = getattr(captum_effattn, cls_name)(
            forward_func, model=model, **options
        )
        return explainer.attribute(
            ids,
            target=target,
            additional_forward_args=(mask,),
            layer=layer,
            weighting=weighting,
            query=query,
        )

    return fn


def _ig(
    model: nn.Module,
    forward_func: Callable[..., Tensor],
    ids: Tensor,
    mask: Tensor,
    target: Tensor,
    **ctx: Any,
) -> Tensor:
    from captum.attr import LayerIntegratedGradients

    lig = LayerIntegratedGradients(forward_func, _embedding_layer(model))
    attr = lig.attribute(
        ids,
        baselines=_removal_baseline(ids, mask, ctx),
        target=target,
        additional_forward_args=(mask,),
        n_steps=int(ctx.get("ig_steps", IG_STEPS)),
        internal_batch_size=IG_INTERNAL_BATCH,
    )
    return attr.sum(-1)


def _input_grad(
    model: nn.Module,
    forward_func: Callable[..., Tensor],
    ids: Tensor,
    mask: Tensor,
    target: Tensor,
    **ctx: Any,
) -> Tensor:
    from captum.attr import LayerGradientXActivation

    explainer = LayerGradientXActivation(forward_func, _embedding_layer(model))
    attr = explainer.attribute(ids, target=target, additional_forward_args=(mask,))
    return attr.sum(-1)


def _lime(
    model: nn.Module,
    forward_func: Callable[..., Tensor],
    ids: Tensor,
    mask: Tensor,
    target: Tensor,
    **ctx: Any,
) -> Tensor:
    from captum.attr import Lime

    from captum_effattn._compat import sklearn_ridge

    # Ridge as in the original LIME; Captum's default Lasso zeroes most tokens
    surrogate = sklearn_ridge(alpha=1.0)
    pad = int(ctx.get("pad_token_id") or 0)
    lime = Lime(_removal_forward(forward_func, pad), interpretable_model=surrogate)
    special = _special(ctx, ids)
    out = torch.zeros(ids.shape, dtype=torch.get_default_dtype(), device=ids.device)
    # one example at a time, without its padding: Lime fits one surrogate per
    # example anyway, and the interpretable features are its content tokens
    for b in range(ids.shape[0]):
        pos = mask[b].nonzero().flatten()
        x, m, s = ids[b, pos][None], mask[b, pos][None], special[b, pos][None]
        content = ~s[0]
        if not bool(content.any()):
            continue
        n_content = int(content.sum())
        feature = torch.full_like(x, n_content)  # protected tokens: one dummy
        feature[0, content] = torch.arange(n_content, device=x.device)
        coefs = lime.attribute(
            x,
            baselines=_removal_baseline(x, m, {**ctx, "special_tokens_mask": s}),
            target=int(target[b]),
            additional_forward_args=(m, s),
            feature_mask=feature,
            n_samples=int(ctx.get("lime_samples", LIME_SAMPLES)),
            perturbations_per_eval=LIME_PER_EVAL,
        )
        row = torch.where(content, coefs[0].to(out.dtype), torch.zeros_like(coefs[0]))
        out[b, pos] = row.to(out.dtype)
    return out


def _ablation(
    model: nn.Module,
    forward_func: Callable[..., Tensor],
    ids: Tensor,
    mask: Tensor,
    target: Tensor,
    **ctx: Any,
) -> Tensor:
    from captum.attr import FeatureAblation

    pad = int(ctx.get("pad_token_id") or 0)
    ablation = FeatureAblation(_removal_forward(forward_func, pad))
    special = _special(ctx, ids)
    feature = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    return ablation.attribute(
        ids,
        baselines=_removal_baseline(ids, mask, ctx),
        target=target,
        additional_forward_args=(mask, special),
        feature_mask=feature.contiguous(),
        perturbations_per_eval=ABLATION_PER_EVAL,
    )


def _random(
    model: nn.Module,
    forward_func: Callable[..., Tensor],
    ids: Tensor,
    mask: Tensor,
    target: Tensor,
    **ctx: Any,
) -> Tensor:
    # seeded by (seed, the example's tokens): the same example gets the same
    # scores in any batch and process, and a perturbed input new ones; drawn
    # for its real tokens only, so that the side of the padding changes
    # nothing either
    seed = int(ctx.get("seed") or 0)
    scores = torch.zeros(ids.shape)
    for b in range(ids.shape[0]):
        real = (mask[b] != 0).cpu()
        tokens = ids[b].cpu()[real].numpy().tobytes()
        digest = hashlib.sha1(str(seed).encode() + tokens).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
        scores[b, real] = torch.rand(int(real.sum()), generator=gen)
    return scores.to(ids.device)


# ----------------------------------------------------------------------------
# registry

_SPECS: List[MethodSpec] = [
    MethodSpec(
        "efficient",
        "Efficient attention",
        "attention",
        "efficient attention (this package), last layer, [CLS] row, mean of heads",
        _attention("EfficientAttention"),
        cost="1 forward",
    ),
    MethodSpec(
        "effective",
        "Effective attention",
        "attention",
        "effective attention (Brunner et al. 2020), last layer, [CLS] row",
        _attention("EffectiveAttention"),
        cost="1 forward",
    ),
    MethodSpec(
        "attention",
        "Attention",
        "attention",
        "raw attention probabilities, last layer, [CLS] row, mean of heads",
        _attention("AttentionWeights"),
        cost="1 forward",
    ),
    MethodSpec(
        "rollout",
        "Attention rollout",
        "attention",
        "attention rollout (Abnar & Zuidema 2020) of raw attention",
        _attention("AttentionRollout", layer="rollout"),
        cost="1 forward",
    ),
    MethodSpec(
        "efficient-grad",
        "Efficient attention x gradient",
        "attention",
        "efficient attention times the gradient of the target logit w.r.t. "
        "attention, last layer",
        _attention("EfficientAttention", weighting="gradient"),
        cost="1 forward + 1 backward",
    ),
    MethodSpec(
        "effective-grad",
        "Effective attention x gradient",
        "attention",
        "effective attention times the attention gradient, last layer",
        _attention("EffectiveAttention", weighting="gradient"),
        cost="1 forward + 1 backward",
    ),
    MethodSpec(
        "attention-grad",
        "Attention x gradient",
        "attention",
        "raw attention times the attention gradient, last layer",
        _attention("AttentionWeights", weighting="gradient"),
        cost="1 forward + 1 backward",
    ),
    MethodSpec(
        "efficient-valuenorm",
        "Efficient attention x value norm",
        "attention",
        "efficient attention times ||v_j W_O|| (Kobayashi et al. 2020), last layer",
        _attention("EfficientAttention", weighting="value_norm"),
        cost="1 forward",
    ),
    MethodSpec(
        "attention-valuenorm",
        "Attention x value norm",
        "attention",
        "raw attention times ||v_j W_O|| (Kobayashi et al. 2020), last layer",
        _attention("AttentionWeights", weighting="value_norm"),
        cost="1 forward",
    ),
    MethodSpec(
        "efficient-grad-mean",
        "Efficient attention x gradient, mean of layers",
        "attention",
        "efficient attention times the attention gradient, [CLS] rows of all "
        "layers averaged",
        _attention("EfficientAttention", layer="mean", weighting="gradient"),
        cost="1 forward + 1 backward",
    ),
    MethodSpec(
        "attention-grad-rollout",
        "Gradient rollout (attention)",
        "attention",
        "gradient-weighted rollout of raw attention (Chefer et al. 2021)",
        _attention("AttentionWeights", layer="gradient_rollout"),
        cost="1 forward + 1 backward",
    ),
    MethodSpec(
        "efficient-sparse",
        "Sparse efficient attention",
        "attention",
        "sparse efficient attention (a vertex of the output-equivalent "
        "polytope, objective='sparse'), last layer, [CLS] row",
        _attention("EfficientAttention", objective="sparse"),
        cost="1 forward",
    ),
    MethodSpec(
        "efficient-sparse-grad",
        "Sparse efficient attention x gradient",
        "attention",
        "sparse efficient attention times the attention gradient, last layer",
        _attention("EfficientAttention", objective="sparse", weighting="gradient"),
        cost="1 forward + 1 backward",
    ),
    MethodSpec(
        "efficient-grad-first",
        "Efficient attention x gradient, first layer, all rows",
        "attention",
        "efficient attention times the attention gradient, first layer, "
        "summed over every query row (token j's first-order share through "
        "the first attention layer; solves all rows of one layer)",
        _attention("EfficientAttention", layer=0, query="all", weighting="gradient"),
        cost="1 forward + 1 backward + full efficient solve of one layer",
    ),
    MethodSpec(
        "attention-grad-first",
        "Attention x gradient, first layer, all rows",
        "attention",
        "raw attention times the attention gradient, first layer, summed over "
        "every query row",
        _attention("AttentionWeights", layer=0, query="all", weighting="gradient"),
        cost="1 forward + 1 backward",
    ),
    MethodSpec(
        "attention-grad-all",
        "Attention x gradient, all layers, all rows",
        "attention",
        "raw attention times the attention gradient, every layer and query row",
        _attention("AttentionWeights", layer="mean", query="all", weighting="gradient"),
        cost="1 forward + 1 backward",
    ),
    MethodSpec(
        "efficient-grad-all",
        "Efficient attention x gradient, all layers, all rows",
        "attention",
        "efficient attention times the attention gradient, every layer and "
        "query row (full matrices: slow, optional)",
        _attention(
            "EfficientAttention", layer="mean", query="all", weighting="gradient"
        ),
        default=False,
        cost="1 forward + 1 backward + full efficient solve of every layer",
        expensive=True,
    ),
    MethodSpec(
        "efficient-rollout",
        "Efficient attention rollout",
        "attention",
        "rollout of efficient attention (full matrices: slow, optional)",
        _attention("EfficientAttention", layer="rollout"),
        default=False,
        cost="1 forward + full efficient solve of every layer",
        expensive=True,
    ),
    MethodSpec(
        "efficient-grad-rollout",
        "Gradient rollout (efficient attention)",
        "attention",
        "gradient-weighted rollout of efficient attention (full matrices: "
        "slow, optional)",
        _attention("EfficientAttention", layer="gradient_rollout"),
        default=False,
        cost="1 forward + 1 backward + full efficient solve of every layer",
        expensive=True,
    ),
    MethodSpec(
        "ig",
        "Integrated Gradients",
        "gradient",
        "Captum LayerIntegratedGradients on the embeddings, --ig-steps steps "
        f"(default {IG_STEPS}), "
        "[PAD] baseline for content tokens, summed over the embedding",
        _ig,
        cost="--ig-steps forward + backward passes",
        expensive=True,
    ),
    MethodSpec(
        "lime",
        "LIME",
        "perturbation",
        "Captum Lime on tokens, --lime-samples samples "
        f"(default {LIME_SAMPLES}), Ridge surrogate, "
        "removed tokens masked out",
        _lime,
        cost="--lime-samples forward passes",
        expensive=True,
    ),
    MethodSpec(
        "ablation",
        "Feature ablation",
        "perturbation",
        "Captum FeatureAblation: drop in target probability when one token is "
        "masked out",
        _ablation,
        cost="N forward (one per token)",
        expensive=True,
    ),
    MethodSpec(
        "input-grad",
        "Input x gradient",
        "gradient",
        "Captum LayerGradientXActivation on the embeddings, summed over the "
        "embedding (the one-backward-pass gradient baseline)",
        _input_grad,
        cost="1 forward + 1 backward",
    ),
    MethodSpec(
        "random",
        "Random",
        "baseline",
        "uniform random scores (seeded): the floor every method should beat",
        _random,
        cost="none",
    ),
]

#: name -> :class:`MethodSpec`, in display order.
METHODS: Dict[str, MethodSpec] = {spec.name: spec for spec in _SPECS}


def method_names() -> List[str]:
    r"""All registered method names, in display order.

    Returns:
        list of str: the keys of :data:`METHODS`.
    """
    return list(METHODS)


def default_methods() -> List[str]:
    r"""The methods ``bench`` runs when ``--methods`` is not given.

    Returns:
        list of str: the cheap methods, in display order.
    """
    return [name for name, spec in METHODS.items() if spec.default]


def parse_methods(value: Optional[str | Sequence[str]]) -> List[str]:
    r"""Parse a comma-separated list of method names.

    Args:
        value (str or sequence of str, optional): e.g. ``"efficient,ig"``;
                    ``None``, ``""`` or ``"default"`` for
                    :func:`default_methods`, ``"all"`` for every method.

    Returns:
        list of str: the names, duplicates dropped, in the order given.

    Raises:
        ValueError: for an unknown name; the message lists the known ones.
    """
    if value is None:
        return default_methods()
    items = value.split(",") if isinstance(value, str) else list(value)
    names: List[str] = []
    for item in (s.strip() for s in items):
        if not item:
            continue
        if item == "default":
            expanded = default_methods()
        elif item == "all":
            expanded = method_names()
        elif item in METHODS:
            expanded = [item]
        else:
            raise ValueError(
                f"unknown method {item!r}; known: {', '.join(METHODS)} "
                "(or 'default', 'all')"
            )
        names += [n for n in expanded if n not in names]
    return names or default_methods()


def attribute(
    name: str,
    model: nn.Module,
    forward_func: Callable[..., Tensor],
    ids: Tensor,
    mask: Tensor,
    target: Tensor,
    **ctx: Any,
) -> Tensor:
    r"""Run a registered method and check its output.

    Args:
        name (str): a key of :data:`METHODS`.
        model (nn.Module): the Hugging Face classifier (eager attention).
        forward_func (callable): ``forward_func(ids, mask)`` -> logits.
        ids (Tensor): (B, N) token ids.
        mask (Tensor): (B, N) attention mask, 0 at padding.
        target (Tensor): (B,) class indices.
        **ctx: ``special_tokens_mask`` ((B, N)), ``pad_token_id``,
                    ``mask_token_id``, ``seed``, optionally ``lime_samples``
                    and ``ig_steps``.

    Returns:
        Tensor: (B, N) scores in the default float dtype, finite, 0 at padding
        (a non-finite score becomes 0, with a ``RuntimeWarning``).

    Examples::

        >>> scores = attribute("random", model, forward, ids, mask, target,
        ...                    seed=0)
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    scores = METHODS[name].fn(model, forward_func, ids, mask, target, **ctx)
    if isinstance(scores, tuple):
        scores = scores[0]
    if scores.shape != ids.shape:
        raise RuntimeError(
            f"method {name!r} returned shape {tuple(scores.shape)} for inputs of "
            f"shape {tuple(ids.shape)}"
        )
    scores = scores.detach().to(torch.get_default_dtype())
    bad = ~torch.isfinite(scores) & (mask != 0)
    if bool(bad.any()):
        rows = int(bad.any(-1).sum())
        warnings.warn(
            f"method {name!r} returned {int(bad.sum())} non-finite score(s) in "
            f"{rows} of {ids.shape[0]} example(s); they count as 0 (ties, "
            "broken by position) in the metrics",
            RuntimeWarning,
            stacklevel=2,
        )
    scores = torch.nan_to_num(scores, nan=0.0, posinf=0.0, neginf=0.0)
    return scores * (mask != 0).to(scores.dtype)
