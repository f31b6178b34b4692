"""merge: combine caches built in one environment. A frozen plan computed from the sources (pure; a dry run stops
there), then `execute()` under the target dir's lock: every file staged and moved in (members before their group
file, so Triton never reads a group whose members are not there yet), the manifest last.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CacheDirError
from . import location
from . import manifest as manifest_mod
from .files import copy_hashed, inside, make_dirs, move_in, open_new, open_regular, sha256_bytes, staging_dir
from .fingerprint import mismatches
from .layout import is_group_file, members_first, read_group, relocated_group
from .lock import locked
from .manifest import Entry, FileRecord, Manifest
from .scan import scan


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
    manifest_unchanged: bool = field(default=False)   # the merged manifest is `into`'s own (but for `updated`)

    @property
    def empty(self) -> bool:
        """Every file is there already and the manifest would stay as it is: execute() changes nothing."""
        return not self.copies and not self.writes and not self.created and self.manifest_unchanged

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
        if self.empty:
            return
        make_dirs(self.into)   # its dirs and files of explicit modes (files.FILE_MODE, DIR_MODE), whatever the umask
        with locked(self.into), staging_dir(self.into, manifest_mod.MERGE_STAGING) as staging:
            for src, rel in self.copies:
                dest = inside(staging, rel)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with open_regular(src) as f, open_new(dest) as out:   # a link put in place of a source: refused
                    got = copy_hashed(f, out)
                if got != self.manifest.files[rel].sha256:   # changed since plan_merge checked it: nothing moves in
                    raise CacheDirError(f"{src}: changed since merge checked it (sha256 {got[:12]}, its manifest "
                                        f"says {self.manifest.files[rel].sha256[:12]}); nothing was merged")
            for rel, text in self.writes:
                dest = inside(staging, rel)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with open_new(dest) as out:
                    out.write(text.encode())
            order = members_first([rel for _, rel in self.copies] + [rel for rel, _ in self.writes])
            move_in(staging, self.into, order)
            manifest_mod.save(self.manifest, self.into)


def _checked_source(d: Path) -> Manifest:
    from .verify import require_intact
    return require_intact(scan(d), "merge")


def plan_merge(sources: list[str | os.PathLike], into: str | os.PathLike) -> MergePlan:
    """Combine caches built in the same environment (other TP degrees, other models) into `into`.
    Refuses sources whose disk keys would differ (Fingerprint.key_identity: triton_key, backend hash, env vars):
    their entries could never be hit by one server."""
    into = location.normalize(into)
    roots = [location.normalize(s) for s in sources]
    if not roots:
        raise CacheDirError("merge needs at least one source cache dir")
    if all(root == into for root in roots):
        raise CacheDirError(f"nothing to merge: every source is the --into dir {into}; name the caches to merge in")
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
            from ..version import __version__
            result = Manifest(tool_version=__version__, fingerprint=m.fingerprint)
        fp, ref = m.fingerprint, result.fingerprint
        if fp is not None and ref is not None:
            if fp.key_identity() != ref.key_identity():
                first = into if base else roots[0]
                why = "; ".join(_between(w, first, root) for w in mismatches(ref, fp, remedies=False)) \
                    or "different Triton build, ptxas or env vars"
                raise CacheDirError(f"{root} was built for another environment than {first} "
                                    f"({why}): its disk keys differ, a server could not hit both; keep separate dirs")
            warnings += [f"{root}: {_between(w, into if base else roots[0], root)}"
                         for w in mismatches(ref, fp, remedies=False)]
        elif ref is None:
            result.fingerprint = fp
        for rel, rec in sorted(m.files.items()):
            src = inside(root, rel)
            if is_group_file(rel):   # rewritten for its new dir: its bytes differ from the source by design
                text = relocated_group(read_group(src), into / Path(rel).parent)
                new = FileRecord(size=len(text.encode()), sha256=sha256_bytes(text))
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
            had = result.units.get(uid)
            if had is None or (had.status != "done" and unit.status == "done"):
                result.units[uid] = unit.model_copy(deep=True)
                if had is not None:
                    result.units[uid].tp = sorted(set(had.tp) | set(unit.tp))
            else:
                had.tp = sorted(set(had.tp) | set(unit.tp))
    assert result is not None   # some source is not `into` (refused above): it made one
    result.files = dict(sorted(existing.items()))
    return MergePlan(into=into, sources=tuple(roots), copies=tuple(copies), writes=tuple(writes), skipped=skipped,
                     conflicts=tuple(conflicts), warnings=tuple(dict.fromkeys(warnings)), manifest=result,
                     created=not into.exists(), manifest_unchanged=base is not None and _same(base, result))


def _same(a: Manifest, b: Manifest) -> bool:
    """Equal but for `updated` (save() stamps it)."""
    return a.model_copy(update={"updated": ""}) == b.model_copy(update={"updated": ""})


def _between(mismatch: str, first: Path, other: Path) -> str:
    """fingerprint.mismatches() speaks of a cache and "here" (this machine); in a merge both sides are caches:
    "python: cache built with 3.12, here 3.11" -> "python: 3.12 in FIRST, 3.11 in OTHER"."""
    for said in ("cache built with ", "cache tuned on "):
        head, sep, rest = mismatch.partition(said)
        if sep:
            break
    a, sep2, b = rest.partition(", here ")
    if not sep or not sep2:
        return mismatch
    b, paren, tail = b.partition(" (")
    return f"{head}{a} in {first}, {b} in {other}" + (f" ({tail}" if paren else "")


def _union(have: Entry, other: Entry) -> None:
    have.units = list(dict.fromkeys(have.units + other.units))
    have.binaries = sorted(set(have.binaries) | set(other.binaries))
