"""Adversarial review: same-uid processes that are not ours but look like ours — tag names
with a prefix or suffix, lower-case names, our ids in the command line instead of the
environment, our gateway id as a prefix of theirs — survive ``acpx-trio reap``, run beside a
real orphan of ours (tagged, lease closed) that must die, so the reap provably ran.
(Our exact gateway id with an unknown lease id is reaped by design: README, reap table.)"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from _cli_helpers import (
    GATEWAY_ENV,
    LEASE_ENV,
    cli_env,
    is_alive,
    json_lines,
    kill_gateway_processes,
    run_cli,
)

from acpx_trio._process.tags import lease_env
from acpx_trio._store.instance import resolve_gateway_instance_id_sync
from acpx_trio._store.lease_model import LeaseState, new_lease
from acpx_trio._store.leases import SyncLeaseStore

SLEEPER = "import signal\nprint('ready', flush=True)\nwhile True: signal.pause()\n"


@contextlib.contextmanager
def _sleeper(env: Mapping[str, str], *argv: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", SLEEPER, *argv], env=cli_env(env),
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=10)


def test_reap_kills_our_orphan_and_no_lookalike(tmp_path: Path) -> None:
    gw = resolve_gateway_instance_id_sync(tmp_path)
    store = SyncLeaseStore(tmp_path / "acpx")
    lease = new_lease(gateway_instance_id=gw, session_key="s", wrapper_root=tmp_path,
                      command=["sleeper"])
    store.save(lease)
    store.mark_state(lease.lease_id, LeaseState.CLOSED)
    lid = lease.lease_id
    lookalikes: list[tuple[dict[str, str], tuple[str, ...]]] = [
        ({"X" + GATEWAY_ENV: gw, "X" + LEASE_ENV: lid}, ()),
        ({GATEWAY_ENV + "_OLD": gw, LEASE_ENV + "_OLD": lid}, ()),
        ({GATEWAY_ENV.lower(): gw, LEASE_ENV.lower(): lid}, ()),
        ({}, (f"{GATEWAY_ENV}={gw}", f"{LEASE_ENV}={lid}")),
        ({GATEWAY_ENV: gw + "-forged", LEASE_ENV: lid}, ()),
        ({GATEWAY_ENV: " " + gw, LEASE_ENV: lid}, ()),
    ]
    try:
        with contextlib.ExitStack() as stack:
            orphan = stack.enter_context(_sleeper(lease_env(lid, gw)))
            decoys = [stack.enter_context(_sleeper(env, *argv)) for env, argv in lookalikes]
            for _ in range(3):
                done = run_cli("reap", "--json", state_dir=tmp_path)
                assert done.returncode == 0, done.stdout + done.stderr
                killed = {r["pid"] for r in json_lines(done.stdout)
                          if r["action"] == "terminated"}
                named = {d.pid: lookalikes[i] for i, d in enumerate(decoys)}
                assert killed <= {orphan.pid}, [named.get(pid, pid) for pid in killed]
            assert orphan.wait(timeout=10) == -signal.SIGTERM
            assert [d.pid for d in decoys if not is_alive(d.pid)] == []
    finally:
        kill_gateway_processes(tmp_path)
