"""A lease file damaged while a service runs: the next save moves it aside and starts a new
file *with the open leases of this process's running agents put back* (and says so in the
log), so the owner-death watchdog still finds them by lease.  Real processes throughout."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import trio
from _proc_helpers import poll_until
from test_watchdog import CHILD, GRACE, MARGIN, REPO, _alive, read_records, watchdogs_of

from acpx_trio._process.watchdog import WATCHDOG_ENV, WATCHDOG_LOG_ENV
from acpx_trio._store.lease_model import LeaseState
from acpx_trio._store.leases import LEASE_FILE_NAME, SyncLeaseStore


async def test_damaged_lease_file_keeps_running_agents_leased(tmp_path: Path) -> None:
    state = tmp_path / "state"
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, WATCHDOG_LOG_ENV: str(tmp_path / "wd.log")}
    env.pop(WATCHDOG_ENV, None)  # the watchdog is on
    owner = subprocess.Popen(  # noqa: ASYNC220 (started before any wait)
        [sys.executable, str(CHILD), str(state), "--sessions", "1", "--busy", "1",
         "--agent-arg=--ignore-stdin-eof", "--agent-arg=--ignore-sigterm", "--more-on-stdin"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert owner.stdin is not None
    pids: list[int] = []
    try:
        with trio.fail_after(60):
            first = (await trio.to_thread.run_sync(read_records, owner, 1))[0]
            first_pid = int(str(first["pid"]))
            pids.append(first_pid)
            lease_file = state / "acpx" / LEASE_FILE_NAME
            lease_file.write_bytes(b"\xff not a lease file")  # damaged under the service
            owner.stdin.write(b"open another\n")  # its save quarantines the damaged file
            owner.stdin.flush()
            second = (await trio.to_thread.run_sync(read_records, owner, 1))[0]
            second_pid = int(str(second["pid"]))
            pids.append(second_pid)
            leases = {x.root_pid: x for x in SyncLeaseStore(state / "acpx").list_all()}
            assert first_pid in leases, leases  # put back, not lost with the damaged file
            assert leases[first_pid].state is LeaseState.OPEN
            assert leases[first_pid].owner_pid == owner.pid
            assert leases[second_pid].state is LeaseState.OPEN
            assert any(p.name.startswith(LEASE_FILE_NAME + ".") for p in lease_file.parent
                       .iterdir() if p != lease_file), "the damaged file was not kept aside"
            await poll_until(lambda: len(watchdogs_of(owner.pid)) == 1)
            owner.send_signal(signal.SIGKILL)
            owner.wait()
            try:
                await poll_until(lambda: not _alive(first_pid) and not _alive(second_pid),
                                 seconds=GRACE + 1 + MARGIN)
            except trio.TooSlowError:
                log = tmp_path / "wd.log"
                raise AssertionError(
                    f"agents live: {[p for p in (first_pid, second_pid) if _alive(p)]}; "
                    f"watchdog log {log.read_text() if log.exists() else ''}") from None
        assert owner.stderr is not None
        err = owner.stderr.read().decode(errors="replace")
        assert "re-added the 1 open lease of this process" in err, err
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        for pid in pids:  # nothing of this test may outlive it (if an assertion failed)
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
