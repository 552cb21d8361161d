"""The gateway instance id: a stable identity of one installation (state dir) across restarts.

Every lease carries it and every agent process inherits it, so a restarted gateway recognises
what its previous life started.  Losing it would orphan every old lease, so this module never
replaces an existing id file silently.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import uuid
from pathlib import Path

import msgspec
import trio

from acpx_trio._errors import GatewayInstanceIdError, StateFileError
from acpx_trio._log import Logger
from acpx_trio._store.fsio import (
    FILE_MODE,
    GATEWAY_ID_MAX_BYTES,
    LEASE_FILE_MAX_BYTES,
    StateDecoder,
    atomic_write_bytes,
    ensure_private_dir,
    read_private_file,
)
from acpx_trio._store.leases import LEASE_FILE_NAME
from acpx_trio._store.userpaths import state_dir_path

__all__ = [
    "GATEWAY_ID_FILE_NAME",
    "peek_gateway_instance_id",
    "resolve_gateway_instance_id",
    "resolve_gateway_instance_id_sync",
]

GATEWAY_ID_FILE_NAME = "gateway-instance-id"
_VALID_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$")
_log = logging.getLogger("acpx_trio.instance")


class _AnyLease(msgspec.Struct, rename="camel"):
    gateway_instance_id: str


class _AnyLeaseFile(msgspec.Struct):
    leases: list[msgspec.Raw] = []


_file_decoder = StateDecoder(_AnyLeaseFile)
_lease_decoder = StateDecoder(_AnyLease)


def _gateway_ids_in_lease_files(state_dir: Path) -> set[str]:
    ids: set[str] = set()
    for path in (state_dir / "acpx" / LEASE_FILE_NAME, state_dir / LEASE_FILE_NAME):
        try:
            data = read_private_file(path, LEASE_FILE_MAX_BYTES)
            doc = _file_decoder.decode(data)
        except (OSError, StateFileError, msgspec.DecodeError, UnicodeDecodeError):
            continue
        for raw in doc.leases:
            with contextlib.suppress(msgspec.DecodeError, UnicodeDecodeError):
                ids.add(_lease_decoder.decode(raw).gateway_instance_id.strip())
    return {i for i in ids if _VALID_ID.match(i)}


def _create_exclusive(path: Path, value: str) -> bool:
    """Publish ``value`` at ``path`` only if nothing is there; True if we won."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(f"{value}\n".encode())
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_name, FILE_MODE)
        try:
            os.link(tmp_name, path)  # atomic and exclusive: fails if another start won
        except FileExistsError:
            return False
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)


def _read_id_file(path: Path) -> str:
    """The id file's text; :class:`~acpx_trio.StateFileError` for a link, FIFO, device,
    directory, another user's file or one over 4 KiB (never a hang)."""
    data = read_private_file(path, GATEWAY_ID_MAX_BYTES)
    return data.decode("utf-8", errors="replace").strip()


def _unusable(state_dir: Path, exc: OSError) -> StateFileError:
    return StateFileError(
        str(state_dir),
        f"cannot read or create the gateway instance id there ({exc.strerror or exc})",
        "use a directory this user owns and can write (no file in its place or above it)",
    )


def resolve_gateway_instance_id_sync(
    state_dir: str | os.PathLike[str], *, logger: Logger | None = None
) -> str:
    """Read ``<state_dir>/gateway-instance-id``, creating it (a UUID, 0600; dir 0700) if missing.

    * Two first starts racing agree on one id (exclusive creation).
    * Errors are typed: :class:`StateFileError` when the state dir or the id file cannot be
      used (not a directory, a file in the way above it, another user's, unreadable),
      :class:`AcpxUsageError` for an empty path
      (:func:`~acpx_trio._store.userpaths.state_dir_path`); never a raw ``OSError``.
    * An empty or garbled file is repaired only from the lease file when that names exactly one
      gateway (a warning through ``logger``); otherwise :class:`GatewayInstanceIdError` says
      how to fix it by hand."""
    path = state_dir_path(state_dir)
    try:
        return _resolve(path, logger or _log)
    except OSError as exc:
        raise _unusable(path, exc) from exc


def _resolve(state_dir: Path, log: Logger) -> str:
    directory = ensure_private_dir(state_dir)
    path = directory / GATEWAY_ID_FILE_NAME
    for _ in range(3):
        try:
            text = _read_id_file(path)
        except FileNotFoundError:
            if _create_exclusive(path, str(uuid.uuid4())):
                return _read_id_file(path)
            continue  # someone else created it first: read theirs
        if _VALID_ID.match(text):
            st = os.lstat(path)  # a regular file of ours (checked by the read): never a link
            if (st.st_mode & 0o777) != FILE_MODE:
                os.chmod(path, FILE_MODE, follow_symlinks=False)
            return text
        return _recover(directory, path, text, log)
    raise GatewayInstanceIdError(f"{path} keeps disappearing while being read; is it on NFS?")


def _recover(directory: Path, path: Path, text: str, log: Logger) -> str:
    found = _gateway_ids_in_lease_files(directory)
    what = "empty" if not text else "garbled"
    if len(found) == 1:
        (recovered,) = found
        atomic_write_bytes(path, f"{recovered}\n".encode())
        log.warning(
            "gateway instance id file %s was %s; recovered id %s from the lease file",
            path, what, recovered,
        )
        return recovered
    reason = (
        "no lease names a gateway" if not found else f"leases name {len(found)} gateways"
    )
    raise GatewayInstanceIdError(
        f"gateway instance id file {path} is {what} and cannot be recovered ({reason}). "
        "Write the old id into it if you know it; otherwise delete the file to start a new "
        "identity (agent processes of the old identity will then not be reaped automatically)."
    )


def peek_gateway_instance_id(state_dir: str | os.PathLike[str]) -> str | None:
    """The gateway id in ``<state_dir>``, or ``None`` if there is no id file yet.

    No side effects (nothing is created, repaired or chmod-ed): for inspection tools.  Raises
    :class:`GatewayInstanceIdError` when the file is empty or garbled, :class:`StateFileError`
    when it cannot be read; blocking."""
    directory = state_dir_path(state_dir)
    path = directory / GATEWAY_ID_FILE_NAME
    try:
        text = _read_id_file(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _unusable(directory, exc) from exc
    if not _VALID_ID.match(text):
        raise GatewayInstanceIdError(
            f"gateway instance id file {path} is empty or garbled; run `acpx-trio reap` "
            "without --dry-run to recover it from the lease file"
        )
    return text


async def resolve_gateway_instance_id(state_dir: str | os.PathLike[str]) -> str:
    """Async form of :func:`resolve_gateway_instance_id_sync` (file work in a worker thread;
    same typed errors)."""
    state_dir_path(state_dir)
    return await trio.to_thread.run_sync(resolve_gateway_instance_id_sync, state_dir)
