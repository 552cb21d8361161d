"""Detection of a delegated cgroup v2 with ``cgroup.kill`` (the strongest kill mechanism:
every process of a cgroup, forks in flight included, in one write).

Only detection for now: agents are not placed in per-lease cgroups yet (issue 18), so the
reaper's process-group/session kill (``killpg`` + member scan) is what runs everywhere.
:func:`probe_cgroup_kill` says whether the stronger mechanism *could* be used here and why
not.  It tells the truth: ``cgroup.kill`` exists only in non-root cgroups, so it creates an
empty probe child under this process's cgroup, looks, and removes it (nothing else is
written; the probe never holds a process).  Blocking (reads ``/proc``, ``/sys``); Linux.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from pathlib import Path

import msgspec

__all__ = [
    "CgroupProbe", "gateway_parent", "kill_leaf", "leaf_members", "leaf_populated",
    "leftover_leaves", "make_leaf", "probe_cgroup_kill", "shim_argv",
]


class CgroupProbe(msgspec.Struct, frozen=True, kw_only=True):
    """``usable``: a cgroup v2 directory of ours is writable and the kernel has
    ``cgroup.kill`` (per-lease child cgroups could be created and killed there).
    ``path``: that directory.  ``reason``: why not (or what was found)."""

    usable: bool
    path: str | None
    reason: str


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


def _probe_cached() -> CgroupProbe:
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
    probe = _probe_cached()
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
            with contextlib.suppress(FileExistsError):
                os.mkdir(parent, 0o755)
            os.mkdir(leaf, 0o755)
        except FileNotFoundError:
            continue
        except OSError:
            return None
        return str(leaf)
    return None


def shim_argv(leaf: str, argv: list[str]) -> list[str]:
    """``argv`` run by a shim that first moves itself into ``leaf``."""
    return ["/bin/sh", "-c", _SHIM, leaf, *argv]


def leaf_members(leaf: str) -> list[int]:
    """The pids in ``leaf`` itself (``cgroup.procs``); empty when it is gone.  Blocking."""
    try:
        with open(os.path.join(leaf, "cgroup.procs"), encoding="ascii") as fh:
            return [int(x) for x in fh.read().split()]
    except (FileNotFoundError, ValueError):
        return []


def leaf_populated(leaf: str) -> bool | None:
    """Whether the leaf (or a cgroup below it) holds a process; ``None`` when it is gone."""
    try:
        with open(os.path.join(leaf, "cgroup.events"), encoding="ascii") as fh:
            for line in fh:
                key, _, value = line.partition(" ")
                if key == "populated":
                    return value.strip() != "0"
    except FileNotFoundError:
        return None
    return None


def kill_leaf(leaf: str, timeout: float) -> bool:
    """Kill every process in ``leaf`` and below (``cgroup.kill``), wait until it is empty
    (``populated 0``, bounded by ``timeout``), then remove it and its sub-cgroups; ``True``
    when it is gone or empty.  Blocking (a bounded re-read of ``cgroup.events``)."""
    if leaf_populated(leaf) is None:
        return True
    with contextlib.suppress(FileNotFoundError), open(
            os.path.join(leaf, "cgroup.kill"), "w", encoding="ascii") as fh:
        fh.write("1")
    deadline = time.monotonic() + timeout
    while leaf_populated(leaf):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.001)  # the kernel reports emptiness after the last exit; ~ms
    for dirpath, _dirs, _files in sorted(os.walk(leaf), key=lambda t: -len(t[0])):
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(dirpath)  # deepest first: a sub-cgroup keeps its parent busy
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(leaf))  # the gateway's parent, when this was its last leaf
    return True


def leftover_leaves(gateway_instance_id: str, live_lease_ids: frozenset[str]) -> list[str]:
    """Leaves of this gateway whose lease is not open with a live owner.  Blocking."""
    parent = gateway_parent(gateway_instance_id)
    if parent is None:
        return []
    try:
        names = [e.name for e in os.scandir(parent) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
    return [str(parent / n) for n in names if _safe(n) and n not in live_lease_ids]
