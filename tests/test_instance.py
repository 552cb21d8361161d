"""Gateway instance id: created once, reused, private modes, never silently replaced."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from acpx_trio import GatewayInstanceIdError, resolve_gateway_instance_id
from acpx_trio._errors import StateFileError
from acpx_trio.lowlevel import SyncLeaseStore, new_lease, resolve_gateway_instance_id_sync


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


async def test_created_once_and_reused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = await resolve_gateway_instance_id(state)
    second = await resolve_gateway_instance_id(state)
    assert first == second
    assert len(first) == 36  # a UUID
    f = state / "gateway-instance-id"
    assert f.read_text() == first + "\n"
    assert _mode(f) == 0o600
    assert _mode(state) == 0o700


def test_existing_id_is_kept_and_trimmed(tmp_path: Path) -> None:
    (tmp_path / "gateway-instance-id").write_text("  my-gateway-1  \n")
    assert resolve_gateway_instance_id_sync(tmp_path) == "my-gateway-1"


def test_loose_modes_are_tightened(tmp_path: Path) -> None:
    state = tmp_path / "s"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    (state / "gateway-instance-id").write_text("abc\n")
    os.chmod(state / "gateway-instance-id", 0o644)
    resolve_gateway_instance_id_sync(state)
    assert _mode(state) == 0o700
    assert _mode(state / "gateway-instance-id") == 0o600


@pytest.mark.parametrize("content", ["", "   \n", "not an id!\n", "\x00\x01garbage"])
def test_empty_or_garbled_without_leases_fails_loudly(tmp_path: Path, content: str) -> None:
    f = tmp_path / "gateway-instance-id"
    f.write_text(content)
    with pytest.raises(GatewayInstanceIdError) as info:
        resolve_gateway_instance_id_sync(tmp_path)
    assert info.value.code == "ACPX_GATEWAY_ID_INVALID"
    assert "cannot be recovered" in str(info.value)
    assert f.read_text() == content  # never silently replaced


def test_empty_file_recovered_from_lease_file(tmp_path: Path) -> None:
    store = SyncLeaseStore(tmp_path / "acpx")
    for _ in range(3):
        store.save(new_lease(gateway_instance_id="gw-old", session_key="k",
                             wrapper_root=tmp_path / "acpx", command="agent"))
    (tmp_path / "gateway-instance-id").write_text("")
    assert resolve_gateway_instance_id_sync(tmp_path) == "gw-old"
    assert (tmp_path / "gateway-instance-id").read_text() == "gw-old\n"
    assert _mode(tmp_path / "gateway-instance-id") == 0o600


def test_ambiguous_lease_file_fails(tmp_path: Path) -> None:
    store = SyncLeaseStore(tmp_path / "acpx")
    for gw in ("gw-a", "gw-b"):
        store.save(new_lease(gateway_instance_id=gw, session_key="k",
                             wrapper_root=tmp_path / "acpx", command="agent"))
    (tmp_path / "gateway-instance-id").write_text("")
    with pytest.raises(GatewayInstanceIdError) as info:
        resolve_gateway_instance_id_sync(tmp_path)
    assert "2 gateways" in str(info.value)


def test_read_error_other_than_missing_is_raised(tmp_path: Path) -> None:
    # a directory where the id file belongs: a typed error naming the path (issue #11; it
    # used to be a raw IsADirectoryError)
    (tmp_path / "gateway-instance-id").mkdir()
    with pytest.raises(StateFileError, match="gateway-instance-id: is a directory"):
        resolve_gateway_instance_id_sync(tmp_path)


async def test_concurrent_first_starts_agree(tmp_path: Path) -> None:
    ids: list[str] = []

    async def one() -> None:
        ids.append(await resolve_gateway_instance_id(tmp_path / "s"))

    async with trio.open_nursery() as nursery:
        for _ in range(16):
            nursery.start_soon(one)
    assert len(set(ids)) == 1


def test_two_processes_first_start_agree(tmp_path: Path) -> None:
    code = (
        "import sys; from acpx_trio.lowlevel import resolve_gateway_instance_id_sync as r;"
        "print(r(sys.argv[1]))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "s")],
                         stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(4)
    ]
    outs = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(outs) == 1
    assert (tmp_path / "s" / "gateway-instance-id").read_text().strip() in outs


def test_peek_has_no_side_effects(tmp_path: Path) -> None:
    from acpx_trio._store.instance import peek_gateway_instance_id

    state = tmp_path / "none-yet"
    assert peek_gateway_instance_id(state) is None
    assert not state.exists()
    made = resolve_gateway_instance_id_sync(state)
    assert peek_gateway_instance_id(state) == made
    (state / "gateway-instance-id").write_text("")
    with pytest.raises(GatewayInstanceIdError):
        peek_gateway_instance_id(state)
    assert (state / "gateway-instance-id").read_text() == ""  # not repaired by a peek
