r"""Captum attribution classes built on raw, effective and efficient attention.

All four classes take the ``forward_func`` a user already passes to
``LayerIntegratedGradients`` and token ids as ``inputs``; they find the
attention modules of ``model`` themselves (see
:mod:`captum_effattn._core.adapters`) and turn the attention matrices into one
score per input token.
"""

from __future__ import annotations

import operator
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from captum.attr import Attribution
from captum.log import log_usage
from torch import Tensor, nn

from captum_effattn._compat import (
    TargetType,
    _format_additional_forward_args,
    _format_output,
    _format_tensor_into_tuples,
    _is_tuple,
    _select_targets,
)
from captum_effattn._core.adapters import (
    ModelAdapter,
    check_positional_arguments,
    expand_kv,
    index_list,
    unwrap_model,
)
from captum_effattn._core.functional import (
    OBJECTIVES,
    Certificate,
    check_algebra_dtype,
    check_not_meta,
    check_solver_options,
    check_token_inputs,
    format_target,
    run_with_capture,
    solve_layers,
    user_stacklevel,
    warn_unmasked_padding,
)
from captum_effattn._core.solver import DEFAULT_MAX_ITER

__all__ = [
    "EfficientAttention",
    "EffectiveAttention",
    "AttentionWeights",
    "AttentionRollout",
    "AttentionResult",
    "LAYER_MODES",
    "HEAD_MODES",
    "WEIGHTINGS",
]

#: Accepted string values of ``layer`` (besides an integer index).
LAYER_MODES = ("mean", "rollout", "gradient_rollout")
#: Accepted string values of ``heads`` (besides a list of head indices).
HEAD_MODES = ("mean", "max")
#: Accepted values of ``weighting``.
WEIGHTINGS = ("none", "value_norm", "gradient")

#: Arguments of Captum's other ``attribute`` methods that a one-line switch
#: from them may leave behind, with the reason that attention takes none.
_OTHER_METHODS_ARGS = {
    "baselines": "attention compares the input with no reference input",
    "n_steps": "attention is read from one forward pass, not integrated",
    "method": "attention is read from one forward pass, not integrated",
    "internal_batch_size": "the batch goes through the model in one pass",
    "return_convergence_delta": "attention has no convergence delta "
    "(has_convergence_delta() is False)",
    "feature_mask": "attention scores every token position",
    "n_samples": "attention needs no sampling",
    "perturbations_per_eval": "attention needs no perturbed inputs",
    "attribute_to_layer_input": "attention is read at the attention modules",
    "show_progress": "there is one forward pass to run",
    "grad_kwargs": "attention takes no gradient of the inputs",
    "return_input_shape": "the scores always have the shape of the inputs",
    "abs": "attention has no input gradients (take .abs() of the scores)",
    "stdevs": "attention adds no noise to the inputs",
    "custom_attribution_func": "attention multiplies no input gradients",
}

LayerType = Union[int, str]
HeadsType = Union[str, Sequence[int]]
QueryType = Union[None, int, str]


@dataclass
class AttentionResult:
    r"""What ``attribute(..., return_matrices=True)`` returns besides the scores.

    Attributes:
        matrices (dict): layer index -> (batch, heads, rows, seq) attention rows
                    (raw, effective or efficient; before weighting), in the
                    algebra's dtype.
        rows (Tensor): (batch, rows) query positions of those rows.
        certificate (Certificate): exactness certificate, one value per
                    (layer, example, head), layers in ``sorted(matrices)`` order.
    """

    matrices: Dict[int, Tensor]
    rows: Tensor
    certificate: Certificate


def _unexpected_arguments(owner: str, kwargs: Dict[str, Any]) -> str:
    unknown = [name for name in kwargs if name not in _OTHER_METHODS_ARGS]
    if unknown:
        return f"{owner}.attribute() got an unexpected keyword argument {unknown[0]!r}"
    reasons = "; ".join(f"{name}: {_OTHER_METHODS_ARGS[name]}" for name in kwargs)
    return (
        f"{owner}.attribute() takes none of Captum's {', '.join(kwargs)} ({reasons}). "
        "Drop them: from LayerIntegratedGradients, keep inputs, target and "
        "additional_forward_args"
    )


