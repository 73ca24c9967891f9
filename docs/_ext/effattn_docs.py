"""Directives that render tables and help texts from the package's registries.

The method, data set and metric tables of the docs and the ``--help`` texts
of the command line come from the same objects as the CLI
(:data:`~captum_effattn.benchmark.methods.METHODS`,
:data:`~captum_effattn.benchmark.data.DATASETS`,
:data:`~captum_effattn.benchmark.runner.METRICS`,
:func:`~captum_effattn.cli.build_parser`), so the docs cannot disagree with
the code.

Directives::

    .. effattn-methods::
    .. effattn-datasets::
    .. effattn-bench-metrics::
    .. effattn-architectures::
    .. effattn-cli-help:: bench
"""

from __future__ import annotations

import os
import re
from typing import List, Sequence

from docutils import nodes
from sphinx.util.docutils import SphinxDirective

_SPECIAL = re.compile(r"([\\*`|_])")


def _text(value: object) -> str:
    r"""Escape inline markup characters of plain text for reST."""
    return _SPECIAL.sub(r"\\\1", str(value))


def _list_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], widths: str
) -> str:
    lines = [".. list-table::", "   :header-rows: 1", f"   :widths: {widths}", ""]
    for row in [list(header)] + [list(r) for r in rows]:
        lines.append(f"   * - {row[0]}")
        lines += [f"     - {cell}" for cell in row[1:]]
    return "\n".join(lines) + "\n"


class _TableDirective(SphinxDirective):
    has_content = False

    def rst(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def run(self) -> List[nodes.Node]:
        return list(self.parse_text_to_nodes(self.rst()))


class MethodsTable(_TableDirective):
    def rst(self) -> str:
        from captum_effattn.benchmark.methods import METHODS

        rows = [
            (
                f"``{name}``",
                _text(spec.description),
                _text(spec.cost),
                "yes" if spec.default else "no",
            )
            for name, spec in METHODS.items()
        ]
        return _list_table(
            ("``--methods`` name", "what", "cost per example", "default"),
            rows,
            "18 50 22 10",
        )


class DatasetsTable(_TableDirective):
    def rst(self) -> str:
        from captum_effattn.benchmark.data import DATASETS

        rows = [
            (f"``{name}``", _text(info.description)) for name, info in DATASETS.items()
        ]
        rows.append(
            (
                "``csv:PATH``",
                "your CSV file with columns text, label (and optionally group)",
            )
        )
        return _list_table(("``--dataset``", "what"), rows, "20 80")


class BenchMetricsTable(_TableDirective):
    def rst(self) -> str:
        from captum_effattn.benchmark.runner import METRICS

        rows = [
            (
                f"``{name}``",
                _text(spec.label),
                "higher" if spec.higher_is_better else "lower",
                _text(spec.description),
                f"``{spec.group}``",
            )
            for name, spec in METRICS.items()
        ]
        return _list_table(
            ("metric", "label", "better", "definition", "group"),
            rows,
            "20 18 8 40 14",
        )


class ArchitecturesTable(_TableDirective):
    r"""The adapter table, with what is known to be tested on real models."""

    TESTED = {
        "bert": "real model (all-MiniLM-L6-v2) and tiny random model",
    }

    def rst(self) -> str:
        from captum_effattn._core.adapters import ARCHITECTURES

        encoder_rows, decoder_rows = [], []
        for name in sorted(ARCHITECTURES):
            spec = ARCHITECTURES[name]
            if spec.causal:
                decoder_rows.append(
                    (
                        f"``{name}``",
                        "decoder (causal)",
                        f"``{spec.attention}``",
                        "tiny random model, causal mask, left padding"
                        + ("" if name == "gpt2" else ", grouped KV heads")
                        + " (``tests/core/test_architectures.py``)",
                    )
                )
            else:
                encoder_rows.append(
                    (
                        f"``{name}``",
                        "encoder",
                        f"``{spec.attention}``",
                        self.TESTED.get(name, "tiny random model")
                        + " (``tests/core/test_architectures.py``)",
                    )
                )
        return _list_table(
            ("``model_type``", "kind", "attention module (per layer)", "tested"),
            encoder_rows + decoder_rows,
            "16 16 26 42",
        )


class CliHelp(SphinxDirective):
    r"""The ``--help`` text of ``captum-effattn`` or one of its subcommands."""

    has_content = False
    optional_arguments = 1

    def run(self) -> List[nodes.Node]:
        from captum_effattn.cli import build_parser

        old = os.environ.get("COLUMNS")
        os.environ["COLUMNS"] = "88"
        try:
            parser = build_parser()
            if self.arguments:
                sub = next(
                    a
                    for a in parser._actions
                    if a.__class__.__name__ == "_SubParsersAction"
                )
                parser = sub.choices[self.arguments[0]]
            text = parser.format_help()
        finally:
            if old is None:
                os.environ.pop("COLUMNS", None)
            else:
                os.environ["COLUMNS"] = old
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


# ---------------------------------------------------------------------------
# Markdown page


#: docname -> Markdown file (relative to the docs folder) rendered into it.
def setup(app):
    app.add_directive("effattn-methods", MethodsTable)
    app.add_directive("effattn-datasets", DatasetsTable)
    app.add_directive("effattn-bench-metrics", BenchMetricsTable)
    app.add_directive("effattn-architectures", ArchitecturesTable)
    app.add_directive("effattn-cli-help", CliHelp)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
