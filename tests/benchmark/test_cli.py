r"""The ``captum-effattn`` command: help, subcommands, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from captum_effattn import cli
from captum_effattn.benchmark.data import DATASETS
from captum_effattn.benchmark.methods import METHODS, default_methods
from captum_effattn.cli import build_parser, main

SUBCOMMANDS = ("bench", "finetune", "explain", "speed", "datasets")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from captum_effattn.benchmark.models import minilm_path

    folder = tmp_path_factory.mktemp("tiny-cli")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=128,
        attn_implementation="eager",
    )
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "query" in name or "key" in name:
                p.mul_(8.0)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(minilm_path())).save_pretrained(folder)
    return folder


def test_help_of_every_subcommand(capsys):
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    for command in SUBCOMMANDS:
        assert command in top
        assert main([command, "--help"]) == 0
        assert "usage: captum-effattn " + command in capsys.readouterr().out


def test_bench_help_lists_registry(capsys):
    assert main(["bench", "--help"]) == 0
    text = capsys.readouterr().out
    for name, spec in METHODS.items():  # docs and code agree
        assert f"  {name}: " in text
        assert ("[not default]" in text.split(f"  {name}: ")[1].split("\n")[0]) == (
            not spec.default
        )
    for name in DATASETS:
        assert name in text
    for option in ("--num-examples", "--skip-metrics", "--fractions", "--model"):
        assert option in text


def test_parser_defaults():
    args = build_parser().parse_args(["bench", "--out", "x"])
    assert args.dataset == "rt-verdict" and args.n == 10 and args.methods is None
    assert args.fractions == "eraser" and args.max_length == 256
    args = build_parser().parse_args(
        ["bench", "--num-examples", "3", "--methods", "default", "--out", "x"]
    )
    assert args.n == 3 and args.methods == default_methods()


def test_missing_subcommand_is_usage_error(capsys):
    assert main([]) == 2
    assert "required" in capsys.readouterr().err


def test_datasets_without_sizes(capsys):
    assert main(["datasets", "--no-sizes"]) == 0
    out = capsys.readouterr().out
    for name, info in DATASETS.items():
        assert name in out and info.description in out
    assert "csv:PATH" in out


def test_speed_without_script(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli, "_speed_script", lambda: tmp_path / "speed.py")
    assert main(["speed"]) == 2
    assert "not found" in capsys.readouterr().err


def test_speed_runs_script_main(monkeypatch, tmp_path, capsys):
    script = tmp_path / "speed.py"
    script.write_text(
        "def main(argv):\n    print('speed got', argv)\n    return 0\n"
        "if __name__ == '__main__':\n    raise SystemExit('not as a module')\n"
    )
    monkeypatch.setattr(cli, "_speed_script", lambda: script)
    assert main(["speed", "--rows", "1"]) == 0
    assert "speed got ['--rows', '1']" in capsys.readouterr().out
    # a "--" before the script's options is the usual separator, not one of them
    assert main(["speed", "--", "--quick"]) == 0
    assert "speed got ['--quick']" in capsys.readouterr().out


def test_explain_on_tiny_model(tiny_model_dir, capsys):
    text = " ".join(["a long and rather dull film with one good scene"] * 6)
    code = main(
        ["explain", "--model", str(tiny_model_dir), "--text", text, "--top", "5"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "certificate" in out
    assert "gain the most attention" in out and "lose the most attention" in out
    lines = out.split("gain the most attention")[1].splitlines()
    assert len([ln for ln in lines if ln.strip() and ln.strip()[0].isdigit()]) >= 5


def _three_labels(folder: Path, source: Path, names=None) -> Path:
    from transformers import AutoTokenizer, BertForSequenceClassification

    kw = {"num_labels": 3} if names is None else {"id2label": dict(enumerate(names))}
    model = BertForSequenceClassification.from_pretrained(
        str(source), ignore_mismatched_sizes=True, **kw
    )
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(folder)
    return folder


def test_explain_reads_the_classifiers_labels(tiny_model_dir, tmp_path, capsys):
    # a 3-label classifier once failed to load (2 labels were assumed), and
    # id2label names were printed as numbers
    three = _three_labels(tmp_path / "m3", tiny_model_dir, ["neg", "neu", "pos"])
    assert main(["explain", "--model", str(three), "--text", "A fine film."]) == 0
    out = capsys.readouterr().out
    pred = out.split("prediction: ")[1].split(" ")[0]
    assert pred in ("neg", "neu", "pos")
    assert "untrained" not in out


def test_explain_default_document_notes_another_split(tiny_model_dir, tmp_path, capsys):
    # without --text explain reads the first test document of seed 0's
    # split, which a model fine-tuned on another split may have trained on
    import json
    import shutil

    folder = shutil.copytree(tiny_model_dir, tmp_path / "seed1")
    report = {"dataset": "rt-verdict", "dataset_options": {"seed": 1}}
    (folder / "report.json").write_text(json.dumps(report))
    assert main(["explain", "--model", str(folder), "--max-length", "64"]) == 0
    out = capsys.readouterr().out
    assert "the first rt-verdict test document" in out
    assert "fine-tuned on the split of seed 1" in out
    report["dataset_options"]["seed"] = 0
    (folder / "report.json").write_text(json.dumps(report))
    assert main(["explain", "--model", str(folder), "--max-length", "64"]) == 0
    assert "fine-tuned on the split of seed" not in capsys.readouterr().out


def test_explain_notes_truncation_and_untrained_heads(tiny_model_dir, tmp_path, capsys):
    from transformers import BertModel

    base = tmp_path / "base"
    BertModel.from_pretrained(str(tiny_model_dir)).save_pretrained(base)
    for name in ("vocab.txt", "tokenizer_config.json", "tokenizer.json"):
        if (tiny_model_dir / name).exists():
            (base / name).write_bytes((tiny_model_dir / name).read_bytes())
    text = " ".join(["a long and rather dull film with one good scene"] * 20)
    argv = ["explain", "--model", str(base), "--text", text, "--max-length", "64"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "only the first 64 are explained" in out
    assert "head is new and untrained" in out
    # special tokens typed as text are not a text either
    assert main(["explain", "--model", str(base), "--text", "[SEP] [CLS]"]) == 2
    assert "no tokens besides special ones" in capsys.readouterr().err


def test_finetune_refuses_a_classifier_with_other_labels(
    tiny_model_dir, tmp_path, capsys
):
    # it once ended in a size-mismatch traceback (exit 1)
    three = _three_labels(tmp_path / "m3", tiny_model_dir)
    data = tmp_path / "two.csv"
    data.write_text("text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(20)))
    argv = ["finetune", "--dataset", f"csv:{data}", "--model", str(three)]
    assert main(argv + ["--max-train", "2"]) == 2
    err = capsys.readouterr().err
    assert "classifier with 3 labels" in err and "has 2" in err


@pytest.fixture(scope="module")
def small_vocab_model_dir(tmp_path_factory) -> Path:
    r"""A tiny BERT with 500 embedding rows, saved with MiniLM's tokenizer
    (30522 ids): most words tokenize to ids the model cannot embed."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from captum_effattn.benchmark.models import minilm_path

    folder = tmp_path_factory.mktemp("small-vocab")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=500, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=48, max_position_embeddings=128,
        attn_implementation="eager",
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(minilm_path())).save_pretrained(folder)
    return folder


