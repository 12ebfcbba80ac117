"""The code stays lint-clean: `ruff check .` with pyproject.toml's rules (pyflakes' unused names and undefined
variables, pycodestyle's 120 columns, bugbear, pyupgrade for Python 3.10), over the notebooks' code cells too."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    pytest.importorskip("ruff", reason="ruff comes with the dev extra: pip install -e '.[dev]'")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
