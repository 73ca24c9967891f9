r"""Minimal attention on benchmark data (issue 11): support size and the
attention-level sufficiency / necessity of efficient attention's support, for
the ``min_norm`` and ``sparse`` objectives, measured in one run.

For each data set, ``--docs`` test documents (the benchmark's seeded,
label-balanced choice) are run through the fine-tuned classifier when one is
cached (else the packaged MiniLM with an untrained head) and
:func:`captum_effattn.attention_support_test` is applied with both
objectives. The table reports the mean over documents of the share of real
keys in the support, the largest support of a row (against the rank of
``[T, 1]``), and the drop of the predicted class's probability when every
layer's raw attention is restricted to the support (sufficiency, lower is
better) or to its complement (necessity, higher is better).

Usage::

    python benchmarks/support.py --datasets rt-verdict,debates-2016 --docs 8
"""

from __future__ import annotations

import argparse
import os
import time
from typing import List, Optional, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="support.py",
        description="Support size and attention-level sufficiency/necessity "
        "of min_norm and sparse efficient attention on benchmark data.",
    )
    parser.add_argument("--datasets", default="rt-verdict,debates-2016")
    parser.add_argument("--docs", type=int, default=8, help="documents per set")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", default=None, help="also write the table")
    return parser


def _rows(dataset: str, args: argparse.Namespace) -> List[str]:
    from captum_effattn import attention_support_test
    from captum_effattn.benchmark.data import load_dataset
    from captum_effattn.benchmark.models import find_cached_model, load_model
    from captum_effattn.benchmark.runner import select_examples

    # a model fine-tuned on this split never saw its test documents
    path = find_cached_model(dataset, seed=args.seed)
    model, tok = load_model(path) if path else load_model()
    note = "fine-tuned" if path else "untrained head"
    chosen = select_examples(
        load_dataset(dataset, seed=args.seed).test, args.docs, args.seed
    )
    enc = tok(
        [ex.text for _, ex in chosen],
        return_tensors="pt",
        padding=True,
        truncation=True,
        max_length=args.max_length,
    )
    ids, mask = enc["input_ids"], enc["attention_mask"]
    lengths = mask.sum(1).float()
    out = []
    for objective in ("min_norm", "sparse"):
        start = time.perf_counter()
        res = attention_support_test(model, ids, mask, objective=objective)
        took = (time.perf_counter() - start) / ids.shape[0]
        cert = res.certificate
        out.append(
            f"| {dataset} ({note}) | {int(lengths.mean())} | `{objective}` "
            f"| {float(res.support_fraction.mean()):.3f} "
            f"| {int(cert.support_size.max())} / {int(cert.rank.max())} "
            f"| {float(res.sufficiency.mean()):+.3f} "
            f"| {float(res.necessity.mean()):+.3f} "
            f"| {float((res.p_efficient - res.p_full).abs().max()):.1e} "
            f"| {cert.ok(rtol=1e-6)} | {took:.1f} s |"
        )
        print(out[-1], flush=True)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    r"""Run the measurement; ``argv`` as on the command line. Returns 0."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    if args.threads:
        torch.set_num_threads(args.threads)
    header = [
        "| data set | mean tokens | objective | support share of keys "
        "| max support / rank | sufficiency ↓ | necessity ↑ "
        "| max change of p (swap) | certificate ok | time / doc |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    print("\n".join(header), flush=True)
    rows: List[str] = []
    for dataset in args.datasets.split(","):
        rows += _rows(dataset.strip(), args)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write("\n".join(header + rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
