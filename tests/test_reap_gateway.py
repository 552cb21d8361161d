"""``reap_gateway``: one operation for start-up, the watchdog and ``acpx-trio reap`` - dry
run, owner filter, the report, the hook for extra steps - with real processes (tagged
sleepers, a live owner whose processes must survive); plus the scan pieces it stands on
(``TagScan`` re-scans, the pid chase) and the start-up sweep's proof (``SweepMemo``)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec
import psutil
import pytest
import trio
from _proc_helpers import is_alive, poll_until

from acpx_trio._process import shared_scan
from acpx_trio._process.gateway_reap import (
    ReapAction,
    ReapStepRequest,
    gateway_cleanup_deps,
    reap_gateway,
)
from acpx_trio._process.identity import boot_id, live_thread, process_info, read_stat_state
from acpx_trio._process.owner_tag import OwnerTag
from acpx_trio._process.scan import chase_new_pids, last_pid
from acpx_trio._process.shared_scan import TagScan
from acpx_trio._process.tags import lease_env
from acpx_trio._service.prepare import SweepMemo
from acpx_trio._store.lease_model import LeaseState, ProcessLease, new_lease
from acpx_trio._store.leases import LeaseStore

SLEEP = [sys.executable, "-c", "import time; time.sleep(600)"]


class Procs:
    def __init__(self) -> None:
        self.all: list[subprocess.Popen[bytes]] = []

    def spawn(self, env: dict[str, str] | None = None, argv: list[str] = SLEEP,
              stdout: int | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=stdout,
                                start_new_session=True)
        self.all.append(proc)
        _wait_exec(proc, argv)
        return proc


def _wait_exec(proc: subprocess.Popen[bytes], argv: list[str]) -> None:
    """Wait (bounded) until ``proc``'s new program shows its ``argv``: ``Popen`` returns once
    ``exec`` closed the error pipe, which the kernel does before it records where the new
    arguments and environment are, so for a moment ``/proc/PID/environ`` reads empty and a
    tag scan rightly passes the process by (CI once saw that: the full pass right after a
    spawn missed it; a later pass finds it).  Both are recorded together: once the
    arguments read back, the tags do too."""
    deadline = time.monotonic() + 30
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            if psutil.Process(proc.pid).cmdline() == argv:
                return
        assert time.monotonic() < deadline, f"{argv} did not start within 30 s"
        time.sleep(0.005)


@contextmanager
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        for proc in p.all:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _lease(gw: str, owner: subprocess.Popen[bytes] | None, root: subprocess.Popen[bytes] | None,
           lease_id: str | None = None) -> ProcessLease:
    lease = new_lease(gateway_instance_id=gw, session_key="k", wrapper_root="/w",
                      command=["x"])
    if lease_id is not None:
        lease = msgspec.structs.replace(lease, lease_id=lease_id)
    if owner is not None:
        info = process_info(owner.pid)
        assert info is not None
        lease = msgspec.structs.replace(lease, owner_pid=owner.pid,
                                        owner_start_time=info.create_time)
    if root is not None:
        info = process_info(root.pid)
        assert info is not None
        lease = msgspec.structs.replace(lease, root_pid=root.pid,
                                        root_start_ticks=info.start_ticks,
                                        root_create_time=info.create_time, boot_id=boot_id())
    return lease


def _wait_dead(proc: subprocess.Popen[bytes]) -> bool:
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        return False
    return True


async def test_dry_run_then_reap_with_report_and_steps(tmp_path: Path) -> None:
    gw = f"gw-{uuid.uuid4().hex}"
    store = LeaseStore(tmp_path / "acpx")
    asked: list[ReapStepRequest] = []

    async def step(request: ReapStepRequest) -> list[ReapAction]:
        asked.append(request)
        await trio.lowlevel.checkpoint()
        return [ReapAction(action="step-ran", reason="hook")]

    with procs() as p:
        dead_owner = p.spawn()
        dead_owner.kill()
        dead_owner.wait()
        live_owner = p.spawn()
        ids = [str(uuid.uuid4()) for _ in range(3)]
        dead_root = p.spawn(lease_env(ids[0], gw))
        live_root = p.spawn(lease_env(ids[1], gw))
        orphan = p.spawn(lease_env(ids[2], gw))  # its lease is not in the file
        decoy = p.spawn(lease_env(ids[0], "gw-someone-else"))
        # the dead owner's lease names a pid that is gone; the live one's a running process
        dead = _lease(gw, None, dead_root, ids[0])
        dead = msgspec.structs.replace(dead, owner_pid=dead_owner.pid, owner_start_time=1.0)
        await store.save(dead)
        await store.save(_lease(gw, live_owner, live_root, ids[1]))
        before = (tmp_path / "acpx" / "process-leases.json").read_bytes()

        dry = await reap_gateway(gw, store, dry_run=True, steps=[step])
        would = {a.pid for a in dry.actions if a.action == "would-terminate"}
        assert would == {dead_root.pid, orphan.pid}, dry.actions
        assert dry.left_alone == {ids[1]: "owner-alive"}
        assert any(a.action == "would-close-lease" and a.lease_id == ids[0]
                   for a in dry.actions)
        assert dry.dry_run and asked[-1].dry_run
        assert (tmp_path / "acpx" / "process-leases.json").read_bytes() == before
        assert all(x.poll() is None for x in (dead_root, orphan, live_root))

        report = await reap_gateway(gw, store, grace=0.5, steps=[step])
        assert set(report.terminated_pids) == {dead_root.pid, orphan.pid}, report
        assert report.ok and report.closed_lease_ids == [ids[0]]
        assert report.left_alone == {ids[1]: "owner-alive"}
        assert not asked[-1].dry_run and report.actions[-1].action == "step-ran"
        reasons = {a.pid: a.reason for a in report.actions if a.action == "terminated"}
        assert "not in the lease file" in reasons[orphan.pid]
        assert "owner" in reasons[dead_root.pid]
        assert _wait_dead(dead_root) and _wait_dead(orphan)
        assert live_root.poll() is None and decoy.poll() is None
        states = {x.lease_id: x.state for x in await store.list_all()}
        assert states == {ids[0]: LeaseState.CLOSED, ids[1]: LeaseState.OPEN}


async def test_owner_filter_reaps_only_that_owner(tmp_path: Path) -> None:
    gw = f"gw-{uuid.uuid4().hex}"
    store = LeaseStore(tmp_path / "acpx")
    with procs() as p:
        a_owner, b_owner = p.spawn(), p.spawn()
        a_info, b_info = process_info(a_owner.pid), process_info(b_owner.pid)
        assert a_info is not None and b_info is not None
        a_id, b_id = str(uuid.uuid4()), str(uuid.uuid4())
        a_root = p.spawn(lease_env(a_id, gw))
        b_root = p.spawn(lease_env(b_id, gw))
        await store.save(_lease(gw, a_owner, a_root, a_id))
        await store.save(_lease(gw, b_owner, b_root, b_id))
        a_owner.kill()
        b_owner.kill()
        a_owner.wait()
        b_owner.wait()
        dead_a = OwnerTag(pid=a_owner.pid, start_ticks=a_info.start_ticks,
                          create_time=a_info.create_time)
        report = await reap_gateway(gw, store, owner=dead_a, grace=0.5)
        assert report.terminated_pids == [a_root.pid] and report.closed_lease_ids == [a_id]
        assert _wait_dead(a_root) and b_root.poll() is None
        # B's lease is not the watchdog's business: untouched (open)
        states = {x.lease_id: x.state for x in await store.list_all()}
        assert states == {a_id: LeaseState.CLOSED, b_id: LeaseState.OPEN}


def test_tag_scan_rescans_only_what_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real processes; the pids allocated since the previous pass are named by the test
    (the real chase has its own test below): on a busy machine (CI, other workers spawning)
    a real quiet moment may not come within any bound, and was the only way to reach the
    incremental answer here."""
    gw = f"gw-{uuid.uuid4().hex}"
    allocated: list[int] = []

    def chase(since: int | None, visit: Callable[[int], None]) -> bool:
        assert since is not None  # a re-scan starts where the previous pass started
        for pid in allocated:
            visit(pid)
        return True

    monkeypatch.setattr(shared_scan, "chase_new_pids", chase)
    with procs() as p:
        first = p.spawn(lease_env(str(uuid.uuid4()), gw))
        gone = p.spawn(lease_env(str(uuid.uuid4()), gw))
        scan = TagScan(gateway_id=gw)
        assert {first.pid, gone.pid} <= {x.pid for x in scan.full()}
        # nothing new: the known candidates, re-read; one that ended is left out
        gone.kill()
        gone.wait()
        quiet = scan.since()
        assert quiet is not None
        # (a process of another test whose environment read empty, as in the middle of an
        # exec or under ``env -i``, is listed too: undecided, it is read again every pass)
        assert [x.pid for x in quiet if x.gateway_instance_id == gw] == [first.pid]
        assert gone.pid not in {x.pid for x in quiet}
        # a new process, untagged: a full pass all the same (no racy guess from its
        # environment), as long as it lives
        allocated.append(p.spawn().pid)
        assert scan.since() is None
        assert scan.since() is None
        p.all[-1].kill()
        p.all[-1].wait()
        assert scan.since() is not None  # a new pid whose process is gone changes nothing
        second = p.spawn(lease_env(str(uuid.uuid4()), gw))  # new and tagged: a full pass
        allocated.append(second.pid)
        assert scan.since() is None
        assert {first.pid, second.pid} <= {x.pid for x in scan.scan()}


