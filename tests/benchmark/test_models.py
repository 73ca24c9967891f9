r"""Tests of fine-tuning and caching, on a tiny random BERT (fast) and on the
packaged MiniLM (``slow``)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest
import torch

from captum_effattn.benchmark import models
from captum_effattn.benchmark.data import DatasetSplits, Example
from captum_effattn.benchmark.models import (
    cache_dir,
    finetune,
    finetune_settings,
    get_or_finetune,
    minilm_path,
)

transformers = pytest.importorskip("transformers")

FAST = {"epochs": 2, "batch_size": 8, "lr": 1e-3, "show_progress": False}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # tiny models run fastest on one thread; and on a busy machine several
    # threads thrash (measured: 20x slower for the tiny BERT, 2x for MiniLM)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r"""A random-weight 2-layer BERT with the MiniLM tokenizer."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_path()))
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    path = tmp_path_factory.mktemp("tiny-bert")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _toy_rows(n: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    good = ["great", "superb", "lovely", "wonderful"]
    bad = ["awful", "boring", "dreadful", "terrible"]
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.choices(good if label else bad, k=3) + ["film"]
        rng.shuffle(words)
        rows.append((" ".join(words), ["neg", "pos"][label], f"m{i // 3}"))
    return rows


@pytest.fixture
def toy_csv(tmp_path: Path) -> Path:
    path = tmp_path / "toy.csv"
    lines = ["text,label,group"] + [",".join(r) for r in _toy_rows(48)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _toy_splits() -> DatasetSplits:
    rows = [Example(t, int(y == "pos"), g) for t, y, g in _toy_rows(48)]
    return DatasetSplits("toy", rows[:36], rows[36:], ["neg", "pos"])


def _state(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_finetune_runs_and_reports(tiny_model: Path) -> None:
    model, tokenizer, report = finetune(
        _toy_splits(), model_path=tiny_model, max_length=16, **FAST
    )
    assert not model.training
    assert model.config.id2label == {0: "neg", 1: "pos"}
    assert model.config._attn_implementation == "eager"
    assert report["dataset"] == "toy"
    assert report["num_train"] == 36 and report["num_test"] == 12
    assert 0.0 <= report["accuracy"] <= 1.0
    assert report["majority_accuracy"] == 0.5
    assert report["settings"]["epochs"] == 2
    assert {"torch", "transformers", "captum_effattn"} <= set(report["versions"])
    enc = tokenizer(["great film"], return_tensors="pt")
    assert model(**enc).logits.shape == (1, 2)


def test_finetune_is_deterministic(tiny_model: Path) -> None:
    first = _state(finetune(_toy_splits(), model_path=tiny_model, **FAST)[0])
    second = _state(finetune(_toy_splits(), model_path=tiny_model, **FAST)[0])
    other = _state(finetune(_toy_splits(), model_path=tiny_model, seed=1, **FAST)[0])
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_finetune_subsets_and_learns(tiny_model: Path) -> None:
    splits = _toy_splits()
    _, _, report = finetune(
        splits, model_path=tiny_model, max_train=20, max_test=8, **FAST
    )
    assert report["num_train"] == 20 and report["num_test"] == 8
    _, _, learned = finetune(
        splits, model_path=tiny_model, **{**FAST, "epochs": 8, "lr": 3e-3}
    )
    assert learned["accuracy"] >= 0.75


def test_get_or_finetune_caches(
    tiny_model: Path,
    toy_csv: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CAPTUM_EFFATTN_CACHE", str(tmp_path / "here"))
    assert cache_dir() == tmp_path / "here"
    name = f"csv:{toy_csv}"
    model, _, report = get_or_finetune(name, model_path=tiny_model, **FAST)
    folder = Path(report["path"])
    assert report["from_cache"] is False
    assert folder.parent == tmp_path / "here" / "models"
    assert folder.name.startswith("csv-toy-")
    saved = json.loads((folder / "report.json").read_text())
    assert saved["accuracy"] == report["accuracy"]
    assert saved["label_names"] == ["neg", "pos"]
    assert "from_cache" not in saved
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]
    weights = _state(model)

    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("fine-tuned although cached")

    monkeypatch.setattr(models, "finetune", no_training)
    again, tokenizer, cached = get_or_finetune(
        name, model_path=tiny_model, device="cpu", **FAST
    )
    assert cached["from_cache"] is True and cached["path"] == str(folder)
    assert cached["accuracy"] == report["accuracy"]
    assert again.config._attn_implementation == "eager"
    assert not again.training
    assert all(torch.equal(weights[k], v) for k, v in again.state_dict().items())
    assert tokenizer("great film")["input_ids"][0] == tokenizer.cls_token_id

    # other settings, or force: trained again
    with pytest.raises(AssertionError, match="although cached"):
        get_or_finetune(name, model_path=tiny_model, **{**FAST, "seed": 1})
    with pytest.raises(AssertionError, match="although cached"):
        get_or_finetune(name, model_path=tiny_model, force=True, **FAST)


def test_get_or_finetune_explicit_cache(
    tiny_model: Path, toy_csv: Path, tmp_path: Path
) -> None:
    _, _, report = get_or_finetune(
        f"csv:{toy_csv}", cache=tmp_path / "mine", model_path=tiny_model, **FAST
    )
    assert Path(report["path"]).parent == tmp_path / "mine"
    assert (Path(report["path"]) / "config.json").is_file()


def test_cache_entries_shared_found_raced_and_damaged(
    tiny_model: Path, toy_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from captum_effattn.benchmark.models import CacheDirError, find_cached_model

    name, cache = f"csv:{toy_csv}", tmp_path / "cache"
    # another process publishes the same settings just before we do: ours is
    # dropped, theirs kept, no error and no temporary folder left behind
    real_replace = os.replace

    def racing(src: Any, dst: Any) -> None:
        Path(dst).mkdir()
        (Path(dst) / "report.json").write_text("{}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", racing)
    _, _, report = get_or_finetune(name, cache=cache, model_path=tiny_model, **FAST)
    monkeypatch.undo()
    folder = Path(report["path"])
    assert (folder / "report.json").read_text() == "{}"
    assert [p.name for p in cache.iterdir()] == [folder.name]
    # published for real: every file readable as the umask allows (the
    # weights too, which transformers writes private)
    _, _, report = get_or_finetune(
        name, cache=cache, model_path=tiny_model, force=True, **FAST
    )
    umask = os.umask(0)
    os.umask(umask)
    for item in folder.iterdir():
        assert item.stat().st_mode & 0o777 == 0o666 & ~umask, item.name
    # a csv:PATH data set is found under the name its folder has
    assert find_cached_model(name, cache) == folder
    # a damaged entry names itself and the way out
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CacheDirError, match="cannot be loaded.*force=True"):
        get_or_finetune(name, cache=cache, model_path=tiny_model, **FAST)
    # a model saved without its tokenizer is refused, not read as all [UNK]
    bare = tmp_path / "bare"
    transformers.BertForSequenceClassification.from_pretrained(
        str(tiny_model)
    ).save_pretrained(bare)
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        models.load_model(bare)


def test_finetune_settings_use_dataset_defaults() -> None:
    settings = finetune_settings("rt-verdict")
    assert settings["max_train"] == 1000 and settings["model_path"] is None
    assert finetune_settings("rt-verdict", max_train=10)["max_train"] == 10
    assert finetune_settings("csv:x.csv")["max_train"] is None
    key = models._cache_key("rt-verdict", settings)
    assert key == models._cache_key("rt-verdict", dict(settings, device="cuda"))
    assert key != models._cache_key("rt-verdict", dict(settings, lr=1e-4))


@pytest.mark.slow
def test_minilm_finetunes_above_chance(tmp_path: Path) -> None:
    model, _, report = get_or_finetune(
        "rt-snippets",
        cache=tmp_path,
        max_train=800,
        max_test=400,
        max_length=64,
        show_progress=False,
    )
    assert (Path(report["path"]) / "report.json").is_file()
    assert model.config.num_hidden_layers == 6
    assert report["accuracy"] > max(0.6, report["majority_accuracy"])


def test_find_cached_model_prefers_the_split_of_a_seed(tmp_path: Path) -> None:
    # explain and the examples read seed 0's test documents: a newer model
    # fine-tuned on another seed's split may have trained on them
    from captum_effattn.benchmark.models import find_cached_model

    def cached(name: str, seed: object, mtime: int) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        report = {"dataset": "rt-verdict", "dataset_options": {"seed": seed}}
        (folder / "report.json").write_text(json.dumps(report))
        os.utime(folder, (mtime, mtime))
        return folder

    old = cached("rt-verdict-aaa", 0, 1_000)
    new = cached("rt-verdict-bbb", 1, 2_000)
    cached("rt-snippets-ccc", 0, 3_000)  # another data set
    assert find_cached_model("rt-verdict", tmp_path) == new
    assert find_cached_model("rt-verdict", tmp_path, seed=0) == old
    assert find_cached_model("rt-verdict", tmp_path, seed=1) == new
    assert find_cached_model("rt-verdict", tmp_path, seed=5) == new  # none: newest
    (old / "report.json").write_text("not json")
    assert find_cached_model("rt-verdict", tmp_path, seed=0) == new
    assert find_cached_model("rt-verdict", tmp_path / "none", seed=0) is None
    assert models.split_seed({"dataset_options": {"seed": 3}}) == 3
    for report in ({}, {"dataset_options": None}, [], {"dataset_options": {}}):
        assert models.split_seed(report) is None
