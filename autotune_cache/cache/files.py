"""The file primitives every writer and checker of a cache uses: sha256 of a file or of bytes, an atomic write (one
file), staging (many files moved in together, in an order the caller chooses), and the two guards on paths and files
that come from a cache (attacker input): which relative paths a manifest may name (`path_problem`), that a path to
delete or move stays inside its root (`inside`), and reading only regular files, size-capped (`open_regular`,
`read_regular`)."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import CacheDirError

# A name longer than this is refused by Linux filesystems (ENAMETOOLONG): no cache file has one.
MAX_NAME_BYTES = 255
# The modes of what our commands write into a cache, set explicitly whatever the umask: a server of another user
# must read it, no one else may write it (trust refuses a cache writable by others).
FILE_MODE, DIR_MODE = 0o644, 0o755


def sha256_bytes(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return _sha256_of(f)


def _sha256_of(f: BinaryIO) -> str:
    if hasattr(hashlib, "file_digest"):   # Python 3.11+: one reused buffer, no allocation per block
        return hashlib.file_digest(f, "sha256").hexdigest()
    h = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 18), b""):
        h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, mode: int = FILE_MODE, fsync: bool = False) -> Iterator[BinaryIO]:
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


def write_atomic(path: str | os.PathLike, data: bytes | str, *, mode: int = FILE_MODE, fsync: bool = False) -> Path:
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
    """os.replace each staged file to the same relative path under `root`, in the order given (its dirs made with
    DIR_MODE)."""
    for rel in rels:
        make_dirs(inside(root, rel).parent)
        os.replace(inside(staging, rel), inside(root, rel))   # again: the mkdir may have met a planted link


def open_new(path: str | os.PathLike, mode: int = FILE_MODE) -> BinaryIO:
    """A new file to write at `path` (never an existing file, never through a link), of `mode` whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        os.fchmod(fd, mode)
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


def make_dirs(path: Path) -> list[Path]:
    """mkdir -p `path`, each dir it creates of mode DIR_MODE whatever the umask (mkdir, then chmod); the dirs it
    created, innermost first: what remove_created() takes away after a failure."""
    path = Path(path)
    created = []
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            break
        created.append(p)
    made = []
    try:
        for p in reversed(created):
            try:
                os.mkdir(p, DIR_MODE)
            except FileExistsError:   # made meanwhile by another process: not ours to chmod or remove
                if not p.is_dir():
                    raise
                continue
            made.insert(0, p)
            os.chmod(p, DIR_MODE)
    except BaseException:
        remove_created(made)   # the outer ones a failed mkdir -p made
        raise
    return made


def remove_created(created: list[Path]) -> None:
    """Undo make_dirs(): the innermost dir with what is in it, then each parent it created while empty."""
    if created:
        shutil.rmtree(created[0], ignore_errors=True)
    for p in created[1:]:
        try:
            p.rmdir()
        except OSError:
            break


# -- paths and files from a cache: attacker input ----------------------------------------------------------------
def path_problem(rel) -> str | None:
    """Why `rel` is no path a manifest may name, or None: a file of a cache is named relative to its dir, in posix
    form, normalized (no empty or "." part), inside it (no ".." part, not absolute, no drive), and printable (no
    control character, backslash or line separator: a name is shown on one line and means one thing everywhere).
    Such a path is unique as it is: no other spelling names the same file."""
    if not isinstance(rel, str) or not rel:
        return "is empty"
    if not (rel.isascii() and rel.isprintable()) and any(
            unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") for c in rel):
        return "has a control character"
    if "\\" in rel:
        return "has a backslash"
    if rel.startswith("/"):
        return "is absolute"
    parts = rel.split("/")
    if ":" in parts[0]:
        return "is a drive path"
    if ".." in parts:
        return "leaves the cache dir (a '..' part)"
    if "" in parts or "." in parts:
        return "is not normalized (an empty or '.' part)"
    if any(len(p.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES for p in parts):
        return f"has a part longer than {MAX_NAME_BYTES} bytes"
    return None


def inside(root: str | os.PathLike, rel: str) -> Path:
    """root / rel, checked to stay inside root: `rel` relative without a ".." part, and the dir it lies in, links
    resolved, is root or below it (a planted link to a dir must not carry a delete or a move out). The second line
    of defence of every delete and move: paths from a manifest are checked where it is parsed. CacheDirError
    otherwise."""
    root = Path(root)
    if not isinstance(rel, str) or not rel or os.path.isabs(rel) or ".." in rel.split("/") or "\0" in rel:
        raise CacheDirError(f"{root}: refusing the path {rel!r}: it is not inside the cache dir")
    path = root / rel
    real_root, real_dir = os.path.realpath(root), os.path.realpath(path.parent)
    if os.path.commonpath([real_root, real_dir]) != real_root:
        raise CacheDirError(f"{root}: refusing the path {rel!r}: it leads outside the cache dir (to {real_dir})")
    return path


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """`path` opened to read, if it is a regular file; CacheDirError naming what it is otherwise. Never follows a
    link, never blocks (a FIFO) and never opens a device: lstat first, then O_NOFOLLOW|O_NONBLOCK and fstat of what
    was opened (a swap in between is caught). FileNotFoundError passes through: the callers tell absent apart."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            raise CacheDirError(f"{path}: {_kind(st.st_mode)}, not a regular file; refusing to read it")
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as e:
        raise CacheDirError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
            raise CacheDirError(f"{path}: replaced while it was opened; refusing to read it")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def sha256_regular(path: str | os.PathLike) -> str | None:
    """sha256 of a regular file (open_regular), None when it is absent, anything else, or unreadable."""
    try:
        with open_regular(path) as f:
            return _sha256_of(f)
    except (OSError, CacheDirError):
        return None


def read_regular(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of a regular file (open_regular) of at most `limit` bytes; CacheDirError naming the cap if larger."""
    with open_regular(path) as f:
        try:
            size = os.fstat(f.fileno()).st_size
            data = f.read(limit + 1) if size <= limit else b""
        except OSError as e:
            raise CacheDirError(f"{path}: cannot read ({e.strerror or e})") from None
    if size > limit or len(data) > limit:
        raise CacheDirError(f"{path}: larger than {size_text(limit)}, the most it may be; refusing to read it")
    return data


def size_text(n: int) -> str:
    """A byte cap in words: 67108864 -> '64 MiB'."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"
