"""Test helpers for acpx-trio users and its own test suite.

- ``python -m acpx_trio.testing.mock_agent``: the bundled ACP v1 agent with fault injection
  (see :mod:`acpx_trio.testing.mock_agent`).

Keep this module free of heavy imports: the mock agent is imported through it and must start
fast.
"""
