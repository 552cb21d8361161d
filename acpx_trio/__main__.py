"""``python -m acpx_trio`` is the ``acpx-trio`` command."""

from acpx_trio._cli.main import main

raise SystemExit(main())
