"""The file primitives every writer and checker of a cache uses: sha256 of a file or of bytes, an atomic write (one
file), staging (many files moved in together, in an order the caller chooses), and the guards on paths and files
that come from a cache (attacker input): which relative paths a manifest may name (`path_problem`), that a path to
delete or move stays inside its root (`inside`), and reading only plain files, size-capped and never blocking
(`open_plain`/`read_plain`, raising OSError subclasses; `open_regular`/`read_regular`, the same as CacheDirError)."""
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

from ..amounts import size
from ..errors import CacheDirError

# A name longer than this is refused by Linux filesystems (ENAMETOOLONG): no cache file has one.
MAX_NAME_BYTES = 255
# The modes of what our commands write into a cache, set explicitly whatever the umask: a server of another user
# must read it, no one else may write it (trust refuses a cache writable by others).
FILE_MODE, DIR_MODE = 0o644, 0o755
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


def copy_hashed(f: BinaryIO, out: BinaryIO) -> str:
    """Copies the rest of `f` into `out`; returns the sha256 of exactly the bytes written (one read of each)."""
    h = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
        out.write(block)
    return h.hexdigest()


class NotPlainFile(OSError):
    """open_plain(): a link, a fifo, a device, a directory (the message says which, not the path: callers name it)."""


class TooLargeFile(NotPlainFile):
    """open_plain(): a plain file over the size limit."""


def open_plain(path: str | os.PathLike, limit: int | None = None) -> BinaryIO:
    """`path` opened for reading only if it is a plain file (of at most `limit` bytes): NotPlainFile naming what it
    is otherwise, TooLargeFile over the limit. Never follows a link, never blocks and never opens a device: lstat
    first (opening a device can act), then O_NOFOLLOW|O_NONBLOCK (a fifo would wait for a writer forever), and the
    type and size from fstat of what was opened, which must be what was lstat'ed (a swap in between is caught).
    FileNotFoundError passes through: callers tell absent apart."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotPlainFile(f"{_kind(st.st_mode)}, not a regular file")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
            raise NotPlainFile("replaced while it was opened")
        if limit is not None and opened.st_size > limit:
            raise TooLargeFile(f"{opened.st_size} bytes, more than the {size(limit)} read from such a file")
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


def move_in(staging: Path, root: Path, rels: Iterable[str], created: Created | None = None) -> None:
    """os.replace each staged file to the same relative path under `root`, in the order given (its dirs made with
    DIR_MODE); `created` records each dir made and each file that took a free name."""
    created = created or Created()
    for rel in rels:
        created.dirs(inside(root, rel).parent)
        target = inside(root, rel)   # again: the mkdir may have met a planted link
        new = is_free(target)
        os.replace(inside(staging, rel), target)
        if new:
            created.file(target)


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
        if not is_free(p):
            break
        created.append(p)
    made: list[Path] = []
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


def is_free(path: Path) -> bool:
    """Nothing at `path`, not even a dangling link: a file made there now is the maker's (Created)."""
    return not (path.exists() or path.is_symlink())


class Created:
    """The paths one call created, recorded as it created them, so that a call that fails takes away exactly those
    (`undo`) and never a path that was there before it: the one cleanup rule of every operation that writes a cache
    dir (build, build from records, ensure, import). A dir it made goes with what is in it (all of that came after);
    a file is recorded only where it did not exist when the call was about to create it (`file_if_new`). Undone
    newest first; `keep()` forgets them all (the call succeeded, or what it wrote is worth keeping)."""

    def __init__(self) -> None:
        self._made: list[list[Path] | Path] = []   # make_dirs() results (innermost first), and single files

    def dirs(self, path: str | os.PathLike) -> list[Path]:
        """make_dirs(path), what it made recorded."""
        made = make_dirs(Path(path))
        if made:
            self._made.append(made)
        return made

    def file_if_new(self, path: str | os.PathLike) -> bool:
        """Record `path` as this call's if nothing is there now (the call is about to create it); True if so."""
        path = Path(path)
        if not is_free(path):
            return False
        self._made.append(path)
        return True

    def file(self, path: str | os.PathLike) -> None:
        """Record a file this call has just created (open_new, a rename onto a name that was free)."""
        self._made.append(Path(path))

    @property
    def paths(self) -> tuple[Path, ...]:
        """Every path recorded, oldest first (a dir list: its innermost dir)."""
        return tuple(m[0] if isinstance(m, list) else m for m in self._made)

    def undo(self) -> None:
        """Take away what was recorded, newest first: a file unlinked, a make_dirs() undone (remove_created)."""
        while self._made:
            made = self._made.pop()
            if isinstance(made, list):
                remove_created(made)
            elif made.is_dir() and not made.is_symlink():
                shutil.rmtree(made, ignore_errors=True)
            else:
                made.unlink(missing_ok=True)

    def take(self, other: Created) -> None:
        """Another record's paths become this one's (newer than those here)."""
        self._made.extend(other._made)
        other._made.clear()

    def keep(self) -> None:
        self._made.clear()

    @contextlib.contextmanager
    def undone_on_error(self, keep: tuple[type[BaseException], ...] = ()) -> Iterator[Created]:
        """The block's exceptions undo what was recorded (then propagate), except those of `keep` (a build's
        finished units, kept on BuildFailedError and on an interrupt)."""
        try:
            yield self
        except keep:
            raise
        except BaseException:
            self.undo()
            raise


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
    """open_plain() for a caller whose errors are CacheDirError: one line naming the path and what it is.
    FileNotFoundError passes through."""
    try:
        return open_plain(path)
    except FileNotFoundError:
        raise
    except NotPlainFile as e:
        raise CacheDirError(f"{path}: {e}; refusing to read it") from None
    except OSError as e:
        raise CacheDirError(f"{path}: cannot read ({e.strerror or e})") from None


def sha256_regular(path: str | os.PathLike) -> str | None:
    """sha256 of a regular file (open_regular), None when it is absent, anything else, or unreadable."""
    try:
        with open_plain(path) as f:
            return sha256_of(f)
    except OSError:
        return None


def read_regular(path: str | os.PathLike, limit: int) -> bytes:
    """read_plain() with CacheDirError naming the path and the cap. FileNotFoundError passes through."""
    try:
        return read_plain(path, limit)
    except FileNotFoundError:
        raise
    except TooLargeFile:
        raise CacheDirError(f"{path}: larger than {size(limit)}, the most it may be; "
                            "refusing to read it") from None
    except NotPlainFile as e:
        raise CacheDirError(f"{path}: {e}; refusing to read it") from None
    except OSError as e:
        raise CacheDirError(f"{path}: cannot read ({e.strerror or e})") from None
