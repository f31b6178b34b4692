"""Is a cache dir exactly what its manifest lists, and can only its owner change it?

A Triton cache is code, not data: cubins the server loads onto the GPU and (Triton 3.4-3.6) the launcher and
cuda_utils shared objects the server process dlopen()s. trust.assess() runs these checks for the loader (before it
points Triton at a directory), `verify` and `ensure`. One pass over the directory:

- files: every file under the dir against `manifest.files`, size first, then sha256: changed, missing, foreign
  (present but not listed), and anything that is not a plain file (a symbolic link, a fifo, a device);
- owners and modes: the dir, every entry in it (our own files included: manifest.json, manifest.sig) and every parent
  up to / must be owned by this user or root, and no entry inside the dir may be writable by group or others, nor
  the dir itself; a parent may be only with the sticky bit (like /tmp: others cannot rename or delete what they do
  not own);
- groups: a compiled kernel's `__grp__*.json` lists its members by ABSOLUTE path and Triton loads them wherever
  they are. A member is where it belongs only if its path is, literally, `<the group's own dir>/<its name>` with the
  dir as the resolved cache root spells it: no real-path comparison, so a path through a link elsewhere (which
  whoever owns the link can re-point after the check) is not. Groups with any other member (a cache copied without
  `import`, or crafted) are reported, and the layered manager never loads them (stray_members: the one rule).

Every file is opened as files.open_plain does (plain files only, bounded: MAX_FILE_BYTES, JSON read whole at most
files.MAX_JSON_BYTES; never blocking on a fifo swapped in after the walk), so no content of the dir can hang or crash
the check. Not hashed: our own files and writes in flight (`manifest.is_own`: manifest, lock, signature, temp names,
Triton's `tmp.pid_*` dirs); Triton's lookups never read them. Every other file is hashed, whether the server reads
it (cubin, launcher .so, autotune JSON, group and metadata JSON) or not (.source, .ttir, ...): about 1.3 GB/s of
sha256 on one core, so the cost is the bytes of the cache (BENCHMARKS.md).

With `copy_to` (the loader's default), the same pass writes each listed file's bytes, as they are hashed, into a
private dir, group files rewritten to list the copy's paths: the server then loads the very bytes checked, and
whoever can write the original dir can no longer swap a file between the check and Triton's read.
"""
from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .files import MAX_JSON_BYTES, NotPlainFile, TooLargeFile, open_plain, read_plain, sha256_bytes, sha256_of
from .layout import is_group_file, parse_group, relocated_group
from .manifest import FileRecord, Manifest, is_own

WRITE_BITS = stat.S_IWGRP | stat.S_IWOTH
# The most a check reads of one file it streams (cubins, launcher .so: MBs); JSON it parses (group files) is read
# whole, at most files.MAX_JSON_BYTES.
MAX_FILE_BYTES = 4 << 30
# What each kind of problem means (report texts name the kind).
KINDS = {
    "changed": "size or sha256 differs from the manifest",
    "missing": "listed in the manifest, not on disk",
    "foreign": "on disk, not listed in the manifest",
    "not a file": "a symbolic link or special file (a cache holds plain files and directories only)",
    "unreadable": "could not be read",
    "too large": "larger than a check reads (MAX_FILE_BYTES, group files MAX_JSON_BYTES)",
    "corrupt": "a group file Triton cannot read: it would fail the kernel call",
}


def escaped_path(path: str) -> str:
    """A path as reports print it: as is, or escaped where a name holds a newline, a control character or bytes
    that are not UTF-8 (a crafted name must not add lines to a server's log)."""
    return path if path.isprintable() else repr(path)[1:-1]


@dataclass(frozen=True)
class Problem:
    """One file that stops a directory from being trusted. Example: ("KX3.../k.cubin", "changed",
    "sha256 differs from the manifest")."""
    path: str        # relative to the cache dir
    kind: str        # a key of KINDS
    detail: str

    def __str__(self) -> str:
        return f"{escaped_path(self.path)}: {self.detail}"


@dataclass(frozen=True, order=True)
class Writable:
    """A path users other than this one (or root) can change. Example: ("/srv", "drwxrwxrwx: writable by group and
    others, no sticky bit"); inside the dir the path is relative, a dir's with a trailing "/". `fix`: what makes it
    safe."""
    path: str
    why: str
    fix: str = "chmod go-w"

    def __str__(self) -> str:
        return f"{escaped_path(self.path)} ({self.why})"


