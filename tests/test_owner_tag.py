"""The owner tag (``OPENCLAW_ACPX_OWNER``): a lease record lost to a corrupt lease file does
not expose a live owner's agents to a second process on the same state dir (``acpx-trio
reap``, another service's start-up sweep); once that owner is SIGKILLed, its watchdog kills
them by the tag.  Pure parts: parsing, identity matching, the planner's exemption."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import msgspec
import pytest
import trio
from _cli_helpers import run_cli
from _escape_helpers import alive as _alive
from _escape_helpers import new_marker
from _escape_helpers import spawn_orphan as _orphan
from _proc_helpers import poll_until
from hypothesis import given
from hypothesis import strategies as st
from test_watchdog import read_records, start_owner, watchdogs_of

from acpx_trio._process.identity import ProcessInfo
from acpx_trio._process.owner_tag import (
    OwnerTag,
    names_owner,
    owner_alive_elsewhere,
    owner_tag,
    parse_owner_tag,
)
from acpx_trio._process.reap_plan import OWNER_ALIVE, plan_orphans
from acpx_trio._process.tags import OWNER_ENV_KEY, lease_env
from acpx_trio._store.instance import resolve_gateway_instance_id_sync

ME, UID, GW = 4242, 1000, "gw"


def _info(pid: int, *, ticks: int = 7, owner: str | None = None, uid: int = UID,
          zombie: bool = False, tagged: bool = True) -> ProcessInfo:
    return ProcessInfo(pid=pid, ppid=1, cmdline=("x",), create_time=1000.0 + ticks / 100,
                       uid=uid, start_ticks=ticks, zombie=zombie,
                       lease_id="L" if tagged else None,
                       gateway_instance_id=GW if tagged else None, owner=owner)


@given(st.integers(2, 2**22), st.one_of(st.none(), st.integers(0, 2**40)),
       st.floats(0, 2e9, allow_nan=False))
def test_owner_tag_round_trips(pid: int, ticks: int | None, create: float) -> None:
    tag = parse_owner_tag(owner_tag(pid, ticks, create))
    assert tag is not None and tag.pid == pid and tag.start_ticks == ticks
    assert abs(tag.create_time - create) < 0.001


@pytest.mark.parametrize("raw", [None, "", "1:2:3", "x:1:2", "12:-1:3", "12:1", "12:1:2:3",
                                 "12:a:1", "12:1:nan"])
def test_malformed_owner_tag_protects_nothing(raw: str | None) -> None:
    assert parse_owner_tag(raw) is None


def test_live_other_owner_exempts_dead_or_reused_or_self_does_not() -> None:
    owner = _info(77, ticks=500, tagged=False)
    tag = owner_tag(77, 500, owner.create_time)
    agent = _info(90, owner=tag)
    table = {p.pid: p for p in (owner, agent)}
    assert owner_alive_elsewhere(agent, table, ME, UID)
    assert not owner_alive_elsewhere(agent, {90: agent}, ME, UID)  # owner gone
    reused = _info(77, ticks=501, tagged=False)
    assert not owner_alive_elsewhere(agent, {77: reused, 90: agent}, ME, UID)
    zombie = _info(77, ticks=500, zombie=True, tagged=False)
    assert not owner_alive_elsewhere(agent, {77: zombie}, ME, UID)
    other_uid = _info(77, ticks=500, uid=0, tagged=False)
    assert not owner_alive_elsewhere(agent, {77: other_uid}, ME, UID)
    assert not owner_alive_elsewhere(agent, table, 77, UID)  # the sweeper is the owner
    assert not owner_alive_elsewhere(_info(91), table, ME, UID)  # untagged
    plan = plan_orphans([owner, agent, _info(92)], GW, self_pid=ME, self_uid=UID)
    assert [p.pid for p in plan.targets] == [92]
    assert plan.skipped[90] == OWNER_ALIVE
    # the watchdog of owner 77 (dead by then) targets exactly what names it
    dead = OwnerTag(pid=77, start_ticks=500, create_time=owner.create_time)
    assert names_owner(agent, dead)
    only = plan_orphans([agent, _info(92)], GW, self_pid=ME, self_uid=UID, only_owner=dead)
    assert [p.pid for p in only.targets] == [90]


# ------------------------------------------------------------------ real processes


def _env_of(pid: int) -> str | None:
    data = Path(f"/proc/{pid}/environ").read_bytes()
    for entry in data.split(b"\0"):
        if entry.startswith(OWNER_ENV_KEY.encode() + b"="):
            return entry.split(b"=", 1)[1].decode()
    return None


@pytest.mark.slow
async def test_lost_lease_of_live_owner_survives_second_process_then_dies_by_watchdog(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    owners: list[subprocess.Popen[bytes]] = []
    orphans: list[subprocess.Popen[bytes]] = []
    try:
        with trio.fail_after(90):
            first = start_owner(state, 1, [])
            owners.append(first)
            records = await trio.to_thread.run_sync(read_records, first, 2)
            mine = [int(str(r["pid"])) for r in records]
            tag = parse_owner_tag(_env_of(mine[0]))
            assert tag is not None and tag.pid == first.pid
            await poll_until(lambda: len(watchdogs_of(first.pid)) == 1, seconds=10)
            gw = resolve_gateway_instance_id_sync(state)
            # the lease record is lost: a corrupt file (moved aside by the next reader)
            (state / "acpx" / "process-leases.json").write_bytes(b"{not json")

            # 1. `acpx-trio reap` on the same state dir: the orphan dies, the live owner's
            #    agent and its grandchild are left alone
            orphans.append(_orphan(new_marker(), lease_env("lost-lease", gw)))
            done = await trio.to_thread.run_sync(
                lambda: run_cli("reap", state_dir=state))
            assert not _alive(orphans[-1].pid), (done.stdout, done.stderr)
            assert all(_alive(p) for p in mine), (done.stdout, done.stderr)

            # 2. a second service on the same state dir: its start-up sweep kills a fresh
            #    orphan (that ignores SIGTERM, so the live owner's agents would be dead by
            #    then if targeted) and leaves the first owner's agents alone
            orphans.append(_orphan(new_marker(), lease_env("lost-lease-2", gw)))
            second = start_owner(state, 1, [])
            owners.append(second)
            theirs = [int(str(r["pid"]))
                      for r in await trio.to_thread.run_sync(read_records, second, 2)]
            await poll_until(lambda: not _alive(orphans[-1].pid), seconds=20)
            assert all(_alive(p) for p in mine)

            # 3. the first owner is SIGKILLed: its watchdog kills its agents by the owner tag
            #    (their lease record is gone); the second owner's agents are untouched
            first.send_signal(signal.SIGKILL)
            first.wait()
            await poll_until(lambda: not any(_alive(p) for p in mine), seconds=10,
                             interval=0.005)
            await poll_until(lambda: watchdogs_of(first.pid) == [], seconds=5)
            assert all(_alive(p) for p in theirs)
            second.send_signal(signal.SIGKILL)  # its own watchdog cleans up after it
            second.wait()
            await poll_until(lambda: not any(_alive(p) for p in theirs), seconds=10)
    finally:
        for p in owners:
            if p.poll() is None:
                p.kill()
                p.wait()
        for p in orphans:
            p.kill()
            p.wait()


def test_a_launch_is_no_owner_itself() -> None:
    """A launch that moved out of its leaf and re-``exec``ed with an owner tag naming itself
    (its pid and start ticks survive ``exec``), or two launches naming each other, are not
    kept alive by the tag: an owner is a runtime, never a process with this gateway's lease
    tags (measured before: 30 of 30 such processes outlived close, sweeps and reap).  An
    owner that is another gateway's launch (a runtime run as an agent) still protects."""
    me = _info(90, ticks=500)
    me = msgspec.structs.replace(me, owner=owner_tag(90, 500, me.create_time))
    assert not owner_alive_elsewhere(me, {90: me}, ME, UID)
    a, b = _info(90, ticks=500), _info(91, ticks=600)
    a = msgspec.structs.replace(a, owner=owner_tag(91, 600, b.create_time))
    b = msgspec.structs.replace(b, owner=owner_tag(90, 500, a.create_time))
    table = {90: a, 91: b}
    assert not owner_alive_elsewhere(a, table, ME, UID)
    assert not owner_alive_elsewhere(b, table, ME, UID)
    plan = plan_orphans([a, b], GW, self_pid=ME, self_uid=UID)
    assert sorted(p.pid for p in plan.targets) == [90, 91]
    nested = msgspec.structs.replace(_info(77, ticks=500), gateway_instance_id="gw-outer")
    agent = _info(92, owner=owner_tag(77, 500, nested.create_time))
    assert owner_alive_elsewhere(agent, {77: nested, 92: agent}, ME, UID)
