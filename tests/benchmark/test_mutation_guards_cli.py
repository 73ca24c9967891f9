r"""Guards found by mutation testing of the command line (``cli.py``) and of
the model cache (``benchmark/models.py``): each test checks what the docs say
(option defaults, the settings passed on, the cache key, the exit codes)
against an independent expectation: a hand-built input, the documented
defaults, or a computation by hand."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
from effattn_testing import make_tiny_model

from captum_effattn import cli
from captum_effattn.benchmark import models
from captum_effattn.benchmark.data import DatasetSplits, Example
from captum_effattn.cli import build_parser, main

FAST = {"epochs": 1, "batch_size": 8, "lr": 1e-3, "show_progress": False}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _save(folder: Path, model: torch.nn.Module) -> Path:
    from transformers import AutoTokenizer

    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(models.minilm_path())).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    r"""A tiny random BERT classifier (128 positions) with MiniLM's tokenizer."""
    model = make_tiny_model("bert", vocab_size=30522, max_position_embeddings=128)
    return _save(tmp_path_factory.mktemp("tiny-guards"), model)


def _toy_rows(n: int, seed: int = 0) -> List[str]:
    rng = random.Random(seed)
    good, bad = ["great", "superb", "lovely"], ["awful", "boring", "dreadful"]
    rows = []
    for i in range(n):
        words = rng.choices(good if i % 2 else bad, k=3) + ["film"]
        rng.shuffle(words)
        rows.append(f"{' '.join(words)},{['neg', 'pos'][i % 2]},m{i // 3}")
    return rows


@pytest.fixture
def toy_csv(tmp_path: Path) -> Path:
    path = tmp_path / "toy.csv"
    path.write_text("\n".join(["text,label,group"] + _toy_rows(40)) + "\n")
    return path


def _fake_splits(name: str = "rt-verdict") -> DatasetSplits:
    train = [Example("a good film", 1), Example("a bad film", 0)]
    test = [Example("a fine film", 1), Example("a dull film", 0)]
    return DatasetSplits(name, train, test, ["rotten", "fresh"], {"seed": 0})


# ---------------------------------------------------------------- arguments


def test_bench_defaults_that_the_docs_give():
    # docs/benchmark.rst: batches of --batch-size (default 8); and
    # --html-examples takes any count from 0 (no examples shown)
    args = build_parser().parse_args(["bench", "--out", "x"])
    assert args.batch_size == 8
    args = build_parser().parse_args(["bench", "--html-examples", "0", "--out", "x"])
    assert args.html_examples == 0


# ------------------------------------------------------------------ finetune


@pytest.fixture
def finetune_calls(monkeypatch: pytest.MonkeyPatch) -> List[Dict[str, Any]]:
    r"""``finetune`` with the data set and the fine-tuning faked: the list
    of the settings ``get_or_finetune`` would fine-tune with."""
    calls: List[Dict[str, Any]] = []

    def fake(dataset: str, **kwargs: Any):
        for key in ("force", "device", "show_progress"):
            kwargs.pop(key, None)
        calls.append(models.finetune_settings(dataset, **kwargs))
        report = dict(accuracy=0.5, num_test=2, majority_accuracy=0.5, path="x")
        return None, None, report

    monkeypatch.setattr(cli, "_load_splits", lambda name, seed: _fake_splits(name))
    monkeypatch.setattr(models, "get_or_finetune", fake)
    return calls


def test_finetune_keeps_the_data_sets_recommended_settings(finetune_calls, capsys):
    # models.py: peak learning rate 1e-4, 2e-4 for rt-verdict, and 1,000
    # training documents for rt-verdict, unless the command says otherwise
    assert main(["finetune", "--dataset", "rt-verdict", "--quiet"]) == 0
    (settings,) = finetune_calls
    assert settings["lr"] == 2e-4 and settings["max_train"] == 1000
    assert settings["epochs"] == 1 and settings["batch_size"] == 8
    assert settings["seed"] == 0 and settings["model_path"] is None
    assert "held-out accuracy 0.5000" in capsys.readouterr().out


