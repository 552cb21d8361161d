"""Containment by cgroup v2: one leaf cgroup per agent or terminal.

What it promises, where the kernel allows it (a writable cgroup v2 of ours whose child
cgroups have ``cgroup.kill``, kernel >= 5.14; :func:`probe_cgroup_kill` tells the truth by
creating an empty probe child and removing it again):

* a launch is inside its leaf before it executes anything of its own (:func:`shim_argv`),
  so whatever it forks, ``setsid()``s, re-parents or scrubs from its environment is born in
  the leaf;
* membership (:func:`tree_members`, :func:`member_of`) and emptiness
  (:func:`leaf_populated`) are read from the kernel, never guessed; how a leaf's processes
  are ended is :mod:`~acpx_trio._process.leaf_end`'s;
* :func:`resolve_containment` turns the config's ``containment`` into the mechanism in use
  (:class:`Containment`), or a :class:`~acpx_trio._errors.ContainmentError` when ``"cgroup"``
  is required and unusable.

What it cannot promise: a member may move itself out by writing its pid to another
``cgroup.procs`` it can write (same uid); the tag scans of the sweeps stay as a second net.
Blocking helpers read ``/proc`` and ``/sys`` (call them in a worker thread).  Linux only.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import secrets
from pathlib import Path
from typing import Literal

import msgspec

from acpx_trio._errors import ContainmentError
from acpx_trio._events import AgentUsage
from acpx_trio._store.config import ContainmentMode

__all__ = [
    "AgentUsage",
    "CgroupProbe",
    "Containment",
    "cached_probe",
    "gateway_parent",
    "gone",
    "leaf_event",
    "leaf_members",
    "leaf_populated",
    "leaf_usage",
    "lease_usage",
    "leftover_leaves",
    "make_leaf",
    "member_of",
    "probe_cgroup_kill",
    "remove_empty_leaf",
    "remove_empty_parent",
    "resolve_containment",
    "shim_argv",
    "tree_members",
]



class CgroupProbe(msgspec.Struct, frozen=True, kw_only=True):
    """``usable``: a cgroup v2 directory of ours is writable and the kernel has
    ``cgroup.kill`` (per-lease child cgroups could be created and killed there).
    ``path``: that directory.  ``reason``: why not (or what was found)."""

    usable: bool
    path: str | None
    reason: str


@functools.cache
def _cgroup2_mount() -> Path | None:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return Path(left.split()[4])
    except OSError:
        return None
    return None


def _own_cgroup() -> str | None:
    try:
        with open("/proc/self/cgroup", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                hierarchy, _, rest = line.strip().partition(":")
                controllers, _, path = rest.partition(":")
                if hierarchy == "0" and controllers == "":
                    return path
    except OSError:
        return None
    return None


def probe_cgroup_kill() -> CgroupProbe:
    """Whether a writable cgroup v2 with ``cgroup.kill`` is available to this process."""
    mount = _cgroup2_mount()
    if mount is None:
        return CgroupProbe(usable=False, path=None, reason="no cgroup v2 hierarchy mounted")
    rel = _own_cgroup()
    if rel is None:
        return CgroupProbe(usable=False, path=None,
                           reason=f"cgroup v2 at {mount}, but this process is in none of it")
    here = mount / rel.lstrip("/")
    if not here.is_dir():
        return CgroupProbe(usable=False, path=str(here),
                           reason=f"this process's cgroup {here} is not visible")
    if not os.access(here, os.W_OK):
        return CgroupProbe(usable=False, path=str(here),
                           reason=f"{here} is not writable (no delegated cgroup: see the "
                           "README, systemd-run --user --scope -p Delegate=yes)")
    probe = here / f"acpx-trio-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.mkdir(probe, 0o755)
    except OSError as exc:
        return CgroupProbe(usable=False, path=str(here),
                           reason=f"cannot create a child cgroup in {here}: {exc.strerror}")
    try:
        has_kill = (probe / "cgroup.kill").exists()
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(probe)
    if not has_kill:
        return CgroupProbe(usable=False, path=str(here),
                           reason=f"a child cgroup of {here} has no cgroup.kill (kernel < 5.14)")
    return CgroupProbe(usable=True, path=str(here),
                       reason=f"a child cgroup of {here} can be created and has cgroup.kill")


# --------------------------------------------------------------------------- leaf cgroups
#
# One parent per gateway, ``<our cgroup>/acpx-trio-<gateway id>``, and one leaf per lease below
# it, ``.../<lease id>``.  The process enters its leaf before it executes anything of its own
# (:func:`shim_argv`: ``/bin/sh`` writes its own pid to the leaf's ``cgroup.procs``, then
# ``exec``s the agent; a failed write fails the start), so everything it ever forks is born in
# the leaf, whatever it does with sessions, groups or its environment.  Membership of our
# leaf is the proof of ownership; ``cgroup.kill`` kills every member, forks in flight
# included, in one write.

PARENT_PREFIX = "acpx-trio-"
_SHIM = 'echo 0 >"$0/cgroup.procs" && exec "$@"'
_SAFE_NAME = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
_usable: dict[int, CgroupProbe] = {}  # pid -> probe (a fork re-probes)


def cached_probe() -> CgroupProbe:
    """:func:`probe_cgroup_kill`, run once per process (again after a ``fork``).  Blocking
    the first time (it makes and removes a cgroup)."""
    pid = os.getpid()
    probe = _usable.get(pid)
    if probe is None:
        probe = _usable[pid] = probe_cgroup_kill()
    return probe


def _safe(name: str) -> bool:
    return bool(name) and name not in (".", "..") and set(name) <= _SAFE_NAME


def gateway_parent(gateway_instance_id: str) -> Path | None:
    """This gateway's parent cgroup (``None`` when cgroup containment is not usable here or
    the id is not a safe directory name).  Blocking."""
    probe = cached_probe()
    if not probe.usable or probe.path is None or not _safe(gateway_instance_id):
        return None
    return Path(probe.path) / f"{PARENT_PREFIX}{gateway_instance_id}"


def make_leaf(gateway_instance_id: str, lease_id: str) -> str | None:
    """Create the lease's leaf cgroup (and the gateway's parent); its path, or ``None`` when
    cgroup containment is not usable (the caller falls back to the process group).
    Blocking."""
    parent = gateway_parent(gateway_instance_id)
    if parent is None or not _safe(lease_id):
        return None
    leaf = parent / lease_id
    for _ in range(3):  # a close of the last other leaf may remove the parent in between
        try:
            try:
                os.mkdir(parent, 0o755)
            except FileExistsError:
                pass
            else:
                _enable_controllers(parent)
            os.mkdir(leaf, 0o755)
        except FileNotFoundError:
            continue
        except OSError:
            return None
        return str(leaf)
    return None


def _enable_controllers(parent: Path) -> None:
    """Best effort: enable the ``memory`` and ``pids`` controllers for the leaves where they
    are delegated to ``parent`` (it holds no process itself, so cgroup v2 allows it); the
    usage report says when they are not."""
    try:
        available = set((parent / "cgroup.controllers").read_text(encoding="ascii").split())
    except OSError:
        return
    for controller in ("memory", "pids"):
        if controller in available:
            with contextlib.suppress(OSError):
                (parent / "cgroup.subtree_control").write_text(f"+{controller}", "ascii")


def shim_argv(leaf: str, argv: list[str]) -> list[str]:
    """``argv`` run by a shim that first moves itself into ``leaf``."""
    return ["/bin/sh", "-c", _SHIM, leaf, *argv]


def gone(exc: OSError) -> bool:
    """Whether ``exc``, from a cgroup file or directory, says the cgroup is gone: removed
    before the open (``ENOENT``) or between the open and the read or write (``ENODEV``: the
    kernel has deactivated its files).  Another process of the gateway may remove a leaf or
    its parent at any moment (its close, its reap)."""
    return exc.errno in (errno.ENOENT, errno.ENODEV)


def leaf_members(leaf: str) -> list[int]:
    """The pids in ``leaf`` itself (``cgroup.procs``); empty when it is gone.  Blocking."""
    try:
        with open(os.path.join(leaf, "cgroup.procs"), encoding="ascii") as fh:
            return [int(x) for x in fh.read().split()]
    except ValueError:
        return []
    except OSError as exc:
        if gone(exc):
            return []
        raise


def leaf_populated(leaf: str) -> bool | None:
    """Whether the leaf (or a cgroup below it) holds a process; ``None`` when it is gone."""
    return leaf_event(leaf, "populated")


def leaf_event(leaf: str, name: str) -> bool | None:
    """Field ``name`` (``populated``, ``frozen``) of the leaf's ``cgroup.events``; ``None``
    when the leaf (or the field) is gone."""
    try:
        with open(os.path.join(leaf, "cgroup.events"), encoding="ascii") as fh:
            for line in fh:
                key, _, value = line.partition(" ")
                if key == name:
                    return value.strip() != "0"
    except OSError as exc:
        if gone(exc):
            return None
        raise
    return None


def _leaf_dirs(leaf: str) -> list[str]:
    """``leaf`` and every cgroup below it, deepest first (a sub-cgroup keeps its parent
    busy); empty when it is gone."""
    found = [d for d, _subdirs, _files in os.walk(leaf)]
    return sorted(found, key=lambda d: -d.count("/"))


def tree_members(leaf: str) -> list[int]:
    return [pid for d in _leaf_dirs(leaf) for pid in leaf_members(d)]


def member_of(pid: int, leaf: str) -> bool:
    """Whether ``pid`` is in ``leaf`` or below it now (``/proc/<pid>/cgroup``)."""
    mount = _cgroup2_mount()
    if mount is None:
        return False
    rel = os.path.relpath(leaf, mount)
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("0::"):
                    path = line[3:].strip().lstrip("/")
                    return path == rel or path.startswith(rel + "/")
    except OSError:
        return False
    return False


def _remove_leaf(leaf: str) -> bool:
    """Remove an empty ``leaf`` and its sub-cgroups (deepest first); ``False`` when a process
    is still in it (``EBUSY``)."""
    for d in _leaf_dirs(leaf):
        try:
            os.rmdir(d)
        except FileNotFoundError:
            pass
        except OSError:
            return False
    return True


def remove_empty_leaf(leaf: str, *, parent: bool = True) -> bool:
    """Remove ``leaf`` (and the cgroups below it) if it holds no process (nothing can enter
    an empty leaf but a process moved in from outside), then, with ``parent``, the gateway's
    parent when it was the last leaf; ``False`` when it is populated.  Blocking."""
    try:
        os.rmdir(leaf)  # the common case, one call: the kernel refuses a busy cgroup (EBUSY)
        removed = True
    except FileNotFoundError:
        removed = True
    except OSError:  # populated, or a cgroup below it
        removed = not leaf_populated(leaf) and _remove_leaf(leaf)
    if removed and parent:
        remove_empty_parent(os.path.dirname(leaf))
    return removed


def remove_empty_parent(parent: str) -> None:
    """Remove a gateway's parent cgroup if no leaf is left in it (else it stays).  Blocking."""
    with contextlib.suppress(OSError):
        os.rmdir(parent)


