"""The reaper against real process trees (real clock, generous ``fail_after`` bounds).

Every test uses its own :class:`ProcessLab` (unique gateway id; everything it started is
SIGKILLed at the end, pass or fail).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from _proc_helpers import (
    ProcessLab,
    count_nodes,
    is_alive,
    poll_until,
    process_lab,
    tree_spec,
    wait_zombie,
)

from acpx_trio._process.identity import process_info, read_start_ticks
from acpx_trio._process.reap_entry import (
    cleanup_owned_process_tree,
    reap_open_leases,
    reap_stale_orphans,
)
from acpx_trio._process.reaper import default_cleanup_deps, terminate_trees
from acpx_trio._store.lease_model import LeaseState, new_lease
from acpx_trio._store.leases import LeaseStore
from acpx_trio.lowlevel import GATEWAY_ENV_KEY, LEASE_ENV_KEY

GRACE = 0.75


@pytest.fixture
def lab() -> Iterator[ProcessLab]:
    with process_lab() as lab:
        yield lab


def alive_members(*spawned: object) -> list[int]:
    out = []
    for s in spawned:
        for m in s.members.values():  # type: ignore[attr-defined]
            if is_alive(m.pid, m.ticks):
                out.append(m.pid)
    return out


async def wait_gone(pids_ticks: list[tuple[int, int]], seconds: float = 10.0) -> None:
    await poll_until(
        lambda: not any(is_alive(pid, ticks) for pid, ticks in pids_ticks), seconds=seconds
    )


async def test_whole_tree_gone_decoys_survive(lab: ProcessLab) -> None:
    spec = tree_spec(ignore_term_child=True, daemon=True)
    owned = lab.spawn(spec, lease_id="lease-a")
    same_cmd_untagged = lab.spawn(spec)
    other_gateway = lab.spawn(spec, lease_id="lease-a", gateway_id=f"{lab.gateway_id}-other")
    for s in (owned, same_cmd_untagged, other_gateway):
        await lab.wait_ready(s)
    assert len(owned.members) == 6  # root, 2 children, 2 grandchildren, daemon
    daemon = owned.by_role("daemon")
    assert daemon.ppid != owned.by_role("root").pid  # re-parented away at once
    root = owned.by_role("root")

    with trio.fail_after(20):
        start = trio.current_time()
        res = await cleanup_owned_process_tree(
            root_pid=root.pid,
            expected_lease_id="lease-a",
            expected_gateway_instance_id=lab.gateway_id,
            root_start_ticks=root.ticks,
            grace=GRACE,
        )
        elapsed = trio.current_time() - start

    assert alive_members(owned) == []
    assert sorted(res.terminated_pids) == owned.pids
    assert res.survived_pids == [] and res.skipped_reason is None
    assert len(alive_members(same_cmd_untagged)) == same_cmd_untagged.expected
    assert len(alive_members(other_gateway)) == other_gateway.expected
    # one SIGTERM-ignoring child: exactly one grace period, then SIGKILL
    assert GRACE <= elapsed < GRACE + 2.0


async def test_cooperative_tree_needs_no_grace_and_zombies_do_not_stall(lab: ProcessLab) -> None:
    owned = await lab.wait_ready(lab.spawn(tree_spec(daemon=True), lease_id="lease-b"))
    root = owned.by_role("root")
    assert owned.popen is not None and root.pid == owned.popen.pid  # our own child
    with trio.fail_after(20):
        start = trio.current_time()
        res = await cleanup_owned_process_tree(
            root_pid=root.pid, expected_lease_id="lease-b",
            expected_gateway_instance_id=lab.gateway_id, root_start_ticks=root.ticks,
            grace=5.0,
        )
        elapsed = trio.current_time() - start
    assert sorted(res.terminated_pids) == owned.pids
    assert alive_members(owned) == []
    assert elapsed < 2.0  # event-driven: nobody waited for the 5 s grace period
    # our child was reaped by pid: no zombie left behind
    assert process_info(root.pid) is None or read_start_ticks(root.pid) != root.ticks


async def test_pending_lease_reaped_by_tags(lab: ProcessLab) -> None:
    owned = await lab.wait_ready(lab.spawn(tree_spec(daemon=True), lease_id="lease-pending"))
    decoy = await lab.wait_ready(lab.spawn(tree_spec(), lease_id="lease-other"))
    with trio.fail_after(20):
        res = await cleanup_owned_process_tree(
            root_pid=0, expected_lease_id="lease-pending",
            expected_gateway_instance_id=lab.gateway_id,
        )
    assert sorted(res.terminated_pids) == owned.pids
    assert alive_members(owned) == []
    assert len(alive_members(decoy)) == decoy.expected
    with trio.fail_after(20):
        res = await cleanup_owned_process_tree(
            root_pid=0, expected_lease_id="lease-pending",
            expected_gateway_instance_id=lab.gateway_id,
        )
    assert res.skipped_reason == "missing-root" and res.terminated_pids == []


@pytest.mark.parametrize("recorded", ["ticks", "create-time"])
async def test_pid_reuse_leaves_the_new_process_alone(lab: ProcessLab, recorded: str) -> None:
    # the lease's root pid now belongs to an unrelated process with another start time
    unrelated = await lab.wait_ready(lab.spawn({"role": "unrelated"}, lease_id="someone-else"))
    bystander = await lab.wait_ready(lab.spawn({"role": "bystander"}))
    pid = unrelated.pids[0]
    info = process_info(pid)
    assert info is not None
    kwargs: dict[str, float | int] = (
        {"root_start_ticks": unrelated.members[pid].ticks - 1}
        if recorded == "ticks"
        else {"root_create_time": info.create_time - 100.0}
    )
    for target_pid, lease_id in ((pid, "lease-old"), (bystander.pids[0], "lease-old")):
        with trio.fail_after(20):
            res = await cleanup_owned_process_tree(
                root_pid=target_pid, expected_lease_id=lease_id,
                expected_gateway_instance_id=lab.gateway_id, **kwargs,  # type: ignore[arg-type]
            )
        assert res.terminated_pids == [] and res.survived_pids == []
        assert res.skipped_reason == "pid-reused"
        assert res.skipped == {target_pid: "pid-reused"}
    assert alive_members(unrelated, bystander) == [pid, bystander.pids[0]]


async def test_argv_tags_count_untagged_descendant_is_skipped(lab: ProcessLab) -> None:
    lease = "lease-argv"
    spec = {
        "role": "root",
        "children": [
            # a tool that scrubs its environment, but passes the flags on
            {"role": "argv-tagged", "scrub_env": True,
             "argv": ["--openclaw-acpx-lease-id", lease,
                      "--openclaw-gateway-instance-id", lab.gateway_id]},
            # a tool that scrubs its environment, keeps no flags and leaves the root's group
            # and session (setsid): unprovable.  (An untagged member that stays in the
            # root's group is ours: see test_reaper_groups.py.)
            {"role": "untagged", "scrub_env": True, "setsid": True},
        ],
    }
    owned = await lab.wait_ready(lab.spawn(spec, lease_id=lease))
    root = owned.by_role("root")
    with trio.fail_after(20):
        res = await cleanup_owned_process_tree(
            root_pid=root.pid, expected_lease_id=lease,
            expected_gateway_instance_id=lab.gateway_id, root_start_ticks=root.ticks,
        )
    untagged = owned.by_role("untagged")
    assert res.skipped == {untagged.pid: "not-owned"}
    assert sorted(res.terminated_pids) == sorted([root.pid, owned.by_role("argv-tagged").pid])
    assert alive_members(owned) == [untagged.pid]  # fail closed: left alone


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to start a process as another user")
async def test_other_users_process_is_never_signalled(lab: ProcessLab) -> None:
    sleep = shutil.which("sleep")
    assert sleep is not None
    foreign = lab.spawn_command([sleep, "120"], lease_id="lease-x", user=65534)
    await lab.wait_exec(foreign, "sleep")
    mine = await lab.wait_ready(lab.spawn({"role": "mine"}, lease_id="lease-x"))
    pid = foreign.pid
    with trio.fail_after(20):
        res = await cleanup_owned_process_tree(
            root_pid=pid, expected_lease_id="lease-x",
            expected_gateway_instance_id=lab.gateway_id,
        )
    assert res.skipped == {pid: "other-user"}
    assert res.skipped_reason == "unverified-root"
    assert res.terminated_pids == mine.pids
    assert is_alive(pid)
    # and the kill primitive itself refuses, whatever it is asked
    info = process_info(pid)
    assert info is not None
    deps = default_cleanup_deps()
    assert not await deps.kill_process(info, signal.SIGTERM)
    assert is_alive(pid)


async def test_kill_primitive_refuses_wrong_identity_self_and_init(lab: ProcessLab) -> None:
    target = await lab.wait_ready(lab.spawn({"role": "t"}))
    pid = target.pids[0]
    info = process_info(pid)
    me = process_info(os.getpid())
    init = process_info(1)
    assert info is not None and me is not None and info.start_ticks is not None
    deps = default_cleanup_deps()
    stale = msgspec.structs.replace(info, start_ticks=info.start_ticks + 1)
    assert not await deps.kill_process(stale, signal.SIGKILL)
    assert not await deps.kill_process(me, signal.SIGTERM)
    if init is not None:
        assert not await deps.kill_process(init, signal.SIGTERM)
    assert is_alive(pid)
    assert await deps.kill_process(info, signal.SIGKILL)
    with trio.fail_after(10):
        assert await deps.wait_exit([info], 10.0) == set()
    assert not await deps.kill_process(info, signal.SIGKILL)  # gone now


async def test_wait_exit_treats_zombie_as_gone(lab: ProcessLab) -> None:
    s = await lab.wait_ready(lab.spawn({"role": "parent", "children": [{"role": "kid",
                                                                         "exit": True}]}))
    kid = s.by_role("kid")
    await wait_zombie(kid, s.by_role("parent"))
    zombie = process_info(kid.pid)
    assert zombie is not None and zombie.zombie
    live = process_info(s.by_role("parent").pid)
    assert live is not None
    deps = default_cleanup_deps()
    with trio.fail_after(5):
        start = trio.current_time()
        assert await deps.wait_exit([zombie], 30.0) == set()
        assert await deps.wait_exit([live], 0.2) == {live.pid}
        assert trio.current_time() - start < 2.0


async def test_cancelled_caller_never_leaves_a_half_killed_tree(lab: ProcessLab) -> None:
    spec = {"role": "root", "ignore_term": True,
            "children": [{"role": "c", "fork": True, "ignore_term": True}]}
    owned = await lab.wait_ready(lab.spawn(spec, lease_id="lease-c"))
    root = owned.by_role("root")
    with trio.fail_after(20):
        with trio.move_on_after(0.3) as cs:
            await cleanup_owned_process_tree(
                root_pid=root.pid, expected_lease_id="lease-c",
                expected_gateway_instance_id=lab.gateway_id, grace=60.0,
            )
        assert cs.cancelled_caught
        # SIGKILL already went out under the shield; the processes are gone
        await wait_gone([(m.pid, m.ticks) for m in owned.members.values()], seconds=5)


async def test_terminate_trees_does_not_wait_when_nothing_was_signalled(lab: ProcessLab) -> None:
    victim = await lab.wait_ready(lab.spawn({"role": "short-lived"}))
    info = process_info(victim.pids[0])
    assert info is not None
    os.kill(info.pid, signal.SIGKILL)
    await wait_gone([(info.pid, victim.members[info.pid].ticks)])
    start = trio.current_time()
    res = await terminate_trees([[info]], grace=5.0)
    assert trio.current_time() - start < 0.5
    assert res.terminated_pids == [info.pid] and res.survived_pids == []


async def test_reap_stale_orphans_real(lab: ProcessLab) -> None:
    live = await lab.wait_ready(lab.spawn(tree_spec(), lease_id="live-session"))
    stale = await lab.wait_ready(lab.spawn(tree_spec(daemon=True), lease_id="stale"))
    foreign = await lab.wait_ready(
        lab.spawn(tree_spec(), lease_id="stale", gateway_id=f"{lab.gateway_id}-x")
    )
    with trio.fail_after(20):
        res = await reap_stale_orphans(
            gateway_instance_id=lab.gateway_id, protected_lease_ids={"live-session"}
        )
    assert sorted(res.terminated_pids) == stale.pids
    assert alive_members(stale) == []
    assert len(alive_members(live, foreign)) == live.expected + foreign.expected
    assert {res.skipped[p] for p in live.pids} == {"protected"}


async def test_start_up_reap_after_owner_was_sigkilled(lab: ProcessLab, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    plan: list[dict[str, Any]] = [
        {"kind": "normal", "spec": tree_spec(ignore_term_child=True, daemon=True)},
        {"kind": "normal", "spec": tree_spec(fork=False, grandchildren=1, children=1)},
        {"kind": "pending", "spec": tree_spec(daemon=True)},
        {"kind": "dead", "spec": {}},
    ]
    owner = lab.spawn_owner(state_dir, plan)
    manifest = await lab.owner_manifest()
    kinds = {lease_id: item["kind"] for lease_id, item in manifest["leases"].items()}
    trees = {}
    for (lease_id, item), planned in zip(manifest["leases"].items(), plan, strict=True):
        if item["kind"] != "dead":
            trees[lease_id] = await lab.wait_ready(
                lab.track(Path(item["readydir"]), count_nodes(planned["spec"]))
            )
    first = next(iter(trees))
    # a stray process tagged for the first lease, started outside its tree: reaped by tags
    stray = await lab.wait_ready(lab.spawn({"role": "stray"}, lease_id=first))
    # same command line, no tags; and the same lease id under another gateway: both survive
    untagged = await lab.wait_ready(lab.spawn(plan[0]["spec"]))
    other = await lab.wait_ready(
        lab.spawn(tree_spec(), lease_id=first, gateway_id=f"{lab.gateway_id}-2")
    )

    owner.send_signal(signal.SIGKILL)  # the gateway dies without any cleanup
    owner.wait()

    store = LeaseStore(state_dir)
    assert len(await store.list_open(lab.gateway_id)) == 4
    with trio.fail_after(30):
        res = await reap_open_leases(lab.gateway_id, store, grace=GRACE)
    assert lab.tagged_alive() == []
    assert len(alive_members(other)) == other.expected
    assert len(alive_members(untagged)) == untagged.expected
    assert sorted(res.closed_lease_ids) == sorted(k for k, v in kinds.items() if v != "dead")
    assert res.lost_lease_ids == [k for k, v in kinds.items() if v == "dead"]
    assert res.left_alone == {} and res.survived_pids == []
    final = {x.lease_id: x.state for x in await store.list_all()}
    assert all(final[k] is (LeaseState.LOST if v == "dead" else LeaseState.CLOSED)
               for k, v in kinds.items())
    all_pids = {p for t in trees.values() for p in t.pids} | set(stray.pids)
    assert set(res.terminated_pids) == all_pids
    # and a second start finds nothing left to do
    assert (await reap_open_leases(lab.gateway_id, store)).closed_lease_ids == []


async def test_live_foreign_owner_is_left_alone(lab: ProcessLab, tmp_path: Path) -> None:
    owner = await lab.wait_ready(lab.spawn({"role": "other-gateway"}))
    owner_info = process_info(owner.pids[0])
    me = process_info(os.getpid())
    assert owner_info is not None and me is not None
    theirs = await lab.wait_ready(lab.spawn(tree_spec(), lease_id="theirs"))
    ours = await lab.wait_ready(lab.spawn(tree_spec(), lease_id="ours-stale"))
    store = LeaseStore(tmp_path / "state")
    for lease_id, who in (("theirs", owner_info), ("ours-stale", me)):
        lease = new_lease(
            gateway_instance_id=lab.gateway_id, session_key=lease_id, wrapper_root=tmp_path,
            command=["x"], owner_pid=who.pid, owner_start_time=who.create_time,
        )
        await store.save(msgspec.structs.replace(lease, lease_id=lease_id))
    with trio.fail_after(20):
        res = await reap_open_leases(lab.gateway_id, store)
    assert res.left_alone == {"theirs": "owner-alive"}
    assert res.closed_lease_ids == ["ours-stale"]
    assert len(alive_members(theirs)) == theirs.expected
    assert alive_members(ours) == []
    assert (await store.load("theirs")).state is LeaseState.OPEN  # type: ignore[union-attr]


#: A tagged root in its own group whose member, once SIGTERMed, makes its real and saved
#: uids another user's but keeps our effective uid (a root agent's child); prints the
#: member's pid, writes ``flipped`` to ``argv[1]`` when it switched.
_FLIPPING_ROOT = r"""
import os, signal, sys
r, w = os.pipe()
child = os.fork()
if child == 0:
    def on_term(*_):
        os.setresgid(65534, 65534, 65534)
        os.setresuid(65534, 0, 65534)  # real and saved: nobody's; effective: still ours
        with open(sys.argv[1], "w") as fh:
            fh.write("flipped")
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_term)
    os.write(w, b"r")
    while True:
        signal.pause()
