"""Scenario ``agents``: hostile agents against a real runtime service in this process.

One round runs every case concurrently, each on its own session of the bundled mock agent:

========================  =================================================  ================
case                      what the agent does                                expected end
========================  =================================================  ================
``crash``                 exits 1 mid-turn                                   error
``grandchild-crash``      ``/spawn-grandchild``, then exits mid-turn         error
``hang-timeout``          never answers (turn timeout)                       ACP_TURN_TIMEOUT
``daemon-hang-timeout``   ``/daemonize`` (setsid helper), then never answers ACP_TURN_TIMEOUT
``stubborn-hang-cancel``  ignores SIGTERM, never answers, we cancel          done(cancelled)
``garbage``               a non-JSON line on stdout                          done(end_turn)
``huge-line``             one 64 MiB line (limit 8 MiB)                      error
``close-stdout``          closes stdout, keeps stdin open and runs           error
``flood-cancel``          millions of notifications; we cancel mid-flood     done(cancelled)
========================  =================================================  ================

Every turn must end with a typed event (:class:`DoneEvent` / :class:`ErrorEvent`) within its
bound (turn timeout + cancel wait + kill grace + 2 s), every process of the case (agent and
helpers) must be gone once the session is closed, and the peak RSS (sampled every 20 ms) is
printed and may grow by at most 48 MiB, less than the 64 MiB line.  ``leaked`` counts
processes still alive, ``lost`` leases not final after the service stops; there are no decoys.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from _soak_common import (
    MOCK_ARGS,
    ListLogger,
    RssSampler,
    ScenarioResult,
    make_state_dir,
    new_marker,
    sweep,
    tagged_alive,
)

from acpx_trio._events import DoneEvent, ErrorEvent, TextDeltaEvent
from acpx_trio._runtime.turns import CANCEL_WAIT_SECONDS
from acpx_trio._service.backends import BackendRegistry
from acpx_trio._service.open_service import open_runtime_service
from acpx_trio._store.leases import SyncLeaseStore

KILL_GRACE = 0.5
SLACK = 2.0
HUGE = 64 * 1024 * 1024
#: Less than the 64 MiB line itself: proves no line was ever held whole.
RSS_GROWTH_LIMIT_MIB = 48


@dataclass
class Case:
    name: str
    agent: str
    prompt: str
    expect: Callable[[Any], bool]
    setup: str | None = None  # a directive run first (helper pids are parsed from its text)
    cancel_after_events: int | None = None
    cancel_after_seconds: float | None = None


def _error(code: str | None = None) -> Callable[[Any], bool]:
    return lambda e: isinstance(e, ErrorEvent) and (code is None or e.code == code)


def _done(reason: str) -> Callable[[Any], bool]:
    return lambda e: isinstance(e, DoneEvent) and e.stop_reason == reason


CASES = [
    Case("crash", "mock", "/crash", _error()),
    Case("grandchild-crash", "mock", "/crash", _error(), setup="/spawn-grandchild"),
    Case("hang-timeout", "mock", "/hang", _error("ACP_TURN_TIMEOUT")),
    Case("daemon-hang-timeout", "mock", "/hang", _error("ACP_TURN_TIMEOUT"), setup="/daemonize"),
    Case("stubborn-hang-cancel", "stubborn", "/hang", _done("cancelled"),
         cancel_after_seconds=0.3),
    Case("garbage", "mock", "/garbage", _done("end_turn")),
    Case("huge-line", "mock", f"/huge {HUGE}", _error()),
    Case("close-stdout", "noeof", "/close-stdout", _error()),
    Case("flood-cancel", "mock", "/flood 5000000", _done("cancelled"), cancel_after_events=2000),
]


@dataclass
class Outcome:
    case: str
    final: Any = None
    seconds: float = 0.0
    events: int = 0
    pids: list[int] = field(default_factory=list)
    problem: str | None = None


async def _text_of(runtime: Any, handle: Any, text: str) -> str:
    said = []
    async with contextlib.aclosing(runtime.run_turn(handle=handle, text=text)) as events:
        async for event in events:
            if isinstance(event, TextDeltaEvent):
                said.append(event.text)
    return "".join(said)


async def run_one(runtime: Any, case: Case, key: str, turn_timeout: float) -> Outcome:
    out = Outcome(case.name)
    handle = await runtime.ensure_session(session_key=key, agent=case.agent)
    out.pids.append(handle.agent_pid)
    if case.setup:
        said = await _text_of(runtime, handle, case.setup)
        out.pids += [int(p) for p in re.findall(r"pid=(\d+)", said)]
    bound = turn_timeout + CANCEL_WAIT_SECONDS + KILL_GRACE + SLACK
    started = time.perf_counter()
    try:
        with trio.fail_after(bound):
            async with trio.open_nursery() as nursery:
                if case.cancel_after_seconds is not None:
                    async def later() -> None:
                        await trio.sleep(case.cancel_after_seconds or 0)
                        await runtime.cancel(handle=handle, reason="soak")
                    nursery.start_soon(later)
                async with contextlib.aclosing(
                    runtime.run_turn(handle=handle, text=case.prompt)
                ) as events:
                    async for event in events:
                        out.events += 1
                        if out.events == case.cancel_after_events:
                            await runtime.cancel(handle=handle, reason="soak")
                        if isinstance(event, DoneEvent | ErrorEvent):
                            out.final = event
                nursery.cancel_scope.cancel()
    except trio.TooSlowError:
        out.problem = f"no final event within {bound:.1f}s"
    out.seconds = time.perf_counter() - started
    if out.problem is None and not case.expect(out.final):
        out.problem = f"unexpected final event {str(out.final)[:200]}"
    with trio.fail_after(30):
        await runtime.close(handle=handle, reason="soak done")
    return out


async def run_round(runtime: Any, cycle: int, turn_timeout: float) -> list[Outcome]:
    """Every case at once, each on its own session."""
    outcomes: list[Outcome] = []

    async def one(case: Case) -> None:
        key = f"agents:{cycle}:{case.name}"
        outcomes.append(await run_one(runtime, case, key, turn_timeout))

    async with trio.open_nursery() as nursery:
        for case in CASES:
            nursery.start_soon(one, case)
    return outcomes


async def run_cycles(
    result: ScenarioResult, cycles: int, gw: str, state: Path, config: dict[str, Any]
) -> None:
    """``cycles`` rounds on one service; checks that nothing of a round is left alive."""
    async with open_runtime_service(
        workspace_dir=state.parent / "workspace", state_dir=state, plugin_config=config,
        logger=ListLogger(), registry=BackendRegistry(),
    ) as service:
        runtime = service.runtime
        assert runtime is not None
        slowest = ("-", 0.0)
        for cycle in range(cycles):
            for out in await run_round(runtime, cycle, config["timeoutSeconds"]):
                slowest = max(slowest, (out.case, out.seconds), key=lambda x: x[1])
                if out.problem:
                    result.fail(f"cycle {cycle} {out.case}: {out.problem}")
            alive = await trio.to_thread.run_sync(tagged_alive, [gw])
            if alive:
                result.leaked += len(alive)
                result.fail(f"cycle {cycle}: alive after close: {alive}")
                await trio.to_thread.run_sync(sweep, [gw], None)
            result.cycles += 1
        result.figures["slowest_end"] = f"{slowest[0]}:{slowest[1]:.2f}s"


async def run_agents(cycles: int, seed: int, *, turn_timeout: float = 3.0) -> ScenarioResult:
    result = ScenarioResult("agents")
    marker = new_marker()
    root = Path(tempfile.mkdtemp(prefix="acpx-soak-agents-"))
    state, workspace = root / "state", root / "workspace"
    workspace.mkdir()
    gw = make_state_dir(state)
    config = {
        "timeoutSeconds": turn_timeout,
        "killGraceSeconds": KILL_GRACE,
        "agents": {
            "mock": {"command": sys.executable, "args": MOCK_ARGS},
            "stubborn": {"command": sys.executable, "args": [*MOCK_ARGS, "--ignore-sigterm"]},
            "noeof": {"command": sys.executable, "args": [*MOCK_ARGS, "--ignore-stdin-eof"]},
        },
    }
    rss = RssSampler()
    try:
        with trio.fail_after(120 + 60 * cycles):
            async with trio.open_nursery() as sampling:
                sampling.start_soon(rss.run)
                await run_cycles(result, cycles, gw, state, config)
                sampling.cancel_scope.cancel()
        still_open = [x for x in SyncLeaseStore(state / "acpx").list_all()
                      if not x.state.is_final]
        result.lost += len(still_open)
        if still_open:
            result.fail(f"leases not final after stop: {[x.lease_id for x in still_open]}")
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(sweep, [gw], marker)
        shutil.rmtree(root, ignore_errors=True)
    growth = rss.peak - rss.baseline
    result.figures["peak_rss"] = f"{rss.peak:.0f}MiB(+{growth:.0f})"
    if growth > RSS_GROWTH_LIMIT_MIB:
        result.fail(f"RSS grew by {growth:.0f} MiB (limit {RSS_GROWTH_LIMIT_MIB} MiB)")
    return result

