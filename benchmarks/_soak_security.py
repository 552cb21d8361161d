"""Scenario ``security``: file-system confinement, private state files, other users' processes.

1. A mock agent (``permissionMode approve-all``, so only confinement can refuse) asks to read
   and write through ``..``, absolute paths outside the session cwd, symlinks to a file and a
   directory outside, a dangling symlink, relative paths, NUL bytes and a FIFO.  Every one must be
   refused (the turn reports ``error: ...``), the secret outside must never appear in a reply,
   and nothing outside may be created or changed; two legitimate requests must work.
2. After every operation (start, ensure, each turn, close, stop) the state dir and every dir
   below it are 0700 and every file 0600.
3. The read race: while a thread flips ``cwd/d`` between a directory and a symlink to an
   outside directory, ``fs/read_text_file`` of ``cwd/d/hostname`` (500 reads a cycle) must
   never return the outside file (``read_race`` = outside reads / reads).
4. The chunked credential: a mock agent streams a credential (an environment variable of the
   owner) cut at random offsets, as reply and thought chunks; no concatenation of the turn's
   events may contain it (``chunked_leaks`` = turns that leaked / turns).
5. As root (skipped otherwise): processes of another user (``setpriv --reuid=65534``) carrying
   our exact tags, one the verified root of an open lease of ours, one found only by its tags
   (pending lease), are never signalled by start-up reaping, the orphan sweep or a direct tree
   cleanup; the scenario kills them itself afterwards.

``decoys_killed`` counts signals to (or deaths of) the other-user processes; ``leaked``
processes of our gateway alive at the end; ``lost`` leases not final after stop.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

import trio
from _soak_common import (
    GATEWAY_KEY,
    LEASE_KEY,
    MOCK_ARGS,
    ListLogger,
    ScenarioResult,
    SignalLog,
    child_env,
    decoys_cleaned,
    make_state_dir,
    new_marker,
    private_mode_problems,
    recording_deps,
    settle_decoy,
    spawn_decoy,
    sweep,
    tagged_alive,
)
from _soak_proc import fake_lease

from acpx_trio._acp._messages import ReadTextFileRequest
from acpx_trio._errors import AcpRuntimeError
from acpx_trio._events import TextDeltaEvent
from acpx_trio._process.reap_entry import cleanup_owned_process_tree, reap_stale_orphans
from acpx_trio._runtime.permissions import FsGate, PermissionPolicy, WorkDir, work_dir
from acpx_trio._service.backends import BackendRegistry
from acpx_trio._service.open_service import open_runtime_service
from acpx_trio._store.leases import SyncLeaseStore

NOBODY = 65534

def _cwd(path: Path) -> WorkDir:
    """``path`` as a session cwd (its identity taken now)."""
    wd = work_dir(str(path))
    assert wd is not None
    return wd



def fs_requests(ws: Path, out: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """(prompts that must be refused, (prompt, expected reply) pairs that must work)."""
    refused = [
        "/read ../outside/secret.txt",
        f"/read {ws}/../outside/secret.txt",
        f"/read {ws}/sub/../../outside/secret.txt",
        f"/read {out}/secret.txt",
        f"/read {ws}/link-file",
        f"/read {ws}/link-dir/secret.txt",
        f"/read {ws}/inside.txt\x00/../../outside/secret.txt",
        f"/read {ws}\x00{out}/secret.txt",
        f"/write {out}/pwned.txt X",
        f"/write {ws}/../outside/pwned.txt X",
        f"/write {ws}/link-dir/pwned.txt X",
        f"/write {ws}/link-dir/new/deeper.txt X",
        f"/write {ws}/dangling X",
        f"/write {ws}/link-file X",
        f"/write {ws}/a\x00b X",
        "/write relative.txt X",
        f"/read {ws}/fifo",
        f"/write {ws}/fifo X",
    ]
    allowed = [(f"/read {ws}/inside.txt", "inside"), (f"/write {ws}/sub/../ok.txt hi", "wrote")]
    return refused, allowed


def _layout(root: Path, secret: str) -> tuple[Path, Path]:
    ws, out = root / "workspace", root / "outside"
    (ws / "sub").mkdir(parents=True)
    out.mkdir()
    (out / "secret.txt").write_text(secret)
    (ws / "inside.txt").write_text("inside")
    (ws / "link-file").symlink_to(out / "secret.txt")
    (ws / "link-dir").symlink_to(out)
    (ws / "dangling").symlink_to(out / "new.txt")
    os.mkfifo(ws / "fifo")  # a blocking open would park a worker thread for ever
    return ws, out


def _outside_state(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(out.rglob("*"))}


async def _say(runtime: Any, handle: Any, text: str) -> str:
    said = []
    async for event in runtime.run_turn(handle=handle, text=text):
        if isinstance(event, TextDeltaEvent):
            said.append(event.text)
    return "".join(said)


async def fs_round(result: ScenarioResult, root: Path, cycle: int) -> tuple[int, int]:
    """Part 1 and 2 in a fresh state dir; (refused, attempted)."""
    secret = f"SECRET-{uuid.uuid4().hex}"
    base = root / f"fs{cycle}"
    ws, out = _layout(base, secret)
    state = base / "state"
    gw = make_state_dir(state)
    before = _outside_state(out)
    refused_count = 0
    refused, allowed = fs_requests(ws, out)

    def check_modes(step: str) -> None:
        for problem in private_mode_problems(state):
            result.fail(f"cycle {cycle} after {step}: {problem}")

    config = {"permissionMode": "approve-all",
              "agents": {"mock": {"command": sys.executable, "args": MOCK_ARGS}}}
    with trio.fail_after(120):
        async with open_runtime_service(
            workspace_dir=ws, state_dir=state, plugin_config=config, logger=ListLogger(),
            registry=BackendRegistry(),
        ) as service:
            runtime = service.runtime
            assert runtime is not None
            check_modes("start")
            handle = await runtime.ensure_session(session_key="sec", agent="mock", cwd=str(ws))
            check_modes("ensure")
            for prompt in refused:
                said = await _say(runtime, handle, prompt)
                check_modes(repr(prompt))
                if secret in said or not said.startswith("error:"):
                    result.fail(f"cycle {cycle}: not refused: {prompt!r} -> {said[:120]!r}")
                else:
                    refused_count += 1
            for prompt, expected in allowed:
                said = await _say(runtime, handle, prompt)
                check_modes(repr(prompt))
                if expected not in said or said.startswith("error:"):
                    result.fail(f"cycle {cycle}: legitimate {prompt!r} failed: {said[:120]!r}")
            await runtime.close(handle=handle, reason="done")
            check_modes("close")
    check_modes("stop")
    if _outside_state(out) != before:
        result.fail(f"cycle {cycle}: the outside dir changed: {sorted(_outside_state(out))}")
    if (ws / "a").exists() or not (ws / "ok.txt").exists():
        result.fail(f"cycle {cycle}: unexpected files in the workspace {os.listdir(ws)}")
    alive = await trio.to_thread.run_sync(tagged_alive, [gw])
    result.leaked += len(alive)
    open_leases = [x for x in SyncLeaseStore(state / "acpx").list_all() if not x.state.is_final]
    result.lost += len(open_leases)
    return refused_count, len(refused)


def can_switch_user() -> bool:
    return os.geteuid() == 0 and shutil.which("setpriv") is not None


async def other_user_round(result: ScenarioResult, root: Path, marker: str) -> int:
    """Part 3; returns how many other-user processes were exercised."""
    state = root / "other-user-state"
    gw = make_state_dir(state)
    store = SyncLeaseStore(state / "acpx")
    verified, pending = str(uuid.uuid4()), str(uuid.uuid4())
    prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
    sleeper = ["sleep", "600"]
    decoys = [
        spawn_decoy("other-user-root", sleeper,
                    child_env(marker, {LEASE_KEY: verified, GATEWAY_KEY: gw}), prefix=prefix),
        spawn_decoy("other-user-tagged", sleeper,
                    child_env(marker, {LEASE_KEY: pending, GATEWAY_KEY: gw}), prefix=prefix),
    ]
    signals = SignalLog()
    deps = recording_deps(signals)
    with decoys_cleaned(decoys):
        for decoy in decoys:
            await settle_decoy(decoy, "sleep")
        root_decoy = decoys[0]
        store.save(fake_lease(gw, root_pid=root_decoy.pid, ticks=root_decoy.ticks,
                              lease_id=verified))
        store.save(fake_lease(gw, root_pid=0, lease_id=pending))
        with trio.fail_after(60):
            async with open_runtime_service(
                workspace_dir=root, state_dir=state, logger=ListLogger(),
                process_cleanup=deps, registry=BackendRegistry(),
            ):
                pass
            await reap_stale_orphans(gateway_instance_id=gw, deps=deps, grace=0.2)
            await cleanup_owned_process_tree(
                root_pid=root_decoy.pid, expected_lease_id=verified,
                expected_gateway_instance_id=gw, root_start_ticks=root_decoy.ticks,
                grace=0.2, deps=deps,
            )
        hit = signals.pids() | {d.pid for d in decoys if not d.alive()}
        if hit:
            result.decoys_killed += len(hit)
            result.fail(f"other-user processes signalled or dead: {sorted(hit)}")
    return len(decoys)


def flip_dir(cwd: Path, outside: Path, stop: threading.Event) -> None:
    """Until ``stop``: ``cwd/d`` is the real directory ``cwd/d.real``, then gone, then a symlink
    to ``outside``, then gone, ... (the read race of issue 19)."""
    d, real, link = cwd / "d", cwd / "d.real", cwd / "d.link"
    link.symlink_to(outside)
    while not stop.is_set():  # d: the real dir, gone, a symlink to outside, gone, ...
        os.rename(real, d)
        os.rename(d, real)
        os.rename(link, d)
        os.rename(d, link)


async def read_race_round(result: ScenarioResult, root: Path, reads: int) -> int:
    """``reads`` racing reads; returns how many returned the outside file."""
    base = Path(tempfile.mkdtemp(prefix="race-", dir=root))
    cwd, outside = base / "cwd", base / "outside"
    (cwd / "d.real").mkdir(parents=True)
    outside.mkdir()
    (cwd / "d.real" / "hostname").write_text("inside")
    (outside / "hostname").write_text("OUTSIDE-SECRET")
    gate = FsGate(_cwd(cwd), PermissionPolicy("approve-reads", "fail"))
    request = ReadTextFileRequest(session_id="s", path=str(cwd / "d" / "hostname"))
    stop = threading.Event()
    flipper = threading.Thread(target=flip_dir, args=(cwd, outside, stop), daemon=True)
    flipper.start()
    leaked = 0
    try:
        for _ in range(reads):
            try:
                content = (await gate.read_text_file(request)).content
            except AcpRuntimeError:
                continue
            leaked += content == "OUTSIDE-SECRET"
    finally:
        stop.set()
        await trio.to_thread.run_sync(flipper.join)
    if leaked:
        result.fail(f"read race: {leaked}/{reads} reads returned the file outside the cwd")
    return leaked


async def chunked_credential_round(
    result: ScenarioResult, root: Path, rng: random.Random, turns: int
) -> int:
    """``turns`` turns streaming a credential cut at random offsets; returns the leaks."""
    secret = f"sk-soak-{uuid.uuid4().hex}"
    text = f"before {secret} after {secret[:10]}"
    ws = Path(tempfile.mkdtemp(prefix="chunks-", dir=root))
    leaks = 0
    os.environ["ACPX_SOAK_SERVICE_TOKEN"] = secret
    try:
        async with open_runtime_service(
            workspace_dir=ws, state_dir=ws / "state", registry=BackendRegistry(),
            plugin_config={"agents": {"mock": {"command": sys.executable,
                                               "args": list(MOCK_ARGS)}}},
        ) as svc:
            runtime = svc.require_runtime()
            handle = await runtime.ensure_session(session_key="chunks", agent="mock")
            for _ in range(turns):
                cuts = ",".join(str(rng.randrange(len(text))) for _ in range(rng.randrange(8)))
                said = [e.text async for e in runtime.run_turn(
                    handle=handle, text=f"/split {cuts} {text}")
                    if isinstance(e, TextDeltaEvent)]
                if secret in "".join(said) or any(secret in x for x in said):
                    leaks += 1
    finally:
        del os.environ["ACPX_SOAK_SERVICE_TOKEN"]
    if leaks:
        result.fail(f"chunked credential: {leaks}/{turns} turns let it through")
    return leaks


async def run_security(cycles: int, seed: int) -> ScenarioResult:
    result = ScenarioResult("security")
    marker = new_marker()
    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="acpx-soak-security-"))
    refused = attempted = outside = chunk_leaks = 0
    try:
        for cycle in range(cycles):
            r, a = await fs_round(result, root, cycle)
            refused, attempted = refused + r, attempted + a
            outside += await read_race_round(result, root, 500)
            chunk_leaks += await chunked_credential_round(result, root, rng, 20)
            result.cycles += 1
        result.figures["read_race"] = f"{outside}/{500 * cycles}"
        result.figures["chunked_leaks"] = f"{chunk_leaks}/{20 * cycles}"
        if can_switch_user():
            others = await other_user_round(result, root, marker)
            result.figures["other_user"] = f"{others}procs"
        else:
            result.figures["other_user"] = "skipped(not-root)"
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(sweep, [], marker)
        shutil.rmtree(root, ignore_errors=True)
    result.figures["fs_refused"] = f"{refused}/{attempted}"
    return result

