"""The build parent: locks the cache dir, runs children, keeps the manifest. Never imports torch or triton."""
from __future__ import annotations

import os
import queue
import signal
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import filelock
import multiprocess
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import __version__, manifest as manifest_mod
from .errors import BuildFailedError, CacheDirError, NoGPUError
from .fingerprint import Fingerprint, mismatches
from .manifest import Entry, Manifest, UnitRecord
from .plan import Plan, plan as make_plan
from .spec import BuildSpec, Unit

STARTUP_TIMEOUT_S = 600.0   # imports + driver init of a child, before its first unit


def prepare_cache_dir(path: str | os.PathLike) -> Path:
    """Absolute, existing, writable directory, or CacheDirError before any work starts."""
    if path is None:
        raise CacheDirError("a cache dir is needed (--cache-dir DIR)")
    root = Path(path).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise CacheDirError(f"cache dir {root} exists and is not a directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test."):
            pass
    except OSError as e:
        raise CacheDirError(f"cache dir {root} is not writable: {e.strerror or e}") from None
    return root


def _signal_name(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


class Build:
    """One build of a plan into a cache dir. `run()` returns the manifest; units done are never redone."""

    def __init__(self, plan: Plan, cache_dir: Path, *, console: Console | None = None, progress: bool = True):
        self.plan = plan
        self.spec = plan.spec
        self.cache_dir = cache_dir
        self.console = console or Console(stderr=True)
        self.show_progress = progress
        self.manifest: Manifest | None = None
        self.units = {u.id: u for u in plan.units}
        self._tasks = {}
        self._progress = None

    # -- manifest bookkeeping ---------------------------------------------------------------------------------
    def _open_manifest(self) -> Manifest:
        m = manifest_mod.load(self.cache_dir) or Manifest(tool_version=__version__)
        for unit in self.plan.units:
            rec = m.units.get(unit.id)
            if rec is None or (rec.status == "done" and not self._entries_intact(m, rec)):
                m.units[unit.id] = UnitRecord(id=unit.id, target=unit.target, tp=list(unit.tp),
                                              shape=unit.shape.model_dump(), dtypes=unit.dtypes,
                                              tokens=list(unit.tokens))
            elif rec.status == "failed":
                rec.status, rec.attempts = "pending", 0
            if rec is not None:
                rec.tp = sorted(set(rec.tp) | set(unit.tp))
        return m

    def _entries_intact(self, m: Manifest, rec: UnitRecord) -> bool:
        from .triton_cache import sha256_file
        for name in rec.entries:
            path = self.cache_dir / name
            entry = m.entries.get(name)
            if entry is None or not path.is_file() or sha256_file(path) != entry.sha256:
                return False
        return bool(rec.entries)

    def _save(self) -> None:
        self.manifest.files = manifest_mod.cache_files(self.cache_dir)
        manifest_mod.save(self.manifest, self.cache_dir)

    # -- messages from the child ------------------------------------------------------------------------------
    def _on_hello(self, fp: Fingerprint) -> bool:
        m = self.manifest
        if m.fingerprint is not None and m.fingerprint.key_identity() != fp.key_identity():
            reasons = "; ".join(mismatches(m.fingerprint, fp)) or "different Triton build or env vars"
            raise CacheDirError(f"{self.cache_dir} holds a cache for another environment ({reasons}); "
                                "build into a separate directory")
        m.fingerprint = fp
        return True

    def _on_lookup(self, msg: dict) -> None:
        rec = self.manifest.units[msg["unit"]]
        if msg["file"] is None:
            self.console.print(f"[yellow]warning: {msg['kernel']} {tuple(msg['key'])} was tuned without the disk "
                               "cache (pre_hook or empty key): a server will tune it too[/yellow]")
            return
        entry = self.manifest.entries.get(msg["file"])
        if entry is None or entry.sha256 != msg["sha256"]:
            entry = Entry(kernel=msg["kernel"], key=msg["key"], file=msg["file"], sha256=msg["sha256"],
                          size=msg["size"], configs=msg["configs"], winner=msg["winner"], best=msg["best"],
                          margin=msg["margin"], tokens=None if msg["hit"] else msg["tokens"],
                          units=entry.units if entry else [])
            self.manifest.entries[msg["file"]] = entry
        if rec.id not in entry.units:
            entry.units.append(rec.id)
        self._on_binaries(msg)
        if msg["file"] not in rec.entries:
            rec.entries.append(msg["file"])
            rec.hits += bool(msg["hit"])
            if rec.id in self._tasks:
                self._progress.update(self._tasks[rec.id], advance=1, description=self._label(rec.id, msg["kernel"]))

    def _on_binaries(self, msg: dict) -> None:
        """The winner's compiled-kernel dirs of an entry (one per variant launched): what prune keeps."""
        entry = self.manifest.entries.get(msg["file"])
        if entry is not None and msg.get("binaries"):
            entry.binaries = sorted(set(entry.binaries) | set(msg["binaries"]))

    def _label(self, unit_id: str, what: str) -> str:
        unit = self.units[unit_id]
        s = unit.shape
        return f"{unit.target} tp{','.join(map(str, unit.tp))} H{s.H}/HV{s.HV} [dim]{what}[/dim]"

    # -- running children -------------------------------------------------------------------------------------
    def _run_child(self, todo: list[Unit]) -> None:
        ctx = multiprocess.get_context("spawn")
        out, control = ctx.Queue(), ctx.Queue()
        from . import child
        attempts = {u.id: self.manifest.units[u.id].attempts + 1 for u in todo}
        proc = ctx.Process(target=child.main, name="autotune-cache-child", daemon=True,
                           args=(out, control, str(self.cache_dir), [u.model_dump(mode="json") for u in todo],
                                 self.spec.emulate, attempts))
        proc.start()
        current, deadline, accounted = None, time.monotonic() + STARTUP_TIMEOUT_S, False
        started_any = False
        try:
            while True:
                try:
                    msg = out.get(timeout=0.2)
                except queue.Empty:
                    if not proc.is_alive():
                        break
                    if time.monotonic() > deadline:
                        self._kill(proc)
                        why = (f"timed out after {self.spec.unit_timeout_s:.0f} s" if current
                               else f"child did not start within {STARTUP_TIMEOUT_S:.0f} s")
                        self._fail(current or todo[0].id, why, count=current is None)
                        current, accounted = None, True
                        break
                    continue
                kind = msg["type"]
                if kind == "no_gpu":
                    raise NoGPUError(msg["message"])
                if kind == "hello":
                    control.put("go" if self._on_hello(Fingerprint(**msg["fingerprint"])) else "stop")
                elif kind == "unit_start":
                    current, started_any = msg["unit"], True
                    rec = self.manifest.units[current]
                    rec.attempts += 1
                    rec.entries, rec.hits = [], 0
                    deadline = time.monotonic() + self.spec.unit_timeout_s
                    if current in self._tasks:
                        self._progress.reset(self._tasks[current], description=self._label(current, "starting"))
                elif kind == "lookup":
                    self._on_lookup(msg)
                elif kind == "binaries":
                    self._on_binaries(msg)
                elif kind == "unit_done":
                    rec = self.manifest.units[msg["unit"]]
                    rec.status, rec.error, rec.seconds = "done", None, round(msg["seconds"], 2)
                    self._check_coverage(rec)
                    self._save()
                    if rec.id in self._tasks:
                        task = self._tasks[rec.id]
                        self._progress.update(task, completed=self._progress.tasks[task].total,
                                              description=self._label(rec.id, f"done in {rec.seconds:.1f} s"))
                    current = None
                elif kind == "unit_failed":
                    self._fail(msg["unit"], msg["error"], count=False)
                    current, accounted = None, True   # the child exits after a failed unit
                elif kind == "done":
                    accounted = True
            proc.join(timeout=30)
            if proc.is_alive():
                self._kill(proc)
            if current is not None:   # the child died inside a unit
                self._fail(current, f"child {_signal_name(proc.exitcode)}", count=False)
            elif not accounted:   # died between units or before the first: charge the next unit, else we loop forever
                nxt = next((u.id for u in todo if self.manifest.units[u.id].status != "done"), None)
                if nxt is not None:
                    where = "between units" if started_any else "before its first unit"
                    self._fail(nxt, f"child {_signal_name(proc.exitcode)} {where}", count=True)
        except BaseException:
            self._kill(proc)
            raise

    def _fail(self, unit_id: str, error: str, *, count: bool) -> None:
        rec = self.manifest.units[unit_id]
        rec.attempts += int(count)
        rec.status, rec.error = "failed", error
        self._save()
        self.console.print(f"[red]unit {unit_id} failed (attempt {rec.attempts}): {error}[/red]")

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
            os.killpg(proc.pid, signal.SIGKILL)   # the child and every compiler it spawned
        except (ProcessLookupError, PermissionError):
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
                while True:
                    todo = [u for u in self.plan.units if self.manifest.units[u.id].status != "done"
                            and self.manifest.units[u.id].attempts < max_attempts]
                    if not todo:
                        break
                    try:
                        self._run_child(todo)
                    except KeyboardInterrupt:
                        for rec in self.manifest.units.values():
                            if rec.status != "done":
                                rec.status, rec.error = "pending", rec.error or "interrupted"
                        self._save()
                        raise
            self._save()
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
    cache_dir = prepare_cache_dir(spec.cache_dir)
    return Build(make_plan(spec), cache_dir, console=console, progress=progress).run()
