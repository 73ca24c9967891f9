r"""Model states, heads and configurations that Hugging Face users have: extra
model inputs (``token_type_ids``, ``position_ids``) and training mode in
:func:`attention_support_test`, regression and headless models, RoBERTa's
position offset, encoders built as decoders, the model itself as forward_func,
and forward functions whose output has no graph back to the attention
(``torch.no_grad()`` inside, detached, ``torch.compile``)."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from effattn_testing import make_tiny_model, random_batch

from captum_effattn import (
    EfficientAttention,
    attention_support_test,
    attention_weights,
    efficient_attention,
)


def _forward(model):
    return lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits


def _probs(model, ids, mask, **kwargs):
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, **kwargs).logits
    return torch.softmax(logits.double(), -1)


# ---------------------------------------------- attention_support_test
def _with_segments():
    r"""A BERT whose segment embeddings matter, and ids with two segments."""
    model = copy.deepcopy(make_tiny_model("bert"))
    with torch.no_grad():
        model.bert.embeddings.token_type_embeddings.weight.mul_(10.0)
        model.classifier.weight.mul_(100.0)
    ids, mask = random_batch(2, 20, lengths=[20, 14], seed=7)
    segments = torch.zeros_like(ids)
    segments[:, 8:] = 1
    return model, ids, mask, dict(token_type_ids=segments)


def _left_padded_gpt2():
    r"""GPT-2 (absolute positions) on a left-padded batch, with the
    position ids that count real tokens only."""
    model = make_tiny_model("gpt2")
    ids, mask = random_batch(2, 20, lengths=[20, 14], seed=7, left=True)
    return model, ids, mask, dict(position_ids=(mask.cumsum(-1) - 1).clamp_min(0))


@pytest.mark.parametrize("make", [_with_segments, _left_padded_gpt2])
def test_support_test_passes_model_inputs_to_every_forward_pass(make):
    # token_type_ids / position_ids reached efficient attention's forward
    # pass but not the test's own passes: p_full was the probability of
    # another input, and swapping in efficient attention seemed to change it
    model, ids, mask, kwargs = make()
    res = attention_support_test(model, ids, mask, **kwargs)
    probs = _probs(model, ids, mask, **kwargs)
    assert not torch.allclose(probs, _probs(model, ids, mask), atol=1e-4)
    assert res.target.tolist() == probs.argmax(-1).tolist()
    torch.testing.assert_close(res.p_full, probs.max(-1).values, rtol=0, atol=1e-6)
    torch.testing.assert_close(res.p_efficient, res.p_full, rtol=0, atol=1e-6)
    assert res.certificate.ok(), str(res.certificate)


def test_support_test_runs_a_training_model_without_dropout():
    model = copy.deepcopy(make_tiny_model("bert"))
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
    ids, mask = random_batch(2, 20, lengths=[20, 14], seed=7)
    expected = _probs(model, ids, mask).max(-1).values  # eval mode
    model.train()
    with pytest.warns(UserWarning, match="training mode"):
        res = attention_support_test(model, ids, mask)
    torch.testing.assert_close(res.p_full, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(res.p_efficient, res.p_full, rtol=0, atol=1e-6)
    assert all(m.training for m in model.modules())  # left as found


def test_support_test_refuses_a_single_logit_model():
    # softmax over one logit is 1: sufficiency and necessity were silently 0
    model = make_tiny_model("bert", num_labels=1)
    ids, mask = random_batch(2, 12, lengths=[12, 9], seed=1)
    with pytest.raises(ValueError, match="single-logit.*2 or more classes"):
        attention_support_test(model, ids, mask)


def test_support_test_refuses_a_model_without_logits():
    from transformers import AutoModel

    model = AutoModel.from_config(make_tiny_model("bert").config).eval()
    ids, mask = random_batch(2, 12, lengths=[12, 9], seed=1)
    with pytest.raises(TypeError, match="ForSequenceClassification.*without .logits"):
        attention_support_test(model, ids, mask)


# ------------------------------------------------ RoBERTa's position offset
@pytest.mark.parametrize("family", ["roberta", "xlm-roberta", "camembert"])
def test_roberta_family_length_limit_counts_the_position_offset(tiny_model, family):
    # max_position_embeddings 130 with pad_token_id 1: positions 2..129, so
    # 128 tokens at most; 129 passed the check and failed inside the model
    # with "index 130 is out of bounds"
    model = tiny_model(family)
    ids = torch.randint(3, 120, (1, 129), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="exceeds the model's 128 positions"):
        efficient_attention(model, ids, layers=-1, rows=0)
    with pytest.raises(ValueError, match="max_length=128"):
        attention_weights(model, ids)
    out = attention_weights(model, ids[:, :128], layers=-1, rows=0)
    assert out.shape == (1, 1, 4, 1, 128)


# ------------------------------------ gradient weighting without a graph
def _under_no_grad(model):
    def forward(ids, mask):
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask).logits

    return forward


@pytest.mark.parametrize(
    "make",
    [_under_no_grad, lambda m: (lambda i, k: _forward(m)(i, k).detach())],
    ids=["no-grad-inside", "detached"],
)
@pytest.mark.parametrize(
    "options", [dict(weighting="gradient"), dict(layer="gradient_rollout")]
)
def test_gradient_of_an_output_without_graph(tiny_model, make, options):
    model = tiny_model("bert")
    ids, mask = random_batch(2, 12, lengths=[12, 9], seed=1)
    explainer = EfficientAttention(make(model), model=model)
    with pytest.raises(ValueError, match="not connected.*weighting='none'"):
        explainer.attribute(ids, additional_forward_args=(mask,), **options)


def test_gradient_of_a_tuple_output_says_to_return_logits(tiny_model):
    model = tiny_model("bert")
    ids, mask = random_batch(2, 12, lengths=[12, 9], seed=1)

    def forward(ids, mask):
        return model(input_ids=ids, attention_mask=mask, return_dict=False)

    with pytest.raises(TypeError, match="got tuple.*\\.logits"):
        EfficientAttention(forward, model=model).attribute(
            ids, additional_forward_args=(mask,), weighting="gradient"
        )


@pytest.mark.slow
def test_gradient_weighting_of_a_compiled_model_is_refused_clearly(tiny_model):
    model = tiny_model("bert")
    compiled = torch.compile(model, backend="aot_eager")
    ids, mask = random_batch(2, 12, lengths=[12, 9], seed=1)
    explainer = EfficientAttention(_forward(compiled), model=model)
    with pytest.raises(ValueError, match="torch.compile"):
        explainer.attribute(ids, additional_forward_args=(mask,), weighting="gradient")
    torch._dynamo.reset()


@pytest.mark.slow
def test_a_compiled_model_is_read_through_its_eager_module(tiny_model):
    # torch.compile's wrapper has forward(*args, **kwargs): the attention
    # mask was not found by name, so padding counted as text (0.15 of the
    # padded example's score on padding); the package now reads the eager
    # module inside it
    model = tiny_model("bert")
    ids, mask = random_batch(2, 24, lengths=[24, 17], seed=0)
    want = EfficientAttention(model).attribute(ids, additional_forward_args=(mask,))
    compiled = torch.compile(model, backend="eager")
    try:
        got = EfficientAttention(compiled).attribute(
            ids, additional_forward_args=(mask,)
        )
        torch.testing.assert_close(got, want, atol=0, rtol=0)
        assert float(got[1, 17:].abs().max()) == 0.0
        torch.testing.assert_close(
            efficient_attention(compiled, ids, mask),
            efficient_attention(model, ids, mask),
            atol=0,
            rtol=0,
        )
        # a forward_func that calls compiled code that has already run skips
        # the hooks (unless dynamo falls back to eager code, e.g. once its
        # recompilation limit is reached): a clear error or the right answer,
        # never a silent wrong one
        with torch.no_grad():
            compiled(input_ids=ids, attention_mask=mask)
        explainer = EfficientAttention(_forward(compiled), model=compiled)
        try:
            got = explainer.attribute(ids, additional_forward_args=(mask,))
        except ValueError as err:
            assert "_orig_mod" in str(err)
        else:
            torch.testing.assert_close(got, want, atol=0, rtol=0)
    finally:
        torch._dynamo.reset()


# ----------------------------------------- encoders built as decoders
@pytest.mark.parametrize("family", ["bert", "roberta", "electra"])
def test_encoder_family_built_as_a_decoder_is_causal(family):
    # is_decoder=True (BertLMHeadModel, RobertaForCausalLM...) masks future
    # keys; efficient attention gave them up to a quarter of each row
    from transformers import AutoModelForCausalLM

    config = make_tiny_model(family, is_decoder=True).config
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    ids, mask = random_batch(2, 22, lengths=[22, 15], seed=3)
    e, cert = efficient_attention(model, ids, mask, return_certificate=True)
    assert cert.ok(), str(cert)
    future = torch.triu(torch.ones(22, 22, dtype=torch.bool), 1)
    assert float(attention_weights(model, ids, mask)[..., future].abs().max()) == 0
    assert float(e[..., future].abs().max()) == 0
    explainer = EfficientAttention(_forward(model), model=model)
    _, res = explainer.attribute(
        ids, additional_forward_args=(mask,), return_matrices=True
    )
    assert res.rows[:, 0].tolist() == [21, 14]  # the last real token


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_encoder_classifier_built_as_a_decoder_reads_the_first_token(family):
    # BertForSequenceClassification pools [CLS] even with is_decoder=True;
    # the default query used to be the last real token, a row the logits
    # never read. Left padding: the first real token, as for encoders
    model = make_tiny_model(family, is_decoder=True)
    explainer = EfficientAttention(_forward(model), model=model)
    for left in (False, True):
        ids, mask = random_batch(2, 14, lengths=[14, 10], seed=2, left=left)
        # left padding puts padding where the classifier reads: warned of
        expect = pytest.warns(UserWarning, match="padded on the left")
        with expect if left else contextlib.nullcontext():
            _, res = explainer.attribute(
                ids, additional_forward_args=(mask,), return_matrices=True
            )
        assert res.rows[:, 0].tolist() == ([0, 4] if left else [0, 0])
        # causal: the first token's row sees only itself
        with expect if left else contextlib.nullcontext():
            scores = explainer.attribute(ids, additional_forward_args=(mask,))
        first = res.rows[:, 0]
        assert torch.allclose(scores[torch.arange(2), first], torch.ones(2))


# -------------------------------------------- the model as forward_func
def test_model_as_forward_func_with_a_mask_gpt2_reads_as_its_cache(tiny_model):
    # GPT2ForSequenceClassification.forward(input_ids, cache, attention_mask...):
    # the mask in additional_forward_args became the cache, and the model
    # failed with "'Tensor' object has no attribute 'get_seq_length'"
    model = tiny_model("gpt2")
    ids, mask = random_batch(2, 12, lengths=[12, 9], seed=1)
    with pytest.raises(ValueError, match="argument 'cache'.*attention_mask=mask"):
        EfficientAttention(model).attribute(ids, additional_forward_args=(mask,))
    # the same mask inside a tuple of inputs (Captum's other form)
    with pytest.raises(ValueError, match="argument 'cache'.*attention_mask=mask"):
        EfficientAttention(model).attribute((ids, mask))


@pytest.mark.parametrize("family", ["bert", "distilbert", "llama"])
def test_model_as_forward_func_with_a_mask(tiny_model, family):
    # the same call works where the second argument is the attention mask
    model = tiny_model(family)
    ids, mask = random_batch(2, 12, lengths=[12, 9], seed=1)
    got = EfficientAttention(model).attribute(ids, additional_forward_args=(mask,))
    ref = EfficientAttention(_forward(model), model=model).attribute(
        ids, additional_forward_args=(mask,)
    )
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    in_tuple = EfficientAttention(model).attribute((ids, mask))[0]
    torch.testing.assert_close(in_tuple, ref, rtol=0, atol=0)


# ---------------------------------------- the model as the metrics' forward_func
@pytest.mark.parametrize(
    "metric", ["sufficiency", "necessity", "minimal_sufficient_size"]
)
def test_metrics_take_the_model_itself_as_forward_func(tiny_model, metric):
    # "the model or a function of it": a Hugging Face model returns a
    # SequenceClassifierOutput, whose .logits the metrics now read
    from captum_effattn import metrics

    model = tiny_model("bert")
    ids, mask = random_batch(2, 12, lengths=[12, 9], seed=1)
    scores = torch.linspace(0, 1, 12).expand(2, 12)
    fn = getattr(metrics, metric)
    got = fn(model, ids, scores, attention_mask=mask)
    ref = fn(_forward(model), ids, scores, attention_mask=mask)
    torch.testing.assert_close(got, ref, equal_nan=True)


def test_metrics_refuse_the_mask_landing_on_gpt2s_cache(tiny_model):
    from captum_effattn.metrics import necessity

    model = tiny_model("gpt2")
    ids, mask = random_batch(2, 12, lengths=[12, 9], seed=1)
    scores = torch.linspace(0, 1, 12).expand(2, 12)
    with pytest.raises(ValueError, match="argument 'cache'.*attention_mask=mask"):
        necessity(model, ids, scores, attention_mask=mask)


# ------------------------- the token a decoder's sequence classifier reads
def _ending_with_the_padding_id(pad):
    r"""Right-padded ids whose texts end with the padding id, as when a
    tokenizer without a padding token pads with its end-of-text token and
    the texts end with it."""
    ids, mask = random_batch(2, 12, lengths=[12, 9], seed=1)
    ids = ids.masked_fill(mask == 0, pad)
    ids[0, 11] = ids[1, 8] = pad
    return ids, mask


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_decoder_classifier_is_read_where_it_pools(family):
    # Hugging Face pools the last token whose id is not pad_token_id; the
    # default query was the last real token of the mask, here the end-of-text
    # token, which the classifier never reads: gradient weighting gave all
    # zeros, and the unweighted scores explained a row the logits ignore
    model = make_tiny_model(family, pad_token_id=7)
    ids, mask = _ending_with_the_padding_id(7)
    explainer = EfficientAttention(_forward(model), model=model)
    scores, res = explainer.attribute(
        ids, target=1, additional_forward_args=(mask,), weighting="gradient",
        return_matrices=True,
    )  # fmt: skip
    assert res.rows[:, 0].tolist() == [10, 7]
    assert bool((scores.abs().sum(1) > 0).all())
    # without a pad_token_id (one example) the last position is read
    single = make_tiny_model(family, pad_token_id=None)
    _, res = EfficientAttention(_forward(single), model=single).attribute(
        ids[:1], additional_forward_args=(mask[:1],), return_matrices=True
    )
    assert res.rows[:, 0].tolist() == [11]


def test_decoder_classifier_pooling_a_padded_position_is_refused():
    # config.pad_token_id (7) is not the id the padding holds (0): the
    # classifier reads the padding of the second example
    model = make_tiny_model("gpt2", pad_token_id=7)
    ids, mask = random_batch(2, 12, lengths=[12, 9], seed=1)
    explainer = EfficientAttention(_forward(model), model=model)
    with pytest.raises(ValueError, match=r"example\(s\) \[1\].*pad_token_id = "):
        explainer.attribute(ids, additional_forward_args=(mask,))
    _, res = explainer.attribute(  # an explicit query is read as asked
        ids, additional_forward_args=(mask,), query=0, return_matrices=True
    )
    assert res.rows[:, 0].tolist() == [0, 0]
