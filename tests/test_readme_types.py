"""The README's usage example type-checks under ``mypy --strict`` (as users will run it).

This checks against the source tree; ``.ci/run`` repeats it against a normal (non-editable)
install in a fresh venv, which is what users get from ``pip install``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
from readme_example import example  # noqa: E402


def test_readme_example_passes_mypy_strict(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    source = example()
    assert "require_runtime()" in source
    path = tmp_path / "readme_example.py"
    path.write_text(source, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary",
         "--cache-dir", str(tmp_path / "cache"), str(path)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
