"""Short in-suite version of ``benchmarks/soak.py`` scenario ``security``."""

from __future__ import annotations

from pathlib import Path

import pytest
from _soak_common import ScenarioResult, new_marker, sweep
from _soak_helpers import assert_clean
from _soak_security import can_switch_user, fs_round, other_user_round

pytestmark = pytest.mark.slow


async def test_fs_escapes_are_refused_and_state_stays_private(tmp_path: Path) -> None:
    """``..``, absolute paths outside the cwd, symlink escapes, NUL bytes and a FIFO are all
    refused (and legitimate requests work); the state dir stays 0700 and its files 0600
    after every operation."""
    result = ScenarioResult("security")
    refused, attempted = await fs_round(result, tmp_path, 0)
    assert_clean(result)
    assert refused == attempted > 0


@pytest.mark.skipif(not can_switch_user(), reason="needs root and setpriv to run as nobody")
async def test_other_users_processes_with_our_tags_are_never_signalled(tmp_path: Path) -> None:
    """Processes of uid 65534 carrying our exact tags (a verified lease root, a tag-only match)
    survive start-up reaping, the orphan sweep and a direct tree cleanup."""
    result = ScenarioResult("security")
    marker = new_marker()
    try:
        assert await other_user_round(result, tmp_path, marker) == 2
    finally:
        sweep([], marker)  # the round kills them itself; this is the belt to its braces
    assert_clean(result)
