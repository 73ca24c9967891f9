r"""Run attribution methods on test examples and score them with the
faithfulness metrics of :mod:`captum_effattn.metrics` and Captum.

For each method and each of ``n`` test examples (a seeded, label-balanced
choice) the runner times the attribution (``time.perf_counter``, CUDA
synchronised) and computes, against the class the model predicts:

=====================  ===========================================  ========
metric                 what                                         better
=====================  ===========================================  ========
``sufficiency``        ERASER sufficiency, top 20% kept (delete)    lower
``necessity``          ERASER comprehensiveness, top 20% deleted    higher
``aopc_sufficiency``   mean sufficiency over the fractions          lower
``aopc_necessity``     mean necessity over the fractions            higher
``sufficiency@f``      the AOPC curves, one value per fraction f    --
``necessity@f``
``minimal_necessary``  share of content tokens to delete (in rank   lower
                       order) before the prediction flips
``minimal_sufficient`` share of top tokens that alone keep it       lower
``infidelity``         Captum ``infidelity`` (normalised) with      lower
                       token perturbations ([MASK] 20% of tokens)
``sensitivity``        Captum ``sensitivity_max``: relative change  lower
                       of the explanation when 1 token is replaced
=====================  ===========================================  ========

Costs, per example and method, in forward passes F of the model: the erasure
metrics need 2 x (1 + fractions) F (batched), the minimal sets about
2 log2(N) F (binary search, one example at a time), ``infidelity``
``infidelity_samples`` F; and
``sensitivity`` re-runs the *method* ``1 + sensitivity_samples`` times, which
is cheap for attention but would cost 4 x 500 F for ``lime`` and 4 x 50 F+B
for ``ig`` with the default 3 samples: it is therefore computed only for the
methods that are not marked ``expensive`` in the registry (``ig``, ``lime``,
``ablation``, ``efficient-grad-all`` and the efficient rollouts) unless
``sensitivity_all=True`` (``--sensitivity-all``). Skip groups with
``skip_metrics`` (``"sensitivity"``, ``"infidelity"``, ``"minimal"``,
``"aopc"``, ``"erasure"``).

Determinism: the example choice, the batches, Lime's samples and the metric
perturbations all derive from ``seed``, so the same seed gives the same
``results.csv`` (timings aside). The metric perturbations are seeded per
document (by its index in the test split), so a document's ``infidelity`` and
``sensitivity`` do not depend on the batch size or on which documents share
its batch; a method's own randomness (Lime's samples) is seeded per batch and
method. Batches are formed before they are shared out, so a multi-process
run (``torchrun``) computes exactly the batches of a single-process run.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from captum_effattn._core.adapters import check_device, embedding_rows, unwrap_model
from captum_effattn._core.functional import check_vocabulary
from captum_effattn.benchmark.data import Example
from captum_effattn.benchmark.methods import METHODS, attribute

__all__ = [
    "BenchConfig",
    "BenchResult",
    "MetricSpec",
    "METRICS",
    "METRIC_GROUPS",
    "select_examples",
    "run_benchmark",
    "init_distributed",
    "resolve_device",
]


@dataclass(frozen=True)
class MetricSpec:
    r"""Metadata of a reported metric (ferret style), for generic tables.

    Args:
        name (str): the name in ``results.csv``.
        label (str): a readable name.
        group (str): the ``--skip-metrics`` group that computes it.
        higher_is_better (bool): the direction of "better".
        value_range (tuple): the range of values.
        description (str): one line.
    """

    name: str
    label: str
    group: str
    higher_is_better: bool
    value_range: Tuple[float, float]
    description: str


_INF = float("inf")
METRICS: Dict[str, MetricSpec] = {
    m.name: m
    for m in (
        MetricSpec(
            "sufficiency",
            "Sufficiency@0.2",
            "erasure",
            False,
            (-1.0, 1.0),
            "p(x)_y - p(top 20% only)_y",
        ),
        MetricSpec(
            "necessity",
            "Necessity@0.2",
            "erasure",
            True,
            (-1.0, 1.0),
            "p(x)_y - p(x without top 20%)_y (ERASER comprehensiveness)",
        ),
        MetricSpec(
            "aopc_sufficiency",
            "AOPC sufficiency",
            "aopc",
            False,
            (-1.0, 1.0),
            "mean sufficiency over the fractions",
        ),
        MetricSpec(
            "aopc_necessity",
            "AOPC necessity",
            "aopc",
            True,
            (-1.0, 1.0),
            "mean necessity over the fractions",
        ),
        MetricSpec(
            "minimal_necessary",
            "Minimal necessary",
            "minimal",
            False,
            (0.0, 1.0),
            "share of content tokens to delete before the prediction flips",
        ),
        MetricSpec(
            "minimal_sufficient",
            "Minimal sufficient",
            "minimal",
            False,
            (0.0, 1.0),
            "share of top tokens that alone keep the prediction",
        ),
        MetricSpec(
            "infidelity",
            "Infidelity",
            "infidelity",
            False,
            (0.0, _INF),
            "Captum infidelity (normalised) with token perturbations",
        ),
        MetricSpec(
            "sensitivity",
            "Sensitivity",
            "sensitivity",
            False,
            (0.0, _INF),
            "Captum sensitivity_max with one replaced token",
        ),
    )
}
#: Groups accepted by ``skip_metrics``.
METRIC_GROUPS: Tuple[str, ...] = (
    "erasure",
    "aopc",
    "minimal",
    "infidelity",
    "sensitivity",
)
#: Fraction of the single-fraction sufficiency / necessity.
ERASURE_FRACTION = 0.2


@dataclass
class BenchConfig:
    r"""Settings of a benchmark run (everything that changes the numbers).

    Args:
        dataset (str): the data set name.
        n (int): number of test examples.
        methods (list of str): method names (keys of
                    :data:`~captum_effattn.benchmark.methods.METHODS`).
        seed (int): seed of the split, the example choice and every random
                    draw. Default: 0
        max_length (int): inputs are truncated to this many tokens.
                    Default: 256
        batch_size (int): examples per batch. Default: 8
        fractions (str): AOPC fractions, ``"eraser"`` or ``"ferret"``.
                    Default: ``"eraser"``
        skip_metrics (list of str): metric groups not computed.
                    Default: none
        infidelity_samples (int): perturbations per example for infidelity.
                    Default: 5
        sensitivity_samples (int): perturbations per example for
                    sensitivity_max. Default: 3
        sensitivity_all (bool): also compute sensitivity for the expensive
                    methods (it re-runs them). Default: False
        html_examples (int): examples shown in ``examples.html``. Default: 4
        lime_samples (int): Lime samples per example. Default: 500
        ig_steps (int): Integrated Gradients steps. Default: 50
    """

    dataset: str
    n: int
    methods: List[str]
    seed: int = 0
    max_length: int = 256
    batch_size: int = 8
    fractions: str = "eraser"
    skip_metrics: List[str] = field(default_factory=list)
    infidelity_samples: int = 5
    sensitivity_samples: int = 3
    sensitivity_all: bool = False
    html_examples: int = 4
    lime_samples: int = 500
    ig_steps: int = 50

    def to_dict(self) -> Dict[str, Any]:
        r"""The settings as a plain dict."""
        return asdict(self)


@dataclass
class BenchResult:
    r"""What :func:`run_benchmark` returns (on rank 0: everything gathered).

    Args:
        config (BenchConfig): the settings.
        rows (list of dict): one per example x method x metric, with keys
                    ``example, test_index, method, metric, value, label,
                    prediction, n_tokens, seconds``.
        examples (list of dict): per example ``example, test_index, label,
                    prediction, correct, n_tokens``, ``seconds`` (method ->
                    seconds per example of its attribution), ``tokens`` and
                    ``special`` (the tokenizer's special-tokens mask; both
                    only for the first ``html_examples``) and ``scores``
                    (method -> list, same examples).
        meta (dict): data set, label names, model, accuracy, device,
                    processes, fractions.
    """

    config: BenchConfig
    rows: List[Dict[str, Any]]
    examples: List[Dict[str, Any]]
    meta: Dict[str, Any]


# ----------------------------------------------------------------------------
# example choice, devices, processes


def select_examples(
    examples: Sequence[Example], n: int, seed: int
) -> List[Tuple[int, Example]]:
    r"""A seeded, label-balanced choice of ``n`` examples.

    Labels take turns (in label order) drawing from their own seeded shuffle
    until ``n`` are chosen or all are used, so the choice is balanced when
    every label has enough examples.

    Args:
        examples (sequence of Example): the test split.
        n (int): how many to choose.
        seed (int): the seed.

    Returns:
        list of (index, Example): indices into ``examples``, in the order
        drawn.
    """
    rng = random.Random(seed)
    pools: Dict[int, List[int]] = {}
    for i, ex in enumerate(examples):
        pools.setdefault(ex.label, []).append(i)
    for label in sorted(pools):
        rng.shuffle(pools[label])
    chosen: List[int] = []
    while len(chosen) < min(n, len(examples)):
        for label in sorted(pools):
            if pools[label] and len(chosen) < n:
                chosen.append(pools[label].pop())
    return [(i, examples[i]) for i in chosen]


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    r"""``"auto"`` -> CUDA when available (``cuda:local_rank``), else CPU.

    Args:
        device (str): ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:K"``
                    (refused under ``torchrun`` with several processes on
                    the machine, ``LOCAL_WORLD_SIZE > 1``: they would share
                    GPU K).
        local_rank (int): this process's GPU under ``torchrun``.

    Returns:
        torch.device: the device.
    """
    requested = device
    # processes of torchrun on this machine (one a machine may name its GPU)
    here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if here > 1 and device.startswith("cuda:"):
        raise ValueError(
            f"--device {requested!r} under torchrun would put every process on "
            "one GPU: pass --device cuda (or auto), and each process takes the "
            "GPU of its LOCAL_RANK"
        )
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"--device {requested!r} is not a device: use auto, cpu, cuda or cuda:K"
        ) from None
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(
            f"--device {requested!r}: only cpu and cuda are supported (auto, cpu, "
            "cuda or cuda:K)"
        )
    if resolved.type == "cuda":
        check_device(device, "--device")  # CUDA present, and the index
        if resolved.index is None:
            resolved = check_device(f"cuda:{local_rank}", "--device")
    return resolved


def init_distributed(device: Union[str, torch.device] = "auto") -> Tuple[int, int, int]:
    r"""Join the process group when launched by ``torchrun``.

    Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; with ``WORLD_SIZE > 1``
    calls ``init_process_group`` (``nccl`` on CUDA, ``gloo`` on CPU).

    Args:
        device (str or torch.device): the requested device, which decides the
                    backend; a ``torch.device`` (from :func:`resolve_device`,
                    checked) is also the GPU this process takes, a string
                    takes ``cuda:LOCAL_RANK``.

    Returns:
        (rank, world_size, local_rank): ``(0, 1, 0)`` without ``torchrun``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            if isinstance(device, torch.device):
                use_cuda = device.type == "cuda"
                gpu: Union[int, torch.device] = device
            else:
                use_cuda = device.startswith("cuda") or (
                    device == "auto" and torch.cuda.is_available()
                )
                gpu = local
            if use_cuda:
                torch.cuda.set_device(gpu)
            # rank 0 may fine-tune for a long while before the first barrier
            dist.init_process_group(
                "nccl" if use_cuda else "gloo", timeout=timedelta(hours=3)
            )
    return rank, world, local


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seed_for(seed: int, index: int, name: str) -> int:
    return (seed * 1_000_003 + index * 7919 + zlib.crc32(name.encode())) % 2**31


