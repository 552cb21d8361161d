"""``acpx-trio config show|init``: the effective config and where each value came from, or a
commented starter file.

``show`` validates the merged config as a run would (a bad value exits 2 naming the field and
the file) and masks credentials.  ``init`` never replaces a file without ``--force`` and never
writes through a symlink; the file is created 0600.
"""

from __future__ import annotations

import msgspec
import trio

from acpx_trio._cli.exits import EXIT_OK
from acpx_trio._cli.options import Options
from acpx_trio._cli.output import Output, format_table
from acpx_trio._store.config_files import (
    ConfigLayers,
    describe,
    project_config_path,
    user_config_path,
    write_starter,
)

__all__ = ["config_command"]

_encoder = msgspec.json.Encoder()


def _shown(value: object) -> str:
    return _encoder.encode(value).decode()


async def config_command(action: str, opts: Options, *, project: bool, force: bool) -> int:
    """Run ``config show`` or ``config init`` (see the module docstring)."""
    out = Output()
    if action == "init":
        path = project_config_path(opts.cwd) if project else user_config_path()
        await trio.to_thread.run_sync(lambda: write_starter(path, force=force))
        if opts.json:
            await out.emit(_shown({"written": str(path)}))
        else:
            await out.emit(f"wrote {path} (edit it; `acpx-trio config show` prints the result)")
        return EXIT_OK
    layers = opts.layers or ConfigLayers(raw=dict(opts.raw_config), sources={})
    settings = describe(layers)
    if opts.json:
        for s in settings:
            out.write(_shown(s) + "\n")
    else:
        read = ", ".join(layers.files) or "none (defaults only)"
        out.write(f"config files read (later wins): {read}\n")
        rows = [(s.key, _shown(s.value), s.source) for s in settings]
        out.write(format_table(rows, ("KEY", "VALUE", "SOURCE")) + "\n")
    await out.drain()
    return EXIT_OK
