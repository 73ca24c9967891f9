r"""Write a benchmark's results: tables, plots and token heat maps.

:func:`write_report` writes into ``DIR``:

- ``results.csv``: one row per example x method x metric, columns
  ``example, test_index, method, metric, value, label, prediction, n_tokens,
  seconds`` (``seconds``: the method's attribution time per example, the only
  column that changes between identical runs);
- ``summary.md``: per method and metric the mean with a 95% bootstrap CI
  (seeded, 1,000 resamples of the examples), time per example and its ratio
  to ``efficient``, the model's accuracy, the settings and library versions;
- ``results.json``: the same summary, machine-readable, with the mean AOPC
  curves;
- ``aopc_curves.png``: mean sufficiency and necessity against the fraction
  of tokens kept / removed, one line per method;
- ``faithfulness_vs_time.png``: AOPC necessity against seconds per example
  (log x);
- ``examples.html``: a self-contained page of token heat maps of the first
  examples, all methods side by side (red: positive, blue: negative, each
  method normalised by its largest absolute score on the example's content
  tokens).

:class:`OutputDir` stages the files in a hidden temporary folder (inside
``DIR`` when it exists, else in its nearest existing parent) and moves them
in only when all are written, so a failed run leaves nothing
half-written; creating it is also the early check that ``DIR`` is writable.
"""

from __future__ import annotations

import html
import importlib.metadata
import json
import math
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from captum_effattn.benchmark.methods import METHODS
from captum_effattn.benchmark.runner import METRICS, BenchResult

__all__ = [
    "OutputDir",
    "OutputDirError",
    "OUTPUT_FILES",
    "CSV_COLUMNS",
    "summarize",
    "bootstrap_ci",
    "write_report",
    "versions",
]

#: Files that :func:`write_report` writes.
OUTPUT_FILES: Tuple[str, ...] = (
    "results.csv",
    "summary.md",
    "results.json",
    "aopc_curves.png",
    "faithfulness_vs_time.png",
    "examples.html",
)
#: Columns of ``results.csv``.
CSV_COLUMNS: Tuple[str, ...] = (
    "example",
    "test_index",
    "method",
    "metric",
    "value",
    "label",
    "prediction",
    "n_tokens",
    "seconds",
)
#: Metrics in the summary table, in order.
SUMMARY_METRICS: Tuple[str, ...] = (
    "aopc_necessity",
    "aopc_sufficiency",
    "necessity",
    "sufficiency",
    "minimal_necessary",
    "minimal_sufficient",
    "infidelity",
    "sensitivity",
)


#: Name prefix of the hidden staging folders of :class:`OutputDir`, which
#: continue with ``<pid>@<host>-`` and a random suffix (``<host>`` is the
#: host name and, on Linux, ``~`` and the PID namespace: :func:`_host`).
STAGING_PREFIX = ".captum-effattn-partial-"
_STAGING_NAME = re.compile(
    re.escape(STAGING_PREFIX) + r"(?P<pid>\d+)@(?P<host>.+)-[^-]+"
)


def _host() -> str:
    r"""This machine's name, and on Linux its PID namespace: containers that
    share a host name (``--net=host``) and a folder number their processes
    apart, and a PID of another namespace says nothing here."""
    name = socket.gethostname() or "localhost"
    try:
        return f"{name}~{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return name


def _staging_prefix(pid: int) -> str:
    return f"{STAGING_PREFIX}{pid}@{_host()}-"


