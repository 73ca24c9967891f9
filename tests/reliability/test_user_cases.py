r"""Ways users call the package that once gave wrong answers or obscure errors:
left-padded encoder batches, gradient weighting under ``torch.no_grad()`` or
with frozen parameters, forward functions that return one score per example
or call ``model.forward`` directly, ``heads`` with ``gradient_rollout``,
the order of ``layers``, float32 with the default tolerance, and option
values that cannot give an answer."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from effattn_testing import random_batch

from captum_effattn import (
    AttentionRollout,
    AttentionWeights,
    EfficientAttention,
    attention_weights,
    effective_attention,
    efficient_attention,
)


def _forward(model):
    return lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits


# ------------------------------------------------------------ left padding
@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
@pytest.mark.parametrize("layer", [-1, "rollout"])
def test_left_padded_encoder_batch_reads_the_first_real_token(
    tiny_model, family, layer
):
    model = tiny_model(family)
    lengths = [24, 13, 19]
    ids, mask = random_batch(3, 24, lengths=lengths, seed=2, left=True)
    explainer = EfficientAttention(_forward(model), model=model)
    # explained as documented, with a warning: the classifier reads padding
    with pytest.warns(UserWarning, match="2 example.*padded on the left"):
        got, res = explainer.attribute(
            ids, additional_forward_args=(mask,), layer=layer, return_matrices=True
        )
    if layer == -1:
        assert res.rows[:, 0].tolist() == [24 - k for k in lengths]
    for b, k in enumerate(lengths):
        # the same example and padding alone, with its [CLS] named explicitly
        # (a model with absolute positions sees left padding, so the
        # unpadded example is a different input)
        alone = explainer.attribute(
            ids[b : b + 1], additional_forward_args=(mask[b : b + 1],),
            layer=layer, query=24 - k,
        )  # fmt: skip
        assert float(alone.abs().sum()) > 0
        assert torch.allclose(got[b], alone[0], atol=1e-6)
        assert float(got[b, : 24 - k].abs().sum()) == 0.0


# --------------------------------------------------------- gradient weighting
def _grad_scores(model, ids, mask, **kw):
    explainer = EfficientAttention(_forward(model), model=model)
    return explainer.attribute(
        ids, target=1, additional_forward_args=(mask,), **kw
    )  # fmt: skip


@pytest.mark.parametrize(
    "options", [dict(weighting="gradient"), dict(layer="gradient_rollout")]
)
def test_gradient_weighting_under_no_grad_and_inference_mode(tiny_model, options):
    model = tiny_model("bert")
    ids, mask = random_batch(2, 24, lengths=[24, 15], seed=3)
    want = _grad_scores(model, ids, mask, **options)
    assert float(want.abs().sum()) > 0
    with torch.no_grad():
        got = _grad_scores(model, ids, mask, **options)
    assert torch.equal(got, want)
    with torch.inference_mode():
        ids_i, mask_i = ids.clone(), mask.clone()  # inference tensors
        got = _grad_scores(model, ids_i, mask_i, **options)
    assert torch.allclose(got, want, atol=1e-7)


def test_gradient_weighting_with_frozen_parameters(tiny_model):
    model = tiny_model("bert", seed=4)
    ids, mask = random_batch(2, 24, lengths=[24, 15], seed=3)
    want = _grad_scores(model, ids, mask, weighting="gradient")
    model.requires_grad_(False)
    try:
        got = _grad_scores(model, ids, mask, weighting="gradient")
        rollout = _grad_scores(model, ids, mask, layer="gradient_rollout")
    finally:
        model.requires_grad_(True)
    assert torch.allclose(got, want, atol=1e-7)
    assert float(rollout.abs().sum()) > 0
    assert all(p.grad is None for p in model.parameters())


def test_forward_func_with_one_score_per_example(tiny_model):
    model = tiny_model("bert")
    ids, mask = random_batch(2, 24, lengths=[24, 15], seed=3)
    want = _grad_scores(model, ids, mask, weighting="gradient")  # target=1
    one = lambda i, m: model(input_ids=i, attention_mask=m).logits[:, 1]  # noqa
    explainer = EfficientAttention(one, model=model)
    got = explainer.attribute(
        ids, additional_forward_args=(mask,), weighting="gradient"
    )
    assert torch.allclose(got, want, atol=1e-7)
    with pytest.raises(ValueError, match="target=None"):
        explainer.attribute(
            ids, target=1, additional_forward_args=(mask,), weighting="gradient"
        )


@pytest.mark.parametrize("target", [2, -1, [0, 5], torch.tensor([0, 2]), (5,)])
def test_target_out_of_range(tiny_model, target):
    model = tiny_model("bert")
    ids, mask = random_batch(2, 24, lengths=[24, 15], seed=3)
    explainer = EfficientAttention(_forward(model), model=model)
    with pytest.raises(ValueError, match="out of range for 2 classes"):
        explainer.attribute(
            ids, target=target, additional_forward_args=(mask,), weighting="gradient"
        )
    # unused without a gradient, but still checked: a typo would pass as a
    # class-specific explanation
    with pytest.raises(ValueError, match="out of range for 2 classes"):
        explainer.attribute(ids, target=target, additional_forward_args=(mask,))
    explainer.attribute(ids, target=1, additional_forward_args=(mask,))


def test_a_tuple_of_several_indices_is_not_one_class_per_example(tiny_model):
    # Captum reads a tuple as one index into the output's dimensions after
    # the batch; (0, 1) on (batch, classes) logits passed as classes [0, 1]
    model = tiny_model("bert")
    ids, mask = random_batch(2, 24, lengths=[24, 15], seed=3)
    explainer = EfficientAttention(_forward(model), model=model)
    for weighting in ("none", "gradient"):
        with pytest.raises(ValueError, match="tuple of 2 indices"):
            explainer.attribute(
                ids, target=(0, 1), additional_forward_args=(mask,),
                weighting=weighting,
            )  # fmt: skip
    one = explainer.attribute(
        ids, target=(1,), additional_forward_args=(mask,), weighting="gradient"
    )
    want = explainer.attribute(
        ids, target=1, additional_forward_args=(mask,), weighting="gradient"
    )
    torch.testing.assert_close(one, want)


def test_a_padded_batch_without_its_mask_is_warned_about(tiny_model):
    model = tiny_model("bert")
    ids, mask = random_batch(2, 24, lengths=[24, 15], seed=3)
    explainer = EfficientAttention(model)
    with pytest.warns(
        UserWarning, match="no attention mask was given, but the batch looks"
    ):
        explainer.attribute(ids)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explainer.attribute(ids, additional_forward_args=(mask,))
        explainer.attribute(ids[:1])  # one text: nothing to compare
        explainer.attribute(ids[:, :15])  # no padding


def test_left_padding_of_an_encoder_classifier_is_warned_about(tiny_model):
    # a Hugging Face encoder classifier reads position 0, padding in a
    # left-padded row; the default query explains the [CLS] row, whose
    # last-layer gradient is then 0: weighting="gradient" gave all zeros
    model = tiny_model("bert")
    ids, mask = random_batch(2, 20, lengths=[20, 12], seed=3)
    left = torch.stack([ids[0], ids[1].roll(8)])
    left_mask = torch.stack([mask[0], mask[1].roll(8)])
    explainer = EfficientAttention(model)
    kw = dict(additional_forward_args=(left_mask,), target=1, weighting="gradient")
    with pytest.warns(UserWarning, match="1 example.*padded on the left") as got:
        scores = explainer.attribute(left, **kw)
    assert {w.filename for w in got} == {__file__}
    assert float(scores[1].abs().sum()) == 0.0  # what the warning is about
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explainer.attribute(ids, additional_forward_args=(mask,), target=1)
        explainer.attribute(left, additional_forward_args=(left_mask,), query="all")


def test_functional_api_and_metrics_warn_of_a_padded_batch_without_mask(tiny_model):
    # only the classes warned: efficient_attention and the metrics took the
    # padding as text silently (on the real model, 65% of a short text's
    # [CLS] attention went to its padding, and necessity was 0.35, not 0.04)
    from captum_effattn import attention_support_test, efficient_attention
    from captum_effattn.metrics import (
        aopc_sufficiency,
        minimal_necessary_size,
        necessity,
    )

    model = tiny_model("bert")
    ids, mask = random_batch(2, 24, lengths=[24, 15], seed=3)
    scores = torch.rand(ids.shape, generator=torch.Generator().manual_seed(0))

    def forward(i, m=None):
        return model(input_ids=i, attention_mask=m).logits

    calls = [
        lambda: efficient_attention(model, ids, layers=-1, rows=0),
        lambda: attention_support_test(model, ids, target=0, layers=[1]),
        lambda: necessity(forward, ids, scores),
        lambda: aopc_sufficiency(forward, ids, scores, fractions=[0.5]),
        lambda: minimal_necessary_size(forward, ids, scores),
    ]
    for call in calls:
        with pytest.warns(UserWarning, match="looks padded.*attention_mask=") as got:
            call()
        # at the user's line, not inside the package (once per call site)
        assert {w.filename for w in got if "looks padded" in str(w.message)} == {
            __file__
        }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        efficient_attention(model, ids, mask, layers=-1, rows=0)
        necessity(forward, ids, scores, attention_mask=mask)
        necessity(forward, ids[:, :15], scores[:, :15])  # no padding


def test_a_deep_copied_explainer_says_why_its_model_is_not_called(tiny_model):
    model = tiny_model("bert")
    ids, mask = random_batch(2, 24, lengths=[24, 15], seed=3)
    copied = copy.deepcopy(EfficientAttention(_forward(model), model=model))
    with pytest.raises(ValueError, match="never called the model.*deep copy"):
        copied.attribute(ids, additional_forward_args=(mask,))


def test_causal_lm_logits_need_a_target(tiny_model):
    model = tiny_model("gpt2")
    ids, mask = random_batch(2, 12, lengths=[12, 8], seed=3)
    lm = lambda i, m: model(input_ids=i, attention_mask=m).logits  # noqa: E731
    base = model.base_model
    assert base is not model  # a classification head on GPT-2
    seq = lambda i, m: lm(i, m).unsqueeze(1).expand(-1, 3, -1)  # noqa: E731
    with pytest.raises(ValueError, match="one output per example"):
        EfficientAttention(seq, model=model).attribute(
            ids, additional_forward_args=(mask,), weighting="gradient"
        )


def test_gradient_rollout_honours_heads(tiny_model):
    model = tiny_model("bert")
    ids, mask = random_batch(2, 24, lengths=[24, 15], seed=3)
    explainer = AttentionWeights(_forward(model), model=model)

    def rollout(heads):
        return explainer.attribute(
            ids, target=1, additional_forward_args=(mask,),
            layer="gradient_rollout", heads=heads,
        )  # fmt: skip

    # independent: the recurrence with only head 0's term
    out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    grads = torch.autograd.grad(out.logits[:, 1].sum(), list(out.attentions))
    want = []
    for b in range(2):
        n = int(mask[b].sum())
        joint = torch.eye(n, dtype=torch.float64)
        for a, g in zip(out.attentions, grads):
            term = (g[b, 0, :n, :n] * a[b, 0, :n, :n]).clamp(min=0).double()
            joint = joint + term @ joint
        row = torch.zeros(24, dtype=torch.float64)
        row[:n] = joint[0]
        want.append(row)
    got = rollout([0])
    assert torch.allclose(got.double(), torch.stack(want), atol=1e-6)
    assert torch.equal(rollout(0), got)
    assert not torch.allclose(rollout("mean"), got)
    assert not torch.allclose(rollout("max"), rollout("mean"))


# ------------------------------------------------------------ call patterns
def test_forward_func_calling_model_forward_directly(tiny_model):
    model = tiny_model("bert")
    ids, mask = random_batch(2, 24, lengths=[24, 15], seed=3)
    want = EfficientAttention(_forward(model), model=model).attribute(
        ids, additional_forward_args=(mask,), weighting="gradient", target=0
    )
    direct = lambda i, m: model.forward(input_ids=i, attention_mask=m).logits  # noqa
    got = EfficientAttention(direct, model=model).attribute(
        ids, additional_forward_args=(mask,), weighting="gradient", target=0
    )
    assert torch.equal(got, want)
    twice = lambda i, m: direct(i, m) + direct(i, m)  # noqa: E731
    with pytest.raises(ValueError, match="2 times"):
        EfficientAttention(twice, model=model).attribute(
            ids, additional_forward_args=(mask,)
        )


@pytest.mark.parametrize("fn", [efficient_attention, effective_attention])
def test_layers_come_back_in_the_order_given(tiny_model, fn):
    model = tiny_model("bert")  # 2 layers
    ids, mask = random_batch(1, 30, seed=5)
    full = fn(model, ids, mask)
    got = fn(model, ids, mask, layers=[1, 0])
    assert torch.equal(got[0], full[1]) and torch.equal(got[1], full[0])
    assert torch.equal(fn(model, ids, mask, layers=[-1])[0], full[1])
    assert torch.equal(fn(model, ids, mask, layers=np.int64(0))[0], full[0])


@pytest.mark.parametrize(
    "layers, error, match",
    [
        ([1, -1], ValueError, "named twice"),
        ([0, 0], ValueError, "named twice"),
        ([], ValueError, "empty"),
        ("all", TypeError, "None for all layers"),
        ([0.5], TypeError, "must be ints"),
        ([True], TypeError, "must be ints"),
        ([2], ValueError, "out of range"),
    ],
)
def test_bad_layers(tiny_model, layers, error, match):
    model = tiny_model("bert")
    ids, mask = random_batch(1, 12, seed=5)
    with pytest.raises(error, match=match):
        attention_weights(model, ids, mask, layers=layers)


# ---------------------------------------------------------------- options
def test_float32_converges_with_the_default_tolerance(tiny_model):
    model = tiny_model("bert")
    ids, mask = random_batch(2, 40, lengths=[40, 31], seed=6)
    _, cert = efficient_attention(
        model, ids, mask, dtype=torch.float32, return_certificate=True
    )
    assert bool(cert.converged.all()) and cert.ok()
    explainer = EfficientAttention(_forward(model), model=model, dtype=torch.float32)
    _, res = explainer.attribute(
        ids, additional_forward_args=(mask,), query="all", return_matrices=True
    )
    assert res.certificate.ok()


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(max_iter=0), "max_iter must be a positive int"),
        (dict(max_iter=2.5), "max_iter must be a positive int"),
        (dict(tol=-1e-9), "tol must be a non-negative number"),
        (dict(tol=float("nan")), "tol must be a non-negative number"),
        (dict(tol=float("inf")), "tol must be a non-negative number"),
        (dict(rtol=1.5), r"rtol must be a number in \(0, 1\)"),
        (dict(rtol=0.0), r"rtol must be a number in \(0, 1\)"),
    ],
)
def test_solver_options_that_cannot_give_an_answer(tiny_model, options, match):
    model = tiny_model("bert")
    ids, mask = random_batch(1, 40, seed=6)
    with pytest.raises(ValueError, match=match):
        efficient_attention(model, ids, mask, **options)
    with pytest.raises(ValueError, match=match):
        EfficientAttention(_forward(model), model=model, **options)


def test_heads_query_and_layer_forms(tiny_model):
    model = tiny_model("bert")  # 4 heads
    ids, mask = random_batch(2, 24, lengths=[24, 15], seed=3)
    explainer = AttentionWeights(_forward(model), model=model)

    def run(**kw):
        return explainer.attribute(ids, additional_forward_args=(mask,), **kw)

    assert torch.equal(run(heads=3), run(heads=[3]))
    assert torch.equal(run(heads=torch.tensor([0, 1])), run(heads=[0, 1]))
    assert torch.equal(run(heads=(np.int64(2),)), run(heads=[2]))
    assert torch.equal(run(heads=np.array([2])), run(heads=[2]))
    assert torch.equal(run(heads=np.array([[0], [3]])), run(heads=[0, 3]))
    with pytest.raises(TypeError, match="numpy array of dtype float64"):
        run(heads=np.array([1.0]))
    with pytest.raises(TypeError, match="numpy array of dtype bool"):
        run(heads=np.array([True]))
    assert torch.equal(run(query=np.int64(5)), run(query=5))
    assert torch.equal(run(query=torch.tensor(5)), run(query=5))
    with pytest.raises(TypeError, match="integer indices"):
        run(heads=[True])
    with pytest.raises(TypeError, match="integer indices"):
        run(heads=torch.tensor([0.0]))
    with pytest.raises(TypeError, match="layer must be an int"):
        run(layer=True)
    with pytest.raises(ValueError, match="rows is empty"):
        attention_weights(model, ids, mask, rows=[])
    for empty in (torch.empty(0, dtype=torch.long), torch.empty(ids.shape[0], 0)):
        with pytest.raises(ValueError, match="rows is empty"):
            attention_weights(model, ids, mask, rows=empty.long())
    # rows takes the integer forms that layers and query take; bools are
    # refused (True was once row 1)
    want = attention_weights(model, ids, mask, rows=3)
    for form in (np.int64(3), torch.tensor(3), [np.int64(3)], np.array([3])):
        assert torch.equal(attention_weights(model, ids, mask, rows=form), want)
    for bad in (True, [True, False], 1.0, torch.tensor([0.5])):
        with pytest.raises(TypeError, match="rows must be integer positions"):
            attention_weights(model, ids, mask, rows=bad)
    with pytest.raises(ValueError, match="heads must be"):
        run(heads=[])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16])
def test_narrow_integer_ids_are_refused(tiny_model, dtype):
    model = tiny_model("bert")
    ids, mask = random_batch(1, 12, seed=5)
    with pytest.raises(TypeError, match=r"input_ids.long\(\)"):
        efficient_attention(model, ids.to(dtype), mask)
    with pytest.raises(TypeError, match=r"input_ids.long\(\)"):
        AttentionRollout(_forward(model), model=model).attribute(
            ids.to(dtype), additional_forward_args=(mask,)
        )


@pytest.mark.parametrize("dtype, ok", [(torch.float32, True), (torch.float64, False)])
def test_certificate_tolerance_follows_the_algebra_dtype(dtype, ok):
    from captum_effattn import Certificate

    one = torch.ones(1, 1, dtype=dtype)
    cert = Certificate(
        output_residual=one * 2e-4, min_entry=one * 0, row_sum_error=one * 2e-5,
        kkt_residual=one * 1e-7, iterations=torch.ones(1, 1, dtype=torch.long),
        converged=torch.ones(1, 1, dtype=torch.bool), rank=torch.ones(1, 1),
        support_size=torch.ones(1, 1),
    )  # fmt: skip
    assert cert.ok() is ok
    assert cert.ok(rtol=1e-3, sum_tol=1e-4)
    assert not cert.ok(rtol=1e-4, sum_tol=1e-4)
    assert not cert.ok(rtol=1e-3, sum_tol=1e-5)


@pytest.mark.slow
def test_float32_certifies_on_a_real_document(minilm, real_batch):
    model, _ = minilm
    ids, mask = real_batch
    _, cert = efficient_attention(
        model, ids[:1, :128], mask[:1, :128], dtype=torch.float32,
        return_certificate=True,
    )  # fmt: skip
    assert cert.ok()
    assert cert.worst()["output_residual"] > 1e-6  # not the float64 bound


def _refused_by_both(model, ids, mask, match):
    r"""The functional form and the attribution class both refuse."""
    with pytest.raises(ValueError, match=match):
        efficient_attention(model, ids, mask)
    with pytest.raises(ValueError, match=match):
        EfficientAttention(_forward(model), model=model).attribute(
            ids, additional_forward_args=(mask,)
        )


def test_inputs_longer_than_a_sliding_window_are_refused(tiny_model):
    model = tiny_model("mistral", sliding_window=8)
    ids, mask = random_batch(2, 12, lengths=[12, 6], seed=3)
    _refused_by_both(model, ids, mask, "sliding attention window of 8")
    # within the window: the usual answer
    _, cert = efficient_attention(
        model, ids[:, :8], mask[:, :8], return_certificate=True
    )
    assert cert.ok()
    # padding is no token: a batch padded past the window whose texts fit
    # it is accepted by the classes too (they once counted the padding)
    ids, mask = random_batch(2, 12, lengths=[8, 5], seed=3)
    got = EfficientAttention(_forward(model), model=model).attribute(
        ids, additional_forward_args=(mask,)
    )
    for i, length in enumerate([8, 5]):
        alone = EfficientAttention(_forward(model), model=model).attribute(
            ids[i : i + 1, :length], additional_forward_args=(mask[i : i + 1, :length],)
        )
        torch.testing.assert_close(got[i, :length], alone[0])
        assert bool((got[i, length:] == 0).all())


# ------------------------------------------- multi-label support test
def test_support_test_uses_sigmoid_for_a_multi_label_model(tiny_model):
    # independent labels: softmax over them gave probabilities that mixed
    # the labels (and a single-label model was refused outright)
    from captum_effattn import attention_support_test

    ids, mask = random_batch(2, 20, lengths=[20, 14], seed=7)
    for num_labels in (3, 1):
        model = copy.deepcopy(tiny_model("bert", num_labels=num_labels))
        model.config.problem_type = "multi_label_classification"
        with torch.no_grad():
            model.classifier.weight.mul_(20.0)  # away from 1/2
            logits = model(input_ids=ids, attention_mask=mask).logits.double()
        res = attention_support_test(model, ids, mask, target=0)
        want = torch.sigmoid(logits[:, 0])
        torch.testing.assert_close(res.p_full, want, rtol=0, atol=1e-6)
        torch.testing.assert_close(res.p_efficient, want, rtol=0, atol=1e-6)
        assert bool(((res.p_support >= 0) & (res.p_support <= 1)).all())
        if num_labels == 3:
            assert res.target.tolist() == [0, 0]
            default = attention_support_test(model, ids, mask)
            assert default.target.tolist() == logits.argmax(-1).tolist()
    # a regression model has no class probabilities at all
    model = copy.deepcopy(tiny_model("bert", num_labels=3))
    model.config.problem_type = "regression"
    with pytest.raises(ValueError, match="regression.*use a classifier"):
        attention_support_test(model, ids, mask)


# ----------------------------------------------- numpy and torch integers
@pytest.mark.parametrize("make", [np.int64, torch.tensor])
def test_layer_takes_numpy_and_torch_integers_like_query(tiny_model, make):
    # ``for layer in np.arange(n)`` or a 0-d tensor: ``query`` and ``heads``
    # took them, ``layer`` said "layer must be an int"
    model = tiny_model("bert")
    ids, mask = random_batch(2, 12, lengths=[12, 8], seed=3)
    explainer = EfficientAttention(_forward(model), model=model)
    want = explainer.attribute(ids, additional_forward_args=(mask,), layer=0)
    got = explainer.attribute(ids, additional_forward_args=(mask,), layer=make(0))
    assert torch.equal(got, want)


@pytest.mark.parametrize(
    "target",
    [
        np.int64(1),
        torch.tensor([[1], [0]]),
        [np.int64(1), np.int64(0)],
        [(1,), (0,)],
        np.array([1, 0]),
    ],
    ids=["numpy-int", "tensor-B1", "list-numpy", "list-1-tuples", "ndarray"],
)
def test_gradient_weighting_takes_the_targets_the_metrics_take(tiny_model, target):
    # these failed inside Captum with "AssertionError: Target type
    # <class 'numpy.int64'> is not valid" (or "Tensor target dimension
    # torch.Size([2, 1]) is not valid") while the metrics accept them
    model = tiny_model("bert")
    ids, mask = random_batch(2, 12, lengths=[12, 8], seed=3)
    explainer = EfficientAttention(_forward(model), model=model)
    want_target = 1 if isinstance(target, np.integer) else [1, 0]
    want = explainer.attribute(
        ids, target=want_target, additional_forward_args=(mask,),
        weighting="gradient",
    )  # fmt: skip
    got = explainer.attribute(
        ids, target=target, additional_forward_args=(mask,), weighting="gradient"
    )
    assert torch.equal(got, want)


def test_gradient_weighting_says_when_target_does_not_fit_the_batch(tiny_model):
    model = tiny_model("bert")
    ids, mask = random_batch(2, 12, lengths=[12, 8], seed=3)
    explainer = EfficientAttention(_forward(model), model=model)
    with pytest.raises(ValueError, match="3 classes for a batch of 2"):
        explainer.attribute(
            ids, target=torch.tensor([1, 0, 1]), additional_forward_args=(mask,),
            weighting="gradient",
        )  # fmt: skip


# ------------------------------------------------------- key/value caches
@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated")
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_key_value_cache_is_refused(family):
    # With a cache the attention covers past and new keys but the values
    # only the new tokens: the first columns of the rows (the past keys)
    # were paired with the new tokens' values and certified.
    from effattn_testing import _tiny_config
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = _tiny_config(family)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    ids, _ = random_batch(1, 8, seed=1)

    def cache():
        with torch.no_grad():
            return model(input_ids=ids[:, :5], use_cache=True).past_key_values

    for name in ("cache", "past_key_values"):
        for fn in (attention_weights, efficient_attention):
            with pytest.raises(ValueError, match="cache"):
                fn(model, ids[:, 5:], **{name: cache()})
    # a forward_func that holds the cache itself: caught from the shapes
    past = cache()

    def forward(new):
        return model(input_ids=new, past_key_values=past).logits[:, -1]

    for cls in (AttentionWeights, EfficientAttention):
        past = cache()
        with pytest.raises(ValueError, match="not square over the input tokens"):
            cls(forward, model=model).attribute(ids[:, 5:], target=0)
    # no cache, or use_cache=True without one, is fine
    got = efficient_attention(model, ids, use_cache=True, cache=None)
    assert got.shape[-1] == 8


def test_the_sliding_window_counts_positions_not_tokens(tiny_model):
    # ten real tokens spread over sixteen positions (a mask with holes, as
    # the "pad" perturbation makes) do not fit a window of ten positions:
    # row 15 would be given keys 0 to 5, which the model cannot see
    model = tiny_model("mistral", sliding_window=10)
    ids, _ = random_batch(1, 16, seed=4)
    mask = torch.zeros(1, 16, dtype=torch.long)
    mask[0, ::2] = 1
    mask[0, 15] = 1
    assert int(mask.sum()) <= 10
    _refused_by_both(model, ids, mask, "spans 16 positions")
    # the same holes within the window are accepted
    _, cert = efficient_attention(
        model, ids[:, 6:], mask[:, 6:], return_certificate=True
    )
    assert cert.ok()


# ------------------------------------------------------------------ threads
def test_another_threads_forward_pass_is_not_recorded(tiny_model):
    # the hooks recorded every forward pass of the model, whichever thread
    # ran it: a plain inference call from another thread while an
    # attribution's hooks were on replaced its attention, and the answer
    # was certified
    import threading

    model = tiny_model("bert")
    ids, mask = random_batch(2, 24, lengths=[24, 15], seed=3)
    other, other_mask = random_batch(2, 24, seed=9)
    want = EfficientAttention(_forward(model), model=model).attribute(
        ids, additional_forward_args=(mask,)
    )
    inside, done = threading.Event(), threading.Event()

    def forward(ids, mask):
        out = model(input_ids=ids, attention_mask=mask).logits
        inside.set()
        assert done.wait(60)  # the other thread's pass runs under our hooks
        return out

    def plain():
        assert inside.wait(60)
        with torch.no_grad():
            model(input_ids=other, attention_mask=other_mask)
        done.set()

    worker = threading.Thread(target=plain)
    worker.start()
    got = EfficientAttention(forward, model=model).attribute(
        ids, additional_forward_args=(mask,)
    )
    worker.join()
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_two_threads_explaining_one_model_take_turns(tiny_model):
    # each explainer saves and restores the model's training flags: B
    # entering while A ran, and running after A had restored training mode,
    # ran with dropout on (and certified it), and left the model in eval mode
    import threading

    model = copy.deepcopy(tiny_model("bert"))
    model.config.attention_probs_dropout_prob = 0.5
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.5
    ids, mask = random_batch(2, 24, lengths=[24, 15], seed=3)
    want = EfficientAttention(_forward(model), model=model).attribute(
        ids, additional_forward_args=(mask,)
    )
    model.train()
    b_inside, a_done = threading.Event(), threading.Event()
    got = {}

    def forward_a(ids, mask):
        out = model(input_ids=ids, attention_mask=mask).logits
        worker.start()  # B starts once A is inside
        b_inside.wait(2)  # and cannot get in while A holds the model
        return out

    def forward_b(ids, mask):
        b_inside.set()
        assert a_done.wait(60)
        return model(input_ids=ids, attention_mask=mask).logits

    def run_b():
        got["b"] = EfficientAttention(forward_b, model=model).attribute(
            ids, additional_forward_args=(mask,)
        )

    worker = threading.Thread(target=run_b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got["a"] = EfficientAttention(forward_a, model=model).attribute(
            ids, additional_forward_args=(mask,)
        )
        a_done.set()
        worker.join()
    for name in ("a", "b"):
        torch.testing.assert_close(got[name], want, rtol=0, atol=0)
    assert model.training and all(m.training for m in model.modules())


def test_a_forward_func_running_the_model_in_another_thread_is_told_why(tiny_model):
    # with the hooks recording their own thread only, such a forward_func
    # got "never called the model"; it now names the cause
    from concurrent.futures import ThreadPoolExecutor

    model = tiny_model("bert")
    ids, mask = random_batch(2, 24, lengths=[24, 15], seed=3)
    pool = ThreadPoolExecutor(1)

    def forward(ids, mask):
        return pool.submit(_forward(model), ids, mask).result()

    with pytest.raises(ValueError, match="ran the model in another thread"):
        EfficientAttention(forward, model=model).attribute(
            ids, additional_forward_args=(mask,)
        )
    pool.shutdown()


def test_the_support_test_holds_the_model_for_its_whole_run(tiny_model):
    # it switched the model to eval mode outside the per-model lock, so an
    # explainer in another thread could restore the training flags between
    # its forward passes
    import threading

    from captum_effattn import attention_support_test
    from captum_effattn._core.adapters import _model_lock

    model = tiny_model("bert")
    ids, mask = random_batch(2, 24, lengths=[24, 15], seed=3)
    free = []

    def probe(_m, _args):
        got = []
        t = threading.Thread(
            target=lambda: got.append(_model_lock(model).acquire(blocking=False))
        )
        t.start()
        t.join()
        free.append(got[0])
        if got[0]:
            _model_lock(model).release()  # pragma: no cover - the bug

    handle = model.register_forward_pre_hook(probe)
    try:
        attention_support_test(model, ids, mask)
    finally:
        handle.remove()
    assert len(free) >= 4 and not any(free)


def test_a_warning_made_an_error_leaves_the_model_free(tiny_model):
    # with warnings as errors, the training-mode warning raised after the
    # model's lock was taken and eval mode set, and both stayed so
    import threading

    from captum_effattn._core.adapters import _model_lock

    model = copy.deepcopy(tiny_model("bert"))
    ids, mask = random_batch(2, 24, lengths=[24, 15], seed=3)
    model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="training mode"):
            EfficientAttention(_forward(model), model=model).attribute(
                ids, additional_forward_args=(mask,)
            )
    assert model.training
    got = []

    def try_lock():
        lock = _model_lock(model)
        got.append(lock.acquire(blocking=False))
        if got[-1]:
            lock.release()

    t = threading.Thread(target=try_lock)
    t.start()
    t.join()
    assert got == [True]
