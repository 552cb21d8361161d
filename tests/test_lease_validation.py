"""A lease can never be written in a shape a reader drops (issue 20): bad fields fail at
construction with a typed error naming the field; a text state becomes a LeaseState."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acpx_trio import AcpxError, LeaseState, LeaseStore, LeaseValueError, ProcessLease

GOOD = dict(lease_id="l1", gateway_instance_id="gw", session_key="s", wrapper_root="/w",
            wrapper_path="", root_pid=0, command_hash="h", started_at=1)


@pytest.mark.parametrize(("field", "value"), [
    ("state", "bogus"), ("root_pid", "x"), ("root_pid", -1), ("root_pid", True),
    ("lease_id", ""), ("gateway_instance_id", 3), ("started_at", 1.5), ("owner_pid", "7"),
])
def test_bad_fields_fail_at_construction(field: str, value: object) -> None:
    kwargs: dict[str, object] = {**GOOD, "state": "open", field: value}
    with pytest.raises(LeaseValueError) as info:
        ProcessLease(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field and isinstance(info.value, AcpxError)
    assert isinstance(info.value, ValueError) and info.value.code == "ACPX_LEASE_INVALID"


async def test_text_state_is_a_lease_state_after_save_and_load(tmp_path: Path) -> None:
    lease = ProcessLease(**GOOD, state="open")  # type: ignore[arg-type]
    assert lease.state is LeaseState.OPEN and not lease.state.is_final
    store = LeaseStore(tmp_path / "acpx" / "process-leases.json")
    await store.save(lease)
    loaded = await store.load("l1")
    assert loaded is not None and loaded.state is LeaseState.OPEN and not loaded.state.is_final


@pytest.mark.parametrize("value", [-5.0, float("nan"), float("inf"), 61.0])
def test_acpx_config_refuses_a_bad_kill_grace(value: float, tmp_path: Path) -> None:
    from acpx_trio import AcpxConfig, ConfigError

    with pytest.raises(ConfigError) as info:
        AcpxConfig(cwd=str(tmp_path), state_dir=str(tmp_path),
                   kill_grace_seconds=value)
    assert "killGraceSeconds" in str(info.value)


_VALUES: tuple[object, ...] = (None, True, False, -3, -1, 0, 1, 7, 1.5, float("nan"), "", "x",
                                "open", "bogus", *LeaseState)
_FIELDS = ("lease_id", "gateway_instance_id", "session_key", "wrapper_root", "wrapper_path",
           "root_pid", "command_hash", "started_at", "state", "process_group_id",
           "root_start_ticks", "owner_pid")


def _fast_check_agrees(changed: dict[str, object]) -> None:
    try:
        lease = ProcessLease(**{**GOOD, "state": LeaseState.OPEN, **changed})  # type: ignore[arg-type]
    except LeaseValueError:
        return
    lease._check_fields()  # raises LeaseValueError if the fast check let a bad value in
    assert isinstance(lease.state, LeaseState)


@pytest.mark.parametrize("field", _FIELDS)
def test_the_one_expression_check_accepts_only_what_the_field_rules_accept(field: str) -> None:
    """A valid lease is checked in one expression (the decode of a lease file runs it for
    every entry, with a typed state); whatever it lets through must pass the field-by-field
    rules too: every value of ``_VALUES`` in each field of a good lease."""
    for value in _VALUES:
        _fast_check_agrees({field: value})


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(_FIELDS), st.sampled_from(_VALUES), max_size=3))
def test_the_one_expression_check_agrees_on_several_changed_fields(
    changed: dict[str, object],
) -> None:
    _fast_check_agrees(changed)
