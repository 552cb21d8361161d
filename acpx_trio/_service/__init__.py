"""The embedded runtime service: backends and the registry (``backends``), the lazily built
default runtime (``lazy_runtime``), health (``health``), background work (``tasks``),
doctor/probe message formatting (``doctor_format``) and :class:`AcpxRuntimeService`
(``service``).

Owns: the service's task tree, start-up reaping, registration, stop.
May import: ``acpx_trio._runtime`` (only lazily, for the default runtime), ``acpx_trio._process``,
``acpx_trio._store``, ``acpx_trio._events``, ``acpx_trio._errors``.  Never the CLI.
"""
