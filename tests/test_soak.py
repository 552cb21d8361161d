"""Short in-suite versions of ``benchmarks/soak.py`` scenarios (crash, owners, escape,
security).

Real processes and the real clock; every process a scenario starts is killed when it ends.
The full-size runs: ``python benchmarks/soak.py --scenario crash`` (50 cycles) and
``--scenario owners``.
"""

from __future__ import annotations

import pytest
from _soak_crash import run_crash
from _soak_escape import run_escape
from _soak_helpers import assert_clean
from _soak_owners import run_owners
from _soak_security import run_security

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("modes", [["pending", "spawn"], ["steady", "random"]])
async def test_crash_restart_leaves_nothing_and_kills_no_decoy(modes: list[str]) -> None:
    """SIGKILL a gateway right after a pending lease is saved / right after a spawn / with all
    sessions up / at a random moment: after a restart nothing tagged survives, every lease
    is final, and no decoy (same command line, reused pid, other gateway id) was touched."""
    result = await run_crash(len(modes), seed=7, kill_grace=0.3, modes=modes)
    assert_clean(result)
    assert result.cycles == len(modes)


async def test_two_gateways_on_one_lease_file_touch_only_their_own() -> None:
    """Two gateway ids churn sessions on one lease file (no lease lost); one is SIGKILLed; the
    other's start-up signals nothing of it, and its own restart reaps it."""
    result = await run_owners(1, seed=7, churn=8)
    assert_clean(result)
    assert result.cycles == 1


async def test_escape_artists_and_killed_owners_leave_nothing() -> None:
    """A pid hopper, an ``env -i`` group member and a setsid daemon per agent: gone after a
    normal close, and after their gateway is SIGKILLed with no restart (the watchdog);
    decoys with the same command lines survive; every lease is final."""
    result = await run_escape(1, seed=7)
    assert_clean(result)
    assert result.cycles == 1


async def test_security_round_read_race_and_chunked_credential_leave_nothing() -> None:
    """One ``security`` cycle: fs confinement, private modes, 500 racing reads while a
    directory flips to a symlink outside (none may return the outside file), 20 turns that
    stream a credential cut at random offsets (none may let it through)."""
    result = await run_security(1, seed=7)
    assert_clean(result)
    assert result.figures["read_race"] == "0/500"
    assert result.figures["chunked_leaks"] == "0/20"
