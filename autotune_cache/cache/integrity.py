"""Is a cache dir exactly what its manifest lists, and can only its owner change it?

A Triton cache is code, not data: cubins the server loads onto the GPU and (Triton 3.4-3.6) the launcher and
cuda_utils shared objects the server process dlopen()s. trust.assess() runs these checks for the loader (before it
points Triton at a directory), `verify` and `ensure`. One pass over the directory:

- files: every file under the dir against `manifest.files`, size first, then sha256: changed, missing, foreign
  (present but not listed), and anything that is not a plain file (a symbolic link, a fifo, a device);
- modes: no entry inside the dir may be writable by group or others, nor the dir itself; a parent up to / may be
  only with the sticky bit (like /tmp: others cannot rename or delete what they do not own);
- groups: a compiled kernel's `__grp__*.json` lists its members by ABSOLUTE path and Triton loads them wherever
  they are: members outside the group's own dir (a cache copied without `import`) are reported.

Skipped: our own files and writes in flight (`manifest.is_own`: manifest, lock, signature, temp names, Triton's
`tmp.pid_*` dirs); Triton's lookups never read them. Every other file is hashed, whether the server reads it
(cubin, launcher .so, autotune JSON, group and metadata JSON) or not (.source, .ttir, ...): about 1.3 GB/s of
sha256 on one core, so the cost is the bytes of the cache (BENCHMARKS.md).
"""
from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from .files import sha256_bytes, sha256_file
from .layout import is_group_file
from .manifest import FileRecord, Manifest, is_own

WRITE_BITS = stat.S_IWGRP | stat.S_IWOTH
# What each kind of problem means (report texts name the kind).
KINDS = {
    "changed": "size or sha256 differs from the manifest",
    "missing": "listed in the manifest, not on disk",
    "foreign": "on disk, not listed in the manifest",
    "not a file": "a symbolic link or special file (a cache holds plain files and directories only)",
    "unreadable": "could not be read",
}


@dataclass(frozen=True)
class Problem:
    """One file that stops a directory from being trusted. Example: ("KX3.../k.cubin", "changed",
    "sha256 differs from the manifest")."""
    path: str        # relative to the cache dir
    kind: str        # a key of KINDS
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"


@dataclass(frozen=True, order=True)
class Writable:
    """A path users other than its owner can write. Example: ("/srv", "drwxrwxrwx: writable by group and others, no
    sticky bit"); inside the dir the path is relative, a dir's with a trailing "/"."""
    path: str
    why: str

    def __str__(self) -> str:
        return f"{self.path} ({self.why})"


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

    @property
    def ok(self) -> bool:
        return not self.problems

    def of(self, kind: str) -> list[Problem]:
        return [p for p in self.problems if p.kind == kind]

    def summary(self, limit: int = 8) -> str:
        """'2 changed, 1 foreign: AB/k.cubin (sha256 differs from the manifest), ...' naming up to `limit` files."""
        counts = {}
        for p in self.problems:
            counts[p.kind] = counts.get(p.kind, 0) + 1
        named = "; ".join(str(p) for p in self.problems[:limit])
        more = f"; and {len(self.problems) - limit} more" if len(self.problems) > limit else ""
        return ", ".join(f"{n} {k}" for k, n in counts.items()) + f": {named}{more}"


def _who(mode: int) -> str:
    return " and ".join(w for bit, w in ((stat.S_IWGRP, "group"), (stat.S_IWOTH, "others")) if mode & bit)


def _walk(root: Path, problems: list[Problem], writable: list[Writable]):
    """(rel, path, stat) of every plain file under root that is not ours; records links, special files and
    entries writable by others on the way. Nothing is followed: links are reported, never entered."""
    stack = [("", str(root))]
    while stack:
        prefix, d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError as e:
            problems.append(Problem(prefix.rstrip("/") or ".", "unreadable", f"unreadable directory "
                                    f"({e.strerror or e})"))
            continue
        for e in entries:
            rel = prefix + e.name
            if is_own(rel):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except OSError as err:
                problems.append(Problem(rel, "unreadable", f"cannot stat ({err.strerror or err})"))
                continue
            mode = st.st_mode
            if stat.S_ISLNK(mode):
                problems.append(Problem(rel, "not a file", f"symbolic link to {os.readlink(e.path)!r}; a cache "
                                                           "holds plain files only"))
                continue
            if mode & WRITE_BITS:
                writable.append(Writable(rel + ("/" if stat.S_ISDIR(mode) else ""),
                                         f"{stat.filemode(mode)}: writable by {_who(mode)}"))
            if stat.S_ISDIR(mode):
                stack.append((rel + "/", e.path))
            elif stat.S_ISREG(mode):
                yield rel, e.path, st
            else:
                problems.append(Problem(rel, "not a file", f"special file ({stat.filemode(mode)}); a cache holds "
                                                           "plain files only"))


