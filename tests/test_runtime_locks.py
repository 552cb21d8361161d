"""Runtime bookkeeping: per-key locks are pruned, a bad cwd names the configured path."""

from __future__ import annotations

import trio
from _runtime_helpers import MOCK, RuntimeEnv

from acpx_trio._errors import AcpRuntimeError

AGENTS = {"mock": {"command": MOCK[0], "args": MOCK[1:]}}


async def test_key_locks_do_not_grow(env: RuntimeEnv) -> None:
    with trio.fail_after(60):
        async with env.runtime(agents=AGENTS) as rt:
            for i in range(3):
                handle = await rt.ensure_session(session_key=f"k{i}", agent="mock", mode="oneshot")
                assert len(rt._key_locks) == 0
                await rt.close(handle=handle)

            async def ensure(key: str) -> None:
                await rt.ensure_session(session_key=key, agent="mock")

            async with trio.open_nursery() as nursery:  # concurrent ensures of one key
                for _ in range(3):
                    nursery.start_soon(ensure, "same")
            assert len(rt._key_locks) == 0


async def test_bad_cwd_names_the_configured_path(env: RuntimeEnv) -> None:
    missing = env.root / "gone"
    async with env.runtime(agents=AGENTS, cwd=str(missing)) as rt:
        try:
            await rt.ensure_session(session_key="k", agent="mock")
        except AcpRuntimeError as exc:
            assert exc.code == "ACP_SESSION_INIT_FAILED"
            assert str(missing) in exc.message and "None" not in exc.message
        else:
            raise AssertionError("ensure_session must fail for a missing cwd")
        try:
            await rt.ensure_session(session_key="k", agent="mock", cwd="sub")
        except AcpRuntimeError as exc:
            assert str(missing / "sub") in exc.message
        else:
            raise AssertionError("ensure_session must fail for a missing cwd")
