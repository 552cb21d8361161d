"""Property and scenario tests of the real reaper over a simulated process table.

Time is trio's MockClock with autojump (each example runs in its own ``trio.run``), so every
grace period passes instantly but in order, and the recorded signal times are exact.
"""

from __future__ import annotations

import dataclasses
import math
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acpx_trio._process.identity import ProcessInfo
from acpx_trio._process.reap_entry import (
    ReapResult,
    cleanup_owned_process_tree,
    reap_open_leases,
    reap_stale_orphans,
)
from acpx_trio._process.reap_plan import LeaseTarget, order_children_first, plan_leases
from acpx_trio._process.reaper import KILL_CONFIRM, CleanupResult, run_waves, terminate_trees
from acpx_trio._store.lease_model import LeaseState, ProcessLease, check_transition
from acpx_trio.testing.fake_processes import FakeProcess, FakeProcessTable

GW = "gw-ours"
OTHER_GW = "gw-other"
OTHER_UID = 2000


def run_mock(fn: Callable[[], Awaitable[object]]) -> object:
    """Run ``fn`` under trio with a mock clock that jumps whenever everything waits."""
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


class MemoryLeaseStore:
    """The two LeaseStore calls the reaper makes, in memory, with the real transition rules."""

    def __init__(self, leases: Sequence[ProcessLease]) -> None:
        self.leases = {x.lease_id: x for x in leases}
        self.writes: list[dict[str, LeaseState]] = []

    async def list_open(self, gateway_instance_id: str | None = None) -> list[ProcessLease]:
        await trio.lowlevel.checkpoint()
        return [
            x
            for x in self.leases.values()
            if x.state in (LeaseState.OPEN, LeaseState.CLOSING)
            and (gateway_instance_id is None or x.gateway_instance_id == gateway_instance_id)
        ]

    async def mark_states(
        self, updates: dict[str, LeaseState], *, skip_final: bool = False
    ) -> dict[str, ProcessLease]:
        await trio.lowlevel.checkpoint()
        if skip_final:
            updates = {k: v for k, v in updates.items() if not self.leases[k].state.is_final}
        for lease_id, state in updates.items():
            check_transition(lease_id, self.leases[lease_id].state, state)
        self.writes.append(dict(updates))
        out = {}
        for lease_id, state in updates.items():
            out[lease_id] = self.leases[lease_id] = self.leases[lease_id].with_state(state)
        return out


def make_lease(lease_id: str, gw: str = GW, **kw: object) -> ProcessLease:
    fields: dict[str, object] = dict(
        lease_id=lease_id,
        gateway_instance_id=gw,
        session_key=f"session-{lease_id}",
        wrapper_root="/tmp/wrappers",
        wrapper_path="",
        root_pid=0,
        command_hash="0" * 64,
        started_at=1,
        state=LeaseState.OPEN,
    )
    fields.update(kw)
    return ProcessLease(**fields)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# Scenario generation
# ------------------------------------------------------------------------------------------

TERM_DELAYS = [0.0, 0.0, 0.1, 0.5, 0.75, 1.0, math.inf]


@dataclass
class NodeSpec:
    tagged: bool
    term_delay: float
    other_uid: bool
    inspectable: bool
    zombie_on_exit: bool
    dead_at_start: bool
    children: list[NodeSpec] = field(default_factory=list)


@dataclass
class LeaseSpec:
    gateway: str
    root: NodeSpec
    record: str  # "ticks" | "create-time" | "nothing" | "pending" | "wrong-ticks" | "reused"
    owner: str  # "none" | "dead" | "reused" | "foreign-alive" | "self"
    protected: bool


def node_specs(depth: int) -> st.SearchStrategy[NodeSpec]:
    children = st.lists(node_specs(depth - 1), max_size=2) if depth > 0 else st.just([])
    return st.builds(
        NodeSpec,
        tagged=st.integers(0, 5).map(lambda n: n != 0),
        term_delay=st.sampled_from(TERM_DELAYS),
        other_uid=st.integers(0, 19).map(lambda n: n == 0),
        inspectable=st.integers(0, 19).map(lambda n: n != 0),
        zombie_on_exit=st.integers(0, 4).map(lambda n: n == 0),
        dead_at_start=st.integers(0, 9).map(lambda n: n == 0),
        children=children,
    )


