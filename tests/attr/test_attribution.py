r"""Conformance and values of the attribution classes against the functional
API and independent implementations of rollout and gradient weighting."""

from __future__ import annotations

import pytest
import torch
from captum.attr import Attribution, LayerIntegratedGradients
from effattn_testing import random_batch, reference_layer

from captum_effattn import (
    AttentionRollout,
    AttentionWeights,
    EffectiveAttention,
    EfficientAttention,
    attention_weights,
    effective_attention,
    efficient_attention,
)
from captum_effattn._core.adapters import ModelAdapter

CLASSES = [EfficientAttention, EffectiveAttention, AttentionWeights, AttentionRollout]
FUNCS = {
    EfficientAttention: efficient_attention,
    EffectiveAttention: effective_attention,
    AttentionWeights: attention_weights,
}


def _forward(model):
    return lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits


@pytest.fixture
def setup(tiny_model):
    model = tiny_model("bert")
    ids, mask = random_batch(3, 24, lengths=[24, 14, 19], seed=1)
    return model, ids, mask


@pytest.mark.parametrize("cls", CLASSES)
def test_conformance(setup, cls):
    model, ids, mask = setup
    explainer = cls(_forward(model), model=model)
    assert isinstance(explainer, Attribution)
    assert explainer.has_convergence_delta() is False
    assert explainer.multiplies_by_inputs is False
    assert isinstance(cls.get_name(), str) and " " in cls.get_name()
    out = explainer.attribute(ids, target=1, additional_forward_args=(mask,))
    assert isinstance(out, torch.Tensor) and out.shape == ids.shape
    assert out.dtype == torch.get_default_dtype()
    assert float(out[mask == 0].abs().sum()) == 0.0
    # tuple inputs give a tuple of the same structure
    out_t = explainer.attribute((ids, mask))
    assert isinstance(out_t, tuple) and len(out_t) == 2
    assert torch.allclose(out_t[0], out) and float(out_t[1].abs().sum()) == 0.0
    # a mixed-length batch equals one example at a time
    for i, n in enumerate([24, 14, 19]):
        one = explainer.attribute(
            ids[i : i + 1, :n], additional_forward_args=(mask[i : i + 1, :n],)
        )
        assert torch.allclose(one[0], out[i, :n], atol=1e-6)


def test_model_defaults_to_forward_func(setup):
    model, ids, mask = setup
    out = EfficientAttention(model).attribute(ids, additional_forward_args=(mask,))
    ref = EfficientAttention(_forward(model), model).attribute(
        ids, additional_forward_args=(mask,)
    )
    assert torch.allclose(out, ref)
    with pytest.raises(ValueError, match="model="):
        EfficientAttention(_forward(model))


@pytest.mark.parametrize(
    "cls", [EfficientAttention, EffectiveAttention, AttentionWeights]
)
def test_values_match_matrices(setup, cls):
    model, ids, mask = setup
    explainer = cls(_forward(model), model=model)
    mats = FUNCS[cls](model, ids, mask)  # (L, B, H, N, N)
    fm = mask.to(mats.dtype)
    got = explainer.attribute(ids, additional_forward_args=(mask,))
    assert torch.allclose(got.double(), mats[-1, :, :, 0].mean(1) * fm, atol=1e-6)
    got = explainer.attribute(
        ids, additional_forward_args=(mask,), layer=0, heads="max"
    )
    assert torch.allclose(got.double(), mats[0, :, :, 0].amax(1) * fm, atol=1e-6)
    got = explainer.attribute(
        ids, additional_forward_args=(mask,), heads=[1, 3], query=2
    )
    assert torch.allclose(got.double(), mats[-1, :, [1, 3], 2].mean(1) * fm, atol=1e-6)
    got = explainer.attribute(ids, additional_forward_args=(mask,), layer="mean")
    assert torch.allclose(
        got.double(), mats[:, :, :, 0].mean(2).mean(0) * fm, atol=1e-6
    )
    # query="all": attention each token receives, averaged over real rows
    got = explainer.attribute(ids, additional_forward_args=(mask,), query="all")
    rec = (mats[-1].mean(1) * fm[:, :, None]).sum(1) / fm.sum(1, keepdim=True)
    assert torch.allclose(got.double(), rec * fm, atol=1e-6)


