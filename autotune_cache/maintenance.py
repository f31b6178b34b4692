"""prune and merge: each computes a frozen plan from a scan (pure, nothing touched; a dry run stops there), then
`execute()` does it under the cache dir's lock.

Order of every execute: the new manifest is written first (atomically) and lists only what will remain, then
files go. An interruption therefore leaves extra files on disk, never a manifest that names a missing file; and
in a compiled dir the group file goes before its members, so Triton never reads a group whose members vanished.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import filelock

from . import manifest as manifest_mod
from .errors import CacheDirError
from .fingerprint import mismatches
from .manifest import Entry, FileRecord, Manifest
from .scan import CacheScan, scan
from .triton_cache import GROUP_PREFIX, read_group, relocated_group


@contextlib.contextmanager
def locked(cache_dir: Path, timeout: float = 10.0):
    """The lock a build holds: never prune or merge under a running build."""
    lock = filelock.FileLock(Path(cache_dir) / manifest_mod.LOCK_NAME)
    try:
        lock.acquire(timeout=timeout)
    except filelock.Timeout:
        raise CacheDirError(f"{cache_dir} is locked by a running build ({lock.lock_file}); try again later") from None
    try:
        yield
    finally:
        lock.release()


def _remove_dir(d: Path) -> None:
    """A compiled dir: its group file first (see module doc), then the rest."""
    for g in d.glob(f"{GROUP_PREFIX}*"):
        g.unlink(missing_ok=True)
    shutil.rmtree(d, ignore_errors=True)


# -- prune ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Deletion:
    """One path prune removes. Example: ("KX3.../", "compiled kernel of a losing config: chunk_fwd_kernel_o",
    412345)."""
    path: str          # relative; a trailing "/" marks a whole dir
    reason: str
    bytes: int


@dataclass(frozen=True)
class PrunePlan:
    root: Path
    deletions: tuple[Deletion, ...]
    dropped_entries: tuple[str, ...]   # manifest entries removed (their autotune file is gone or deleted)
    kept_unknown: tuple[str, ...]      # kernels whose compiled dirs are kept: their winners were never recorded
    manifest: Manifest                 # the manifest after prune

    @property
    def bytes_freed(self) -> int:
        return sum(d.bytes for d in self.deletions)

    def as_dict(self) -> dict:
        return {"cache_dir": str(self.root), "bytes_freed": self.bytes_freed,
                "deletions": [asdict(d) for d in self.deletions], "dropped_entries": list(self.dropped_entries),
                "kept_unknown": list(self.kept_unknown)}

    def execute(self) -> None:
        with locked(self.root):
            manifest_mod.save(self.manifest, self.root)
            for d in self.deletions:
                path = self.root / d.path.rstrip("/")
                if d.path.endswith("/"):
                    _remove_dir(path)
                else:
                    path.unlink(missing_ok=True)
                    with contextlib.suppress(OSError):
                        path.parent.rmdir()   # the hash dir of a deleted autotune file, if now empty


def plan_prune(s: CacheScan, *, all_binaries: bool = False) -> PrunePlan:
    """What prune deletes:
    - compiled dirs of losing configs (their kernel's entries all recorded their winners, and this dir is no
      winner's); with all_binaries, every compiled dir and Triton's .so too (only autotune JSON stays: the server
      then compiles each winner once and benchmarks nothing);
    - stale entries: autotune files the manifest does not list, corrupt ones, manifest entries with no file;
    - Triton's temp dirs of interrupted writes.
    Needs the manifest: it is the only record of which binaries are the winners'."""
    if s.manifest is None:
        reason = next((w.message for w in s.warnings if w.path == manifest_mod.MANIFEST_NAME), "no manifest.json")
        raise CacheDirError(f"{s.root}: {reason}; prune needs the build's manifest (it records the winners)")
    deletions: dict[str, Deletion] = {}
    for c in s.compiled:
        if c.role == "loser" or all_binaries:
            why = "compiled kernel of a losing config" if c.role == "loser" else f"compiled kernel ({c.role})"
            deletions[f"{c.dir}/"] = Deletion(f"{c.dir}/", f"{why}: {c.kernel}", c.size)
    for o in s.other:
        if o.kind == "triton-tmp":
            deletions[f"{o.path}/"] = Deletion(f"{o.path}/", "left by an interrupted Triton write", o.size)
        elif all_binaries and o.kind == "triton-native":
            deletions[o.path] = Deletion(o.path, "Triton launcher/utils library (the server rebuilds it)", o.size)
    for r in s.unlisted:
        deletions[r.file] = Deletion(r.file, f"stale: not in the manifest ({r.kernel})", r.size)
    sizes = {c.dir: c.size for c in s.compiled}
    for rel in s.corrupt:   # Triton fails on these: an autotune file goes, a compiled dir goes whole (recompiled)
        if rel.endswith(".autotune.json"):
            deletions[rel] = Deletion(rel, "corrupt autotune file (Triton would fail on it)", _size(s.root / rel))
        else:
            d = rel.split("/")[0] + "/"
            deletions.setdefault(d, Deletion(d, "compiled kernel with a corrupt group file", sizes.get(d[:-1], 0)))
    deletions = list(deletions.values())

    gone = {d.path for d in deletions if not d.path.endswith("/")}
    gone_dirs = tuple(d.path for d in deletions if d.path.endswith("/"))
    m = s.manifest.model_copy(deep=True)
    dropped = tuple(sorted(f for f in m.entries if f in gone or f in s.missing))
    for f in dropped:
        del m.entries[f]
    m.files = {rel: rec for rel, rec in m.files.items() if rel not in gone and not rel.startswith(gone_dirs)}
    unknown = tuple(sorted({c.kernel for c in s.compiled if c.role == "unknown"})) if not all_binaries else ()
    return PrunePlan(root=s.root, deletions=tuple(sorted(deletions, key=lambda d: d.path)), dropped_entries=dropped,
                     kept_unknown=unknown, manifest=m)


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except OSError:
        return 0


# -- merge ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MergePlan:
    """Files to copy into `into` and the merged manifest. Group files are rewritten for their new directory
    (their text is computed here), every other file is copied as is."""
    into: Path
    sources: tuple[Path, ...]
    copies: tuple[tuple[Path, str], ...]       # (source file, relative destination)
    writes: tuple[tuple[str, str], ...]        # (relative destination, text): relocated group files
    skipped: int                               # files already there with the same content
    conflicts: tuple[str, ...]                 # same path, other content: the first one is kept
    warnings: tuple[str, ...]                  # fingerprint differences that do not change disk keys
    manifest: Manifest
    created: bool = field(default=False)       # `into` does not exist yet

    @property
    def bytes(self) -> int:
        return sum(src.stat().st_size for src, _ in self.copies) + sum(len(t) for _, t in self.writes)

    def as_dict(self) -> dict:
        return {"into": str(self.into), "sources": [str(s) for s in self.sources], "copied": len(self.copies),
                "rewritten_groups": len(self.writes), "skipped": self.skipped, "bytes": self.bytes,
                "conflicts": list(self.conflicts), "warnings": list(self.warnings),
                "entries": len(self.manifest.entries), "units": len(self.manifest.units),
                "files": len(self.manifest.files)}

    def execute(self) -> None:
        self.into.mkdir(parents=True, exist_ok=True)
        with locked(self.into):
            staging = Path(tempfile.mkdtemp(dir=self.into, prefix=".merge-"))
            try:   # stage each file, then os.replace it in: a reader never sees half a file
                for src, rel in self.copies:
                    tmp = staging / rel
                    tmp.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, tmp)
                for rel, text in self.writes:
                    tmp = staging / rel
                    tmp.parent.mkdir(parents=True, exist_ok=True)
                    tmp.write_text(text)
                # members before their group file: Triton never reads a group whose members are not there yet
                order = sorted([rel for _, rel in self.copies] + [rel for rel, _ in self.writes],
                               key=lambda rel: (Path(rel).name.startswith(GROUP_PREFIX), rel))
                for rel in order:
                    (self.into / rel).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(staging / rel, self.into / rel)
                manifest_mod.save(self.manifest, self.into)
            finally:
                shutil.rmtree(staging, ignore_errors=True)


