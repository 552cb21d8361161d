"""Ending a leaf cgroup never stalls the event loop: a write to a cgroup file waits for the
kernel's cgroup lock, which a migration into any cgroup (a spare entering its leaf, another
agent's start) holds for an RCU grace period (13-16 ms measured here), so every such write
goes through a worker thread while other tasks keep running; and closing an inotify
instance waits for an SRCU grace period (8-25 ms), so the waits on ``cgroup.events`` keep
one and reuse it, each still woken by its own leaf's change."""

from __future__ import annotations

import contextlib
import os
import time
import uuid

import pytest
import trio
import trio.testing
from _proc_helpers import poll_until
from test_containment import PROBE

from acpx_trio._process import leaf_end
from acpx_trio._process.cgroup import gateway_parent, leaf_populated, make_leaf, shim_argv

pytestmark = pytest.mark.skipif(not PROBE.usable, reason=f"no usable cgroup: {PROBE.reason}")

#: how long the kernel is made to hold each freeze write up (a lock held for long)
HELD = 1.0


@pytest.mark.parametrize("end", ["terminate", "kill"])
async def test_a_slow_freeze_write_never_blocks_the_event_loop(
    monkeypatch: pytest.MonkeyPatch, end: str
) -> None:
    gateway = f"gw-loop-{uuid.uuid4().hex[:12]}"
    leaf = make_leaf(gateway, f"lease-{uuid.uuid4().hex[:8]}")
    assert leaf is not None
    member = await trio.lowlevel.open_process(shim_argv(leaf, ["sleep", "60"]),
                                              start_new_session=True)
    real = leaf_end._set_frozen

    def held_up(path: str, frozen: bool) -> None:
        real(path, frozen)
        time.sleep(HELD)  # the kernel holding the write up: the calling thread waits

    monkeypatch.setattr(leaf_end, "_set_frozen", held_up)
    gaps: list[float] = []

    async def heartbeat() -> None:
        last = trio.current_time()
        while True:
            await trio.sleep(0.01)
            now = trio.current_time()
            gaps.append(now - last)
            last = now

    try:
        await poll_until(lambda: bool(leaf_populated(leaf)), seconds=10.0)
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(heartbeat)
            if end == "kill":
                assert await leaf_end.kill_leaf(leaf, 5.0)
            else:
                assert (await leaf_end.terminate_leaf(leaf, 1.0, 5.0)).emptied
            nursery.cancel_scope.cancel()
        with trio.fail_after(5):
            assert await member.wait() != 0
        # the freeze and the thaw each held their thread up for HELD seconds
        assert trio.current_time() - start >= 2 * HELD
        assert max(gaps) < HELD / 2, max(gaps)
    finally:
        monkeypatch.undo()
        with trio.CancelScope(shield=True):
            if member.poll() is None:
                member.kill()
                await member.wait()
            assert await leaf_end.kill_leaf(leaf, 5.0)
        parent = gateway_parent(gateway)
        if parent is not None and parent.exists():
            parent.rmdir()


def _inotify_fds() -> set[int]:
    found = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:inotify":
                found.add(int(name))
    return found


async def test_waits_on_a_leaf_reuse_one_watch_and_each_wakes_at_its_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(leaf_end, "_WATCHES", leaf_end._Watches())  # none kept from before
    gateway = f"gw-watch-{uuid.uuid4().hex[:12]}"
    leaf = make_leaf(gateway, f"lease-{uuid.uuid4().hex[:8]}")
    assert leaf is not None
    before = _inotify_fds()

    async def wait_empty(out: list[bool]) -> None:
        out.append(await leaf_end._wait_empty(leaf, 30.0))

    try:
        for _ in range(10):
            member = await trio.lowlevel.open_process(shim_argv(leaf, ["sleep", "60"]),
                                                      start_new_session=True)
            await poll_until(lambda: bool(leaf_populated(leaf)), seconds=10.0)
            emptied: list[bool] = []
            with trio.fail_after(10):  # a missed wake-up would wait the 30 s out
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(wait_empty, emptied)
                    await trio.testing.wait_all_tasks_blocked()  # it waits on the watch
                    member.kill()
                await member.wait()
            assert emptied == [True]
        # one instance served every wait and is kept for the next (none was closed)
        assert len(_inotify_fds() - before) == 1
    finally:
        assert await leaf_end.kill_leaf(leaf, 5.0)
        parent = gateway_parent(gateway)
        if parent is not None and parent.exists():
            parent.rmdir()


async def test_a_cancelled_end_thaws_at_once_though_every_worker_thread_is_busy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The thaw has worker threads of its own: with Trio's default thread limiter full of an
    embedder's blocking work, a cancelled graceful end still thaws the leaf and returns at
    once (it waited for a token, the leaf frozen meanwhile)."""
    gateway = f"gw-thaw-{uuid.uuid4().hex[:12]}"
    leaf = make_leaf(gateway, f"lease-{uuid.uuid4().hex[:8]}")
    assert leaf is not None
    member = await trio.lowlevel.open_process(
        shim_argv(leaf, ["sh", "-c", "trap '' TERM; sleep 60 & wait"]), start_new_session=True)
    real_wait = leaf_end._wait_event
    try:
        await poll_until(lambda: bool(leaf_populated(leaf)), seconds=10.0)
        async with trio.open_nursery() as nursery:

            async def fill_then_wait(path: str, name: str, want: bool, seconds: float) -> bool:
                if name == "frozen":  # the embedder's blocking work takes every token
                    for _ in range(int(trio.to_thread.current_default_thread_limiter()
                                       .total_tokens)):
                        nursery.start_soon(trio.to_thread.run_sync, time.sleep, 3.0)
                    await trio.testing.wait_all_tasks_blocked()
                return await real_wait(path, name, want, seconds)

            monkeypatch.setattr(leaf_end, "_wait_event", fill_then_wait)
            start = trio.current_time()
            with trio.move_on_after(0.2):
                await leaf_end.terminate_leaf(leaf, 1.0, 5.0)
            took = trio.current_time() - start
            frozen = leaf_end.leaf_event(leaf, "frozen")
        assert took < 1.5, took  # not the 3 s the busy threads take
        assert frozen is False
    finally:
        monkeypatch.undo()
        with trio.CancelScope(shield=True):
            assert await leaf_end.kill_leaf(leaf, 5.0)
            member.kill()
            await member.wait()
        parent = gateway_parent(gateway)
        if parent is not None and parent.exists():
            parent.rmdir()
