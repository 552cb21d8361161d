"""Spare leaves: a launch whose move into its leaf cgroup was paid for before it was needed.

Moving a process into a cgroup waits for an RCU grace period in the kernel (5-11 ms here
when moves are far apart), and a contained launch must be in its leaf before it executes
anything of its own.  A :class:`SpareLeaves` pool keeps launches ready (two): a small program
(:mod:`~acpx_trio._process.spare_wait`: ``perl -e`` where there is ``perl``, else
``python -I -S``) already inside a fresh leaf of the gateway, in its own session, with the
pipes an agent gets, waiting on a private pipe for the one command it will ``exec``.  Taking
it costs a lease write and a pipe write instead of a spawn and a move.

Guarantees:

* **Nothing runs before its lease is saved.**  The spare executes only what the taker sends
  after saving the lease (:func:`acpx_trio._process.owned.spawn_spare`), and only once the
  whole command has arrived (one frame read to end of file, its field counts checked: half
  a frame runs nothing).
* **The command is the direct path's.**  The same ``argv`` found on the same ``PATH`` (a
  file without ``#!`` run by ``/bin/sh``, as the direct path's shim shell runs it), working
  directory, environment (``PWD`` as that shell exports it), signal dispositions and
  descriptors (0, 1 and 2 only).  One difference, on purpose: a variable whose name is no
  shell identifier (``BASH_FUNC_f%%``), which the shim's shell drops, is passed, as a
  process-group spawn passes it.  Credentials travel on the private pipe, never on a
  command line.  A command a direct spawn would refuse takes the direct path (which says
  why).
* **A spare never outlives its owner.**  If the owner dies, the spare reads end-of-file on
  its pipe and exits having run nothing; the leaf it leaves empty is removed by the next reap
  of the gateway: the watchdog's, since a pool given its ``lease_dir`` (every runtime's is)
  arms that lease dir's owner-death watchdog before it makes a leaf, as a direct start does.
  :meth:`SpareLeaves.aclose` (and the cancellation of the nursery it runs in) kills the
  leaf, reaps the spare and removes the leaf, shielded and bounded.
* **No reap takes it for a leftover.**  This process's own reaps skip the leaves it holds
  (:mod:`acpx_trio._process.held`); another process's reap leaves it alone because the
  spare names this live owner (the owner tag).  Until the spare has moved in, its leaf is
  empty and has no lease record: another process's reap may remove it then (the spare
  cannot enter and is replaced) but never kills what enters it later
  (:func:`~acpx_trio._process.leaf_reap.leaf_verdict`), and no spare is handed out before
  it is inside.

A pool fills only after its second request (a one-shot caller never pays for a spare), only
once a launch has started (the next is made while that agent starts up, which is mostly the
agent's own work: a move made later would run beside the close that often follows, and
hold up its exit, since a move holds up every exit and fork on the machine while it waits),
and never holds more than :data:`SPARES` launches.  The exception to the first two rules:
:meth:`SpareLeaves.prime` makes one launch for a start that is already on its way (the first
start of a runtime whose modules are still loading: the move is made meanwhile, and that
start takes it).  Linux, cgroup v2 containment only.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import sys
from collections.abc import Mapping, Sequence

import trio

from acpx_trio._log import Logger
from acpx_trio._process import held
from acpx_trio._process.cgroup import make_leaf, remove_empty_leaf
from acpx_trio._process.identity import child_identity
from acpx_trio._process.leaf_end import kill_leaf, settle_root
from acpx_trio._process.spare_wait import PERL_PROGRAM, SPARE_MARK, encode_frame
from acpx_trio._process.tags import OWNER_ENV_KEY
from acpx_trio._process.tools import owner_tag_value
from acpx_trio._process.watchdog import ensure_armed
from acpx_trio._store.lease_model import new_lease_id

__all__ = [
    "PERL_PATHS", "SPARES", "SPARE_MARK", "SpareLeaf", "SpareLeaves", "frameable", "runtime_pool",
    "shell_pwd", "spare_command", "spare_frame",
]

#: The spare's program in its Python form (the fallback where there is no ``perl``).
_SPARE_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "spare_wait.py")
#: How many ready launches a pool keeps: two, so that starts back to back (a close, then
#: the next ensure at once) find one ready while the next is still being made (its move
#: into its leaf waits out a grace period: 5-11 ms, longer than a close).
SPARES = 2
#: Bound of discarding one spare leaf (kill, wait empty, reap, remove), and of a taken
#: spare's move into its leaf.
DISCARD_SECONDS = 5.0
#: Spares in a row that may be gone before they could be described (their move into their
#: leaf failed: another process's reap removed it first) before the pool waits for the next
#: request to try again.
LOST_IN_A_ROW = 3


def frameable(argv: Sequence[str], env: Mapping[str, str], cwd: str) -> bool:
    """Whether :func:`spare_frame` can carry this command: not when a direct spawn would
    refuse it (an empty command, a NUL anywhere, a variable name that is empty or holds
    ``=``); the direct path then reports it."""
    if not argv or not argv[0]:
        return False
    words = [*argv, cwd, *env.keys(), *env.values()]
    return not any("\0" in w for w in words) and all(k and "=" not in k for k in env)


def shell_pwd(env: Mapping[str, str], cwd: str) -> dict[str, str]:
    """``env`` with ``PWD`` as the direct path's shim shell exports it in ``cwd``: the
    inherited ``PWD`` when it is absolute and names that very directory, else the physical
    path of ``cwd``.  Blocking (two ``stat`` calls)."""
    pwd = env.get("PWD", "")
    if pwd.startswith("/"):
        try:
            here, there = os.stat(pwd), os.stat(cwd)
            if (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino):
                return dict(env)
        except OSError:
            pass
    return {**env, "PWD": os.path.realpath(cwd)}


def spare_frame(argv: Sequence[str], env: Mapping[str, str], cwd: str) -> bytes:
    """The command a spare becomes (``argv`` run in ``cwd`` with exactly ``env``), as the
    one frame :mod:`~acpx_trio._process.spare_wait` reads.  Raises ``ValueError`` unless
    :func:`frameable`."""
    if not frameable(argv, env, cwd):
        raise ValueError("a spare cannot carry this command")
    return encode_frame(os.fsencode(cwd), [os.fsencode(a) for a in argv],
                        [os.fsencode(k) + b"=" + os.fsencode(v) for k, v in env.items()])


#: Where a system's own ``perl`` lives (never looked up on ``PATH``, which may name a
#: directory someone else writes).
PERL_PATHS = ("/usr/bin/perl", "/bin/perl")


def _system_perl() -> str | None:
    """The system's ``perl``, if it has one.  Blocking."""
    return next((p for p in PERL_PATHS if os.access(p, os.X_OK)), None)


