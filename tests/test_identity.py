"""Process identity and ownership tags, on real processes."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import psutil
import pytest
import trio
from _proc_helpers import ProcessLab, is_alive, poll_until, process_lab, wait_zombie
from hypothesis import given
from hypothesis import strategies as st

from acpx_trio._process.identity import (
    ProcessInfo,
    boot_id,
    child_identity,
    live_thread,
    live_uid,
    process_info,
    read_start_ticks,
    read_stat_state,
    running_dir,
    runs,
    same_process,
    self_identity,
    snapshot_processes,
    stat_exiting,
)
from acpx_trio._process.tags import (
    GATEWAY_ARG,
    GATEWAY_ENV_KEY,
    LEASE_ARG,
    LEASE_ENV_KEY,
    lease_args,
    lease_env,
    tags_from_cmdline,
)


@pytest.fixture
def lab() -> Iterator[ProcessLab]:
    with process_lab() as lab:
        yield lab


def test_tag_helpers_use_the_seed_names() -> None:
    assert lease_env("L1", "G1") == {
        "OPENCLAW_ACPX_LEASE_ID": "L1",
        "OPENCLAW_GATEWAY_INSTANCE_ID": "G1",
    }
    assert lease_args("L1", "G1") == [
        "--openclaw-acpx-lease-id", "L1", "--openclaw-gateway-instance-id", "G1",
    ]
    assert (LEASE_ENV_KEY, GATEWAY_ENV_KEY, LEASE_ARG, GATEWAY_ARG) == (
        "OPENCLAW_ACPX_LEASE_ID",
        "OPENCLAW_GATEWAY_INSTANCE_ID",
        "--openclaw-acpx-lease-id",
        "--openclaw-gateway-instance-id",
    )
    for bad in ("", "   ", "a\nb", "a\0b"):
        with pytest.raises(ValueError):
            lease_env(bad, "G")
        with pytest.raises(ValueError):
            lease_args("L", bad)


def test_tags_from_cmdline() -> None:
    assert tags_from_cmdline(["node", "w.mjs", *lease_args("L", "G")]) == ("L", "G")
    # last occurrence wins (seed B2 rule)
    argv = ["x", LEASE_ARG, "old", GATEWAY_ARG, "g1", LEASE_ARG, "new", GATEWAY_ARG, "g2"]
    assert tags_from_cmdline(argv) == ("new", "g2")
    assert tags_from_cmdline([f"{LEASE_ARG}=L", f"{GATEWAY_ARG}=G"]) == ("L", "G")
    assert tags_from_cmdline(["x", LEASE_ARG]) == (None, None)  # flag without value
    assert tags_from_cmdline([LEASE_ARG, "  ", GATEWAY_ARG, ""]) == (None, None)
    assert tags_from_cmdline(["--openclaw-acpx-lease-idX", "L"]) == (None, None)
    assert tags_from_cmdline([]) == (None, None)


@given(st.lists(st.text(max_size=8), max_size=12))
def test_tags_from_cmdline_never_crashes_and_round_trips(argv: list[str]) -> None:
    lease, _gw = tags_from_cmdline(argv)
    assert lease is None or lease.strip() == lease != ""
    assert tags_from_cmdline([*argv, *lease_args("LL", "GG")]) == ("LL", "GG")


def test_self_identity_and_process_info_agree() -> None:
    pid, ct = self_identity()
    me = process_info(pid)
    assert me is not None
    assert me.pid == os.getpid() and me.ppid == os.getppid()
    assert me.create_time == pytest.approx(ct, abs=0.02)
    assert me.uid == os.getuid() and me.inspectable and not me.zombie
    assert me.start_ticks is not None and me.start_ticks == read_start_ticks(pid)
    # ticks / CLK_TCK + boot time is psutil's create time
    hz = os.sysconf("SC_CLK_TCK")
    assert me.start_ticks / hz + psutil.boot_time() == pytest.approx(ct, abs=1.0)
    assert process_info(0) is None and process_info(-1) is None


def test_live_uid_reads_the_real_and_saved_uids_of_processes_only() -> None:
    """The one-read ``/proc`` answer (a reap asks it of every process it signals) is what
    psutil's uids give; a thread id is no process; a gone pid is ``None``."""
    import threading

    me = psutil.Process()
    uids = me.uids()
    expected = os.getuid() if os.getuid() in (uids.real, uids.saved) else uids.real
    assert live_uid(os.getpid()) == expected
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as child:
        try:
            assert live_uid(child.pid) == expected
        finally:
            child.kill()
            child.wait()
    assert live_uid(child.pid) is None  # reaped: gone
    ready, done = threading.Event(), threading.Event()
    thread = threading.Thread(target=lambda: (ready.set(), done.wait(10)))
    thread.start()
    try:
        ready.wait(10)
        assert thread.native_id is not None and thread.native_id != os.getpid()
        assert live_uid(thread.native_id) is None
    finally:
        done.set()
        thread.join()


