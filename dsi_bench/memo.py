"""Bounded in-process caches (least recently used first out), and one call that clears them all.

Loaded pipelines, token banks, CLIP models, shard indexes and model fingerprints are kept per
process so that many datasets share them; each cache has a size bound, and
:func:`clear_caches` frees them all (for example between experiments in a notebook).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

__all__ = ["Memo", "clear_caches", "on_clear"]

_ALL: list[Memo] = []
_HOOKS: list[Callable[[], None]] = []


class Memo:
    """A thread-safe LRU mapping with at most ``maxsize`` entries.

    Args:
        name: what it holds (for ``repr``).
        maxsize: entries kept; the least recently used is dropped beyond it.
    """

    def __init__(self, name: str, maxsize: int):
        self.name = name
        self.maxsize = maxsize
        self._data: OrderedDict = OrderedDict()
        self._lock = threading.RLock()
        _ALL.append(self)

    def __repr__(self) -> str:
        return f"Memo({self.name!r}, {len(self)}/{self.maxsize})"

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    def get(self, key: Hashable, default=None) -> object:
        with self._lock:
            if key not in self._data:
                return default
            self._data.move_to_end(key)
            return self._data[key]

    def put(self, key: Hashable, value) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def get_or_create(self, key: Hashable, factory: Callable[[], object]) -> object:
        """The cached value, or ``factory()`` stored under ``key`` (computed once under the lock)."""
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
            value = factory()
            self.put(key, value)
            return value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


def on_clear(hook: Callable[[], None]) -> Callable[[], None]:
    """Have :func:`clear_caches` also call ``hook`` (for caches kept another way, e.g. ``functools.lru_cache``)."""
    _HOOKS.append(hook)
    return hook


def clear_caches() -> None:
    """Forget everything the package cached in this process (pipelines, banks, indexes, class lists, ...)."""
    for memo in _ALL:
        memo.clear()
    for hook in _HOOKS:
        hook()