# ----------------------------------------------------------------------------
# metrics of one batch


def _batch_metrics(
    name: str,
    model: torch.nn.Module,
    forward: Callable[..., Tensor],
    tokenizer: Any,
    ids: Tensor,
    mask: Tensor,
    special: Tensor,
    target: Tensor,
    attr: Tensor,
    ctx: Dict[str, Any],
    config: BenchConfig,
    batch_index: int,
    doc_index: Sequence[int],
) -> Dict[str, Tensor]:
    r"""The metrics of one method on one batch; ``doc_index`` holds the
    documents' indices in the test split, which seed their perturbations."""
    from captum_effattn.metrics import (
        aopc_necessity,
        aopc_sufficiency,
        minimal_necessary_size,
        minimal_sufficient_size,
        necessity,
        sufficiency,
        token_perturb_func,
    )

    skip = set(config.skip_metrics)
    pad = int(ctx["pad_token_id"])
    common = dict(attention_mask=mask, special_tokens_mask=special, pad_token_id=pad)
    out: Dict[str, Tensor] = {}
    with torch.no_grad():
        if "aopc" not in skip:
            suff = aopc_sufficiency(
                forward, ids, attr, target, fractions=config.fractions, **common
            )
            nec = aopc_necessity(
                forward, ids, attr, target, fractions=config.fractions, **common
            )
            out["aopc_sufficiency"] = suff.aopc
            out["aopc_necessity"] = nec.aopc
            for f, fraction in enumerate(suff.fractions.tolist()):
                out[f"sufficiency@{fraction:g}"] = suff.curve[:, f]
                out[f"necessity@{fraction:g}"] = nec.curve[:, f]
        if "erasure" not in skip:
            key = f"@{ERASURE_FRACTION:g}"
            if f"sufficiency{key}" in out:  # the same numbers, by definition
                out["sufficiency"] = out[f"sufficiency{key}"]
                out["necessity"] = out[f"necessity{key}"]
            else:
                out["sufficiency"] = sufficiency(
                    forward, ids, attr, target, fraction=ERASURE_FRACTION, **common
                )
                out["necessity"] = necessity(
                    forward, ids, attr, target, fraction=ERASURE_FRACTION, **common
                )
        if "minimal" not in skip:
            for key, fn in (
                ("minimal_necessary", minimal_necessary_size),
                ("minimal_sufficient", minimal_sufficient_size),
            ):
                _, share = fn(forward, ids, attr, target, search="binary", **common)
                out[key] = share
    # The same perturbations of a document for every method, so that their
    # infidelity and sensitivity are compared on the same perturbed inputs
    # (a seed per method once scored identical attributions 200x apart),
    # drawn per document, so that they do not depend on its batch; the
    # method's own randomness (LIME) keeps a seed per batch and method.
    seeds = [_seed_for(config.seed, i, "perturbations") for i in doc_index]
    method_seed = _seed_for(config.seed, batch_index, name)
    b = ids.shape[0]
    if "infidelity" not in skip:
        from captum.metrics import infidelity

        mode = "mask" if tokenizer.mask_token_id is not None else "pad"
        perturb = token_perturb_func(
            "infidelity",
            tokenizer=tokenizer,
            mode=mode,
            attention_mask=mask,
            special_tokens_mask=special,
            example_seeds=seeds,
        )

        def prob(ids_: Tensor, mask_: Tensor) -> Tensor:
            return torch.softmax(forward(ids_, mask_), dim=-1)

        with torch.no_grad():
            out["infidelity"] = infidelity(
                prob,
                perturb,
                ids,
                attr,
                additional_forward_args=(mask,),
                target=target,
                n_perturb_samples=config.infidelity_samples,
                max_examples_per_batch=b,  # the perturb func sees the whole batch
                normalize=True,
            )
    if "sensitivity" not in skip and (
        config.sensitivity_all or not METHODS[name].expensive
    ):
        from captum.metrics import sensitivity_max

        resample = token_perturb_func(
            "sensitivity",
            tokenizer=tokenizer,
            attention_mask=mask,
            special_tokens_mask=special,
            example_seeds=seeds,
        )

        def explain(inputs: Any, additional_forward_args: Any = None, target=None):
            x = inputs[0] if isinstance(inputs, tuple) else inputs
            m = additional_forward_args[0]
            rep = x.shape[0] // b
            rctx = dict(ctx, special_tokens_mask=special.repeat_interleave(rep, 0))
            torch.manual_seed(method_seed)
            with torch.enable_grad():  # sensitivity_max runs under no_grad
                scores = attribute(name, model, forward, x, m, target, **rctx)
            return (scores,) if isinstance(inputs, tuple) else scores

        out["sensitivity"] = sensitivity_max(
            explain,
            ids,
            perturb_func=resample,
            n_perturb_samples=config.sensitivity_samples,
            max_examples_per_batch=b,
            additional_forward_args=(mask,),
            target=target,
        )
    return {k: v.detach().float().cpu() for k, v in out.items()}