def _checked_source(d: Path) -> Manifest:
    from .verify import require_intact
    return require_intact(scan(d), "merge")


def plan_merge(sources: list[str | os.PathLike], into: str | os.PathLike) -> MergePlan:
    """Combine caches built in the same environment (other TP degrees, other models) into `into`.
    Refuses sources whose disk keys would differ (Fingerprint.key_identity: triton_key, backend hash, env vars):
    their entries could never be hit by one server."""
    into = Path(into).expanduser().resolve()
    roots = [Path(s).expanduser().resolve() for s in sources]
    if not roots:
        raise CacheDirError("merge needs at least one source cache dir")
    if into.exists() and not into.is_dir():
        raise CacheDirError(f"{into} is not a directory")
    base = manifest_mod.load(into) if into.is_dir() else None
    if base is None and into.is_dir() and any(p.name not in manifest_mod.OWN_FILES for p in into.iterdir()):
        raise CacheDirError(f"{into} holds files but no manifest.json: merge into an empty dir or a built cache")
    result = base.model_copy(deep=True) if base else None
    existing: dict[str, FileRecord] = dict(base.files) if base else {}
    copies, writes, conflicts, warnings, skipped = [], [], [], [], 0
    for root in roots:
        if root == into:
            continue
        m = _checked_source(root)
        if result is None:
            from . import __version__
            result = Manifest(tool_version=__version__, fingerprint=m.fingerprint)
        fp, ref = m.fingerprint, result.fingerprint
        if fp is not None and ref is not None:
            if fp.key_identity() != ref.key_identity():
                why = "; ".join(mismatches(ref, fp)) or "different Triton build, ptxas or env vars"
                raise CacheDirError(f"{root} was built for another environment than {into if base else roots[0]} "
                                    f"({why}): its disk keys differ, a server could not hit both; keep separate dirs")
            warnings += [f"{root}: {w}" for w in mismatches(ref, fp)]
        elif ref is None:
            result.fingerprint = fp
        for rel, rec in sorted(m.files.items()):
            src = root / rel
            is_group = Path(rel).name.startswith(GROUP_PREFIX)
            if is_group:   # rewritten for its new dir: its bytes differ from the source by design
                text = relocated_group(read_group(src), into / Path(rel).parent)
                new = FileRecord(size=len(text.encode()), sha256=_sha_text(text))
                if rel in existing:
                    skipped += 1
                    continue
                writes.append((rel, text))
                existing[rel] = new
                continue
            if rel in existing:
                if existing[rel].sha256 == rec.sha256:
                    skipped += 1
                else:
                    conflicts.append(f"{rel}: differs in {root} (kept the one merged first)")
                continue
            copies.append((src, rel))
            existing[rel] = rec
        for rel, entry in m.entries.items():
            have = result.entries.get(rel)
            if have is None:
                result.entries[rel] = entry.model_copy(deep=True)
            elif have.sha256 == entry.sha256:
                _union(have, entry)
            # else: the conflict is reported with the file above; the kept file's entry stays
        for uid, unit in m.units.items():
            have = result.units.get(uid)
            if have is None or (have.status != "done" and unit.status == "done"):
                result.units[uid] = unit.model_copy(deep=True)
                if have is not None:
                    result.units[uid].tp = sorted(set(have.tp) | set(unit.tp))
            else:
                have.tp = sorted(set(have.tp) | set(unit.tp))
    if result is None:
        raise CacheDirError("nothing to merge: every source is the target dir")
    result.files = dict(sorted(existing.items()))
    return MergePlan(into=into, sources=tuple(roots), copies=tuple(copies), writes=tuple(writes), skipped=skipped,
                     conflicts=tuple(conflicts), warnings=tuple(dict.fromkeys(warnings)), manifest=result,
                     created=not into.exists())


def _union(have: Entry, other: Entry) -> None:
    have.units = list(dict.fromkeys(have.units + other.units))
    have.binaries = sorted(set(have.binaries) | set(other.binaries))


def _sha_text(text: str) -> str:
    import hashlib
    return hashlib.sha256(text.encode()).hexdigest()
