r"""Guards found by mutation testing of the benchmark code (report, runner,
methods, data): each test compares the package with an independent
computation (numpy / pandas on the same per-example numbers, Captum or the
attribution classes called directly, a hand-built input)."""

from __future__ import annotations

import math
import re
from typing import Any, Dict, List

import numpy as np
import pytest
import torch

from captum_effattn.benchmark import runner
from captum_effattn.benchmark.data import Example
from captum_effattn.benchmark.methods import METHODS, attribute
from captum_effattn.benchmark.report import (
    _examples_html,
    _markdown,
    _plots,
    bootstrap_ci,
    summarize,
)
from captum_effattn.benchmark.runner import (
    BenchConfig,
    BenchResult,
    run_benchmark,
    select_examples,
)

pd = pytest.importorskip("pandas")

# ----------------------------------------------------------------------------
# report: synthetic results


def _synthetic(
    values: Dict[str, Dict[str, List[float]]],
    seconds: Dict[str, List[float]],
) -> BenchResult:
    r"""``values[method][metric]``: one value per example; ``seconds[method]``:
    the method's time on each example."""
    methods = list(seconds)
    n = len(next(iter(seconds.values())))
    rows = [
        dict(
            example=e, test_index=100 + e, method=m, metric=metric, value=v,
            label=e % 2, prediction=0, n_tokens=5, seconds=seconds[m][e],
        )
        for m in methods
        for metric, vals in values.get(m, {}).items()
        for e, v in enumerate(vals)
    ]  # fmt: skip
    examples = [
        dict(
            example=e, test_index=100 + e, label=e % 2, prediction=0,
            correct=e % 2 == 0, n_tokens=5, probability=0.9,
            seconds={m: seconds[m][e] for m in methods}, scores={},
        )
        for e in range(n)
    ]  # fmt: skip
    config = BenchConfig(dataset="rt-verdict", n=n, methods=methods)
    return BenchResult(config=config, rows=rows, examples=examples, meta={"n": n})


def _table_cells(table: str, method: str) -> List[str]:
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == f"`{method}`":
            return cells
    raise AssertionError(f"no row for {method}")


def _column(table: str, label: str) -> int:
    head = next(line for line in table.splitlines() if line.startswith("| method"))
    cells = [c.strip() for c in head.strip().strip("|").split("|")]
    return next(i for i, c in enumerate(cells) if c.startswith(label))


def test_bootstrap_ci_matches_the_normal_interval_of_the_mean():
    # with many resamples, the percentile interval of the mean of n = 400
    # values is mean +- 1.96 sd / sqrt(n) (plug-in sd), and symmetric
    values = np.random.default_rng(7).normal(0.3, 0.2, size=400)
    values[::50] = np.nan  # dropped, and not counted
    finite = values[np.isfinite(values)]
    mean, low, high, n = bootstrap_ci(values.tolist(), seed=3, n_boot=20000)
    assert n == finite.size
    assert mean == pytest.approx(float(finite.mean()), abs=1e-12)
    half = 1.959964 * finite.std() / math.sqrt(finite.size)
    assert high - low == pytest.approx(2 * half, rel=0.04)
    assert high - mean == pytest.approx(mean - low, rel=0.08)
    # a 90% interval is narrower by 1.645 / 1.960
    _, low90, high90, _ = bootstrap_ci(values.tolist(), 3, 20000, level=0.9)
    assert (high90 - low90) / (high - low) == pytest.approx(1.645 / 1.96, rel=0.04)


def test_bootstrap_ci_is_seeded():
    values = np.random.default_rng(0).uniform(size=30).tolist()
    assert bootstrap_ci(values, seed=5) == bootstrap_ci(values, seed=5)
    assert bootstrap_ci(values, seed=5)[1:3] != bootstrap_ci(values, seed=6)[1:3]
    result = _synthetic({"efficient": {"necessity": values}}, {"efficient": [0.1] * 30})
    first = summarize(result, n_boot=200)["methods"]["efficient"]["metrics"]
    assert summarize(result, n_boot=200)["methods"]["efficient"]["metrics"] == first


