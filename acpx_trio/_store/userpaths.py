"""Paths a caller hands acpx-trio (a state dir, a working directory), checked and resolved
before anything is read or created.  Pure: no file is touched but by ``resolve``, and the
module is light enough for the command line's start-up (it loads no Trio, no ``fsio``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from acpx_trio._errors import AcpxUsageError, StateFileError

__all__ = ["resolve_path", "resolve_state_dir", "state_dir_path"]


def state_dir_path(state_dir: object, argument: str = "state_dir") -> Path:
    """A state directory as a caller gave it, as a :class:`Path`: every entry point (the
    service, the lease and session stores, the gateway id, the CLI's ``--state-dir``) turns
    its argument into a path here, the one home of this rule.  An empty or blank path raises
    :class:`~acpx_trio.AcpxUsageError` (``argument`` names the parameter) before anything is
    read or created: ``Path("")`` is ``.``, so it would silently make the current directory
    the state dir (and ``chmod`` it 0700).  So does a NUL byte, which no path can hold."""
    if not isinstance(state_dir, str | os.PathLike):
        raise AcpxUsageError(argument, state_dir, "must be a non-empty path")
    text = os.fspath(state_dir)
    if not isinstance(text, str) or not text.strip():
        raise AcpxUsageError(argument, state_dir, "must be a non-empty path")
    if "\0" in text:
        raise AcpxUsageError(argument, state_dir, "must not contain a NUL byte")
    return Path(text)


def resolve_state_dir(state_dir: Path) -> Path:
    """``state_dir`` with ``~`` expanded and links resolved; one that cannot be (a symbolic
    link loop, an unknown ``~user``) is refused with :class:`~acpx_trio.StateFileError`, as
    any other unusable state dir."""
    return resolve_path(state_dir, lambda why: StateFileError(
        str(state_dir), why, "choose another state directory"))


def resolve_path(path: Path, refuse: Callable[[str], Exception], *,
                 base: Path | None = None) -> Path:
    """``path.expanduser().resolve()`` (relative to ``base`` when given), raising
    ``refuse(reason)`` instead of what those raise on a path that cannot be resolved:
    ``RuntimeError`` for an unknown ``~user`` or a symbolic link loop (Python 3.11),
    ``ValueError`` for a NUL byte, an ``OSError``.  The one home of that translation: each
    caller says which typed error its argument gets."""
    if "\0" in str(path):  # os calls raise ValueError on it (pwd's getpwnam too, for ~)
        raise refuse("contains a NUL byte")
    try:
        expanded = path.expanduser()
    except RuntimeError:
        raise refuse("its ~ names a home directory that cannot be found") from None
    try:
        return (expanded if base is None else base / expanded).resolve()
    except RuntimeError:
        raise refuse("is or passes through a symbolic link loop") from None
    except ValueError:  # a NUL byte in ``base``
        raise refuse("contains a NUL byte") from None
    except OSError as exc:
        raise refuse(f"cannot be resolved ({exc.strerror or exc})") from None
