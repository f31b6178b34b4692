"""manifest.json: what a cache directory holds, beside Triton's own files (which it never replaces)."""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import CacheDirError
from .files import sha256_bytes, sha256_file, write_atomic
from .fingerprint import Fingerprint
from .layout import is_triton_tmp

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".autotune-cache.lock"
SIG_NAME = "manifest.sig"          # `autotune-cache sign`: an ed25519 signature of the manifest (signing.py)
OWN_FILES = (MANIFEST_NAME, LOCK_NAME, SIG_NAME)
# Staging dirs of import and merge (bundle.py, merge.py), inside the cache dir under its lock.
IMPORT_STAGING, MERGE_STAGING = ".import-", ".merge-"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Entry(BaseModel):
    """One autotune result on disk. Example: l2norm_fwd_kernel, key (128, 1, 'torch.bfloat16', ...)."""
    kernel: str
    key: list
    file: str                      # relative to the cache dir: "<hash dir>/<kernel>.autotune.json"
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
    binaries: list[str] = Field(default_factory=list)
    # How the build chose the winner (selection.py): noise, kept_incumbent, and per candidate its config, its
    # position in the kernel's config list, median and every timing (ms). None: Triton's own choice, or a hit.
    selection: dict | None = None


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
    entries: list[str] = Field(default_factory=list)   # Entry.file of every key it reached
    hits: int = 0                  # keys found on disk already (tuned by an earlier unit or build)
    # CUDA_VISIBLE_DEVICES of the child that ran its last attempt, e.g. "1", in a build sharded over several GPUs;
    # None: the build's one child, which saw every visible GPU (and manifests older than the field).
    gpu: str | None = None


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
    entries: dict[str, Entry] = Field(default_factory=dict)   # by Entry.file
    # Every file of the cache a server may read (autotune JSON, binaries, __grp__, launcher .so), by path.
    files: dict[str, FileRecord] = Field(default_factory=dict)

    @property
    def failed(self) -> list[UnitRecord]:
        return [u for u in self.units.values() if u.status == "failed"]

    @property
    def pending(self) -> list[UnitRecord]:
        return [u for u in self.units.values() if u.status == "pending"]

    def damaged_entry(self, rec: "UnitRecord", cache_dir: Path) -> str | None:
        """The first entry `rec` reached whose autotune file is unlisted, gone or changed; None when all are intact."""
        for name in rec.entries:
            entry, path = self.entries.get(name), Path(cache_dir) / name
            if entry is None or not path.is_file() or sha256_file(path) != entry.sha256:
                return name
        return None

    def digest(self) -> str:
        """sha256 over the manifest's content (fixed key order): one value that names the whole cache."""
        return sha256_bytes(json.dumps(self.model_dump(mode="json"), sort_keys=True))


def path_of(cache_dir: Path) -> Path:
    return Path(cache_dir) / MANIFEST_NAME


def load(cache_dir: Path) -> Manifest | None:
    """The manifest of a cache dir, None if there is none. Raises CacheDirError if it is unreadable."""
    path = path_of(cache_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CacheDirError(f"{path}: cannot read ({e})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise CacheDirError(f"{path}: corrupt manifest ({e})") from None
    if isinstance(raw, dict) and raw.get("schema_version") != SCHEMA_VERSION:
        raise CacheDirError(f"{path}: manifest schema {raw.get('schema_version')!r}, this tool reads {SCHEMA_VERSION}")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        raise CacheDirError(f"{path}: invalid manifest ({e.error_count()} errors: {e.errors()[0]['msg']})") from None


def save(manifest: Manifest, cache_dir: Path) -> Path:
    """Write atomically (temp file + os.replace): a reader sees the old or the new manifest, never half; synced
    before the rename, so after a crash it is the old one or all of the new one, never an empty file."""
    manifest.updated = now()
    umask = os.umask(0)
    os.umask(umask)
    # a plain file's mode under this umask: a server of another user must read it
    return write_atomic(path_of(cache_dir), manifest.model_dump_json(indent=1), mode=0o666 & ~umask, fsync=True)


def is_own(rel: str) -> bool:
    """A path (relative, posix) that is no part of the cache: ours (manifest, lock, signature, temp files) or a
    write in flight (Triton writes into <hash dir>/tmp.pid_<pid>_<uuid>/, then renames). Triton never reads any of
    them by its lookups; the manifest lists none of them and integrity checks skip them."""
    parts = rel.split("/")
    return (rel in OWN_FILES or parts[-1].startswith((".manifest.", ".write-test.")) or parts[-1].endswith(".tmp")
            or parts[0].startswith((IMPORT_STAGING, MERGE_STAGING))
            or any(is_triton_tmp(p) for p in parts))


def cache_files(cache_dir: Path) -> dict[str, FileRecord]:
    """Size and sha256 of every file under the cache dir except our own (manifest, lock, temp files)."""
    root = Path(cache_dir)
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink() or not path.is_file() or is_own(rel):
            continue   # a link is never part of a cache: integrity checks report it
        try:
            out[rel] = FileRecord(size=path.stat().st_size, sha256=sha256_file(path))
        except FileNotFoundError:   # removed while we scanned (another process's temp file): not part of the cache
            continue
    return out