def test_summary_means_and_times_match_pandas():
    rng = np.random.default_rng(1)
    n = 6
    values = {
        m: {k: rng.uniform(-1, 1, n).tolist() for k in ("necessity", "sufficiency")}
        for m in ("efficient", "attention", "random")
    }
    values["attention"]["necessity"][2] = float("nan")
    seconds = {m: rng.uniform(0.01, 2.0, n).tolist() for m in values}
    result = _synthetic(values, seconds)
    summary = summarize(result, n_boot=100)
    frame = pd.DataFrame(result.rows)
    expected = frame.groupby(["method", "metric"])["value"].agg(["mean", "count"])
    for (method, metric), row in expected.iterrows():
        stats = summary["methods"][method]["metrics"][metric]
        assert stats["mean"] == pytest.approx(row["mean"], abs=1e-12)
        assert stats["n"] == row["count"]
    per_example = {m: float(np.mean(s)) for m, s in seconds.items()}
    for method, entry in summary["methods"].items():
        assert entry["seconds_per_example"] == pytest.approx(per_example[method])
        assert entry["time_ratio_to_efficient"] == pytest.approx(
            per_example[method] / per_example["efficient"]
        )


def test_bold_is_the_lowest_mean_where_lower_is_better():
    result = _synthetic(
        {
            "efficient": {"sufficiency": [0.10, 0.20], "necessity": [0.5, 0.7]},
            "attention": {"sufficiency": [0.30, 0.40], "necessity": [0.1, 0.2]},
        },
        {"efficient": [0.1, 0.1], "attention": [0.1, 0.1]},
    )
    table = _markdown(summarize(result, n_boot=50))
    suff = _column(table, "Sufficiency@0.2")
    nec = _column(table, "Necessity@0.2")
    assert _table_cells(table, "efficient")[suff].startswith("**")
    assert not _table_cells(table, "attention")[suff].startswith("**")
    assert _table_cells(table, "efficient")[nec].startswith("**")
    # every method is scored on every example: no "(n=...)" note
    assert "(n=" not in table


def test_the_n_note_marks_only_means_over_fewer_examples():
    result = _synthetic(
        {
            "efficient": {"minimal_necessary": [0.1, 0.2, 0.3]},
            "attention": {"minimal_necessary": [0.1, float("nan"), 0.3]},
        },
        {"efficient": [0.1] * 3, "attention": [0.1] * 3},
    )
    table = _markdown(summarize(result, n_boot=50))
    col = _column(table, "Minimal necessary")
    assert _table_cells(table, "attention")[col].endswith("(n=2)")
    assert "(n=" not in _table_cells(table, "efficient")[col]


def test_curves_pair_each_fraction_with_its_own_mean():
    fractions = [0.01, 0.05, 0.1, 0.2, 0.5]
    rng = np.random.default_rng(2)
    metrics = {
        f"{kind}@{f:g}": rng.uniform(-1, 1, 4).tolist()
        for kind in ("sufficiency", "necessity")
        for f in fractions
    }
    result = _synthetic({"efficient": metrics}, {"efficient": [0.1] * 4})
    curves = summarize(result, n_boot=20)["methods"]["efficient"]["curves"]
    assert curves["fractions"] == fractions
    for kind in ("sufficiency", "necessity"):
        expected = [float(np.mean(metrics[f"{kind}@{f:g}"])) for f in fractions]
        assert curves[kind] == pytest.approx(expected, abs=1e-12)


def test_heat_map_colours_positive_red_and_negative_blue():
    result = _synthetic({}, {"efficient": [0.1]})
    result.examples[0].update(
        tokens=["[CLS]", "good", "bad", "[SEP]"],
        special=[True, False, False, True],
        scores={"efficient": [0.0, 0.8, -0.4, 0.0]},
    )
    page = _examples_html(result, summarize(result, n_boot=10))
    colour = dict(
        (text, style)
        for style, text in re.findall(
            r'<span class="[^"]*" style="background:([^"]*)"[^>]*>([^<]*)</span>',
            page,
        )
    )
    assert colour["good"] == "rgba(220, 38, 38, 1.000)"  # red, the largest
    assert colour["bad"] == "rgba(37, 99, 235, 0.500)"  # blue, half as large


