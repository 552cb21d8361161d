"""A cancel at any point of a public call: the call raises ``trio.Cancelled`` (never a group
of them, never an untyped error), leaves no agent process and no lease open once the
runtime has exited, and what it was called on stays usable.

The cancel points are swept exhaustively: the call runs again and again with its cancel
scope cancelled just before the k-th task step of the run (a Trio instrument counting the
steps of every task, so those of the tasks the call starts too), k = 0, 1, 2, ... until the
call completes before step k; every step of the call (its thread hops, the lease writes, the
spawn, the handshake) is hit once.  Real agents (the bundled mock), both
containment modes."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from _runtime_helpers import MOCK, RuntimeEnv, processes_of_gateway

from acpx_trio import (
    AcpConnectionClosedError,
    AcpRuntimeError,
    AcpxRuntime,
    BackendRegistry,
    DoneEvent,
    open_acpx_runtime,
    open_runtime_service,
)
from acpx_trio._acp._connection import AcpConnection
from acpx_trio._store.lease_model import LeaseState, ProcessLease
from acpx_trio._store.leases import LeaseStore
from acpx_trio._store.sessions import SessionStore

MODES = ["auto", "process-group"]
#: The life sweeps (a whole runtime or service per step) try every second step in the suite
#: and every step with ``ACPX_CANCEL_SWEEP=full`` (the soak; about twice as long).
LIFE_STRIDE = 1 if os.environ.get("ACPX_CANCEL_SWEEP") == "full" else 2
FINAL = (LeaseState.CLOSED, LeaseState.LOST)


class _CancelAtStep(trio.abc.Instrument):
    """Cancels ``scope`` just before the ``k``-th task step (of any task) from now on."""

    def __init__(self, k: int, scope: trio.CancelScope) -> None:
        self.k, self.scope, self.steps = k, scope, 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.steps == self.k:
            self.scope.cancel()
        self.steps += 1


async def _cancelled_at(k: int, call: Callable[[], Awaitable[Any]]) -> bool:
    """Run ``call`` with its scope cancelled at step ``k``; whether the cancel landed.  Any
    exception but ``trio.Cancelled`` (a group of them included) propagates."""
    with trio.CancelScope() as scope:
        instrument = _CancelAtStep(k, scope)
        trio.lowlevel.add_instrument(instrument)
        try:
            await call()
        except trio.Cancelled:
            raise
        except BaseExceptionGroup as group:  # the defect this module guards against
            raise AssertionError(f"step {k}: a group escaped: {group!r}") from group
        finally:
            trio.lowlevel.remove_instrument(instrument)
    return scope.cancelled_caught


async def _turn_ok(rt: AcpxRuntime, key: str) -> None:
    handle = await rt.ensure_session(session_key=key, agent="mock")
    async with contextlib.aclosing(rt.run_turn(handle=handle, text="/chunks 3")) as events:
        last = [e async for e in events][-1]
    assert isinstance(last, DoneEvent), last


async def _open_leases(store: LeaseStore) -> list[ProcessLease]:
    return [lease for lease in await store.list_all() if lease.state not in FINAL]


@pytest.mark.parametrize("containment", MODES)
async def test_ensure_cancelled_at_every_step_leaves_nothing_open(
    env: RuntimeEnv, containment: str
) -> None:
    """Every step of a first ensure (direct spawn) and of a later one (cgroup mode: the
    spare hand-over): ``Cancelled`` only, the key usable at once, and after the runtime
    exits no agent process and no lease that is not final (a pending lease written just as
    the cancel landed was left ``open`` with no process; a cancel as the agent started
    raised a group of five ``Cancelled``)."""
    swept = 0
    with trio.fail_after(240):
        async with env.runtime(containment=containment) as rt:
            for warm in (False, True):
                k = 0
                while True:
                    key = f"{'warm' if warm else 'cold'}-{k}"
                    if warm:  # a spare is ready: the next start takes it
                        await rt.close(handle=await rt.ensure_session(
                            session_key=f"pre-{k}", agent="mock"))
                    landed = await _cancelled_at(
                        k, lambda key=key: rt.ensure_session(session_key=key, agent="mock"))
                    if not landed:
                        break
                    k += 1
                    swept += 1
                await _turn_ok(rt, key)
    assert swept > 20  # the sweep reached into the call, not just its first checkpoint
    assert processes_of_gateway(env.gateway_id) == []
    assert await _open_leases(env.lease_store) == []


class _CancelAsThePendingLeaseLands(LeaseStore):
    """A cancel that arrives while the pending lease's write runs in its worker thread: the
    write completes, the ``Cancelled`` surfaces at the next checkpoint (``committed``:
    inside ``save`` itself, as when another task's group commit carried the change)."""

    scope: trio.CancelScope | None = None
    inside_save = False

    async def save(self, lease: ProcessLease) -> None:
        await super().save(lease)
        if self.scope is not None and lease.root_pid == 0 and lease.state is LeaseState.OPEN:
            self.scope.cancel()
            self.scope = None
            if self.inside_save:
                await trio.lowlevel.checkpoint()


@pytest.mark.parametrize("inside_save", [False, True])
@pytest.mark.parametrize("containment", MODES)
async def test_a_cancel_as_the_pending_lease_lands_leaves_it_final(
    env: RuntimeEnv, containment: str, inside_save: bool
) -> None:
    store = _CancelAsThePendingLeaseLands(env.state_dir / "cancel-leases")
    store.inside_save = inside_save
    config = env.config(containment=containment)
    with trio.fail_after(60):
        async with open_acpx_runtime(config, gateway_instance_id=env.gateway_id,
                                     lease_store=store) as rt:
            with trio.CancelScope() as scope:
                store.scope = scope
                await rt.ensure_session(session_key="s", agent="mock")
            assert scope.cancelled_caught
            await _turn_ok(rt, "s")
    leases = await store.list_all()
    assert leases and await _open_leases(store) == [], leases
    assert processes_of_gateway(env.gateway_id) == []


@pytest.mark.parametrize("containment", MODES)
async def test_set_mode_and_close_cancelled_at_every_step_keep_their_promises(
    env: RuntimeEnv, containment: str
) -> None:
    """``set_mode``/``set_config_option`` cancelled before their request left kept a
    session that said it was alive but failed its next turn (the connection took the
    cancel for a write cut midway); ``close`` cancelled raised a group of ``Cancelled``."""
    with trio.fail_after(180):
        async with env.runtime(containment=containment) as rt:
            for name in ("set_mode", "set_config_option", "close"):
                k = 0
                while True:
                    handle = await rt.ensure_session(session_key=name, agent="mock")
                    call = {
                        "set_mode": lambda h=handle: rt.set_mode(handle=h, mode="plan"),
                        "set_config_option": lambda h=handle: rt.set_config_option(
                            handle=h, key="model", value="mock-large"),
                        "close": lambda h=handle: rt.close(handle=h, reason="test"),
                    }[name]
                    landed = await _cancelled_at(k, call)
                    await _turn_ok(rt, name)  # the same session, or (after close) a new one
                    if not landed:
                        break
                    k += 1
                assert k >= 1, name
    assert processes_of_gateway(env.gateway_id) == []


@pytest.mark.parametrize("name", ["doctor", "probe_availability"])
async def test_the_probe_cancelled_at_every_step_raises_one_cancelled(
    env: RuntimeEnv, name: str
) -> None:
    """``doctor``/``probe_availability`` cancelled while the probe agent started or
    answered ``initialize`` raised a group of a ``Cancelled`` and a group of them, which an
    embedder's ``except trio.Cancelled`` does not catch."""
    with trio.fail_after(180):
        async with env.runtime(probeAgent="mock") as rt:
            call = {"doctor": rt.doctor, "probe_availability": rt.probe_availability}[name]
            k = 0
            while await _cancelled_at(k, call):
                k += 1
            assert k >= 5, k
            assert (await rt.doctor()).ok
    assert processes_of_gateway(env.gateway_id) == []


async def test_a_write_cut_midway_breaks_the_connection_and_says_so() -> None:
    """What a cancel may not leave behind: half a message followed by another.  A request
    larger than the pipe, to a peer that reads nothing, is cancelled midway; every later
    send fails with ``ACP_CONNECTION_CLOSED`` naming why."""
    read_fd, write_fd = os.pipe()
    in_read, in_write = os.pipe()
    sender = trio.lowlevel.FdStream(write_fd)
    receiver = trio.lowlevel.FdStream(in_read)
    connection = AcpConnection(sender, receiver)
    try:
        with trio.move_on_after(0.5) as scope:
            await connection.notify("big", {"text": "x" * (1 << 20)})
        assert scope.cancelled_caught
        with pytest.raises(AcpConnectionClosedError, match="cancelled midway"):
            await connection.notify("next", {})
    finally:
        for fd in (read_fd, in_write):
            os.close(fd)
        await sender.aclose()
        await receiver.aclose()


async def test_a_send_cancelled_before_its_first_byte_breaks_nothing() -> None:
    """A send cancelled at any of its steps before a byte left (Trio's ``send_all`` takes a
    schedule point before writing) leaves the connection whole: the next message goes out
    complete, and only whole messages are on the wire."""
    out_read, out_write = os.pipe()
    in_read, in_write = os.pipe()
    sender, receiver = trio.lowlevel.FdStream(out_write), trio.lowlevel.FdStream(in_read)
    connection = AcpConnection(sender, receiver)
    try:
        k = 0
        while await _cancelled_at(k, lambda: connection.notify("maybe", {})):
            await connection.notify("after", {"k": k})
            k += 1
        assert k >= 1  # every point where the cancel could land before the write was tried
        sent = os.read(out_read, 1 << 16)
        lines = sent.split(b"\n")
        assert lines.pop() == b"" and all(line.startswith(b"{") for line in lines), sent
        assert sum(b'"after"' in line for line in lines) == k
    finally:
        for fd in (out_read, in_write):
            os.close(fd)
        await sender.aclose()
        await receiver.aclose()


async def test_an_ensure_that_outlives_the_runtime_gets_a_typed_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ensure past its first check when the service stops met Trio's closed nursery
    (``RuntimeError``); it now gets ``ACP_BACKEND_UNAVAILABLE`` and nothing is started."""
    entered, stopped = trio.Event(), trio.Event()
    load = SessionStore.load

    async def held_load(self: SessionStore, key: str) -> Any:
        record = await load(self, key)
        entered.set()
        with trio.CancelScope(shield=True):
            await stopped.wait()
        return record

    monkeypatch.setattr(SessionStore, "load", held_load)
    (tmp_path / "ws").mkdir()
    outcome: list[BaseException | str] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as host, open_runtime_service(
            workspace_dir=tmp_path / "ws", state_dir=tmp_path / "state",
            registry=BackendRegistry(),
        ) as service:
            rt = service.require_runtime()
            gateway = service.gateway_instance_id
            assert gateway is not None

            async def ensure() -> None:
                try:
                    await rt.ensure_session(session_key="s", agent="mock")
                    outcome.append("started")
                except Exception as exc:  # what the host sees
                    outcome.append(exc)

            host.start_soon(ensure)
            await entered.wait()
            await service.stop()
            stopped.set()
    (error,) = outcome
    assert isinstance(error, AcpRuntimeError), repr(error)
    assert error.code == "ACP_BACKEND_UNAVAILABLE"
    assert processes_of_gateway(gateway) == []


@pytest.mark.parametrize("containment", MODES)
async def test_a_runtime_cancelled_at_any_step_of_its_life_raises_only_cancelled(
    env: RuntimeEnv, containment: str
) -> None:
    """The host's scope cancelled anywhere in a runtime's life (opening, an ensure and a
    turn in flight, closing): the scope takes the cancel (nothing else escapes: no group,
    no ``ACP_RUNTIME_INTERNAL_ERROR``), and no agent process or open lease is left."""
    async def life() -> None:
        async with env.runtime(containment=containment) as rt:
            await _turn_ok(rt, "s")

    k = 0
    with trio.fail_after(240):
        while await _cancelled_at(k, life):
            k += LIFE_STRIDE
    assert k > 30
    assert processes_of_gateway(env.gateway_id) == []
    assert await _open_leases(env.lease_store) == []


async def test_a_service_cancelled_at_any_step_of_its_life_raises_only_cancelled(
    tmp_path: Path,
) -> None:
    """The same through ``open_runtime_service`` (its start, a turn, its stop): a cancel-only
    group escaped it, and the body's ensure answered ``ACP_BACKEND_UNAVAILABLE`` to a cancel
    that was shutting the runtime down."""
    containment = "auto"
    (tmp_path / "ws").mkdir()
    gateways: set[str] = set()

    async def life() -> None:
        async with open_runtime_service(
            workspace_dir=tmp_path / "ws", state_dir=tmp_path / "state",
            plugin_config={"containment": containment}, registry=BackendRegistry(),
        ) as service:
            if service.gateway_instance_id is not None:
                gateways.add(service.gateway_instance_id)
            await _turn_ok(service.require_runtime(), "s")

    k = 0
    with trio.fail_after(240):
        while await _cancelled_at(k, life):
            k += LIFE_STRIDE
    assert k > 30 and gateways
    assert all(processes_of_gateway(g) == [] for g in gateways)


@pytest.mark.parametrize("containment", MODES)
async def test_a_close_whose_deadline_passes_while_it_runs_finishes_then_raises_cancelled(
    env: RuntimeEnv, containment: str
) -> None:
    """Its deadline passing while it killed an agent that ignores SIGTERM and stdin EOF, a
    close returned normally (20 of 20, an outside review), so the caller's code after it ran
    inside a scope that had expired.  It finishes the close (agent gone, lease final), then
    raises ``trio.Cancelled``."""
    stubborn = {"command": MOCK[0], "args": [*MOCK[1:], "--ignore-sigterm",
                                            "--ignore-stdin-eof"]}
    with trio.fail_after(60):
        async with env.runtime(containment=containment, killGraceSeconds=0.3,
                               agents={"stubborn": stubborn}) as rt:
            handle = await rt.ensure_session(session_key="k", agent="stubborn")
            after = False
            with trio.move_on_after(0.05) as scope:
                await rt.close(handle=handle, reason="test")
                after = True
            assert scope.cancelled_caught and not after
            assert processes_of_gateway(env.gateway_id) == []
            assert await _open_leases(env.lease_store) == []
