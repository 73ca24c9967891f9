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

It also renders ``docs/performance.md`` (written in Markdown by the
performance work; this site uses plain Sphinx without a Markdown parser) into
the page ``performance``: a small converter handles headings, paragraphs,
lists, fenced code, pipe tables, inline code, emphasis and links. When the
converted text would not be clean reST, the Markdown is shown verbatim
instead; when the file does not exist yet, the page says so. Either way the
``-W`` build never fails because of that file.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import List, Optional, Sequence

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
MARKDOWN_PAGES = {"performance": "performance.md"}
_LEXERS = {
    "python", "py", "bash", "sh", "shell", "console", "text", "json", "yaml",
    "ini", "toml", "pycon",
}  # fmt: skip
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_BULLET = re.compile(r"^(\s*)([-*+]|\d+[.)])\s+(.*)$")
_FENCE = re.compile(r"^\s*(```|~~~)\s*([\w+-]*)")
_RULE = re.compile(r"^\s*([-*_])(\s*\1){2,}\s*$")


def _inline(text: str) -> str:
    r"""Markdown inline markup to reST: code, links, bold, emphasis."""
    out, pos = [], 0
    for m in re.finditer(r"`([^`]+)`", text):
        out.append(_inline_plain(text[pos : m.start()]))
        out.append(f"``{m.group(1)}``")
        pos = m.end()
    out.append(_inline_plain(text[pos:]))
    return "".join(out)


def _inline_plain(text: str) -> str:
    text = re.sub(r"<!--.*?-->", "", text)
    links = []

    def link(m: "re.Match[str]") -> str:
        label, target = m.group(1), m.group(2)
        page = re.fullmatch(r"(?:\./)?([\w/-]+)\.(?:rst|md)", target)
        if page:  # another page of these docs
            links.append(f":doc:`{label} <{page.group(1)}>`")
        else:
            links.append(f"`{label} <{target}>`__")
        return f"\0{len(links) - 1}\0"

    text = re.sub(r"!?\[([^\]]+)\]\(([^)\s]+)\)", link, text)
    text = re.sub(r"(?<![\w*])_(\S.*?\S|\S)_(?!\w)", r"*\1*", text)  # _em_
    text = re.sub(r"(?<=\w)_(?!\w)", r"\\_", text)  # word_ is a reference
    text = text.replace("|", r"\|")  # |x| is a substitution
    return re.sub(r"\0(\d+)\0", lambda m: links[int(m.group(1))], text)


def _table(rows: List[str]) -> List[str]:
    cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
    cells = [c for c in cells if not all(re.fullmatch(r":?-+:?", x) for x in c)]
    width = max(len(c) for c in cells)
    lines = [".. list-table::", "   :header-rows: 1", ""]
    for row in cells:
        row = row + [""] * (width - len(row))
        lines.append(f"   * - {_inline(row[0])}".rstrip())
        lines += [f"     - {_inline(c)}".rstrip() for c in row[1:]]
    return lines + [""]


