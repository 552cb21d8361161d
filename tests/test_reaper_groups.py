"""Whole process groups and sessions are killed, and waves repeat until nothing is left:
pid hoppers (``setsid`` + ``fork``/``_exit`` loop) and env-scrubbed group members die with
their agent; decoys with the same command line survive.  Real processes, real clock."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import trio
from _escape_helpers import (
    Decoys,
    cleanup_marker,
    group_members,
    marked,
    new_marker,
    stat_ids,
)
from _proc_helpers import poll_until

from acpx_trio._process.agent import AgentProcess, AgentSpawn
from acpx_trio._process.identity import ProcessInfo
from acpx_trio._process.reap_plan import LeaseTarget, plan_leases
from acpx_trio._store.lease_model import LeaseState
from acpx_trio._store.leases import LeaseStore

MOCK = [sys.executable, "-m", "acpx_trio.testing.mock_agent"]


async def _hopper_group(marker: str, agent_pid: int) -> int:
    """Wait until the hopper runs; its process group id (stable while it hops)."""
    found: list[int] = []

    def seen() -> bool:
        for pid in marked(marker):
            st = stat_ids(pid)
            if st is not None and st[1] == st[2] and st[1] not in (pid, agent_pid):  # hopped
                found.append(st[1])
                return True
        return False

    await poll_until(seen, seconds=20)
    return found[0]


@pytest.mark.parametrize("ignore_sigterm", [False, True])
async def test_pid_hopper_and_scrubbed_child_die_on_close(
    tmp_path: Path, ignore_sigterm: bool
) -> None:
    hop, scrub = new_marker(), new_marker()
    gw = "gw-groups-test"
    store = LeaseStore(tmp_path / "state")
    argv = [*MOCK, "--spawn-pid-hopper", hop, "--spawn-scrubbed-child", scrub]
    if ignore_sigterm:
        argv.append("--ignore-sigterm")
    agent = AgentProcess(
        AgentSpawn(
            argv=tuple(argv), cwd=str(tmp_path), session_key="s", gateway_instance_id=gw,
            kill_grace=0.5,
        ),
        lease_store=store,
    )
    lease_id = ""
    pgids: list[int] = []
    decoys: list[Decoys] = []
    with cleanup_marker(hop, pgids), cleanup_marker(scrub, pgids):
        try:
            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:
                    await nursery.start(agent.run)
                    await agent.wait_recorded()
                    assert agent.lease_id is not None and agent.pid is not None
                    lease_id = agent.lease_id
                    pgids.append(agent.pid)
                    decoys += [Decoys(hop, lease_id), Decoys(scrub, lease_id)]
                    pgids.append(await _hopper_group(hop, agent.pid))
                    await poll_until(lambda: bool(set(marked(scrub)) - set(decoys[1].pids)))
                    scrubbed = [p for p in marked(scrub) if p not in decoys[1].pids]
                    st = stat_ids(scrubbed[0])
                    assert st is not None and st[1] == agent.pid  # in the agent's group
                    await agent.aclose()
            # gone after close (the group ids stay reserved while any member lives; a
            # SIGKILLed process may take a moment to turn zombie: wait for that, briefly)
            await poll_until(lambda: group_members(pgids[1]) == [], seconds=5)
            await poll_until(lambda: group_members(agent.pid) == [], seconds=5)
            await poll_until(lambda: sorted(marked(hop)) == sorted(decoys[0].pids), seconds=5)
            await poll_until(lambda: sorted(marked(scrub)) == sorted(decoys[1].pids), seconds=5)
            assert all(d.alive() for d in decoys)
            lease = await store.load(lease_id)
            assert lease is not None and lease.state is LeaseState.CLOSED
        finally:
            for d in decoys:
                d.close()


def _p(pid: int, ppid: int, pgid: int, sid: int, *, lease: str | None = None,
       zombie: bool = False, uid: int = 0) -> ProcessInfo:
    return ProcessInfo(
        pid=pid, ppid=ppid, cmdline=("x",), create_time=1.0, uid=uid, start_ticks=pid,
        zombie=zombie, lease_id=lease, gateway_instance_id="G" if lease else None,
        pgid=pgid, sid=sid,
    )


def test_plan_group_rules() -> None:
    """Pure rules: root's group/session members need no tags; a leaderless hopper group is
    ours when nothing foreign lives in it; a tagged zombie's children are ours; our own
    session, another user's member and a foreign member stop expansion."""
    me = _p(50, 1, 50, 50)
    root = _p(100, 50, 100, 100, lease="L")
    scrubbed = _p(101, 100, 100, 100)  # env -i child in the root's group
    hopper = _p(300, 1, 200, 200, lease="L")  # setsid'd at 200 (gone), hopped to 300
    scrubbed_hopper_kid = _p(301, 300, 200, 200)
    zombie = _p(400, 1, 400, 400, zombie=True)
    zkid = _p(401, 400, 400, 400)
    foreign_grp = _p(500, 1, 500, 500)  # a user's shell session (leader alive, untagged)
    tagged_in_foreign = _p(501, 500, 500, 500, lease="L")
    untagged_in_foreign = _p(502, 500, 500, 500)
    mine_in_own_session = _p(600, 50, 50, 50, lease="L")
    other_user = _p(102, 100, 100, 100, uid=7)
    table = [me, root, scrubbed, hopper, scrubbed_hopper_kid, zombie, zkid, foreign_grp,
             tagged_in_foreign, untagged_in_foreign, mine_in_own_session, other_user]
    target = LeaseTarget(lease_id="L", gateway_instance_id="G", root_pid=100,
                         root_start_ticks=100)
    plan = plan_leases(table, [target], self_pid=50, self_uid=0, self_pgid=50, self_sid=50,
                       known=[(400, 400)])
    got = {p.pid for p in plan.targets}
    assert got == {100, 101, 300, 301, 401, 501, 600}
    assert 102 not in got and plan.skipped[102] == "other-user"
    assert 100 not in plan.groups  # tainted by another user's member: per pid only
    assert 200 in plan.groups and 400 in plan.groups
    assert 500 not in plan.groups and 50 not in plan.groups
    # without our own group/session known, nothing expands (fakes, old callers)
    old = plan_leases(table, [target], self_pid=50, self_uid=0, known=[(400, 400)])
    assert {p.pid for p in old.targets} == {100, 300, 501, 600} and old.groups == []



