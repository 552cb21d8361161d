"""No guarantee traded for a benchmark: a service object restarted right after another
process on its state dir was SIGKILLed with a live agent reaps that agent at start-up, however
soon (there is no time window in which a start trusts its previous check).  Real processes:
the dead owner, its agent (which ignores SIGTERM) and a decoy with the same command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import trio

from acpx_trio._service.backends import BackendRegistry
from acpx_trio._service.context import ServiceContext
from acpx_trio._service.service import AcpxRuntimeService
from acpx_trio.testing.logger import ListLogger

REPO = Path(__file__).resolve().parent.parent
AGENT = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(600)\n"
#: The dead owner: everything imported first; on "go" it saves a lease naming itself, spawns
#: a tagged agent (the owned-launch order: lease first), prints the agent's pid and waits.
OWNER = f"""
import subprocess, sys
from acpx_trio._process.identity import process_info, self_identity
from acpx_trio._process.tags import lease_env
from acpx_trio._store.instance import resolve_gateway_instance_id_sync
from acpx_trio._store.lease_model import new_lease
from acpx_trio._store.leases import SyncLeaseStore
import msgspec
state = sys.argv[1]
gw = resolve_gateway_instance_id_sync(state)
store = SyncLeaseStore(state + "/acpx")
pid, start = self_identity()
print("ready", flush=True)
sys.stdin.readline()
lease = new_lease(gateway_instance_id=gw, session_key="s", wrapper_root=state + "/acpx",
                  command=["agent"], owner_pid=pid, owner_start_time=start)
store.save(lease)
agent = subprocess.Popen([sys.executable, "-c", {AGENT!r}, "restart-agent"],
                         env=lease_env(lease.lease_id, gw), start_new_session=True)
info = process_info(agent.pid)
store.save(msgspec.structs.replace(lease, root_pid=agent.pid, root_start_ticks=info.start_ticks,
                                   root_create_time=info.create_time))
print(agent.pid, flush=True)
sys.stdin.readline()
"""


def _popen(argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, **kwargs)  # type: ignore[call-overload,no-any-return]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_restart_right_after_an_owner_was_killed_reaps_its_agent(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (tmp_path / "ws").mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    decoy = _popen([sys.executable, "-c", AGENT, "restart-agent"], start_new_session=True)
    svc = AcpxRuntimeService(registry=BackendRegistry())
    agent_pid = 0
    owner = None
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                ctx = ServiceContext(workspace_dir=tmp_path / "ws", state_dir=state,
                                     logger=ListLogger(), nursery=nursery)
                await svc.start(ctx)  # creates the state dir and the gateway id
                await svc.stop(ctx)
                owner = _popen([sys.executable, "-c", OWNER, str(state)], env=env,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                assert owner.stdin is not None and owner.stdout is not None
                # imported and waiting for "go" (so the timing below leaves its imports out)
                ready = await trio.to_thread.run_sync(owner.stdout.readline)
                assert ready == b"ready\n", ready
                await svc.start(ctx)  # its last check: nothing to reap
                await svc.stop(ctx)
                checked = time.monotonic()
                owner.stdin.write(b"go\n")
                owner.stdin.flush()
                agent_pid = int(await trio.to_thread.run_sync(owner.stdout.readline))
                owner.send_signal(signal.SIGKILL)
                owner.wait()
                elapsed = time.monotonic() - checked
                await svc.start(ctx)  # right away
                reap = svc.startup_reap
                await svc.stop(ctx)
        assert reap is not None and agent_pid in reap.terminated_pids, (elapsed, reap)
        assert not _alive(agent_pid)
        assert decoy.poll() is None
        print(f"restart {elapsed * 1000:.0f} ms after the previous check")
        # (the old 250 ms window would have skipped this reap whenever elapsed < 0.25)
    finally:
        for proc in (decoy, owner):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        if agent_pid and _alive(agent_pid):
            os.kill(agent_pid, signal.SIGKILL)