def spare_command(leaf: str, fd: int, perl: str | None) -> list[str]:
    """The spare's command line: the Perl form when ``perl`` (its path) is given, else the
    Python form; either names :data:`SPARE_MARK` as its first argument."""
    if perl is not None:
        return [perl, "-e", PERL_PROGRAM, "--", SPARE_MARK, leaf, str(fd)]
    return [sys.executable, "-I", "-S", _SPARE_SCRIPT, SPARE_MARK, leaf, str(fd)]


class SpareLeaf:
    """One ready launch: ``process`` (the spare in ``leaf``, its own session leader, stdin,
    stdout and stderr piped), the lease id its leaf is named after, and the spare's identity
    (``create_time``, ``start_ticks``: the command keeps them across ``exec``)."""

    def __init__(self, process: trio.Process, leaf: str, lease_id: str,
                 control: trio.lowlevel.FdStream, create_time: float,
                 start_ticks: int | None) -> None:
        self.process = process
        self.leaf = leaf
        self.lease_id = lease_id
        self.create_time = create_time
        self.start_ticks = start_ticks
        self._control = control
        self._held = True  # by this spare (see :mod:`acpx_trio._process.held`)

    def alive(self) -> bool:
        """The spare has not exited.  (A pool hands out only spares that are in their leaf;
        a spare reads its command only once inside, and a failed move runs nothing, exactly
        as the direct path's shim.)"""
        return self.process.poll() is None

    async def become(self, frame: bytes) -> None:
        """Send the command (:func:`spare_frame`) and close the pipe.  Raises ``OSError``
        (the spare is gone) or :class:`trio.BrokenResourceError`."""
        try:
            await self._control.send_all(frame)
        finally:
            await self._control.aclose()

    def release(self) -> None:
        """Its lease is saved (and held by its launch): this spare holds it no more."""
        if self._held:
            self._held = False
            held.release(self.lease_id)

    async def discard(self) -> bool:
        """Kill it (and anything it started) and remove its leaf; whether the leaf is proved
        empty (else it stays for the next reap).  Shielded, bounded by
        :data:`DISCARD_SECONDS`."""
        emptied = False
        with trio.CancelScope(shield=True), trio.move_on_after(DISCARD_SECONDS):
            await self._control.aclose()  # a spare that has not read it yet runs nothing
            # the direct child first (its pid cannot be reused before we reap it): it can
            # then start nothing more, and whatever it started is in the leaf (it runs a
            # command only once inside)
            with contextlib.suppress(OSError):
                self.process.kill()
            await self.process.wait()
            emptied = await kill_leaf(self.leaf, DISCARD_SECONDS)
            for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
                if stream is not None:
                    await stream.aclose()
            await trio.to_thread.run_sync(remove_empty_leaf, self.leaf)
        self.release()
        return emptied


