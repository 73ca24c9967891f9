r"""The example scripts of ``examples/`` run offline and write their output.

Each script runs in a subprocess with ``--out tmp_path`` (slow: a real model,
real documents). The examples use a cached fine-tuned model when there is
one, else the base MiniLM with an untrained head; they never fine-tune.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# script -> (extra arguments that keep the run short, the file it writes)
CASES = {
    "explain_one.py": ([], "explain_one.html"),
    "compare_methods.py": (["--n", "2", "--ig-steps", "8"], "compare_methods.csv"),
    "plot_matrices.py": (["--tokens", "48"], "matrices.png"),
    "tutorial.py": (["--ig-steps", "8", "--lime-samples", "100"], "tutorial.txt"),
}


def test_every_example_is_tested():
    scripts = {p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")}
    assert scripts == set(CASES)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(CASES))
def test_example_runs(script, tmp_path):
    extra, output = CASES[script]
    env = dict(os.environ, HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--out", str(tmp_path), *extra],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    written = tmp_path / output
    assert written.is_file() and written.stat().st_size > 0, proc.stdout[-2000:]
    assert f"wrote {written}" in proc.stdout


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("compare_methods.py", ["--fraction", "0"], "must lie in (0, 1]"),
        ("compare_methods.py", ["--max-length", "1"], "must be at least 3"),
        ("explain_one.py", ["--text", " "], "--text is empty"),
    ],
)
def test_example_refuses_bad_arguments_at_once(script, args, message, tmp_path):
    # before any model is loaded: --fraction 0 once failed after all the
    # work, --max-length 1 and an empty --text were silently ignored
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--out", str(tmp_path), *args],
        cwd=tmp_path,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert not list(tmp_path.iterdir())


def _run(script, args, tmp_path):
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--out", str(tmp_path), *args],
        cwd=tmp_path,
        env=dict(os.environ, HF_HUB_OFFLINE="1", MPLBACKEND="Agg"),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_example_refuses_a_missing_model_folder(tmp_path):
    # a FileNotFoundError traceback before
    proc = _run("explain_one.py", ["--model", str(tmp_path / "nope")], tmp_path)
    assert proc.returncode == 1 and "no such model folder" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow  # loads the real model and explains a document
def test_example_cuts_its_length_to_the_model(tmp_path):
    # 600 tokens on a 512-position model failed inside the model
    proc = _run("plot_matrices.py", ["--tokens", "600"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "more than the model's 512; using 512" in proc.stdout
