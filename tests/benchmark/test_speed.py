r"""``benchmarks/speed.py``'s floor row: one direct solve per row on the final
support must give the solver's answer, or the floor would time the wrong
computation. (The timings themselves are not tested.)"""

from __future__ import annotations

import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from effattn_testing import random_batch

from captum_effattn import efficient_attention

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "speed.py"


@pytest.fixture(scope="module")
def speed() -> SimpleNamespace:
    # as `captum-effattn speed` loads it
    return SimpleNamespace(**runpy.run_path(str(SCRIPT), run_name="speed_under_test"))


def _check_floor_solves(speed, model, ids, mask, min_solved: float) -> None:
    want = efficient_attention(model, ids, mask)  # (L, B, H, n, n)
    problems = speed.support_problems(model, ids, mask, want)
    got = speed.solve_on_supports(problems)
    assert len(got) == want.shape[0]
    b, h, n = want.shape[1], want.shape[2], want.shape[3]
    solved_rows = 0
    for layer, (x, ok) in enumerate(got):
        x = x.reshape(b, h, n, n)
        ok = ok.reshape(b, h, n)
        solved_rows += int(ok.sum())
        # padded query rows are zero in the answer; the floor solves them anyway
        real = ok & mask.bool()[:, None, :]
        assert torch.allclose(x[real], want[layer][real], atol=1e-9, rtol=0)
    assert solved_rows >= min_solved * want[:, :, :, :, 0].numel()


def test_floor_solves_give_the_answer_tiny(speed, tiny_model):
    model = tiny_model("bert")
    ids, mask = random_batch(2, 24, lengths=[24, 17])
    _check_floor_solves(speed, model, ids, mask, min_solved=0.5)


@pytest.mark.slow
def test_floor_solves_give_the_answer_real(speed, minilm, real_batch):
    model, _ = minilm
    ids, mask = real_batch
    _check_floor_solves(speed, model, ids[:1, :64], mask[:1, :64], 0.9)


def test_floor_row_times_the_factorisations(speed, tiny_model):
    model = tiny_model("bert")
    ids, mask = random_batch(2, 24, lengths=[24, 17])
    want = efficient_attention(model, ids, mask)
    row = speed._time_support_solve(model, ids, mask, want, torch.device("cpu"), 1)
    layers, b, h, n = want.shape[:4]
    assert row.examples == b
    assert row.extra["rows"] == layers * b * h * n
    assert row.extra["cholesky_float64"] > 0 and row.extra["cholesky_float32"] > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--scaling", "abc"], "expected an integer"),
        (["--memory", "foo"], "LENGTHxBATCH"),
        (["--memory", "512x0"], "must be at least 1"),
        (["--length", "1"], "must lie in [3, 512]"),
        (["--docs", "0"], "must be at least 1"),
        (["--repeat", "0"], "must be at least 1"),
        (["--batches", "16,0"], "must be at least 1"),
        (["--batches", ","], "expected sizes"),
        (["--causal", "1"], "must lie in [2, 4096]"),
        (["--causal", "64,x"], "expected an integer"),
    ],
)
def test_bad_arguments_are_usage_errors(speed, capsys, args, message):
    # they once ended in tracebacks mid-run, or (0 documents) ran
    with pytest.raises(SystemExit) as exc:
        speed.build_parser().parse_args(args)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def _rows(speed) -> list:
    # the rows _report needs, with made-up times
    names = ["forward", "EfficientAttention.attribute", "efficient_attention"]
    names += ["LayerIntegratedGradients", "Lime"]
    return [speed.Row(name, "", float(i + 1), 1) for i, name in enumerate(names)]


def test_batch_growth_table(speed, minilm):
    # --batches: per-example times at each batch size, all rows only up to
    # --batch-full-max, and a table in the report
    model, tokenizer = minilm
    args = speed.build_parser().parse_args(
        ["--batches", "1,2", "--batch-full-max", "1", "--length", "16", "--repeat", "1"]
    )
    rows = speed._batch_growth(
        model, tokenizer, [1, 2], args, torch.device("cpu"), lambda text: None
    )
    assert [r["batch"] for r in rows] == [1, 2]
    assert "full" in rows[0] and rows[0]["certificate_ok"] and "full" not in rows[1]
    assert all(r["forward"] > 0 and r["attribute"] > 0 for r in rows)
    table = _rows(speed)
    text = speed._report(table, [], [], args, torch.device("cpu"), 16, rows)
    assert "## Growth with the batch size (per example, 16 tokens)" in text
    assert "| 2 |" in text and "not run" in text