def _alive(pid: int) -> bool:
    r"""Whether process ``pid`` exists on this machine (one of another user
    counts: it cannot be signalled, but it is there)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


class OutputDirError(Exception):
    r"""The output folder cannot be written."""


class OutputDir:
    r"""An output folder written all at once.

    Creating it checks that ``path`` can be written (or created) and makes a
    hidden staging folder beside the files' final place; :meth:`commit`
    moves the staged files into ``path``; :meth:`discard` removes them.
    Staging folders that killed runs on this machine left there are removed
    first (:meth:`remove_stale`).

    Args:
        path (str or Path): the output folder; created on commit if missing.

    Raises:
        OutputDirError: when ``path`` is a file, or neither it nor its nearest
                    existing parent folder can be written.

    Examples::

        >>> out = OutputDir("results/run1")
        >>> (out.staging / "results.csv").write_text("...")
        >>> out.commit()
    """

    def __init__(self, path: Union[str, Path]) -> None:
        self.path = Path(path).expanduser().absolute()
        anchor = self.check(self.path)
        self.remove_stale(anchor)
        try:
            self.staging = Path(
                tempfile.mkdtemp(prefix=_staging_prefix(os.getpid()), dir=anchor)
            )
        except OSError as err:
            raise OutputDirError(
                f"output folder {self.path} is not writable ({err})"
            ) from None

    @staticmethod
    def check(path: Union[str, Path]) -> Path:
        r"""The checks of the constructor without creating anything (for the
        processes of a distributed run other than the one that writes);
        returns the nearest existing folder at or above ``path``.

        Raises:
            OutputDirError: as the constructor.
        """
        path = Path(path).expanduser().absolute()
        if path.exists() and not path.is_dir():
            raise OutputDirError(f"output path {path} exists and is not a folder")
        anchor = path
        while not anchor.exists():
            anchor = anchor.parent
        if not anchor.is_dir():
            raise OutputDirError(
                f"cannot create the output folder {path}: {anchor} is not a folder"
            )
        if not os.access(anchor, os.W_OK | os.X_OK):
            raise OutputDirError(f"output folder {path} is not writable")
        return anchor

    @staticmethod
    def remove_stale(folder: Path) -> List[Path]:
        r"""Remove the staging folders in ``folder`` that a run on this
        machine left when it was killed without a chance to clean up
        (SIGKILL, out of memory, power loss): those whose process is gone.
        Folders of live processes and of other machines stay.

        Returns:
            list of Path: the folders removed.
        """
        removed: List[Path] = []
        if os.name == "nt":  # os.kill(pid, 0) would send Ctrl-C there
            return removed
        for item in folder.glob(STAGING_PREFIX + "*"):
            match = _STAGING_NAME.fullmatch(item.name)
            if match is None or match.group("host") != _host():
                continue
            if item.is_dir() and not _alive(int(match.group("pid"))):
                shutil.rmtree(item, ignore_errors=True)
                removed.append(item)
        return removed

    def blocked(self, names: Iterable[str]) -> List[str]:
        r"""The ``names`` that are folders in the output folder, where
        :meth:`commit` would have to move a file."""
        return [name for name in names if (self.path / name).is_dir()]

    def commit(self) -> List[Path]:
        r"""Move the staged files into the output folder.

        Returns:
            list of Path: the files written.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        items = sorted(self.staging.iterdir())
        # all or nothing: a folder in a file's place stops the run before any
        # file is moved, not half way
        blocked = self.blocked(p.name for p in items)
        if blocked:
            raise OutputDirError(
                f"{self.path} holds folder(s) named like the outputs "
                f"({', '.join(blocked)}); nothing was written there"
            )
        written = []
        for item in items:
            target = self.path / item.name
            os.replace(item, target)
            written.append(target)
        shutil.rmtree(self.staging, ignore_errors=True)
        return written

    def discard(self) -> None:
        r"""Remove the staging folder and everything in it."""
        shutil.rmtree(self.staging, ignore_errors=True)


def versions() -> Dict[str, str]:
    r"""Versions of Python, torch, transformers, captum and captum_effattn.

    Returns:
        dict: name -> version string.
    """
    out = {"python": sys.version.split()[0]}
    for name in ("torch", "transformers", "captum", "captum-effattn"):
        try:
            out[name.replace("-", "_")] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover
            out[name.replace("-", "_")] = "not installed"
    return out


