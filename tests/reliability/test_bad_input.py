r"""Bad input, one table: every case must raise a ``ValueError`` or
``TypeError`` whose message says what to do, from ``efficient_attention`` and
from ``EfficientAttention.attribute`` alike; and the model must come back as
it was found (hooks removed, training flags, grad mode, weights) even when an
exception is raised half-way."""

from __future__ import annotations

import copy
import warnings
from typing import Callable, Dict, List, Tuple

import pytest
import torch
from effattn_testing import random_batch
from torch import Tensor, nn
from torch.nn.modules import module as nn_module

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
from captum_effattn.metrics import sufficiency

CLASSES = [EfficientAttention, EffectiveAttention, AttentionWeights, AttentionRollout]


def _forward(model: nn.Module) -> Callable[..., Tensor]:
    return lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits


def _batch() -> Tuple[Tensor, Tensor]:
    return random_batch(2, 12, seed=8)


def _call(api: str, model: nn.Module, ids, mask, **kwargs):
    if api == "efficient_attention":
        return efficient_attention(model, ids, mask, **kwargs)
    explainer = EfficientAttention(_forward(model), model=model)
    return explainer.attribute(ids, additional_forward_args=(mask,), **kwargs)


APIS = ["efficient_attention", "EfficientAttention.attribute"]

# (make bad (ids, mask) from good ones, error, what the message must say)
TOKEN_CASES = [
    pytest.param(
        lambda i, m: (i[:0], m[:0]), ValueError, "empty batch.*at least one example",
        id="empty-batch",
    ),
    pytest.param(
        lambda i, m: (i[:, :0], m[:, :0]), ValueError,
        "zero-length.*at least one token", id="zero-length-sequence",
    ),
    pytest.param(
        lambda i, m: (i, m * torch.tensor([[1], [0]])), ValueError,
        r"example\(s\) \[1\] are all padding.*remove them", id="all-padding-example",
    ),
    pytest.param(
        lambda i, m: (i.float(), m), TypeError, "integer token ids.*torch.long",
        id="float-ids",
    ),
    pytest.param(
        lambda i, m: (i.bool(), m), TypeError, "integer token ids.*torch.bool",
        id="bool-ids",
    ),
    pytest.param(
        lambda i, m: (i.masked_fill(m == 1, -100), m), ValueError,
        "negative token ids.*pad_token_id", id="negative-ids",
    ),
    pytest.param(
        lambda i, m: (i + 1000, m), ValueError,
        "outside the model's vocabulary of 120.*tokenized for this model",
        id="ids-outside-vocabulary",
    ),
    pytest.param(
        lambda i, m: (i.repeat(1, 11), m.repeat(1, 11)), ValueError,
        "length 132 exceeds the model's 128 positions.*truncation=True",
        id="longer-than-max-positions",
    ),
    pytest.param(
        lambda i, m: (i, m[:, :-1]), ValueError, r"\(2, 11\).*\(2, 12\).*must match",
        id="mask-shorter-than-ids",
    ),
    pytest.param(
        lambda i, m: (i, torch.cat([m, m])), ValueError, r"\(4, 12\).*must match",
        id="mask-batch-mismatch",
    ),
    pytest.param(
        lambda i, m: (i[0], m[0]), ValueError, r"\(batch, seq\).*unsqueeze\(0\)",
        id="1-d-ids",
    ),
    pytest.param(
        lambda i, m: (i[:, :, None], m), ValueError, r"\(batch, seq\)",
        id="3-d-ids",
    ),
    pytest.param(
        lambda i, m: (i.tolist(), m), TypeError, "return_tensors='pt'",
        id="list-ids",
    ),
]  # fmt: skip


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("make, error, match", TOKEN_CASES)
def test_bad_tokens(tiny_model, api, make, error, match):
    model = tiny_model("bert")
    ids, mask = make(*_batch())
    with pytest.raises(error, match=match):
        _call(api, model, ids, mask)


@pytest.mark.parametrize("api", APIS)
def test_ids_beyond_the_embedding_table(tiny_model, api):
    # config.vocab_size says 1000, the embedding table has 120 rows: ids in
    # between used to pass the check and end in an IndexError
    model = copy.deepcopy(tiny_model("bert"))
    model.config.vocab_size = 1000
    ids, mask = _batch()
    with pytest.raises(ValueError, match="outside the model's vocabulary of 120"):
        _call(api, model, ids + 500, mask)


def test_bad_tokens_in_tuple_inputs(tiny_model):
    # Captum-style tuple inputs: the ids are the first element
    model = tiny_model("bert")
    ids, mask = _batch()
    explainer = EfficientAttention(_forward(model), model=model)
    with pytest.raises(TypeError, match="integer token ids"):
        explainer.attribute((ids.float(), mask))
    with pytest.raises(ValueError, match="tensor of token ids or a tuple"):
        explainer.attribute(())


