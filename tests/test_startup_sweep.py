"""Start-up always sweeps, in the background: a tagged orphan of this gateway whose lease
file was deleted dies after the next start, which does not wait for it; decoys survive."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import trio
from _escape_helpers import SLEEP, new_marker
from _proc_helpers import poll_until

from acpx_trio._process.identity import lease_env
from acpx_trio._service.backends import BackendRegistry
from acpx_trio._service.open_service import open_runtime_service
from acpx_trio._store.instance import resolve_gateway_instance_id_sync


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _spawn(marker: str, tags: dict[str, str]) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCLAW_")}
    return subprocess.Popen(
        [sys.executable, "-c", "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
         + SLEEP, marker], env={**env, **tags}, start_new_session=True,
    )


async def test_deleted_lease_file_orphan_dies_after_next_start(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    gw = resolve_gateway_instance_id_sync(state)
    marker = new_marker()
    orphan = _spawn(marker, lease_env("lease-whose-file-was-deleted", gw))
    decoys = [_spawn(marker, {}), _spawn(marker, lease_env("lease-whose-file-was-deleted",
                                                           "another-gateway"))]
    procs = [orphan, *decoys]
    try:
        with trio.fail_after(30):
            assert not (state / "acpx" / "process-leases.json").exists()
            async with open_runtime_service(
                workspace_dir=tmp_path, state_dir=state, registry=BackendRegistry(),
                plugin_config={"killGraceSeconds": 2},
            ):
                # start returned without waiting for the sweep (the orphan ignores SIGTERM:
                # it needs the 2 s grace and a SIGKILL)
                assert _alive(orphan.pid)
                await poll_until(lambda: not _alive(orphan.pid), seconds=15)
            assert all(d.poll() is None for d in decoys)
    finally:
        for p in procs:
            p.kill()
            p.wait()
