"""The cache dir as every room takes it: `CacheDir`, a path made once where a dir enters (the CLI's arguments, the
public API, an env var), with `~` expanded and made absolute (links resolved), then passed down as it is. A
relative path means the working dir of the call that named it, not of a child or a later call.

Example: `location.normalize("~/c")` -> CacheDir(PosixPath('/home/me/c')).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NewType

CacheDir = NewType("CacheDir", Path)


def normalize(given: str | os.PathLike[str]) -> CacheDir:
    """`given` expanded (`~`, `~user`) and absolute, links resolved; one made already comes back the same."""
    return CacheDir(Path(given).expanduser().resolve())
