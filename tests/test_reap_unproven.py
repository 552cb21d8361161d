"""A lease is recorded ``closed`` only on a proven-clean close: when the scans keep finding a
process to signal until the time budget runs out (a hopper that forks a successor at every
signal, forever), the cleanup says ``unproven`` and the lease stays ``closing``.  Pure
logic over the fake process table, in trio time (MockClock)."""

from __future__ import annotations

import signal
from collections.abc import Callable

import msgspec
import trio
import trio.testing

from acpx_trio._process.gateway_reap import reap_gateway
from acpx_trio._process.reap_entry import cleanup_owned_process_tree
from acpx_trio._store.lease_model import LeaseState, ProcessLease, new_lease
from acpx_trio.testing.fake_processes import FakeProcess, FakeProcessTable

GW = "gw-unproven"


def _endless_hopper(clock: trio.testing.MockClock) -> Callable[
    [FakeProcessTable, FakeProcess, int], None
]:
    """Every signal it gets, it has already forked a successor (tags inherited); each hop
    takes 10 ms of trio time."""

    def on_signal(table: FakeProcessTable, proc: FakeProcess, sig: int) -> None:
        clock.jump(0.01)
        child = table.spawn(parent=None, lease_id=proc.lease_id,
                            gateway_instance_id=proc.gateway_instance_id, cmdline=proc.cmdline)
        child.on_signal = on_signal
        table.exit(proc)

    return on_signal


class _Store:
    def __init__(self, leases: list[ProcessLease]) -> None:
        self.leases = {x.lease_id: x for x in leases}

    async def list_all(self) -> list[ProcessLease]:
        await trio.lowlevel.checkpoint()
        return list(self.leases.values())

    async def mark_states(
        self, updates: dict[str, LeaseState], *, skip_final: bool = False
    ) -> dict[str, ProcessLease]:
        await trio.lowlevel.checkpoint()
        for k, v in updates.items():
            if skip_final and self.leases[k].state.is_final:
                continue
            self.leases[k] = msgspec.structs.replace(self.leases[k], state=v)
        return dict(self.leases)


async def test_cleanup_that_never_goes_quiet_is_unproven(
    autojump_clock: trio.testing.MockClock,
) -> None:
    table = FakeProcessTable()
    hopper = table.spawn(lease_id="L", gateway_instance_id=GW)
    hopper.on_signal = _endless_hopper(autojump_clock)
    result = await cleanup_owned_process_tree(
        root_pid=0, expected_lease_id="L", expected_gateway_instance_id=GW, grace=0.1,
        deps=table.deps(),
    )
    assert result.unproven and len(result.terminated_pids) > 3

    calm = FakeProcessTable()
    calm.spawn(lease_id="L", gateway_instance_id=GW)
    done = await cleanup_owned_process_tree(
        root_pid=0, expected_lease_id="L", expected_gateway_instance_id=GW, grace=0.1,
        deps=calm.deps(),
    )
    assert not done.unproven and len(done.terminated_pids) == 1
    assert sum(1 for s in calm.signals if s.sig == signal.SIGTERM) == 1


async def test_reap_leaves_an_unproven_lease_closing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    table = FakeProcessTable()
    lease = new_lease(gateway_instance_id=GW, session_key="k", wrapper_root="/w",
                      command=["x"])
    hopper = table.spawn(lease_id=lease.lease_id, gateway_instance_id=GW)
    hopper.on_signal = _endless_hopper(autojump_clock)
    store = _Store([lease])
    report = await reap_gateway(GW, store, grace=0.1, deps=table.deps())
    assert report.unproven and not report.ok
    assert report.left_alone == {lease.lease_id: "unproven"}
    assert store.leases[lease.lease_id].state is LeaseState.CLOSING
    assert report.closed_lease_ids == [] and report.lost_lease_ids == []