class _AttentionAttribution(Attribution):
    _kind = "raw"
    _default_layer: LayerType = -1
    objective = "min_norm"

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        model: Optional[nn.Module] = None,
        *,
        dtype: torch.dtype = torch.float64,
        rtol: Optional[float] = None,
        tol: Optional[float] = None,
        max_iter: int = DEFAULT_MAX_ITER,
    ) -> None:
        r"""
        Args:
            forward_func (Callable or nn.Module): the model or a function that
                        runs it and returns logits, e.g.
                        ``lambda ids, mask: model(ids, attention_mask=mask).logits``
                        (the same one given to ``LayerIntegratedGradients``).
            model (nn.Module, optional): the Hugging Face model whose attention
                        is read (loaded with ``attn_implementation="eager"``);
                        a ``torch.nn.DataParallel`` or
                        ``DistributedDataParallel`` wrapper is looked through.
                        Default: ``forward_func`` when it is an ``nn.Module``.
            dtype (torch.dtype, optional): dtype of the algebra.
                        Default: ``torch.float64``
            rtol (float, optional): relative tolerance of the numerical rank.
                        Default: ``max(n, d_h) * eps(dtype)``, ``n`` the
                        keys of the row (its example's real tokens, up to
                        the row itself for a decoder)
            tol (float, optional): solver tolerance on the KKT residual
                        (efficient attention). Default: 1e-12 in float64,
                        1e-6 in float32
            max_iter (int, optional): solver iterations at most; rows that
                    miss ``tol`` within them raise a ``RuntimeWarning``.
                    Default: 100
        """
        Attribution.__init__(self, forward_func)
        if model is None:
            if not isinstance(forward_func, nn.Module):
                raise ValueError(
                    "forward_func is not a torch.nn.Module: pass model=, the "
                    "Hugging Face model whose attention should be read"
                )
            model = forward_func
        if isinstance(forward_func, nn.Module) and unwrap_model(forward_func) is (
            unwrap_model(model)
        ):
            # the wrapped model itself: run it directly, not scattered over
            # DataParallel replicas whose attention the hooks would split
            self.forward_func = unwrap_model(forward_func)
        check_algebra_dtype(dtype)
        check_solver_options(tol, max_iter, rtol)
        self.model = model
        self.adapter = ModelAdapter(model)
        self.dtype = dtype
        self.rtol = rtol
        self.tol = tol
        self.max_iter = max_iter

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    def has_convergence_delta(self) -> bool:
        return False

    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        layer: Optional[LayerType] = None,
        heads: HeadsType = "mean",
        query: QueryType = None,
        weighting: str = "none",
        return_matrices: bool = False,
        **kwargs: Any,
    ) -> Union[
        Tensor,
        Tuple[Tensor, ...],
        Tuple[Union[Tensor, Tuple[Tensor, ...]], AttentionResult],
    ]:
        r"""
        Args:
            inputs (Tensor or tuple[Tensor, ...]): token ids (batch, seq), or a
                        tuple whose first element is the ids, exactly as given
                        to ``LayerIntegratedGradients``.
            target (int, tuple, Tensor or list, optional): output index per
                        example, as in Captum (numpy integers and a
                        ``(batch, 1)`` tensor too). Attention itself does not
                        depend on it; it matters for ``weighting="gradient"`` and
                        ``layer="gradient_rollout"``, where ``None`` means the
                        predicted class. Default: None
            additional_forward_args (Any, optional): further arguments of
                        ``forward_func`` after the inputs (typically the
                        attention mask). The attention mask the model actually
                        received decides which positions are padding.
                        Default: None
            layer (int or str, optional): a layer index (negative counts from
                        the end; numpy and 0-d torch integers too),
                        ``"mean"`` over layers, ``"rollout"`` (Abnar &
                        Zuidema, 2020: product of ``½(M + I)``) or
                        ``"gradient_rollout"`` (Chefer et al., 2021:
                        ``R ← R + mean_h((∇A ⊙ M)⁺) R``).
                        Default: the class's default (-1, or ``"rollout"``
                        for :class:`AttentionRollout`).
            heads (str, int or list of int, optional): ``"mean"``, ``"max"``,
                        a head index, or a list of heads to average (also
                        with ``layer="gradient_rollout"``, whose per-head
                        terms are averaged). Default: ``"mean"``
            query (int or str, optional): the attention row read: a position,
                        or ``"all"`` for the attention each token receives
                        (mean over real query rows). Default: the first
                        real token ([CLS]; position 0 unless the batch is
                        left-padded) for encoders; for decoders, the token
                        the classifier reads (a
                        ``...ForSequenceClassification`` pools the last
                        token whose id is not ``config.pad_token_id``),
                        else the last real token.
            weighting (str, optional): ``"none"``, ``"value_norm"`` (times
                        ``‖t_j‖ = ‖v_j W_O,h‖``, Kobayashi et al., 2020) or
                        ``"gradient"`` (times the gradient of the target output
                        with respect to the attention probabilities; one
                        backward pass); ``layer="rollout"`` and
                        ``"gradient_rollout"`` take ``"none"`` only.
                        Default: ``"none"``
            return_matrices (bool, optional): also return an
                        :class:`AttentionResult` with the matrices and their
                        certificate. Default: False
            **kwargs: none is taken. Arguments of Captum's other methods
                        (``baselines``, ``n_steps``,
                        ``return_convergence_delta``...) get a TypeError that
                        says why attention needs none of them.

        Returns:
            Attributions of the shape of ``inputs`` (a tuple when a tuple came
            in; elements after the ids get zeros), in the default float dtype,
            zero at padded positions. With ``return_matrices=True``, a tuple
            ``(attributions, AttentionResult)``.
        """
        if kwargs:
            raise TypeError(_unexpected_arguments(type(self).__name__, kwargs))
        layer = _as_index(self._default_layer if layer is None else layer)
        if not isinstance(return_matrices, (bool, np.bool_)):
            raise TypeError(
                f"return_matrices must be True or False, got {return_matrices!r}"
            )
        heads = self._check_options(layer, heads, weighting)
        needs_grad = weighting == "gradient" or layer == "gradient_rollout"
        if needs_grad and torch.is_inference_mode_enabled():
            # Tensors made under torch.inference_mode() cannot enter autograd:
            # leave it, with ordinary copies of the tensor arguments.
            with torch.inference_mode(False):
                return self.attribute(
                    _copy_tensors(inputs), _copy_tensors(target),
                    _copy_tensors(additional_forward_args), layer=layer,
                    heads=heads, query=query, weighting=weighting,
                    return_matrices=return_matrices,
                )  # fmt: skip
        if not isinstance(inputs, (Tensor, tuple)):
            raise TypeError(
                "inputs must be a tensor of token ids (batch, seq) or a tuple "
                f"whose first element is one, got {type(inputs).__name__}; use "
                "tokenizer(texts, return_tensors='pt', padding=True)['input_ids']"
            )
        is_tuple = _is_tuple(inputs)
        formatted = _format_tensor_into_tuples(inputs)
        if formatted is None or len(formatted) == 0:
            raise ValueError("inputs must be a tensor of token ids or a tuple of them")
        ids = formatted[0]
        # types, shapes, vocabulary; the window once the mask is known
        check_token_inputs(self.adapter, ids, check_window=False)
        extra = _format_additional_forward_args(additional_forward_args) or ()
        adapter = self.adapter
        layers = (
            [adapter.layer_indices(layer)[0]]
            if isinstance(layer, int)
            else list(range(adapter.num_layers))
        )

        named = [(f"inputs[{i}]", t) for i, t in enumerate(formatted)]
        named += [(f"additional_forward_args[{i}]", t) for i, t in enumerate(extra)]
        check_not_meta(named)
        check_positional_arguments(self.forward_func, formatted, extra)

        def call() -> Any:
            return self.forward_func(*formatted, *extra)

        output, caps, call_args = run_with_capture(
            adapter, call, layers, grad=needs_grad
        )
        mask = None
        if call_args is not None:
            mask = call_args.arguments.get("attention_mask")
        if mask is not None and mask.shape != ids.shape:
            raise ValueError(
                f"the model received an attention_mask of shape {tuple(mask.shape)} "
                f"for input ids of shape {tuple(ids.shape)}; they must match: pass "
                "the mask that belongs to the ids in additional_forward_args"
            )
        ids, key_mask = check_token_inputs(adapter, ids, mask)
        device = caps[layers[0]]["weights"].device
        key_mask = key_mask.to(device)
        received = call_args.arguments.get("input_ids") if call_args else None
        if not isinstance(received, Tensor) or received.shape != ids.shape:
            received = ids
        rows = self._rows(query, key_mask, layer, received.to(device))
        grads: Dict[int, Tensor] = {}
        if needs_grad:
            logits = output.logits if hasattr(output, "logits") else output
            if not isinstance(logits, Tensor):
                raise TypeError(
                    f"forward_func must return a tensor of logits, got "
                    f"{type(output).__name__}; weighting={weighting!r}, "
                    f"layer={layer!r} differentiates it. For a Hugging Face "
                    "model return its .logits, e.g. lambda ids, mask: "
                    "model(ids, attention_mask=mask).logits"
                )
            selected = _target_scores(logits, target, ids.shape[0], layer, weighting)
            if not bool(torch.isfinite(selected).all()):
                raise ValueError(
                    "forward_func returned NaN or inf for the target output; "
                    f"weighting={weighting!r}, layer={layer!r} needs its gradient: "
                    "check the model's weights and dtype, or use weighting='none'"
                )
            weights = [caps[idx]["weights"] for idx in layers]
            with torch.enable_grad():  # the sum too, under a caller's no_grad()
                total = selected.sum()
                wgrads = (
                    torch.autograd.grad(total, weights, allow_unused=True)
                    if total.requires_grad
                    else [None] * len(weights)
                )
            for idx, g in zip(layers, wgrads):
                if g is None:
                    raise ValueError(
                        f"weighting={weighting!r}, layer={layer!r} needs the "
                        "gradient of forward_func's output with respect to the "
                        f"attention of layer {idx}, but the output is not "
                        "connected to it: forward_func ran the model under "
                        "torch.no_grad() or detached its output, or the model "
                        "is torch.compile'd (its graph hides the attention). "
                        "Return the model's logits with their graph and pass "
                        "the uncompiled model, or use weighting='none'"
                    )
                if not bool(torch.isfinite(g).all()):
                    raise ValueError(
                        "the gradient of the target output with respect to the "
                        f"attention of layer {idx} has NaN or inf entries (NaN "
                        "weights in the model's head?); check the model's weights "
                        "and dtype, or use weighting='none'"
                    )
                grads[idx] = g.detach()
        elif target is not None:
            # unused without a gradient, but a class out of range is a typo
            # that should not pass as a class-specific explanation
            logits = getattr(output, "logits", output)
            is_2d = isinstance(logits, Tensor) and logits.dim() == 2
            if is_2d and logits.shape[0] == ids.shape[0]:
                format_target(target, ids.shape[0], logits.shape[1])
        if mask is None:
            warn_unmasked_padding(
                ids,
                getattr(adapter.model.config, "pad_token_id", None),
                "e.g. additional_forward_args=(attention_mask,) with a "
                "forward_func(ids, mask)",
            )

        matrices: Dict[int, Tensor] = {}
        certs: List[Certificate] = []
        per_layer: Dict[int, Tensor] = {}
        full = torch.arange(ids.shape[1], device=device).expand(ids.shape[0], -1)
        row_idx = full if layer in ("rollout", "gradient_rollout") else rows
        solved = solve_layers(
            self._kind,
            [
                (
                    caps[idx]["weights"].detach(),
                    caps[idx]["values"].detach(),
                    adapter.output_weights(idx).detach().to(device),
                    key_mask,
                    row_idx,
                )
                for idx in layers
            ],
            causal=adapter.causal,
            dtype=self.dtype,
            rtol=self.rtol,
            tol=self.tol,
            max_iter=self.max_iter,
            objective=self.objective,
        )
        for idx, (m, cert) in zip(layers, solved):
            matrices[idx] = m
            certs.append(cert)
            if layer == "gradient_rollout":
                g = _gather_rows(grads[idx], row_idx).to(m.dtype)
                per_layer[idx] = _reduce_heads((g * m).clamp(min=0), heads)
            else:
                w = self._weights(weighting, idx, caps, grads, row_idx, m)
                per_layer[idx] = _reduce_heads(m * w if w is not None else m, heads)

        scores = self._combine(per_layer, layers, layer, rows, key_mask)
        scores = (scores * key_mask.to(scores.dtype)).to(torch.get_default_dtype())
        attributions = (scores,) + tuple(
            torch.zeros_like(t, dtype=scores.dtype) for t in formatted[1:]
        )
        result = _format_output(is_tuple, attributions)
        if return_matrices:
            return result, AttentionResult(
                matrices=matrices,
                rows=full if layer in ("rollout", "gradient_rollout") else rows,
                certificate=Certificate.stack(certs),
            )
        return result

    # ---------------------------------------------------------------- helpers
    def _check_options(
        self, layer: LayerType, heads: HeadsType, weighting: str
    ) -> HeadsType:
        r"""Validate the options; return ``heads`` normalised (a mode string,
        or a list of ints)."""
        if isinstance(layer, str):
            if layer not in LAYER_MODES:
                raise ValueError(
                    f"layer must be an int or one of {LAYER_MODES}, got {layer!r}"
                )
        elif isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(
                f"layer must be an int or one of {LAYER_MODES}, got {layer!r}"
            )
        else:
            self.adapter.layer_indices([layer])
        num = self.adapter.num_heads
        if isinstance(heads, str):
            if heads not in HEAD_MODES:
                raise ValueError(
                    f"heads must be one of {HEAD_MODES} or a list of head "
                    f"indices, got {heads!r}"
                )
        else:
            if isinstance(heads, (bytes, bytearray)):
                raise TypeError(f"heads must be {HEAD_MODES} or ints, got {heads!r}")
            heads = index_list(heads, "heads")
            if not heads or any(not 0 <= h < num for h in heads):
                raise ValueError(
                    f"heads must be {HEAD_MODES} or indices in [0, {num}), "
                    f"got {heads}"
                )
            twice = sorted({h for h in heads if heads.count(h) > 1})
            if twice:  # a mean over the list would weigh them twice
                raise ValueError(f"head(s) {twice} are named twice in {heads}")
        if weighting not in WEIGHTINGS:
            raise ValueError(
                f"weighting must be one of {WEIGHTINGS}, got {weighting!r}"
            )
        if layer == "gradient_rollout" and weighting != "none":
            raise ValueError(
                "layer='gradient_rollout' is already gradient-weighted; use "
                "weighting='none'"
            )
        if layer == "rollout" and weighting != "none":
            # weighted rows are no distributions and far from 1 in scale, so
            # ½(M + I) would be the identity's: a score on the query alone
            raise ValueError(
                "layer='rollout' multiplies attention distributions, and "
                f"weighting={weighting!r} rows are none (the identity of "
                "½(M + I) would swamp them); use weighting='none', or "
                "layer='gradient_rollout' for a gradient-weighted rollout"
            )
        return heads

    def _rows(
        self, query: QueryType, key_mask: Tensor, layer: LayerType, ids: Tensor
    ) -> Tensor:
        b, n = key_mask.shape
        if query is None:
            left = int((~key_mask[:, 0]).sum())
            if self.adapter.pools_first_token and left:
                warnings.warn(
                    f"{left} example(s) of this batch are padded on the left: a "
                    "Hugging Face encoder classifier reads position 0, which is "
                    "padding there, not the [CLS] row that the default query "
                    "explains (and the last layer's gradient of that row is 0, "
                    "so weighting='gradient' gives 0 there). Pad on the right "
                    "(tokenizer.padding_side = 'right')",
                    stacklevel=user_stacklevel(),
                )
            return self.adapter.default_query(ids, key_mask)
        if isinstance(query, str) and query == "all":
            return torch.arange(n, device=key_mask.device).expand(b, n)
        query = _as_index(query)
        if isinstance(query, int) and not isinstance(query, bool):
            if not -n <= query < n:
                raise ValueError(
                    f"query {query} out of range for sequences of length {n}"
                )
            q = torch.full((b, 1), query % n, dtype=torch.long, device=key_mask.device)
            if not bool(key_mask.gather(1, q).all()):
                raise ValueError(f"query position {query} is padding in some example")
            return q
        raise ValueError(f"query must be None, an int or 'all', got {query!r}")

    def _weights(
        self,
        weighting: str,
        idx: int,
        caps: Dict[int, Dict[str, Tensor]],
        grads: Dict[int, Tensor],
        rows: Tensor,
        m: Tensor,
    ) -> Optional[Tensor]:
        if weighting == "none":
            return None
        if weighting == "gradient":
            return _gather_rows(grads[idx], rows).to(m.dtype)
        # value_norm: ‖t_j‖ = ‖v_j W_O,h‖ for every head and key.
        v = expand_kv(caps[idx]["values"].detach(), m.shape[1]).to(m.dtype)
        w = self.adapter.output_weights(idx).detach().to(device=v.device, dtype=m.dtype)
        return (v @ w[None]).norm(dim=-1).unsqueeze(2)  # (B, H, 1, N)

    def _combine(
        self,
        per_layer: Dict[int, Tensor],
        layers: List[int],
        layer: LayerType,
        rows: Tensor,
        key_mask: Tensor,
    ) -> Tensor:
        fmask = key_mask.to(next(iter(per_layer.values())).dtype)
        if layer in ("rollout", "gradient_rollout"):
            eye = torch.diag_embed(fmask)  # identity on real tokens
            joint = eye
            for idx in layers:
                mat = per_layer[idx]
                if layer == "rollout":
                    mat = 0.5 * mat + 0.5 * eye
                    joint = mat @ joint
                else:
                    joint = joint + mat @ joint
            picked = _pick_rows(joint, rows)
        else:
            stacked = torch.stack([per_layer[idx] for idx in layers])  # (L, B, m, N)
            picked = stacked.mean(0)
        if rows.shape[1] == 1:
            return picked[:, 0]
        # query="all": the attention each token receives, mean over real rows.
        row_real = key_mask.gather(1, rows).to(picked.dtype)
        return (picked * row_real.unsqueeze(-1)).sum(1) / row_real.sum(1, keepdim=True)


