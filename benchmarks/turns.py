"""Runtime overhead against raw ACP over stdio, measured alternately in the same run.

(a) ``ensure_session`` + ``close`` of the bundled mock agent, against a raw spawn +
    ``initialize`` + ``session/new`` round trips + stdin close + exit of the same command.
    Target ratio <= 1.10.
(b) a 10,000-chunk turn (``/chunks 10000``) against reading and decoding the same lines from
    the same agent directly (split lines, ``msgspec`` envelope decode, params decode).  Client
    CPU time (``time.process_time``: the agent is another process) and wall time, medians.
    ``run_turn_batches`` (the API for high-rate streams): target CPU <= 1.0, wall <= 1.1.
    ``run_turn`` (one event per step) is reported too, target CPU <= 1.3, wall <= 1.3.
(c) the first turn of a fresh session, whole: ``ensure_session``, one 10,000-chunk turn through
    ``run_turn_batches``, ``close``; against the leanest raw Trio loop we can write for the
    same work (``trio.lowlevel.open_process``, ``receive_some(65536)``, split lines, one
    ``msgspec.json.decode`` per line, the text taken from each update, stdin close, wait).
    Target: client CPU <= 1.0, wall <= 1.1.

``--background N``: the same on a busy machine (N idle processes); names get ``-bgN``.
``--lifecycle-only``: (a) alone.  ``--containment MODE``: the runtime's containment (default
``auto``: a leaf cgroup per agent where the machine allows it); names get ``-MODE``.

Run: ``python benchmarks/turns.py [--n 20] [--chunks 10000] [--background N]``.  Prints one
``RESULT`` line per figure (see ``_report.py``); exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_runtime import bench_runtime, stream_chunks
from _report import background, median, result

from acpx_trio._runtime.runtime import AcpxRuntime

MOCK = [sys.executable, "-m", "acpx_trio.testing.mock_agent"]
INIT = {"protocolVersion": 1, "clientCapabilities": {"fs": {"readTextFile": True,
                                                             "writeTextFile": True}}}


class _Envelope(msgspec.Struct):
    id: int | None = None
    method: str | None = None
    params: msgspec.Raw = msgspec.Raw()
    result: msgspec.Raw = msgspec.Raw()


_decode = msgspec.json.Decoder(_Envelope).decode
_encode = msgspec.json.Encoder().encode


class RawAgent:
    """The baseline: the agent spoken to directly, one JSON line at a time."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.buf = bytearray()
        self.next_id = 0

    @classmethod
    async def spawn(cls, cwd: str) -> RawAgent:
        proc = await trio.lowlevel.open_process(
            MOCK, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            cwd=cwd, start_new_session=True,
        )
        return cls(proc)

    async def line(self) -> bytes:
        assert self.proc.stdout is not None
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                out = bytes(self.buf[:nl])
                del self.buf[: nl + 1]
                return out
            data = await self.proc.stdout.receive_some(65536)
            if not data:
                raise EOFError
            self.buf += data

    async def request(self, method: str, params: Any, on_message: Any = None) -> _Envelope:
        assert self.proc.stdin is not None
        rid = self.next_id
        self.next_id += 1
        await self.proc.stdin.send_all(
            _encode({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}) + b"\n"
        )
        while True:
            msg = _decode(await self.line())
            if msg.id == rid and msg.method is None:
                return msg
            if on_message is not None:
                on_message(msg)

    async def close(self) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.aclose()
        with trio.move_on_after(5):
            await self.proc.wait()
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def raw_lifecycle(cwd: str) -> float:
    start = time.perf_counter()
    agent = await RawAgent.spawn(cwd)
    await agent.request("initialize", INIT)
    await agent.request("session/new", {"cwd": cwd, "mcpServers": []})
    await agent.close()
    return time.perf_counter() - start


async def runtime_lifecycle(rt: AcpxRuntime, n: int) -> float:
    start = time.perf_counter()
    handle = await rt.ensure_session(session_key=f"bench-{n}", agent="mock")
    await rt.close(handle=handle, reason="bench")
    return time.perf_counter() - start


Timing = tuple[float, float]  # (wall, client CPU) seconds


async def raw_turn(cwd: str, chunks: int) -> Timing:
    agent = await RawAgent.spawn(cwd)
    try:
        await agent.request("initialize", INIT)
        new = await agent.request("session/new", {"cwd": cwd, "mcpServers": []})
        sid = msgspec.json.decode(new.result)["sessionId"]
        texts: list[str] = []

        def on_message(msg: _Envelope) -> None:
            if msg.method == "session/update":
                update = msgspec.json.decode(msg.params)["update"]
                texts.append(update["content"]["text"])

        start, cpu = time.perf_counter(), time.process_time()
        prompt = {"sessionId": sid, "prompt": [{"type": "text", "text": f"/chunks {chunks}"}]}
        await agent.request("session/prompt", prompt, on_message)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        assert len(texts) == chunks, len(texts)
        return elapsed, cpu
    finally:
        await agent.close()


_lean_decode = msgspec.json.decode
_lean_encode = msgspec.json.Encoder().encode


