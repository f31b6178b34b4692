"""The build parent: locks the cache dir, runs children, keeps the manifest. Never imports torch or triton."""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from hashlib import sha256
from pathlib import Path

import filelock
import multiprocess
from multiprocess.connection import wait
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..version import __version__
from . import gpus
from ..cache import manifest as manifest_mod
from .channel import Channel
from ..errors import BuildFailedError, CacheDirError, NoGPUError
from ..cache.fingerprint import Fingerprint, mismatches
from ..cache.manifest import Entry, FileRecord, Manifest, UnitRecord
from .plan import Plan, plan as make_plan
from .protocol import (Binaries, ChildOptions, ChildUnit, Done, Go, Hello, Lookup, NoGPU, Stop, UnitDone, UnitFailed,
                       UnitStart)
from .shard import plan_shards, shared_keys, unit_configs
from .spec import BuildSpec, Unit

STARTUP_TIMEOUT_S = 600.0   # imports + driver init of a child, before its first unit
EXIT_GRACE_S = 30.0         # a child that said done (or failed) and has not exited by then is killed
# Below this much free space a build does not start: one FLA unit writes about 30 MB (BENCHMARKS.md), and a disk
# that fills up in the middle fails the unit at hand (its files are Triton's atomic writes, never half files).
MIN_FREE_BYTES = 64 << 20


def prepare_cache_dir(path: str | os.PathLike) -> Path:
    """Absolute, existing, writable directory with room to build, or CacheDirError before any work starts
    (and then no directory this call created is left behind)."""
    if path is None:
        raise CacheDirError("a cache dir is needed (--cache-dir DIR)")
    root = Path(path).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise CacheDirError(f"cache dir {root} exists and is not a directory")
    created = []   # the directories mkdir is about to create, innermost first
    for p in (root, *root.parents):
        if p.exists():
            break
        created.append(p)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test.") as f:
            f.write(b"\0" * 4096)   # an empty file is created even on a full disk: write (and sync) a block
            f.flush()
            os.fsync(f.fileno())
        free = shutil.disk_usage(root).free
        if free < MIN_FREE_BYTES:
            raise CacheDirError(f"cache dir {root} has {free / 1e6:.1f} MB free; a build needs at least "
                                f"{MIN_FREE_BYTES / 1e6:.0f} MB (an FLA unit writes about 30 MB)")
    except (OSError, CacheDirError) as e:
        for p in created:
            try:
                p.rmdir()
            except OSError:
                break
        if isinstance(e, CacheDirError):
            raise
        raise CacheDirError(f"cache dir {root} is not writable: {e.strerror or e}") from None
    return root


