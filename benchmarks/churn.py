"""Lifecycle churn benchmark.

Part 1: ``AcpxRuntimeService`` start/stop cycles per second with a stub runtime factory (the
real config resolution, gateway id, lease store and start-up reaper run on every start), and
RSS growth over the measured cycles.  What one cycle pays: the state files are ``stat``-ed in
a worker thread at every start (there is no time window in which a start trusts the previous
one), and the background orphan sweep is started unless a previous sweep finished clean with
the lease file unchanged since (``SweepMemo``); the stop that follows at once cancels it, so
in this loop every cycle starts one.  No reap a restart needs is skipped to go faster.
Targets: >= 3,000 cycles/s, RSS flat (growth < 2 MiB) over 20,000 cycles.
Baseline measured in the same run: the same number of cycles of two bare worker-thread hops
(the minimum blocking work one start does), so the ratio is comparable across machines.

Part 2 (skipped with a message when ``acpx_trio._runtime.runtime`` is missing):
ensure/turn/close churn
with the bundled mock agent through the real runtime, sessions per second; baseline: spawning
and reaping the bare mock agent (stdin at EOF, so it exits at once).

Usage: ``python benchmarks/churn.py [--cycles 20000] [--sessions 30] [--skip-runtime] [--fresh]``
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import result as report_result

from acpx_trio._service.backends import BackendRegistry
from acpx_trio._service.lazy_runtime import RuntimeFactoryParams
from acpx_trio._service.open_service import open_runtime_service
from acpx_trio._service.service import AcpxRuntimeService, ServiceContext

MiB = 1024 * 1024
TARGET_CYCLES_PER_S = 3000.0
TARGET_RSS_GROWTH = 2 * MiB


class _StubRuntime:
    """The smallest runtime a backend registration accepts."""

    def is_healthy(self) -> bool:
        return True

    async def probe_availability(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def _stub_factory(params: RuntimeFactoryParams) -> _StubRuntime:
    return _StubRuntime()


def _quiet_logger() -> logging.Logger:
    log = logging.getLogger("acpx_trio.bench")
    log.propagate = False
    log.addHandler(logging.NullHandler())
    log.setLevel(logging.WARNING)
    return log


def _rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


async def _service_cycles(
    ctx: ServiceContext, registry: BackendRegistry, n: int, *, fresh: bool
) -> None:
    svc = AcpxRuntimeService(runtime_factory=_stub_factory, registry=registry)
    for _ in range(n):
        if fresh:
            svc = AcpxRuntimeService(runtime_factory=_stub_factory, registry=registry)
        await svc.start(ctx)
        await svc.stop(ctx)


async def _baseline_cycles(n: int) -> None:
    def noop() -> None:
        return None

    for _ in range(n):
        await trio.to_thread.run_sync(noop)
        await trio.to_thread.run_sync(noop)


async def part1(cycles: int, *, fresh: bool = False) -> bool:
    what = "a new service object per cycle" if fresh else "one service object restarted"
    print(f"== part 1: service start/stop churn ({cycles:,} cycles, stub runtime, {what}) ==")
    registry = BackendRegistry()
    with tempfile.TemporaryDirectory(prefix="acpx-churn-") as tmp:
        async with trio.open_nursery() as nursery:
            ctx = ServiceContext(
                workspace_dir=Path(tmp) / "ws",
                state_dir=Path(tmp) / "state",
                logger=_quiet_logger(),
                nursery=nursery,
            )
            await _service_cycles(ctx, registry, min(500, cycles), fresh=fresh)  # warm-up
            t0 = time.perf_counter()
            await _baseline_cycles(cycles)
            base_s = time.perf_counter() - t0
            rss_before = _rss()
            t0 = time.perf_counter()
            await _service_cycles(ctx, registry, cycles, fresh=fresh)
            elapsed = time.perf_counter() - t0
            rss_after = _rss()
            nursery.cancel_scope.cancel()
    rate = cycles / elapsed
    base_rate = cycles / base_s
    growth = rss_after - rss_before
    ok_rate = rate >= TARGET_CYCLES_PER_S
    ok_rss = growth < TARGET_RSS_GROWTH
    print(f"cycles/s            : {rate:,.0f}  (target >= {TARGET_CYCLES_PER_S:,.0f})  "
          f"{'PASS' if ok_rate else 'FAIL'}")
    print(f"baseline (2 thread hops/cycle): {base_rate:,.0f} cycles/s; "
          f"service/baseline time ratio {elapsed / base_s:.2f}x")
    print(f"RSS before/after    : {rss_before / MiB:.2f} MiB / {rss_after / MiB:.2f} MiB")
    limit_kib = TARGET_RSS_GROWTH // 1024
    print(f"RSS growth          : {growth / 1024:+,.0f} KiB  (target < {limit_kib:,}"
          f" KiB)  {'PASS' if ok_rss else 'FAIL'}")
    report_result(f"churn.service_cycles ({what})", f"{rate:,.0f} cycles/s",
                  f"2 thread hops/cycle {base_rate:,.0f} cycles/s", elapsed / base_s,
                  f">= {TARGET_CYCLES_PER_S:,.0f} cycles/s", ok_rate)
    report_result(f"churn.rss_growth ({cycles:,} cycles)", f"{growth / 1024:+,.0f} KiB",
                  f"{rss_before / MiB:.2f} MiB before", rss_after / max(rss_before, 1),
                  f"< {limit_kib:,} KiB", ok_rss)
    return ok_rate and ok_rss


async def _bare_spawns(n: int) -> float:
    """Spawn the mock agent with stdin at EOF (it exits at once) and reap it, ``n`` times."""
    t0 = time.perf_counter()
    for _ in range(n):
        await trio.run_process(
            [sys.executable, "-m", "acpx_trio.testing.mock_agent"], stdin=b"",
            stderr=subprocess.DEVNULL,
        )
    return time.perf_counter() - t0


async def part2(sessions: int) -> None:
    print(f"\n== part 2: ensure/turn/close churn with the mock agent ({sessions} sessions) ==")
    if importlib.util.find_spec("acpx_trio._runtime.runtime") is None:
        print("SKIPPED: acpx_trio._runtime.runtime is missing (the real runtime is not built yet)")
        return
    try:
        await trio.to_thread.run_sync(importlib.import_module, "acpx_trio._runtime.runtime")
    except Exception as exc:  # a runtime that does not import is reported, not fatal
        print(f"SKIPPED: acpx_trio._runtime.runtime does not import: {type(exc).__name__}: {exc}")
        return
    base_s = await _bare_spawns(min(sessions, 20))
    base_rate = min(sessions, 20) / base_s
    with tempfile.TemporaryDirectory(prefix="acpx-churn-rt-") as tmp:
        ws = Path(tmp) / "ws"
        await trio.to_thread.run_sync(lambda: ws.mkdir(parents=True))
        async with open_runtime_service(
            workspace_dir=ws, state_dir=Path(tmp) / "state", logger=_quiet_logger(),
            registry=BackendRegistry(),
        ) as svc:
            runtime = svc.runtime
            assert runtime is not None
            t0 = time.perf_counter()
            for i in range(sessions):
                handle = await runtime.ensure_session(session_key=f"bench:{i}", agent="mock")
                async for _event in runtime.run_turn(handle=handle, text="hello"):
                    pass
                await runtime.close(handle=handle, reason="bench")
            elapsed = time.perf_counter() - t0
    rate = sessions / elapsed
    print(f"sessions/s          : {rate:,.1f}  ({elapsed / sessions * 1000:.1f} ms per "
          "ensure+turn+close)")
    print(f"baseline (bare mock-agent spawn+exit): {base_rate:,.1f}/s; "
          f"session/baseline time ratio {base_rate / rate:.2f}x")


async def main(args: argparse.Namespace) -> int:
    ok = await part1(args.cycles, fresh=args.fresh)
    if not args.skip_runtime:
        await part2(args.sessions)
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20_000)
    parser.add_argument("--sessions", type=int, default=30)
    parser.add_argument("--skip-runtime", action="store_true")
    parser.add_argument("--fresh", action="store_true", help="new service object per cycle")
    sys.exit(trio.run(main, parser.parse_args()))
