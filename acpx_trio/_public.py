"""How a tier module (:mod:`acpx_trio._api`, :mod:`acpx_trio.lowlevel`) publishes its names.

A tier module is a list of ``from acpx_trio._x import Name as Name`` lines and nothing else
public: that list is the tier's only source.  :func:`publish` derives the tier's names from it
and moves each class and function to its public path (``__module__``), as ``trio`` does, so
reprs, tracebacks and pickles name ``acpx_trio.ConfigError``, not a private module.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from typing import Any

__all__ = ["publish"]


def _freeze_annotations(cls: type) -> None:
    """Evaluate the class's own string annotations in its defining module, before that
    module stops being findable through ``cls.__module__`` (msgspec and ``get_type_hints``
    resolve strings there).  An annotation that cannot be evaluated stays a string."""
    own = inspect.get_annotations(cls)
    if not own or not any(isinstance(v, str) for v in own.values()):
        return
    globalns = vars(sys.modules[cls.__module__])
    localns = dict(vars(cls))
    resolved: dict[str, Any] = {}
    for key, value in own.items():
        if isinstance(value, str):
            # a TYPE_CHECKING-only name cannot be evaluated: keep the text
            with contextlib.suppress(Exception):
                value = eval(value, globalns, localns)  # our own source's annotation text
        resolved[key] = value
    cls.__annotations__ = resolved


def publish(module_name: str, namespace: dict[str, Any]) -> tuple[str, ...]:
    """The public names of a tier module (sorted), each private class and function moved to
    ``module_name``.  Idempotent; a name already published elsewhere (a top-level alias of a
    ``lowlevel`` name) keeps its home."""
    # (isidentifier: pytest's assertion rewriting adds ``@py_builtins`` to the plugin's package)
    names = tuple(sorted(n for n in namespace if n.isidentifier() and not n.startswith("_")))
    for name in names:
        obj = namespace[name]
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if not obj.__module__.startswith("acpx_trio._"):
            continue
        if inspect.isclass(obj):
            _freeze_annotations(obj)
        obj.__module__ = module_name
    return names
