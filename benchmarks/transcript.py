"""Cost of the session transcript on streaming, measured alternately in the same run.

A 10,000-chunk turn (``/chunks 10000`` of the bundled mock agent) through ``run_turn``, with
the transcript on (the agent's stdio tapped chunk by chunk into :class:`TranscriptWriter`'s
buffer; lines are split, redacted, encoded and written in a worker thread) against the same
turn with it off.  The time is from
the prompt to the ``done`` event (what a client waits for); the final per-turn flush, which
the owner runs after it has forwarded ``done``, is reported separately.  Target ratio <= 1.10.

Run: ``python benchmarks/transcript.py [--n 20] [--chunks 10000]``.  Exits 1 if the target is
missed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

from acpx_trio._acp import stream_tap

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_runtime import bench_runtime, stream_chunks
from _report import result

from acpx_trio._runtime.runtime import AcpxRuntime
from acpx_trio._store.transcript import TranscriptWriter, transcript_path

TARGET = 1.10


async def one_turn(rt: AcpxRuntime, chunks: int, n: int,
                   writer: TranscriptWriter | None) -> tuple[float, float]:
    """(turn seconds, final flush seconds) of one turn in a fresh session."""
    stream_tap.set(None if writer is None else writer.on_chunk)
    handle = await rt.ensure_session(session_key=f"t-{n}", agent="mock")
    try:
        start = time.perf_counter()
        await stream_chunks(rt, handle, chunks, batches=False)
        elapsed = time.perf_counter() - start
        flushed = time.perf_counter()
        if writer is not None:
            await writer.aclose()
        return elapsed, time.perf_counter() - flushed
    finally:
        await rt.close(handle=handle, reason="bench")


async def main(n: int, chunks: int) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        async with bench_runtime(root) as rt, trio.open_nursery() as nursery:

            def writer(i: int) -> TranscriptWriter:
                return TranscriptWriter(transcript_path(root / "tr", f"k{i}"), nursery=nursery)

            await one_turn(rt, chunks, -1, None)  # warm-up
            await one_turn(rt, chunks, -2, writer(-2))
            on: list[float] = []
            off: list[float] = []
            flush: list[float] = []
            size = 0
            for i in range(n):
                off.append((await one_turn(rt, chunks, 2 * i, None))[0])
                w = writer(2 * i + 1)
                took, flushed = await one_turn(rt, chunks, 2 * i + 1, w)
                on.append(took)
                flush.append(flushed)
                size = w.path.stat().st_size
    m_on, m_off = statistics.median(on), statistics.median(off)
    print(f"INFO transcript: final flush (after done) median "
          f"{statistics.median(flush) * 1000:.1f} ms; {size / 1024:.0f} KiB per {chunks}-chunk "
          "turn")
    return result(f"transcript.streaming ({chunks}-chunk turn, on vs off)",
                  f"{m_on * 1000:.1f} ms", f"transcript off {m_off * 1000:.1f} ms",
                  m_on / m_off, f"<= {TARGET}", m_on / m_off <= TARGET)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--chunks", type=int, default=10_000)
    args = parser.parse_args()
    sys.exit(0 if trio.run(main, args.n, args.chunks) else 1)