def _loop_rollout(mats, mask, gradient=None):
    # independent rollout: explicit Python loops over examples
    out = []
    for b in range(mats.shape[1]):
        n = int(mask[b].sum())
        joint = torch.eye(n, dtype=mats.dtype)
        for layer in range(mats.shape[0]):
            if gradient is None:
                m = mats[layer, b, :, :n, :n].mean(0)
                joint = (0.5 * m + 0.5 * torch.eye(n, dtype=mats.dtype)) @ joint
            else:
                g = gradient[layer][b, :, :n, :n].to(mats.dtype)
                m = (g * mats[layer, b, :, :n, :n]).clamp(min=0).mean(0)
                joint = joint + m @ joint
        row = torch.zeros(mats.shape[-1], dtype=mats.dtype)
        row[:n] = joint[0]
        out.append(row)
    return torch.stack(out)


@pytest.mark.parametrize("cls", [EfficientAttention, AttentionWeights])
def test_rollout_matches_independent_product(setup, cls):
    model, ids, mask = setup
    mats = FUNCS[cls](model, ids, mask)
    got = cls(_forward(model), model=model).attribute(
        ids, additional_forward_args=(mask,), layer="rollout"
    )
    assert torch.allclose(got.double(), _loop_rollout(mats, mask), atol=1e-6)
    if cls is AttentionWeights:
        default = AttentionRollout(_forward(model), model=model).attribute(
            ids, additional_forward_args=(mask,)
        )
        assert torch.allclose(default, got)


def _attention_grads(model, ids, mask, target):
    # independent gradient: output_attentions=True and torch.autograd.grad
    out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    sel = out.logits[torch.arange(ids.shape[0]), target].sum()
    return torch.autograd.grad(sel, list(out.attentions))


@pytest.mark.parametrize(
    "cls", [EfficientAttention, EffectiveAttention, AttentionWeights]
)
def test_gradient_weighting_matches_autograd(setup, cls):
    model, ids, mask = setup
    target = torch.tensor([0, 1, 1])
    grads = _attention_grads(model, ids, mask, target)
    mats = FUNCS[cls](model, ids, mask)
    got = cls(_forward(model), model=model).attribute(
        ids, target=target, additional_forward_args=(mask,), weighting="gradient"
    )
    ref = (mats[-1, :, :, 0] * grads[-1][:, :, 0].double()).mean(1)
    assert torch.allclose(got.double(), ref, atol=1e-7, rtol=1e-4)
    # target matters for the gradient weighting
    other = cls(_forward(model), model=model).attribute(
        ids, target=1 - target, additional_forward_args=(mask,), weighting="gradient"
    )
    assert not torch.allclose(got, other)


def test_gradient_term_is_invariant_across_representatives(setup):
    # Σ_j M_ij (∂y/∂A)_ij is the same for every output-equivalent M
    model, ids, mask = setup
    totals = [
        cls(_forward(model), model=model)
        .attribute(
            ids,
            target=1,
            additional_forward_args=(mask,),
            weighting="gradient",
            heads=[h],
        )
        .sum(1)
        for cls in (EfficientAttention, EffectiveAttention, AttentionWeights)
        for h in range(4)
    ]
    per_cls = torch.stack(totals).reshape(3, 4, -1)
    assert torch.allclose(per_cls[0], per_cls[2], atol=1e-6)
    assert torch.allclose(per_cls[1], per_cls[2], atol=1e-6)


def test_value_norm_weighting(setup):
    model, ids, mask = setup
    adapter = ModelAdapter(model)
    with adapter.capture([1]) as rec, torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    v = rec.layers[1]["values"].double()
    w = adapter.output_weights(1).detach().double()
    norms = torch.einsum("bhnd,hde->bhne", v, w).norm(dim=-1)  # ‖t_j‖ per head
    mats = efficient_attention(model, ids, mask, layers=1, rows=0)[0, :, :, 0]
    ref = (mats * norms).mean(1) * mask
    got = EfficientAttention(_forward(model), model=model).attribute(
        ids, additional_forward_args=(mask,), weighting="value_norm"
    )
    assert torch.allclose(got.double(), ref, atol=1e-6)


