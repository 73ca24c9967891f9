r"""``captum-effattn bench`` end to end on a tiny random BERT with MiniLM's
tokenizer: every output file, determinism, torchrun sharding, bad input."""

from __future__ import annotations

import csv
import html
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
import torch

from captum_effattn.benchmark.report import CSV_COLUMNS, OUTPUT_FILES
from captum_effattn.cli import main

METHODS = "efficient,attention,efficient-grad,ablation,lime,random"
# the user's cache, read (never written) by the slow real-model test
USER_CACHE = os.environ.get("CAPTUM_EFFATTN_CACHE")

POS = "good great fun wonderful brilliant moving".split()
NEG = "bad awful boring dull terrible weak".split()
NEUTRAL = "the movie plot actor film story scene and a was".split()


def make_tiny_classifier(folder: Path) -> Path:
    r"""A random 2-layer BERT (hidden 32, 4 heads) saved with MiniLM's
    tokenizer; query/key and classifier weights scaled up so that attention
    is peaked and predictions vary with the input."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from captum_effattn.benchmark.models import minilm_path

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=128,
        num_labels=2,
        attn_implementation="eager",
    )
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "query" in name or "key" in name:
                p.mul_(8.0)
            if name.startswith("classifier") or "pooler" in name:
                p.mul_(20.0)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(minilm_path())).save_pretrained(folder)
    return folder


def write_csv(path: Path, n: int = 40, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(n):
            label = i % 2
            words = [rng.choice(NEUTRAL) for _ in range(rng.randint(8, 20))]
            words += [rng.choice(POS if label else NEG) for _ in range(3)]
            rng.shuffle(words)
            writer.writerow([" ".join(words), ["neg", "pos"][label]])
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tiny")
    return dict(
        model=make_tiny_classifier(root / "model"),
        csv=write_csv(root / "data.csv"),
    )


def bench_args(tiny: dict, out: Path, n: int = 4, extra: List[str] = ()) -> List[str]:
    return [
        "bench",
        "--dataset",
        f"csv:{tiny['csv']}",
        "--model",
        str(tiny["model"]),
        "--n",
        str(n),
        "--methods",
        METHODS,
        "--batch-size",
        "2",
        "--max-length",
        "32",
        "--sensitivity-samples",
        "2",
        "--infidelity-samples",
        "4",
        "--out",
        str(out),
        "--quiet",
        "--threads",
        "1",
        "--lime-samples",
        "20",
        "--ig-steps",
        "4",
        *extra,
    ]


def read_rows(path: Path) -> List[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def without_timing(rows: List[dict]) -> List[tuple]:
    return [tuple(v for k, v in row.items() if k != "seconds") for row in rows]


@pytest.fixture(scope="module")
def first_run(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "out"
    assert main(bench_args(tiny, out)) == 0
    return out


def test_bench_writes_every_output(first_run):
    out = first_run
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    rows = read_rows(out / "results.csv")
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    methods = METHODS.split(",")
    assert [m for m in dict.fromkeys(r["method"] for r in rows)] == methods
    metrics = {r["metric"] for r in rows}
    for metric in (
        "sufficiency",
        "necessity",
        "aopc_sufficiency",
        "aopc_necessity",
        "sufficiency@0.01",
        "necessity@0.5",
        "minimal_necessary",
        "minimal_sufficient",
        "infidelity",
        "sensitivity",
    ):
        assert metric in metrics, metric
    examples = {r["example"] for r in rows}
    assert examples == {"0", "1", "2", "3"}
    for r in rows:
        assert int(r["n_tokens"]) > 2 and float(r["seconds"]) >= 0
        assert r["label"] in ("0", "1") and r["prediction"] in ("0", "1")
    # per example, the 0.2 point equals the curve's
    by = {(r["example"], r["method"], r["metric"]): r["value"] for r in rows}
    for (ex, m, metric), value in by.items():
        if metric == "necessity":
            assert value == by[(ex, m, "necessity@0.2")]

    summary = (out / "summary.md").read_text()
    for name in methods:
        assert f"`{name}`" in summary
    for needle in ("95% bootstrap CI", "× efficient", "How to read", "torch "):
        assert needle in summary
    assert (
        "higher is better" in summary.lower() and "lower is better" in summary.lower()
    )

    data = json.loads((out / "results.json").read_text())  # strict JSON
    assert list(data["methods"]) == methods
    eff = data["methods"]["efficient"]
    assert eff["time_ratio_to_efficient"] == pytest.approx(1.0)
    assert len(eff["curves"]["fractions"]) == 5
    assert data["metrics"]["necessity"]["higher_is_better"] is True
    assert data["meta"]["n"] == 4 and data["config"]["seed"] == 0

    page = (out / "examples.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert "[CLS]" in page and "rgba(" in page and "Efficient attention" in page
    # each example shows its own AOPC necessity (once the method's mean for all)
    rows = read_rows(out / "results.csv")
    mean = data["methods"]["efficient"]["metrics"]["aopc_necessity"]["mean"]
    checked = 0
    for example in sorted({r["example"] for r in rows}, key=int):
        if f"<h2>Example {example} " not in page:
            continue  # not kept for display
        checked += 1
        own = next(
            float(r["value"])
            for r in rows
            if r["example"] == example
            and r["method"] == "efficient"
            and r["metric"] == "aopc_necessity"
        )
        section = page.split(f"<h2>Example {example} ")[1].split("</table>")[0]
        label = section.split("Efficient attention")[1].split("</td>")[0]
        assert f"AOPC nec. {own:.3f}" in label and f"(mean {mean:.3f})" in label
    assert checked >= 2
    for png in ("aopc_curves.png", "faithfulness_vs_time.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_bench_is_deterministic(tiny, first_run, tmp_path, capsys):
    out = tmp_path / "again"
    assert main(bench_args(tiny, out)) == 0
    assert "outputs of an earlier run" not in capsys.readouterr().err
    # the same folder again: its files are replaced, with a note
    assert main(bench_args(tiny, out)) == 0
    assert "outputs of an earlier run (results.csv" in capsys.readouterr().err
    assert without_timing(read_rows(out / "results.csv")) == without_timing(
        read_rows(first_run / "results.csv")
    )
    other = tmp_path / "seed1"
    assert main(bench_args(tiny, other, extra=["--seed", "1"])) == 0
    assert without_timing(read_rows(other / "results.csv")) != without_timing(
        read_rows(first_run / "results.csv")
    )


def test_methods_share_their_perturbations(tiny, tmp_path):
    # With at most d_h + 1 = 9 tokens efficient attention is raw attention
    # (closed form), so the two methods must score the same infidelity and
    # sensitivity: they once drew perturbations of their own (a seed per
    # method), which put identical attributions up to 200x apart. (The two
    # attributions differ by float32 rounding, which a small sensitivity,
    # a ratio of differences, carries to about 1e-6 of its value.)
    out = tmp_path / "short"
    extra = ["--methods", "efficient,attention", "--max-length", "8"]
    assert main(bench_args(tiny, out, extra=extra)) == 0
    values: dict = {}
    for row in read_rows(out / "results.csv"):
        if row["metric"] in ("infidelity", "sensitivity"):
            values.setdefault((row["example"], row["metric"]), {})[row["method"]] = (
                float(row["value"])
            )
    assert len(values) == 8  # 4 examples, 2 metrics
    for key, by_method in values.items():
        assert by_method["efficient"] == pytest.approx(
            by_method["attention"], rel=1e-5, abs=1e-9
        ), key


def test_document_metrics_do_not_depend_on_the_batch(tiny, tmp_path):
    # infidelity and sensitivity draw their perturbations per document, so
    # a document scores the same whatever the batch size and its batch
    # mates (they once drew one set per batch); the erasure metrics too
    extra = ["--methods", "efficient,attention,efficient-grad,ablation"]
    values = []
    for size in ("1", "3"):
        out = tmp_path / f"batch{size}"
        args = bench_args(tiny, out, extra=extra + ["--batch-size", size])
        assert main(args) == 0
        values.append(
            {
                (r["example"], r["method"], r["metric"]): float(r["value"] or "nan")
                for r in read_rows(out / "results.csv")
            }
        )
    assert values[0].keys() == values[1].keys()
    metrics = {key[2] for key in values[0]}
    assert {"infidelity", "sensitivity", "necessity"} <= metrics
    for key, value in values[0].items():
        # infidelity values are 1e-10 to 1e-7 here: padding's float32
        # rounding moves them by up to 0.2% (per-batch draws: up to 80%)
        tol = dict(rel=2e-2, abs=1e-14) if key[2] == "infidelity" else {}
        assert values[1][key] == pytest.approx(
            value, **(tol or dict(rel=1e-4, abs=1e-6)), nan_ok=True
        ), key


def test_heat_maps_show_the_real_tokens_whatever_the_padding_side(tiny, tmp_path):
    # the heat maps cut each example at its length from the left end: with
    # a tokenizer that pads on the left, shorter examples showed [PAD]s and
    # lost their last tokens, [SEP] included
    import shutil

    left = tmp_path / "model-left"
    shutil.copytree(tiny["model"], left)
    config = left / "tokenizer_config.json"
    settings = json.loads(config.read_text())
    settings["padding_side"] = "left"
    config.write_text(json.dumps(settings))
    only = ["--methods", "attention", "--skip-metrics", "erasure,aopc,minimal,"
            "infidelity,sensitivity"]  # fmt: skip
    shown = {}
    for name, model in (("right", tiny["model"]), ("left", left)):
        args = bench_args(dict(tiny, model=model), tmp_path / name, extra=only)
        if name == "left":  # an encoder's classifier then reads padding
            with pytest.warns(UserWarning, match="padded on the left"):
                assert main(args) == 0
        else:
            assert main(args) == 0
        page = (tmp_path / name / "examples.html").read_text()
        shown[name] = [
            [html.unescape(t) for t in re.findall(r'title="[^"]*">([^<]*)<', part)]
            for part in page.split("<h2>")[1:]
        ]
    assert len({len(tokens) for tokens in shown["left"]}) > 1  # padded batches
    assert shown["left"] == shown["right"]
    for tokens in shown["left"]:
        assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
        assert "[PAD]" not in tokens


def test_bench_timing_only_run(tiny, tmp_path, capsys):
    # every metric group skipped: a timing-only run, with a note that the
    # times are not in results.csv (which once held only its header, unsaid)
    out = tmp_path / "times"
    skip = ["--skip-metrics", "erasure,aopc,minimal,infidelity,sensitivity"]
    assert main(bench_args(tiny, out, extra=skip)) == 0
    assert "results.csv holds no rows" in capsys.readouterr().err
    assert read_rows(out / "results.csv") == []
    summary = (out / "summary.md").read_text()
    for method in METHODS.split(","):
        assert f"| `{method}` | 0." in summary
    methods = json.loads((out / "results.json").read_text())["methods"]
    assert set(methods) == set(METHODS.split(","))
    assert all(
        m["seconds_per_example"] > 0 and not m["metrics"] for m in methods.values()
    )
    some = ["--skip-metrics", "aopc", "--methods", "random"]
    assert main(bench_args(tiny, tmp_path / "some", extra=some)) == 0
    assert "holds no rows" not in capsys.readouterr().err
    # only sensitivity left, which an expensive method skips by default
    lime = ["--skip-metrics", "erasure,aopc,minimal,infidelity", "--methods", "lime"]
    assert main(bench_args(tiny, tmp_path / "lime", extra=lime)) == 0
    assert "results.csv holds no rows" in capsys.readouterr().err
    assert read_rows(tmp_path / "lime" / "results.csv") == []


def test_bench_resumes_an_interrupted_run(
    tiny, first_run, tmp_path, capsys, monkeypatch
):
    # a run that fails in its second batch keeps the first one; --resume
    # reuses it and gives the numbers of an uninterrupted run
    from captum_effattn.benchmark import runner

    n_methods = len(METHODS.split(","))
    calls: List[str] = []  # one per method and batch computed
    real = runner._batch_metrics

    def counting(name, *args, **kwargs):
        calls.append(name)
        return real(name, *args, **kwargs)

    def failing(name, *args, **kwargs):
        if len(calls) == n_methods:  # the second batch
            raise RuntimeError("interrupted")
        return counting(name, *args, **kwargs)

    out = tmp_path / "run"
    saved = out / ".bench-checkpoint"

    def interrupted(extra: List[str] = ()) -> str:
        calls.clear()
        monkeypatch.setattr(runner, "_batch_metrics", failing)
        with pytest.raises(RuntimeError, match="interrupted"):
            main(bench_args(tiny, out, extra=list(extra)))
        assert [p.name for p in saved.iterdir()] == ["batch-00000.json"]
        err = capsys.readouterr().err
        assert "holds 1 finished batch(es)" in err and "--resume" in err
        return err

    interrupted()
    assert sorted(p.name for p in out.iterdir()) == [saved.name]  # no outputs
    # without --resume the saved batch is computed again, with a note
    assert "--resume would reuse" in interrupted()
    # another seed: the saved batch is not this run's, so nothing is reused
    calls.clear()
    monkeypatch.setattr(runner, "_batch_metrics", counting)
    assert main(bench_args(tiny, out, extra=["--seed", "1", "--resume"])) == 0
    assert "--resume: 0 batch(es) taken" in capsys.readouterr().err
    assert len(calls) == 2 * n_methods
    assert not saved.exists()  # removed once the outputs are written
    # interrupted again, then resumed: one batch computed, the same numbers
    interrupted()
    calls.clear()
    monkeypatch.setattr(runner, "_batch_metrics", counting)
    assert main(bench_args(tiny, out, extra=["--resume"])) == 0
    assert "--resume: 1 batch(es) taken" in capsys.readouterr().err
    assert len(calls) == n_methods  # the second batch only
    assert without_timing(read_rows(out / "results.csv")) == without_timing(
        read_rows(first_run / "results.csv")
    )
    assert "1 batch(es) resumed" in (out / "summary.md").read_text()
    assert not saved.exists()


def test_checkpoint_key_covers_weights_and_texts(tiny, tmp_path, monkeypatch):
    # a saved batch is reused only for the same model weights and the same
    # texts and labels (an edited csv or a retrained model at the same path
    # once reused stale batches); a checkpoint that cannot be written warns
    # and the run goes on
    from captum_effattn.benchmark.data import Example
    from captum_effattn.benchmark.models import load_model
    from captum_effattn.benchmark.runner import BenchConfig, run_benchmark

    model, tokenizer = load_model(tiny["model"])
    test = [Example(f"a {w} film about the plot", i % 2) for i, w in
            enumerate(["good", "dull", "great", "weak"])]  # fmt: skip
    config = BenchConfig("csv:x", n=4, methods=["attention"], batch_size=2)
    ck = tmp_path / "ck"

    def run(model, test, resume=True):
        result = run_benchmark(
            model, tokenizer, test, config, checkpoint=ck, resume=resume,
            show_progress=False,
        )  # fmt: skip
        rows = [{k: v for k, v in r.items() if k != "seconds"} for r in result.rows]
        return result.meta["resumed_batches"], json.dumps(rows)  # NaN == NaN

    assert run(model, test, resume=False)[0] == 0
    assert sorted(p.name for p in ck.iterdir()) == [
        "batch-00000.json", "batch-00001.json",
    ]  # fmt: skip
    resumed, rows = run(model, test)
    assert resumed == 2 and rows == run(model, test, resume=False)[1]
    # batches computed another way (per-batch metric draws) are not reused
    from captum_effattn.benchmark import runner

    monkeypatch.setattr(runner, "CHECKPOINT_FORMAT", runner.CHECKPOINT_FORMAT - 1)
    assert run(model, test)[0] == 0
    monkeypatch.undo()
    edited = [Example(ex.text.replace("plot", "cast"), ex.label) for ex in test]
    assert run(model, edited)[0] == 0
    relabelled = [Example(ex.text, 1 - ex.label) for ex in test]
    assert run(model, relabelled)[0] == 0
    other, _ = load_model(tiny["model"])
    with torch.no_grad():
        other.classifier.weight.neg_()
    assert run(other, test)[0] == 0
    # the same weights with a tokenizer that pads on the left: batches of
    # the right-padding run were reused and mixed into its numbers
    uneven = [Example(ex.text + " and more" * i, ex.label) for i, ex in enumerate(test)]
    assert run(model, uneven, resume=False)[0] == 0
    assert run(model, uneven)[0] == 2
    tokenizer.padding_side = "left"
    try:
        with pytest.warns(UserWarning, match="padded on the left"):  # an encoder
            assert run(model, uneven)[0] == 0
    finally:
        tokenizer.padding_side = "right"
    bad = tmp_path / "file"
    bad.write_text("not a folder")
    with pytest.warns(RuntimeWarning, match="cannot save finished batches"):
        result = run_benchmark(
            model, tokenizer, test, config, checkpoint=bad, show_progress=False
        )
    assert len(result.rows) == len(json.loads(rows))


def test_bench_notes_a_model_trained_on_another_split(tiny, tmp_path, capsys):
    # a model fine-tuned on seed 0's split and tested on seed 1's has seen
    # some of the test documents: the run says so (it once said nothing)
    import shutil

    from captum_effattn.benchmark.data import load_dataset

    model = tmp_path / "model"
    shutil.copytree(tiny["model"], model)
    name = load_dataset(f"csv:{tiny['csv']}").name
    (model / "report.json").write_text(
        json.dumps({"dataset": name, "dataset_options": {"seed": 0}})
    )
    args = bench_args(tiny, tmp_path / "out", n=1, extra=["--methods", "random"])
    args[args.index("--model") + 1] = str(model)
    assert main(args + ["--seed", "1"]) == 0
    assert "fine-tuned on the split of --seed 0" in capsys.readouterr().err
    assert main(args + ["--seed", "0"]) == 0
    assert "fine-tuned on the split" not in capsys.readouterr().err


def _close(a: List[dict], b: List[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for key in CSV_COLUMNS:
            if key == "seconds":
                continue
            if key == "value":
                fx, fy = (float(v[key] or "nan") for v in (x, y))
                assert fx == pytest.approx(fy, rel=1e-5, abs=1e-6, nan_ok=True), (
                    x,
                    y,
                )
            else:
                assert x[key] == y[key], (key, x, y)


@pytest.mark.slow  # about 40 s: two processes import torch, transformers, captum
def test_torchrun_two_processes_match_single(tiny, first_run, tmp_path):
    out = tmp_path / "dist"
    args = bench_args(tiny, out)
    args[args.index("--n")] = "--num-examples"  # torchrun-safe alias
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "captum_effattn",
        *args,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    _close(read_rows(out / "results.csv"), read_rows(first_run / "results.csv"))
    meta = json.loads((out / "results.json").read_text())["meta"]
    assert meta["processes"] == 2


@pytest.mark.gpu
def test_bench_on_the_gpu_matches_the_cpu(tiny, first_run, tmp_path, gpu_device):
    # The same run on the device: the same rows, and the same numbers for the
    # methods without random draws. The erasure metrics rank tokens, and
    # scores that tie on the CPU (exact zeros off an efficient support) can
    # come out 1e-17 apart on the GPU, so those are compared per method
    # through their means; Lime and random draw on the device's generator.
    out = tmp_path / "gpu"
    args = bench_args(tiny, out)
    args[args.index("--threads") : args.index("--threads") + 2] = []
    assert main(args + ["--device", str(gpu_device)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    dev, cpu = read_rows(out / "results.csv"), read_rows(first_run / "results.csv")
    key = ("example", "method", "metric")
    assert [tuple(r[k] for k in key) for r in dev] == [
        tuple(r[k] for k in key) for r in cpu
    ]
    means: dict = {}
    for d, c in zip(dev, cpu):
        assert d["prediction"] == c["prediction"] and d["n_tokens"] == c["n_tokens"]
        if d["method"] in ("lime", "random") or d["metric"] in (
            "infidelity", "sensitivity", "seconds",
        ):  # fmt: skip
            continue
        pair = means.setdefault((d["method"], d["metric"]), [0.0, 0.0])
        pair[0] += float(d["value"] or 0.0)
        pair[1] += float(c["value"] or 0.0)
    assert len(means) >= 10
    for name, (d_sum, c_sum) in means.items():
        assert d_sum == pytest.approx(c_sum, abs=0.05 * 4), name
    meta = json.loads((out / "results.json").read_text())["meta"]
    assert meta["device"].startswith(gpu_device.type)


# ------------------------------------------------------------------ bad input
def _assert_usage_error(capsys, code: int, needle: str, parent: Path, out: Path):
    err = capsys.readouterr().err
    assert code == 2, err
    assert needle in err
    assert not out.exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(".captum-effattn")]


@pytest.mark.parametrize(
    "change, needle",
    [
        (("--dataset", "no-such-data"), "unknown data set 'no-such-data'"),
        (("--methods", "efficient,nope"), "unknown method 'nope'"),
        (("--n", "0"), "must be at least 1"),
        (("--methods", ""), "no method named"),
        (("--methods", " , "), "no method named"),
        (("--skip-metrics", "speed"), "unknown metric group"),
    ],
)
def test_bench_rejects_bad_arguments(tiny, tmp_path, capsys, change, needle):
    out = tmp_path / "out"
    args = bench_args(tiny, out)
    if change[0] in args:
        args[args.index(change[0]) + 1] = change[1]
    else:
        args += list(change)
    _assert_usage_error(capsys, main(args), needle, tmp_path, out)


def test_bench_rejects_csv_without_columns(tiny, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("review,score\nnice film,1\nbad film,0\n")
    out = tmp_path / "out"
    args = bench_args(tiny, out)
    args[args.index("--dataset") + 1] = f"csv:{bad}"
    code = main(args)
    _assert_usage_error(
        capsys, code, "lacks the column(s) ['text', 'label']", tmp_path, out
    )


def test_bench_rejects_unwritable_out(tiny, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "out"
    code = main(bench_args(tiny, out))
    _assert_usage_error(capsys, code, "is not a folder", tmp_path, out)
    assert blocker.read_text() == "not a folder"
    # a torchrun worker other than rank 0 checks it too: it once went on to
    # the distributed start-up and waited there for rank 0, which had exited
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RANK", "1")
        env.setenv("WORLD_SIZE", "2")
        code = main(bench_args(tiny, out))
    _assert_usage_error(capsys, code, "is not a folder", tmp_path, out)


def test_a_folder_in_an_output_files_place_is_refused_first(tiny, tmp_path, capsys):
    # the final move went file by file and stopped at the folder, leaving
    # old and new outputs mixed and a traceback
    from captum_effattn.benchmark.report import OutputDir, OutputDirError

    out = tmp_path / "out"
    (out / "results.csv").mkdir(parents=True)
    (out / "summary.md").write_text("earlier run")
    code = main(bench_args(tiny, out))
    err = capsys.readouterr().err
    assert code == 2 and "named like the outputs (results.csv)" in err
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "summary.md"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".captum-effattn")]
    assert not [p for p in out.iterdir() if p.name.startswith(".captum-effattn")]
    # and OutputDir itself moves nothing when one target is blocked
    target = OutputDir(out)
    for name in ("aopc_curves.png", "results.csv"):
        (target.staging / name).write_text("new")
    with pytest.raises(OutputDirError, match="nothing was written"):
        target.commit()
    target.discard()
    assert (out / "summary.md").read_text() == "earlier run"
    assert not (out / "aopc_curves.png").exists()


def test_torchrun_workers_check_the_device_first(tiny, tmp_path, capsys):
    # under torchrun the process group took cuda:LOCAL_RANK before the
    # device was checked: --device cuda without CUDA ended in a traceback
    # from torch.cuda.set_device on every rank, not the usage error
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as env:
        for name, value in [("RANK", "1"), ("LOCAL_RANK", "1"), ("WORLD_SIZE", "2")]:
            env.setenv(name, value)
        env.setenv("LOCAL_WORLD_SIZE", "2")
        # an explicit GPU index would put both processes on one GPU
        code = main(bench_args(tiny, out) + ["--device", "cuda:0"])
        _assert_usage_error(capsys, code, "every process on one GPU", tmp_path, out)
        if not torch.cuda.is_available():
            code = main(bench_args(tiny, out) + ["--device", "cuda"])
            _assert_usage_error(capsys, code, "--device", tmp_path, out)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes anywhere"
)
def test_bench_rejects_read_only_out(tiny, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code = main(bench_args(tiny, locked / "out"))
        _assert_usage_error(capsys, code, "not writable", locked, locked / "out")
    finally:
        locked.chmod(0o700)


# ----------------------------------------------------------------- real model
def _rt_verdict_model(tmp_path: Path) -> List[str]:
    r"""``--model`` for the real-model run: the user's cached rt-verdict model
    when there is one, else a small fine-tune (200 documents of 128 tokens)
    into the test's folder. The full fine-tune that ``bench`` would run takes
    about four minutes on two cores; this test checks the bench on the real
    model and data, not the model's accuracy (test_models.py does that)."""
    from captum_effattn.benchmark.models import (
        cache_dir,
        find_cached_model,
        get_or_finetune,
    )

    root = Path(USER_CACHE).expanduser() if USER_CACHE is not None else cache_dir()
    found = find_cached_model("rt-verdict", root / "models")
    if found is None:
        _, _, report = get_or_finetune(
            "rt-verdict",
            cache=tmp_path / "models",
            max_train=200,
            max_test=50,
            max_length=128,
            show_progress=False,
        )
        found = report["path"]
    return ["--model", str(found)]


