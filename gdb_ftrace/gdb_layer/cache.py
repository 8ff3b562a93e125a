"""Values derived from the loaded symbols, cleared when gdb loads or drops an objfile.

Like `CachedType` in the kernel's scripts/gdb/linux/utils.py: whatever is
read from DWARF or the symbol table (struct layouts, symbol names, the
kernel's patch-site tables) stays valid until the symbols change, and not a
moment longer. One registry, one set of gdb event hooks.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import gdb

T = TypeVar("T")
_clearers: list[Callable[[], None]] = []


def per_objfile(fn: Callable[..., T]) -> Callable[..., T]:
    """Memoise fn(*args) until the symbols change. Exceptions are not cached."""
    cached = functools.lru_cache(maxsize=None)(fn)
    _clearers.append(cached.cache_clear)
    return cached


def clear(_event=None) -> None:
    for c in _clearers:
        c()


gdb.events.new_objfile.connect(clear)
if hasattr(gdb.events, "clear_objfiles"):  # gdb 8.1+
    gdb.events.clear_objfiles.connect(clear)
