"""manifest.json: what a cache directory holds, beside Triton's own files (which it never replaces).

A manifest is read from a directory or a bundle that anyone may have written: `load`/`parse` never hang (a FIFO, a
device), never read more than MAX_MANIFEST_BYTES and turn every way a manifest can be bad into one CacheDirError.
Every path in it (the keys of `files` and `entries`, Entry.file, Entry.binaries, UnitRecord.entries) is checked
where it is parsed (files.path_problem), so the commands that delete, move or write by it only ever meet paths
inside the cache dir.
"""
from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from .. import bounded_json
from ..amounts import size
from ..errors import CacheDirError, shown
from .files import FILE_MODE, path_problem, read_regular, sha256_bytes, sha256_regular, write_atomic
from .fingerprint import Fingerprint
from .layout import is_group_file, is_triton_tmp

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".autotune-cache.lock"
SIG_NAME = "manifest.sig"          # `autotune-cache sign`: an ed25519 signature of the manifest (signing.py)
OWN_FILES = (MANIFEST_NAME, LOCK_NAME, SIG_NAME)
# Staging dirs of import and merge (bundle.py, merge.py), inside the cache dir under its lock.
IMPORT_STAGING, MERGE_STAGING = ".import-", ".merge-"
# A manifest of 2,000 files is about 1 MB; the loader reads it inside a server, so a bigger one is refused unread.
MAX_MANIFEST_BYTES = 64 << 20
# JSON nesting of a real manifest stays under 10 levels (selection candidates' timings); deeper cannot be written
# back (pydantic refuses to serialize past a few hundred) and is refused at load.
MAX_DEPTH = bounded_json.MAX_DEPTH
# What Manifest.digest() counts of a group file: its name, not its bytes (they hold the cache's absolute path).
GROUP_RECORD = "group file: named, its paths rewritten by import"


def now(timespec: str = "seconds") -> str:
    """The time in UTC, ISO 8601 (what the manifest and the registry's index entries record)."""
    return datetime.now(timezone.utc).isoformat(timespec=timespec)


def _rel_path(rel: str) -> str:
    problem = path_problem(rel)
    if problem:
        raise ValueError(f"path {rel!r} {problem}")
    return rel


def _listed_path(rel: str) -> str:
    _rel_path(rel)
    if is_own(rel):
        raise ValueError(f"path {rel!r} is autotune-cache's own file or a write in flight, never part of a cache")
    return rel


# A path inside the cache dir (files.path_problem); ListedPath: one a manifest may list as a file of the cache.
RelPath = Annotated[str, AfterValidator(_rel_path)]
ListedPath = Annotated[str, AfterValidator(_listed_path)]


class Entry(BaseModel):
    """One autotune result on disk. Example: l2norm_fwd_kernel, key (128, 1, 'torch.bfloat16', ...)."""
    kernel: str
    key: list
    file: ListedPath               # relative to the cache dir: "<hash dir>/<kernel>.autotune.json"
    sha256: str
    size: int
    configs: int                   # configs benchmarked for it
    winner: dict                   # the winning config's __dict__ (kwargs, num_warps, num_stages, ...)
    best: float                    # winner's p50 time in ms (meaningless when the fingerprint is emulated)
    margin: float | None = None    # runner-up over winner, minus one: 0.05 = runner-up 5% slower
    units: list[str] = Field(default_factory=list)
    tokens: int | None = None      # token count of the call that tuned it
    # Compiled-kernel dirs ("<hash dir>") the winning config launched from: what prune keeps. Empty = unknown
    # (a manifest older than this field, or a call that failed before its launch).
    binaries: list[RelPath] = Field(default_factory=list)
    # How the build chose the winner (selection.py): noise, kept_incumbent, and per candidate its config, its
    # position in the kernel's config list, median and every timing (ms). None: Triton's own choice, or a hit.
    selection: dict | None = None


class PrunedKey(BaseModel):
    """A key a unit's call reached whose configs pruned to one config, on a Triton that then looks nothing up (3.8+:
    autotuner/disk.py PrunedToOne): no disk entry exists or is needed, and none is missing (verify's coverage counts
    it as covered). Example: toy_prune_kernel, key [128, 1, "torch.bfloat16", "torch.bfloat16"]. On Triton 3.6 the
    same key is an Entry with configs 1."""
    kernel: str
    key: list
    # Compiled-kernel dirs the one config launched from: what prune keeps, as an Entry's winners
    binaries: list[RelPath] = Field(default_factory=list)