def test_scatter_error_bars_are_the_ci(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    # an interval far from symmetric around the mean
    result = _synthetic(
        {"efficient": {"aopc_necessity": [0.0] * 9 + [1.0] * 1}},
        {"efficient": [0.1] * 10},
    )
    summary = summarize(result, n_boot=500)
    stats = summary["methods"]["efficient"]["metrics"]["aopc_necessity"]
    assert stats["mean"] - stats["ci_low"] != pytest.approx(
        stats["ci_high"] - stats["mean"]
    )
    calls: List[Dict[str, Any]] = []
    real = Axes.errorbar

    def spy(self, x, y, *args, **kwargs):
        calls.append(dict(y=y, yerr=kwargs.get("yerr")))
        return real(self, x, y, *args, **kwargs)

    monkeypatch.setattr(Axes, "errorbar", spy)
    _plots(summary, tmp_path)
    assert len(calls) == 1
    (below,), (above,) = calls[0]["yerr"]
    assert calls[0]["y"] == pytest.approx(np.mean([0.0] * 9 + [1.0]))
    assert calls[0]["y"] - below == pytest.approx(stats["ci_low"])
    assert calls[0]["y"] + above == pytest.approx(stats["ci_high"])


def test_one_method_plots_without_warnings(tmp_path):
    # one method's one time on the log scale: matplotlib warned of identical
    # x limits ("makes transformation singular") at every such run
    import warnings

    result = _synthetic(
        {"efficient": {"aopc_necessity": [0.0] * 9 + [1.0]}}, {"efficient": [0.1] * 10}
    )
    summary = summarize(result, n_boot=50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _plots(summary, tmp_path)
    assert (tmp_path / "faithfulness_vs_time.png").stat().st_size > 0


# ----------------------------------------------------------------------------
# runner: a tiny random BERT with MiniLM's tokenizer

WORDS = "the movie plot actor film story scene good bad dull fun".split()


@pytest.fixture(scope="module")
def bench_model():
    from effattn_testing import make_tiny_model
    from transformers import AutoTokenizer

    from captum_effattn.benchmark.models import minilm_path

    model = make_tiny_model("bert", seed=0, vocab_size=30522)
    with torch.no_grad():
        model.classifier.weight.mul_(20.0)
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    return model, tokenizer


def _examples(n: int, seed: int = 0) -> List[Example]:
    import random

    rng = random.Random(seed)
    return [
        Example(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))), i % 2)
        for i in range(n)
    ]


def _fast(**kw) -> BenchConfig:
    settings = dict(
        dataset="csv:x",
        n=8,
        methods=["attention", "random"],
        batch_size=2,
        skip_metrics=["minimal", "infidelity", "sensitivity"],
    )
    settings.update(kw)
    return BenchConfig(**settings)


def _no_time(result: BenchResult):
    rows = [{k: v for k, v in r.items() if k != "seconds"} for r in result.rows]
    infos = [{k: v for k, v in i.items() if k != "seconds"} for i in result.examples]
    return rows, infos


def test_select_examples_takes_n_label_balanced():
    examples = [Example(f"t{i}", int(i >= 10)) for i in range(20)]
    for n in (1, 3, 7):
        chosen = select_examples(examples, n, seed=0)
        assert len(chosen) == n
        labels = [examples[i].label for i, _ in chosen]
        assert abs(labels.count(0) - labels.count(1)) <= 1
        assert all(examples[i] == ex for i, ex in chosen)


def test_examples_are_numbered_by_token_count(bench_model):
    model, tokenizer = bench_model
    test = _examples(12)
    config = _fast(n=7, batch_size=3)
    result = run_benchmark(model, tokenizer, test, config, show_progress=False)
    counts = []
    for info in result.examples:
        text = test[info["test_index"]].text
        expected = len(tokenizer(text, truncation=True, max_length=256)["input_ids"])
        assert info["n_tokens"] == expected
        counts.append(expected)
    assert [i["example"] for i in result.examples] == list(range(7))
    assert counts == sorted(counts)


def test_examples_carry_prediction_probability_and_accuracy(bench_model):
    model, tokenizer = bench_model
    test = _examples(12, seed=1)
    result = run_benchmark(
        model, tokenizer, test, _fast(n=8, html_examples=3), show_progress=False
    )
    for info in result.examples:
        enc = tokenizer(test[info["test_index"]].text, return_tensors="pt")
        with torch.no_grad():
            probs = torch.softmax(model(**enc).logits[0], -1)
        assert info["prediction"] == int(probs.argmax())
        assert info["probability"] == pytest.approx(float(probs.max()), abs=1e-5)
        assert info["label"] == test[info["test_index"]].label
        assert info["correct"] == (info["prediction"] == info["label"])
    correct = [i["prediction"] == i["label"] for i in result.examples]
    assert not all(correct)  # the check below means something
    assert result.meta["bench_accuracy"] == pytest.approx(np.mean(correct))
    # heat maps for the first html_examples examples, wherever they sit
    assert sorted(i["example"] for i in result.examples if "tokens" in i) == [0, 1, 2]