lease_specs = st.builds(
    LeaseSpec,
    gateway=st.sampled_from([GW, GW, GW, OTHER_GW]),
    root=node_specs(2),
    record=st.sampled_from(["ticks", "ticks", "create-time", "nothing", "pending", "wrong-ticks",
                            "reused"]),
    owner=st.sampled_from(["none", "dead", "reused", "foreign-alive", "self"]),
    protected=st.integers(0, 9).map(lambda n: n == 0),
)


@dataclass
class Scenario:
    table: FakeProcessTable
    store: MemoryLeaseStore
    leases: list[ProcessLease]
    protected: set[str]
    alive_at_start: dict[tuple[int, int], FakeProcess]
    parent_of: dict[tuple[int, int], tuple[int, int] | None]


def key(p: FakeProcess) -> tuple[int, int]:
    return (p.pid, p.start_ticks)


def build(specs: list[LeaseSpec], decoys: int) -> Scenario:
    table = FakeProcessTable(self_pid=4242, self_uid=1000)
    leases: list[ProcessLease] = []
    protected: set[str] = set()
    owner_proc = table.spawn(label="foreign-owner")  # a live gateway that is not us

    def add(spec: NodeSpec, parent: FakeProcess | None, lease_id: str, gw: str) -> FakeProcess:
        tags = spec.tagged
        proc = table.spawn(
            parent=parent,
            uid=OTHER_UID if spec.other_uid else None,
            lease_id=lease_id if tags else None,
            gateway_instance_id=gw if tags else None,
            inspectable=spec.inspectable,
            term_delay=spec.term_delay,
            zombie_on_exit=spec.zombie_on_exit,
            label=f"{lease_id}",
        )
        for child in spec.children:
            add(child, proc, lease_id, gw)
        if spec.dead_at_start:
            proc.exit_at = -1.0
        return proc

    for i, spec in enumerate(specs):
        lease_id = f"lease-{i}"
        root = add(spec.root, None, lease_id, spec.gateway)
        kw: dict[str, object] = {"root_pid": root.pid}
        if spec.record == "ticks":
            kw |= {"root_start_ticks": root.start_ticks, "root_create_time": root.create_time,
                   "boot_id": table.boot_id}
        elif spec.record == "create-time":
            kw |= {"root_create_time": root.create_time}
        elif spec.record == "pending":
            kw = {"root_pid": 0}
        elif spec.record == "wrong-ticks":
            kw |= {"root_start_ticks": root.start_ticks + 1}
        elif spec.record == "reused":
            kw |= {"root_start_ticks": root.start_ticks}
            if root.exit_at is None:
                root.exit_at = -1.0
                root.zombie_on_exit = False
            table.reuse_pid_after_exit(root, label="reused-root")
        if spec.owner == "dead":
            kw |= {"owner_pid": 99_999, "owner_start_time": 1.0}
        elif spec.owner == "reused":
            kw |= {"owner_pid": owner_proc.pid, "owner_start_time": owner_proc.create_time + 50}
        elif spec.owner == "foreign-alive":
            kw |= {"owner_pid": owner_proc.pid, "owner_start_time": owner_proc.create_time}
        elif spec.owner == "self":
            kw |= {"owner_pid": table.self_pid, "owner_start_time": table.me.create_time}
        leases.append(make_lease(lease_id, spec.gateway, **kw))
        if spec.protected:
            protected.add(lease_id)

    for j in range(decoys):
        kind = j % 4
        if kind == 0:
            table.spawn(label="decoy-untagged", cmdline=("agent",))
        elif kind == 1 and leases:
            table.spawn(label="decoy-other-gw", lease_id=leases[0].lease_id,
                        gateway_instance_id=OTHER_GW)
        elif kind == 2 and leases:
            table.spawn(label="decoy-other-user", lease_id=leases[0].lease_id,
                        gateway_instance_id=leases[0].gateway_instance_id, uid=OTHER_UID)
        elif kind == 3 and leases and table.occupant(1) is None:
            table.spawn(pid=1, label="init-tagged", lease_id=leases[0].lease_id,
                        gateway_instance_id=leases[0].gateway_instance_id)
    if leases:  # our own process carries a lease's tags: still never signalled
        table.me.lease_id = leases[0].lease_id
        table.me.gateway_instance_id = leases[0].gateway_instance_id

    alive: dict[tuple[int, int], FakeProcess] = {}
    parent_of: dict[tuple[int, int], tuple[int, int] | None] = {}
    for proc in table.processes():
        if table.occupant(proc.pid) is proc and table.is_alive(proc):
            alive[key(proc)] = proc
            parent_of[key(proc)] = key(proc.parent) if proc.parent is not None else None
    return Scenario(table, MemoryLeaseStore(leases), leases, protected, alive, parent_of)