class UnitRecord(BaseModel):
    id: str
    target: str
    tp: list[int]
    shape: dict
    dtypes: dict[str, str]
    tokens: list[int]
    status: Literal["pending", "done", "failed"] = "pending"
    attempts: int = 0
    error: str | None = None       # why the last attempt failed
    # Why earlier attempts of this build failed, oldest first ("attempt 1: child killed by SIGSEGV"): kept when a
    # retry succeeds, so a unit that needed one says so.
    failures: list[str] = Field(default_factory=list)
    seconds: float | None = None   # wall time of the successful attempt
    bench_seconds: float | None = None   # ... of which benchmarking misses (screening + extra timings)
    # The first unit of a child waits for its compile workers: {workers, failed, seconds (waited), ready_s (their
    # compile span), import_s (their start and imports), compiled (kernels they compiled)}
    precompile: dict | None = None
    compiles: int | None = None    # kernels the benchmarking child compiled itself (not found compiled)
    entries: list[ListedPath] = Field(default_factory=list)   # Entry.file of every key it reached
    hits: int = 0                  # keys found on disk already (tuned by an earlier unit or build)
    # CUDA_VISIBLE_DEVICES of the child that ran its last attempt, e.g. "1", in a build sharded over several GPUs;
    # None: the build's one child, which saw every visible GPU (and manifests older than the field).
    gpu: str | None = None
    # Keys it reached that pruned to one config, with no disk lookup (Triton 3.8+): PrunedKey. Dumped only where
    # there is one, so a manifest written before the field digests (and verifies its signature) as written.
    pruned_to_one: list[PrunedKey] = Field(default_factory=list)

    @model_serializer(mode="wrap")
    def _omit_none_pruned(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if not self.pruned_to_one:
            data.pop("pruned_to_one", None)
        return data


class FileRecord(BaseModel):
    size: int
    sha256: str


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    tool_version: str
    created: str = Field(default_factory=now)
    updated: str = Field(default_factory=now)
    fingerprint: Fingerprint | None = None
    units: dict[str, UnitRecord] = Field(default_factory=dict)
    entries: dict[ListedPath, Entry] = Field(default_factory=dict)   # by Entry.file
    # Every file of the cache a server may read (autotune JSON, binaries, __grp__, launcher .so), by path.
    files: dict[ListedPath, FileRecord] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_meaning_per_path(self) -> Manifest:
        """An entry is kept under its own file's path, and no listed file is also a dir of another listed file
        (a bundle could not hold both)."""
        for rel, entry in self.entries.items():
            if entry.file != rel:
                raise ValueError(f"entry {rel!r} names another file ({entry.file!r})")
        dirs = {rel.rsplit("/", i)[0] for rel in self.files for i in range(1, rel.count("/") + 1)}
        clash = sorted(dirs & set(self.files))
        if clash:
            raise ValueError(f"path {clash[0]!r} is listed as a file and is a directory of other listed files")
        return self

    @property
    def failed(self) -> list[UnitRecord]:
        return [u for u in self.units.values() if u.status == "failed"]

    @property
    def pending(self) -> list[UnitRecord]:
        return [u for u in self.units.values() if u.status == "pending"]

    def damaged_entry(self, rec: UnitRecord, cache_dir: Path) -> str | None:
        """The first entry `rec` reached whose autotune file is unlisted, gone, not a regular file or changed; None
        when all are intact."""
        for name in rec.entries:
            entry = self.entries.get(name)
            if entry is None or sha256_regular(Path(cache_dir) / name) != entry.sha256:
                return name
        return None

    def digest(self) -> str:
        """sha256 over what the manifest says the cache holds (fixed key order): one value that names the cache
        wherever it lies, so `export`, `import`, `inspect` of the imported copy, `sign` and the registry show the
        same one. Left out is only what moving a cache changes: `updated` (when the manifest was last written) and
        the size and sha256 of Triton's group files (`__grp__*.json` list their members by absolute path, which
        `import` rewrites); each group file is still named, and every member it loads is listed by sha256."""
        data = self.model_dump(mode="json")
        data.pop("updated", None)
        data["files"] = {rel: GROUP_RECORD if is_group_file(rel) else rec for rel, rec in data["files"].items()}
        return sha256_bytes(json.dumps(data, sort_keys=True))

    def written_digest(self) -> str:
        """sha256 over the whole manifest as written, `updated` and group files' bytes included: what bundle.json
        named as the manifest's digest before digest() left those out (bundles exported until then)."""
        return sha256_bytes(json.dumps(self.model_dump(mode="json"), sort_keys=True))


def path_of(cache_dir: Path) -> Path:
    return Path(cache_dir) / MANIFEST_NAME


def read(cache_dir: Path) -> bytes | None:
    """The bytes of a cache dir's manifest.json, None if there is none; CacheDirError if it is no regular file, is
    larger than MAX_MANIFEST_BYTES or cannot be read."""
    try:
        return read_regular(path_of(cache_dir), MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        return None


def parse(data: bytes, where: str | os.PathLike) -> Manifest:
    """A manifest from its bytes; CacheDirError (one line, starting with `where`) for anything else than a valid
    one: not UTF-8, not JSON, nested deeper than MAX_DEPTH, another schema, a wrong field or path."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise CacheDirError(f"{where}: larger than {size(MAX_MANIFEST_BYTES)}, the most a manifest may be")
    try:
        raw = bounded_json.json_value(data, MAX_DEPTH)
    except ValueError as e:
        raise CacheDirError(f"{where}: corrupt manifest ({e})") from None
    if isinstance(raw, dict) and raw.get("schema_version") != SCHEMA_VERSION:
        raise CacheDirError(f"{where}: manifest schema {shown(raw.get('schema_version'))}, this tool reads "
                            f"{SCHEMA_VERSION}")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(part if isinstance(part, str) and part.isidentifier() else shown(part)
                       for part in first["loc"] if part != "[key]") or "manifest"
        raise CacheDirError(f"{where}: invalid manifest ({e.error_count()} errors: {loc}: "
                            f"{bounded_json.one_line(first['msg'])})") from None
    except (ValueError, TypeError, RecursionError) as e:   # pydantic's own limits, beyond its ValidationError
        raise CacheDirError(f"{where}: invalid manifest ({type(e).__name__}: {bounded_json.one_line(e)})") from None


def load(cache_dir: Path) -> Manifest | None:
    """The manifest of a cache dir, None if there is none. Raises CacheDirError if it is unreadable or invalid."""
    data = read(cache_dir)
    return None if data is None else parse(data, path_of(cache_dir))


def save(manifest: Manifest, cache_dir: Path) -> Path:
    """Write atomically (temp file + os.replace): a reader sees the old or the new manifest, never half; synced
    before the rename, so after a crash it is the old one or all of the new one, never an empty file."""
    manifest.updated = now()
    # explicit, whatever the umask: a server of another user must read it, and no one else may write it (under
    # umask 000 a derived mode would be world-writable, and trust would refuse the cache)
    return write_atomic(path_of(cache_dir), manifest.model_dump_json(indent=1), mode=FILE_MODE, fsync=True)


def is_own(rel: str) -> bool:
    """A path (relative, posix) that is no part of the cache: ours (manifest, lock, signature, temp files) or a
    write in flight (Triton writes into <hash dir>/tmp.pid_<pid>_<uuid>/, then renames). Triton never reads any of
    them by its lookups; the manifest lists none of them and integrity checks skip them."""
    parts = rel.split("/")
    return (rel in OWN_FILES or parts[-1].startswith((".manifest.", ".write-test.")) or parts[-1].endswith(".tmp")
            or parts[0].startswith((IMPORT_STAGING, MERGE_STAGING))
            or any(is_triton_tmp(p) for p in parts))


@dataclass(frozen=True)
class FileStat:
    """What tells a file's version apart without reading it: a rewrite (Triton's temp file + rename) changes the
    inode, an edit in place the size or mtime."""
    size: int
    mtime_ns: int
    inode: int


def file_stats(cache_dir: Path) -> dict[str, FileStat]:
    """Every regular file under the cache dir except our own and writes in flight (is_own), by relative path; links
    and special files are skipped (integrity checks report them), never followed. Nothing is read."""
    root = Path(cache_dir)
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):   # os.walk never descends into a link to a dir
        prefix = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if prefix == "." else prefix + "/"
        dirnames[:] = [d for d in dirnames if not is_own(prefix + d)]
        for name in filenames:
            rel = prefix + name
            if is_own(rel):
                continue
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:   # removed while we walked (another process's temp file)
                continue
            if stat.S_ISREG(st.st_mode):
                out[rel] = FileStat(st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def cache_files(cache_dir: Path) -> dict[str, FileRecord]:
    """Size and sha256 of every file under the cache dir except our own (manifest, lock, temp files)."""
    out = {}
    for rel, st in sorted(file_stats(cache_dir).items()):
        digest = sha256_regular(Path(cache_dir) / rel)
        if digest is not None:   # None: removed or replaced while we scanned: not part of the cache
            out[rel] = FileRecord(size=st.size, sha256=digest)
    return out