def test_pid_chase_sees_every_pid_allocated_since() -> None:
    with procs() as p:
        mark = last_pid()
        assert mark is not None
        new = [p.spawn().pid for _ in range(3)]
        seen: list[int] = []
        assert chase_new_pids(mark, seen.append)
        assert set(new) <= set(seen)


def test_sweep_memo_skips_only_on_an_unchanged_file_after_a_clean_sweep() -> None:
    memo = SweepMemo()
    fp = (1, 2, 3, 4, 5)
    assert memo.due(fp)  # never swept
    memo.record(fp, clean=False)
    assert memo.due(fp)  # something survived: sweep again
    memo.record(fp, clean=True)
    assert not memo.due(fp)
    assert memo.due((1, 2, 3, 4, 6))  # a write since (ctime moved)
    assert memo.due(None)  # no lease file: no proof


_CHILD_OF = """
import ctypes, os, sys, threading, time
mode = sys.argv[1]
child = os.fork()
if child == 0:
    if mode == "foreign-session":
        os.setpgid(0, 0)  # another group of the same session
    if mode == "keeps-root":
        os.setresuid(65534, 0, 0)  # another user's by its real uid, root by the others
    elif mode.startswith("foreign"):
        os.setuid(65534)  # another user's process now
    if mode == "zombie":
        os._exit(0)
    if mode == "foreign-leader-exit":  # reads as a zombie through its leader, runs on
        threading.Thread(target=time.sleep, args=(600,)).start()
        ctypes.CDLL(None).pthread_exit(None)
    os.execvp("sleep", ["sleep", "600"])
sys.stdout.write(f"{child}\\n")
sys.stdout.flush()
time.sleep(600)
"""


