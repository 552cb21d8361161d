"""``acpx-trio reap [--dry-run]``: end this gateway's orphaned agent processes, and say why.

One call of :func:`acpx_trio._process.gateway_reap.reap_gateway` (the same operation the
service's start-up and the owner-death watchdog run; see its module for what is reaped and
the race safety).  ``--dry-run`` runs it with ``dry_run=True``: one snapshot, the same plan,
no signal and no write (the gateway id file and the lease file are only read, never
created, locked or quarantined).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import msgspec
import trio

from acpx_trio._cli.exits import EXIT_ERROR, EXIT_OK
from acpx_trio._cli.output import Output, format_table
from acpx_trio._errors import LeaseStoreError
from acpx_trio._process.gateway_reap import ReapAction, reap_gateway
from acpx_trio._store.dirs import check_lease_dirs
from acpx_trio._store.instance import peek_gateway_instance_id, resolve_gateway_instance_id
from acpx_trio._store.lease_model import LeaseState, ProcessLease
from acpx_trio._store.leases import LeaseStore, peek_leases

__all__ = ["ReapRow", "reap_command"]

WRAPPER_DIR_NAME = "acpx"

#: One line of the report (camelCase NDJSON with ``--json``).
ReapRow = ReapAction


class _PeekedLeases:
    """The lease file read without a lock or any write (the dry run)."""

    def __init__(self, lease_dir: Path) -> None:
        self.lease_dir = lease_dir
        self.problem: str | None = None

    async def list_all(self) -> list[ProcessLease]:
        leases, self.problem = await trio.to_thread.run_sync(peek_leases, self.lease_dir)
        return leases

    async def mark_states(
        self, updates: dict[str, LeaseState], *, skip_final: bool = False
    ) -> dict[str, ProcessLease]:
        raise LeaseStoreError("a dry run writes nothing")


async def reap_command(*, state_dir: Path, dry_run: bool, json_mode: bool,
                       secrets: Sequence[str] | None = None) -> int:
    """Reap (or with ``dry_run`` only plan to reap) this state dir's gateway's orphans and
    print one row per process or lease acted on or left alone: a table, or NDJSON
    (:class:`ReapRow`, camelCase) with ``json_mode``; command lines shown with ``secrets``
    redacted (``None``: the environment's credentials, see
    :func:`~acpx_trio._process.gateway_reap.reap_gateway`).

    Returns 0, or 1 when a process survived SIGKILL.  A dry run signals nothing and writes
    nothing.  Lease store and gateway id errors propagate (:class:`~acpx_trio.AcpxError`)."""
    out = Output()
    state_dir = Path(state_dir)
    await trio.to_thread.run_sync(check_lease_dirs, state_dir)  # typed refusal, nothing read
    store = LeaseStore(state_dir / WRAPPER_DIR_NAME)
    ok = True
    if dry_run:
        gateway_id = await trio.to_thread.run_sync(peek_gateway_instance_id, state_dir)
        rows: list[ReapRow] = []
        if gateway_id is not None:
            peeked = _PeekedLeases(store.path.parent)
            report = await reap_gateway(gateway_id, peeked, dry_run=True,
                                        lease_dir=str(store.path.parent), secrets=secrets)
            rows = list(report.actions)
            if peeked.problem:
                rows.append(ReapRow(action="lease-file-problem", reason=peeked.problem))
    else:
        gateway_id = await resolve_gateway_instance_id(state_dir)
        report = await reap_gateway(gateway_id, store, lease_dir=str(store.path.parent),
                                    secrets=secrets)
        rows, ok = list(report.actions), report.ok
    if json_mode:
        enc = msgspec.json.Encoder()
        for row in rows:
            out.write(enc.encode(row).decode() + "\n")
    elif rows:
        table_rows = [(r.action, r.pid or "-", (r.lease_id or "-")[:8], r.reason,
                       r.command or "") for r in rows]
        out.write(format_table(table_rows, ("ACTION", "PID", "LEASE", "REASON", "COMMAND"))
                  + "\n")
    else:
        what = "would be reaped" if dry_run else "to reap"
        where = f"gateway {gateway_id}" if gateway_id else f"{state_dir} (no gateway id yet)"
        out.write(f"nothing {what} for {where}\n")
    if not ok:
        out.write("acpx-trio: some processes survived SIGKILL or were not proven gone\n",
                  err=True)
    await out.drain()
    return EXIT_OK if ok else EXIT_ERROR

