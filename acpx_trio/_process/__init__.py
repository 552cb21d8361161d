"""Processes acpx-trio starts and kills: the ownership tags a launch carries (``tags``),
identity proofs (``identity``), fast ``/proc`` scans
(``scan``, ``shared_scan``), the pure reap planner with its proofs and group/session rules
(``reap_plan``), the operating-system side of signalling and waiting (``reaper_os``), the reaper
itself (``reaper``: the waves; ``reap_entry``: the entry points for a lease, the orphans and
the open leases), one reap of a gateway (``gateway_reap``;
what it reports, ``reap_report``; its cgroup side, the reaped leases' leaves and the leftover
ones, ``leaf_reap``),
the owner-death watchdog (``watchdog``; its process runs ``watchdog_wait``, a standard-library
script until the owner has lived half a second or died, then ``watchdog_reap``),
containment by leaf cgroups (``cgroup``),
how a leaf's processes are ended, ours only and with the leaf frozen (``leaf_end``), and
launches already inside their leaves (``spare_leaf``), the spares and launches this process
holds now (``held``: its own reaps leave them alone), the shared process helpers
(``tools``), the owner tag of a launch (``owner_tag``), the one owned-process launch shared
by agents and terminals (``owned``: watchdog armed, lease saved first, leaf cgroup, tagged
own-session spawn, lease completion) and one agent process with its lease and ACP
connection (``agent``).

Owns: every signal acpx-trio sends and every proof that a process is ours.
May import: ``acpx_trio._store`` (leases, config defaults), ``acpx_trio._acp`` (the wire of an
agent), ``acpx_trio._errors``, ``acpx_trio._log``.  Never the runtime, the service or the CLI.
"""