def test_boot_id_is_stable() -> None:
    first = boot_id()
    assert first is not None and first == boot_id()
    uuid.UUID(first)


def test_same_process() -> None:
    base = ProcessInfo(pid=10, ppid=1, cmdline=(), create_time=100.0, uid=0, start_ticks=500)
    assert same_process(base, base)
    assert not same_process(base, msgspec.structs.replace(base, start_ticks=501))
    assert not same_process(base, msgspec.structs.replace(base, pid=11))
    # create time fallback when ticks are unknown on either side
    no_ticks = msgspec.structs.replace(base, start_ticks=None)
    assert same_process(no_ticks, msgspec.structs.replace(base, create_time=100.2))
    assert not same_process(no_ticks, msgspec.structs.replace(base, create_time=105.0))
    # ticks are authoritative: a stepped wall clock (create time moved) is still the same
    assert same_process(base, msgspec.structs.replace(base, create_time=130.0))


async def test_start_ticks_survive_a_comm_with_parentheses(lab: ProcessLab) -> None:
    spawned = lab.spawn({"role": "odd", "comm": "a) b (c) 9 9"})
    await lab.wait_ready(spawned)
    member = spawned.by_role("odd")
    assert psutil.Process(member.pid).name() == "a) b (c) 9 9"
    assert read_start_ticks(member.pid) == member.ticks


async def test_snapshot_reads_env_and_argv_tags_but_no_other_env(lab: ProcessLab) -> None:
    secret = f"sk-{uuid.uuid4().hex}"
    os.environ["ACPX_TEST_FAKE_SECRET"] = secret
    try:
        env_tagged = lab.spawn({"role": "env"}, lease_id="lease-env")
        argv_tagged = lab.spawn({"role": "argv"}, lease_id="lease-argv", env_tags=False,
                                argv_tags=True)
        untagged = lab.spawn({"role": "plain"})
        for s in (env_tagged, argv_tagged, untagged):
            await lab.wait_ready(s)
    finally:
        del os.environ["ACPX_TEST_FAKE_SECRET"]
    table = await trio.to_thread.run_sync(snapshot_processes)
    by_pid = {p.pid: p for p in table}
    assert [p.pid for p in table] == sorted(by_pid)
    e = by_pid[env_tagged.pids[0]]
    a = by_pid[argv_tagged.pids[0]]
    u = by_pid[untagged.pids[0]]
    assert (e.lease_id, e.gateway_instance_id) == ("lease-env", lab.gateway_id)
    assert (a.lease_id, a.gateway_instance_id) == ("lease-argv", lab.gateway_id)
    assert (u.lease_id, u.gateway_instance_id) == (None, None)
    for p in (e, a, u):
        assert p.inspectable and p.uid == os.getuid() and p.start_ticks is not None
    # nothing of the environment beyond the two tags is ever kept
    assert secret.encode() not in msgspec.json.encode(table)
    assert process_info(e.pid) == e


async def test_env_pair_beats_argv_and_partial_env_falls_back_to_argv(lab: ProcessLab) -> None:
    argv = [sys.executable, "-c", "import signal; signal.pause()", *lease_args("argv-l", "argv-g")]
    both = lab.spawn_command(argv, extra_env=lease_env("env-lease", "env-gw"))
    partial = lab.spawn_command(argv, extra_env={LEASE_ENV_KEY: "env-only-lease"})
    infos: list[ProcessInfo | None] = []

    def started() -> bool:
        infos[:] = [process_info(both.pid), process_info(partial.pid)]
        return all(i is not None and i.cmdline[-1:] == ("argv-g",) for i in infos)

    await poll_until(started)
    assert infos[0] is not None and infos[1] is not None
    assert (infos[0].lease_id, infos[0].gateway_instance_id) == ("env-lease", "env-gw")
    assert (infos[1].lease_id, infos[1].gateway_instance_id) == ("argv-l", "argv-g")


async def test_zombie_is_reported_as_zombie(lab: ProcessLab) -> None:
    # the parent never reaps its child, which exits at once
    spawned = lab.spawn({"role": "parent", "children": [{"role": "kid", "exit": True}]})
    await lab.wait_ready(spawned)
    kid = spawned.by_role("kid")
    await wait_zombie(kid, spawned.by_role("parent"))
    info = process_info(kid.pid)
    assert info is not None and info.zombie
    assert info.lease_id is None and info.cmdline == ()
    assert not is_alive(kid.pid)


async def test_vanished_process_is_none(lab: ProcessLab) -> None:
    spawned = await lab.wait_ready(lab.spawn({"role": "short"}))
    member = spawned.by_role("short")
    assert spawned.popen is not None
    spawned.popen.kill()
    await trio.to_thread.run_sync(spawned.popen.wait)
    info = process_info(member.pid)
    # gone, or (rarely) the pid already holds a new process with other start ticks
    assert info is None or info.start_ticks != member.ticks
    listed = snapshot_processes([member.pid, os.getpid(), os.getpid()])
    assert [p.pid for p in listed if p.start_ticks == member.ticks] == []
    assert [p.pid for p in listed if p.pid == os.getpid()] == [os.getpid()]