async def lean_first_turn(cwd: str, chunks: int) -> Timing:
    """The raw baseline of (c): spawn, initialize, session/new, one prompt read to its
    answer, stdin close, wait; nothing but what the wire needs."""
    start, cpu = time.perf_counter(), time.process_time()
    proc = await trio.lowlevel.open_process(
        MOCK, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        cwd=cwd, start_new_session=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout
    tail = b""
    texts: list[str] = []

    async def call(rid: int, method: str, params: Any) -> Any:
        nonlocal tail
        await stdin.send_all(_lean_encode(
            {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}) + b"\n")
        while True:
            data = await stdout.receive_some(65536)
            if not data:
                raise EOFError
            lines = (tail + data).split(b"\n")
            tail = lines.pop()
            for line in lines:
                msg = _lean_decode(line)
                if msg.get("id") == rid and "method" not in msg:
                    return msg["result"]
                if msg.get("method") == "session/update":
                    texts.append(msg["params"]["update"]["content"]["text"])

    await call(0, "initialize", INIT)
    sid = (await call(1, "session/new", {"cwd": cwd, "mcpServers": []}))["sessionId"]
    await call(2, "session/prompt",
               {"sessionId": sid, "prompt": [{"type": "text", "text": f"/chunks {chunks}"}]})
    await stdin.aclose()
    await proc.wait()
    assert len(texts) == chunks, len(texts)
    return time.perf_counter() - start, time.process_time() - cpu


async def runtime_first_turn(rt: AcpxRuntime, chunks: int, n: int) -> Timing:
    """(c) through the runtime: ensure, one turn through ``run_turn_batches``, close."""
    start, cpu = time.perf_counter(), time.process_time()
    handle = await rt.ensure_session(session_key=f"first-{n}", agent="mock")
    try:
        await stream_chunks(rt, handle, chunks, batches=True)
    finally:
        await rt.close(handle=handle, reason="bench")
    return time.perf_counter() - start, time.process_time() - cpu


async def runtime_turn(rt: AcpxRuntime, chunks: int, n: int, batches: bool) -> Timing:
    handle = await rt.ensure_session(session_key=f"turn-{n}", agent="mock")
    try:
        start, cpu = time.perf_counter(), time.process_time()
        await stream_chunks(rt, handle, chunks, batches=batches)
        return time.perf_counter() - start, time.process_time() - cpu
    finally:
        await rt.close(handle=handle, reason="bench")


def report(name: str, ours: list[float], raw: list[float], target: float) -> bool:
    m_ours, m_raw = median(ours), median(raw)
    ratio = m_ours / m_raw
    return result(name, f"{m_ours * 1000:.2f} ms", f"{m_raw * 1000:.2f} ms", ratio,
                  f"<= {target}", ratio <= target)


async def main(n: int, chunks: int, suffix: str = "", lifecycle_only: bool = False,
               containment: str = "auto") -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cwd = str(root / "ws")
        async with bench_runtime(root, containment) as rt:
            print(f"INFO turns{suffix} | containment {rt.containment.mechanism}", flush=True)
            await raw_lifecycle(cwd)  # warm-up: imports, thread cache, page cache
            await runtime_lifecycle(rt, -1)
            ours: list[float] = []
            raw: list[float] = []
            for i in range(n):
                raw.append(await raw_lifecycle(cwd))
                ours.append(await runtime_lifecycle(rt, i))
            name = f"turns.lifecycle{suffix} ensure+close vs raw spawn+init+new"
            oks = [report(name, ours, raw, 1.20 if "-bg" in suffix else 1.10)]
            if lifecycle_only:
                return all(oks)
            await runtime_turn(rt, chunks, -1, True)
            await runtime_turn(rt, chunks, -2, False)
            samples: dict[str, list[Timing]] = {"raw": [], "batches": [], "run_turn": []}
            for i in range(max(5, n // 2)):
                samples["raw"].append(await raw_turn(cwd, chunks))
                samples["batches"].append(await runtime_turn(rt, chunks, i, True))
                samples["run_turn"].append(await runtime_turn(rt, chunks, 1000 + i, False))
            raw_wall = [w for w, _ in samples["raw"]]
            raw_cpu = [c for _, c in samples["raw"]]
            for api, cpu_target, wall_target in (("batches", 1.0, 1.1), ("run_turn", 1.3, 1.3)):
                name = f"turns.stream{chunks // 1000}k{suffix}.{api}"
                oks.append(report(f"{name}.cpu", [c for _, c in samples[api]], raw_cpu,
                                  cpu_target))
                oks.append(report(f"{name}.wall", [w for w, _ in samples[api]], raw_wall,
                                  wall_target))
            await lean_first_turn(cwd, chunks)
            await runtime_first_turn(rt, chunks, -1)
            lean: list[Timing] = []
            first: list[Timing] = []
            for i in range(max(5, n // 2)):
                lean.append(await lean_first_turn(cwd, chunks))
                first.append(await runtime_first_turn(rt, chunks, i))
            name = f"turns.first_turn{chunks // 1000}k{suffix}.vs_lean_loop"
            oks.append(report(f"{name}.cpu", [c for _, c in first], [c for _, c in lean], 1.0))
            oks.append(report(f"{name}.wall", [w for w, _ in first], [w for w, _ in lean], 1.1))
    return all(oks)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--background", type=int, default=0,
                        help="idle background processes (a busy machine)")
    parser.add_argument("--lifecycle-only", action="store_true")
    parser.add_argument("--containment", default="auto",
                        choices=("auto", "cgroup", "process-group"))
    args = parser.parse_args()
    with background(args.background):
        suffix = f"-bg{args.background}" if args.background else ""
        if args.containment != "auto":
            suffix += f"-{args.containment}"
        ok = trio.run(main, args.n, args.chunks, suffix, args.lifecycle_only, args.containment)
    sys.exit(0 if ok else 1)
