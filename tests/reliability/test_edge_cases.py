r"""Numerical edge cases on real model code: duplicated tokens (rank-deficient
values), zero value weights (T = 0), a head with a zero output projection,
one-token inputs, lengths around the head dimension and far above it, float16
and bfloat16 models, float32 algebra, and a certificate that flags every head
whose tolerance was not reached."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from effattn_testing import random_batch
from torch import Tensor, nn

from captum_effattn import (
    AttentionRollout,
    AttentionWeights,
    Certificate,
    EfficientAttention,
    attention_weights,
    effective_attention,
    efficient_attention,
)
from captum_effattn._core.adapters import ModelAdapter, expand_kv


def _forward(model: nn.Module):
    return lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits


def _normalised(a: Tensor) -> Tensor:
    return a / a.sum(-1, keepdim=True).clamp_min(1e-300)


def _uniform(mask: Tensor, causal: bool) -> Tensor:
    r"""(B, N, N): row i uniform over the real keys it may see."""
    n = mask.shape[1]
    keys = mask.bool()[:, None, :].expand(-1, n, n).clone()
    if causal:
        keys &= torch.ones(n, n, dtype=torch.bool).tril()
    u = keys.double() / keys.sum(-1, keepdim=True).clamp_min(1)
    return u * mask.double()[:, :, None]  # padded query rows are 0


def _logits_after_swap(model, ids, mask, matrices):
    adapter = ModelAdapter(model)
    with torch.no_grad():
        base = model(input_ids=ids, attention_mask=mask).logits
        with adapter.replace_attention(matrices):
            swapped = model(input_ids=ids, attention_mask=mask).logits
    return base, swapped


# ------------------------------------------------------- duplicated tokens
def test_duplicated_tokens_share_their_group_mass(tiny_model):
    # Llama has no absolute position embeddings: in layer 0 a repeated token
    # has the same value vector everywhere (rank(V) = 3 distinct tokens) while
    # RoPE gives the copies different attention. Output equivalence then
    # fixes only each token's total mass; the minimum norm spreads it evenly.
    model = tiny_model("llama")
    ids = torch.tensor([[5, 6, 7] * 6])
    mask = torch.ones_like(ids)
    e, cert = efficient_attention(model, ids, mask, layers=0, return_certificate=True)
    a = _normalised(attention_weights(model, ids, mask, layers=0))
    assert cert.ok(rtol=1e-9), str(cert)
    assert cert.rank.flatten().tolist() == [3] * 4  # rank([T, 1]) = 3 tokens
    assert float((e - a).abs().max()) > 1e-2  # A itself is not spread evenly
    e, a = e[0, 0], a[0, 0]  # (heads, n, n)
    for i in range(18):
        for g in range(3):
            keys = list(range(g, i + 1, 3))
            if not keys:
                continue
            mass = a[:, i, keys].sum(-1, keepdim=True)
            expected = (mass / len(keys)).expand(-1, len(keys))
            torch.testing.assert_close(e[:, i, keys], expected, atol=1e-10, rtol=0)


def test_duplicated_tokens_with_identical_states(tiny_model):
    # BERT without position embeddings: copies of a token have identical
    # hidden states in every layer, hence identical attention, so A already
    # spreads each group's mass evenly and E = A although n >> rank([T, 1]).
    model = copy.deepcopy(tiny_model("bert"))
    with torch.no_grad():
        model.bert.embeddings.position_embeddings.weight.zero_()
    ids = torch.tensor([[5, 6, 7] * 10, [9] * 30])
    mask = torch.ones_like(ids)
    mask[1, 24:] = 0
    e, cert = efficient_attention(model, ids, mask, return_certificate=True)
    assert cert.ok(rtol=1e-9), str(cert)
    assert set(cert.rank[:, 0].flatten().tolist()) == {3}
    assert set(cert.rank[:, 1].flatten().tolist()) == {1}  # one token: T = 1 tᵀ
    a = _normalised(attention_weights(model, ids, mask))
    torch.testing.assert_close(e, a, atol=1e-10, rtol=0)
    torch.testing.assert_close(e[:, 1], _uniform(mask, False)[1].expand_as(e[:, 1]))


# ---------------------------------------------------------- T = 0, zero head
FAMILIES = ["bert", "gpt2", "llama"]


def _value_module(model, family, layer):
    if family == "bert":
        return model.bert.encoder.layer[layer].attention.self.value
    if family == "llama":
        return model.model.layers[layer].self_attn.v_proj
    raise ValueError(family)


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("keep_bias", [False, True])
def test_zero_value_weights_give_uniform(tiny_model, family, keep_bias):
    # W_V = 0: T = 0 (or T = 1 b_Vᵀ W_O, rank 1, with the bias kept), every
    # distribution is output-equivalent and the minimum norm is uniform over
    # the real keys a row may see.
    model = copy.deepcopy(tiny_model(family))
    value = _value_module(model, family, 1)
    if keep_bias and value.bias is None:
        pytest.skip("no value bias in this family")
    with torch.no_grad():
        value.weight.zero_()
        if value.bias is not None and not keep_bias:
            value.bias.zero_()
    ids, mask = random_batch(2, 14, lengths=[14, 11], seed=3)
    e, cert = efficient_attention(model, ids, mask, layers=1, return_certificate=True)
    causal = family != "bert"
    expected = _uniform(mask, causal)[:, None].expand_as(e[0])
    torch.testing.assert_close(e[0], expected, atol=1e-12, rtol=0)
    assert cert.ok(), str(cert)
    assert set(cert.rank.flatten().tolist()) == {1}
    assert int(cert.iterations.max()) == 0  # closed form, no iteration
    eff = effective_attention(model, ids, mask, layers=1)
    if not keep_bias:
        assert float(eff.abs().max()) == 0.0  # Brunner: A P with P = 0


def _zero_head_output(model, family, layer, head, dh):
    cols = slice(head * dh, (head + 1) * dh)
    with torch.no_grad():
        if family == "bert":
            model.bert.encoder.layer[layer].attention.output.dense.weight[:, cols] = 0
        elif family == "gpt2":  # Conv1D: weight is (in, out)
            model.transformer.h[layer].attn.c_proj.weight[cols, :] = 0
        else:
            model.model.layers[layer].self_attn.o_proj.weight[:, cols] = 0


@pytest.mark.parametrize("family", FAMILIES)
def test_head_with_zero_output_projection(tiny_model, family):
    original = tiny_model(family)
    model = copy.deepcopy(original)
    dh = ModelAdapter(model).head_dim
    _zero_head_output(model, family, 1, 1, dh)
    ids, mask = random_batch(2, 14, lengths=[14, 11], seed=4)
    e, cert = efficient_attention(model, ids, mask, layers=1, return_certificate=True)
    assert cert.ok(), str(cert)
    assert cert.rank[0, :, 1].tolist() == [1, 1]
    expected = _uniform(mask, family != "bert")
    torch.testing.assert_close(e[0, :, 1], expected, atol=1e-12, rtol=0)
    # the other heads of the layer are the same as in the unmodified model
    before = efficient_attention(original, ids, mask, layers=1)
    others = [0, 2, 3]
    torch.testing.assert_close(e[0, :, others], before[0, :, others], atol=1e-9, rtol=0)
    base, swapped = _logits_after_swap(model, ids, mask, {1: e[0]})
    torch.testing.assert_close(base, swapped, atol=1e-5, rtol=0)


# ------------------------------------------------------------ one token
@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_one_token_inputs(tiny_model, family):
    model = tiny_model(family)
    ids = torch.tensor([[5], [9]])
    mask = torch.ones_like(ids)
    e, cert = efficient_attention(model, ids, mask, return_certificate=True)
    assert e.shape == (2, 2, 4, 1, 1)
    assert cert.ok() and set(cert.rank.flatten().tolist()) == {1}
    torch.testing.assert_close(e, torch.ones_like(e), atol=1e-12, rtol=0)
    eff = effective_attention(model, ids, mask)
    torch.testing.assert_close(eff, torch.ones_like(eff), atol=1e-12, rtol=0)
    for cls, kw in [
        (EfficientAttention, {}),
        (EfficientAttention, dict(query="all", layer="mean")),
        (EfficientAttention, dict(layer="rollout", weighting="none")),
        (EfficientAttention, dict(weighting="gradient")),
        (AttentionRollout, {}),
    ]:
        scores = cls(_forward(model), model=model).attribute(
            ids, additional_forward_args=(mask,), **kw
        )
        assert scores.shape == (2, 1) and bool(torch.isfinite(scores).all())
        if kw.get("weighting") != "gradient":
            torch.testing.assert_close(scores, torch.ones_like(scores))


def test_one_real_token_in_a_padded_batch(tiny_model):
    model = tiny_model("bert")
    ids, mask = random_batch(2, 12, lengths=[1, 12], seed=5)
    e, cert = efficient_attention(model, ids, mask, return_certificate=True)
    assert cert.ok(), str(cert)
    expected = torch.zeros(12, 12, dtype=e.dtype)
    expected[0, 0] = 1.0
    torch.testing.assert_close(e[:, 0], expected.expand_as(e[:, 0]), atol=1e-12, rtol=0)
    scores = EfficientAttention(_forward(model), model=model).attribute(
        ids, additional_forward_args=(mask,), query="all"
    )
    torch.testing.assert_close(scores[0], torch.eye(12)[0])


# ------------------------------------------------- n around the head dim
@pytest.mark.parametrize("family", ["bert", "gpt2"])
@pytest.mark.parametrize("extra", [0, 1, 2])
def test_lengths_around_head_dimension(tiny_model, family, extra):
    # rank([T, 1]) <= d_h + 1: for n <= d_h + 1 the output-equivalent
    # distribution is unique, E = A; n = d_h + 2 is the first length where
    # E can differ (for a decoder: the first row that sees d_h + 2 keys).
    model = tiny_model(family)
    dh = ModelAdapter(model).head_dim
    n = dh + extra
    ids, mask = random_batch(3, n, seed=10 + extra)
    e, cert = efficient_attention(model, ids, mask, return_certificate=True)
    a = _normalised(attention_weights(model, ids, mask))
    assert cert.ok(), str(cert)
    assert set(cert.rank.flatten().tolist()) == {min(n, dh + 1)}
    same = slice(None) if extra < 2 else slice(0, dh + 1)
    if family == "gpt2" or extra < 2:
        torch.testing.assert_close(e[..., same, :], a[..., same, :], atol=1e-9, rtol=0)
    if extra == 2:
        differs = (e - a).abs().amax(-1)  # (L, B, H, n)
        assert float(differs.max()) > 1e-3
        if family == "gpt2":
            assert float(differs[..., : dh + 1].max()) < 1e-9  # only the last row


def test_long_input_far_above_head_dimension(tiny_model):
    model = tiny_model("bert")
    ids, mask = random_batch(2, 100, lengths=[100, 61], seed=6)
    e, cert = efficient_attention(model, ids, mask, layers=-1, return_certificate=True)
    assert cert.ok(rtol=1e-8), str(cert)
    assert set(cert.rank.flatten().tolist()) == {9}  # d_h + 1 of 100 (61)
    real = mask.bool()
    rows = e[0].permute(0, 2, 1, 3)[real]  # (real rows, heads, n)
    assert float(rows.min()) >= 0.0
    torch.testing.assert_close(rows.sum(-1), torch.ones_like(rows.sum(-1)))
    a = _normalised(attention_weights(model, ids, mask, layers=-1))
    assert float((e - a).abs().max()) > 1e-2
    assert bool((rows == 0).any())  # A > 0 everywhere, E is thresholded


# ---------------------------- raw attention's certificate on long inputs
def test_raw_attention_certificate_scales_with_the_keys(tiny_model):
    # A model with 2048 positions: the row sums of its float32 softmax carry
    # rounding that grows with the number of keys (9.3e-7 measured at 512
    # tokens on MiniLM); ok() used to hold them to a fixed 1e-6.
    from captum_effattn._core.functional import softmax_sum_tol, solve_layer

    model = tiny_model("bert", max_position_embeddings=2048, num_hidden_layers=1)
    ids, mask = random_batch(1, 1500, seed=3)
    a, cert = attention_weights(model, ids, mask, return_certificate=True)
    assert cert.ok(), str(cert)
    tol = float(softmax_sum_tol(torch.tensor(1500), torch.float32))
    assert 3e-4 < tol < 4e-4  # 2 * 1500 * eps(float32) + eps(float32)
    want = torch.full(cert.rank.shape, tol, dtype=torch.float64)
    torch.testing.assert_close(cert.row_sum_tol, want)
    _, res = AttentionWeights(_forward(model), model=model).attribute(
        ids, additional_forward_args=(mask,), return_matrices=True
    )
    assert res.certificate.ok(), str(res.certificate)

    adapter = ModelAdapter(model)
    with adapter.capture() as rec, torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    probs, values = rec.layers[0]["weights"], rec.layers[0]["values"]
    w_out, keys = adapter.output_weights(0).detach(), mask.bool()
    rows = torch.tensor([[0, 7, 1499]])

    def raw_certificate(p: Tensor):
        return solve_layer("raw", p, values, w_out, keys, rows)[1]

    # a drift of 2e-6 in every sum, within what a float32 sum of 1500 terms
    # may round to (another kernel, another summation order): certified
    drift = raw_certificate(probs * (1 + 2e-6))
    assert drift.worst()["row_sum_error"] > 1.5e-6
    assert drift.ok(), str(drift)
    # a row that misses real mass is still caught
    for wrong in (probs * 0.99, probs.index_fill(-1, torch.tensor([5]), 0.0)):
        cert = raw_certificate(wrong)
        assert not cert.ok(), str(cert)
    # and an explicit sum_tol is the bound, for every head, also below atol
    assert not drift.ok(sum_tol=1e-6)
    error = drift.worst()["row_sum_error"]
    assert drift.ok(sum_tol=2 * error, atol=1e-9)
    assert not drift.ok(sum_tol=error / 2, atol=10 * error)
    # stacked per layer like the other fields
    assert Certificate.stack([drift, drift]).row_sum_tol.shape == (2, 1, 4)


def test_raw_attention_certificate_of_a_low_precision_model(tiny_model):
    # bfloat16 probabilities sum to 1 within eps(bfloat16) only
    model = copy.deepcopy(tiny_model("bert")).to(torch.bfloat16)
    ids, mask = random_batch(2, 64, lengths=[64, 40], seed=4)
    _, cert = attention_weights(model, ids, mask, return_certificate=True)
    assert cert.worst()["row_sum_error"] > 1e-6
    assert cert.ok(), str(cert)
    assert not cert.ok(sum_tol=1e-6)


# -------------------------------------------------- low-precision models
@pytest.mark.parametrize("model_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("family", ["bert", "llama"])
def test_low_precision_models(tiny_model, model_dtype, family):
    model = copy.deepcopy(tiny_model(family)).to(model_dtype)
    eps = torch.finfo(model_dtype).eps
    ids, mask = random_batch(2, 20, lengths=[20, 14], seed=7)
    e, cert = efficient_attention(model, ids, mask, return_certificate=True)
    # the result has the dtype of the algebra (the `dtype` option), and the
    # float64 certificate holds against the renormalised attention
    assert e.dtype == torch.float64
    assert cert.ok(rtol=1e-9), str(cert)
    # against the model's own (not renormalised) low-precision attention the
    # head outputs agree to the model's precision
    adapter = ModelAdapter(model)
    with adapter.capture() as rec, torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    real = mask.bool()
    for layer in range(adapter.num_layers):
        a = rec.layers[layer]["weights"].double()
        v = expand_kv(rec.layers[layer]["values"].double(), a.shape[1])
        t = v @ adapter.output_weights(layer).detach().double()[None]
        ref, got = a @ t, e[layer] @ t  # (B, H, n, d)
        rel = ((got - ref).norm(dim=-1) / ref.norm(dim=-1)).transpose(1, 2)[real]
        assert float(rel.max()) < 2 * eps
    base, swapped = _logits_after_swap(model, ids, mask, dict(enumerate(e)))
    scale = float(base.abs().max())
    assert float((base - swapped).abs().max()) <= 8 * eps * scale
    scores = EfficientAttention(_forward(model), model=model).attribute(
        ids, additional_forward_args=(mask,), weighting="gradient"
    )
    assert scores.dtype == torch.get_default_dtype()
    assert bool(torch.isfinite(scores).all())


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_float32_algebra_in_the_attribution_class(tiny_model, family):
    model = tiny_model(family)
    ids, mask = random_batch(2, 24, lengths=[24, 17], seed=2)
    explainer = EfficientAttention(
        _forward(model), model=model, dtype=torch.float32, tol=1e-6
    )
    scores, res = explainer.attribute(
        ids, additional_forward_args=(mask,), return_matrices=True
    )
    assert res.matrices[1].dtype == torch.float32
    assert scores.dtype == torch.get_default_dtype()
    assert res.certificate.ok(rtol=1e-5, atol=1e-5), str(res.certificate)
    _, ref = EfficientAttention(_forward(model), model=model).attribute(
        ids, additional_forward_args=(mask,), return_matrices=True
    )
    torch.testing.assert_close(
        res.matrices[1].double(), ref.matrices[1], atol=1e-5, rtol=0
    )


def test_float32_algebra_on_all_rows(tiny_model):
    model = tiny_model("llama")
    ids, mask = random_batch(2, 24, lengths=[24, 17], seed=2)
    e32, cert = efficient_attention(
        model, ids, mask, layers=-1, dtype=torch.float32, tol=1e-6,
        return_certificate=True,
    )  # fmt: skip
    assert e32.dtype == torch.float32
    assert cert.ok(rtol=1e-5, atol=1e-5), str(cert)
    e64 = efficient_attention(model, ids, mask, layers=-1)
    torch.testing.assert_close(e32.double(), e64, atol=1e-4, rtol=0)


# ------------------------------------------ the certificate never hides
def test_certificate_flags_unconverged_heads(tiny_model):
    model = tiny_model("bert")
    # example 0 needs iterations (n = 20 > d_h + 1); example 1 (n = 6) is
    # answered in closed form and must stay converged
    ids, mask = random_batch(2, 20, lengths=[20, 6], seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converged: no warning
        efficient_attention(model, ids, mask)
    # unconverged rows are said out loud, not only in the certificate
    with pytest.warns(RuntimeWarning, match=r"row\(s\) did not reach the tol"):
        _, cert = efficient_attention(
            model, ids, mask, max_iter=1, return_certificate=True
        )
    assert not cert.ok() and not cert.worst()["all_converged"]
    assert "all converged: False" in str(cert)
    assert not bool(cert.converged[:, 0].all())
    assert bool(cert.converged[:, 1].all())
    torch.testing.assert_close(cert.converged, cert.kkt_residual <= 1e-12)
    assert int(cert.iterations.max()) == 1
    # an unreachable tolerance: every head is flagged, none is hidden
    with pytest.warns(RuntimeWarning, match="tol=0 within max_iter=3"):
        _, cert = efficient_attention(
            model, ids, mask, tol=0.0, max_iter=3, return_certificate=True
        )
    assert not bool(cert.converged.any()) and not cert.ok()
    # the attribution class warns, and reports the same through its
    # AttentionResult
    explainer = EfficientAttention(_forward(model), model=model, max_iter=1)
    with pytest.warns(RuntimeWarning, match="did not reach the tolerance"):
        _, res = explainer.attribute(
            ids, additional_forward_args=(mask,), query="all", return_matrices=True
        )
    assert not res.certificate.ok()
    assert not bool(res.certificate.converged[0, 0].all())
    assert bool(res.certificate.converged[0, 1].all())
