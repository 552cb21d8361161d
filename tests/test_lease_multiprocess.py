"""Two real processes writing into one lease file at once lose nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from acpx_trio.lowlevel import SyncLeaseStore

WRITER = """
import sys
from acpx_trio.lowlevel import SyncLeaseStore, new_lease
store = SyncLeaseStore(sys.argv[1])
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()  # start together
for i in range(int(sys.argv[3])):
    store.save(new_lease(gateway_instance_id=sys.argv[2], session_key=f"k{i}",
                         wrapper_root=sys.argv[1], command="agent"))
"""


def test_two_processes_300_saves_each_lose_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), gw, "300"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )
        for gw in ("gw-one", "gw-two")
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            assert p.wait(timeout=110) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    store = SyncLeaseStore(tmp_path)
    leases = store.list_all()
    assert len(leases) == 600
    assert len(store.list_open("gw-one")) == 300
    assert len(store.list_open("gw-two")) == 300
    assert store.quarantined == []
