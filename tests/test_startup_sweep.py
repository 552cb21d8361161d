"""Start-up always sweeps, in the background: a tagged orphan of this gateway whose lease
file was deleted dies after the next start, which does not wait for it; decoys survive."""

from __future__ import annotations

from pathlib import Path

import trio
from _escape_helpers import alive as _alive
from _escape_helpers import new_marker
from _escape_helpers import spawn_orphan as _spawn
from _proc_helpers import poll_until

from acpx_trio._process.tags import lease_env
from acpx_trio._service.backends import BackendRegistry
from acpx_trio._service.open_service import open_runtime_service
from acpx_trio._store.instance import resolve_gateway_instance_id_sync


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