def bootstrap_ci(
    values: Sequence[float], seed: int = 0, n_boot: int = 1000, level: float = 0.95
) -> Tuple[float, float, float, int]:
    r"""Mean and percentile bootstrap confidence interval, NaN values dropped.

    Args:
        values (sequence of float): one value per example.
        seed (int, optional): seed of the resampling. Default: 0
        n_boot (int, optional): number of resamples. Default: 1000
        level (float, optional): coverage. Default: 0.95

    Returns:
        (mean, low, high, n): NaNs when no value is finite; ``n`` counts the
        finite values.

    Examples::

        >>> mean, low, high, n = bootstrap_ci([0.1, 0.3, 0.2])
        >>> low <= mean <= high
        True
    """
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return math.nan, math.nan, math.nan, 0
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(n_boot, arr.size))].mean(axis=1)
    alpha = (1.0 - level) / 2
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(arr.mean()), float(low), float(high), int(arr.size)


def _frame(result: BenchResult) -> Any:
    import pandas as pd

    frame = pd.DataFrame(result.rows, columns=list(CSV_COLUMNS))
    return frame


def _curve_metrics(frame: Any, kind: str) -> List[Tuple[float, str]]:
    names = {m for m in frame["metric"].unique() if str(m).startswith(kind + "@")}
    return sorted((float(m.split("@", 1)[1]), m) for m in names)


def summarize(result: BenchResult, n_boot: int = 1000) -> Dict[str, Any]:
    r"""The machine-readable summary written to ``results.json``.

    Args:
        result (BenchResult): the gathered results.
        n_boot (int, optional): bootstrap resamples. Default: 1000

    Returns:
        dict: ``config``, ``meta``, ``versions``, ``metrics`` (metadata of
        each metric) and ``methods``: per method its label, family, time per
        example, ratio of that time to ``efficient``'s, per metric ``mean``,
        ``ci_low``, ``ci_high``, ``n`` (finite values) and the mean AOPC
        ``curves``.
    """
    frame = _frame(result)
    seed = result.config.seed
    methods: Dict[str, Any] = {}
    times: Dict[str, float] = {}
    for name in result.config.methods:
        sub = frame[frame["method"] == name]
        # the examples carry the times, also when no metric was computed
        secs = [
            ex["seconds"][name]
            for ex in result.examples
            if name in ex.get("seconds", {})
        ]
        if not secs:  # results written before the examples carried them
            secs = sub.drop_duplicates("example")["seconds"].tolist()
        times[name] = float(sum(secs) / len(secs)) if secs else math.nan
        metrics: Dict[str, Any] = {}
        for metric, group in sub.groupby("metric", sort=False):
            mean, low, high, n = bootstrap_ci(group["value"].tolist(), seed, n_boot)
            metrics[str(metric)] = dict(mean=mean, ci_low=low, ci_high=high, n=n)
        curves: Dict[str, Any] = {}
        for kind in ("sufficiency", "necessity"):
            points = _curve_metrics(sub, kind)
            if points:
                curves["fractions"] = [f for f, _ in points]
                curves[kind] = [metrics[m]["mean"] for _, m in points]
        spec = METHODS[name]
        methods[name] = dict(
            label=spec.label,
            family=spec.family,
            description=spec.description,
            seconds_per_example=times[name],
            metrics=metrics,
            curves=curves,
        )
    ref = times.get("efficient")
    for name, entry in methods.items():
        entry["time_ratio_to_efficient"] = (
            entry["seconds_per_example"] / ref if ref and ref > 0 else None
        )
    return dict(
        config=result.config.to_dict(),
        meta=result.meta,
        versions=versions(),
        metrics={
            k: dict(
                label=m.label,
                group=m.group,
                higher_is_better=m.higher_is_better,
                range=list(m.value_range),
                description=m.description,
            )
            for k, m in METRICS.items()
        },
        methods=methods,
    )


# ----------------------------------------------------------------------------
# summary.md