def _copy_tensors(value: Any) -> Any:
    r"""``value`` with every tensor (also inside tuples and lists) cloned."""
    if isinstance(value, Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_copy_tensors(v) for v in value)
    return value


def _as_index(value: Any) -> Any:
    r"""``value`` as an int when it is an integer of numpy or a 0-d integer
    tensor, else unchanged; bools (Python's, numpy's, bool tensors) stay as
    they are, to be refused (``operator.index(torch.tensor(True))`` is 1)."""
    if isinstance(value, (str, bool, np.bool_)) or (
        isinstance(value, Tensor) and value.dtype == torch.bool
    ):
        return value
    try:
        return operator.index(value)
    except TypeError:
        return value


def _target_scores(
    logits: Tensor, target: TargetType, batch: int, layer: Any, weighting: str
) -> Tensor:
    r"""The output that gradient weighting differentiates: one score per
    example, picked by ``target`` as in Captum (None: the predicted class of
    ``(batch, classes)`` logits, or the output itself when ``forward_func``
    returns one score per example)."""
    need = f"weighting={weighting!r}, layer={layer!r} needs a gradient"
    if logits.dim() == 0 or logits.shape[0] != batch:
        raise ValueError(
            f"forward_func returned an output of shape {tuple(logits.shape)} for "
            f"a batch of {batch}; {need} of one output per example: return "
            "logits of shape (batch, classes)"
        )
    with torch.enable_grad():  # also under the caller's torch.no_grad()
        if logits.dim() == 1:
            if target is not None:
                raise ValueError(
                    "forward_func returns one score per example (shape "
                    f"{tuple(logits.shape)}); pass target=None"
                )
            return logits
        if target is None:
            if logits.dim() != 2:
                raise ValueError(
                    f"forward_func returned an output of shape "
                    f"{tuple(logits.shape)}; {need} of one output per example: "
                    "pass a target that picks one (as in Captum, e.g. a tuple of "
                    "indices), or return (batch, classes) logits (for a causal "
                    "LM, e.g. the logits of the last real token)"
                )
            target = logits.argmax(-1)
        elif logits.dim() == 2:
            # Captum's forms, checked as the metrics check them (numpy
            # integers, (batch, 1) tensors, lists of 1-tuples, a 1-tuple); a
            # longer tuple indexes an output of more dimensions, which goes to
            # Captum as it is
            target = format_target(target, batch, logits.shape[1]).to(logits.device)
        selected = _select_targets(logits, target)
    if selected.shape != (batch,):
        raise ValueError(
            f"target {target!r} picks outputs of shape {tuple(selected.shape)} "
            f"from forward_func's output of shape {tuple(logits.shape)}; {need} "
            "of one output per example"
        )
    return selected


