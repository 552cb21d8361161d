"""#22: the process-group close's proof at the cost of the processes started since the
agent, not of the machine.  A pid window opened before the spawn bounds where anything the
agent (or a process it tagged) can be; a scan inside it must find exactly what a full
``/proc`` listing finds, read far fewer processes, and fall back to the listing whenever the
window cannot be trusted.  Real processes: idle decoys started before the window, a tagged
tree with a ``setsid`` grandchild started after it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import acpx_trio._process.scan as scan_mod
import acpx_trio._process.shared_scan as shared_mod
from acpx_trio._process.identity import read_start_ticks
from acpx_trio._process.scan import PidWindow, open_window, window_holds
from acpx_trio._process.shared_scan import TagScan
from acpx_trio._process.tags import GATEWAY_ENV_KEY, LEASE_ENV_KEY

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")

#: the tagged tree: the root forks a child that calls setsid and forks a grandchild; each
#: prints its pid; all sleep until killed
TREE = """
import os, sys, time
print(os.getpid(), flush=True)
if os.fork() == 0:
    os.setsid()
    print(os.getpid(), flush=True)
    if os.fork() == 0:
        print(os.getpid(), flush=True)
    time.sleep(60)
    sys.exit(0)
time.sleep(60)
"""


@pytest.fixture
def decoys() -> Iterator[list[subprocess.Popen[bytes]]]:
    """150 idle processes started before any window (untagged: the listing reads them)."""
    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(150)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _tree(lease: str) -> tuple[subprocess.Popen[bytes], list[int]]:
    env = {**os.environ, LEASE_ENV_KEY: lease, GATEWAY_ENV_KEY: "gw-window"}
    root = subprocess.Popen([sys.executable, "-c", TREE], env=env, stdout=subprocess.PIPE,
                            start_new_session=True)
    assert root.stdout is not None
    pids = [int(root.stdout.readline()) for _ in range(3)]
    return root, pids


def _kill_tree(root: subprocess.Popen[bytes], pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    root.wait()


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    reads: list[int] = []
    real = shared_mod._stat_ids

    def counted(name: str) -> tuple[str, int, int, int, int] | None:
        reads.append(int(name))
        return real(name)

    monkeypatch.setattr(shared_mod, "_stat_ids", counted)
    return reads


def test_a_windowed_scan_finds_what_the_listing_finds_reading_only_the_new(
    decoys: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    window = open_window()
    assert window is not None and window_holds(window)
    lease = f"lease-{uuid.uuid4().hex}"
    root, pids = _tree(lease)
    try:
        ticks = read_start_ticks(root.pid)
        reads = _counting(monkeypatch)
        windowed = TagScan(lease_ids=[lease], roots=[root.pid], min_start_ticks=ticks,
                           window=window).full()
        end = scan_mod.last_pid()
        assert end is not None
        windowed_read = set(reads)
        reads.clear()
        listed = TagScan(lease_ids=[lease], roots=[root.pid], min_start_ticks=ticks).full()
        listed_reads = len(set(reads))
        # (compared on the tree's own: a process of another test whose environment read
        # empty in one pass, mid-exec, is an undecided candidate of that pass only)
        found = {p.pid for p in windowed if p.lease_id == lease}
        assert found == {p.pid for p in listed if p.lease_id == lease}
        assert set(pids) <= found  # the root, its child and the setsid grandchild
        assert all(d.pid not in found for d in decoys)
        assert listed_reads >= len(decoys)  # the listing reads every process on the machine
        # the window reads only the root and pids allocated since it opened (how many that is
        # depends on what other tests fork meanwhile, so it is not counted): no process older
        # than the window, none of the decoys
        assert windowed_read <= {root.pid, *scan_mod._cyclic_range(window.mark, end)}
        assert not windowed_read & {d.pid for d in decoys}
    finally:
        _kill_tree(root, pids)


def test_a_window_the_allocator_may_have_gone_round_falls_back_to_the_listing(
    decoys: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    window = open_window()
    assert window is not None
    lease = f"lease-{uuid.uuid4().hex}"
    root, pids = _tree(lease)
    try:
        # a pid_max so small that the forks since the window could have wrapped it
        monkeypatch.setattr(scan_mod, "_max_pid", lambda: window.tasks + 300)
        assert not window_holds(window)
        reads = _counting(monkeypatch)
        found = {p.pid for p in TagScan(lease_ids=[lease], roots=[root.pid],
                                        window=window).full()}
        assert set(pids) <= found
        assert len(set(reads)) >= len(decoys)
    finally:
        _kill_tree(root, pids)


def test_window_trust_follows_the_fork_count(monkeypatch: pytest.MonkeyPatch) -> None:
    window = PidWindow(mark=1000, forks=50_000, tasks=300)
    monkeypatch.setattr(scan_mod, "_max_pid", lambda: 32_768)
    cases = {
        50_000: True,  # nothing forked since
        50_000 + 8_192: True,  # at the probe cap: 2 * 8192 + 300 < 32468
        50_000 + 8_193: False,  # beyond the probe cap
        49_999: False,  # a counter that went back (another boot, a bad read)
    }
    for forks, holds in cases.items():
        monkeypatch.setattr(scan_mod, "_forks_and_tasks", lambda f=forks: (f, 400))
        assert window_holds(window) is holds, forks
    monkeypatch.setattr(scan_mod, "_max_pid", lambda: 16_000)  # 2 * 8000 + 300 > 15700
    monkeypatch.setattr(scan_mod, "_forks_and_tasks", lambda: (58_000, 400))
    assert not window_holds(window)
    monkeypatch.setattr(scan_mod, "_forks_and_tasks", lambda: None)
    assert not window_holds(window)


def test_the_kernel_counters_are_read(tmp_path: Path) -> None:
    before = open_window()
    subprocess.run(["true"], check=True)
    after = open_window()
    assert before is not None and after is not None
    assert after.forks > before.forks and after.tasks > 0


#: a root whose child leaves its session at once (no process of ours shares it)
ALONE = """
import os, sys, time
print(os.getpid(), flush=True)
if os.fork() == 0:
    os.setsid()
    print(os.getpid(), flush=True)
