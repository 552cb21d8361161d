"""Runtime overhead against raw ACP over stdio, measured alternately in the same run.

(a) ``ensure_session`` + ``close`` of the bundled mock agent, against a raw spawn +
    ``initialize`` round trip + stdin close + exit of the same command.  Target ratio <= 1.15.
(b) a 10,000-chunk turn (``/chunks 10000``) through ``run_turn``, against reading and decoding
    the same lines from the same agent directly.  Target ratio <= 1.3.

Run: ``python benchmarks/turns.py [--n 20] [--chunks 10000]``.  Prints medians, ratios and
PASS/FAIL per target; exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import trio

from acpx_trio._events import DoneEvent, ErrorEvent, TextDeltaEvent
from acpx_trio._runtime.open_runtime import open_acpx_runtime
from acpx_trio._runtime.runtime import AcpxRuntime
from acpx_trio._store.config import resolve_config
from acpx_trio._store.leases import LeaseStore

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
    await agent.close()
    return time.perf_counter() - start


async def runtime_lifecycle(rt: AcpxRuntime, n: int) -> float:
    start = time.perf_counter()
    handle = await rt.ensure_session(session_key=f"bench-{n}", agent="mock")
    await rt.close(handle=handle, reason="bench")
    return time.perf_counter() - start


async def raw_turn(cwd: str, chunks: int) -> float:
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

        start = time.perf_counter()
        prompt = {"sessionId": sid, "prompt": [{"type": "text", "text": f"/chunks {chunks}"}]}
        await agent.request("session/prompt", prompt, on_message)
        elapsed = time.perf_counter() - start
        assert len(texts) == chunks, len(texts)
        return elapsed
    finally:
        await agent.close()


async def runtime_turn(rt: AcpxRuntime, chunks: int, n: int) -> float:
    handle = await rt.ensure_session(session_key=f"turn-{n}", agent="mock")
    try:
        count = 0
        start = time.perf_counter()
        events = rt.run_turn(handle=handle, text=f"/chunks {chunks}")
        async with contextlib.aclosing(events) as stream:
            async for event in stream:
                if isinstance(event, TextDeltaEvent):
                    count += 1
                elif isinstance(event, ErrorEvent):
                    raise RuntimeError(event.message)
                elif isinstance(event, DoneEvent):
                    break
        elapsed = time.perf_counter() - start
        assert count == chunks, count
        return elapsed
    finally:
        await rt.close(handle=handle, reason="bench")


def report(name: str, ours: list[float], raw: list[float], target: float) -> bool:
    m_ours, m_raw = statistics.median(ours), statistics.median(raw)
    ratio = m_ours / m_raw
    ok = ratio <= target
    print(
        f"{name}: runtime median {m_ours * 1000:.1f} ms, raw median {m_raw * 1000:.1f} ms, "
        f"ratio {ratio:.3f} (target <= {target}) {'PASS' if ok else 'FAIL'}"
    )
    return ok


async def main(n: int, chunks: int) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "ws").mkdir()
        cwd = str(root / "ws")
        config = resolve_config({"stateDir": str(root / "state")}, cwd)
        async with open_acpx_runtime(
            config, gateway_instance_id=f"bench-{uuid.uuid4().hex[:8]}",
            lease_store=LeaseStore(root / "leases"), wrapper_root=root,
        ) as rt:
            await raw_lifecycle(cwd)  # warm-up: imports, thread cache, page cache
            await runtime_lifecycle(rt, -1)
            ours: list[float] = []
            raw: list[float] = []
            for i in range(n):
                raw.append(await raw_lifecycle(cwd))
                ours.append(await runtime_lifecycle(rt, i))
            ok_a = report("(a) ensure+close vs spawn+initialize", ours, raw, 1.15)
            turn_ours: list[float] = []
            turn_raw: list[float] = []
            for i in range(max(3, n // 4)):
                turn_raw.append(await raw_turn(cwd, chunks))
                turn_ours.append(await runtime_turn(rt, chunks, i))
            ok_b = report(f"(b) {chunks}-chunk turn vs raw read+decode", turn_ours, turn_raw, 1.3)
    return ok_a and ok_b


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--chunks", type=int, default=10_000)
    args = parser.parse_args()
    sys.exit(0 if trio.run(main, args.n, args.chunks) else 1)
