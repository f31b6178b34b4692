"""The cache dir's lock: a build holds it, and every command that writes a cache takes it first; commands that only
read (inspect, verify, export) never take it, so they work on a read-only dir and create nothing there.

The lock file is `.autotune-cache.lock`, a plain file of mode 0644 (set explicitly: the umask must not decide it).
filelock >= 4.3 opens it with O_NOFOLLOW: a link planted there fails the command (ELOOP), where older versions
truncated and chmod-ed the link's target as whoever ran the command (root, in an image build).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import filelock

from ..errors import CacheDirError
from . import manifest as manifest_mod
from .files import Created, is_free

LOCK_MODE = 0o644


@contextlib.contextmanager
def locked(cache_dir: Path, timeout: float | None = 10.0, on_wait: Callable[[str], None] | None = None,
           created: Created | None = None):
    """Hold the cache dir's lock for the block: never prune, merge or import under a running build. `timeout`:
    seconds to wait before CacheDirError, None to wait as long as it takes; `on_wait(lock file)` is called once when
    the lock is not free within a second (a build says it is waiting). `created`: records the lock file where this
    call creates it (an operation that fails takes it away again)."""
    path = Path(cache_dir) / manifest_mod.LOCK_NAME
    new = is_free(path)
    lock = filelock.FileLock(path, mode=LOCK_MODE)
    wait = -1 if timeout is None else timeout   # filelock: -1 waits forever
    first = wait if on_wait is None else 1.0 if wait < 0 else min(1.0, wait)
    try:
        try:
            lock.acquire(timeout=first)
        except filelock.Timeout:
            if on_wait is None:
                raise
            on_wait(str(path))
            lock.acquire(timeout=wait)
    except filelock.Timeout:
        raise CacheDirError(f"{cache_dir} is locked by a running build ({path}); try again later") from None
    except OSError as e:   # a link (ELOOP), a dir, an unwritable cache dir
        raise CacheDirError(f"{path}: cannot take the cache dir's lock ({e.strerror or e}); it must be a plain file "
                            "(a link there is never followed)") from None
    if new and created is not None:
        created.file(path)
    try:
        yield
    finally:
        lock.release()
