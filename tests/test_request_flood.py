"""An agent that floods the client with requests for large answers and stops reading them
(issue: memory bounded whatever the agent does): the runtime's memory stays bounded, the
turn's deadline still ends the turn, and nothing is left."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import psutil
import trio
from _runtime_helpers import RuntimeEnv, run

from acpx_trio import AcpRuntimeError, DoneEvent, ErrorEvent

#: Asks for ``FILE`` ``COUNT`` times at once, then (``MODE`` ``stall``) never reads its input
#: again, or (``read``) reads every answer and ends the turn (pipelining: legal JSON-RPC).
_FLOODER = textwrap.dedent("""
    import json, sys, time
    path, count, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    def say(o):
        sys.stdout.write(json.dumps(o) + "\\n"); sys.stdout.flush()
    for line in sys.stdin:
        m = json.loads(line)
        method, rid = m.get("method"), m.get("id")
        if method == "initialize":
            say({"jsonrpc": "2.0", "id": rid, "result": {"protocolVersion": 1,
                 "agentCapabilities": {}, "authMethods": []}})
        elif method == "session/new":
            say({"jsonrpc": "2.0", "id": rid, "result": {"sessionId": "flood"}})
        elif method == "session/prompt":
            for n in range(count):
                say({"jsonrpc": "2.0", "id": 1000 + n, "method": "fs/read_text_file",
                     "params": {"sessionId": "flood", "path": path}})
            if mode == "stall":
                time.sleep(3600)
            answered = set()
            while len(answered) < count:
                reply = json.loads(sys.stdin.readline())
                if "result" in reply and len(reply["result"]["content"]) == {size}:
                    answered.add(reply["id"])
            say({"jsonrpc": "2.0", "id": rid, "result": {"stopReason": "end_turn"}})
""")

FILE_BYTES = 4 * 1024 * 1024 - 1  # the read cap: each answer is about 4 MiB of JSON
COUNT = 48  # before the bound: 48 answers held at once, 400-450 MiB


async def test_a_flood_of_large_answers_nobody_reads_keeps_memory_bounded(
    env: RuntimeEnv, tmp_path: Path
) -> None:
    big = env.workspace / "big.txt"
    big.write_text("a" * FILE_BYTES)
    script = tmp_path / "flooder.py"
    script.write_text(_FLOODER.replace("{size}", str(FILE_BYTES)))
    agents = {"flooder": {"command": sys.executable,
                          "args": [str(script), str(big), str(COUNT), "stall"]}}
    me = psutil.Process()
    async with env.runtime(agents=agents, timeoutSeconds=4) as rt:
        with trio.fail_after(60):
            handle = await rt.ensure_session(session_key="flood", agent="flooder")
            before = me.memory_info().rss
            peak = before

            async def sample() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, me.memory_info().rss)
                    await trio.sleep(0.05)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sample)
                try:
                    events = await run(rt, handle, "go")
                except AcpRuntimeError as exc:
                    assert exc.code == "ACP_TURN_TIMEOUT", exc
                else:
                    last = events[-1]
                    assert isinstance(last, ErrorEvent | DoneEvent), events
                nursery.cancel_scope.cancel()
            await rt.close(handle=handle, reason="done")
    grown = (peak - before) / 2**20
    assert grown < 120, f"the runtime grew {grown:.0f} MiB answering {COUNT} reads"




async def test_an_agent_that_writes_all_its_requests_before_reading_is_served(
    env: RuntimeEnv, tmp_path: Path
) -> None:
    """3,000 reads of a 200 KB file written before the first answer is read (more than the
    pipe and the large-answer lanes hold): every one answered, the turn ends normally.  The
    first memory bound paused reading while answers waited for the agent, which was itself
    blocked writing: the turn hung until its deadline (an outside review, 8 of 8)."""
    size = 200_000
    file = env.workspace / "f.txt"
    file.write_text("x" * size)
    script = tmp_path / "pipeliner.py"
    script.write_text(_FLOODER.replace("{size}", str(size)))
    agents = {"pipeliner": {"command": sys.executable,
                            "args": [str(script), str(file), "3000", "read"]}}
    async with env.runtime(agents=agents, timeoutSeconds=60) as rt:
        with trio.fail_after(90):
            handle = await rt.ensure_session(session_key="pipe", agent="pipeliner")
            events = await run(rt, handle, "go")
            await rt.close(handle=handle, reason="done")
    assert events[-1] == DoneEvent(stop_reason="end_turn"), events[-1:]
