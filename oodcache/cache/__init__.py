"""The HDF5 cache: the public format (schema), its atomic writer and its validating, read-only reader."""

from __future__ import annotations

from oodcache.cache.reader import Cache, CacheError, LeakageError, Split, Tables
from oodcache.cache.schema import FORMAT, FORMAT_VERSION, ROLES, SEARCH_ROLES, TEST_ROLES
from oodcache.cache.writer import CacheWriter

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ROLES",
    "SEARCH_ROLES",
    "TEST_ROLES",
    "Cache",
    "CacheError",
    "CacheWriter",
    "LeakageError",
    "Split",
    "Tables",
]
