"""The file primitives every writer and checker of a cache uses: sha256 of a file or of bytes, reading a file that may
be anything (open_plain: plain files only, bounded, never blocking), an atomic write (one file), and staging (many
files moved in together, in an order the caller chooses)."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

# The most read whole of a JSON file that may be anything (a manifest, a group file): a 2,000-file manifest is ~1 MB.
MAX_JSON_BYTES = 64 << 20


def sha256_bytes(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return sha256_of(f)


def sha256_of(f: BinaryIO) -> str:
    """sha256 of what is left to read in a binary file."""
    if hasattr(hashlib, "file_digest"):   # Python 3.11+: one reused buffer, no allocation per block
        return hashlib.file_digest(f, "sha256").hexdigest()
    h = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 18), b""):
        h.update(block)
    return h.hexdigest()


class NotPlainFile(OSError):
    """open_plain(): a link, a fifo, a device, a directory (the message says which, not the path: callers name it)."""


class TooLargeFile(NotPlainFile):
    """open_plain(): a plain file over the size limit."""


def open_plain(path: str | os.PathLike, limit: int) -> BinaryIO:
    """`path` opened for reading only if it is a plain file of at most `limit` bytes (NotPlainFile otherwise), and
    never blocking: O_NONBLOCK (a fifo would wait for a writer forever), O_NOFOLLOW (a link is not followed), and
    the type and size from fstat of what was opened, not from an earlier stat someone could have raced."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotPlainFile(f"not a plain file ({stat.filemode(st.st_mode)})")
        if st.st_size > limit:
            raise TooLargeFile(f"{st.st_size} bytes, more than the {limit} read from such a file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_plain(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of open_plain(path, limit), never more than `limit` (a file growing while read is cut short and
    refused)."""
    with open_plain(path, limit) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise TooLargeFile(f"grew past {limit} bytes while read")
    return data


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, mode: int = 0o644, fsync: bool = False) -> Iterator[BinaryIO]:
    """A binary file to write that appears at `path` only when the block ends without an error (a temp file in the
    same dir, then os.replace): a reader sees the old or the new file, never half. `mode` is set explicitly
    (mkstemp makes 0600 and the umask must not decide what a server of another user may read)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, data: bytes | str, *, mode: int = 0o644, fsync: bool = False) -> Path:
    """atomic_file() for data in memory."""
    with atomic_file(path, mode=mode, fsync=fsync) as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return Path(path)


@contextlib.contextmanager
def staging_dir(root: Path, prefix: str) -> Iterator[Path]:
    """A fresh dir inside `root` (same filesystem: os.replace moves its files in), removed with what is left in it.
    Every file of a multi-file write lands here first, so a failure half-way leaves nothing in `root`."""
    staging = Path(tempfile.mkdtemp(dir=root, prefix=prefix))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def move_in(staging: Path, root: Path, rels: Iterable[str]) -> None:
    """os.replace each staged file to the same relative path under `root`, in the order given."""
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / rel, root / rel)
