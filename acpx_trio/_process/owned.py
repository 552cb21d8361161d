"""One owned-process launch, shared by agents and terminals: the spawn half and the lease
bookkeeping that make a process provably ours.

The order is the guarantee:

1. the owner-death watchdog of the lease dir is armed (:func:`ensure_armed`; returns at once
   when no service watches that dir);
2. a pending lease (``root_pid == 0``, owner pid + start time) is **saved before the spawn**,
   so a crash at any later moment leaves a record the next start-up can reap;
3. the process is spawned with the lease's tags and the owner tag (this process's pid, start
   ticks and create time: a tag sweep of another process leaves it alone while we live, even
   if its lease record is lost) in its environment (inherited by its children) and as leader
   of its **own session and process group**;
4. the lease is completed with the root's pid, create time, start ticks, boot id and process
   group (:func:`complete_lease`); a failed write is logged, never raised;
5. on close, :func:`close_owned`: the tree, its group and session are killed in waves (the
   reaper's proofs), the direct child is killed and reaped, and the lease goes ``open ->
   closed`` when a scan proves the tree gone (``closing`` is written before any signal), or
   stays ``closing`` for the next sweep when something survived.

Everything here is async and cancellable; blocking reads run in worker threads.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import msgspec
import trio

from acpx_trio._errors import ContainmentError, LeaseStoreError
from acpx_trio._log import Logger
from acpx_trio._process import held
from acpx_trio._process.cgroup import (
    gateway_parent,
    leaf_populated,
    make_leaf,
    remove_empty_leaf,
    resolve_containment,
    shim_argv,
)
from acpx_trio._process.identity import boot_id, child_identity
from acpx_trio._process.leaf_end import settle_root, terminate_leaf
from acpx_trio._process.reap_entry import cleanup_owned_process_tree
from acpx_trio._process.reaper import CleanupResult, ProcessCleanupDeps
from acpx_trio._process.scan import PidWindow
from acpx_trio._process.spare_leaf import SpareLeaves, frameable, shell_pwd, spare_frame
from acpx_trio._process.tags import lease_env
from acpx_trio._process.tools import lease_cleanup_deps, owner_identity, owner_tag_value
from acpx_trio._process.watchdog import ensure_armed
from acpx_trio._store.config import ContainmentMode
from acpx_trio._store.lease_model import LeaseState, ProcessLease, new_lease
from acpx_trio._store.leases import LeaseStore

__all__ = [
    "RootRecord", "close_owned", "complete_lease", "mark_lease", "owned_env", "save_pending_lease",
    "spawn_owned", "spawn_spare",
]


class RootRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What :func:`complete_lease` learnt: the lease to use from now on (completed when the
    write succeeded, else the pending one) and the root's identity (``None`` when the root
    was already gone)."""

    lease: ProcessLease
    create_time: float | None
    start_ticks: int | None