@pytest.mark.slow
def test_bench_real_model(tmp_path):
    out = tmp_path / "real"
    code = main(
        [
            "bench",
            "--dataset",
            "rt-verdict",
            "--n",
            "3",
            "--methods",
            "efficient,attention,ig,random",
            "--out",
            str(out),
            "--quiet",
            *_rt_verdict_model(tmp_path),
        ]
    )
    assert code == 0
    data = json.loads((out / "results.json").read_text())
    assert data["meta"]["n"] == 3
    for name in ("efficient", "attention", "ig", "random"):
        stats = data["methods"][name]["metrics"]
        assert stats["aopc_necessity"]["n"] == 3
    rows = read_rows(out / "results.csv")
    assert all(int(r["n_tokens"]) > 34 for r in rows)  # longer than d_h + 2


def test_bench_takes_no_option_prefixes(tiny, tmp_path, capsys):
    # "--num 2" worked alone as a prefix of --num-examples and failed under
    # torchrun, whose own parser reads it; now it fails the same way in both
    out = tmp_path / "out"
    args = bench_args(tiny, out)
    args[args.index("--n")] = "--num"
    assert main(args) == 2
    assert "unrecognized arguments: --num" in capsys.readouterr().err
    assert not out.exists()


def test_staging_folders_of_killed_runs_are_removed(tmp_path):
    # a SIGKILLed run (out-of-memory killer) cannot remove its staging
    # folder; the next run in the same place removes those whose process is
    # gone, and only those
    import subprocess
    import sys

    from captum_effattn.benchmark.report import STAGING_PREFIX, OutputDir, _host

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(gone.stdout)
    host = _host()  # the host name, and the PID namespace where there is one
    out = tmp_path / "out"
    out.mkdir()
    dead = out / f"{STAGING_PREFIX}{dead_pid}@{host}-abc_123"
    live = out / f"{STAGING_PREFIX}{os.getpid()}@{host}-xyz"
    other_host = out / f"{STAGING_PREFIX}{dead_pid}@not-{host}-xyz"
    older = out / f"{STAGING_PREFIX}k2j4_x"  # the old naming: owner unknown
    kept = (live, other_host, older)
    if os.path.exists("/proc/self/ns/pid"):  # Linux: a container of the same
        # host name, in a PID namespace of its own, or one that does not say
        import socket

        name = socket.gethostname()
        kept += (out / f"{STAGING_PREFIX}{dead_pid}@{name}~1-xyz",)
        kept += (out / f"{STAGING_PREFIX}{dead_pid}@{name}-xyz",)
    for folder in (dead,) + kept:
        folder.mkdir()
        (folder / "summary.md").write_text("partial")
    target = OutputDir(out)
    left = sorted(p.name for p in out.iterdir())
    assert dead.name not in left
    assert {f.name for f in kept} | {target.staging.name} == set(left)
    assert target.staging.name.startswith(f"{STAGING_PREFIX}{os.getpid()}@{host}-")
    target.discard()