time.sleep(60)
"""


def test_a_process_read_in_the_middle_of_its_exec_is_read_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A process's environment reads empty for a moment while it execs (432 reads in
    200 ``exec`` calls here).  A tagged process that had left the root's session and was
    read so was taken for one not ours, and the cheap re-scans, which re-read only
    candidates, never read it again: a close could prove a tree gone with it alive (1 in
    about 620 terminals in process-group mode, an outside review).  It is a candidate now,
    read again by every later pass."""
    lease = f"lease-{uuid.uuid4().hex}"
    env = {**os.environ, LEASE_ENV_KEY: lease, GATEWAY_ENV_KEY: "gw-window"}
    root = subprocess.Popen([sys.executable, "-c", ALONE], env=env, stdout=subprocess.PIPE,
                            start_new_session=True)
    assert root.stdout is not None
    pids = [int(root.stdout.readline()) for _ in range(2)]
    try:
        real = shared_mod.read_proc
        blanked: list[int] = []

        def mid_exec(path: str) -> bytes:
            if path == f"/proc/{pids[1]}/environ" and not blanked:
                blanked.append(pids[1])  # this one read as a process in its exec reads
                return b""
            return real(path)

        monkeypatch.setattr(shared_mod, "read_proc", mid_exec)
        scan = TagScan(lease_ids=[lease], roots=[root.pid])
        first = {p.pid: p for p in scan.full()}
        assert blanked and pids[1] in first, first  # undecided: listed with the candidates
        again = {p.pid: p for p in scan.scan()}  # the cheap re-scan reads it again
        assert again[pids[1]].lease_id == lease
    finally:
        _kill_tree(root, pids)
