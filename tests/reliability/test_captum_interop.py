r"""The package used together with Captum itself, as a Captum user would:
``NoiseTunnel`` around the attribution classes and data-parallel wrappers.
Each of these once failed with an error that did not say what to do."""

from __future__ import annotations

import pytest
import torch
from captum.attr import NoiseTunnel
from effattn_testing import random_batch

from captum_effattn import AttentionWeights, EfficientAttention, efficient_attention


def _forward(model):
    return lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits


def _batch():
    return random_batch(3, 16, lengths=[16, 12, 9], seed=1)


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
