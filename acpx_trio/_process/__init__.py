"""Processes acpx-trio starts and kills: identity proofs (``identity``), the pure reap
planner (``reap_plan``), signalling (``reaper_os``), the reaper (``reaper``), the shared
process helpers (``tools``) and one agent process with its lease and ACP connection
(``agent``).

Owns: every signal acpx-trio sends and every proof that a process is ours.
May import: ``acpx_trio._store`` (leases, config defaults), ``acpx_trio._acp`` (the wire of an
agent), ``acpx_trio._errors``, ``acpx_trio._log``.  Never the runtime, the service or the CLI.
"""
