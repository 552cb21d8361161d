"""Lease store speed on its real path (lock, read, decode, change, encode, write, fsyncs).

(a) warm save: ``SyncLeaseStore.save`` of one lease into a file that already holds 10,000
    leases, the store object kept between saves (as a running gateway does).  Target: median
    <= 1.3x the baseline.  Baseline: the bare durable write of the same bytes
    (``atomic_write_bytes``: temp
    file, fsync, rename, directory fsync), the floor any save has to pay.
(c) two writers: two store objects on the same file save in turn (the CLI next to a warm
    owner): each save first catches up with the other's write through the change log.
    Target: median <= 1.3x the same baseline.
(b) cold save, msgspec vs stdlib json: a fresh store object per save (decode the whole file,
    validate, change, encode, durable write: what a first save after start-up or after
    another process wrote costs), against the same steps done with ``json`` and hand checks.
    Both pay the same lock and fsyncs.  Target: msgspec path >= 2x faster.

Run: ``python benchmarks/lease_store.py [--leases 10000] [--rounds 30]``; exits 1 on a miss.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import median, result

from acpx_trio._store.flock import exclusive_lock
from acpx_trio._store.fsio import atomic_write_bytes, ensure_private_dir
from acpx_trio._store.leases import LEASE_FILE_NAME, _LeaseFileOut
from acpx_trio.lowlevel import LeaseState, ProcessLease, SyncLeaseStore, new_lease


def make_leases(n: int) -> list[ProcessLease]:
    return [
        msgspec.structs.replace(
            new_lease(gateway_instance_id="gw", session_key=f"agent:codex:acp:{i}",
                      wrapper_root="/state/acpx", command="npx codex-acp"),
            root_pid=10_000 + i, root_create_time=1.7e9 + i, owner_pid=42,
        )
        for i in range(n)
    ]


def seed_file(state_dir: Path, leases: list[ProcessLease]) -> None:
    ensure_private_dir(state_dir)
    data = msgspec.json.format(msgspec.json.encode(_LeaseFileOut(leases=leases)), indent=2)
    atomic_write_bytes(state_dir / LEASE_FILE_NAME, data)


_REQUIRED = {"leaseId": str, "gatewayInstanceId": str, "sessionKey": str, "wrapperRoot": str,
             "wrapperPath": str, "rootPid": int, "commandHash": str, "startedAt": int,
             "state": str}


def json_save(state_dir: Path, lease: dict[str, Any]) -> None:
    """The same cold save with the stdlib: lock, read, validate, upsert, encode, durable write."""
    path = state_dir / LEASE_FILE_NAME
    with exclusive_lock(state_dir / (LEASE_FILE_NAME + ".lock")):
        doc = json.loads(path.read_bytes())
        if doc.get("version") != 1:
            raise ValueError("version")
        out: list[dict[str, Any]] = []
        for entry in doc["leases"]:
            for key, typ in _REQUIRED.items():
                if not isinstance(entry.get(key), typ):
                    raise ValueError(key)
            LeaseState(entry["state"])
            if entry["leaseId"] != lease["leaseId"]:
                out.append(entry)
        out.append(lease)
        atomic_write_bytes(path, json.dumps({"version": 1, "leases": out}).encode() + b"\n")


def against(fn: Any, floor: Any, rounds: int) -> tuple[list[float], list[float]]:
    """``rounds`` timings of ``fn`` and of ``floor``, taken alternately (the disk's pace
    drifts during a run)."""
    ours: list[float] = []
    base: list[float] = []
    for _ in range(rounds):
        ours += timed(fn, 1)
        base += timed(floor, 1)
    return ours, base


def timed(fn: Any, rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leases", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    n, rounds = args.leases, args.rounds
    leases = make_leases(n)
    oks = []
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "warm"
        seed_file(state, leases)
        store = SyncLeaseStore(state)
        store.save(new_lease(gateway_instance_id="gw", session_key="warm-up", wrapper_root="/w",
                             command="c"))
        size = (state / LEASE_FILE_NAME).stat().st_size
        body = (state / LEASE_FILE_NAME).read_bytes()
        def bare() -> None:
            atomic_write_bytes(Path(tmp) / "floor.json", body)

        saves, floor = against(lambda: store.save(new_lease(
            gateway_instance_id="gw", session_key="b", wrapper_root="/w", command="c")),
            bare, rounds)
        m_save, m_floor = median(saves), median(floor)
        oks.append(result(
            f"lease_store.warm_save.{n}", f"{m_save * 1e3:.2f} ms ({size // 1024} KiB file)",
            f"bare durable write {m_floor * 1e3:.2f} ms", m_save / m_floor, "<= 1.3x",
            m_save <= 1.3 * m_floor,
        ))

        other = SyncLeaseStore(state)
        turn = [store, other]

        def alternate() -> None:
            turn.reverse()
            turn[0].save(new_lease(gateway_instance_id="gw", session_key="t", wrapper_root="/w",
                                   command="c"))

        alternate()
        alternate()
        both, floor2 = against(alternate, bare, rounds)
        m_both, m_floor2 = median(both), median(floor2)
        oks.append(result(
            f"lease_store.two_writers.{n}", f"{m_both * 1e3:.2f} ms per save",
            f"bare durable write {m_floor2 * 1e3:.2f} ms", m_both / m_floor2, "<= 1.3x",
            m_both <= 1.3 * m_floor2,
        ))

        cold_state = Path(tmp) / "cold"
        seed_file(cold_state, leases)

        def cold_msgspec() -> None:
            SyncLeaseStore(cold_state).save(new_lease(
                gateway_instance_id="gw", session_key="c", wrapper_root="/w", command="c"))

        def cold_json() -> None:
            fresh = new_lease(gateway_instance_id="gw", session_key="c", wrapper_root="/w",
                              command="c")
            json_save(cold_state, msgspec.to_builtins(fresh))

        ours: list[float] = []
        theirs: list[float] = []
        for _ in range(3):  # alternate, so both sides share the machine's noise
            ours += timed(cold_msgspec, max(3, rounds // 3))
            theirs += timed(cold_json, max(3, rounds // 3))
        m_ours, m_json = median(ours), median(theirs)
        oks.append(result(
            f"lease_store.cold_save.{n}.msgspec_vs_json", f"{m_ours * 1e3:.2f} ms",
            f"stdlib json {m_json * 1e3:.2f} ms", m_json / m_ours, ">= 2x faster",
            m_json / m_ours >= 2.0,
        ))
    return 0 if all(oks) else 1


if __name__ == "__main__":
    sys.exit(main())
