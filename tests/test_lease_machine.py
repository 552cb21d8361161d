"""A hypothesis state machine over the lease store, checked against a plain-dict model."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import msgspec
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

from acpx_trio import LeaseStateError
from acpx_trio._store.lease_model import check_transition
from acpx_trio._store.lease_snapshot import LeaseSnapshot, held_by
from acpx_trio.lowlevel import LeaseState, SyncLeaseStore, new_lease

STATES = list(LeaseState)
GATEWAYS = ["gw-a", "gw-b"]


class LeaseStoreMachine(RuleBasedStateMachine):
    ids = Bundle("ids")

    @initialize()
    def setup(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="lease-machine-"))
        self.store = SyncLeaseStore(self.dir, max_final=10_000)
        # A second writer on the same state dir (CLI next to a warm owner): every change it
        # makes must be seen by the first store's kept snapshot, and vice versa.
        self.other = SyncLeaseStore(self.dir, max_final=10_000)
        self.model: dict[str, tuple[str, LeaseState]] = {}
        self.finals_seen: dict[str, LeaseState] = {}

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(target=ids, gw=st.sampled_from(GATEWAYS), pid=st.integers(0, 2**22))
    def save_new(self, gw: str, pid: int) -> str:
        x = msgspec.structs.replace(
            new_lease(gateway_instance_id=gw, session_key="k", wrapper_root=self.dir,
                      command="a"),
            root_pid=pid, owner_pid=os.getpid() if pid % 2 else None,
        )
        self.store.save(x)
        self.model[x.lease_id] = (gw, LeaseState.OPEN)
        return x.lease_id

    @rule(lease_id=ids, state=st.sampled_from(STATES))
    def mark(self, lease_id: str, state: LeaseState) -> None:
        gw, current = self.model[lease_id]
        try:
            check_transition(lease_id, current, state)
            legal = True
        except LeaseStateError:
            legal = False
        if legal:
            updated = self.store.mark_state(lease_id, state)
            assert updated is not None and updated.state is state
            self.model[lease_id] = (gw, state)
        else:
            try:
                self.store.mark_state(lease_id, state)
            except LeaseStateError:
                pass
            else:
                raise AssertionError(f"illegal move {current} -> {state} was accepted")

    @rule(lease_id=ids, pid=st.integers(1, 2**22))
    def resave_with_pid(self, lease_id: str, pid: int) -> None:
        current = self.store.load(lease_id)
        assert current is not None
        self.store.save(msgspec.structs.replace(current, root_pid=pid))
        assert self.store.load(lease_id).root_pid == pid  # type: ignore[union-attr]

    @rule(target=ids, gw=st.sampled_from(GATEWAYS), owner=st.sampled_from([None, 1, 0]))
    def save_new_via_other_store(self, gw: str, owner: int | None) -> str:
        x = new_lease(gateway_instance_id=gw, session_key="k", wrapper_root=self.dir,
                      command="a")
        if owner is not None:  # 0: this process owns it; 1: another process does
            x = msgspec.structs.replace(x, owner_pid=owner or os.getpid())
        self.other.save(x)
        self.model[x.lease_id] = (gw, LeaseState.OPEN)
        return x.lease_id

    @rule(lease_id=ids, state=st.sampled_from([LeaseState.CLOSING, LeaseState.CLOSED]))
    def mark_via_other_store(self, lease_id: str, state: LeaseState) -> None:
        gw, current = self.model[lease_id]
        try:
            check_transition(lease_id, current, state)
        except LeaseStateError:
            return
        self.other.mark_state(lease_id, state)
        self.model[lease_id] = (gw, state)

    @rule(lease_id=consumes(ids))
    def forget_handle(self, lease_id: str) -> None:
        """Drop the handle only; the lease stays in the file and in the model."""

    @rule()
    def reload_from_disk(self) -> None:
        self.store = SyncLeaseStore(self.dir, max_final=10_000)

    @invariant()
    def file_decodes_and_matches_model(self) -> None:
        if not hasattr(self, "store"):
            return
        on_disk = {x.lease_id: (x.gateway_instance_id, x.state) for x in self.store.list_all()}
        assert on_disk == self.model
        assert self.store.quarantined == []

    @invariant()
    def both_stores_agree_and_held_map_is_exact(self) -> None:
        if not hasattr(self, "store"):
            return
        for store in (self.store, self.other):
            on_disk = {x.lease_id: (x.gateway_instance_id, x.state) for x in store.list_all()}
            assert on_disk == self.model
            snap = store._snap
            assert isinstance(snap, LeaseSnapshot)
            pid = os.getpid()
            brute = {
                k: v for k, v in snap.leases.items()
                if not v.state.is_final and v.owner_pid == pid
            }
            assert held_by(snap, pid) == brute
            assert store._held == brute

    @invariant()
    def final_states_never_change(self) -> None:
        if not hasattr(self, "model"):
            return
        for lease_id, (_, state) in self.model.items():
            if lease_id in self.finals_seen:
                assert state is self.finals_seen[lease_id]
            elif state.is_final:
                self.finals_seen[lease_id] = state

    @invariant()
    def list_open_matches_model(self) -> None:
        if not hasattr(self, "store"):
            return
        for gw in [None, *GATEWAYS]:
            expected = {
                i for i, (g, s) in self.model.items()
                if s in (LeaseState.OPEN, LeaseState.CLOSING) and (gw is None or g == gw)
            }
            assert {x.lease_id for x in self.store.list_open(gw)} == expected


LeaseStoreMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None
)
TestLeaseStoreMachine = LeaseStoreMachine.TestCase
