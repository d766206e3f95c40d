"""Name -> object registries with helpful errors, and the registries of names a config may use.

The config loader looks dataset, backbone and method names up here; each layer fills its own
registry when imported (``data`` the datasets, ``models`` the backbones, ``methods`` the method
configs), so the loader imports none of those layers. The application layer imports them all.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to classes or functions; ``get`` of an unknown name lists the known ones."""

    def __init__(self, kind: str, filled_by: str | None = None) -> None:
        self.kind = kind
        # The module whose import fills this registry, named when a lookup finds it empty.
        self.filled_by = filled_by
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        if not self._entries and self.filled_by is not None:
            raise KeyError(f"no {self.kind} is registered yet: import {self.filled_by} first (the command line does)")
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise KeyError(f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self._entries))}.{hint}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def names(self) -> list[str]:
        return sorted(self._entries)


# Filled by the layers named; typed loosely because the classes live above this module.
DATASETS: Registry[Any] = Registry("dataset", filled_by="crossregion.data.datasets")
BACKBONES: Registry[Any] = Registry("backbone", filled_by="crossregion.models")
METHOD_CONFIGS: Registry[Any] = Registry("method", filled_by="crossregion.methods")
