r"""Plot one head's raw, effective and efficient attention matrices.

MiniLM reads a real text of about 60 tokens (the start of a document of
Rotten Tomatoes reviews). For one head of one layer the script computes all
n x n rows of the three matrices and draws them side by side on one colour
scale, with the row sums of effective attention and the certificate of
efficient attention in the titles::

    python examples/plot_matrices.py --out examples_out/

Solving every row of a layer is the slow part of efficient attention (the
attribution classes solve only the [CLS] row); for 60 tokens it takes a few
seconds. By default the head where efficient and raw attention differ most is
shown.
"""

from __future__ import annotations

import argparse
import time
from typing import Optional, Sequence

import matplotlib
from _common import documents, fit_length, load_classifier, out_path, positive_int

from captum_effattn import attention_weights, effective_attention, efficient_attention


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="examples_out", help="output PNG or folder")
    parser.add_argument("--model", default=None, help="a local HF classifier")
    parser.add_argument("--layer", type=int, default=-1, help="layer index")
    parser.add_argument(
        "--head", type=int, default=None, help="head (default: most different)"
    )
    parser.add_argument("--tokens", type=positive_int, default=60, help="text length")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    clf = load_classifier(args.model)
    model, tokenizer = clf.model, clf.tokenizer
    layers, heads = model.config.num_hidden_layers, model.config.num_attention_heads
    if not -layers <= args.layer < layers:
        parser.error(f"--layer {args.layer}: the model has {layers} layers")
    if args.head is not None and not 0 <= args.head < heads:
        parser.error(f"--head {args.head}: the model has heads 0 to {heads - 1}")
    enc = tokenizer(
        documents(1)[0],
        return_tensors="pt",
        truncation=True,
        max_length=fit_length(clf, args.tokens),
    )
    ids, mask = enc["input_ids"], enc["attention_mask"]

    t0 = time.perf_counter()
    eff, cert = efficient_attention(
        model, ids, mask, layers=args.layer, return_certificate=True
    )
    solve = time.perf_counter() - t0
    raw = attention_weights(model, ids, mask, layers=args.layer)
    effective = effective_attention(model, ids, mask, layers=args.layer)
    # (layers, batch, heads, n, n) -> (heads, n, n)
    eff, raw, effective = eff[0, 0], raw[0, 0], effective[0, 0]
    if args.head is None:
        head = int((eff - raw).abs().flatten(1).sum(1).argmax())
    else:
        head = args.head
    mats = {"raw attention A": raw[head], "effective attention A P": effective[head]}
    mats["efficient attention E"] = eff[head]

    n = ids.shape[1]
    sums = effective[head].sum(-1)
    neg = float((effective[head] < 0).double().mean())
    print(f"model: {clf.description}")
    print(f"{n} tokens, layer {args.layer}, head {head}")
    print(f"efficient attention of all {n} rows x {eff.shape[0]} heads: {solve:.2f} s")
    print(f"certificate: {cert}")
    print(
        f"effective attention row sums {float(sums.min()):.2f}..{float(sums.max()):.2f}"
        f", {100 * neg:.0f}% negative entries"
    )
    print(
        f"efficient attention: {float((eff[head] == 0).double().mean()) * 100:.0f}% "
        f"exact zeros; max |E - A| = {float((eff[head] - raw[head]).abs().max()):.3f}"
    )

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot as plt

    vmax = max(float(m.abs().max()) for m in mats.values())
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.4), constrained_layout=True)
    for ax, (title, mat) in zip(axes, mats.items()):
        image = ax.imshow(mat.numpy(), cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set_title(title)
        ax.set_xlabel("key token j")
        ax.set_ylabel("query token i")
    axes[1].set_title(
        f"effective attention A P\nrow sums {float(sums.min()):.2f} to "
        f"{float(sums.max()):.2f}, {100 * neg:.0f}% negative"
    )
    axes[2].set_title(
        "efficient attention E\nrows are distributions; max output residual "
        f"{cert.worst()['output_residual']:.0e}"
    )
    fig.colorbar(image, ax=axes, shrink=0.8)
    fig.suptitle(f"all-MiniLM-L6-v2, layer {args.layer}, head {head}, {n} tokens")
    path = out_path(args.out, "matrices.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
