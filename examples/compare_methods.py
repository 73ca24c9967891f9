r"""Compare attribution methods with sufficiency, necessity and AOPC.

Efficient attention, raw attention, efficient attention x gradient and
Integrated Gradients (few steps) explain MiniLM's predictions on a few real
documents; the faithfulness metrics of :mod:`captum_effattn.metrics` score
them (target: the predicted class; special tokens are never removed)::

    python examples/compare_methods.py --out examples_out/

Prints a table of means over the documents and writes one CSV row per
(method, document). About 30-60 s on a laptop CPU with the defaults.
"""

from __future__ import annotations

import argparse
import csv
import time
from typing import Callable, Dict, Optional, Sequence

import torch
from _common import (
    documents,
    fit_length,
    fraction,
    load_classifier,
    max_length,
    out_path,
    positive_int,
)
from captum.attr import LayerIntegratedGradients

from captum_effattn import AttentionWeights, EfficientAttention
from captum_effattn.metrics import (
    aopc_necessity,
    aopc_sufficiency,
    necessity,
    sufficiency,
)

# name, higher is better
METRICS = (
    ("sufficiency", False),
    ("necessity", True),
    ("aopc_sufficiency", False),
    ("aopc_necessity", True),
)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="examples_out", help="output CSV or folder")
    parser.add_argument("--model", default=None, help="a local HF classifier")
    parser.add_argument("--n", type=positive_int, default=3, help="number of documents")
    parser.add_argument("--ig-steps", type=positive_int, default=16, help="IG steps")
    parser.add_argument("--max-length", type=max_length, default=128)
    parser.add_argument(
        "--fraction", type=fraction, default=0.2, help="share of tokens (top-k)"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()

    clf = load_classifier(args.model)
    model, tokenizer = clf.model, clf.tokenizer
    enc = tokenizer(
        documents(args.n),
        return_tensors="pt",
        padding=True,
        truncation=True,
        max_length=fit_length(clf, args.max_length),
        return_special_tokens_mask=True,
    )
    ids, mask = enc["input_ids"], enc["attention_mask"]
    special = enc["special_tokens_mask"].bool()

    def forward(input_ids, attention_mask):
        return model(input_ids, attention_mask=attention_mask).logits

    with torch.no_grad():
        target = forward(ids, mask).argmax(-1)

    # Integrated Gradients' baseline: [PAD] for content tokens, the special
    # tokens and padding unchanged.
    pad = tokenizer.pad_token_id
    baseline = torch.where(special | (mask == 0), ids, torch.full_like(ids, pad))
    lig = LayerIntegratedGradients(forward, model.base_model.embeddings)
    efficient = EfficientAttention(forward, model=model)
    methods: Dict[str, Callable[[], torch.Tensor]] = {
        "efficient attention": lambda: efficient.attribute(
            ids, target=target, additional_forward_args=(mask,)
        ),
        "raw attention": lambda: AttentionWeights(forward, model=model).attribute(
            ids, target=target, additional_forward_args=(mask,)
        ),
        "efficient x gradient": lambda: efficient.attribute(
            ids, target=target, additional_forward_args=(mask,), weighting="gradient"
        ),
        f"IG ({args.ig_steps} steps)": lambda: lig.attribute(
            ids,
            baselines=baseline,
            target=target,
            additional_forward_args=(mask,),
            n_steps=args.ig_steps,
            internal_batch_size=32,
        ).sum(-1),
    }

    common = dict(target=target, attention_mask=mask, special_tokens_mask=special)
    rows = []
    table = {}
    for name, explain in methods.items():
        t0 = time.perf_counter()
        attr = explain().detach()
        seconds = time.perf_counter() - t0
        scores = {
            "sufficiency": sufficiency(
                forward, ids, attr, fraction=args.fraction, **common
            ),
            "necessity": necessity(
                forward, ids, attr, fraction=args.fraction, **common
            ),
            "aopc_sufficiency": aopc_sufficiency(forward, ids, attr, **common).aopc,
            "aopc_necessity": aopc_necessity(forward, ids, attr, **common).aopc,
        }
        table[name] = {k: float(v.nanmean()) for k, v in scores.items()}
        table[name]["seconds"] = seconds
        for b in range(ids.shape[0]):
            row = {"method": name, "document": b, "seconds": seconds / ids.shape[0]}
            row.update({k: float(v[b]) for k, v in scores.items()})
            rows.append(row)

    print(f"model: {clf.description}")
    print(
        f"{ids.shape[0]} documents, {int(mask.sum(1).min())}-"
        f"{int(mask.sum(1).max())} tokens; top-k at fraction {args.fraction}; "
        "AOPC over (0.01, 0.05, 0.1, 0.2, 0.5)"
    )
    arrows = {name: "(high)" if hi else "(low)" for name, hi in METRICS}
    header = f"{'method':<22s}" + "".join(
        f"{name + ' ' + arrows[name]:>24s}" for name, _ in METRICS
    )
    print(header + f"{'s/doc':>9s}")
    for name, values in table.items():
        line = f"{name:<22s}" + "".join(f"{values[m]:>24.4f}" for m, _ in METRICS)
        print(line + f"{values['seconds'] / ids.shape[0]:>9.3f}")

    path = out_path(args.out, "compare_methods.csv")
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