def test_mismatched_attributions_for_a_metric(tiny_model):
    # (the metrics have their own table in tests/metrics; one case here)
    model = tiny_model("bert")
    ids, mask = _batch()
    scores = EfficientAttention(_forward(model), model=model).attribute(
        ids, additional_forward_args=(mask,)
    )
    with pytest.raises(ValueError, match=r"shape of the token ids \(2, 12\)"):
        sufficiency(_forward(model), ids, scores[:, :-1], attention_mask=mask)


@pytest.mark.parametrize("api", APIS)
def test_bad_algebra_dtype(tiny_model, api):
    model = tiny_model("bert")
    ids, mask = _batch()
    with pytest.raises(TypeError, match="torch.float64.*torch.float32"):
        if api == "efficient_attention":
            efficient_attention(model, ids, mask, dtype=torch.bfloat16)
        else:
            EfficientAttention(_forward(model), model=model, dtype=torch.float16)


# ---------------------------------------------------------------- devices
# (device, what the message must say); "cuda:99" is refused with or without
# CUDA (not available, or not that many GPUs)
BAD_DEVICES = [
    pytest.param("meta", "meta tensors have shapes but no values.*'cpu'", id="meta"),
    pytest.param(
        "cuda", "CUDA is not available on this machine; use device='cpu'",
        id="cuda-without-cuda",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has CUDA"),
    ),
    pytest.param("cuda:99", "CUDA", id="cuda-index"),
    pytest.param("gpu", "'gpu' is not a device.*'cpu'", id="not-a-device"),
]  # fmt: skip


@pytest.mark.parametrize("device, match", BAD_DEVICES)
@pytest.mark.parametrize(
    "func", [efficient_attention, effective_attention, attention_weights]
)
def test_bad_device_in_the_functional_api(tiny_model, func, device, match):
    # used to be raw torch errors (an AssertionError for CUDA, a
    # NotImplementedError deep in the solver for "meta"), or for effective
    # attention and raw attention on "meta" a silent tensor without values
    model = tiny_model("bert")
    ids, mask = _batch()
    with pytest.raises(ValueError, match=match):
        func(model, ids, mask, device=device)


@pytest.mark.parametrize("device, match", BAD_DEVICES)
def test_bad_device_in_the_benchmark(tiny_model, device, match):
    from captum_effattn.benchmark.data import Example
    from captum_effattn.benchmark.models import evaluate, finetune, load_model
    from captum_effattn.benchmark.runner import BenchConfig, run_benchmark

    model = tiny_model("bert")
    examples = [Example("a film", 0)]
    config = BenchConfig("csv:x", n=1, methods=["random"])
    calls = [
        lambda: load_model(device=device),
        lambda: finetune("rt-verdict", device=device),  # before loading data
        lambda: evaluate(model, None, examples, device=device),
        lambda: run_benchmark(model, None, examples, config, device=device),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=match):
            call()


def test_model_on_the_meta_device(tiny_model):
    # used to fail with "Tensor.item() cannot be called on meta tensors"
    model = copy.deepcopy(tiny_model("bert")).to("meta")
    ids, mask = _batch()
    with pytest.raises(ValueError, match="weights are on the meta device"):
        efficient_attention(model, ids, mask)
    for cls in CLASSES:
        with pytest.raises(ValueError, match="weights are on the meta device"):
            cls(_forward(model), model=model)


def test_misspelled_options_are_not_swallowed_by_the_model(tiny_model):
    # Hugging Face models take **kwargs: a misspelled option (or the
    # internal solver's max_chunk_bytes) reached them and vanished
    model = tiny_model("bert")
    ids, mask = _batch()
    for fn in (efficient_attention, effective_attention, attention_weights):
        for bad in (dict(max_chunk_bytes=2**20), dict(rowz=0)):
            with pytest.raises(TypeError, match="unknown keyword argument"):
                fn(model, ids, mask, **bad)
    # the model's own named arguments still pass through
    zeros = torch.zeros_like(ids)
    torch.testing.assert_close(
        efficient_attention(model, ids, mask, token_type_ids=zeros),
        efficient_attention(model, ids, mask),
    )


def test_inputs_on_the_meta_device(tiny_model):
    # used to fail with "Tensor.item() cannot be called on meta tensors"
    model = tiny_model("bert")
    ids, mask = _batch()
    for a, b, name in (
        (ids.to("meta"), mask, "input_ids"),
        (ids, mask.to("meta"), "attention_mask"),
    ):
        with pytest.raises(ValueError, match=f"{name} is on the meta device"):
            efficient_attention(model, a, b)
        for cls in CLASSES:
            with pytest.raises(ValueError, match="is on the meta device"):
                cls(_forward(model), model=model).attribute(
                    a, additional_forward_args=(b,)
                )