# ----------------------------------------------------------------------------
# the run


def _warm_up(
    model: torch.nn.Module,
    tokenizer: Any,
    forward: Callable[..., Tensor],
    text: str,
    config: BenchConfig,
    device: torch.device,
    pad: int,
) -> None:
    r"""Run every cheap method once, untimed, so that the first timed method
    does not pay for lazy imports and first-call allocations."""
    enc = tokenizer(
        [text],
        truncation=True,
        max_length=config.max_length,
        return_tensors="pt",
        return_special_tokens_mask=True,
    )
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    special = enc["special_tokens_mask"].to(device).bool()
    with torch.no_grad():
        target = forward(ids, mask).argmax(-1)
    for name in config.methods:
        if not METHODS[name].expensive:
            attribute(
                name, model, forward, ids, mask, target,
                special_tokens_mask=special, pad_token_id=pad, seed=config.seed,
            )  # fmt: skip
    _sync(device)


#: The word-start marker of byte-level BPE (GPT-2, RoBERTa, Qwen2), whose
#: tokens spell each byte of the text as a printable character.
_BYTE_LEVEL_SPACE = "\u0120"


def _display_tokens(tokenizer: Any, tokens: List[str]) -> List[str]:
    r"""``tokens`` as the heat map shows them: byte-level BPE tokens decoded
    from their byte alphabet ("ĠcafÃ©" is " café"), keeping the word-start
    marker in place of the space; other tokenizers' tokens are readable as
    they are and come back unchanged.

    A word is decoded piece by piece, each token showing what it adds to
    the word's text, so that a character whose bytes two tokens share is
    shown whole, by the token that completes it (``naïve`` split as
    ``Ġna``, ``Ã``, ``¯ve`` shows ``na``, nothing, ``ïve``)."""
    try:
        if tokenizer.convert_tokens_to_string([_BYTE_LEVEL_SPACE]) != " ":
            return tokens  # not byte-level BPE
        special = set(getattr(tokenizer, "all_special_tokens", ()))
        out: List[str] = []
        word: List[str] = []
        shown = ""
        for tok in tokens:
            if tok in special:
                out.append(tok)
                word, shown = [], ""
                continue
            if tok.startswith(_BYTE_LEVEL_SPACE):
                word, shown = [], ""
            word.append(tok)
            # a trailing U+FFFD is a character whose last bytes are to come
            text = tokenizer.convert_tokens_to_string(word).rstrip("\ufffd")
            piece = text[len(shown) :] if text.startswith(shown) else text
            shown = text
            if tok.startswith(_BYTE_LEVEL_SPACE) and piece.startswith(" "):
                piece = _BYTE_LEVEL_SPACE + piece[1:]
            out.append(piece)
        return out
    except Exception:  # a tokenizer that cannot decode single tokens
        return tokens


