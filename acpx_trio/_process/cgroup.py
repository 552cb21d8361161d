"""Detection of a delegated cgroup v2 with ``cgroup.kill`` (the strongest kill mechanism:
every process of a cgroup, forks in flight included, in one write).

Only detection for now: agents are not placed in per-lease cgroups yet, so the reaper's
process-group/session kill (``killpg`` + member scan) is what runs everywhere.
:func:`probe_cgroup_kill` says whether the stronger mechanism *could* be used here and why
not; it writes nothing.  Blocking (reads ``/proc`` and ``/sys``); Linux only.
"""

from __future__ import annotations

import os
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
    if not os.access(here, os.W_OK):
        return CgroupProbe(usable=False, path=str(here),
                           reason=f"{here} is not writable (no delegated cgroup)")
    # the root cgroup has no cgroup.kill of its own; any child shows kernel support
    candidates = [here, *(p for p in here.iterdir() if p.is_dir())] if here.is_dir() else []
    if not any((p / "cgroup.kill").exists() for p in candidates):
        return CgroupProbe(usable=False, path=str(here),
                           reason=f"{here} is writable, but no cgroup.kill seen (kernel < 5.14 "
                           "or a root cgroup without children)")
    return CgroupProbe(usable=True, path=str(here),
                       reason=f"{here} is writable and has cgroup.kill")