# ---------------------------------------------------------------- the model
def _sdpa_bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16,
    )  # fmt: skip
    model = BertForSequenceClassification(cfg).eval()
    model.set_attn_implementation("sdpa")
    return model


@pytest.mark.parametrize("cls", CLASSES)
def test_sdpa_model_refused_by_every_class(cls):
    model = _sdpa_bert()
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        cls(_forward(model), model=model)
    with pytest.raises(ValueError, match="set_attn_implementation"):
        cls(model)


def test_unsupported_architecture_lists_supported_for_classes():
    from transformers import T5Config, T5EncoderModel

    model = T5EncoderModel(
        T5Config(vocab_size=50, d_model=16, num_layers=1, num_heads=2, d_ff=16)
    )
    for cls in CLASSES:
        with pytest.raises(ValueError, match="'t5'.*supported model types: .*gpt2"):
            cls(model)


def test_not_a_transformers_model():
    with pytest.raises(TypeError, match="Hugging Face transformers model"):
        EfficientAttention(nn.Linear(3, 2))
    with pytest.raises(TypeError, match="Hugging Face transformers model"):
        efficient_attention(nn.Linear(3, 2), torch.ones(1, 3, dtype=torch.long))


def _with_nan(model: nn.Module, name: str) -> nn.Module:
    broken = copy.deepcopy(model)
    with torch.no_grad():
        dict(broken.named_parameters())[name].view(-1)[0] = float("nan")
    return broken


NAN_WEIGHTS = [
    # NaN reaches the attention probabilities
    pytest.param("bert.encoder.layer.0.attention.self.query.weight", id="query-L0"),
    # NaN values or W_O in the layer read: used to fail inside the SVD
    pytest.param("bert.encoder.layer.1.attention.self.value.weight", id="value-L1"),
    pytest.param("bert.encoder.layer.1.attention.self.value.bias", id="value-bias-L1"),
    pytest.param("bert.encoder.layer.1.attention.output.dense.weight", id="W_O-L1"),
]


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("name", NAN_WEIGHTS)
def test_nan_in_the_model(tiny_model, api, name):
    model = _with_nan(tiny_model("bert"), name)
    ids, mask = _batch()
    kwargs = {"layers": -1} if api == "efficient_attention" else {}
    with pytest.raises(ValueError, match="NaN"):
        _call(api, model, ids, mask, **kwargs)


@pytest.mark.parametrize(
    "kwargs", [dict(weighting="gradient"), dict(layer="gradient_rollout")]
)
def test_nan_logits_with_gradient_weighting(tiny_model, kwargs):
    # NaN in the classifier row of class 0 leaves attention intact, but the
    # gradient weighting reads that logit: it used to give NaN scores silently
    model = _with_nan(tiny_model("bert"), "classifier.weight")
    ids, mask = _batch()
    explainer = EfficientAttention(_forward(model), model=model)
    with pytest.raises(ValueError, match="NaN or inf for the target.*'none'"):
        explainer.attribute(ids, target=0, additional_forward_args=(mask,), **kwargs)
    # the logit of class 1 is finite but its gradient runs through the NaN
    # weights (0 * NaN): also refused, not returned as NaN scores
    with pytest.raises(ValueError, match="gradient.*NaN or inf.*'none'"):
        explainer.attribute(ids, target=1, additional_forward_args=(mask,), **kwargs)


def test_forward_func_that_never_calls_the_model(tiny_model):
    model = tiny_model("bert")
    ids, mask = _batch()
    for forward in (
        lambda ids, mask: torch.zeros(ids.shape[0], 2),
        _forward(tiny_model("bert", seed=1)),  # another model
    ):
        with pytest.raises(ValueError, match="never called the model.*model="):
            EfficientAttention(forward, model=model).attribute(
                ids, additional_forward_args=(mask,)
            )


def test_forward_func_that_calls_the_model_twice(tiny_model):
    model = tiny_model("bert")
    ids, mask = _batch()

    def twice(ids, mask):
        return _forward(model)(ids, mask) + _forward(model)(ids, mask)

    with pytest.raises(ValueError, match="2 times.*exactly one forward pass"):
        EfficientAttention(twice, model=model).attribute(
            ids, additional_forward_args=(mask,)
        )


# ------------------------------------------------ the model is left as found
def _hooks(model: nn.Module) -> List[int]:
    counts = [
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        + len(m._backward_pre_hooks)
        for m in model.modules()
    ]  # fmt: skip
    return counts + [
        len(nn_module._global_forward_hooks),
        len(nn_module._global_forward_pre_hooks),
    ]