os.read(r, 1)
print(child, flush=True)
signal.pause()
"""


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to start a process as another user")
def test_a_member_that_became_another_users_survives_the_group_kill(tmp_path: Path) -> None:
    """Whose a process is, a signal sees by its real and saved uids: a group member that
    made them another user's on the first wave's SIGTERM, keeping our effective uid, is
    never signalled again, not even by the escalation's group SIGKILL (whose listing read
    the effective uid: 28 of 30 such members were killed)."""
    for trial in range(3):
        gateway, lease_id = f"gw-flip-{trial}-{os.getpid()}", f"lease-flip-{trial}"
        flag = tmp_path / f"flipped-{trial}"
        root = subprocess.Popen(
            [sys.executable, "-c", _FLIPPING_ROOT, str(flag)], stdout=subprocess.PIPE,
            env={**os.environ, LEASE_ENV_KEY: lease_id, GATEWAY_ENV_KEY: gateway},
            start_new_session=True)
        assert root.stdout is not None
        member = int(root.stdout.readline())
        try:
            res = trio.run(functools.partial(
                cleanup_owned_process_tree, root_pid=root.pid, expected_lease_id=lease_id,
                expected_gateway_instance_id=gateway,
                root_start_ticks=read_start_ticks(root.pid), grace=0.3))
            assert flag.read_text() == "flipped"  # it did become another user's
            assert is_alive(member), "another user's process was killed by the group SIGKILL"
            assert member not in res.terminated_pids
        finally:
            with contextlib.suppress(OSError):
                os.kill(member, signal.SIGKILL)
            root.kill()
            root.wait()
