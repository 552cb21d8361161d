"""Many sessions at once: N concurrent ``ensure_session``, then N concurrent ``close``, for each
N of ``--sessions`` (a scale series, e.g. ``10 50 200``).

Baseline, same run, alternating: N concurrent raw spawns of the same mock agent with
``initialize`` + ``session/new`` (then N concurrent stdin-close + exit).  Targets: the runtime's
concurrent ensure phase <= 1.15x the raw phase (per session, same count); closing all N
sessions <= 3 ms per session (150 ms for 50).  Also reported: what one more live session costs
this process (RSS and open file descriptors, measured with all N open; the agents are other
processes).  Medians of ``--reps`` repetitions.

Run: ``python benchmarks/concurrency.py [--sessions 10 50 200] [--reps 5]``; exits 1 on a miss.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import psutil
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_runtime import bench_runtime
from _report import median, result
from turns import INIT, RawAgent

from acpx_trio._events import AcpRuntimeHandle
from acpx_trio._runtime.runtime import AcpxRuntime


async def raw_round(cwd: str, n: int) -> tuple[float, float]:
    agents: list[RawAgent] = []

    async def one() -> None:
        agent = await RawAgent.spawn(cwd)
        await agent.request("initialize", INIT)
        await agent.request("session/new", {"cwd": cwd, "mcpServers": []})
        agents.append(agent)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
    opened = time.perf_counter() - start
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for agent in agents:
            nursery.start_soon(agent.close)
    return opened, time.perf_counter() - start


def _footprint() -> tuple[int, int]:
    me = psutil.Process()
    return me.memory_info().rss, me.num_fds()


Growth = tuple[float, float]  # (RSS bytes, open fds) per session opened by a round


async def runtime_round(rt: AcpxRuntime, n: int, tag: str) -> tuple[float, float, Growth]:
    """Ensure ``n`` sessions at once, then close them at once: both phases' seconds, and what
    this process grew by per session while they were all open."""
    handles: list[AcpRuntimeHandle] = []
    rss0, fds0 = _footprint()

    async def one(i: int) -> None:
        handles.append(await rt.ensure_session(session_key=f"{tag}-{i}", agent="mock"))

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    opened = time.perf_counter() - start
    rss1, fds1 = _footprint()
    growth = ((rss1 - rss0) / n, (fds1 - fds0) / n)
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for handle in handles:
            nursery.start_soon(lambda h=handle: rt.close(handle=h, reason="bench"))
    return opened, time.perf_counter() - start, growth


async def main(counts: list[int], reps: int) -> bool:
    ok = True
    for n in counts:
        ok &= await series(n, reps)
    return ok


async def series(n: int, reps: int) -> bool:
    growths: list[Growth] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cwd = str(root / "ws")
        async with bench_runtime(root) as rt:
            await raw_round(cwd, 4)  # warm-up
            await runtime_round(rt, 4, "warm")
            raw_open: list[float] = []
            raw_close: list[float] = []
            rt_open: list[float] = []
            rt_close: list[float] = []
            for r in range(reps):
                o, c = await raw_round(cwd, n)
                raw_open.append(o)
                raw_close.append(c)
                o, c, g = await runtime_round(rt, n, f"r{r}")
                growths.append(g)
                rt_open.append(o)
                rt_close.append(c)
    m_raw, m_rt = median(raw_open), median(rt_open)
    ok_open = result(
        f"concurrency.ensure{n}", f"{m_rt * 1e3:.1f} ms ({m_rt / n * 1e3:.2f} ms/session)",
        f"raw spawn+init+new x{n} {m_raw * 1e3:.1f} ms", m_rt / m_raw, "<= 1.15",
        m_rt / m_raw <= 1.15,
    )
    m_close, m_raw_close = median(rt_close), median(raw_close)
    ok_close = result(
        f"concurrency.close{n}", f"{m_close * 1e3:.1f} ms ({m_close / n * 1e3:.2f} ms/session)",
        f"raw stdin-close+exit x{n} {m_raw_close * 1e3:.1f} ms", m_close / m_raw_close,
        f"<= {3 * n} ms", m_close <= 0.003 * n,
    )
    # the first round's growth includes one-time allocations: the later rounds' median
    per = growths[1:] or growths
    rss = median([r for r, _ in per])
    fds = median([f for _, f in per])
    print(f"INFO concurrency.footprint{n} | {rss / 1024:.1f} KiB RSS and {fds:.1f} fds per "
          f"open session (this process; medians of {len(per)} rounds)", flush=True)
    return ok_open and ok_close


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[50])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    sys.exit(0 if trio.run(main, args.sessions, args.reps) else 1)