def markdown_to_rst(text: str, title: str) -> str:
    r"""Convert a simple Markdown document to reST (see the module docstring)."""
    lines = text.splitlines()
    out: List[str] = []
    underline = "=-~^\"'"
    first_heading = True
    stack: List[tuple] = []  # open list levels: (Markdown indent, reST indent)
    i = 0
    if not any(_HEADING.match(line) and line.startswith("# ") for line in lines[:3]):
        out += [title, "=" * len(title), ""]
        first_heading = False
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if fence:
            lang = fence.group(2).lower()
            out += ["", f".. code:: {lang if lang in _LEXERS else 'text'}", ""]
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(fence.group(1)):
                out.append("   " + lines[i])
                i += 1
            out.append("")
            i += 1
            continue
        heading = _HEADING.match(line)
        if heading:
            level = len(heading.group(1)) - 1
            if not first_heading or level > 0:
                level = max(level, 1)
            first_heading = False
            title_text = _inline(heading.group(2))
            out += ["", title_text, underline[min(level, 5)] * len(title_text), ""]
            i += 1
            continue
        if (
            line.lstrip().startswith("|")
            and i + 1 < len(lines)
            and re.match(r"^\s*\|?\s*:?-+", lines[i + 1])
        ):
            rows = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(lines[i])
                i += 1
            out += [""] + _table(rows)
            continue
        if _RULE.match(line):
            out.append("")
            i += 1
            continue
        bullet = _BULLET.match(line)
        if bullet:
            md_indent = len(bullet.group(1).expandtabs(4))
            marker = "-" if bullet.group(2) in "-*+" else "#."
            while stack and stack[-1][0] >= md_indent:
                stack.pop()
            indent = stack[-1][1] if stack else 0
            stack.append((md_indent, indent + len(marker) + 1))
            if out and out[-1].strip() and not _BULLET.match(lines[i - 1]):
                out.append("")
            pad = " " * indent
            out.append(f"{pad}{marker} {_inline(bullet.group(3))}")
            cont = pad + " " * (len(marker) + 1)
            i += 1
            while (
                i < len(lines)
                and lines[i].strip()
                and not _BULLET.match(lines[i])
                and lines[i].startswith(" ")
            ):
                out.append(cont + _inline(lines[i].strip()))
                i += 1
            if i < len(lines) and _BULLET.match(lines[i]):
                nxt = len(_BULLET.match(lines[i]).group(1).expandtabs(4))
                if nxt != md_indent:
                    out.append("")
            continue
        stack = []
        if line.startswith(">"):
            if out and out[-1].strip():
                out.append("")
            if not (out and out[-1] == "" and len(out) > 1 and out[-2] == ".."):
                out += ["..", ""]  # an empty comment ends any list before
            out.append("   " + _inline(line.lstrip("> ").rstrip()))
            i += 1
            continue
        if out and out[-1].lstrip().startswith(("- ", "#. ")) and line.strip():
            out.append("")
        out.append(_inline(line.rstrip()))
        i += 1
    return "\n".join(out) + "\n"


def _rst_problems(rst: str) -> Optional[str]:
    r"""The warnings docutils gives for a reST text (None when clean)."""
    from docutils.core import publish_doctree

    stream = io.StringIO()
    rst = re.sub(r":doc:`[^`]*`", "page", rst)  # a Sphinx role, unknown to docutils
    publish_doctree(
        rst,
        settings_overrides={
            "report_level": 2,
            "halt_level": 5,
            "warning_stream": stream,
            "syntax_highlight": "none",
        },
    )
    return stream.getvalue() or None


def render_markdown_page(app, docname: str, source: List[str]) -> None:
    name = MARKDOWN_PAGES.get(docname)
    if name is None:
        return
    path = Path(app.srcdir) / name
    title = docname.replace("_", " ").capitalize()
    if not path.is_file():
        source[0] = (
            f"{title}\n{'=' * len(title)}\n\n.. note::\n\n"
            f"   ``docs/{name}`` has not been written yet. It will hold the\n"
            "   solver timings and how to reproduce them (``captum-effattn "
            "speed``).\n"
        )
        return
    app.env.note_dependency(str(path))
    rst = markdown_to_rst(path.read_text(encoding="utf-8"), title)
    problems = _rst_problems(rst)
    if problems is None:
        source[0] = rst
        return
    source[0] = (
        f"{title}\n{'=' * len(title)}\n\n"
        f"The text of ``docs/{name}``, shown as written:\n\n"
        f".. literalinclude:: {name}\n   :language: text\n"
    )


def setup(app):
    app.connect("source-read", render_markdown_page)
    app.add_directive("effattn-methods", MethodsTable)
    app.add_directive("effattn-datasets", DatasetsTable)
    app.add_directive("effattn-bench-metrics", BenchMetricsTable)
    app.add_directive("effattn-architectures", ArchitecturesTable)
    app.add_directive("effattn-cli-help", CliHelp)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
