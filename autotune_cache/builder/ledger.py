"""The build's manifest bookkeeping: open it (dropping damaged files), record what the children report, charge
failures, save it (reconciling keys two children tuned at once). Plain JSON: never imports torch or triton.

What the manifest lists is what a server will trust, so a build never adopts a file it did not write: it lists the
files of the previous manifest that are still intact plus the files that appeared or changed since the build began
(a snapshot of every file's size, mtime and inode at open()). Files that were there before, unlisted, are left as
they are and named in one warning; `verify` and the loader report them as foreign."""
from __future__ import annotations

import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from ..cache import manifest as manifest_mod
from ..cache.files import inside, path_problem, sha256_regular
from ..cache.fingerprint import Fingerprint, env_flags, mismatches
from ..cache.manifest import Entry, FileRecord, FileStat, Manifest, PrunedKey, UnitRecord
from ..errors import CacheDirError
from ..version import __version__
from .plan import Plan
from .protocol import Binaries, LookedUp, NoLookup, UnitDone
from .shard import Part, ShardPlan
from .spec import ReplayUnit, Unit


class Ledger:
    """The manifest of one build of a plan into a cache dir (`manifest`, from `open()`)."""

    def __init__(self, plan: Plan, cache_dir: Path, console: Console) -> None:
        self.plan = plan
        self.cache_dir = cache_dir
        self.console = console
        self.units = {u.id: u for u in plan.units}
        self.max_attempts = 1 + plan.spec.retries
        self._manifest: Manifest | None = None   # open() reads it (`manifest`)
        self.sharded = False                # children ran at once: the same key may have been tuned twice
        self.reported: set[str] = set()     # autotune files (Entry.file) the children of this build reported
        self.reconciled: set[str] = set()   # ... whose file another child rewrote after its report (last writer won)
        self._hello_gpu: str | None = None  # the GPU whose child set the fingerprint in this build
        self._before: dict[str, FileStat] = {}      # every file on disk when the build began (open())
        self._kept: dict[str, FileRecord] = {}      # ... that the previous manifest listed, checked intact
        self._hashed: dict[str, tuple[FileStat, FileRecord]] = {}   # files this build wrote, as last hashed
        self.foreign: tuple[str, ...] = ()          # files there before the build, unlisted: not adopted
        self.parts: dict[tuple[str, int], _PartState] = {}   # (unit id, shard) -> its part's state (use())
        self._shards_of: dict[str, list[int]] = {}           # unit id -> the shards of its parts
        self.tuned: dict[tuple, int] = {}   # (kernel, key) -> times a child benchmarked it in this build (one each)

    @property
    def manifest(self) -> Manifest:
        """The build's manifest, from open(): every other step of a build comes after it."""
        if self._manifest is None:
            raise RuntimeError("the ledger's manifest is read before open()")
        return self._manifest

    @manifest.setter
    def manifest(self, m: Manifest) -> None:
        self._manifest = m

    # -- opening and saving -----------------------------------------------------------------------------------
    def open(self) -> Manifest:
        m = manifest_mod.load(self.cache_dir) or Manifest(tool_version=__version__)
        damaged = self._drop_damaged_files(m)
        self._before = manifest_mod.file_stats(self.cache_dir)
        self._kept = {rel: rec for rel, rec in m.files.items() if rel in self._before and rel not in damaged}
        if damaged:
            # Which unit wrote a compiled file is not recorded: every done unit runs again (hits, and a compile of
            # each winner whose files are gone); units of other plans stay pending until their next build.
            for old in m.units.values():
                if old.status == "done":
                    old.status, old.error = "pending", "damaged cache files were removed; build again to restore them"
        for unit in self.plan.units:
            rec = m.units.get(unit.id)
            described = _described(unit)
            # a done unit reached at least one key (an entry, or one pruned to one: no entry on Triton 3.8+): none
            # recorded is as broken as a changed one
            if rec is None or (rec.status == "done" and (not (rec.entries or rec.pruned_to_one)
                                                         or m.damaged_entry(rec, self.cache_dir) is not None)):
                m.units[unit.id] = UnitRecord(id=unit.id, target=unit.target, tokens=list(unit.tokens),
                                              **described)
            elif rec.status != "done":   # failed, pending after an interrupt, or with files to restore
                rec.status, rec.attempts, rec.failures = "pending", 0, []
            if rec is not None:
                rec.tp = sorted(set(rec.tp) | set(described["tp"]))
        self.manifest = m
        return m

    def _drop_damaged_files(self, m: Manifest) -> list[str]:
        """Delete files the manifest recorded whose bytes changed since (a disk error, a tool, a hand): Triton
        would load a damaged compiled kernel as it is and fail every call of it. Rerunning the units restores them
        (Triton rewrites what is missing); missing files are left to that too, foreign files are never touched."""
        damaged = []
        for rel, rec in m.files.items():
            path = inside(self.cache_dir, rel)   # the manifest's paths are checked at load: a second line of defence
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):   # not ours to remove: verify names it
                continue
            if st.st_size == rec.size and stat.S_ISREG(st.st_mode) and sha256_regular(path) == rec.sha256:
                continue
            path.unlink(missing_ok=True)   # a changed file, or a link or FIFO in its place (the link, not its target)
            damaged.append(rel)
        if damaged:
            self.console.print(f"[yellow]{len(damaged)} cache file(s) changed since the last build, removed and "
                               f"rebuilt: {_some(damaged)}[/yellow]")
        return damaged

    def save(self) -> None:
        try:
            self.manifest.files = self._files()
            if self.sharded:
                self._reconcile_entries()
            manifest_mod.save(self.manifest, self.cache_dir)   # atomic: the previous manifest stays on failure
        except OSError as e:
            raise CacheDirError(f"cannot write {manifest_mod.path_of(self.cache_dir)}: {e.strerror or e} "
                                "(the manifest on disk is the one before this step)") from None

    def _files(self) -> dict[str, FileRecord]:
        """What the manifest lists now (see the module doc): the previous manifest's intact files that no one
        touched since open(), and every file that appeared or changed since (hashed once per version)."""
        files, foreign = {}, []
        for rel, st in sorted(manifest_mod.file_stats(self.cache_dir).items()):
            if self._before.get(rel) == st:
                if rel in self._kept:
                    files[rel] = self._kept[rel]
                else:
                    foreign.append(rel)
                continue
            if path_problem(rel):   # no manifest may name it (Triton never writes such a name): not adopted
                foreign.append(rel)
                continue
            seen = self._hashed.get(rel)
            if seen is None or seen[0] != st:
                digest = sha256_regular(self.cache_dir / rel)
                if digest is None:   # removed or replaced while we looked: not part of the cache
                    continue
                seen = self._hashed[rel] = (st, FileRecord(size=st.size, sha256=digest))
            files[rel] = seen[1]
        self.foreign = tuple(foreign)
        return files

    def _reconcile_entries(self) -> None:
        """Entries of this build whose autotune file changed after the child reported it: two children tuned the
        same key at once and the last writer won. Record the file as it is now (hash, size, winner, timings) and
        keep the binaries both reported (prune keeps them; the winner's are among them). Plain JSON: no Triton."""
        from ..cache.layout import parse_autotune
        files = self.manifest.files
        for name in sorted(self.reported):
            entry, on_disk = self.manifest.entries.get(name), files.get(name)
            if entry is None or on_disk is None or on_disk.sha256 == entry.sha256:
                continue
            try:
                data = (self.cache_dir / name).read_bytes()   # once: the hash and the parse of the same bytes
                parsed = parse_autotune(data)
            except (OSError, ValueError, TypeError) as e:   # left as it is: verify names the difference
                self.console.print(f"[yellow]warning: {name} changed after it was tuned and cannot be read "
                                   f"({type(e).__name__}: {e})[/yellow]")
                continue
            files[name] = FileRecord(size=len(data), sha256=sha256(data).hexdigest())
            entry.sha256, entry.size, entry.configs = files[name].sha256, len(data), len(parsed.timings)
            entry.winner, entry.best, entry.margin = parsed.winner, parsed.best, parsed.margin
            self.reconciled.add(name)

    def report(self) -> None:
        """What the end of a build says about the manifest it wrote."""
        if self.reconciled:
            self.console.print(f"{len(self.reconciled)} key(s) were tuned on more than one GPU; the manifest "
                               f"records the file written last: {_some(sorted(self.reconciled))}")
        if self.foreign:
            self.console.print(f"[yellow]warning: {len(self.foreign)} file(s) were in {self.cache_dir} before this "
                               "build and no manifest listed them: left as they are, not listed (a build lists only "
                               "what it wrote); `verify` and the loader report them as foreign: "
                               f"{_some(list(self.foreign))}[/yellow]")

    # -- which units and parts run ----------------------------------------------------------------------------
    def runnable(self, units: Sequence[Unit]) -> list[Unit]:
        """The units not done with attempts left."""
        return [u for u in units if self.manifest.units[u.id].status != "done"
                and self.manifest.units[u.id].attempts < self.max_attempts]

    def use(self, shards: ShardPlan) -> None:
        """The parts this build runs (shard.plan_parts of the runnable units): each charged and retried on its own,
        a unit done when every part of it is."""
        self.parts = {(p.id, p.shard): _PartState() for parts in shards.shards for p in parts}
        self._shards_of = {}
        for unit_id, shard in self.parts:
            self._shards_of.setdefault(unit_id, []).append(shard)

    def runnable_parts(self, parts: list[Part]) -> list[Part]:
        """The parts not done with attempts left (a part's unit may have failed on another shard: it still runs)."""
        return [p for p in parts if self._part(p).status != "done" and self._part(p).attempts < self.max_attempts]

    def not_done(self) -> list[Unit]:
        """This plan's units not done, in plan order (not other builds' units)."""
        return [u for u in self.plan.units if self.manifest.units[u.id].status != "done"]

    def interrupted(self) -> None:
        for unit in self.not_done():   # not other builds' units: they were not interrupted
            rec = self.manifest.units[unit.id]
            rec.status, rec.error = "pending", "interrupted"   # earlier errors: rec.failures
        self.save()

    def _part(self, part) -> _PartState:
        """A Part's state; a unit id or Unit (a build that did not call use(): one part per unit) is its own part."""
        key = (part.id, part.shard) if isinstance(part, Part) else (getattr(part, "id", part), 0)
        if key not in self.parts:
            self.parts[key] = _PartState()
            self._shards_of.setdefault(key[0], []).append(key[1])
        return self.parts[key]

    def _sync(self, unit_id: str) -> UnitRecord:
        """The unit's record from its parts: done when all are, failed when one is (until its retry is done);
        entries and hits over all parts; attempts of its most tried part; seconds summed over the GPUs."""
        rec = self.manifest.units[unit_id]
        states = [self.parts[(unit_id, s)] for s in sorted(self._shards_of[unit_id])]
        rec.attempts = max(st.attempts for st in states)
        rec.entries = list(dict.fromkeys(f for st in states for f in st.entries))
        rec.hits = sum(hit for st in states for hit in st.entries.values())
        pruned: dict[tuple, PrunedKey] = {}
        for st in states:
            for ident, p in st.pruned.items():
                pruned[ident] = _joined(pruned.get(ident), p)
        rec.pruned_to_one = list(pruned.values())
        gpus = list(dict.fromkeys(st.gpu for st in states if st.gpu is not None))
        rec.gpu = ",".join(gpus) if gpus else None   # a unit of a sharded build may run on several: "0,1"
        if all(st.status == "done" for st in states):
            rec.status, rec.error = "done", None
            rec.seconds = round(sum(st.seconds for st in states), 2)
            rec.bench_seconds = round(sum(st.bench_seconds for st in states), 2)
            # every child reports its pool once, on its first part: keep the longest wait (the one that delayed)
            reports = [st.precompile for st in states if st.precompile]
            rec.precompile = max(reports, key=lambda r: r.get("seconds") or 0) if reports else None
            counts = [st.compiles for st in states if st.compiles is not None]
            rec.compiles = sum(counts) if counts else None
        elif any(st.status == "failed" for st in states):
            rec.status = "failed"
        return rec

    # -- what the children report -----------------------------------------------------------------------------
    def on_hello(self, fp: Fingerprint, gpu: str | None = None) -> bool:
        m = self.manifest
        if m.fingerprint is not None and m.fingerprint.key_identity() != fp.key_identity():
            reasons = "; ".join(mismatches(m.fingerprint, fp, remedies=False)) or "different Triton build or env vars"
            if self._hello_gpu is not None and gpu != self._hello_gpu:
                raise CacheDirError(f"GPU {gpu} makes other disk keys than GPU {self._hello_gpu} ({reasons}); a cache "
                                    "holds one kind of GPU's keys: build with --gpus 1, or CUDA_VISIBLE_DEVICES set "
                                    "to GPUs of one kind")
            # Where only the env vars differ, this build can take the cache's instead.
            only_env = m.fingerprint.key_identity()[:2] == fp.key_identity()[:2]
            flags = env_flags(m.fingerprint, fp) if only_env else ""
            raise CacheDirError(f"{self.cache_dir} holds a cache for another environment ({reasons}); "
                                "build into a separate directory" + (f", or with the cache's env: {flags}" if flags
                                                                     else ""))
        m.fingerprint = fp
        if self._hello_gpu is None:
            self._hello_gpu = gpu
        return True

    def on_unit_start(self, part: Part | str, gpu: str | None) -> None:
        st = self._part(part)
        st.attempts += 1
        st.gpu = gpu
        st.this_attempt = set()
        self._sync(part.id if isinstance(part, Part) else part)

    def on_lookup(self, msg: LookedUp, part: Part | str | None = None) -> bool:
        """Record a lookup of `part` (default: the unit's one part); True when it is a key the part had not
        reached before in this build."""
        st = self._part(part if part is not None else msg.unit)
        if msg.file is None:
            self.console.print(f"[yellow]warning: {msg.kernel} {msg.key} was tuned without the disk "
                               "cache (pre_hook or empty key): a server will tune it too[/yellow]")
            return False
        entry = self.manifest.entries.get(msg.file)
        if entry is None or entry.sha256 != msg.sha256:
            # Reported before in this build with other bytes: another child tuned the key too. Its binaries stay
            # listed: which write lasts is known only from the file (_reconcile_entries).
            binaries = entry.binaries if entry is not None and msg.file in self.reported else []
            entry = Entry(kernel=msg.kernel, key=list(msg.key), file=msg.file, sha256=msg.sha256, size=msg.size,
                          configs=msg.configs, winner=msg.winner, best=msg.best, margin=msg.margin,
                          tokens=None if msg.hit else msg.tokens, selection=msg.selection,
                          units=entry.units if entry else [], binaries=binaries)
            self.manifest.entries[msg.file] = entry
        if not msg.hit:
            self.tuned[(msg.kernel, tuple(msg.key))] = self.tuned.get((msg.kernel, tuple(msg.key)), 0) + 1
        self.reported.add(msg.file)
        if msg.unit not in entry.units:
            entry.units.append(msg.unit)
        self.on_binaries(msg)
        if msg.file in st.this_attempt:
            return False
        st.this_attempt.add(msg.file)
        new = msg.file not in st.entries
        st.entries[msg.file] = bool(msg.hit)   # a retry finds on disk what its first attempt tuned
        self._sync(msg.unit)
        return new

    def on_no_lookup(self, msg: NoLookup, part: Part | str | None = None) -> bool:
        """A key of `part`'s call whose configs pruned to one, which Triton (3.8+) keeps without a disk lookup:
        listed under its unit (UnitRecord.pruned_to_one) with the dirs its one config launched (prune keeps them),
        never as an entry; coverage counts it as covered. True when the part had not reached it before."""
        st = self._part(part if part is not None else msg.unit)
        ident = (msg.kernel, tuple(msg.key))
        had = st.pruned.get(ident)
        st.pruned[ident] = _joined(had, PrunedKey(kernel=msg.kernel, key=list(msg.key), binaries=list(msg.binaries)))
        self._sync(msg.unit)
        return had is None

    def on_binaries(self, msg: LookedUp | Binaries) -> None:
        """The winner's compiled-kernel dirs of an entry (one per variant launched): what prune keeps."""
        entry = self.manifest.entries.get(msg.file) if msg.file is not None else None
        if entry is not None and msg.binaries:
            entry.binaries = sorted(set(entry.binaries) | set(msg.binaries))

    def on_unit_done(self, msg: UnitDone, part: Part | str | None = None) -> UnitRecord:
        """A part is done; the unit's record, done when its last part is."""
        st = self._part(part if part is not None else msg.unit)
        st.status, st.seconds, st.bench_seconds = "done", msg.seconds, msg.bench_seconds
        st.precompile, st.compiles = msg.precompile, msg.compiles
        if st.precompile and st.precompile.get("failed"):
            self.console.print(f"[yellow]{msg.unit}: {st.precompile['failed']} of {st.precompile['workers']} "
                               f"compile workers failed ({st.precompile.get('error')}); the child compiled "
                               "their configs itself[/yellow]")
        elif st.precompile and st.compiles:   # workers on a fake GPU unlike this one, or a wait cut short
            self.console.print(f"[yellow]{msg.unit}: the benchmarking child compiled {st.compiles} kernel(s) "
                               "that the compile workers did not leave in the cache[/yellow]")
        rec = self._sync(msg.unit)
        if rec.status == "done":
            self._check_coverage(rec)
        self.save()
        return rec

    def _check_coverage(self, rec: UnitRecord) -> None:
        """Warn where the real call reached other keys than the plan predicted (kernel source drift). A key that
        pruned to one config (no entry on Triton 3.8+) was reached too."""
        unit = self.units[rec.id]
        planned = {(k.kernel, tuple(k.key)) for k in unit.keys}
        reached = {(self.manifest.entries[f].kernel, tuple(self.manifest.entries[f].key)) for f in rec.entries}
        reached |= {(p.kernel, tuple(p.key)) for p in rec.pruned_to_one}
        for kernel, key in sorted(planned - reached, key=str):
            self.console.print(f"[yellow]warning: planned key not reached: {kernel} {key}[/yellow]")
        for kernel, key in sorted(reached - planned, key=str):
            self.console.print(f"[yellow]warning: key reached but not planned: {kernel} {key}[/yellow]")

    # -- failures ---------------------------------------------------------------------------------------------
    def fail(self, part: Part | str, error: str, *, count: bool, retry: bool = True) -> None:
        """`count`: the failure was outside the part's own attempt (which UnitStart counted already). `retry`
        False: no fresh child would do better (a recorded kernel whose module does not import): no attempts left."""
        unit_id = part.id if isinstance(part, Part) else part
        st = self._part(part)
        st.attempts += int(count)
        st.status = "failed"
        rec = self._sync(unit_id)
        rec.error = error
        rec.failures.append(f"attempt {st.attempts}: {error}")
        where = f" on GPU {st.gpu}" if st.gpu is not None and len(self._shards_of[unit_id]) > 1 else ""
        self.console.print(f"[red]unit {unit_id} failed{where} (attempt {st.attempts}): {error}[/red]")
        if not retry:   # after the message, which counts the attempts made
            st.attempts = rec.attempts = max(st.attempts, self.max_attempts)
        self.save()   # after the message: on a full disk this raises, and the cause must be on screen already

    def fail_next(self, todo: list[Part], error: str) -> None:
        """Charge a failure outside any unit to the next part not done: every child then counts against a retry."""
        nxt = next((p for p in todo if self._part(p).status != "done"), None)
        if nxt is not None:
            self.fail(nxt, error, count=True)



