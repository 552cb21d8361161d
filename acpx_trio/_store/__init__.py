"""Everything acpx-trio keeps on disk: private files and dirs (``fsio``), the lease file
(``leases``), session records (``sessions``), the gateway instance id (``instance``) and the
plugin config (``config``).

Owns: file formats, atomic writes, locks, quarantine of damaged files, permission checks.
May import: ``acpx_trio._errors`` only (plus the standard library, msgspec).  Nothing here
knows about processes, the ACP wire, the runtime or the service.
"""