def _read_hash(path: str, keep: bool) -> tuple[str, bytes | None]:
    """sha256 of a file, and its bytes if `keep` (group files are parsed from them). Only group files are kept:
    sha256_file reads into one reused buffer, 3x faster on 2,000 files than a read() of a fresh buffer per file
    (BENCHMARKS.md)."""
    if not keep:
        return sha256_file(path), None
    with open(path, "rb") as f:
        data = f.read()
    return sha256_bytes(data), data


def _outside(root: Path, rel: str, data: bytes) -> bool:
    """A group file whose members are not all in its own dir (by path, then by real path: a cache served
    through a symlinked path is not moved)."""
    try:
        paths = json.loads(data).get("child_paths") or {}
        own = root / Path(rel).parent
        return any(Path(p).parent != own and Path(os.path.realpath(p)).parent != own for p in paths.values())
    except (ValueError, AttributeError, TypeError):
        return False   # a corrupt group file is a changed file (its sha256) or scan's warning


def check_files(cache_dir: str | os.PathLike, manifest: Manifest | None) -> FileCheck:
    """Compare every file under `cache_dir` with `manifest.files` (see the module doc). Never raises for a
    problem in the directory: each becomes a Problem."""
    start = time.perf_counter()
    root = Path(cache_dir).resolve()
    listed: dict[str, FileRecord] = dict(manifest.files) if manifest else {}
    problems: list[Problem] = []
    writable: list[Writable] = []
    moved: list[str] = []
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
        try:
            digest, data = _read_hash(path, keep=group)
        except OSError as e:
            problems.append(Problem(rel, "unreadable", f"unreadable ({e.strerror or e})"))
            continue
        hashed, nbytes = hashed + 1, nbytes + st.st_size
        if digest != rec.sha256:
            problems.append(Problem(rel, "changed", "sha256 differs from the manifest"))
        elif group and _outside(root, rel, data):
            moved.append(rel)
    seen |= {p.path for p in problems}   # a link or special file at a listed path is not also "missing"
    problems += [Problem(rel, "missing", "listed in the manifest, missing on disk")
                 for rel in sorted(set(listed) - seen)]
    problems.sort(key=lambda p: (p.kind != "changed", p.path))
    return FileCheck(root=root, listed=len(listed), hashed=hashed, bytes_hashed=nbytes, problems=tuple(problems),
                     writable=tuple(sorted(writable)), moved_groups=tuple(sorted(moved)),
                     seconds=time.perf_counter() - start)


def writable_parents(cache_dir: str | os.PathLike) -> list[Writable]:
    """The cache dir and its parents up to / that users other than their owner can write: the dir itself if group-
    or world-writable at all, a parent only without the sticky bit. Example: ["/srv (drwxrwxrwx: writable by group
    and others)"]. Whoever can write one of them can replace the cache (rename a parent, swap a file) between the
    check and the load."""
    root = Path(cache_dir).resolve()
    out = []
    for p in (root, *root.parents):
        try:
            mode = os.stat(p).st_mode
        except OSError as e:
            out.append(Writable(str(p), f"cannot stat: {e.strerror or e}"))
            continue
        if mode & WRITE_BITS and (p == root or not mode & stat.S_ISVTX):
            out.append(Writable(str(p), f"{stat.filemode(mode)}: writable by {_who(mode)}"
                                + (", no sticky bit" if p != root else "")))
    return out


def shared_writable(check: FileCheck) -> list[Writable]:
    """Everything that lets another user change the cache: writable_parents() and the writable entries inside (by
    absolute path)."""
    return writable_parents(check.root) + [Writable(f"{check.root}/{w.path}", w.why) for w in check.writable]
