"""A SIGSTOPped owner-death watchdog does not go unnoticed: the owner checks it on its sweep,
kills it and arms a new one, which then does the job when the owner is SIGKILLed.  Real
processes: an owner process with a live agent (which ignores SIGTERM and stdin EOF)."""

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
from test_watchdog import CHILD, REPO, read_records, watchdogs_of

from acpx_trio._process.watchdog import WATCHDOG_ENV
from acpx_trio._store.leases import SyncLeaseStore


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_STOPPED)
    except psutil.NoSuchProcess:
        return False


def _start_owner(state: Path) -> subprocess.Popen[bytes]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    env.pop(WATCHDOG_ENV, None)
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(state), "--sessions", "1", "--busy", "0",
         "--sweep-interval", "0.2", "--agent-arg=--ignore-stdin-eof",
         "--agent-arg=--ignore-sigterm"], stdout=subprocess.PIPE, env=env)


async def test_stopped_watchdog_is_replaced_and_the_new_one_reaps(tmp_path: Path) -> None:
    state = tmp_path / "state"
    owner = _start_owner(state)
    agent = 0
    watchdogs: set[int] = set()
    try:
        (record,) = await trio.to_thread.run_sync(read_records, owner, 1)
        agent = int(str(record["pid"]))
        await poll_until(lambda: bool(watchdogs_of(owner.pid)), seconds=20)
        (first,) = watchdogs_of(owner.pid)
        watchdogs.add(first)
        os.kill(first, signal.SIGSTOP)

        def replaced() -> bool:
            now = set(watchdogs_of(owner.pid))
            watchdogs.update(now)
            return first not in now and len(now) == 1 and _running(next(iter(now)))

        await poll_until(replaced, seconds=20)  # a few sweeps of 0.2 s
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        await poll_until(lambda: not _running(agent), seconds=20)

        def final() -> bool:
            leases = SyncLeaseStore(state / "acpx").list_all()
            return bool(leases) and all(
                x.state.is_final and (x.cgroup is None or not os.path.exists(x.cgroup))
                for x in leases)

        # the new watchdog marks it once proven gone, then removes its leaf cgroup (killing
        # the watchdog before that would leave the leaf to the next start-up)
        await poll_until(final, seconds=20)
    finally:
        for pid in [agent, *watchdogs]:
            with contextlib.suppress(OSError):
                if pid:
                    os.kill(pid, signal.SIGKILL)
        if owner.poll() is None:
            owner.kill()
            owner.wait()