@pytest.mark.parametrize("cls", [EfficientAttention, AttentionWeights])
def test_gradient_rollout_matches_independent_recurrence(setup, cls):
    model, ids, mask = setup
    target = torch.tensor([1, 0, 1])
    grads = _attention_grads(model, ids, mask, target)
    mats = FUNCS[cls](model, ids, mask)
    got = cls(_forward(model), model=model).attribute(
        ids, target=target, additional_forward_args=(mask,), layer="gradient_rollout"
    )
    ref = _loop_rollout(mats, mask, gradient=grads)
    assert torch.allclose(got.double(), ref, atol=1e-6)


def test_return_matrices_and_certificate(setup):
    model, ids, mask = setup
    scores, res = EfficientAttention(_forward(model), model=model).attribute(
        ids, additional_forward_args=(mask,), return_matrices=True
    )
    assert list(res.matrices) == [1]
    assert res.matrices[1].shape == (3, 4, 1, 24)  # only the [CLS] row was solved
    assert res.certificate.ok()
    assert res.rows.tolist() == [[0], [0], [0]]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(layer="sideways"), "layer must be"),
        (dict(layer=7), "out of range"),
        (dict(heads="min"), "heads must be"),
        (dict(heads=[9]), "heads must be"),
        (dict(weighting="attention"), "weighting must be"),
        (dict(query=99), "out of range"),
        (dict(query=20), "padding"),
        (dict(layer="gradient_rollout", weighting="gradient"), "already"),
        (dict(layer="rollout", weighting="gradient"), "rollout' multiplies"),
        (dict(layer="rollout", weighting="value_norm"), "rollout' multiplies"),
        # a repeated head counted twice in the mean, silently
        (dict(heads=[0, 0, 1]), r"\[0\] are named twice"),
        # operator.index(torch.tensor(True)) is 1: row 1, silently
        (dict(query=torch.tensor(True)), "query must be"),
    ],
)
def test_bad_options(setup, kwargs, match):
    model, ids, mask = setup
    with pytest.raises(ValueError, match=match):
        EfficientAttention(_forward(model), model=model).attribute(
            ids, additional_forward_args=(mask,), **kwargs
        )


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(layer=torch.tensor(True)),  # was read as layer 1
        dict(heads=b"mean"),  # was read as the heads 109, 101, 97, 110
        dict(return_matrices="False"),  # truthy: a tuple came back
    ],
)
def test_bad_option_types(setup, kwargs):
    model, ids, mask = setup
    with pytest.raises(TypeError):
        EfficientAttention(_forward(model), model=model).attribute(
            ids, additional_forward_args=(mask,), **kwargs
        )


def test_float_ids_and_wrong_model(setup, tiny_model):
    model, ids, mask = setup
    explainer = EfficientAttention(_forward(model), model=model)
    with pytest.raises(TypeError, match="integer"):
        explainer.attribute(ids.float(), additional_forward_args=(mask,))
    other = tiny_model("bert", seed=3)
    with pytest.raises(ValueError, match="never called the model"):
        EfficientAttention(_forward(model), model=other).attribute(
            ids, additional_forward_args=(mask,)
        )


@pytest.mark.gpu
def test_runs_on_cuda(setup, gpu_device):
    model, ids, mask = setup
    model_cuda = model.to(gpu_device)
    try:
        out = EfficientAttention(_forward(model_cuda), model=model_cuda).attribute(
            ids.to(gpu_device), additional_forward_args=(mask.to(gpu_device),)
        )
        assert out.device.type == gpu_device.type
    finally:
        model.to("cpu")
    ref = EfficientAttention(_forward(model), model=model).attribute(
        ids, additional_forward_args=(mask,)
    )
    assert torch.allclose(out.cpu(), ref, atol=1e-5)


@pytest.mark.slow
def test_real_model_with_layer_integrated_gradients(minilm, real_batch):
    model, _ = minilm
    ids, mask = real_batch
    forward = _forward(model)
    lig = LayerIntegratedGradients(forward, model.bert.embeddings)
    ig = lig.attribute(ids, target=1, additional_forward_args=(mask,), n_steps=8).sum(
        -1
    )
    eff = EfficientAttention(forward, model=model).attribute(
        ids, target=1, additional_forward_args=(mask,)
    )
    assert eff.shape == ig.shape == ids.shape
    assert bool(torch.isfinite(eff).all()) and bool(torch.isfinite(ig).all())
    # [CLS] row of the last layer: a distribution over real tokens per example
    assert torch.allclose(eff.sum(1), torch.ones(2), atol=1e-5)