def owned_by(sc: Scenario, lease: ProcessLease) -> set[tuple[int, int]]:
    """Ground truth, computed independently of the reaper: alive, tagged, ours, not forbidden,
    and not a lease root whose recorded identity differs."""
    out = set()
    for k, p in sc.alive_at_start.items():
        if (p.lease_id, p.gateway_instance_id) != (lease.lease_id, lease.gateway_instance_id):
            continue
        if not p.inspectable or p.uid != sc.table.self_uid or p.pid in (1, sc.table.self_pid):
            continue
        if p.pid == lease.root_pid and (
            (lease.root_start_ticks is not None and lease.root_start_ticks != p.start_ticks)
            or (lease.root_create_time is not None and lease.root_create_time != p.create_time)
        ):
            continue
        out.add(k)
    return out


# ------------------------------------------------------------------------------------------
# The main property
# ------------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=st.lists(lease_specs, min_size=1, max_size=5),
    decoys=st.integers(0, 6),
    grace=st.sampled_from([0.0, 0.25, 0.75, 2.0]),
)
def test_reap_open_leases_properties(specs: list[LeaseSpec], decoys: int, grace: float) -> None:
    sc = build(specs, decoys)
    table = sc.table
    result_box: list[tuple[ReapResult, float]] = []

    async def main() -> None:
        start = trio.current_time()
        result = await reap_open_leases(
            GW, sc.store, grace=grace, deps=table.deps(), protected_lease_ids=sc.protected
        )
        result_box.append((result, trio.current_time() - start))

    run_mock(main)
    result, elapsed = result_box[0]

    ours = [x for x in sc.leases if x.gateway_instance_id == GW]
    owner_alive = {
        x.lease_id for x in ours if x.owner_pid is not None and x.owner_pid != table.self_pid
        and x.owner_pid in {p.pid for p in sc.alive_at_start.values()}
        and x.owner_start_time is not None
        and any(p.pid == x.owner_pid and p.create_time == x.owner_start_time
                for p in sc.alive_at_start.values())
    }
    reaped = [x for x in ours if x.lease_id not in sc.protected and x.lease_id not in owner_alive]
    owned: dict[str, set[tuple[int, int]]] = {x.lease_id: owned_by(sc, x) for x in reaped}
    all_owned = set().union(*owned.values()) if owned else set()

    # 1. never signals (or even tries to signal) anything that is not provably owned
    for rec in table.attempts:
        assert (rec.pid, rec.start_ticks) in all_owned, rec
    # 2. every owned process of a reaped lease is dead; nothing else was touched
    for k, p in sc.alive_at_start.items():
        if k in all_owned:
            assert not table.is_alive(p), (p.label, k)
        else:
            assert table.is_alive(p), (p.label, k)
            assert not p.received
    # 3. each reaped lease ends closed iff something owned was alive, else lost
    assert result.left_alone.keys() >= owner_alive | (sc.protected & {x.lease_id for x in ours})
    for lease in reaped:
        final = sc.store.leases[lease.lease_id].state
        expected = LeaseState.CLOSED if owned[lease.lease_id] else LeaseState.LOST
        assert final is expected, (lease.lease_id, final, owned[lease.lease_id])
        assert (lease.lease_id in result.closed_lease_ids) == (expected is LeaseState.CLOSED)
        assert (lease.lease_id in result.lost_lease_ids) == (expected is LeaseState.LOST)
    for lease in sc.leases:
        if lease not in reaped:
            assert sc.store.leases[lease.lease_id].state is LeaseState.OPEN
    # 4. the lease store was written at most twice (closing, then final)
    assert len(sc.store.writes) <= 2
    # 5. no process gets SIGTERM (or SIGKILL) twice
    terms = [(r.pid, r.start_ticks or 0) for r in table.signals if r.sig == signal.SIGTERM]
    kills = [(r.pid, r.start_ticks or 0) for r in table.signals if r.sig == signal.SIGKILL]
    assert len(terms) == len(set(terms))
    assert len(kills) == len(set(kills))
    # 6. SIGKILL only after the grace period, only to SIGTERM survivors
    term_times = [r.time for r in table.signals if r.sig == signal.SIGTERM]
    for rec in table.signals:
        if rec.sig != signal.SIGKILL:
            continue
        proc = sc.alive_at_start[(rec.pid, rec.start_ticks or 0)]
        assert (rec.pid, rec.start_ticks) in terms
        assert rec.time >= min(term_times) + grace
        assert proc.term_delay > grace
    # 7. every owned process got SIGTERM, children before parents
    assert set(terms) == all_owned
    position = {k: i for i, k in enumerate(terms)}
    for k in terms:
        parent = sc.parent_of[k]
        if parent in position:
            assert position[k] < position[parent]
    # 8. results report confirmed outcomes, and time is bounded (no sleep when idle)
    assert sorted(result.terminated_pids) == sorted(pid for pid, _ in all_owned)
    assert result.survived_pids == []
    if not all_owned:
        assert elapsed == 0
    else:
        slowest = max(sc.alive_at_start[k].term_delay for k in all_owned)
        assert elapsed == pytest.approx(min(slowest, grace))
        assert bool(kills) == (slowest > grace)