def _state(model: nn.Module) -> Dict[str, object]:
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad is None for p in model.parameters()],
        "params": {k: v.clone() for k, v in model.state_dict().items()},
        "hooks": _hooks(model),
        "grad_enabled": torch.is_grad_enabled(),
    }


def _assert_same(before: Dict[str, object], after: Dict[str, object]) -> None:
    for key in ("training", "requires_grad", "grads", "hooks", "grad_enabled"):
        assert before[key] == after[key], key
    for k, v in before["params"].items():
        assert torch.equal(v, after["params"][k]), k


class _Boom(RuntimeError):
    pass


def _boom_inside(model):
    # raises inside the capture, after the model ran (hooks are live)
    def forward(ids, mask):
        model(input_ids=ids, attention_mask=mask)
        raise _Boom("forward_func failed")

    return forward


def _boom_in_the_model(model):
    # raises from inside the model's forward, between two hooked layers
    def forward(ids, mask):
        handle = model.bert.encoder.layer[1].register_forward_pre_hook(_raise)
        try:
            return model(input_ids=ids, attention_mask=mask).logits
        finally:
            handle.remove()

    return forward


def _raise(*_args):
    raise _Boom("layer 1 failed")


# (how the attribution fails, what it raises)
FAILURES = [
    pytest.param(
        lambda m, i, k: (_boom_inside(m), i, k, {}), _Boom,
        id="forward-func-raises",
    ),
    pytest.param(
        lambda m, i, k: (_boom_in_the_model(m), i, k, {}), _Boom,
        id="model-raises-mid-forward",
    ),
    # after the forward pass: the mask the model received is all padding
    pytest.param(
        lambda m, i, k: (_forward(m), i, k * torch.tensor([[1], [0]]), {}),
        ValueError, id="all-padding-after-forward",
    ),
    # in the gradient step, after the forward pass: target out of range
    pytest.param(
        lambda m, i, k: (_forward(m), i, k, dict(target=7, weighting="gradient")),
        Exception, id="bad-target-in-backward",
    ),
    pytest.param(
        lambda m, i, k: (_forward(m), i, k, dict(query=11, layer=0)),
        ValueError, id="padded-query",
    ),
    pytest.param(
        lambda m, i, k: (_forward(m), i, k, dict(weighting="gradient")), None,
        id="no-error",
    ),
]  # fmt: skip


@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
@pytest.mark.parametrize("make, error", FAILURES)
def test_model_left_as_found(tiny_model, mode, make, error):
    model = copy.deepcopy(tiny_model("bert"))
    if mode == "train":
        model.train()
    elif mode == "mixed":  # training, with a frozen (eval) embedding block
        model.train()
        model.bert.embeddings.eval()
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    ids, mask = random_batch(2, 12, lengths=[12, 9], seed=8)
    forward, ids, mask, kwargs = make(model, ids, mask)
    before = _state(model)
    explainer = EfficientAttention(forward, model=model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if error is None:
            explainer.attribute(ids, additional_forward_args=(mask,), **kwargs)
        else:
            with pytest.raises(error):
                explainer.attribute(ids, additional_forward_args=(mask,), **kwargs)
    warned = any("training mode" in str(w.message) for w in caught)
    assert warned == (mode != "eval")
    _assert_same(before, _state(model))


def test_functional_left_as_found_on_errors(tiny_model, monkeypatch):
    from captum_effattn._core import functional

    model = copy.deepcopy(tiny_model("bert"))
    model.train()
    ids, mask = _batch()
    before = _state(model)
    with pytest.raises(ValueError, match="row positions"):  # before any hook
        efficient_attention(model, ids, mask, rows=[99])
    _assert_same(before, _state(model))

    def fail(*args, **kwargs):
        raise _Boom("the algebra failed")

    monkeypatch.setattr(functional, "solve_layers", fail)  # after the forward
    with pytest.warns(UserWarning, match="training mode"):
        with pytest.raises(_Boom):
            efficient_attention(model, ids, mask)
    _assert_same(before, _state(model))


def test_replace_attention_left_as_found_on_errors(tiny_model):
    # a replacement of the wrong shape raises inside replace_attention's hooks
    model = tiny_model("bert")
    ids, mask = _batch()
    adapter = ModelAdapter(model)
    before = _state(model)
    with pytest.raises(RuntimeError):
        with torch.no_grad(), adapter.replace_attention({1: torch.zeros(2, 4, 3, 3)}):
            model(input_ids=ids, attention_mask=mask)
    _assert_same(before, _state(model))
