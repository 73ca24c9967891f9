r"""Report details that once misled: ties in the best mean, times lost when
no metric was computed, ratios in scientific notation, heat maps that took
content tokens spelled like "[UNK]" for special tokens, and CSV data whose
labels pandas read as missing values or that a model numbers differently."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest

from captum_effattn.benchmark.data import Example, load_dataset
from captum_effattn.benchmark.methods import METHODS
from captum_effattn.benchmark.report import (
    PLOT_DPI,
    _examples_html,
    _fmt_ratio,
    _markdown,
    _method_colors,
    summarize,
)
from captum_effattn.benchmark.runner import BenchConfig, BenchResult


def _result(values, seconds, metrics=("necessity",)):
    r"""A BenchResult of two examples: ``values[method]`` per example."""
    methods = list(seconds)
    rows = [
        dict(example=e, test_index=e, method=m, metric=metric, value=v,
             label=0, prediction=0, n_tokens=5, seconds=seconds[m])
        for m in methods for metric in metrics
        for e, v in enumerate(values.get(m, []))
    ]  # fmt: skip
    examples = [
        dict(example=e, test_index=e, label=0, prediction=0, correct=True,
             n_tokens=5, probability=0.9, seconds=dict(seconds),
             tokens=["[CLS]", "[UNK]", "[MASK]", "film", "[SEP]"],
             special=[True, False, False, False, True],
             scores={m: [0.5, 0.9, 0.1, 0.2, 0.5] for m in methods})
        for e in range(2)
    ]  # fmt: skip
    config = BenchConfig(dataset="rt-verdict", n=2, methods=methods)
    return BenchResult(config=config, rows=rows, examples=examples, meta={"n": 2})


def _bold_methods(table: str, column: int) -> set:
    out = set()
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells and cells[0].startswith("`") and cells[column].startswith("**"):
            out.add(cells[0].strip("`"))
    return out


def test_ties_are_all_bold():
    result = _result(
        {"efficient": [0.1, 0.3], "attention": [0.1, 0.3], "random": [0.0, 0.1]},
        {"efficient": 0.5, "attention": 0.1, "random": 0.01},
    )
    table = _markdown(summarize(result, n_boot=50))
    assert _bold_methods(table, 1) == {"efficient", "attention"}
    # apart by rounding alone (efficient and raw attention of short texts),
    # as printed they tie: both bold, not the one a 1e-8 favours
    result = _result(
        {"efficient": [0.1, 0.3 + 2e-8], "attention": [0.1, 0.3], "random": [0.0, 0.1]},
        {"efficient": 0.5, "attention": 0.1, "random": 0.01},
    )
    table = _markdown(summarize(result, n_boot=50))
    assert _bold_methods(table, 1) == {"efficient", "attention"}


def test_times_survive_when_no_metric_is_computed():
    seconds = {"efficient": 0.5, "lime": 168.5}
    summary = summarize(_result({}, seconds), n_boot=10)
    for name, sec in seconds.items():
        assert summary["methods"][name]["seconds_per_example"] == pytest.approx(sec)
    assert summary["methods"]["lime"]["time_ratio_to_efficient"] == pytest.approx(337)
    table = _markdown(summary)
    assert "| 337 |" in table and "e+" not in table


@pytest.mark.parametrize(
    "ratio, text",
    [(337.0, "337"), (1234.5, "1,234"), (12.4, "12"), (1.26, "1.3"), (0.048, "0.048"),
     (0.0002, "2.0e-04")],
)  # fmt: skip
def test_ratio_format(ratio, text):
    assert _fmt_ratio(ratio) == text


def test_heat_map_uses_the_tokenizers_special_mask():
    result = _result({"efficient": [0.1, 0.2]}, {"efficient": 0.5})
    page = _examples_html(result, summarize(result, n_boot=10))
    spans = re.findall(r'<span class="([^"]*)"[^>]*>([^<]*)</span>', page)
    classes = {text: cls for cls, text in spans}
    assert classes["[CLS]"].endswith(" s") and classes["[SEP]"].endswith(" s")
    # an [UNK] or a literal "[MASK]" typed in the text is content
    assert not classes["[UNK]"].endswith(" s")
    assert not classes["[MASK]"].endswith(" s")
    # the colour scale comes from the content tokens: [UNK] (0.9) is the
    # strongest, at full opacity
    unk = re.search(r'style="background:rgba\([^)]*\)"[^>]*>\[UNK\]', page)
    assert unk and "1.000)" in unk.group(0)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_keeps_none_and_na_as_data(tmp_path):
    rows = ["text,label"]
    for i in range(30):
        rows.append(f"review {i},{['Positive', 'Negative', 'None'][i % 3]}")
    rows += ["NA,Positive", "null,Negative"]
    splits = load_dataset(f"csv:{_write(tmp_path / 'na.csv', chr(10).join(rows))}")
    assert splits.label_names == ["Negative", "None", "Positive"]
    texts = {e.text for e in splits.train + splits.test}
    assert len(texts) == 32 and {"NA", "null"} <= texts


def test_csv_numeric_labels_with_an_empty_cell(tmp_path):
    body = "text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(20)) + "x,\n"
    with pytest.warns(UserWarning, match="dropped 1"):
        splits = load_dataset(f"csv:{_write(tmp_path / 'num.csv', body)}")
    assert splits.label_names == ["0", "1"]


def test_labels_aligned_to_the_models_numbering(tmp_path):
    body = "text,label\n" + "".join(
        f"t{i},{['fresh', 'rotten'][i % 2]}\n" for i in range(20)
    )
    splits = load_dataset(f"csv:{_write(tmp_path / 'fr.csv', body)}")
    assert splits.label_names == ["fresh", "rotten"]
    aligned = splits.aligned_to({0: "rotten", 1: "fresh"})
    assert aligned.label_names == ["rotten", "fresh"]
    name = {e.text: splits.label_names[e.label] for e in splits.test}
    assert all(aligned.label_names[e.label] == name[e.text] for e in aligned.test)
    assert [e.text for e in aligned.test] == [e.text for e in splits.test]
    # generic names or other names: unchanged
    assert splits.aligned_to({0: "LABEL_0", 1: "LABEL_1"}) is splits
    assert splits.aligned_to({0: "Fresh", 1: "Rotten"}) is splits
    assert isinstance(aligned.test[0], Example)


def test_csv_labels_that_only_look_alike_stay_apart(tmp_path):
    body = "text,label\n" + "".join(f"t{i},{['7', '07'][i % 2]}\n" for i in range(20))
    body += "x,\n"
    with pytest.warns(UserWarning, match="dropped 1"):
        splits = load_dataset(f"csv:{_write(tmp_path / 'z.csv', body)}")
    assert splits.label_names == ["07", "7"]


def test_bold_skips_a_mean_over_fewer_examples():
    # attention-grad-all had no minimal set on one example (NaN) and its mean
    # over the others was bold, ahead of ig's mean over every example
    result = _result(
        {"ig": [0.06, 0.08], "attention-grad-all": [0.05, float("nan")]},
        {"ig": 7.0, "attention-grad-all": 0.6},
        metrics=("minimal_necessary",),
    )
    summary = summarize(result, n_boot=50)
    assert (
        summary["methods"]["attention-grad-all"]["metrics"]["minimal_necessary"]["n"]
        == 1
    )
    table = _markdown(summary)
    assert _bold_methods(table, 1) == {"ig"}
    assert "n < N where no k flips it" in table


def test_every_method_has_its_own_plot_colour():
    # tab20 alone drew random (the 21st default method) in efficient's colour
    names = list(METHODS)
    assert len(names) > 20
    colors = _method_colors(names)
    assert len({tuple(c) for c in colors.values()}) == len(names)


def test_scatter_labels_do_not_overlap():
    # the faithfulness-vs-time plot once printed 21 names on top of each
    # other (effective, attention, efficient at almost the same point)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from captum_effattn.benchmark.report import _label_points

    names = [f"method-{i}" for i in range(12)] + ["random", "ig"]
    xs = [0.03 + 0.002 * i for i in range(12)] + [1e-4, 7.0]
    ys = [0.10 + 0.004 * (i % 4) for i in range(12)] + [0.05, 0.39]
    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=PLOT_DPI)
    ax.plot(xs, ys, "o")
    ax.set_xscale("log")
    points = list(zip(xs, ys, names))
    _label_points(ax, points)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in ax.texts if t.get_text() in names]
    assert sorted(t.get_text() for t in texts) == sorted(names)
    # the names' own boxes (an annotation's extent includes its leader line)
    boxes = [matplotlib.text.Text.get_window_extent(t, renderer) for t in texts]
    frame = ax.get_window_extent(renderer)
    for i, a in enumerate(boxes):
        assert frame.x0 <= a.x0 and a.x1 <= frame.x1 + 1e-6
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b), (a, b)
    # a name beside an isolated point stays there, without a leader line
    random = texts[names.index("random")]
    assert random.arrow_patch is None
    plt.close(fig)


def test_plots_are_saved_at_the_resolution_they_are_laid_out_at(tmp_path, monkeypatch):
    # the names were placed in pixels of a 100-dpi figure saved at 120 dpi:
    # 20% larger than their places, they overlapped in the file
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from captum_effattn.benchmark.report import _plots

    saved = []
    original = Figure.savefig

    def savefig(fig, path, *args, **kwargs):
        saved.append((Path(path).name, fig.dpi, kwargs.get("dpi", fig.dpi)))
        return original(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    result = _result(
        {"efficient": [0.1, 0.3], "attention": [0.1, 0.3], "random": [0.0, 0.1]},
        {"efficient": 0.5, "attention": 0.1, "random": 0.01},
        metrics=("necessity", "aopc_necessity"),
    )
    _plots(summarize(result, n_boot=10), tmp_path)
    assert {name for name, _, _ in saved} == {
        "aopc_curves.png",
        "faithfulness_vs_time.png",
    }
    assert all(laid_out == written == PLOT_DPI for _, laid_out, written in saved)


@pytest.mark.parametrize(
    "tokens, words",
    [
        (["[CLS]", "a", "##b", "c", "[SEP]"], ["[CLS]", "a", "b", "c", "[SEP]"]),
        (["<s>", "A", "\u0120good", "\u0120fil", "m", "</s>"], None),
        (["<s>", "\u2581A", "\u2581good", "\u2581fil", "m", "</s>"], None),
    ],
)
def test_heat_map_joins_the_pieces_of_a_word(tokens, words):
    # WordPiece marks continuations (##), byte-level BPE (Ġ) and
    # SentencePiece (▁) mark word starts: each shows its words unmarked
    from captum_effattn.benchmark.report import _token_html

    special = [t.startswith(("[", "<")) for t in tokens]
    page = _token_html(tokens, [0.5] * len(tokens), special)
    spans = re.findall(r'<span class="([^"]*)"[^>]*>([^<]*)</span>', page)
    shown = [html.unescape(text) for _, text in spans]
    if words is None:
        words = ["<s>", "A", "good", "fil", "m", "</s>"]
    assert shown == words
    joined = [text for cls, text in spans if " c" in cls]
    assert joined == (["b"] if tokens[0] == "[CLS]" else ["m"])


def test_heat_map_decodes_byte_level_tokens():
    # GPT-2, RoBERTa and Qwen2 tokens spell each byte as a character: the
    # heat map showed "café" as "cafÃ©"
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    from captum_effattn.benchmark.report import _token_html
    from captum_effattn.benchmark.runner import _display_tokens

    text = "a café in Zürich — naïve film"
    bpe = ByteLevelBPETokenizer()
    special = ["<s>", "</s>"]
    bpe.train_from_iterator([text] * 20, 300, 1, special_tokens=special)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>"
    )
    tokens = ["<s>"] + tokenizer.tokenize(text) + ["</s>"]
    assert any("Ã" in t for t in tokens)  # the byte alphabet
    shown = _display_tokens(tokenizer, tokens)
    assert len(shown) == len(tokens)
    page = _token_html(
        shown, [0.5] * len(shown), [True] + [False] * (len(shown) - 2) + [True]
    )
    pieces = [html.unescape(t) for t in re.findall(r">([^<]*)</span>", page)]
    words = " ".join(pieces[1:-1])
    for word in ("café", "Zürich", "—", "naïve"):
        assert word in words
    assert "Ã" not in words
    # a text of one word has no word-start marker, and is decoded too
    assert _display_tokens(tokenizer, tokenizer.tokenize("café")) != tokenizer.tokenize(
        "café"
    )
    assert "".join(_display_tokens(tokenizer, tokenizer.tokenize("café"))) == "café"
    # a character whose bytes two tokens share is shown whole, by the token
    # that completes it (not as two replacement characters)
    split = ["\u0120na", "\u00c3", "\u00afve"]  # "naïve", its ï split
    assert _display_tokens(tokenizer, split) == ["\u0120na", "", "\u00efve"]
    # WordPiece tokens are readable as they are: unchanged
    from transformers import AutoTokenizer

    from captum_effattn.benchmark.models import minilm_path

    bert = AutoTokenizer.from_pretrained(minilm_path())
    wordpiece = bert.tokenize("unbelievably good") + ["[SEP]"]
    assert _display_tokens(bert, wordpiece) is wordpiece