# ---------------------------------------- guards from the mutation audit
# Each test below kills a mutant that the tests above let through (see
# tests/core/test_mutation_guards.py).
@pytest.mark.parametrize("family", ["bert", "distilbert", "gpt2", "llama"])
@pytest.mark.parametrize("layer", [0, "mean"])
def test_value_norm_weighting_against_independent_norms(tiny_model, family, layer):
    # Mutants: the last layer's W_O or values used for every layer (only the
    # default layer -1 was tested), a wrongly sliced or transposed W_O, the
    # grouped-query head mapping. ‖t_j‖ comes from effattn_testing's
    # independent reading of the layer.
    model = tiny_model(family)
    ids, mask = random_batch(2, 20, lengths=[20, 13], seed=4)
    scores, res = EfficientAttention(_forward(model), model=model).attribute(
        ids,
        additional_forward_args=(mask,),
        layer=layer,
        weighting="value_norm",
        return_matrices=True,
    )
    per_layer = []
    for idx, m in res.matrices.items():  # (B, H, 1, N): the query row
        _, t = reference_layer(model, family, ids, mask, idx)
        per_layer.append((m[:, :, 0] * t.norm(dim=-1)).mean(1))
    assert len(per_layer) == (1 if layer == 0 else 2)
    ref = torch.stack(per_layer).mean(0) * mask
    torch.testing.assert_close(scores.double(), ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cls", [EfficientAttention, AttentionWeights])
def test_target_none_is_the_predicted_class(tiny_model, cls):
    # Mutant: target=None differentiated class 0 instead of the predicted
    # class (every other test passed a target).
    model = tiny_model("bert", seed=1)
    ids, mask = random_batch(6, 24, lengths=[24, 14, 19, 24, 20, 16], seed=1)
    with torch.no_grad():
        pred = _forward(model)(ids, mask).argmax(-1)
    assert 0 < int(pred.sum()) < len(pred)  # both classes are predicted
    explainer = cls(_forward(model), model=model)
    got = explainer.attribute(
        ids, additional_forward_args=(mask,), weighting="gradient"
    )
    grads = _attention_grads(model, ids, mask, pred)
    mats = FUNCS[cls](model, ids, mask, layers=-1, rows=0)[0, :, :, 0]
    ref = (mats * grads[-1][:, :, 0].double()).mean(1)
    torch.testing.assert_close(got.double(), ref, atol=1e-7, rtol=1e-4)
    roll = explainer.attribute(
        ids, additional_forward_args=(mask,), layer="gradient_rollout"
    )
    roll_pred = explainer.attribute(
        ids, target=pred, additional_forward_args=(mask,), layer="gradient_rollout"
    )
    torch.testing.assert_close(roll, roll_pred, atol=0, rtol=0)


@pytest.mark.parametrize(
    "family, query", [("bert", 5), ("bert", "all"), ("gpt2", None)]
)
def test_gradient_weighting_reads_the_query_rows(tiny_model, family, query):
    # Mutants: the gradient's first rows used instead of the query rows (the
    # same for [CLS] at position 0, the only query tested); a decoder's
    # default query at the last position instead of the last real token.
    model = tiny_model(family)
    ids, mask = random_batch(3, 24, lengths=[24, 14, 19], seed=1)
    target = torch.tensor([0, 1, 1])
    grads = _attention_grads(model, ids, mask, target)[-1].double()
    mats = efficient_attention(model, ids, mask, layers=-1)[0]  # (B, H, N, N)
    got = EfficientAttention(_forward(model), model=model).attribute(
        ids,
        target=target,
        additional_forward_args=(mask,),
        weighting="gradient",
        query=query,
    )
    term = (mats * grads).mean(1)  # (B, N, N): query row i, key j
    real = mask.bool()
    if query == "all":
        ref = (term * real[:, :, None]).sum(1) / real.sum(1, keepdim=True)
    else:
        rows = torch.full((3,), query) if query is not None else real.sum(1) - 1
        ref = term[torch.arange(3), rows]
    torch.testing.assert_close(got.double(), ref * real, atol=1e-7, rtol=1e-4)