@pytest.mark.parametrize("ticks", [100, 99, None])
def test_a_zombie_roots_group_and_session_are_the_leases(ticks: int | None) -> None:
    """The lease's root exited but is not reaped yet (init slow to reap, a pid 1 that never
    does): a zombie still holds its pid, so its group and session are still the lease's
    when its start ticks prove it is the root the lease recorded; their untagged members
    (an ``env -i`` child) are targets, the zombie itself never is.  A zombie whose ticks
    differ (the pid reused), or a lease that recorded none, proves nothing.  Before, a
    zombie root claimed nothing and such a member outlived the reap (30 of 30)."""
    me = _p(50, 1, 50, 50)
    root = _p(100, 1, 100, 100, zombie=True)  # start ticks 100, as every fake's = its pid
    scrubbed = _p(101, 1, 100, 100)  # env -i child, re-parented, in the root's group
    stranger = _p(102, 1, 102, 102)  # another session entirely
    target = LeaseTarget(lease_id="L", gateway_instance_id="G", root_pid=100,
                         root_start_ticks=ticks)
    plan = plan_leases([me, root, scrubbed, stranger], [target], self_pid=50, self_uid=0,
                       self_pgid=50, self_sid=50)
    got = {p.pid for p in plan.targets}
    if ticks == 100:
        assert got == {101} and plan.groups == [100]
    else:
        assert got == set() and plan.groups == []
    assert plan.root_reasons["L"] == "missing-root"

def _kernel() -> tuple[int, int]:
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def test_cgroup_probe_explains_itself_and_leaves_nothing() -> None:
    from pathlib import Path

    from acpx_trio._process.cgroup import probe_cgroup_kill

    probe = probe_cgroup_kill()
    assert probe.reason and (probe.path is not None or not probe.usable)
    if probe.path is not None and Path(probe.path).is_dir():
        # (ours only: other tests' processes probe the same cgroup at the same time)
        mine = f"acpx-trio-probe-{os.getpid()}-*"
        assert not list(Path(probe.path).glob(mine)), "the probe child stayed"
    # where a child of our cgroup can be made, the truth is that cgroup.kill is there
    # (kernel >= 5.14; the old probe looked only at the root cgroup, which never has it)
    if probe.path is not None and os.access(probe.path, os.W_OK) and _kernel() >= (5, 14):
        assert probe.usable, probe.reason
