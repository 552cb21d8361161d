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
from pathlib import Path

import msgspec

__all__ = ["CgroupProbe", "probe_cgroup_kill"]


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