def test_causal_table_in_a_fresh_process(speed):
    # --causal: all rows of a random GPT-2 layer, timed in a child process
    # with its peak memory, and a table in the report
    args = speed.build_parser().parse_args(["--causal", "24", "--threads", "1"])
    logged = []
    (res,) = speed._causal([24], args, logged.append)
    assert "error" not in res, res
    assert res["length"] == 24 and res["seconds"] > 0
    assert res["peak_rss"] >= res["rss_before"] > 0
    assert res["certificate_ok"] is True and res["max_iterations"] >= 0
    assert "causal n=24" in logged[0]
    table = _rows(speed)
    failed = {"length": 4096, "error": "killed"}
    on_gpu = dict(res, length=48, peak_cuda_delta=2**29)  # as CUDA reports it
    text = speed._report(
        table, [], [], args, torch.device("cpu"), 16, causal=[res, failed, on_gpu]
    )
    assert "## A decoder layer: all rows" in text
    assert "| 24 |" in text and "| 4096 | failed |" in text
    assert "(GPU peak +0.50 GiB)" in text.split("| 48 |")[1].splitlines()[0]


def test_verdicts_use_the_right_quantities_and_failures_fail(speed):
    # the 4 GiB verdict read the host RSS on a GPU, fell back to a smaller
    # configuration when the target's failed, and the script exited 0 on a
    # failed child or certificate; the full matrices were compared with a
    # forward pass on another batch
    args = speed.build_parser().parse_args([])
    rows = _rows(speed)  # forward 1, attribute 2, all rows 3, LIG 4, Lime 5
    rows[2].extra.update(forward_per_example=0.5, certificate_ok=True)
    base = dict(rss_before=2**29, peak_rss=2**30, peak_rss_delta=2**29,
                seconds=1.0, output_bytes=2**28, certificate_ok=True)  # fmt: skip
    small = dict(base, length=512, batch=1)
    on_gpu = dict(base, length=512, batch=8, peak_cuda=9 * 2**30, peak_cuda_delta=0)
    text = speed._report(rows, [], [small, on_gpu], args, torch.device("cpu"), 16)
    assert "GPU peak allocated: 9.00 GiB — MISSED" in text
    assert "all rows ≤ 5× forward (on the same batch): measured 6.00×" in text
    assert speed._failures(rows, [small, on_gpu], []) == []
    killed = dict(length=512, batch=8, error="Killed")
    text = speed._report(rows, [], [small, killed], args, torch.device("cpu"), 16)
    assert "512 tokens × batch 8 within 4 GiB: NOT MEASURED" in text
    assert "batch 1 within" not in text
    assert speed._failures(rows, [small, killed], [])
    rows[2].extra["certificate_ok"] = False
    assert any("certificate" in p for p in speed._failures(rows, [], []))


def test_faithful_mode_is_timed_in_the_benchmarks_batches(
    speed, tiny_model, monkeypatch
):
    # the faithful mode was timed one example per call while the benchmark
    # calls each method on batches of its --batch-size (8 by default)
    from captum_effattn import AttentionWeights, EfficientAttention
    from captum_effattn.benchmark.runner import BenchConfig

    model = tiny_model("bert")
    ids, mask = random_batch(5, 12, lengths=[12, 9, 12, 7, 12])
    args = speed.build_parser().parse_args(["--faithful-docs", "5"])
    assert args.faithful_batch is None  # main() fills in the benchmark's size
    assert speed._bench_batch_size() == BenchConfig.batch_size == 8
    args.faithful_batch = 2
    seen = []
    for cls in (EfficientAttention, AttentionWeights):

        def spy(self, inputs, *a, _original=cls.attribute, **kw):
            seen.append(inputs.shape[0])
            return _original(self, inputs, *a, **kw)

        monkeypatch.setattr(cls, "attribute", spy)
    rows = speed._time_faithful(
        model, speed._forward_func(model), ids, mask, args, torch.device("cpu"),
        lambda text: None,
    )  # fmt: skip
    # three variants, each timed after a warm-up run: 2 runs of 2, 2 and 1
    assert seen == [2, 2, 1] * 6
    assert len(rows) == 3
    assert all(r.examples == 5 and r.extra["batch"] == 2 for r in rows)
    assert all(r.setting.endswith("batches of 2") for r in rows)
