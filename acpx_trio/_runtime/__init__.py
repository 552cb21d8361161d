"""The ACP runtime: agents (``agents``), the session factory and control calls
(``handshake``), a live session (``live_session``), turns (``turns``), what agents may ask of
us (``permissions``), update mapping to events (``update_map``) and :class:`AcpxRuntime`
itself (``runtime``).

Owns: sessions and turns, and every ACP request an agent sends us.
May import: ``acpx_trio._process``, ``acpx_trio._acp``, ``acpx_trio._store``,
``acpx_trio._events``, ``acpx_trio._errors``.  Never the service or the CLI.
"""