def _fmt(x: Optional[float], digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}"


def _markdown(summary: Dict[str, Any]) -> str:
    cfg, meta, methods = summary["config"], summary["meta"], summary["methods"]
    present = [
        m
        for m in SUMMARY_METRICS
        if any(m in entry["metrics"] for entry in methods.values())
    ]
    best: Dict[str, List[str]] = {}  # every method tied for the best mean
    for metric in present:
        spec = METRICS[metric]
        stats = {
            name: entry["metrics"][metric]
            for name, entry in methods.items()
            if metric in entry["metrics"]
            and math.isfinite(entry["metrics"][metric]["mean"])
        }
        # means over fewer examples (a minimal set not found) leave out the
        # examples a method failed on: only the most complete ones compete
        full = max((s["n"] for s in stats.values()), default=0)
        scored = {name: s["mean"] for name, s in stats.items() if s["n"] == full}
        if scored:
            top = (max if spec.higher_is_better else min)(scored.values())
            # tied as printed (3 decimals): means apart by rounding alone
            # (efficient and raw attention of short texts) are both bold
            best[metric] = [
                name for name, mean in scored.items() if round(mean, 3) == round(top, 3)
            ]
    arrow = {True: "↑", False: "↓"}
    head = ["method"]
    head += [
        f"{METRICS[m].label} {arrow[METRICS[m].higher_is_better]}" for m in present
    ]
    head += ["s / example", "× efficient"]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for name, entry in methods.items():
        cells = [f"`{name}`"]
        for metric in present:
            stats = entry["metrics"].get(metric)
            if stats is None or stats["n"] == 0:
                cells.append("–")
                continue
            cell = (
                f"{_fmt(stats['mean'])} [{_fmt(stats['ci_low'])}, "
                f"{_fmt(stats['ci_high'])}]"
            )
            if stats["n"] < meta.get("n", stats["n"]):
                cell += f" (n={stats['n']})"
            if name in best.get(metric, ()):
                cell = f"**{cell}**"
            cells.append(cell)
        sec = entry["seconds_per_example"]
        cells.append(_fmt(sec, 4) if sec < 1 else _fmt(sec, 2))
        ratio = entry["time_ratio_to_efficient"]
        cells.append("–" if ratio is None else _fmt_ratio(ratio))
        lines.append("| " + " | ".join(cells) + " |")

    acc = meta.get("heldout_accuracy")
    acc_line = (
        f"- model: {meta.get('model', '?')}; held-out accuracy "
        f"{_fmt(acc)} on {meta.get('heldout_size', '?')} test examples"
        if acc is not None
        else f"- model: {meta.get('model', '?')} (held-out accuracy unknown)"
    )
    if meta.get("majority_accuracy") is not None:
        acc_line += f" (majority class: {_fmt(meta['majority_accuracy'])})"
    ver = summary["versions"]
    text = [
        f"# captum-effattn benchmark: {cfg['dataset']}",
        "",
        acc_line,
        f"- accuracy on the {meta.get('n')} benchmark examples: "
        f"{_fmt(meta.get('bench_accuracy'))}",
        f"- data set: {cfg['dataset']} ({meta.get('dataset_description', '')}); "
        f"labels {meta.get('label_names', '')}",
        f"- n = {meta.get('n')} test examples (seeded, label-balanced), "
        f"seed = {cfg['seed']}, max length {cfg['max_length']} tokens, "
        f"batch size {cfg['batch_size']}, AOPC fractions {cfg['fractions']}",
        f"- skipped metrics: {', '.join(cfg['skip_metrics']) or 'none'}; "
        f"infidelity samples {cfg['infidelity_samples']}, sensitivity samples "
        f"{cfg['sensitivity_samples']} (cheap methods"
        f"{' and expensive ones' if cfg.get('sensitivity_all') else ' only'}); "
        f"lime samples {cfg.get('lime_samples')}, IG steps {cfg.get('ig_steps')}",
        f"- device: {meta.get('device')}, processes: {meta.get('processes')}, "
        f"torch threads: {meta.get('torch_threads')}"
        + (
            f"; {meta['resumed_batches']} batch(es) resumed from an interrupted "
            "run (their times are that run's)"
            if meta.get("resumed_batches")
            else ""
        ),
        f"- versions: torch {ver['torch']}, transformers {ver['transformers']}, "
        f"captum {ver['captum']}, captum_effattn {ver['captum_effattn']}, "
        f"python {ver['python']}",
        "",
        "## Faithfulness and cost (mean [95% bootstrap CI])",
        "",
        *lines,
        "",
        "## How to read",
        "",
        "- Target: the class the model predicts for each example; "
        "probabilities are softmax outputs, tokens are deleted (ERASER).",
        "- **Necessity** (ERASER comprehensiveness): drop in the target "
        "probability when the top-ranked tokens are deleted. *Higher is "
        "better.*",
        "- **Sufficiency**: drop in the target probability when only the "
        "top-ranked tokens are kept. *Lower is better* (negative: the tokens "
        "alone make the model surer).",
        "- AOPC: the mean over the fractions "
        f"{summary['methods'] and _fractions(summary)}; @0.2: top 20% of the "
        "content tokens. Special tokens are never removed.",
        "- Minimal necessary / sufficient: share of content tokens (in rank "
        "order) that must be deleted to flip the prediction / kept to keep "
        "it (binary search, exact when the flip is monotone in k; a linear "
        "search checks where it finds none). Lower is better; n < N where no "
        "k flips it.",
        "- Infidelity (Captum, normalised; random [MASK] perturbations) and "
        "sensitivity (Captum sensitivity_max; one token replaced): lower is "
        "better.",
        "- Bold: best mean per column among the methods scored on the most "
        "examples (a mean over n < N leaves out the examples the method "
        "failed on). Overlapping intervals mean the difference is not "
        "established at this n. –: not computed (by default sensitivity only "
        "for the cheap methods; `--sensitivity-all`) or never reached (no "
        "minimal set found on any example).",
        "- s / example: attribution time only (metrics excluded); "
        "× efficient: ratio to the `efficient` method.",
        "",
    ]
    return "\n".join(text)


