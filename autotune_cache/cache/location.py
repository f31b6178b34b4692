"""The cache dir as every room takes it: `CacheDir`, a path made once where a dir enters (the CLI's arguments, the
public API, an env var), with `~` expanded and made absolute (links resolved), then passed down as it is. A
relative path means the working dir of the call that named it, not of a child or a later call. An empty path is
refused here: `Path("")` is the working dir, and a build once filled the current dir from `--cache-dir ""`.

`creatable(dir)` is the check an operation makes before it plans or writes anything: the dir is one, or the
nearest existing path above it is a directory this user may write (the one `mkdir -p` would create under).

Example: `location.normalize("~/c")` -> CacheDir(PosixPath('/home/me/c')).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NewType

from ..errors import CacheDirError

CacheDir = NewType("CacheDir", Path)


def normalize(given: str | os.PathLike[str]) -> CacheDir:
    """`given` expanded (`~`, `~user`) and absolute, links resolved; one made already comes back the same.
    CacheDirError for an empty path."""
    if not os.fspath(given).strip():
        raise CacheDirError("the cache dir is an empty path: give a directory (--cache-dir DIR)")
    return CacheDir(Path(given).expanduser().resolve())


def creatable(root: Path, *, writes: bool = True) -> None:
    """CacheDirError unless a build can use `root` without first failing half-way: it is a writable directory, or
    it is absent and the nearest existing path above it is a directory this user may write. The message names the
    path that is the problem (a file where a dir is needed, a parent that is read-only), not `root`. `writes`
    False: an existing dir may be read-only (ensure only checks a complete cache)."""
    if root.exists():
        if not root.is_dir():
            raise CacheDirError(f"{root} is a file, not a directory: give a cache dir (--cache-dir)")
        if writes and not os.access(root, os.W_OK | os.X_OK):
            raise CacheDirError(f"cache dir {root} is not writable here (a read-only mount, or another user's dir)")
        return
    above = next(p for p in root.parents if p.exists() or p.is_symlink())
    if not above.is_dir():
        kind = "a file" if above.is_file() else "a broken link" if not above.exists() else "a special file"
        raise CacheDirError(f"cannot create cache dir {root}: {above} is {kind}, not a directory")
    if not os.access(above, os.W_OK | os.X_OK):
        raise CacheDirError(f"cannot create cache dir {root}: {above} is not writable here (a read-only mount, or "
                             "another user's dir)")