def test_finetune_passes_its_options_on(finetune_calls, tiny_dir):
    argv = ["finetune", "--dataset", "rt-verdict", "--model", str(tiny_dir)]
    argv += ["--seed", "3", "--max-length", "64", "--lr", "3e-5", "--quiet"]
    assert main(argv) == 0
    (settings,) = finetune_calls
    assert settings["model_path"] == str(tiny_dir)
    assert settings["seed"] == 3
    assert settings["max_length"] == 64
    assert settings["lr"] == 3e-5


# --------------------------------------------------------------------- bench


def test_bench_fine_tunes_on_the_split_of_its_seed(toy_csv, tmp_path, monkeypatch):
    # without --model, bench tests on the split of --seed: the model must be
    # fine-tuned on the train part of that same split
    seen: Dict[str, Any] = {}

    def fake(dataset: str, **kwargs: Any):
        seen.update(kwargs, dataset=dataset)
        raise RuntimeError("stop after the call")

    monkeypatch.setattr(models, "get_or_finetune", fake)
    out = tmp_path / "out"
    argv = ["bench", "--dataset", f"csv:{toy_csv}", "--seed", "1", "--n", "2"]
    with pytest.raises(RuntimeError, match="stop after the call"):
        main(argv + ["--methods", "random", "--out", str(out), "--quiet"])
    assert seen["dataset"] == f"csv:{toy_csv}"
    assert seen["seed"] == 1
    assert not out.exists()


def test_only_the_global_rank_zero_writes(tmp_path, monkeypatch):
    # torchrun on two nodes: the first process of the second node has
    # RANK=1 and LOCAL_RANK=0; it must not create the output folder
    seen: Dict[str, Any] = {}

    def fake(args, methods, out, rank, world, checkpoint):
        seen.update(out=out, rank=rank, world=world)
        return 0

    monkeypatch.setattr(cli, "_bench", fake)
    for name, value in [("RANK", "1"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "2")]:
        monkeypatch.setenv(name, value)
    out = tmp_path / "run" / "out"
    out.parent.mkdir()
    assert main(["bench", "--methods", "random", "--out", str(out)]) == 0
    assert seen == {"out": None, "rank": 1, "world": 2}
    assert list(out.parent.iterdir()) == []  # no staging folder either


# ---------------------------------------------------------------- explain


@pytest.mark.parametrize("text", ["{not json", "[]"])
def test_explain_ignores_a_damaged_report(tiny_dir, tmp_path, capsys, text):
    # report.json of a --model folder is optional information: one that is
    # not JSON, or JSON but not an object ('[]' was an AttributeError), is
    # ignored, not a traceback
    folder = Path(shutil.copytree(tiny_dir, tmp_path / "model"))
    (folder / "report.json").write_text(text)
    argv = ["explain", "--model", str(folder), "--text", "a good film", "--top", "2"]
    assert main(argv) == 0
    assert "prediction:" in capsys.readouterr().out


def test_explain_refuses_a_config_that_is_not_an_object(tiny_dir, tmp_path, capsys):
    # config.json that is JSON but not an object ('[]') was an AttributeError
    # traceback in the label names' lookup; now a usage error
    folder = Path(shutil.copytree(tiny_dir, tmp_path / "model"))
    (folder / "config.json").write_text("[]")
    argv = ["explain", "--model", str(folder), "--text", "a good film"]
    assert main(argv) == 2
    assert f"--model {folder}" in capsys.readouterr().err


def test_explain_default_model_is_fine_tuned_on_seed_0s_split(
    tiny_dir, tmp_path, monkeypatch, capsys
):
    # the default document is a test document of seed 0's split: a newer
    # model fine-tuned on another split may have trained on it
    root = tmp_path / "cache"
    monkeypatch.setenv("CAPTUM_EFFATTN_CACHE", str(root))

    def cached(name: str, seed: int, mtime: int) -> Path:
        folder = Path(shutil.copytree(tiny_dir, root / "models" / name))
        report = {
            "dataset": "rt-verdict",
            "dataset_options": {"seed": seed},
            "label_names": ["rotten", "fresh"],
        }
        (folder / "report.json").write_text(json.dumps(report))
        os.utime(folder, (mtime, mtime))
        return folder

    seed0 = cached("rt-verdict-aaaa", 0, 1_000)
    cached("rt-verdict-bbbb", 1, 2_000)
    argv = ["explain", "--text", "a good film", "--top", "2", "--max-length", "32"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"fine-tuned on rt-verdict ({seed0})" in out


def test_explain_refuses_blank_text_before_loading(monkeypatch, capsys):
    # bad input is refused before any work
    def no_loading(*args: Any, **kwargs: Any):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cli, "_load_model", no_loading)
    assert main(["explain", "--text", " \n\t "]) == 2
    assert "--text is empty" in capsys.readouterr().err