def _fractions(summary: Dict[str, Any]) -> str:
    for entry in summary["methods"].values():
        fr = entry["curves"].get("fractions")
        if fr:
            return "(" + ", ".join(f"{f:g}" for f in fr) + ")"
    return "(not computed)"


# ----------------------------------------------------------------------------
# plots


def _method_colors(names: Sequence[str]) -> Dict[str, Any]:
    r"""One colour per method, distinct for up to 40 methods (tab20, then
    tab20b): tab20 alone gave the 21st default method, ``random``, the colour
    of the first, ``efficient``."""
    import matplotlib

    palette = list(matplotlib.colormaps["tab20"].colors)
    palette += list(matplotlib.colormaps["tab20b"].colors)
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def _overlaps(box: Tuple[float, ...], boxes: List[Tuple[float, ...]]) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1 for b in boxes)


def _label_points(ax: Any, points: List[Tuple[float, float, str]]) -> None:
    r"""Name every point of a scatter plot without two names overlapping
    each other or a marker: each name goes beside its point, right or left,
    moved up or down by the least that clears the names placed before it
    (points taken from the bottom up), with a thin line to its point when it
    had to move."""
    fig = ax.figure
    fig.canvas.draw()  # final limits and a renderer to measure text
    renderer = fig.canvas.get_renderer()
    axes_box = ax.get_window_extent(renderer)
    pixels = [tuple(ax.transData.transform((x, y))) for x, y, _ in points]
    size = 5.0 * fig.dpi / 72.0  # 5 points, in pixels
    placed = [(px - size, py - size, px + size, py + size) for px, py in pixels]
    for i in sorted(range(len(points)), key=lambda k: pixels[k][1]):
        name = points[i][2]
        probe = ax.text(0, 0, name, fontsize=7)
        width, height = probe.get_window_extent(renderer).size
        probe.remove()
        px, py = pixels[i]
        steps = [0.0] + [s * k for k in range(1, 16) for s in (1.0, -1.0)]
        best = None
        for side in (1.0, -1.0):
            x0 = px + size if side > 0 else px - size - width
            if x0 < axes_box.x0 or x0 + width > axes_box.x1:
                continue
            for k in steps:
                y0 = py - height / 2 + k * 0.6 * height
                box = (x0, y0, x0 + width, y0 + height)
                if (
                    y0 >= axes_box.y0
                    and y0 + height <= axes_box.y1
                    and not (_overlaps(box, placed))
                ):
                    if best is None or abs(k) < abs(best[1]):
                        best = (box, k)
                    break
        if best is None:  # nowhere free: beside the point, as before
            box = (px + size, py, px + size + width, py + height)
            best = (box, 0.0)
        box, k = best
        placed.append(box)
        ax.annotate(
            name,
            (points[i][0], points[i][1]),
            xytext=(box[0] - px, box[1] + height / 2 - py),
            textcoords="offset pixels",
            fontsize=7,
            va="center",
            arrowprops=(
                dict(arrowstyle="-", lw=0.5, color="0.45", shrinkA=0, shrinkB=3)
                if k != 0
                else None
            ),
        )