def _batches(n: int, size: int) -> List[List[int]]:
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


#: Raised whenever the way a batch's numbers are computed changes within one
#: package version, so that ``--resume`` never mixes batches of the two ways
#: (2: the metric perturbations are drawn per document, not per batch;
#: 3: ``random`` draws for the real tokens only, whatever the padding side).
CHECKPOINT_FORMAT = 3


class _Checkpoint:
    r"""The finished batches of a run, one JSON file each, keyed by
    everything that decides their numbers: the settings, a hash of the
    model's weights, the tokenizer's special ids and size, the batch's
    examples (index, text and label) and their encoding (ids, mask and
    special-token mask, which follow the tokenizer's files: vocabulary,
    padding side, truncation), the device type, the library versions and
    ``CHECKPOINT_FORMAT``. A batch
    that cannot be saved (full disk, unwritable folder) stops the saving
    with a warning, not the run."""

    def __init__(
        self,
        folder: Union[str, Path],
        config: BenchConfig,
        model: torch.nn.Module,
        device: torch.device,
        tokenizer: Any,
    ) -> None:
        import captum
        import transformers

        from captum_effattn import __version__

        self.folder = Path(folder)
        self.failed = False
        weights = hashlib.sha256()
        for name, t in unwrap_model(model).state_dict().items():
            t = t.detach().cpu().contiguous()
            weights.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            weights.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        self.base = dict(
            format=CHECKPOINT_FORMAT,
            config=config.to_dict(),
            weights=weights.hexdigest(),
            tokenizer=[
                type(tokenizer).__name__,
                len(tokenizer),
                tokenizer.pad_token_id,
                getattr(tokenizer, "mask_token_id", None),
            ],
            device=device.type,
            versions=[
                torch.__version__,
                transformers.__version__,
                captum.__version__,
                __version__,
            ],
        )

    def _key(
        self, examples: Sequence[Tuple[int, Example]], encoding: Sequence[Tensor]
    ) -> str:
        batch = [[i, ex.text, int(ex.label)] for i, ex in examples]
        enc = hashlib.sha256()
        for t in encoding:
            t = t.detach().to("cpu", torch.long).contiguous()
            enc.update(f"{tuple(t.shape)}".encode())
            enc.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        text = json.dumps(
            dict(self.base, examples=batch, encoding=enc.hexdigest()), sort_keys=True
        )
        return hashlib.sha256(text.encode()).hexdigest()

    def _path(self, batch: int) -> Path:
        return self.folder / f"batch-{batch:05d}.json"

    def load(
        self,
        batch: int,
        examples: Sequence[Tuple[int, Example]],
        encoding: Sequence[Tensor],
    ) -> Optional[Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]]:
        r"""The saved rows and example infos of ``batch``, or None when
        there are none for these settings (or the file is unreadable)."""
        try:
            data = json.loads(self._path(batch).read_text())
        except (OSError, ValueError):
            return None
        key = self._key(examples, encoding)
        if not isinstance(data, dict) or data.get("key") != key:
            return None
        return data["rows"], data["infos"]

    def save(
        self,
        batch: int,
        examples: Sequence[Tuple[int, Example]],
        encoding: Sequence[Tensor],
        rows: List[Dict[str, Any]],
        infos: List[Dict[str, Any]],
    ) -> None:
        r"""Write ``batch`` atomically (a file is complete or absent)."""
        if self.failed:
            return
        data = dict(key=self._key(examples, encoding), rows=rows, infos=infos)
        tmp = self._path(batch).with_suffix(f".tmp{os.getpid()}")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self._path(batch))
        except OSError as err:
            import warnings

            self.failed = True
            warnings.warn(
                f"cannot save finished batches in {self.folder} ({err}); the "
                "run goes on, but --resume will not be able to reuse them",
                RuntimeWarning,
                stacklevel=2,
            )