def _efficient_column(out: str) -> Dict[int, float]:
    r"""Position -> the 'efficient' column of the printed token tables."""
    rows = re.findall(r"^ +(\d+) +.*? ([\d.]+) +([\d.]+) +[+-][\d.]+$", out, re.M)
    return {int(pos): float(eff) for pos, _, eff in rows}


def test_explain_full_shows_the_row_the_decoder_reads(tmp_path, capsys):
    # --full solves every layer and row, but still prints the row that the
    # classifier reads (a decoder's last token), the row of the default run
    model = make_tiny_model(
        "gpt2", vocab_size=30522, pad_token_id=0, bos_token_id=0, eos_token_id=0
    )
    folder = _save(tmp_path / "gpt2", model)
    text = "a long and rather dull film with one good scene"
    argv = ["explain", "--model", str(folder), "--text", text, "--top", "30"]
    assert main(argv) == 0
    row = _efficient_column(capsys.readouterr().out)
    assert main(argv + ["--full"]) == 0
    full = _efficient_column(capsys.readouterr().out)
    assert sorted(row) == list(range(12))  # [CLS] + 10 words + [SEP]
    assert sum(row.values()) == pytest.approx(1.0, abs=1e-3)  # a distribution
    assert sorted(full) == sorted(row)
    for j in row:
        assert full[j] == pytest.approx(row[j], abs=2e-4), j


# -------------------------------------------------------------------- speed


def test_speed_passes_the_scripts_exit_code_on(monkeypatch, tmp_path):
    script = tmp_path / "speed.py"
    script.write_text("def main(argv):\n    return 3\n")
    monkeypatch.setattr(cli, "_speed_script", lambda: script)
    assert main(["speed", "--quick"]) == 3


# -------------------------------------------------------------- model cache


def test_cache_dir_follows_xdg_cache_home(tmp_path, monkeypatch):
    # README: $XDG_CACHE_HOME/captum_effattn when that is set, unless
    # CAPTUM_EFFATTN_CACHE is
    monkeypatch.delenv("CAPTUM_EFFATTN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_dir() == tmp_path / "xdg" / "captum_effattn"
    monkeypatch.setenv("CAPTUM_EFFATTN_CACHE", str(tmp_path / "mine"))
    assert models.cache_dir() == tmp_path / "mine"


@pytest.fixture(scope="module")
def small_tokenizer_dir(tmp_path_factory) -> Path:
    r"""A tiny BERT with 120 embedding rows, saved with a 120-token
    WordPiece tokenizer of its own (not MiniLM's)."""
    from transformers import BertTokenizerFast

    folder = tmp_path_factory.mktemp("own-tokenizer")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += [f"w{i}" for i in range(120 - len(words))]
    vocab = {word: i for i, word in enumerate(words)}
    BertTokenizerFast(vocab=vocab).save_pretrained(folder)
    make_tiny_model("bert", vocab_size=120).save_pretrained(folder)
    return folder


def test_load_model_reads_the_folders_own_tokenizer(small_tokenizer_dir):
    model, tokenizer = models.load_model(small_tokenizer_dir)
    assert len(tokenizer) == 120 == model.config.vocab_size
    ids = tokenizer("w7 w42")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "w7", "w42", "[SEP]"]