async def _root_with_child(
    p: Procs, lease_id: str, gw: str, mode: str,
) -> tuple[subprocess.Popen[bytes], int]:
    """A tagged root in a session of its own and its child, settled: ``mode`` ``"ours"``,
    ``"zombie"`` (exited, not waited for), ``"foreign-group"`` (another user's, in the root's
    group), ``"foreign-session"`` (another user's, in another group of the session) or
    ``"foreign-leader-exit"`` (another user's, in the root's group, its main thread ended
    while another runs on: its leader reads as a zombie)."""
    root = p.spawn(lease_env(lease_id, gw), [sys.executable, "-c", _CHILD_OF, mode],
                   subprocess.PIPE)
    assert root.stdout is not None
    child = int(await trio.to_thread.run_sync(root.stdout.readline))

    def settled() -> bool:
        info = process_info(child)
        if mode == "zombie":
            return info is None or info.zombie
        if mode == "foreign-leader-exit":
            st = read_stat_state(child)
            return st is not None and st[0] == "Z" and live_thread(child) is not None
        return info is not None and "sleep" in info.cmdline

    await poll_until(settled)
    return root, child


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to start a process as another user")
async def test_a_group_holding_another_users_process_is_never_signalled(tmp_path: Path) -> None:
    """A dead owner's agent whose process group holds another user's process (a member
    that changed uid): the reap kills our root by pid and signals no group, so the other
    user's process lives."""
    gw = f"gw-{uuid.uuid4().hex}"
    store = LeaseStore(tmp_path / "acpx")
    lease_id = str(uuid.uuid4())
    with procs() as p:
        dead_owner = p.spawn()
        dead_owner.kill()
        dead_owner.wait()
        root, foreign = await _root_with_child(p, lease_id, gw, "foreign-group")
        try:
            assert psutil.Process(foreign).uids().real == 65534
            lease = msgspec.structs.replace(
                _lease(gw, None, root, lease_id), owner_pid=dead_owner.pid,
                owner_start_time=1.0, process_group_id=root.pid)
            await store.save(lease)
            report = await reap_gateway(gw, store, grace=0.5)
            assert report.terminated_pids == [root.pid], report
            assert _wait_dead(root)
            assert psutil.Process(foreign).status() != psutil.STATUS_ZOMBIE
            assert psutil.Process(foreign).uids().real == 65534
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(foreign, signal.SIGKILL)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to start a process as another user")
@pytest.mark.parametrize(("mode", "signalled"), [
    ("ours", True), ("zombie", True), ("foreign-group", False), ("foreign-session", False),
    ("foreign-leader-exit", False), ("keeps-root", True)])