class SpareLeaves:
    """A pool of at most :data:`SPARES` spare leaves of ``gateway_instance_id``, kept by a
    task in ``nursery``.  See the module docstring for guarantees.

    :meth:`take` hands the ready launch over (the taker owns it from then on), :meth:`refill`
    (called once a launch has started) makes the next in the background, :meth:`prime` one
    for a start on its way, and :meth:`aclose` discards what is held and stops refilling."""

    def __init__(self, nursery: trio.Nursery, *, gateway_instance_id: str,
                 log: Logger | None = None, perl: bool = True,
                 lease_dir: str | os.PathLike[str] | None = None) -> None:
        self._nursery = nursery
        #: the lease dir whose owner-death watchdog is armed before any leaf is made
        self._lease_dir = lease_dir
        self._want_perl = perl  # False: the Python form (tests of the fallback)
        self._perl: str | None = None
        self._gateway = gateway_instance_id
        self._log: Logger = log or logging.getLogger("acpx_trio.spare")
        self._ready: collections.deque[SpareLeaf] = collections.deque()
        self._requests = 0
        self._running = False
        self._closed = False
        self._broken = False
        self._wanted = trio.Event()
        self._scope = trio.CancelScope()
        self._idle = trio.Event()
        self._idle.set()
        self._made = trio.Event()  # set when no spare is in the making
        self._made.set()
        self._limit = 0  # how many ready launches the pool keeps now (:meth:`_fill`)

    @property
    def has_spare(self) -> bool:
        """A spare is ready to be taken."""
        return bool(self._ready)

    async def take(self) -> SpareLeaf | None:
        """A ready launch, in its leaf (waiting for one in the making when none is ready, and
        for its move into its leaf), or ``None`` (none, or the pool cannot work here).  The
        caller owns what it gets: it saves the lease, then :meth:`SpareLeaf.become`, or
        :meth:`SpareLeaf.discard`."""
        await trio.lowlevel.checkpoint()
        self._requests += 1
        if not self._ready and not self._made.is_set():
            await self._made.wait()  # one in the making: bounded, and cheaper than a move
        while self._ready:
            spare = self._ready.popleft()
            if spare.alive():
                # handed out only once inside: until then its leaf is empty and has no lease
                # record, and another process's reap may remove it (the spare then cannot
                # enter); once it is in, its owner tag keeps every reap off it.  Long in by
                # now, but for a start that waited for it to be made.
                try:
                    await settle_root(spare.process, spare.leaf, DISCARD_SECONDS)
                except BaseException:
                    self._nursery.start_soon(spare.discard)
                    raise
                if spare.alive():
                    return spare
            self._nursery.start_soon(spare.discard)
        return None

    def prime(self) -> None:
        """A start is on its way that no launch is ready for (the first start of a runtime
        whose modules are still loading): make one in the background now, whatever the
        number of requests.  The start takes it (:meth:`take` waits for one in the making);
        after it :meth:`refill`'s rule holds."""
        if not (self._closed or self._broken):
            self._fill(1)

    def refill(self) -> None:
        """A launch has started (its process exists): make spare leaves in the background,
        up to :data:`SPARES`, from the second request on."""
        if not (self._closed or self._broken or self._requests < 2):
            self._fill(SPARES)

    def _fill(self, limit: int) -> None:
        self._limit = max(self._limit, limit)
        if len(self._ready) < self._limit and self._made.is_set():
            self._made = trio.Event()  # in the making from now on: :meth:`take` waits for it
        self._wanted.set()
        if not self._running:
            self._running = True
            self._idle = trio.Event()
            self._nursery.start_soon(self._keep)

    async def _keep(self) -> None:
        """Make spare leaves while one is wanted and fewer than the pool keeps are ready;
        hold them until they are taken or the pool closes."""
        try:
            with self._scope:
                while True:
                    await self._wanted.wait()
                    self._wanted = trio.Event()
                    lost = 0  # spares in a row gone before they were described
                    while len(self._ready) < self._limit and lost < LOST_IN_A_ROW:
                        if self._made.is_set():
                            self._made = trio.Event()
                        try:
                            with trio.CancelScope(shield=True):  # bounded: mkdir, spawn, /proc
                                spare = await self._make()
                            if spare is not None:
                                self._ready.append(spare)  # before anything can cancel
                        finally:
                            self._made.set()
                        if self._broken:
                            return
                        lost = 0 if spare is not None else lost + 1
        finally:
            self._running = False
            self._made.set()  # nothing more is in the making: no taker waits for ever
            while self._ready:
                await self._ready.popleft().discard()
            self._idle.set()

    async def _make(self) -> SpareLeaf | None:
        """A new spare (moving into its leaf: :meth:`take` checks it got in); ``None`` when
        none could be made (:attr:`_broken` set when none can be made here)."""
        if self._lease_dir is not None:  # as a direct start: the watchdog, then the leaf
            await ensure_armed(self._lease_dir)
        lease_id = new_lease_id()
        held.hold(lease_id)  # before the leaf exists: no reap of ours sees it unheld
        leaf = await trio.to_thread.run_sync(make_leaf, self._gateway, lease_id)
        if leaf is None:
            held.release(lease_id)
            self._broken = True
            self._log.debug("spare leaf: cgroup containment is not usable here")
            return None
        owner = await owner_tag_value()  # another process's reap sees a live owner's spare
        if self._want_perl and self._perl is None:
            self._perl = await trio.to_thread.run_sync(_system_perl)
            self._want_perl = self._perl is not None
        read_end, write_end = os.pipe()
        try:
            process = await trio.lowlevel.open_process(
                spare_command(leaf, read_end, self._perl), pass_fds=(read_end,),
                stdin=-1, stdout=-1, stderr=-1, cwd="/", env={OWNER_ENV_KEY: owner},
                start_new_session=True,
            )
        except OSError as exc:
            os.close(write_end)
            await trio.to_thread.run_sync(remove_empty_leaf, leaf)
            held.release(lease_id)
            self._broken = True
            self._log.warning("spare leaf: could not start its process: %s", exc)
            return None
        finally:
            os.close(read_end)
        control = trio.lowlevel.FdStream(write_end)
        info = await trio.to_thread.run_sync(child_identity, process.pid)
        spare = SpareLeaf(process, leaf, lease_id, control,
                        0.0 if info is None else info[0], None if info is None else info[1])
        if info is None:  # gone already (its move failed)
            self._log.debug("spare leaf: its spare never got into %s", leaf)
            await spare.discard()
            return None
        return spare

    async def aclose(self) -> None:
        """Discard the spare leaves it holds and stop refilling; returns when nothing of the
        pool runs.  Idempotent; shielded."""
        self._closed = True
        self._scope.cancel()
        with trio.CancelScope(shield=True):
            await self._idle.wait()


def runtime_pool(nursery: trio.Nursery, *, containment: str, gateway_instance_id: str,
                 lease_dir: str | os.PathLike[str], log: Logger) -> SpareLeaves | None:
    """The spare leaves of a runtime whose config says ``containment``: none for
    ``process-group``; else a pool that arms ``lease_dir``'s watchdog before each leaf (where
    no leaf can be made, its first attempt says so and every start takes the direct path).
    Cheap: nothing is probed or started until the pool is asked for a launch."""
    if containment == "process-group":
        return None
    return SpareLeaves(nursery, gateway_instance_id=gateway_instance_id, log=log,
                       lease_dir=lease_dir)