def test_load_model_refuses_a_tokenizer_far_smaller_than_the_model(
    small_tokenizer_dir, tmp_path
):
    # a model of 30522 ids saved with a 120-token tokenizer: most of its
    # vocabulary would never be read, the files are not the model's
    folder = tmp_path / "mismatch"
    shutil.copytree(small_tokenizer_dir, folder)
    make_tiny_model("bert", vocab_size=30522).save_pretrained(folder)
    with pytest.raises(ValueError, match="120 tokens for a model of 30522"):
        models.load_model(folder)


def _finetune(csv: Path, model: Path, **kwargs: Any) -> Dict[str, Any]:
    settings = {**FAST, "max_length": 16, **kwargs}
    return models.get_or_finetune(f"csv:{csv}", model_path=model, **settings)[2]


def test_cache_key_covers_the_base_model(tiny_dir, toy_csv, tmp_path):
    other = _save(tmp_path / "other", make_tiny_model("bert", 1, vocab_size=30522))
    first = _finetune(toy_csv, tiny_dir)
    assert first["from_cache"] is False
    assert _finetune(toy_csv, tiny_dir)["from_cache"] is True
    second = _finetune(toy_csv, other)
    assert second["from_cache"] is False  # not the model of another start
    assert second["model"] == str(other.resolve())
    assert second["path"] != first["path"]


def test_cache_key_covers_a_base_model_saved_again_in_place(toy_csv, tmp_path):
    # a bug: the key named the base model by its path only, so a base model
    # trained further and saved in the same folder got the model fine-tuned
    # from its old weights
    base = _save(tmp_path / "base", make_tiny_model("bert", 0, vocab_size=30522))
    first = _finetune(toy_csv, base)
    assert _finetune(toy_csv, base)["from_cache"] is True
    # files beside the model's own do not make it another model
    (base / "README.md").write_text("notes")
    (base / ".DS_Store").write_bytes(b"\0")
    assert _finetune(toy_csv, base)["from_cache"] is True
    weights = next(base.glob("*.safetensors"))
    make_tiny_model("bert", 1, vocab_size=30522).save_pretrained(base)
    stat = weights.stat()  # same size: only the time tells the files apart
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = _finetune(toy_csv, base)
    assert second["from_cache"] is False
    assert second["path"] != first["path"]


def test_cache_key_covers_an_edited_csv(tiny_dir, toy_csv):
    first = _finetune(toy_csv, tiny_dir)
    assert first["num_train"] + first["num_test"] == 40
    toy_csv.write_text("\n".join(["text,label,group"] + _toy_rows(60, 1)) + "\n")
    second = _finetune(toy_csv, tiny_dir)
    assert second["from_cache"] is False  # not the model of the old rows
    assert second["num_train"] + second["num_test"] == 60


def test_cache_key_covers_max_length(tiny_dir, toy_csv):
    assert _finetune(toy_csv, tiny_dir)["from_cache"] is False
    longer = _finetune(toy_csv, tiny_dir, max_length=32)
    assert longer["from_cache"] is False
    assert longer["settings"]["max_length"] == 32


def test_held_out_accuracy_is_measured_on_the_test_split(tiny_dir):
    # the test split's labels are the opposite of the train split's: a
    # model that learned the training data scores low on it
    rng = random.Random(0)
    good, bad = ["great", "superb", "lovely"], ["awful", "boring", "dreadful"]

    def example(label: int, flip: bool) -> Example:
        words = rng.choices(good if label else bad, k=3) + ["film"]
        return Example(" ".join(words), 1 - label if flip else label)

    train = [example(i % 2, False) for i in range(40)]
    test = [example(i % 2, True) for i in range(10)]
    splits = DatasetSplits("toy", train, test, ["neg", "pos"])
    model, tokenizer, report = models.finetune(
        splits, model_path=tiny_dir, max_length=16, **{**FAST, "epochs": 8, "lr": 3e-3}
    )
    correct = 0
    with torch.no_grad():
        for ex in test:  # one at a time: no padding
            enc = tokenizer(ex.text, return_tensors="pt")
            correct += int(model(**enc).logits.argmax(-1).item() == ex.label)
    assert report["num_test"] == 10
    assert report["accuracy"] == pytest.approx(correct / 10)
    assert report["majority_accuracy"] == 0.5  # train is balanced, test too