def _gather_rows(mat: Tensor, rows: Tensor) -> Tensor:
    b, h, n, _ = mat.shape
    return mat.gather(2, rows[:, None, :, None].expand(b, h, rows.shape[1], n))


def _pick_rows(mat: Tensor, rows: Tensor) -> Tensor:
    b, n, _ = mat.shape
    return mat.gather(1, rows[:, :, None].expand(b, rows.shape[1], n))


def _reduce_heads(mat: Tensor, heads: HeadsType) -> Tensor:
    if heads == "mean":
        return mat.mean(1)
    if heads == "max":
        return mat.amax(1)
    return mat[:, list(heads)].mean(1)


class EfficientAttention(_AttentionAttribution):
    r"""Efficient attention as a Captum attribution method.

    For every head and query row, efficient attention is the minimum-norm
    probability distribution that gives the same head output as the raw
    attention row: ``E_i = argmin ‖x‖₂ s.t. x T = A_i T, x ≥ 0, Σ x = 1``
    with ``T = V_h W_O,h``. It is output-equivalent to the attention (every
    layer's output and the logits are unchanged), it is a probability
    distribution, and it is the output-equivalent distribution closest to
    the effective attention of Brunner et al. (2020). This precise
    construction is this package's, after the efficient attention of
    Naim & Asher, "On Explaining with Attention Matrices" (ECAI 2024,
    https://arxiv.org/abs/2410.18541), of which only the abstract was
    available to us.

    By default only the rows that the attribution reads are solved: the
    [CLS] row of the last layer needs one row per head.

    Examples::

        >>> from captum.attr import LayerIntegratedGradients
        >>> from captum_effattn import EfficientAttention
        >>> forward = lambda ids, mask: model(ids, attention_mask=mask).logits
        >>> # lig = LayerIntegratedGradients(forward, model.bert.embeddings)
        >>> explainer = EfficientAttention(forward, model=model)
        >>> scores = explainer.attribute(ids, target=1,
        ...                              additional_forward_args=(mask,))
        >>> scores.shape == ids.shape
        True
    """

    _kind = "efficient"

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        model: Optional[nn.Module] = None,
        *,
        objective: str = "min_norm",
        **solver_options: Any,
    ) -> None:
        r"""
        Args:
            forward_func (Callable or nn.Module): the model or a function that
                        runs it and returns logits (as for
                        ``LayerIntegratedGradients``).
            model (nn.Module, optional): the Hugging Face model whose attention
                        is read. Default: ``forward_func`` when it is a module.
            objective (str, optional): ``"min_norm"`` (the minimum-norm
                        output-equivalent distribution) or ``"sparse"`` (a
                        vertex of the output-equivalent polytope, with at most
                        ``rank([T, 1])`` non-zeros). Default: ``"min_norm"``
            **solver_options: ``dtype``, ``rtol``, ``tol``, ``max_iter`` as for
                        the other attention classes.
        """
        if objective not in OBJECTIVES:
            raise ValueError(
                f"objective must be one of {OBJECTIVES}, got {objective!r}"
            )
        super().__init__(forward_func, model, **solver_options)
        self.objective = objective

    @classmethod
    def get_name(cls) -> str:
        return "Efficient Attention"