@dataclass(frozen=True)
class Copy:
    """What the check's pass wrote into the private copy. Example: 76 files, 0.4 MB, 0.01 s of writing, into
    /tmp/autotune-cache-copy-x1y2. `error`: why the copy stopped (then it is incomplete and must not be served)."""
    dir: Path
    files: int
    bytes: int
    seconds: float             # spent writing (the reads are the check's own)
    error: str | None = None


@dataclass(frozen=True)
class FileCheck:
    """The whole directory against its manifest, at one moment. Example: 2,000 files listed, 2,000 hashed
    (88.1 MB), no problems, 0.09 s. `problems` is empty and `listed` 0 when there is no manifest (then only links,
    special files and modes are checked)."""
    root: Path
    listed: int                       # files manifest.files lists
    hashed: int                       # files hashed (listed, on disk, size as listed)
    bytes_hashed: int
    problems: tuple[Problem, ...]
    writable: tuple[Writable, ...]    # entries inside writable by others than the owner: "AB/ (drwxrwxr-x: ...)"
    moved_groups: tuple[str, ...]     # group files listing a member outside their own dir (copied without `import`)
    seconds: float
    # child_paths of each listed group file, parsed from the bytes that matched the manifest (signing reads these)
    groups: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    copy: Copy | None = None          # with copy_to

    @property
    def ok(self) -> bool:
        return not self.problems

    def of(self, kind: str) -> list[Problem]:
        return [p for p in self.problems if p.kind == kind]

    def summary(self, limit: int = 8) -> str:
        """'2 changed, 1 foreign: AB/k.cubin (sha256 differs from the manifest), ...' naming up to `limit` files."""
        counts: dict[str, int] = {}
        for p in self.problems:
            counts[p.kind] = counts.get(p.kind, 0) + 1
        named = "; ".join(str(p) for p in self.problems[:limit])
        more = f"; and {len(self.problems) - limit} more" if len(self.problems) > limit else ""
        return ", ".join(f"{n} {k}" for k, n in counts.items()) + f": {named}{more}"


def stray_members(paths: Mapping[str, str], own_dir: str | os.PathLike) -> list[str]:
    """The member paths of a group file that are not, literally, `<own_dir>/<name>` with `name` a plain file name:
    compared as strings, never resolved. Only then do the member names (what a signature covers) say which files the
    group loads, and can no link, `..` or path elsewhere send Triton to bytes the check did not read. Example:
    {"k.cubin": "/srv/c/AB/k.cubin"} in /srv/c/AB: []; "/tmp/link/AB/k.cubin": that path."""
    own = str(own_dir)
    return [p for name, p in paths.items()
            if "/" in name or name in ("", ".", "..") or "\0" in name or p != f"{own}/{name}"]


def _who(mode: int) -> str:
    return " and ".join(w for bit, w in ((stat.S_IWGRP, "group"), (stat.S_IWOTH, "others")) if mode & bit)


def _foreign_owner(path: str, st: os.stat_result) -> Writable | None:
    """An owner other than this user or root: they can chmod it, replace it, or (a dir) what is in it."""
    me = os.getuid()
    if st.st_uid in (me, 0):
        return None
    return Writable(path, f"owned by uid {st.st_uid}, not this user ({me}) or root", f"chown it to uid {me} or root")


