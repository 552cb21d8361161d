"""Runs the command line in this process with a Ctrl-C that lands at a chosen moment of its
loading: ``python _sigint_child.py WHEN ARGS...`` where WHEN is ``import:<module>`` (SIGINT
sent to ourselves as that module's import starts), ``call:<function name>`` (as that
function is entered, e.g. ``parse_known_args``) or ``return:main`` (as the command line's
``main`` returns: the command has finished).  Prints ``loaded: <module>`` for each
module of interest fully imported at the end, then exits with the command's code."""

from __future__ import annotations

import builtins
import os
import signal
import sys
from types import FrameType
from typing import Any

when, args = sys.argv[1], sys.argv[2:]
kind, _, target = when.partition(":")
fired = False


def _fire() -> None:
    global fired
    if not fired:
        fired = True
        os.kill(os.getpid(), signal.SIGINT)


real_import = builtins.__import__


def _import(name: str, globals_: Any = None, locals_: Any = None, fromlist: Any = (),
            level: int = 0) -> Any:
    names = {name, *(f"{name}.{item}" for item in fromlist or ())}
    if kind == "import" and target in names and target not in sys.modules:
        _fire()
    return real_import(name, globals_, locals_, fromlist, level)


def _profile(frame: FrameType, event: str, arg: Any) -> None:
    if event == kind and frame.f_code.co_name == target and (
            kind != "return" or frame.f_globals.get("__name__") == "acpx_trio._cli.main"):
        _fire()


builtins.__import__ = _import
sys.setprofile(_profile)
from acpx_trio._cli.entry import finished  # noqa: E402
from acpx_trio._cli.main import main  # noqa: E402

try:
    code = finished(lambda: main(args))  # as the entry points run it
finally:
    sys.setprofile(None)
for module in ("trio", "acpx_trio._cli.run", "acpx_trio._cli.warm"):
    loaded = sys.modules.get(module)
    if loaded is not None and getattr(loaded, "__spec__", None) is not None and (
            module != "trio" or hasattr(loaded, "run")):
        print(f"loaded: {module}", flush=True)
print(f"fired: {fired}", flush=True)
sys.exit(code)