async def test_the_reaps_group_signal_needs_every_process_of_the_session_ours(
    tmp_path: Path, mode: str, signalled: bool,
) -> None:
    """The gateway reap's group signal takes who may be in the group from its own scan: a
    group is signalled (probed here with signal 0) only if every live process of its
    session is ours; another user's process in the group, or anywhere in its session
    (it could join the group), keeps it from being signalled, even one whose leader reads
    as a zombie while its other thread runs (a signal to the group reaches it); a zombie
    does not, nor one that set only its real uid to another user's while it keeps ours as
    its saved uid (it can be us again at will; the kernel lets us signal it)."""
    gw = f"gw-{uuid.uuid4().hex}"
    lease_id = str(uuid.uuid4())
    with procs() as p:
        root, child = await _root_with_child(p, lease_id, gw, mode)
        try:
            deps = gateway_cleanup_deps(gw, [_lease(gw, None, root, lease_id)])
            table = await deps.list_processes()
            assert root.pid in {x.pid for x in table}
            assert deps.kill_groups is not None
            assert await deps.kill_groups([root.pid], 0) == ([root.pid] if signalled else [])
            # a second ask re-scans what changed since: same answer
            assert await deps.kill_groups([root.pid], 0) == ([root.pid] if signalled else [])
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)


class _RacedStore(LeaseStore):
    """A lease store where another reaper (the dead owner's watchdog, say) finishes the
    leases of the reap's first move (its ``closing`` mark) just before it is written
    (``race="before"``) or just after (``"after"``: while the reap's waves run)."""

    def __init__(self, state_dir: Path, race: str) -> None:
        super().__init__(state_dir)
        self.race = race
        self.raced = False

    async def _finish(self, lease_ids: Collection[str]) -> None:
        other = LeaseStore(self.path.parent)
        for state in (LeaseState.CLOSING, LeaseState.LOST):
            await other.mark_states(dict.fromkeys(lease_ids, state), skip_final=True)
        self.raced = True

    async def mark_states(
        self, updates: dict[str, LeaseState], *, skip_final: bool = False
    ) -> dict[str, ProcessLease]:
        if self.race == "before" and not self.raced:
            await self._finish(updates)
        moved = await super().mark_states(updates, skip_final=skip_final)
        if self.race == "after" and not self.raced:
            await self._finish(updates)
        return moved


@pytest.mark.parametrize("race", ["before", "after"])
async def test_a_lease_another_reaper_finished_meanwhile_stays_as_it_is(
    tmp_path: Path, race: str,
) -> None:
    """A restart's reap and the watchdog's reap of the same dead owner: the one that reads
    a lease open and finds it finished when it writes leaves it as the other wrote it (no
    LeaseStateError: the restart must not fail), and still kills what it planned to."""
    gw = f"gw-{uuid.uuid4().hex}"
    store = _RacedStore(tmp_path / "acpx", race)
    lease_id = str(uuid.uuid4())
    with procs() as p:
        dead_owner = p.spawn()
        dead_owner.kill()
        dead_owner.wait()
        root = p.spawn(lease_env(lease_id, gw))
        lease = msgspec.structs.replace(_lease(gw, None, root, lease_id),
                                        owner_pid=dead_owner.pid, owner_start_time=1.0)
        await LeaseStore(tmp_path / "acpx").save(lease)
        report = await reap_gateway(gw, store, grace=0.5)
        assert store.raced and report.terminated_pids == [root.pid], report
        assert report.closed_lease_ids == [] and report.lost_lease_ids == []
        assert _wait_dead(root)
        states = {x.lease_id: x.state for x in await LeaseStore(tmp_path / "acpx").list_all()}
        assert states == {lease_id: LeaseState.LOST}


