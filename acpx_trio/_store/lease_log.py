"""The lease file's change log: how one writer's changes reach another writer's warm store.

Every write of the lease file by :class:`~acpx_trio._store.leases.SyncLeaseStore` appends one
line to ``process-leases.json.changes``: the fingerprint of the version it replaced, the
fingerprint of the version it wrote, the entries it put and the ids it dropped.  A store whose
kept snapshot is version F and finds the file at version X follows the records F -> ... -> X
and applies them: O(changes) instead of decoding every lease (the CLI next to a warm owner).

The log is a hint, never the truth:

* a record is used only when its ``before`` is the snapshot's version, and the chain is used
  only when it ends at the fingerprint the file has now (read under the lease lock); anything
  else (no log, a gap, a torn line, a writer that does not log such as the TypeScript gateway,
  a log that is not a regular file of ours) falls back to decoding the whole file;
* a version is written once (every writer holds the lock and starts from the file as it is),
  so at most one record leaves each version, and applying it to a snapshot of that version
  gives exactly the version it names;
* a record is appended only after the lease file it describes is durable, so it never names
  a version that did not exist.  It is not fsynced itself: losing it costs one full decode.
* bounded: the log restarts from empty once it passes :data:`LOG_MAX_BYTES`.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from acpx_trio._errors import StateFileError
from acpx_trio._store.fsio import StateDecoder, open_private_file

__all__ = ["LOG_MAX_BYTES", "ChangeRecord", "Fingerprint", "append_change", "read_changes"]

#: Restart the log (truncate) before an append once it is larger than this.
LOG_MAX_BYTES = 1 << 20
Fingerprint = tuple[int, int, int, int, int]


class ChangeRecord(msgspec.Struct, array_like=True, frozen=True):
    """One write: ``before`` -> ``after`` (file fingerprints), entries put (in order, each as
    written to the file) and lease ids dropped (after the puts)."""

    before: Fingerprint
    after: Fingerprint
    put: list[msgspec.Raw]
    drop: list[str]


_encoder = msgspec.json.Encoder()
_decoder = StateDecoder(ChangeRecord)  # a line nested too deeply: DecodeError, skipped


def append_change(path: Path, record: ChangeRecord) -> int | None:
    """Append ``record`` (caller holds the lease lock); the log's size after it, or ``None``
    if the log could not be written (then readers fall back to a full decode)."""
    line = _encoder.encode(record) + b"\n"
    try:  # a regular file of ours (no link followed, no FIFO waited on), else no log
        fd, st = open_private_file(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    except (OSError, StateFileError):
        return None
    try:
        if st.st_size > LOG_MAX_BYTES:
            os.ftruncate(fd, 0)
        os.write(fd, line)
        return os.fstat(fd).st_size
    except OSError:
        return None
    finally:
        os.close(fd)


def read_changes(path: Path, offset: int) -> tuple[list[ChangeRecord], int]:
    """The records from byte ``offset`` on (from the start if the log restarted since) and
    the offset after the last whole line.  Unreadable lines are skipped: a chain through
    them breaks and the caller decodes the whole file."""
    try:
        fd, st = open_private_file(path)
    except (OSError, StateFileError):
        return [], 0
    try:
        if st.st_size > 2 * LOG_MAX_BYTES:
            return [], 0
        if offset > st.st_size:
            offset = 0
        data = os.pread(fd, st.st_size - offset, offset)
    except OSError:
        return [], 0
    finally:
        os.close(fd)
    end = data.rfind(b"\n") + 1
    records: list[ChangeRecord] = []
    for line in data[:end].splitlines():
        try:
            records.append(_decoder.decode(line))
        except msgspec.DecodeError:
            continue
    return records, offset + end
