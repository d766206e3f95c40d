"""Name -> object registries with helpful errors, and the registries of names a config may use.

The config loader looks dataset, backbone and method names up here; each layer fills its own
registry when imported (``data`` the datasets, ``models`` the backbones, ``methods`` the method
configs), so the loader imports none of those layers. A lookup in a registry still empty imports
the module that fills it, so every entry point (a command, a benchmark script, a notebook) finds the
names whatever it imported first.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to classes or functions; ``get`` of an unknown name lists the known ones."""

    def __init__(self, kind: str, filled_by: str | None = None) -> None:
        self.kind = kind
        # The module whose import fills this registry, imported by the first lookup that finds it empty.
        self.filled_by = filled_by
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorator

    def _filled(self) -> dict[str, T]:
        if not self._entries and self.filled_by is not None:
            importlib.import_module(self.filled_by)
        return self._entries

    def get(self, name: str) -> T:
        entries = self._filled()
        if name not in entries:
            close = difflib.get_close_matches(name, entries, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise KeyError(f"unknown {self.kind} {name!r}; available: {', '.join(sorted(entries))}.{hint}")
        return entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._filled()

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._filled()))

    def names(self) -> list[str]:
        return sorted(self._filled())


# Filled by the layers named; typed loosely because the classes live above this module.
DATASETS: Registry[Any] = Registry("dataset", filled_by="crossregion.data.datasets")
BACKBONES: Registry[Any] = Registry("backbone", filled_by="crossregion.models")
METHOD_CONFIGS: Registry[Any] = Registry("method", filled_by="crossregion.methods")