async def save_pending_lease(
    lease_store: LeaseStore,
    *,
    gateway_instance_id: str,
    session_key: str,
    command: Sequence[str],
    log: Logger,
    containment: ContainmentMode = "auto",
) -> ProcessLease:
    """Arm the watchdog of ``lease_store``'s dir, then save and return a pending lease naming
    this process as owner, with its leaf cgroup made when ``containment`` gives one.

    Raises what :meth:`LeaseStore.save` raises, and
    :class:`~acpx_trio._errors.ContainmentError` when ``containment="cgroup"`` and no leaf
    can be made.  On any failure or cancellation once the save began, the lease is final
    (``lost``: nothing was spawned) and its leaf removed before the error propagates: a
    caller that never got the lease leaves none open."""
    await ensure_armed(lease_store.path.parent)
    owner_pid, owner_start = await owner_identity()
    lease = new_lease(
        gateway_instance_id=gateway_instance_id,
        session_key=session_key,
        wrapper_root=str(lease_store.path.parent),  # the lease dir, as the TS gateway has it
        command=tuple(command),
        owner_pid=owner_pid,
        owner_start_time=owner_start,
    )
    mechanism = await trio.to_thread.run_sync(resolve_containment, containment)
    parent = None
    if mechanism.mechanism == "cgroup":
        parent = await trio.to_thread.run_sync(gateway_parent, gateway_instance_id)
    if parent is not None:  # recorded first, created second: a reap never sees it unleased
        lease = msgspec.structs.replace(lease, cgroup=str(parent / lease.lease_id))
    elif containment == "cgroup":
        raise ContainmentError(f"gateway id {gateway_instance_id!r} cannot name a cgroup")
    held.hold(lease.lease_id)
    try:
        await lease_store.save(lease)
        if lease.cgroup is None:
            return lease
        made = await trio.to_thread.run_sync(make_leaf, gateway_instance_id, lease.lease_id)
        if made is not None:
            return lease
        lease = msgspec.structs.replace(lease, cgroup=None)  # not creatable after all
        if containment != "cgroup":
            await lease_store.save(lease)  # auto: the process group is what we have
            return lease
        await lease_store.save(msgspec.structs.replace(lease, state=LeaseState.LOST))
    except BaseException:
        # cancelled or failed after the save may have landed (the cancel came after it, or
        # another task's group commit wrote it): nothing was spawned, so the lease is made
        # final here, never left open for a lease-less caller to forget
        with trio.CancelScope(shield=True):
            await _abandon_pending(lease_store, lease, log)
        held.release(lease.lease_id)
        raise
    held.release(lease.lease_id)
    raise ContainmentError(f"could not create the leaf cgroup under {parent}")


async def _abandon_pending(lease_store: LeaseStore, lease: ProcessLease, log: Logger) -> None:
    """End a pending lease under which nothing was spawned (``open -> closing -> lost``,
    as a failed spawn ends), and remove its leaf if one was made.  Never raises (a failed
    write is logged); a lease the store never got stays absent."""
    if lease.cgroup is not None:
        with contextlib.suppress(OSError):
            await trio.to_thread.run_sync(remove_empty_leaf, lease.cgroup)
    for state in (LeaseState.CLOSING, LeaseState.LOST):
        lease = await mark_lease(lease_store, lease, state, log, "pending lease")


def owned_env(base: Mapping[str, str], lease: ProcessLease, owner: str) -> dict[str, str]:
    """``base`` plus the lease's tag variables and the owner tag (the tags win)."""
    return {**base, **lease_env(lease.lease_id, lease.gateway_instance_id, owner)}


async def spawn_owned(
    argv: Sequence[str],
    lease: ProcessLease,
    *,
    env: Mapping[str, str],
    cwd: str,
    stdin: Any,
    stdout: Any,
    stderr: Any,
) -> trio.Process:
    """Spawn ``argv`` tagged with ``lease`` and this owner (see :func:`owned_env`), as leader
    of its own session and process group.  Raises ``OSError`` when it cannot start (the
    caller turns it into its typed error and finalises the lease; the leaf cgroup, if any,
    is removed)."""
    try:
        return await _spawn(argv, lease, env=env, cwd=cwd, stdin=stdin, stdout=stdout,
                            stderr=stderr)
    except OSError:
        if lease.cgroup is not None:  # nothing started: the leaf goes with the failed start
            await trio.to_thread.run_sync(remove_empty_leaf, lease.cgroup)
        raise


async def _spawn(
    argv: Sequence[str], lease: ProcessLease, *, env: Mapping[str, str], cwd: str, stdin: Any,
    stdout: Any, stderr: Any,
) -> trio.Process:
    owner = await owner_tag_value()
    # with a leaf cgroup, a shim puts the process in it before it executes anything of its own
    command = list(argv)
    if lease.cgroup is not None:
        # the shim would start even for a missing program: fail here, as a direct spawn does
        if not await trio.to_thread.run_sync(_startable, argv, cwd, env.get("PATH", os.defpath)):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), command[0])
        command = shim_argv(lease.cgroup, command)
    return await trio.lowlevel.open_process(
        command, stdin=stdin, stdout=stdout, stderr=stderr, cwd=cwd,
        env=owned_env(env, lease, owner), start_new_session=True,
    )


