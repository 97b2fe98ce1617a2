"""Formatting is part of CI: black and isort (profile black, line length 100; pyproject.toml)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATHS = ["elasticvit_tf", "search", "export", "tests", "benchmarks", "tools", "conftest.py"]


@pytest.mark.parametrize(
    "tool, args",
    [("black", ["--check", "-q"]), ("isort", ["--check-only", "-q"])],
)
def test_formatting(tool, args):
    pytest.importorskip(tool)
    p = subprocess.run(
        [sys.executable, "-m", tool, *args, *PATHS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, f"{tool} would reformat files; run `{tool} .`:\n{p.stdout}{p.stderr}"