async def test_child_identity_vouches_only_for_an_unreaped_child(tmp_path: Path) -> None:
    """The root's identity in a lease: the same create time and start ticks as a full
    description while the child lives (and as a zombie, not yet reaped); once reaped, a
    lease records its pid alone, since the pid may already name another process."""
    from acpx_trio._process.owned import complete_lease
    from acpx_trio._store.lease_model import new_lease
    from acpx_trio._store.leases import LeaseStore

    code = "import sys; sys.stdin.read()"
    proc = await trio.lowlevel.open_process([sys.executable, "-c", code], stdin=-1)
    assert proc.stdin is not None
    full = process_info(proc.pid)
    assert full is not None
    assert child_identity(proc.pid) == (full.create_time, full.start_ticks)
    await proc.stdin.aclose()
    await poll_until(lambda: (psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE))
    assert child_identity(proc.pid) == (full.create_time, full.start_ticks)  # a zombie
    store = LeaseStore(tmp_path)
    lease = await store.save(new_lease(gateway_instance_id="gw", session_key="k",
                                       wrapper_root=str(tmp_path), command="agent"))
    log = logging.getLogger("test")
    record = await complete_lease(store, lease, proc, log)
    assert (record.create_time, record.start_ticks) == (full.create_time, full.start_ticks)
    await proc.wait()  # reaped: from now on the pid is free for anyone
    record = await complete_lease(store, lease, proc, log)
    assert record.lease.root_pid == proc.pid
    assert (record.create_time, record.start_ticks) == (None, None)
    assert record.lease.root_create_time is None and record.lease.root_start_ticks is None
    assert child_identity(2**22 + 7) is None  # beyond pid_max: no such process
    assert child_identity(os.getpid()) is None  # alive, but not a child of ours


def test_stat_exiting_reads_the_exiting_flag() -> None:
    with open(f"/proc/{os.getpid()}/stat", "rb") as fh:
        data = fh.read()
    fields = data[data.rfind(b")") + 1:].decode().split()
    assert not stat_exiting(fields)  # we are running
    flags = int(fields[6])
    assert stat_exiting([*fields[:6], str(flags | 0x4), *fields[7:]])
    assert not stat_exiting(fields[:3])  # a short read says nothing


def test_a_plain_zombie_is_known_dead_from_its_stat_alone() -> None:
    """A zombie's thread count is one (the leader, not yet released): no other thread can
    run on, so nothing is listed to find one (a reap meets thousands of zombies)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
        run = read_stat_state(child.pid)
        assert run is not None and run[0] == "Z" and run[2] == 1, run
        assert running_dir(child.pid, run[0], threads=run[2]) is None
        assert running_dir(child.pid, run[0]) is None  # the listing agrees
    finally:
        child.wait()


async def test_a_leader_that_ended_alone_is_the_process_running() -> None:
    """A process whose main thread ended (``pthread_exit``) while another thread runs on
    reads as a zombie through its leader: no command line, no environment.  It is alive,
    ours by its tags, and every reader must say so (else a close proves it gone and it
    escapes process-group mode, measured 3 of 3 before)."""
    from _attack_agent import _LEADER_EXIT

    from acpx_trio._process.reaper_os import still_running
    from acpx_trio._process.scan import fast_process_info
    from acpx_trio._process.shared_scan import TagScan

    lease, gw = str(uuid.uuid4()), f"gw-{uuid.uuid4().hex}"
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", _LEADER_EXIT, "leader-exit"], env={**os.environ,
                                                               **lease_env(lease, gw)})
    try:
        await poll_until(lambda: psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE)
        assert live_thread(proc.pid) is not None
        run = read_stat_state(proc.pid)  # the thread count says a thread runs on
        assert run is not None and run[0] == "Z" and run[2] is not None and run[2] >= 2, run
        for info in (process_info(proc.pid), fast_process_info(proc.pid)):
            assert info is not None and not info.zombie
            assert (info.lease_id, info.gateway_instance_id) == (lease, gw)
            assert info.cmdline[-1] == "leader-exit"
            assert still_running(info)
        assert proc.pid in {p.pid for p in TagScan(lease_ids=(lease,)).full()}
        assert proc.pid in {p.pid for p in TagScan(gateway_id=gw).full()}
    finally:
        proc.kill()
        await proc.wait()
    assert live_thread(proc.pid) is None


def test_runs_is_false_for_an_exiting_process_a_zombie_and_no_process() -> None:
    """What a client asks of the owner that served it: a zombie (and one caught exiting,
    whose connections close before it is a zombie) does not run."""
    assert runs(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        assert runs(child.pid)
        child.kill()
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
        assert psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE
        assert not runs(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not runs(child.pid) and not runs(0) and not runs(-1)
