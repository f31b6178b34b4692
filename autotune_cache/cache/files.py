"""The two file primitives every writer and checker of a cache uses: a file's sha256, and an atomic write."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        if hasattr(hashlib, "file_digest"):   # Python 3.11+: one reused buffer, no allocation per block
            return hashlib.file_digest(f, "sha256").hexdigest()
        h = hashlib.sha256()
        for block in iter(lambda: f.read(1 << 18), b""):
            h.update(block)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes | str, *, mode: int = 0o644, fsync: bool = False) -> Path:
    """Write `data` to `path` through a temp file in the same dir and os.replace: a reader sees the old or the new
    file, never half. `mode` is set explicitly (mkstemp makes 0600 and the umask must not decide what a server of
    another user may read)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
