"""The cache dir's lock: a build holds it, and every command that writes a cache takes it first."""
from __future__ import annotations

import contextlib
from pathlib import Path

import filelock

from . import manifest as manifest_mod
from ..errors import CacheDirError


@contextlib.contextmanager
def locked(cache_dir: Path, timeout: float = 10.0):
    """The lock a build holds: never prune or merge under a running build."""
    lock = filelock.FileLock(Path(cache_dir) / manifest_mod.LOCK_NAME)
    try:
        lock.acquire(timeout=timeout)
    except filelock.Timeout:
        raise CacheDirError(f"{cache_dir} is locked by a running build ({lock.lock_file}); try again later") from None
    try:
        yield
    finally:
        lock.release()
