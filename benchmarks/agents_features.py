"""Cost of issue #12's features, as ratios against baselines measured alternately in the
same run (bundled mock agent, real processes).

(a) ``ensure_session`` + ``close`` of an agent that requires ``authenticate`` (credential from
    config), against the same agent without auth.  Target ratio <= 1.15.
(b) a turn ``/terminal true`` (terminal/create with a lease and tags, output, wait_for_exit,
    output, release with an owned-tree kill), against an echo turn plus a direct
    ``trio.run_process(["/bin/sh", "-c", "true"])``.  Reported (no target: the terminal adds
    two lease writes and a verified tree cleanup by design).

Run: ``python benchmarks/agents_features.py [--n 15]``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from acpx_trio._events import AcpRuntimeHandle
from acpx_trio._runtime.open_runtime import open_acpx_runtime
from acpx_trio._runtime.runtime import AcpxRuntime
from acpx_trio._store.config import resolve_config
from acpx_trio._store.leases import LeaseStore

MOCK = [sys.executable, "-m", "acpx_trio.testing.mock_agent"]


async def _turn(rt: AcpxRuntime, handle: AcpRuntimeHandle, text: str) -> None:
    async with contextlib.aclosing(rt.run_turn(handle=handle, text=text)) as events:
        async for _ in events:
            pass


async def main(n: int) -> int:
    root = Path(tempfile.mkdtemp(prefix="acpx-bench-agents-"))
    (root / "ws").mkdir()
    agents = {
        "plain": {"command": MOCK[0], "args": MOCK[1:]},
        "authy": {"command": MOCK[0], "args": [*MOCK[1:], "--require-auth", "verify-key"]},
    }
    config = resolve_config(
        {"stateDir": str(root / "state"), "agents": agents, "permissionMode": "approve-all",
         "auth": {"verify-key": "bench-credential"}}, root / "ws")
    times: dict[str, list[float]] = {"plain": [], "authy": [], "terminal": [], "baseline": []}
    async with open_acpx_runtime(
        config, gateway_instance_id=f"gw-bench-{uuid.uuid4().hex[:8]}",
        lease_store=LeaseStore(root / "leases"),
    ) as rt:
        async def ensure_close(agent: str) -> None:
            handle = await rt.ensure_session(session_key=f"k-{agent}", agent=agent)
            await rt.close(handle=handle)

        handle = await rt.ensure_session(session_key="t", agent="plain")

        async def terminal() -> None:
            await _turn(rt, handle, "/terminal true")

        async def baseline() -> None:
            await _turn(rt, handle, "echo")
            await trio.run_process(["/bin/sh", "-c", "true"])

        cases: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("plain", lambda: ensure_close("plain")), ("authy", lambda: ensure_close("authy")),
            ("baseline", baseline), ("terminal", terminal),
        ]
        for _ in range(2):  # warm-up
            for _name, fn in cases:
                await fn()
        for _ in range(n):
            for name, fn in cases:
                start = time.perf_counter()
                await fn()
                times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    auth_ratio = med["authy"] / med["plain"]
    term_ratio = med["terminal"] / med["baseline"]
    print(f"ensure+close: plain {med['plain']:.1f} ms, with authenticate {med['authy']:.1f} ms,"
          f" ratio {auth_ratio:.2f} (target <= 1.15) {'PASS' if auth_ratio <= 1.15 else 'FAIL'}")
    print(f"terminal turn {med['terminal']:.1f} ms vs echo turn + raw spawn "
          f"{med['baseline']:.1f} ms, ratio {term_ratio:.2f}")
    return 0 if auth_ratio <= 1.15 else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=15)
    sys.exit(trio.run(main, parser.parse_args().n))
