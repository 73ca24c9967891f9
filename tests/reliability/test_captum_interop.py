r"""The package used together with Captum itself, as a Captum user would:
``NoiseTunnel`` around the attribution classes, data-parallel wrappers,
forward functions that return probabilities instead of logits, models left
in training mode, and ``target`` in Captum's tuple forms. Each of these once
failed with an error that did not say what to do, or gave a wrong number."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from captum.attr import (
    DeepLift,
    GradientShap,
    KernelShap,
    LayerIntegratedGradients,
    Lime,
    NoiseTunnel,
    Saliency,
)
from effattn_testing import make_tiny_model, random_batch

from captum_effattn import AttentionWeights, EfficientAttention, efficient_attention
from captum_effattn.metrics import (
    aopc_sufficiency,
    minimal_necessary_size,
    necessity,
    sufficiency,
)


def _forward(model):
    return lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits


def _batch():
    return random_batch(3, 16, lengths=[16, 12, 9], seed=1)


def _confident_model(**overrides):
    r"""A tiny BERT whose probabilities move far from 1/2 when tokens go."""
    model = make_tiny_model("bert", **overrides)
    with torch.no_grad():
        model.classifier.weight.mul_(50.0)
    return model


# ------------------------------------------------------------- NoiseTunnel
@pytest.mark.parametrize("cls", [EfficientAttention, AttentionWeights])
def test_noise_tunnel_explains_that_token_ids_take_no_noise(tiny_model, cls):
    # Captum's NoiseTunnel calls ``attribute.__wrapped__`` (the method under
    # Captum's log_usage decorator); without it the user got
    # "AttributeError: 'function' object has no attribute '__wrapped__'".
    model = tiny_model("bert")
    ids, mask = _batch()
    tunnel = NoiseTunnel(cls(_forward(model), model=model))
    with pytest.raises(TypeError, match="NoiseTunnel adds Gaussian noise"):
        tunnel.attribute(ids, nt_samples=2, additional_forward_args=(mask,))


def test_arguments_of_other_captum_methods_say_why(tiny_model):
    # the call of a LayerIntegratedGradients workflow, class switched: each
    # left-over argument is named with the reason attention needs none
    model = tiny_model("bert")
    ids, mask = _batch()
    explainer = EfficientAttention(_forward(model), model=model)
    with pytest.raises(TypeError, match=r"baselines: .*reference.*n_steps: "):
        explainer.attribute(
            ids,
            baselines=torch.zeros_like(ids),
            additional_forward_args=(mask,),
            target=0,
            n_steps=50,
        )
    with pytest.raises(TypeError, match="no convergence delta"):
        explainer.attribute(
            ids, additional_forward_args=(mask,), **{"return_convergence_delta": True}
        )
    with pytest.raises(TypeError, match="unexpected keyword argument 'layers'"):
        explainer.attribute(ids, additional_forward_args=(mask,), layers=0)
    # every other argument of these Captum methods' attribute() is explained
    captum_args = set()
    others = (LayerIntegratedGradients, DeepLift, GradientShap, KernelShap, Lime)
    for cls in others + (Saliency,):
        captum_args |= set(inspect.signature(cls.attribute).parameters)
    ours = set(inspect.signature(explainer.attribute).parameters)
    for name in sorted(captum_args - ours - {"self", "kwargs"}):
        with pytest.raises(TypeError, match=f"takes none of Captum's {name} "):
            explainer.attribute(ids, additional_forward_args=(mask,), **{name: None})
    # without them the same call works
    out = explainer.attribute(ids, additional_forward_args=(mask,), target=0)
    assert out.shape == ids.shape


def test_attribute_is_wrapped_like_captum_methods(tiny_model):
    model = tiny_model("bert")
    explainer = EfficientAttention(_forward(model), model=model)
    ids, mask = _batch()
    inner = explainer.attribute.__wrapped__(
        explainer, ids, additional_forward_args=(mask,)
    )
    assert torch.equal(inner, explainer.attribute(ids, additional_forward_args=(mask,)))


# ------------------------------------------------------ data-parallel wrappers
def test_data_parallel_model_is_looked_through(tiny_model):
    model = tiny_model("bert")
    ids, mask = _batch()
    want = EfficientAttention(_forward(model), model=model).attribute(
        ids, target=1, additional_forward_args=(mask,), weighting="gradient"
    )
    wrapped = torch.nn.DataParallel(model)
    for explainer in (
        EfficientAttention(wrapped),  # forward_func is the wrapper itself
        EfficientAttention(_forward(wrapped), model=wrapped),
    ):
        got = explainer.attribute(
            ids, target=1, additional_forward_args=(mask,), weighting="gradient"
        )
        assert torch.equal(got, want)
    assert torch.equal(
        efficient_attention(wrapped, ids, mask), efficient_attention(model, ids, mask)
    )


def test_wrapper_module_without_config_says_to_pass_model(tiny_model):
    class Classifier(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, ids, mask):
            return self.inner(input_ids=ids, attention_mask=mask).logits

    with pytest.raises(TypeError, match="as model="):
        EfficientAttention(Classifier(tiny_model("bert")))
    # a custom head often copies the inner model's config: then the layers
    # were looked up on the wrapper ("no attribute 'encoder'")
    inner = tiny_model("bert")
    copied = Classifier(inner)
    copied.config = inner.config
    with pytest.raises(TypeError, match="wraps a Hugging Face model.*model=wrapper"):
        EfficientAttention(copied)
    with pytest.raises(TypeError, match="wraps a Hugging Face model"):
        efficient_attention(copied, torch.ones(1, 4, dtype=torch.long))


# ------------------------------------------- probabilities instead of logits
def test_metrics_take_probabilities_as_they_are():
    # A forward that returns logits.softmax(-1) (Captum tutorials' habit)
    # was passed through softmax a second time: about half the true value.
    model = _confident_model()
    ids, mask = _batch()
    attr = torch.randn(ids.shape, generator=torch.Generator().manual_seed(0))

    def probs(i, m):
        return model(input_ids=i, attention_mask=m).logits.softmax(-1)

    for metric in (sufficiency, necessity):
        want = metric(_forward(model), ids, attr, attention_mask=mask)
        got = metric(probs, ids, attr, attention_mask=mask)
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-7)
    assert float(want.abs().max()) > 1e-4  # necessity: small, but not 0
    suff = sufficiency(probs, ids, attr, attention_mask=mask)
    assert float(suff.max()) > 0.1


def test_aopc_takes_log_probabilities_and_probabilities_alike():
    model = _confident_model()
    ids, mask = _batch()
    attr = torch.randn(ids.shape, generator=torch.Generator().manual_seed(1))
    logits = _forward(model)
    curves = [
        aopc_sufficiency(f, ids, attr, attention_mask=mask).curve
        for f in (
            logits,
            lambda i, m: logits(i, m).softmax(-1),
            lambda i, m: logits(i, m).log_softmax(-1),
        )
    ]
    assert float(curves[0].abs().max()) > 0.05
    assert torch.allclose(curves[1], curves[0], atol=1e-6)
    assert torch.allclose(curves[2], curves[0], atol=1e-6)


# ------------------------------------------------------ training mode
def test_metrics_switch_a_model_in_training_mode_to_eval():
    # Dropout made every probability random, silently: two calls disagreed.
    ids, mask = _batch()
    attr = torch.randn(ids.shape, generator=torch.Generator().manual_seed(2))
    model = _confident_model(hidden_dropout_prob=0.5)
    forward = _forward(model)
    want = necessity(forward, ids, attr, attention_mask=mask)
    want_k = minimal_necessary_size(forward, ids, attr, attention_mask=mask)[0]
    model.train()
    model.classifier.eval()  # mixed flags come back as they were
    for _ in range(2):
        with pytest.warns(UserWarning, match="training mode"):
            got = necessity(forward, ids, attr, attention_mask=mask)
        assert torch.equal(got, want)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got_k = minimal_necessary_size(forward, ids, attr, attention_mask=mask)[0]
    assert torch.equal(got_k, want_k)
    assert sum("training mode" in str(w.message) for w in caught) == 1
    assert model.training and model.bert.training and not model.classifier.training


def test_metrics_do_not_warn_for_a_module_without_dropout():
    # a plain nn.Module is in training mode from birth; nothing changes
    class BagOfEmbeddings(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(120, 2)

        def forward(self, ids, mask):
            return (self.emb(ids) * mask.unsqueeze(-1)).sum(1)

    model = BagOfEmbeddings()
    ids, mask = _batch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        necessity(model, ids, torch.rand(ids.shape), attention_mask=mask)
    assert model.training and model.emb.training


# ------------------------------------------------------ Captum's target forms
@pytest.mark.parametrize(
    "target", [1, (1,), [1, 1, 1], [(1,), (1,), (1,)], torch.tensor([1, 1, 1])]
)
def test_metrics_accept_the_targets_that_attribute_accepts(tiny_model, target):
    model = tiny_model("bert", num_labels=3)
    ids, mask = _batch()
    forward = _forward(model)
    explainer = EfficientAttention(forward, model=model)
    attr = explainer.attribute(
        ids, target=target, additional_forward_args=(mask,), weighting="gradient"
    )
    got = necessity(forward, ids, attr, target=target, attention_mask=mask)
    assert torch.equal(
        got, necessity(forward, ids, attr, target=1, attention_mask=mask)
    )


# ------------------------------------------------------------- real model
@pytest.mark.slow
def test_real_model_probabilities_and_training_mode(minilm, real_batch):
    model, _ = minilm
    ids, mask = real_batch
    forward = _forward(model)
    explainer = EfficientAttention(forward, model=model)
    attr = explainer.attribute(
        ids, additional_forward_args=(mask,), layer=0, query="all",
        weighting="gradient",
    )  # fmt: skip
    want = necessity(forward, ids, attr, attention_mask=mask)
    got = necessity(
        lambda i, m: forward(i, m).softmax(-1), ids, attr, attention_mask=mask
    )
    assert torch.allclose(got, want, atol=1e-6)
    model.train()
    try:
        with pytest.warns(UserWarning, match="training mode"):
            assert torch.equal(necessity(forward, ids, attr, attention_mask=mask), want)
    finally:
        model.eval()
