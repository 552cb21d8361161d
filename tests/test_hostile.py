"""Short in-suite versions of ``benchmarks/soak.py`` scenarios ``files`` and ``agents``.

Full-size runs: ``python benchmarks/soak.py --scenario files`` (200 hypothesis-generated
files) and ``--scenario agents``.
"""

from __future__ import annotations

import pytest
from _soak_agents import run_agents
from _soak_files import run_files
from _soak_helpers import assert_clean

pytestmark = pytest.mark.slow


async def test_hostile_lease_files_never_break_startup_or_signal_anyone() -> None:
    """Wrong shapes, truncations, byte flips, a symlink and hypothesis-generated files: start-up
    succeeds, unreadable files are quarantined with a warning, open leases are kept, and no
    process is signalled."""
    result = await run_files(8, seed=7, truncated=4, huge_file=False)
    assert_clean(result)
    assert result.cycles >= 8 + 4


async def test_huge_lease_files_start_quickly() -> None:
    """32 MiB of garbage is quarantined; 50,000 invalid entries are skipped; 100,000 leases
    are read, reaped and pruned."""
    result = await run_files(0, seed=7, fixed=False, truncated=0, huge_file=True)
    assert_clean(result)


async def test_hostile_agents_end_every_turn_and_leave_no_process() -> None:
    """crash, hang, garbage, a 64 MiB line, SIGTERM ignored, stdout closed with stdin open, a
    flood while we cancel: typed final events in time, bounded memory, no process left."""
    result = await run_agents(1, seed=7, turn_timeout=1.5)
    assert_clean(result)
    assert result.cycles == 1
