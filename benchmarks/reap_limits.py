"""What process-group containment catches, measured: N closes (``AgentProcess.aclose``) of an
agent that leaves one escaper behind, per kind; prints escapes and whether an escaped lease
was recorded ``closed``.  Real processes; everything carrying a run's marker is SIGKILLed at
the end.  The README's "what process-group mode cannot catch" comes from this script.

    python benchmarks/reap_limits.py [N]      (default 30)
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))
from _escape_helpers import cleanup_marker, marked  # noqa: E402

from acpx_trio._process.agent import AgentProcess, AgentSpawn  # noqa: E402
from acpx_trio._store.leases import LeaseStore  # noqa: E402

SLEEP = "import time\nwhile True: time.sleep(3600)\n"
HOPPERS = {
    # setsid() once, then fork + _exit every 2 ms (tags inherited)
    "classic-hopper": (
        "import os, time\nos.setsid()\nwhile True:\n    time.sleep(0.002)\n"
        "    if os.fork(): os._exit(0)\n"
    ),
    # a new session after every fork (tags inherited)
    "setsid-each-hopper": (
        "import os, time\nwhile True:\n    time.sleep(0.002)\n"
        "    if os.fork(): os._exit(0)\n    os.setsid()\n"
    ),
}
DAEMON = (
    "import os, time\nif os.fork(): os._exit(0)\nos.setsid()\n"
    "if os.fork(): os._exit(0)\nwhile True: time.sleep(3600)\n"
)
KINDS = [*HOPPERS, "setsid-envclear-child", "setsid-doublefork-envclear"]


def agent_argv(kind: str, marker: str) -> list[str]:
    """An agent that starts the escaper, then waits for stdin EOF."""
    if kind == "setsid-envclear-child":
        spawn = (f"subprocess.Popen([sys.executable, '-c', {SLEEP!r}, {marker!r}], env={{}}, "
                 "start_new_session=True)")
    elif kind == "setsid-doublefork-envclear":
        spawn = f"subprocess.Popen([sys.executable, '-c', {DAEMON!r}, {marker!r}], env={{}})"
    else:
        spawn = f"subprocess.Popen([sys.executable, '-c', {HOPPERS[kind]!r}, {marker!r}])"
    return [sys.executable, "-c", f"import subprocess, sys\n{spawn}\nsys.stdin.buffer.read()\n"]


async def one(kind: str, workdir: str) -> tuple[bool, str]:
    """One close; ``(escaped, final lease state)``."""
    marker = f"acpx-limit-{uuid.uuid4().hex[:10]}"
    with cleanup_marker(marker, ()):
        store = LeaseStore(os.path.join(workdir, "acpx"))
        agent = AgentProcess(
            AgentSpawn(
                argv=tuple(agent_argv(kind, marker)), cwd=workdir, session_key="s",
                gateway_instance_id="gw-limits", kill_grace=0.3,
            ),
            lease_store=store,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            await agent.wait_recorded()
            with trio.fail_after(10):
                while not marked(marker):  # noqa: ASYNC110 (polling /proc: no event to wait on)
                    await trio.sleep(0.01)
            await trio.sleep(0.2)  # let it settle (hop, setsid, fork)
            await agent.aclose()
        escaped = False
        for _ in range(10):  # an escaper keeps running (a hopper keeps hopping): look again
            if marked(marker):
                escaped = True
                break
            await trio.sleep(0.02)
        assert agent.lease_id is not None
        lease = await store.load(agent.lease_id)
        return escaped, "missing" if lease is None else lease.state.value


async def main(n: int) -> None:
    for kind in KINDS:
        results = []
        for _ in range(n):
            with tempfile.TemporaryDirectory() as workdir:
                results.append(await one(kind, workdir))
        escaped = sum(e for e, _ in results)
        closed = sum(e and s == "closed" for e, s in results)
        print(f"{kind}: escaped {escaped}/{n}; escaped yet recorded closed {closed}",
              flush=True)


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 30)
