r"""Explain one prediction with efficient attention and render a token heat map.

Runs MiniLM on a real document (five Rotten Tomatoes reviews of one movie),
computes efficient attention (last layer, [CLS] row, mean over heads) with
its exactness certificate, and writes an HTML page with one heat map row for
efficient attention and one for raw attention::

    python examples/explain_one.py --out examples_out/

About 15 s on a laptop CPU. See ``examples/_common.py`` for which model is
used (a cached fine-tuned one, else the base model with an untrained head).
"""

from __future__ import annotations

import argparse
import html
import time
from typing import List, Optional, Sequence

import torch
from _common import documents, fit_length, load_classifier, max_length, out_path

from captum_effattn import AttentionWeights, EfficientAttention


def heat_row(tokens: Sequence[str], scores: Sequence[float]) -> str:
    r"""One line of tokens, each on a background whose strength is its score
    relative to the row's largest absolute score (red positive, blue negative)."""
    scale = max((abs(s) for s in scores), default=0.0) or 1.0
    spans = []
    for tok, s in zip(tokens, scores):
        alpha = min(1.0, abs(s) / scale)
        rgb = "220,40,40" if s >= 0 else "40,90,220"
        spans.append(
            f'<span title="{s:.4f}" style="background: rgba({rgb},{alpha:.3f})">'
            f"{html.escape(tok)}</span>"
        )
    return " ".join(spans)


def render(title: str, meta: List[str], rows: List[tuple]) -> str:
    body = "\n".join(
        f"<h2>{html.escape(name)}</h2>\n<p class='tokens'>{heat_row(t, s)}</p>"
        for name, t, s in rows
    )
    items = "\n".join(f"<li>{html.escape(m)}</li>" for m in meta)
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        ".tokens{line-height:2em}.tokens span{padding:0 2px;border-radius:3px}"
        "</style></head><body>"
        f"<h1>{html.escape(title)}</h1><ul>{items}</ul>{body}</body></html>\n"
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", default="examples_out", help="output HTML file or folder"
    )
    parser.add_argument("--model", default=None, help="a local HF classifier")
    parser.add_argument("--text", default=None, help="text to explain")
    parser.add_argument("--max-length", type=max_length, default=256)
    args = parser.parse_args(argv)
    start = time.perf_counter()

    clf = load_classifier(args.model)
    model, tokenizer = clf.model, clf.tokenizer
    if args.text is not None and not args.text.strip():
        parser.error("--text is empty: give a text, or leave --text out")
    text = args.text or documents(1)[0]
    enc = tokenizer(
        text,
        return_tensors="pt",
        truncation=True,
        max_length=fit_length(clf, args.max_length),
    )
    ids, mask = enc["input_ids"], enc["attention_mask"]

    def forward(input_ids, attention_mask):
        return model(input_ids, attention_mask=attention_mask).logits

    with torch.no_grad():
        probs = torch.softmax(forward(ids, mask), -1)[0]
    pred = int(probs.argmax())

    # One line instead of LayerIntegratedGradients(forward, model.bert.embeddings)
    explainer = EfficientAttention(forward, model=model)
    scores, result = explainer.attribute(
        ids, target=pred, additional_forward_args=(mask,), return_matrices=True
    )
    raw = AttentionWeights(forward, model=model).attribute(
        ids, target=pred, additional_forward_args=(mask,)
    )
    cert = result.certificate
    tokens = tokenizer.convert_ids_to_tokens(ids[0])

    print(f"model: {clf.description}")
    print(
        f"{ids.shape[1]} tokens; prediction: {clf.label_names[pred]} "
        f"(p = {float(probs[pred]):.3f})"
    )
    print(f"certificate: {cert}")
    top = scores[0].argsort(descending=True)[:10].tolist()
    print("top tokens (efficient attention):")
    for j in top:
        print(f"  {tokens[j]:>12s}  {float(scores[0, j]):.4f}  (raw {raw[0, j]:.4f})")

    page = render(
        "Efficient attention vs raw attention",
        [
            f"model: {clf.description}",
            f"prediction: {clf.label_names[pred]} (p = {float(probs[pred]):.3f})",
            "scores: last layer, [CLS] query row, mean over heads",
            f"certificate: {cert}",
        ],
        [
            ("Efficient attention", tokens, scores[0].tolist()),
            ("Raw attention", tokens, raw[0].tolist()),
        ],
    )
    path = out_path(args.out, "explain_one.html")
    path.write_text(page, encoding="utf-8")
    print(f"wrote {path} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
