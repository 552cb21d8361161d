"""End-to-end: SIGKILL a service that runs live mock-agent sessions, restart, nothing survives.

Real processes, real clock (see trio-anchors 2.3: never a mock clock with real children).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import trio

from acpx_trio._service.backends import BackendRegistry
from acpx_trio._service.open_service import open_runtime_service

pytestmark = pytest.mark.slow

CHILD = Path(__file__).with_name("_service_child.py")
REPO = Path(__file__).resolve().parent.parent


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def _read_records(stream: trio.abc.ReceiveStream, count: int) -> list[dict[str, object]]:
    buf = b""
    records: list[dict[str, object]] = []
    while len(records) < count:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise AssertionError(f"service child exited early after {records}")
        buf += chunk
        while b"\n" in buf and len(records) < count:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                records.append(json.loads(line))
    return records


async def test_sigkilled_service_leaves_nothing_after_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("OPENCLAW_SKIP_ACPX_RUNTIME", "OPENCLAW_ACPX_RUNTIME_STARTUP_PROBE"):
        monkeypatch.delenv(key, raising=False)
    state = tmp_path / "state"
    sessions, grandchildren = 3, 2
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    # no owner-death watchdog: this test is about what the next start-up reaps
    env = {**os.environ, "PYTHONPATH": path, "ACPX_TRIO_WATCHDOG": "0"}
    with trio.fail_after(90):
        proc = await trio.lowlevel.open_process(
            [sys.executable, str(CHILD), str(state), "--sessions", str(sessions), "--busy", "2",
             "--grandchildren", str(grandchildren), "--agent-arg=--ignore-stdin-eof"],
            stdout=subprocess.PIPE,
            env=env,
        )
        try:
            assert proc.stdout is not None
            records = await _read_records(proc.stdout, sessions + grandchildren)
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        pids = [int(str(r["pid"])) for r in records]
        helpers = [int(str(r["pid"])) for r in records if r["kind"] == "grandchild"]
        assert len(set(pids)) == sessions + grandchildren
        # The owner is gone (awaited above; its children were re-parented when it exited); its
        # helpers (stdio on /dev/null) live on as orphans.  (The agents may die of EPIPE on
        # stderr once their reader is gone; either way they must end.)
        survivors = [p for p in pids if _alive(p)]
        assert set(helpers) <= set(survivors)

        async with open_runtime_service(
            workspace_dir=tmp_path, state_dir=state, registry=BackendRegistry()
        ) as svc:
            reap = svc.startup_reap
            assert reap is not None
            assert set(survivors) <= set(reap.terminated_pids)
            assert reap.survived_pids == []
        assert [p for p in pids if _alive(p)] == []