class EffectiveAttention(_AttentionAttribution):
    r"""Effective attention (Brunner et al., "On Identifiability in
    Transformers", ICLR 2020, https://arxiv.org/abs/1908.04211) as a Captum
    attribution method: ``A P`` with ``P`` the orthogonal projector onto the
    column space of ``T = V_h W_O,h``. Output-equivalent to the attention,
    but its rows are in general not probability distributions.

    Examples::

        >>> from captum.attr import LayerIntegratedGradients
        >>> from captum_effattn import EffectiveAttention
        >>> forward = lambda ids, mask: model(ids, attention_mask=mask).logits
        >>> # lig = LayerIntegratedGradients(forward, model.bert.embeddings)
        >>> explainer = EffectiveAttention(forward, model=model)
        >>> scores = explainer.attribute(ids, target=1,
        ...                              additional_forward_args=(mask,))
        >>> scores.shape == ids.shape
        True
    """

    _kind = "effective"

    @classmethod
    def get_name(cls) -> str:
        return "Effective Attention"


class AttentionWeights(_AttentionAttribution):
    r"""Raw attention probabilities as a Captum attribution method (the
    baseline of Jain & Wallace, 2019 and Wiegreffe & Pinter, 2019).

    Examples::

        >>> from captum.attr import LayerIntegratedGradients
        >>> from captum_effattn import AttentionWeights
        >>> forward = lambda ids, mask: model(ids, attention_mask=mask).logits
        >>> # lig = LayerIntegratedGradients(forward, model.bert.embeddings)
        >>> explainer = AttentionWeights(forward, model=model)
        >>> scores = explainer.attribute(ids, target=1,
        ...                              additional_forward_args=(mask,))
        >>> scores.shape == ids.shape
        True
    """

    _kind = "raw"

    @classmethod
    def get_name(cls) -> str:
        return "Attention Weights"


class AttentionRollout(_AttentionAttribution):
    r"""Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in
    Transformers", ACL 2020, https://arxiv.org/abs/2005.00928) on raw
    attention: the product over layers of ``½(A_ℓ + I)`` (heads averaged),
    read at the query row. ``layer="gradient_rollout"`` gives the gradient-
    weighted rollout of Chefer et al. (ICCV 2021). For rollout of efficient
    attention use ``EfficientAttention(...).attribute(..., layer="rollout")``.

    Examples::

        >>> from captum.attr import LayerIntegratedGradients
        >>> from captum_effattn import AttentionRollout
        >>> forward = lambda ids, mask: model(ids, attention_mask=mask).logits
        >>> # lig = LayerIntegratedGradients(forward, model.bert.embeddings)
        >>> explainer = AttentionRollout(forward, model=model)
        >>> scores = explainer.attribute(ids, target=1,
        ...                              additional_forward_args=(mask,))
        >>> scores.shape == ids.shape
        True
    """

    _kind = "raw"
    _default_layer = "rollout"

    @classmethod
    def get_name(cls) -> str:
        return "Attention Rollout"