def _walk(root: Path, problems: list[Problem], writable: list[Writable]):
    """(rel, path, stat) of every plain file under root that is not ours; records links, special files, foreign
    owners and entries writable by others on the way (our own files' owners and modes included: a manifest another
    user can rewrite vouches for nothing). Nothing is followed: links are reported, never entered."""
    stack = [("", str(root))]
    while stack:
        prefix, d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError as e:
            problems.append(Problem(prefix.rstrip("/") or ".", "unreadable", f"unreadable directory "
                                    f"({e.strerror or e})"))
            continue
        for entry in entries:
            rel = prefix + entry.name
            own = is_own(rel)
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as err:
                if not own:
                    problems.append(Problem(rel, "unreadable", f"cannot stat ({err.strerror or err})"))
                continue
            mode = st.st_mode
            if stat.S_ISLNK(mode):
                if not own:
                    problems.append(Problem(rel, "not a file", f"symbolic link to {os.readlink(entry.path)!r}; a cache "
                                                               "holds plain files only"))
                continue
            shown = rel + ("/" if stat.S_ISDIR(mode) else "")
            owner = _foreign_owner(shown, st)
            if owner:
                writable.append(owner)
            if mode & WRITE_BITS:
                writable.append(Writable(shown, f"{stat.filemode(mode)}: writable by {_who(mode)}"))
            if own:
                continue
            if stat.S_ISDIR(mode):
                stack.append((rel + "/", entry.path))
            elif stat.S_ISREG(mode):
                yield rel, entry.path, st
            else:
                problems.append(Problem(rel, "not a file", f"special file ({stat.filemode(mode)}); a cache holds "
                                                           "plain files only"))


class _CopyFailed(Exception):
    """A write into the private copy failed (its disk is full?): the copy stops, the check goes on."""


class _Copier:
    """Writes the private copy: each file as its bytes are hashed, a group file rewritten for the copy's path."""
    BLOCK = 1 << 20

    def __init__(self, dir: Path):
        self.dir, self.files, self.bytes, self.seconds = dir, 0, 0, 0.0
        self.error: str | None = None   # why the copy stopped
        self._buf = bytearray(self.BLOCK)
        self._made: set[Path] = set()   # dirs made: one mkdir per hash dir, not per file

    def hash_into(self, f, rel: str) -> str:
        """sha256 of the rest of `f`, every block written to <copy>/<rel> on the way (one read of each byte)."""
        h, view = hashlib.sha256(), memoryview(self._buf)
        with self._open(rel) as out:
            while n := f.readinto(self._buf):
                h.update(view[:n])
                self._write(out, view[:n])
        return h.hexdigest()

    def write(self, rel: str, data: bytes) -> None:
        with self._open(rel) as out:
            self._write(out, data)

    def _open(self, rel: str):
        start = time.perf_counter()
        try:
            dest = self.dir / rel
            if dest.parent not in self._made:
                dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                self._made.add(dest.parent)
            out = os.fdopen(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), "wb")
        except OSError as e:
            raise _CopyFailed(f"{self.dir / rel}: {e.strerror or e}") from None
        finally:
            self.seconds += time.perf_counter() - start
        self.files += 1
        return out

    def _write(self, out, data) -> None:
        start = time.perf_counter()
        try:
            out.write(data)
        except OSError as e:
            raise _CopyFailed(f"{out.name}: {e.strerror or e}") from None
        finally:
            self.seconds += time.perf_counter() - start
        self.bytes += len(data)

    def record(self) -> Copy:
        return Copy(self.dir, self.files, self.bytes, self.seconds, self.error)


def _read_hash(path: str, group: bool, copier: _Copier | None, rel: str) -> tuple[str, bytes | None]:
    """sha256 of a file and, for a group file, its bytes (parsed next). Without a copy: files.sha256_of, one reused
    buffer, 3x faster on 2,000 files than a read() of a fresh buffer per file (BENCHMARKS.md). With one: the same
    bytes written to it as they are hashed (a group file is written by the caller, rewritten for the copy)."""
    if group:
        data = read_plain(path, MAX_JSON_BYTES)
        return sha256_bytes(data), data
    with open_plain(path, MAX_FILE_BYTES) as f:
        return (copier.hash_into(f, rel) if copier else sha256_of(f)), None


