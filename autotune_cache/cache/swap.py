"""Replace a cache dir by a fresh one built beside it, in one rename: what `ensure --rebuild` does with a cache that
is stale, damaged or built for another environment, so an init container recovers instead of failing every start.

Triton's group files list their members by absolute path, so the fresh dir's are rewritten for the path it takes
(and their records in its manifest) before the swap. The swap is renameat2(RENAME_EXCHANGE) where the kernel and C
library have it: a reader sees the old dir or the new one, never none. Elsewhere two renames (the old dir aside,
the new one in), with a moment of no dir between them. The old dir is then deleted.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
from pathlib import Path

from ..errors import CacheDirError
from . import manifest as manifest_mod
from .files import sha256_bytes, write_atomic
from .layout import is_group_file, read_group, relocated_group
from .lock import locked
from .manifest import FileRecord

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def fresh_dir_beside(cache_dir: Path) -> Path:
    """A name for the fresh build next to `cache_dir` (same filesystem, so the swap is a rename)."""
    return cache_dir.parent / f".{cache_dir.name}.rebuild-{os.getpid()}"


def relocate(built: Path, final: Path) -> int:
    """Rewrite the group files of the cache in `built` for its final path `final`, and their manifest records.
    Returns how many were rewritten."""
    m = manifest_mod.load(built)
    if m is None:
        raise CacheDirError(f"{built}: no manifest after the rebuild")
    groups = [rel for rel in m.files if is_group_file(rel)]
    for rel in groups:
        text = relocated_group(read_group(built / rel), final / Path(rel).parent)
        write_atomic(built / rel, text)
        m.files[rel] = FileRecord(size=len(text.encode()), sha256=sha256_bytes(text))
    manifest_mod.save(m, built)
    return len(groups)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where renameat2 is not available (not Linux, old glibc, a filesystem
    without it)."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):   # EINVAL, ENOSYS, EOPNOTSUPP: this filesystem or kernel cannot
        return False
    raise OSError(errno, os.strerror(errno), str(b))


def swap_in(fresh: Path, cache_dir: Path) -> None:
    """Put `fresh` at `cache_dir` (under the old dir's lock: never under a running build) and delete the old dir."""
    with locked(cache_dir):
        try:
            if _exchange(fresh, cache_dir):
                old = fresh   # the old cache now lies at the fresh dir's name
            else:
                old = cache_dir.parent / f".{cache_dir.name}.old-{os.getpid()}"
                os.rename(cache_dir, old)
                os.rename(fresh, cache_dir)
        except OSError as e:
            raise CacheDirError(f"cannot swap the rebuilt cache into {cache_dir} ({e.strerror or e}); a mount point "
                                "cannot be renamed: mount its parent and use a dir inside it") from None
    shutil.rmtree(old, ignore_errors=True)