#: Resolution of the plots, at which they are also laid out: the names of
#: the scatter plot are placed in pixels, and a figure drawn at matplotlib's
#: default 100 dpi but saved at 120 had names 20% larger than their places.
PLOT_DPI = 120


def _plots(summary: Dict[str, Any], folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = summary["methods"]
    colors = _method_colors(list(methods))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), dpi=PLOT_DPI)
    drawn = False
    for name, entry in methods.items():
        curves = entry["curves"]
        if "fractions" not in curves:
            continue
        drawn = True
        style = "-" if METHODS[name].family == "attention" else "--"
        for ax, kind in zip(axes, ("sufficiency", "necessity")):
            if kind in curves:
                ax.plot(
                    curves["fractions"],
                    curves[kind],
                    style,
                    marker="o",
                    color=colors[name],
                    label=name,
                )
    for ax, kind, better, what in zip(
        axes, ("Sufficiency", "Necessity"), ("lower", "higher"), ("kept", "deleted")
    ):
        ax.set_xscale("log")
        ax.set_xlabel(f"fraction of content tokens {what} (log)")
        ax.set_ylabel(f"{kind.lower()} ({better} is better)")
        ax.set_title(f"{kind} curve")
        ax.grid(alpha=0.3)
        if not drawn:
            ax.text(0.5, 0.5, "AOPC not computed", ha="center", transform=ax.transAxes)
    if drawn:
        # beside the plots: inside, it hid the curves of the best methods
        axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(
        f"AOPC curves, {summary['config']['dataset']}, n={summary['meta'].get('n')}"
    )
    fig.tight_layout()
    fig.savefig(folder / "aopc_curves.png", dpi=PLOT_DPI)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=PLOT_DPI)
    metric = "aopc_necessity"
    if not any(metric in e["metrics"] for e in methods.values()):
        metric = "necessity"
    points = [
        (e["seconds_per_example"], e["metrics"][metric], name)
        for name, e in methods.items()
        if metric in e["metrics"]
    ]
    for sec, stats, name in points:
        x = max(sec, 1e-6)
        err = [[stats["mean"] - stats["ci_low"]], [stats["ci_high"] - stats["mean"]]]
        if all(math.isfinite(v[0]) for v in err):
            ax.errorbar(
                x, stats["mean"], yerr=err, fmt="o", capsize=3, color=colors[name]
            )
        else:
            ax.plot(x, stats["mean"], "o", color=colors[name])
    if not points:
        ax.text(0.5, 0.5, "necessity not computed", ha="center", transform=ax.transAxes)
    times = {max(sec, 1e-6) for sec, _, _ in points if math.isfinite(sec)}
    if len(times) == 1:
        # one time (one method): matplotlib warned of identical limits
        (only,) = times
        ax.set_xlim(only / 3, only * 3)
    ax.set_xscale("log")
    ax.set_xlabel("seconds per example (log)")
    ax.set_ylabel(f"{METRICS[metric].label} (higher is better)")
    ax.set_title("Faithfulness vs cost")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _label_points(
        ax,
        [
            (max(sec, 1e-6), st["mean"], name)
            for sec, st, name in points
            if math.isfinite(st["mean"]) and math.isfinite(sec)
        ],
    )
    fig.savefig(folder / "faithfulness_vs_time.png", dpi=PLOT_DPI)
    plt.close(fig)