def run_benchmark(
    model: torch.nn.Module,
    tokenizer: Any,
    test: Sequence[Example],
    config: BenchConfig,
    *,
    device: torch.device = torch.device("cpu"),
    rank: int = 0,
    world_size: int = 1,
    meta: Optional[Dict[str, Any]] = None,
    show_progress: bool = True,
    checkpoint: Optional[Union[str, Path]] = None,
    resume: bool = False,
) -> Optional[BenchResult]:
    r"""Attribute, time and score every method on ``config.n`` test examples.

    The chosen examples (:func:`select_examples`) are ordered by token count
    (less padding per batch) and numbered ``0 .. n-1`` in that order; batch
    ``i`` of ``config.batch_size`` examples runs on process
    ``i % world_size``, and rank 0 gathers all rows.

    Args:
        model (torch.nn.Module): the classifier, eager attention, eval mode,
                    on ``device``.
        tokenizer: its tokenizer.
        test (sequence of Example): the test split.
        config (BenchConfig): the settings.
        device (torch.device, optional): where the model is.
                    Default: CPU
        rank (int, optional): this process. Default: 0
        world_size (int, optional): number of processes. Default: 1
        meta (dict, optional): extra metadata copied into the result (data set
                    description, held-out accuracy, ...). Default: None
        show_progress (bool, optional): tqdm bars (rank 0 only).
                    Default: True
        checkpoint (str or Path, optional): a folder where every finished
                    batch is saved (``batch-NNNNN.json``, created with the
                    first one), so that an interrupted run can be resumed.
                    Default: None (nothing saved)
        resume (bool, optional): take the batches saved in ``checkpoint`` by
                    an earlier run of the same settings, model weights,
                    examples (their texts and labels), device type and
                    library versions instead of computing them again (their
                    times are the earlier run's). The random draws are
                    seeded by the batch's index and its documents' indices,
                    so the numbers are those of an uninterrupted run.
                    Default: False

    Returns:
        BenchResult on rank 0, None on other ranks.

    Examples::

        >>> config = BenchConfig("rt-verdict", n=4, methods=["efficient", "random"])
        >>> result = run_benchmark(model, tokenizer, splits.test, config)
        >>> sorted({r["method"] for r in result.rows})
        ['efficient', 'random']
    """
    from tqdm.auto import tqdm

    device = check_device(device)
    unknown = [m for m in config.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    chosen = select_examples(test, config.n, config.seed)
    if not chosen:
        raise ValueError("the test split has no examples")
    token_ids = tokenizer(
        [ex.text for _, ex in chosen], truncation=True, max_length=config.max_length
    )["input_ids"]
    # before any work: ids the embedding cannot look up (another model's
    # tokenizer, or added tokens) fail half-way through the run otherwise
    top = max((max(ids) for ids in token_ids if len(ids)), default=-1)
    check_vocabulary(top, embedding_rows(unwrap_model(model)))
    lengths = [len(x) for x in token_ids]
    order = sorted(range(len(chosen)), key=lambda i: (lengths[i], chosen[i][0]))
    chosen = [chosen[i] for i in order]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def forward(ids: Tensor, mask: Tensor) -> Tensor:
        return model(input_ids=ids, attention_mask=mask).logits

    _warm_up(model, tokenizer, forward, chosen[0][1].text, config, device, pad)
    rows: List[Dict[str, Any]] = []
    infos: List[Dict[str, Any]] = []
    batches = _batches(len(chosen), config.batch_size)
    mine = [i for i in range(len(batches)) if i % world_size == rank]
    bar = tqdm(
        total=len(mine) * len(config.methods),
        desc="bench" + (f" [rank {rank}]" if world_size > 1 else ""),
        unit="method-batch",
        disable=not show_progress or rank != 0,
    )
    saved = (
        _Checkpoint(checkpoint, config, model, device, tokenizer)
        if checkpoint
        else None
    )
    resumed = 0
    for bi in mine:
        index = batches[bi]
        enc = tokenizer(
            [chosen[i][1].text for i in index],
            truncation=True,
            max_length=config.max_length,
            padding=True,
            return_tensors="pt",
            return_special_tokens_mask=True,
        )
        encoding = [
            enc[k] for k in ("input_ids", "attention_mask", "special_tokens_mask")
        ]
        if saved is not None and resume:
            done = saved.load(bi, [chosen[i] for i in index], encoding)
            if done is not None:
                rows += done[0]
                infos += done[1]
                resumed += 1
                bar.update(len(config.methods))
                continue
        batch_rows: List[Dict[str, Any]] = []
        ids = enc["input_ids"].to(device)
        mask = enc["attention_mask"].to(device)
        special = enc["special_tokens_mask"].to(device).bool() & (mask != 0)
        with torch.no_grad():
            logits = forward(ids, mask)
        target = logits.argmax(-1)
        n_tokens = mask.sum(1).tolist()
        ctx = dict(
            special_tokens_mask=special,
            pad_token_id=pad,
            mask_token_id=tokenizer.mask_token_id,
            seed=config.seed,
            lime_samples=config.lime_samples,
            ig_steps=config.ig_steps,
        )
        batch_info = []
        shown_at: Dict[int, Tensor] = {}  # real positions of the heat maps' rows
        for j, i in enumerate(index):
            test_index, ex = chosen[i]
            info = dict(
                example=i,
                test_index=test_index,
                label=int(ex.label),
                prediction=int(target[j]),
                correct=bool(int(target[j]) == int(ex.label)),
                n_tokens=int(n_tokens[j]),
                probability=float(torch.softmax(logits[j], -1)[target[j]]),
                scores={},
                seconds={},
            )
            if i < config.html_examples:
                # the real positions, wherever the tokenizer pads
                real = shown_at[j] = mask[j].nonzero().flatten()
                info["tokens"] = tokenizer.convert_ids_to_tokens(ids[j, real].tolist())
                shown = _display_tokens(tokenizer, info["tokens"])
                if shown != info["tokens"]:
                    info["display"] = shown
                # the tokenizer's own special tokens (not an [UNK], nor a
                # "[CLS]" typed in the text), as the metrics see them
                info["special"] = special[j, real].cpu().tolist()
            batch_info.append(info)
        for name in config.methods:
            torch.manual_seed(_seed_for(config.seed, bi, name))
            _sync(device)
            start = time.perf_counter()
            attr = attribute(name, model, forward, ids, mask, target, **ctx)
            _sync(device)
            seconds = (time.perf_counter() - start) / len(index)
            values = _batch_metrics(
                name,
                model,
                forward,
                tokenizer,
                ids,
                mask,
                special,
                target,
                attr,
                ctx,
                config,
                bi,
                [chosen[i][0] for i in index],
            )
            for j, info in enumerate(batch_info):
                info["seconds"][name] = seconds
                if j in shown_at:
                    info["scores"][name] = attr[j, shown_at[j]].float().cpu().tolist()
                for metric, vals in values.items():
                    batch_rows.append(
                        dict(
                            example=info["example"],
                            test_index=info["test_index"],
                            method=name,
                            metric=metric,
                            value=float(vals[j]),
                            label=info["label"],
                            prediction=info["prediction"],
                            n_tokens=info["n_tokens"],
                            seconds=seconds,
                        )
                    )
            bar.update(1)
        rows += batch_rows
        infos += batch_info
        if saved is not None:
            saved.save(bi, [chosen[i] for i in index], encoding, batch_rows, batch_info)
    bar.close()

    if world_size > 1:
        import torch.distributed as dist

        gathered: Optional[List[Any]] = [None] * world_size if rank == 0 else None
        dist.gather_object((rows, infos, resumed), gathered, dst=0)
        if rank != 0:
            return None
        rows, infos, resumed = [], [], 0
        for part_rows, part_infos, part_resumed in gathered or []:
            rows += part_rows
            infos += part_infos
            resumed += part_resumed
    method_rank = {m: k for k, m in enumerate(config.methods)}
    rows.sort(key=lambda r: (method_rank[r["method"]], r["example"]))
    infos.sort(key=lambda r: r["example"])
    info_meta = dict(meta or {})
    info_meta.update(
        n=len(infos),
        bench_accuracy=sum(i["correct"] for i in infos) / len(infos),
        device=str(device),
        processes=world_size,
        torch_threads=torch.get_num_threads(),
        argv=" ".join(sys.argv),
        resumed_batches=resumed,
    )
    return BenchResult(config=config, rows=rows, examples=infos, meta=info_meta)
