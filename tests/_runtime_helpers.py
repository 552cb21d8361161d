"""Helpers for the runtime tests: a per-test gateway id with a leak check, and a runtime
factory over temporary directories with the bundled mock agent."""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psutil
import pytest
import trio

from acpx_trio._events import AcpRuntimeEvent, AcpRuntimeHandle, TextDeltaEvent
from acpx_trio._runtime.live_session import Turn
from acpx_trio._runtime.open_runtime import open_acpx_runtime
from acpx_trio._runtime.runtime import AcpxRuntime
from acpx_trio._store.config import AcpxConfig, resolve_config
from acpx_trio._store.lease_model import ProcessLease
from acpx_trio._store.leases import LeaseStore
from acpx_trio.testing.leak_guard import check_gateway_leaks

GATEWAY_ENV_KEY = "OPENCLAW_GATEWAY_INSTANCE_ID"
MOCK = [sys.executable, "-m", "acpx_trio.testing.mock_agent"]


def processes_of_gateway(gateway_id: str) -> list[psutil.Process]:
    """Live (non-zombie) processes whose environment carries ``gateway_id``."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(GATEWAY_ENV_KEY) == gateway_id:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def assert_no_process_of(gateway_id: str) -> None:
    """Fail (after killing them with the reaper's proofs) if processes of ``gateway_id`` are
    alive: the shipped gateway-scoped leak guard."""
    report = check_gateway_leaks(gateway_id, settle=1.0)
    if report:
        pytest.fail(report.describe())


def leak_checked_gateway_id() -> Iterator[str]:
    """Body of the per-module ``gateway_id`` fixture: a gateway id unique to the test; the
    test fails if any process carrying it survives."""
    gw = f"gw-test-{uuid.uuid4().hex[:12]}"
    yield gw
    assert_no_process_of(gw)


@dataclass
class RuntimeEnv:
    root: Path
    gateway_id: str

    @property
    def workspace(self) -> Path:
        return self.root / "ws"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def lease_store(self) -> LeaseStore:
        return LeaseStore(self.root / "leases")

    def config(self, **raw: Any) -> AcpxConfig:
        raw.setdefault("stateDir", str(self.state_dir))
        raw.setdefault("killGraceSeconds", 0.5)
        return resolve_config(raw, self.workspace)

    @contextlib.asynccontextmanager
    async def runtime(self, config: AcpxConfig | None = None, **raw: Any) -> AsyncIterator[
        AcpxRuntime
    ]:
        async with open_acpx_runtime(
            config or self.config(**raw),
            gateway_instance_id=self.gateway_id,
            lease_store=self.lease_store,
        ) as runtime:
            yield runtime

    async def lease(self, lease_id: str | None) -> ProcessLease:
        assert lease_id is not None
        lease = await self.lease_store.load(lease_id)
        assert lease is not None
        return lease


def make_env(tmp_path: Path, gateway_id: str) -> RuntimeEnv:
    (tmp_path / "ws").mkdir()
    return RuntimeEnv(root=tmp_path, gateway_id=gateway_id)


async def run(runtime: AcpxRuntime, handle: AcpRuntimeHandle, text: str) -> list[AcpRuntimeEvent]:
    """Every event of one turn."""
    events: list[AcpRuntimeEvent] = []
    async with contextlib.aclosing(runtime.run_turn(handle=handle, text=text)) as stream:
        async for event in stream:
            events.append(event)
    return events


def elicitation_recorder(
    url_action: Literal["accept", "decline", "cancel"], form_content: dict[str, Any]
) -> tuple[list[Any], Callable[[Any], Awaitable[Any]]]:
    """A host elicitation handler that records each request and answers a URL with
    ``url_action`` and a form with ``accept`` + ``form_content``; returns (requests, handler)."""
    from acpx_trio import ElicitationAnswer, ElicitationRequest

    asked: list[ElicitationRequest] = []

    async def answer(request: ElicitationRequest) -> ElicitationAnswer:
        asked.append(request)
        await trio.lowlevel.checkpoint()
        if request.mode == "url":
            return ElicitationAnswer(action=url_action)
        return ElicitationAnswer(action="accept", content=form_content)

    return asked, answer


def output(events: list[AcpRuntimeEvent]) -> str:
    """The concatenated ``output`` text of a turn."""
    return "".join(
        e.text for e in events if isinstance(e, TextDeltaEvent) and e.stream == "output"
    )


async def wait_gone(pid: int) -> None:
    """Wait (at most 10 s) until ``pid`` has exited (a kill is asynchronous): event-driven on
    a pidfd (readable once the process exits, zombie or reaped)."""
    with trio.fail_after(10):
        await wait_pid_exit(pid)


async def wait_pid_exit(pid: int) -> None:
    """Return once ``pid`` has exited (a zombie counts).  Waits on a pidfd, no polling; where
    pidfds are unavailable, re-checks with a short back-off.  Cancellable."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):
        await wait_until(lambda: pid_gone(pid))
        return
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], *, bound: float = 10.0
) -> None:
    """Wait until ``condition()`` (sync or async) holds, re-checking it on a short back-off
    (1 ms doubling to 20 ms); fails the test after ``bound`` seconds.  For conditions that
    have no event to wait on (the state of a foreign process, a flag of the runtime)."""
    pause = 0.001
    with trio.fail_after(bound):
        while True:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await trio.sleep(pause)  # re-check the real condition, not a guessed delay
            pause = min(pause * 2, 0.02)


def running_turn(rt: AcpxRuntime, session_key: str) -> Turn | None:
    session = rt._sessions.get(session_key)
    return None if session is None else session.turn


async def wait_prompt_sent(rt: AcpxRuntime, session_key: str) -> Turn:
    """Wait until the session's running turn has sent ``session/prompt`` to the agent (what a
    test must wait for before cancelling or closing "during" the turn); returns the turn."""
    await wait_until(
        lambda: (turn := running_turn(rt, session_key)) is not None and turn.prompt_sent
    )
    turn = running_turn(rt, session_key)
    assert turn is not None
    return turn


async def wait_reader_paused(turn: Turn) -> None:
    """Wait until reading from the agent paused at the high-water mark (the consumer lags by
    ``HIGH_WATER`` events or ``HIGH_WATER_BYTES`` of lines) or the agent finished the turn."""
    await wait_until(lambda: not turn.room.is_set() or turn.finished.is_set())


def pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
