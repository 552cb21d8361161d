"""The environment-block readers of the tag scans (``/proc/PID/environ``), checked against
the plain reading they replace (split the block at its NULs, look at every entry) on any
block, repeated, cut, empty and look-alike variables included: the same entries, tags and
lease ids; the gateway check answers ``None`` (ask the command line) exactly when no entry
names the variable (the old one also stopped at the name seen inside another value)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from acpx_trio._process.tags import (
    GATEWAY_ENV_KEY,
    LEASE_ENV_KEY,
    OWNER_ENV_KEY,
    _clean,
    environ_entries,
    gateway_in_environ,
    lease_ids_in_environ,
    tags_from_environ,
)

KEYS = [k.encode() + b"=" for k in (LEASE_ENV_KEY, GATEWAY_ENV_KEY, OWNER_ENV_KEY)]
LEASE, GATEWAY, OWNER = KEYS
# values that look like tags, or like other entries' starts (never a NUL: it ends an entry)
values = st.one_of(
    st.sampled_from([b"", b" ", b"gw-1", b"gw-2", b"x\xff", *KEYS, GATEWAY + b"gw-1"]),
    st.binary(max_size=12).map(lambda b: b.replace(b"\0", b"")),
)
names = st.sampled_from([*KEYS, b"A=", b"X" + LEASE, b"X" + GATEWAY, GATEWAY[:-1], b""])
blocks = st.builds(
    lambda entries, cut: b"".join(n + v + b"\0" for n, v in entries)[: -1 if cut else None],
    st.lists(st.tuples(names, values), max_size=8),
    st.booleans(),
)


def plain_tags(data: bytes) -> tuple[str | None, ...]:
    out: dict[bytes, str | None] = dict.fromkeys(KEYS)
    for entry in data.split(b"\0"):
        for key in KEYS:
            if entry.startswith(key):
                out[key] = _clean(entry[len(key):].decode("utf-8", "replace"))
    return tuple(out[k] for k in KEYS)


@given(blocks)
def test_tags_are_each_variables_last_entry(data: bytes) -> None:
    assert tags_from_environ(data) == plain_tags(data)


@given(blocks, st.sampled_from(KEYS))
def test_entries_are_the_blocks_entries_with_that_name(data: bytes, key: bytes) -> None:
    parts = data.split(b"\0")
    expected = [(e[len(key):], i < len(parts) - 1) for i, e in enumerate(parts)
                if e.startswith(key)]
    assert environ_entries(data, key) == expected


@given(blocks)
def test_lease_ids_are_every_complete_entrys(data: bytes) -> None:
    expected = {e[len(LEASE):] for e in data.split(b"\0")[:-1] if e.startswith(LEASE)}
    assert lease_ids_in_environ(data) == expected


@given(blocks, st.sampled_from([b"gw-1", b"gw-2", b""]))
def test_gateway_answer(data: bytes, value: bytes) -> None:
    parts = data.split(b"\0")
    if not any(e.startswith(GATEWAY) for e in parts):
        assert gateway_in_environ(data, value) is None  # no such variable: ask the command line
    else:
        assert gateway_in_environ(data, value) is any(e == GATEWAY + value for e in parts[:-1])
