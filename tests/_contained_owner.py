"""Subprocess driver for the containment tests: a service on ``STATE_DIR`` whose one agent
(``tests/_attack_agent.py VARIANT MARKER``, which starts one escape variant and then serves
as the mock agent) runs under config ``containment = MODE``.

Usage::

    python tests/_contained_owner.py STATE_DIR WORKSPACE VARIANT MARKER MODE [spares]

``VARIANT`` ``forwarding``: ``tests/_forwarding_agent.py MARKER WORKSPACE`` instead, with a
kill grace of 1 s.

With ``spares``, two mock sessions are opened and closed first, so the agent starts from a
spare leaf (and a new spare waits beside it).  Prints one JSON line ``{"pid": AGENT_PID,
"cgroup": LEAF_OR_NULL, "spare_launched": BOOL}`` once the session is open, then sleeps
until killed.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import trio
from _proc_helpers import poll_until, spares_of

from acpx_trio import BackendRegistry, open_runtime_service
from acpx_trio._process.spare_leaf import SPARES

AGENT = str(Path(__file__).with_name("_attack_agent.py"))
FORWARDING = Path(__file__).with_name("_forwarding_agent.py")


async def main(state: str, workspace: str, variant: str, marker: str, mode: str,
               spares: str = "") -> None:
    command = shlex.join([sys.executable, AGENT, variant, marker])
    grace = 0.3
    if variant == "forwarding":  # a helper told by its agent, with a cleanup of its own
        command = shlex.join([sys.executable, str(FORWARDING), marker, workspace])
        grace = 1.0
    mock = shlex.join([sys.executable, "-m", "acpx_trio.testing.mock_agent"])
    config = {"agents": {"attack": command, "mock": mock}, "containment": mode,
              "killGraceSeconds": grace}
    async with open_runtime_service(
        workspace_dir=workspace, state_dir=state, registry=BackendRegistry(),
        plugin_config=config,
    ) as svc:
        runtime = svc.require_runtime()
        ready: list[int] = []
        if spares:
            for key in ("first", "second"):
                first = await runtime.ensure_session(session_key=key, agent="mock")
                await runtime.close(handle=first, reason="warm-up")
            # made after the 2nd start
            await poll_until(lambda: len(spares_of(os.getpid())) == SPARES)
            ready = spares_of(os.getpid())
        handle = await runtime.ensure_session(session_key="contained", agent="attack",
                                              mode="persistent")
        status = await runtime.get_status(handle=handle)
        leases = await svc_leases(state)
        sys.stdout.write(json.dumps({"pid": status.agent_pid, "cgroup": leases,
                                     "spare_launched": status.agent_pid in ready}) + "\n")
        sys.stdout.flush()
        await trio.sleep_forever()


async def svc_leases(state: str) -> str | None:
    from acpx_trio import LeaseStore

    open_ = [x for x in await LeaseStore(Path(state) / "acpx").list_all()
             if not x.state.is_final]
    return open_[0].cgroup if open_ else None


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:7])