# --------------------------------------------------------------------------- usage

#: What :func:`leaf_usage` reads, by measure: the file and the controller that provides it.
_MEASURES: tuple[tuple[str, str, str], ...] = (
    ("cpu_seconds", "cpu.stat", "cpu"),
    ("memory_bytes", "memory.current", "memory"),
    ("pids", "pids.current", "pids"),
)


def leaf_usage(leaf: str | None) -> AgentUsage | None:
    """The usage of ``leaf`` (``None``: no leaf, or it is gone).  Blocking (sysfs reads)."""
    if leaf is None or not os.path.isdir(leaf):
        return None
    values: dict[str, float | int] = {}
    missing: dict[str, str] = {}
    parent = os.path.dirname(leaf)
    for measure, name, controller in _MEASURES:
        try:
            with open(os.path.join(leaf, name), encoding="ascii") as fh:
                text = fh.read()
        except FileNotFoundError:
            missing[measure] = (f"the {controller} controller is not enabled for the agents' "
                                f"cgroups ({parent}/cgroup.subtree_control)")
            continue
        except OSError as exc:
            missing[measure] = f"{name}: {exc.strerror}"
            continue
        if name == "cpu.stat":
            stat = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
            if "usage_usec" not in stat:
                missing[measure] = "cpu.stat has no usage_usec"
                continue
            values[measure] = int(stat["usage_usec"]) / 1e6
        else:
            values[measure] = int(text.strip())
    return AgentUsage(
        cpu_seconds=None if "cpu_seconds" not in values else float(values["cpu_seconds"]),
        memory_bytes=None if "memory_bytes" not in values else int(values["memory_bytes"]),
        pids=None if "pids" not in values else int(values["pids"]),
        unavailable=missing,
    )


