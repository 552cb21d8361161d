"""acpx-trio against the official Python ACP SDK client (PyPI ``agent-client-protocol``, the
``bench`` extra), on the same bundled mock agent, in the same run, alternating.

(a) lifecycle: ``ensure_session`` + ``close`` against the SDK's ``spawn_agent_process`` +
    ``initialize`` + ``new_session`` + exit.  Target: ours <= 1.0x the SDK.
(b) streaming: a 10,000-chunk turn (``/chunks 10000``): ``run_turn_batches`` and ``run_turn``
    against the SDK's ``prompt`` with a ``session_update`` callback.  Wall and client CPU
    (``time.process_time``).  Target: ours <= 1.0x the SDK (CPU and wall).

The SDK runs on asyncio, acpx-trio on Trio: each repetition runs one ``asyncio.run`` and one
``trio.run``; only the work itself is timed.  Without the package the benchmark prints a SKIP
line and exits 0 (``pip install -e '.[bench]'``).

Run: ``python benchmarks/sdk_peer.py [--reps 7] [--chunks 10000]``; exits 1 on a miss.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_runtime import bench_runtime, stream_chunks
from _report import median, result, skip

Timing = tuple[float, float]  # wall, client CPU


class _SdkClient:
    """The smallest SDK client: counts agent message chunks."""

    def __init__(self) -> None:
        self.chunks = 0

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        if getattr(update, "session_update", None) == "agent_message_chunk":
            self.chunks += 1

    async def request_permission(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def on_connect(self, conn: Any) -> None:
        pass


async def sdk_run(cwd: str, chunks: int | None) -> Timing:
    import acp

    client = _SdkClient()
    start, cpu = time.perf_counter(), time.process_time()
    async with acp.spawn_agent_process(
        client, sys.executable, "-m", "acpx_trio.testing.mock_agent", cwd=cwd
    ) as (conn, _proc):
        await conn.initialize(protocol_version=1)
        session = await conn.new_session(cwd=cwd, mcp_servers=[])
        if chunks is not None:
            start, cpu = time.perf_counter(), time.process_time()
            await conn.prompt(session_id=session.session_id,
                              prompt=[acp.text_block(f"/chunks {chunks}")])
            elapsed, used = time.perf_counter() - start, time.process_time() - cpu
            assert client.chunks == chunks, client.chunks
            return elapsed, used
    return time.perf_counter() - start, time.process_time() - cpu


async def ours_run(root: Path, chunks: int | None, batches: bool) -> Timing:
    async with bench_runtime(root) as rt:
        start, cpu = time.perf_counter(), time.process_time()
        handle = await rt.ensure_session(session_key=f"s-{uuid.uuid4().hex[:6]}", agent="mock")
        if chunks is None:
            await rt.close(handle=handle, reason="bench")
            return time.perf_counter() - start, time.process_time() - cpu
        start, cpu = time.perf_counter(), time.process_time()
        await stream_chunks(rt, handle, chunks, batches=batches)
        elapsed, used = time.perf_counter() - start, time.process_time() - cpu
        await rt.close(handle=handle, reason="bench")
        return elapsed, used


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--chunks", type=int, default=10_000)
    args = parser.parse_args()
    try:
        from importlib.metadata import version

        import acp  # noqa: F401

        sdk = f"agent-client-protocol {version('agent-client-protocol')}"
    except ImportError:
        skip("sdk_peer", "agent-client-protocol is not installed (pip install -e '.[bench]')")
        return 0
    oks = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "ws").mkdir()
        cwd = str(root / "ws")
        asyncio.run(sdk_run(cwd, None))  # warm-up
        trio.run(ours_run, root, None, True)
        life: dict[str, list[Timing]] = {"sdk": [], "ours": []}
        for _ in range(args.reps):
            life["sdk"].append(asyncio.run(sdk_run(cwd, None)))
            life["ours"].append(trio.run(ours_run, root, None, True))
        m_ours, m_sdk = median([w for w, _ in life["ours"]]), median([w for w, _ in life["sdk"]])
        oks.append(result(f"sdk_peer.lifecycle ({sdk})", f"{m_ours * 1e3:.1f} ms",
                          f"SDK spawn+initialize+new_session+exit {m_sdk * 1e3:.1f} ms",
                          m_ours / m_sdk, "<= 1.0", m_ours / m_sdk <= 1.0))
        stream: dict[str, list[Timing]] = {"sdk": [], "batches": [], "run_turn": []}
        for _ in range(args.reps):
            stream["sdk"].append(asyncio.run(sdk_run(cwd, args.chunks)))
            stream["batches"].append(trio.run(ours_run, root, args.chunks, True))
            stream["run_turn"].append(trio.run(ours_run, root, args.chunks, False))
        sdk_wall = median([w for w, _ in stream["sdk"]])
        sdk_cpu = median([c for _, c in stream["sdk"]])
        for api in ("batches", "run_turn"):
            wall = median([w for w, _ in stream[api]])
            cpu = median([c for _, c in stream[api]])
            oks.append(result(f"sdk_peer.stream{args.chunks // 1000}k.{api}.cpu",
                              f"{cpu * 1e3:.1f} ms", f"SDK {sdk_cpu * 1e3:.1f} ms",
                              cpu / sdk_cpu, "<= 1.0", cpu / sdk_cpu <= 1.0))
            oks.append(result(f"sdk_peer.stream{args.chunks // 1000}k.{api}.wall",
                              f"{wall * 1e3:.1f} ms", f"SDK {sdk_wall * 1e3:.1f} ms",
                              wall / sdk_wall, "<= 1.0", wall / sdk_wall <= 1.0))
    return 0 if all(oks) else 1


if __name__ == "__main__":
    sys.exit(main())