# ------------------------------------------------------------------------------------------
# Scenarios (seed behaviours ported to the tag design)
# ------------------------------------------------------------------------------------------


def tree(table: FakeProcessTable, lease: str = "L", gw: str = GW, **root_kw: object) -> list[
    FakeProcess
]:
    root = table.spawn(lease_id=lease, gateway_instance_id=gw, **root_kw)  # type: ignore[arg-type]
    child = table.spawn(parent=root, lease_id=lease, gateway_instance_id=gw)
    grandchild = table.spawn(parent=child, lease_id=lease, gateway_instance_id=gw)
    return [root, child, grandchild]


async def test_kills_children_first_and_reports_confirmed() -> None:
    table = FakeProcessTable()
    root, child, grandchild = tree(table)
    res = await cleanup_owned_process_tree(
        root_pid=root.pid, expected_lease_id="L", expected_gateway_instance_id=GW,
        root_start_ticks=root.start_ticks, deps=table.deps(),
    )
    assert res.inspected_pids == [root.pid, child.pid, grandchild.pid]
    assert [r.pid for r in table.signals] == [grandchild.pid, child.pid, root.pid]
    assert res.terminated_pids == [grandchild.pid, child.pid, root.pid]
    assert res.skipped_reason is None and res.survived_pids == []


async def test_nothing_signalled_means_no_wait(autojump_clock: trio.testing.MockClock) -> None:
    table = FakeProcessTable()
    decoy = table.spawn(label="untagged")
    start = trio.current_time()
    res = await cleanup_owned_process_tree(
        root_pid=decoy.pid, expected_lease_id="L", expected_gateway_instance_id=GW,
        deps=table.deps(),
    )
    assert trio.current_time() == start
    assert res.skipped_reason == "unverified-root"
    assert res.skipped == {decoy.pid: "not-owned"}
    assert table.attempts == [] and table.wait_calls == []
    res = await terminate_trees([], deps=table.deps())
    assert res == CleanupResult()


async def test_reused_root_pid_with_other_lease_is_not_killed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    table = FakeProcessTable()
    impostor = table.spawn(lease_id="other-lease", gateway_instance_id=GW)
    res = await cleanup_owned_process_tree(
        root_pid=impostor.pid, expected_lease_id="L", expected_gateway_instance_id=GW,
        deps=table.deps(),
    )
    assert res == CleanupResult(
        inspected_pids=[impostor.pid], skipped={impostor.pid: "not-owned"},
        skipped_reason="unverified-root",
    )
    assert table.attempts == []


