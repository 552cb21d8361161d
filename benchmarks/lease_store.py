"""Encode + decode a 1,000-lease file: msgspec (what the store uses) vs stdlib json.

Both sides do the same work in the same run: decode bytes into validated lease records and
encode them back.  The stdlib side builds the same records with the same checks by hand.
Run: python benchmarks/lease_store.py
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

import msgspec

from acpx_trio import LeaseState, ProcessLease, new_lease
from acpx_trio._store.leases import _LeaseFileOut

N_LEASES = 1000
ROUNDS = 30


def make_file() -> bytes:
    leases = [
        msgspec.structs.replace(
            new_lease(gateway_instance_id="gw", session_key=f"agent:codex:acp:{i}",
                      wrapper_root="/state/acpx", command="npx codex-acp"),
            root_pid=10_000 + i, root_create_time=1.7e9 + i, owner_pid=42,
        )
        for i in range(N_LEASES)
    ]
    return msgspec.json.encode(_LeaseFileOut(leases=leases))


_decoder = msgspec.json.Decoder(_LeaseFileOut)
_encoder = msgspec.json.Encoder()


def with_msgspec(data: bytes) -> bytes:
    doc = _decoder.decode(data)
    return _encoder.encode(doc)


_REQUIRED = {"leaseId": str, "gatewayInstanceId": str, "sessionKey": str, "wrapperRoot": str,
             "wrapperPath": str, "rootPid": int, "commandHash": str, "startedAt": int,
             "state": str}


def with_json(data: bytes) -> bytes:
    doc = json.loads(data)
    out: list[dict[str, Any]] = []
    for entry in doc["leases"]:
        for key, typ in _REQUIRED.items():
            if not isinstance(entry.get(key), typ):
                raise ValueError(key)
        LeaseState(entry["state"])
        out.append(dict(entry))
    return json.dumps({"version": doc["version"], "leases": out}).encode()


def bench(fn: Any, data: bytes) -> float:
    samples = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        fn(data)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> int:
    data = make_file()
    assert msgspec.json.decode(with_msgspec(data)) == msgspec.json.decode(with_json(data))
    assert isinstance(_decoder.decode(data).leases[0], ProcessLease)
    # alternate to share any machine noise fairly
    ms, js = [], []
    for _ in range(3):
        ms.append(bench(with_msgspec, data))
        js.append(bench(with_json, data))
    m, j = min(ms), min(js)
    ratio = j / m
    print(f"lease file: {N_LEASES} leases, {len(data) / 1024:.0f} KiB")
    print(f"msgspec encode+decode: {m * 1e3:8.3f} ms (median of {ROUNDS})")
    print(f"stdlib json encode+decode: {j * 1e3:8.3f} ms (median of {ROUNDS})")
    print(f"msgspec is {ratio:.1f}x faster (target >= 5x): {'PASS' if ratio >= 5 else 'FAIL'}")
    return 0 if ratio >= 5 else 1


if __name__ == "__main__":
    sys.exit(main())
