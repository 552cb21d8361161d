"""A gateway process for the soak scenarios: a real runtime service with live mock-agent
sessions, meant to be SIGKILLed.

    python benchmarks/_soak_child.py STATE_DIR --roles busy,grandchild,daemon,stubborn,idle
        [--churn M --concurrency C] [--die-after-pending K | --die-after-spawn K]
        [--agent-arg=--ignore-stdin-eof ...] [--kill-grace S]

Opens one session per role, concurrently (so a kill lands between lease writes and spawns of
different sessions): ``idle`` (just open), ``busy`` (a ``/sleep 60000`` turn left running),
``grandchild`` (``/spawn-grandchild``, then busy), ``daemon`` (``/daemonize``: a setsid
helper), ``stubborn`` (agent started with ``--ignore-sigterm``, then busy).  Before that,
``--churn M`` opens, prompts and closes ``M`` sessions with ``--concurrency`` workers.

Prints JSON lines: ``{"kind": "agent"|"grandchild"|"daemon", "pid": N, "role": R}`` for each
process, then ``{"ready": true, "spawned": S}`` (S = sessions started, one lease each) and
sleeps until killed.

Fault injection (a SIGKILL of this process at an exact point): ``--die-after-pending K``
right after the K-th lease is first durably saved, before its agent runs (pending, ``rootPid
0``, on the direct path; complete with the spare's pid where a spare leaf becomes the agent,
as the first start of a runtime does); ``--die-after-spawn K`` right after the K-th agent is
spawned: before its lease records the pid on the direct path, once the spare leaf was sent
its command on the other (its lease is complete by then).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from acpx_trio._events import TextDeltaEvent
from acpx_trio._process import agent as _agent_process
from acpx_trio._service.open_service import open_runtime_service
from acpx_trio._store.lease_model import ProcessLease
from acpx_trio._store.leases import LeaseStore

MOCK = ["-m", "acpx_trio.testing.mock_agent"]


def emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def arm_faults(die_after_pending: int, die_after_spawn: int) -> None:
    """Patch the lease store / agent process so this process SIGKILLs itself at a point."""
    if die_after_pending > 0:
        original_save = LeaseStore.save
        first_saves: set[str] = set()

        async def save(self: LeaseStore, lease: ProcessLease) -> ProcessLease:
            result = await original_save(self, lease)
            if lease.state == "open" and lease.lease_id not in first_saves:
                first_saves.add(lease.lease_id)
                if len(first_saves) == die_after_pending:
                    os.kill(os.getpid(), signal.SIGKILL)
            return result

        LeaseStore.save = save  # type: ignore[method-assign]
    if die_after_spawn > 0:
        original_complete = _agent_process.AgentProcess._complete_lease
        original_spare = _agent_process.spawn_spare
        spawned = 0

        def count_spawn() -> None:
            nonlocal spawned
            spawned += 1
            if spawned == die_after_spawn:
                os.kill(os.getpid(), signal.SIGKILL)

        async def complete(self: _agent_process.AgentProcess) -> None:
            count_spawn()
            await original_complete(self)

        async def spare(*args: Any, **kwargs: Any) -> Any:
            started = await original_spare(*args, **kwargs)
            if started is not None:
                count_spawn()
            return started

        _agent_process.AgentProcess._complete_lease = complete  # type: ignore[method-assign]
        _agent_process.spawn_spare = spare


async def turn_text(runtime: Any, handle: Any, text: str) -> str:
    said: list[str] = []
    async for event in runtime.run_turn(handle=handle, text=text):
        if isinstance(event, TextDeltaEvent):
            said.append(event.text)
    return "".join(said)


async def busy(runtime: Any, handle: Any) -> None:
    async for _event in runtime.run_turn(handle=handle, text="/sleep 60000"):
        pass


class Gateway:
    def __init__(self, runtime: Any, nursery: trio.Nursery) -> None:
        self.runtime = runtime
        self.nursery = nursery
        self.spawned = 0

    async def open_role(self, index: int, role: str) -> None:
        agent = "mock-stubborn" if role == "stubborn" else "mock"
        key = f"soak:{role}:{index}"
        handle = await self.runtime.ensure_session(session_key=key, agent=agent)
        self.spawned += 1
        emit({"kind": "agent", "pid": handle.agent_pid, "role": role, "lease": handle.lease_id})
        if role in ("grandchild", "daemon"):
            directive = "/spawn-grandchild" if role == "grandchild" else "/daemonize"
            said = await turn_text(self.runtime, handle, directive)
            found = re.search(r"(?:grandchild|daemon) pid=(\d+)", said)
            if found is None:
                raise SystemExit(f"mock agent did not report a helper pid: {said!r}")
            emit({"kind": role, "pid": int(found.group(1)), "role": role})
        if role in ("busy", "grandchild", "stubborn"):
            self.nursery.start_soon(busy, self.runtime, handle)

    async def churn_worker(self, worker: int, count: int) -> None:
        for i in range(count):
            key = f"churn:{worker}:{i}"
            handle = await self.runtime.ensure_session(session_key=key, agent="mock")
            self.spawned += 1
            if i % 2 == 0:
                await turn_text(self.runtime, handle, "hello")
            await self.runtime.close(handle=handle, reason="churn")


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("state_dir", type=Path)
    parser.add_argument("--workspace", type=Path, default=None)
    parser.add_argument("--roles", default="busy,grandchild,daemon,stubborn,idle")
    parser.add_argument("--churn", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=3)
    parser.add_argument("--die-after-pending", type=int, default=0)
    parser.add_argument("--die-after-spawn", type=int, default=0)
    parser.add_argument("--kill-grace", type=float, default=0.75)
    parser.add_argument("--agent-arg", action="append", default=[])
    args = parser.parse_args(argv)
    arm_faults(args.die_after_pending, args.die_after_spawn)
    workspace = args.workspace or args.state_dir.parent / "workspace"
    await trio.to_thread.run_sync(lambda: workspace.mkdir(parents=True, exist_ok=True))
    config = {
        "killGraceSeconds": args.kill_grace,
        "agents": {
            "mock": {"command": sys.executable, "args": [*MOCK, *args.agent_arg]},
            "mock-stubborn": {
                "command": sys.executable,
                "args": [*MOCK, "--ignore-sigterm", *args.agent_arg],
            },
        },
    }
    async with open_runtime_service(
        workspace_dir=workspace, state_dir=args.state_dir, plugin_config=config
    ) as service:
        runtime = service.runtime
        if runtime is None:
            raise SystemExit("runtime service did not start (OPENCLAW_SKIP_ACPX_RUNTIME set?)")
        async with trio.open_nursery() as nursery:
            gateway = Gateway(runtime, nursery)
            if args.churn:
                workers = max(1, args.concurrency)
                async with trio.open_nursery() as churn:
                    for w in range(workers):
                        share = args.churn // workers + (1 if w < args.churn % workers else 0)
                        churn.start_soon(gateway.churn_worker, w, share)
            roles = [r for r in args.roles.split(",") if r]
            async with trio.open_nursery() as opening:
                for i, role in enumerate(roles):
                    opening.start_soon(gateway.open_role, i, role)
            emit({"ready": True, "spawned": gateway.spawned})
            await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, sys.argv[1:])
