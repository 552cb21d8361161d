"""The shipped pytest plugin, run for real in a child pytest (``pytester``).

A complete example module passes; a test that leaks a process tagged with its service's
gateway id fails naming the pid, and the process is gone afterwards; a decoy tagged with
another gateway id is neither reported nor touched."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

pytest_plugins = ["pytester"]

README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_example_module() -> str:
    """The README's complete example test module for the plugin (the ```python block that
    uses the fixtures), so the documented example is the one that runs."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    (module,) = [b for b in blocks if "def test_real_mock_agent(acpx_runtime)" in b]
    return module


EXAMPLE = _readme_example_module()

LEAKY = '''
import os
import subprocess
import sys

import pytest

SLEEPER = [sys.executable, "-c", "import signal; signal.pause()"]


def spawn(gateway, lease, pid_file):
    env = dict(os.environ, OPENCLAW_GATEWAY_INSTANCE_ID=gateway, OPENCLAW_ACPX_LEASE_ID=lease)
    proc = subprocess.Popen(SLEEPER, env=env, start_new_session=True)
    with open(pid_file, "a") as f:
        f.write(f"{proc.pid}\\n")


@pytest.mark.trio
async def test_leaks_one_agent(acpx_service):
    spawn(acpx_service.gateway_instance_id, "leaked-lease", os.environ["LEAKED_PIDS"])
    spawn("some-other-gateway", "decoy-lease", os.environ["DECOY_PIDS"])


@pytest.mark.trio
async def test_next_test_starts_clean(acpx_service):
    assert acpx_service.runtime is not None
'''


def _pids(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            proc.kill()
            proc.wait(5)
        except psutil.Error:
            pass


@pytest.mark.parametrize("workers", [(), ("-n", "2")], ids=["one-process", "xdist"])
def test_example_module_and_leak_guard(
    pytester: pytest.Pytester, tmp_path: Path, workers: tuple[str, ...]
) -> None:
    """The guard names and kills exactly the leaking test's process, in one process and
    under pytest-xdist (two workers)."""
    leaked_file, decoy_file = tmp_path / "leaked", tmp_path / "decoy"
    pytester.makepyfile(test_example=EXAMPLE, test_leaky=LEAKY)
    os.environ["LEAKED_PIDS"], os.environ["DECOY_PIDS"] = str(leaked_file), str(decoy_file)
    try:
        # -rN: no short summary, whose lines repeat failure messages in full when CI is set
        result = pytester.runpytest_subprocess("-q", "-rN", *workers)
        leaked, decoys = _pids(leaked_file), _pids(decoy_file)
        assert len(leaked) == 1 and len(decoys) == 1
        result.assert_outcomes(passed=4, failed=1)  # the leaking test fails
        out = result.stdout.str()
        assert ("bringing up nodes" in out) == bool(workers)  # xdist ran it, or did not
        assert f"pid {leaked[0]} [killed]" in out
        assert "signal.pause()" in out  # the command line is named
        assert f"pid {decoys[0]}" not in out
        assert "outlived the test" in out and out.count("outlived the test") == 1
        assert not psutil.pid_exists(leaked[0]) or (
            psutil.Process(leaked[0]).status() == psutil.STATUS_ZOMBIE
        )
        decoy = psutil.Process(decoys[0])
        assert decoy.is_running() and decoy.status() != psutil.STATUS_ZOMBIE
    finally:
        del os.environ["LEAKED_PIDS"], os.environ["DECOY_PIDS"]
        _kill(_pids(leaked_file) + _pids(decoy_file))


def test_plugin_can_be_disabled(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_off="""
        def test_needs_it(acpx_config):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:acpx_trio", "-q")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'acpx_config' not found*"])


def test_plugin_module_imports_neither_trio_nor_psutil() -> None:
    code = textwrap.dedent(
        """
        import sys
        import acpx_trio.testing
        import acpx_trio.testing.pytest_plugin
        heavy = {"trio", "psutil", "msgspec"} & set(sys.modules)
        assert not heavy, heavy
        acpx_trio.testing.StubRuntime  # resolves lazily
        assert "trio" in sys.modules
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
