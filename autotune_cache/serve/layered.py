"""A Triton cache manager that reads a read-only baked cache and writes misses to a writable overlay.

Triton's FileCacheManager creates `<dir>/<key>/` on construction and writes misses into it: on a read-only
cache dir (a baked image layer, readOnlyRootFilesystem) any miss raises OSError and the kernel call fails. The
loader selects this class through TRITON_CACHE_MANAGER when the cache dir is not writable, and for every cache it
checked against its manifest (the server then never adds files to it):
  AUTOTUNE_CACHE_BASE     the read-only cache (read first)
  TRITON_CACHE_DIR        the writable overlay (everything written goes there)
"""
from __future__ import annotations

import os

from triton.runtime.cache import FileCacheManager

from ..cache.layout import GROUP_PREFIX

BASE_ENV = "AUTOTUNE_CACHE_BASE"


class LayeredCacheManager(FileCacheManager):
    def __init__(self, key, override=False, dump=False):
        super().__init__(key, override=override, dump=dump)   # the overlay: TRITON_CACHE_DIR
        base = os.environ.get(BASE_ENV)
        self.base_dir = os.path.join(base, key) if base and not (override or dump) else None
        self._base_real = os.path.realpath(self.base_dir) if self.base_dir else None

    def _inside_base(self, path: str) -> bool:
        return os.path.dirname(os.path.realpath(path)) == self._base_real

    def _base_path(self, filename):
        if self.base_dir is None:
            return None
        path = os.path.join(self.base_dir, filename)
        return path if os.path.exists(path) else None

    def get_file(self, filename):
        return self._base_path(filename) or super().get_file(filename)

    def get_group(self, filename):
        # A group file lists absolute paths of its members: those of the base point into the base. A base group
        # with a member elsewhere (a cache copied without `autotune-cache import`) is not used: those files were
        # never checked against the manifest; Triton compiles the kernel into the overlay instead.
        grp = f"{GROUP_PREFIX}{filename}"
        if self._base_path(grp):
            overlay_dir, self.cache_dir = self.cache_dir, self.base_dir
            try:
                found = super().get_group(filename)
            finally:
                self.cache_dir = overlay_dir
            if found is not None and all(self._inside_base(p) for p in found.values()):
                return found
        return super().get_group(filename)