def test_seconds_are_per_example_of_the_batch(bench_model, monkeypatch):
    model, tokenizer = bench_model

    now = [0.0]

    def perf_counter() -> float:  # one second between any two readings
        now[0] += 1.0
        return now[0]

    monkeypatch.setattr(runner.time, "perf_counter", perf_counter)
    config = _fast(n=7, batch_size=3, skip_metrics=list(runner.METRIC_GROUPS))
    result = run_benchmark(model, tokenizer, _examples(12), config, show_progress=False)
    sizes = [3, 3, 3, 3, 3, 3, 1]  # batches of 3, 3 and 1 examples
    for info, size in zip(result.examples, sizes):
        assert info["seconds"] == {m: pytest.approx(1.0 / size) for m in config.methods}


def test_shards_of_two_ranks_merge_into_the_single_process_result(
    bench_model, monkeypatch
):
    # torchrun without processes: rank 1's gather is kept and handed to
    # rank 0's, as dist.gather_object does
    import torch.distributed as dist

    model, tokenizer = bench_model
    test = _examples(16, seed=2)
    config = _fast(n=8, batch_size=2)
    single = run_benchmark(model, tokenizer, test, config, show_progress=False)
    parts: Dict[int, Any] = {}

    def gather_object(obj, gathered=None, dst=0):
        if gathered is None:
            parts[1] = obj
        else:
            gathered[0], gathered[1] = obj, parts[1]

    monkeypatch.setattr(dist, "gather_object", gather_object)
    kw = dict(world_size=2, show_progress=False)
    assert run_benchmark(model, tokenizer, test, config, rank=1, **kw) is None
    merged = run_benchmark(model, tokenizer, test, config, rank=0, **kw)
    assert _no_time(merged) == _no_time(single)
    # method-major, then example, as documented for results.csv readers
    keys = [(config.methods.index(r["method"]), r["example"]) for r in merged.rows]
    assert keys == sorted(keys)


def test_resume_does_not_reuse_a_batch_of_other_settings(bench_model, tmp_path):
    model, tokenizer = bench_model
    test = _examples(8, seed=3)
    ck = tmp_path / "ck"
    eraser = _fast(n=4, methods=["random"], skip_metrics=["erasure", "minimal",
                   "infidelity", "sensitivity"])  # fmt: skip
    run_benchmark(model, tokenizer, test, eraser, show_progress=False, checkpoint=ck)
    ferret = _fast(**dict(eraser.to_dict(), fractions="ferret"))
    result = run_benchmark(
        model, tokenizer, test, ferret, show_progress=False, checkpoint=ck,
        resume=True,
    )  # fmt: skip
    assert result.meta["resumed_batches"] == 0
    assert "necessity@1" in {r["metric"] for r in result.rows}
    again = run_benchmark(
        model, tokenizer, test, ferret, show_progress=False, checkpoint=ck,
        resume=True,
    )  # fmt: skip
    assert again.meta["resumed_batches"] == 2


# ----------------------------------------------------------------------------
# methods: each registered method is the configuration its description names