def _startable(argv: Sequence[str], cwd: str, path: str) -> bool:
    """Whether a direct spawn of ``argv`` in ``cwd`` would find its program (and, for a
    relative name with a slash, resolve it against ``cwd`` as the child does).  Blocking."""
    program = argv[0] if argv else ""
    if "/" in program and not os.path.isabs(program):
        program = os.path.join(cwd, program)
    return bool(program) and shutil.which(program, os.X_OK, path) is not None


def _spare_env(argv: Sequence[str], cwd: str, env: Mapping[str, str]) -> dict[str, str] | None:
    """``env`` with ``PWD`` as the direct path's shim shell exports it, or ``None`` when a
    direct spawn would not find the program in ``cwd``.  Blocking: one hop for both."""
    if not (os.path.isdir(cwd) and _startable(argv, cwd, env.get("PATH", os.defpath))):
        return None
    return shell_pwd(env, cwd)


async def spawn_spare(
    spare_leaves: SpareLeaves,
    lease_store: LeaseStore,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str,
    gateway_instance_id: str,
    session_key: str,
    log: Logger,
) -> tuple[trio.Process, RootRecord] | None:
    """Start ``argv`` as :func:`spawn_owned` would, in a spare leaf (its move into the leaf
    already done); ``None`` when no spare leaf is ready or this launch cannot use one (the
    caller then takes the direct path, which also reports what is wrong with the command).

    The order is the guarantee of this module: watchdog armed, then the lease (complete:
    the spare's pid, identity and leaf are known) saved, and only then is the command sent.
    A spare lost before it got the command is killed with its leaf, its lease closed, and
    ``None`` returned.  On any other failure or cancellation the spare is killed the same
    way (its lease closed when the leaf is proved empty) and the error raised (what
    :meth:`LeaseStore.save` raises, ``Cancelled``)."""
    if not frameable(argv, env, cwd) or (spare_env := await trio.to_thread.run_sync(
            _spare_env, argv, cwd, env)) is None:
        return None  # the direct path reports it
    spare = await spare_leaves.take()
    if spare is None:
        return None
    lease: ProcessLease | None = None  # set once it may be in the store
    try:
        await ensure_armed(lease_store.path.parent)
        owner_pid, owner_start = await owner_identity()
        draft = msgspec.structs.replace(
            new_lease(gateway_instance_id=gateway_instance_id, session_key=session_key,
                      wrapper_root=str(lease_store.path.parent), command=tuple(argv),
                      owner_pid=owner_pid, owner_start_time=owner_start),
            lease_id=spare.lease_id, cgroup=spare.leaf, root_pid=spare.process.pid,
            root_create_time=spare.create_time, root_start_ticks=spare.start_ticks,
            boot_id=boot_id(), process_group_id=spare.process.pid,
        )
        frame = spare_frame(argv, owned_env(spare_env, draft, await owner_tag_value()), cwd)
        lease = draft
        held.hold(lease.lease_id)
        await lease_store.save(lease)
        spare.release()
        await spare.become(frame)
    except BaseException as exc:
        # killed with anything it started (it ran the command only if the whole frame
        # arrived); the lease, if it may have been saved, follows what the kill proved
        with trio.CancelScope(shield=True):
            emptied = await spare.discard()
            if lease is not None:
                lease = await mark_lease(lease_store, lease, LeaseState.CLOSING, log)
                if emptied:
                    await mark_lease(lease_store, lease, LeaseState.CLOSED, log)
                held.release(lease.lease_id,
                             left_in=None if emptied else lease.gateway_instance_id)
        if isinstance(exc, (OSError, trio.BrokenResourceError, trio.ClosedResourceError)):
            return None  # the spare was gone: the direct path starts it
        raise
    record = RootRecord(lease=lease, create_time=spare.create_time, start_ticks=spare.start_ticks)
    return spare.process, record


