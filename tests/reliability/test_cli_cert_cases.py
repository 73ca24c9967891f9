r"""User cases of the ``explain``, ``finetune`` and ``datasets`` commands, of
:class:`~captum_effattn.Certificate` and of
:func:`~captum_effattn.attention_support_test`: usage errors exit with code 2
and a clear message before any work, and the attention-level test measures
what its docs say (the layers asked for, padded rows untouched, the keys a
decoder's row can see)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from effattn_testing import make_tiny_model, random_batch

from captum_effattn import (
    attention_support_test,
    attention_weights,
    efficient_attention,
)
from captum_effattn._core.adapters import ModelAdapter
from captum_effattn.benchmark import models
from captum_effattn.cli import main


@pytest.fixture(autouse=True)
def _own_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # never read or write the user's cache of fine-tuned models
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CAPTUM_EFFATTN_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    r"""A tiny random BERT classifier with 128 positions and MiniLM's
    tokenizer, saved as a model folder."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-explain")
    model = make_tiny_model("bert", vocab_size=30522, max_position_embeddings=128)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(models.minilm_path())).save_pretrained(folder)
    return folder


def _no_training(*args, **kwargs):
    raise AssertionError("fine-tuning started")


# ------------------------------------------------------------------- CLI
@pytest.mark.parametrize("lr", ["nan", "inf", "0", "-1e-4", "abc"])
def test_finetune_learning_rate_must_be_positive(lr, capsys):
    assert main(["finetune", "--lr", lr]) == 2
    assert "argument --lr" in capsys.readouterr().err