# ----------------------------------------------------------------------------
# examples.html

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 2em; }
table { border-collapse: collapse; width: 100%; }
td { vertical-align: top; padding: 6px 8px; border-top: 1px solid #ddd; }
td.method { white-space: nowrap; font-weight: 600; width: 11em; }
span.t { display: inline-block; padding: 1px 2px; margin: 1px 0 1px 3px;
         border-radius: 3px; line-height: 1.5; }
span.c { margin-left: 0; }
span.s { color: #888; }
.legend span { padding: 2px 6px; border-radius: 3px; }
.meta { color: #555; }
"""


def _color(score: float, scale: float) -> str:
    if scale <= 0 or not math.isfinite(score):
        return "transparent"
    a = min(abs(score) / scale, 1.0)
    if score >= 0:
        return f"rgba(220, 38, 38, {a:.3f})"
    return f"rgba(37, 99, 235, {a:.3f})"


def _fmt_ratio(ratio: float) -> str:
    r"""A time ratio in plain digits (337, 12, 1.3, 0.048), never in
    scientific notation."""
    if not math.isfinite(ratio):
        return "–"
    if ratio >= 100:
        return f"{ratio:,.0f}"
    if ratio >= 10:
        return f"{ratio:.0f}"
    return f"{ratio:.2g}" if ratio >= 0.001 else f"{ratio:.1e}"


def _is_special(token: str) -> bool:
    return (token.startswith("[") and token.endswith("]")) or (
        token.startswith("<") and token.endswith(">")
    )


#: Markers of a word's first piece, in byte-level BPE and SentencePiece.
_WORD_START = ("\u0120", "\u2581")


def _token_html(
    tokens: Sequence[str],
    scores: Sequence[float],
    special: Optional[Sequence[bool]] = None,
) -> str:
    # ``special``: the tokenizer's special-tokens mask; results written
    # before it was recorded fall back to the tokens' spelling
    flags = (
        [bool(f) for f in special]
        if special is not None
        else [_is_special(t) for t in tokens]
    )
    # normalise by the content tokens: [CLS]/[SEP] often take most attention
    content = [abs(s) for s, f in zip(scores, flags) if not f]
    scale = max(content or [abs(s) for s in scores] or [0.0])
    # word starts: WordPiece marks the pieces that continue a word (##);
    # byte-level BPE (Ġ) and SentencePiece (▁) mark those that start one
    start = next((m for m in _WORD_START if any(t.startswith(m) for t in tokens)), "")
    out = []
    previous_special = True
    for tok, score, flag in zip(tokens, scores, flags):
        if start:
            cont = not flag and not previous_special and not tok.startswith(start)
            text = html.escape(tok[len(start) :] if tok.startswith(start) else tok)
        else:
            cont = tok.startswith("##")
            text = html.escape(tok[2:] if cont else tok)
        previous_special = flag
        cls = "t" + (" c" if cont else "")
        if flag:
            cls += " s"
        out.append(
            f'<span class="{cls}" style="background:{_color(score, scale)}" '
            f'title="{score:.4g}">{text}</span>'
        )
    return "".join(out)


def _examples_html(result: BenchResult, summary: Dict[str, Any]) -> str:
    labels = result.meta.get("label_names") or []

    def name(k: int) -> str:
        return f"{labels[k]} ({k})" if k < len(labels) else str(k)

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>captum-effattn: {html.escape(result.config.dataset)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Token attributions on {html.escape(result.config.dataset)}</h1>",
        '<p class="legend">Each row is one method, normalised by its largest '
        "absolute score on the example's content tokens (special tokens are "
        'clipped): <span style="background:rgba(220,38,'
        '38,0.7)">positive</span> <span style="background:rgba(37,99,235,0.7)">'
        "negative</span>. Hover a token for its score. Grey: special tokens. "
        "Scores explain the predicted class.</p>",
    ]
    shown = [e for e in result.examples if "tokens" in e]
    own = {
        (row["example"], row["method"]): row["value"]
        for row in result.rows
        if row["metric"] == "aopc_necessity"
    }
    for ex in shown:
        parts.append(
            f"<h2>Example {ex['example']} (test index {ex['test_index']})</h2>"
            f'<p class="meta">label: {html.escape(name(ex["label"]))}, '
            f"prediction: {html.escape(name(ex['prediction']))} "
            f"(p = {ex.get('probability', float('nan')):.3f}), "
            f"{ex['n_tokens']} tokens</p><table>"
        )
        for method in result.config.methods:
            scores = ex["scores"].get(method)
            if scores is None:
                continue
            stats = summary["methods"][method]["metrics"]
            mean = stats.get("aopc_necessity", {}).get("mean")
            value = own.get((ex["example"], method))
            note = ""
            if value is not None:  # this example's, then the method's mean
                note = f"<br><small>AOPC nec. {_fmt(value)}"
                note += (
                    f" (mean {_fmt(mean)})</small>" if mean is not None else "</small>"
                )
            elif mean is not None:
                note = f"<br><small>mean AOPC nec. {_fmt(mean)}</small>"
            pieces = ex.get("display", ex["tokens"])  # byte-level BPE: decoded
            tokens = _token_html(pieces, scores, ex.get("special"))
            parts.append(
                f'<tr><td class="method">{html.escape(METHODS[method].label)}'
                f"{note}</td><td>{tokens}</td></tr>"
            )
        parts.append("</table>")
    if not shown:
        parts.append("<p>No examples were kept for display.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


# ----------------------------------------------------------------------------


def _finite(obj: Any) -> Any:
    r"""NaN and infinities -> None, so that results.json is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_report(
    result: BenchResult,
    out: Union[str, Path, OutputDir],
    n_boot: int = 1000,
) -> List[Path]:
    r"""Write every output file of a benchmark run.

    Args:
        result (BenchResult): what :func:`~captum_effattn.benchmark.runner.
                    run_benchmark` returned (on rank 0).
        out (str, Path or OutputDir): the output folder; files are staged and
                    moved in at the end.
        n_boot (int, optional): bootstrap resamples. Default: 1000

    Returns:
        list of Path: the files written (:data:`OUTPUT_FILES`).

    Examples::

        >>> result = run_benchmark(model, tokenizer, splits.test, config)
        >>> write_report(result, "results/rt-verdict")
    """
    target = out if isinstance(out, OutputDir) else OutputDir(out)
    try:
        folder = target.staging
        frame = _frame(result)
        frame.to_csv(folder / "results.csv", index=False)
        summary = summarize(result, n_boot)
        (folder / "results.json").write_text(
            json.dumps(_finite(summary), indent=2, default=str, allow_nan=False)
        )
        (folder / "summary.md").write_text(_markdown(summary))
        _plots(summary, folder)
        (folder / "examples.html").write_text(
            _examples_html(result, summary), encoding="utf-8"
        )
        return target.commit()
    except BaseException:
        target.discard()
        raise
