"""A Triton cache manager that reads a read-only baked cache and writes misses to a writable overlay.

Triton's FileCacheManager creates `<dir>/<key>/` on construction and writes misses into it: on a read-only
cache dir (a baked image layer, readOnlyRootFilesystem) any miss raises OSError and the kernel call fails. The
loader selects this class through TRITON_CACHE_MANAGER for every cache it checked against its manifest (the server
then never adds files to it), and when the cache dir is not writable:
  AUTOTUNE_CACHE_BASE     the checked cache (read first): the loader's private verified copy, or the dir itself
  TRITON_CACHE_DIR        the writable overlay (everything written goes there)
"""
from __future__ import annotations

import os

from triton.runtime.cache import FileCacheManager

from .. import settings
from ..autotuner.versions import group_needs_every_member
from ..cache.files import MAX_JSON_BYTES, read_plain
from ..cache.integrity import stray_members
from ..cache.layout import GROUP_PREFIX, parse_group

BASE_ENV = "AUTOTUNE_CACHE_BASE"


class LayeredCacheManager(FileCacheManager):
    def __init__(self, key, override=False, dump=False):
        super().__init__(key, override=override, dump=dump)   # the overlay: TRITON_CACHE_DIR
        base = settings.current().base
        self.base_dir = os.path.join(base, key) if base is not None and not (override or dump) else None

    def _base_path(self, filename):
        if self.base_dir is None:
            return None
        path = os.path.join(self.base_dir, filename)
        return path if os.path.exists(path) else None

    def get_file(self, filename):
        return self._base_path(filename) or super().get_file(filename)

    def get_group(self, filename):
        found = self._base_group(filename)
        return found if found is not None else super().get_group(filename)

    def _base_group(self, filename):
        """The base's group, as the installed Triton's get_group reads it, or None: then Triton compiles the kernel
        into the overlay. A member missing: Triton 3.6 takes the members that exist, 3.8+ none
        (versions.group_needs_every_member), and so does this. A group file lists absolute paths: one with a member
        anywhere but literally `<its own dir>/<name>` (a cache copied without `autotune-cache import`, a path through
        a link) is not used, those bytes were never checked against the manifest. Nor is one that is no plain,
        bounded, readable group file: Triton would fail the kernel call on it."""
        path = self._base_path(f"{GROUP_PREFIX}{filename}")
        if path is None or self.base_dir is None:   # (no base dir: no path)
            return None
        try:
            paths = parse_group(read_plain(path, MAX_JSON_BYTES))
        except (OSError, ValueError):
            return None
        if stray_members(paths, self.base_dir):
            return None
        members = {name: p for name, p in paths.items() if os.path.exists(p)}
        if len(members) < len(paths) and group_needs_every_member():
            return None
        return members