async def test_the_reaps_group_signal_does_not_rescan_for_groups_already_empty(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once the trees are gone (the usual case at a reap's SIGKILL step), their groups have
    no member left: the group signal re-scans nothing and signals nothing.  A group that
    still has a member is re-scanned for and signalled as before, beside an empty one."""
    gw = f"gw-{uuid.uuid4().hex}"
    passes: list[str] = []

    def count(name: str) -> None:
        real = getattr(TagScan, name)

        def counted(self: TagScan) -> object:
            passes.append(name)
            return real(self)

        monkeypatch.setattr(TagScan, name, counted)

    count("full")
    count("since")
    with procs() as p:
        gone = p.spawn(lease_env(str(uuid.uuid4()), gw))
        live = p.spawn(lease_env(str(uuid.uuid4()), gw))
        deps = gateway_cleanup_deps(gw, [_lease(gw, None, gone), _lease(gw, None, live)])
        assert deps.kill_groups is not None
        assert {gone.pid, live.pid} <= {x.pid for x in await deps.list_processes()}
        gone.kill()
        gone.wait()  # reaped: its group (its own session's) has no member left
        passes.clear()
        assert await deps.kill_groups([gone.pid], signal.SIGKILL) == []
        assert passes == []
        assert await deps.kill_groups([gone.pid, live.pid], 0) == [live.pid]
        assert passes
        assert live.poll() is None


#: A lease's root (in its own session) whose child drops every tag (``env -i``) staying in
#: the root's group and session; prints the child's pid, then exits, left unreaped by its
#: parent (the test): a zombie, as under an init slow to reap.
_ZOMBIE_ROOT = r"""
import os, sys
child = os.fork()
if child == 0:
    os.execve(sys.executable, [sys.executable, "-c", "import signal; signal.pause()"], {})
print(child, flush=True)
os._exit(0)
"""


def _untagged(pid: int) -> bool:
    """``pid`` runs with an empty environment (its ``exec`` is done)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return fh.read() == b"" and _state(pid) not in (None, "Z")
    except OSError:
        return False


def _state(pid: int) -> str | None:
    stat = read_stat_state(pid)
    return None if stat is None else stat[0]


def test_a_zombie_roots_env_cleared_child_does_not_outlive_the_reap(tmp_path: Path) -> None:
    """The owner is dead and the lease's root has exited but is not reaped yet (a zombie:
    an init slow to reap, a pid 1 that never does); its ``env -i`` child, in the root's
    group and session, carries no tag.  The reap proves the zombie is the lease's root by
    its start ticks and kills the group's members (before: the child lived on, 30 of 30,
    and the lease was final, so nothing would ever find it again)."""
    for trial in range(3):
        _zombie_root_trial(tmp_path / f"trial-{trial}")


def _zombie_root_trial(where: Path) -> None:
    gateway = f"gw-zroot-{uuid.uuid4().hex[:8]}"
    store = LeaseStore(where)
    dead = subprocess.Popen(["true"])
    dead.wait()
    lease = new_lease(gateway_instance_id=gateway, session_key="k", wrapper_root=str(where),
                      command=["x"], owner_pid=dead.pid, owner_start_time=1.0)
    trio.run(store.save, lease)
    root = subprocess.Popen([sys.executable, "-c", _ZOMBIE_ROOT], stdout=subprocess.PIPE,
                            env={**os.environ, **lease_env(lease.lease_id, gateway)},
                            start_new_session=True)
    assert root.stdout is not None
    child = int(root.stdout.readline())
    try:
        info = process_info(root.pid)
        assert info is not None
        trio.run(store.save, msgspec.structs.replace(
            lease, root_pid=root.pid, root_start_ticks=info.start_ticks, boot_id=boot_id(),
            process_group_id=root.pid))
        trio.run(poll_until, lambda: _state(root.pid) == "Z" and _untagged(child))
        report = trio.run(lambda: reap_gateway(gateway, store, grace=0.2))
        assert report.ok, report
        assert child in {a.pid for a in report.actions if a.action == "terminated"}
        trio.run(poll_until, lambda: not is_alive(child))
    finally:
        with contextlib.suppress(OSError):
            os.kill(child, signal.SIGKILL)
        root.wait()
