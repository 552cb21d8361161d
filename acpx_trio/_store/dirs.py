"""The layout of acpx-trio's own directories under a host state dir, checked as one chain.

``<state>/acpx`` (the lease dir) and ``<state>/acpx/sessions`` (the default session dir) are
ours: each must be a directory of this user, mode 0700 (and the state dir's ancestors may
belong only to root or to this user and be writable by nobody else, like ssh's
``StrictModes``); a symbolic link is refused unless it
points at a directory of ours that is already 0700 (two installations sharing one lease dir),
since a link is never ``chmod``-ed.  Each is checked before anything is created below it, so
a link to someone else's directory gets nothing created inside it.  Blocking: run in a
worker thread.
"""

from __future__ import annotations

from pathlib import Path

from acpx_trio._store.fsio import check_ancestors, check_private_dir, ensure_private_dir
from acpx_trio._store.userpaths import resolve_state_dir

__all__ = ["LEASE_DIR_NAME", "SESSIONS_DIR_NAME", "check_lease_dirs", "ensure_lease_dirs",
           "is_default_session_dir"]

#: ``<state>/acpx``: the lease file, the lease lock (the service's ``WRAPPER_DIR_NAME``).
LEASE_DIR_NAME = "acpx"
#: ``<state>/acpx/sessions``: where session records live unless configured elsewhere.
SESSIONS_DIR_NAME = "sessions"


def _chain(state_dir: Path) -> list[Path]:
    lease_dir = state_dir / LEASE_DIR_NAME
    return [lease_dir, lease_dir / SESSIONS_DIR_NAME]


def is_default_session_dir(state_dir: Path, session_dir: Path) -> bool:
    """Whether ``session_dir`` is ``<state_dir>/acpx/sessions`` (as given or resolved)."""
    tail = Path(LEASE_DIR_NAME, SESSIONS_DIR_NAME)
    return session_dir in (state_dir / tail, resolve_state_dir(state_dir) / tail)


def check_lease_dirs(state_dir: Path) -> None:
    """Refuse an untrusted state dir, or an ``acpx``/``acpx/sessions`` dir that is untrusted
    or a link to anything but a 0700 directory of ours (:class:`~acpx_trio.StateFileError`
    with the path and the fix); creates nothing (missing dirs are fine).  The state dir's
    ancestors too: none may be another user's or writable by one (:func:`~acpx_trio._store.
    fsio.check_ancestors`)."""
    check_ancestors(state_dir)
    check_private_dir(state_dir)
    for path in _chain(state_dir):
        check_private_dir(path, strict_link=True)


def ensure_lease_dirs(state_dir: Path, *, sessions: bool = True) -> Path:
    """Create (0700) or check ``<state>/acpx`` and, with ``sessions``, ``<state>/acpx/
    sessions``, each checked before anything below it is created (see the module; refused
    with :class:`~acpx_trio.StateFileError`).  Returns the lease dir.  ``OSError`` when a dir
    cannot be created.  The state dir's ancestors are checked first, as in
    :func:`check_lease_dirs`."""
    lease_dir, session_dir = _chain(state_dir)
    check_ancestors(state_dir)
    check_private_dir(state_dir)
    ensure_private_dir(lease_dir, strict_link=True)
    if sessions:
        ensure_private_dir(session_dir, strict_link=True)
    return lease_dir