async def complete_lease(
    lease_store: LeaseStore, lease: ProcessLease, proc: trio.Process, log: Logger,
    what: str = "lease",
) -> RootRecord:
    """Record the identity of the root, our child ``proc`` (create time, start ticks, boot
    id, pgid), in ``lease``; a root already exited and reaped is recorded by pid alone (its
    pid may name another process by now).  A failed write is logged and the pending lease
    returned; never raises (except ``Cancelled``)."""
    pid = proc.pid
    info = await trio.to_thread.run_sync(child_identity, pid)
    create_time = None if info is None else info[0]
    start_ticks = None if info is None else info[1]
    completed = msgspec.structs.replace(
        lease,
        root_pid=pid,
        root_create_time=create_time,
        root_start_ticks=start_ticks,
        boot_id=boot_id(),
        process_group_id=pid,
    )
    try:
        await lease_store.save(completed)
    except (LeaseStoreError, ValueError) as exc:
        log.error("%s %s: could not record pid %s: %s", what, completed.lease_id, pid, exc)
        completed = lease
    return RootRecord(lease=completed, create_time=create_time, start_ticks=start_ticks)


async def mark_lease(
    lease_store: LeaseStore, lease: ProcessLease, state: LeaseState, log: Logger,
    what: str = "lease",
) -> ProcessLease:
    """Move ``lease`` to ``state``; returns the updated lease (``lease`` itself when the
    store did not have it or the write failed: logged, never raised)."""
    try:
        updated = await lease_store.mark_state(lease.lease_id, state)
    except (LeaseStoreError, ValueError) as exc:
        log.error("%s %s: could not mark %s: %s", what, lease.lease_id, state, exc)
        return lease
    return lease if updated is None else updated


async def close_owned(
    proc: trio.Process,
    lease: ProcessLease | None,
    *,
    mark: Callable[[LeaseState], Awaitable[object]],
    create_time: float | None,
    start_ticks: int | None,
    grace: float,
    deps: ProcessCleanupDeps | None,
    log: Logger,
    what: str,
    remove_leaf: bool = True,
    window: PidWindow | None = None,
) -> CleanupResult | None:
    """Kill one owned launch whose root ``proc`` is our own child (step 5 of the module) and
    move its lease with ``mark``; returns the reaper's result (``None``: no scan ran).

    The root's group and session die with it (its ids are reserved while a member lives),
    untagged members included, then every process carrying the lease's tags, in waves; the
    direct child is always killed and reaped.  A tree proved gone ends ``closed``; survivors
    are logged and the lease stays ``closing`` for the next sweep, as it does when the
    cleanup itself fails (nothing then proved the tree gone).  Call it shielded.

    ``window``: a :class:`~acpx_trio._process.scan.PidWindow` opened before the spawn (the
    process-group proof then costs the processes started since, not the machine's).
    ``remove_leaf=False``: a leaf found empty after the launch exited on its own is left in
    place (its lease ``closed``) for the caller to remove with
    :func:`~acpx_trio._process.cgroup.remove_empty_leaf` once it has reported the close (a
    ``rmdir`` waits on any cgroup move in flight on the machine)."""
    settled = False

    async def moved(state: LeaseState) -> object:  # ``mark``, noting a final state
        nonlocal settled
        out = await mark(state)
        settled = settled or state.is_final
        return out

    try:
        closing = False

        async def mark_closing() -> None:
            nonlocal closing
            if not closing:
                closing = True
                await moved(LeaseState.CLOSING)

        if lease is not None and lease.cgroup is not None:
            return await _close_contained(proc, lease, lease.cgroup, moved, mark_closing, grace,
                                          log, what, remove_leaf)
        result: CleanupResult | None = None
        if lease is not None:
            try:
                result = await cleanup_owned_process_tree(
                    root_pid=proc.pid,
                    expected_lease_id=lease.lease_id,
                    expected_gateway_instance_id=lease.gateway_instance_id,
                    root_create_time=create_time,
                    root_start_ticks=start_ticks,
                    root_boot_id=lease.boot_id,
                    grace=grace,
                    deps=deps or lease_cleanup_deps(lease.lease_id, proc.pid, start_ticks,
                                                    window),
                    verified_groups=(proc.pid,),
                    before_signal=mark_closing,
                )
            except Exception as exc:
                log.error("%s %s: tree cleanup failed: %r", what, proc.pid, exc)
        if proc.returncode is None:  # our direct child: always kill and reap it
            await mark_closing()
            with contextlib.suppress(OSError):
                proc.kill()
            with trio.move_on_after(max(grace, 1.0)):
                await proc.wait()
        if lease is not None and result is None:  # its cleanup failed: nothing proved the
            await mark_closing()  # tree gone, so not ``closed``
            log.error("%s %s: lease %s stays closing for the next sweep", what, proc.pid,
                      lease.lease_id)
            return None
        survivors = list(result.survived_pids) if result is not None else []
        if result is not None and result.unproven and not survivors:
            # scans kept finding processes until the time budget ran out: not proven gone
            log.error("%s %s: tree not proven gone within the cleanup budget; lease %s stays "
                      "closing for the next sweep", what, proc.pid,
                      lease.lease_id if lease else None)
            return result
        if survivors or proc.returncode is None:
            log.error(
                "%s %s: processes survived cleanup (%s); lease %s stays closing for the next "
                "sweep", what, proc.pid, survivors or [proc.pid],
                lease.lease_id if lease else None,
            )
            return result
        if result is None:  # no scan proved the tree gone: the two-step move
            await mark_closing()
        await moved(LeaseState.CLOSED)
        return result
    finally:
        if lease is not None:  # closed, or left behind for a sweep: no longer held here
            held.release(lease.lease_id,
                         left_in=None if settled else lease.gateway_instance_id)


