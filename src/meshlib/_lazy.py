"""Names a package exports but imports only on first use (PEP 562), so a process pays only
for the parts it touches: a client-only workload never loads the server stack, the YAML
loader or the config service."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, names: Mapping[str, str], namespace: MutableMapping[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``names`` maps each exported name to
    the module defining it (relative to ``package``); a name mapped to its own submodule
    (``asgi`` -> ``.asgi``) is that module. The first lookup imports it and stores it
    in ``namespace`` (the package's globals), so later lookups cost nothing."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        loaded = importlib.import_module(module, package)
        value = loaded if module == f".{name}" else getattr(loaded, name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *names})

    return __getattr__, __dir__
