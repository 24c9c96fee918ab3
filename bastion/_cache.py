"""A cache for functions of a short string: names of hosts, tools and argument keys.

The same tool names, argument keys and host names come back call after call, so their
verdicts are worth caching; but the strings arrive from agents and results, and a cache
keyed by whatever arrives would keep a megabyte-long key per entry (a reviewer's probe: a
1 MiB argument key per call). `short_key_cache(max_key, maxsize)` caches keys of at most
`max_key` characters and computes longer ones each time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class ShortKeyCache(Generic[T]):
    """`function`, its results for keys of at most `max_key` characters kept (LRU, `maxsize`)."""

    def __init__(self, function: Callable[[str], T], *, max_key: int, maxsize: int) -> None:
        self._function = function
        self._cached = functools.lru_cache(maxsize=maxsize)(function)
        self._max_key = max_key
        self.__doc__ = function.__doc__

    def __call__(self, key: str) -> T:
        return self._cached(key) if len(key) <= self._max_key else self._function(key)

    def cache_info(self) -> functools._CacheInfo:
        return self._cached.cache_info()

    def cache_clear(self) -> None:
        self._cached.cache_clear()


def short_key_cache(*, max_key: int, maxsize: int) -> Callable[[Callable[[str], T]], ShortKeyCache[T]]:
    """Decorate a function of one string with a `ShortKeyCache`."""

    def wrap(function: Callable[[str], T]) -> ShortKeyCache[T]:
        return ShortKeyCache(function, max_key=max_key, maxsize=maxsize)

    return wrap