def _joined(had: PrunedKey | None, new: PrunedKey) -> PrunedKey:
    """One key pruned to one config, as reported again (a later call, another part of the unit): the compiled dirs
    its one config launched, all of them, sorted."""
    return new.model_copy(update={"binaries": sorted(set(had.binaries if had else ()) | set(new.binaries))})

@dataclass(eq=False)
class _PartState:
    """Where one part of a unit stands in this build (shard.Part; a build on one GPU: the whole unit)."""
    status: str = "pending"     # pending, done, failed: as UnitRecord.status
    attempts: int = 0
    gpu: str | None = None      # CUDA_VISIBLE_DEVICES of the child of its last attempt
    entries: dict[str, bool] = field(default_factory=dict)   # Entry.file -> found on disk, over its attempts
    pruned: dict[tuple, PrunedKey] = field(default_factory=dict)   # (kernel, key) pruned to one: no entry (3.8+)
    this_attempt: set = field(default_factory=set)       # files reported in the current attempt
    seconds: float = 0.0
    bench_seconds: float = 0.0
    precompile: dict | None = None
    compiles: int | None = None


def _some(names: list[str]) -> str:
    """The first three of `names`, and " ..." when there are more; names from disk are shown as text (rich markup
    escaped, an unprintable one as its repr)."""
    shown = [escape(n if n.isprintable() else repr(n)) for n in names[:3]]
    return ", ".join(shown) + (" ..." if len(names) > 3 else "")


def _described(unit: Unit) -> dict:
    """What the manifest says a unit's calls were made with: its per-rank shape, TP degrees and dtypes, or a replay
    unit's kernel (the loader reads its module: record/) and none."""
    if isinstance(unit, ReplayUnit):
        return {"shape": unit.kernel.model_dump(), "tp": [], "dtypes": {}}
    return {"shape": unit.shape.model_dump(), "tp": list(unit.tp), "dtypes": unit.dtypes}
