"""`make test` (and so CI) keeps the code as `make lint` wants it: ruff's rules and mypy's
strict types over the shipped packages. A style or type error fails the suite, naming it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import BACKGROUND, MYPY_ARGV

ROOT = Path(__file__).resolve().parents[2]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)


def test_ruff_finds_nothing() -> None:
    result = run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing() -> None:
    started = BACKGROUND.pop("mypy", None)  # begun with the session (tests/conftest.py)
    if started is None:
        proc = subprocess.run(MYPY_ARGV, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
        code, output = proc.returncode, proc.stdout + proc.stderr
    else:
        output, _ = started.communicate(timeout=300)
        code = started.returncode
    assert code == 0, output
