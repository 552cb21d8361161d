"""Helpers for escape tests: find the mock agent's escape artists by marker and by process
group, keep decoys, and kill everything a test started (pass or fail)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Collection, Iterator
from pathlib import Path

import psutil

from acpx_trio._process.scan import newest_pids
from acpx_trio._process.tags import lease_env

SLEEP = "import time\nwhile True: time.sleep(3600)\n"


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def spawn_orphan(marker: str, tags: dict[str, str]) -> subprocess.Popen[bytes]:
    """A sleeper in its own session that ignores SIGTERM, with ``tags`` in its environment
    (and no other ``OPENCLAW_*`` variable): an orphan of whatever the tags name."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCLAW_")}
    return subprocess.Popen(
        [sys.executable, "-c", "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
         + SLEEP, marker], env={**env, **tags}, start_new_session=True,
    )


def new_marker() -> str:
    return f"acpx-escape-{uuid.uuid4().hex[:12]}"


def stat_ids(pid: int, tid: int | None = None) -> tuple[str, int, int] | None:
    """``(state, pgid, sid)`` of a process (or of its thread ``tid``), or ``None``."""
    try:
        path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
        data = Path(path).read_bytes()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 1 :].split()
    return fields[0].decode(), int(fields[2]), int(fields[3])


def _is_process(pid: int) -> bool:
    """``/proc/TID`` answers for threads too: only thread-group leaders are processes."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1]) == pid
    except (OSError, ValueError):
        return False
    return False


def _running_thread(pid: int) -> int | None:
    """A thread of ``pid`` other than its leader that is not a zombie, if its leader is a
    zombie with threads left (it ended with ``pthread_exit``: the process runs on)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
        fields = data[data.rfind(b")") + 1 :].split()
        if fields[0] != b"Z" or int(fields[17]) < 2:
            return None
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid]
    except (OSError, IndexError, ValueError):
        return None
    for tid in tids:
        st = stat_ids(pid, tid)
        if st is not None and st[0] not in ("Z", "X"):
            return tid
    return None


def marked(marker: str) -> list[int]:
    """Live, non-zombie pids whose command line ends with ``marker`` (newest pids first, read
    straight from ``/proc``: fast enough to catch a pid hopper between two hops), and
    processes whose leader thread ended while another runs on (read through that thread).
    The mock agent that was given the marker is not one of them."""
    tail = marker.encode() + b"\0"
    out = []
    names = sorted((int(n) for n in os.listdir("/proc") if n.isdigit()), reverse=True)
    for pid in dict.fromkeys([*newest_pids(), *names, *newest_pids()]):
        where = f"/proc/{pid}"
        try:
            with open(f"{where}/cmdline", "rb") as fh:
                cmd = fh.read()
            if not cmd and (tid := _running_thread(pid)) is not None:
                with open(f"{where}/task/{tid}/cmdline", "rb") as fh:
                    cmd = fh.read()
                where = f"{where}/task/{tid}"
        except OSError:
            continue
        # (read through a running thread: it runs; else the leader's state decides)
        if (cmd.endswith(b"\0" + tail) and b"mock_agent" not in cmd
                and b"_service_child" not in cmd and _is_process(pid)
                and (where != f"/proc/{pid}"
                     or ((st := stat_ids(pid)) is not None and st[0] != "Z"))):
            out.append(pid)
    return sorted(set(out))


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) members of process group ``pgid`` (the newest pids probed first,
    twice: a hopper is among them; none at all when ``killpg(pgid, 0)`` finds no process)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except OSError:
        pass
    out = []
    names = [int(n) for n in os.listdir("/proc") if n.isdigit()]
    for pid in dict.fromkeys([*newest_pids(), *names, *newest_pids()]):
        st = stat_ids(pid)
        if st is not None and st[1] == pgid and st[0] != "Z":
            out.append(pid)
    return sorted(set(out))


def kill_group(pgid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pgid, signal.SIGKILL)


class Decoys:
    """Processes with the escapers' very command line that must survive: an untagged twin and
    one tagged with another gateway's ids (both in their own session)."""

    def __init__(self, marker: str, lease_id: str) -> None:
        argv = [sys.executable, "-c", SLEEP, marker]
        base = {k: v for k, v in os.environ.items() if not k.startswith("OPENCLAW_")}
        self.procs = [
            subprocess.Popen(argv, env=base, start_new_session=True),
            subprocess.Popen(
                argv, env={**base, **lease_env(lease_id, "gw-someone-else")},
                start_new_session=True,
            ),
        ]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def close(self) -> None:
        for p in self.procs:
            with contextlib.suppress(OSError):
                p.kill()
            p.wait()


@contextlib.contextmanager
def cleanup_marker(marker: str, pgids: Collection[int]) -> Iterator[None]:
    """On exit, SIGKILL every group in ``pgids`` and the group of every process carrying
    ``marker`` (several scans: a pid hopper is easy to miss once)."""
    try:
        yield
    finally:
        for pgid in pgids:
            kill_group(pgid)
        for _ in range(20):
            found = marked(marker)
            for pid in found:
                st = stat_ids(pid)
                if st is not None and st[1] > 1 and st[1] != os.getpgid(0):
                    kill_group(st[1])
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
