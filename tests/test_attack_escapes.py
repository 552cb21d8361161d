"""Adversarial review (issue 18): escape variants started by an agent, through an agent
close, in process-group mode.  Caught: the classic hopper (plain, SIGTERM-ignoring; see
test_reap_hopper) and the hopper that ``setsid()``s after every fork (it keeps its tags).
Not caught in process-group mode (strict xfails, measured 30/30 escapes on branch
``reaping`` 29a1473): a direct child that ``setsid()``s with an empty environment, and a
``setsid`` + double-fork daemon with an empty environment — and each such lease is still
recorded ``closed``.  Full tables: benchmarks/attack/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from _attack_helpers import one_close

from acpx_trio._process.cgroup import probe_cgroup_kill
from acpx_trio._store.leases import LeaseState

#: where a leaf cgroup per agent is made (cgroup.kill usable), these variants are contained;
#: in process-group mode they stay strict xfails (the documented limit)
CGROUP = probe_cgroup_kill().usable
#: trials per run; ``ACPX_ATTACK_TRIALS=30`` for the measurement
TRIALS = int(os.environ.get("ACPX_ATTACK_TRIALS", "3"))

PG_LIMIT = ("process-group mode (branch reaping 29a1473): an untagged process in its own "
            "session is not provably ours; 30/30 escapes through close, exec, "
            "terminal/release and owner death + reap; needs the cgroup leaf (issue 18)")


async def _trials(tmp_path: Path, variant: str, n: int) -> None:
    escapes = closed_escapes = decoy_deaths = 0
    for i in range(n):
        d = tmp_path / str(i)
        d.mkdir()
        escaped, decoys_ok, state = await one_close(d, variant)
        escapes += escaped
        closed_escapes += escaped and state is LeaseState.CLOSED
        decoy_deaths += not decoys_ok
    assert decoy_deaths == 0
    assert (escapes, closed_escapes) == (0, 0), f"{variant}: {escapes}/{n} escaped"


async def test_setsid_each_fork_hopper_never_escapes_close(tmp_path: Path) -> None:
    """A hopper that ``setsid()``s after every fork (a new session and group at each hop,
    tags kept): caught by every close; decoys (same command line, untagged or tagged with
    another gateway) survive."""
    await _trials(tmp_path, "hopper-setsid-each", 5)


@pytest.mark.slow
async def test_setsid_each_fork_hopper_never_escapes_close_30(tmp_path: Path) -> None:
    await _trials(tmp_path, "hopper-setsid-each",
                  int(os.environ.get("ACPX_ATTACK_TRIALS", "30")))


@pytest.mark.xfail(not CGROUP, strict=True, reason="setsid-envclear: " + PG_LIMIT)
async def test_setsid_envclear_child_does_not_escape_close(tmp_path: Path) -> None:
    """A direct child of the agent that ``setsid()``s with an empty environment (no double
    fork): must die with the agent."""
    await _trials(tmp_path, "setsid-envclear", TRIALS)


@pytest.mark.xfail(not CGROUP, strict=True, reason="daemon-emptyenv: " + PG_LIMIT)
async def test_emptyenv_double_fork_daemon_does_not_escape_close(tmp_path: Path) -> None:
    """A child that double-forks and ``setsid()``s with an empty environment: must die with
    the agent."""
    await _trials(tmp_path, "daemon-emptyenv", TRIALS)