#: name -> (class, layer, query, weighting, constructor options), read from
#: the methods' descriptions (last layer and [CLS] row unless said otherwise)
WIRING = {
    "efficient": ("EfficientAttention", -1, None, "none", {}),
    "effective": ("EffectiveAttention", -1, None, "none", {}),
    "attention": ("AttentionWeights", -1, None, "none", {}),
    "rollout": ("AttentionRollout", "rollout", None, "none", {}),
    "efficient-grad": ("EfficientAttention", -1, None, "gradient", {}),
    "effective-grad": ("EffectiveAttention", -1, None, "gradient", {}),
    "attention-grad": ("AttentionWeights", -1, None, "gradient", {}),
    "efficient-valuenorm": ("EfficientAttention", -1, None, "value_norm", {}),
    "attention-valuenorm": ("AttentionWeights", -1, None, "value_norm", {}),
    "efficient-grad-mean": ("EfficientAttention", "mean", None, "gradient", {}),
    "attention-grad-rollout": (
        "AttentionWeights", "gradient_rollout", None, "none", {}
    ),  # fmt: skip
    "efficient-sparse": ("EfficientAttention", -1, None, "none",
                         {"objective": "sparse"}),  # fmt: skip
    "efficient-sparse-grad": ("EfficientAttention", -1, None, "gradient",
                              {"objective": "sparse"}),  # fmt: skip
    "efficient-grad-first": ("EfficientAttention", 0, "all", "gradient", {}),
    "attention-grad-first": ("AttentionWeights", 0, "all", "gradient", {}),
    "attention-grad-all": ("AttentionWeights", "mean", "all", "gradient", {}),
    "efficient-grad-all": ("EfficientAttention", "mean", "all", "gradient", {}),
    "efficient-rollout": ("EfficientAttention", "rollout", None, "none", {}),
    "efficient-grad-rollout": (
        "EfficientAttention", "gradient_rollout", None, "none", {}
    ),  # fmt: skip
}


@pytest.fixture(scope="module")
def wiring_batch():
    from effattn_testing import make_tiny_model

    model = make_tiny_model("bert", seed=0)

    def forward(ids, mask):
        return model(input_ids=ids, attention_mask=mask).logits

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 120, (2, 16), generator=g)  # 16 tokens > d_h + 1 = 9
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    ids[:, 0] = 2
    ids[0, 15], ids[1, 11] = 3, 3
    ids = ids * mask
    special = (ids == 2) | (ids == 3)
    with torch.no_grad():
        target = forward(ids, mask).argmax(-1)
    ctx = dict(special_tokens_mask=special, pad_token_id=0, mask_token_id=4, seed=0)
    return model, forward, ids, mask, target, ctx


@pytest.mark.parametrize("name", sorted(WIRING))
def test_attention_method_is_the_documented_configuration(wiring_batch, name):
    import captum_effattn

    model, forward, ids, mask, target, ctx = wiring_batch
    cls, layer, query, weighting, options = WIRING[name]
    assert METHODS[name].family == "attention"
    got = attribute(name, model, forward, ids, mask, target, **ctx)
    explainer = getattr(captum_effattn, cls)(forward, model=model, **options)
    want = explainer.attribute(
        ids, target=target, additional_forward_args=(mask,), layer=layer,
        weighting=weighting, query=query,
    )  # fmt: skip
    torch.testing.assert_close(got, want.to(got.dtype) * mask, rtol=1e-5, atol=1e-7)


def test_every_attention_method_is_checked():
    assert set(WIRING) == {n for n, s in METHODS.items() if s.family == "attention"}


def test_ig_is_captum_lig_from_the_pad_baseline_with_the_steps_asked(
    wiring_batch, monkeypatch
):
    from captum.attr import LayerIntegratedGradients

    model, forward, ids, mask, target, ctx = wiring_batch
    steps: List[int] = []
    real = LayerIntegratedGradients.attribute

    def spy(self, *args, **kwargs):
        steps.append(kwargs.get("n_steps"))
        return real(self, *args, **kwargs)

    with monkeypatch.context() as patched:  # not the conftest's settings
        patched.setattr(LayerIntegratedGradients, "attribute", spy)
        got = attribute("ig", model, forward, ids, mask, target, **ctx, ig_steps=3)
    assert steps == [3]  # --ig-steps reaches Captum
    # [PAD] (id 0) at content tokens; special tokens and padding unchanged
    baseline = ids.clone()
    baseline[(mask == 1) & ~ctx["special_tokens_mask"]] = 0
    lig = LayerIntegratedGradients(forward, model.bert.embeddings)
    want = lig.attribute(
        ids, baselines=baseline, target=target, additional_forward_args=(mask,),
        n_steps=3,
    ).sum(-1)  # fmt: skip
    assert bool((want < 0).any())  # signed scores
    torch.testing.assert_close(got, want.to(got.dtype) * mask, rtol=1e-4, atol=1e-6)


def test_the_expensive_methods_are_the_documented_ones():
    # runner's docstring: sensitivity is skipped for these unless asked for
    assert {n for n, s in METHODS.items() if s.expensive} == {
        "ig",
        "lime",
        "ablation",
        "efficient-grad-all",
        "efficient-rollout",
        "efficient-grad-rollout",
    }
