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
    _mypy_strict(source, tmp_path)


def _mypy_strict(source: str, tmp_path: Path) -> None:
    """``source`` passes ``mypy --strict`` against this tree."""
    path = tmp_path / "example.py"
    path.write_text(source, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary",
         "--cache-dir", str(tmp_path / "cache"), str(path)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


_EXTENSIONS = '''
import contextlib

import trio

from acpx_trio import (
    AcpxRuntime,
    AcpxRuntimeProtocol,
    LazyAcpxRuntime,
    TextDeltaEvent,
    open_runtime_service,
)


def conforms(real: AcpxRuntime, lazy: LazyAcpxRuntime) -> list[AcpxRuntimeProtocol]:
    return [real, lazy]


async def main() -> None:
    async with open_runtime_service(workspace_dir=".", state_dir="/tmp/x") as service:
        runtime = service.require_acpx_runtime()
        handle = await runtime.ensure_session(session_key="k", agent="mock")
        stream = runtime.run_turn_batches(handle=handle, text="hi", meta={"k": 1})
        async with contextlib.aclosing(stream) as batches:
            async for batch in batches:
                print([e.text for e in batch if isinstance(e, TextDeltaEvent)])
        async with contextlib.aclosing(runtime.run_turn(handle=handle, text="hi",
                                                        meta={"k": 1})) as events:
            async for _event in events:
                pass
        await runtime.set_model(handle=handle, model="m")
        print(await runtime.list_sessions(agent="mock"), await runtime.doctor(deep=True))
        await runtime.delete_session(agent="mock", session_id="s")
        await runtime.logout(agent="mock")
        runtime.set_elicitation_handler(None)


trio.run(main)
'''


def test_the_acpx_extensions_pass_mypy_strict(tmp_path: Path) -> None:
    """``require_runtime()`` is typed with the backend protocol, which lacks what acpx
    runtimes add: ``run_turn_batches``, ``set_model``, ``list_sessions``, ``run_turn(meta=)``
    and ``doctor(deep=)`` worked but failed ``mypy --strict`` (an outside review).
    ``require_acpx_runtime()`` is typed with :class:`AcpxRuntimeProtocol`, which both acpx
    runtimes satisfy."""
    pytest.importorskip("mypy")
    _mypy_strict(_EXTENSIONS, tmp_path)