_NO_LEAF = "no leaf cgroup (containment: process-group)"


def lease_usage(leaf: str | None) -> AgentUsage:
    """:func:`leaf_usage` for a live launch: without a leaf (process-group containment) every
    measure is unavailable, with that reason.  Blocking."""
    usage = leaf_usage(leaf)
    if usage is None:
        why = _NO_LEAF if leaf is None else f"the leaf cgroup {leaf} is gone"
        return AgentUsage(unavailable={m: why for m, _f, _c in _MEASURES})
    return usage


# --------------------------------------------------------------------------- the mechanism


class Containment(msgspec.Struct, frozen=True, kw_only=True):
    """The mechanism that contains and kills agents and terminals here.

    ``"cgroup"``: each launch runs in its own leaf cgroup under ``path`` and is killed with
    ``cgroup.kill``; nothing it starts escapes a close or a reap (except by moving itself out
    of the leaf, which the tag scans still catch while it keeps its tags).
    ``"process-group"``: its own session and process group, killed with the group, the
    session and the tag scans; a process that leaves the session *and* clears its
    environment cannot be proven ours (README: limits).  ``reason`` says why this one."""

    mechanism: Literal["cgroup", "process-group"]
    path: str | None = None
    reason: str = ""


def resolve_containment(mode: ContainmentMode = "auto") -> Containment:
    """The mechanism for the config's ``containment``.  Raises
    :class:`~acpx_trio._errors.ContainmentError` for ``"cgroup"`` where it is unusable (the
    error names why).  Blocking the first time in a process (the probe)."""
    if mode == "process-group":
        return Containment(mechanism="process-group",
                           reason="configured: containment = process-group")
    probe = cached_probe()
    if probe.usable and probe.path is not None:
        return Containment(mechanism="cgroup", path=probe.path, reason=probe.reason)
    if mode == "cgroup":
        raise ContainmentError(probe.reason)
    return Containment(mechanism="process-group", reason=probe.reason)

def leftover_leaves(gateway_instance_id: str, live_lease_ids: frozenset[str]) -> list[str]:
    """Leaves of this gateway whose lease is not open with a live owner.  Blocking."""
    parent = gateway_parent(gateway_instance_id)
    if parent is None:
        return []
    try:
        names = [e.name for e in os.scandir(parent) if e.is_dir(follow_symlinks=False)]
    except OSError as exc:
        if gone(exc):
            return []
        raise
    return [str(parent / n) for n in names if _safe(n) and n not in live_lease_ids]