def _signal_name(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode == -signal.SIGKILL:   # not by us: we say "timed out" for our own kills
        return "killed by SIGKILL (out of memory? the kernel's OOM killer sends SIGKILL)"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


@dataclass(eq=False)
class _Child:
    """One build child and where it stands: the units it was given, the one it is in, when it must speak next."""
    proc: object                  # multiprocess.Process (spawn)
    link: Channel                 # the parent's end of its pipe
    theirs: object                # the child's end, closed here once it started
    gpu: str | None               # its CUDA_VISIBLE_DEVICES; None: it sees every visible GPU (a one-child build)
    todo: list[Unit]
    deadline: float               # startup, then per unit and between units (time.monotonic())
    current: str | None = None    # the unit it is in
    started_any: bool = False
    accounted: bool = False       # how it ended is charged already (done, a failed unit, a timeout)
    exit_by: float | None = None  # its run is over (done, failed, end of file): killed if still alive then
    closed: bool = False


class Build:
    """One build of a plan into a cache dir. `run()` returns the manifest; units done are never redone.

    `devices`: the GPU of each child that runs at once (gpus.for_build; default from the spec): (None,) is one
    child seeing every visible GPU; ("0", "1") shards the units over two children, one per GPU."""

    def __init__(self, plan: Plan, cache_dir: Path, *, console: Console | None = None, progress: bool = True,
                 devices: tuple[str | None, ...] | None = None):
        self.plan = plan
        self.spec = plan.spec
        self.cache_dir = cache_dir
        self.console = console or Console(stderr=True)
        self.show_progress = progress
        self.devices = tuple(devices) if devices is not None else gpus.for_build(self.spec.gpus, self.spec.emulate)
        self.manifest: Manifest | None = None
        self.units = {u.id: u for u in plan.units}
        self._tasks = {}
        self._progress = None
        self._sharded = False     # children ran at once: the same key may have been tuned twice
        self._reported = set()    # autotune files (Entry.file) the children of this build reported
        self._reconciled = set()  # ... whose file another child rewrote after its report (the last writer won)
        self._hello_gpu = None    # the GPU whose child set the fingerprint in this build

    # -- manifest bookkeeping ---------------------------------------------------------------------------------
    def _open_manifest(self) -> Manifest:
        m = manifest_mod.load(self.cache_dir) or Manifest(tool_version=__version__)
        if self._drop_damaged_files(m):
            # Which unit wrote a compiled file is not recorded: every done unit runs again (hits, and a compile of
            # each winner whose files are gone); units of other plans stay pending until their next build.
            for rec in m.units.values():
                if rec.status == "done":
                    rec.status, rec.error = "pending", "damaged cache files were removed; build again to restore them"
        for unit in self.plan.units:
            rec = m.units.get(unit.id)
            # a done unit reached at least one key: none recorded is as broken as a changed one
            if rec is None or (rec.status == "done" and
                               (not rec.entries or m.damaged_entry(rec, self.cache_dir) is not None)):
                m.units[unit.id] = UnitRecord(id=unit.id, target=unit.target, tp=list(unit.tp),
                                              shape=unit.shape.model_dump(), dtypes=unit.dtypes,
                                              tokens=list(unit.tokens))
            elif rec.status != "done":   # failed, pending after an interrupt, or with files to restore
                rec.status, rec.attempts, rec.failures = "pending", 0, []
            if rec is not None:
                rec.tp = sorted(set(rec.tp) | set(unit.tp))
        return m

    def _drop_damaged_files(self, m: Manifest) -> list[str]:
        """Delete files the manifest recorded whose bytes changed since (a disk error, a tool, a hand): Triton
        would load a damaged compiled kernel as it is and fail every call of it. Rerunning the units restores them
        (Triton rewrites what is missing); missing files are left to that too, foreign files are never touched."""
        from ..cache.files import sha256_file
        damaged = []
        for rel, rec in m.files.items():
            path = self.cache_dir / rel
            try:
                if path.stat().st_size == rec.size and sha256_file(path) == rec.sha256:
                    continue
            except FileNotFoundError:
                continue
            path.unlink(missing_ok=True)
            damaged.append(rel)
        if damaged:
            self.console.print(f"[yellow]{len(damaged)} cache file(s) changed since the last build, removed and "
                               f"rebuilt: {', '.join(damaged[:3])}{' ...' if len(damaged) > 3 else ''}[/yellow]")
        return damaged

    def _save(self) -> None:
        try:
            self.manifest.files = manifest_mod.cache_files(self.cache_dir)
            if self._sharded:
                self._reconcile_entries()
            manifest_mod.save(self.manifest, self.cache_dir)   # atomic: the previous manifest stays on failure
        except OSError as e:
            raise CacheDirError(f"cannot write {manifest_mod.path_of(self.cache_dir)}: {e.strerror or e} "
                                "(the manifest on disk is the one before this step)") from None

    def _reconcile_entries(self) -> None:
        """Entries of this build whose autotune file changed after the child reported it: two children tuned the
        same key at once and the last writer won. Record the file as it is now (hash, size, winner, timings) and
        keep the binaries both reported (prune keeps them; the winner's are among them). Plain JSON: no Triton."""
        from ..cache.layout import parse_autotune
        files = self.manifest.files
        for name in sorted(self._reported):
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
            self._reconciled.add(name)

    # -- messages from the child ------------------------------------------------------------------------------
    def _on_hello(self, fp: Fingerprint, gpu: str | None = None) -> bool:
        m = self.manifest
        if m.fingerprint is not None and m.fingerprint.key_identity() != fp.key_identity():
            reasons = "; ".join(mismatches(m.fingerprint, fp)) or "different Triton build or env vars"
            if self._hello_gpu is not None and gpu != self._hello_gpu:
                raise CacheDirError(f"GPU {gpu} makes other disk keys than GPU {self._hello_gpu} ({reasons}); a cache "
                                    "holds one kind of GPU's keys: build with --gpus 1, or CUDA_VISIBLE_DEVICES set "
                                    "to GPUs of one kind")
            raise CacheDirError(f"{self.cache_dir} holds a cache for another environment ({reasons}); "
                                "build into a separate directory")
        m.fingerprint = fp
        if self._hello_gpu is None:
            self._hello_gpu = gpu
        return True

    def _on_lookup(self, msg: Lookup) -> None:
        rec = self.manifest.units[msg.unit]
        if msg.file is None:
            self.console.print(f"[yellow]warning: {msg.kernel} {msg.key} was tuned without the disk "
                               "cache (pre_hook or empty key): a server will tune it too[/yellow]")
            return
        entry = self.manifest.entries.get(msg.file)
        if entry is None or entry.sha256 != msg.sha256:
            # Reported before in this build with other bytes: another child tuned the key too. Its binaries stay
            # listed: which write lasts is known only from the file (_reconcile_entries).
            binaries = entry.binaries if entry is not None and msg.file in self._reported else []
            entry = Entry(kernel=msg.kernel, key=list(msg.key), file=msg.file, sha256=msg.sha256, size=msg.size,
                          configs=msg.configs, winner=msg.winner, best=msg.best, margin=msg.margin,
                          tokens=None if msg.hit else msg.tokens, selection=msg.selection,
                          units=entry.units if entry else [], binaries=binaries)
            self.manifest.entries[msg.file] = entry
        self._reported.add(msg.file)
        if rec.id not in entry.units:
            entry.units.append(rec.id)
        self._on_binaries(msg)
        if msg.file not in rec.entries:
            rec.entries.append(msg.file)
            rec.hits += bool(msg.hit)
            if rec.id in self._tasks:
                self._progress.update(self._tasks[rec.id], advance=1, description=self._label(rec.id, msg.kernel))

    def _on_binaries(self, msg: Lookup | Binaries) -> None:
        """The winner's compiled-kernel dirs of an entry (one per variant launched): what prune keeps."""
        entry = self.manifest.entries.get(msg.file)
        if entry is not None and msg.binaries:
            entry.binaries = sorted(set(entry.binaries) | set(msg.binaries))

    def _label(self, unit_id: str, what: str) -> str:
        unit = self.units[unit_id]
        s = unit.shape
        gpu = self.manifest.units[unit_id].gpu if self.devices != (None,) else None
        where = "" if gpu is None else f"GPU {gpu} "
        return f"{unit.target} tp{','.join(map(str, unit.tp))} H{s.H}/HV{s.HV} [dim]{where}{what}[/dim]"

    def _announce(self, shards: list[list[Unit]]) -> None:
        parts = [f"{len(s)} unit{'s' * (len(s) > 1)} ({sum(map(unit_configs, s))} configs)" for s in shards]
        self.console.print(f"sharding {sum(map(len, shards))} units over {len(shards)} GPUs "
                           f"({', '.join(str(g) for g in self.devices[:len(shards)])}): {'; '.join(parts)}")
        shared = shared_keys(shards)
        if shared:
            self.console.print(f"[dim]{len(shared)} key(s) are reached by more than one shard: tuned on each GPU that "
                               "misses them, the last file written is kept[/dim]")

    # -- running children -------------------------------------------------------------------------------------
    @staticmethod
    def compile_processes(children: int, emulate: bool) -> int | None:
        """Precompile workers per child of a sharded build: the cores this process may use shared out between the
        children that run at once, less the one each child benchmarks on, e.g. 16 cores, 4 GPUs -> 3 each. None
        (the child decides) where AUTOTUNE_CACHE_COMPILE_PROCESSES is set, or in emulated builds (threads, as in a
        one-child emulated build)."""
        from .precompile import PROCESS_ENV, cores
        if emulate or os.environ.get(PROCESS_ENV, "").strip():
            return None
        return max(1, cores() // children - 1)

    def _start_child(self, todo: list[Unit], gpu: str | None, children: int = 1) -> _Child:
        ctx = multiprocess.get_context("spawn")
        mine, theirs = ctx.Pipe()
        from . import child
        index = {u.id: i for i, u in enumerate(self.plan.units)}   # the fault hook names units by plan position
        units = tuple(ChildUnit(unit=u, index=index[u.id], attempt=self.manifest.units[u.id].attempts + 1)
                      for u in todo)
        options = ChildOptions(cache_dir=str(self.cache_dir), units=units, emulate=self.spec.emulate,
                               selection=self.spec.selection, overlap_compile=self.spec.overlap_compile)
        if gpu is not None:   # a child of a sharded build sees its GPU only
            options = replace(options, gpu=gpu, compile_processes=self.compile_processes(children, self.spec.emulate))
        chan = Channel(theirs)
        args = (chan, chan, options)
        name = "autotune-cache-child" if gpu is None else f"autotune-cache-gpu{gpu}"
        proc = ctx.Process(target=child.main, name=name, daemon=True, args=args)
        return _Child(proc=proc, link=Channel(mine), theirs=theirs, gpu=gpu, todo=todo,
                      deadline=time.monotonic() + STARTUP_TIMEOUT_S)

    def _run_children(self, todo: list[Unit]) -> None:
        """Run `todo` until every unit is done or out of attempts: one child per shard (shard.plan_shards) at a
        time, each on a GPU of its own, all watched at once from this one thread. A shard whose child ended with
        units left starts a fresh child on a free GPU, another than the last one where there is a choice."""
        max_attempts = 1 + self.spec.retries
        shards = plan_shards(todo, len(self.devices))
        if len(shards) > 1:
            self._sharded = True
            self._announce(shards)
        free = list(self.devices)
        last_gpu: dict[int, str | None] = {}
        running: dict[int, _Child] = {}   # by shard
        try:
            while True:
                for i, shard in enumerate(shards):
                    left = [u for u in shard if self.manifest.units[u.id].status != "done"
                            and self.manifest.units[u.id].attempts < max_attempts]
                    if i in running or not left or not free:
                        continue
                    gpu = next((g for g in free if g != last_gpu.get(i)), free[0])
                    free.remove(gpu)
                    running[i] = c = self._start_child(left, gpu, len(shards))
                    c.proc.start()
                    c.theirs.close()   # the child holds the only write end now: its death reads as end of file
                if not running:
                    break
                ended = self._step(list(running.values()))
                for i, c in list(running.items()):
                    if c in ended:
                        del running[i]
                        free.append(c.gpu)
                        last_gpu[i] = c.gpu
        except BaseException:
            for c in running.values():
                self._kill(c.proc)
            raise
        finally:
            for c in running.values():
                self._close(c)

    def _step(self, children: list[_Child]) -> list[_Child]:
        """Wait for the next message, exit or deadline of any child and handle it; returns the children whose end
        is now accounted for. A child that said done or failed, or whose pipe closed, is given
        EXIT_GRACE_S to exit while the others go on."""
        nearest = min(c.exit_by if c.exit_by is not None else c.deadline for c in children)
        wait([c.link if c.exit_by is None else c.proc.sentinel for c in children],
             timeout=min(max(0.0, nearest - time.monotonic()), 1.0))
        ended = []
        for c in children:
            if c.exit_by is None:
                self._read(c)
                if c.exit_by is None and time.monotonic() >= c.deadline and not c.link.poll():
                    self._timed_out(c)
            if c.exit_by is not None and (not c.proc.is_alive() or time.monotonic() >= c.exit_by):
                self._finish(c)
                ended.append(c)
        return ended

    def _read(self, c: _Child) -> None:
        """Handle every message the child has sent so far; sets c.exit_by when its run is over."""
        while c.link.poll():
            try:
                msg = c.link.get()
            except (EOFError, OSError):   # the child is gone: exited, crashed or killed
                c.exit_by = time.monotonic() + EXIT_GRACE_S
                return
            if self._on_message(c, msg):
                c.exit_by = time.monotonic() + EXIT_GRACE_S
                return

    def _on_message(self, c: _Child, msg) -> bool:
        """One message of a child (protocol.py); True when it is the child's last."""
        match msg:
            case NoGPU():
                raise NoGPUError(msg.message)
            case Hello():
                answer = Go() if self._on_hello(Fingerprint(**msg.fingerprint), c.gpu) else Stop()
                try:
                    c.link.put(answer)
                except OSError:   # it died just after hello: the end of file comes next
                    pass
            case UnitStart():
                self._on_unit_start(c, msg)
            case Lookup():
                self._on_lookup(msg)
            case Binaries():
                self._on_binaries(msg)
            case UnitDone():
                self._on_unit_done(c, msg)
            case UnitFailed():
                self._fail(msg.unit, msg.error, count=False)
                c.current, c.accounted = None, True   # the child exits after a failed unit
                return True
            case Done():
                c.accounted = True
                return True
        return False

    def _on_unit_start(self, c: _Child, msg: UnitStart) -> None:
        c.current, c.started_any = msg.unit, True
        rec = self.manifest.units[c.current]
        rec.attempts += 1
        rec.entries, rec.hits, rec.gpu = [], 0, c.gpu
        c.deadline = time.monotonic() + self.spec.unit_timeout_s
        if c.current in self._tasks:
            self._progress.reset(self._tasks[c.current], description=self._label(c.current, "starting"))

    def _on_unit_done(self, c: _Child, msg: UnitDone) -> None:
        rec = self.manifest.units[msg.unit]
        rec.status, rec.error, rec.seconds = "done", None, round(msg.seconds, 2)
        rec.bench_seconds = round(msg.bench_seconds, 2)
        rec.precompile, rec.compiles = msg.precompile, msg.compiles
        if rec.precompile and rec.precompile.get("failed"):
            self.console.print(f"[yellow]{rec.id}: {rec.precompile['failed']} of {rec.precompile['workers']} "
                               f"compile workers failed ({rec.precompile.get('error')}); the child compiled "
                               "their configs itself[/yellow]")
        elif rec.precompile and rec.compiles:   # workers on a fake GPU unlike this one, or a wait cut short
            self.console.print(f"[yellow]{rec.id}: the benchmarking child compiled {rec.compiles} kernel(s) "
                               "that the compile workers did not leave in the cache[/yellow]")
        self._check_coverage(rec)
        self._save()
        if rec.id in self._tasks:
            task = self._tasks[rec.id]
            self._progress.update(task, completed=self._progress.tasks[task].total,
                                  description=self._label(rec.id, f"done in {rec.seconds:.1f} s"))
        c.current = None
        c.deadline = time.monotonic() + self.spec.unit_timeout_s   # until the next unit_start

    def _timed_out(self, c: _Child) -> None:
        self._kill(c.proc)
        if c.current is not None:
            self._fail(c.current, f"timed out after {self.spec.unit_timeout_s:g} s", count=False)
        elif not c.started_any:
            self._fail_next(c.todo, f"child did not start within {STARTUP_TIMEOUT_S:g} s")
        elif any(self.manifest.units[u.id].status != "done" for u in c.todo):
            self._fail_next(c.todo, f"child hung between units for {self.spec.unit_timeout_s:g} s")
        c.current, c.accounted, c.exit_by = None, True, time.monotonic()

    def _finish(self, c: _Child) -> None:
        """The child exited, or had its EXIT_GRACE_S: charge what it left unaccounted, then clean up after it."""
        if c.proc.is_alive() or c.current is not None or not c.accounted:
            self._kill(c.proc)   # hung at exit, or died in a unit: take its compilers down too
        if c.current is not None:   # the child died inside a unit
            self._fail(c.current, f"child {_signal_name(c.proc.exitcode)}", count=False)
        elif not c.accounted:   # died between units or before the first: charge the next unit, else we loop forever
            where = "between units" if c.started_any else "before its first unit"
            self._fail_next(c.todo, f"child {_signal_name(c.proc.exitcode)} {where}")
        self._close(c)

    def _close(self, c: _Child) -> None:
        if c.closed:
            return
        c.closed = True
        c.link.close()
        c.theirs.close()
        if c.proc.pid is not None:
            self._remove_temp_dirs(c.proc.pid)

    def _fail_next(self, todo: list[Unit], error: str) -> None:
        """Charge a failure outside any unit to the next unit not done: every child then counts against a retry."""
        nxt = next((u.id for u in todo if self.manifest.units[u.id].status != "done"), None)
        if nxt is not None:
            self._fail(nxt, error, count=True)

    def _remove_temp_dirs(self, pid: int) -> None:
        """Triton writes each file into <hash dir>/tmp.pid_<pid>_<uuid>/ and then renames it into place: a child
        killed in between leaves that dir behind. Only the dead child's own are removed (a server may be writing)."""
        for tmp in self.cache_dir.glob(f"*/tmp.pid_{pid}_*"):
            shutil.rmtree(tmp, ignore_errors=True)

    def _fail(self, unit_id: str, error: str, *, count: bool) -> None:
        rec = self.manifest.units[unit_id]
        rec.attempts += int(count)
        rec.status, rec.error = "failed", error
        rec.failures.append(f"attempt {rec.attempts}: {error}")
        self.console.print(f"[red]unit {unit_id} failed (attempt {rec.attempts}): {error}[/red]")
        self._save()   # after the message: on a full disk this raises, and the cause must be on screen already

    def _check_coverage(self, rec: UnitRecord) -> None:
        """Warn where the real call reached other keys than the plan predicted (kernel source drift)."""
        unit = self.units[rec.id]
        planned = {(k.kernel, tuple(k.key)) for k in unit.keys}
        reached = {(self.manifest.entries[f].kernel, tuple(self.manifest.entries[f].key)) for f in rec.entries}
        for kernel, key in sorted(planned - reached, key=str):
            self.console.print(f"[yellow]warning: planned key not reached: {kernel} {key}[/yellow]")
        for kernel, key in sorted(reached - planned, key=str):
            self.console.print(f"[yellow]warning: key reached but not planned: {kernel} {key}[/yellow]")

    @staticmethod
    def _kill(proc) -> None:
        if proc.pid is None:
            return
        try:
            # The child and every compiler it spawned. Safe before the child is reaped: no other group can have
            # its pid as id. Before its setsid() there is no such group: then the child alone.
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            if proc.exitcode is None:
                proc.kill()
        proc.join(timeout=10)

    # -- the whole build --------------------------------------------------------------------------------------
    def run(self) -> Manifest:
        lock = filelock.FileLock(self.cache_dir / manifest_mod.LOCK_NAME)
        try:
            lock.acquire(timeout=1)
        except filelock.Timeout:
            self.console.print(f"waiting for another build holding {lock.lock_file} ...")
            lock.acquire()
        try:
            self.manifest = self._open_manifest()
            progress = (Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("keys"), TimeElapsedColumn(), console=self.console, transient=False)
                        if self.show_progress else None)
            with progress or nullcontext():
                self._progress = progress
                max_attempts = 1 + self.spec.retries
                for unit in self.plan.units:
                    if progress is not None and self.manifest.units[unit.id].status != "done":
                        self._tasks[unit.id] = progress.add_task(self._label(unit.id, "waiting"),
                                                                 total=len(unit.keys))
                todo = [u for u in self.plan.units if self.manifest.units[u.id].status != "done"
                        and self.manifest.units[u.id].attempts < max_attempts]
                try:
                    self._run_children(todo)
                except KeyboardInterrupt:   # every child is dead already (_run_children kills them on any exception)
                    for unit in self.plan.units:   # not other builds' units: they were not interrupted
                        rec = self.manifest.units[unit.id]
                        if rec.status != "done":
                            rec.status, rec.error = "pending", "interrupted"   # earlier errors: rec.failures
                    self._save()
                    raise
            self._save()
            if self._reconciled:
                self.console.print(f"{len(self._reconciled)} key(s) were tuned on more than one GPU; the manifest "
                                   "records the file written last: " + ", ".join(sorted(self._reconciled)[:3])
                                   + (" ..." if len(self._reconciled) > 3 else ""))
        finally:
            lock.release()
        failed = [self.manifest.units[u.id] for u in self.plan.units if self.manifest.units[u.id].status != "done"]
        if failed:
            lines = "; ".join(f"{r.id}: {r.error}" for r in failed)
            raise BuildFailedError(f"{len(failed)} of {len(self.plan.units)} units failed after retries: {lines}",
                                   self.manifest)
        return self.manifest


def build(spec: BuildSpec, *, console: Console | None = None, progress: bool = True) -> Manifest:
    """Tune every unit of the spec's plan into spec.cache_dir; returns the manifest written there."""
    plan = make_plan(spec)   # bad input (target, TP, GPUs) fails here, before anything is written
    devices = gpus.for_build(spec.gpus, spec.emulate)
    existed = spec.cache_dir is None or Path(spec.cache_dir).expanduser().exists()
    cache_dir = prepare_cache_dir(spec.cache_dir)
    try:
        return Build(plan, cache_dir, console=console, progress=progress, devices=devices).run()
    except NoGPUError:
        if not existed:   # leave nothing behind for a build that could not start
            shutil.rmtree(cache_dir, ignore_errors=True)
        raise