def test_explain_tokenizer_larger_than_the_model(small_vocab_model_dir, capsys):
    # used to end in an IndexError from the embedding
    argv = ["explain", "--model", str(small_vocab_model_dir), "--text", "zebras"]
    assert main(argv + ["--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "do not fit together" in err
    assert "outside the model's vocabulary of 500" in err
    assert "resize_token_embeddings" in err and "Traceback" not in err


def test_bench_tokenizer_larger_than_the_model(small_vocab_model_dir):
    from captum_effattn.benchmark.data import Example
    from captum_effattn.benchmark.models import load_model
    from captum_effattn.benchmark.runner import BenchConfig, run_benchmark

    model, tokenizer = load_model(small_vocab_model_dir)
    test = [Example("a film about zebras", 0), Example("a dull film", 1)]
    config = BenchConfig("csv:x", n=2, methods=["random"])
    with pytest.raises(ValueError, match="outside the model's vocabulary of 500"):
        run_benchmark(model, tokenizer, test, config, show_progress=False)


def test_explain_bad_model_path(tmp_path, capsys):
    assert main(["explain", "--model", str(tmp_path / "none"), "--text", "x"]) == 2
    assert "no such model folder" in capsys.readouterr().err


def test_python_dash_m(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "captum_effattn", "bench", "--n", "0", "--out", "x"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "must be at least 1" in proc.stderr
    assert "usage: captum-effattn bench" in proc.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "argv, match",
    [
        (["bench", "--seed", "-1", "--out", "x"], "must be an integer in"),
        (["bench", "--device", "gpu", "--out", "x"], "not a device"),
        (["bench", "--device", "mps", "--out", "x"], "only cpu and cuda"),
        (["finetune", "--seed", "-3"], "must be an integer in"),
        (["bench", "--out", " "], "must name a folder"),
        (["bench", "--html-examples", "-1", "--out", "x"], "must be at least 0"),
    ],
)
def test_bad_bench_arguments_are_usage_errors(
    tmp_path, capsys, monkeypatch, argv, match
):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_index_without_cuda_is_a_usage_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--device", "cuda:0", "--out", "x"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_model_folder_that_cannot_be_loaded(tiny_model_dir, tmp_path):
    from captum_effattn.cli import CLIError, _load_model

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CLIError, match="cannot load a sequence classifier"):
        _load_model(empty, 2, "cpu")
    with pytest.raises(CLIError, match="with 3 labels"):
        _load_model(tiny_model_dir, 3, "cpu")  # a 2-label classifier
    model, _ = _load_model(tiny_model_dir, 2, "cpu")
    assert model.config.num_labels == 2


def test_sigterm_removes_the_staging_folder(tmp_path):
    # a bench killed by SIGTERM (timeout, Slurm) leaves no partial output
    script = (
        "import os, signal, sys\n"
        "from captum_effattn import cli\n"
        "def stuck(*a, **k):\n"
        "    print('running', flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    raise AssertionError('SIGTERM was ignored')\n"
        "cli._bench = stuck\n"
        "sys.exit(cli.main(['bench', '--methods', 'random', '--out', sys.argv[1]]))\n"
    )
    out = tmp_path / "run" / "out"
    out.parent.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", script, str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert "running" in proc.stdout, proc.stderr
    assert proc.returncode == 143, proc.stderr
    assert list(out.parent.iterdir()) == []  # no output, no staging folder


def test_a_closed_pipe_ends_quietly(monkeypatch, capsys):
    # `captum-effattn datasets | head -3` ended in a BrokenPipeError
    # traceback; stdout now goes to /dev/null and the exit code is 1. A
    # broken pipe of something else (stdout still open) is raised as before
    import io

    from captum_effattn import cli

    def closed(args):
        raise BrokenPipeError

    class Closed(io.StringIO):
        def flush(self):
            raise BrokenPipeError

        def fileno(self):
            return 1

    moved = []
    monkeypatch.setitem(cli._COMMANDS, "datasets", closed)
    monkeypatch.setattr(cli.os, "dup2", lambda fd, to: moved.append(to))
    with monkeypatch.context() as m:
        m.setattr(cli.sys, "stdout", Closed())
        assert main(["datasets"]) == 1
    assert moved == [1]
    assert "Traceback" not in capsys.readouterr().err
    with pytest.raises(BrokenPipeError):
        main(["datasets"])  # stdout is fine: not ours to hide


def test_a_missing_benchmark_dependency_names_the_extra(tmp_path, capsys, monkeypatch):
    # "No module named 'pandas'" alone did not say what to install
    monkeypatch.setitem(sys.modules, "pandas", None)  # import fails
    code = main(["bench", "--dataset", "rt-verdict", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "pandas" in err and "captum-effattn[benchmark]" in err


def test_explain_decodes_byte_level_tokens(tmp_path, capsys):
    # a GPT-2 classifier: its tokens were printed in the byte alphabet
    # ("ĠcafÃ©"), and the decoder's row is the last token's
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (
        GPT2Config,
        GPT2ForSequenceClassification,
        PreTrainedTokenizerFast,
    )

    text = "le café est très bon café"
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([text] * 20, 300, 1, special_tokens=["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=64,
        pad_token_id=tokenizer.pad_token_id, attn_implementation="eager",
    )  # fmt: skip
    GPT2ForSequenceClassification(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    argv = ["explain", "--model", str(tmp_path), "--text", text, "--top", "8"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "café" in out and "Ã" not in out and "row of" in out
