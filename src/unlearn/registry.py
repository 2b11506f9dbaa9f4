"""One registry type for everything the project looks up by name: methods, evaluation suites, audit attacks
and presets. A registry is a read-only mapping; entries are added once, by the module that defines them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from .errors import UnlearnError

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Entries of one ``kind`` keyed by name. ``key`` maps a name as typed to its registered form (e.g. case and
    ``_`` vs ``-``); :meth:`lookup` fails with one line naming the choices."""

    def __init__(self, kind: str, key: Callable[[str], str] = str):
        self.kind, self._key, self._entries = kind, key, {}

    def add(self, name: str, entry: T) -> T:
        name = self._key(name)
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def lookup(self, name: str) -> T:
        entry = self._entries.get(self._key(name)) if isinstance(name, str) else None
        if entry is None:
            raise UnlearnError(f"unknown {self.kind} {name!r}: use one of {', '.join(sorted(self._entries))}")
        return entry

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
