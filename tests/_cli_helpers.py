"""Helpers for the command-line tests: run ``python -m acpx_trio`` in subprocesses.

Every wait is bounded (subprocess timeouts, condition waits with deadlines; no sleeping), and
:func:`kill_gateway_processes` SIGKILLs whatever carries a state dir's gateway id, for the
``finally`` of every test that starts agents.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
GATEWAY_ENV = "OPENCLAW_GATEWAY_INSTANCE_ID"
LEASE_ENV = "OPENCLAW_ACPX_LEASE_ID"
MOCK = f"{sys.executable} -m acpx_trio.testing.mock_agent"
#: Bound of one CLI invocation in a test.
CLI_TIMEOUT = 60.0


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test process's environment with the repository importable, no state dir override,
    no colours, and ``extra`` applied."""
    env = {k: v for k, v in os.environ.items() if k not in ("ACPX_TRIO_STATE_DIR", GATEWAY_ENV,
                                                              LEASE_ENV)}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    env["NO_COLOR"] = "1"
    # no user config file of the person running the tests (a test passes its own)
    env["XDG_CONFIG_HOME"] = str(REPO_ROOT / "tests" / "no-user-config")
    env.update(extra or {})
    return env


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "acpx_trio", *args]


def run_cli(
    *args: str,
    state_dir: Path | None = None,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = CLI_TIMEOUT,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``acpx-trio ARGS`` (with ``--state-dir`` when given) and capture its output."""
    argv = cli_argv(*args)
    if state_dir is not None:
        argv[3:3] = ["--state-dir", str(state_dir)]
    return subprocess.run(
        argv, input=input if input is not None else "", capture_output=True, text=True,
        env=cli_env(env), timeout=timeout, cwd=cwd or REPO_ROOT, check=False,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def gateway_id(state_dir: Path) -> str | None:
    try:
        return (state_dir / "gateway-instance-id").read_text().strip() or None
    except FileNotFoundError:
        return None


def tagged_pids(gateway: str) -> list[int]:
    """Live, non-zombie processes carrying ``gateway`` as their gateway id tag."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(GATEWAY_ENV) == gateway:
                found.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return found


def assert_nothing_left(state_dir: Path) -> None:
    """No process of the state dir's gateway is alive and every lease it wrote is final."""
    gw = gateway_id(state_dir)
    assert gw is not None
    assert tagged_pids(gw) == []
    leases = json_lines(run_cli("leases", "--all", "--json", state_dir=state_dir).stdout)
    assert leases and all(x["state"] in ("closed", "lost") and not x["alive"] for x in leases)


def is_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_gateway_processes(state_dir: Path, extra_gateways: Sequence[str] = ()) -> None:
    """SIGKILL every process tagged with the state dir's gateway id (and ``extra_gateways``)
    and wait for them (bounded)."""
    gateways = [g for g in [gateway_id(state_dir), *extra_gateways] if g]
    victims = []
    for gw in gateways:
        for pid in tagged_pids(gw):
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                proc.kill()
                victims.append(proc)
    psutil.wait_procs(victims, timeout=5.0)


class CliProcess:
    """A CLI run in the background whose stdout/stderr lines are collected by threads."""

    def __init__(self, *args: str, state_dir: Path, env: Mapping[str, str] | None = None):
        argv = cli_argv("--state-dir", str(state_dir), *args)
        self.popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=cli_env(env), cwd=REPO_ROOT,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._pump, args=(self.popen.stdout, self.stdout),
                             daemon=True),
            threading.Thread(target=self._pump, args=(self.popen.stderr, self.stderr),
                             daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump(self, stream: Any, sink: list[str]) -> None:
        for line in stream:
            with self._cond:
                sink.append(line)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_stderr(self, needle: str, timeout: float = 30.0) -> None:
        """Block until a stderr line contains ``needle``; AssertionError after ``timeout``."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: any(needle in line for line in self.stderr)
                or self.popen.poll() is not None, timeout=timeout)
            found = any(needle in line for line in self.stderr)
        assert ok and found, f"no {needle!r} on stderr within {timeout}s: {self.stderr!r}"

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float = CLI_TIMEOUT) -> int:
        rc = self.popen.wait(timeout=timeout)
        for t in self._threads:
            t.join(timeout=5.0)
        return rc

    def out(self) -> str:
        return "".join(self.stdout)

    def err(self) -> str:
        return "".join(self.stderr)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=10.0)


@contextlib.contextmanager
def background_cli(*args: str, state_dir: Path,
                   env: Mapping[str, str] | None = None) -> Iterator[CliProcess]:
    """A :class:`CliProcess` that is SIGKILLed (with every process of the state dir's gateway)
    when the block ends."""
    proc = CliProcess(*args, state_dir=state_dir, env=env)
    try:
        yield proc
    finally:
        proc.kill()
        kill_gateway_processes(state_dir)