async def _close_contained(
    proc: trio.Process,
    lease: ProcessLease,
    leaf: str,
    mark: Callable[[LeaseState], Awaitable[object]],
    mark_closing: Callable[[], Awaitable[None]],
    grace: float,
    log: Logger,
    what: str,
    remove_leaf: bool,
) -> CleanupResult:
    """:func:`close_owned` for a launch in its own leaf cgroup.  Membership of the leaf is the
    proof of ownership and its emptiness the proof that the tree is gone: whatever left the
    session, the group or its tags behind is still in the leaf, and ``cgroup.kill`` takes it
    (forks in flight too).  A member that runs as another user is never signalled (see
    :mod:`~acpx_trio._process.leaf_end`): it keeps the lease ``closing`` until it exits.
    No process-table scan: the cost is the tree's, not the machine's.  An agent that
    already exited with its whole tree costs one write (``open -> closed``)."""
    if proc.returncode is not None and not leaf_populated(leaf):  # a kernel attribute: no I/O
        await mark(LeaseState.CLOSED)
        if remove_leaf:
            await trio.to_thread.run_sync(remove_empty_leaf, leaf)
        return CleanupResult()
    await mark_closing()  # before any signal
    await settle_root(proc, leaf, max(grace, 1.0))
    end = await terminate_leaf(leaf, grace, max(grace, 1.0) + 1.0)
    if proc.returncode is None and proc.pid not in end.spared:
        # our direct child (in the leaf, so already killed): reap it
        with contextlib.suppress(OSError):
            proc.kill()
        with trio.move_on_after(max(grace, 1.0)):
            await proc.wait()
    if not end.emptied or proc.returncode is None:
        if end.spared:
            log.error("%s %s: leaf cgroup %s holds processes that are never signalled "
                      "(another user's, or this one) %s; lease %s stays closing until they "
                      "exit", what, proc.pid, leaf, end.spared, lease.lease_id)
        else:
            log.error("%s %s: leaf cgroup %s did not empty (%s); lease %s stays closing for "
                      "the next sweep", what, proc.pid, leaf, end.left, lease.lease_id)
        return CleanupResult(inspected_pids=end.members, survived_pids=end.left or [proc.pid],
                             terminated_pids=[p for p in end.members if p not in end.left])
    await mark(LeaseState.CLOSED)
    return CleanupResult(inspected_pids=end.members, terminated_pids=end.members)