async def test_root_with_other_start_ticks_is_pid_reused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    table = FakeProcessTable()
    root, child, grandchild = tree(table)
    unrelated = table.spawn(label="unrelated")
    res = await cleanup_owned_process_tree(
        root_pid=unrelated.pid, expected_lease_id="L", expected_gateway_instance_id=GW,
        root_start_ticks=unrelated.start_ticks + 5, deps=table.deps(),
    )
    assert res.skipped_reason == "pid-reused"
    assert res.skipped[unrelated.pid] == "pid-reused"
    # the lease's tagged processes are still found by their tags
    assert sorted(res.terminated_pids) == sorted([root.pid, child.pid, grandchild.pid])
    assert table.is_alive(unrelated) and not unrelated.received


async def test_identity_rechecked_before_sigkill(autojump_clock: trio.testing.MockClock) -> None:
    """ACPX-02: the pid changed hands between the grace wait and SIGKILL: no SIGKILL lands."""
    table = FakeProcessTable()
    victim = table.spawn(lease_id="L", gateway_instance_id=GW, ignore_sigterm=True)
    newcomer = table.reuse_pid_after_exit(victim)
    base = table.deps()

    async def stale_wait(infos: Sequence[ProcessInfo], within: float) -> set[int]:
        alive = await base.wait_exit(infos, within)
        if within > 0 and victim.pid in alive:
            table.exit(victim)  # exits right after the wait said "alive"; pid reused
            return {victim.pid}
        return alive

    deps = dataclasses.replace(base, wait_exit=stale_wait)
    res = await cleanup_owned_process_tree(
        root_pid=0, expected_lease_id="L", expected_gateway_instance_id=GW, deps=deps
    )
    kills = [a for a in table.attempts if a.sig == signal.SIGKILL]
    assert kills and not any(a.delivered for a in kills)
    assert table.is_alive(newcomer) and newcomer.received == []
    assert res.terminated_pids == [victim.pid]


async def test_cancellation_during_grace_still_kills(
    autojump_clock: trio.testing.MockClock,
) -> None:
    table = FakeProcessTable()
    procs = tree(table, ignore_sigterm=True)
    with trio.move_on_after(0.3) as cs:
        await cleanup_owned_process_tree(
            root_pid=procs[0].pid, expected_lease_id="L", expected_gateway_instance_id=GW,
            grace=30.0, deps=table.deps(),
        )
    assert cs.cancelled_caught
    assert all(not table.is_alive(p) for p in procs)
    kill_times = [r.time for r in table.signals if r.sig == signal.SIGKILL]
    assert kill_times and all(t == pytest.approx(0.3) for t in kill_times)


def _lease_plan(table: FakeProcessTable, lease: str = "L") -> Callable[..., object]:
    target = LeaseTarget(lease_id=lease, gateway_instance_id=GW, root_pid=0)

    def plan(snap: list[ProcessInfo], known: object) -> object:
        return plan_leases(snap, [target], self_pid=table.self_pid, self_uid=table.self_uid,
                           current_boot_id=table.boot_id, known=known)  # type: ignore[arg-type]

    return plan


