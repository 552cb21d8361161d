"""Clock-agnostic service: under ``MockClock(autojump_threshold=0)`` a service with a stub
runtime starts, lives an hour of virtual time (120 sweeps), and stops — no warning, no error,
no open lease, nothing left in the host nursery."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import trio
import trio.testing
from _service_helpers import ListLogger, StubFactory, StubRuntime

from acpx_trio._service.backends import BackendRegistry
from acpx_trio._service.lazy_runtime import RuntimeFactoryParams
from acpx_trio._service.service import AcpxRuntimeService, ServiceContext
from acpx_trio._store.lease_model import LeaseState, ProcessLease
from acpx_trio._store.leases import LeaseStore, SyncLeaseStore


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("OPENCLAW_SKIP_ACPX_RUNTIME", "OPENCLAW_ACPX_RUNTIME_STARTUP_PROBE"):
        monkeypatch.delenv(key, raising=False)


async def test_an_hour_of_virtual_time(
    mock_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    mock_clock.autojump_threshold = 0
    logger = ListLogger()
    factory = StubFactory()
    svc = AcpxRuntimeService(
        {"sweepIntervalSeconds": 30}, runtime_factory=factory, registry=BackendRegistry(),
        stop_timeout_seconds=5.0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        async with trio.open_nursery() as host:
            ctx = ServiceContext(
                workspace_dir=tmp_path, state_dir=tmp_path / "state", logger=logger,
                nursery=host,
            )
            t0 = trio.current_time()
            await svc.start(ctx)
            await trio.sleep(3600)
            await svc.stop(ctx)
            assert host.child_tasks == frozenset()
            assert trio.current_time() - t0 == pytest.approx(3600)
    (stub,) = factory.made
    # every 30 s for an hour (the last one may tie with the end of the sleep)
    assert stub.sweep_calls in (119, 120) and stub.aclose_calls == 1
    assert logger.at("warning") == [] and logger.at("error") == []
    assert svc.gateway_instance_id is not None
    store = LeaseStore(tmp_path / "state" / "acpx")
    assert await store.list_open(svc.gateway_instance_id) == []


class _LeasingRuntime(StubRuntime):
    """Holds one open lease (written in a worker thread when built, as a real agent's is when
    it starts) and finalises it in ``aclose`` — file work the autojumping clock cannot see, so
    the clock jumps to the stop deadline while the lease is written."""

    def __init__(self, params: RuntimeFactoryParams) -> None:
        super().__init__()
        self.store = params.lease_store
        self.lease = ProcessLease(
            lease_id="lease-clock", gateway_instance_id=params.gateway_instance_id,
            session_key="agent:clock", wrapper_root=str(params.lease_store.path.parent),
            wrapper_path="",
            root_pid=2**22 + 7, command_hash="x", started_at=1, state=LeaseState.OPEN,
        )

    async def aclose(self) -> None:
        self.aclose_calls += 1
        await self.store.mark_state(self.lease.lease_id, LeaseState.CLOSED)


async def test_cleanup_with_file_work_under_an_autojumping_clock(
    mock_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    mock_clock.autojump_threshold = 0
    logger = ListLogger()
    made: list[_LeasingRuntime] = []

    async def factory(params: RuntimeFactoryParams) -> _LeasingRuntime:
        made.append(_LeasingRuntime(params))
        await made[-1].store.save(made[-1].lease)
        return made[-1]

    # No periodic pass in this half hour (the first is due at 3600 s): the lease file changed,
    # so the first would be a full orphan sweep, file and /proc work in worker threads that
    # the clock cannot see either, still running when stop() starts whenever the disk is
    # slow (1 run in 10 under the parallel suite), and the stop's bounds would then be
    # jumped past at once.  Under test here: the runtime's own file work at start and stop.
    svc = AcpxRuntimeService({"sweepIntervalSeconds": 3600}, runtime_factory=factory,
                             registry=BackendRegistry())
    async with trio.open_nursery() as host:
        ctx = ServiceContext(
            workspace_dir=tmp_path, state_dir=tmp_path / "state", logger=logger, nursery=host
        )
        await svc.start(ctx)
        await trio.sleep(1800)
        assert svc.gateway_instance_id is not None
        store = LeaseStore(tmp_path / "state" / "acpx")
        # read on the event loop: a worker-thread read here let the clock jump to the
        # periodic pass at 3600 s, whose sweep the stop then waited for past its bounds
        # (1 run in 10 under load: a flake of this test, not of the service)
        opened = SyncLeaseStore(tmp_path / "state" / "acpx").list_open(svc.gateway_instance_id)
        assert [x.lease_id for x in opened] == ["lease-clock"]
        await svc.stop(ctx)
        assert host.child_tasks == frozenset()
    assert logger.at("warning") == [] and logger.at("error") == []
    assert await store.list_open(svc.gateway_instance_id) == []
