"""The start-up reap runs while another service of this process (same state dir) may be
starting an agent — ``acpx-trio doctor`` checks several agents at once that way.  Its tag
sweep must read the open leases *after* each process scan: a lease is saved before its
process is spawned, so a process found by a scan then always has its lease protected.  Real
processes: the concurrently started agent survives, a true orphan (unknown lease) dies."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import uuid
from pathlib import Path

import trio

from acpx_trio._process.identity import ProcessInfo
from acpx_trio._process.reaper import default_cleanup_deps
from acpx_trio._process.tags import GATEWAY_ENV_KEY, LEASE_ENV_KEY
from acpx_trio._service.startup import reap_leases_and_orphans
from acpx_trio._store.lease_model import new_lease
from acpx_trio._store.leases import LeaseStore

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def _spawn(gateway: str, lease_id: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, GATEWAY_ENV_KEY: gateway, LEASE_ENV_KEY: lease_id}
    return subprocess.Popen(SLEEPER, env=env, start_new_session=True)


async def test_agent_started_during_the_startup_reap_is_spared(tmp_path: Path) -> None:
    gateway = str(uuid.uuid4())
    store = LeaseStore(tmp_path / "acpx")
    orphan = _spawn(gateway, str(uuid.uuid4()))  # its lease is unknown: a true orphan
    started: list[subprocess.Popen[bytes]] = []
    base = default_cleanup_deps()

    async def scan_while_another_service_starts_an_agent() -> list[ProcessInfo]:
        if not started:  # the other service: lease first, then the process
            lease = new_lease(gateway_instance_id=gateway, session_key="doctor:mock",
                              wrapper_root=store.path.parent, command=SLEEPER,
                              owner_pid=os.getpid())
            await store.save(lease)
            started.append(await trio.to_thread.run_sync(_spawn, gateway, lease.lease_id))
        return await base.list_processes()

    deps = dataclasses.replace(base, list_processes=scan_while_another_service_starts_an_agent)
    try:
        with trio.fail_after(30):
            result = await reap_leases_and_orphans(gateway, store, grace=0.5, deps=deps)
        assert started, "the scan never ran"
        assert orphan.pid in result.terminated_pids
        assert orphan.poll() is not None or orphan.wait(timeout=10) is not None
        assert started[0].poll() is None, f"the other service's agent was killed: {result}"
    finally:
        for proc in [orphan, *started]:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
