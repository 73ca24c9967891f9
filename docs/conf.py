"""Sphinx configuration of the captum_effattn documentation.

Plain Sphinx with built-in extensions only; builds offline with
``make docs`` (``python -m sphinx -W --keep-going -q -b html docs
docs/_build/html``). Doctest blocks run with ``-b doctest`` (see
``tests/test_docs.py``).
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")


def _version() -> str:
    init = ROOT / "captum_effattn" / "__init__.py"
    if init.is_file():  # the checkout's version, without importing torch
        for line in init.read_text().splitlines():
            if line.startswith("__version__"):
                return line.split("=", 1)[1].strip().strip("\"'")
    from importlib.metadata import version as installed_version

    return installed_version("captum-effattn")


project = "captum_effattn"
author = "captum_effattn developers"
copyright = "2026, captum_effattn developers"
release = _version()
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx.ext.doctest",
    "effattn_docs",  # tables and --help texts from the package's registries
]

root_doc = "index"
source_suffix = {".rst": "restructuredtext"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "*.md"]
templates_path = []

# autodoc: signatures without type hints (types are in the docstrings, as in
# Captum), members in source order.
autodoc_typehints = "none"
autodoc_member_order = "bysource"
autoclass_content = "both"  # class docstring + __init__ docstring (Args)

# napoleon: Google style (Args:/Returns:/Attributes:); Attributes as :ivar:
# fields so that dataclass fields are not documented twice.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
napoleon_use_rtype = False

# doctest: the tiny random models of the docs need no download.
doctest_global_setup = """
import os
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
torch.manual_seed(0)
"""

pygments_style = "sphinx"
html_theme = "alabaster"
html_title = f"captum_effattn {release}"
html_static_path = []
html_theme_options = {
    "description": "Efficient attention for Captum",
    "fixed_sidebar": True,
}
