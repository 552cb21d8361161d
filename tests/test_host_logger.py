"""The runtime's warnings reach the logger the host passed to the service (issue 20): the
lease store's quarantine of a damaged lease file, the session store's unreadable record, the
owner-death watchdog found stopped and replaced, and a transcript disabled by a failed
write, with a host logger that is not a ``logging.Logger`` (any object with the four
methods)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path

import pytest
import trio
from _proc_helpers import poll_until
from _runtime_helpers import MOCK
from test_watchdog import watchdogs_of

from acpx_trio import open_runtime_service
from acpx_trio._process.watchdog import WATCHDOG_ENV
from acpx_trio.lowlevel import SessionStore
from acpx_trio.testing.logger import ListLogger

AGENTS = {"mock": {"command": MOCK[0], "args": MOCK[1:]}}


@pytest.fixture(autouse=True)
def _no_env_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("OPENCLAW_SKIP_ACPX_RUNTIME", "OPENCLAW_ACPX_RUNTIME_STARTUP_PROBE"):
        monkeypatch.delenv(key, raising=False)


async def test_runtime_warnings_reach_the_host_logger(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "ws").mkdir()
    state = tmp_path / "state"
    host = ListLogger()
    caplog.set_level(logging.DEBUG)
    async with open_runtime_service(
        workspace_dir=tmp_path / "ws", state_dir=state, logger=host,
        plugin_config={"agents": AGENTS},
    ) as service:
        runtime = service.require_runtime()
        with trio.fail_after(60):
            first = await runtime.ensure_session(session_key="a", agent="mock")
        lease_file = state / "acpx" / "process-leases.json"
        assert lease_file.exists()
        # a real damaged lease file (not JSON), found by the next write of a running service
        lease_file.write_bytes(b"{not json")
        os.utime(lease_file, ns=(1, 1))
        # and an unreadable session record, found when its session is ensured
        record = SessionStore(state / "acpx" / "sessions").sync.path_for("b")
        record.write_bytes(b"\xff garbage")
        with trio.fail_after(60):
            second = await runtime.ensure_session(session_key="b", agent="mock")
        assert first.agent_pid != second.agent_pid
    warnings = host.at("warning")
    quarantined = [w for w in warnings if str(lease_file) in w and "moved it aside" in w]
    assert quarantined, warnings
    moved_to = quarantined[0].rsplit("moved it aside to ", 1)[1].split(" ", 1)[0]
    assert await trio.Path(moved_to).read_bytes() == b"{not json"  # nothing was deleted
    assert any(str(record) in w for w in warnings), warnings
    # the host's logger got them, not the process-wide logging tree
    assert not [r for r in caplog.records if r.name.startswith("acpx_trio.leases")]
    assert not [r for r in caplog.records if r.name.startswith("acpx_trio.sessions")]


def test_bridge_formats_and_maps_levels() -> None:
    from acpx_trio._log import as_logger

    host = ListLogger()
    log = as_logger(host)
    log.debug("d %s", 1)
    log.info("i %d", 2)
    log.warning("w %r", "x")
    log.critical("c")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("e")
    assert host.records[:4] == [("debug", "d 1"), ("info", "i 2"), ("warning", "w 'x'"),
                                ("error", "c")]
    level, text = host.records[4]
    assert level == "error" and text.startswith("e\n") and "ValueError: boom" in text
    std = logging.getLogger("some.host")
    assert as_logger(std) is std


async def test_a_replaced_watchdog_is_reported_to_the_host_logger(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(WATCHDOG_ENV, raising=False)
    (tmp_path / "ws").mkdir()
    host = ListLogger()
    caplog.set_level(logging.DEBUG)
    stopped: list[int] = []
    try:
        async with open_runtime_service(
            workspace_dir=tmp_path / "ws", state_dir=tmp_path / "state", logger=host,
            plugin_config={"agents": AGENTS, "sweepIntervalSeconds": 0.2},
        ) as service:
            with trio.fail_after(60):
                await service.require_runtime().ensure_session(session_key="a", agent="mock")
            (first,) = await trio.to_thread.run_sync(watchdogs_of, os.getpid())
            os.kill(first, signal.SIGSTOP)
            stopped.append(first)

            def reported() -> bool:
                return any(f"watchdog {first} is stopped" in w for w in host.at("warning"))

            await poll_until(reported, seconds=20)  # the next sweeps check it
    finally:
        for pid in stopped:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    assert not [r for r in caplog.records if r.name.startswith("acpx_trio.watchdog")]


async def test_a_disabled_transcript_is_reported_to_the_host_logger(tmp_path: Path) -> None:
    from acpx_trio._log import as_logger
    from acpx_trio._store.transcript import TranscriptWriter

    (tmp_path / "blocker").write_text("a file where the transcript dir should be")
    host = ListLogger()
    writer = TranscriptWriter(tmp_path / "blocker" / "t.jsonl", logger=as_logger(host))
    writer.on_message("out", b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}')
    await writer.flush(final=True)
    assert writer.disabled
    assert any("disabled" in w and "t.jsonl" in w for w in host.at("warning")), host.records