def check_files(cache_dir: str | os.PathLike, manifest: Manifest | None, copy_to: Path | None = None) -> FileCheck:
    """Compare every file under `cache_dir` with `manifest.files` (see the module doc); with `copy_to` (an empty
    private dir), copy every listed file into it in the same pass (FileCheck.copy says how far it got). Never
    raises for a problem in the directory: each becomes a Problem."""
    start = time.perf_counter()
    root = Path(cache_dir).resolve()
    listed: dict[str, FileRecord] = dict(manifest.files) if manifest else {}
    copier = _Copier(Path(copy_to)) if copy_to is not None and manifest is not None else None
    problems: list[Problem] = []
    writable: list[Writable] = []
    moved: list[str] = []
    groups: dict[str, dict[str, str]] = {}
    seen: set[str] = set()
    hashed = nbytes = 0
    for rel, path, st in _walk(root, problems, writable):
        seen.add(rel)
        rec = listed.get(rel)
        if rec is None:
            if manifest is not None:
                problems.append(Problem(rel, "foreign", "not listed in the manifest (foreign file)"))
            continue
        if st.st_size != rec.size:
            problems.append(Problem(rel, "changed", f"size {st.st_size}, the manifest says {rec.size}"))
            continue
        group = is_group_file(rel)
        writing = copier if copier is not None and copier.error is None else None
        try:
            try:
                digest, data = _read_hash(path, group, writing, rel)
            except _CopyFailed as e:   # the copy stops here; this file is read again, for the check alone
                assert writing is not None   # only the copier raises it
                writing.error = str(e)
                digest, data = _read_hash(path, group, None, rel)
        except TooLargeFile as e:
            problems.append(Problem(rel, "too large", f"too large to check: {e}"))
            continue
        except NotPlainFile as e:   # swapped for a fifo or a dir since the walk
            problems.append(Problem(rel, "not a file", f"{e}; a cache holds plain files only"))
            continue
        except OSError as e:
            problems.append(Problem(rel, "unreadable", f"unreadable ({e.strerror or e})"))
            continue
        hashed, nbytes = hashed + 1, nbytes + st.st_size
        if digest != rec.sha256:
            problems.append(Problem(rel, "changed", "sha256 differs from the manifest"))
            continue
        if not group:
            continue
        assert data is not None   # _read_hash returns a group file's bytes
        try:
            paths = parse_group(data)
        except ValueError as e:
            problems.append(Problem(rel, "corrupt", f"not a group file Triton can read ({str(e)[:80]}): it would "
                                                    "fail the kernel call"))
            continue
        groups[rel] = paths
        own = root / Path(rel).parent
        stray = bool(stray_members(paths, own))
        if stray:
            moved.append(rel)
        if writing is not None and writing.error is None:
            try:   # a moved group keeps its paths: outside the copy too, never loaded from it
                writing.write(rel, data if stray else relocated_group(paths, writing.dir / Path(rel).parent).encode())
            except _CopyFailed as e:
                writing.error = str(e)
    seen |= {p.path for p in problems}   # a link or special file at a listed path is not also "missing"
    problems += [Problem(rel, "missing", "listed in the manifest, missing on disk")
                 for rel in sorted(set(listed) - seen)]
    problems.sort(key=lambda p: (p.kind != "changed", p.path))
    return FileCheck(root=root, listed=len(listed), hashed=hashed, bytes_hashed=nbytes, problems=tuple(problems),
                     writable=tuple(sorted(writable)), moved_groups=tuple(sorted(moved)),
                     seconds=time.perf_counter() - start, groups=groups,
                     copy=copier.record() if copier is not None else None)


def writable_parents(cache_dir: str | os.PathLike) -> list[Writable]:
    """The cache dir and its parents up to / that users other than this one (or root) can change: owned by another
    user, or writable by others than their owner (the dir itself at all, a parent only without the sticky bit).
    Example: ["/srv (drwxrwxrwx: writable by group and others)"]. Whoever can change one of them can replace the
    cache (rename a parent, swap a file) between the check and the load."""
    root = Path(cache_dir).resolve()
    out = []
    for p in (root, *root.parents):
        try:
            st = os.stat(p)
        except OSError as e:
            out.append(Writable(str(p), f"cannot stat: {e.strerror or e}"))
            continue
        owner = _foreign_owner(str(p), st)
        if owner:
            out.append(owner)
        mode = st.st_mode
        if mode & WRITE_BITS and (p == root or not mode & stat.S_ISVTX):
            out.append(Writable(str(p), f"{stat.filemode(mode)}: writable by {_who(mode)}"
                                + (", no sticky bit" if p != root else "")))
    return out


def shared_writable(check: FileCheck) -> list[Writable]:
    """Everything that lets another user change the cache: writable_parents() and the entries inside (by absolute
    path)."""
    return writable_parents(check.root) + [Writable(f"{check.root}/{w.path}", w.why, w.fix) for w in check.writable]