async def test_after_grace_runs_once_when_the_first_grace_ends_before_its_sigkills(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """What ends a tree whole (a leaf's ``cgroup.kill``) may start once the first wave's wait
    is over, and is told when its grace ends: not before the wait (the SIGTERMed get their
    grace), not after the SIGKILLs' confirmation, once (later waves have no grace), and
    with the grace's end even when every signalled process exited early (a member the wave
    never signalled is owed the grace too)."""
    table = FakeProcessTable()
    procs = tree(table, ignore_sigterm=True)
    base = table.deps()
    calls: list[tuple[float, float, int]] = []

    def record(at: float) -> None:
        kills = sum(r.sig == signal.SIGKILL for r in table.signals)
        calls.append((trio.current_time(), at, kills))

    async def forking_kill(info: ProcessInfo, sig: int) -> bool:  # a later wave appears
        ok = await base.kill_process(info, sig)
        if ok and sig == signal.SIGKILL and info.pid == procs[0].pid and len(procs) == 3:
            procs.append(table.spawn(lease_id="L", gateway_instance_id=GW, ignore_sigterm=True))
        return ok

    deps = dataclasses.replace(base, kill_process=forking_kill)
    await run_waves(_lease_plan(table), 0.75, deps, after_grace=record)  # type: ignore[arg-type]
    assert calls == [(pytest.approx(0.75), pytest.approx(0.75), 0)]
    assert len(procs) == 4 and not any(table.is_alive(p) for p in procs)
    # every signalled process gone after 0.2 s: called then, with the grace's end
    table = FakeProcessTable()
    tree(table, term_delay=0.2)
    calls.clear()
    t0 = trio.current_time()
    await run_waves(_lease_plan(table), 0.75, table.deps(), after_grace=record)  # type: ignore[arg-type]
    assert calls == [(pytest.approx(t0 + 0.2), pytest.approx(t0 + 0.75), 0)]
    # cancelled during the grace: never called (the escalation runs shielded, no more)
    table = FakeProcessTable()
    tree(table, ignore_sigterm=True)
    calls.clear()
    with trio.move_on_after(0.3):
        await run_waves(_lease_plan(table), 0.75, table.deps(),  # type: ignore[arg-type]
                        after_grace=record)
    assert calls == []


async def test_cancelled_before_start_signals_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    table = FakeProcessTable()
    procs = tree(table)
    with trio.CancelScope() as cs:
        cs.cancel()
        await cleanup_owned_process_tree(
            root_pid=procs[0].pid, expected_lease_id="L", expected_gateway_instance_id=GW,
            deps=table.deps(),
        )
    assert table.attempts == []
    assert all(table.is_alive(p) for p in procs)


async def test_unkillable_process_is_reported_and_lease_stays_closing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    table = FakeProcessTable()
    stuck = table.spawn(lease_id="L", gateway_instance_id=GW, ignore_sigterm=True,
                        ignore_sigkill=True)
    fine = table.spawn(lease_id="M", gateway_instance_id=GW)
    store = MemoryLeaseStore([make_lease("L"), make_lease("M")])
    res = await reap_open_leases(GW, store, deps=table.deps())
    assert res.survived_pids == [stuck.pid]
    assert res.left_alone == {"L": "survived"}
    assert store.leases["L"].state is LeaseState.CLOSING
    assert store.leases["M"].state is LeaseState.CLOSED
    assert res.terminated_pids == [fine.pid]
    assert trio.current_time() == pytest.approx(0.75 + KILL_CONFIRM)


async def test_process_forked_during_the_wave_is_caught(
    autojump_clock: trio.testing.MockClock,
) -> None:
    table = FakeProcessTable()
    root = table.spawn(lease_id="L", gateway_instance_id=GW, term_delay=0.2)
    spawned: list[FakeProcess] = []
    base = table.deps()

    async def forking_kill(info: ProcessInfo, sig: int) -> bool:
        ok = await base.kill_process(info, sig)
        if ok and sig == signal.SIGTERM and info.pid == root.pid:
            # a cleanup trap in the agent starts a detached helper while dying
            spawned.append(table.spawn(lease_id="L", gateway_instance_id=GW, label="late"))
        return ok

    deps = dataclasses.replace(base, kill_process=forking_kill)
    res = await cleanup_owned_process_tree(
        root_pid=root.pid, expected_lease_id="L", expected_gateway_instance_id=GW, deps=deps
    )
    assert spawned and not table.is_alive(spawned[0])
    assert sorted(res.terminated_pids) == sorted([root.pid, spawned[0].pid])


async def test_stale_orphans_respect_protection_and_gateway(
    autojump_clock: trio.testing.MockClock,
) -> None:
    table = FakeProcessTable()
    live_session = tree(table, lease="live")
    stale = tree(table, lease="stale")
    foreign = tree(table, lease="stale", gw=OTHER_GW)
    no_lease = table.spawn(gateway_instance_id=GW, label="gateway-tag-only")
    for p in stale:
        p.parent = None  # re-parented anywhere: ppid is irrelevant
    res = await reap_stale_orphans(
        gateway_instance_id=GW, protected_lease_ids={"live"}, deps=table.deps()
    )
    assert sorted(res.terminated_pids) == sorted(p.pid for p in stale)
    assert all(table.is_alive(p) for p in live_session + foreign + [no_lease])
    assert res.skipped[no_lease.pid] == "not-owned"
    assert all(res.skipped[p.pid] == "protected" for p in live_session)


async def test_untagged_descendant_is_skipped_but_its_tagged_child_is_not(
    autojump_clock: trio.testing.MockClock,
) -> None:
    table = FakeProcessTable()
    root = table.spawn(lease_id="L", gateway_instance_id=GW)
    scrubbed = table.spawn(parent=root, label="env-scrubbed")
    below = table.spawn(parent=scrubbed, lease_id="L", gateway_instance_id=GW)
    res = await cleanup_owned_process_tree(
        root_pid=root.pid, expected_lease_id="L", expected_gateway_instance_id=GW,
        root_start_ticks=root.start_ticks, deps=table.deps(),
    )
    assert res.skipped == {scrubbed.pid: "not-owned"}
    assert sorted(res.terminated_pids) == sorted([root.pid, below.pid])
    assert table.is_alive(scrubbed)


async def test_zombie_counts_as_gone(autojump_clock: trio.testing.MockClock) -> None:
    table = FakeProcessTable()
    root = table.spawn(lease_id="L", gateway_instance_id=GW, ignore_sigterm=True)
    child = table.spawn(parent=root, lease_id="L", gateway_instance_id=GW, zombie_on_exit=True)
    res = await cleanup_owned_process_tree(
        root_pid=root.pid, expected_lease_id="L", expected_gateway_instance_id=GW,
        deps=table.deps(), grace=5.0,
    )
    assert table.occupant(child.pid) is child  # still listed, as a zombie
    assert sorted(res.terminated_pids) == sorted([root.pid, child.pid])
    assert trio.current_time() == pytest.approx(5.0)  # waited for the root only


async def test_bad_input_is_rejected_before_listing() -> None:
    table = FakeProcessTable()
    for kwargs in (
        dict(root_pid=1, expected_lease_id="", expected_gateway_instance_id=GW),
        dict(root_pid=1, expected_lease_id="L", expected_gateway_instance_id="  "),
        dict(root_pid=-5, expected_lease_id="L", expected_gateway_instance_id=GW),
        dict(root_pid=1, expected_lease_id="L", expected_gateway_instance_id=GW, grace=-1.0),
    ):
        with pytest.raises(ValueError):
            await cleanup_owned_process_tree(deps=table.deps(), **kwargs)  # type: ignore[arg-type]
    assert table.list_calls == 0


# ------------------------------------------------------------------------------------------
# Pure core
# ------------------------------------------------------------------------------------------


def info(pid: int, ppid: int, **kw: object) -> ProcessInfo:
    base: dict[str, object] = dict(pid=pid, ppid=ppid, cmdline=("x",), create_time=1.0, uid=1000,
                                   start_ticks=pid * 10, lease_id="L", gateway_instance_id=GW)
    base.update(kw)
    return msgspec.convert(base, ProcessInfo)


def test_order_children_first_is_cycle_safe_and_unique() -> None:
    a, b, c = info(10, 12), info(11, 10), info(12, 11)  # a ppid cycle
    out = order_children_first([a, b, c, a])
    assert sorted(p.pid for p in out) == [10, 11, 12]


@given(st.dictionaries(st.integers(1, 40), st.integers(0, 40), max_size=25), st.data())
def test_plan_never_targets_forbidden_processes(
    parents: dict[int, int], data: st.DataObject
) -> None:
    # acyclic: a parent always has a smaller pid
    table = [
        info(pid, ppid if ppid < pid else 0, uid=1000 if pid % 5 else 7)
        for pid, ppid in parents.items()
    ]
    root = data.draw(st.sampled_from(sorted(parents) or [0]))
    plan = plan_leases(
        table, [LeaseTarget(lease_id="L", gateway_instance_id=GW, root_pid=root)],
        self_pid=3, self_uid=1000,
    )
    pids = [p.pid for p in plan.targets]
    assert len(pids) == len(set(pids))
    for p in plan.targets:
        assert p.pid not in (1, 3) and p.uid == 1000
        assert plan.skipped.get(p.pid) is None
    for reason in plan.skipped.values():
        assert reason in ("self", "init", "other-user")
    # everything tagged and allowed is a target
    allowed = {p.pid for p in table if p.pid not in (1, 3) and p.uid == 1000}
    assert set(pids) == allowed
    position = {pid: i for i, pid in enumerate(pids)}
    for p in plan.targets:
        if p.ppid in position:
            assert position[p.pid] < position[p.ppid]
