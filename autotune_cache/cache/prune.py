"""prune: compute a frozen plan from a scan (pure, nothing touched; a dry run stops there), then `execute()` it
under the cache dir's lock.

Order: the new manifest is written first (atomically) and lists only what will remain, then files go. An
interruption therefore leaves extra files on disk, never a manifest that names a missing file; and in a compiled
dir the group file goes before its members, so Triton never reads a group whose members vanished.
"""
from __future__ import annotations

import contextlib
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import CacheDirError
from . import manifest as manifest_mod
from .files import inside
from .layout import is_autotune_file, is_group_file
from .lock import locked
from .manifest import Manifest
from .scan import CacheScan


def _remove_dir(d: Path) -> None:
    """A compiled dir: its group file first (see module doc), then the rest. A link put in its place since the scan
    goes itself: what it points to is never entered."""
    if d.is_symlink() or not d.is_dir():
        d.unlink(missing_ok=True)
        return
    for g in d.glob("*"):
        if is_group_file(g.name):
            g.unlink(missing_ok=True)
    shutil.rmtree(d, ignore_errors=True)


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
    def empty(self) -> bool:
        """Nothing to delete and no entry to drop: execute() would change nothing (so the CLI does not call it)."""
        return not self.deletions and not self.dropped_entries

    @property
    def bytes_freed(self) -> int:
        return sum(d.bytes for d in self.deletions)

    def as_dict(self) -> dict:
        return {"cache_dir": str(self.root), "bytes_freed": self.bytes_freed,
                "deletions": [asdict(d) for d in self.deletions], "dropped_entries": list(self.dropped_entries),
                "kept_unknown": list(self.kept_unknown)}

    def execute(self) -> None:
        if self.empty:   # not even the manifest is rewritten: a read-only cache with nothing to prune is fine
            return
        with locked(self.root):
            manifest_mod.save(self.manifest, self.root)
            for d in self.deletions:
                path = inside(self.root, d.path.rstrip("/"))   # names from the scan; inside: a second line of defence
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
        if is_autotune_file(rel):
            deletions[rel] = Deletion(rel, "corrupt autotune file (Triton would fail on it)", _size(s.root / rel))
        else:
            d = rel.split("/")[0] + "/"
            deletions.setdefault(d, Deletion(d, "compiled kernel with a corrupt group file", sizes.get(d[:-1], 0)))
    planned = list(deletions.values())

    gone = {d.path for d in planned if not d.path.endswith("/")}
    gone_dirs = tuple(d.path for d in planned if d.path.endswith("/"))
    m = s.manifest.model_copy(deep=True)
    dropped = tuple(sorted(f for f in m.entries if f in gone or f in s.missing))
    for f in dropped:
        del m.entries[f]
    m.files = {rel: rec for rel, rec in m.files.items() if rel not in gone and not rel.startswith(gone_dirs)}
    unknown = tuple(sorted({c.kernel for c in s.compiled if c.role == "unknown"})) if not all_binaries else ()
    return PrunePlan(root=s.root, deletions=tuple(sorted(planned, key=lambda d: d.path)), dropped_entries=dropped,
                     kept_unknown=unknown, manifest=m)


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except OSError:
        return 0
