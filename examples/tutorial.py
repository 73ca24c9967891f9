r"""The tutorial of the docs: one MiniLM prediction explained three ways.

Efficient attention (plain and times the attention gradient), Integrated
Gradients and LIME explain MiniLM's prediction on one real document (five
Rotten Tomatoes reviews of a movie); their top tokens are listed side by
side, and sufficiency and necessity (the top 10% and 20% of the content
tokens, ERASER's deletion) say how faithful each is::

    python examples/tutorial.py --out examples_out/

Writes the printed report to ``tutorial.txt``. About 30-60 s on a laptop CPU
(LIME's 300 forward passes are most of it).
"""

from __future__ import annotations

import argparse
import time
from typing import Dict, Optional, Sequence

import torch
from _common import (
    DATA_LABELS,
    documents,
    fit_length,
    load_classifier,
    out_path,
    positive_int,
)
from captum.attr import LayerIntegratedGradients, Lime

from captum_effattn import EfficientAttention
from captum_effattn.metrics import necessity, sufficiency


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="examples_out", help="output file or folder")
    parser.add_argument("--model", default=None, help="a local HF classifier")
    parser.add_argument("--doc", type=int, default=0, help="rt-verdict test doc")
    parser.add_argument("--ig-steps", type=positive_int, default=16)
    parser.add_argument("--lime-samples", type=positive_int, default=300)
    parser.add_argument("--top", type=positive_int, default=10, help="tokens listed")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    torch.manual_seed(0)
    lines = []

    def say(text: str = "") -> None:
        print(text)
        lines.append(text)

    # 1. The model, one real document and the prediction to explain.
    clf = load_classifier(args.model)
    model, tokenizer = clf.model, clf.tokenizer
    docs = documents(args.doc + 1, labels=True) if args.doc >= 0 else []
    if not 0 <= args.doc < len(docs):
        parser.error(f"--doc {args.doc}: not a rt-verdict test document index")
    text, label = docs[args.doc]
    enc = tokenizer(
        text,
        return_tensors="pt",
        truncation=True,
        max_length=fit_length(clf, 256),
        return_special_tokens_mask=True,
    )
    ids, mask = enc["input_ids"], enc["attention_mask"]
    special = enc["special_tokens_mask"].bool()
    tokens = tokenizer.convert_ids_to_tokens(ids[0])

    def forward(input_ids, attention_mask):
        return model(input_ids, attention_mask=attention_mask).logits

    with torch.no_grad():
        probs = torch.softmax(forward(ids, mask), -1)[0]
    pred = int(probs.argmax())
    say(f"model: {clf.description}")
    say(f"text: {text[:300]}...")
    say(
        f"{ids.shape[1]} tokens; label: {DATA_LABELS[label]}; prediction: "
        f"{clf.label_names[pred]} (p = {float(probs[pred]):.3f})"
    )

    # 2. Three explanations of the predicted class.
    scores: Dict[str, torch.Tensor] = {}
    seconds: Dict[str, float] = {}

    t0 = time.perf_counter()
    efficient = EfficientAttention(forward, model=model)
    scores["efficient attention"], res = efficient.attribute(
        ids, target=pred, additional_forward_args=(mask,), return_matrices=True
    )
    seconds["efficient attention"] = time.perf_counter() - t0
    say(f"efficient attention certificate: {res.certificate}")

    # The same rows weighted by the gradient of the target logit with respect
    # to the attention probabilities (one backward pass).
    t0 = time.perf_counter()
    scores["efficient x gradient"] = efficient.attribute(
        ids, target=pred, additional_forward_args=(mask,), weighting="gradient"
    )
    seconds["efficient x gradient"] = time.perf_counter() - t0

    # Integrated Gradients on the embeddings; baseline: [PAD] for content tokens.
    t0 = time.perf_counter()
    baseline = torch.where(special, ids, torch.full_like(ids, tokenizer.pad_token_id))
    lig = LayerIntegratedGradients(forward, model.bert.embeddings)
    scores["IG"] = lig.attribute(
        ids,
        baselines=baseline,
        target=pred,
        additional_forward_args=(mask,),
        n_steps=args.ig_steps,
        internal_batch_size=32,
    ).sum(-1)
    seconds["IG"] = time.perf_counter() - t0

    # LIME: one interpretable feature per content token; a removed token is
    # replaced by [PAD] and masked out, special tokens are never removed.
    t0 = time.perf_counter()
    pad = tokenizer.pad_token_id

    def prob_of_kept(input_ids, attention_mask):
        seen = attention_mask * ((input_ids != pad) | special).long()
        return torch.softmax(forward(input_ids, seen), -1)

    content = ~special[0]
    feature_mask = torch.full_like(ids, int(content.sum()))  # specials: 1 dummy
    feature_mask[0, content] = torch.arange(int(content.sum()))
    try:  # a Ridge surrogate, as in the original LIME
        from captum._utils.models.linear_model import SkLearnRidge

        surrogate = SkLearnRidge(alpha=1.0)
    except ImportError:  # Captum moved it: its default Lasso
        surrogate = None
    lime = Lime(prob_of_kept, interpretable_model=surrogate)
    scores["LIME"] = (
        lime.attribute(
            ids,
            baselines=baseline,
            target=pred,
            additional_forward_args=(mask,),
            feature_mask=feature_mask,
            n_samples=args.lime_samples,
            perturbations_per_eval=50,
        ).float()
        * content.float()
    )
    seconds["LIME"] = time.perf_counter() - t0

    # 3. Side by side: the top tokens of each method.
    say()
    say(f"top {args.top} tokens of each method (score in parentheses)")
    names = list(scores)
    say("".join(f"{name:<24s}" for name in names))
    tops = {n: scores[n][0].argsort(descending=True)[: args.top] for n in names}
    for r in range(args.top):
        cells = []
        for n in names:
            j = int(tops[n][r])
            cells.append(f"{tokens[j] + f' ({float(scores[n][0, j]):.2g})':<24s}")
        say("".join(cells))

    # 4. Faithfulness: remove the top tokens (necessity) or keep only them
    #    (sufficiency); probabilities of the predicted class.
    say()
    say(
        f"{'method':<22s}{'suff@10%':>10s}{'suff@20%':>10s}{'nec@10%':>10s}"
        f"{'nec@20%':>10s}{'seconds':>9s}"
    )
    for n in names:
        values = []
        for metric in (sufficiency, necessity):
            for fraction in (0.1, 0.2):
                value = metric(
                    forward,
                    ids,
                    scores[n],
                    target=pred,
                    attention_mask=mask,
                    special_tokens_mask=special,
                    fraction=fraction,
                )
                values.append(float(value[0]))
        say(
            f"{n:<22s}" + "".join(f"{v:>10.3f}" for v in values) + f"{seconds[n]:>9.1f}"
        )
    say("sufficiency: lower is better; necessity: higher is better")

    path = out_path(args.out, "tutorial.txt")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {path} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
