"""Processes acpx-trio starts and kills: identity proofs (``identity``), fast ``/proc`` scans
(``scan``), the pure reap planner with group/session rules (``reap_plan``), signalling
(``reaper_os``), the waves (``waves``), the reaper's entry points (``reaper``), the
owner-death watchdog (``watchdog``, also ``python -m acpx_trio._process.watchdog``), cgroup
v2 detection (``cgroup``), the shared process helpers (``tools``), the owner tag of a launch
(``owner_tag``), the one owned-process launch shared by agents and terminals (``owned``:
watchdog armed, lease saved first, tagged own-session spawn, lease completion) and one agent
process with its lease and ACP connection (``agent``).

Owns: every signal acpx-trio sends and every proof that a process is ours.
May import: ``acpx_trio._store`` (leases, config defaults), ``acpx_trio._acp`` (the wire of an
agent), ``acpx_trio._errors``, ``acpx_trio._log``.  Never the runtime, the service or the CLI.
"""