def test_unwritable_cache_fails_before_fine_tuning(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("CAPTUM_EFFATTN_CACHE", str(blocker))
    monkeypatch.setattr(models, "finetune", _no_training)
    with pytest.raises(models.CacheDirError, match="CAPTUM_EFFATTN_CACHE"):
        models.get_or_finetune("rt-verdict")


@pytest.mark.slow
def test_finetune_command_with_unwritable_cache(monkeypatch, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("CAPTUM_EFFATTN_CACHE", str(blocker))
    monkeypatch.setattr(models, "finetune", _no_training)
    assert main(["finetune", "--max-train", "8", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cannot write the model cache" in err and "Traceback" not in err


@pytest.mark.slow
def test_finetune_model_folder_without_a_model(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(models, "finetune", _no_training)
    assert main(["finetune", "--model", str(tmp_path), "--quiet"]) == 2
    assert "not a Hugging Face model folder" in capsys.readouterr().err


@pytest.mark.parametrize("missing", ["model.safetensors", "tokenizer.json"])
def test_model_folder_missing_its_weights_or_tokenizer(
    tiny_model_dir, tmp_path, monkeypatch, capsys, missing
):
    # the config and tokenizer loaded, so the folder passed the first check
    # and finetune ended in a traceback from loading the model
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    for name in [missing] + (["vocab.txt"] if missing == "tokenizer.json" else []):
        (folder / name).unlink(missing_ok=True)
    monkeypatch.setattr(models, "finetune", _no_training)
    assert main(["finetune", "--model", str(folder), "--quiet"]) == 2
    assert "the folder has no" in capsys.readouterr().err
    # explain loads the model first, and says so as clearly
    assert main(["explain", "--model", str(folder), "--text", "a film"]) == 2
    assert "cannot load a sequence classifier" in capsys.readouterr().err


@pytest.mark.slow
def test_finetune_max_length_beyond_the_positions(monkeypatch, capsys):
    seen = {}

    def fake(dataset, **kwargs):
        seen.update(kwargs)
        report = dict(accuracy=0.5, num_test=1, majority_accuracy=0.5, path="x")
        return None, None, report

    monkeypatch.setattr(models, "get_or_finetune", fake)
    assert main(["finetune", "--max-length", "600", "--quiet"]) == 0
    assert seen["max_length"] == 512  # MiniLM's positions: 600 would fail
    assert "512 positions; using 512" in capsys.readouterr().err


def test_explain_max_length_beyond_the_positions(tiny_model_dir, capsys):
    text = "a long film " * 100  # 300 tokens, the model has 128 positions
    argv = ["explain", "--model", str(tiny_model_dir), "--text", text]
    assert main(argv + ["--max-length", "200", "--top", "2"]) == 0
    captured = capsys.readouterr()
    assert "128 positions; using 128" in captured.err
    assert "128 tokens" in captured.out


def test_explain_max_length_without_room_for_text(tiny_model_dir, capsys):
    argv = ["explain", "--model", str(tiny_model_dir), "--text", "hello world"]
    for length in ("1", "2"):  # 1: the tokenizer would silently not truncate
        assert main(argv + ["--max-length", length]) == 2
        assert "special tokens" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["", "   \n", "\u200b"])
def test_explain_empty_text(tiny_model_dir, text, capsys):
    assert main(["explain", "--model", str(tiny_model_dir), "--text", text]) == 2
    err = capsys.readouterr().err
    assert "--text" in err and "Traceback" not in err


# ------------------------------------------------------------ Certificate
def test_certificate_prints_no_negative_zero(tiny_model):
    model = tiny_model("bert")
    ids, mask = random_batch(2, 30, lengths=[30, 22])
    _, cert = efficient_attention(model, ids, mask, return_certificate=True)
    assert cert.ok() and float(cert.min_entry.min()) == 0.0  # exact zeros
    assert "min entry 0.00e+00" in str(cert) and "-0.00" not in str(cert)


# ------------------------------------------------ attention_support_test
def test_support_test_of_some_layers(tiny_model):
    model = tiny_model("bert")  # 2 layers
    ids, mask = random_batch(2, 24, lengths=[24, 18])
    res = attention_support_test(model, ids, mask, layers=-1)
    # the last layer's efficient attention went into the last layer
    assert torch.allclose(res.p_efficient, res.p_full, atol=1e-6)
    assert res.certificate.output_residual.shape[0] == 1
    # only the last layer was restricted to its support
    e = efficient_attention(model, ids, mask, layers=-1)
    raw = attention_weights(model, ids, mask, layers=-1)
    kept = raw * (e > 0)
    kept = kept / kept.sum(-1, keepdim=True).clamp_min(1e-300)
    with torch.no_grad(), ModelAdapter(model).replace_attention({1: kept[0]}):
        probs = torch.softmax(model(ids, attention_mask=mask).logits.double(), -1)
    expected = probs[torch.arange(2), res.target]
    assert torch.allclose(res.p_support, expected, atol=1e-6)


def test_support_test_refuses_rows_and_bad_targets(tiny_model):
    model = tiny_model("bert")
    ids, mask = random_batch(2, 12)
    with pytest.raises(ValueError, match="rows"):
        attention_support_test(model, ids, mask, rows=0)
    with pytest.raises(ValueError, match="out of range"):
        attention_support_test(model, ids, mask, target=5)
    with pytest.raises(ValueError, match="one per example"):
        attention_support_test(model, ids, mask, target=[0, 1, 1])
    res = attention_support_test(model, ids, mask, target=[1, 0])
    assert res.target.tolist() == [1, 0]


@pytest.mark.parametrize("objective", ["min_norm", "sparse"])
def test_support_test_left_padded_encoder_keeps_its_prediction(tiny_model, objective):
    # BERT's classifier reads position 0, a padded row under left padding:
    # efficient attention must leave the padded rows as the model had them
    model = tiny_model("bert")
    ids, mask = random_batch(2, 24, lengths=[24, 17], left=True)
    res = attention_support_test(model, ids, mask, objective=objective)
    assert res.certificate.ok()
    assert torch.allclose(res.p_efficient, res.p_full, atol=1e-6)


def test_support_fraction_of_a_decoder_counts_visible_keys(tiny_model):
    model = tiny_model("gpt2")
    ids, mask = random_batch(2, 20, lengths=[20, 14])
    res = attention_support_test(model, ids, mask)
    e = efficient_attention(model, ids, mask)
    for b in range(2):
        n = int(mask[b].sum())
        rows = e[:, b, :, :n, :n]  # (L, H, n, n), causal
        visible = torch.arange(1, n + 1, dtype=rows.dtype)  # row i sees i + 1
        expected = ((rows > 0).sum(-1) / visible).mean()
        assert abs(float(res.support_fraction[b]) - float(expected)) < 1e-12
    assert torch.allclose(res.p_efficient, res.p_full, atol=1e-6)


# --------------------------------------------------------------- examples
@pytest.mark.slow
@pytest.mark.parametrize(
    "script, argv, message",
    [
        ("plot_matrices.py", ["--head", "12"], "--head 12"),
        ("plot_matrices.py", ["--layer", "6"], "--layer 6"),
        ("tutorial.py", ["--doc", "100000"], "--doc 100000"),
        ("compare_methods.py", ["--n", "0"], "--n"),
    ],
)
def test_examples_reject_out_of_range_arguments(script, argv, message, tmp_path):
    import subprocess
    import sys

    examples = Path(__file__).resolve().parents[2] / "examples"
    proc = subprocess.run(
        [sys.executable, str(examples / script), "--out", str(tmp_path), *argv],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr


def _model_folder(folder: Path, model: torch.nn.Module) -> Path:
    from transformers import AutoTokenizer

    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(models.minilm_path())).save_pretrained(folder)
    return folder


def test_explain_reads_the_row_a_decoder_classifies_from(tmp_path, capsys):
    # explain showed row 0 of a decoder, which sees only itself (raw and
    # efficient 1.0 on the first token); it now shows the row the classifier
    # pools, the last token's
    model = make_tiny_model("gpt2", vocab_size=30522, pad_token_id=0)
    folder = _model_folder(tmp_path / "gpt2", model)
    text = "a long and rather dull film with one good scene " * 3
    assert main(["explain", "--model", str(folder), "--text", text]) == 0
    out = capsys.readouterr().out
    assert "[CLS] row" not in out and "row of '[SEP]'" in out
    gains = out.split("gain the most attention")[1].splitlines()[2:4]
    assert not any("1.0000" in line for line in gains)  # not a one-hot row


def test_cli_refuses_an_unsupported_architecture_first(tmp_path, capsys):
    # ALBERT got a traceback from bench's warm-up, and finetune trained and
    # cached a model that nothing could explain
    from transformers import AlbertConfig, AlbertForSequenceClassification

    torch.manual_seed(0)
    config = AlbertConfig(
        vocab_size=30522, embedding_size=16, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=48, max_position_embeddings=128,
    )  # fmt: skip
    folder = _model_folder(tmp_path / "albert", AlbertForSequenceClassification(config))
    for argv in (
        ["bench", "--model", str(folder), "--n", "2", "--out", str(tmp_path / "o")],
        ["finetune", "--model", str(folder)],
        ["explain", "--model", str(folder), "--text", "a good film"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "'albert'" in err and "supported model types" in err
        assert "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_a_config_that_records_sdpa_is_loaded_eager(tiny_model_dir, tmp_path, capsys):
    # a config.json with "_attn_implementation": "sdpa" overrode the eager
    # attention that load_model asks for, and bench failed with a traceback
    import json
    import shutil

    folder = tmp_path / "sdpa"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["_attn_implementation"] = "sdpa"
    (folder / "config.json").write_text(json.dumps(config))
    model, _ = models.load_model(folder)
    assert model.config._attn_implementation == "eager"
    assert main(["explain", "--model", str(folder), "--text", "a good film"]) == 0


def test_explain_refuses_text_that_is_not_utf8(tiny_model_dir, capsys):
    # bytes the shell could not decode reach Python as lone surrogates,
    # which the tokenizer refused with a TypeError traceback
    argv = ["explain", "--model", str(tiny_model_dir), "--text", "good \udcff film"]
    assert main(argv) == 2
    assert "not valid UTF-8" in capsys.readouterr().err


def test_roberta_max_length_counts_its_position_offset(tmp_path, capsys):
    # RoBERTa's positions start after the padding id: 130 position
    # embeddings hold 128 tokens, and a 130-token input failed with an
    # IndexError inside the model
    model = make_tiny_model("roberta", vocab_size=30522)
    assert model.config.max_position_embeddings == 130
    folder = _model_folder(tmp_path / "roberta", model)
    text = "a long film " * 100
    argv = ["explain", "--model", str(folder), "--text", text, "--max-length", "200"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "128 positions; using 128" in captured.err
    assert "128 tokens" in captured.out


def test_explain_default_length_fits_a_short_model_quietly(tiny_model_dir, capsys):
    # the default of 256 tokens drew "--max-length 256 is more than the
    # model's 128 positions" though no --max-length was given
    text = "a long film " * 100
    argv = ["explain", "--model", str(tiny_model_dir), "--text", text, "--top", "2"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "--max-length" not in captured.err
    assert "128 tokens" in captured.out


def test_support_test_of_a_short_real_text_keeps_every_key(minilm, monkeypatch):
    # the support threshold against solver noise (100 x tol) cut keys of
    # tiny raw weight from rows that need no solver (E = A for a text of at
    # most rank([T, 1]) tokens): support 0.993 instead of 1 in float64, and
    # in float32 0.965 instead of 0.996 (float32 rounds some of those
    # weights to 0 by itself), necessity 4.9e-3 instead of 1.7e-4
    from captum_effattn._core import support

    model, tok = minilm
    enc = tok(
        ["a gripping, beautifully shot film with a weak ending"], return_tensors="pt"
    )
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert ids.shape[1] <= 33
    res = attention_support_test(model, ids, mask)
    assert float(res.support_fraction[0]) == 1.0
    assert float(res.necessity[0]) == 0.0
    res = attention_support_test(model, ids, mask, dtype=torch.float32)
    monkeypatch.setattr(support, "SUPPORT_TOL_FACTOR", 0.0)
    plain = attention_support_test(model, ids, mask, dtype=torch.float32)
    assert float(res.support_fraction[0]) == float(plain.support_fraction[0]) > 0.99
    assert float(res.necessity[0]) == float(plain.necessity[0])


def test_support_test_single_logit_default_is_the_predicted_side(tiny_model):
    # a one-label multi-label model read p for every example, as the
    # metrics once did: target 0 with p_full 0.499 for z < 0
    import copy

    model = copy.deepcopy(tiny_model("bert", num_labels=1))
    model.config.problem_type = "multi_label_classification"
    ids, mask = random_batch(6, 20, seed=5)
    with torch.no_grad():
        z = model(input_ids=ids, attention_mask=mask).logits[:, 0]
    assert bool((z < 0).any()) and bool((z > 0).any())
    res = attention_support_test(model, ids, mask)
    assert res.target.tolist() == (z > 0).long().tolist()
    assert bool((res.p_full >= 0.5).all())
    explicit = attention_support_test(model, ids, mask, target=0)
    torch.testing.assert_close(explicit.p_full, torch.sigmoid(z.double()))
